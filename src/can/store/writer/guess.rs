//! How each writer group learns whether the store holds its assets:
//! [`Lookups`], a lookup per write or new assets taken for new, and
//! [`Guess`], which picks one for each group from what the groups before
//! it found. Pure, so every transition is tested without a store.

/// The fewest writes a group holds to take new assets for new
/// ([`Lookups::AssumeNew`]): a bulk loader's batches hold 8,192 and more
/// ([`load_batch`](crate::can::store::load_batch)). A daemon's groups are smaller, their
/// lookups cost little beside their commit, and they meet assets that two
/// peers pushed at once often enough that guessing would apply groups twice.
const ASSUME_NEW_FROM: usize = 1024;

/// How a group's asset writes learn whether the store holds their asset.
///
/// A bulk load writes assets the store does not hold, and looking each one
/// up costs a descent of the asset table in hash order, which is random: in
/// a load into a store of 9M assets it was the writer's largest cost, and
/// the one that grew most with the store (PERFORMANCE.md, "Loading"). The
/// insert at the group's end descends the table anyway, in key order, and
/// says whether it replaced a record: so a group may skip the lookups and
/// let the insert check. A group that finds it took a held asset for new is
/// dropped whole (its transaction aborted, its packed bytes cut back) and
/// applied again with a lookup per write, so its answers are exactly those
/// of a group that looked each asset up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookups {
    /// Each write looks its asset up.
    Each,
    /// An asset write takes its asset to be new unless the group itself
    /// wrote it; metadata writes still look theirs up.
    AssumeNew,
}

/// How the writer thread chooses each group's [`Lookups`] from what the
/// groups before it found. A group of a bulk load's size takes its new
/// assets for new unless the last such group met an asset the store held
/// (a re-import meets held assets batch after batch, and would otherwise be
/// applied twice each time). A smaller group, a daemon's, always looks up,
/// and what it finds does not move the guess: its pushes between two
/// batches say nothing about the next batch.
#[derive(Debug)]
pub(super) struct Guess {
    /// The lookups of the next group of a bulk load's size.
    large: Lookups,
}

impl Default for Guess {
    fn default() -> Self {
        Self {
            large: Lookups::AssumeNew,
        }
    }
}

impl Guess {
    /// The lookups of a group of `writes` writes.
    pub(super) fn lookups(&self, writes: usize) -> Lookups {
        if writes >= ASSUME_NEW_FROM {
            self.large
        } else {
            Lookups::Each
        }
    }

    /// Learns from a committed group of `writes` writes that did or did not
    /// meet an asset the store held before it.
    pub(super) fn committed(&mut self, writes: usize, met_held: bool) {
        if writes >= ASSUME_NEW_FROM {
            self.large = if met_held {
                Lookups::Each
            } else {
                Lookups::AssumeNew
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Groups of a bulk load's size start by guessing, stop after one of
    /// them met a held asset and start again after one met none; smaller
    /// groups always look up, and what they meet moves nothing.
    #[test]
    fn only_groups_of_a_bulk_loads_size_move_the_guess() {
        let (small, large) = (ASSUME_NEW_FROM - 1, ASSUME_NEW_FROM);
        let mut guess = Guess::default();
        assert_eq!(guess.lookups(large), Lookups::AssumeNew);
        assert_eq!(guess.lookups(small), Lookups::Each);

        guess.committed(large, true);
        assert_eq!(
            guess.lookups(large),
            Lookups::Each,
            "a large group met one held"
        );
        guess.committed(small, false);
        assert_eq!(
            guess.lookups(large),
            Lookups::Each,
            "a small group met none"
        );

        guess.committed(large, false);
        assert_eq!(
            guess.lookups(large),
            Lookups::AssumeNew,
            "a large group met none"
        );
        guess.committed(small, true);
        assert_eq!(
            guess.lookups(large),
            Lookups::AssumeNew,
            "a small group met one"
        );
        assert_eq!(guess.lookups(small), Lookups::Each);
    }
}
