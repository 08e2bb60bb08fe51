//! Reconciliation: from two nodes' summaries, what each must send the other.
//!
//! Sans-IO and deterministic: the sessions feed it what the peers said and act
//! on its answer. Protocol v1 uses [`diff`] on full summary lists (the
//! `HASH_SET` exchange of the original agent); [`riblt`] codes a set into
//! cells so that two large sets reconcile in bytes proportional to their
//! difference, and [`coded`] is protocol v2's exchange of those cells.
//! [`merge`] is [`diff`] a page at a time: v2's full exchange when both
//! peers page their lists, in memory that follows the page, not the store.

pub mod coded;
pub mod compact;
pub mod merge;
pub mod riblt;

use std::collections::HashMap;

use crate::asset::meta::earlier;
use crate::asset::{AssetHash, MetaVersion, Summary};

/// What one side must do after comparing its summaries with its peer's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Assets we hold and the peer lacks: send bytes and metadata.
    pub assets_to_send: Vec<AssetHash>,
    /// Assets both hold where our metadata is news to the peer (it wins LWW,
    /// or we know an earlier creation time): send a metadata update.
    pub meta_to_send: Vec<AssetHash>,
    /// Assets the peer holds and we lack: expect them.
    pub assets_to_receive: Vec<AssetHash>,
}

/// Compares our summaries with the peer's.
///
/// Output lists are sorted by hash, so both sides (and tests) see a stable
/// order.
pub fn diff(ours: &[Summary], theirs: &[Summary]) -> Diff {
    let index = |list: &[Summary]| -> HashMap<AssetHash, (MetaVersion, i64)> {
        list.iter()
            .map(|s| (s.hash, (s.version, s.created_at_ms)))
            .collect()
    };
    let ours = index(ours);
    let theirs = index(theirs);
    let mut out = Diff::default();
    for (hash, ours) in &ours {
        match theirs.get(hash) {
            None => out.assets_to_send.push(*hash),
            Some(theirs) if news(*ours, *theirs) => out.meta_to_send.push(*hash),
            Some(_) => {}
        }
    }
    out.assets_to_receive = theirs
        .keys()
        .filter(|h| !ours.contains_key(h))
        .copied()
        .collect();
    out.assets_to_send.sort();
    out.meta_to_send.sort();
    out.assets_to_receive.sort();
    out
}

/// Whether our (version, creation time) of an asset is news to a peer that
/// holds `theirs`: our metadata wins LWW, or we know an earlier creation.
pub fn news(ours: (MetaVersion, i64), theirs: (MetaVersion, i64)) -> bool {
    ours.0 > theirs.0 || earlier(ours.1, theirs.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(data: &[u8], meta_at: i64, digest: u8) -> Summary {
        Summary {
            hash: AssetHash::of(data),
            created_at_ms: 1,
            size: data.len() as u64,
            version: MetaVersion {
                updated_at_ms: meta_at,
                digest: [digest; 32],
            },
        }
    }

    #[test]
    fn each_side_sends_what_the_other_lacks_and_newer_metadata() {
        let ours = [
            summary(b"a", 1, 0),
            summary(b"b", 5, 0),
            summary(b"c", 1, 0),
        ];
        let theirs = [
            summary(b"b", 3, 0),
            summary(b"c", 2, 0),
            summary(b"d", 1, 0),
        ];
        let d = diff(&ours, &theirs);
        assert_eq!(d.assets_to_send, vec![AssetHash::of(b"a")]);
        assert_eq!(d.meta_to_send, vec![AssetHash::of(b"b")]);
        assert_eq!(d.assets_to_receive, vec![AssetHash::of(b"d")]);
        let back = diff(&theirs, &ours);
        assert_eq!(back.meta_to_send, vec![AssetHash::of(b"c")]);
    }

    #[test]
    fn an_earlier_creation_time_is_sent_and_a_later_one_is_not() {
        let mut ours = summary(b"a", 7, 1);
        let mut theirs = summary(b"a", 7, 1);
        ours.created_at_ms = 1;
        theirs.created_at_ms = 5;
        assert_eq!(diff(&[ours], &[theirs]).meta_to_send.len(), 1);
        assert!(diff(&[theirs], &[ours]).meta_to_send.is_empty());
        ours.created_at_ms = 0;
        assert!(
            diff(&[ours], &[theirs]).meta_to_send.is_empty(),
            "unknown is no news"
        );
    }

    #[test]
    fn equal_times_are_broken_by_digest_on_exactly_one_side() {
        let ours = [summary(b"a", 7, 2)];
        let theirs = [summary(b"a", 7, 1)];
        assert_eq!(diff(&ours, &theirs).meta_to_send.len(), 1);
        assert!(diff(&theirs, &ours).meta_to_send.is_empty());
        assert!(diff(&ours, &ours).meta_to_send.is_empty());
    }

    #[test]
    fn digests_as_v2_carries_them_still_break_ties() {
        // v2 summaries carry the digest as compact lists encode it; the
        // tie-break must survive the encoding.
        let ours = [summary(b"a", 7, 2).truncated(compact::DIGEST_PREFIX)];
        let theirs = [summary(b"a", 7, 1).truncated(compact::DIGEST_PREFIX)];
        assert_eq!(diff(&ours, &theirs).meta_to_send.len(), 1);
        assert!(diff(&theirs, &ours).meta_to_send.is_empty());
    }
}
