//! Node-wide claims on the assets being received, so that an asset several
//! peers could send arrives about once.
//!
//! A receiver claims an asset before it asks a peer for it ([`Claims`]); while
//! one delivery holds the claim, every other delivery of the same asset to
//! this node is declined or deferred. A claim ends when its asset settles
//! (stored, or rejected) or when the delivery that took it ends, whichever
//! comes first: [`Claimed`] keeps one delivery's claims and the receive
//! pipeline settles them asset by asset ([`crate::engine::receive::run_settling`]).
//!
//! Claims only ever wait on data: a claim is released by its asset arriving
//! (or its delivery ending), never by a reconciliation or a control stream
//! making progress, so a delivery waiting for another's claim
//! ([`Claims::until_free`]) waits on that delivery's data alone, and a
//! delivery whose data stops is ended by its idle timeout.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use tokio::sync::Notify;

mod claimed;

pub use claimed::{Claimed, LeaseEnd};

use super::split::{Splits, Taken};
use crate::asset::AssetHash;
use crate::can::store::ranges;
use crate::can::{CanError, SharedCan};

/// Store lookups in flight at once while claiming.
const LOOKUPS: usize = 16;

/// Claims those of `assets` our store lacks: the claims, and the hashes
/// another delivery holds (busy). Claim first, then look (when `look`): an
/// asset stored between the two is seen, and its claim dropped. A delivery
/// whose assets come from a listing of the store need not look while no
/// other delivery stored anything since ([`Claimed::others_released`]): a
/// lookup per asset is what a CAN over HTTP pays most for.
pub async fn claim_lacking(
    claims: &Arc<Claims>,
    can: &SharedCan,
    assets: Vec<(AssetHash, u64)>,
    look: bool,
) -> Result<(Vec<(Claim, u64)>, Vec<AssetHash>), CanError> {
    let mut busy = Vec::new();
    let mut taken = Vec::new();
    for (hash, size) in assets {
        match claims.try_claim(hash) {
            Some(claim) => taken.push((claim, size)),
            None => busy.push(hash),
        }
    }
    let lacking: Vec<Option<(Claim, u64)>> = futures::stream::iter(taken)
        .map(|(claim, size)| async move {
            let held = look && can.meta(claim.hash()).await?.is_some();
            Ok::<_, CanError>((!held).then_some((claim, size)))
        })
        .buffered(LOOKUPS)
        .try_collect()
        .await?;
    Ok((lacking.into_iter().flatten().collect(), busy))
}

/// What a session does about one large asset it may take by leases.
#[derive(Debug, PartialEq, Eq)]
pub enum Leased {
    /// Ask the peer for these groups; `more` are left to lease after them.
    Ask {
        /// The lease's groups.
        groups: Range<u64>,
        /// Groups are left to lease after these.
        more: bool,
    },
    /// Every group lacking is leased or another delivery holds the asset:
    /// wait ([`Claims::until_free`]).
    Busy,
    /// Stored by now, or this session's source sent a bad range of it.
    Drop,
}

/// Takes the next lease of a large asset of `size` bytes our store lacks,
/// splitting it first if no delivery holds it ([`super::split`]). Its
/// groups lacking are the store's word ([`Can::resume_points`](crate::can::Can::resume_points)): all of
/// them when it holds none.
pub async fn lease_lacking(
    claims: &Arc<Claims>,
    claimed: &Claimed,
    can: &SharedCan,
    hash: AssetHash,
    size: u64,
) -> Result<Leased, CanError> {
    // A split may end between the look and the take (its last lease
    // delivered): the second round sees the asset stored, or splits it
    // again for groups its store lost.
    for _ in 0..2 {
        if !claims.splits.is_split(&hash) {
            match claims.try_claim(hash) {
                None if claims.splits.is_split(&hash) => {}
                None => return Ok(Leased::Busy),
                Some(claim) => {
                    if can.meta(hash).await?.is_some() {
                        return Ok(Leased::Drop);
                    }
                    let missing = can
                        .resume_points(&[hash])
                        .await?
                        .into_iter()
                        .find(|(held, _)| *held == hash)
                        .map(|(_, missing)| missing)
                        .unwrap_or_else(|| ranges::all_groups(size));
                    claims.splits.start(claim, size, missing);
                }
            }
        }
        match claims
            .splits
            .take(hash, claimed.session(), std::time::Instant::now())
        {
            (Taken::Lease(lease), more) => {
                let groups = lease.groups();
                // Its bytes by the size its split has: a caller that knew
                // the asset's size from the split may have read it before
                // the split ended and another began.
                let size = claims.splits.size(&hash).unwrap_or(size);
                let bytes = ranges::group_range(size, groups.end - 1).end
                    - ranges::group_range(size, groups.start).start;
                claimed.hold_lease(lease, bytes);
                return Ok(Leased::Ask { groups, more });
            }
            (Taken::Busy, _) => return Ok(Leased::Busy),
            (Taken::Refused, _) => return Ok(Leased::Drop),
            (Taken::Ended, _) => continue,
        }
    }
    Ok(Leased::Busy)
}

/// The assets this node is receiving right now, from any peer.
#[derive(Debug, Default)]
pub struct Claims {
    held: Mutex<HashSet<AssetHash>>,
    /// Large assets whose claim is held by a split among sessions, each
    /// leasing runs of groups ([`super::split`]).
    pub splits: Arc<Splits>,
    released: Notify,
    /// Claims ever released: a delivery that sees it move knows another
    /// may have stored what it is about to claim.
    releases: std::sync::atomic::AtomicU64,
    /// Deliveries begun, to number them.
    sessions: std::sync::atomic::AtomicU64,
}

impl Claims {
    /// Claims `hash`, or `None` when another delivery holds it.
    pub fn try_claim(self: &Arc<Self>, hash: AssetHash) -> Option<Claim> {
        let fresh = self.held.lock().expect("claims lock").insert(hash);
        fresh.then(|| Claim {
            claims: self.clone(),
            hash,
        })
    }

    /// Whether a delivery holds `hash` now.
    pub fn is_held(&self, hash: &AssetHash) -> bool {
        self.held.lock().expect("claims lock").contains(hash)
    }

    /// Waits until no delivery holds any of `hashes`, or, for a caller
    /// that `leases`, a split one has groups to lease again (each may be
    /// claimed again at once by someone else: the caller tries to claim, it
    /// does not own them).
    pub async fn until_free(&self, hashes: &[AssetHash], leases: bool) {
        for hash in hashes {
            loop {
                let released = self.released.notified();
                let mut released = std::pin::pin!(released);
                let given_back = self.splits.freed.notified();
                let mut given_back = std::pin::pin!(given_back);
                // Registered before the check, so a release in between wakes it.
                released.as_mut().enable();
                given_back.as_mut().enable();
                if !self.is_held(hash) || (leases && self.splits.has_free(hash)) {
                    break;
                }
                futures::future::select(released, given_back).await;
            }
        }
    }

    fn release(&self, hash: &AssetHash) {
        self.held.lock().expect("claims lock").remove(hash);
        self.releases
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.released.notify_waiters();
    }

    /// Claims released so far, by every delivery.
    pub fn releases(&self) -> u64 {
        self.releases.load(std::sync::atomic::Ordering::SeqCst)
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
        self.claims.release(&self.hash);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
    fn a_settled_asset_frees_its_claim_and_the_rest_go_with_the_delivery() {
        let claims = Arc::new(Claims::default());
        let (x, y) = (AssetHash::of(b"x"), AssetHash::of(b"y"));
        let claimed = Claimed::default();
        claimed.hold([
            (claims.try_claim(x).unwrap(), 10),
            (claims.try_claim(y).unwrap(), 20),
        ]);
        claimed.settle(&x);
        assert!(!claims.is_held(&x));
        assert!(claims.is_held(&y));
        // Settling what this delivery never claimed changes nothing.
        let other = claims.try_claim(x).unwrap();
        claimed.settle(&x);
        assert!(claims.is_held(&x));
        drop(other);
        drop(claimed);
        assert!(!claims.is_held(&y), "the delivery ended: its claims end");
    }

    #[tokio::test]
    async fn the_window_takes_what_fits_and_opens_as_assets_settle() {
        let claims = Arc::new(Claims::default());
        let claimed = Claimed::default();
        // Nothing held: the first always fits, however large.
        assert_eq!(claimed.fitting([100, 1], 2, 50), 1);
        let (x, y) = (AssetHash::of(b"x"), AssetHash::of(b"y"));
        claimed.hold([
            (claims.try_claim(x).unwrap(), 30),
            (claims.try_claim(y).unwrap(), 10),
        ]);
        assert_eq!(claimed.fitting([5, 5, 5], 3, 100), 1, "by count");
        assert_eq!(claimed.fitting([5, 20], 10, 50), 1, "by bytes");
        let full = claimed.until_room(2, 100);
        let mut full = std::pin::pin!(full);
        assert!(
            futures::poll!(full.as_mut()).is_pending(),
            "two held of two"
        );
        claimed.settle(&x);
        tokio::time::timeout(Duration::from_secs(5), full)
            .await
            .expect("a settled asset makes room");
    }

    #[test]
    fn a_delivery_looks_in_the_store_only_once_another_released_a_claim() {
        let claims = Arc::new(Claims::default());
        let ours = Claimed::new(&claims);
        let x = AssetHash::of(b"x");
        ours.hold([(claims.try_claim(x).unwrap(), 1)]);
        ours.settle(&x);
        assert!(
            !ours.others_released(&claims),
            "our own settling is not news"
        );
        let theirs = claims.try_claim(AssetHash::of(b"y")).unwrap();
        drop(theirs);
        assert!(
            ours.others_released(&claims),
            "another delivery may have stored"
        );
    }

    #[tokio::test]
    async fn waiting_for_claims_ends_when_the_last_is_released() {
        let claims = Arc::new(Claims::default());
        let (x, y) = (AssetHash::of(b"x"), AssetHash::of(b"y"));
        let (held_x, held_y) = (claims.try_claim(x).unwrap(), claims.try_claim(y).unwrap());
        let waiter = {
            let claims = claims.clone();
            tokio::spawn(async move { claims.until_free(&[x, y], false).await })
        };
        drop(held_y);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "x is still held");
        drop(held_x);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released claims wake the waiter")
            .unwrap();
    }
}
