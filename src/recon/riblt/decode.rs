//! Peeling: the symmetric difference of two sets out of their cells, a run at
//! a time, with bounded work on any input (see the parent module's docs).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use super::{Cell, Element, Mapping};

/// The symmetric difference, once decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Elements in our set and not in theirs, in the order they came out.
    pub only_ours: Vec<Element>,
    /// Elements in their set and not in ours, in the order they came out.
    pub only_theirs: Vec<Element>,
}

/// Where a [`Decoder`] stands after a run of cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Every received cell peeled to zero: this is the whole difference.
    Decoded(Decoded),
    /// Some received cell is not zero yet: more cells are needed.
    NeedMore,
}

/// Why a [`Decoder`] gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeelError {
    /// Our cells and theirs do not cover the same indices.
    #[error("{ours} of our cells against {theirs} of theirs")]
    LengthMismatch {
        /// Our cells given.
        ours: usize,
        /// Their cells given.
        theirs: usize,
    },
    /// The cells are not the difference of two sets: an element came out
    /// twice, or more elements than cells (a corrupt peer, or a false pure
    /// cell, odds near 2^-64).
    #[error("the cells do not describe a set difference")]
    Inconsistent,
}

/// One element peeled out of the difference.
#[derive(Debug, Clone, Copy)]
pub(super) struct Peeled {
    /// The element.
    element: Element,
    /// Its checksum.
    checksum: u64,
    /// Whether it is ours only (else theirs only).
    ours: bool,
    /// Its mapping, at the first index not received yet (also queued in
    /// `upcoming`), so it can be removed from cells that arrive later.
    next: Mapping,
}

/// Decodes the difference between our set and a peer's from their cells,
/// which arrive in increasing index order, in chunks of any size.
///
/// Call [`Decoder::add`] with each chunk of the peer's cells and our cells at
/// the same indices (from our [`CodedCells`](super::CodedCells)); it answers
/// [`Progress::Decoded`] as soon as the received prefix decodes.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Our cells minus theirs, with every peeled element removed.
    cells: Vec<Cell>,
    /// Elements peeled so far.
    pub(super) peeled: Vec<Peeled>,
    /// The next index of each peeled element (position in `peeled`), soonest
    /// first: where it must be removed from cells yet to arrive.
    upcoming: BinaryHeap<Reverse<(usize, usize)>>,
    /// Checksums of the peeled elements: none may come out twice.
    seen: HashSet<u64>,
    /// Cells that may have become pure.
    pending: Vec<usize>,
    /// How many of `cells` are not zero.
    nonzero: usize,
}

impl Decoder {
    /// A decoder that has seen no cell.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many cells have been received.
    pub fn received(&self) -> usize {
        self.cells.len()
    }

    /// Takes the next run of cells: `theirs` from the peer, `ours` at the same
    /// indices. Work is `O(cells + peeled elements × log cells)` over all
    /// calls, whatever the chunk sizes. No cell at all is never "decoded".
    pub fn add(&mut self, ours: &[Cell], theirs: &[Cell]) -> Result<Progress, PeelError> {
        if ours.len() != theirs.len() {
            return Err(PeelError::LengthMismatch {
                ours: ours.len(),
                theirs: theirs.len(),
            });
        }
        let start = self.cells.len();
        self.cells.extend(ours.iter().zip(theirs).map(|(o, t)| {
            let mut cell = *o;
            cell.subtract(t);
            cell
        }));
        let end = self.cells.len();
        while let Some(&Reverse((at, k))) = self.upcoming.peek() {
            if at >= end {
                break;
            }
            self.upcoming.pop();
            let p = &mut self.peeled[k];
            let sign = if p.ours { -1 } else { 1 };
            self.cells[at].toggle(&p.element, p.checksum, sign);
            p.next.advance();
            if p.next.at() != usize::MAX {
                self.upcoming.push(Reverse((p.next.at(), k)));
            }
        }
        for i in start..end {
            let cell = &self.cells[i];
            if !cell.is_zero() {
                self.nonzero += 1;
            }
            if cell.count.unsigned_abs() == 1 {
                self.pending.push(i);
            }
        }
        self.peel()?;
        Ok(if self.nonzero == 0 && !self.cells.is_empty() {
            Progress::Decoded(self.decoded())
        } else {
            Progress::NeedMore
        })
    }

    fn peel(&mut self) -> Result<(), PeelError> {
        let mut touched = Vec::new();
        while let Some(i) = self.pending.pop() {
            let cell = self.cells[i];
            let ours = match cell.count {
                1 => true,
                -1 => false,
                _ => continue,
            };
            if cell.sum.checksum() != cell.checksum {
                continue;
            }
            let mut next = Mapping::new(cell.checksum);
            touched.clear();
            while next.at() < self.cells.len() {
                touched.push(next.at());
                next.advance();
            }
            if touched.binary_search(&i).is_err() {
                continue; // Not where this element maps: not pure after all.
            }
            if self.peeled.len() >= self.cells.len() || !self.seen.insert(cell.checksum) {
                return Err(PeelError::Inconsistent);
            }
            let sign = if ours { -1 } else { 1 };
            for &j in &touched {
                let target = &mut self.cells[j];
                let was_zero = target.is_zero();
                target.toggle(&cell.sum, cell.checksum, sign);
                match (was_zero, target.is_zero()) {
                    (false, true) => self.nonzero -= 1,
                    (true, false) => self.nonzero += 1,
                    _ => {}
                }
                if target.count.unsigned_abs() == 1 {
                    self.pending.push(j);
                }
            }
            if next.at() != usize::MAX {
                self.upcoming.push(Reverse((next.at(), self.peeled.len())));
            }
            self.peeled.push(Peeled {
                element: cell.sum,
                checksum: cell.checksum,
                ours,
                next,
            });
        }
        Ok(())
    }

    fn decoded(&self) -> Decoded {
        let mut out = Decoded::default();
        for p in &self.peeled {
            if p.ours {
                out.only_ours.push(p.element);
            } else {
                out.only_theirs.push(p.element);
            }
        }
        out
    }
}
