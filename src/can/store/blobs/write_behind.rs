//! Writing one streamed blob: its chunks go to its temporary file as they
//! come, hashed and counted on the way ([`Verifier`]), while a second thread
//! starts writing back what was written, so that the final fsync has little
//! left to do. Used by [`Blobs`](super::Blobs) for a large asset's write.

use bytes::Bytes;

use super::super::fs::{StoreFile, SyncPoint};
use super::super::ranges::{Outboard, OutboardHasher};
use crate::asset::AssetHash;
use crate::can::CanError;

/// Chunks that may wait for a blob's writer thread.
pub(super) const WRITE_BEHIND_QUEUE: usize = 8;
/// Bytes written between two background flushes of a blob being written:
/// the final fsync then has at most about this much (plus what the flusher
/// has not finished) left to write, instead of the whole blob.
pub(super) const FLUSH_EVERY: u64 = 16 * 1024 * 1024;

/// Writes the chunks of one blob to `file` (its temporary file, which the
/// caller's guard removes) as they come, hashing them and checking the size
/// limit first, while a second thread flushes what was written every
/// [`FLUSH_EVERY`] bytes; at the end checks the hash and makes the file
/// durable. Returns the blob's size and outboard. Runs on the blocking pool.
pub(super) fn write_behind(
    mut file: Box<dyn StoreFile>,
    mut chunks: tokio::sync::mpsc::Receiver<Bytes>,
    mut verifier: Verifier,
) -> Result<(u64, Outboard), CanError> {
    use std::io::Write as _;

    let flushed = file.try_clone()?;
    // A flush asked while one runs is merged into the next.
    let (ask_flush, flush_asked) = std::sync::mpsc::sync_channel::<()>(1);
    let flusher = std::thread::Builder::new()
        .name("can-blob-flush".into())
        .spawn(move || -> std::io::Result<()> {
            while flush_asked.recv().is_ok() {
                flushed.write_back()?;
            }
            Ok(())
        })?;
    let written = (|| -> Result<(), CanError> {
        let mut unflushed = 0u64;
        while let Some(chunk) = chunks.blocking_recv() {
            verifier.take(&chunk)?;
            file.write_all(&chunk)?;
            unflushed += chunk.len() as u64;
            if unflushed >= FLUSH_EVERY {
                let _ = ask_flush.try_send(());
                unflushed = 0;
            }
        }
        Ok(())
    })();
    drop(ask_flush);
    let flush = flusher
        .join()
        .map_err(|_| CanError::Storage("blob flusher panicked".into()))?;
    written?;
    flush?;
    let checked = verifier.check()?;
    file.sync(SyncPoint::BlobFile)?;
    Ok(checked)
}

/// Hashes and counts a blob's bytes as they stream in, keeping its outboard
/// on the way (at the cost of hashing it: [`OutboardHasher`]).
pub(super) struct Verifier {
    /// The hash the bytes were offered under.
    expected: AssetHash,
    hasher: OutboardHasher,
    /// Bytes taken so far.
    size: u64,
    /// The most bytes accepted.
    max_bytes: u64,
}

impl Verifier {
    pub(super) fn new(expected: AssetHash, max_bytes: u64) -> Self {
        Self {
            expected,
            hasher: OutboardHasher::default(),
            size: 0,
            max_bytes,
        }
    }

    /// Takes the next chunk; refuses it when it carries the blob over the limit.
    pub(super) fn take(&mut self, chunk: &[u8]) -> Result<(), CanError> {
        self.size += chunk.len() as u64;
        if self.size > self.max_bytes {
            return Err(CanError::TooLarge {
                size: self.size,
                limit: self.max_bytes,
            });
        }
        self.hasher.update(chunk);
        Ok(())
    }

    /// Checks, once every chunk was taken, that the bytes hash to the hash
    /// they were offered under; their size and outboard.
    pub(super) fn check(self) -> Result<(u64, Outboard), CanError> {
        let (actual, outboard) = self.hasher.finalize();
        if actual != self.expected {
            return Err(CanError::HashMismatch {
                expected: self.expected,
                actual,
            });
        }
        Ok((self.size, outboard))
    }
}
