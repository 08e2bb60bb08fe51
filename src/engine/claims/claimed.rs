//! One delivery's claims ([`Claimed`]): the assets and leases it holds,
//! released as each settles or all at once when the delivery ends, and
//! the window of bytes they count against.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::super::split::{Arrival, Lease, Splits};
use super::{Claim, Claims};
use crate::asset::AssetHash;
use crate::can::Outboard;

/// Failed leases after which a delivery leases no more of its assets: a
/// store that cannot take the groups, a source that keeps cutting them.
const MAX_FAILED_LEASES: u64 = 4;

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

    /// Where the delivery of the lease of `hash` beginning at `first`
    /// reports how far it has come ([`Lease::arrival`]).
    pub fn lease_arrival(&self, hash: &AssetHash, first: u64) -> Option<Arrival> {
        let held = self.held.lock().expect("claimed lock");
        held.leases
            .get(&(*hash, first))
            .map(|(lease, _)| lease.arrival())
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

    /// The assets whose claims this delivery still holds: asked for, and
    /// neither stored nor rejected here. At the end of a session, those
    /// its source never sent.
    pub fn unsettled(&self) -> Vec<AssetHash> {
        let held = self.held.lock().expect("claimed lock");
        let mut hashes: Vec<AssetHash> = held.claims.keys().copied().collect();
        hashes.sort_unstable();
        hashes
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
