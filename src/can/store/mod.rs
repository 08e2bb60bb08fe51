//! The embedded store: the storage of the reference server, and the default CAN
//! of a node that runs as one process.
//!
//! Layout on disk (`--dir DIR`):
//! - `DIR/meta.redb` — the redb database: metadata, change-time index, change
//!   log, counters, and where each small asset's bytes are;
//! - `DIR/packs/0000000000000001…` — pack segments: the bytes of small
//!   assets (up to [`INLINE_LIMIT`]) appended one after the other, each
//!   segment sealed at [`SEGMENT_BYTES`] (see `segments/`);
//! - `DIR/blobs/ab/abcdef…` — one file per larger asset, named by its hash,
//!   sharded by the first byte;
//! - `DIR/tmp/` — blobs being written; each file removed as soon as its
//!   write fails or is dropped, and the folder emptied at open (what a crash
//!   left);
//! - `DIR/partial/` — large assets received in part by verified ranges, kept
//!   for a later transfer to complete (`resume/`); never listed;
//! - `DIR/outboards/ab/abcdef…` — the outboards of large blobs, a cache
//!   checked against the hash whenever it is read (`ranges.rs`).
//!
//! A store of schema 3 kept small assets' bytes as rows of the database;
//! it opens as it is, its rows read where they are, and new small assets
//! go to segments.
//!
//! Durability: an acknowledged write survives a power cut, not only a
//! killed process (whose writes the page cache keeps, synced or not). What
//! is synced, and when:
//! - at open: any folder made for the store, in its parent; the store
//!   folder (`meta.redb`, `blobs/`, `packs/`, `tmp/`). A new `meta.redb` is
//!   made whole under another name and renamed into place: redb sizes a new
//!   file and syncs it before it writes its magic number, and refuses a file
//!   cut in between. A `meta.redb` missing or empty beside pack segments or
//!   blob files was lost behind the store's back: opening refuses to make a
//!   new one (which would cut the segments back to the nothing it records)
//!   and names what the folder holds; a database redb panics on is named
//!   damaged;
//! - small assets' bytes are appended to the open pack segment by the
//!   writer, which fdatasyncs the segment (and `packs/` when it made the
//!   segment's file) before the commit that records where they are and the
//!   segment's new end; so a batch of them costs one fdatasync beside one
//!   durable commit (redb syncs each commit). Opening cuts the open segment
//!   back to its recorded end: bytes past it belong to no commit;
//! - a larger blob is written to `tmp/`, fsynced and renamed to its final
//!   name; then, before the transaction that makes the asset visible
//!   commits, its shard folder is fsynced, and `blobs/` when this process
//!   has not synced it since that shard folder appeared (for the shard's
//!   own entry). A batch syncs each of those folders once. A blob found
//!   already in place (renamed by a push still in flight, or by one cut
//!   before its folders' syncs) owes the same syncs;
//! - redb's file: each commit's fdatasync, and each growth of the file
//!   synced as it happens (`fs.rs` says why).
//!
//! So an acknowledged push survives a power cut, and a cut never leaves a
//! half-written asset under a hash. A crash between rename and commit leaves
//! a whole, correct but unlisted blob, which the next push of that asset
//! adopts: `push` finds the bytes in place and only commits the record,
//! `write_blob` replaces them with the same bytes.
//!
//! Each of those syncs is named (`fs::SyncPoint`), and the power-cut test
//! (`power.rs`) shows each one needed: it runs a concurrent push workload on
//! a simulated disk that loses what was not synced (`simfs.rs`), cuts the
//! power after many of its operations, keeping any subset of the unsynced
//! ones, and checks the reopened store. It passes as the code is, and fails
//! with any one sync removed.
//!
//! With object storage (`--blobs s3://BUCKET/PREFIX`,
//! [`EmbeddedCan::open_with_objects`]), larger blobs are objects, not
//! files, and sealed segments move to the bucket (see `objects/`); the
//! database, the open segment and partial assets stay in `DIR`.
//!
//! `--memory` keeps blobs in a map and the database on redb's in-memory backend:
//! the same code path, no durability, for tests and load tests.
//!
//! Every database write goes through one writer thread that commits the
//! writes queued together in one transaction (group commit, see `writer/`):
//! a push is acknowledged only once the transaction holding it committed, and
//! concurrent pushes share one durable commit instead of queueing for one each.
//!
//! # Layout
//!
//! - `mod.rs`: [`EmbeddedCan`], its parts, and the checks and writes its
//!   operations share;
//! - `open.rs`: opening a store on disk, with object storage, in memory, or
//!   on the simulated disk, and what is synced before it answers;
//! - `operations.rs`: its [`Can`](crate::can::Can) operations, each a read
//!   of the database, a blob transfer, or a write queued to the writer;
//! - `limits.rs`: [`StoreLimits`], the packed threshold, and the cache and
//!   batch sizes of a bulk load;
//! - `schema.rs`: the redb tables, the record formats, and the reads;
//!   `window.rs`: the bounded windows the asset table is listed in;
//! - `writer/`: the one thread that writes the database, by group commit
//!   (`group.rs`: one group's transaction, forgetting included;
//!   `guess.rs`: how a bulk load's groups skip the lookups of new assets);
//! - `segments/`: the pack segments small assets' bytes are appended to
//!   (`writer.rs`) and read from by location (`reader.rs`);
//! - `blobs/`: where larger blobs' bytes live, on disk, in memory, or
//!   in object storage (`write_behind.rs`: one streamed blob written,
//!   hashed and written back as it comes);
//! - `objects/`: object storage (`--blobs s3://BUCKET/PREFIX`): blobs
//!   and sealed segments as objects, streamed uploads, ranged reads,
//!   retries and their counters;
//! - `offload.rs`: the task that uploads sealed pack segments and removes
//!   their local files;
//! - `fs.rs`: every file operation the store makes (`std::fs` in
//!   production), each sync named by its point, and redb's file backend;
//! - `partial.rs`: blobs still being written: the guard that removes a
//!   temporary file, and the quota on their bytes;
//! - `ranges.rs`: verified ranges, without IO: outboards, the check of one
//!   group, the set of groups a partial asset holds;
//! - `resume/`: partial large assets kept across restarts (`writing.rs`: one
//!   transfer writing groups), and the outboard cache (`outboards.rs`);
//! - `coded.rs`: the coded cells of the store's summaries, kept current for
//!   rateless reconciliation;
//! - `subscription.rs`: the change stream, replayed from the log then live;
//! - `simfs.rs` (tests): a simulated disk that loses, at a power cut, what
//!   was not synced;
//! - `power.rs` (tests): the power-cut test of the store on that disk;
//! - `tests.rs`: the store's operations on each backend.

use std::sync::Arc;

use bytes::Bytes;
use redb::Database;
use tokio::sync::broadcast;

use super::{ByteStream, CanError, ChangeEvent, Pushed};
use crate::asset::{
    check_stamp, meta_text_bytes, AssetHash, Bundle, VerifiedBundle, MAX_META_BYTES,
};
use crate::clock::now_ms;
use crate::pb;
use assembly::Assemblies;
use blobs::Blobs;
use coded::CodedSet;
pub use coded::KEPT_CELLS;
use folders::FolderSyncs;
use fs::StoreFs;
use objects::{ObjectStats, Objects};
use partial::PartialQuota;
use ranges::Outboard;
use resume::Partials;
pub use resume::{PartialAsset, PartialStats};
use schema::Place;
use segments::SegmentReader;
pub use segments::{Unrecorded, SEGMENT_BYTES};
use writer::{Write, Writer};

mod assembly;
mod blobs;
mod coded;
#[cfg(test)]
mod fixtures;
mod folders;
mod fs;
mod limits;
pub mod objects;
mod offload;
mod open;
mod operations;
mod overlay;
mod partial;
#[cfg(test)]
mod power;
pub mod ranges;
mod resume;
mod schema;
mod segments;
#[cfg(test)]
mod simfs;
mod subscription;
#[cfg(test)]
mod tests;
mod window;
mod writer;

pub use limits::{
    load_batch, load_cache, StoreLimits, DATABASE_CACHE, DEFAULT_PARTIAL_EXPIRY, INLINE_LIMIT,
    LOAD_BATCH_MIN, LOAD_CACHE,
};

/// The embedded store. Cheap to share behind an [`Arc`].
pub struct EmbeddedCan {
    /// Read transactions run here directly; writes go through `writer`.
    db: Arc<Database>,
    /// The bytes of every asset above the packed limit; written before the
    /// database lists them.
    blobs: Blobs,
    /// The pack segments small assets' bytes are read from; `None` in
    /// memory.
    segments: Option<Arc<SegmentReader>>,
    /// Live change events, sent by the writer after each commit.
    events: broadcast::Sender<ChangeEvent>,
    /// The queue to the one thread that writes the database.
    writer: Writer,
    /// The largest asset accepted; nothing of a larger one is kept.
    limits: StoreLimits,
    /// The bytes of streamed blobs in flight and of partial assets, within
    /// [`StoreLimits::max_partial_bytes`].
    partial: PartialQuota,
    /// Partial large assets kept for resuming, and outboards: on a disk
    /// store (`None` in memory, and on the simulated disk of the power-cut
    /// tests, which model acknowledged writes only).
    partials: Option<Arc<Partials>>,
    /// Deliveries writing partial assets, met by asset.
    assemblies: Arc<Assemblies>,
    /// This store's identity, as its change pages carry it.
    store_id: u64,
    /// The coded cells of its summaries, for rateless reconciliation.
    coded: CodedSet,
    /// Assets up to this size are packed into segments:
    /// [`StoreLimits::packed_limit`] on disk, none in memory (see
    /// [`EmbeddedCan::memory`]).
    inline_limit: u64,
    /// The bucket large blobs and sealed segments live in, when the store
    /// keeps them in object storage.
    objects: Option<Arc<Objects>>,
    /// Uploads sealed segments to `objects`; stops when the store drops.
    _offload: Option<offload::Offload>,
    /// The file system and `packs/` of a disk store, for uploading sealed
    /// segments on demand.
    fs: Option<Arc<dyn StoreFs>>,
    packs_dir: Option<std::path::PathBuf>,
}

/// A write's answer as a push's.
fn pushed(hash: AssetHash, answer: writer::Answer) -> Result<Pushed, CanError> {
    let written = answer?;
    Ok(Pushed {
        hash,
        already_existed: written.outcome,
        seq: written.seq,
    })
}

/// An asset's bytes as a pull finds them.
enum Unpacked {
    /// Read from a row or a segment.
    Bytes(Bytes),
    /// Its segment or the bytes in it are gone.
    Lost,
    /// In a blob file, read next.
    File,
}

/// The bytes of a packed value. Blocking.
fn read_packed(
    segments: &Option<Arc<SegmentReader>>,
    location: segments::Location,
) -> Result<Bytes, CanError> {
    let segments = segments
        .as_ref()
        .ok_or_else(|| CanError::Storage("a packed value in a store without segments".into()))?;
    Ok(segments.read(location)?)
}

/// What a pull gives for `place`, on the blocking thread: a row's bytes, a
/// packed value as `read` (by `SegmentReader::read_many`; `None` in a store
/// without segments); a file is read after. A packed value whose segment or
/// bytes are gone is lost, as a missing blob file is; other failures are
/// errors.
fn unpack(
    hash: &AssetHash,
    place: Place,
    read: Option<Result<Bytes, segments::SegmentError>>,
) -> Result<Unpacked, CanError> {
    Ok(match place {
        Place::Row(data) => Unpacked::Bytes(data),
        Place::File => Unpacked::File,
        Place::Packed(_) => match read {
            Some(Ok(data)) => Unpacked::Bytes(data),
            Some(Err(err)) if err.is_missing() => {
                tracing::warn!(%hash, error = %err, "a packed value is gone");
                Unpacked::Lost
            }
            Some(Err(err)) => return Err(err.into()),
            None => Unpacked::Lost,
        },
    })
}

/// Runs `work` that reads redb's file, its panic turned into what the
/// panic said. redb panics on some damage to its file (a page that does
/// not parse, a file shorter than its header says) where it could fail,
/// and releases its locks before it parses a page, so the database stays
/// usable for what does not pass through the damage.
fn without_panics<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|why| why.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default()
    })
}

/// Runs blocking database or file work off the async reactor.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CanError> + Send + 'static,
) -> Result<T, CanError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| CanError::Storage(format!("store task failed: {err}")))?
}

impl EmbeddedCan {
    /// Uploads the sealed pack segments still on disk to object storage now
    /// and removes them locally, as the background task does after commits;
    /// how many moved. Fails when one could not be moved (it stays on disk
    /// and is tried again). Nothing to do for a store without object
    /// storage.
    pub async fn upload_sealed(&self) -> Result<u64, CanError> {
        self.writer.check_open()?;
        let (Some(objects), Some(reader)) = (&self.objects, &self.segments) else {
            return Ok(0);
        };
        let dir = self
            .packs_dir
            .clone()
            .expect("a disk store has a packs folder");
        let segments = offload::Segments {
            db: Arc::downgrade(&self.db),
            fs: self.fs.clone().expect("a disk store has a file system"),
            dir,
            objects: objects.clone(),
            store_id: self.store_id,
            reader: reader.clone(),
        };
        let moved = segments.move_sealed().await;
        if moved.failed > 0 {
            return Err(CanError::Unavailable(format!(
                "{} sealed segments could not be uploaded; see the log",
                moved.failed
            )));
        }
        Ok(moved.uploaded)
    }

    /// Forgets an asset (`fsck --repair`): removes its blob file, if any,
    /// then its record, whole or damaged, and its entries in the indexes,
    /// so that a peer holding the asset sends it again. Its metadata goes
    /// with its record. False when the store does not hold it.
    pub async fn forget(&self, hash: AssetHash) -> Result<bool, CanError> {
        self.writer.check_open()?;
        self.blobs.remove(&hash).await?;
        match self.writer.write(Write::Forget(hash)).await {
            Ok(_) => Ok(true),
            Err(CanError::NotFound(_)) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// How object storage has been doing, for a store that keeps its
    /// bytes there.
    pub fn object_stats(&self) -> Option<ObjectStats> {
        self.objects.as_ref().map(|objects| objects.stats())
    }

    /// Makes an asset whose bytes are stored visible, or merges its metadata
    /// when it already was; returns once that is committed.
    async fn commit_asset(
        &self,
        hash: AssetHash,
        size: u64,
        meta: pb::AssetMeta,
    ) -> Result<Pushed, CanError> {
        let write = Write::Asset {
            hash,
            size,
            meta,
            inline: None,
        };
        pushed(hash, self.writer.write(write).await)
    }

    /// The database write that stores a verified asset: a small one carries
    /// its bytes; a larger one's are stored as a file first (unless a file
    /// from an earlier, uncommitted push is already whole in place), and the
    /// folder syncs that file owes come along, to make before the write is
    /// queued.
    async fn asset_write(&self, bundle: VerifiedBundle) -> Result<(Write, FolderSyncs), CanError> {
        let size = bundle.data().len() as u64;
        self.check_size(size)?;
        self.check_meta(
            meta_text_bytes(bundle.meta()),
            bundle.meta().meta_updated_at_ms,
        )?;
        let Bundle { hash, data, meta } = bundle.into_bundle();
        let (inline, owed) = if size <= self.inline_limit {
            (Some(data), FolderSyncs::default())
        } else {
            let owed = match self.blobs.adopt(&hash).await {
                Some(owed) => owed,
                None => self.blobs.store_verified(&hash, data).await?,
            };
            (None, owed)
        };
        let write = Write::Asset {
            hash,
            size,
            meta,
            inline,
        };
        Ok((write, owed))
    }

    /// [`Can::write_blob`], with the size the writer was told when it was
    /// (`declared`): in object storage the blob then streams up as one
    /// `PUT` (`objects/streamed.rs`).
    async fn write_stream(
        &self,
        hash: AssetHash,
        meta: pb::AssetMeta,
        declared: Option<u64>,
        body: ByteStream,
    ) -> Result<Pushed, CanError> {
        self.check_meta(meta_text_bytes(&meta), meta.meta_updated_at_ms)?;
        let (size, owed, outboard) = self
            .blobs
            .store_stream(
                hash,
                body,
                declared,
                self.limits.max_asset_bytes,
                &self.partial,
            )
            .await?;
        self.blobs.sync_folders(owed).await?;
        let pushed = self.commit_asset(hash, size, meta).await?;
        self.keep_outboard(outboard).await;
        if let Some(partials) = self.partials.clone() {
            // Stored whole another way: its partial asset is no use now.
            blocking(move || {
                partials.discard(&hash);
                Ok(())
            })
            .await?;
        }
        Ok(pushed)
    }

    /// Keeps the outboard of a blob just stored, where outboards are kept.
    async fn keep_outboard(&self, outboard: Outboard) {
        if let Some(partials) = self.partials.clone() {
            let _ = blocking(move || {
                partials.keep_outboard(&outboard);
                Ok(())
            })
            .await;
        }
    }

    /// Refuses metadata of more text than [`MAX_META_BYTES`], or stamped
    /// further ahead of this store's clock than [`StoreLimits::clock`]. The
    /// check runs before anything of the write is stored; the writer stamps
    /// its changes later, by a clock no earlier than this one. Every write
    /// of bytes makes it first, so it is also where a store opened only to
    /// be read refuses one, before a byte goes to a file or a bucket.
    fn check_meta(&self, size: u64, stamp_ms: i64) -> Result<(), CanError> {
        self.writer.check_open()?;
        if size > MAX_META_BYTES {
            return Err(CanError::MetaTooLarge {
                size,
                limit: MAX_META_BYTES,
            });
        }
        check_stamp(stamp_ms, now_ms(), self.limits.clock)?;
        Ok(())
    }

    fn check_size(&self, size: u64) -> Result<(), CanError> {
        if size > self.limits.max_asset_bytes {
            return Err(CanError::TooLarge {
                size,
                limit: self.limits.max_asset_bytes,
            });
        }
        Ok(())
    }
}
