//! The store's one database writer, and its group commit.
//!
//! Every database write (a push making its asset visible, a metadata update)
//! goes through one writer thread, fed by a bounded queue of jobs (one write,
//! or a batch of them that is never split). The writer takes the first queued
//! job, then whatever else is already waiting (up to `MAX_GROUP` writes),
//! applies them in order in one redb write transaction, commits it once, and
//! only then publishes the group's change events and answers each caller. Under concurrent pushes many share one transaction (and, on disk, one
//! durable commit); a lone push waits for nobody. What stays true:
//! - a push is acknowledged only after the transaction holding it committed;
//!   a large asset's blob was written, fsynced and renamed before it was even
//!   queued; a small one's bytes were appended to a pack segment by this
//!   thread and the segment fdatasynced before the commit that records where
//!   they are and the segment's new end ([`segments`](super::segments));
//! - the writes of a group are applied one after the other, each seeing the
//!   ones before it: of two pushes of the same new asset, the first stores it
//!   and the second finds it (`already_existed`), one copy and one log entry.
//!   The records a group writes are kept aside (its own reads look there
//!   first) and go into the asset table at its end, in key order: keys are
//!   hashes, so a group of thousands lands on as many B-tree leaves, and in
//!   key order each branch page is done with once its leaves are, instead
//!   of being revisited throughout (PERFORMANCE.md, "Loading", issue 22);
//! - unless the last group of a bulk load's size met an asset the store
//!   already held, the next such group takes its new assets to be new
//!   without looking each up, and the key-ordered
//!   insert at its end checks: a group that finds it was wrong keeps
//!   nothing (its transaction aborted, its packed bytes cut back) and is
//!   applied again with a lookup per write, so its answers are the same
//!   either way ([`Lookups`]);
//! - sequence numbers are given in queue order, and events are broadcast after
//!   the commit, in sequence order, by the one thread that commits;
//! - when the group's transaction fails, nothing of it is kept and every
//!   caller in it gets the error. A caller's own refusal (a metadata update of
//!   an unknown asset) touches nothing and fails only that caller.
//!
//! The tables written are those of [`schema`](super::schema); the events
//! published feed [`subscription`](super::subscription).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use redb::{Database, ReadableTable, Table, WriteTransaction};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::coded::{CodedSet, SummaryChange};
use super::schema::{
    db_err, encode_change, Record, ASSETS, BY_CHANGE, CHANGES, COUNTERS, INLINE_BLOBS, SEGMENTS,
};
use super::segments::SegmentWriter;
use crate::asset::{
    edit_stamp, merge_meta, AssetHash, ClockBound, MetaEdit, MetaUpdate, MAX_META_BYTES,
};
use crate::can::{CanError, ChangeEvent, ChangeKind};
use crate::clock::now_ms;
use crate::pb;

/// The most writes one transaction takes: enough to amortise a commit many
/// times over, small enough that the first caller of a group is not kept
/// waiting long behind the others. A batch is never split, so a group holds
/// more when one batch alone is larger.
const MAX_GROUP: usize = 256;
/// Jobs (a write or a batch of them) that may wait for the writer before
/// callers wait to queue theirs. A write is a hash, a metadata record and at
/// most a small asset's bytes, so the queue stays small in bytes.
const WRITE_QUEUE: usize = 1024;
/// The fewest writes a group holds to take new assets for new
/// ([`Lookups::AssumeNew`]): a bulk loader's batches hold 8,192 and more
/// ([`load_batch`](super::load_batch)). A daemon's groups are smaller, their
/// lookups cost little beside their commit, and they meet assets that two
/// peers pushed at once often enough that guessing would apply groups twice.
const ASSUME_NEW_FROM: usize = 1024;

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
}

impl Write {
    /// The asset written.
    pub(super) fn hash(&self) -> AssetHash {
        match self {
            Self::Asset { hash, .. } => *hash,
            Self::Meta(update) => update.hash,
            Self::Edit { edit, .. } => edit.hash,
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

/// The open tables of one group's write transaction, and what the group has
/// changed so far that is written once at its end.
struct Group<'txn> {
    assets: Table<'txn, [u8; 32], &'static [u8]>,
    inline_blobs: Table<'txn, [u8; 32], &'static [u8]>,
    segment_ends: Table<'txn, u64, u64>,
    /// Where small values go; `None` keeps them as rows (in memory).
    segments: Option<&'txn mut SegmentWriter>,
    by_change: Table<'txn, (i64, [u8; 32]), ()>,
    changes: Table<'txn, u64, &'static [u8]>,
    counters: Table<'txn, &'static str, u64>,
    /// The sequence number of the group's next change.
    next_seq: u64,
    /// The running totals, written to `counters` by [`Group::finish`].
    asset_count: u64,
    byte_count: u64,
    /// The changes made, in sequence order, to publish after the commit.
    events: Vec<ChangeEvent>,
    /// The summaries changed, for the coded set once the commit is durable.
    summaries: Vec<SummaryChange>,
    /// The records this group wrote, by hash, inserted into `assets` in key
    /// order when it finishes; the group's own reads look here first.
    records: BTreeMap<[u8; 32], Pending>,
    /// Whether a new asset's write takes the asset to be new without
    /// looking it up (see [`Lookups`]).
    lookups: Lookups,
    /// An asset write found its asset held before the group (not only
    /// written earlier in it).
    met_held: bool,
}

/// A record a group wrote, to insert into `assets` when it finishes.
struct Pending {
    record: Vec<u8>,
    /// Written by an asset write that took the asset to be new without
    /// looking it up ([`Lookups::AssumeNew`]): the table must not hold it.
    unchecked: bool,
}

/// How a group's asset writes learn whether the store holds their asset.
///
/// A bulk load writes assets the store does not hold, and looking each one
/// up costs a descent of the asset table in hash order, which is random: in
/// a load into a store of 9M assets it was the writer's largest cost, and
/// the one that grew most with the store (PERFORMANCE.md, "Loading"). The
/// insert at the group's end descends the table anyway, in key order, and
/// says whether it replaced a record: so a group may skip the lookups and
/// let the insert check. A group that finds it took a held asset for new is
/// dropped whole (its transaction aborted, its packed bytes cut back) and
/// applied again with a lookup per write, so its answers are exactly those
/// of a group that looked each asset up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookups {
    /// Each write looks its asset up.
    Each,
    /// An asset write takes its asset to be new unless the group itself
    /// wrote it; metadata writes still look theirs up.
    AssumeNew,
}

impl<'txn> Group<'txn> {
    fn open(
        txn: &'txn WriteTransaction,
        segments: Option<&'txn mut SegmentWriter>,
        lookups: Lookups,
    ) -> Result<Self, CanError> {
        let changes = txn.open_table(CHANGES).map_err(db_err)?;
        let counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let next_seq = changes
            .last()
            .map_err(db_err)?
            .map_or(1, |(k, _)| k.value() + 1);
        let count = |name: &str| -> Result<u64, CanError> {
            Ok(counters.get(name).map_err(db_err)?.map_or(0, |v| v.value()))
        };
        let (asset_count, byte_count) = (count("assets")?, count("bytes")?);
        Ok(Self {
            assets: txn.open_table(ASSETS).map_err(db_err)?,
            inline_blobs: txn.open_table(INLINE_BLOBS).map_err(db_err)?,
            segment_ends: txn.open_table(SEGMENTS).map_err(db_err)?,
            segments,
            by_change: txn.open_table(BY_CHANGE).map_err(db_err)?,
            changes,
            counters,
            next_seq,
            asset_count,
            byte_count,
            events: Vec::new(),
            summaries: Vec::new(),
            records: BTreeMap::new(),
            lookups,
            met_held: false,
        })
    }

    /// Applies one write. The outer error is the group's (the database
    /// failed): it aborts the transaction and fails every write in it. The
    /// inner one is this write's own refusal, made before it wrote anything,
    /// so the rest of the group goes on.
    fn apply(&mut self, write: &Write) -> Result<Answer, CanError> {
        let now = now_ms();
        match write {
            Write::Asset {
                hash,
                size,
                meta,
                inline,
            } => match self.asset_record(hash)? {
                Some(previous) => {
                    self.met_held |= !self.records.contains_key(hash.as_bytes());
                    let update = MetaUpdate::of(*hash, meta);
                    let changed = self.merge(hash, previous, &update, now)?;
                    Ok(Ok(self.written(true, changed)))
                }
                None => {
                    let mut meta = meta.clone();
                    if meta.created_at_ms == 0 {
                        meta.created_at_ms = now;
                    }
                    let location = match (inline, self.segments.as_deref_mut()) {
                        (Some(data), Some(segments)) => Some(segments.append(data)?),
                        (Some(data), None) => {
                            self.inline_blobs
                                .insert(*hash.as_bytes(), data.as_ref())
                                .map_err(db_err)?;
                            None
                        }
                        (None, _) => None,
                    };
                    let record = Record {
                        size: *size,
                        changed_at: now,
                        seq: 0,
                        location,
                        meta,
                    };
                    self.asset_count += 1;
                    self.byte_count += size;
                    self.put(hash, record, None, ChangeKind::Asset)?;
                    Ok(Ok(self.written(false, true)))
                }
            },
            Write::Meta(update) => match self.record(&update.hash)? {
                Some(previous) => {
                    let applied = self.merge(&update.hash, previous, update, now)?;
                    Ok(Ok(self.written(applied, applied)))
                }
                None => Ok(Err(CanError::NotFound(update.hash))),
            },
            Write::Edit { edit, clock } => match self.record(&edit.hash)? {
                Some(previous) => {
                    let stamp = edit_stamp(previous.meta.meta_updated_at_ms, now, *clock);
                    let update = edit.update_over(&previous.meta, stamp);
                    let size = update.text_bytes();
                    if size > MAX_META_BYTES {
                        return Ok(Err(CanError::MetaTooLarge {
                            size,
                            limit: MAX_META_BYTES,
                        }));
                    }
                    let meta = update.applied_to(previous.meta.clone());
                    let record = Record {
                        size: previous.size,
                        changed_at: now,
                        seq: 0,
                        location: previous.location,
                        meta,
                    };
                    self.put(&edit.hash, record, Some(&previous), ChangeKind::Meta)?;
                    Ok(Ok(self.written(true, true)))
                }
                None => Ok(Err(CanError::NotFound(edit.hash))),
            },
        }
    }

    /// A write's answer; `changed`: it just committed the latest change.
    fn written(&self, outcome: bool, changed: bool) -> Written {
        Written {
            outcome,
            seq: changed.then(|| self.next_seq - 1),
        }
    }

    /// The record an asset write finds: as [`Self::record`], but under
    /// [`Lookups::AssumeNew`] one this group did not write is taken to be
    /// absent, for [`Self::finish`] to check.
    fn asset_record(&self, hash: &AssetHash) -> Result<Option<Record>, CanError> {
        match (self.lookups, self.records.get(hash.as_bytes())) {
            (Lookups::AssumeNew, None) => Ok(None),
            _ => self.record(hash),
        }
    }

    /// The record of an asset as this transaction sees it, so including the
    /// writes of this group applied before.
    fn record(&self, hash: &AssetHash) -> Result<Option<Record>, CanError> {
        if let Some(written) = self.records.get(hash.as_bytes()) {
            return Record::decode(&written.record).map(Some);
        }
        let found = self.assets.get(*hash.as_bytes()).map_err(db_err)?;
        found
            .map(|v| Record::decode_of(hash, v.value()))
            .transpose()
    }

    /// Merges a metadata update into an existing record; true when it won.
    fn merge(
        &mut self,
        hash: &AssetHash,
        previous: Record,
        update: &MetaUpdate,
        now: i64,
    ) -> Result<bool, CanError> {
        let mut merged = previous.meta.clone();
        if !merge_meta(&mut merged, update) {
            return Ok(false);
        }
        let record = Record {
            size: previous.size,
            changed_at: now,
            seq: 0,
            location: previous.location,
            meta: merged,
        };
        self.put(hash, record, Some(&previous), ChangeKind::Meta)?;
        Ok(true)
    }

    /// Writes one record (under the next sequence number), its place in the
    /// `since` index and its change, replacing the asset's previous change:
    /// the log keeps only the latest change of each asset.
    fn put(
        &mut self,
        hash: &AssetHash,
        record: Record,
        previous: Option<&Record>,
        kind: ChangeKind,
    ) -> Result<(), CanError> {
        if let Some(previous) = previous {
            self.by_change
                .remove((previous.changed_at, *hash.as_bytes()))
                .map_err(db_err)?;
            self.changes.remove(previous.seq).map_err(db_err)?;
        }
        let record = Record {
            seq: self.next_seq,
            ..record
        };
        let encoded = record.encode();
        self.records
            .entry(*hash.as_bytes())
            .and_modify(|pending| pending.record.clone_from(&encoded))
            .or_insert(Pending {
                record: encoded,
                // Without a previous record, this is a new asset's write,
                // which under `AssumeNew` did not look its asset up.
                unchecked: previous.is_none() && self.lookups == Lookups::AssumeNew,
            });
        self.by_change
            .insert((record.changed_at, *hash.as_bytes()), ())
            .map_err(db_err)?;
        let event = ChangeEvent {
            seq: record.seq,
            kind,
            hash: *hash,
            ts: record.changed_at,
        };
        self.changes
            .insert(event.seq, encode_change(&event).as_slice())
            .map_err(db_err)?;
        self.next_seq += 1;
        self.events.push(event);
        self.summaries.push((
            previous.map(|previous| previous.summary(*hash)),
            record.summary(*hash),
        ));
        Ok(())
    }

    /// Inserts the group's records in key order, makes its packed values
    /// durable and records the segments' ends, writes the totals, when they
    /// moved, and closes the tables; the transaction can commit. `None`: an
    /// asset taken to be new was held (see [`Lookups`]), and the group must
    /// be applied again; nothing was made durable.
    fn finish(mut self) -> Result<Option<Committed>, CanError> {
        for (hash, pending) in &self.records {
            let replaced = self
                .assets
                .insert(hash, pending.record.as_slice())
                .map_err(db_err)?
                .is_some();
            if replaced && pending.unchecked {
                return Ok(None);
            }
        }
        if let Some(segments) = self.segments.as_deref_mut() {
            for (segment, end) in segments.sync()? {
                self.segment_ends.insert(segment, end).map_err(db_err)?;
            }
        }
        if self.events.iter().any(|e| e.kind == ChangeKind::Asset) {
            self.counters
                .insert("assets", self.asset_count)
                .map_err(db_err)?;
            self.counters
                .insert("bytes", self.byte_count)
                .map_err(db_err)?;
        }
        Ok(Some(Committed {
            events: self.events,
            summaries: self.summaries,
            met_held: self.met_held,
        }))
    }
}

/// What a group changed, to publish once it is committed.
struct Committed {
    /// The change events, in sequence order.
    events: Vec<ChangeEvent>,
    /// The summaries changed.
    summaries: Vec<SummaryChange>,
    /// An asset write found its asset already held.
    met_held: bool,
}

/// Applies a group of writes in one transaction and commits it. Returns each
/// write's answer, in order, and the changes to publish; `None` when, under
/// [`Lookups::AssumeNew`], it met a held asset and kept nothing.
/// When it keeps nothing, what it appended to the segments is cut back before
/// the next group appends.
fn commit_group(
    db: &Database,
    mut segments: Option<&mut SegmentWriter>,
    writes: &[Write],
    lookups: Lookups,
) -> Result<Option<(Vec<Answer>, Committed)>, CanError> {
    let result = (|| {
        let txn = db.begin_write().map_err(db_err)?;
        let mut group = Group::open(&txn, segments.as_deref_mut(), lookups)?;
        let answers = writes
            .iter()
            .map(|write| group.apply(write))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(committed) = group.finish()? else {
            txn.abort().map_err(db_err)?;
            return Ok(None);
        };
        txn.commit().map_err(db_err)?;
        Ok(Some((answers, committed)))
    })();
    if let Some(segments) = segments {
        match &result {
            Ok(Some(_)) => segments.committed(),
            Ok(None) => segments.abandoned(),
            Err(_) => segments.failed(),
        }
    }
    result
}

/// Commits a group as [`commit_group`] does, first under `lookups` and, if
/// that meets a held asset, again with a lookup per write. Returns, with the
/// group's answers and changes, how the next large group should look its
/// assets up: it takes them for new unless this group met one held.
fn commit_group_looking_up(
    db: &Database,
    mut segments: Option<&mut SegmentWriter>,
    writes: &[Write],
    lookups: Lookups,
) -> Result<(Vec<Answer>, Committed, Lookups), CanError> {
    if lookups == Lookups::AssumeNew {
        if let Some((answers, committed)) =
            commit_group(db, segments.as_deref_mut(), writes, Lookups::AssumeNew)?
        {
            return Ok((answers, committed, Lookups::AssumeNew));
        }
    }
    let (answers, committed) = commit_group(db, segments, writes, Lookups::Each)?
        .expect("a group that looks each asset up never meets one it took for new");
    let next = if committed.met_held {
        Lookups::Each
    } else {
        Lookups::AssumeNew
    };
    Ok((answers, committed, next))
}

/// The writer thread: takes a group from the queue, commits it, updates the
/// coded set, publishes its events, answers its callers; until every sender
/// is gone.
fn writer_task(
    db: Arc<Database>,
    mut segments: Option<SegmentWriter>,
    mut queue: mpsc::Receiver<Job>,
    events: broadcast::Sender<ChangeEvent>,
    coded: CodedSet,
    save_cells: Arc<AtomicBool>,
    saved_cells_current: bool,
) {
    // The saved cells stay current until a group commits: a store opened
    // only to be read (`fsck`, `export`) closes without writing their
    // 10 MiB again.
    let mut saved_cells_current = saved_cells_current;
    // How the next group of a bulk load's size looks its assets up: it
    // takes them for new unless the last such group met one held. Smaller
    // groups always look up, and leave this alone.
    let mut assume = Lookups::AssumeNew;
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
        let large = writes.len() >= ASSUME_NEW_FROM;
        let lookups = if large { assume } else { Lookups::Each };
        match commit_group_looking_up(&db, segments.as_mut(), &writes, lookups) {
            Ok((answers, committed, next)) => {
                if large {
                    assume = next;
                }
                saved_cells_current = false;
                coded.apply(&committed.summaries);
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
    // cannot save them only rebuilds them when it opens next.
    if save_cells.load(Ordering::Acquire) && !saved_cells_current {
        if let Err(err) = coded.save(&db) {
            tracing::warn!(error = %err, "could not save the coded cells");
        }
    }
}

/// The sending end of the writer thread's queue, and the thread.
pub(super) struct Writer {
    /// `Some` until dropped; taking it closes the queue.
    queue: Option<mpsc::Sender<Job>>,
    /// Joined on drop.
    thread: Option<JoinHandle<()>>,
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
    /// since.
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
        let thread = std::thread::Builder::new()
            .name("can-store-writer".into())
            .spawn({
                let save_cells = save_cells.clone();
                move || {
                    writer_task(
                        db,
                        segments,
                        receiver,
                        events,
                        coded,
                        save_cells,
                        saved_cells_current,
                    )
                }
            })?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
            #[cfg(test)]
            save_cells,
        })
    }

    /// Closes without saving the coded cells: a test that opens a store
    /// hundreds of times only to read it spares itself writing 10 MiB each
    /// time.
    #[cfg(test)]
    pub(super) fn skip_saving_cells(&self) {
        self.save_cells.store(false, Ordering::Release);
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
        let stopped = || CanError::Storage("the store's writer stopped".into());
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.as_ref().expect("the queue is open until drop");
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
    use super::super::schema::read_record;
    use super::super::{Blobs, EmbeddedCan, StoreLimits};
    use super::*;
    use crate::can::{Can, Pushed, StoreStats};

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

    /// The in-group cases, deterministically: writes see the ones before them
    /// in their group, and one write's refusal leaves the others alone;
    /// whether the group looks each asset up or takes new ones for new.
    #[test]
    fn one_group_applies_its_writes_in_order() {
        for lookups in [Lookups::Each, Lookups::AssumeNew] {
            one_group_applies_its_writes_in_order_with(lookups);
        }
    }

    fn one_group_applies_its_writes_in_order_with(lookups: Lookups) {
        let store = EmbeddedCan::memory(StoreLimits::default()).unwrap();
        let (a, b) = (AssetHash::of(b"a"), AssetHash::of(b"b"));
        let meta = |description: &str, at| pb::AssetMeta {
            description: description.into(),
            meta_updated_at_ms: at,
            ..Default::default()
        };
        let asset = |hash, description, at| Write::Asset {
            hash,
            size: 1,
            meta: meta(description, at),
            inline: None,
        };
        let (answers, committed) = commit_group(
            &store.db,
            None,
            &[
                asset(a, "first", 1),
                asset(a, "first", 1),
                Write::Meta(MetaUpdate::of(AssetHash::of(b"unknown"), &meta("x", 9))),
                Write::Meta(MetaUpdate::of(a, &meta("second", 2))),
                asset(b, "", 1),
            ],
            lookups,
        )
        .unwrap()
        .expect("nothing in the group was held before it");
        let answers: Vec<_> = answers
            .into_iter()
            .map(|a| {
                a.map(|w| (w.outcome, w.seq))
                    .map_err(|e| matches!(e, CanError::NotFound(_)))
            })
            .collect();
        // Each answer names the change it committed: the duplicate push
        // changed nothing, the unknown asset's update failed alone.
        assert_eq!(
            answers,
            vec![
                Ok((false, Some(1))),
                Ok((true, None)),
                Err(true),
                Ok((true, Some(2))),
                Ok((false, Some(3)))
            ]
        );
        assert_eq!(
            committed
                .events
                .iter()
                .map(|e| (e.seq, e.kind, e.hash))
                .collect::<Vec<_>>(),
            vec![
                (1, ChangeKind::Asset, a),
                (2, ChangeKind::Meta, a),
                (3, ChangeKind::Asset, b)
            ]
        );
        // The log is compacted: `a`'s first change gave way to its second.
        assert_eq!(logged(&store.db, 0), committed.events[1..]);
        let record = read_record(&store.db, &a).unwrap().unwrap();
        assert_eq!(record.meta.description, "second");
    }

    /// A group that took a held asset for new keeps nothing, and applied
    /// again it answers as a group that looked each asset up: the held asset
    /// found, its metadata merged, one change for each asset that changed.
    /// The group after it looks its assets up; one that meets none held
    /// lets the next take new assets for new again.
    #[test]
    fn a_group_that_took_a_held_asset_for_new_is_applied_again() {
        let store = EmbeddedCan::memory(StoreLimits::default()).unwrap();
        let asset = |name: &[u8], description: &str, at| Write::Asset {
            hash: AssetHash::of(name),
            size: 1,
            meta: pb::AssetMeta {
                description: description.into(),
                meta_updated_at_ms: at,
                ..Default::default()
            },
            inline: None,
        };
        let (_, _, next) = commit_group_looking_up(
            &store.db,
            None,
            &[asset(b"held", "old", 1)],
            Lookups::AssumeNew,
        )
        .unwrap();
        assert_eq!(next, Lookups::AssumeNew, "the first group met nothing held");

        let writes = [asset(b"new", "", 1), asset(b"held", "newer", 2)];
        assert!(
            commit_group(&store.db, None, &writes, Lookups::AssumeNew)
                .unwrap()
                .is_none(),
            "taking the held asset for new is caught at the insert"
        );
        assert_eq!(
            logged(&store.db, 0).len(),
            1,
            "the dropped group kept nothing"
        );
        assert!(read_record(&store.db, &AssetHash::of(b"new"))
            .unwrap()
            .is_none());

        let (answers, committed, next) =
            commit_group_looking_up(&store.db, None, &writes, Lookups::AssumeNew).unwrap();
        let outcomes: Vec<_> = answers.into_iter().map(|a| a.unwrap()).collect();
        assert_eq!(
            outcomes,
            vec![
                Written {
                    outcome: false,
                    seq: Some(2)
                },
                Written {
                    outcome: true,
                    seq: Some(3)
                },
            ]
        );
        assert_eq!(
            committed.events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![ChangeKind::Asset, ChangeKind::Meta]
        );
        let held = read_record(&store.db, &AssetHash::of(b"held"))
            .unwrap()
            .unwrap();
        assert_eq!(held.meta.description, "newer");
        assert_eq!(next, Lookups::Each, "the group met a held asset");

        let (_, _, next) =
            commit_group_looking_up(&store.db, None, &[asset(b"newest", "", 1)], next).unwrap();
        assert_eq!(next, Lookups::AssumeNew);
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
