//! Moving sealed pack segments to object storage, for a store opened with
//! `--blobs s3://…` ([`objects`](super::objects)).
//!
//! The open segment stays on local disk: it is appended to and cut back at
//! open ([`segments`](super::segments)). A segment below the open one is
//! sealed and never changes again, so it can live elsewhere: this task
//! uploads it (`PREFIX/packs/<store id>-<segment>`, created only if absent,
//! exactly the bytes the index records as its end), checks the object's
//! size, and only then removes the local file. Until the file is gone, its
//! values are read from disk; after, by ranged `GET`s
//! ([`SegmentReader`]). A crash anywhere in between leaves the local file
//! (read from first) or the object (read when the file is gone), never
//! neither.
//!
//! It runs after each commit the store announces and at a slow tick, so a
//! store reopened with sealed segments still on disk (a crash, the server
//! away at the time) uploads them without a write to prompt it. It never
//! touches the writer: it reads the index's record of segment ends, which
//! the writer's commits keep.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redb::{Database, ReadableDatabase as _};
use tokio::sync::{broadcast, oneshot};

use super::fs::StoreFs;
use super::objects::{ObjectError, Objects};
use super::schema::{self, db_err, SEGMENTS};
use super::segments::{self, segment_path, SegmentReader};
use super::ChangeEvent;
use crate::can::CanError;

/// The pause between two looks for sealed segments when no commit prompts
/// one, and after a failed upload before the next try.
const IDLE_TICK: Duration = Duration::from_secs(30);

/// Looks are at least this far apart, however fast commits come: a look
/// reads one folder and one record.
const MIN_GAP: Duration = Duration::from_millis(500);

/// The task uploading sealed segments; it stops when this is dropped.
pub(super) struct Offload {
    _stop: oneshot::Sender<()>,
}

/// What one look found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Moved {
    /// Segments uploaded and removed from disk.
    pub(super) uploaded: u64,
    /// Segments that failed to; tried again later.
    pub(super) failed: u64,
}

/// The parts of a store the task needs.
#[derive(Clone)]
pub(super) struct Segments {
    /// Held only while a look reads it, so that a dropped store's database
    /// closes at once (a reopen finds it free) and the task ends.
    pub(super) db: Weak<Database>,
    pub(super) fs: Arc<dyn StoreFs>,
    /// `packs/`.
    pub(super) dir: PathBuf,
    pub(super) objects: Arc<Objects>,
    pub(super) store_id: u64,
    pub(super) reader: Arc<SegmentReader>,
}

impl Offload {
    /// Starts the task on `runtime`, prompted by the store's `commits`.
    pub(super) fn start(
        segments: Segments,
        mut commits: broadcast::Receiver<ChangeEvent>,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        runtime.spawn(async move {
            loop {
                let moved = segments.move_sealed().await;
                if moved.failed > 0 {
                    tracing::warn!(failed = moved.failed, "sealed segments not uploaded yet");
                }
                let next_look = tokio::time::sleep(MIN_GAP);
                tokio::select! {
                    _ = &mut stopped => return,
                    () = next_look => {}
                }
                tokio::select! {
                    _ = &mut stopped => return,
                    prompted = commits.recv() => {
                        if let Err(broadcast::error::RecvError::Closed) = prompted {
                            return;
                        }
                    }
                    () = tokio::time::sleep(IDLE_TICK) => {}
                }
            }
        });
        Self { _stop: stop }
    }
}

impl Segments {
    /// Uploads every sealed segment still on disk, removing each once its
    /// object is whole.
    pub(super) async fn move_sealed(&self) -> Moved {
        // One move at a time per store ([`SegmentReader::moving`]).
        let _moving = self.reader.moving.lock().await;
        let mut moved = Moved::default();
        let sealed = match self.sealed_on_disk().await {
            Ok(sealed) => sealed,
            Err(err) => {
                tracing::warn!(error = %err, "listing sealed segments failed");
                moved.failed += 1;
                return moved;
            }
        };
        for (segment, end) in sealed {
            match self.move_one(segment, end).await {
                Ok(()) => moved.uploaded += 1,
                Err(err) => {
                    tracing::warn!(segment, error = %err, "uploading a sealed segment failed");
                    moved.failed += 1;
                }
            }
        }
        moved
    }

    /// The sealed segments with a file in `packs/`, and their recorded ends.
    async fn sealed_on_disk(&self) -> Result<Vec<(u64, u64)>, CanError> {
        let (db, dir) = (self.db.clone(), self.dir.clone());
        super::blocking(move || {
            let db = db
                .upgrade()
                .ok_or_else(|| CanError::Storage("the store is closed".into()))?;
            let open = schema::read_open_segment(&db)?.segment;
            let mut found = Vec::new();
            // Listed through std::fs: a store in object storage runs on
            // the real disk only (the simulated one models no listing).
            for entry in std::fs::read_dir(&dir)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                let Some(segment) = segments::segment_of_name(&name) else {
                    continue;
                };
                if segment < open {
                    found.push(segment);
                }
            }
            found.sort_unstable();
            let txn = db.begin_read().map_err(db_err)?;
            let ends = txn.open_table(SEGMENTS).map_err(db_err)?;
            let mut sealed = Vec::with_capacity(found.len());
            for segment in found {
                // A file the index records no end for holds no value.
                let end = ends.get(segment).map_err(db_err)?.map(|end| end.value());
                sealed.push((segment, end.unwrap_or(0)));
            }
            Ok(sealed)
        })
        .await
    }

    /// Uploads one sealed segment's recorded bytes, checks the object, and
    /// removes the file.
    async fn move_one(&self, segment: u64, end: u64) -> Result<(), CanError> {
        let key = self.objects.segment_key(self.store_id, segment);
        let path = segment_path(&self.dir, segment);
        if end > 0 {
            self.objects
                .upload_file(key.clone(), self.fs.clone(), path.clone(), end)
                .await?;
            // An object already there stands (created only if absent); it
            // must hold what the index records, or the local file stays.
            let size = self.objects.size(&key).await?;
            if size != Some(end) {
                return Err(ObjectError::Segment {
                    key: key.to_string(),
                    why: format!("the object holds {size:?} bytes, the index records {end}"),
                }
                .into());
            }
        }
        let (fs, reader) = (self.fs.clone(), self.reader.clone());
        super::blocking(move || {
            fs.remove_file(&path)?;
            reader.forget(segment);
            Ok(())
        })
        .await
    }
}
