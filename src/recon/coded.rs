//! Coded reconciliation: protocol v2's `RECON` rounds with rateless IBLT
//! cells ([`super::riblt`]), as a pure state machine. Negotiated in `HELLO` as
//! [`FEATURE`]; the full summary exchange stays the fallback.
//!
//! # The exchange
//!
//! ```text
//! initiator                                   responder
//!   PROBE (first cells + fingerprints) ──────▶  compares it with its own
//!                                               probe: the difference's size
//!   ◀────────────────────────────── CELLS [0, k)  (k cells for that size)
//!   decodes its cells minus theirs:
//!   not yet ─▶ MORE n ──────────────────────▶
//!   ◀────────────────────────────── CELLS [k, k+n)
//!   decoded ─▶ WANTS {assets, metadata} ────▶  sends what is wanted
//!   sends what the responder lacks
//! ```
//!
//! One and a half round trips after `HELLO` when the estimate holds (it does
//! in about 95% of cases; each miss costs one more). The initiator learns the
//! whole difference — the summaries only it holds and those only the
//! responder holds, a metadata difference showing as one of each for the same
//! hash — and plans both directions with [`super::diff`] on those few
//! summaries. The responder learns only what it must send.
//!
//! # Invariants
//!
//! - What a store answers is taken as it is; what the peer says is checked:
//!   cells must continue where the last run ended and be no more than were
//!   asked for, a request for more stays within [`KEPT_CELLS`], wants can
//!   name no more assets than cells were sent (a difference of `d` elements
//!   never needs fewer than `d` cells to decode). A breach is a [`Violation`].
//! - Sizes come from the store of the side that sends: each side looks up the
//!   assets it sends by hash prefix in its own store
//!   ([`Outcome::send_lookup`]), never trusting a size from the peer (a
//!   decoded element, size included, is whatever the peer's cells made it).
//! - Whatever the scheme cannot finish (a store that keeps no cells, a
//!   difference too large for the cells kept, cells that do not decode, e.g.
//!   because a store changed between two runs of cells) ends in
//!   [`Step::Fallback`]: both sides then exchange full lists. A side that
//!   receives a full list while coding does the same.

use std::collections::VecDeque;

use super::riblt::estimate::{Comparison, Probe, PROBE_CELLS};
use super::riblt::{Cell, Decoder, PeelError, Progress};
use super::{diff, Diff};
use crate::asset::{AssetHash, HashPrefix, Summary};
use crate::wire::Violation;

/// The `HELLO` feature of a side that reconciles with coded cells.
pub const FEATURE: &str = "recon:riblt";

/// Cells a store keeps, so the most either side may ask for in one session.
pub const KEPT_CELLS: usize = super::riblt::estimate::PROBE_SPAN;

/// Which side of the exchange this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Sends the probe and decodes.
    Initiator,
    /// Answers with cells and sends what is wanted.
    Responder,
}

/// What the exchange needs from our store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreNeed {
    /// Our probe.
    Probe,
    /// `count` of our cells from `start`.
    Cells {
        /// The first index.
        start: usize,
        /// How many.
        count: usize,
    },
}

/// A coded message, carried in the fields of a `RECON` frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The initiator's probe.
    Probe(Probe),
    /// A run of the responder's cells from `start`.
    Cells {
        /// Index of the first cell.
        start: usize,
        /// The cells.
        cells: Vec<Cell>,
    },
    /// The initiator asks for this many more cells.
    More(usize),
    /// The initiator's conclusion: what the responder is to send.
    Wants {
        /// Assets the initiator lacks, by hash prefix (the responder finds
        /// its own assets by them; a quarter of the bytes of whole hashes).
        assets: Vec<HashPrefix>,
        /// Assets whose metadata on the responder's side is news.
        meta: Vec<AssetHash>,
        /// Assets the responder lacks, whole hashes, with their sizes: the
        /// initiator's own, as its cells have them (0, unknown, when a peer
        /// sent none): what a responder that pulls
        /// ([`crate::session::v2::pull`]) asks for, and plans its asks by
        /// (a large asset by leases). Sent only then.
        lacks: Vec<(AssetHash, u64)>,
    },
}

/// What one side is to do once reconciled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Assets to send, by hash prefix, sorted and distinct: our store is
    /// asked for their hashes and sizes. On either side: a decoded element
    /// is the peer's word (the responder chooses its cells freely), so no
    /// size is taken from it.
    pub send_lookup: Vec<HashPrefix>,
    /// Assets whose metadata to send.
    pub send_meta: Vec<AssetHash>,
    /// Assets to expect from the peer (as far as this side knows).
    pub expect: usize,
    /// Assets this side lacks, by whole hash, with the size the peer gave
    /// (0 when unknown), as far as it knows: what it asks for when it pulls.
    /// The initiator decoded them; the responder has them from the
    /// initiator's `lacks` (sizes unknown from a peer that sends none).
    pub receive: Vec<(AssetHash, u64)>,
}

/// What the exchange asks for next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this message to the peer.
    Send(Message),
    /// Ask our store.
    Need(StoreNeed),
    /// Reconciled.
    Done(Outcome),
    /// The scheme cannot finish; exchange full lists instead.
    Fallback(&'static str),
}

#[derive(Debug)]
enum State {
    /// Initiator: waiting for our probe.
    OurProbe,
    /// Initiator: waiting for the peer's next run of at most `asked` cells.
    PeerCells { asked: usize },
    /// Initiator: holding the peer's run, waiting for ours at the same indices.
    OurCells { theirs: Vec<Cell> },
    /// Responder: waiting for the peer's probe.
    PeerProbe,
    /// Responder: holding the peer's probe, waiting for ours.
    ProbeToCompare { theirs: Probe },
    /// Responder: waiting for the `count` cells of ours to send.
    CellsToSend { count: usize },
    /// Responder: cells sent; waiting for a request for more, or the wants.
    Answered,
    /// Finished, or fallen back.
    Over,
}

/// One side of a coded exchange; see the module docs.
#[derive(Debug)]
pub struct CodedRecon {
    side: Side,
    state: State,
    decoder: Decoder,
    /// Responder: cells sent so far.
    sent: usize,
    steps: VecDeque<Step>,
}

impl CodedRecon {
    /// Starts an exchange; the initiator's first step asks for its probe.
    pub fn new(side: Side) -> Self {
        let (state, steps) = match side {
            Side::Initiator => (
                State::OurProbe,
                VecDeque::from([Step::Need(StoreNeed::Probe)]),
            ),
            Side::Responder => (State::PeerProbe, VecDeque::new()),
        };
        Self {
            side,
            state,
            decoder: Decoder::new(),
            sent: 0,
            steps,
        }
    }

    /// The next thing to do, if any.
    pub fn poll_step(&mut self) -> Option<Step> {
        self.steps.pop_front()
    }

    /// Whether the exchange waits for a message from the peer.
    pub fn wants_message(&self) -> bool {
        matches!(
            self.state,
            State::PeerCells { .. } | State::PeerProbe | State::Answered
        )
    }

    fn fallback(&mut self, why: &'static str) {
        self.state = State::Over;
        self.steps.push_back(Step::Fallback(why));
    }

    /// Our probe, or `None` when our store keeps no cells.
    pub fn handle_probe(&mut self, ours: Option<Probe>) {
        let Some(ours) = ours else {
            return self.fallback("this store keeps no coded cells");
        };
        match std::mem::replace(&mut self.state, State::Over) {
            State::OurProbe => {
                self.steps.push_back(Step::Send(Message::Probe(ours)));
                self.state = State::PeerCells { asked: KEPT_CELLS };
            }
            State::ProbeToCompare { theirs } => match theirs.compare_probe(&ours) {
                Ok(comparison) => {
                    let count = match comparison {
                        Comparison::Decoded(d)
                            if d.only_ours.is_empty() && d.only_theirs.is_empty() =>
                        {
                            1
                        }
                        Comparison::Decoded(_) => PROBE_CELLS,
                        Comparison::Estimated(estimate) => estimate.cells,
                    };
                    if count > KEPT_CELLS {
                        return self.fallback("the difference is too large for the cells kept");
                    }
                    let stores = [&theirs, &ours].map(|p| p.cells[0].count.unsigned_abs());
                    if !pays(count, stores[0] + stores[1]) {
                        return self.fallback("the difference is a large part of the stores");
                    }
                    self.steps
                        .push_back(Step::Need(StoreNeed::Cells { start: 0, count }));
                    self.state = State::CellsToSend { count };
                }
                // The probes of two sets always subtract into one.
                Err(PeelError::Inconsistent | PeelError::LengthMismatch { .. }) => {
                    self.fallback("the probes do not compare")
                }
            },
            other => self.state = other,
        }
    }

    /// Our cells from the start of the last need, or `None` when our store
    /// keeps none.
    pub fn handle_cells(&mut self, ours: Option<Vec<Cell>>) {
        let Some(ours) = ours else {
            return self.fallback("this store keeps no coded cells");
        };
        match std::mem::replace(&mut self.state, State::Over) {
            State::CellsToSend { count } => {
                if ours.is_empty() || ours.len() < count {
                    // Our store keeps fewer cells than this exchange needs:
                    // not the peer's fault.
                    return self.fallback("this store keeps fewer cells than needed");
                }
                let start = self.sent;
                self.sent += ours.len();
                self.steps
                    .push_back(Step::Send(Message::Cells { start, cells: ours }));
                self.state = State::Answered;
            }
            State::OurCells { theirs } => {
                if ours.len() != theirs.len() {
                    return self.fallback("this store keeps fewer cells than the peer sent");
                }
                match self.decoder.add(&ours, &theirs) {
                    Ok(Progress::Decoded(decoded)) => {
                        let ours: Vec<Summary> =
                            decoded.only_ours.iter().map(|e| e.summary()).collect();
                        let theirs: Vec<Summary> =
                            decoded.only_theirs.iter().map(|e| e.summary()).collect();
                        let (mine, peers) = (diff(&ours, &theirs), diff(&theirs, &ours));
                        self.steps.push_back(Step::Send(Message::Wants {
                            assets: prefixes(&mine.assets_to_receive),
                            meta: peers.meta_to_send,
                            lacks: sized(&mine.assets_to_send, &ours),
                        }));
                        self.steps
                            .push_back(Step::Done(initiator_outcome(mine, &theirs)));
                    }
                    Ok(Progress::NeedMore) => {
                        let received = self.decoder.received();
                        let more = received.min(KEPT_CELLS - received);
                        if more == 0 {
                            return self.fallback("the difference is too large for the cells kept");
                        }
                        self.steps.push_back(Step::Send(Message::More(more)));
                        self.state = State::PeerCells { asked: more };
                    }
                    Err(_) => self.fallback("the cells do not decode"),
                }
            }
            other => self.state = other,
        }
    }

    /// A coded message from the peer.
    pub fn handle_message(&mut self, message: Message) -> Result<(), Violation> {
        let unexpected = || Violation::Recon("a coded RECON out of turn".into());
        match (std::mem::replace(&mut self.state, State::Over), message) {
            (State::PeerProbe, Message::Probe(theirs)) => {
                self.steps.push_back(Step::Need(StoreNeed::Probe));
                self.state = State::ProbeToCompare { theirs };
            }
            (State::PeerCells { asked }, Message::Cells { start, cells }) => {
                if start != self.decoder.received() || cells.is_empty() || cells.len() > asked {
                    return Err(Violation::Recon(format!(
                        "cells {start}..{} when {} onwards, at most {asked}, were due",
                        start + cells.len(),
                        self.decoder.received()
                    )));
                }
                let count = cells.len();
                self.steps
                    .push_back(Step::Need(StoreNeed::Cells { start, count }));
                self.state = State::OurCells { theirs: cells };
            }
            (State::Answered, Message::More(count)) => {
                if count == 0 || self.sent + count > KEPT_CELLS {
                    return Err(Violation::Recon(format!(
                        "{count} more cells after {} exceed the {KEPT_CELLS} kept",
                        self.sent
                    )));
                }
                let start = self.sent;
                self.steps
                    .push_back(Step::Need(StoreNeed::Cells { start, count }));
                self.state = State::CellsToSend { count };
            }
            (
                State::Answered,
                Message::Wants {
                    assets,
                    meta,
                    lacks,
                },
            ) => {
                let named = assets.len() + meta.len() + lacks.len();
                if named > self.sent.max(PROBE_CELLS) {
                    return Err(Violation::Recon(format!(
                        "{named} wants and lacks from {} cells",
                        self.sent
                    )));
                }
                self.steps.push_back(Step::Done(Outcome {
                    send_lookup: assets,
                    send_meta: meta,
                    expect: lacks.len(),
                    receive: lacks,
                }));
            }
            _ => return Err(unexpected()),
        }
        Ok(())
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }
}

/// Bytes of one cell on the wire, about (see [`super::riblt::CELL_WIRE_MIN`]).
const CELL_BYTES: u64 = 70;

/// Bytes of one summary in a full list, about (measured: 66 at 100k and 1M).
const SUMMARY_BYTES: u64 = 65;

/// Whether `cells` of coded reconciliation pay against full lists of
/// `summaries` in all: when they cost at most half the bytes. Beyond that
/// (first contact with an empty node, say) the full lists are as cheap and
/// spare the sender a store lookup per asset it is asked for. A handful of
/// cells always pays.
fn pays(cells: usize, summaries: u64) -> bool {
    cells <= 2 * PROBE_CELLS || cells as u64 * CELL_BYTES <= summaries * SUMMARY_BYTES / 2
}

/// The initiator's plan; `theirs` are the peer's decoded summaries (their
/// sizes are the peer's word, good enough to pace what we ask for).
fn initiator_outcome(mine: Diff, theirs: &[Summary]) -> Outcome {
    Outcome {
        send_lookup: prefixes(&mine.assets_to_send),
        send_meta: mine.meta_to_send,
        expect: mine.assets_to_receive.len(),
        receive: sized(&mine.assets_to_receive, theirs),
    }
}

/// `hashes` with their sizes among `summaries` (0 for one not there).
fn sized(hashes: &[AssetHash], summaries: &[Summary]) -> Vec<(AssetHash, u64)> {
    let sizes: std::collections::HashMap<AssetHash, u64> =
        summaries.iter().map(|s| (s.hash, s.size)).collect();
    hashes
        .iter()
        .map(|hash| (*hash, sizes.get(hash).copied().unwrap_or(0)))
        .collect()
}

/// The prefixes of `hashes`, sorted, each once (two assets may share one).
fn prefixes(hashes: &[AssetHash]) -> Vec<HashPrefix> {
    let mut out: Vec<HashPrefix> = hashes.iter().map(AssetHash::prefix).collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asset::MetaVersion;
    use crate::recon::riblt::{CodedCells, Element};

    fn summary(i: u64, meta_at: i64) -> Summary {
        Summary {
            hash: AssetHash::of(&i.to_le_bytes()),
            created_at_ms: 1_000,
            size: 100 + i,
            version: MetaVersion::announced(meta_at, &[i as u8; 8]),
        }
    }

    fn cells(summaries: &[Summary]) -> CodedCells {
        let mut cells = CodedCells::new(KEPT_CELLS);
        for s in summaries {
            cells.insert(&Element::of(s));
        }
        cells
    }

    /// Runs both sides against their cells; the outcomes and the bytes of
    /// every message, in the order sent.
    fn exchange(a: &[Summary], b: &[Summary]) -> (Outcome, Outcome, Vec<usize>) {
        let (cells_a, cells_b) = (cells(a), cells(b));
        let mut sides = [
            (CodedRecon::new(Side::Initiator), &cells_a),
            (CodedRecon::new(Side::Responder), &cells_b),
        ];
        let mut done: [Option<Outcome>; 2] = [None, None];
        let mut sent = Vec::new();
        for _round in 0..20 {
            let mut idle = true;
            for i in 0..2 {
                while let Some(step) = sides[i].0.poll_step() {
                    idle = false;
                    let ours = sides[i].1;
                    match step {
                        Step::Need(StoreNeed::Probe) => {
                            sides[i].0.handle_probe(Some(Probe::of(ours)))
                        }
                        Step::Need(StoreNeed::Cells { start, count }) => sides[i]
                            .0
                            .handle_cells(Some(ours.cells(start..start + count).to_vec())),
                        Step::Send(message) => {
                            sent.push(wire_len(&message));
                            sides[1 - i].0.handle_message(message).unwrap();
                        }
                        Step::Done(outcome) => done[i] = Some(outcome),
                        Step::Fallback(why) => panic!("fell back: {why}"),
                    }
                }
            }
            if idle {
                break;
            }
        }
        let [x, y] = done;
        (x.expect("initiator done"), y.expect("responder done"), sent)
    }

    fn wire_len(message: &Message) -> usize {
        match message {
            Message::Probe(p) => p.encode().len(),
            Message::Cells { cells, .. } => crate::recon::riblt::encode_cells(cells).len(),
            Message::More(_) => 4,
            Message::Wants {
                assets,
                meta,
                lacks,
            } => 8 * assets.len() + 32 * meta.len() + 40 * lacks.len(),
        }
    }

    fn hashes(summaries: &[Summary]) -> Vec<AssetHash> {
        let mut out: Vec<AssetHash> = summaries.iter().map(|s| s.hash).collect();
        out.sort();
        out
    }

    #[test]
    fn identical_sets_settle_in_a_probe_and_one_cell() {
        let set: Vec<Summary> = (0..500).map(|i| summary(i, 5)).collect();
        let (i, r, sent) = exchange(&set, &set);
        assert_eq!(i, Outcome::default());
        assert_eq!(r, Outcome::default());
        assert_eq!(sent.len(), 3, "probe, one cell, empty wants");
        assert!(sent.iter().sum::<usize>() < 8 * 1024, "{sent:?}");
    }

    #[test]
    fn each_side_learns_what_to_send() {
        let shared: Vec<Summary> = (0..2_000).map(|i| summary(i, 5)).collect();
        let mut a = shared.clone();
        let mut b = shared;
        a.extend((10_000..10_040).map(|i| summary(i, 5)));
        b.extend((20_000..20_030).map(|i| summary(i, 5)));
        // Metadata edits: newer on A for 0..10, newer on B for 10..15.
        for s in &mut a[..10] {
            s.version = MetaVersion::announced(9, &[0xaa; 8]);
        }
        for s in &mut b[10..15] {
            s.version = MetaVersion::announced(9, &[0xbb; 8]);
        }
        let (i, r, _) = exchange(&a, &b);
        let mut sent: Vec<HashPrefix> = a[2_000..].iter().map(|s| s.hash.prefix()).collect();
        sent.sort();
        assert_eq!(i.send_lookup, sent);
        assert_eq!(i.send_meta, hashes(&a[..10]));
        assert_eq!(i.expect, 30);
        let mut wanted = r.send_lookup.clone();
        wanted.sort();
        let mut expected: Vec<HashPrefix> = b[2_000..].iter().map(|s| s.hash.prefix()).collect();
        expected.sort();
        assert_eq!(wanted, expected);
        assert_eq!(r.send_meta, hashes(&b[10..15]));
    }

    #[test]
    fn subsets_reconcile_and_a_whole_store_of_difference_falls_back() {
        let full: Vec<Summary> = (0..2_000).map(|i| summary(i, 5)).collect();
        let (i, r, _) = exchange(&full[..1_950], &full);
        assert_eq!(i.expect, 50);
        assert_eq!(r.send_lookup.len(), 50);
        // Empty against 2,000: cells would cost more than the full list.
        let mut initiator = CodedRecon::new(Side::Initiator);
        initiator.handle_probe(Some(Probe::of(&cells(&[]))));
        while initiator.poll_step().is_some() {}
        let mut responder = CodedRecon::new(Side::Responder);
        responder
            .handle_message(Message::Probe(Probe::of(&cells(&[]))))
            .unwrap();
        let _ = responder.poll_step();
        responder.handle_probe(Some(Probe::of(&cells(&full))));
        assert!(matches!(responder.poll_step(), Some(Step::Fallback(_))));
        let (i, r, _) = exchange(&full, &full[..1_900]);
        assert_eq!(i.send_lookup.len(), 100);
        assert!(r.send_lookup.is_empty());
    }

    #[test]
    fn a_peer_out_of_turn_or_out_of_bounds_is_a_violation() {
        let probe = Probe::of(&cells(&[summary(1, 1)]));
        // A responder never receives cells; an initiator never a probe.
        let mut responder = CodedRecon::new(Side::Responder);
        assert!(responder.handle_message(Message::More(1)).is_err());
        let mut initiator = CodedRecon::new(Side::Initiator);
        assert!(initiator
            .handle_message(Message::Probe(probe.clone()))
            .is_err());

        // Cells that skip ahead.
        let mut initiator = CodedRecon::new(Side::Initiator);
        initiator.handle_probe(Some(probe.clone()));
        let cells_at = |start| Message::Cells {
            start,
            cells: vec![Cell::ZERO; 4],
        };
        assert!(initiator.handle_message(cells_at(4)).is_err());

        // More cells than kept, and more wants than cells could decode.
        let answered = || {
            let mut responder = CodedRecon::new(Side::Responder);
            responder
                .handle_message(Message::Probe(probe.clone()))
                .unwrap();
            responder.handle_probe(Some(probe.clone()));
            responder.handle_cells(Some(vec![Cell::ZERO; 48]));
            responder
        };
        assert!(answered()
            .handle_message(Message::More(KEPT_CELLS))
            .is_err());
        let wants: Vec<HashPrefix> = (0..49u64)
            .map(|i| AssetHash::of(&i.to_le_bytes()).prefix())
            .collect();
        assert!(answered()
            .handle_message(Message::Wants {
                assets: wants,
                meta: Vec::new(),
                lacks: Vec::new(),
            })
            .is_err());
    }

    #[test]
    fn wanted_prefixes_are_sorted_and_distinct() {
        let a = AssetHash::of(b"a");
        let mut twin = *a.as_bytes();
        twin[31] ^= 1; // the same first 8 bytes
        let b = AssetHash::of(b"b");
        let got = prefixes(&[b, a, AssetHash::from_bytes(twin), b]);
        let mut expected = vec![a.prefix(), b.prefix()];
        expected.sort();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_responder_whose_store_keeps_fewer_cells_falls_back_not_blames() {
        let set: Vec<Summary> = (0..2_000).map(|i| summary(i, 5)).collect();
        let probe = Probe::of(&cells(&set));
        let mut responder = CodedRecon::new(Side::Responder);
        responder.handle_message(Message::Probe(probe)).unwrap();
        assert_eq!(responder.poll_step(), Some(Step::Need(StoreNeed::Probe)));
        responder.handle_probe(Some(Probe::of(&cells(&set[..1_900]))));
        let Some(Step::Need(StoreNeed::Cells { count, .. })) = responder.poll_step() else {
            panic!("cells asked for");
        };
        responder.handle_cells(Some(vec![Cell::ZERO; count - 1]));
        assert!(matches!(responder.poll_step(), Some(Step::Fallback(_))));
    }

    #[test]
    fn a_store_without_cells_or_an_undecodable_difference_falls_back() {
        let mut initiator = CodedRecon::new(Side::Initiator);
        assert_eq!(initiator.poll_step(), Some(Step::Need(StoreNeed::Probe)));
        initiator.handle_probe(None);
        assert!(matches!(initiator.poll_step(), Some(Step::Fallback(_))));

        // Cells that contradict themselves: the scheme gives up, the session
        // does not blame the peer (a store may have changed between runs).
        let mut initiator = CodedRecon::new(Side::Initiator);
        initiator.handle_probe(Some(Probe::of(&cells(&[]))));
        while initiator.poll_step().is_some() {}
        let mut bogus = Cell::ZERO;
        bogus.count = 2;
        initiator
            .handle_message(Message::Cells {
                start: 0,
                cells: vec![bogus; 4],
            })
            .unwrap();
        assert_eq!(
            initiator.poll_step(),
            Some(Step::Need(StoreNeed::Cells { start: 0, count: 4 }))
        );
        initiator.handle_cells(Some(vec![Cell::ZERO; 4]));
        match initiator.poll_step() {
            Some(Step::Send(Message::More(4)) | Step::Fallback(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
