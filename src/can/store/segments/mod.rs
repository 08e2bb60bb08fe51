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
//! The writer is in `writer.rs`, the readers in `reader.rs`.
//!
//! The seam: the index (the database) knows [`Location`]s, never paths or
//! files. Only this module knows that a segment is a file in `packs/`, so a
//! sealed segment can live elsewhere behind the same [`SegmentReader::read`].

mod reader;
mod writer;

use std::io;
use std::path::{Path, PathBuf};

use super::fs::{create_dir_if_missing, list_if_there, StoreFs};
use crate::can::CanError;
pub(super) use reader::{RemoteSegments, SegmentReader};
pub(super) use writer::SegmentWriter;

/// The size a segment is sealed at: a value that would take it further goes
/// to a new segment. Large enough that a store of millions of small assets
/// has thousands of segments, not millions of files; small enough to move
/// one to object storage as a single upload (PERFORMANCE.md, issue 22).
pub const SEGMENT_BYTES: u64 = 128 * 1024 * 1024;

/// The folder of the segments, in the store folder.
pub(super) const PACKS_DIR: &str = "packs";

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
    /// The error of an I/O operation on `segment`, for `map_err`.
    pub(super) fn at(segment: u64) -> impl Fn(io::Error) -> Self {
        move |source| Self::Io { segment, source }
    }

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
    let names = list_if_there(fs, dir).map_err(SegmentError::Folder)?;
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
            .map_err(SegmentError::at(segment))?;
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

#[cfg(test)]
mod tests;
