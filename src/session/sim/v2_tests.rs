//! Protocol v2 on the simulated pair between two honest peers: negotiation,
//! reconciliation, data streams and `SUMMARY`, over clean and lossy paths.
//! The world the v2 tests share lives here too.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::engine;
use super::net::{Net, Path, StreamId};
use super::store::{asset, SimStore};
use super::Side;
use crate::asset::AssetHash;
use crate::engine::send::SendPlan;
use crate::engine::{EngineConfig, RejectReason};
use crate::recon::riblt::estimate::Probe;
use crate::session::machine::Machine;
use crate::session::v2::{pull, Answer, Claiming, Outcome, Request, Session, MAX_CONTROL_FRAME};
use crate::session::Role;
use crate::wire::CLOSE_DONE;
use crate::wire::{Frame, FrameType};

pub(super) fn config(streams: u32) -> EngineConfig {
    EngineConfig {
        streams,
        inline_limit: 4096,
        chunk_bytes: 1024,
        idle_timeout: Duration::from_secs(20),
        ..EngineConfig::default()
    }
}

/// One peer of the simulated pair.
pub(super) struct Peer {
    pub(super) side: Side<Session>,
    pub(super) store: SimStore,
    /// A `Receive` request waiting for the other side's data streams.
    pub(super) receive_config: Option<Arc<EngineConfig>>,
    pub(super) receive: Option<engine::Receive>,
    /// The engine started by `Send` and the plans fed to it so far.
    pub(super) sending: Option<(Arc<EngineConfig>, SendPlan)>,
    /// `Plan` requests served.
    pub(super) plans_fed: usize,
}

/// The simulated connection: two peers (or one and a script), their data
/// streams, and the answers scheduled for later.
pub(super) struct World {
    pub(super) net: Net,
    pub(super) peers: Vec<Peer>,
    /// Data streams opened towards peer `i`.
    pub(super) data_towards: [Vec<StreamId>; 2],
    /// Answers due at a time: (when, to which peer, what).
    pub(super) due: Vec<(std::time::Instant, usize, Answer)>,
    /// Data streams each peer opened (to count them).
    pub(super) opened: [usize; 2],
    /// `WANT` frames written towards peer `i` and not yet read: a want
    /// stream without loss or delay (pulling's logic is what is tested).
    pub(super) wants_towards: [std::collections::VecDeque<Frame>; 2],
    /// Peer `i` waits for the next frame of its peer's want stream.
    pub(super) reading_wants: [bool; 2],
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
                    Request::Page {
                        listing,
                        after,
                        limit,
                    } => {
                        let page = self.peers[i].store.list_page(after, limit);
                        self.peers[i].side.machine.handle_answer(
                            now,
                            Answer::Page {
                                listing,
                                page: Ok(page),
                            },
                        );
                    }
                    Request::Send { config, .. } => {
                        self.peers[i].sending = Some((config, SendPlan::default()))
                    }
                    Request::Plan { plan, last } => {
                        let (config, whole) =
                            self.peers[i].sending.as_mut().expect("Send before Plan");
                        whole.extend(plan);
                        let config = config.clone();
                        self.peers[i].plans_fed += 1;
                        self.peers[i]
                            .side
                            .machine
                            .handle_answer(now, Answer::Planned);
                        if last {
                            // The simulated engine sends the whole plan at
                            // the end; the machine's feeding is what is tested.
                            let (_, whole) = self.peers[i].sending.take().expect("sending");
                            let streams: Vec<StreamId> =
                                (0..config.streams).map(|_| self.net.open()).collect();
                            self.opened[i] += streams.len();
                            let (sent, acked) = engine::send(
                                &mut self.net,
                                now,
                                &self.peers[i].store,
                                &whole,
                                &config,
                                &streams,
                            );
                            self.data_towards[1 - i].extend(streams);
                            self.due.push((acked, i, Answer::Sent(Ok(sent))));
                        }
                    }
                    Request::Receive { config, .. } => self.peers[i].receive_config = Some(config),
                    Request::Claim { assets, .. } => {
                        let store = &self.peers[i].store;
                        let ask = assets
                            .into_iter()
                            .map(|(hash, _)| hash)
                            .filter(|hash| store.meta(*hash).is_none())
                            .collect();
                        let claiming = Claiming {
                            ask,
                            ..Claiming::default()
                        };
                        self.peers[i]
                            .side
                            .machine
                            .handle_answer(now, Answer::Claimed(Ok(claiming)));
                    }
                    Request::AwaitFree { hashes } => self.peers[i]
                        .side
                        .machine
                        .handle_answer(now, Answer::Freed(hashes)),
                    Request::Want { hashes, .. } => {
                        let payload = Bytes::from(pull::want_payload(&hashes, &[]));
                        self.wants_towards[1 - i].push_back(Frame::new(FrameType::Want, payload));
                        self.peers[i]
                            .side
                            .machine
                            .handle_answer(now, Answer::Wanted(Ok(())));
                    }
                    Request::EndWants { asked } => {
                        let payload = Bytes::from(pull::wants_done_payload(asked));
                        self.wants_towards[1 - i].push_back(Frame::new(FrameType::Done, payload));
                        self.peers[i]
                            .side
                            .machine
                            .handle_answer(now, Answer::Wanted(Ok(())));
                    }
                    Request::ReadWant => self.reading_wants[i] = true,
                    Request::PlanWanted { hashes, .. } => {
                        let (_, whole) = self.peers[i].sending.as_mut().expect("Send before Plan");
                        whole.extend(SendPlan {
                            wanted: hashes,
                            ..SendPlan::default()
                        });
                        self.peers[i]
                            .side
                            .machine
                            .handle_answer(now, Answer::PlannedWanted);
                    }
                    Request::Probe => {
                        let probe = Probe::of(&self.peers[i].store.coded());
                        self.peers[i]
                            .side
                            .machine
                            .handle_answer(now, Answer::Probe(Ok(Some(probe))));
                    }
                    Request::Cells { start, count } => {
                        let cells = self.peers[i]
                            .store
                            .coded()
                            .cells(start..start + count)
                            .to_vec();
                        self.peers[i]
                            .side
                            .machine
                            .handle_answer(now, Answer::Cells(Ok(Some(cells))));
                    }
                }
            }
            if self.reading_wants[i] {
                if let Some(frame) = self.wants_towards[i].pop_front() {
                    self.reading_wants[i] = false;
                    self.peers[i]
                        .side
                        .machine
                        .handle_answer(now, Answer::PeerWant(Ok(Some(frame))));
                    acted = true;
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
    pub(super) fn run(&mut self, seed: u64) {
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

pub(super) fn peer(
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
        sending: None,
        plans_fed: 0,
    }
}

/// Two honest peers with these stores and settings.
pub(super) fn pair(
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
        wants_towards: Default::default(),
        reading_wants: [false; 2],
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

pub(super) fn outcomes(world: &mut World) -> (Outcome, Outcome) {
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

/// The full exchange without coded cells, in pages of `page` summaries, or
/// as whole lists when `paged` is off.
/// The full exchange, pushed: each side feeds its engine what the merge
/// decides, which is what these tests count (pulled, the engine is fed what
/// the peer asks for instead: `pull_tests.rs`).
fn full_exchange(page: usize, paged: bool) -> EngineConfig {
    EngineConfig {
        coded_recon: false,
        paged_lists: paged,
        list_page: page,
        pull: false,
        ..config(2)
    }
}

#[test]
fn paged_lists_converge_page_by_page_and_feed_the_engine_in_parts() {
    for path in [Path::clean(), Path::lossy()] {
        for (seed, page) in (0..8).zip([1, 2, 3, 5, 8, 13, 21, 64]) {
            let config = || full_exchange(page, true);
            let mut world = pair(stores(), (config(), config()), (false, false), path, seed);
            world.run(seed);
            let (a, b) = outcomes(&mut world);
            assert_eq!(world.peers[0].store, world.peers[1].store, "page {page}");
            assert_eq!((a.report.assets_sent, a.report.assets_received), (13, 7));
            assert_eq!((a.report.meta_sent, b.report.meta_applied), (1, 1));
            // 17 summaries on one side, 11 on the other: small pages feed the
            // engine in several parts, one page feeds it once.
            if page <= 3 {
                assert!(
                    world.peers[0].plans_fed > 2,
                    "page {page}: {} plans",
                    world.peers[0].plans_fed
                );
            } else if page >= 17 {
                assert_eq!(world.peers[0].plans_fed, 1);
            }
        }
    }
}

#[test]
fn a_peer_that_does_not_page_gets_whole_lists_and_the_same_result() {
    for (seed, paged) in [(1, (true, false)), (2, (false, true)), (3, (false, false))] {
        let configs = (full_exchange(2, paged.0), full_exchange(2, paged.1));
        let mut world = pair(stores(), configs, (false, false), Path::clean(), seed);
        world.run(seed);
        let (a, b) = outcomes(&mut world);
        assert_eq!(world.peers[0].store, world.peers[1].store);
        assert_eq!((a.report.assets_sent, b.report.assets_sent), (13, 7));
        assert_eq!(world.peers[0].plans_fed, 1, "one whole plan");
    }
}
