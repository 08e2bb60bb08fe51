//! What live sync remembers between offers about one peer: what it is known
//! to hold ([`PeerView`], per connection). What this node is receiving from
//! any peer is node-wide: [`crate::engine::claims`].

use std::collections::HashMap;
use std::sync::Mutex;

use crate::asset::{AssetHash, MetaVersion};
use crate::can::SeqRanges;

/// Most entries a [`PeerView`] keeps by default before it forgets
/// everything: forgetting costs at most a declined offer, never a missed
/// change. The same as a link's default backlog (`--live-backlog` sets
/// both): about 2.5 MB per link at 150 bytes an entry, where 2^18 entries
/// were 38 MB, 2.4 GB over 64 links.
pub const PEER_VIEW_LIMIT: usize = super::DEFAULT_BACKLOG;

/// What one peer is known to hold: asset → the newest metadata version seen
/// on its side (digests truncated as offers carry them), bounded; and which
/// changes of our log its deliveries made, as ranges (a bulk seed is one).
#[derive(Debug)]
pub struct PeerView {
    known: Mutex<HashMap<AssetHash, MetaVersion>>,
    limit: usize,
    changes: Mutex<SeqRanges>,
}

impl Default for PeerView {
    fn default() -> Self {
        Self::with_limit(PEER_VIEW_LIMIT)
    }
}

impl PeerView {
    /// A view that keeps at most `limit` assets.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            known: Mutex::default(),
            limit: limit.max(1),
            changes: Mutex::default(),
        }
    }

    /// The peer's deliveries made these changes in our log.
    pub fn record_changes(&self, changes: &SeqRanges) {
        self.changes.lock().expect("peer view lock").extend(changes);
    }

    /// Whether change `seq` of our log came from the peer; also forgets the
    /// changes before it, which a reader of the log in order has passed.
    pub fn caused(&self, seq: u64) -> bool {
        let mut changes = self.changes.lock().expect("peer view lock");
        changes.forget_below(seq);
        changes.contains(seq)
    }

    /// The peer holds `hash` at `version` (or newer).
    pub fn record(&self, hash: AssetHash, version: MetaVersion) {
        let mut known = self.known.lock().expect("peer view lock");
        if known.len() >= self.limit && !known.contains_key(&hash) {
            known.clear();
        }
        let entry = known.entry(hash).or_insert(version);
        *entry = (*entry).max(version);
    }

    /// True when the peer already holds `hash` at `version` or newer.
    pub fn holds(&self, hash: &AssetHash, version: MetaVersion) -> bool {
        self.known
            .lock()
            .expect("peer view lock")
            .get(hash)
            .is_some_and(|known| *known >= version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(at: i64) -> MetaVersion {
        MetaVersion {
            updated_at_ms: at,
            digest: [0; 32],
        }
    }

    #[test]
    fn the_peer_view_suppresses_what_the_peer_holds_and_only_that() {
        let view = PeerView::default();
        let hash = AssetHash::of(b"x");
        assert!(!view.holds(&hash, version(1)));
        view.record(hash, version(5));
        assert!(view.holds(&hash, version(5)));
        assert!(view.holds(&hash, version(4)));
        assert!(!view.holds(&hash, version(6)), "a newer edit must still go");
        view.record(hash, version(3));
        assert!(
            view.holds(&hash, version(5)),
            "an older record never lowers it"
        );
    }

    #[test]
    fn the_changes_a_peer_caused_are_recognised_once_passed_forgotten() {
        let view = PeerView::with_limit(2);
        let mut seeded = SeqRanges::default();
        for seq in 10..=5_000 {
            seeded.insert(seq);
        }
        view.record_changes(&seeded);
        assert!(!view.caused(9), "a change of our own");
        assert!(view.caused(10));
        assert!(view.caused(4_000));
        assert!(!view.caused(5_001));
        // Passed in log order: what lies behind is forgotten.
        assert!(!view.caused(4_000));
        // The asset record stays bounded by its own limit.
        for i in 0..5u8 {
            view.record(AssetHash::of(&[i]), version(1));
        }
        assert!(view.known.lock().unwrap().len() <= 2);
    }
}
