//! The store's coded set for rateless reconciliation ([`crate::recon::riblt`]):
//! the first [`KEPT_CELLS`] cells of the set of its summaries, kept in memory
//! and current with every commit, so a session reads cells and never scans.
//!
//! Saved when the store closes cleanly and loaded when it opens again (13 MiB
//! read instead of a pass over every record); built from the asset table
//! (one pass, `O(n log M)`: 2.7 s at 1M assets) when no saved cells are
//! current: a new store, one that crashed, one changed since, or one too
//! small to be worth saving ([`SAVE_FROM_ASSETS`]). Then
//! updated by the writer thread after each commit: a changed
//! summary is the removal of its old element and the insertion of its new
//! one, about 25 cells each. Updates happen only after the commit succeeded,
//! so the cells never describe a write that was rolled back; a reader between
//! a commit and its update sees the set as it was just before, as a read
//! transaction begun then would. A write is acknowledged, and its change
//! event published, only once the cells include it.
//!
//! `M = 2^17` cells take 13 MiB whatever the store's size, and answer any
//! difference up to about 80,000 elements; beyond that a session falls back
//! to the full exchange.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable};

use super::schema::{
    db_err, read_last_seq, read_stats, Record, ASSETS, CELLS_AT_SEQ, COUNTERS, SAVED_CELLS,
};
use crate::asset::{AssetHash, Summary};
use crate::can::CanError;
use crate::recon::riblt::estimate::{Probe, PROBE_SPAN};
use crate::recon::riblt::{decode_cells, encode_cells, Cell, CodedCells, Element};

/// Cells kept: as many as a probe samples.
pub const KEPT_CELLS: usize = PROBE_SPAN;

/// Cells per saved part.
const SAVED_PART: usize = 8_192;
const _: () = assert!(KEPT_CELLS.is_multiple_of(SAVED_PART), "whole parts");

/// Stores holding fewer assets close without saving their cells. Measured
/// on the reference machine (PERFORMANCE.md, "Small stores close without
/// their cells"): saving took about 30 ms at close and loading about 22 ms
/// at open, whatever the store's size, while building them took 45 ms for
/// 10,000 assets; the two meet near 12,000 assets. Below this a store's
/// database is also the smaller for it: 4.9 MB instead of 34.6 MB for a
/// store seeded with 10,000 assets. The unit tests cross it with a few
/// dozen assets.
pub(super) const SAVE_FROM_ASSETS: u64 = if cfg!(test) { 32 } else { 12_000 };

/// The key of saved part `part`. It names the digest width, so cells saved
/// by a build whose elements carried less of the digest are never loaded:
/// they are rebuilt.
fn part_key(part: usize) -> String {
    format!("cells-digest{}/{part}", crate::recon::riblt::DIGEST_PREFIX)
}

/// One committed change of a summary: the old one (none for a new asset) and
/// the new one.
pub(super) type SummaryChange = (Option<Summary>, Summary);

/// The coded cells of a store, shared by its readers and its writer; none
/// when they could not be built, as past a damaged page of the index: the
/// store then serves no cells, and its peers exchange full lists with it.
#[derive(Clone)]
pub(super) struct CodedSet(Arc<Mutex<Option<CodedCells>>>);

impl std::fmt::Debug for CodedSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CodedSet").finish_non_exhaustive()
    }
}

/// Where the cells of an opened store came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// Saved by the last clean close, current.
    Saved,
    /// Built from every record.
    Built,
    /// None: a page of the index could not be read to build them.
    Damaged,
}

impl CodedSet {
    /// The cells of every asset `db` holds: the saved ones when they include
    /// the last change, else built anew.
    pub(super) fn open(db: &Database) -> Result<(Self, Origin), CanError> {
        match Self::load(db)? {
            Some(cells) => Ok((Self::of(cells), Origin::Saved)),
            None => Ok((Self::of(Self::cells_of(db)?), Origin::Built)),
        }
    }

    /// No cells: for a store whose index cannot be read whole, which must
    /// still open (for `fsck` to name the damage, for a daemon to serve
    /// what it can read).
    pub(super) fn unavailable() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }

    fn of(cells: CodedCells) -> Self {
        Self(Arc::new(Mutex::new(Some(cells))))
    }

    /// The saved cells, when they are current and whole.
    fn load(db: &Database) -> Result<Option<CodedCells>, CanError> {
        let last = read_last_seq(db)?;
        let txn = db.begin_read().map_err(db_err)?;
        let counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let at = counters
            .get(CELLS_AT_SEQ)
            .map_err(db_err)?
            .map(|v| v.value());
        if at != Some(last) {
            return Ok(None);
        }
        let saved = txn.open_table(SAVED_CELLS).map_err(db_err)?;
        let mut cells = Vec::with_capacity(KEPT_CELLS);
        for part in 0..KEPT_CELLS / SAVED_PART {
            let Some(bytes) = saved.get(part_key(part).as_str()).map_err(db_err)? else {
                return Ok(None);
            };
            // Saved by us, but a damaged value only costs a rebuild.
            match decode_cells(bytes.value(), SAVED_PART) {
                Ok(run) if run.len() == SAVED_PART => cells.extend(run),
                _ => return Ok(None),
            }
        }
        Ok(Some(CodedCells::from_cells(cells)))
    }

    /// Saves the cells with the last change they include; called by the
    /// writer once no write can follow. In parts, so saving never holds a
    /// second copy of all the cells. A store of fewer than
    /// [`SAVE_FROM_ASSETS`] assets is not saved (false): the cells it saved
    /// before, if any, stay stale and unread, as the next open finds the
    /// changes since.
    pub(super) fn save(&self, db: &Database) -> Result<bool, CanError> {
        let held = self.0.lock().expect("coded cells lock");
        let Some(cells) = held.as_ref() else {
            return Ok(false);
        };
        if read_stats(db)?.assets < SAVE_FROM_ASSETS {
            return Ok(false);
        }
        let last = read_last_seq(db)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut saved = txn.open_table(SAVED_CELLS).map_err(db_err)?;
            for part in 0..KEPT_CELLS / SAVED_PART {
                let run = cells.cells(part * SAVED_PART..(part + 1) * SAVED_PART);
                saved
                    .insert(part_key(part).as_str(), encode_cells(run).as_slice())
                    .map_err(db_err)?;
            }
            let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
            counters.insert(CELLS_AT_SEQ, last).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(true)
    }

    /// The cells of every asset `db` holds, from its records. A record that
    /// does not decode is left out, named in the log: one damaged record
    /// must not keep the store from opening (and `fsck` from naming it).
    fn cells_of(db: &Database) -> Result<CodedCells, CanError> {
        let mut cells = CodedCells::new(KEPT_CELLS);
        let txn = db.begin_read().map_err(db_err)?;
        let assets = txn.open_table(ASSETS).map_err(db_err)?;
        for entry in assets.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let hash = AssetHash::from_bytes(key.value());
            match Record::decode_of(&hash, value.value()) {
                Ok(record) => cells.insert(&Element::of(&record.summary(hash))),
                Err(err) => {
                    tracing::error!("{err}; left out of the coded cells, run fsck");
                }
            }
        }
        Ok(cells)
    }

    /// Applies committed changes.
    pub(super) fn apply(&self, changes: &[SummaryChange]) {
        let mut held = self.0.lock().expect("coded cells lock");
        let Some(cells) = held.as_mut() else {
            return;
        };
        for (old, new) in changes {
            if let Some(old) = old {
                cells.remove(&Element::of(old));
            }
            cells.insert(&Element::of(new));
        }
    }

    /// Takes the summaries of forgotten assets out.
    pub(super) fn forget(&self, forgotten: &[Summary]) {
        let mut held = self.0.lock().expect("coded cells lock");
        let Some(cells) = held.as_mut() else {
            return;
        };
        for summary in forgotten {
            cells.remove(&Element::of(summary));
        }
    }

    /// Builds the cells again from every record `db` holds: after a record
    /// whose summary is unknown (it did not decode) was forgotten.
    pub(super) fn rebuild(&self, db: &Database) -> Result<(), CanError> {
        let cells = Self::cells_of(db)?;
        *self.0.lock().expect("coded cells lock") = Some(cells);
        Ok(())
    }

    /// The cells in `range`, cut to the cells kept; none without cells.
    pub(super) fn cells(&self, range: Range<usize>) -> Option<Vec<Cell>> {
        let held = self.0.lock().expect("coded cells lock");
        Some(held.as_ref()?.cells(range).to_vec())
    }

    /// The probe of the set; none without cells.
    pub(super) fn probe(&self) -> Option<Probe> {
        Some(Probe::of(
            self.0.lock().expect("coded cells lock").as_ref()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{bundle, each_backend, push_concurrently};
    use super::super::{EmbeddedCan, StoreLimits};
    use super::*;
    use crate::asset::MetaUpdate;
    use crate::can::{list_all, Can, ChangeKind};
    use crate::pb;
    use crate::recon::riblt::{Decoder, Progress};
    use redb::ReadableTableMetadata;

    /// The cells of `store`'s summaries, computed from scratch.
    async fn from_listing(store: &EmbeddedCan) -> CodedCells {
        let mut cells = CodedCells::new(KEPT_CELLS);
        for summary in list_all(store).await.unwrap() {
            cells.insert(&Element::of(&summary));
        }
        cells
    }

    async fn kept(store: &EmbeddedCan) -> Vec<Cell> {
        store.coded_cells(0, KEPT_CELLS).await.unwrap().unwrap()
    }

    fn edit(hash: AssetHash, description: &str, at: i64) -> MetaUpdate {
        MetaUpdate::of(
            hash,
            &pb::AssetMeta {
                description: description.into(),
                meta_updated_at_ms: at,
                created_at_ms: 1,
                ..Default::default()
            },
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_cells_follow_every_committed_change() {
        each_backend(async |store| {
            let store = Arc::new(store);
            let hashes = push_concurrently(&store, 60, 6).await;
            // A duplicate push, a winning and a losing edit, a trash.
            store.push(bundle(b"asset number 3", "", 1)).await.unwrap();
            assert!(store.apply_meta(edit(hashes[0], "newer", 9)).await.unwrap());
            assert!(!store.apply_meta(edit(hashes[0], "older", 2)).await.unwrap());
            let mut trash = edit(hashes[1], "", 10);
            trash.is_trashed = true;
            assert!(store.apply_meta(trash).await.unwrap());
            let expected = from_listing(&store).await;
            assert_eq!(kept(&store).await, expected.cells(0..KEPT_CELLS));
        })
        .await;
    }

    /// An event is published only once the cells include its change: a
    /// subscriber that hears of the k-th new asset reads cells of at least k
    /// elements (every element maps to cell 0, so its count is the set's
    /// size), however many groups commit meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_event_is_published_only_once_the_cells_include_it() {
        use futures::StreamExt;
        each_backend(async |store| {
            let store = Arc::new(store);
            let mut events = store.subscribe(None).await.unwrap();
            let pushes = tokio::spawn({
                let store = store.clone();
                async move { push_concurrently(&store, 200, 8).await }
            });
            let watch = async {
                for heard in 1..=200i64 {
                    let event = events.next().await.unwrap().unwrap();
                    assert_eq!(event.kind, ChangeKind::Asset);
                    let count = store.coded_cells(0, 1).await.unwrap().unwrap()[0].count;
                    assert!(
                        count >= heard,
                        "event {heard} heard with {count} in the cells"
                    );
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(60), watch)
                .await
                .expect("every event arrives");
            pushes.await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn a_reopened_store_rebuilds_the_same_cells() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
            for i in 0..40u32 {
                store
                    .push(bundle(&i.to_le_bytes(), "x", i64::from(i)))
                    .await
                    .unwrap();
            }
            kept(&store).await
        };
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        assert_eq!(kept(&store).await, before);
        assert_eq!(before[0].count, 40);
    }

    /// A clean close saves the cells and the next open loads them; a change
    /// committed after the save (as a crash would leave it) makes them stale,
    /// and they are built anew.
    #[tokio::test]
    async fn saved_cells_are_loaded_only_while_current() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
            for i in 0..40u32 {
                store.push(bundle(&i.to_le_bytes(), "x", 1)).await.unwrap();
            }
            kept(&store).await
        };
        let path = dir.path().join("meta.redb");
        {
            let db = Database::create(&path).unwrap();
            let (cells, origin) = CodedSet::open(&db).unwrap();
            assert_eq!(origin, Origin::Saved);
            assert_eq!(cells.cells(0..KEPT_CELLS).unwrap(), before);
            // A change the saved cells do not include.
            let txn = db.begin_write().unwrap();
            {
                let mut changes = txn.open_table(super::super::schema::CHANGES).unwrap();
                let last = changes.last().unwrap().map(|(k, _)| k.value()).unwrap();
                let event = crate::can::ChangeEvent {
                    seq: last + 1,
                    kind: crate::can::ChangeKind::Meta,
                    hash: AssetHash::of(&0u32.to_le_bytes()),
                    ts: 2,
                };
                changes
                    .insert(
                        last + 1,
                        super::super::schema::encode_change(&event).as_slice(),
                    )
                    .unwrap();
            }
            txn.commit().unwrap();
            let (rebuilt, origin) = CodedSet::open(&db).unwrap();
            assert_eq!(origin, Origin::Built);
            assert_eq!(
                rebuilt.cells(0..KEPT_CELLS).unwrap(),
                before,
                "built from the records"
            );
        }
    }

    /// A store of fewer than [`SAVE_FROM_ASSETS`] assets closes without
    /// writing its cells, and builds the same cells when it opens again;
    /// one more asset and the close saves them.
    #[tokio::test]
    async fn a_small_store_closes_without_saving_its_cells() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let small = SAVE_FROM_ASSETS as u32 - 1;
        let before = {
            let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
            for i in 0..small {
                store.push(bundle(&i.to_le_bytes(), "x", 1)).await.unwrap();
            }
            kept(&store).await
        };
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_read().unwrap();
            let saved = txn.open_table(SAVED_CELLS).unwrap();
            assert!(saved.is_empty().unwrap(), "no cells written at close");
            drop((saved, txn));
            let (cells, origin) = CodedSet::open(&db).unwrap();
            assert_eq!(origin, Origin::Built);
            assert_eq!(cells.cells(0..KEPT_CELLS).unwrap(), before);
        }
        let after = {
            let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
            store
                .push(bundle(&small.to_le_bytes(), "x", 1))
                .await
                .unwrap();
            kept(&store).await
        };
        let db = Database::create(&path).unwrap();
        let (cells, origin) = CodedSet::open(&db).unwrap();
        assert_eq!(origin, Origin::Saved, "{SAVE_FROM_ASSETS} assets are saved");
        assert_eq!(cells.cells(0..KEPT_CELLS).unwrap(), after);
    }

    /// Cells saved while the store was large enough are not loaded once it
    /// fell below the bound by forgetting: they are stale (forgetting moved
    /// the last sequence number), the close did not save again, and the
    /// next open builds the cells of what is left.
    #[tokio::test]
    async fn cells_saved_before_a_store_shrank_below_the_bound_are_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let hashes: Vec<AssetHash> = {
            let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
            let mut hashes = Vec::new();
            for i in 0..SAVE_FROM_ASSETS as u32 {
                hashes.push(
                    store
                        .push(bundle(&i.to_le_bytes(), "x", 1))
                        .await
                        .unwrap()
                        .hash,
                );
            }
            hashes
        };
        let left = {
            let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
            for hash in &hashes[..4] {
                assert!(store.forget(*hash).await.unwrap());
            }
            from_listing(&store).await
        };
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let saved = txn.open_table(SAVED_CELLS).unwrap();
        assert!(
            !saved.is_empty().unwrap(),
            "the cells saved while large stay"
        );
        drop((saved, txn));
        let (cells, origin) = CodedSet::open(&db).unwrap();
        assert_eq!(origin, Origin::Built);
        assert_eq!(
            cells.cells(0..KEPT_CELLS).unwrap(),
            left.cells(0..KEPT_CELLS)
        );
    }

    #[tokio::test]
    async fn two_stores_cells_decode_to_exactly_their_difference() {
        let (a, b) = (
            EmbeddedCan::memory(StoreLimits::default()).unwrap(),
            EmbeddedCan::memory(StoreLimits::default()).unwrap(),
        );
        for i in 0..200u32 {
            let shared = bundle(&i.to_le_bytes(), "", 1);
            a.push(shared.clone()).await.unwrap();
            b.push(shared).await.unwrap();
        }
        let only_a = a.push(bundle(b"only on a", "", 1)).await.unwrap().hash;
        let only_b = b.push(bundle(b"only on b", "", 1)).await.unwrap().hash;
        let edited = AssetHash::of(&7u32.to_le_bytes());
        assert!(b.apply_meta(edit(edited, "edited on b", 5)).await.unwrap());

        let probe = b.coded_probe().await.unwrap().unwrap();
        assert_eq!(probe, Probe::of(&from_listing(&b).await));
        let mut decoder = Decoder::new();
        let mut start = 0;
        let decoded = loop {
            let ours = a.coded_cells(start, 16).await.unwrap().unwrap();
            let theirs = b.coded_cells(start, 16).await.unwrap().unwrap();
            start += 16;
            if let Progress::Decoded(decoded) = decoder.add(&ours, &theirs).unwrap() {
                break decoded;
            }
        };
        let mut ours: Vec<AssetHash> = decoded.only_ours.iter().map(|e| e.hash()).collect();
        let mut theirs: Vec<AssetHash> = decoded.only_theirs.iter().map(|e| e.hash()).collect();
        ours.sort_by_key(|h| *h.as_bytes());
        theirs.sort_by_key(|h| *h.as_bytes());
        let sorted = |mut v: Vec<AssetHash>| {
            v.sort_by_key(|h| *h.as_bytes());
            v
        };
        assert_eq!(ours, sorted(vec![only_a, edited]));
        assert_eq!(theirs, sorted(vec![only_b, edited]));
    }
}
