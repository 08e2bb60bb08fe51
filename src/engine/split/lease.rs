//! What a session holds of a split: a [`Lease`] of a run of groups, given
//! back when dropped undelivered, and the [`Arrival`] its delivery reports
//! to as the groups come.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::Splits;
use crate::asset::AssetHash;

/// How many of a lease's first groups its delivery has handed the store,
/// in order, so far: kept by the receiver as the groups come, read by a
/// session that takes the lease again (which asks only for the rest).
///
/// Handed is not yet written: should the store fail them, the lease's end
/// gives back all its delivery did not write ([`Lease::written`]) that its
/// twin does not carry.
#[derive(Debug, Clone, Default)]
pub struct Arrival(Arc<AtomicU64>);

impl Arrival {
    /// The delivery has handed the store the lease's first `groups` groups.
    pub fn handed(&self, groups: u64) {
        self.0.store(groups, Ordering::Relaxed);
    }

    /// The groups handed so far.
    pub(super) fn groups(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a session gets when it asks a split for work.
#[derive(Debug)]
pub enum Taken {
    /// A run of groups to ask for.
    Lease(Lease),
    /// Every group lacking is leased: wait for a lease to end.
    Busy,
    /// This session's source sent a bad range of it.
    Refused,
    /// It is not split (any more).
    Ended,
}

/// A run of groups of one asset a session asks its source for. Dropped
/// before it is [`delivered`](Self::delivered), its groups go back to be
/// leased again.
#[derive(Debug)]
pub struct Lease {
    splits: Arc<Splits>,
    hash: AssetHash,
    id: u64,
    groups: Range<u64>,
    delivered: bool,
    /// Its first groups the store took before its delivery was cut: not
    /// given back with the rest.
    written: u64,
    arrival: Arrival,
}

impl Lease {
    /// Lease `id` of `groups` of `hash`, out of `splits`, its delivery
    /// reporting to `arrival`.
    pub(super) fn new(
        splits: Arc<Splits>,
        hash: AssetHash,
        id: u64,
        groups: Range<u64>,
        arrival: Arrival,
    ) -> Self {
        Self {
            splits,
            hash,
            id,
            groups,
            delivered: false,
            written: 0,
            arrival,
        }
    }

    /// The asset.
    pub fn hash(&self) -> AssetHash {
        self.hash
    }

    /// Its groups.
    pub fn groups(&self) -> Range<u64> {
        self.groups.clone()
    }

    /// Where its delivery reports how far it has come.
    pub fn arrival(&self) -> Arrival {
        self.arrival.clone()
    }

    /// Every group arrived and was written: they are not leased again.
    pub fn delivered(mut self) {
        self.delivered = true;
    }

    /// Its first `groups` groups were written before its delivery was
    /// cut: dropped undelivered, it gives back only the rest.
    pub fn written(&mut self, groups: u64) {
        self.written = groups;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.splits
            .end_lease(&self.hash, self.id, self.delivered, self.written);
    }
}
