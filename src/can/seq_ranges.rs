//! [`SeqRanges`]: a set of change sequence numbers kept as ranges, for what a
//! node must remember about a store's change log, such as which changes a
//! peer caused (a bulk seed's pushes are one long run, so one range).

use std::collections::BTreeMap;

/// A set of sequence numbers as disjoint, non-adjacent inclusive ranges.
///
/// Bounded: past [`SeqRanges::MAX_RANGES`] ranges the lowest go first, so a
/// pathological interleaving costs memory only up to the bound (and what
/// is forgotten is treated as not in the set).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqRanges {
    /// Range start → range end, both inclusive.
    ranges: BTreeMap<u64, u64>,
}

impl SeqRanges {
    /// Most ranges kept.
    pub const MAX_RANGES: usize = 1 << 16;

    /// Adds `seq`, merging it with the ranges it touches.
    pub fn insert(&mut self, seq: u64) {
        if self.contains(seq) {
            return;
        }
        let below = self
            .ranges
            .range(..seq)
            .next_back()
            .filter(|(_, end)| end.checked_add(1) == Some(seq))
            .map(|(start, _)| *start);
        let above = seq
            .checked_add(1)
            .and_then(|next| self.ranges.get(&next).map(|end| (next, *end)));
        let start = below.unwrap_or(seq);
        let end = match above {
            Some((next, end)) => {
                self.ranges.remove(&next);
                end
            }
            None => seq,
        };
        self.ranges.insert(start, end);
        while self.ranges.len() > Self::MAX_RANGES {
            self.ranges.pop_first();
        }
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, end)| seq <= *end)
    }

    /// Forgets every number below `seq`: what a reader of the log in order
    /// has passed.
    pub fn forget_below(&mut self, seq: u64) {
        while let Some((&start, &end)) = self.ranges.first_key_value() {
            if end < seq {
                self.ranges.remove(&start);
            } else {
                if start < seq {
                    self.ranges.remove(&start);
                    self.ranges.insert(seq, end);
                }
                break;
            }
        }
    }

    /// Adds every number of `other`.
    pub fn extend(&mut self, other: &Self) {
        for (&start, &end) in &other.ranges {
            for seq in start..=end {
                self.insert(seq);
            }
        }
    }

    /// How many ranges are kept.
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn behaves_as_a_set_in_few_ranges(seqs in proptest::collection::vec(0u64..200, 0..300), cut in 0u64..220) {
            let mut ranges = SeqRanges::default();
            let mut model = BTreeSet::new();
            for seq in &seqs {
                ranges.insert(*seq);
                model.insert(*seq);
            }
            for seq in 0..210 {
                prop_assert_eq!(ranges.contains(seq), model.contains(&seq));
            }
            // Ranges are maximal: no two touch.
            let runs = model.iter().zip(model.iter().skip(1)).filter(|(a, b)| **b != **a + 1).count()
                + usize::from(!model.is_empty());
            prop_assert_eq!(ranges.ranges(), runs);
            ranges.forget_below(cut);
            for seq in 0..210 {
                prop_assert_eq!(ranges.contains(seq), seq >= cut && model.contains(&seq));
            }
        }
    }

    #[test]
    fn a_long_run_is_one_range_and_the_bound_holds() {
        let mut ranges = SeqRanges::default();
        for seq in 1..=100_000 {
            ranges.insert(seq);
        }
        assert_eq!(ranges.ranges(), 1);
        let mut sparse = SeqRanges::default();
        for seq in 0..(SeqRanges::MAX_RANGES as u64 + 10) {
            sparse.insert(seq * 2);
        }
        assert_eq!(sparse.ranges(), SeqRanges::MAX_RANGES);
        assert!(!sparse.contains(0), "the lowest went first");
        assert!(sparse.contains(SeqRanges::MAX_RANGES as u64 * 2));
    }
}
