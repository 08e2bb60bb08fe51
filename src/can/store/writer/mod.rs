//! The store's one database writer, and its group commit.
//!
//! Every database write (a push making its asset visible, a metadata update)
//! goes through one writer thread, fed by a bounded queue of jobs (one write,
//! or a batch of them that is never split). The writer takes the first queued
//! job, then whatever else is already waiting (up to `MAX_GROUP` writes),
//! applies them in order in one redb write transaction, commits it once, and
//! only then publishes the group's change events and answers each caller.
//! Under concurrent pushes many share one transaction (and, on disk, one
//! durable commit); a lone push waits for nobody. What stays true:
//! - a push is acknowledged only after the transaction holding it committed;
//!   a large asset's blob was written, fsynced and renamed before it was even
//!   queued; a small one's bytes were appended to a pack segment by this
//!   thread and the segment fdatasynced before the commit that records where
//!   they are and the segment's new end ([`segments`](super::segments));
//! - the writes of a group are applied in order, each seeing the ones
//!   before it, and a group keeps all of its writes or none
//!   ([`group`]: how a group is applied, and how a bulk load's groups
//!   skip looking up assets they take to be new);
//! - sequence numbers are given in queue order, and events are broadcast after
//!   the commit, in sequence order, by the one thread that commits;
//! - when the group's transaction fails, every caller in it gets the error.
//!
//! The tables written are those of [`schema`](super::schema); the events
//! published feed [`subscription`](super::subscription).

mod group;
mod guess;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use redb::Database;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::coded::CodedSet;
use super::segments::SegmentWriter;
use crate::asset::{AssetHash, ClockBound, MetaEdit, MetaUpdate};
use crate::can::{CanError, ChangeEvent};
use crate::pb;
use group::commit_group_looking_up;
use guess::Guess;

/// The most writes one transaction takes: enough to amortise a commit many
/// times over, small enough that the first caller of a group is not kept
/// waiting long behind the others. A batch is never split, so a group holds
/// more when one batch alone is larger.
const MAX_GROUP: usize = 256;
/// Jobs (a write or a batch of them) that may wait for the writer before
/// callers wait to queue theirs. A write is a hash, a metadata record and at
/// most a small asset's bytes, so the queue stays small in bytes.
const WRITE_QUEUE: usize = 1024;

/// A database write, applied by the writer inside a group's transaction.
pub(super) enum Write {
    /// Makes an asset visible, or merges its metadata into the record
    /// already there (`push`, `push_batch`, `write_blob`). Answers whether
    /// the asset already existed. A small asset's verified bytes come along
    /// (`inline`) and are packed into a segment for the same transaction (a
    /// row of it, for a store without segments); a larger one's were stored
    /// as a file before the write was queued.
    Asset {
        hash: AssetHash,
        size: u64,
        meta: pb::AssetMeta,
        inline: Option<Bytes>,
    },
    /// Merges a metadata update by LWW (`apply_meta`). Answers whether it won.
    Meta(MetaUpdate),
    /// A user's edit (`edit_meta`): stamped here, against the record this
    /// transaction sees, by [`edit_stamp`] within `clock`, and applied over
    /// it whatever its stamp, so no update can come between the read and the
    /// write, and the user's word is the last even over a stamp stored before
    /// the bound existed. Answers true.
    Edit { edit: MetaEdit, clock: ClockBound },
    /// Removes an asset's record, whole or damaged, and its entries in the
    /// indexes (`fsck --repair`), so that a peer holding it sends it again.
    /// Answers true; not found when there is none.
    Forget(AssetHash),
}

impl Write {
    /// The asset written.
    pub(super) fn hash(&self) -> AssetHash {
        match self {
            Self::Asset { hash, .. } => *hash,
            Self::Meta(update) => update.hash,
            Self::Edit { edit, .. } => edit.hash,
            Self::Forget(hash) => *hash,
        }
    }
}

/// One write's own answer (see [`Write`]), or its own refusal.
pub(super) type Answer = Result<Written, CanError>;

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Written {
    /// An asset write: the store held the asset before. A metadata write:
    /// the update won the merge.
    pub(super) outcome: bool,
    /// The change it committed, if it changed anything.
    pub(super) seq: Option<u64>,
}

/// Queued writes, committed in one transaction, and the caller waiting for
/// their answers (one per write, in order) or the transaction's failure.
struct Job {
    writes: Vec<Write>,
    reply: oneshot::Sender<Result<Vec<Answer>, CanError>>,
}

/// Why the writer thread stopped before its queue closed, for the callers
/// that find it gone.
type StopReason = Arc<std::sync::OnceLock<String>>;

/// The coded cells the writer keeps current, and whether it saves them when
/// its queue closes.
struct KeptCells {
    cells: CodedSet,
    /// Whether to save them at the end: a test may say no meanwhile.
    save: Arc<AtomicBool>,
    /// They are as saved (loaded from the saved ones, nothing committed
    /// since): a store opened only to be read (`fsck`, `export`) closes
    /// without writing their 10 MiB again.
    saved_current: bool,
}

/// The writer thread: takes a group from the queue, commits it, updates the
/// coded set, publishes its events, answers its callers; until every sender
/// is gone, or a group meets a page of the database that does not parse.
fn writer_task(
    db: Arc<Database>,
    mut segments: Option<SegmentWriter>,
    mut queue: mpsc::Receiver<Job>,
    events: broadcast::Sender<ChangeEvent>,
    mut kept: KeptCells,
    stopped: StopReason,
    index_damaged: Arc<AtomicBool>,
) {
    // How each group looks its assets up, learnt from the groups before it.
    let mut guess = Guess::default();
    while let Some(first) = queue.blocking_recv() {
        // No waiting for company: the group is whatever queued up while the
        // previous one committed, so a lone write is not delayed.
        let mut size = first.writes.len();
        let mut jobs = vec![first];
        while size < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => {
                    size += job.writes.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut writes = Vec::with_capacity(size);
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            replies.push((job.writes.len(), job.reply));
            writes.extend(job.writes);
        }
        // A caller that gave up has dropped its receiver; its write still
        // counts, like any committed write nobody waited for.
        let lookups = guess.lookups(writes.len());
        // Once a listing met a damaged page of the index, each write first
        // checks that its place in the index can be read.
        let careful = index_damaged.load(Ordering::Acquire);
        let result = super::without_panics(|| {
            commit_group_looking_up(&db, segments.as_mut(), &writes, lookups, careful)
        });
        let result = match result {
            Ok(result) => result,
            // redb panics on a page of its file that does not parse, and
            // while unwinding it leaves the write transaction as it was,
            // not rolled back: no later group may build on the database.
            // The writer stops and says why; reads go on. Nor may redb
            // commit its allocator state over that transaction when the
            // database closes, marking the file clean: it is never closed
            // by this process, so the next open repairs it.
            Err(panic) => {
                std::mem::forget(db.clone());
                let why = format!(
                    "the store's database library failed in a write ({panic}), which a \
                     damaged page of its file causes; the store takes no writes until it \
                     is opened again: run `can-sync fsck`"
                );
                tracing::error!("the store's writer stopped: {why}");
                // Set once: the thread ends right here.
                let _ = stopped.set(why);
                for (_, reply) in replies {
                    // A caller that gave up has nothing to be told.
                    let _ = reply.send(Err(Writer::stopped_error(&stopped)));
                }
                return;
            }
        };
        match result {
            Ok((answers, committed)) => {
                guess.committed(writes.len(), committed.met_held);
                kept.saved_current = false;
                kept.cells.apply(&committed.summaries);
                kept.cells.forget(&committed.forgotten);
                if committed.cells_stale {
                    match super::without_panics(|| kept.cells.rebuild(&db)) {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => {
                            tracing::warn!(error = %err, "could not build the coded cells again")
                        }
                        Err(panic) => tracing::warn!(
                            "could not build the coded cells again, a page of the index is \
                             damaged: {panic}"
                        ),
                    }
                }
                for event in committed.events {
                    // No subscriber is not an error: events are also in the log.
                    let _ = events.send(event);
                }
                let mut answers = answers.into_iter();
                for (count, reply) in replies {
                    let _ = reply.send(Ok(answers.by_ref().take(count).collect()));
                }
            }
            Err(err) => {
                let message = match err {
                    CanError::Storage(message) => message,
                    other => other.to_string(),
                };
                for (_, reply) in replies {
                    let _ = reply.send(Err(CanError::Storage(message.clone())));
                }
            }
        }
    }
    // Every write is in: the cells include the last change. A store that
    // cannot save them, or is too small to, builds them when it opens next.
    if kept.save.load(Ordering::Acquire) && !kept.saved_current {
        let started = std::time::Instant::now();
        match kept.cells.save(&db) {
            Ok(saved) => tracing::debug!(saved, took = ?started.elapsed(), "coded cells at close"),
            Err(err) => tracing::warn!(error = %err, "could not save the coded cells"),
        }
    }
}

/// The sending end of the writer thread's queue, and the thread.
pub(super) struct Writer {
    /// `Some` until dropped, but for a [closed](Self::closed) writer;
    /// taking it closes the queue.
    queue: Option<mpsc::Sender<Job>>,
    /// Joined on drop; `None` for a closed writer.
    thread: Option<JoinHandle<()>>,
    /// Why the thread stopped early, once it has.
    stopped: StopReason,
    /// A listing met a damaged page of the index: writes check their place
    /// in it first, a read that fails without harm, rather than let the
    /// write transaction meet the damage and stop the writer.
    index_damaged: Arc<AtomicBool>,
    /// Whether the thread saves the coded cells once the queue closes: a
    /// test may say no.
    #[cfg(test)]
    save_cells: Arc<AtomicBool>,
}

impl Drop for Writer {
    /// Closes the queue and waits for the thread to commit what is queued and
    /// end, so that once a store is dropped its database file is closed (a
    /// store reopened right after finds it free).
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            // A panic of the writer was already seen by its callers as a lost
            // answer.
            let _ = thread.join();
        }
    }
}

impl Writer {
    /// Starts the writer thread of `db`; it packs small values into
    /// `segments` (rows without), keeps `coded` current, publishes each
    /// committed change on `events`, and with `save_cells` saves the cells
    /// once the queue is closed (the store closes), unless they were loaded
    /// from the saved ones (`saved_cells_current`) and nothing was committed
    /// since, or the store is too small for saving to pay
    /// ([`CodedSet::save`]).
    pub(super) fn start(
        db: Arc<Database>,
        segments: Option<SegmentWriter>,
        events: broadcast::Sender<ChangeEvent>,
        coded: CodedSet,
        save_cells: bool,
        saved_cells_current: bool,
    ) -> Result<Self, CanError> {
        let (queue, receiver) = mpsc::channel(WRITE_QUEUE);
        let save_cells = Arc::new(AtomicBool::new(save_cells));
        let stopped = StopReason::default();
        let index_damaged = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("can-store-writer".into())
            .spawn({
                let kept = KeptCells {
                    cells: coded,
                    save: save_cells.clone(),
                    saved_current: saved_cells_current,
                };
                let (stopped, damaged) = (stopped.clone(), index_damaged.clone());
                move || writer_task(db, segments, receiver, events, kept, stopped, damaged)
            })?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
            stopped,
            index_damaged,
            #[cfg(test)]
            save_cells,
        })
    }

    /// A writer without a thread, for a store opened only to be read:
    /// every write fails, and closing saves nothing.
    pub(super) fn closed() -> Self {
        Self {
            queue: None,
            thread: None,
            stopped: StopReason::default(),
            index_damaged: Arc::default(),
            #[cfg(test)]
            save_cells: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Fails for a [closed](Self::closed) writer, or one that stopped:
    /// the store takes no writes.
    pub(super) fn check_open(&self) -> Result<(), CanError> {
        match self.queue {
            Some(_) if self.stopped.get().is_some() => Err(Self::stopped_error(&self.stopped)),
            Some(_) => Ok(()),
            None => Err(CanError::Storage(
                "the store was opened only to be read".into(),
            )),
        }
    }

    /// Closes without saving the coded cells: a test that opens a store
    /// hundreds of times only to read it spares itself writing 10 MiB each
    /// time.
    #[cfg(test)]
    pub(super) fn skip_saving_cells(&self) {
        self.save_cells.store(false, Ordering::Release);
    }

    /// The flag a listing raises when it meets a damaged page of the index
    /// (see [`Writer`]'s `index_damaged`).
    pub(super) fn index_damaged(&self) -> Arc<AtomicBool> {
        self.index_damaged.clone()
    }

    /// The failure of a write the stopped thread will not commit: why it
    /// stopped, when it said.
    fn stopped_error(stopped: &StopReason) -> CanError {
        CanError::Storage(match stopped.get() {
            Some(why) => format!("the store's writer stopped: {why}"),
            None => "the store's writer stopped".into(),
        })
    }

    /// Queues a write and waits until the group holding it committed.
    pub(super) async fn write(&self, write: Write) -> Answer {
        let mut answers = self.write_all(vec![write]).await?;
        answers.pop().expect("one answer per write")
    }

    /// Queues writes to commit together, in one transaction, and waits until
    /// it committed: one answer per write, in order, or the transaction's
    /// failure (then none of them was kept).
    pub(super) async fn write_all(&self, writes: Vec<Write>) -> Result<Vec<Answer>, CanError> {
        let stopped = || Self::stopped_error(&self.stopped);
        let (reply, answer) = oneshot::channel();
        self.check_open()?;
        let queue = self.queue.as_ref().expect("an open writer has its queue");
        queue
            .send(Job { writes, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::logged;
    use super::super::fixtures::{bundle, each_backend, push_concurrently, sorted};
    use super::super::{Blobs, EmbeddedCan, StoreLimits};
    use super::*;
    use crate::can::{Can, ChangeKind, Pushed, StoreStats};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_pushes_are_all_committed_and_logged_once() {
        each_backend(async |store| {
            let store = Arc::new(store);
            let hashes = push_concurrently(&store, 500, 32).await;
            let bytes = (0..500)
                .map(|i| format!("asset number {i}").len() as u64)
                .sum();
            assert_eq!(
                store.stats().await.unwrap(),
                StoreStats { assets: 500, bytes }
            );
            for hash in &hashes {
                assert!(store.meta(*hash).await.unwrap().is_some());
                assert_eq!(store.pull(&[*hash]).await.unwrap().bundles.len(), 1);
            }
            let log = logged(&store.db, 0);
            assert_eq!(log.len(), 500);
            assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
            assert!(log.iter().all(|e| e.kind == ChangeKind::Asset));
            let logged = sorted(log.iter().map(|e| e.hash).collect());
            assert_eq!(logged, sorted(hashes));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_duplicate_pushes_store_one_copy() {
        each_backend(async |store| {
            let store = Arc::new(store);
            let start = Arc::new(tokio::sync::Barrier::new(16));
            let pushes = (0..16).map(|_| {
                let (store, start) = (store.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    store.push(bundle(b"same", "d", 1)).await.unwrap()
                })
            });
            let pushed: Vec<Pushed> = futures::future::join_all(pushes)
                .await
                .into_iter()
                .map(|p| p.unwrap())
                .collect();
            assert_eq!(pushed.iter().filter(|p| !p.already_existed).count(), 1);
            assert_eq!(
                store.stats().await.unwrap(),
                StoreStats {
                    assets: 1,
                    bytes: 4
                }
            );
            assert_eq!(logged(&store.db, 0).len(), 1);
        })
        .await;
    }

    /// redb's in-memory backend that fails every write once `fail` is set.
    #[derive(Debug)]
    struct FailingBackend {
        inner: redb::backends::InMemoryBackend,
        fail: Arc<AtomicBool>,
    }

    impl FailingBackend {
        fn check(&self) -> std::io::Result<()> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("injected write failure"));
            }
            Ok(())
        }
    }

    impl redb::StorageBackend for FailingBackend {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.inner.read(offset, out)
        }

        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.inner.set_len(len)
        }

        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.inner.sync_data()
        }

        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.inner.write(offset, data)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_commit_fails_every_push_of_it_and_publishes_nothing() {
        use futures::StreamExt;

        let fail = Arc::new(AtomicBool::new(false));
        let db = Database::builder()
            .create_with_backend(FailingBackend {
                inner: redb::backends::InMemoryBackend::new(),
                fail: fail.clone(),
            })
            .unwrap();
        let store = Arc::new(
            EmbeddedCan::with_parts(db, Blobs::memory(), None, StoreLimits::default(), false)
                .unwrap(),
        );
        store.push(bundle(b"kept", "", 1)).await.unwrap();
        let mut events = store.subscribe(None).await.unwrap();
        fail.store(true, Ordering::SeqCst);
        let start = Arc::new(tokio::sync::Barrier::new(16));
        let pushes = (0..16).map(|i| {
            let (store, start) = (store.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let data = format!("lost {i}").into_bytes();
                store.push(bundle(&data, "", 1)).await
            })
        });
        for pushed in futures::future::join_all(pushes).await {
            assert!(matches!(pushed.unwrap(), Err(CanError::Storage(_))));
        }
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(100), events.next());
        assert!(quiet.await.is_err(), "a failed group publishes no event");
        assert_eq!(logged(&store.db, 0).len(), 1);
    }
}
