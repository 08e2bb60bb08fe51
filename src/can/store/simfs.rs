//! A simulated disk that can lose power, for the power-cut test
//! (`power.rs`): a [`StoreFs`] and a redb [`StorageBackend`] on one model
//! that keeps, for every file and folder, what a power cut would keep apart
//! from what it would lose.
//!
//! The model is POSIX read strictly, as ext4 without `auto_da_alloc` would
//! give it:
//! - a file's content (writes, length changes) becomes durable when that
//!   file is synced (fsync, fdatasync: redb's `sync_data` is one);
//! - a folder's entries (a file or folder created in it, renamed into or out
//!   of it, removed from it) become durable when that folder is synced; not
//!   when the file is, and a rename's two sides each with its own folder;
//! - a folder whose own entry is lost takes everything under it along.
//!
//! Every change is recorded, in order, as an [`Op`]. A test runs a workload
//! once, then [`Replay`]s the first `k` operations for many `k` and takes
//! the [`Disk::crash`] image at each: what was synced, plus (with
//! [`Cut::Subset`]) any subset of what was not. Each unsynced write is kept
//! or lost in page-sized pieces and each unsynced folder change on its own,
//! independently of all the others, then applied in the order they were
//! made (so of two writes to the same bytes, either may be the one kept).
//! That is the arbitrary, not the order-respecting, model: it is weaker than
//! any real file system (ext4's journal, for one, keeps metadata changes in
//! order, and an fsync there also commits the file's new entry), so every
//! state a real disk could come back with after a cut is among those it
//! makes, and an invariant that holds here holds there. A violation found
//! here is one POSIX allows, even if a given file system would spare it.
//!
//! A sync the simulation was told to skip ([`SimFs::skipping`]) does
//! nothing, as if the call were removed from the code.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex};

use redb::{Database, DatabaseError, StorageBackend};

use super::fs::{DatabaseFile, GrowthSynced, StoreFile, StoreFs, SyncPoint};

/// A file or folder of the model, by number: its place in [`Disk::nodes`].
type Ino = usize;
/// The root folder, `/`: the mount point, durable from the start.
const ROOT: Ino = 0;
/// Unsynced writes are kept or lost in pieces of this size, aligned in the
/// file: a page of the page cache, written back whole or not at all.
const PIECE: u64 = 4096;

/// One recorded change to the simulated disk.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// A new empty file (or folder) named `name` in folder `dir`; it is given
    /// the next number.
    Create {
        dir: Ino,
        name: String,
        folder: bool,
    },
    /// `from_dir/from` moved to `to_dir/to`.
    Rename {
        from_dir: Ino,
        from: String,
        to_dir: Ino,
        to: String,
    },
    /// `dir/name` removed (a folder with everything under it).
    Remove { dir: Ino, name: String },
    /// Bytes written into a file at an offset.
    Write {
        ino: Ino,
        offset: u64,
        data: Vec<u8>,
    },
    /// A file's length set (cut, or grown with zeros).
    SetLen { ino: Ino, len: u64 },
    /// A file or folder synced, at this point of the store.
    Sync { ino: Ino, point: SyncPoint },
}

/// A change to a file's content.
#[derive(Debug, Clone)]
enum FileChange {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

impl FileChange {
    fn apply(&self, content: &mut Vec<u8>) {
        match self {
            Self::Write { offset, data } => write_at(content, *offset, data),
            Self::SetLen(len) => content.resize(*len as usize, 0),
        }
    }
}

/// Writes `data` into `content` at `offset`, growing it with zeros first
/// when it is shorter.
fn write_at(content: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    let end = start + data.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[start..end].copy_from_slice(data);
}

/// A change to a folder's entries.
#[derive(Debug, Clone)]
enum DirChange {
    Link(String, Ino),
    Unlink(String),
}

impl DirChange {
    fn apply(&self, entries: &mut BTreeMap<String, Ino>) {
        match self {
            Self::Link(name, ino) => {
                entries.insert(name.clone(), *ino);
            }
            Self::Unlink(name) => {
                entries.remove(name);
            }
        }
    }
}

/// What a file or folder holds now (what reads see), what a power cut keeps
/// for sure, and the changes between the two, in order.
#[derive(Debug, Clone)]
struct Tracked<T, C> {
    now: T,
    durable: T,
    unsynced: Vec<C>,
}

impl<T: Clone, C> Tracked<T, C> {
    fn new(value: T) -> Self {
        Self {
            now: value.clone(),
            durable: value,
            unsynced: Vec::new(),
        }
    }

    fn sync(&mut self) {
        self.durable = self.now.clone();
        self.unsynced.clear();
    }
}

#[derive(Debug, Clone)]
enum Node {
    File(Tracked<Vec<u8>, FileChange>),
    Folder(Tracked<BTreeMap<String, Ino>, DirChange>),
}

/// The whole simulated disk: every file and folder ever made (whether still
/// reachable from the root or not).
#[derive(Debug, Clone)]
pub(super) struct Disk {
    nodes: Vec<Node>,
}

/// What of the unsynced changes a power cut keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cut {
    /// None: the disk comes back as it was last synced.
    Durable,
    /// Each unsynced piece of a write and each unsynced folder change kept
    /// or lost on its own, drawn from this seed.
    Subset(u64),
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Durable => write!(f, "synced state only"),
            Self::Subset(seed) => write!(f, "synced state plus unsynced subset {seed:#x}"),
        }
    }
}

/// SplitMix64: a seeded stream of bits, the same on every machine.
struct Draws(u64);

impl Draws {
    fn coin(&mut self) -> bool {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) & 1 == 1
    }
}

impl Disk {
    /// An empty disk: the root folder alone.
    pub(super) fn new() -> Self {
        Self {
            nodes: vec![Node::Folder(Tracked::new(BTreeMap::new()))],
        }
    }

    /// The disk as it comes back after a power cut now.
    pub(super) fn crash(&self, cut: Cut) -> Self {
        let mut draws = match cut {
            Cut::Durable => None,
            Cut::Subset(seed) => Some(Draws(seed)),
        };
        let mut kept = || draws.as_mut().is_some_and(Draws::coin);
        let nodes = self
            .nodes
            .iter()
            .map(|node| match node {
                Node::File(file) => {
                    let mut content = file.durable.clone();
                    for change in &file.unsynced {
                        match change {
                            FileChange::Write { offset, data } => {
                                for (at, piece) in pieces(*offset, data) {
                                    if kept() {
                                        write_at(&mut content, at, piece);
                                    }
                                }
                            }
                            FileChange::SetLen(_) => {
                                if kept() {
                                    change.apply(&mut content);
                                }
                            }
                        }
                    }
                    Node::File(Tracked::new(content))
                }
                Node::Folder(folder) => {
                    let mut entries = folder.durable.clone();
                    for change in &folder.unsynced {
                        if kept() {
                            change.apply(&mut entries);
                        }
                    }
                    Node::Folder(Tracked::new(entries))
                }
            })
            .collect();
        Self { nodes }
    }

    /// Applies one recorded change.
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Create { dir, name, folder } => {
                let ino = self.nodes.len();
                self.nodes.push(if *folder {
                    Node::Folder(Tracked::new(BTreeMap::new()))
                } else {
                    Node::File(Tracked::new(Vec::new()))
                });
                self.change_folder(*dir, DirChange::Link(name.clone(), ino));
            }
            Op::Rename {
                from_dir,
                from,
                to_dir,
                to,
            } => {
                let ino = self.entries(*from_dir)[from];
                self.change_folder(*from_dir, DirChange::Unlink(from.clone()));
                self.change_folder(*to_dir, DirChange::Link(to.clone(), ino));
            }
            Op::Remove { dir, name } => self.change_folder(*dir, DirChange::Unlink(name.clone())),
            Op::Write { ino, offset, data } => self.change_file(
                *ino,
                FileChange::Write {
                    offset: *offset,
                    data: data.clone(),
                },
            ),
            Op::SetLen { ino, len } => self.change_file(*ino, FileChange::SetLen(*len)),
            Op::Sync { ino, .. } => match &mut self.nodes[*ino] {
                Node::File(file) => file.sync(),
                Node::Folder(folder) => folder.sync(),
            },
        }
    }

    fn change_folder(&mut self, dir: Ino, change: DirChange) {
        let Node::Folder(folder) = &mut self.nodes[dir] else {
            panic!("{dir} is not a folder");
        };
        change.apply(&mut folder.now);
        folder.unsynced.push(change);
    }

    fn change_file(&mut self, ino: Ino, change: FileChange) {
        let Node::File(file) = &mut self.nodes[ino] else {
            panic!("{ino} is not a file");
        };
        change.apply(&mut file.now);
        file.unsynced.push(change);
    }

    fn entries(&self, dir: Ino) -> &BTreeMap<String, Ino> {
        match &self.nodes[dir] {
            Node::Folder(folder) => &folder.now,
            Node::File(_) => panic!("{dir} is not a folder"),
        }
    }

    fn content(&self, ino: Ino) -> io::Result<&Vec<u8>> {
        match &self.nodes[ino] {
            Node::File(file) => Ok(&file.now),
            Node::Folder(_) => Err(io::Error::other("is a folder")),
        }
    }

    fn is_folder(&self, ino: Ino) -> bool {
        matches!(self.nodes[ino], Node::Folder(_))
    }

    /// The file or folder at `path`, as reads see it now.
    fn resolve(&self, path: &Path) -> Option<Ino> {
        let mut at = ROOT;
        for part in path.components() {
            match part {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => {
                    if !self.is_folder(at) {
                        return None;
                    }
                    at = *self.entries(at).get(name.to_str()?)?;
                }
                Component::Prefix(_) | Component::ParentDir => return None,
            }
        }
        Some(at)
    }

    /// The folder `path` is in, and its name there.
    fn parent_of(&self, path: &Path) -> io::Result<(Ino, String)> {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| io::Error::other(format!("no name in {}", path.display())))?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        match self.resolve(parent) {
            Some(dir) if self.is_folder(dir) => Ok((dir, name.to_owned())),
            _ => Err(not_found(parent)),
        }
    }
}

/// The page-aligned pieces of a write of `data` at `offset`: where each
/// goes, and its bytes.
fn pieces(offset: u64, data: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at == data.len() {
            return None;
        }
        let start = offset + at as u64;
        let end = ((start / PIECE + 1) * PIECE).min(offset + data.len() as u64);
        let piece = &data[at..at + (end - start) as usize];
        at += piece.len();
        Some((start, piece))
    })
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, path.display().to_string())
}

/// The disk as it was after the first operations of a trace, moved forward
/// one operation at a time.
pub(super) struct Replay<'a> {
    trace: &'a [Op],
    disk: Disk,
    done: usize,
}

impl<'a> Replay<'a> {
    pub(super) fn new(trace: &'a [Op]) -> Self {
        Self {
            trace,
            disk: Disk::new(),
            done: 0,
        }
    }

    /// The disk after the first `count` operations (`count` at least as
    /// many as the last call's).
    pub(super) fn after(&mut self, count: usize) -> &Disk {
        assert!(count >= self.done && count <= self.trace.len());
        for op in &self.trace[self.done..count] {
            self.disk.apply(op);
        }
        self.done = count;
        &self.disk
    }
}

/// The simulated file system: a [`Disk`], every change to it recorded.
/// Clones share the disk.
#[derive(Clone)]
pub(super) struct SimFs {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<Recorded>,
    /// The sync point whose calls do nothing.
    skip: Option<SyncPoint>,
}

struct Recorded {
    disk: Disk,
    trace: Vec<Op>,
}

impl SimFs {
    /// An empty disk whose every sync works.
    pub(super) fn new() -> Self {
        Self::skipping(None)
    }

    /// An empty disk on which the syncs of `skip` do nothing.
    pub(super) fn skipping(skip: Option<SyncPoint>) -> Self {
        Self::of(Disk::new(), skip)
    }

    /// A file system on `disk` as it is (an image after a cut, say).
    pub(super) fn on(disk: Disk) -> Self {
        Self::of(disk, None)
    }

    fn of(disk: Disk, skip: Option<SyncPoint>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(Recorded {
                    disk,
                    trace: Vec::new(),
                }),
                skip,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.shared.state.lock().expect("simulated disk lock")
    }

    /// How many changes were made so far.
    pub(super) fn ops(&self) -> usize {
        self.state().trace.len()
    }

    /// Every change made so far, in order.
    pub(super) fn trace(&self) -> Vec<Op> {
        self.state().trace.clone()
    }

    /// The names in the folder at `path`; a file there is not a folder.
    pub(super) fn list(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.state();
        match state.disk.resolve(path) {
            Some(dir) if state.disk.is_folder(dir) => {
                Ok(state.disk.entries(dir).keys().cloned().collect())
            }
            Some(_) => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a folder", path.display()),
            )),
            None => Err(not_found(path)),
        }
    }

    /// The whole content of the file at `path`.
    pub(super) fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.state();
        let ino = state.disk.resolve(path).ok_or_else(|| not_found(path))?;
        state.disk.content(ino).cloned()
    }

    /// Makes the file or folder at `path` durable whatever sync point is
    /// skipped: for a test's fixtures, which stand for what an earlier
    /// process did, not for the code under test.
    pub(super) fn settle(&self, path: &Path) {
        let mut state = self.state();
        let ino = state.disk.resolve(path).expect("settled path exists");
        let point = SyncPoint::StoreFolder;
        Self::record(&mut state, Op::Sync { ino, point });
    }

    /// Applies a change and records it.
    fn record(state: &mut Recorded, op: Op) {
        state.disk.apply(&op);
        state.trace.push(op);
    }

    /// Syncs `ino`, unless `point` is the one skipped.
    fn sync(&self, ino: Ino, point: SyncPoint) {
        if self.shared.skip != Some(point) {
            Self::record(&mut self.state(), Op::Sync { ino, point });
        }
    }

    /// Creates a file or folder at `path`, refusing one already there.
    fn create(&self, path: &Path, folder: bool) -> io::Result<Ino> {
        let mut state = self.state();
        let (dir, name) = state.disk.parent_of(path)?;
        if state.disk.entries(dir).contains_key(&name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                path.display().to_string(),
            ));
        }
        Self::record(&mut state, Op::Create { dir, name, folder });
        Ok(state.disk.nodes.len() - 1)
    }

    fn remove(&self, path: &Path, folder: bool) -> io::Result<()> {
        let mut state = self.state();
        let (dir, name) = state.disk.parent_of(path)?;
        match state.disk.entries(dir).get(&name) {
            Some(&ino) if state.disk.is_folder(ino) == folder => {}
            Some(_) => return Err(io::Error::other("not of the kind removed")),
            None => return Err(not_found(path)),
        }
        Self::record(&mut state, Op::Remove { dir, name });
        Ok(())
    }

    fn file(&self, ino: Ino) -> Box<dyn StoreFile> {
        Box::new(SimFile {
            fs: self.clone(),
            ino,
            position: Arc::new(Mutex::new(0)),
        })
    }
}

impl StoreFs for SimFs {
    fn exists(&self, path: &Path) -> io::Result<bool> {
        Ok(self.state().disk.resolve(path).is_some())
    }

    fn list(&self, path: &Path) -> io::Result<Vec<String>> {
        Self::list(self, path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.create(path, true).map(drop)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.remove(path, true)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StoreFile>> {
        let ino = self.create(path, false)?;
        Ok(self.file(ino))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StoreFile>> {
        let state = self.state();
        let ino = state.disk.resolve(path).ok_or_else(|| not_found(path))?;
        state.disk.content(ino)?;
        drop(state);
        Ok(self.file(ino))
    }

    fn open_rw(&self, path: &Path) -> io::Result<Box<dyn StoreFile>> {
        self.open(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state();
        let (from_dir, from_name) = state.disk.parent_of(from)?;
        if !state.disk.entries(from_dir).contains_key(&from_name) {
            return Err(not_found(from));
        }
        let (to_dir, to_name) = state.disk.parent_of(to)?;
        let op = Op::Rename {
            from_dir,
            from: from_name,
            to_dir,
            to: to_name,
        };
        Self::record(&mut state, op);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.remove(path, false)
    }

    fn sync_dir(&self, path: &Path, point: SyncPoint) -> io::Result<()> {
        let ino = self
            .state()
            .disk
            .resolve(path)
            .ok_or_else(|| not_found(path))?;
        self.sync(ino, point);
        Ok(())
    }

    fn database(&self, path: &Path, builder: &redb::Builder) -> Result<Database, DatabaseError> {
        let found = self.state().disk.resolve(path);
        let ino = match found {
            Some(ino) => ino,
            None => self.create(path, false)?,
        };
        builder.create_with_backend(GrowthSynced(SimBackend {
            fs: self.clone(),
            ino,
        }))
    }
}

/// An open file of a [`SimFs`]: a position in it. Clones share the position,
/// as a duplicated descriptor does.
struct SimFile {
    fs: SimFs,
    ino: Ino,
    position: Arc<Mutex<u64>>,
}

impl SimFile {
    fn position(&self) -> std::sync::MutexGuard<'_, u64> {
        self.position.lock().expect("file position lock")
    }
}

impl io::Read for SimFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let state = self.fs.state();
        let content = state.disk.content(self.ino)?;
        let mut position = self.position();
        let start = (*position as usize).min(content.len());
        let count = buf.len().min(content.len() - start);
        buf[..count].copy_from_slice(&content[start..start + count]);
        *position += count as u64;
        Ok(count)
    }
}

impl io::Write for SimFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.fs.state();
        let mut position = self.position();
        let op = Op::Write {
            ino: self.ino,
            offset: *position,
            data: buf.to_vec(),
        };
        SimFs::record(&mut state, op);
        *position += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Seek for SimFile {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let len = self.len()? as i128;
        let mut position = self.position();
        let target = match to {
            io::SeekFrom::Start(at) => at as i128,
            io::SeekFrom::End(delta) => len + delta as i128,
            io::SeekFrom::Current(delta) => *position as i128 + delta as i128,
        };
        *position = u64::try_from(target).map_err(|_| io::Error::other("seek before start"))?;
        Ok(*position)
    }
}

impl StoreFile for SimFile {
    fn sync(&self, point: SyncPoint) -> io::Result<()> {
        self.fs.sync(self.ino, point);
        Ok(())
    }

    /// Nothing: a disk may write back unsynced data or not, and [`Cut`]
    /// already draws which it did.
    fn write_back(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.fs.state().disk.content(self.ino)?.len() as u64)
    }

    fn try_clone(&self) -> io::Result<Box<dyn StoreFile>> {
        Ok(Box::new(Self {
            fs: self.fs.clone(),
            ino: self.ino,
            position: self.position.clone(),
        }))
    }

    /// As [`StoreFile::sync`]: the model keeps no file metadata but the
    /// length, which fdatasync makes durable too.
    fn sync_data(&self, point: SyncPoint) -> io::Result<()> {
        self.fs.sync(self.ino, point);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        SimFs::record(&mut self.fs.state(), Op::SetLen { ino: self.ino, len });
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let state = self.fs.state();
        let content = state.disk.content(self.ino)?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let slice = content
            .get(start..start + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(slice);
        Ok(())
    }
}

/// redb's database file on a [`SimFs`], wrapped in [`GrowthSynced`] as on
/// disk.
struct SimBackend {
    fs: SimFs,
    ino: Ino,
}

impl DatabaseFile for SimBackend {
    fn sync_at(&self, point: SyncPoint) -> io::Result<()> {
        self.fs.sync(self.ino, point);
        Ok(())
    }
}

impl std::fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBackend")
            .field("ino", &self.ino)
            .finish()
    }
}

impl StorageBackend for SimBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.fs.state().disk.content(self.ino)?.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.fs.state();
        let content = state.disk.content(self.ino)?;
        let start = offset as usize;
        let slice = content
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(slice);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        SimFs::record(&mut self.fs.state(), Op::SetLen { ino: self.ino, len });
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync_at(SyncPoint::Database)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let op = Op::Write {
            ino: self.ino,
            offset,
            data: data.to_vec(),
        };
        SimFs::record(&mut self.fs.state(), op);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    /// The disk after a cut that keeps only what was synced, on a file
    /// system of its own.
    fn cut(fs: &SimFs) -> SimFs {
        let trace = fs.trace();
        let mut replay = Replay::new(&trace);
        SimFs::on(replay.after(trace.len()).crash(Cut::Durable))
    }

    fn write_file(fs: &SimFs, path: &str, data: &[u8], sync: bool) {
        let mut file = fs.create_new(Path::new(path)).unwrap();
        file.write_all(data).unwrap();
        if sync {
            file.sync(SyncPoint::BlobFile).unwrap();
        }
    }

    /// A file's bytes survive only once it is synced, and its name only
    /// once its folder is: each without the other loses something.
    #[test]
    fn a_file_needs_its_own_sync_and_its_folders() {
        let fs = SimFs::new();
        fs.create_dir(Path::new("/d")).unwrap();
        fs.sync_dir(Path::new("/"), SyncPoint::StoreParent).unwrap();
        write_file(&fs, "/d/synced", b"kept", true);
        write_file(&fs, "/d/unsynced", b"lost", false);
        assert!(!cut(&fs).exists(Path::new("/d/synced")).unwrap());

        fs.sync_dir(Path::new("/d"), SyncPoint::StoreFolder)
            .unwrap();
        let after = cut(&fs);
        assert_eq!(after.read(Path::new("/d/synced")).unwrap(), b"kept");
        assert_eq!(after.read(Path::new("/d/unsynced")).unwrap(), b"");
    }

    /// A rename is durable in the folder it enters only when that folder is
    /// synced; a folder whose own entry is lost takes what is in it along.
    #[test]
    fn renames_and_new_folders_need_their_folders_synced() {
        let fs = SimFs::new();
        for dir in ["/a", "/b"] {
            fs.create_dir(Path::new(dir)).unwrap();
        }
        fs.sync_dir(Path::new("/"), SyncPoint::StoreParent).unwrap();
        write_file(&fs, "/a/f", b"data", true);
        fs.sync_dir(Path::new("/a"), SyncPoint::StoreFolder)
            .unwrap();
        fs.rename(Path::new("/a/f"), Path::new("/b/f")).unwrap();
        let after = cut(&fs);
        assert!(after.exists(Path::new("/a/f")).unwrap());
        assert!(!after.exists(Path::new("/b/f")).unwrap());
        fs.sync_dir(Path::new("/b"), SyncPoint::ShardFolder)
            .unwrap();
        assert_eq!(cut(&fs).read(Path::new("/b/f")).unwrap(), b"data");

        fs.create_dir(Path::new("/b/new")).unwrap();
        write_file(&fs, "/b/new/g", b"g", true);
        fs.sync_dir(Path::new("/b/new"), SyncPoint::ShardFolder)
            .unwrap();
        assert!(!cut(&fs).exists(Path::new("/b/new/g")).unwrap());
    }

    /// A skipped sync point does nothing; others still work.
    #[test]
    fn a_skipped_sync_point_does_nothing() {
        let fs = SimFs::skipping(Some(SyncPoint::BlobFile));
        write_file(&fs, "/f", b"data", true);
        fs.sync_dir(Path::new("/"), SyncPoint::StoreFolder).unwrap();
        assert_eq!(cut(&fs).read(Path::new("/f")).unwrap(), b"");
    }

    /// A subset cut keeps unsynced writes in whole pages, some and not
    /// others, the same ones for the same seed; reads and seeks see the
    /// latest writes whatever was synced.
    #[test]
    fn a_subset_cut_keeps_whole_pages_of_unsynced_writes() {
        let fs = SimFs::new();
        write_file(&fs, "/f", &[1u8; 3 * PIECE as usize], true);
        fs.sync_dir(Path::new("/"), SyncPoint::StoreFolder).unwrap();
        let mut file = fs.open(Path::new("/f")).unwrap();
        let mut writer = file.try_clone().unwrap();
        writer.write_all(&[2u8; 3 * PIECE as usize]).unwrap();
        file.seek(io::SeekFrom::Start(PIECE - 1)).unwrap();
        let mut two = [0u8; 2];
        file.read_exact(&mut two).unwrap();
        assert_eq!(two, [2, 2]);

        let trace = fs.trace();
        let mut replay = Replay::new(&trace);
        let disk = replay.after(trace.len());
        let pages = |cut: Cut| -> Vec<u8> {
            let image = SimFs::on(disk.crash(cut));
            let content = image.read(Path::new("/f")).unwrap();
            assert_eq!(content.len(), 3 * PIECE as usize);
            let pages: Vec<u8> = content.chunks(PIECE as usize).map(|p| p[0]).collect();
            for (page, first) in content.chunks(PIECE as usize).zip(&pages) {
                assert!(page.iter().all(|b| b == first), "a page is kept whole");
            }
            pages
        };
        assert_eq!(pages(Cut::Durable), [1, 1, 1]);
        let drawn: Vec<Vec<u8>> = (0..16).map(|seed| pages(Cut::Subset(seed))).collect();
        assert!(drawn.iter().any(|p| p.contains(&1) && p.contains(&2)));
        assert_eq!(drawn[3], pages(Cut::Subset(3)));
    }
}
