//! Protocol v2 on the simulated pair: negotiation, reconciliation, data
//! streams and `SUMMARY`, over clean and lossy paths; the deadlines; every
//! hostile control message.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use super::engine;
use super::net::{Net, Path, StreamId};
use super::store::{asset, SimStore};
use super::Side;
use crate::asset::AssetHash;
use crate::engine::{EngineConfig, RejectReason};
use crate::pb;
use crate::recon::compact;
use crate::session::machine::Machine;
use crate::session::v2::{hello, Answer, Outcome, Request, Session, MAX_CONTROL_FRAME};
use crate::session::{Role, SessionError};
use crate::wire::data_stream::{encode_done, frame};
use crate::wire::{FrameType, Violation, CLOSE_DONE};

fn config(streams: u32) -> EngineConfig {
    EngineConfig {
        streams,
        inline_limit: 4096,
        chunk_bytes: 1024,
        idle_timeout: Duration::from_secs(20),
        ..EngineConfig::default()
    }
}

/// One peer of the simulated pair.
struct Peer {
    side: Side<Session>,
    store: SimStore,
    /// A `Receive` request waiting for the other side's data streams.
    receive_config: Option<Arc<EngineConfig>>,
    receive: Option<engine::Receive>,
}

/// The simulated connection: two peers (or one and a script), their data
/// streams, and the answers scheduled for later.
struct World {
    net: Net,
    peers: Vec<Peer>,
    /// Data streams opened towards peer `i`.
    data_towards: [Vec<StreamId>; 2],
    /// Answers due at a time: (when, to which peer, what).
    due: Vec<(std::time::Instant, usize, Answer)>,
    /// Data streams each peer opened (to count them).
    opened: [usize; 2],
}

impl World {
    /// Serves everything peer `i` can do now; true when anything happened.
    fn step(&mut self, i: usize) -> bool {
        let now = self.net.now;
        let mut progressed = false;
        loop {
            let requests = self.peers[i].side.pump(now, &mut self.net);
            let mut acted = !requests.is_empty();
            for request in requests {
                match request {
                    Request::List => {
                        let listed = self.peers[i].store.list();
                        self.peers[i]
                            .side
                            .machine
                            .handle_answer(now, Answer::Listed(Ok(listed)));
                    }
                    Request::Send { plan, config } => {
                        let streams: Vec<StreamId> =
                            (0..config.streams).map(|_| self.net.open()).collect();
                        self.opened[i] += streams.len();
                        let (sent, acked) = engine::send(
                            &mut self.net,
                            now,
                            &self.peers[i].store,
                            &plan,
                            &config,
                            &streams,
                        );
                        self.data_towards[1 - i].extend(streams);
                        self.due.push((acked, i, Answer::Sent(Ok(sent))));
                    }
                    Request::Receive { config } => self.peers[i].receive_config = Some(config),
                }
            }
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.due)
                .into_iter()
                .partition(|(at, to, _)| *at <= now && *to == i);
            self.due = later;
            for (_, _, answer) in due {
                self.peers[i].side.machine.handle_answer(now, answer);
                acted = true;
            }
            let peer = &mut self.peers[i];
            if let Some(config) = &peer.receive_config {
                if self.data_towards[i].len() >= config.streams as usize && peer.receive.is_none() {
                    peer.receive = Some(engine::Receive::new(
                        &self.data_towards[i][..config.streams as usize],
                        config,
                        Default::default(),
                    ));
                    peer.receive_config = None;
                }
            }
            if let Some(receive) = &mut peer.receive {
                if let Some(received) = receive.poll(&mut self.net, now, &mut peer.store) {
                    peer.receive = None;
                    peer.side
                        .machine
                        .handle_answer(now, Answer::Received(received));
                    acted = true;
                }
            }
            if !acted {
                return progressed;
            }
            progressed = true;
        }
    }

    /// Runs until every peer has an outcome; panics on a deadlock.
    fn run(&mut self, seed: u64) {
        loop {
            for i in 0..self.peers.len() {
                self.step(i);
            }
            if self.peers.iter().all(|p| p.side.is_over()) {
                return;
            }
            let next = self
                .peers
                .iter()
                .filter_map(|p| p.side.next_event())
                .chain(self.net.next_event())
                .chain(self.due.iter().map(|(at, _, _)| *at))
                .filter(|at| *at > self.net.now)
                .min();
            match next {
                Some(at) => self.net.now = at,
                None => panic!("deadlock at {:?} (seed {seed})", self.net.elapsed()),
            }
        }
    }
}

fn peer(
    net: &mut Net,
    role: Role,
    config: EngineConfig,
    live: bool,
    out: StreamId,
    inp: StreamId,
    store: SimStore,
) -> Peer {
    let machine = Session::new(role, config, live, net.now);
    Peer {
        side: Side::new(machine, out, inp, MAX_CONTROL_FRAME),
        store,
        receive_config: None,
        receive: None,
    }
}

/// Two honest peers with these stores and settings.
fn pair(
    stores: (SimStore, SimStore),
    configs: (EngineConfig, EngineConfig),
    live: (bool, bool),
    path: Path,
    seed: u64,
) -> World {
    let mut net = Net::new(path, seed);
    let (ab, ba) = (net.open(), net.open());
    let a = peer(
        &mut net,
        Role::Initiator,
        configs.0,
        live.0,
        ab,
        ba,
        stores.0,
    );
    let b = peer(
        &mut net,
        Role::Responder,
        configs.1,
        live.1,
        ba,
        ab,
        stores.1,
    );
    World {
        net,
        peers: vec![a, b],
        data_towards: [Vec::new(), Vec::new()],
        due: Vec::new(),
        opened: [0, 0],
    }
}

/// A: 10 small and 3 large assets; B: 6 small, 1 large; 4 shared, A newer on
/// one of them.
fn stores() -> (SimStore, SimStore) {
    let mut a: Vec<_> = (0..10)
        .map(|i| asset(i, 300 + i as usize * 100, 10))
        .collect();
    a.extend((20..23).map(|i| asset(i, 10_000 + i as usize, 10)));
    let mut b: Vec<_> = (40..46).map(|i| asset(i, 2000, 10)).collect();
    b.push(asset(60, 9000, 10));
    for i in 100..104 {
        a.push(asset(i, 700, if i == 100 { 50 } else { 10 }));
        b.push(asset(i, 700, 10));
    }
    (SimStore::with(a), SimStore::with(b))
}

fn outcomes(world: &mut World) -> (Outcome, Outcome) {
    let mut take = |i: usize| {
        world.peers[i]
            .side
            .outcome
            .take()
            .expect("over")
            .unwrap_or_else(|err| panic!("peer {i} failed: {err}"))
    };
    (take(0), take(1))
}

#[test]
fn two_stores_converge_over_clean_and_lossy_paths() {
    for path in [Path::clean(), Path::lossy()] {
        for seed in 0..12 {
            let mut world = pair(stores(), (config(3), config(3)), (false, false), path, seed);
            world.run(seed);
            let (a, b) = outcomes(&mut world);
            assert_eq!(world.peers[0].store, world.peers[1].store, "seed {seed}");
            assert_eq!(world.peers[0].store.0.len(), 24);
            assert_eq!((a.report.assets_sent, a.report.assets_received), (13, 7));
            assert_eq!((b.report.assets_sent, b.report.assets_received), (7, 13));
            assert_eq!((a.report.meta_sent, b.report.meta_applied), (1, 1));
            assert!(a.report.rejected.is_empty() && b.report.rejected.is_empty());
            assert_eq!((a.close, b.close), (Some(CLOSE_DONE), None));
            assert!(a.report.live.is_none());
        }
    }
}

#[test]
fn negotiation_settles_on_the_smaller_limits_and_live_needs_both() {
    let mut world = pair(
        stores(),
        (config(2), config(5)),
        (true, false),
        Path::clean(),
        3,
    );
    world.run(3);
    assert_eq!(
        world.opened,
        [2, 2],
        "each side opens the smaller stream count"
    );
    let (a, b) = outcomes(&mut world);
    assert!(a.report.live.is_none() && b.report.live.is_none());

    let mut world = pair(
        stores(),
        (config(2), config(2)),
        (true, true),
        Path::clean(),
        4,
    );
    world.run(4);
    let (a, b) = outcomes(&mut world);
    assert_eq!(
        (a.close, b.close),
        (None, None),
        "the connection stays for live sync"
    );
    let received: Vec<AssetHash> = b
        .report
        .live
        .expect("live")
        .peer_holds
        .iter()
        .map(|(h, _)| *h)
        .collect();
    assert_eq!(
        received.len(),
        13,
        "live sync starts knowing what the peer sent"
    );
    assert!(a.report.live.is_some());
}

#[test]
fn a_corrupt_asset_is_refused_and_both_summaries_say_so() {
    let (mut a, b) = stores();
    let corrupt = asset(7, 500, 10);
    a.0.insert(
        corrupt.hash,
        (Bytes::from(vec![1u8; 500]), corrupt.meta.clone()),
    );
    let mut world = pair(
        (a, b),
        (config(2), config(2)),
        (false, false),
        Path::clean(),
        5,
    );
    world.run(5);
    let (a, b) = outcomes(&mut world);
    assert_eq!(b.report.rejected.len(), 1);
    assert!(matches!(
        b.report.rejected[0].reason,
        RejectReason::HashMismatch { .. }
    ));
    let refused: Vec<_> = a
        .report
        .rejected
        .iter()
        .map(|r| (&r.hash, &r.reason))
        .collect();
    assert!(
        matches!(refused.as_slice(), [(hash, RejectReason::PeerRefused(_))] if **hash == corrupt.hash),
        "{refused:?}"
    );
    assert!(world.peers[1].store.meta(corrupt.hash).is_none());
}

/// What a scripted peer sends: control frames (then a finish when
/// `finish`), and whole data streams.
struct Script {
    control: Vec<Bytes>,
    finish: bool,
    data: Vec<Vec<Bytes>>,
}

/// An honest initiator against `script`; returns its outcome and when.
fn against(script: Script) -> (Result<Outcome, SessionError>, Duration) {
    let mut net = Net::new(Path::clean(), 9);
    let (ab, ba) = (net.open(), net.open());
    let now = net.now;
    for frame in &script.control {
        net.send(ba, now, frame);
    }
    if script.finish {
        net.finish(ba, now);
    }
    let mut data = Vec::new();
    for stream in &script.data {
        let id = net.open();
        for frame in stream {
            net.send(id, now, frame);
        }
        net.finish(id, now);
        data.push(id);
    }
    let victim = peer(
        &mut net,
        Role::Initiator,
        config(1),
        false,
        ab,
        ba,
        SimStore::default(),
    );
    let mut world = World {
        net,
        peers: vec![victim],
        data_towards: [data, Vec::new()],
        due: Vec::new(),
        opened: [0, 0],
    };
    world.run(9);
    let outcome = world.peers[0].side.outcome.take().expect("over");
    (outcome, world.net.elapsed())
}

fn hello_frame(edit: impl FnOnce(&mut pb::Hello)) -> Bytes {
    let mut theirs = hello(&config(1), false);
    edit(&mut theirs);
    frame(FrameType::Hello, &theirs.encode_to_vec())
}

fn recon_frame() -> Bytes {
    let round = pb::Recon {
        packed_summaries: Bytes::from(compact::encode(&[], 3)),
        wants: Bytes::new(),
        done: true,
    };
    frame(FrameType::Recon, &round.encode_to_vec())
}

fn summary_frame(rejected: Vec<pb::Rejection>) -> Bytes {
    let summary = pb::SessionSummary {
        received: 0,
        rejected,
    };
    frame(FrameType::Summary, &summary.encode_to_vec())
}

fn violation(outcome: Result<Outcome, SessionError>) -> Violation {
    match outcome {
        Err(SessionError::Peer(violation)) => violation,
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn a_peer_that_never_says_hello_fails_at_the_idle_deadline() {
    let (outcome, at) = against(Script {
        control: vec![],
        finish: false,
        data: vec![],
    });
    assert!(matches!(
        violation(outcome),
        Violation::Silent {
            during: "waiting for HELLO",
            ..
        }
    ));
    assert_eq!(at, config(1).idle_timeout);
}

#[test]
fn a_peer_that_never_reconciles_fails_one_idle_timeout_after_hello() {
    let (outcome, at) = against(Script {
        control: vec![hello_frame(|_| {})],
        finish: false,
        data: vec![],
    });
    assert!(matches!(
        violation(outcome),
        Violation::Silent {
            during: "waiting for RECON",
            ..
        }
    ));
    let hello_arrives = Path::clean().latency;
    assert_eq!(at, hello_arrives + config(1).idle_timeout);
}

#[test]
fn a_complete_scripted_peer_is_a_complete_session() {
    let (outcome, _) = against(Script {
        control: vec![
            hello_frame(|_| {}),
            recon_frame(),
            summary_frame(vec![]),
            encode_done(0, 0),
        ],
        finish: true,
        data: vec![vec![encode_done(0, 0)]],
    });
    let outcome = outcome.expect("the session completes");
    assert_eq!(outcome.close, Some(CLOSE_DONE));
}

#[test]
fn every_hostile_control_message_is_its_own_violation() {
    let good_data = || vec![vec![encode_done(0, 0)]];
    type Check = fn(&Violation) -> bool;
    let short_hash = pb::Rejection {
        hash: Bytes::from_static(&[1; 31]),
        reason: "x".into(),
    };
    let cases: Vec<(&str, Vec<Bytes>, Check)> = vec![
        (
            "an old version",
            vec![hello_frame(|h| h.version = 1)],
            |v| matches!(v, Violation::Version(1)),
        ),
        (
            "zero streams",
            vec![hello_frame(|h| h.max_streams = 0)],
            |v| matches!(v, Violation::Limit("zero streams")),
        ),
        (
            "a tiny frame limit",
            vec![hello_frame(|h| h.max_frame_len = 10)],
            |v| matches!(v, Violation::Limit(_)),
        ),
        (
            "a garbage HELLO",
            vec![frame(FrameType::Hello, &[0xff, 0xff])],
            |v| {
                matches!(
                    v,
                    Violation::Decode {
                        message: "Hello",
                        ..
                    }
                )
            },
        ),
        ("RECON first", vec![recon_frame()], |v| {
            matches!(
                v,
                Violation::Unexpected {
                    expected: "HELLO",
                    got: FrameType::Recon,
                    ..
                }
            )
        }),
        (
            "garbage summaries",
            vec![
                hello_frame(|_| {}),
                frame(
                    FrameType::Recon,
                    &pb::Recon {
                        packed_summaries: Bytes::from_static(b"not zstd"),
                        wants: Bytes::new(),
                        done: true,
                    }
                    .encode_to_vec(),
                ),
            ],
            |v| matches!(v, Violation::Summaries(_)),
        ),
        (
            "a refusal naming a 31-byte hash",
            vec![
                hello_frame(|_| {}),
                recon_frame(),
                summary_frame(vec![short_hash]),
            ],
            |v| matches!(v, Violation::MalformedHash(_)),
        ),
        (
            "DONE before SUMMARY",
            vec![hello_frame(|_| {}), recon_frame(), encode_done(0, 0)],
            |v| {
                matches!(
                    v,
                    Violation::Unexpected {
                        expected: "SUMMARY",
                        ..
                    }
                )
            },
        ),
        (
            "a frame after DONE",
            vec![
                hello_frame(|_| {}),
                recon_frame(),
                summary_frame(vec![]),
                encode_done(0, 0),
                summary_frame(vec![]),
            ],
            |v| matches!(v, Violation::AfterDone(FrameType::Summary)),
        ),
        (
            "the end before SUMMARY",
            vec![hello_frame(|_| {}), recon_frame()],
            |v| {
                matches!(
                    v,
                    Violation::EndedEarly {
                        missing: "SUMMARY",
                        ..
                    }
                )
            },
        ),
    ];
    for (name, control, expected) in cases {
        let (outcome, _) = against(Script {
            control,
            finish: true,
            data: good_data(),
        });
        let violation = violation(outcome);
        assert!(expected(&violation), "{name}: {violation:?}");
    }
}

#[test]
fn a_broken_data_stream_fails_the_session_as_the_peers_fault() {
    let (outcome, _) = against(Script {
        control: vec![hello_frame(|_| {}), recon_frame()],
        finish: false,
        data: vec![vec![frame(FrameType::Hello, &[])]],
    });
    assert!(matches!(
        violation(outcome),
        Violation::Unexpected {
            got: FrameType::Hello,
            ..
        }
    ));
}
