//! One group of the writer's: the writes the writer thread took from its
//! queue together, applied in order in one redb write transaction and
//! committed once ([`commit_group`]). What stays true of a group:
//! - its writes are applied one after the other, each seeing the ones
//!   before it: of two pushes of the same new asset, the first stores it
//!   and the second finds it (`already_existed`), one copy and one log entry;
//! - the records it writes are kept aside (its own reads look there first)
//!   and go into the asset table at its end, in key order: keys are hashes,
//!   so a group of thousands lands on as many B-tree leaves, and in key
//!   order each branch page is done with once its leaves are, instead of
//!   being revisited throughout (PERFORMANCE.md, "Loading", issue 22);
//! - a small asset's bytes are appended to the open pack segment as its
//!   write is applied, and the segment is fdatasynced, and its new end
//!   recorded, before the transaction can commit
//!   ([`segments`](crate::can::store::segments));
//! - a group of a bulk load's size may take its new assets to be new
//!   without looking each up ([`Lookups`], chosen by
//!   [`Guess`](super::guess::Guess)); the
//!   key-ordered insert checks, and a group that finds it was wrong keeps
//!   nothing (its transaction aborted, its packed bytes cut back) and is
//!   applied again with a lookup per write, so its answers are the same
//!   either way;
//! - when its transaction fails, nothing of it is kept. A write's own
//!   refusal (a metadata update of an unknown asset) touches nothing and
//!   fails only that write.
//!
//! The thread that takes groups from the queue, and publishes what they
//! committed, is the [parent module](super).

use std::collections::BTreeMap;

use redb::{Database, ReadableTable, Table, WriteTransaction};

mod forget;

use super::guess::Lookups;
use super::{Answer, Write, Written};
use crate::asset::{edit_stamp, merge_meta, AssetHash, MetaUpdate, Summary, MAX_META_BYTES};
use crate::can::store::coded::SummaryChange;
use crate::can::store::schema::{
    db_err, encode_change, Record, ASSETS, BY_CHANGE, CHANGES, COUNTERS, INLINE_BLOBS, SEGMENTS,
    SEQ_ISSUED,
};
use crate::can::store::segments::SegmentWriter;
use crate::can::{CanError, ChangeEvent, ChangeKind};
use crate::clock::now_ms;

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
    /// The running totals, written to `counters` by [`Group::finish`]
    /// when they moved.
    asset_count: u64,
    byte_count: u64,
    counts_moved: bool,
    /// The summaries of the assets forgotten, for the coded set.
    forgotten: Vec<Summary>,
    /// A record forgotten that did not decode: its summary is unknown, so
    /// the coded set must be built again from the records.
    cells_stale: bool,
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
    /// Each write first reads its place in the asset table, and is refused
    /// if that meets a damaged page (see [`Group::reachable`]).
    careful: bool,
}

/// A record a group wrote, to insert into `assets` when it finishes.
struct Pending {
    record: Vec<u8>,
    /// Written by an asset write that took the asset to be new without
    /// looking it up ([`Lookups::AssumeNew`]): the table must not hold it.
    unchecked: bool,
}

impl<'txn> Group<'txn> {
    fn open(
        txn: &'txn WriteTransaction,
        segments: Option<&'txn mut SegmentWriter>,
        lookups: Lookups,
        careful: bool,
    ) -> Result<Self, CanError> {
        let changes = txn.open_table(CHANGES).map_err(db_err)?;
        let counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let count = |name: &str| -> Result<u64, CanError> {
            Ok(counters.get(name).map_err(db_err)?.map_or(0, |v| v.value()))
        };
        // Past every sequence number given, those of forgotten assets too
        // (their log entries are gone): a subscriber never sees one twice.
        let logged = changes
            .last()
            .map_err(db_err)?
            .map_or(0, |(k, _)| k.value());
        let next_seq = logged.max(count(SEQ_ISSUED)?) + 1;
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
            counts_moved: false,
            forgotten: Vec::new(),
            cells_stale: false,
            events: Vec::new(),
            summaries: Vec::new(),
            records: BTreeMap::new(),
            lookups,
            met_held: false,
            careful,
        })
    }

    /// Applies one write. The outer error is the group's (the database
    /// failed): it aborts the transaction and fails every write in it. The
    /// inner one is this write's own refusal, made before it wrote anything,
    /// so the rest of the group goes on.
    ///
    /// A record damaged behind the store's back is that write's refusal:
    /// each write reads its asset's record before it writes anything, and
    /// the other writes of the group have no part in the damage. It is not
    /// replaced: what is left of it is fsck's to name.
    fn apply(&mut self, write: &Write) -> Result<Answer, CanError> {
        // A group that looks its assets up reads their places anyway; first
        // with the panic caught, so a damaged page costs that write alone.
        if self.careful || self.lookups == Lookups::Each {
            if let Err(refused) = self.reachable(&write.hash()) {
                return Ok(Err(refused));
            }
        }
        if let Write::Forget(hash) = write {
            return self.forget(hash);
        }
        match self.apply_to_whole_records(write) {
            Err(damaged @ CanError::DamagedRecord { .. }) => Ok(Err(damaged)),
            answer => answer,
        }
    }

    fn apply_to_whole_records(&mut self, write: &Write) -> Result<Answer, CanError> {
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
                    self.counts_moved = true;
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
            Write::Forget(_) => unreachable!("applied by Group::forget"),
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
        // Forgetting takes a sequence number of its own, which no change
        // carries: the store's last sequence number moves, so coded cells
        // saved before it are not taken for current.
        if !self.forgotten.is_empty() || self.cells_stale {
            self.counters
                .insert(SEQ_ISSUED, self.next_seq)
                .map_err(db_err)?;
        }
        if self.cells_stale {
            self.byte_count = self.readable_bytes()?;
        }
        if self.counts_moved {
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
            forgotten: self.forgotten,
            cells_stale: self.cells_stale,
            met_held: self.met_held,
        }))
    }
}

/// What a group changed, to publish once it is committed.
pub(super) struct Committed {
    /// The change events, in sequence order.
    pub(super) events: Vec<ChangeEvent>,
    /// The summaries changed.
    pub(super) summaries: Vec<SummaryChange>,
    /// The summaries of the assets forgotten.
    pub(super) forgotten: Vec<Summary>,
    /// A damaged record was forgotten: the coded set must be built again.
    pub(super) cells_stale: bool,
    /// An asset write found its asset already held.
    pub(super) met_held: bool,
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
    careful: bool,
) -> Result<Option<(Vec<Answer>, Committed)>, CanError> {
    let result = (|| {
        let txn = db.begin_write().map_err(db_err)?;
        let mut group = Group::open(&txn, segments.as_deref_mut(), lookups, careful)?;
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
/// that meets a held asset, again with a lookup per write: its answers are
/// those of a group that looked each asset up, whatever `lookups` said.
pub(super) fn commit_group_looking_up(
    db: &Database,
    mut segments: Option<&mut SegmentWriter>,
    writes: &[Write],
    lookups: Lookups,
    careful: bool,
) -> Result<(Vec<Answer>, Committed), CanError> {
    if lookups == Lookups::AssumeNew {
        let assumed = commit_group(db, segments.as_deref_mut(), writes, lookups, careful)?;
        if let Some(done) = assumed {
            return Ok(done);
        }
    }
    Ok(commit_group(db, segments, writes, Lookups::Each, careful)?
        .expect("a group that looks each asset up never meets one it took for new"))
}

#[cfg(test)]
mod tests {
    use super::super::super::fixtures::logged;
    use super::super::super::schema::read_record;
    use super::super::super::{EmbeddedCan, StoreLimits};
    use super::*;
    use crate::pb;

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
            false,
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
    /// What it met is what the next large group's guess learns from.
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
        let (_, committed) = commit_group_looking_up(
            &store.db,
            None,
            &[asset(b"held", "old", 1)],
            Lookups::AssumeNew,
            false,
        )
        .unwrap();
        assert!(!committed.met_held, "the first group met nothing held");

        let writes = [asset(b"new", "", 1), asset(b"held", "newer", 2)];
        assert!(
            commit_group(&store.db, None, &writes, Lookups::AssumeNew, false)
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

        let (answers, committed) =
            commit_group_looking_up(&store.db, None, &writes, Lookups::AssumeNew, false).unwrap();
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
        assert!(committed.met_held, "the group met a held asset");

        let (_, committed) = commit_group_looking_up(
            &store.db,
            None,
            &[asset(b"newest", "", 1)],
            Lookups::Each,
            false,
        )
        .unwrap();
        assert!(!committed.met_held);
    }
}
