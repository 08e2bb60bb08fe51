//! What a store accepts and how it is sized: the limits a node sets
//! ([`StoreLimits`]), the packed threshold, and the database cache and
//! batch sizes of a bulk load.

use super::SEGMENT_BYTES;
use crate::asset::ClockBound;
#[cfg(doc)]
use crate::can::CanError;

/// Assets up to this size (the default of [`StoreLimits::packed_limit`])
/// keep their bytes in a pack segment, recorded in the transaction of their
/// record, instead of a file of their own: a file costs a create, two fsyncs
/// and a rename, a packed value a share of one fdatasync and one commit.
/// Measured in PERFORMANCE.md ("packed threshold", issue 22).
pub const INLINE_LIMIT: u64 = 256 * 1024;

/// The database's page cache (the default of
/// [`StoreLimits::database_cache`]). redb's default (1 GiB) would let a
/// node's memory grow with its archive as sessions read it; this keeps a
/// node of millions of assets within its memory bound (PERFORMANCE.md,
/// "scale on disk") while holding the pages hot paths touch.
pub const DATABASE_CACHE: usize = 64 * 1024 * 1024;

/// The most database cache a bulk load takes ([`load_cache`]).
///
/// A load of tiny assets rewrites a B-tree page of the asset table per
/// record it adds (keys are hashes, so each lands on a leaf of its own);
/// once the database outgrows the cache, that page is first read back from
/// the file (with 1 GiB, from about 5M tiny assets on). redb fills its
/// cache only with pages it reads or writes, so a store takes only what its
/// pages need: a load of 10M tiny assets peaked under 3 GiB of RSS with
/// this bound (its database file: 3.6 GB). Measured in PERFORMANCE.md
/// ("Loading", issue 22).
pub const LOAD_CACHE: usize = 4 << 30;

/// The database cache of a store opened for a bulk load (`can-sync add`,
/// the harness's loaders): a quarter of the machine's memory, at least 1 GiB
/// and at most [`LOAD_CACHE`]. 1 GiB where the machine's memory is not
/// known (`/proc/meminfo`).
pub fn load_cache() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
            let kib: usize = line.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib.saturating_mul(1024))
        })
        .unwrap_or(0);
    (total / 4).clamp(1 << 30, LOAD_CACHE)
}

/// The fewest records a bulk loader commits at once ([`load_batch`]).
pub const LOAD_BATCH_MIN: usize = 8192;

/// How many tiny assets a bulk loader pushes in one batch (one commit) into
/// a store that holds `held` assets and has a database cache of
/// `database_cache` bytes: a 128th of what it holds, at least
/// [`LOAD_BATCH_MIN`], at most what the cache holds dirty.
///
/// A commit rewrites each B-tree page its records land on. Keys are
/// hashes, so a batch much smaller than the asset table's leaves lands on a
/// leaf per record, and, as the table grows, on a branch page of its own
/// for more and more of its records too (by our estimate, a branch page
/// above some 50 leaves: in a table of 10M, a batch of 8,192 rewrites about
/// 5,000 of its 7,000). A batch that grows with the table rewrites each
/// branch page it touches for about ten of its records, and the same share
/// of leaves, whatever the size of the store, so the pages written per
/// record stay the same as the load goes on. The CPU a record costs still
/// grows as the tree outgrows the CPU's caches: a tenth million of tiny
/// assets costs about 1.4 times the first (PERFORMANCE.md, "Item 5 on a
/// quiet machine").
/// Its pages must fit the tenth of the cache redb keeps for a
/// transaction's dirty pages (with a quarter to spare for the branches and
/// the other tables), or redb writes them out in the middle of the
/// transaction and reads them back to commit.
///
/// Only what the loader has not yet been answered for is batched: each
/// batch is committed durably before its answers come back, as any push.
///
/// All of that is the cost of keys in random order. A loader that can,
/// pushes by hash, the table's key order (`can-sync add` sorts runs of
/// small files, the harness's loaders sort what they make): each batch
/// then extends the leaves the one before it wrote, and a tenth million
/// costs what the first did (`fill_store` loads 10M in 95 s by hash, 250 s
/// in random order: PERFORMANCE.md, "Loading in key order").
pub fn load_batch(held: u64, database_cache: usize) -> usize {
    let fits = database_cache / 10 / (4096 + 1024);
    let grown = usize::try_from(held / 128).unwrap_or(usize::MAX);
    grown.min(fits).max(LOAD_BATCH_MIN)
}

/// What a store accepts: the size of an asset, how far ahead of its clock
/// a metadata stamp may be, how many bytes of unfinished transfers it holds.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// The largest asset accepted, in bytes.
    pub max_asset_bytes: u64,
    /// How far ahead of this store's clock a metadata stamp may be; an
    /// update stamped further is refused ([`crate::asset::stamp`]).
    pub clock: ClockBound,
    /// The most bytes of streamed blobs not yet whole, across every
    /// transfer in flight (`write_blob`), in bytes. A peer may declare an
    /// asset of up to `max_asset_bytes`, stream part of it, reset and
    /// start again, many times at once: the temporary file of each cut
    /// transfer is removed, and this bounds what the ones in flight hold.
    /// The chunk that would cross it fails its transfer with
    /// [`CanError::Unavailable`] naming the quota (worth a retry: the asset
    /// is acceptable, the store is busy).
    ///
    /// The default equals the default `max_asset_bytes` (64 GiB): a store
    /// that accepts an asset of that size must have room for one anyway, so
    /// this adds no disk that a single legitimate transfer would not take,
    /// while concurrent transfers can no longer multiply it. Set below
    /// `max_asset_bytes`, the largest assets can never arrive.
    ///
    /// The groups held by partial assets kept for resuming (`resume/`)
    /// count here too; a transfer short of room first drops idle partial
    /// assets, least recently written first.
    pub max_partial_bytes: u64,
    /// How long a partial asset nobody writes to is kept for a transfer to
    /// resume it, before it is dropped.
    pub partial_expiry: std::time::Duration,
    /// Assets up to this size are packed into segments, larger ones are
    /// files of their own ([`INLINE_LIMIT`] by default). Only where new
    /// assets go: a store reads what it holds wherever it is.
    pub packed_limit: u64,
    /// The size a pack segment is sealed at ([`SEGMENT_BYTES`] by default).
    pub segment_bytes: u64,
    /// Bytes of the database's page cache ([`DATABASE_CACHE`] by default;
    /// [`load_cache`] for a bulk load). Memory, not disk: the cache fills
    /// as pages are read and written, up to this bound.
    pub database_cache: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_asset_bytes: 64 * 1024 * 1024 * 1024,
            clock: ClockBound::default(),
            max_partial_bytes: 64 * 1024 * 1024 * 1024,
            partial_expiry: DEFAULT_PARTIAL_EXPIRY,
            packed_limit: INLINE_LIMIT,
            segment_bytes: SEGMENT_BYTES,
            database_cache: DATABASE_CACHE,
        }
    }
}

/// How long an idle partial asset is kept by default: a week, long enough
/// for a peer that went away over a weekend.
pub const DEFAULT_PARTIAL_EXPIRY: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);
