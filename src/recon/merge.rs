//! The full exchange in pages: a merge-join of two hash-ordered summary
//! streams, deciding each asset as soon as both streams have passed it.
//!
//! [`diff`](super::diff) needs both whole lists; [`MergeJoin`] takes them a
//! page at a time (ours from our store, theirs from the peer's `RECON`
//! pages) and holds only what one side has listed past the other. Its
//! decisions are exactly [`diff`](super::diff)'s, asset for asset (a property
//! test below checks it for any paging), so a session's memory follows the
//! page size, never the archive.
//!
//! Invariant: every stream is strictly ascending by hash, across its pages
//! too. The merge checks it and refuses a page that breaks it, since a peer
//! that repeated or reordered hashes would otherwise make it skip assets.

use std::collections::VecDeque;

use super::news;
use crate::asset::{AssetHash, Summary};

/// A page that breaks the ascending order of its stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("summary {got} does not follow {after} in hash order")]
pub struct OutOfOrder {
    /// The last hash of the stream so far.
    pub after: AssetHash,
    /// The hash that should have been greater.
    pub got: AssetHash,
}

/// What the merge decided since it was last asked: the part of a
/// [`Diff`](super::Diff) that is settled.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decided {
    /// Assets we hold and the peer lacks, with our sizes, in hash order.
    pub assets_to_send: Vec<(AssetHash, u64)>,
    /// Assets both hold where our metadata is news to the peer.
    pub meta_to_send: Vec<AssetHash>,
    /// Assets the peer holds and we lack, with the peer's sizes, in hash
    /// order.
    pub assets_to_receive: Vec<(AssetHash, u64)>,
}

impl Decided {
    /// Nothing to send in it.
    pub fn is_empty(&self) -> bool {
        self.assets_to_send.is_empty() && self.meta_to_send.is_empty()
    }

    /// Assets and metadata updates to send.
    pub fn len(&self) -> usize {
        self.assets_to_send.len() + self.meta_to_send.len()
    }
}

/// One side's stream of summaries: what is buffered, where it stands.
#[derive(Debug, Default)]
struct Stream {
    buffered: VecDeque<Summary>,
    last: Option<AssetHash>,
    ended: bool,
}

impl Stream {
    fn push(&mut self, page: Vec<Summary>, last: bool) -> Result<(), OutOfOrder> {
        debug_assert!(!self.ended, "a page after the last one");
        for summary in &page {
            if let Some(after) = self.last.filter(|after| summary.hash <= *after) {
                return Err(OutOfOrder {
                    after,
                    got: summary.hash,
                });
            }
            self.last = Some(summary.hash);
        }
        self.buffered.extend(page);
        self.ended |= last;
        Ok(())
    }

    /// Whether everything this stream will ever hold at or before `hash` is
    /// known: it is buffered past it, or it ended.
    fn passed(&self) -> bool {
        self.ended || !self.buffered.is_empty()
    }
}

/// The merge-join of our summaries and the peer's; see the module docs.
#[derive(Debug, Default)]
pub struct MergeJoin {
    ours: Stream,
    theirs: Stream,
}

impl MergeJoin {
    /// A merge with nothing listed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Our next page; `last` when our listing ends with it.
    pub fn push_ours(&mut self, page: Vec<Summary>, last: bool) -> Result<(), OutOfOrder> {
        self.ours.push(page, last)
    }

    /// The peer's next page; `last` when its listing ends with it.
    pub fn push_theirs(&mut self, page: Vec<Summary>, last: bool) -> Result<(), OutOfOrder> {
        self.theirs.push(page, last)
    }

    /// Decides every asset both streams have passed, adding to `out`.
    pub fn drain(&mut self, out: &mut Decided) {
        while self.ours.passed() && self.theirs.passed() {
            let (ours, theirs) = (&mut self.ours.buffered, &mut self.theirs.buffered);
            match (ours.front(), theirs.front()) {
                (Some(o), Some(t)) if o.hash < t.hash => {
                    out.assets_to_send.push((o.hash, o.size));
                    ours.pop_front();
                }
                (Some(o), Some(t)) if t.hash < o.hash => {
                    out.assets_to_receive.push((t.hash, t.size));
                    theirs.pop_front();
                }
                (Some(o), Some(t)) => {
                    let version = |s: &Summary| (s.version, s.created_at_ms);
                    if news(version(o), version(t)) {
                        out.meta_to_send.push(o.hash);
                    }
                    ours.pop_front();
                    theirs.pop_front();
                }
                // The other stream ended: the rest of this one is unmatched.
                (Some(o), None) => {
                    out.assets_to_send.push((o.hash, o.size));
                    ours.pop_front();
                }
                (None, Some(t)) => {
                    out.assets_to_receive.push((t.hash, t.size));
                    theirs.pop_front();
                }
                (None, None) => return,
            }
        }
    }

    /// Our summaries listed but not yet decided.
    pub fn ours_buffered(&self) -> usize {
        self.ours.buffered.len()
    }

    /// The peer's summaries received but not yet decided.
    pub fn theirs_buffered(&self) -> usize {
        self.theirs.buffered.len()
    }

    /// Our listing ended.
    pub fn ours_ended(&self) -> bool {
        self.ours.ended
    }

    /// The peer's listing ended.
    pub fn theirs_ended(&self) -> bool {
        self.theirs.ended
    }

    /// Both listings ended and every asset is decided.
    pub fn is_done(&self) -> bool {
        self.ours.ended
            && self.theirs.ended
            && self.ours.buffered.is_empty()
            && self.theirs.buffered.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::asset::MetaVersion;
    use crate::recon::diff;

    fn summary(key: u8, created: i64, updated: i64, digest: u8) -> Summary {
        Summary {
            hash: AssetHash::of(&[key]),
            created_at_ms: created,
            size: u64::from(key) + 1,
            version: MetaVersion {
                updated_at_ms: updated,
                digest: [digest; 32],
            },
        }
    }

    fn sorted(mut list: Vec<Summary>) -> Vec<Summary> {
        list.sort_by_key(|s| s.hash);
        list.dedup_by_key(|s| s.hash);
        list
    }

    /// Merges `ours` and `theirs` fed in pages of `ours_page`/`theirs_page`,
    /// alternating, draining after every page.
    fn merged(
        ours: &[Summary],
        theirs: &[Summary],
        ours_page: usize,
        theirs_page: usize,
    ) -> Decided {
        let mut merge = MergeJoin::new();
        let mut out = Decided::default();
        let mut ours = ours.chunks(ours_page).peekable();
        let mut theirs = theirs.chunks(theirs_page).peekable();
        if ours.peek().is_none() {
            merge.push_ours(vec![], true).unwrap();
        }
        if theirs.peek().is_none() {
            merge.push_theirs(vec![], true).unwrap();
        }
        while !merge.is_done() {
            if let Some(page) = ours.next() {
                merge
                    .push_ours(page.to_vec(), ours.peek().is_none())
                    .unwrap();
            }
            merge.drain(&mut out);
            if let Some(page) = theirs.next() {
                merge
                    .push_theirs(page.to_vec(), theirs.peek().is_none())
                    .unwrap();
            }
            merge.drain(&mut out);
        }
        out
    }

    fn arb_summary() -> impl Strategy<Value = Summary> {
        (0u8..64, 0i64..3, 0i64..3, 0u8..2)
            .prop_map(|(key, created, updated, digest)| summary(key, created, updated, digest))
    }

    proptest! {
        #[test]
        fn paged_decisions_are_the_whole_list_diff(
            ours in proptest::collection::vec(arb_summary(), 0..48),
            theirs in proptest::collection::vec(arb_summary(), 0..48),
            ours_page in 1usize..9,
            theirs_page in 1usize..9,
        ) {
            let (ours, theirs) = (sorted(ours), sorted(theirs));
            let whole = diff(&ours, &theirs);
            let paged = merged(&ours, &theirs, ours_page, theirs_page);
            let sent: Vec<AssetHash> = paged.assets_to_send.iter().map(|(h, _)| *h).collect();
            prop_assert_eq!(sent, whole.assets_to_send);
            prop_assert_eq!(paged.meta_to_send, whole.meta_to_send);
            let lacking: Vec<AssetHash> = paged.assets_to_receive.iter().map(|(hash, _)| *hash).collect();
            prop_assert_eq!(&lacking, &whole.assets_to_receive);
        }
    }

    #[test]
    fn a_side_decides_nothing_until_the_other_has_passed_it() {
        let mut list = sorted((0..4).map(|k| summary(k, 1, 1, 0)).collect());
        let mut merge = MergeJoin::new();
        merge.push_ours(list.clone(), true).unwrap();
        let mut out = Decided::default();
        merge.drain(&mut out);
        assert_eq!(out, Decided::default(), "the peer has said nothing yet");
        // The peer lists the last hash only: everything before it is ours alone.
        let last = list.pop().unwrap();
        merge.push_theirs(vec![last], false).unwrap();
        merge.drain(&mut out);
        assert_eq!(out.assets_to_send.len(), 3);
        assert_eq!(merge.theirs_buffered(), 0, "the equal pair is decided");
        assert!(!merge.is_done(), "the peer's listing has not ended");
        merge.push_theirs(vec![], true).unwrap();
        merge.drain(&mut out);
        assert!(merge.is_done());
        assert_eq!(
            (out.assets_to_send.len(), out.assets_to_receive.len()),
            (3, 0)
        );
    }

    #[test]
    fn a_page_out_of_order_or_repeating_a_hash_is_refused() {
        let list = sorted((0..3).map(|k| summary(k, 1, 1, 0)).collect());
        let mut merge = MergeJoin::new();
        merge.push_theirs(vec![list[1]], false).unwrap();
        let repeated = merge.push_theirs(vec![list[1]], false);
        assert_eq!(
            repeated,
            Err(OutOfOrder {
                after: list[1].hash,
                got: list[1].hash
            })
        );
        let mut fresh = MergeJoin::new();
        let backwards = vec![list[2], list[0]];
        assert!(fresh.push_theirs(backwards, true).is_err());
    }
}
