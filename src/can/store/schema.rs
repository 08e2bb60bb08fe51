//! The store's database: its redb tables, how an asset record and a change
//! record are laid out in them, and the reads the store makes of them.
//!
//! Only [`writer`](super::writer) writes these tables (creating them at open
//! aside); everything here reads, each call in its own read transaction.

use std::ops::Bound;

use bytes::Bytes;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::segments::{Committed, Location};
use super::window::Window;
use crate::asset::{AssetHash, Summary};
use crate::can::{CanError, ChangeEvent, ChangeKind, Page, SinceCursor, StoreStats};
use crate::pb;

/// hash → [size u64 BE][change time i64 BE][change seq u64 BE][location,
/// 20 bytes, when the seq word's top bit is set][encoded AssetMeta]
/// (schema 4 added the location of a packed value; schema 1 had no seq).
pub(super) const ASSETS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("assets");
/// hash → the bytes of a small asset (up to
/// [`INLINE_LIMIT`](super::INLINE_LIMIT)), written in the same transaction
/// as its record (schema 3). A larger asset's bytes are a file; so are those
/// of a small asset stored before schema 3, which reads still find there.
pub(super) const INLINE_BLOBS: TableDefinition<[u8; 32], &[u8]> =
    TableDefinition::new("inline_blobs");
/// segment → its recorded end (schema 4): the bytes of it that commits point
/// into. The last segment is the open one; opening cuts it back to this end.
/// Written in the transaction of every group that appended to a segment.
pub(super) const SEGMENTS: TableDefinition<u64, u64> = TableDefinition::new("segments");
/// "cells/N" → part N of the store's coded cells in the wire form of
/// [`encode_cells`](crate::recon::riblt::encode_cells), saved when a store of
/// [enough assets](super::coded::SAVE_FROM_ASSETS) closes cleanly; [`CELLS_AT_SEQ`] in [`COUNTERS`] says the last change they
/// include. Cells saved before a later change are stale and rebuilt.
pub(super) const SAVED_CELLS: TableDefinition<&str, &[u8]> = TableDefinition::new("coded_cells");
/// The [`COUNTERS`] key of the last change the saved cells include.
pub(super) const CELLS_AT_SEQ: &str = "cells_at_seq";
/// (change time, hash) → (): the `since` index.
pub(super) const BY_CHANGE: TableDefinition<(i64, [u8; 32]), ()> =
    TableDefinition::new("by_change");
/// seq → [kind u8][hash 32][ts i64 BE]: the change log that events replay,
/// compacted: only the latest change of each asset is kept (its record names
/// it), so the log holds one entry per asset and replaying it from 0 costs
/// one entry per asset.
pub(super) const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
/// "assets", "bytes" → running totals, so `/health` needs no scan;
/// [`SCHEMA`] → the record layout; [`STORE_ID`] → this store's identity.
pub(super) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// The [`COUNTERS`] key of the record layout version.
const SCHEMA: &str = "schema";
/// The record layout this code writes: 4 keeps small assets' bytes in pack
/// segments, their [`Location`] in the record ([`SEGMENTS`] the segments'
/// ends); 3 kept them in [`INLINE_BLOBS`]; 2
/// added the change seq to records. A schema 2 or 3 store opens as schema 4
/// without a rewrite: its rows and files are read where they are, and new
/// small assets go to segments.
pub(super) const SCHEMA_VERSION: u64 = 4;
/// The [`COUNTERS`] key of the store's identity: a random number drawn when
/// the store (or its change log) is created, so a sequence number remembered
/// from another store, or from before a reset, is never trusted.
pub(super) const STORE_ID: &str = "store_id";

/// [`COUNTERS`] key: the last sequence number given when it is no longer
/// in [`CHANGES`] (the asset it was given to was forgotten, or the number
/// went to forgetting): sequence numbers only grow, so a subscriber never
/// sees one twice.
pub(super) const SEQ_ISSUED: &str = "seq_issued";

/// A database failure, as the store reports it.
pub(super) fn db_err(err: impl std::fmt::Display) -> CanError {
    CanError::Storage(format!("database: {err}"))
}

/// Creates every table that does not exist yet, so that reads never meet a
/// missing one, gives a new store its identity, and brings an older store
/// to this schema. A store written by a newer version is refused rather than
/// misread. Returns the store's identity.
pub(super) fn create_tables(db: &Database) -> Result<u64, CanError> {
    if let Some(store_id) = current_store_id(db)? {
        return Ok(store_id);
    }
    let txn = db.begin_write().map_err(db_err)?;
    let schema = {
        txn.open_table(ASSETS).map_err(db_err)?;
        txn.open_table(INLINE_BLOBS).map_err(db_err)?;
        txn.open_table(SEGMENTS).map_err(db_err)?;
        txn.open_table(SAVED_CELLS).map_err(db_err)?;
        txn.open_table(BY_CHANGE).map_err(db_err)?;
        txn.open_table(CHANGES).map_err(db_err)?;
        let counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let schema = counters.get(SCHEMA).map_err(db_err)?.map(|v| v.value());
        schema
    };
    match schema {
        None => migrate_from_schema_1(&txn)?,
        Some(found) if found > SCHEMA_VERSION => {
            return Err(CanError::Storage(format!(
                "the store was written by a newer can-sync (schema {found}; this one knows up to {SCHEMA_VERSION})"
            )))
        }
        Some(_) => {}
    }
    let store_id = {
        let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
        counters.insert(SCHEMA, SCHEMA_VERSION).map_err(db_err)?;
        let existing = counters.get(STORE_ID).map_err(db_err)?.map(|v| v.value());
        match existing {
            Some(id) if schema.is_some() => id,
            // New, or its change log was just rebuilt: a new identity.
            _ => {
                let id = rand::random::<u64>() | 1;
                counters.insert(STORE_ID, id).map_err(db_err)?;
                id
            }
        }
    };
    txn.commit().map_err(db_err)?;
    Ok(store_id)
}

/// The store's identity when its database needs nothing of
/// [`create_tables`]: every table there, the schema this one, an identity
/// drawn. Opening such a store commits nothing of ours (redb still saves
/// its allocator state when the database closes).
fn current_store_id(db: &Database) -> Result<Option<u64>, CanError> {
    fn exists<K: redb::Key + 'static, V: redb::Value + 'static>(
        txn: &redb::ReadTransaction,
        table: TableDefinition<K, V>,
    ) -> Result<bool, CanError> {
        match txn.open_table(table) {
            Ok(_) => Ok(true),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(err) => Err(db_err(err)),
        }
    }
    let txn = db.begin_read().map_err(db_err)?;
    let every_table = exists(&txn, ASSETS)?
        && exists(&txn, INLINE_BLOBS)?
        && exists(&txn, SEGMENTS)?
        && exists(&txn, SAVED_CELLS)?
        && exists(&txn, BY_CHANGE)?
        && exists(&txn, CHANGES)?
        && exists(&txn, COUNTERS)?;
    if !every_table {
        return Ok(None);
    }
    let counters = txn.open_table(COUNTERS).map_err(db_err)?;
    let read = |name: &str| -> Result<Option<u64>, CanError> {
        Ok(counters.get(name).map_err(db_err)?.map(|v| v.value()))
    };
    if read(SCHEMA)? != Some(SCHEMA_VERSION) {
        return Ok(None);
    }
    read(STORE_ID)
}

/// The store ID of a database to read without changing it: one of the
/// current schema, whole. An older one is refused, not migrated, since
/// migrating is a change older binaries cannot undo.
pub(super) fn store_id_to_read(db: &Database) -> Result<u64, CanError> {
    current_store_id(db)?.ok_or_else(|| {
        CanError::Storage(format!(
            "the store's database is of an older schema than {SCHEMA_VERSION}, or lacks \
             tables: a command that writes to the store (add, daemon) upgrades it; one \
             that only reads it changes nothing, so cannot"
        ))
    })
}

/// Rewrites schema 1 records (no change seq) as schema 2 and rebuilds the
/// change log compacted: one entry per asset, in hash order. A store with no
/// records has nothing to rewrite. One pass, one entry in memory at a time.
fn migrate_from_schema_1(txn: &redb::WriteTransaction) -> Result<(), CanError> {
    txn.delete_table(CHANGES).map_err(db_err)?;
    let mut changes = txn.open_table(CHANGES).map_err(db_err)?;
    let mut assets = txn.open_table(ASSETS).map_err(db_err)?;
    let mut seq = 0u64;
    let mut cursor: Option<[u8; 32]> = None;
    loop {
        // Re-read from the cursor each step: a table cannot be iterated
        // while it is written.
        let next = {
            let mut range = match cursor {
                Some(after) => assets.range((Bound::Excluded(after), Bound::Unbounded)),
                None => assets.range::<[u8; 32]>(..),
            }
            .map_err(db_err)?;
            match range.next() {
                Some(entry) => {
                    let (key, value) = entry.map_err(db_err)?;
                    Some((key.value(), value.value().to_vec()))
                }
                None => None,
            }
        };
        let Some((hash, old)) = next else { break };
        if old.len() < 16 {
            return Err(CanError::Storage("corrupt schema 1 asset record".into()));
        }
        seq += 1;
        let record = Record {
            size: u64::from_be_bytes(old[..8].try_into().expect("8 bytes")),
            changed_at: i64::from_be_bytes(old[8..16].try_into().expect("8 bytes")),
            seq,
            location: None,
            meta: pb::AssetMeta::decode(&old[16..]).map_err(db_err)?,
        };
        assets
            .insert(hash, record.encode().as_slice())
            .map_err(db_err)?;
        let change = ChangeEvent {
            seq,
            kind: ChangeKind::Asset,
            hash: AssetHash::from_bytes(hash),
            ts: record.changed_at,
        };
        changes
            .insert(seq, encode_change(&change).as_slice())
            .map_err(db_err)?;
        cursor = Some(hash);
    }
    Ok(())
}

/// A stored asset record.
pub(super) struct Record {
    pub(super) size: u64,
    /// When the asset or its metadata last changed (Unix ms): its key in
    /// [`BY_CHANGE`].
    pub(super) changed_at: i64,
    /// The sequence number of its latest change: its one entry in [`CHANGES`].
    pub(super) seq: u64,
    /// Where its bytes are in the pack segments, when they are packed. In
    /// the record rather than a table of its own: a table would cost each
    /// asset another key and B-tree entry, a tenth of a 4 KiB asset's size.
    pub(super) location: Option<Location>,
    pub(super) meta: pb::AssetMeta,
}

/// Bytes of a record before its location and metadata.
const RECORD_HEADER: usize = 24;
/// Set in the seq word of a record that carries a location: no sequence
/// number reaches it, and records written before schema 4 never have it.
const HAS_LOCATION: u64 = 1 << 63;

impl Record {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER + 20 + self.meta.encoded_len());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.changed_at.to_be_bytes());
        let flag = if self.location.is_some() {
            HAS_LOCATION
        } else {
            0
        };
        out.extend_from_slice(&(self.seq | flag).to_be_bytes());
        if let Some(location) = &self.location {
            out.extend_from_slice(&location.encode());
        }
        self.meta.encode(&mut out).expect("Vec grows as needed");
        out
    }

    /// [`Self::decode`] of the record of `hash`, its failure naming the
    /// asset: a damaged record is named by `fsck`, not only found.
    pub(super) fn decode_of(hash: &AssetHash, bytes: &[u8]) -> Result<Self, CanError> {
        Self::decode(bytes).map_err(|err| {
            let why = match err {
                CanError::Storage(why) => why,
                other => other.to_string(),
            };
            CanError::DamagedRecord { hash: *hash, why }
        })
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, CanError> {
        let corrupt = || CanError::Storage("corrupt asset record".into());
        if bytes.len() < RECORD_HEADER {
            return Err(corrupt());
        }
        let word = |at: usize| -> [u8; 8] { bytes[at..at + 8].try_into().expect("8 bytes") };
        let seq = u64::from_be_bytes(word(16));
        let (location, meta) = if seq & HAS_LOCATION != 0 {
            let raw = bytes
                .get(RECORD_HEADER..RECORD_HEADER + 20)
                .ok_or_else(corrupt)?;
            let location = Location::decode(raw.try_into().expect("20 bytes"));
            (Some(location), &bytes[RECORD_HEADER + 20..])
        } else {
            (None, &bytes[RECORD_HEADER..])
        };
        Ok(Self {
            size: u64::from_be_bytes(word(0)),
            changed_at: i64::from_be_bytes(word(8)),
            seq: seq & !HAS_LOCATION,
            location,
            meta: pb::AssetMeta::decode(meta).map_err(db_err)?,
        })
    }

    pub(super) fn summary(&self, hash: AssetHash) -> Summary {
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
    found
        .map(|v| Record::decode_of(hash, v.value()))
        .transpose()
}

/// Where an asset's bytes are, as the index says.
pub(super) enum Place {
    /// A row of [`INLINE_BLOBS`] (a schema 3 store): the bytes themselves.
    Row(Bytes),
    /// In a pack segment.
    Packed(Location),
    /// A blob file (or, in memory, the blob map).
    File,
}

/// An asset's record and where its bytes are.
pub(super) type Stored = (Record, Place);

/// The record of one asset and where its bytes are; `None` when unknown.
/// One read transaction, so both are of the same commit.
pub(super) fn read_record_and_inline(
    db: &Database,
    hash: &AssetHash,
) -> Result<Option<Stored>, CanError> {
    let txn = db.begin_read().map_err(db_err)?;
    read_in(&txn, hash)
}

/// [`read_record_and_inline`] for many assets in one read transaction.
pub(super) fn read_many(
    db: &Database,
    hashes: &[AssetHash],
) -> Result<Vec<Option<Stored>>, CanError> {
    let txn = db.begin_read().map_err(db_err)?;
    hashes.iter().map(|hash| read_in(&txn, hash)).collect()
}

fn read_in(txn: &redb::ReadTransaction, hash: &AssetHash) -> Result<Option<Stored>, CanError> {
    let assets = txn.open_table(ASSETS).map_err(db_err)?;
    let Some(found) = assets.get(*hash.as_bytes()).map_err(db_err)? else {
        return Ok(None);
    };
    let record = Record::decode_of(hash, found.value())?;
    if let Some(location) = record.location {
        return Ok(Some((record, Place::Packed(location))));
    }
    let inline = txn.open_table(INLINE_BLOBS).map_err(db_err)?;
    let place = match inline.get(*hash.as_bytes()).map_err(db_err)? {
        Some(row) => Place::Row(Bytes::copy_from_slice(row.value())),
        None => Place::File,
    };
    Ok(Some((record, place)))
}

/// The open segment and its recorded end, as the last commit left them.
pub(super) fn read_open_segment(db: &Database) -> Result<Committed, CanError> {
    let txn = db.begin_read().map_err(db_err)?;
    let segments = txn.open_table(SEGMENTS).map_err(db_err)?;
    let last = segments.last().map_err(db_err)?;
    Ok(last.map_or(Committed::EMPTY, |(segment, end)| Committed {
        segment: segment.value(),
        end: end.value(),
    }))
}

/// Up to `limit` summaries in hash order, after `after` (from the start when
/// `None`); the cursor to continue from when there may be more.
///
/// Read window by window of the key space, each range bounded at both ends.
/// redb walks down to the leaf of a range's end before it yields anything,
/// to the last leaf for an open end, so one damaged leaf there would fail
/// every listing of the store; bounded, it fails only the windows that
/// reach it.
pub(super) fn read_page_by_hash(
    db: &Database,
    after: Option<AssetHash>,
    limit: usize,
) -> Result<Page<Summary, AssetHash>, CanError> {
    let txn = db.begin_read().map_err(db_err)?;
    let assets = txn.open_table(ASSETS).map_err(db_err)?;
    let mut items = Vec::with_capacity(limit.min(4096));
    let mut window = Window::first(after, limit, assets.len().map_err(db_err)?);
    loop {
        for entry in assets.range(window.range()).map_err(db_err)? {
            if items.len() == limit {
                break;
            }
            let (key, value) = entry.map_err(db_err)?;
            let hash = AssetHash::from_bytes(key.value());
            items.push(Record::decode_of(&hash, value.value())?.summary(hash));
        }
        if items.len() == limit {
            break;
        }
        match window.next() {
            Some(next) => window = next,
            None => break,
        }
    }
    let next = (items.len() == limit)
        .then(|| items.last().map(|s| s.hash))
        .flatten();
    Ok(Page { items, next })
}

/// Up to `limit` summaries of the assets changed at or after `since` (Unix
/// ms), ascending by change time, after `after`; the cursor to continue from.
pub(super) fn read_page_since(
    db: &Database,
    since: i64,
    after: Option<SinceCursor>,
    limit: usize,
) -> Result<Page<Summary, SinceCursor>, CanError> {
    let txn = db.begin_read().map_err(db_err)?;
    let by_change = txn.open_table(BY_CHANGE).map_err(db_err)?;
    let assets = txn.open_table(ASSETS).map_err(db_err)?;
    let range = match after {
        Some(after) => by_change.range((
            Bound::Excluded((after.changed_at, *after.hash.as_bytes())),
            Bound::Unbounded,
        )),
        None => by_change.range((since, [0u8; 32])..),
    }
    .map_err(db_err)?;
    let mut items = Vec::with_capacity(limit.min(4096));
    let mut last = None;
    for entry in range.take(limit) {
        let (key, _) = entry.map_err(db_err)?;
        let (changed_at, raw_hash) = key.value();
        let hash = AssetHash::from_bytes(raw_hash);
        last = Some(SinceCursor { changed_at, hash });
        if let Some(value) = assets.get(raw_hash).map_err(db_err)? {
            items.push(Record::decode_of(&hash, value.value())?.summary(hash));
        }
    }
    let next = last.filter(|_| items.len() == limit);
    Ok(Page { items, next })
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

/// The last sequence number given, 0 when none: that of the last change
/// logged, or a later one no longer logged ([`SEQ_ISSUED`]).
pub(super) fn read_last_seq(db: &Database) -> Result<u64, CanError> {
    let txn = db.begin_read().map_err(db_err)?;
    let changes = txn.open_table(CHANGES).map_err(db_err)?;
    let logged = changes
        .last()
        .map_err(db_err)?
        .map_or(0, |(k, _)| k.value());
    let counters = txn.open_table(COUNTERS).map_err(db_err)?;
    let issued = counters
        .get(SEQ_ISSUED)
        .map_err(db_err)?
        .map_or(0, |v| v.value());
    Ok(logged.max(issued))
}

/// Up to `limit` changes logged after sequence number `after`, in order,
/// each with the summary of the asset it changed.
pub(super) fn read_changes_after(
    db: &Database,
    after: u64,
    limit: usize,
) -> Result<Vec<(ChangeEvent, Summary)>, CanError> {
    let txn = db.begin_read().map_err(db_err)?;
    let changes = txn.open_table(CHANGES).map_err(db_err)?;
    let assets = txn.open_table(ASSETS).map_err(db_err)?;
    let range = changes
        .range((Bound::Excluded(after), Bound::Unbounded))
        .map_err(db_err)?;
    let mut out = Vec::with_capacity(limit.min(4096));
    for entry in range.take(limit) {
        let (seq, value) = entry.map_err(db_err)?;
        let change = decode_change(seq.value(), value.value())?;
        let record = assets
            .get(*change.hash.as_bytes())
            .map_err(db_err)?
            .ok_or_else(|| {
                CanError::Storage(format!("logged change of unknown asset {}", change.hash))
            })?;
        let summary = Record::decode_of(&change.hash, record.value())?.summary(change.hash);
        out.push((change, summary));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;

    use super::*;

    /// A database as schema 1 left it: records without a change seq, a log
    /// with every change (two of the same asset), no schema marker.
    fn schema_1_database() -> (Database, [u8; 32], [u8; 32]) {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let (a, b) = (
            *AssetHash::of(b"a").as_bytes(),
            *AssetHash::of(b"b").as_bytes(),
        );
        let txn = db.begin_write().unwrap();
        {
            let mut assets = txn.open_table(ASSETS).unwrap();
            let mut changes = txn.open_table(CHANGES).unwrap();
            for (seq, hash, at) in [(1u64, a, 10i64), (2, b, 20), (3, a, 30)] {
                let meta = pb::AssetMeta {
                    description: format!("at {at}"),
                    meta_updated_at_ms: at,
                    created_at_ms: 5,
                    ..Default::default()
                };
                let mut old = Vec::new();
                old.extend_from_slice(&1u64.to_be_bytes());
                old.extend_from_slice(&at.to_be_bytes());
                meta.encode(&mut old).unwrap();
                assets.insert(hash, old.as_slice()).unwrap();
                let event = ChangeEvent {
                    seq,
                    kind: ChangeKind::Asset,
                    hash: AssetHash::from_bytes(hash),
                    ts: at,
                };
                changes
                    .insert(seq, encode_change(&event).as_slice())
                    .unwrap();
            }
            txn.open_table(BY_CHANGE).unwrap();
            txn.open_table(COUNTERS).unwrap();
        }
        txn.commit().unwrap();
        (db, a, b)
    }

    /// A record with a location and one without (as schema 3 wrote it)
    /// each decode to what was encoded.
    #[test]
    fn records_carry_their_location_when_they_have_one() {
        let meta = pb::AssetMeta {
            description: "d".into(),
            ..Default::default()
        };
        for location in [
            None,
            Some(Location {
                segment: 7,
                offset: 1 << 40,
                len: 4096,
            }),
        ] {
            let record = Record {
                size: 4096,
                changed_at: -3,
                seq: 42,
                location,
                meta: meta.clone(),
            };
            let decoded = Record::decode(&record.encode()).unwrap();
            assert_eq!(
                (
                    decoded.size,
                    decoded.changed_at,
                    decoded.seq,
                    decoded.location
                ),
                (4096, -3, 42, location)
            );
            assert_eq!(decoded.meta, meta);
        }
    }

    /// A store of `keys`, each with a whole record.
    fn store_of(keys: &[[u8; 32]]) -> Database {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        create_tables(&db).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut assets = txn.open_table(ASSETS).unwrap();
            for (seq, key) in keys.iter().enumerate() {
                let record = Record {
                    size: 1,
                    changed_at: 1,
                    seq: seq as u64 + 1,
                    location: None,
                    meta: pb::AssetMeta::default(),
                };
                assets.insert(key, record.encode().as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        db
    }

    proptest::proptest! {
        /// Listed page by page, in windows of the key space, a store gives
        /// every key once, in order, however its keys bunch (a shared
        /// prefix, the first and the last key) and whatever the pages' size.
        #[test]
        fn pages_list_every_key_once_in_order(
            spread in proptest::collection::vec(proptest::prelude::any::<[u8; 32]>(), 0..300),
            bunched in proptest::collection::vec(proptest::prelude::any::<[u8; 24]>(), 0..100),
            ends in proptest::prelude::any::<bool>(),
            limit in 1usize..50,
        ) {
            let mut keys = spread;
            keys.extend(bunched.iter().map(|tail| {
                let mut key = [0x5a; 32];
                key[8..].copy_from_slice(tail);
                key
            }));
            if ends {
                keys.extend([[0; 32], [0xff; 32]]);
            }
            keys.sort();
            keys.dedup();
            let db = store_of(&keys);
            let mut listed = Vec::new();
            let mut after = None;
            loop {
                let page = read_page_by_hash(&db, after, limit).unwrap();
                proptest::prop_assert!(page.items.len() <= limit);
                listed.extend(page.items.iter().map(|s| *s.hash.as_bytes()));
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            proptest::prop_assert_eq!(listed, keys);
        }
    }

    #[test]
    fn a_schema_1_store_is_migrated_with_a_compacted_log_and_a_new_identity() {
        let (db, a, b) = schema_1_database();
        let id = create_tables(&db).unwrap();
        let log: Vec<AssetHash> = read_changes_after(&db, 0, 10)
            .unwrap()
            .into_iter()
            .map(|(change, _)| change.hash)
            .collect();
        let mut expected = vec![AssetHash::from_bytes(a), AssetHash::from_bytes(b)];
        expected.sort();
        assert_eq!(log, expected, "one entry per asset");
        let record = read_record(&db, &AssetHash::from_bytes(a))
            .unwrap()
            .unwrap();
        assert_eq!(record.meta.description, "at 30");
        assert_eq!((record.changed_at, record.size), (30, 1));
        assert_eq!(
            create_tables(&db).unwrap(),
            id,
            "the identity stays once set"
        );
        let txn = db.begin_read().unwrap();
        let counters = txn.open_table(COUNTERS).unwrap();
        assert_eq!(
            counters.get(SCHEMA).unwrap().unwrap().value(),
            SCHEMA_VERSION
        );
    }
}
