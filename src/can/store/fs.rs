//! The store's file operations, in one narrow trait, and every place the
//! store makes something durable, by name.
//!
//! The store never calls `std::fs` itself: blob files, folders, renames and
//! redb's database file go through [`StoreFs`]. In production that is
//! [`RealFs`], a thin forward to `std::fs`, called on the blocking threads
//! the store works on anyway. In tests it is the simulated file system of
//! `simfs.rs`, which keeps apart what was synced and what was not, so that
//! a test can cut the power and see what a disk would keep.
//!
//! Every sync the store makes names its [`SyncPoint`]. Production ignores
//! the name; the simulation can be told to leave one point out, so a test
//! shows that each one is needed (see `power.rs`). One fdatasync is not a
//! sync point: the write-behind flusher's, while a large streamed blob is
//! written ([`StoreFile::write_back`]); it only spares the final fsync
//! work, and nothing relies on it.
//!
//! A pack segment (`segments/`) is a [`StoreFile`] too: appended to in
//! order, fdatasynced at a point of its own ([`SyncPoint::SegmentFile`]),
//! cut back with [`StoreFile::set_len`] at open, read by position.

use std::io;
use std::path::{Path, PathBuf};

use redb::backends::FileBackend;

use super::overlay::Overlaid;
use redb::{Database, DatabaseError, StorageBackend};

/// A sync the store makes for durability. Each is needed for "an
/// acknowledged write survives a power cut": the power-cut test removes each
/// in turn and expects a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum SyncPoint {
    /// The folder above a store folder (or above any of its ancestors) the
    /// store created: without it the store folder's own entry may vanish.
    StoreParent,
    /// The store folder, at every open, after `meta.redb`, `blobs/` and
    /// `tmp/` are in it: their entries.
    StoreFolder,
    /// `blobs/`, before the commit that first lists a blob in a shard
    /// folder this process has not synced `blobs/` for (made now, or found
    /// made): the shard's entry.
    BlobsFolder,
    /// A blob's temporary file, once written whole, before its rename: its
    /// bytes.
    BlobFile,
    /// A blob's shard folder, after the rename into it, before the commit
    /// that lists the blob: the blob's entry. Once per folder for a batch.
    ShardFolder,
    /// The shard folder of a blob file removed for an asset being forgotten
    /// (`fsck --repair`), before the commit that removes its record: a
    /// removal lost to a power cut would leave the damaged file for a later
    /// push of the asset to take as whole.
    ForgottenBlob,
    /// The shard folder of a blob found already in place, before the commit
    /// that lists it: the file may have been renamed there by a push still
    /// in flight, or by one cut before it synced the folder (a killed
    /// process leaves the rename in the page cache).
    AdoptedBlob,
    /// redb's fdatasync of its database file, in every commit (and when it
    /// creates the file).
    Database,
    /// The database file's, right after redb grew it ([`GrowthSynced`]):
    /// its new length.
    DatabaseGrowth,
    /// A pack segment's fdatasync, after a group's values were appended and
    /// before the commit whose records point at them (and that records the
    /// segment's new end); a segment sealed in that group is synced too.
    SegmentFile,
    /// `packs/`, after a segment file was made in it and before the commit
    /// that first points into that segment: the segment's entry.
    PacksFolder,
}

impl SyncPoint {
    /// Every sync point.
    #[cfg(test)]
    pub(super) const ALL: [Self; 10] = [
        Self::StoreParent,
        Self::StoreFolder,
        Self::BlobsFolder,
        Self::BlobFile,
        Self::ShardFolder,
        Self::AdoptedBlob,
        Self::Database,
        Self::DatabaseGrowth,
        Self::SegmentFile,
        Self::PacksFolder,
    ];
}

/// The file operations the store makes. Paths are whole paths; nothing here
/// creates a folder's parents or syncs anything unasked.
pub(super) trait StoreFs: Send + Sync + 'static {
    /// True when something is at `path`.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Creates one folder; fails with [`io::ErrorKind::AlreadyExists`] when
    /// something is there.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes a folder and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates an empty file to write, refusing one already there.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StoreFile>>;
    /// Opens a file to read. Anything but a regular file (a folder, a FIFO
    /// put where a blob was) fails with [`io::ErrorKind::InvalidInput`]
    /// instead of blocking.
    fn open(&self, path: &Path) -> io::Result<Box<dyn StoreFile>>;
    /// Opens an existing regular file to read and write, at its start; as
    /// [`Self::open`], anything else fails.
    fn open_rw(&self, path: &Path) -> io::Result<Box<dyn StoreFile>>;
    /// The names in the folder at `path`.
    fn list(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Moves `from` to `to`, replacing what `to` names.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of the folder at `path` durable: what was created,
    /// renamed into or out of it, or removed.
    fn sync_dir(&self, path: &Path, point: SyncPoint) -> io::Result<()>;
    /// Opens, or creates, the redb database in the file at `path`, on a
    /// [`GrowthSynced`] backend.
    fn database(&self, path: &Path, builder: &redb::Builder) -> Result<Database, DatabaseError>;
}

/// An open file of a [`StoreFs`].
pub(super) trait StoreFile: io::Read + io::Write + io::Seek + Send + Sync {
    /// Makes the file's content durable (fsync).
    fn sync(&self, point: SyncPoint) -> io::Result<()>;
    /// Starts writing back what was written so far, so that the final
    /// [`sync`](Self::sync) has less left to do. Not a durability point:
    /// nothing relies on it having happened.
    fn write_back(&self) -> io::Result<()>;
    /// The file's length.
    fn len(&self) -> io::Result<u64>;
    /// A second handle on the same file, sharing its position.
    fn try_clone(&self) -> io::Result<Box<dyn StoreFile>>;
    /// Makes the file's content and length durable, not its other metadata
    /// (fdatasync): all an appended file needs.
    fn sync_data(&self, point: SyncPoint) -> io::Result<()>;
    /// Sets the file's length: cuts it, or grows it with zeros.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Fills `buf` from `offset`, without moving the file's position (pread):
    /// many readers share one handle.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// The names in the folder at `path`; none when there is no folder.
pub(super) fn list_if_there(fs: &dyn StoreFs, path: &Path) -> io::Result<Vec<String>> {
    match fs.list(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        listed => listed,
    }
}

/// The file system, through `std::fs`.
pub(super) struct RealFs;

impl StoreFs for RealFs {
    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StoreFile>> {
        Ok(Box::new(RealFile(std::fs::File::create_new(path)?)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StoreFile>> {
        open_regular(path, false)
    }

    fn open_rw(&self, path: &Path) -> io::Result<Box<dyn StoreFile>> {
        open_regular(path, true)
    }

    fn list(&self, path: &Path) -> io::Result<Vec<String>> {
        std::fs::read_dir(path)?
            .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
            .collect()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, path: &Path, _point: SyncPoint) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }

    fn database(&self, path: &Path, builder: &redb::Builder) -> Result<Database, DatabaseError> {
        // As redb's own `Builder::create` opens it; the backend takes the
        // file's lock.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        builder.create_with_backend(GrowthSynced(FileBackend::new(file)?))
    }
}

/// The file system of a store opened only to be read
/// ([`EmbeddedCan::open_to_read`](super::EmbeddedCan::open_to_read)): what
/// reads passes through to `RealFs`, and everything that would change a
/// file or a folder fails, so no path of the store can change it by
/// mistake. The database must exist, and is opened to read with a shared
/// lock (a running daemon's store is refused, other readers share it);
/// what redb writes to it stays in memory ([`Overlaid`]).
pub(super) struct ReadOnlyFs;

impl ReadOnlyFs {
    fn refused() -> io::Error {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "refused: the store's files were opened only to be read",
        )
    }
}

impl StoreFs for ReadOnlyFs {
    fn exists(&self, path: &Path) -> io::Result<bool> {
        RealFs.exists(path)
    }

    fn create_dir(&self, _path: &Path) -> io::Result<()> {
        Err(Self::refused())
    }

    fn remove_dir_all(&self, _path: &Path) -> io::Result<()> {
        Err(Self::refused())
    }

    fn create_new(&self, _path: &Path) -> io::Result<Box<dyn StoreFile>> {
        Err(Self::refused())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StoreFile>> {
        RealFs.open(path)
    }

    fn open_rw(&self, _path: &Path) -> io::Result<Box<dyn StoreFile>> {
        Err(Self::refused())
    }

    fn list(&self, path: &Path) -> io::Result<Vec<String>> {
        RealFs.list(path)
    }

    fn rename(&self, _from: &Path, _to: &Path) -> io::Result<()> {
        Err(Self::refused())
    }

    fn remove_file(&self, _path: &Path) -> io::Result<()> {
        Err(Self::refused())
    }

    fn sync_dir(&self, _path: &Path, _point: SyncPoint) -> io::Result<()> {
        Err(Self::refused())
    }

    fn database(&self, path: &Path, builder: &redb::Builder) -> Result<Database, DatabaseError> {
        builder.create_with_backend(Overlaid::open(path)?)
    }
}

/// Opens the regular file at `path`, refusing anything else before it is
/// opened: a FIFO left where a blob or a segment was would make the open
/// wait for a writer forever. (Opening with `O_NONBLOCK` instead would also
/// fail at once under a file lease, as a file server holds them.) What was
/// opened is checked again, for a folder.
fn open_regular(path: &Path, write: bool) -> io::Result<Box<dyn StoreFile>> {
    let not_regular = || io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    Ok(Box::new(RealFile(file)))
}

/// A database file as [`GrowthSynced`] wraps it: redb's storage, and a sync
/// that names its point.
pub(super) trait DatabaseFile: StorageBackend {
    /// fdatasync, at `point`.
    fn sync_at(&self, point: SyncPoint) -> io::Result<()>;
}

impl DatabaseFile for FileBackend {
    fn sync_at(&self, _point: SyncPoint) -> io::Result<()> {
        self.sync_data()
    }
}

/// redb's storage, with each growth of the file made durable as it happens.
///
/// redb (3.1) grows its file in the middle of a transaction and writes the
/// new length into its header at commit, then syncs once. A power cut during
/// that sync can keep the header page (an overwrite, written back whenever
/// the kernel likes) and lose the length change (file metadata, in a
/// journal commit that had not happened): POSIX orders neither before the
/// other. redb then finds a header naming more file than there is and
/// panics at open (`assert!(raw_file_len >= layout.len())`) instead of
/// falling back to the previous commit. Synced at once, a growth is on disk
/// before any header that names it. It is rare: redb doubles the file until
/// its first region is full, then grows it a region at a time.
#[derive(Debug)]
pub(super) struct GrowthSynced<F>(pub(super) F);

impl<F: DatabaseFile> StorageBackend for GrowthSynced<F> {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let grows = len > self.0.len()?;
        self.0.set_len(len)?;
        if grows {
            self.0.sync_at(SyncPoint::DatabaseGrowth)?;
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_at(SyncPoint::Database)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.0.close()
    }
}

/// A file of [`RealFs`].
struct RealFile(std::fs::File);

impl io::Read for RealFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl io::Write for RealFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl io::Seek for RealFile {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

impl StoreFile for RealFile {
    fn sync(&self, _point: SyncPoint) -> io::Result<()> {
        self.0.sync_all()
    }

    fn write_back(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn try_clone(&self) -> io::Result<Box<dyn StoreFile>> {
        Ok(Box::new(Self(self.0.try_clone()?)))
    }

    fn sync_data(&self, _point: SyncPoint) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    #[cfg(unix)]
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset)
    }

    #[cfg(windows)]
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(&self.0, buf, offset)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                read => {
                    buf = &mut buf[read..];
                    offset += read as u64;
                }
            }
        }
        Ok(())
    }
}

/// Creates `path` if it is missing; true when it did.
pub(super) fn create_dir_if_missing(fs: &dyn StoreFs, path: &Path) -> io::Result<bool> {
    match fs.create_dir(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err),
    }
}

/// Creates `dir` and whichever of its ancestors are missing, syncing the
/// folder above each one created ([`SyncPoint::StoreParent`]), so that the
/// new folders are there after a power cut. Nothing is synced when `dir`
/// already exists.
pub(super) fn create_dir_all_durably(fs: &dyn StoreFs, dir: &Path) -> io::Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|path| !path.as_os_str().is_empty()) {
        if fs.exists(path)? {
            break;
        }
        missing.push(path.to_path_buf());
        at = path.parent();
    }
    for path in missing.iter().rev() {
        if create_dir_if_missing(fs, path)? {
            let parent = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            fs.sync_dir(parent, SyncPoint::StoreParent)?;
        }
    }
    Ok(())
}
