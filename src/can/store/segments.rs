//! Pack segments: where the bytes of small assets live on disk.
//!
//! A small asset (up to the store's packed limit,
//! [`INLINE_LIMIT`](super::INLINE_LIMIT) by default) is not a file of its
//! own and not a row of the database: its bytes are appended to a segment,
//! `DIR/packs/<id>` (16 hex digits), a file written once, in order, up to a
//! bounded size ([`SEGMENT_BYTES`]). The database records only where a value
//! is, a [`Location`] (segment, offset, length), so each value is written
//! once and a batch of them costs one fdatasync of the segment beside the
//! commit, without the half-empty B-tree leaves that values of about a page
//! leave as rows.
//!
//! The writer thread ([`writer`](super::writer)) owns the one
//! [`SegmentWriter`]. For each group it appends the new values, then, while
//! it finishes the transaction, writes them out and fdatasyncs the segment
//! ([`SyncPoint::SegmentFile`]), syncs `packs/` when a segment file was made
//! ([`SyncPoint::PacksFolder`]), and records the end of every segment it
//! wrote in the same transaction as the records that point into them. So:
//! - a record never points past what is durable in its segment;
//! - bytes past a segment's recorded end belong to no commit (a group cut by
//!   a crash, whose transaction failed, or that the writer abandoned to apply
//!   it again): opening, or the next group after a failure or an abandon
//!   (at its first append, or at its sync when it appends nothing), cuts the
//!   open segment back to its recorded end and removes any newer segment
//!   file, so they are written over and never served, and never recorded;
//! - a segment is sealed when the next value would take it past its bound;
//!   a sealed segment never changes again, which makes it the unit that can
//!   move elsewhere (object storage) whole.
//!
//! Readers ([`SegmentReader`]) read a value by position (pread) from a
//! handle per segment; nothing on the read path goes through the writer.
//!
//! The seam: the index (the database) knows [`Location`]s, never paths or
//! files. Only this module knows that a segment is a file in `packs/`, so a
//! sealed segment can live elsewhere behind the same [`SegmentReader::read`].

use std::collections::HashMap;
use std::io::{self, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt as _;

use super::fs::{create_dir_if_missing, StoreFile, StoreFs, SyncPoint};
use super::objects::{ObjectError, Objects};
use crate::can::CanError;

/// The size a segment is sealed at: a value that would take it further goes
/// to a new segment. Large enough that a store of millions of small assets
/// has thousands of segments, not millions of files; small enough to move
/// one to object storage as a single upload (PERFORMANCE.md, issue 22).
pub const SEGMENT_BYTES: u64 = 128 * 1024 * 1024;

/// The folder of the segments, in the store folder.
pub(super) const PACKS_DIR: &str = "packs";

/// Appended bytes are handed to the file in writes of about this size, so
/// a group of thousands of small values costs a few system calls.
const WRITE_BUFFER: usize = 1024 * 1024;

/// Read handles kept open at once; beyond it they are dropped and reopened
/// as needed, so a store of many segments holds few descriptors.
const OPEN_HANDLES: usize = 64;

/// Where a value is: its segment, its offset in it and its length. The
/// database keeps it as 20 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub(super) segment: u64,
    pub(super) offset: u64,
    pub(super) len: u32,
}

impl Location {
    /// [segment u64 BE][offset u64 BE][len u32 BE].
    pub(super) fn encode(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..16].copy_from_slice(&self.offset.to_be_bytes());
        out[16..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub(super) fn decode(bytes: [u8; 20]) -> Self {
        let word = |at: usize| -> [u8; 8] { bytes[at..at + 8].try_into().expect("8 bytes") };
        Self {
            segment: u64::from_be_bytes(word(0)),
            offset: u64::from_be_bytes(word(8)),
            len: u32::from_be_bytes(bytes[16..].try_into().expect("4 bytes")),
        }
    }
}

/// What went wrong with a segment.
#[derive(Debug, thiserror::Error)]
pub(super) enum SegmentError {
    /// A file operation on a segment failed.
    #[error("pack segment {segment:016x}: {source}")]
    Io {
        segment: u64,
        #[source]
        source: io::Error,
    },
    /// The folder of the segments could not be made or synced.
    #[error("{PACKS_DIR}/: {0}")]
    Folder(#[source] io::Error),
    /// A value larger than a location can name.
    #[error("a value of {0} bytes is too large for a pack segment")]
    TooLarge(usize),
}

impl SegmentError {
    /// True when the segment or the bytes asked for are not there: the
    /// value is missing, not the store broken.
    pub(super) fn is_missing(&self) -> bool {
        matches!(self, Self::Io { source, .. } if matches!(
            source.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
        ))
    }
}

impl From<SegmentError> for CanError {
    fn from(err: SegmentError) -> Self {
        Self::Storage(err.to_string())
    }
}

pub(super) fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016x}"))
}

/// The number of the segment whose file is named `name` (see
/// [`segment_path`]); `None` for a name no segment has.
pub(super) fn segment_of_name(name: &str) -> Option<u64> {
    if name.len() != 16 {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

/// Bytes of the pack segments that no commit points into: past the open
/// segment's recorded end, or in a segment file newer than it.
///
/// A group cut short before its commit leaves them, and opening a store to
/// write cuts them (the segment writer's `open`). A database older than its
/// segments (put back from a backup) leaves them too, and then they are the
/// values written since: so a store opened only to be read leaves them
/// where they are, and `fsck` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unrecorded {
    /// The segment's number (its file is `packs/` and the number in 16 hex
    /// digits).
    pub segment: u64,
    /// Bytes of it that no commit points into.
    pub bytes: u64,
    /// True when no commit points into the segment at all (a file newer
    /// than the open one, or an open one with nothing recorded).
    pub whole_file: bool,
}

/// The [`Unrecorded`] bytes of the segments in `dir`, read without changing
/// anything, in segment order: the open segment's bytes past
/// `committed.end`, and every newer file. Newer files are found by listing
/// the folder, not by counting on from the open one, since the numbers
/// between may be gone (moved to object storage, or removed by hand).
pub(super) fn unrecorded(
    fs: &dyn StoreFs,
    dir: &Path,
    committed: Committed,
) -> Result<Vec<Unrecorded>, SegmentError> {
    let names = match fs.list(dir) {
        Ok(names) => names,
        Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(SegmentError::Folder(err)),
    };
    let mut segments: Vec<u64> = names
        .iter()
        .filter_map(|name| segment_of_name(name))
        .filter(|&segment| segment >= committed.segment)
        .collect();
    segments.sort_unstable();
    let mut found = Vec::new();
    for segment in segments {
        let len = fs
            .open(&segment_path(dir, segment))
            .and_then(|file| file.len())
            .map_err(SegmentWriter::io(segment))?;
        let recorded = if segment == committed.segment {
            committed.end
        } else {
            0
        };
        if len > recorded {
            found.push(Unrecorded {
                segment,
                bytes: len - recorded,
                whole_file: recorded == 0,
            });
        }
    }
    Ok(found)
}

/// The open segment and where its recorded end is, as the database says it
/// after the last commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Committed {
    pub(super) segment: u64,
    pub(super) end: u64,
}

impl Committed {
    /// A store with no segment yet: the first is 1, made at the first value.
    pub(super) const EMPTY: Self = Self { segment: 1, end: 0 };
}

/// Makes `DIR/packs/` if missing; the caller syncs `DIR`.
pub(super) fn create_packs_dir(fs: &dyn StoreFs, store_dir: &Path) -> Result<PathBuf, CanError> {
    let dir = store_dir.join(PACKS_DIR);
    create_dir_if_missing(fs, &dir).map_err(SegmentError::Folder)?;
    Ok(dir)
}

/// A segment sealed in the group being built: synced before the commit.
struct Sealed {
    segment: u64,
    file: Box<dyn StoreFile>,
    end: u64,
}

/// The writer thread's end of the segments: appends, syncs, and cuts back
/// what no commit kept.
pub(super) struct SegmentWriter {
    fs: Arc<dyn StoreFs>,
    dir: PathBuf,
    /// The size segments are sealed at.
    max_bytes: u64,
    /// As the database recorded it at the last commit.
    committed: Committed,
    /// The segment values are appended to.
    open: u64,
    /// Its file, once made or opened.
    file: Option<Box<dyn StoreFile>>,
    /// Bytes of `open` handed to its file.
    written: u64,
    /// Bytes appended after `written`, not yet handed to the file.
    buffer: Vec<u8>,
    /// Segments sealed in the group being built.
    sealed: Vec<Sealed>,
    /// A segment file was made in the group being built: `packs/` owes a
    /// sync before the commit.
    made_file: bool,
    /// The last group failed or was abandoned: before appending or syncing
    /// again, what it wrote is cut back to `committed`.
    dirty: bool,
    /// The last group was abandoned, not failed: its cut is expected and
    /// not worth a warning.
    cut_expected: bool,
}

impl SegmentWriter {
    /// The segments in `dir` (`packs/`), at the state `committed` the
    /// database recorded: the open segment is cut back to its recorded end
    /// and newer segment files, which no commit points into, are removed.
    /// An open segment shorter than its recorded end, or gone, lost bytes a
    /// record points at (a damaged disk, or a file removed behind the
    /// store's back): it is left as it is, for `fsck` to name what it lost,
    /// and values go to the next segment.
    pub(super) fn open(
        fs: Arc<dyn StoreFs>,
        dir: PathBuf,
        committed: Committed,
        max_bytes: u64,
    ) -> Result<Self, SegmentError> {
        let mut writer = Self {
            fs,
            dir,
            max_bytes,
            committed,
            open: committed.segment,
            file: None,
            written: 0,
            buffer: Vec::new(),
            sealed: Vec::new(),
            made_file: false,
            dirty: true,
            cut_expected: false,
        };
        writer.recover()?;
        Ok(writer)
    }

    fn io(segment: u64) -> impl Fn(io::Error) -> SegmentError {
        move |source| SegmentError::Io { segment, source }
    }

    /// Brings the files back to the committed state (see [`Self::open`]).
    fn recover(&mut self) -> Result<(), SegmentError> {
        let Committed { segment, end } = self.committed;
        self.sealed.clear();
        self.buffer.clear();
        self.file = None;
        self.made_file = false;
        let mut newer = segment + 1;
        loop {
            let path = segment_path(&self.dir, newer);
            match self.fs.remove_file(&path) {
                Ok(()) => {
                    if !self.cut_expected {
                        tracing::warn!(
                            segment = newer,
                            "removed a pack segment no commit points into (written by a group cut before its commit)"
                        );
                    }
                    newer += 1;
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => break,
                Err(err) => return Err(Self::io(newer)(err)),
            }
        }
        let path = segment_path(&self.dir, segment);
        let found = match self.fs.open_rw(&path) {
            Ok(file) => Some(file),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(Self::io(segment)(err)),
        };
        match found {
            Some(mut file) => {
                let len = file.len().map_err(Self::io(segment))?;
                if len < end {
                    tracing::error!(
                        segment,
                        len,
                        recorded = end,
                        "a pack segment is shorter than its recorded end: values in it are lost; run fsck"
                    );
                    self.open = segment + 1;
                    self.written = 0;
                } else {
                    if len > end {
                        // No sync: the next group's fdatasync makes the cut
                        // durable with its own bytes, and until then bytes
                        // past the end are cut again at every open.
                        if !self.cut_expected {
                            tracing::warn!(
                                segment,
                                cut = len - end,
                                recorded = end,
                                "cut bytes past a pack segment's recorded end (written by a group cut before its commit)"
                            );
                        }
                        file.set_len(end).map_err(Self::io(segment))?;
                    }
                    file.seek(io::SeekFrom::Start(end))
                        .map_err(Self::io(segment))?;
                    self.open = segment;
                    self.file = Some(file);
                    self.written = end;
                }
            }
            None if end == 0 => {
                self.open = segment;
                self.written = 0;
            }
            None => {
                tracing::error!(
                    segment,
                    recorded = end,
                    "a pack segment is missing: values in it are lost; run fsck"
                );
                self.open = segment + 1;
                self.written = 0;
            }
        }
        self.dirty = false;
        self.cut_expected = false;
        Ok(())
    }

    /// Where the next appended byte goes in the open segment.
    fn end(&self) -> u64 {
        self.written + self.buffer.len() as u64
    }

    /// Appends a value to the open segment (sealing it first when the value
    /// would take it past its bound) and returns where it is. It is durable
    /// only once [`Self::sync`] returned.
    pub(super) fn append(&mut self, data: &[u8]) -> Result<Location, SegmentError> {
        if self.dirty {
            self.recover()?;
        }
        let len = u32::try_from(data.len()).map_err(|_| SegmentError::TooLarge(data.len()))?;
        if self.end() > 0 && self.end() + u64::from(len) > self.max_bytes {
            self.seal()?;
        }
        let location = Location {
            segment: self.open,
            offset: self.end(),
            len,
        };
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= WRITE_BUFFER {
            self.write_out()?;
        }
        Ok(location)
    }

    /// Hands the buffered bytes to the open segment's file, making the file
    /// when it is the segment's first.
    fn write_out(&mut self) -> Result<(), SegmentError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let segment = self.open;
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let path = segment_path(&self.dir, segment);
                let file = match self.fs.create_new(&path) {
                    // A file no commit recorded (the open segment's is the
                    // newest one recorded): nothing points into it.
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                        self.fs.remove_file(&path).map_err(Self::io(segment))?;
                        self.fs.create_new(&path)
                    }
                    made => made,
                }
                .map_err(Self::io(segment))?;
                self.made_file = true;
                self.file.insert(file)
            }
        };
        file.write_all(&self.buffer).map_err(Self::io(segment))?;
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Seals the open segment: its bytes are written out, synced with the
    /// group, and never appended to again.
    fn seal(&mut self) -> Result<(), SegmentError> {
        self.write_out()?;
        if let Some(file) = self.file.take() {
            self.sealed.push(Sealed {
                segment: self.open,
                file,
                end: self.written,
            });
        }
        self.open += 1;
        self.written = 0;
        Ok(())
    }

    /// Makes what this group appended durable: the segments' bytes, and the
    /// entry of any segment file made. Returns the end of every segment the
    /// group wrote, for the transaction to record; empty when it wrote
    /// nothing.
    pub(super) fn sync(&mut self) -> Result<Vec<(u64, u64)>, SegmentError> {
        // A group that appended nothing after a failed or abandoned one must
        // not record what that one left.
        if self.dirty {
            self.recover()?;
        }
        self.write_out()?;
        let mut ends = Vec::with_capacity(self.sealed.len() + 1);
        for sealed in &self.sealed {
            sealed
                .file
                .sync_data(SyncPoint::SegmentFile)
                .map_err(Self::io(sealed.segment))?;
            ends.push((sealed.segment, sealed.end));
        }
        let grew = self.open != self.committed.segment || self.written != self.committed.end;
        if grew && self.written > 0 {
            let file = self.file.as_ref().expect("a segment written to has a file");
            file.sync_data(SyncPoint::SegmentFile)
                .map_err(Self::io(self.open))?;
            ends.push((self.open, self.written));
        }
        if self.made_file {
            self.fs
                .sync_dir(&self.dir, SyncPoint::PacksFolder)
                .map_err(SegmentError::Folder)?;
        }
        Ok(ends)
    }

    /// The group's transaction committed: what it wrote is the new state.
    pub(super) fn committed(&mut self) {
        self.sealed.clear();
        self.made_file = false;
        if self.written > 0 {
            self.committed = Committed {
                segment: self.open,
                end: self.written,
            };
        }
    }

    /// The group's transaction failed: what it appended is cut back before
    /// the next group appends.
    pub(super) fn failed(&mut self) {
        self.dirty = true;
    }

    /// The writer dropped the group on purpose, to apply it again (see
    /// `writer/group.rs`, `Lookups`): cut back as [`Self::failed`] does, without
    /// the warnings that bytes past the recorded end otherwise deserve.
    pub(super) fn abandoned(&mut self) {
        self.dirty = true;
        self.cut_expected = true;
    }
}

/// The readers' end of the segments: a value by its location.
pub(super) struct SegmentReader {
    fs: Arc<dyn StoreFs>,
    dir: PathBuf,
    /// Open read handles, by segment.
    handles: Mutex<HashMap<u64, Arc<dyn StoreFile>>>,
    /// Where sealed segments go once uploaded, when the store keeps them in
    /// object storage (see `offload.rs`): a value whose segment is no
    /// longer on disk is read from there, by a ranged `GET`.
    remote: Option<RemoteSegments>,
    /// Held while sealed segments are moved to object storage: the
    /// store's own task and an explicit `upload_sealed` share this reader,
    /// and two moves at once would race for one segment's file (one
    /// removes it while the other reads it to upload).
    pub(super) moving: tokio::sync::Mutex<()>,
}

/// Ranged `GET`s one [`SegmentReader::read_many`] runs at once.
const REMOTE_READS: usize = 16;

/// Values of one segment in object storage read together are fetched by
/// one `GET` when the bytes between them are at most this many (read and
/// thrown away): fewer requests for values stored side by side, as the
/// values added together are.
const COALESCE_GAP: u64 = 16 * 1024;

/// The most one coalesced `GET` fetches, so that a batch of values spread
/// over a segment does not become one read of the whole segment.
const COALESCE_SPAN: u64 = 1024 * 1024;

/// One ranged read of a remote segment and the values it serves.
#[derive(Debug, PartialEq, Eq)]
struct Span {
    segment: u64,
    range: std::ops::Range<u64>,
    /// Each value's index in the caller's list, and where it is.
    values: Vec<(usize, Location)>,
}

/// `wanted`, sorted by segment and offset, grouped into the spans to read:
/// a value joins the span before it when it is in the same segment, starts
/// at most [`COALESCE_GAP`] past the span's end, and keeps the span within
/// [`COALESCE_SPAN`] (a longer value is a span of its own).
fn coalesce(wanted: Vec<(usize, Location)>) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    for (index, at) in wanted {
        let end = at.offset + u64::from(at.len);
        if let Some(span) = spans.last_mut() {
            let joins = span.segment == at.segment
                && at.offset <= span.range.end + COALESCE_GAP
                && end.max(span.range.end) - span.range.start <= COALESCE_SPAN;
            if joins {
                span.range.end = span.range.end.max(end);
                span.values.push((index, at));
                continue;
            }
        }
        spans.push(Span {
            segment: at.segment,
            range: at.offset..end,
            values: vec![(index, at)],
        });
    }
    spans
}

/// A failed remote read as the I/O error a segment read reports: a missing
/// object is a missing value ([`SegmentError::is_missing`]).
fn remote_error(err: &ObjectError) -> io::Error {
    match err {
        ObjectError::Missing(_) => io::Error::new(io::ErrorKind::NotFound, err.to_string()),
        other => io::Error::other(other.to_string()),
    }
}

/// The sealed segments of one store in object storage.
pub(super) struct RemoteSegments {
    pub(super) objects: Arc<Objects>,
    pub(super) store_id: u64,
    /// Reads run on the blocking pool; the request runs on the runtime.
    pub(super) runtime: tokio::runtime::Handle,
}

impl SegmentReader {
    pub(super) fn new(fs: Arc<dyn StoreFs>, dir: PathBuf) -> Self {
        Self {
            fs,
            dir,
            handles: Mutex::new(HashMap::new()),
            remote: None,
            moving: tokio::sync::Mutex::new(()),
        }
    }

    /// The same reader, falling back to `remote` for a segment not on disk.
    pub(super) fn with_remote(mut self, remote: RemoteSegments) -> Self {
        self.remote = Some(remote);
        self
    }

    /// The bytes at `location`. Blocking: call it off the reactor.
    pub(super) fn read(&self, location: Location) -> Result<Bytes, SegmentError> {
        if location.len == 0 {
            // An empty asset may point into a segment no byte has made yet.
            return Ok(Bytes::new());
        }
        let segment = location.segment;
        let file = match (self.handle(segment), &self.remote) {
            (Ok(file), _) => file,
            (Err(err), Some(remote)) if err.is_missing() => {
                return Self::read_remote(remote, location)
            }
            (Err(err), _) => return Err(err),
        };
        let mut data = vec![0u8; location.len as usize];
        file.read_exact_at(&mut data, location.offset)
            .map_err(SegmentWriter::io(segment))?;
        Ok(data.into())
    }

    /// The bytes at each of `locations`, in their order: what
    /// [`Self::read`] gives for each, with the values of segments in
    /// object storage read together. A pull of many small values would
    /// otherwise wait for one ranged `GET` after another (about 5 ms each
    /// against a server on loopback: PERFORMANCE.md, "Object storage"):
    /// here values close together in one segment share one `GET`
    /// ([`COALESCE_GAP`], up to [`COALESCE_SPAN`]), and up to
    /// [`REMOTE_READS`] `GET`s run at once. Blocking: call it off the
    /// reactor.
    pub(super) fn read_many(&self, locations: &[Location]) -> Vec<Result<Bytes, SegmentError>> {
        let mut read: Vec<Option<Result<Bytes, SegmentError>>> =
            locations.iter().map(|_| None).collect();
        let mut remote_reads = Vec::new();
        for (index, &location) in locations.iter().enumerate() {
            if location.len == 0 {
                // As `read`: no file needed.
                read[index] = Some(Ok(Bytes::new()));
                continue;
            }
            match self.handle(location.segment) {
                Ok(file) => {
                    let mut data = vec![0u8; location.len as usize];
                    let done = file
                        .read_exact_at(&mut data, location.offset)
                        .map(|()| Bytes::from(data))
                        .map_err(SegmentWriter::io(location.segment));
                    read[index] = Some(done);
                }
                Err(err) if err.is_missing() && self.remote.is_some() => {
                    remote_reads.push((index, location));
                }
                Err(err) => read[index] = Some(Err(err)),
            }
        }
        if let (Some(remote), false) = (&self.remote, remote_reads.is_empty()) {
            for (index, done) in Self::read_remote_many(remote, remote_reads) {
                read[index] = Some(done);
            }
        }
        read.into_iter()
            .map(|done| done.expect("every location read"))
            .collect()
    }

    /// The values at `wanted` (their index in the caller's list, and where
    /// they are), all in segments in object storage: coalesced into spans,
    /// the spans read at most [`REMOTE_READS`] at once.
    fn read_remote_many(
        remote: &RemoteSegments,
        mut wanted: Vec<(usize, Location)>,
    ) -> Vec<(usize, Result<Bytes, SegmentError>)> {
        wanted.sort_unstable_by_key(|(_, at)| (at.segment, at.offset));
        let spans = coalesce(wanted);
        let reads = futures::stream::iter(spans)
            .map(|span| async move {
                let key = remote.objects.segment_key(remote.store_id, span.segment);
                let bytes = remote.objects.read_range(&key, span.range.clone()).await;
                (span, bytes)
            })
            .buffer_unordered(REMOTE_READS)
            .collect::<Vec<_>>();
        let mut done = Vec::new();
        for (span, bytes) in remote.runtime.block_on(reads) {
            // A value of a shared span is copied out, so that it does not
            // keep its neighbours' bytes in memory while it travels.
            let shared = span.values.len() > 1;
            for (index, at) in span.values {
                let value = match &bytes {
                    Ok(bytes) => {
                        let start = (at.offset - span.range.start) as usize;
                        match bytes.get(start..start + at.len as usize) {
                            Some(value) => Ok(bytes.slice_ref(value)),
                            None => Err(SegmentWriter::io(at.segment)(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "object shorter than recorded",
                            ))),
                        }
                    }
                    Err(err) => Err(SegmentWriter::io(at.segment)(remote_error(err))),
                };
                let value = value.map(|v| {
                    if shared {
                        Bytes::copy_from_slice(&v)
                    } else {
                        v
                    }
                });
                done.push((index, value));
            }
        }
        done
    }

    /// The bytes at `location` of a segment uploaded and gone from disk.
    fn read_remote(remote: &RemoteSegments, location: Location) -> Result<Bytes, SegmentError> {
        let key = remote
            .objects
            .segment_key(remote.store_id, location.segment);
        let range = location.offset..location.offset + u64::from(location.len);
        let read = remote
            .runtime
            .block_on(remote.objects.read_range(&key, range))
            .map_err(|err| match err {
                ObjectError::Missing(_) => io::Error::new(io::ErrorKind::NotFound, err),
                other => io::Error::other(other),
            })
            .map_err(SegmentWriter::io(location.segment))?;
        if read.len() != location.len as usize {
            let short =
                io::Error::new(io::ErrorKind::UnexpectedEof, "object shorter than recorded");
            return Err(SegmentWriter::io(location.segment)(short));
        }
        Ok(read)
    }

    /// Forgets the read handle of `segment`, whose file was removed once
    /// uploaded: its disk space is freed when the last read of it ends.
    pub(super) fn forget(&self, segment: u64) {
        self.handles
            .lock()
            .expect("segment handles lock")
            .remove(&segment);
    }

    fn handle(&self, segment: u64) -> Result<Arc<dyn StoreFile>, SegmentError> {
        let mut handles = self.handles.lock().expect("segment handles lock");
        if let Some(file) = handles.get(&segment) {
            return Ok(file.clone());
        }
        let file: Arc<dyn StoreFile> = self
            .fs
            .open(&segment_path(&self.dir, segment))
            .map_err(SegmentWriter::io(segment))?
            .into();
        if handles.len() >= OPEN_HANDLES {
            handles.clear();
        }
        handles.insert(segment, file.clone());
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fs::RealFs;
    use super::*;

    fn writer(dir: &Path, committed: Committed, max: u64) -> SegmentWriter {
        SegmentWriter::open(Arc::new(RealFs), dir.to_path_buf(), committed, max).unwrap()
    }

    /// Values read back from where they were appended, across a seal; the
    /// ends returned are those of every segment written, and a sealed
    /// segment is never written again.
    #[test]
    fn values_read_back_and_segments_seal_at_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut segments = writer(dir.path(), Committed::EMPTY, 10);
        let a = segments.append(b"abcdef").unwrap();
        let b = segments.append(b"ghijk").unwrap();
        assert_eq!((a.segment, a.offset, b.segment, b.offset), (1, 0, 2, 0));
        assert_eq!(segments.sync().unwrap(), vec![(1, 6), (2, 5)]);
        segments.committed();
        let reader = SegmentReader::new(Arc::new(RealFs), dir.path().to_path_buf());
        assert_eq!(reader.read(a).unwrap(), &b"abcdef"[..]);
        assert_eq!(reader.read(b).unwrap(), &b"ghijk"[..]);
        let empty = SegmentWriter::open(
            Arc::new(RealFs),
            dir.path().join("none"),
            Committed::EMPTY,
            10,
        )
        .unwrap()
        .append(b"")
        .unwrap();
        assert_eq!(reader.read(empty).unwrap(), &b""[..], "no file needed");
        let c = segments.append(b"lm").unwrap();
        assert_eq!((c.segment, c.offset), (2, 5));
        assert_eq!(segments.sync().unwrap(), vec![(2, 7)]);
        assert_eq!(
            std::fs::read(dir.path().join(format!("{:016x}", 1))).unwrap(),
            b"abcdef"
        );
    }

    /// Many values read at once come back as one by one, in the order
    /// asked, an empty one without a file, a missing segment as missing.
    #[test]
    fn values_read_together_come_back_in_the_order_asked() {
        let dir = tempfile::tempdir().unwrap();
        let mut segments = writer(dir.path(), Committed::EMPTY, 10);
        let a = segments.append(b"abcdef").unwrap();
        let b = segments.append(b"ghijk").unwrap();
        let empty = segments.append(b"").unwrap();
        segments.sync().unwrap();
        segments.committed();
        let gone = Location {
            segment: 9,
            offset: 0,
            len: 3,
        };
        let reader = SegmentReader::new(Arc::new(RealFs), dir.path().to_path_buf());
        let read = reader.read_many(&[b, empty, gone, a]);
        assert_eq!(read[0].as_ref().unwrap(), &b"ghijk"[..]);
        assert_eq!(read[1].as_ref().unwrap(), &b""[..]);
        assert!(read[2].as_ref().unwrap_err().is_missing());
        assert_eq!(read[3].as_ref().unwrap(), &b"abcdef"[..]);
    }

    /// Values side by side in one segment share a read; a gap past the
    /// bound, another segment, or a span past its bound starts another.
    #[test]
    fn remote_reads_coalesce_values_close_together() {
        let at = |segment, offset, len| Location {
            segment,
            offset,
            len,
        };
        let spans = coalesce(vec![
            (3, at(1, 0, 100)),
            (0, at(1, 100, 100)),
            // Within the gap: read through.
            (1, at(1, 200 + COALESCE_GAP, 10)),
            // Past it.
            (2, at(1, 210 + 2 * COALESCE_GAP + 1, 10)),
            (4, at(2, 0, 10)),
            // A span may not grow past its bound.
            (5, at(2, 10, COALESCE_SPAN as u32)),
        ]);
        let shape: Vec<(u64, std::ops::Range<u64>, Vec<usize>)> = spans
            .iter()
            .map(|span| {
                let indexes = span.values.iter().map(|(index, _)| *index).collect();
                (span.segment, span.range.clone(), indexes)
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, 0..210 + COALESCE_GAP, vec![3, 0, 1]),
                (
                    1,
                    210 + 2 * COALESCE_GAP + 1..220 + 2 * COALESCE_GAP + 1,
                    vec![2]
                ),
                (2, 0..10, vec![4]),
                (2, 10..10 + COALESCE_SPAN, vec![5]),
            ]
        );
    }

    /// What no commit recorded is cut back: after a failed group, and at
    /// open (the open segment cut to its end, a newer file removed).
    #[test]
    fn what_no_commit_recorded_is_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = |segment: u64| dir.path().join(format!("{segment:016x}"));
        let mut segments = writer(dir.path(), Committed::EMPTY, 8);
        segments.append(b"kept").unwrap();
        segments.sync().unwrap();
        segments.committed();
        segments.append(b"lost").unwrap();
        segments.append(b"lost too").unwrap();
        segments.sync().unwrap();
        assert!(path(2).exists());
        segments.failed();
        let again = segments.append(b"next").unwrap();
        assert_eq!((again.segment, again.offset), (1, 4));
        assert!(!path(2).exists(), "the failed group's new segment is gone");
        assert_eq!(segments.sync().unwrap(), vec![(1, 8)]);
        drop(segments);

        std::fs::write(path(2), b"uncommitted").unwrap();
        let mut segments = writer(dir.path(), Committed { segment: 1, end: 4 }, 8);
        assert!(!path(2).exists());
        assert_eq!(std::fs::read(path(1)).unwrap(), b"kept");
        let next = segments.append(b"more").unwrap();
        assert_eq!((next.segment, next.offset), (1, 4));
    }

    /// An open segment shorter than its recorded end is left for fsck, and
    /// values go to a new one.
    #[test]
    fn a_short_open_segment_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{:016x}", 3));
        std::fs::write(&path, b"ab").unwrap();
        let mut segments = writer(dir.path(), Committed { segment: 3, end: 9 }, 100);
        let next = segments.append(b"x").unwrap();
        assert_eq!((next.segment, next.offset), (4, 0));
        assert_eq!(std::fs::read(&path).unwrap(), b"ab");
        let reader = SegmentReader::new(Arc::new(RealFs), dir.path().to_path_buf());
        let lost = reader.read(Location {
            segment: 3,
            offset: 0,
            len: 9,
        });
        assert!(lost.unwrap_err().is_missing());
    }
}
