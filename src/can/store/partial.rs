//! Blobs still being written: their temporary files and the disk they may
//! take.
//!
//! A peer may declare an asset of up to
//! [`max_asset_bytes`](super::StoreLimits::max_asset_bytes), stream part of
//! it, reset the stream and start again. Two things keep that from filling
//! the disk:
//!
//! - [`PartialFile`]: a blob's temporary file in `DIR/tmp/` is removed as
//!   soon as its transfer fails *or is dropped* (a cancelled push, a reset
//!   stream), not at the store's next open. It is created on the caller's
//!   thread, so no cancellation can fall between the file's creation and
//!   the guard that removes it, and it is removed on the dropping thread,
//!   so the removal has happened once the drop returns.
//! - [`PartialQuota`]: the bytes of every transfer in flight together stay
//!   within [`max_partial_bytes`](super::StoreLimits::max_partial_bytes).
//!   Each chunk is counted before it is written; the chunk that would cross
//!   the quota fails its transfer (whose file is then removed) and the
//!   bytes a transfer counted are given back when it ends, whole or not.
//!
//! Together: what unfinished transfers hold on disk is bounded by the quota
//! at any moment, however often they are started and cut.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::fs::{StoreFile, StoreFs};
use crate::can::CanError;

/// The temporary file of a blob being written: removed when dropped, unless
/// [`committed`](Self::committed) (renamed to its hash's name) first.
pub(super) struct PartialFile {
    /// The file system it is on, to remove it from.
    fs: Arc<dyn StoreFs>,
    path: PathBuf,
    committed: bool,
}

impl PartialFile {
    /// Creates an empty file at `path` (refusing one already there) and the
    /// guard that removes it. One blocking `open`, on purpose on the
    /// caller's thread: done on the blocking pool, a future dropped while it
    /// ran would leave a file nobody removes.
    pub(super) fn create(
        fs: Arc<dyn StoreFs>,
        path: PathBuf,
    ) -> Result<(Self, Box<dyn StoreFile>), CanError> {
        let file = fs.create_new(&path)?;
        Ok((
            Self {
                fs,
                path,
                committed: false,
            },
            file,
        ))
    }

    /// The guard of a file written elsewhere (a partial asset made whole),
    /// to be committed like a temporary file or removed.
    pub(super) fn adopt(fs: Arc<dyn StoreFs>, path: PathBuf) -> Self {
        Self {
            fs,
            path,
            committed: false,
        }
    }

    /// Where the file is.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The file was moved to its final name: nothing to remove any more.
    pub(super) fn committed(mut self) {
        self.committed = true;
    }
}

impl Drop for PartialFile {
    /// Removes the file. A blocking unlink of one file, done here rather
    /// than spawned: a drop may run where no runtime is left to spawn on,
    /// and callers (and tests) can rely on the file being gone once the
    /// transfer's future is dropped. A writer thread still holding the file
    /// open writes into an unlinked file, whose space the kernel frees when
    /// it closes it.
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        match self.fs.remove_file(&self.path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(
                path = %self.path.display(),
                %err,
                "could not remove a partial blob; it goes at the store's next open"
            ),
        }
    }
}

/// The bytes of unfinished blob transfers, across the whole store, and
/// their limit. Cheap to clone: clones share the count.
#[derive(Clone)]
pub(super) struct PartialQuota {
    counted: Arc<AtomicU64>,
    limit: u64,
    /// What frees room when the quota is full: drops one idle partial
    /// asset (`resume/`), false when there is none.
    evictor: Arc<OnceLock<Evictor>>,
}

/// Frees some of a [`PartialQuota`]; false when nothing can be freed.
pub(super) type Evictor = Box<dyn Fn() -> bool + Send + Sync>;

impl PartialQuota {
    /// A quota of `limit` bytes, none counted yet.
    pub(super) fn new(limit: u64) -> Self {
        Self {
            counted: Arc::new(AtomicU64::new(0)),
            limit,
            evictor: Arc::default(),
        }
    }

    /// Sets what frees room when the quota is full (once; later calls are
    /// ignored).
    pub(super) fn set_evictor(&self, evictor: Evictor) {
        let _ = self.evictor.set(evictor);
    }

    /// A share of the quota for one transfer, empty until it grows; given
    /// back when dropped.
    pub(super) fn share(&self) -> QuotaShare {
        QuotaShare {
            quota: self.clone(),
            bytes: 0,
        }
    }

    /// Bytes counted now, across every transfer.
    #[cfg(test)]
    pub(super) fn counted(&self) -> u64 {
        self.counted.load(Ordering::Acquire)
    }
}

/// One transfer's bytes in the [`PartialQuota`]; given back on drop.
pub(super) struct QuotaShare {
    quota: PartialQuota,
    bytes: u64,
}

impl QuotaShare {
    /// Counts `more` bytes, or refuses them when they would take the
    /// store's unfinished transfers over the quota. The refusal is
    /// [`CanError::Unavailable`]: the asset itself is acceptable, the store
    /// is busy with others, and a later try can succeed.
    pub(super) fn grow(&mut self, more: u64) -> Result<(), CanError> {
        let limit = self.quota.limit;
        let mut counted = self.quota.counted.load(Ordering::Acquire);
        loop {
            let wanted = counted.saturating_add(more);
            if wanted > limit {
                // Idle partial assets give way to transfers under way.
                if self.quota.evictor.get().is_some_and(|evict| evict()) {
                    counted = self.quota.counted.load(Ordering::Acquire);
                    continue;
                }
                return Err(CanError::Unavailable(format!(
                    "the quota for unfinished transfers (max_partial_bytes, {limit} bytes) \
                     is full: {counted} bytes are being received, {more} more refused; \
                     try again when those transfers end"
                )));
            }
            match self.quota.counted.compare_exchange_weak(
                counted,
                wanted,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.bytes += more;
                    return Ok(());
                }
                Err(now) => counted = now,
            }
        }
    }
}

impl QuotaShare {
    /// Counts `more` bytes whatever the quota: bytes already on disk (a
    /// partial asset found at open) take their share even past it.
    pub(super) fn grow_unchecked(&mut self, more: u64) {
        self.quota.counted.fetch_add(more, Ordering::AcqRel);
        self.bytes += more;
    }

    /// Gives back `less` of this share's bytes (at most all of them).
    pub(super) fn shrink(&mut self, less: u64) {
        let less = less.min(self.bytes);
        self.quota.counted.fetch_sub(less, Ordering::AcqRel);
        self.bytes -= less;
    }

    /// This share's bytes.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for QuotaShare {
    fn drop(&mut self) {
        self.quota.counted.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::super::fs::RealFs;
    use super::*;

    #[test]
    fn shares_count_until_the_quota_and_give_back_on_drop() {
        let quota = PartialQuota::new(100);
        let mut first = quota.share();
        first.grow(60).unwrap();
        let mut second = quota.share();
        second.grow(30).unwrap();
        let refused = second.grow(11).unwrap_err();
        assert!(matches!(refused, CanError::Unavailable(_)), "{refused:?}");
        assert!(
            refused.to_string().contains("max_partial_bytes"),
            "{refused}"
        );
        assert_eq!(quota.counted(), 90, "a refused grow counts nothing");
        drop(first);
        assert_eq!(quota.counted(), 30);
        second.grow(70).unwrap();
        drop(second);
        assert_eq!(quota.counted(), 0);
    }

    #[test]
    fn a_partial_file_is_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn StoreFs> = Arc::new(RealFs);
        let (dropped, _) = PartialFile::create(fs.clone(), dir.path().join("a")).unwrap();
        let (kept, _) = PartialFile::create(fs.clone(), dir.path().join("b")).unwrap();
        assert!(
            PartialFile::create(fs, dir.path().join("b")).is_err(),
            "an existing file is never reused"
        );
        drop(dropped);
        kept.committed();
        assert!(!dir.path().join("a").exists());
        assert!(dir.path().join("b").exists());
    }
}
