//! Forgetting an asset (`fsck --repair`) within a group: its record,
//! whole or damaged, and its entries in the indexes; and the read that
//! checks a write's place in the asset table once the index is known to be
//! damaged.

use redb::ReadableTable;

use super::super::{Answer, Written};
use super::Group;
use crate::asset::AssetHash;
use crate::can::store::schema::{db_err, Record};
use crate::can::CanError;

impl Group<'_> {
    /// Reads the place of `hash` in the asset table, its panic caught: redb
    /// panics on a page that does not parse, and a panic in a read leaves
    /// the transaction as it was, where one in a write would leave it half
    /// done. A write whose place is on a damaged page is refused before it
    /// changes anything.
    pub(super) fn reachable(&self, hash: &AssetHash) -> Result<(), CanError> {
        let key = *hash.as_bytes();
        match crate::can::store::without_panics(|| {
            self.assets.get(key).map(|found| found.is_some())
        }) {
            Ok(_) => Ok(()),
            Err(panic) => Err(CanError::Storage(format!(
                "{hash}: the page of the store's index that holds its place is damaged \
                 ({panic}); run `can-sync fsck`"
            ))),
        }
    }

    /// Removes the entries of `hash` from the `since` index and the change
    /// log, found by reading both whole: for a record that does not decode,
    /// which cannot say where they are.
    fn remove_entries_of(&mut self, hash: &AssetHash) -> Result<(), CanError> {
        let key = *hash.as_bytes();
        let mut since = Vec::new();
        for entry in self.by_change.iter().map_err(db_err)? {
            let (at, entry_hash) = entry.map_err(db_err)?.0.value();
            if entry_hash == key {
                since.push(at);
            }
        }
        for at in since {
            self.by_change.remove((at, key)).map_err(db_err)?;
        }
        let mut logged = Vec::new();
        for entry in self.changes.iter().map_err(db_err)? {
            let (seq, change) = entry.map_err(db_err)?;
            if change.value().get(1..33) == Some(&key[..]) {
                logged.push(seq.value());
            }
        }
        for seq in logged {
            self.changes.remove(seq).map_err(db_err)?;
        }
        Ok(())
    }

    /// Removes an asset's record, its place in the `since` index and its
    /// change, damaged or not, so that the store no longer holds it and a
    /// peer that does sends it again. Answers whether there was one.
    pub(super) fn forget(&mut self, hash: &AssetHash) -> Result<Answer, CanError> {
        // Forgetting undoes what is committed; a write of this group is
        // not yet (its index entries are the group's, and under `AssumeNew`
        // unchecked), so the forget waits for it.
        if self.records.contains_key(hash.as_bytes()) {
            return Ok(Err(CanError::Invalid(format!(
                "{hash} was written in the same group of writes: forget it once that \
                 write committed"
            ))));
        }
        let previous = match self.record(hash) {
            Ok(None) => return Ok(Err(CanError::NotFound(*hash))),
            Ok(Some(previous)) => Some(previous),
            Err(CanError::DamagedRecord { .. }) => None,
            Err(err) => return Err(err),
        };
        self.assets.remove(*hash.as_bytes()).map_err(db_err)?;
        match previous {
            Some(previous) => {
                self.by_change
                    .remove((previous.changed_at, *hash.as_bytes()))
                    .map_err(db_err)?;
                self.changes.remove(previous.seq).map_err(db_err)?;
                self.asset_count = self.asset_count.saturating_sub(1);
                self.byte_count = self.byte_count.saturating_sub(previous.size);
                self.forgotten.push(previous.summary(*hash));
            }
            // Where it was logged and what it weighed are unknown: its
            // entries are found by reading the indexes whole, and the byte
            // total is counted again when the group finishes (a repair's
            // cost, not a write's).
            None => {
                self.remove_entries_of(hash)?;
                self.asset_count = self.asset_count.saturating_sub(1);
                self.cells_stale = true;
            }
        }
        self.counts_moved = true;
        Ok(Ok(Written {
            outcome: true,
            seq: None,
        }))
    }

    /// The bytes of every record of the asset table that decodes: the byte
    /// total once a damaged record, whose size is unknown, was forgotten.
    /// A record still damaged is not counted; `fsck --repair` forgets every
    /// one it finds.
    pub(super) fn readable_bytes(&self) -> Result<u64, CanError> {
        let mut bytes = 0u64;
        for entry in self.assets.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let hash = AssetHash::from_bytes(key.value());
            if let Ok(record) = Record::decode_of(&hash, value.value()) {
                bytes = bytes.saturating_add(record.size);
            }
        }
        Ok(bytes)
    }
}
