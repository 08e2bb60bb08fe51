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

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{stream, StreamExt};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::broadcast;

use super::{
    ByteStream, Can, CanError, ChangeEvent, ChangeKind, EventStream, Pulled, Pushed, StoreStats,
};
use crate::asset::{merge_meta, now_ms, AssetHash};
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
    db: Arc<Database>,
    blobs: Blobs,
    /// Live change events, sent after each commit.
    events: broadcast::Sender<ChangeEvent>,
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

    fn summary(&self, hash: &AssetHash) -> pb::AssetSummary {
        crate::asset::summary_of(hash, self.size, &self.meta)
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

/// Writes one record and its change into an open write transaction, keeping
/// the index and counters right. Returns the change event to publish.
fn record_change(
    txn: &redb::WriteTransaction,
    hash: &AssetHash,
    record: &Record,
    previous: Option<&Record>,
    kind: ChangeKind,
) -> Result<ChangeEvent, CanError> {
    let mut assets = txn.open_table(ASSETS).map_err(db_err)?;
    let mut by_change = txn.open_table(BY_CHANGE).map_err(db_err)?;
    let mut changes = txn.open_table(CHANGES).map_err(db_err)?;
    let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
    if let Some(previous) = previous {
        by_change
            .remove((previous.changed_at, *hash.as_bytes()))
            .map_err(db_err)?;
    } else {
        let assets_count = counters
            .get("assets")
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        let bytes_count = counters
            .get("bytes")
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        counters
            .insert("assets", assets_count + 1)
            .map_err(db_err)?;
        counters
            .insert("bytes", bytes_count + record.size)
            .map_err(db_err)?;
    }
    assets
        .insert(*hash.as_bytes(), record.encode().as_slice())
        .map_err(db_err)?;
    by_change
        .insert((record.changed_at, *hash.as_bytes()), ())
        .map_err(db_err)?;
    let seq = changes
        .last()
        .map_err(db_err)?
        .map_or(1, |(k, _)| k.value() + 1);
    let event = ChangeEvent {
        seq,
        kind,
        hash: *hash,
        ts: record.changed_at,
    };
    changes
        .insert(seq, encode_change(&event).as_slice())
        .map_err(db_err)?;
    Ok(event)
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
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Self {
            db: Arc::new(db),
            blobs,
            events,
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
    /// when it already was.
    async fn commit_asset(
        &self,
        hash: AssetHash,
        size: u64,
        meta: pb::AssetMeta,
    ) -> Result<Pushed, CanError> {
        let db = self.db.clone();
        let (event, already_existed) = blocking(move || {
            let txn = db.begin_write().map_err(db_err)?;
            let previous = {
                let assets = txn.open_table(ASSETS).map_err(db_err)?;
                let found = assets.get(*hash.as_bytes()).map_err(db_err)?;
                found.map(|v| Record::decode(v.value())).transpose()?
            };
            let now = now_ms();
            let (event, existed) = match previous {
                Some(previous) => {
                    let mut merged = previous.meta.clone();
                    if !merge_meta(&mut merged, &crate::asset::update_of(&hash, &meta)) {
                        return Ok((None, true));
                    }
                    let record = Record {
                        size: previous.size,
                        changed_at: now,
                        meta: merged,
                    };
                    let event =
                        record_change(&txn, &hash, &record, Some(&previous), ChangeKind::Meta)?;
                    (Some(event), true)
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
                    (
                        Some(record_change(
                            &txn,
                            &hash,
                            &record,
                            None,
                            ChangeKind::Asset,
                        )?),
                        false,
                    )
                }
            };
            txn.commit().map_err(db_err)?;
            Ok((event, existed))
        })
        .await?;
        if let Some(event) = event {
            // No subscriber is not an error: events are also in the log.
            let _ = self.events.send(event);
        }
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
    async fn list(&self, since: Option<i64>) -> Result<Vec<pb::AssetSummary>, CanError> {
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
                    out.push(Record::decode(value.value())?.summary(&hash));
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
                Ok(data) => pulled.bundles.push(pb::AssetBundle {
                    hash: hash.to_hex(),
                    data: data.to_vec(),
                    meta: Some(record.meta),
                }),
                Err(CanError::NotFound(_)) => pulled.missing.push(*hash),
                Err(err) => return Err(err),
            }
        }
        Ok(pulled)
    }

    async fn push(&self, bundle: pb::AssetBundle) -> Result<Pushed, CanError> {
        let expected: AssetHash = bundle
            .hash
            .parse()
            .map_err(|err: crate::asset::MalformedHash| CanError::Invalid(err.to_string()))?;
        self.check_size(bundle.data.len() as u64)?;
        let data = Bytes::from(bundle.data);
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
        self.commit_asset(expected, size, bundle.meta.unwrap_or_default())
            .await
    }

    async fn apply_meta(&self, update: pb::MetaUpdate) -> Result<bool, CanError> {
        let hash: AssetHash = update
            .hash
            .parse()
            .map_err(|err: crate::asset::MalformedHash| CanError::Invalid(err.to_string()))?;
        let db = self.db.clone();
        let event = blocking(move || {
            let txn = db.begin_write().map_err(db_err)?;
            let previous = {
                let assets = txn.open_table(ASSETS).map_err(db_err)?;
                let found = assets.get(*hash.as_bytes()).map_err(db_err)?;
                found.map(|v| Record::decode(v.value())).transpose()?
            };
            let previous = previous.ok_or(CanError::NotFound(hash))?;
            let mut merged = previous.meta.clone();
            if !merge_meta(&mut merged, &update) {
                return Ok(None);
            }
            let record = Record {
                size: previous.size,
                changed_at: now_ms(),
                meta: merged,
            };
            let event = record_change(&txn, &hash, &record, Some(&previous), ChangeKind::Meta)?;
            txn.commit().map_err(db_err)?;
            Ok(Some(event))
        })
        .await?;
        let applied = event.is_some();
        if let Some(event) = event {
            let _ = self.events.send(event);
        }
        Ok(applied)
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

    fn bundle(data: &[u8], description: &str, at: i64) -> pb::AssetBundle {
        pb::AssetBundle {
            hash: AssetHash::of(data).to_hex(),
            data: data.to_vec(),
            meta: Some(pb::AssetMeta {
                description: description.into(),
                meta_updated_at_ms: at,
                created_at_ms: 1,
                ..Default::default()
            }),
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
            forged.data = b"abd".to_vec();
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
            assert_eq!(pulled.bundles[0].data, b"abc");
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
                .apply_meta(crate::asset::update_of(
                    &a,
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

    #[tokio::test]
    async fn limits_refuse_large_assets() {
        let store = EmbeddedCan::memory(StoreLimits { max_asset_bytes: 4 }).unwrap();
        assert!(matches!(
            store.push(bundle(b"12345", "", 1)).await,
            Err(CanError::TooLarge { size: 5, limit: 4 })
        ));
    }
}
