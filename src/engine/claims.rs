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

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use tokio::sync::Notify;

use super::split::{Lease, Splits, Taken};
use crate::asset::AssetHash;
use crate::can::store::ranges;
use crate::can::{CanError, Outboard, SharedCan};

/// Failed leases after which a delivery leases no more of its assets: a
/// store that cannot take the groups, a source that keeps cutting them.
const MAX_FAILED_LEASES: u64 = 4;

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

/// The claims one delivery holds, each released as its asset settles here;
/// whatever is left is released when this is dropped (the delivery ended).
/// It also counts what is held, so the delivery can keep what it asked for
/// and has not received within a window ([`Claimed::until_room`]).
#[derive(Debug, Default)]
pub struct Claimed {
    held: Mutex<Held>,
    settled: Notify,
    /// [`Claims::releases`] when this delivery began.
    base: u64,
    /// Releases of this delivery's own claims since.
    own: std::sync::atomic::AtomicU64,
    /// This delivery's number, as splits know it.
    session: u64,
    /// The node's splits, which its leases come from.
    splits: Arc<Splits>,
    /// Counted among the node's pulling deliveries ([`Splits::pulling`]).
    counted: bool,
    /// Leases settled (they count as settled; they release no claim).
    leases_settled: std::sync::atomic::AtomicU64,
    /// Leases of this delivery that failed.
    failed_leases: std::sync::atomic::AtomicU64,
}

impl Drop for Claimed {
    fn drop(&mut self) {
        self.splits.left(self.session);
        if self.counted {
            self.splits
                .pulling
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[derive(Debug, Default)]
struct Held {
    claims: HashMap<AssetHash, (Claim, u64)>,
    /// Leases of split assets, by asset and first group.
    leases: HashMap<(AssetHash, u64), (Lease, u64)>,
    bytes: u64,
}

impl Held {
    fn count(&self) -> usize {
        self.claims.len() + self.leases.len()
    }
}

/// How a delivery of a lease's groups ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// Every group arrived and was written.
    Delivered,
    /// The asset is whole and stored: its split ends.
    Whole,
    /// Cut short or refused by the store: its groups are leased again.
    Failed,
    /// A group did not verify: its source is dropped for the asset.
    BadRange,
}

impl Claimed {
    /// The claims of a delivery that begins now among `claims`.
    pub fn new(claims: &Claims) -> Self {
        claims
            .splits
            .pulling
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self {
            counted: true,
            base: claims.releases(),
            session: claims
                .sessions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            splits: claims.splits.clone(),
            held: Mutex::default(),
            settled: Notify::new(),
            own: std::sync::atomic::AtomicU64::new(0),
            leases_settled: std::sync::atomic::AtomicU64::new(0),
            failed_leases: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// [`Self::new`], pulling from `source` (the peer's endpoint id): it
    /// never takes again a lease another delivery from the same source
    /// holds ([`Splits::take`]).
    pub fn from_source(claims: &Claims, source: [u8; 32]) -> Self {
        let claimed = Self::new(claims);
        claimed.splits.joined(claimed.session, source);
        claimed
    }

    /// This delivery's number among the node's, as splits know it.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Keeps `lease` (of `bytes`) until its groups settle.
    pub fn hold_lease(&self, lease: Lease, bytes: u64) {
        let mut held = self.held.lock().expect("claimed lock");
        held.bytes = held.bytes.saturating_add(bytes);
        let key = (lease.hash(), lease.groups().start);
        held.leases.insert(key, (lease, bytes));
    }

    /// The lease of `hash` a delivery whose header names `ranges` answers:
    /// the one beginning where they begin, else (a sender that did not send
    /// what was asked) the first held; with whether the ranges are exactly
    /// its groups (only then may it count as delivered).
    pub fn match_lease(&self, hash: &AssetHash, ranges: &[Range<u64>]) -> Option<(u64, bool)> {
        let held = self.held.lock().expect("claimed lock");
        let first = ranges.first().map(|run| run.start);
        if let Some((lease, _)) = first.and_then(|first| held.leases.get(&(*hash, first))) {
            return Some((lease.groups().start, ranges == [lease.groups()]));
        }
        held.leases
            .keys()
            .filter(|(leased, _)| leased == hash)
            .map(|(_, first)| *first)
            .min()
            .map(|first| (first, false))
    }

    /// Keeps the outboard a delivery of a split asset brought, for its
    /// later leases ([`Splits::keep_outboard`]).
    pub fn keep_outboard(&self, outboard: &Outboard) {
        self.splits.keep_outboard(outboard);
    }

    /// Whether `hash` is split now.
    pub fn is_split(&self, hash: &AssetHash) -> bool {
        self.splits.is_split(hash)
    }

    /// The outboard of split asset `hash` that an earlier delivery brought.
    pub fn held_outboard(&self, hash: &AssetHash) -> Option<Outboard> {
        self.splits.outboard(hash)
    }

    /// Settles every lease of `hash` this delivery holds as `end`.
    pub fn settle_leases(&self, hash: &AssetHash, end: LeaseEnd) {
        let firsts: Vec<u64> = {
            let held = self.held.lock().expect("claimed lock");
            held.leases
                .keys()
                .filter(|(leased, _)| leased == hash)
                .map(|(_, first)| *first)
                .collect()
        };
        for first in firsts {
            self.settle_lease(hash, first, end);
        }
    }

    /// The delivery of the lease of `hash` beginning at `first` was cut
    /// after the store took its first `groups` groups ([`Lease::written`]).
    pub fn lease_written(&self, hash: &AssetHash, first: u64, groups: u64) {
        let mut held = self.held.lock().expect("claimed lock");
        if let Some((lease, _)) = held.leases.get_mut(&(*hash, first)) {
            lease.written(groups);
        }
    }

    /// The delivery of the lease of `hash` beginning at `first` ended as
    /// `end`. False when this delivery held no such lease.
    pub fn settle_lease(&self, hash: &AssetHash, first: u64, end: LeaseEnd) -> bool {
        let lease = {
            let mut held = self.held.lock().expect("claimed lock");
            let lease = held.leases.remove(&(*hash, first));
            if let Some((_, bytes)) = &lease {
                held.bytes = held.bytes.saturating_sub(*bytes);
            }
            lease
        };
        let Some((lease, _)) = lease else {
            return false;
        };
        match end {
            LeaseEnd::Delivered => lease.delivered(),
            LeaseEnd::Whole => {
                lease.delivered();
                self.splits.finish(hash);
            }
            LeaseEnd::Failed
                if self.failed_leases.fetch_add(1, Ordering::SeqCst) + 1 >= MAX_FAILED_LEASES =>
            {
                // A store that cannot take it, a source that keeps cutting:
                // this delivery stops leasing the asset.
                self.splits.refuse(hash, self.session);
                drop(lease);
            }
            LeaseEnd::Failed => drop(lease),
            LeaseEnd::BadRange => {
                self.splits.refuse(hash, self.session);
                drop(lease);
            }
        }
        self.leases_settled.fetch_add(1, Ordering::SeqCst);
        self.settled.notify_waiters();
        true
    }

    /// Whether another delivery released a claim since this one began: only
    /// then may an asset our listing said we lack have been stored since,
    /// by someone else, and a claim must look in the store first.
    pub fn others_released(&self, claims: &Claims) -> bool {
        let own = self.own.load(std::sync::atomic::Ordering::SeqCst);
        claims.releases() > self.base + own
    }

    /// Keeps `claims` (each with the size asked for, 0 when unknown) until
    /// their assets settle.
    pub fn hold(&self, claims: impl IntoIterator<Item = (Claim, u64)>) {
        let mut held = self.held.lock().expect("claimed lock");
        for (claim, size) in claims {
            // Sizes are the peer's word: never let one overflow the sum.
            held.bytes = held.bytes.saturating_add(size);
            held.claims.insert(claim.hash, (claim, size));
        }
    }

    /// `hash` was stored or rejected: its claim, if this delivery held one,
    /// is released.
    pub fn settle(&self, hash: &AssetHash) {
        let released = {
            let mut held = self.held.lock().expect("claimed lock");
            let released = held.claims.remove(hash);
            if let Some((_, size)) = &released {
                held.bytes = held.bytes.saturating_sub(*size);
            }
            released
        };
        if released.is_some() {
            self.own.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(released);
            self.settled.notify_waiters();
        }
    }

    /// Whether this delivery holds the claim on `hash`.
    pub fn holds(&self, hash: &AssetHash) -> bool {
        self.held
            .lock()
            .expect("claimed lock")
            .claims
            .contains_key(hash)
    }

    /// Claims this delivery settled so far.
    pub fn settled(&self) -> u64 {
        self.own.load(Ordering::SeqCst) + self.leases_settled.load(Ordering::SeqCst)
    }

    /// Claims and leases held and not yet settled.
    pub fn len(&self) -> usize {
        self.held.lock().expect("claimed lock").count()
    }

    /// True when every claim and lease settled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many of `sizes`, in order, fit beside what is held within
    /// `assets` claims and `bytes` in all; at least one when nothing is held.
    pub fn fitting(
        &self,
        sizes: impl IntoIterator<Item = u64>,
        assets: usize,
        bytes: u64,
    ) -> usize {
        let held = self.held.lock().expect("claimed lock");
        let (mut count, mut total) = (held.count(), held.bytes);
        let mut fit = 0;
        for size in sizes {
            let first = count == 0;
            if !first && (count + 1 > assets || total.saturating_add(size) > bytes) {
                break;
            }
            count += 1;
            total = total.saturating_add(size);
            fit += 1;
        }
        fit
    }

    /// Waits until fewer than `assets` claims, of fewer than `bytes` in
    /// all, are held.
    pub async fn until_room(&self, assets: usize, bytes: u64) {
        loop {
            let settled = self.settled.notified();
            let mut settled = std::pin::pin!(settled);
            settled.as_mut().enable();
            {
                let held = self.held.lock().expect("claimed lock");
                if held.count() < assets && held.bytes < bytes {
                    return;
                }
            }
            settled.await;
        }
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
