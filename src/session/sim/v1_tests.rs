//! Protocol v1 on the simulated pair: convergence over clean and lossy paths,
//! `DONE` framing, the idle deadline, and every hostile input.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use super::net::{Net, Path};
use super::store::{asset, SimStore};
use super::Side;
use crate::asset::{AssetHash, Summary};
use crate::engine::RejectReason;
use crate::pb;
use crate::session::machine::Machine;
use crate::session::v1::{Answer, Outcome, Request, Session, V1Config};
use crate::session::{Role, SessionError};
use crate::wire::data_stream::frame;
use crate::wire::{FrameError, FrameType, Violation, CLOSE_DONE};

fn config() -> V1Config {
    V1Config {
        max_frame_len: 1 << 20,
        pull_batch: 3,
        idle_timeout: Duration::from_secs(30),
    }
}

/// Serves a v1 request from `store`, as the driver does from a real one.
fn serve(store: &mut SimStore, request: Request) -> Answer {
    match request {
        Request::List => Answer::Listed(Ok(store.list())),
        Request::Pull(hashes) => Answer::Pulled(Ok(store.pull(&hashes))),
        Request::Meta(hash) => Answer::Meta(hash, Ok(store.meta(hash))),
        Request::Push(bundle) => {
            let (hash, size) = (bundle.hash, bundle.data.len() as u64);
            Answer::Pushed(hash, size, store.push(bundle))
        }
        Request::ApplyMeta(update) => Answer::MetaApplied(update.hash, store.apply_meta(&update)),
    }
}

/// Pumps `side` until it asks for nothing more at `now`.
fn settle(side: &mut Side<Session>, net: &mut Net, store: &mut SimStore) {
    loop {
        let requests = side.pump(net.now, net);
        if requests.is_empty() {
            return;
        }
        for request in requests {
            let answer = serve(store, request);
            side.machine.handle_answer(net.now, answer);
        }
    }
}

/// What a finished pair run left.
pub(super) struct Run {
    pub(super) initiator: Result<Outcome, SessionError>,
    pub(super) responder: Result<Outcome, SessionError>,
    pub(super) stores: (SimStore, SimStore),
    /// The responder's store when the initiator completed.
    responder_at_initiator_end: SimStore,
}

/// Runs a whole v1 session between two honest machines.
pub(super) fn run_pair(mut a: SimStore, mut b: SimStore, path: Path, seed: u64) -> Run {
    let mut net = Net::new(path, seed);
    let (ab, ba) = (net.open(), net.open());
    let now = net.now;
    let mut left = Side::new(
        Session::new(Role::Initiator, config(), now),
        ab,
        ba,
        1 << 20,
    );
    let mut right = Side::new(
        Session::new(Role::Responder, config(), now),
        ba,
        ab,
        1 << 20,
    );
    let mut snapshot = None;
    loop {
        settle(&mut left, &mut net, &mut a);
        settle(&mut right, &mut net, &mut b);
        if left.is_over() && snapshot.is_none() {
            snapshot = Some(b.clone());
        }
        if left.is_over() && right.is_over() {
            break;
        }
        let next = [net.next_event(), left.next_event(), right.next_event()]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(at) => net.now = net.now.max(at),
            None => panic!("deadlock at {:?} (seed {seed})", net.elapsed()),
        }
    }
    Run {
        initiator: left.outcome.take().expect("over"),
        responder: right.outcome.take().expect("over"),
        stores: (a, b),
        responder_at_initiator_end: snapshot.expect("initiator ended"),
    }
}

/// Two overlapping stores: 12 assets only on A, 7 only on B, 5 on both of
/// which A holds newer metadata for 2 and B for 1.
fn stores() -> (SimStore, SimStore) {
    let mut a: Vec<_> = (0..12)
        .map(|i| asset(i, 100 + i as usize * 37, 10))
        .collect();
    let mut b: Vec<_> = (50..57).map(|i| asset(i, 3000, 10)).collect();
    for i in 100..105 {
        let at_a = if i < 102 { 20 } else { 10 };
        let at_b = if i == 104 { 30 } else { 10 };
        a.push(asset(i, 500, at_a));
        b.push(asset(i, 500, at_b));
    }
    (SimStore::with(a), SimStore::with(b))
}

#[test]
fn two_stores_converge_in_one_session_over_clean_and_lossy_paths() {
    for path in [Path::clean(), Path::lossy()] {
        for seed in 0..16 {
            let (a, b) = stores();
            let run = run_pair(a, b, path, seed);
            let left = run.initiator.expect("initiator completes");
            let right = run.responder.expect("responder completes");
            assert_eq!(run.stores.0, run.stores.1, "converged (seed {seed})");
            assert_eq!(run.stores.0 .0.len(), 24);
            assert_eq!(
                (left.report.assets_sent, left.report.assets_received),
                (12, 7)
            );
            assert_eq!(
                (right.report.assets_sent, right.report.assets_received),
                (7, 12)
            );
            assert_eq!((left.report.meta_sent, right.report.meta_sent), (2, 1));
            assert_eq!(
                (left.report.meta_applied, right.report.meta_applied),
                (1, 2)
            );
            assert_eq!(left.close, Some(CLOSE_DONE), "the initiator closes");
            assert_eq!(right.close, None);
            // DONE framing: the responder's DONE means it holds everything.
            assert_eq!(run.responder_at_initiator_end, run.stores.1);
        }
    }
}

/// An asset too large for one v1 frame is skipped with its reason, never
/// read, and everything else moves: the session completes.
#[test]
fn an_asset_above_the_frame_limit_is_skipped_and_the_rest_moves() {
    let big = asset(7, (1 << 20) + 1, 10);
    let small: Vec<_> = (0..5).map(|i| asset(i, 2_000, 10)).collect();
    let mut a = small.clone();
    a.push(big.clone());
    let run = run_pair(SimStore::with(a), SimStore::default(), Path::clean(), 3);
    let left = run.initiator.expect("the session completes");
    run.responder.expect("the responder completes");
    assert_eq!(left.report.assets_sent, 5);
    match left.report.rejected.as_slice() {
        [rejected] => {
            assert_eq!(rejected.hash, big.hash);
            assert!(matches!(
                rejected.reason,
                RejectReason::TooLargeForProtocol { size, limit }
                    if size == (1 << 20) + 1 && limit == 1 << 20
            ));
        }
        other => panic!("expected one rejection, got {other:?}"),
    }
    let held: Vec<AssetHash> = run.stores.1.list().iter().map(|s| s.hash).collect();
    assert_eq!(held.len(), 5);
    assert!(!held.contains(&big.hash));
}

#[test]
fn a_second_session_moves_nothing() {
    let (a, b) = stores();
    let first = run_pair(a, b, Path::clean(), 1);
    let (a, b) = first.stores;
    let second = run_pair(a, b, Path::clean(), 2);
    for outcome in [second.initiator.unwrap(), second.responder.unwrap()] {
        let r = outcome.report;
        assert_eq!(
            (
                r.assets_sent,
                r.assets_received,
                r.meta_sent,
                r.meta_applied
            ),
            (0, 0, 0, 0)
        );
    }
}

/// Runs one honest initiator against a scripted peer that sends `script`
/// (then finishes its stream when `finish`); returns the victim's outcome and
/// when it came.
fn against_script(
    store: SimStore,
    script: Vec<Bytes>,
    finish: bool,
) -> (Result<Outcome, SessionError>, Duration, SimStore) {
    let mut net = Net::new(Path::clean(), 7);
    let (ab, ba) = (net.open(), net.open());
    let now = net.now;
    for frame in &script {
        net.send(ba, now, frame);
    }
    if finish {
        net.finish(ba, now);
    }
    let mut store = store;
    let mut victim = Side::new(
        Session::new(Role::Initiator, config(), now),
        ab,
        ba,
        1 << 20,
    );
    loop {
        settle(&mut victim, &mut net, &mut store);
        if victim.is_over() {
            let outcome = victim.outcome.take().expect("over");
            return (outcome, net.elapsed(), store);
        }
        let next = [net.next_event(), victim.next_event()]
            .into_iter()
            .flatten()
            .min();
        net.now = next.unwrap_or_else(|| panic!("deadlock at {:?}", net.elapsed()));
    }
}

fn hash_set(summaries: &[Summary]) -> Bytes {
    let set = pb::PeerHashSet {
        assets: summaries.iter().map(Summary::to_pb).collect(),
    };
    frame(FrameType::HashSet, &set.encode_to_vec())
}

fn bundle_frame(bundle: crate::asset::Bundle) -> Bytes {
    frame(FrameType::AssetBundle, &bundle.into_pb().encode_to_vec())
}

fn violation(outcome: Result<Outcome, SessionError>) -> Violation {
    match outcome {
        Err(SessionError::Peer(violation)) => violation,
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn a_silent_peer_fails_the_session_at_the_idle_deadline() {
    let (outcome, at, _) = against_script(SimStore::default(), vec![], false);
    assert!(matches!(
        violation(outcome),
        Violation::Silent { waited, .. } if waited == config().idle_timeout
    ));
    assert_eq!(at, config().idle_timeout, "not a moment later");
}

#[test]
fn a_wrong_hash_is_rejected_and_reported_and_the_rest_lands() {
    let mut forged = asset(1, 800, 1);
    let honest = asset(2, 800, 1);
    forged.data = Bytes::from(vec![0u8; 800]);
    let script = vec![
        hash_set(&[]),
        bundle_frame(forged.clone()),
        bundle_frame(honest.clone()),
        frame(FrameType::Done, &[]),
    ];
    let (outcome, _, store) = against_script(SimStore::default(), script, true);
    let report = outcome.expect("the session completes").report;
    assert_eq!(report.assets_received, 1);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].hash, forged.hash);
    assert!(matches!(
        report.rejected[0].reason,
        RejectReason::HashMismatch { .. }
    ));
    assert!(store.meta(honest.hash).is_some());
    assert!(store.meta(forged.hash).is_none());
}

#[test]
fn every_hostile_input_is_its_own_violation_and_stores_nothing() {
    let mut bad_hash = Summary::of(AssetHash::of(b"x"), 1, &pb::AssetMeta::default()).to_pb();
    bad_hash.hash = "not hex".into();
    let oversized = {
        let mut header = vec![FrameType::AssetBundle as u8];
        header.extend_from_slice(&u32::MAX.to_be_bytes());
        Bytes::from(header)
    };
    let whole = bundle_frame(asset(3, 500, 1));
    type Check = fn(&Violation) -> bool;
    let cases: Vec<(&str, Vec<Bytes>, bool, Check)> = vec![
        (
            "unknown tag",
            vec![Bytes::from_static(&[0x7f, 0, 0, 0, 0])],
            true,
            |v| matches!(v, Violation::Frame(FrameError::UnknownType(0x7f))),
        ),
        (
            "oversized frame",
            vec![hash_set(&[]), oversized],
            false,
            |v| {
                matches!(
                    v,
                    Violation::Frame(FrameError::Oversized { len: u32::MAX, .. })
                )
            },
        ),
        (
            "truncated frame",
            vec![hash_set(&[]), whole.slice(..whole.len() / 2)],
            true,
            |v| matches!(v, Violation::Frame(FrameError::Truncated { .. })),
        ),
        (
            "garbage HASH_SET",
            vec![frame(FrameType::HashSet, &[0xff, 0xff])],
            true,
            |v| {
                matches!(
                    v,
                    Violation::Decode {
                        message: "PeerHashSet",
                        ..
                    }
                )
            },
        ),
        (
            "malformed hash",
            vec![frame(
                FrameType::HashSet,
                &pb::PeerHashSet {
                    assets: vec![bad_hash],
                }
                .encode_to_vec(),
            )],
            true,
            |v| matches!(v, Violation::MalformedHash(_)),
        ),
        ("bundle before HASH_SET", vec![whole.clone()], true, |v| {
            matches!(
                v,
                Violation::Unexpected {
                    expected: "HASH_SET",
                    ..
                }
            )
        }),
        (
            "garbage bundle",
            vec![hash_set(&[]), frame(FrameType::AssetBundle, &[0xff, 0xff])],
            true,
            |v| {
                matches!(
                    v,
                    Violation::Decode {
                        message: "AssetBundle",
                        ..
                    }
                )
            },
        ),
        ("no DONE", vec![hash_set(&[])], true, |v| {
            matches!(
                v,
                Violation::EndedEarly {
                    missing: "DONE",
                    ..
                }
            )
        }),
        ("no HASH_SET", vec![], true, |v| {
            matches!(
                v,
                Violation::EndedEarly {
                    missing: "HASH_SET",
                    ..
                }
            )
        }),
        (
            "a frame after DONE",
            vec![hash_set(&[]), frame(FrameType::Done, &[]), whole],
            true,
            |v| matches!(v, Violation::AfterDone(FrameType::AssetBundle)),
        ),
        (
            "a v2 frame on v1",
            vec![hash_set(&[]), frame(FrameType::Hello, &[])],
            true,
            |v| {
                matches!(
                    v,
                    Violation::Unexpected {
                        got: FrameType::Hello,
                        ..
                    }
                )
            },
        ),
    ];
    for (name, script, finish, expected) in cases {
        let (outcome, _, store) = against_script(SimStore::default(), script, finish);
        let violation = violation(outcome);
        assert!(expected(&violation), "{name}: {violation:?}");
        assert!(store.0.is_empty(), "{name}: stored something");
    }
}

#[test]
fn a_push_in_progress_holds_reading_back() {
    // While a received bundle is being stored, the machine reads nothing:
    // backpressure reaches the peer through the stream.
    let now = Instant::now();
    let mut session = Session::new(Role::Responder, config(), now);
    assert_eq!(session.poll_request(), Some(Request::List));
    session.handle_answer(now, Answer::Listed(Ok(vec![])));
    session.handle_frame(
        now,
        crate::wire::Frame::new(FrameType::HashSet, hash_set(&[]).slice(5..)),
    );
    assert!(session.wants_frames());
    let bundle = asset(9, 10, 1);
    session.handle_frame(
        now,
        crate::wire::Frame::new(
            FrameType::AssetBundle,
            bundle.clone().into_pb().encode_to_vec(),
        ),
    );
    assert!(!session.wants_frames(), "waits for the store");
    assert_eq!(
        session.poll_timeout(),
        None,
        "our own wait is not the peer's silence"
    );
    assert!(matches!(session.poll_request(), Some(Request::Push(b)) if b == bundle));
    session.handle_answer(
        now,
        Answer::Pushed(
            bundle.hash,
            10,
            Ok(crate::can::Pushed {
                hash: bundle.hash,
                already_existed: false,
                seq: None,
            }),
        ),
    );
    assert!(session.wants_frames());
}
