//! Live sync's offer and answer on the simulated pair: a delivered offer, a
//! declined asset, and every hostile reply or offer.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use super::engine;
use super::net::{Net, Path, StreamId};
use super::store::{asset, SimStore};
use super::Side;
use crate::asset::{AssetHash, Summary};
use crate::engine::EngineConfig;
use crate::pb;
use crate::recon::compact;
use crate::session::live::{
    Answering, AnsweringAnswer, AnsweringOutcome, AnsweringRequest, Offering, OfferingAnswer,
    OfferingOutcome, OfferingRequest, MAX_OFFER_FRAME,
};
use crate::session::machine::Machine;
use crate::session::SessionError;
use crate::wire::data_stream::{encode_done, frame};
use crate::wire::{FrameType, Violation};

const IDLE: Duration = Duration::from_secs(10);

fn config() -> EngineConfig {
    EngineConfig {
        inline_limit: 4096,
        chunk_bytes: 1024,
        idle_timeout: IDLE,
        ..EngineConfig::default()
    }
}

/// Our summaries of `assets` as an offer carries them.
fn offer_of(store: &SimStore) -> Vec<Summary> {
    store
        .list()
        .into_iter()
        .map(|s| s.truncated(compact::DIGEST_PREFIX))
        .collect()
}

/// The offerer's side of one offer, its store, and its send in flight.
struct Offerer {
    side: Side<Offering>,
    store: SimStore,
    due: Option<(std::time::Instant, OfferingAnswer)>,
}

impl Offerer {
    fn new(net: &mut Net, store: SimStore, out: StreamId, inp: StreamId) -> Self {
        let machine = Offering::new(offer_of(&store), 3, IDLE, net.now);
        Self {
            side: Side::new(machine, out, inp, MAX_OFFER_FRAME),
            store,
            due: None,
        }
    }

    fn step(&mut self, net: &mut Net) -> bool {
        let now = net.now;
        let mut progressed = false;
        loop {
            let mut acted = false;
            for request in self.side.pump(now, net) {
                let OfferingRequest::Send(plan) = request;
                let (sent, acked) =
                    engine::send(net, now, &self.store, &plan, &config(), &[self.side.out]);
                self.due = Some((acked, OfferingAnswer::Sent(Ok(sent))));
                acted = true;
            }
            if self.due.as_ref().is_some_and(|(at, _)| *at <= now) {
                let (_, answer) = self.due.take().expect("checked");
                self.side.machine.handle_answer(now, answer);
                acted = true;
            }
            if !acted {
                return progressed;
            }
            progressed = true;
        }
    }

    fn next_event(&self) -> Option<std::time::Instant> {
        self.side
            .next_event()
            .into_iter()
            .chain(self.due.as_ref().map(|(at, _)| *at))
            .min()
    }
}

/// The answerer's side: its store, which offered assets it declines (as if
/// another peer delivered them), and its receive in flight.
struct Answerer {
    side: Side<Answering>,
    store: SimStore,
    declined: Vec<AssetHash>,
    receive: Option<engine::Receive>,
}

impl Answerer {
    fn new(store: SimStore, out: StreamId, inp: StreamId, now: std::time::Instant) -> Self {
        Self {
            side: Side::new(Answering::new(3, IDLE, now), out, inp, MAX_OFFER_FRAME),
            store,
            declined: Vec::new(),
            receive: None,
        }
    }

    fn step(&mut self, net: &mut Net) -> bool {
        let now = net.now;
        let mut progressed = false;
        loop {
            let mut acted = false;
            for request in self.side.pump(now, net) {
                acted = true;
                match request {
                    AnsweringRequest::Claim(offered) => {
                        let held: Vec<Summary> = offered
                            .iter()
                            .filter_map(|s| {
                                self.store.meta(s.hash).map(|(size, meta)| {
                                    Summary::of(s.hash, size, &meta)
                                        .truncated(compact::DIGEST_PREFIX)
                                })
                            })
                            .collect();
                        let wants = offered
                            .iter()
                            .map(|s| s.hash)
                            .filter(|h| self.store.meta(*h).is_none() && !self.declined.contains(h))
                            .collect();
                        self.side
                            .machine
                            .handle_answer(now, AnsweringAnswer::Claimed { held, wants });
                    }
                    AnsweringRequest::Receive => {
                        let leftover = self.side.take_input();
                        self.receive =
                            Some(engine::Receive::new(&[self.side.inp], &config(), leftover));
                    }
                }
            }
            if let Some(receive) = &mut self.receive {
                if let Some(received) = receive.poll(net, now, &mut self.store) {
                    self.receive = None;
                    self.side
                        .machine
                        .handle_answer(now, AnsweringAnswer::Received(received));
                    acted = true;
                }
            }
            if !acted {
                return progressed;
            }
            progressed = true;
        }
    }
}

struct Run {
    offer: Result<OfferingOutcome, SessionError>,
    answer: Result<AnsweringOutcome, SessionError>,
    stores: (SimStore, SimStore),
}

/// One offer of everything in `a` to a peer holding `b`.
fn offer(a: SimStore, b: SimStore, declined: Vec<AssetHash>, path: Path, seed: u64) -> Run {
    let mut net = Net::new(path, seed);
    let (o, r) = (net.open(), net.open());
    let mut offerer = Offerer::new(&mut net, a, o, r);
    let mut answerer = Answerer::new(b, r, o, net.now);
    answerer.declined = declined;
    loop {
        offerer.step(&mut net);
        answerer.step(&mut net);
        if offerer.side.is_over() && answerer.side.is_over() {
            break;
        }
        let next = [
            net.next_event(),
            offerer.next_event(),
            answerer.side.next_event(),
        ]
        .into_iter()
        .flatten()
        .filter(|at| *at > net.now)
        .min();
        net.now = next.unwrap_or_else(|| panic!("deadlock at {:?} (seed {seed})", net.elapsed()));
    }
    Run {
        offer: offerer.side.outcome.take().expect("over"),
        answer: answerer.side.outcome.take().expect("over"),
        stores: (offerer.store, answerer.store),
    }
}

#[test]
fn an_offer_delivers_what_is_lacking_and_newer_metadata_over_any_path() {
    for (path, seed) in [(Path::clean(), 1), (Path::lossy(), 2), (Path::lossy(), 3)] {
        let shared_new = asset(1, 700, 50);
        let shared_old = asset(1, 700, 10);
        let a = SimStore::with([asset(2, 300, 10), asset(3, 9000, 10), shared_new.clone()]);
        let b = SimStore::with([shared_old]);
        let run = offer(a, b, vec![], path, seed);
        let offered = run.offer.expect("offer completes");
        let answered = run.answer.expect("answer completes");
        assert_eq!(run.stores.0, run.stores.1, "converged (seed {seed})");
        assert_eq!((offered.assets_sent, answered.received.assets), (2, 2));
        assert_eq!(answered.received.meta_applied, 1);
        assert!(offered.undelivered.is_empty());
        // The peer now holds all three, the shared one at our (newer) version.
        let mut holds = std::collections::HashMap::new();
        for (hash, version) in &offered.peer_holds {
            let best = holds.entry(*hash).or_insert(*version);
            *best = (*best).max(*version);
        }
        assert_eq!(holds.len(), 3);
        assert_eq!(
            holds[&shared_new.hash],
            shared_new
                .summary()
                .truncated(compact::DIGEST_PREFIX)
                .version
        );
        assert_eq!(answered.offered.len(), 3);
    }
}

#[test]
fn a_declined_asset_comes_back_as_undelivered() {
    let kept = asset(5, 100, 10);
    let declined = asset(6, 100, 10);
    let a = SimStore::with([kept.clone(), declined.clone()]);
    let run = offer(
        a,
        SimStore::default(),
        vec![declined.hash],
        Path::clean(),
        4,
    );
    let offered = run.offer.expect("offer completes");
    assert_eq!(offered.undelivered, vec![declined.hash]);
    assert!(run.stores.1.meta(kept.hash).is_some());
    assert!(run.stores.1.meta(declined.hash).is_none());
    let holds: Vec<AssetHash> = offered.peer_holds.iter().map(|(h, _)| *h).collect();
    assert_eq!(
        holds,
        vec![kept.hash],
        "only what was delivered is recorded"
    );
}

/// An offer of `a` against a scripted answerer that replies with `script`
/// (then finishes when `finish`).
fn offer_against(
    a: SimStore,
    script: Vec<Bytes>,
    finish: bool,
) -> (Result<OfferingOutcome, SessionError>, Duration) {
    let mut net = Net::new(Path::clean(), 6);
    let (o, r) = (net.open(), net.open());
    let now = net.now;
    for frame in &script {
        net.send(r, now, frame);
    }
    if finish {
        net.finish(r, now);
    }
    let mut offerer = Offerer::new(&mut net, a, o, r);
    loop {
        offerer.step(&mut net);
        if offerer.side.is_over() {
            return (offerer.side.outcome.take().expect("over"), net.elapsed());
        }
        let next = [net.next_event(), offerer.next_event()]
            .into_iter()
            .flatten()
            .filter(|at| *at > net.now)
            .min();
        net.now = next.unwrap_or_else(|| panic!("deadlock at {:?}", net.elapsed()));
    }
}

fn reply(held: &[Summary], wants: &[u8]) -> Bytes {
    let round = pb::Recon {
        packed_summaries: Bytes::from(compact::encode(held, 3)),
        wants: Bytes::copy_from_slice(wants),
        done: true,
        ..Default::default()
    };
    frame(FrameType::Recon, &round.encode_to_vec())
}

fn violation<T: std::fmt::Debug>(outcome: Result<T, SessionError>) -> Violation {
    match outcome {
        Err(SessionError::Peer(violation)) => violation,
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn hostile_replies_are_violations_and_silence_is_bounded() {
    let offered = asset(8, 100, 10);
    let store = || SimStore::with([offered.clone()]);
    let stranger = AssetHash::of(b"never offered");

    let (outcome, _) = offer_against(store(), vec![reply(&[], stranger.as_bytes())], false);
    assert!(matches!(violation(outcome), Violation::WantsNotOffered(h) if h == stranger));

    let twice = [*offered.hash.as_bytes(), *offered.hash.as_bytes()].concat();
    let (outcome, _) = offer_against(store(), vec![reply(&[], &twice)], false);
    assert!(matches!(violation(outcome), Violation::WantsTwice(_)));

    let (outcome, _) = offer_against(store(), vec![reply(&[], &[1; 40])], false);
    assert!(matches!(violation(outcome), Violation::WantsNotWhole(40)));

    let (outcome, _) = offer_against(store(), vec![frame(FrameType::Summary, &[])], false);
    assert!(matches!(
        violation(outcome),
        Violation::Unexpected {
            expected: "RECON",
            ..
        }
    ));

    // No reply at all: the offer gives up one idle timeout after it was sent.
    let (outcome, at) = offer_against(store(), vec![], false);
    assert!(matches!(
        violation(outcome),
        Violation::Silent { waited: IDLE, .. }
    ));
    assert_eq!(at, IDLE);

    // A reply but no SUMMARY: twice the idle timeout after the data went out.
    let (outcome, at) = offer_against(store(), vec![reply(&[], offered.hash.as_bytes())], false);
    assert!(matches!(
        violation(outcome),
        Violation::Silent { waited, during: "waiting for the SUMMARY of an offer" } if waited == 2 * IDLE
    ));
    assert!(
        at > 2 * IDLE && at < 2 * IDLE + Duration::from_secs(1),
        "{at:?}"
    );

    // The stream ends after the reply: the SUMMARY never comes.
    let (outcome, _) = offer_against(store(), vec![reply(&[], &[])], true);
    assert!(matches!(
        violation(outcome),
        Violation::EndedEarly {
            missing: "SUMMARY",
            ..
        }
    ));
}

/// An answerer against a scripted offer.
fn answer_against(
    script: Vec<Bytes>,
    finish: bool,
) -> (Result<AnsweringOutcome, SessionError>, Duration) {
    let mut net = Net::new(Path::clean(), 8);
    let (o, r) = (net.open(), net.open());
    let now = net.now;
    for frame in &script {
        net.send(o, now, frame);
    }
    if finish {
        net.finish(o, now);
    }
    let mut answerer = Answerer::new(SimStore::default(), r, o, now);
    loop {
        answerer.step(&mut net);
        if answerer.side.is_over() {
            return (answerer.side.outcome.take().expect("over"), net.elapsed());
        }
        let next = [net.next_event(), answerer.side.next_event()]
            .into_iter()
            .flatten()
            .filter(|at| *at > net.now)
            .min();
        net.now = next.unwrap_or_else(|| panic!("deadlock at {:?}", net.elapsed()));
    }
}

#[test]
fn hostile_offers_are_violations_and_an_answer_waits_only_so_long() {
    let (outcome, _) = answer_against(vec![frame(FrameType::Recon, &[0xff, 0xff])], true);
    assert!(matches!(
        violation(outcome),
        Violation::Decode {
            message: "Recon",
            ..
        }
    ));

    let (outcome, _) = answer_against(vec![encode_done(0, 0)], true);
    assert!(matches!(
        violation(outcome),
        Violation::Unexpected {
            expected: "RECON",
            ..
        }
    ));

    let (outcome, _) = answer_against(vec![], true);
    assert!(matches!(
        violation(outcome),
        Violation::EndedEarly {
            missing: "RECON",
            ..
        }
    ));

    let (outcome, at) = answer_against(vec![], false);
    assert!(matches!(
        violation(outcome),
        Violation::Silent { waited: IDLE, .. }
    ));
    assert_eq!(at, IDLE);

    // An offer whose data stream breaks the grammar.
    let offered = asset(9, 100, 10);
    let offer = pb::Recon {
        packed_summaries: Bytes::from(compact::encode(&[offered.summary()], 3)),
        wants: Bytes::new(),
        done: false,
        ..Default::default()
    };
    let (outcome, _) = answer_against(
        vec![
            frame(FrameType::Recon, &offer.encode_to_vec()),
            frame(FrameType::Hello, &[]),
        ],
        true,
    );
    assert!(matches!(
        violation(outcome),
        Violation::Unexpected {
            got: FrameType::Hello,
            ..
        }
    ));
}

#[test]
fn a_summary_that_overtakes_the_senders_own_acknowledgement_still_completes_the_offer() {
    // The peer's SUMMARY, DONE and end can all arrive before our send
    // pipeline has seen its stream acknowledged; the offer must complete
    // either way.
    let offered = asset(4, 100, 10);
    let now = std::time::Instant::now();
    let mut machine = Offering::new(offer_of(&SimStore::with([offered.clone()])), 3, IDLE, now);
    machine.poll_transmit().expect("the offer");
    let reply_frame = reply(&[], offered.hash.as_bytes());
    let as_frame = |bytes: Bytes| {
        crate::wire::Frame::new(
            crate::wire::FrameType::try_from(bytes[0]).unwrap(),
            bytes.slice(crate::wire::HEADER_LEN..),
        )
    };
    machine.handle_frame(now, as_frame(reply_frame));
    assert!(matches!(
        machine.poll_request(),
        Some(OfferingRequest::Send(_))
    ));
    machine.handle_frame(
        now,
        as_frame(frame(
            FrameType::Summary,
            &pb::SessionSummary::default().encode_to_vec(),
        )),
    );
    machine.handle_frame(now, as_frame(encode_done(0, 0)));
    machine.handle_end(now);
    assert!(
        machine.poll_outcome().is_none(),
        "our send is still running"
    );
    machine.handle_answer(now, OfferingAnswer::Sent(Ok(Default::default())));
    let outcome = machine
        .poll_outcome()
        .expect("complete")
        .expect("delivered");
    assert_eq!(outcome.peer_holds.len(), 1);
}
