//! The embedded store: the storage of the reference server, and the default CAN
//! of a node that runs as one process.
//!
//! Layout on disk (`--dir DIR`):
//! - `DIR/blobs/ab/abcdef…` — one file per asset, named by its hash, sharded by
//!   the first byte;
//! - `DIR/tmp/` — blobs being written; emptied at open;
//! - `DIR/meta.redb` — the redb database: metadata, change-time index, change
//!   log and counters.
//!
//! Durability: a blob is written to `tmp/`, fsynced and renamed to its final
//! name (and the folder fsynced) before the database transaction that makes the
//! asset visible commits; redb commits are durable. So an acknowledged push
//! survives a crash, and a crash never leaves a half-written file under a hash.
//! A crash between rename and commit leaves a whole, correct but unlisted blob,
//! which the next push of that asset overwrites with the same bytes.
//!
//! `--memory` keeps blobs in a map and the database on redb's in-memory backend:
//! the same code path, no durability, for tests and load tests.
//!
//! # Group commit
//!
//! Every database write (a push making its asset visible, a metadata update)
//! goes through one writer thread, fed by a bounded queue. The writer takes
//! the first queued write, then whatever else is already waiting (up to
//! `MAX_GROUP`), applies them in order in one redb write transaction, commits
//! it once, and only then publishes the group's change events and answers each
//! caller. Under concurrent pushes many share one transaction (and, on disk, one
//! durable commit); a lone push waits for nobody. What stays true:
//! - a push is acknowledged only after the transaction holding it committed;
//!   its blob was written, fsynced and renamed before it was even queued;
//! - the writes of a group are applied one after the other, each seeing the
//!   ones before it: of two pushes of the same new asset, the first stores it
//!   and the second finds it (`already_existed`), one copy and one log entry;
//! - sequence numbers are given in queue order, and events are broadcast after
//!   the commit, in sequence order, by the one thread that commits;
//! - when the group's transaction fails, nothing of it is kept and every
//!   caller in it gets the error. A caller's own refusal (a metadata update of
//!   an unknown asset) touches nothing and fails only that caller.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{stream, StreamExt};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    ByteStream, Can, CanError, ChangeEvent, ChangeKind, EventStream, Pulled, Pushed, StoreStats,
};
use crate::asset::{merge_meta, AssetHash, Bundle, MetaUpdate, Summary};
use crate::clock::now_ms;
use crate::pb;

/// hash → [size u64 BE][change time i64 BE][encoded AssetMeta]
const ASSETS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("assets");
/// (change time, hash) → (): the `since` index.
const BY_CHANGE: TableDefinition<(i64, [u8; 32]), ()> = TableDefinition::new("by_change");
/// seq → [kind u8][hash 32][ts i64 BE]: the change log that events replay.
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
/// "assets", "bytes" → running totals, so `/health` needs no scan.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// Blobs are read back to clients in chunks of this size.
const READ_CHUNK: usize = 256 * 1024;
/// How many live events a slow subscriber may fall behind before it re-reads
/// the log from the database.
const EVENT_BUFFER: usize = 4096;
/// The most writes one transaction takes: enough to amortise a commit many
/// times over, small enough that the first caller of a group is not kept
/// waiting long behind the others.
const MAX_GROUP: usize = 256;
/// Writes that may wait for the writer before callers wait to queue theirs.
/// Each is a hash and a metadata record (the blob is already stored), so the
/// queue stays small in bytes.
const WRITE_QUEUE: usize = 1024;

/// Size limits of a store.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// The largest asset accepted, in bytes.
    pub max_asset_bytes: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_asset_bytes: 64 * 1024 * 1024 * 1024,
        }
    }
}

/// Where blob bytes live.
enum Blobs {
    Disk { root: PathBuf },
    Memory(RwLock<HashMap<AssetHash, Bytes>>),
}

/// The embedded store. Cheap to share behind an [`Arc`].
pub struct EmbeddedCan {
    /// Read transactions run here directly; writes go through `writer`.
    db: Arc<Database>,
    blobs: Blobs,
    /// Live change events, sent by the writer after each commit.
    events: broadcast::Sender<ChangeEvent>,
    /// The queue to the one thread that writes the database.
    writer: Writer,
    limits: StoreLimits,
}

fn db_err(err: impl std::fmt::Display) -> CanError {
    CanError::Storage(format!("database: {err}"))
}

/// A stored asset record.
struct Record {
    size: u64,
    changed_at: i64,
    meta: pb::AssetMeta,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.meta.encoded_len());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.changed_at.to_be_bytes());
        self.meta.encode(&mut out).expect("Vec grows as needed");
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, CanError> {
        if bytes.len() < 16 {
            return Err(CanError::Storage("corrupt asset record".into()));
        }
        Ok(Self {
            size: u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
            changed_at: i64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")),
            meta: pb::AssetMeta::decode(&bytes[16..]).map_err(db_err)?,
        })
    }

    fn summary(&self, hash: AssetHash) -> Summary {
        Summary::of(hash, self.size, &self.meta)
    }
}

fn encode_change(event: &ChangeEvent) -> [u8; 41] {
    let mut out = [0u8; 41];
    out[0] = match event.kind {
        ChangeKind::Asset => 1,
        ChangeKind::Meta => 2,
    };
    out[1..33].copy_from_slice(event.hash.as_bytes());
    out[33..].copy_from_slice(&event.ts.to_be_bytes());
    out
}

fn decode_change(seq: u64, bytes: &[u8]) -> Result<ChangeEvent, CanError> {
    if bytes.len() != 41 {
        return Err(CanError::Storage("corrupt change record".into()));
    }
    let kind = match bytes[0] {
        1 => ChangeKind::Asset,
        _ => ChangeKind::Meta,
    };
    Ok(ChangeEvent {
        seq,
        kind,
        hash: AssetHash::from_bytes(bytes[1..33].try_into().expect("32 bytes")),
        ts: i64::from_be_bytes(bytes[33..].try_into().expect("8 bytes")),
    })
}

/// A database write, applied by the writer inside a group's transaction.
enum Write {
    /// Makes an asset whose bytes are stored visible, or merges its metadata
    /// into the record already there (`push`, `write_blob`). Answers whether
    /// the asset already existed.
    Asset {
        hash: AssetHash,
        size: u64,
        meta: pb::AssetMeta,
    },
    /// Merges a metadata update by LWW (`apply_meta`). Answers whether it won.
    Meta(MetaUpdate),
}

/// One write's own answer (see [`Write`]), or its own refusal.
type Answer = Result<bool, CanError>;

/// A queued write and the caller waiting for its answer.
struct Job {
    write: Write,
    reply: oneshot::Sender<Answer>,
}

/// The open tables of one group's write transaction, and what the group has
/// changed so far that is written once at its end.
struct Group<'txn> {
    assets: Table<'txn, [u8; 32], &'static [u8]>,
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
}

impl<'txn> Group<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, CanError> {
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
            by_change: txn.open_table(BY_CHANGE).map_err(db_err)?,
            changes,
            counters,
            next_seq,
            asset_count,
            byte_count,
            events: Vec::new(),
        })
    }

    /// Applies one write. The outer error is the group's (the database
    /// failed): it aborts the transaction and fails every write in it. The
    /// inner one is this write's own refusal, made before it wrote anything,
    /// so the rest of the group goes on.
    fn apply(&mut self, write: Write) -> Result<Answer, CanError> {
        let now = now_ms();
        match write {
            Write::Asset { hash, size, meta } => match self.record(&hash)? {
                Some(previous) => {
                    let update = MetaUpdate::of(hash, &meta);
                    self.merge(&hash, previous, &update, now)?;
                    Ok(Ok(true))
                }
                None => {
                    let mut meta = meta;
                    if meta.created_at_ms == 0 {
                        meta.created_at_ms = now;
                    }
                    let record = Record {
                        size,
                        changed_at: now,
                        meta,
                    };
                    self.asset_count += 1;
                    self.byte_count += size;
                    self.put(&hash, &record, None, ChangeKind::Asset)?;
                    Ok(Ok(false))
                }
            },
            Write::Meta(update) => match self.record(&update.hash)? {
                Some(previous) => Ok(Ok(self.merge(&update.hash, previous, &update, now)?)),
                None => Ok(Err(CanError::NotFound(update.hash))),
            },
        }
    }

    /// The record of an asset as this transaction sees it, so including the
    /// writes of this group applied before.
    fn record(&self, hash: &AssetHash) -> Result<Option<Record>, CanError> {
        let found = self.assets.get(*hash.as_bytes()).map_err(db_err)?;
        found.map(|v| Record::decode(v.value())).transpose()
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
            meta: merged,
        };
        self.put(hash, &record, Some(&previous), ChangeKind::Meta)?;
        Ok(true)
    }

    /// Writes one record, its place in the `since` index and its change.
    fn put(
        &mut self,
        hash: &AssetHash,
        record: &Record,
        previous: Option<&Record>,
        kind: ChangeKind,
    ) -> Result<(), CanError> {
        if let Some(previous) = previous {
            self.by_change
                .remove((previous.changed_at, *hash.as_bytes()))
                .map_err(db_err)?;
        }
        self.assets
            .insert(*hash.as_bytes(), record.encode().as_slice())
            .map_err(db_err)?;
        self.by_change
            .insert((record.changed_at, *hash.as_bytes()), ())
            .map_err(db_err)?;
        let event = ChangeEvent {
            seq: self.next_seq,
            kind,
            hash: *hash,
            ts: record.changed_at,
        };
        self.changes
            .insert(event.seq, encode_change(&event).as_slice())
            .map_err(db_err)?;
        self.next_seq += 1;
        self.events.push(event);
        Ok(())
    }

    /// Writes the totals, when they moved, and closes the tables; the
    /// transaction can commit.
    fn finish(mut self) -> Result<Vec<ChangeEvent>, CanError> {
        if self.events.iter().any(|e| e.kind == ChangeKind::Asset) {
            self.counters
                .insert("assets", self.asset_count)
                .map_err(db_err)?;
            self.counters
                .insert("bytes", self.byte_count)
                .map_err(db_err)?;
        }
        Ok(self.events)
    }
}

/// Applies a group of writes in one transaction and commits it. Returns each
/// write's answer, in order, and the changes to publish.
fn commit_group(
    db: &Database,
    writes: Vec<Write>,
) -> Result<(Vec<Answer>, Vec<ChangeEvent>), CanError> {
    let txn = db.begin_write().map_err(db_err)?;
    let mut group = Group::open(&txn)?;
    let answers = writes
        .into_iter()
        .map(|write| group.apply(write))
        .collect::<Result<Vec<_>, _>>()?;
    let events = group.finish()?;
    txn.commit().map_err(db_err)?;
    Ok((answers, events))
}

/// The writer thread: takes a group from the queue, commits it, publishes its
/// events, answers its callers; until every sender is gone.
fn writer_task(
    db: Arc<Database>,
    mut queue: mpsc::Receiver<Job>,
    events: broadcast::Sender<ChangeEvent>,
) {
    while let Some(first) = queue.blocking_recv() {
        // No waiting for company: the group is whatever queued up while the
        // previous one committed, so a lone write is not delayed.
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (writes, replies): (Vec<Write>, Vec<_>) =
            jobs.into_iter().map(|job| (job.write, job.reply)).unzip();
        // A caller that gave up has dropped its receiver; its write still
        // counts, like any committed write nobody waited for.
        match commit_group(&db, writes) {
            Ok((answers, changes)) => {
                for event in changes {
                    // No subscriber is not an error: events are also in the log.
                    let _ = events.send(event);
                }
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            }
            Err(err) => {
                let message = match err {
                    CanError::Storage(message) => message,
                    other => other.to_string(),
                };
                for reply in replies {
                    let _ = reply.send(Err(CanError::Storage(message.clone())));
                }
            }
        }
    }
}

/// The sending end of the writer thread's queue, and the thread.
struct Writer {
    /// `Some` until dropped; taking it closes the queue.
    queue: Option<mpsc::Sender<Job>>,
    /// Joined on drop.
    thread: Option<JoinHandle<()>>,
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
    fn start(db: Arc<Database>, events: broadcast::Sender<ChangeEvent>) -> Result<Self, CanError> {
        let (queue, receiver) = mpsc::channel(WRITE_QUEUE);
        let thread = std::thread::Builder::new()
            .name("can-store-writer".into())
            .spawn(move || writer_task(db, receiver, events))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues a write and waits until the group holding it committed.
    async fn write(&self, write: Write) -> Answer {
        let stopped = || CanError::Storage("the store's writer stopped".into());
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.as_ref().expect("the queue is open until drop");
        queue
            .send(Job { write, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn read_record(db: &Database, hash: &AssetHash) -> Result<Option<Record>, CanError> {
    let txn = db.begin_read().map_err(db_err)?;
    let assets = txn.open_table(ASSETS).map_err(db_err)?;
    let found = assets.get(*hash.as_bytes()).map_err(db_err)?;
    found.map(|v| Record::decode(v.value())).transpose()
}

fn read_changes_after(db: &Database, after: u64) -> Result<Vec<ChangeEvent>, CanError> {
    let txn = db.begin_read().map_err(db_err)?;
    let changes = txn.open_table(CHANGES).map_err(db_err)?;
    let range = changes
        .range((Bound::Excluded(after), Bound::Unbounded))
        .map_err(db_err)?;
    range
        .map(|entry| {
            let (seq, value) = entry.map_err(db_err)?;
            decode_change(seq.value(), value.value())
        })
        .collect()
}

/// Runs blocking database work off the async reactor.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CanError> + Send + 'static,
) -> Result<T, CanError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| CanError::Storage(format!("store task failed: {err}")))?
}

impl EmbeddedCan {
    /// Opens (or creates) a durable store in `dir`.
    pub fn open(dir: &Path, limits: StoreLimits) -> Result<Self, CanError> {
        let tmp = dir.join("tmp");
        if tmp.exists() {
            // Anything here was never acknowledged: a push that did not finish.
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        std::fs::create_dir_all(dir.join("blobs"))?;
        let db = Database::create(dir.join("meta.redb")).map_err(db_err)?;
        Self::with_parts(
            db,
            Blobs::Disk {
                root: dir.to_path_buf(),
            },
            limits,
        )
    }

    /// A store that keeps everything in memory.
    pub fn memory(limits: StoreLimits) -> Result<Self, CanError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(db_err)?;
        Self::with_parts(db, Blobs::Memory(RwLock::new(HashMap::new())), limits)
    }

    fn with_parts(db: Database, blobs: Blobs, limits: StoreLimits) -> Result<Self, CanError> {
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(ASSETS).map_err(db_err)?;
        txn.open_table(BY_CHANGE).map_err(db_err)?;
        txn.open_table(CHANGES).map_err(db_err)?;
        txn.open_table(COUNTERS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        let db = Arc::new(db);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let writer = Writer::start(db.clone(), events.clone())?;
        Ok(Self {
            db,
            blobs,
            events,
            writer,
            limits,
        })
    }

    fn blob_path(root: &Path, hash: &AssetHash) -> PathBuf {
        let hex = hash.to_hex();
        root.join("blobs").join(&hex[..2]).join(hex)
    }

    fn temp_path(root: &Path) -> PathBuf {
        root.join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()))
    }

    async fn has_blob(&self, hash: &AssetHash) -> bool {
        match &self.blobs {
            Blobs::Disk { root } => tokio::fs::try_exists(Self::blob_path(root, hash))
                .await
                .unwrap_or(false),
            Blobs::Memory(map) => map.read().expect("blob map lock").contains_key(hash),
        }
    }

    /// Moves a fully written and fsynced temporary file to its hash's name.
    async fn commit_blob_file(root: &Path, temp: &Path, hash: &AssetHash) -> Result<(), CanError> {
        let target = Self::blob_path(root, hash);
        let shard = target.parent().expect("blob path has a shard folder");
        tokio::fs::create_dir_all(shard).await?;
        tokio::fs::rename(temp, &target).await?;
        let shard = shard.to_path_buf();
        blocking(move || Ok(std::fs::File::open(shard)?.sync_all()?)).await
    }

    /// Stores bytes already verified to hash to `hash`.
    async fn store_verified_bytes(&self, hash: &AssetHash, data: Bytes) -> Result<(), CanError> {
        match &self.blobs {
            Blobs::Disk { root } => {
                let temp = Self::temp_path(root);
                let mut file = tokio::fs::File::create(&temp).await?;
                let written = async {
                    file.write_all(&data).await?;
                    file.sync_all().await
                }
                .await;
                if let Err(err) = written {
                    let _ = tokio::fs::remove_file(&temp).await;
                    return Err(err.into());
                }
                Self::commit_blob_file(root, &temp, hash).await
            }
            Blobs::Memory(map) => {
                map.write().expect("blob map lock").insert(*hash, data);
                Ok(())
            }
        }
    }

    /// Makes an asset whose bytes are stored visible, or merges its metadata
    /// when it already was; returns once that is committed.
    async fn commit_asset(
        &self,
        hash: AssetHash,
        size: u64,
        meta: pb::AssetMeta,
    ) -> Result<Pushed, CanError> {
        let already_existed = self.writer.write(Write::Asset { hash, size, meta }).await?;
        Ok(Pushed {
            hash,
            already_existed,
        })
    }

    async fn read_all(&self, hash: &AssetHash) -> Result<Bytes, CanError> {
        match &self.blobs {
            Blobs::Disk { root } => match tokio::fs::read(Self::blob_path(root, hash)).await {
                Ok(data) => Ok(data.into()),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    Err(CanError::NotFound(*hash))
                }
                Err(err) => Err(err.into()),
            },
            Blobs::Memory(map) => map
                .read()
                .expect("blob map lock")
                .get(hash)
                .cloned()
                .ok_or(CanError::NotFound(*hash)),
        }
    }

    fn check_size(&self, size: u64) -> Result<(), CanError> {
        if size > self.limits.max_asset_bytes {
            return Err(CanError::TooLarge {
                size,
                limit: self.limits.max_asset_bytes,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Can for EmbeddedCan {
    async fn list(&self, since: Option<i64>) -> Result<Vec<Summary>, CanError> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(db_err)?;
            let by_change = txn.open_table(BY_CHANGE).map_err(db_err)?;
            let assets = txn.open_table(ASSETS).map_err(db_err)?;
            let start = (since.unwrap_or(i64::MIN), [0u8; 32]);
            let mut out = Vec::new();
            for entry in by_change.range(start..).map_err(db_err)? {
                let (key, _) = entry.map_err(db_err)?;
                let (_, raw_hash) = key.value();
                let hash = AssetHash::from_bytes(raw_hash);
                if let Some(value) = assets.get(raw_hash).map_err(db_err)? {
                    out.push(Record::decode(value.value())?.summary(hash));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn pull(&self, hashes: &[AssetHash]) -> Result<Pulled, CanError> {
        let mut pulled = Pulled::default();
        for hash in hashes {
            let db = self.db.clone();
            let key = *hash;
            let Some(record) = blocking(move || read_record(&db, &key)).await? else {
                pulled.missing.push(*hash);
                continue;
            };
            match self.read_all(hash).await {
                Ok(data) => pulled.bundles.push(Bundle {
                    hash: *hash,
                    data,
                    meta: record.meta,
                }),
                Err(CanError::NotFound(_)) => pulled.missing.push(*hash),
                Err(err) => return Err(err),
            }
        }
        Ok(pulled)
    }

    async fn push(&self, bundle: Bundle) -> Result<Pushed, CanError> {
        let expected = bundle.hash;
        self.check_size(bundle.data.len() as u64)?;
        let data = bundle.data;
        let (data, actual) = blocking(move || {
            let actual = AssetHash::of(&data);
            Ok((data, actual))
        })
        .await?;
        if actual != expected {
            return Err(CanError::HashMismatch { expected, actual });
        }
        let size = data.len() as u64;
        if !self.has_blob(&expected).await {
            self.store_verified_bytes(&expected, data).await?;
        }
        self.commit_asset(expected, size, bundle.meta).await
    }

    async fn apply_meta(&self, update: MetaUpdate) -> Result<bool, CanError> {
        self.writer.write(Write::Meta(update)).await
    }

    async fn meta(&self, hash: AssetHash) -> Result<Option<(u64, pb::AssetMeta)>, CanError> {
        let db = self.db.clone();
        let record = blocking(move || read_record(&db, &hash)).await?;
        Ok(record.map(|r| (r.size, r.meta)))
    }

    async fn stats(&self) -> Result<StoreStats, CanError> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(db_err)?;
            let counters = txn.open_table(COUNTERS).map_err(db_err)?;
            let read = |name: &str| -> Result<u64, CanError> {
                Ok(counters.get(name).map_err(db_err)?.map_or(0, |v| v.value()))
            };
            Ok(StoreStats {
                assets: read("assets")?,
                bytes: read("bytes")?,
            })
        })
        .await
    }

    async fn subscribe(&self, after_seq: Option<u64>) -> Result<EventStream, CanError> {
        // Subscribe before reading the log, so nothing committed in between is
        // lost; duplicates are dropped by sequence number below.
        let live = self.events.subscribe();
        let db = self.db.clone();
        let start = match after_seq {
            Some(seq) => seq,
            None => {
                let db = db.clone();
                blocking(move || {
                    let txn = db.begin_read().map_err(db_err)?;
                    let changes = txn.open_table(CHANGES).map_err(db_err)?;
                    let last = changes
                        .last()
                        .map_err(db_err)?
                        .map_or(0, |(k, _)| k.value());
                    Ok(last)
                })
                .await?
            }
        };
        struct State {
            db: Arc<Database>,
            live: broadcast::Receiver<ChangeEvent>,
            last_seq: u64,
            backlog: std::collections::VecDeque<ChangeEvent>,
            needs_log_read: bool,
        }
        let state = State {
            db,
            live,
            last_seq: start,
            backlog: Default::default(),
            needs_log_read: after_seq.is_some(),
        };
        let events = stream::try_unfold(state, |mut state| async move {
            loop {
                if state.needs_log_read {
                    let db = state.db.clone();
                    let after = state.last_seq;
                    state.backlog = blocking(move || read_changes_after(&db, after))
                        .await?
                        .into();
                    state.needs_log_read = false;
                }
                if let Some(event) = state.backlog.pop_front() {
                    state.last_seq = event.seq;
                    return Ok(Some((event, state)));
                }
                match state.live.recv().await {
                    Ok(event) if event.seq <= state.last_seq => continue,
                    Ok(event) if event.seq == state.last_seq + 1 => {
                        state.last_seq = event.seq;
                        return Ok(Some((event, state)));
                    }
                    // A gap (events sent out of commit order, or missed):
                    // the log has the truth.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        state.needs_log_read = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(None),
                }
            }
        });
        Ok(events.boxed())
    }

    async fn read_blob(&self, hash: AssetHash, offset: u64) -> Result<(u64, ByteStream), CanError> {
        let Some((size, _)) = self.meta(hash).await? else {
            return Err(CanError::NotFound(hash));
        };
        let offset = offset.min(size);
        match &self.blobs {
            Blobs::Disk { root } => {
                let mut file = tokio::fs::File::open(Self::blob_path(root, &hash)).await?;
                file.seek(std::io::SeekFrom::Start(offset)).await?;
                let body = tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK)
                    .map(|chunk| chunk.map_err(CanError::from));
                Ok((size, body.boxed()))
            }
            Blobs::Memory(_) => {
                let data = self.read_all(&hash).await?.slice(offset as usize..);
                let chunks: Vec<Result<Bytes, CanError>> = (0..data.len())
                    .step_by(READ_CHUNK)
                    .map(|at| Ok(data.slice(at..(at + READ_CHUNK).min(data.len()))))
                    .collect();
                Ok((size, stream::iter(chunks).boxed()))
            }
        }
    }

    async fn write_blob(
        &self,
        hash: AssetHash,
        meta: pb::AssetMeta,
        mut body: ByteStream,
    ) -> Result<Pushed, CanError> {
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        match &self.blobs {
            Blobs::Disk { root } => {
                let temp = Self::temp_path(root);
                let mut file = tokio::fs::File::create(&temp).await?;
                let written: Result<(), CanError> = async {
                    while let Some(chunk) = body.next().await {
                        let chunk = chunk?;
                        size += chunk.len() as u64;
                        self.check_size(size)?;
                        hasher.update(&chunk);
                        file.write_all(&chunk).await?;
                    }
                    let actual = AssetHash::from(hasher.finalize());
                    if actual != hash {
                        return Err(CanError::HashMismatch {
                            expected: hash,
                            actual,
                        });
                    }
                    file.sync_all().await?;
                    Ok(())
                }
                .await;
                drop(file);
                if let Err(err) = written {
                    let _ = tokio::fs::remove_file(&temp).await;
                    return Err(err);
                }
                Self::commit_blob_file(root, &temp, &hash).await?;
            }
            Blobs::Memory(map) => {
                let mut data = BytesMut::new();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk?;
                    size += chunk.len() as u64;
                    self.check_size(size)?;
                    hasher.update(&chunk);
                    data.extend_from_slice(&chunk);
                }
                let actual = AssetHash::from(hasher.finalize());
                if actual != hash {
                    return Err(CanError::HashMismatch {
                        expected: hash,
                        actual,
                    });
                }
                map.write()
                    .expect("blob map lock")
                    .insert(hash, data.freeze());
            }
        }
        self.commit_asset(hash, size, meta).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(data: &[u8], description: &str, at: i64) -> Bundle {
        Bundle {
            hash: AssetHash::of(data),
            data: Bytes::copy_from_slice(data),
            meta: pb::AssetMeta {
                description: description.into(),
                meta_updated_at_ms: at,
                created_at_ms: 1,
                ..Default::default()
            },
        }
    }

    async fn each_backend(check: impl AsyncFn(EmbeddedCan)) {
        check(EmbeddedCan::memory(StoreLimits::default()).unwrap()).await;
        let dir = tempfile::tempdir().unwrap();
        check(EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap()).await;
    }

    #[tokio::test]
    async fn push_is_verified_idempotent_and_merges_metadata() {
        each_backend(async |store| {
            let first = store.push(bundle(b"abc", "one", 1)).await.unwrap();
            assert!(!first.already_existed);
            let again = store.push(bundle(b"abc", "two", 2)).await.unwrap();
            assert!(again.already_existed);
            let (size, meta) = store.meta(first.hash).await.unwrap().unwrap();
            assert_eq!((size, meta.description.as_str()), (3, "two"));
            assert_eq!(
                store.stats().await.unwrap(),
                StoreStats {
                    assets: 1,
                    bytes: 3
                }
            );

            let mut forged = bundle(b"abc", "x", 1);
            forged.data = Bytes::from_static(b"abd");
            assert!(matches!(
                store.push(forged).await,
                Err(CanError::HashMismatch { .. })
            ));
            assert_eq!(store.stats().await.unwrap().assets, 1);

            let pulled = store
                .pull(&[first.hash, AssetHash::of(b"nope")])
                .await
                .unwrap();
            assert_eq!(pulled.bundles.len(), 1);
            assert_eq!(pulled.bundles[0].data, &b"abc"[..]);
            assert_eq!(pulled.missing, vec![AssetHash::of(b"nope")]);
        })
        .await;
    }

    #[tokio::test]
    async fn list_since_follows_change_time() {
        each_backend(async |store| {
            store.push(bundle(b"one", "", 1)).await.unwrap();
            let all = store.list(None).await.unwrap();
            assert_eq!(all.len(), 1);
            let later = now_ms() + 60_000;
            assert!(store.list(Some(later)).await.unwrap().is_empty());
            assert_eq!(store.list(Some(0)).await.unwrap().len(), 1);
        })
        .await;
    }

    #[tokio::test]
    async fn subscribe_replays_then_follows_live() {
        each_backend(async |store| {
            let a = store.push(bundle(b"a", "", 1)).await.unwrap().hash;
            let mut live_only = store.subscribe(None).await.unwrap();
            let mut replay = store.subscribe(Some(0)).await.unwrap();
            let b = store.push(bundle(b"b", "", 1)).await.unwrap().hash;
            store
                .apply_meta(MetaUpdate::of(
                    a,
                    &pb::AssetMeta {
                        description: "edited".into(),
                        meta_updated_at_ms: 5,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap();
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(replay.next().await.unwrap().unwrap());
            }
            assert_eq!(
                seen.iter()
                    .map(|e| (e.seq, e.kind, e.hash))
                    .collect::<Vec<_>>(),
                vec![
                    (1, ChangeKind::Asset, a),
                    (2, ChangeKind::Asset, b),
                    (3, ChangeKind::Meta, a)
                ]
            );
            let first_live = live_only.next().await.unwrap().unwrap();
            assert_eq!((first_live.seq, first_live.hash), (2, b));
        })
        .await;
    }

    #[tokio::test]
    async fn streamed_write_commits_only_a_matching_hash() {
        each_backend(async |store| {
            let data = vec![7u8; 700_000];
            let hash = AssetHash::of(&data);
            let chunks = || -> ByteStream {
                let parts: Vec<Result<Bytes, CanError>> = data
                    .chunks(65_536)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                stream::iter(parts).boxed()
            };
            let wrong = store
                .write_blob(AssetHash::of(b"other"), pb::AssetMeta::default(), chunks())
                .await;
            assert!(matches!(wrong, Err(CanError::HashMismatch { .. })));
            assert_eq!(store.stats().await.unwrap().assets, 0);
            let pushed = store
                .write_blob(hash, pb::AssetMeta::default(), chunks())
                .await
                .unwrap();
            assert!(!pushed.already_existed);
            let (size, body) = store.read_blob(hash, 100).await.unwrap();
            assert_eq!(size, 700_000);
            let read: Vec<Bytes> = body.map(|c| c.unwrap()).collect().await;
            assert_eq!(read.concat(), data[100..]);
        })
        .await;
    }

    #[tokio::test]
    async fn a_disk_store_reopens_with_everything_and_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let hash = {
            let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
            std::fs::write(dir.path().join("tmp").join("leftover"), b"half").unwrap();
            store.push(bundle(b"kept", "d", 3)).await.unwrap().hash
        };
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        assert_eq!(store.meta(hash).await.unwrap().unwrap().1.description, "d");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    /// Pushes `count` distinct new assets from `tasks` concurrent tasks, checks
    /// each was acknowledged as new, and returns their hashes.
    async fn push_concurrently(
        store: &Arc<EmbeddedCan>,
        count: usize,
        tasks: usize,
    ) -> Vec<AssetHash> {
        let pushes = (0..tasks).map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut hashes = Vec::new();
                for i in (task..count).step_by(tasks) {
                    let data = format!("asset number {i}").into_bytes();
                    let pushed = store.push(bundle(&data, "", 1)).await.unwrap();
                    assert!(!pushed.already_existed);
                    hashes.push(pushed.hash);
                }
                hashes
            })
        });
        let hashes: Vec<AssetHash> = futures::future::join_all(pushes)
            .await
            .into_iter()
            .flat_map(|hashes| hashes.unwrap())
            .collect();
        assert_eq!(hashes.len(), count);
        hashes
    }

    fn sorted(mut hashes: Vec<AssetHash>) -> Vec<AssetHash> {
        hashes.sort_by_key(|h| *h.as_bytes());
        hashes
    }

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
            let log = read_changes_after(&store.db, 0).unwrap();
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
            assert_eq!(read_changes_after(&store.db, 0).unwrap().len(), 1);
        })
        .await;
    }

    /// The in-group cases, deterministically: writes see the ones before them
    /// in their group, and one write's refusal leaves the others alone.
    #[test]
    fn one_group_applies_its_writes_in_order() {
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
        };
        let (answers, events) = commit_group(
            &store.db,
            vec![
                asset(a, "first", 1),
                asset(a, "first", 1),
                Write::Meta(MetaUpdate::of(AssetHash::of(b"unknown"), &meta("x", 9))),
                Write::Meta(MetaUpdate::of(a, &meta("second", 2))),
                asset(b, "", 1),
            ],
        )
        .unwrap();
        let answers: Vec<_> = answers
            .into_iter()
            .map(|a| a.map_err(|e| matches!(e, CanError::NotFound(_))))
            .collect();
        assert_eq!(
            answers,
            vec![Ok(false), Ok(true), Err(true), Ok(true), Ok(false)]
        );
        assert_eq!(
            events
                .iter()
                .map(|e| (e.seq, e.kind, e.hash))
                .collect::<Vec<_>>(),
            vec![
                (1, ChangeKind::Asset, a),
                (2, ChangeKind::Meta, a),
                (3, ChangeKind::Asset, b)
            ]
        );
        assert_eq!(read_changes_after(&store.db, 0).unwrap(), events);
        let record = read_record(&store.db, &a).unwrap().unwrap();
        assert_eq!(record.meta.description, "second");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_subscriber_sees_every_concurrent_change_once_in_order() {
        each_backend(async |store| {
            let store = Arc::new(store);
            let earlier = push_concurrently(&store, 50, 8).await;
            let mut events = store.subscribe(None).await.unwrap();
            // 250 new assets and 50 metadata updates, all at once.
            let updates = earlier.iter().map(|hash| {
                let (store, hash) = (store.clone(), *hash);
                tokio::spawn(async move {
                    let update = MetaUpdate::of(
                        hash,
                        &pb::AssetMeta {
                            description: "edited".into(),
                            meta_updated_at_ms: 7,
                            ..Default::default()
                        },
                    );
                    assert!(store.apply_meta(update).await.unwrap());
                })
            });
            let updates = futures::future::join_all(updates);
            let (_, _) = tokio::join!(updates, async {
                // Distinct from the first 50: `push_concurrently` names by index.
                let more = (50..300).map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let data = format!("asset number {i}").into_bytes();
                        store.push(bundle(&data, "", 1)).await.unwrap()
                    })
                });
                futures::future::join_all(more).await
            });
            let mut seen = Vec::new();
            for _ in 0..300 {
                let next = tokio::time::timeout(std::time::Duration::from_secs(10), events.next());
                seen.push(next.await.unwrap().unwrap().unwrap());
            }
            assert_eq!(
                seen.iter().map(|e| e.seq).collect::<Vec<_>>(),
                (51..=350).collect::<Vec<_>>()
            );
            assert_eq!(seen, read_changes_after(&store.db, 50).unwrap());
            assert_eq!(
                seen.iter().filter(|e| e.kind == ChangeKind::Meta).count(),
                50
            );
            let quiet =
                tokio::time::timeout(std::time::Duration::from_millis(100), events.next()).await;
            assert!(quiet.is_err(), "no event beyond the 300 changes");
        })
        .await;
    }

    /// redb's in-memory backend that fails every write once `fail` is set.
    #[derive(Debug)]
    struct FailingBackend {
        inner: redb::backends::InMemoryBackend,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl FailingBackend {
        fn check(&self) -> std::io::Result<()> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
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
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let db = Database::builder()
            .create_with_backend(FailingBackend {
                inner: redb::backends::InMemoryBackend::new(),
                fail: fail.clone(),
            })
            .unwrap();
        let store = Arc::new(
            EmbeddedCan::with_parts(
                db,
                Blobs::Memory(RwLock::new(HashMap::new())),
                StoreLimits::default(),
            )
            .unwrap(),
        );
        store.push(bundle(b"kept", "", 1)).await.unwrap();
        let mut events = store.subscribe(None).await.unwrap();
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
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
        assert_eq!(read_changes_after(&store.db, 0).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn limits_refuse_large_assets() {
        let store = EmbeddedCan::memory(StoreLimits { max_asset_bytes: 4 }).unwrap();
        assert!(matches!(
            store.push(bundle(b"12345", "", 1)).await,
            Err(CanError::TooLarge { size: 5, limit: 4 })
        ));
    }
}
