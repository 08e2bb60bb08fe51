//! The writer thread's end of the pack segments ([`SegmentWriter`]): it
//! appends a group's values, syncs them before the commit that records
//! them, seals a segment at its bound, and cuts back what no commit kept.

use std::io::{self, Seek as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use super::{segment_path, Committed, Location, SegmentError};
use crate::can::store::fs::{StoreFile, StoreFs, SyncPoint};

/// Appended bytes are handed to the file in writes of about this size, so
/// a group of thousands of small values costs a few system calls.
const WRITE_BUFFER: usize = 1024 * 1024;

/// A segment sealed in the group being built: synced before the commit.
struct Sealed {
    segment: u64,
    file: Box<dyn StoreFile>,
    end: u64,
}

/// The writer thread's end of the segments: appends, syncs, and cuts back
/// what no commit kept.
pub(in crate::can::store) struct SegmentWriter {
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
    pub(in crate::can::store) fn open(
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
                Err(err) => return Err(SegmentError::at(newer)(err)),
            }
        }
        let path = segment_path(&self.dir, segment);
        let found = match self.fs.open_rw(&path) {
            Ok(file) => Some(file),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(SegmentError::at(segment)(err)),
        };
        match found {
            Some(mut file) => {
                let len = file.len().map_err(SegmentError::at(segment))?;
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
                        file.set_len(end).map_err(SegmentError::at(segment))?;
                    }
                    file.seek(io::SeekFrom::Start(end))
                        .map_err(SegmentError::at(segment))?;
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
    pub(in crate::can::store) fn append(&mut self, data: &[u8]) -> Result<Location, SegmentError> {
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
                        self.fs
                            .remove_file(&path)
                            .map_err(SegmentError::at(segment))?;
                        self.fs.create_new(&path)
                    }
                    made => made,
                }
                .map_err(SegmentError::at(segment))?;
                self.made_file = true;
                self.file.insert(file)
            }
        };
        file.write_all(&self.buffer)
            .map_err(SegmentError::at(segment))?;
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
    pub(in crate::can::store) fn sync(&mut self) -> Result<Vec<(u64, u64)>, SegmentError> {
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
                .map_err(SegmentError::at(sealed.segment))?;
            ends.push((sealed.segment, sealed.end));
        }
        let grew = self.open != self.committed.segment || self.written != self.committed.end;
        if grew && self.written > 0 {
            let file = self.file.as_ref().expect("a segment written to has a file");
            file.sync_data(SyncPoint::SegmentFile)
                .map_err(SegmentError::at(self.open))?;
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
    pub(in crate::can::store) fn committed(&mut self) {
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
    pub(in crate::can::store) fn failed(&mut self) {
        self.dirty = true;
    }

    /// The writer dropped the group on purpose, to apply it again (see
    /// `writer/group.rs`, `Lookups`): cut back as [`Self::failed`] does, without
    /// the warnings that bytes past the recorded end otherwise deserve.
    pub(in crate::can::store) fn abandoned(&mut self) {
        self.dirty = true;
        self.cut_expected = true;
    }
}
