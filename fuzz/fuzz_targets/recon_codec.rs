//! The reconciliation codecs (`src/recon`): the compact summary encoding,
//! the riblt cell wire form, the probe, and the peeling decoder and the coded
//! exchange behind them.
//!
//! Modes, picked by the first input byte:
//! - **compact**: [`compact::decode`] of arbitrary bytes, and of arbitrary
//!   bytes wrapped in a valid zstd frame (so the entry parser is reached),
//!   with an arbitrary bound: at most `bound` summaries, each of which
//!   re-encodes and decodes to itself;
//! - **compact round trip**: arbitrary summaries → [`compact::encode`] →
//!   [`compact::decode`] is the identity; one entry over the bound is refused;
//! - **cells**: [`decode_cells`] of arbitrary bytes with an arbitrary bound:
//!   at most that many cells, and [`encode_cells`] of them decodes back to
//!   them; the cells then go through the peeling [`Decoder`] against a real
//!   set's cells, which may fail but never panics;
//! - **probe**: [`Probe::decode`] of arbitrary bytes: 1..=32 cells, at most
//!   [`max_fingerprints`], a round trip through [`Probe::encode`]; then
//!   compared with a real set's probe and cells (an estimate is a finite
//!   number within the scheme's range), and given to a responder's
//!   [`CodedRecon`] as the peer's probe;
//! - **sets**: two arbitrary small sets; their cells peel to exactly their
//!   symmetric difference, their probes compare consistently, and an honest
//!   coded exchange between them reconciles to what [`recon::diff`] says.
//!
//! Not reachable from here: the coded exchange's wants parser
//! (`parse_prefixes` / `parse` in `src/session/v2/coded.rs`) is private; the
//! `control_messages` target reaches it through the v2 session.

#![no_main]

use std::collections::HashSet;

use arbitrary::{Arbitrary, Unstructured};
use can_sync::asset::{AssetHash, MetaVersion, Summary};
use can_sync::recon::coded::{self, CodedRecon, Message, Side, Step, StoreNeed};
use can_sync::recon::riblt::estimate::{max_fingerprints, Comparison, Probe, PROBE_CELLS};
use can_sync::recon::riblt::{
    decode_cells, encode_cells, CodedCells, Decoder, Element, PeelError, Progress,
};
use can_sync::recon::{self, compact};
use can_sync::wire::compress;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    match mode % 6 {
        0 => compact_bytes(&mut u, false),
        1 => compact_bytes(&mut u, true),
        2 => {
            if let Ok(specs) = Vec::<SummarySpec>::arbitrary_take_rest(u) {
                compact_round_trip(&specs);
            }
        }
        3 => cells(&mut u),
        4 => probe(&mut u),
        _ => {
            if let Ok(sets) = Sets::arbitrary_take_rest(u) {
                sets_reconcile(&sets);
            }
        }
    }
});

/// Whatever input is left.
fn rest<'a>(u: &mut Unstructured<'a>) -> &'a [u8] {
    let n = u.len();
    u.bytes(n).unwrap_or_default()
}

/// Any summary v2 can carry.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct SummarySpec {
    hash: [u8; 32],
    created: i64,
    updated: i64,
    size: u64,
    digest: [u8; 8],
}

impl SummarySpec {
    fn summary(&self) -> Summary {
        Summary {
            hash: AssetHash::from_bytes(self.hash),
            created_at_ms: self.created,
            size: self.size,
            version: MetaVersion::announced(self.updated, &self.digest),
        }
    }
}

fn compact_bytes(u: &mut Unstructured<'_>, wrap_in_zstd: bool) {
    let bound = u64::from(u.int_in_range(0..=300u16).unwrap_or(0));
    let raw = rest(u);
    let payload = if wrap_in_zstd {
        compress::compress(raw, 1)
    } else {
        raw.to_vec()
    };
    if let Ok(summaries) = compact::decode(&payload, bound) {
        assert!(summaries.len() as u64 <= bound);
        let again = compact::decode(&compact::encode(&summaries, 1), bound)
            .expect("decoded summaries re-encode");
        assert_eq!(again, summaries);
    }
}

fn compact_round_trip(specs: &[SummarySpec]) {
    let summaries: Vec<Summary> = specs.iter().take(200).map(SummarySpec::summary).collect();
    let packed = compact::encode(&summaries, 1);
    let n = summaries.len() as u64;
    assert_eq!(compact::decode(&packed, n).expect("round trip"), summaries);
    if n > 0 {
        assert!(
            compact::decode(&packed, n - 1).is_err(),
            "one over the bound"
        );
    }
}

/// A small real set's cells, to compare what arrives with.
fn cells_of(summaries: &[Summary], m: usize) -> CodedCells {
    let mut cells = CodedCells::new(m);
    for s in summaries {
        cells.insert(&Element::of(s));
    }
    cells
}

fn some_set(u: &mut Unstructured<'_>) -> Vec<Summary> {
    (0..u.int_in_range(0..=6u8).unwrap_or(0))
        .filter_map(|_| SummarySpec::arbitrary(u).ok())
        .map(|s| s.summary())
        .collect()
}

fn cells(u: &mut Unstructured<'_>) {
    let bound = usize::from(u.int_in_range(0..=600u16).unwrap_or(0));
    let ours = some_set(u);
    let raw = rest(u);
    let Ok(cells) = decode_cells(raw, bound) else {
        return;
    };
    assert!(cells.len() <= bound);
    let again = decode_cells(&encode_cells(&cells), bound).expect("re-encoded cells decode");
    assert_eq!(again, cells);
    // Their cells against ours, in two runs.
    let our_cells = cells_of(&ours, cells.len());
    let mut decoder = Decoder::new();
    let split = cells.len() / 2;
    for range in [0..split, split..cells.len()] {
        match decoder.add(our_cells.cells(range.clone()), &cells[range]) {
            Ok(Progress::Decoded(decoded)) => {
                assert!(decoded.only_ours.len() + decoded.only_theirs.len() <= cells.len());
                break;
            }
            Ok(Progress::NeedMore) => {}
            Err(PeelError::Inconsistent) => break,
            Err(err) => panic!("same lengths gave {err:?}"),
        }
    }
}

fn check_comparison(comparison: &Comparison) {
    match comparison {
        Comparison::Decoded(decoded) => {
            assert!(decoded.only_ours.len() + decoded.only_theirs.len() <= PROBE_CELLS);
        }
        Comparison::Estimated(estimate) => {
            assert!(
                estimate.difference.is_finite() && estimate.difference >= 1.0,
                "estimate {estimate:?}"
            );
            assert!(estimate.cells >= PROBE_CELLS + PROBE_CELLS / 2);
        }
    }
}

fn probe(u: &mut Unstructured<'_>) {
    let ours = some_set(u);
    let m =
        [PROBE_CELLS, 1024, coded::KEPT_CELLS][usize::from(u.int_in_range(0..=2u8).unwrap_or(0))];
    let raw = rest(u);
    let Ok(theirs) = Probe::decode(raw) else {
        return;
    };
    assert!((1..=PROBE_CELLS).contains(&theirs.cells.len()));
    assert!(theirs.fingerprints.len() <= max_fingerprints());
    assert_eq!(Probe::decode(&theirs.encode()).expect("round trip"), theirs);
    let our_cells = cells_of(&ours, m);
    let our_probe = Probe::of(&our_cells);
    if let Ok(comparison) = theirs.compare(&our_cells) {
        check_comparison(&comparison);
    }
    if let Ok(comparison) = theirs.compare_probe(&our_probe) {
        check_comparison(&comparison);
    }
    // A responder given this probe, then ours.
    let mut responder = CodedRecon::new(Side::Responder);
    responder
        .handle_message(Message::Probe(theirs))
        .expect("a probe is due first");
    assert_eq!(
        responder.poll_step(),
        Some(Step::Need(StoreNeed::Probe)),
        "it asks for our probe"
    );
    responder.handle_probe(Some(our_probe));
    match responder.poll_step() {
        Some(Step::Need(StoreNeed::Cells { start: 0, count })) => {
            assert!((1..=coded::KEPT_CELLS).contains(&count));
        }
        Some(Step::Fallback(_)) => {}
        other => panic!("after the probes: {other:?}"),
    }
}

#[derive(Arbitrary, Debug)]
struct Sets {
    /// Summaries both hold.
    common: Vec<SummarySpec>,
    only_a: Vec<SummarySpec>,
    only_b: Vec<SummarySpec>,
    /// Cells per run the initiator's decoder gets.
    run: u8,
}

fn distinct(specs: &[SummarySpec], seen: &mut HashSet<[u8; 32]>, max: usize) -> Vec<Summary> {
    specs
        .iter()
        .filter(|s| seen.insert(s.hash))
        .take(max)
        .map(SummarySpec::summary)
        .collect()
}

fn sets_reconcile(sets: &Sets) {
    let mut seen = HashSet::new();
    let common = distinct(&sets.common, &mut seen, 16);
    let only_a = distinct(&sets.only_a, &mut seen, 12);
    let only_b = distinct(&sets.only_b, &mut seen, 12);
    let a: Vec<Summary> = common.iter().chain(&only_a).copied().collect();
    let b: Vec<Summary> = common.iter().chain(&only_b).copied().collect();
    let m = 1024;
    let (cells_a, cells_b) = (cells_of(&a, m), cells_of(&b, m));

    // Peeling gives exactly the symmetric difference.
    let run = usize::from(sets.run).max(1);
    let mut decoder = Decoder::new();
    let mut at = 0;
    let decoded = loop {
        assert!(
            at < m,
            "{} + {} elements did not decode in {m} cells",
            only_a.len(),
            only_b.len()
        );
        let end = (at + run).min(m);
        match decoder.add(cells_a.cells(at..end), cells_b.cells(at..end)) {
            Ok(Progress::Decoded(decoded)) => break decoded,
            Ok(Progress::NeedMore) => at = end,
            Err(err) => panic!("honest cells failed to peel: {err:?}"),
        }
    };
    let key = |s: &Summary| (s.hash, s.created_at_ms, s.size, s.version);
    let mut got_a: Vec<_> = decoded
        .only_ours
        .iter()
        .map(|e| key(&e.summary()))
        .collect();
    let mut got_b: Vec<_> = decoded
        .only_theirs
        .iter()
        .map(|e| key(&e.summary()))
        .collect();
    let mut want_a: Vec<_> = only_a.iter().map(key).collect();
    let mut want_b: Vec<_> = only_b.iter().map(key).collect();
    for v in [&mut got_a, &mut got_b, &mut want_a, &mut want_b] {
        v.sort_by_key(|k| (k.0, k.1, k.2));
    }
    assert_eq!(got_a, want_a, "only ours");
    assert_eq!(got_b, want_b, "only theirs");

    // The probes compare: an equal pair is exactly "no difference".
    let (probe_a, probe_b) = (Probe::of(&cells_a), Probe::of(&cells_b));
    match probe_a.compare_probe(&probe_b) {
        Ok(comparison) => {
            check_comparison(&comparison);
            if let Comparison::Decoded(d) = &comparison {
                assert_eq!(d.only_ours.len(), only_b.len());
                assert_eq!(d.only_theirs.len(), only_a.len());
            }
        }
        Err(err) => panic!("the probes of two sets do not compare: {err:?}"),
    }

    // An honest coded exchange, initiator a, responder b.
    let mut sides = [
        (CodedRecon::new(Side::Initiator), &cells_a),
        (CodedRecon::new(Side::Responder), &cells_b),
    ];
    let mut outcomes = [None, None];
    let mut fell_back = false;
    for _round in 0..64 {
        let mut idle = true;
        for i in 0..2 {
            while let Some(step) = sides[i].0.poll_step() {
                idle = false;
                let ours = sides[i].1;
                match step {
                    Step::Need(StoreNeed::Probe) => sides[i].0.handle_probe(Some(Probe::of(ours))),
                    Step::Need(StoreNeed::Cells { start, count }) => sides[i]
                        .0
                        .handle_cells(Some(ours.cells(start..start + count).to_vec())),
                    Step::Send(message) => sides[1 - i]
                        .0
                        .handle_message(message)
                        .expect("an honest message is accepted"),
                    Step::Done(outcome) => outcomes[i] = Some(outcome),
                    Step::Fallback(_) => fell_back = true,
                }
            }
        }
        if idle {
            break;
        }
    }
    if fell_back {
        return;
    }
    let [Some(initiator), Some(responder)] = outcomes else {
        panic!("the exchange stalled: {outcomes:?}");
    };
    let plan_a = recon::diff(&a, &b);
    let prefixes = |hashes: &[AssetHash]| {
        let mut p: Vec<_> = hashes.iter().map(AssetHash::prefix).collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    assert_eq!(initiator.send_lookup, prefixes(&plan_a.assets_to_send));
    assert_eq!(initiator.send_meta, plan_a.meta_to_send);
    assert_eq!(initiator.expect, plan_a.assets_to_receive.len());
    let plan_b = recon::diff(&b, &a);
    assert_eq!(responder.send_lookup, prefixes(&plan_b.assets_to_send));
    assert_eq!(responder.send_meta, plan_b.meta_to_send);
}
