//! How many cells a difference needs, from a small probe: so that the first
//! answer usually decodes, in one round trip.
//!
//! A [`Probe`] of a set is its first [`PROBE_CELLS`] cells in full plus a
//! [`FINGERPRINT_BITS`]-bit fingerprint (the low bits of the checksum) of the
//! cells at [`probe_indices`]: every index from [`PROBE_CELLS`] up, then
//! spaced by a factor `1 + 2^-SPACING_SHIFT` up to [`PROBE_SPAN`].
//!
//! The receiver subtracts its own cells at the same indices
//! ([`Probe::compare`]). A cell of the difference is empty with probability
//! `(1 − ρ(i))^d`, independently across cells, so which probed cells come
//! out empty tells `d`: the estimate is the maximum-likelihood `d` (a
//! fingerprint also matches by chance, odds `2^-FINGERPRINT_BITS`, which the
//! likelihood accounts for), at least `|count₀|` (the difference of the set
//! sizes). A small difference decodes from the full cells alone, and an equal
//! pair shows as a zero cell 0: `d = 0`, exactly.
//!
//! [`cells_for`] turns the estimate into the number of cells to send, chosen
//! from measurement (`cargo bench --bench recon`) so that the first answer
//! decodes in at least 95% of cases: the bench's sweep over `d` = 10, 100,
//! 1,000 and 10,000 (100 trials each) decodes 99–100% of first answers, with
//! `≈ 1.36–1.45 d` cells needed against `1.6 d + 24` sent.
//!
//! Wire form of a probe:
//!
//! ```text
//! [full cells: a run of cells as `encode_cells` writes it]
//! [f: varint][f fingerprints: FINGERPRINT_BITS / 8 bytes each, in index order]
//! ```
//!
//! The estimate is local (floating point): the peer never recomputes it, the
//! number of cells sent is explicit, so platforms need not agree on it.

use bytes::Buf;
use prost::encoding::{decode_varint, encode_varint};

use super::{
    encode_cells, read_cells, Cell, CodedCells, Decoded, Decoder, PeelError, Progress, RibltError,
};

/// Cells a probe carries in full: differences of up to about a dozen
/// elements decode from them alone.
pub const PROBE_CELLS: usize = 32;

/// Bits of each fingerprint.
pub const FINGERPRINT_BITS: u32 = 8;

/// Fingerprinted indices stay below this: a probe tells differences up to
/// about `PROBE_SPAN / 2` apart from "more".
pub const PROBE_SPAN: usize = 1 << 17;

/// Consecutive fingerprinted indices `i < j` satisfy `j = i + max(1, i >> SPACING_SHIFT)`.
const SPACING_SHIFT: u32 = 8;

/// The request rule's factor on the estimate (see [`cells_for`]).
const REQUEST_FACTOR: f64 = 1.6;

/// The request rule's constant margin, in cells (see [`cells_for`]).
const REQUEST_MARGIN: f64 = 24.0;

/// The largest difference the estimator reports: beyond it every probed cell
/// is almost surely occupied.
const MAX_ESTIMATE: f64 = (PROBE_SPAN * 4) as f64;

/// The indices a probe fingerprints, below `limit` (and [`PROBE_SPAN`]).
pub fn probe_indices(limit: usize) -> impl Iterator<Item = usize> {
    let end = limit.min(PROBE_SPAN);
    std::iter::successors(Some(PROBE_CELLS), |&i| {
        Some(i + (i >> SPACING_SHIFT).max(1))
    })
    .take_while(move |&i| i < end)
}

/// How many fingerprints a probe carries at most (that of a table of at
/// least [`PROBE_SPAN`] cells).
pub fn max_fingerprints() -> usize {
    probe_indices(PROBE_SPAN).count()
}

/// The number of cells to send for an estimated difference of `d` elements:
/// `⌈1.6 d + 24⌉`, at least `1.5 ×` [`PROBE_CELLS`] (the probe's own cells did
/// not decode, or the estimate would not be asked for).
pub fn cells_for(d: f64) -> usize {
    let cells = (REQUEST_FACTOR * d + REQUEST_MARGIN).ceil();
    (cells as usize).max(PROBE_CELLS + PROBE_CELLS / 2)
}

fn fingerprint(cell: &Cell) -> u8 {
    cell.checksum as u8
}

/// A small sample of a set's cells, to tell how far another set is from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The first cells, in full.
    pub cells: Vec<Cell>,
    /// Fingerprints of the cells at [`probe_indices`], in order.
    pub fingerprints: Vec<u8>,
}

/// What a probe says about our set against the peer's.
#[derive(Debug, Clone, PartialEq)]
pub enum Comparison {
    /// The probe's full cells decoded: this is the whole difference (empty when
    /// the sets are equal).
    Decoded(Decoded),
    /// The difference is larger: its estimated size and how many cells to send.
    Estimated(Estimate),
}

/// An estimate of the size of a difference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The maximum-likelihood number of differing elements.
    pub difference: f64,
    /// How many cells the peer should get ([`cells_for`]); more than the
    /// cells kept means the difference is too large for this scheme.
    pub cells: usize,
}

impl Probe {
    /// The probe of a set, from its maintained cells.
    pub fn of(cells: &CodedCells) -> Self {
        Self {
            cells: cells.cells(0..PROBE_CELLS).to_vec(),
            fingerprints: probe_indices(cells.len())
                .map(|i| fingerprint(&cells.cells[i]))
                .collect(),
        }
    }

    /// The wire form (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = encode_cells(&self.cells);
        encode_varint(self.fingerprints.len() as u64, &mut out);
        out.extend_from_slice(&self.fingerprints);
        out
    }

    /// Parses a probe; counts are checked against the protocol's before
    /// anything is allocated.
    pub fn decode(payload: &[u8]) -> Result<Self, RibltError> {
        let mut buf = payload;
        let cells = read_cells(&mut buf, PROBE_CELLS)?;
        if cells.is_empty() {
            return Err(RibltError::Malformed("probe without cells"));
        }
        let count =
            decode_varint(&mut buf).map_err(|_| RibltError::Malformed("bad fingerprint count"))?;
        let limit = max_fingerprints();
        if count > limit as u64 {
            return Err(RibltError::TooManyCells { count, limit });
        }
        let count = count as usize;
        if buf.remaining() < count {
            return Err(RibltError::Truncated {
                needed: count,
                available: buf.remaining(),
            });
        }
        let fingerprints = buf[..count].to_vec();
        if buf.len() > count {
            return Err(RibltError::Malformed("trailing bytes after the probe"));
        }
        Ok(Self {
            cells,
            fingerprints,
        })
    }

    /// Compares the peer's probe with our cells: the difference itself when
    /// the full cells decode (`only_ours` is ours), else an estimate of its
    /// size. An error means the probe is not the probe of any set.
    pub fn compare(&self, ours: &CodedCells) -> Result<Comparison, PeelError> {
        let n = self.cells.len().min(ours.len());
        let fingerprints = probe_indices(ours.len()).map(|i| fingerprint(&ours.cells[i]));
        self.compare_with(ours.cells(0..n), fingerprints)
    }

    /// Compares the peer's probe with our own probe, as [`compare`](Self::compare)
    /// does with our cells: what a node whose cells live in its store (behind
    /// an API that serves probes) can do without fetching them.
    pub fn compare_probe(&self, ours: &Self) -> Result<Comparison, PeelError> {
        let n = self.cells.len().min(ours.cells.len());
        self.compare_with(&ours.cells[..n], ours.fingerprints.iter().copied())
    }

    fn compare_with(
        &self,
        ours: &[Cell],
        our_fingerprints: impl Iterator<Item = u8>,
    ) -> Result<Comparison, PeelError> {
        let n = ours.len().min(self.cells.len());
        let mut decoder = Decoder::new();
        if let Progress::Decoded(decoded) = decoder.add(&ours[..n], &self.cells[..n])? {
            return Ok(Comparison::Decoded(decoded));
        }
        let mut observations = Vec::with_capacity(n + self.fingerprints.len());
        let mut lower = 1.0f64;
        for (i, (o, t)) in ours.iter().zip(&self.cells).enumerate() {
            let mut cell = *o;
            cell.subtract(t);
            if i == 0 {
                lower = lower.max(cell.count.unsigned_abs() as f64);
            } else {
                observations.push(Observation::new(i, cell.is_zero(), 0.0));
            }
        }
        let noise = (-(FINGERPRINT_BITS as f64)).exp2();
        for ((i, theirs), ours) in probe_indices(PROBE_SPAN)
            .zip(&self.fingerprints)
            .zip(our_fingerprints)
        {
            observations.push(Observation::new(i, ours == *theirs, noise));
        }
        let difference = most_likely(&observations, lower.min(MAX_ESTIMATE));
        Ok(Comparison::Estimated(Estimate {
            difference,
            cells: cells_for(difference),
        }))
    }
}

/// Whether one probed cell of the difference looked empty.
#[derive(Debug, Clone, Copy)]
struct Observation {
    /// `ln(1 − ρ(i))`: each differing element misses the cell with `1 − ρ(i)`.
    ln_miss: f64,
    /// Whether it looked empty.
    empty: bool,
    /// The odds that an occupied cell looks empty (a fingerprint collision).
    noise: f64,
}

impl Observation {
    fn new(index: usize, empty: bool, noise: f64) -> Self {
        // ρ(i) = 2 / (i + 2), so 1 − ρ(i) = i / (i + 2).
        let i = index as f64;
        Self {
            ln_miss: (i / (i + 2.0)).ln(),
            empty,
            noise,
        }
    }

    fn log_likelihood(&self, d: f64) -> f64 {
        let empty = (self.ln_miss * d).exp();
        let occupied = -(self.ln_miss * d).exp_m1();
        if self.empty {
            (empty + occupied * self.noise).ln()
        } else {
            occupied.ln() + (-self.noise).ln_1p()
        }
    }
}

fn log_likelihood(observations: &[Observation], d: f64) -> f64 {
    observations.iter().map(|o| o.log_likelihood(d)).sum()
}

/// The `d` in `[lower, MAX_ESTIMATE]` that makes the observations most
/// likely: a grid over `ln d`, then golden-section search around the best
/// point.
fn most_likely(observations: &[Observation], lower: f64) -> f64 {
    const GRID: usize = 48;
    let (lo, hi) = (lower.ln(), MAX_ESTIMATE.ln());
    let at = |k: usize| lo + (hi - lo) * k as f64 / GRID as f64;
    let score = |x: f64| log_likelihood(observations, x.exp());
    let best = (0..=GRID)
        .map(|k| (k, score(at(k))))
        .fold((0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a })
        .0;
    let (mut a, mut b) = (at(best.saturating_sub(1)), at((best + 1).min(GRID)));
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..40 {
        let (c, d) = (b - ratio * (b - a), a + ratio * (b - a));
        if score(c) >= score(d) {
            b = d;
        } else {
            a = c;
        }
    }
    ((a + b) / 2.0).exp()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::tests::{coded, Pair};
    use super::*;

    /// What our side makes of the peer's probe, through its wire form.
    fn compare(pair: &Pair, m: usize) -> Comparison {
        let probe = Probe::of(&coded(&pair.theirs, m));
        let probe = Probe::decode(&probe.encode()).expect("a probe parses");
        probe
            .compare(&coded(&pair.ours, m))
            .expect("an honest probe")
    }

    fn estimate(pair: &Pair, m: usize) -> f64 {
        match compare(pair, m) {
            Comparison::Decoded(d) => (d.only_ours.len() + d.only_theirs.len()) as f64,
            Comparison::Estimated(e) => e.difference,
        }
    }

    #[test]
    fn probes_round_trip() {
        for m in [1, 10, 40, 1000, PROBE_SPAN, 2 * PROBE_SPAN] {
            let pair = Pair::random(m as u64, 300, 0, 0, 0);
            let probe = Probe::of(&coded(&pair.ours, m));
            assert_eq!(probe.cells.len(), m.min(PROBE_CELLS));
            assert_eq!(probe.fingerprints.len(), probe_indices(m).count());
            assert_eq!(Probe::decode(&probe.encode()), Ok(probe));
        }
    }

    #[test]
    fn probe_indices_are_dense_then_spaced() {
        let all: Vec<usize> = probe_indices(usize::MAX).collect();
        assert_eq!(all.len(), max_fingerprints());
        assert_eq!(all[0], PROBE_CELLS);
        assert!(all
            .windows(2)
            .all(|w| w[1] == w[0] + (w[0] >> SPACING_SHIFT).max(1)));
        assert!(*all.last().unwrap() < PROBE_SPAN);
        assert!(probe_indices(PROBE_CELLS).next().is_none());
    }

    #[test]
    fn malformed_probes_are_refused() {
        let pair = Pair::random(1, 100, 0, 0, 0);
        let good = Probe::of(&coded(&pair.ours, 1000)).encode();
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            Probe::decode(&trailing),
            Err(RibltError::Malformed(_))
        ));
        assert!(matches!(
            Probe::decode(&good[..good.len() - 1]),
            Err(RibltError::Truncated { .. })
        ));
        let no_cells = Probe {
            cells: Vec::new(),
            fingerprints: Vec::new(),
        };
        assert!(matches!(
            Probe::decode(&no_cells.encode()),
            Err(RibltError::Malformed(_))
        ));
        let too_many_cells = Probe {
            cells: vec![Cell::ZERO; PROBE_CELLS + 1],
            fingerprints: Vec::new(),
        };
        assert!(matches!(
            Probe::decode(&too_many_cells.encode()),
            Err(RibltError::TooManyCells { .. })
        ));
        // A huge fingerprint count with nothing behind it: refused unallocated.
        let mut huge = encode_cells(&[Cell::ZERO]);
        encode_varint(u64::MAX, &mut huge);
        assert!(matches!(
            Probe::decode(&huge),
            Err(RibltError::TooManyCells { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_payload_parses_or_errs(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
            if let Ok(probe) = Probe::decode(&bytes) {
                prop_assert!(probe.cells.len() <= PROBE_CELLS);
                prop_assert!(probe.fingerprints.len() <= max_fingerprints());
            }
        }
    }

    #[test]
    fn equal_sets_are_a_difference_of_zero_exactly() {
        for (seed, n) in [(2, 0), (3, 1), (4, 5000)] {
            let pair = Pair::random(seed, n, 0, 0, 0);
            assert_eq!(
                compare(&pair, PROBE_SPAN),
                Comparison::Decoded(Decoded::default())
            );
        }
    }

    #[test]
    fn a_small_difference_decodes_from_the_probe_alone() {
        for seed in 0..20 {
            let pair = Pair::random(seed, 500, 1, 1, 1);
            match compare(&pair, 4096) {
                Comparison::Decoded(mut d) => {
                    d.only_ours.sort();
                    d.only_theirs.sort();
                    assert_eq!(d.only_ours, pair.only_ours);
                    assert_eq!(d.only_theirs, pair.only_theirs);
                }
                other => panic!("seed {seed}: {other:?}"),
            }
        }
    }

    #[test]
    fn estimates_are_within_a_factor_of_two() {
        for d in [1usize, 10, 100, 1000, 10_000] {
            for seed in 0..3 {
                let pair = Pair::random(seed, 1000, d / 2, d - d / 2, 0);
                let guess = estimate(&pair, PROBE_SPAN);
                assert!(
                    (d as f64 / 2.0..=d as f64 * 2.0).contains(&guess),
                    "d = {d}, seed {seed}: estimated {guess:.1}"
                );
            }
        }
    }

    #[test]
    fn the_first_answer_usually_decodes() {
        // 50 seeded trials at d = 1000: fixed seeds, so the count is fixed.
        const TRIALS: u64 = 50;
        let m = 1 << 15;
        let mut decoded = 0;
        for seed in 0..TRIALS {
            let pair = Pair::random(1000 + seed, 100, 400, 400, 100);
            let (ours, theirs) = (coded(&pair.ours, m), coded(&pair.theirs, m));
            let Comparison::Estimated(estimate) =
                Probe::of(&theirs).compare(&ours).expect("honest probe")
            else {
                panic!("a thousand differences decoded from the probe");
            };
            let n = estimate.cells.min(m);
            if let Progress::Decoded(_) = Decoder::new()
                .add(ours.cells(0..n), theirs.cells(0..n))
                .expect("honest cells")
            {
                decoded += 1;
            }
        }
        assert!(decoded * 10 >= TRIALS * 9, "{decoded} of {TRIALS} decoded");
    }

    #[test]
    fn the_request_rule_grows_with_the_estimate() {
        assert_eq!(cells_for(0.0), PROBE_CELLS + PROBE_CELLS / 2);
        assert_eq!(cells_for(1000.0), 1624);
        assert!((1..20_000).all(|d| cells_for(d as f64) <= cells_for(d as f64 + 1.0)));
    }
}
