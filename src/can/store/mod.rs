//! The embedded store: the storage of the reference server, and the default CAN
//! of a node that runs as one process.
//!
//! Layout on disk (`--dir DIR`):
//! - `DIR/meta.redb` — the redb database: metadata, change-time index, change
//!   log, counters, and where each small asset's bytes are;
//! - `DIR/packs/0000000000000001…` — pack segments: the bytes of small
//!   assets (up to [`INLINE_LIMIT`]) appended one after the other, each
//!   segment sealed at [`SEGMENT_BYTES`] (see `segments.rs`);
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
//!   cut in between;
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
//! writes queued together in one transaction (group commit, see `writer.rs`):
//! a push is acknowledged only once the transaction holding it committed, and
//! concurrent pushes share one durable commit instead of queueing for one each.
//!
//! # Layout
//!
//! - `mod.rs`: [`EmbeddedCan`], how it is opened, and its [`Can`] operations,
//!   each a read of the database, a blob transfer, or a write queued to the
//!   writer;
//! - `schema.rs`: the redb tables, the record formats, and the reads;
//! - `writer.rs`: the one thread that writes the database, by group commit;
//! - `segments.rs`: the pack segments small assets' bytes are appended to,
//!   and read from by location;
//! - `blobs.rs`: where larger blobs' bytes live, on disk, in memory, or
//!   in object storage;
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
//! - `power.rs` (tests): the power-cut test of the store on that disk.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream;
use futures::StreamExt;
use redb::Database;
use tokio::sync::broadcast;

use super::{
    write_ranges_whole, ByteStream, Can, CanError, Change, ChangeEvent, ChangePage, EventStream,
    GroupStream, Page, Pulled, Pushed, PushedBatch, RangesWritten, SinceCursor, StoreStats,
};
use crate::asset::{
    check_stamp, meta_text_bytes, AssetHash, Bundle, ClockBound, MetaEdit, MetaUpdate, Summary,
    VerifiedBundle, MAX_META_BYTES,
};
use crate::clock::now_ms;
use crate::pb;
use assembly::{Assemblies, FeederEnd};
use blobs::Blobs;
use coded::CodedSet;
pub use coded::KEPT_CELLS;
use folders::FolderSyncs;
use fs::{create_dir_all_durably, RealFs, StoreFs, SyncPoint};
use objects::{ObjectStats, Objects, ObjectsConfig};
use partial::PartialQuota;
use ranges::Outboard;
use resume::Partials;
pub use resume::{PartialAsset, PartialStats};
use schema::{db_err, Place};
pub use segments::SEGMENT_BYTES;
use segments::{create_packs_dir, SegmentReader, SegmentWriter};
use writer::{Write, Writer};

mod assembly;
mod blobs;
mod coded;
#[cfg(test)]
mod fixtures;
mod folders;
mod fs;
pub mod objects;
mod offload;
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
mod writer;

/// Assets up to this size (the default of [`StoreLimits::packed_limit`])
/// keep their bytes in a pack segment, recorded in the transaction of their
/// record, instead of a file of their own: a file costs a create, two fsyncs
/// and a rename, a packed value a share of one fdatasync and one commit.
/// Measured in PERFORMANCE.md ("packed threshold", issue 22).
pub const INLINE_LIMIT: u64 = 256 * 1024;

/// The database's file in the store folder.
const DATABASE_FILE: &str = "meta.redb";

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
/// record, and the CPU a record costs, stay the same as the load goes on.
/// Its pages must fit the tenth of the cache redb keeps for a
/// transaction's dirty pages (with a quarter to spare for the branches and
/// the other tables), or redb writes them out in the middle of the
/// transaction and reads them back to commit.
///
/// Only what the loader has not yet been answered for is batched: each
/// batch is committed durably before its answers come back, as any push.
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

/// Runs blocking database or file work off the async reactor.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CanError> + Send + 'static,
) -> Result<T, CanError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| CanError::Storage(format!("store task failed: {err}")))?
}

impl EmbeddedCan {
    /// Opens (or creates) a durable store in `dir`.
    pub fn open(dir: &Path, limits: StoreLimits) -> Result<Self, CanError> {
        let mut store = Self::open_on(Arc::new(RealFs), dir, limits)?;
        store.keep_partials(dir, limits)?;
        Ok(store)
    }

    /// Keeps partial large assets in `dir/partial`, under the quota, so
    /// that transfers resume (a disk store only).
    fn keep_partials(&mut self, dir: &Path, limits: StoreLimits) -> Result<(), CanError> {
        let partials = Arc::new(Partials::open(
            dir,
            self.partial.clone(),
            limits.partial_expiry,
        )?);
        partials.give_way_when_full();
        self.partials = Some(partials);
        Ok(())
    }

    /// Opens (or creates) a durable store in `dir` whose large blobs and
    /// sealed pack segments live in the bucket `objects` names
    /// (`objects/`); the index, the open segment and partial assets stay
    /// in `dir`. Needs the tokio runtime (it is called from within one).
    pub fn open_with_objects(
        dir: &Path,
        limits: StoreLimits,
        objects: &ObjectsConfig,
    ) -> Result<Self, CanError> {
        let objects = Objects::open(objects).map_err(CanError::from)?;
        let fs: Arc<dyn StoreFs> = Arc::new(RealFs);
        let mut store = Self::open_parts(fs.clone(), dir, limits, Some(objects.clone()))?;
        store.keep_partials(dir, limits)?;
        let runtime = tokio::runtime::Handle::current();
        if let Some(reader) = store.segments.clone() {
            let segments = offload::Segments {
                db: Arc::downgrade(&store.db),
                fs,
                dir: dir.join(segments::PACKS_DIR),
                objects,
                store_id: store.store_id,
                reader,
            };
            store._offload = Some(offload::Offload::start(
                segments,
                store.events.subscribe(),
                &runtime,
            ));
        }
        Ok(store)
    }

    /// Uploads the sealed pack segments still on disk to object storage now
    /// and removes them locally, as the background task does after commits;
    /// how many moved. Fails when one could not be moved (it stays on disk
    /// and is tried again). Nothing to do for a store without object
    /// storage.
    pub async fn upload_sealed(&self) -> Result<u64, CanError> {
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

    /// How object storage has been doing, for a store that keeps its
    /// bytes there.
    pub fn object_stats(&self) -> Option<ObjectStats> {
        self.objects.as_ref().map(|objects| objects.stats())
    }

    /// Opens (or creates) a durable store in `dir` of the file system `fs`:
    /// the disk, or in tests a simulated one that can lose power.
    ///
    /// Once this returns, the store's folders are durable: the store folder
    /// and any folder made for it are in their parents after a power cut,
    /// and so are `meta.redb`, `blobs/`, `packs/`, `tmp/` and the shard
    /// folders.
    fn open_on(fs: Arc<dyn StoreFs>, dir: &Path, limits: StoreLimits) -> Result<Self, CanError> {
        Self::open_parts(fs, dir, limits, None)
    }

    /// [`Self::open_on`], with large blobs and sealed segments in `objects`
    /// when given.
    fn open_parts(
        fs: Arc<dyn StoreFs>,
        dir: &Path,
        limits: StoreLimits,
        objects: Option<Arc<Objects>>,
    ) -> Result<Self, CanError> {
        create_dir_all_durably(&*fs, dir)?;
        let mut builder = Database::builder();
        builder.set_cache_size(limits.database_cache);
        let open_db = |path: &Path| {
            fs.database(path, &builder).map_err(|err| match err {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    CanError::InUse(dir.display().to_string())
                }
                other => db_err(other),
            })
        };
        let path = dir.join(DATABASE_FILE);
        if !fs.exists(&path)? {
            // redb sizes a new file, syncs it, and only then writes its
            // magic number: a power cut in between leaves a file it refuses
            // to open. So a new database is made whole under another name
            // and renamed into place (synced with the folder below).
            let fresh = dir.join(format!("{DATABASE_FILE}.new"));
            match fs.remove_file(&fresh) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err.into()),
                _ => {}
            }
            drop(open_db(&fresh)?);
            fs.rename(&fresh, &path)?;
        }
        // The database before the blobs: its lock says whether another
        // process holds the store, before anything else in the folder is
        // touched.
        let db = open_db(&path)?;
        let blobs = match &objects {
            Some(objects) => Blobs::Object {
                objects: objects.clone(),
                fs: fs.clone(),
            },
            None => Blobs::open(fs.clone(), dir)?,
        };
        let packs = create_packs_dir(&*fs, dir)?;
        fs.sync_dir(dir, SyncPoint::StoreFolder)?;
        Self::with_parts_in(db, blobs, Some((fs, packs)), limits, true, objects)
    }

    /// A store that keeps everything in memory. Its blobs stay in a map,
    /// small ones too: rows spare a disk store its fsyncs, but redb's
    /// in-memory backend grows its one buffer by reallocating and zeroing
    /// it, which cost the receiving CAN of the harness's `small` scenario
    /// half its writer's time when small blobs were rows (PERFORMANCE.md).
    pub fn memory(limits: StoreLimits) -> Result<Self, CanError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(db_err)?;
        Self::with_parts(db, Blobs::memory(), None, limits, false)
    }

    /// A store of these parts; a `durable` one packs small blobs into the
    /// segments of `packs` (the file system and the folder) and saves its
    /// coded cells when it closes.
    fn with_parts(
        db: Database,
        blobs: Blobs,
        packs: Option<(Arc<dyn StoreFs>, std::path::PathBuf)>,
        limits: StoreLimits,
        durable: bool,
    ) -> Result<Self, CanError> {
        Self::with_parts_in(db, blobs, packs, limits, durable, None)
    }

    /// [`Self::with_parts`], its large blobs and sealed segments in
    /// `objects` when given.
    fn with_parts_in(
        db: Database,
        blobs: Blobs,
        packs: Option<(Arc<dyn StoreFs>, std::path::PathBuf)>,
        limits: StoreLimits,
        durable: bool,
        objects: Option<Arc<Objects>>,
    ) -> Result<Self, CanError> {
        let store_id = schema::create_tables(&db)?;
        let (fs, packs_dir) = match &packs {
            Some((fs, dir)) => (Some(fs.clone()), Some(dir.clone())),
            None => (None, None),
        };
        let (segment_writer, segments) = match packs {
            Some((fs, dir)) => {
                let committed = schema::read_open_segment(&db)?;
                let writer =
                    SegmentWriter::open(fs.clone(), dir.clone(), committed, limits.segment_bytes)?;
                let mut reader = SegmentReader::new(fs, dir);
                if let Some(objects) = &objects {
                    reader = reader.with_remote(segments::RemoteSegments {
                        objects: objects.clone(),
                        store_id,
                        runtime: tokio::runtime::Handle::current(),
                    });
                }
                (Some(writer), Some(Arc::new(reader)))
            }
            None => (None, None),
        };
        let started = std::time::Instant::now();
        let (coded, origin) = CodedSet::open(&db)?;
        tracing::debug!(?origin, took = ?started.elapsed(), "coded cells ready");
        let db = Arc::new(db);
        let (events, _) = broadcast::channel(subscription::EVENT_BUFFER);
        let writer = Writer::start(
            db.clone(),
            segment_writer,
            events.clone(),
            coded.clone(),
            durable,
        )?;
        let inline_limit = if durable { limits.packed_limit } else { 0 };
        Ok(Self {
            db,
            blobs,
            segments,
            events,
            writer,
            limits,
            partial: PartialQuota::new(limits.max_partial_bytes),
            partials: None,
            assemblies: Arc::default(),
            store_id,
            coded,
            inline_limit,
            objects,
            _offload: None,
            fs,
            packs_dir,
        })
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
    /// its changes later, by a clock no earlier than this one.
    fn check_meta(&self, size: u64, stamp_ms: i64) -> Result<(), CanError> {
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

#[async_trait]
impl Can for EmbeddedCan {
    async fn list_page(
        &self,
        after: Option<AssetHash>,
        limit: usize,
    ) -> Result<Page<Summary, AssetHash>, CanError> {
        let db = self.db.clone();
        blocking(move || schema::read_page_by_hash(&db, after, limit)).await
    }

    async fn list_since(
        &self,
        since: i64,
        after: Option<SinceCursor>,
        limit: usize,
    ) -> Result<Page<Summary, SinceCursor>, CanError> {
        let db = self.db.clone();
        blocking(move || schema::read_page_since(&db, since, after, limit)).await
    }

    async fn changes(&self, after: u64, limit: usize) -> Result<ChangePage, CanError> {
        let db = self.db.clone();
        let changes = blocking(move || schema::read_changes_after(&db, after, limit)).await?;
        let next_after = changes.last().map_or(after, |(change, _)| change.seq);
        Ok(ChangePage {
            changes: changes
                .into_iter()
                .map(|(change, summary)| Change {
                    seq: change.seq,
                    kind: change.kind,
                    summary,
                })
                .collect(),
            next_after,
            store_id: self.store_id,
        })
    }

    async fn pull(&self, hashes: &[AssetHash]) -> Result<Pulled, CanError> {
        let db = self.db.clone();
        let asked = hashes.to_vec();
        let segments = self.segments.clone();
        let found = blocking(move || {
            let found = schema::read_many(&db, &asked)?;
            // The packed values are read together: in object storage, their
            // ranged `GET`s run at once (`SegmentReader::read_many`).
            let packed: Vec<segments::Location> = found
                .iter()
                .filter_map(|found| match found {
                    Some((_, Place::Packed(location))) => Some(*location),
                    _ => None,
                })
                .collect();
            let mut packed = match &segments {
                Some(segments) if !packed.is_empty() => segments.read_many(&packed),
                _ => Vec::new(),
            }
            .into_iter();
            found
                .into_iter()
                .zip(&asked)
                .map(|(found, hash)| {
                    found
                        .map(|(record, place)| {
                            let read = match place {
                                Place::Packed(_) => packed.next(),
                                _ => None,
                            };
                            Ok((record, unpack(hash, place, read)?))
                        })
                        .transpose()
                })
                .collect::<Result<Vec<_>, CanError>>()
        })
        .await?;
        let mut pulled = Pulled::default();
        for (hash, found) in hashes.iter().zip(found) {
            let Some((record, place)) = found else {
                pulled.missing.push(*hash);
                continue;
            };
            let data = match place {
                Unpacked::Bytes(data) => data,
                // Damage fsck names; the other assets of the pull go on.
                Unpacked::Lost => {
                    pulled.missing.push(*hash);
                    continue;
                }
                Unpacked::File => match self.blobs.read_all(hash).await {
                    Ok(data) => data,
                    Err(CanError::NotFound(_)) => {
                        pulled.missing.push(*hash);
                        continue;
                    }
                    Err(err) => return Err(err),
                },
            };
            pulled.bundles.push(Bundle {
                hash: *hash,
                data,
                meta: record.meta,
            });
        }
        Ok(pulled)
    }

    async fn push(&self, bundle: Bundle) -> Result<Pushed, CanError> {
        self.check_size(bundle.data.len() as u64)?;
        self.check_meta(
            meta_text_bytes(&bundle.meta),
            bundle.meta.meta_updated_at_ms,
        )?;
        let verified = blocking(move || Ok(bundle.verify()?)).await?;
        let (write, owed) = self.asset_write(verified).await?;
        self.blobs.sync_folders(owed).await?;
        pushed(write.hash(), self.writer.write(write).await)
    }

    /// One transaction for the whole batch: its small assets' bytes, every
    /// record and the log entries commit together, durably, once; before it,
    /// each folder its files entered is synced once. No hash is computed
    /// again: the bundles were verified by whoever made them.
    async fn push_batch(&self, bundles: Vec<VerifiedBundle>) -> Result<PushedBatch, CanError> {
        let mut answers: Vec<Option<Result<Pushed, CanError>>> = Vec::with_capacity(bundles.len());
        let mut writes = Vec::with_capacity(bundles.len());
        let mut owed = FolderSyncs::default();
        for bundle in bundles {
            match self.asset_write(bundle).await {
                Ok((write, owes)) => {
                    answers.push(None);
                    writes.push(write);
                    owed.merge(owes);
                }
                Err(err) => answers.push(Some(Err(err))),
            }
        }
        self.blobs.sync_folders(owed).await?;
        let hashes: Vec<AssetHash> = writes.iter().map(Write::hash).collect();
        let mut written = if writes.is_empty() {
            Vec::new().into_iter()
        } else {
            self.writer.write_all(writes).await?.into_iter()
        };
        let mut hashes = hashes.into_iter();
        Ok(answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    let hash = hashes.next().expect("a hash per write");
                    pushed(hash, written.next().expect("an answer per write"))
                })
            })
            .collect())
    }

    async fn apply_meta(&self, update: MetaUpdate) -> Result<bool, CanError> {
        self.check_meta(update.text_bytes(), update.meta_updated_at_ms)?;
        Ok(self.writer.write(Write::Meta(update)).await?.outcome)
    }

    /// In one step of the writer: read, stamp, replace (the writer's `Write::Edit`).
    async fn edit_meta(&self, edit: MetaEdit) -> Result<pb::AssetMeta, CanError> {
        let hash = edit.hash;
        let write = Write::Edit {
            edit,
            clock: self.limits.clock,
        };
        self.writer.write(write).await?;
        let (_, meta) = self.meta(hash).await?.ok_or(CanError::NotFound(hash))?;
        Ok(meta)
    }

    async fn meta(&self, hash: AssetHash) -> Result<Option<(u64, pb::AssetMeta)>, CanError> {
        let db = self.db.clone();
        let record = blocking(move || schema::read_record(&db, &hash)).await?;
        Ok(record.map(|r| (r.size, r.meta)))
    }

    async fn stats(&self) -> Result<StoreStats, CanError> {
        let db = self.db.clone();
        blocking(move || schema::read_stats(&db)).await
    }

    async fn coded_cells(
        &self,
        start: usize,
        count: usize,
    ) -> Result<Option<Vec<crate::recon::riblt::Cell>>, CanError> {
        Ok(Some(self.coded.cells(start..start.saturating_add(count))))
    }

    async fn coded_probe(&self) -> Result<Option<crate::recon::riblt::estimate::Probe>, CanError> {
        Ok(Some(self.coded.probe()))
    }

    async fn subscribe(&self, after_seq: Option<u64>) -> Result<EventStream, CanError> {
        // Subscribe before reading the log, so nothing committed in between is
        // lost; duplicates are dropped by sequence number.
        let live = self.events.subscribe();
        subscription::follow(self.db.clone(), live, after_seq).await
    }

    async fn read_blob(&self, hash: AssetHash, offset: u64) -> Result<(u64, ByteStream), CanError> {
        let db = self.db.clone();
        let segments = self.segments.clone();
        let Some((record, data)) = blocking(move || {
            let Some((record, place)) = schema::read_record_and_inline(&db, &hash)? else {
                return Ok(None);
            };
            let data = match place {
                Place::Row(data) => Some(data),
                Place::Packed(location) => Some(read_packed(&segments, location)?),
                Place::File => None,
            };
            Ok(Some((record, data)))
        })
        .await?
        else {
            return Err(CanError::NotFound(hash));
        };
        let offset = offset.min(record.size);
        let body = match data {
            Some(data) => {
                let start = (offset as usize).min(data.len());
                let rest: Result<Bytes, CanError> = Ok(data.slice(start..));
                stream::iter([rest]).boxed()
            }
            None => self.blobs.read_from(&hash, offset, record.size).await?,
        };
        Ok((record.size, body))
    }

    async fn write_blob(
        &self,
        hash: AssetHash,
        meta: pb::AssetMeta,
        body: ByteStream,
    ) -> Result<Pushed, CanError> {
        self.write_stream(hash, meta, None, body).await
    }

    async fn write_blob_of_size(
        &self,
        hash: AssetHash,
        meta: pb::AssetMeta,
        size: u64,
        body: ByteStream,
    ) -> Result<Pushed, CanError> {
        self.write_stream(hash, meta, Some(size), body).await
    }

    async fn outboard(&self, hash: AssetHash) -> Result<Option<Outboard>, CanError> {
        // In memory, reading an asset through costs no disk.
        let Some(partials) = self.partials.clone() else {
            return super::outboard_by_reading(self, hash).await;
        };
        let Some((size, _)) = self.meta(hash).await? else {
            return Ok(None);
        };
        if ranges::group_count(size) == 1 {
            // One group is checked against the hash itself.
            return Ok(Some(Outboard::new(hash, size, Vec::new())?));
        }
        let kept = {
            let partials = partials.clone();
            blocking(move || Ok(partials.kept_outboard(&hash, size))).await?
        };
        if kept.is_none() {
            // A blob stored before outboards were kept: reading it through
            // now would hold up the send (a peer waiting on silence gives
            // up), so it goes whole this time and by ranges the next.
            partials.compute_later(hash);
        }
        Ok(kept)
    }

    fn keeps_partials(&self) -> bool {
        self.partials.is_some()
    }

    fn uploads_in_order(&self) -> bool {
        self.blobs.are_objects()
    }

    async fn keeps_outboards(&self) -> bool {
        // Kept beside the blobs on disk; read from memory in memory.
        true
    }

    async fn resume_points(
        &self,
        hashes: &[AssetHash],
    ) -> Result<Vec<(AssetHash, Vec<std::ops::Range<u64>>)>, CanError> {
        let Some(partials) = self.partials.clone() else {
            return Ok(Vec::new());
        };
        let hashes = hashes.to_vec();
        blocking(move || {
            Ok(hashes
                .into_iter()
                .filter_map(|hash| Some((hash, partials.missing(&hash)?)))
                .collect())
        })
        .await
    }

    async fn write_ranges(
        &self,
        meta: pb::AssetMeta,
        outboard: Outboard,
        groups: GroupStream,
    ) -> Result<RangesWritten, CanError> {
        let Some(partials) = self.partials.clone() else {
            return write_ranges_whole(self, meta, outboard, groups).await;
        };
        let (hash, size) = (outboard.hash(), outboard.size());
        self.check_size(size)?;
        self.check_meta(meta_text_bytes(&meta), meta.meta_updated_at_ms)?;
        if self.meta(hash).await?.is_some() {
            // Held already: only its metadata is news.
            let discarded = partials.clone();
            blocking(move || {
                discarded.discard(&hash);
                Ok(())
            })
            .await?;
            return self
                .commit_asset(hash, size, meta)
                .await
                .map(RangesWritten::Whole);
        }
        // In object storage, a fresh transfer whose groups come in order
        // is uploaded as it arrives, beside the local partial asset that
        // lets it resume: used only if this delivery brought every group in
        // order, given up (aborted) at the first group out of order.
        let mut streaming = {
            let partials = partials.clone();
            let fresh = blocking(move || Ok(partials.missing(&hash).is_none())).await?;
            fresh.then(|| self.blobs.upload_of(&hash, size)).flatten()
        };
        let mut streamed = 0u64;
        // Deliveries of one asset from several sources meet in one
        // assembly, whose thread verifies and writes every group while the
        // next ones arrive. Dropped unfinished (this future cancelled, the
        // groups cut), the partial asset keeps what it holds.
        let begun = partials.clone();
        let mut feeder = self
            .assemblies
            .join(
                hash,
                (Bytes::from(outboard.encoded_cvs()), size),
                move || begun.begin(outboard),
            )
            .await?;
        let mut groups = groups;
        let mut cut = None;
        while let Some(group) = groups.next().await {
            match group {
                Ok((index, data)) => {
                    if let Some(upload) = streaming.as_mut() {
                        let in_order = index == streamed;
                        if in_order && upload.push(data.clone()).await.is_ok() {
                            streamed += 1;
                        } else {
                            // Dropped: aborted. The whole file goes up at
                            // the end instead.
                            streaming = None;
                        }
                    }
                    if !feeder.feed(index, data).await {
                        break;
                    }
                }
                Err(err) => {
                    cut = Some(err);
                    break;
                }
            }
        }
        let streamed_whole = streaming.filter(|_| streamed == ranges::group_count(size));
        let ended = feeder
            .finish(async |completing| {
                let owed = self
                    .blobs
                    .store_completed(&hash, completing.path().to_path_buf(), streamed_whole)
                    .await?;
                self.blobs.sync_folders(owed).await?;
                let pushed = self.commit_asset(hash, size, meta).await?;
                let outboard = completing.outboard().clone();
                completing.committed();
                self.keep_outboard(outboard).await;
                Ok(pushed)
            })
            .await?;
        match (ended, cut) {
            (FeederEnd::Whole(pushed), _) => Ok(RangesWritten::Whole(pushed)),
            (FeederEnd::Partial { .. }, Some(err)) => Err(err),
            (FeederEnd::Partial { held, groups }, None) => {
                Ok(RangesWritten::Partial { held, groups })
            }
        }
    }

    fn object_stats(&self) -> Option<ObjectStats> {
        // The inherent method (path resolution prefers it to this one).
        Self::object_stats(self)
    }

    async fn partial_stats(&self) -> Result<PartialStats, CanError> {
        Ok(self
            .partials
            .as_ref()
            .map(|partials| partials.stats())
            .unwrap_or_default())
    }

    async fn partial_assets(&self, limit: usize) -> Result<Vec<PartialAsset>, CanError> {
        Ok(self
            .partials
            .as_ref()
            .map(|partials| partials.list(limit))
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::fixtures::{bundle, each_backend};
    use super::*;
    use crate::can::ChangeKind;
    use crate::clock::now_ms;

    #[tokio::test]
    async fn push_is_verified_idempotent_and_merges_metadata() {
        each_backend(async |store| {
            let first = store.push(bundle(b"abc", "one", 1)).await.unwrap();
            assert!(!first.already_existed);
            let again = store.push(bundle(b"abc", "two", 2)).await.unwrap();
            assert!(again.already_existed);
            let (size, meta) = store.meta(first.hash).await.unwrap().unwrap();
            assert_eq!((size, meta.description.as_str()), (3, "two"));
            assert_eq!(
                store.stats().await.unwrap(),
                StoreStats {
                    assets: 1,
                    bytes: 3
                }
            );

            let mut forged = bundle(b"abc", "x", 1);
            forged.data = Bytes::from_static(b"abd");
            assert!(matches!(
                store.push(forged).await,
                Err(CanError::HashMismatch { .. })
            ));
            assert_eq!(store.stats().await.unwrap().assets, 1);

            let pulled = store
                .pull(&[first.hash, AssetHash::of(b"nope")])
                .await
                .unwrap();
            assert_eq!(pulled.bundles.len(), 1);
            assert_eq!(pulled.bundles[0].data, &b"abc"[..]);
            assert_eq!(pulled.missing, vec![AssetHash::of(b"nope")]);
        })
        .await;
    }

    /// A stamp further ahead than the bound is refused wherever metadata
    /// enters, and nothing of it is kept: the `i64::MAX` freeze of issue 19.
    #[tokio::test]
    async fn metadata_from_the_future_is_refused_and_keeps_nothing() {
        each_backend(async |store| {
            let frozen = bundle(b"frozen", "from the future", i64::MAX);
            let hash = frozen.hash;
            assert!(matches!(
                store.push(frozen.clone()).await,
                Err(CanError::FutureStamp(_))
            ));
            assert!(store.meta(hash).await.unwrap().is_none(), "no bytes kept");
            let stream = futures::stream::iter([Ok(frozen.data.clone())]).boxed();
            assert!(matches!(
                store.write_blob(hash, frozen.meta.clone(), stream).await,
                Err(CanError::FutureStamp(_))
            ));
            assert!(store.meta(hash).await.unwrap().is_none());

            let now = now_ms();
            store.push(bundle(b"frozen", "mine", now)).await.unwrap();
            let update = MetaUpdate::of(hash, &frozen.meta);
            let refused = store.apply_meta(update).await.unwrap_err();
            assert!(
                refused.to_string().contains("ahead of this node's clock"),
                "{refused}"
            );
            // Within the bound (a peer whose clock runs a minute ahead): kept.
            let ahead = MetaUpdate::of(hash, &bundle(b"frozen", "ahead", now + 60_000).meta);
            assert!(store.apply_meta(ahead).await.unwrap());
            let (_, meta) = store.meta(hash).await.unwrap().unwrap();
            assert_eq!(meta.description, "ahead");
        })
        .await;
    }

    /// A user's edit wins over what it replaces, even a stamp a peer put
    /// ahead of this clock, without taking a far-future stamp; and the
    /// edit then wins on a node that held the replaced value.
    #[tokio::test]
    async fn an_edit_wins_over_what_it_replaces_and_on_other_nodes() {
        each_backend(async |store| {
            let ahead_ms = now_ms() + 60_000;
            let planted = bundle(b"edited", "planted by a peer", ahead_ms);
            let hash = planted.hash;
            store.push(planted.clone()).await.unwrap();
            let other = EmbeddedCan::memory(StoreLimits::default()).unwrap();
            other.push(planted).await.unwrap();

            let edit = MetaEdit {
                hash,
                description: Some("the owner's".into()),
                tags: None,
                is_trashed: Some(true),
            };
            let after = store.edit_meta(edit).await.unwrap();
            assert_eq!(after.description, "the owner's");
            assert!(after.is_trashed);
            assert_eq!(
                after.meta_updated_at_ms,
                ahead_ms + 1,
                "one past what it replaced"
            );
            let kept = store.pull(&[hash]).await.unwrap();
            assert_eq!(
                kept.bundles[0].data,
                &b"edited"[..],
                "an edit keeps the bytes"
            );
            assert!(
                after.meta_updated_at_ms <= now_ms() + StoreLimits::default().clock.max_skew_ms
            );

            assert!(other
                .apply_meta(MetaUpdate::of(hash, &after))
                .await
                .unwrap());
            let (_, there) = other.meta(hash).await.unwrap().unwrap();
            assert_eq!(there.description, "the owner's");

            let unknown = MetaEdit {
                hash: AssetHash::of(b"unknown"),
                description: None,
                tags: None,
                is_trashed: Some(true),
            };
            assert!(matches!(
                store.edit_meta(unknown).await,
                Err(CanError::NotFound(_))
            ));
        })
        .await;
    }

    #[tokio::test]
    async fn list_since_follows_change_time() {
        each_backend(async |store| {
            store.push(bundle(b"one", "", 1)).await.unwrap();
            let all = store.list_since(i64::MIN, None, 10).await.unwrap();
            assert_eq!((all.items.len(), all.next), (1, None));
            let later = now_ms() + 60_000;
            assert!(store
                .list_since(later, None, 10)
                .await
                .unwrap()
                .items
                .is_empty());
            assert_eq!(store.list_since(0, None, 10).await.unwrap().items.len(), 1);
        })
        .await;
    }

    #[tokio::test]
    async fn listings_page_with_cursors_and_never_answer_with_everything() {
        each_backend(async |store| {
            for i in 0..25u32 {
                store.push(bundle(&i.to_le_bytes(), "", 1)).await.unwrap();
            }
            let mut by_hash = Vec::new();
            let mut after = None;
            loop {
                let page = store.list_page(after, 10).await.unwrap();
                assert!(page.items.len() <= 10);
                by_hash.extend(page.items.iter().map(|s| s.hash));
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let mut sorted = by_hash.clone();
            sorted.sort();
            assert_eq!(by_hash, sorted, "hash order");
            assert_eq!(by_hash.len(), 25);

            let mut since = Vec::new();
            let mut after = None;
            loop {
                let page = store.list_since(0, after, 7).await.unwrap();
                since.extend(page.items.iter().map(|s| s.hash));
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            assert_eq!(since.len(), 25, "every asset once, by change time");
        })
        .await;
    }

    #[tokio::test]
    async fn the_change_log_keeps_the_latest_change_of_each_asset() {
        each_backend(async |store| {
            let a = store.push(bundle(b"a", "", 1)).await.unwrap().hash;
            let b = store.push(bundle(b"b", "", 1)).await.unwrap().hash;
            for at in 2..6 {
                let mut update = MetaUpdate::of(a, &bundle(b"a", "edited", at).meta);
                update.created_at_ms = 0;
                assert!(store.apply_meta(update).await.unwrap());
            }
            let page = store.changes(0, 100).await.unwrap();
            let log: Vec<_> = page
                .changes
                .iter()
                .map(|c| (c.summary.hash, c.kind))
                .collect();
            assert_eq!(log, vec![(b, ChangeKind::Asset), (a, ChangeKind::Meta)]);
            assert_eq!(page.next_after, page.changes[1].seq);
            assert_eq!(page.changes[1].summary.version.updated_at_ms, 5);
            let rest = store.changes(page.next_after, 100).await.unwrap();
            assert!(rest.changes.is_empty());
            assert_eq!(
                (rest.next_after, rest.store_id),
                (page.next_after, page.store_id)
            );
            // A second page picks up where the first ended.
            let first = store.changes(0, 1).await.unwrap();
            let second = store.changes(first.next_after, 1).await.unwrap();
            assert_eq!(second.changes[0].summary.hash, a);
        })
        .await;
    }

    #[tokio::test]
    async fn a_disk_store_reopens_with_everything_and_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let hash = {
            let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
            std::fs::write(dir.path().join("tmp").join("leftover"), b"half").unwrap();
            store.push(bundle(b"kept", "d", 3)).await.unwrap().hash
        };
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        assert_eq!(store.meta(hash).await.unwrap().unwrap().1.description, "d");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    fn verified(data: &[u8], description: &str) -> VerifiedBundle {
        bundle(data, description, 1).verify().unwrap()
    }

    /// A batch mixing a small asset, one past the inline limit, one already
    /// held and one too large: one commit, one answer per bundle in order,
    /// and the refusal fails only its own slot.
    #[tokio::test]
    async fn a_batch_commits_together_and_answers_each_bundle() {
        let limits = StoreLimits {
            max_asset_bytes: 2 * INLINE_LIMIT,
            ..StoreLimits::default()
        };
        let dir = tempfile::tempdir().unwrap();
        for store in [
            EmbeddedCan::memory(limits).unwrap(),
            EmbeddedCan::open(dir.path(), limits).unwrap(),
        ] {
            let held = store.push(bundle(b"held", "", 1)).await.unwrap();
            let large = vec![9u8; INLINE_LIMIT as usize + 1];
            let too_large = vec![7u8; 2 * INLINE_LIMIT as usize + 1];
            let before = schema::read_last_seq(&store.db).unwrap();
            let answers = store
                .push_batch(vec![
                    verified(b"small", "s"),
                    verified(&large, "l"),
                    verified(b"held", ""),
                    verified(&too_large, "x"),
                ])
                .await
                .unwrap();
            assert_eq!(answers.len(), 4);
            let small = answers[0].as_ref().unwrap();
            assert!(!small.already_existed);
            assert!(!answers[1].as_ref().unwrap().already_existed);
            assert_eq!(answers[2].as_ref().unwrap().hash, held.hash);
            assert!(answers[2].as_ref().unwrap().already_existed);
            assert!(matches!(answers[3], Err(CanError::TooLarge { .. })));
            // The two new assets share one commit: consecutive changes.
            assert_eq!(
                (small.seq, answers[1].as_ref().unwrap().seq),
                (Some(before + 1), Some(before + 2))
            );
            let pulled = store
                .pull(&[small.hash, AssetHash::of(&large)])
                .await
                .unwrap();
            assert_eq!(pulled.bundles[0].data, &b"small"[..]);
            assert_eq!(pulled.bundles[1].data, large);
            assert_eq!(store.stats().await.unwrap().assets, 3);
        }
    }

    /// Small assets are packed into a segment, larger ones are files; both
    /// read back whole and from an offset, and survive a reopen.
    #[tokio::test]
    async fn small_assets_are_packed_and_large_ones_files() {
        let dir = tempfile::tempdir().unwrap();
        let small = b"a small asset".to_vec();
        let large = vec![3u8; INLINE_LIMIT as usize + 10];
        {
            let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
            store.push(bundle(&small, "", 1)).await.unwrap();
            store
                .push_batch(vec![verified(&large, "")])
                .await
                .unwrap()
                .remove(0)
                .unwrap();
        }
        let files: Vec<_> = walk(&dir.path().join("blobs"));
        assert_eq!(
            files,
            vec![AssetHash::of(&large).to_hex()],
            "one file, the large one"
        );
        let packs = dir.path().join(segments::PACKS_DIR);
        assert_eq!(walk(&packs).len(), 1, "one segment");
        assert_eq!(
            std::fs::read(packs.join(&walk(&packs)[0])).unwrap(),
            small,
            "the segment holds the small asset's bytes and nothing else"
        );
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        for data in [&small, &large] {
            let (size, body) = store.read_blob(AssetHash::of(data), 5).await.unwrap();
            assert_eq!(size, data.len() as u64);
            let read: Vec<Bytes> = body.map(|chunk| chunk.unwrap()).collect().await;
            assert_eq!(read.concat(), data[5..]);
        }
    }

    /// The names of the files under `dir`, recursively.
    fn walk(dir: &Path) -> Vec<String> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                names.extend(walk(&entry.path()));
            } else {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names
    }

    /// Bytes past a segment's recorded end (a group a crash cut before its
    /// commit) are cut at open and written over, and newer segment files
    /// that no commit recorded are removed; every acknowledged value reads
    /// back, across sealed segments.
    #[tokio::test]
    async fn opening_cuts_segments_back_to_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            segment_bytes: 10_000,
            ..StoreLimits::default()
        };
        let data: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 3_000]).collect();
        let packs = dir.path().join(segments::PACKS_DIR);
        {
            let store = EmbeddedCan::open(dir.path(), limits).unwrap();
            for value in &data[..6] {
                store.push(bundle(value, "", 1)).await.unwrap();
            }
        }
        let names = walk(&packs);
        assert_eq!(names.len(), 2, "sealed at 3 values: {names:?}");
        let open = packs.join(names.iter().max().unwrap());
        let mut junk = std::fs::read(&open).unwrap();
        junk.extend_from_slice(&[0xee; 1_000]);
        std::fs::write(&open, junk).unwrap();
        std::fs::write(packs.join(format!("{:016x}", 3)), b"no commit").unwrap();
        {
            let store = EmbeddedCan::open(dir.path(), limits).unwrap();
            assert!(!packs.join(format!("{:016x}", 3)).exists());
            assert_eq!(std::fs::metadata(&open).unwrap().len(), 9_000);
            for value in &data[6..] {
                store.push(bundle(value, "", 1)).await.unwrap();
            }
        }
        let store = EmbeddedCan::open(dir.path(), limits).unwrap();
        let hashes: Vec<AssetHash> = data.iter().map(|d| AssetHash::of(d)).collect();
        let pulled = store.pull(&hashes).await.unwrap();
        assert!(pulled.missing.is_empty());
        for (bundle, value) in pulled.bundles.iter().zip(&data) {
            assert_eq!(bundle.data, value);
        }
        assert_eq!(walk(&packs).len(), 4);
    }

    /// A store of schema 3 (small assets' bytes as rows of the database)
    /// opens as schema 4: its rows read where they are, and new small
    /// assets go to segments.
    #[tokio::test]
    async fn a_schema_3_store_opens_and_its_rows_read_in_place() {
        use redb::{ReadableDatabase as _, ReadableTableMetadata as _};

        let dir = tempfile::tempdir().unwrap();
        let old = b"a row of schema 3".to_vec();
        {
            let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
            store.writer.skip_saving_cells();
        }
        // What schema 3 wrote: the record and the row, no segment tables.
        {
            let db = Database::create(dir.path().join("meta.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(schema::SEGMENTS).unwrap();
            {
                let hash = *AssetHash::of(&old).as_bytes();
                let record = schema::Record {
                    size: old.len() as u64,
                    changed_at: 5,
                    seq: 1,
                    location: None,
                    meta: bundle(&old, "old", 1).meta,
                };
                let mut assets = txn.open_table(schema::ASSETS).unwrap();
                assets.insert(hash, record.encode().as_slice()).unwrap();
                let mut rows = txn.open_table(schema::INLINE_BLOBS).unwrap();
                rows.insert(hash, old.as_slice()).unwrap();
                let mut counters = txn.open_table(schema::COUNTERS).unwrap();
                counters.insert("schema", 3).unwrap();
                counters.insert("assets", 1).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        let new = store.push(bundle(b"a new one", "", 1)).await.unwrap().hash;
        let pulled = store.pull(&[AssetHash::of(&old), new]).await.unwrap();
        assert_eq!(pulled.bundles.len(), 2);
        assert_eq!(pulled.bundles[0].data, old);
        assert_eq!(pulled.bundles[1].data, &b"a new one"[..]);
        let (_, body) = store.read_blob(AssetHash::of(&old), 2).await.unwrap();
        let read: Vec<Bytes> = body.map(|chunk| chunk.unwrap()).collect().await;
        assert_eq!(read.concat(), old[2..]);
        let txn = store.db.begin_read().unwrap();
        let counters = txn.open_table(schema::COUNTERS).unwrap();
        assert_eq!(
            counters.get("schema").unwrap().unwrap().value(),
            schema::SCHEMA_VERSION
        );
        let rows = txn.open_table(schema::INLINE_BLOBS).unwrap();
        assert_eq!(rows.len().unwrap(), 1, "the new asset is not a row");
    }

    /// An empty asset, the first value of a store (no segment file made
    /// yet), reads back, before and after a reopen.
    #[tokio::test]
    async fn an_empty_asset_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let hash = AssetHash::of(b"");
        for _ in 0..2 {
            let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
            store.push(bundle(b"", "", 1)).await.unwrap();
            let pulled = store.pull(&[hash]).await.unwrap();
            assert_eq!(pulled.bundles[0].data, &b""[..]);
            let (size, body) = store.read_blob(hash, 0).await.unwrap();
            let read: Vec<Bytes> = body.map(|chunk| chunk.unwrap()).collect().await;
            assert_eq!((size, read.concat().len()), (0, 0));
        }
    }

    #[test]
    fn a_store_of_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap());
        {
            let db = Database::create(dir.path().join("meta.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(schema::COUNTERS)
                .unwrap()
                .insert("schema", 99)
                .unwrap();
            txn.commit().unwrap();
        }
        let Err(refused) = EmbeddedCan::open(dir.path(), StoreLimits::default()) else {
            panic!("a store of schema 99 opened");
        };
        assert!(refused.to_string().contains("newer can-sync"), "{refused}");
    }

    #[tokio::test]
    async fn limits_refuse_large_assets() {
        let store = EmbeddedCan::memory(StoreLimits {
            max_asset_bytes: 4,
            ..StoreLimits::default()
        })
        .unwrap();
        assert!(matches!(
            store.push(bundle(b"12345", "", 1)).await,
            Err(CanError::TooLarge { size: 5, limit: 4 })
        ));
    }
}
