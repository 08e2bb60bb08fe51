//! The database file of a store opened only to be read
//! ([`EmbeddedCan::open_to_read`](super::EmbeddedCan::open_to_read)).
//!
//! redb writes to its file even when nothing is committed: its header when
//! it opens the file, its allocator state when it closes it, and a repair
//! after a crash. [`Overlaid`] is a storage backend over the file opened
//! to read: what redb reads comes from the file, what it writes stays in
//! memory and is forgotten when the database closes. So a store checked
//! or exported is left exactly as it was, and one on a read-only medium
//! (a mounted backup) opens at all. The file is locked shared, so a store
//! a running daemon holds is still refused.

use std::collections::BTreeMap;
use std::fs::TryLockError;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Mutex;

use redb::{DatabaseError, StorageBackend};

/// The unit the written bytes are kept in.
const BLOCK: u64 = 4096;

/// A file, as redb sees it, with redb's writes kept in memory.
#[derive(Debug)]
pub(super) struct Overlaid<F> {
    file: F,
    state: Mutex<Overlay>,
}

/// What redb changed, in memory.
#[derive(Debug)]
struct Overlay {
    /// The length redb sees.
    len: u64,
    /// The file's bytes from here on read as zeros: redb cut the length
    /// below them, and what it grows again must be new.
    file_until: u64,
    /// The blocks redb wrote, whole, by index.
    blocks: BTreeMap<u64, Box<[u8]>>,
}

impl Overlaid<ReadFile> {
    /// The database file at `path`, opened to read and locked shared: a
    /// store open to write elsewhere (a running daemon holds an exclusive
    /// lock) is refused, other readers share it, and a file system that
    /// grants exclusive locks only to writers (NFS) lets it in.
    pub(super) fn open(path: &Path) -> Result<Self, DatabaseError> {
        let file = std::fs::File::open(path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            )
            .into());
        }
        match file.try_lock_shared() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(DatabaseError::DatabaseAlreadyOpen),
            // As redb does where there are no locks: nothing to take.
            Err(TryLockError::Error(err)) if err.kind() == io::ErrorKind::Unsupported => {}
            Err(TryLockError::Error(err)) => return Err(err.into()),
        }
        Ok(Self::over(ReadFile(file))?)
    }
}

/// A file read by position, for [`Overlaid`], which takes every write: the
/// writes here are never made, and fail if they were.
#[derive(Debug)]
pub(super) struct ReadFile(std::fs::File);

impl StorageBackend for ReadFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(out, offset)
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(Self::read_only())
    }

    fn sync_data(&self) -> io::Result<()> {
        Err(Self::read_only())
    }

    fn write(&self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Err(Self::read_only())
    }
}

impl ReadFile {
    fn read_only() -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, "opened only to be read")
    }
}

impl<F: StorageBackend> Overlaid<F> {
    /// `file`, its writes kept in memory from now on.
    fn over(file: F) -> io::Result<Self> {
        let len = file.len()?;
        Ok(Self {
            file,
            state: Mutex::new(Overlay {
                len,
                file_until: len,
                blocks: BTreeMap::new(),
            }),
        })
    }

    /// Fills `out` with the bytes at `offset` of the file as it was, zeros
    /// from `file_until` on.
    fn read_file(&self, file_until: u64, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let from_file = file_until.saturating_sub(offset).min(out.len() as u64) as usize;
        let (stored, zeros) = out.split_at_mut(from_file);
        if !stored.is_empty() {
            self.file.read(offset, stored)?;
        }
        zeros.fill(0);
        Ok(())
    }
}

impl<F: StorageBackend> StorageBackend for Overlaid<F> {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().expect("overlay lock").len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.state.lock().expect("overlay lock");
        let end = offset + out.len() as u64;
        if end > state.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the database file",
            ));
        }
        let mut at = offset;
        while at < end {
            let block = at / BLOCK;
            let upto = ((block + 1) * BLOCK).min(end);
            let part = &mut out[(at - offset) as usize..(upto - offset) as usize];
            match state.blocks.get(&block) {
                Some(written) => {
                    let start = (at - block * BLOCK) as usize;
                    part.copy_from_slice(&written[start..start + part.len()]);
                }
                None => self.read_file(state.file_until, at, part)?,
            }
            at = upto;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state.lock().expect("overlay lock");
        if len < state.len {
            // What lies past the new end must read as zeros if it grows
            // again: drop the blocks past it, and zero the tail of the one
            // it cuts.
            let first_gone = len.div_ceil(BLOCK);
            state.blocks.split_off(&first_gone);
            if !len.is_multiple_of(BLOCK) {
                if let Some(cut) = state.blocks.get_mut(&(len / BLOCK)) {
                    cut[(len % BLOCK) as usize..].fill(0);
                }
            }
            state.file_until = state.file_until.min(len);
        }
        state.len = len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock().expect("overlay lock");
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let block = at / BLOCK;
            let upto = ((block + 1) * BLOCK).min(end);
            if !state.blocks.contains_key(&block) {
                let mut whole = vec![0u8; BLOCK as usize].into_boxed_slice();
                let known = state.len.saturating_sub(block * BLOCK).min(BLOCK) as usize;
                self.read_file(state.file_until, block * BLOCK, &mut whole[..known])?;
                state.blocks.insert(block, whole);
            }
            let written = state.blocks.get_mut(&block).expect("just made");
            let start = (at - block * BLOCK) as usize;
            written[start..start + (upto - at) as usize]
                .copy_from_slice(&data[(at - offset) as usize..(upto - offset) as usize]);
            at = upto;
        }
        state.len = state.len.max(end);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use redb::backends::InMemoryBackend;

    use super::*;

    /// One thing redb may do to its file.
    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        SetLen(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0..5 * BLOCK,
                proptest::collection::vec(any::<u8>(), 1..6000)
            )
                .prop_map(|(at, data)| Op::Write(at, data)),
            (0..6 * BLOCK).prop_map(Op::SetLen),
        ]
    }

    proptest! {
        /// Whatever redb writes and however it sets the length, it reads
        /// back what a file would hold, and the file under it is unchanged.
        #[test]
        fn reads_what_a_file_would_hold_and_leaves_the_file_alone(
            initial in proptest::collection::vec(any::<u8>(), 0..3 * BLOCK as usize),
            ops in proptest::collection::vec(op(), 1..12),
        ) {
            let file = InMemoryBackend::new();
            file.set_len(initial.len() as u64).unwrap();
            file.write(0, &initial).unwrap();
            let overlaid = Overlaid::over(file).unwrap();
            let mut model = initial.clone();
            for op in ops {
                match op {
                    Op::Write(at, data) => {
                        let end = at as usize + data.len();
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[at as usize..end].copy_from_slice(&data);
                        overlaid.write(at, &data).unwrap();
                    }
                    Op::SetLen(len) => {
                        model.resize(len as usize, 0);
                        overlaid.set_len(len).unwrap();
                    }
                }
                prop_assert_eq!(overlaid.len().unwrap(), model.len() as u64);
                let mut read = vec![0u8; model.len()];
                overlaid.read(0, &mut read).unwrap();
                prop_assert_eq!(&read, &model);
                // And read in pieces that start and end inside blocks.
                for start in (0..model.len()).step_by(1_531) {
                    let end = (start + 2_777).min(model.len());
                    let mut piece = vec![0u8; end - start];
                    overlaid.read(start as u64, &mut piece).unwrap();
                    prop_assert_eq!(&piece[..], &model[start..end]);
                }
            }
            let mut under = vec![0u8; initial.len()];
            overlaid.file.read(0, &mut under).unwrap();
            prop_assert_eq!(overlaid.file.len().unwrap(), initial.len() as u64);
            prop_assert_eq!(under, initial);
        }
    }

    /// Reading past the end fails, as a file's read does.
    #[test]
    fn a_read_past_the_end_fails() {
        let overlaid = Overlaid::over(InMemoryBackend::new()).unwrap();
        overlaid.write(0, &[1; 10]).unwrap();
        let mut out = [0u8; 11];
        let err = overlaid.read(0, &mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
