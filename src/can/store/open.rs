//! Opening a store: on disk (with or without object storage), in memory,
//! or on the simulated disk of the power-cut tests; what is made and synced
//! before the store answers its first call.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase as _};
use tokio::sync::broadcast;

use super::blobs::{self, Blobs};
use super::coded::{CodedSet, Origin};
use super::fs::{create_dir_all_durably, list_if_there, ReadOnlyFs, RealFs, StoreFs, SyncPoint};
use super::objects::{Objects, ObjectsConfig};
use super::partial::PartialQuota;
use super::resume::Partials;
use super::schema::{self, db_err};
use super::segments::{self, create_packs_dir, SegmentReader, SegmentWriter, Unrecorded};
use super::writer::Writer;
use super::{offload, subscription, without_panics, EmbeddedCan, StoreLimits};
use crate::asset::AssetHash;
use crate::can::CanError;

/// The database's file in the store folder: a folder without it holds no
/// store.
pub(super) const DATABASE_FILE: &str = "meta.redb";

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
        let mut store = Self::open_parts(
            fs.clone(),
            dir,
            limits,
            Some(objects.clone()),
            Access::Write,
        )?;
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

    /// Opens (or creates) a durable store in `dir` of the file system `fs`:
    /// the disk, or in tests a simulated one that can lose power.
    ///
    /// Once this returns, the store's folders are durable: the store folder
    /// and any folder made for it are in their parents after a power cut,
    /// and so are `meta.redb`, `blobs/`, `packs/`, `tmp/` and the shard
    /// folders.
    pub(super) fn open_on(
        fs: Arc<dyn StoreFs>,
        dir: &Path,
        limits: StoreLimits,
    ) -> Result<Self, CanError> {
        Self::open_parts(fs, dir, limits, None, Access::Write)
    }

    /// Opens the store in `dir` only to be read, for the commands that check
    /// or copy a store (`fsck`, `export`). The store must exist (see
    /// [`Self::require_existing`]) and be of the current schema (an older
    /// one is refused, not migrated). Nothing of it changes, not a byte of
    /// its database file: what redb writes on every open and close stays
    /// in memory (`store/overlay.rs`), so a store on a read-only medium
    /// opens too. Bytes past a pack segment's recorded end, and newer
    /// segment files, stay for [`Self::unrecorded_segment_bytes`] to report
    /// (opening to write cuts them); temporary files stay; partial assets
    /// are neither resumed nor expired; sealed segments are not moved to
    /// object storage (in `objects`, when given, they are read from).
    /// Every write fails before it stores a byte.
    pub fn open_to_read(
        dir: &Path,
        limits: StoreLimits,
        objects: Option<&ObjectsConfig>,
    ) -> Result<Self, CanError> {
        Self::require_existing(dir)?;
        let objects = objects
            .map(|config| Objects::open(config).map_err(CanError::from))
            .transpose()?;
        Self::open_parts(Arc::new(ReadOnlyFs), dir, limits, objects, Access::Read)
    }

    /// [`Self::open_on`], with large blobs and sealed segments in `objects`
    /// when given.
    ///
    /// redb panics on some damage to its file (a page that does not parse,
    /// a file shorter than its header says) where it could fail: a panic
    /// while opening becomes an error that names the database as the likely
    /// cause, so that a command given a damaged store says so and fails as
    /// it fails for any other damage. Nothing is running yet that a panic
    /// could leave half done: the writer thread starts last, and redb
    /// writes nothing while it unwinds.
    fn open_parts(
        fs: Arc<dyn StoreFs>,
        dir: &Path,
        limits: StoreLimits,
        objects: Option<Arc<Objects>>,
        access: Access,
    ) -> Result<Self, CanError> {
        without_panics(|| Self::open_parts_in(fs, dir, limits, objects, access)).unwrap_or_else(
            |why| {
                Err(CanError::Storage(format!(
                    "{}: opening the store failed inside its database library, so its \
                 database {DATABASE_FILE} may be damaged: {why}",
                    dir.display()
                )))
            },
        )
    }

    fn open_parts_in(
        fs: Arc<dyn StoreFs>,
        dir: &Path,
        limits: StoreLimits,
        objects: Option<Arc<Objects>>,
        access: Access,
    ) -> Result<Self, CanError> {
        if access == Access::Write {
            create_dir_all_durably(&*fs, dir)?;
        }
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
        if access == Access::Write && database_is_new(&*fs, &path)? {
            refuse_bytes_without_database(&*fs, dir)?;
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
        let blobs = match (&objects, access) {
            (Some(objects), _) => Blobs::Object {
                objects: objects.clone(),
                fs: fs.clone(),
            },
            (None, Access::Read) => Blobs::existing(fs.clone(), dir),
            (None, Access::Write | Access::Memory) => Blobs::open(fs.clone(), dir)?,
        };
        let packs = match access {
            Access::Read => dir.join(segments::PACKS_DIR),
            Access::Write | Access::Memory => {
                let packs = create_packs_dir(&*fs, dir)?;
                fs.sync_dir(dir, SyncPoint::StoreFolder)?;
                packs
            }
        };
        Self::with_parts_in(db, blobs, Some((fs, packs)), limits, access, objects)
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
    /// coded cells when it closes, if it holds enough assets for that to pay
    /// ([`SAVE_FROM_ASSETS`](super::coded::SAVE_FROM_ASSETS)).
    pub(super) fn with_parts(
        db: Database,
        blobs: Blobs,
        packs: Option<(Arc<dyn StoreFs>, std::path::PathBuf)>,
        limits: StoreLimits,
        durable: bool,
    ) -> Result<Self, CanError> {
        let access = if durable {
            Access::Write
        } else {
            Access::Memory
        };
        Self::with_parts_in(db, blobs, packs, limits, access, None)
    }

    /// [`Self::with_parts`], its large blobs and sealed segments in
    /// `objects` when given, opened for `access`.
    fn with_parts_in(
        db: Database,
        blobs: Blobs,
        packs: Option<(Arc<dyn StoreFs>, std::path::PathBuf)>,
        limits: StoreLimits,
        access: Access,
        objects: Option<Arc<Objects>>,
    ) -> Result<Self, CanError> {
        let store_id = match access {
            Access::Read => schema::store_id_to_read(&db)?,
            Access::Write | Access::Memory => schema::create_tables(&db)?,
        };
        let (fs, packs_dir) = match &packs {
            Some((fs, dir)) => (Some(fs.clone()), Some(dir.clone())),
            None => (None, None),
        };
        let (segment_writer, segments) = match packs {
            Some((fs, dir)) => {
                let writer = match access {
                    Access::Read => None,
                    Access::Write | Access::Memory => {
                        let committed = schema::read_open_segment(&db)?;
                        Some(SegmentWriter::open(
                            fs.clone(),
                            dir.clone(),
                            committed,
                            limits.segment_bytes,
                        )?)
                    }
                };
                let mut reader = SegmentReader::new(fs, dir);
                if let Some(objects) = &objects {
                    reader = reader.with_remote(segments::RemoteSegments {
                        objects: objects.clone(),
                        store_id,
                        runtime: tokio::runtime::Handle::current(),
                    });
                }
                (writer, Some(Arc::new(reader)))
            }
            None => (None, None),
        };
        let started = std::time::Instant::now();
        // Building the cells reads every record. A damaged page of the index
        // must not keep a store from opening: for `fsck` to name the damage,
        // for a daemon to serve what it can read. Without cells the store
        // serves none, and its peers exchange full lists, which look past
        // the page. (Saved cells, when current, are loaded without reading
        // the index.)
        let (coded, origin) = without_panics(|| CodedSet::open(&db)).unwrap_or_else(|why| {
            tracing::warn!(
                why,
                "the coded cells could not be built, a page of the store's index is \
                 damaged: its peers will exchange full lists with it; run `can-sync fsck`"
            );
            Ok((CodedSet::unavailable(), Origin::Damaged))
        })?;
        tracing::debug!(?origin, took = ?started.elapsed(), "coded cells ready");
        let db = Arc::new(db);
        let (events, _) = broadcast::channel(subscription::EVENT_BUFFER);
        let durable = access == Access::Write;
        let writer = match access {
            Access::Read => Writer::closed(),
            Access::Write | Access::Memory => Writer::start(
                db.clone(),
                segment_writer,
                events.clone(),
                coded.clone(),
                durable,
                origin == Origin::Saved,
            )?,
        };
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
}

impl EmbeddedCan {
    /// Fails unless `dir` holds a store to read, for the commands that read
    /// one and must never make one (`fsck`, `export`): its database missing
    /// or empty is named, and, beside a store's bytes, refused as opening
    /// refuses it. Opening would make a new, empty store that passes every
    /// check.
    pub fn require_existing(dir: &Path) -> Result<(), CanError> {
        let path = dir.join(DATABASE_FILE);
        if !database_is_new(&RealFs, &path)? {
            return Ok(());
        }
        refuse_bytes_without_database(&RealFs, dir)?;
        let state = if RealFs.exists(&path)? {
            "empty"
        } else {
            "missing"
        };
        Err(CanError::Storage(format!(
            "no store in {}: its {DATABASE_FILE} is {state}",
            dir.display()
        )))
    }

    /// The blob files on this store's disk that no record names, by the
    /// hash their names give, and their lengths; none for blobs in object
    /// storage. A push cut short after its file was in place but before
    /// its commit leaves one (the next push of the asset adopts it), and
    /// so does a database put back from an older copy. They are never
    /// served.
    pub fn unrecorded_blob_files(&self) -> Result<Vec<(AssetHash, u64)>, CanError> {
        let files = self.blobs.files()?;
        // A lookup through a damaged page of the index panics in redb:
        // then which files are named cannot be told, and that is the
        // answer.
        let look_up = || {
            let txn = self.db.begin_read().map_err(db_err)?;
            let assets = txn.open_table(schema::ASSETS).map_err(db_err)?;
            let mut unrecorded = Vec::new();
            for (hash, len) in files {
                if assets.get(*hash.as_bytes()).map_err(db_err)?.is_none() {
                    unrecorded.push((hash, len));
                }
            }
            Ok(unrecorded)
        };
        without_panics(look_up).unwrap_or_else(|why| {
            Err(CanError::Storage(format!(
                "the index could not be read for every blob file: {why}"
            )))
        })
    }

    /// The bytes of this store's local pack segments that no commit points
    /// into ([`Unrecorded`]), as they are now; none for a store without
    /// segments. A store opened to write cut them when it opened; one
    /// opened only to be read ([`Self::open_to_read`]) left them.
    pub fn unrecorded_segment_bytes(&self) -> Result<Vec<Unrecorded>, CanError> {
        let (Some(fs), Some(dir)) = (&self.fs, &self.packs_dir) else {
            return Ok(Vec::new());
        };
        let committed = schema::read_open_segment(&self.db)?;
        Ok(segments::unrecorded(&**fs, dir, committed)?)
    }
}

/// What a store is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reading and writing, durably: on disk or on the simulated disk.
    Write,
    /// Reading only: nothing of the store is changed.
    Read,
    /// Reading and writing in memory (or a test's backend): nothing is
    /// synced, small values stay rows, and the coded cells are not saved.
    Memory,
}

/// True when `path` holds no database yet: no file, or an empty one. redb
/// would make a new database in either; ours never leaves an empty file (a
/// new one is made whole under another name first), so an empty one was
/// cut behind the store's back.
fn database_is_new(fs: &dyn StoreFs, path: &Path) -> Result<bool, CanError> {
    if !fs.exists(path)? {
        return Ok(true);
    }
    Ok(fs.open(path)?.len()? == 0)
}

/// Refuses to make a new database in a folder that holds a store's bytes:
/// pack segments, or blob files. The records that name them are in the
/// database; a new one names none, and opening a store cuts each segment
/// back to the end its database records, so a new database would discard
/// every packed value in the folder. A database deleted or emptied behind
/// the store's back is a damaged store to restore, not an empty one.
fn refuse_bytes_without_database(fs: &dyn StoreFs, dir: &Path) -> Result<(), CanError> {
    let names = |folder: &Path| list_if_there(fs, folder);
    let packs = dir.join(segments::PACKS_DIR);
    let blobs = dir.join(blobs::BLOBS_DIR);
    let holds_segments = !names(&packs)?.is_empty();
    // A shard that cannot be listed (a file where a folder should be)
    // counts as holding something: refusing is the safe answer.
    let holds_blobs = names(&blobs)?
        .iter()
        .any(|shard| names(&blobs.join(shard)).map_or(true, |files| !files.is_empty()));
    if !(holds_segments || holds_blobs) {
        return Ok(());
    }
    let held = match (holds_segments, holds_blobs) {
        (true, true) => "pack segments and blob files",
        (true, false) => "pack segments",
        _ => "blob files",
    };
    Err(CanError::Storage(format!(
        "{}: its database {DATABASE_FILE} is missing or empty, yet the folder holds {held}; \
         refusing to make a new database, which would discard them. Copy the whole folder \
         aside before anything else: a {DATABASE_FILE} put back from a backup older than \
         the pack segments cuts the values written since when the store next opens",
        dir.display()
    )))
}
