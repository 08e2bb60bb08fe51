//! The store's database: its redb tables, how an asset record and a change
//! record are laid out in them, and the reads the store makes of them.
//!
//! Only [`writer`](super::writer) writes these tables (creating them at open
//! aside); everything here reads, each call in its own read transaction.

use std::ops::Bound;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::asset::{AssetHash, Summary};
use crate::can::{CanError, ChangeEvent, ChangeKind, StoreStats};
use crate::pb;

/// hash → [size u64 BE][change time i64 BE][encoded AssetMeta]
pub(super) const ASSETS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("assets");
/// (change time, hash) → (): the `since` index.
pub(super) const BY_CHANGE: TableDefinition<(i64, [u8; 32]), ()> =
    TableDefinition::new("by_change");
/// seq → [kind u8][hash 32][ts i64 BE]: the change log that events replay.
pub(super) const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
/// "assets", "bytes" → running totals, so `/health` needs no scan.
pub(super) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// A database failure, as the store reports it.
pub(super) fn db_err(err: impl std::fmt::Display) -> CanError {
    CanError::Storage(format!("database: {err}"))
}

/// Creates every table that does not exist yet, so that reads never meet a
/// missing one.
pub(super) fn create_tables(db: &Database) -> Result<(), CanError> {
    let txn = db.begin_write().map_err(db_err)?;
    txn.open_table(ASSETS).map_err(db_err)?;
    txn.open_table(BY_CHANGE).map_err(db_err)?;
    txn.open_table(CHANGES).map_err(db_err)?;
    txn.open_table(COUNTERS).map_err(db_err)?;
    txn.commit().map_err(db_err)
}

/// A stored asset record.
pub(super) struct Record {
    pub(super) size: u64,
    /// When the asset or its metadata last changed (Unix ms): its key in
    /// [`BY_CHANGE`].
    pub(super) changed_at: i64,
    pub(super) meta: pb::AssetMeta,
}

impl Record {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.meta.encoded_len());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.changed_at.to_be_bytes());
        self.meta.encode(&mut out).expect("Vec grows as needed");
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, CanError> {
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

/// The [`CHANGES`] value of one change event (its key is the sequence number).
pub(super) fn encode_change(event: &ChangeEvent) -> [u8; 41] {
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

/// The record of one asset, `None` when unknown.
pub(super) fn read_record(db: &Database, hash: &AssetHash) -> Result<Option<Record>, CanError> {
    let txn = db.begin_read().map_err(db_err)?;
    let assets = txn.open_table(ASSETS).map_err(db_err)?;
    let found = assets.get(*hash.as_bytes()).map_err(db_err)?;
    found.map(|v| Record::decode(v.value())).transpose()
}

/// Summaries of the assets changed at or after `since` (all when `None`),
/// ascending by change time.
pub(super) fn read_summaries(db: &Database, since: Option<i64>) -> Result<Vec<Summary>, CanError> {
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
}

/// The running totals of [`COUNTERS`].
pub(super) fn read_stats(db: &Database) -> Result<StoreStats, CanError> {
    let txn = db.begin_read().map_err(db_err)?;
    let counters = txn.open_table(COUNTERS).map_err(db_err)?;
    let read = |name: &str| -> Result<u64, CanError> {
        Ok(counters.get(name).map_err(db_err)?.map_or(0, |v| v.value()))
    };
    Ok(StoreStats {
        assets: read("assets")?,
        bytes: read("bytes")?,
    })
}

/// The sequence number of the last change logged, 0 when none.
pub(super) fn read_last_seq(db: &Database) -> Result<u64, CanError> {
    let txn = db.begin_read().map_err(db_err)?;
    let changes = txn.open_table(CHANGES).map_err(db_err)?;
    let last = changes
        .last()
        .map_err(db_err)?
        .map_or(0, |(k, _)| k.value());
    Ok(last)
}

/// Every change logged after sequence number `after`, in order.
pub(super) fn read_changes_after(db: &Database, after: u64) -> Result<Vec<ChangeEvent>, CanError> {
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
