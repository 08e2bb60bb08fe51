//! The folder syncs that stored blobs owe before the commit that lists them
//! (see [`blobs`](super::blobs)): which shard folders a batch entered, and
//! which shard folders this process already knows to be durable in `blobs/`,
//! so that each folder is synced once per batch and `blobs/` only when a
//! shard's own entry may not be durable yet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

use super::fs::SyncPoint;

/// The folder syncs stored blobs owe before a record may list them, merged
/// over a batch so that each folder is synced once.
#[derive(Debug, Default)]
pub(super) struct FolderSyncs {
    /// Shards whose own entry in `blobs/` this process has not synced: one
    /// sync of `blobs/` covers them all.
    pub(super) new_shards: BTreeSet<u8>,
    /// Shard folders that blobs entered, each with the point its sync is
    /// made at.
    pub(super) shards: BTreeMap<u8, SyncPoint>,
}

impl FolderSyncs {
    /// Owes a sync of shard `index` at `point`, and of `blobs/` when the
    /// shard is not known durable.
    pub(super) fn shard(&mut self, index: u8, point: SyncPoint, durable: &DurableShards) {
        if !durable.is_marked(index) {
            self.new_shards.insert(index);
        }
        self.shards.entry(index).or_insert(point);
    }

    /// Adds what `other` owes.
    pub(super) fn merge(&mut self, other: Self) {
        self.new_shards.extend(other.new_shards);
        for (index, point) in other.shards {
            self.shards.entry(index).or_insert(point);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.new_shards.is_empty() && self.shards.is_empty()
    }
}

/// The shard folders (by the first byte of their blobs' hashes) whose entry
/// in `blobs/` this process knows to be durable: it synced `blobs/` after
/// seeing them there.
pub(super) struct DurableShards([AtomicBool; 256]);

impl Default for DurableShards {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicBool::new(false)))
    }
}

impl DurableShards {
    pub(super) fn is_marked(&self, shard: u8) -> bool {
        self.0[usize::from(shard)].load(Ordering::Acquire)
    }

    pub(super) fn mark(&self, shard: u8) {
        self.0[usize::from(shard)].store(true, Ordering::Release);
    }

    pub(super) fn unmark(&self, shard: u8) {
        self.0[usize::from(shard)].store(false, Ordering::Release);
    }
}
