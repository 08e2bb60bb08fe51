//! What live sync remembers between offers: which assets this node is
//! receiving right now from any peer ([`Claims`], node-wide), and what one
//! peer is known to hold ([`PeerView`], per connection).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::asset::{AssetHash, MetaVersion};

/// The assets this node is receiving right now, from any peer: what an offer
/// from a second peer declines.
#[derive(Debug, Default)]
pub struct Claims(Mutex<HashSet<AssetHash>>);

impl Claims {
    /// Claims `hash`, or `None` when another delivery holds it.
    pub fn try_claim(self: &Arc<Self>, hash: AssetHash) -> Option<Claim> {
        let fresh = self.0.lock().expect("claims lock").insert(hash);
        fresh.then(|| Claim {
            claims: self.clone(),
            hash,
        })
    }
}

/// A held claim; dropping it releases the asset for other deliveries.
#[derive(Debug)]
pub struct Claim {
    claims: Arc<Claims>,
    hash: AssetHash,
}

impl Claim {
    /// The claimed asset.
    pub fn hash(&self) -> AssetHash {
        self.hash
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims
            .0
            .lock()
            .expect("claims lock")
            .remove(&self.hash);
    }
}

/// Most entries a [`PeerView`] keeps before it forgets everything: forgetting
/// costs at most a declined offer, never a missed change.
const PEER_VIEW_LIMIT: usize = 1 << 18;

/// What one peer is known to hold: asset → the newest metadata version seen
/// on its side (digests truncated as offers carry them).
#[derive(Debug, Default)]
pub struct PeerView(Mutex<HashMap<AssetHash, MetaVersion>>);

impl PeerView {
    /// The peer holds `hash` at `version` (or newer).
    pub fn record(&self, hash: AssetHash, version: MetaVersion) {
        let mut known = self.0.lock().expect("peer view lock");
        if known.len() >= PEER_VIEW_LIMIT && !known.contains_key(&hash) {
            known.clear();
        }
        let entry = known.entry(hash).or_insert(version);
        *entry = (*entry).max(version);
    }

    /// True when the peer already holds `hash` at `version` or newer.
    pub fn holds(&self, hash: &AssetHash, version: MetaVersion) -> bool {
        self.0
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
    fn a_claim_excludes_others_until_dropped() {
        let claims = Arc::new(Claims::default());
        let hash = AssetHash::of(b"x");
        let first = claims.try_claim(hash).expect("free");
        assert!(claims.try_claim(hash).is_none());
        drop(first);
        assert!(claims.try_claim(hash).is_some());
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
}
