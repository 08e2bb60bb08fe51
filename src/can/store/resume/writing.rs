//! One transfer writing groups of a partial asset ([`Writing`]), the
//! background write-back of its data file ([`Flusher`]), and a whole asset
//! on its way into the store ([`Completing`]). Everything here blocks: it
//! runs on the store's blocking threads.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::{remove_quietly, Entry, Partials, STATE_EVERY, STATE_MAGIC};
use crate::can::store::partial::QuotaShare;
use crate::can::store::ranges::{group_range, GroupSet, Outboard};
use crate::can::CanError;
use crate::clock::now_ms;

/// One transfer writing groups of a partial asset. Blocking calls; dropped
/// unfinished, it saves its state and puts the asset back as idle.
pub(in crate::can::store) struct Writing {
    pub(super) partials: Arc<Partials>,
    pub(super) outboard: Arc<Outboard>,
    pub(super) file: File,
    pub(super) held: GroupSet,
    pub(super) share: QuotaShare,
    /// Groups written since the state was last saved.
    pub(super) unsaved: u64,
    /// When a group was last written: what expiry counts from.
    pub(super) written_ms: i64,
    /// Whole and handed over: nothing to put back.
    pub(super) finished: bool,
    /// Writes back what was written while the next groups come.
    pub(super) flusher: Flusher,
    /// Bytes held, shared with the asset's entry for `status`.
    pub(super) progress: Arc<AtomicU64>,
}

/// Writes back a partial asset's data file on a thread of its own, every
/// [`STATE_EVERY`] groups, so that the sync that completes the asset has
/// little left to do (as a streamed blob's writer does, `blobs.rs`), and
/// the page cache does not fill with a large asset's dirty pages. Not a
/// durability point: what a state claims is verified when resumed anyway.
pub(super) struct Flusher {
    ask: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    pub(super) fn new(file: &File) -> io::Result<Self> {
        let file = file.try_clone()?;
        // An ask while one runs is merged into the next.
        let (ask, asked) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("can-partial-flush".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    // Only spares the final sync work: a failure here shows
                    // there, where it fails the transfer.
                    if let Err(err) = file.sync_data() {
                        tracing::debug!(%err, "background write-back failed");
                    }
                }
            })?;
        Ok(Self {
            ask: Some(ask),
            thread: Some(thread),
        })
    }

    fn ask(&self) {
        if let Some(ask) = &self.ask {
            let _ = ask.try_send(());
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.ask.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writing {
    /// Whether every group is held.
    pub(in crate::can::store) fn is_whole(&self) -> bool {
        self.held.is_full()
    }

    /// Groups held and in all.
    pub(in crate::can::store) fn progress(&self) -> (u64, u64) {
        (self.held.held(), self.held.groups())
    }

    /// Verifies group `index` and writes it. A group held already is
    /// verified and skipped. A group that does not verify is refused
    /// ([`CanError::BadRange`]) and nothing of it written.
    pub(in crate::can::store) fn write_group(
        &mut self,
        index: u64,
        data: &Bytes,
    ) -> Result<(), CanError> {
        self.outboard.verify_group(index, data)?;
        if self.held.contains(index) {
            return Ok(());
        }
        let len = data.len() as u64;
        // Idle partial assets give way first (the quota's evictor).
        self.share.grow(len)?;
        let start = group_range(self.outboard.size(), index).start;
        if let Err(err) = self.file.write_all_at(data, start) {
            self.share.shrink(len);
            return Err(err.into());
        }
        self.held.insert(index);
        self.progress.fetch_add(len, Ordering::Relaxed);
        self.written_ms = now_ms();
        self.unsaved += 1;
        if self.unsaved >= STATE_EVERY {
            self.flusher.ask();
            self.save_state()?;
        }
        Ok(())
    }

    /// Rewrites the state file: what is held now.
    fn save_state(&mut self) -> Result<(), CanError> {
        let hash = self.outboard.hash();
        let cvs = self.outboard.encoded_cvs();
        let mut raw = Vec::with_capacity(32 + cvs.len() + self.held.groups() as usize / 8 + 8);
        raw.extend_from_slice(STATE_MAGIC);
        raw.extend_from_slice(&self.outboard.size().to_le_bytes());
        raw.extend_from_slice(&self.written_ms.to_le_bytes());
        raw.extend_from_slice(&(cvs.len() as u64).to_le_bytes());
        raw.extend_from_slice(&cvs);
        raw.extend_from_slice(&self.held.encode());
        let path = self.partials.state_path(&hash);
        let fresh = path.with_extension("state-new");
        std::fs::write(&fresh, &raw)?;
        std::fs::rename(&fresh, &path)?;
        self.unsaved = 0;
        Ok(())
    }

    /// The asset is whole: cuts its data file to its size, syncs it and
    /// hands it over, to be renamed to its hash's name and committed. The
    /// asset stays busy, its state and its share of the quota kept, until
    /// [`Completing::committed`]; dropped before, it is put back whole.
    pub(in crate::can::store) fn into_whole(mut self) -> Result<Completing, CanError> {
        debug_assert!(self.is_whole());
        // A size once claimed larger may have left bytes past the end.
        self.file.set_len(self.outboard.size())?;
        self.file.sync_all()?;
        self.save_state()?;
        self.finished = true;
        let share = std::mem::replace(&mut self.share, self.partials.quota.share());
        Ok(Completing {
            partials: self.partials.clone(),
            path: self.partials.data_path(&self.outboard.hash()),
            outboard: self.outboard.clone(),
            share: Some(share),
            written_ms: self.written_ms,
        })
    }
}

/// A whole partial asset on its way into the store: its data file is at
/// [`path`](Self::path) until renamed. Dropped uncommitted, the asset is put
/// back as an idle partial asset that lacks nothing (the next transfer of
/// it completes at once), or forgotten if its file was moved already.
pub(in crate::can::store) struct Completing {
    partials: Arc<Partials>,
    path: PathBuf,
    outboard: Arc<Outboard>,
    share: Option<QuotaShare>,
    written_ms: i64,
}

impl Completing {
    /// The whole data file.
    pub(in crate::can::store) fn path(&self) -> &Path {
        &self.path
    }

    /// The asset's outboard.
    pub(in crate::can::store) fn outboard(&self) -> &Outboard {
        &self.outboard
    }

    /// The asset is committed: its state goes, and its share of the quota
    /// is given back.
    pub(in crate::can::store) fn committed(mut self) {
        let hash = self.outboard.hash();
        remove_quietly(&self.partials.state_path(&hash));
        self.partials.release(hash, None);
        self.share = None;
    }
}

impl Drop for Completing {
    fn drop(&mut self) {
        let Some(share) = self.share.take() else {
            return;
        };
        let hash = self.outboard.hash();
        if self.path.exists() {
            let entry = Entry {
                outboard: self.outboard.clone(),
                held: {
                    let mut all = GroupSet::empty(self.outboard.groups());
                    (0..self.outboard.groups()).for_each(|index| all.insert(index));
                    all
                },
                written_ms: self.written_ms,
                busy: false,
                checked: true,
                share,
                progress: Arc::new(AtomicU64::new(self.outboard.size())),
            };
            self.partials.release(hash, Some(entry));
        } else {
            // Renamed into the store: an unlisted blob the next push adopts.
            remove_quietly(&self.partials.state_path(&hash));
            self.partials.release(hash, None);
        }
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let hash = self.outboard.hash();
        if self.held.held() == 0 {
            self.partials.remove_files_of_stem(&hash.to_hex());
            self.partials.release(hash, None);
            return;
        }
        if let Err(err) = self.save_state() {
            tracing::warn!(%hash, %err, "could not save a partial asset's state; it starts over");
            self.partials.remove_files_of_stem(&hash.to_hex());
            self.partials.release(hash, None);
            return;
        }
        let share = std::mem::replace(&mut self.share, self.partials.quota.share());
        let entry = Entry {
            outboard: self.outboard.clone(),
            held: self.held.clone(),
            written_ms: self.written_ms,
            busy: false,
            checked: true,
            share,
            progress: self.progress.clone(),
        };
        self.partials.release(hash, Some(entry));
    }
}
