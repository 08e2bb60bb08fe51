//! Rateless invertible Bloom lookup tables (Yang, Gilad, Alizadeh 2024,
//! "Practical Rateless Set Reconciliation"): reconciliation in bytes
//! proportional to the difference, not to the stores.
//!
//! # The scheme
//!
//! Every asset is one [`Element`]: its [`Summary`] as protocol v2 compares it
//! (hash, creation time, metadata time, size, the whole 32-byte metadata
//! digest) in eleven 64-bit words. A metadata edit is a different element for the same hash, so
//! a difference in metadata shows up as one element on each side.
//!
//! A set is coded into an unbounded sequence of [`Cell`]s. Each element is
//! added into cell 0 and then into later cells: cell `i` holds it with
//! probability `ρ(i) = 1 / (1 + i/2)`, independently for every `i`, as drawn
//! by a generator seeded with the element's 64-bit checksum ([`Element::checksum`]),
//! so every node maps an element to the same cells. A cell holds the XOR of
//! its elements (`sum`), the XOR of their checksums, and their number
//! (`count`). Each element lands in about `2 ln(M/2)` of the first `M` cells.
//!
//! Cells subtract: the cells of set A minus those of set B (XOR the sums and
//! checksums, subtract the counts) are the cells of A∖B "plus" B∖A, whatever
//! A and B share. A difference cell is *pure* when it holds one element, which
//! shows as `count = ±1` and `checksum(sum) = checksum`; its element comes
//! out (`+1`: only in A, `−1`: only in B) and is removed from every other
//! received cell it maps to, which may make more cells pure ("peeling").
//! Once every received cell is zero, the difference is complete: cell 0 holds
//! every element, so a zero cell 0 means nothing is left. The paper's result
//! is that the first `≈ 1.35–1.7 d` cells decode a difference of `d` elements,
//! whatever the set sizes, and that any longer prefix does too: the sender
//! never has to know `d` in advance (rateless). [`estimate`] guesses `d` from
//! a small probe, so that one round trip usually suffices.
//!
//! A store keeps the first `M` cells of its set in a [`CodedCells`] and
//! updates them as assets change (a changed summary is a removal of the old
//! element and an insertion of the new one, each touching `≈ 2 ln(M/2)`
//! cells), so a session reads cells and never scans the store.
//!
//! # Wire encoding
//!
//! A run of consecutive cells ([`encode_cells`], [`decode_cells`]):
//!
//! ```text
//! [n: varint][wide bitmap: ⌈n/8⌉ bytes, bit i%8 of byte i/8 = cell i is wide]
//! n × [count: zigzag varint][checksum: 8 bytes LE]
//!     [hash: 32 bytes][created, updated, size: 6 bytes LE each (8 when wide)]
//!     [metadata digest: 32 bytes]
//! ```
//!
//! The three numeric fields of a sum are 48-bit sign-extended values when they
//! fit (any realistic time or size: ±4,400 years of milliseconds, 128 TiB), so
//! a narrow cell carries 6 bytes each and the receiver sign-extends; XOR keeps
//! sign extension, so the sum of narrow elements is narrow. A cell whose sum
//! does not fit is sent wide (8 bytes each), flagged in the bitmap: nothing is
//! saturated and no two summaries ever encode alike. A narrow cell takes
//! [`CELL_WIRE_MIN`]` + ` 0–2 bytes (90 + the count's varint, 2 bytes for most
//! cells of a million-asset store). Sums are uniformly random, so no
//! compression is applied.
//!
//! # Invariants
//!
//! - The mapping and the checksum use integer arithmetic only and are the same
//!   on every platform (a test pins them); a change to either is a protocol
//!   change.
//! - `Element::of(s).summary() == s` for every summary: an element carries
//!   the whole metadata digest, so two metadata values that differ are two
//!   elements, and nobody can craft two that collide (an 8-byte prefix, as
//!   protocol version 2 carried, falls to about 2^32 tries).
//! - Inserting and then removing an element restores the cells exactly; the
//!   cells of a set do not depend on the order of insertion.
//! - [`decode_cells`] checks the declared count against the caller's ceiling
//!   and against the bytes that actually arrived before allocating.
//! - [`Decoder`] does bounded work on any input: at most one peeled element
//!   per received cell (a real difference never needs more), each peel walks
//!   `O(log n)` cells, and an element never comes out twice; a contradiction
//!   is [`PeelError::Inconsistent`], never a loop or a panic.
//! - With 64-bit checksums a false pure cell has odds near `2^-64` per test;
//!   one is also checked to map to the cell it was found in.

mod decode;
pub mod estimate;
mod wire;

pub use decode::{Decoded, Decoder, PeelError, Progress};
use wire::read_cells;
pub use wire::{decode_cells, encode_cells, RibltError};

use std::ops::Range;

use crate::asset::{AssetHash, MetaVersion, Summary};

/// Bytes of the metadata digest an element carries: all of it, as v2
/// summaries do.
pub const DIGEST_PREFIX: usize = 32;

/// Words of an element: the hash, three numbers, the digest.
const ELEMENT_WORDS: usize = 4 + 3 + DIGEST_PREFIX / 8;

/// The fewest bytes one encoded cell takes: a 1-byte count, the checksum and a
/// narrow sum.
pub const CELL_WIRE_MIN: usize = 1 + 8 + NARROW_SUM_LEN;

/// The most bytes one encoded cell takes: a 10-byte count, the checksum and a
/// wide sum.
pub const CELL_WIRE_MAX: usize = 10 + 8 + WIDE_SUM_LEN;

/// The most cells a [`CodedCells`] keeps (far beyond any useful size; the
/// mapping works with indices below 2^32).
pub const MAX_CELLS: usize = 1 << 28;

/// Bytes of a narrow sum: hash, three 6-byte numbers, digest.
const NARROW_SUM_LEN: usize = 32 + 3 * 6 + DIGEST_PREFIX;

/// Bytes of a wide sum: hash, three 8-byte numbers, digest.
const WIDE_SUM_LEN: usize = 32 + 3 * 8 + DIGEST_PREFIX;

/// Where the mapping stops: no element maps to an index at or above it.
const INDEX_LIMIT: u64 = 1 << 32;

/// Seed of the element checksum.
const CHECKSUM_SEED: u64 = 0x6361_6e2d_7379_6e63; // "can-sync"

/// The odd constant of the splitmix64 sequence (2^64 / golden ratio).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// One asset as reconciliation sees it: the words of its v2 summary.
///
/// Words 0–3: the hash (little-endian chunks of its bytes); 4: creation time;
/// 5: metadata time; 6: size (times and size as two's-complement bits); 7–10:
/// the metadata digest. Two summaries that v2 tells apart are always two
/// different elements.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Element([u64; ELEMENT_WORDS]);

impl Element {
    /// The element of a summary: everything v2 compares.
    pub fn of(summary: &Summary) -> Self {
        let mut words = [0u64; ELEMENT_WORDS];
        for (word, chunk) in words
            .iter_mut()
            .zip(summary.hash.as_bytes().chunks_exact(8))
        {
            *word = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
        }
        words[4] = summary.created_at_ms as u64;
        words[5] = summary.version.updated_at_ms as u64;
        words[6] = summary.size;
        for (word, chunk) in words[7..]
            .iter_mut()
            .zip(summary.version.digest.chunks_exact(8))
        {
            *word = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
        }
        Self(words)
    }

    /// The summary this element encodes.
    pub fn summary(&self) -> Summary {
        let mut hash = [0u8; 32];
        for (chunk, word) in hash.chunks_exact_mut(8).zip(&self.0[..4]) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        let mut digest = [0u8; DIGEST_PREFIX];
        for (chunk, word) in digest.chunks_exact_mut(8).zip(&self.0[7..]) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Summary {
            hash: AssetHash::from_bytes(hash),
            created_at_ms: self.0[4] as i64,
            size: self.0[6],
            version: MetaVersion::announced(self.0[5] as i64, &digest),
        }
    }

    /// The asset hash.
    pub fn hash(&self) -> AssetHash {
        self.summary().hash
    }

    /// The 64-bit checksum: a fast, well-mixing (not cryptographic) hash of
    /// the words. It also seeds the element's cell mapping.
    pub fn checksum(&self) -> u64 {
        self.0
            .iter()
            .fold(CHECKSUM_SEED, |h, &w| mix(h ^ w).wrapping_add(GOLDEN))
    }

    fn xor(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a ^= b;
        }
    }
}

impl std::fmt::Debug for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.summary();
        write!(
            f,
            "Element({} created {} meta {}/{:016x} size {})",
            s.hash.short(),
            s.created_at_ms,
            s.version.updated_at_ms,
            self.0[7],
            s.size
        )
    }
}

/// The splitmix64 finaliser: a bijection of 64-bit words with full avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The cells one element maps to, in increasing order: 0, then each later
/// index `i` with probability `2 / (i + 2)`, independently.
///
/// From index `l`, the next index is the smallest `j > l` with
/// `(j+1)(j+2)·u ≥ (l+1)(l+2)·2^53`, `u ∈ [1, 2^53]` uniform: this inverts
/// `P(next > m) = ∏_{l<k≤m} (1 − ρ(k)) = (l+1)(l+2) / ((m+1)(m+2))` exactly
/// (the reference code uses a float approximation of the same law). The
/// answer is settled in integers; floats only give the first guess.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    /// The splitmix64 state, seeded with the element's checksum.
    state: u64,
    /// The current index; `u64::MAX` once past [`INDEX_LIMIT`].
    index: u64,
}

impl Mapping {
    fn new(checksum: u64) -> Self {
        Self {
            state: checksum,
            index: 0,
        }
    }

    /// The current index, saturated to `usize`.
    fn at(&self) -> usize {
        usize::try_from(self.index).unwrap_or(usize::MAX)
    }

    fn advance(&mut self) {
        let l = self.index;
        if l >= INDEX_LIMIT {
            self.index = u64::MAX;
            return;
        }
        self.state = self.state.wrapping_add(GOLDEN);
        let u = (mix(self.state) >> 11) + 1;
        let target = (u128::from(l + 1) * u128::from(l + 2)) << 53;
        let reaches = |j: u64| u128::from(j + 1) * u128::from(j + 2) * u128::from(u) >= target;
        let t = (l + 1) as f64 * (l + 2) as f64 * (9_007_199_254_740_992.0 / u as f64);
        let guess = ((t + 0.25).sqrt() - 1.5).ceil();
        // `t` is finite and positive (`u ≥ 1`), so `guess` is never NaN.
        if guess >= INDEX_LIMIT as f64 {
            self.index = u64::MAX;
            return;
        }
        let mut j = (guess as u64).max(l + 1);
        while j > l + 1 && reaches(j - 1) {
            j -= 1;
        }
        while !reaches(j) {
            j += 1;
        }
        self.index = if j >= INDEX_LIMIT { u64::MAX } else { j };
    }
}

/// The indices below `len` that the element with `checksum` maps to.
fn indices(checksum: u64, len: usize) -> impl Iterator<Item = usize> {
    let mut mapping = Mapping::new(checksum);
    std::iter::from_fn(move || {
        let at = mapping.at();
        (at < len).then(|| {
            mapping.advance();
            at
        })
    })
}

/// One coded cell: the XOR of the elements mapped to it, the XOR of their
/// checksums, and how many there are (a difference of cells may be negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cell {
    /// XOR of the elements.
    pub sum: Element,
    /// XOR of the elements' checksums.
    pub checksum: u64,
    /// Number of elements added minus number removed (wrapping).
    pub count: i64,
}

impl Cell {
    /// The empty cell.
    pub const ZERO: Self = Self {
        sum: Element([0; ELEMENT_WORDS]),
        checksum: 0,
        count: 0,
    };

    /// Adds the elements of `other` (cells of disjoint sets add up).
    pub fn add(&mut self, other: &Self) {
        self.sum.xor(&other.sum);
        self.checksum ^= other.checksum;
        self.count = self.count.wrapping_add(other.count);
    }

    /// Subtracts `other`: the cell of "our elements minus theirs".
    pub fn subtract(&mut self, other: &Self) {
        self.sum.xor(&other.sum);
        self.checksum ^= other.checksum;
        self.count = self.count.wrapping_sub(other.count);
    }

    /// Whether the cell holds nothing.
    pub fn is_zero(&self) -> bool {
        self.count == 0 && self.checksum == 0 && self.sum == Element::default()
    }

    /// Adds (`sign = 1`) or removes (`sign = -1`) one element.
    fn toggle(&mut self, element: &Element, checksum: u64, sign: i64) {
        self.sum.xor(element);
        self.checksum ^= checksum;
        self.count = self.count.wrapping_add(sign);
    }
}

/// The first `M` cells of a set, kept up to date as the set changes.
///
/// Each insertion or removal touches the `≈ 2 ln(M/2) + 1` cells the element
/// maps to below `M` (23 for `M = 2^17`), so a store maintains this next to
/// its index at `O(log M)` per change; `M` cells take `80 M` bytes in memory.
/// A prefix of these cells is exactly the prefix of the set's infinite coded
/// sequence: `M` only bounds how many a peer can ask for.
#[derive(Clone, PartialEq, Eq)]
pub struct CodedCells {
    /// Cell `i` at position `i`.
    cells: Vec<Cell>,
}

impl CodedCells {
    /// The cells of the empty set, `m` of them.
    ///
    /// # Panics
    ///
    /// If `m` exceeds [`MAX_CELLS`] (a local configuration error).
    pub fn new(m: usize) -> Self {
        assert!(m <= MAX_CELLS, "{m} cells exceed MAX_CELLS");
        Self {
            cells: vec![Cell::ZERO; m],
        }
    }

    /// Cells kept from an earlier [`CodedCells`] (as [`cells`](Self::cells)
    /// returned them), to go on updating.
    ///
    /// # Panics
    ///
    /// When there are more than [`MAX_CELLS`].
    pub fn from_cells(cells: Vec<Cell>) -> Self {
        assert!(
            cells.len() <= MAX_CELLS,
            "{} cells exceed MAX_CELLS",
            cells.len()
        );
        Self { cells }
    }

    /// Adds an element (an asset entered, or its summary's new value).
    pub fn insert(&mut self, element: &Element) {
        self.toggle(element, 1);
    }

    /// Removes an element (an asset left, or its summary's old value).
    pub fn remove(&mut self, element: &Element) {
        self.toggle(element, -1);
    }

    fn toggle(&mut self, element: &Element, sign: i64) {
        let checksum = element.checksum();
        for i in indices(checksum, self.cells.len()) {
            self.cells[i].toggle(element, checksum, sign);
        }
    }

    /// The cells in `range` (cut to the cells kept).
    pub fn cells(&self, range: Range<usize>) -> &[Cell] {
        let end = range.end.min(self.cells.len());
        &self.cells[range.start.min(end)..end]
    }

    /// Cell `i`, if kept.
    pub fn cell(&self, i: usize) -> Option<&Cell> {
        self.cells.get(i)
    }

    /// How many cells are kept (`M`).
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether no cell is kept (`M = 0`).
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

impl std::fmt::Debug for CodedCells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodedCells")
            .field("len", &self.cells.len())
            .field("elements", &self.cells.first().map_or(0, |c| c.count))
            .finish()
    }
}

#[cfg(test)]
mod tests;
