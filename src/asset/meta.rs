//! Metadata versions and the merge.
//!
//! An asset's metadata has three kinds of fields, and each merges its own way:
//! - the mutable fields (description, tags, trash flag, and their time
//!   `meta_updated_at_ms`) by last-writer-wins: the value with the greater
//!   [`MetaVersion`] (update time, then the BLAKE3 of exactly these fields,
//!   then, should two values ever share both, the fields themselves) wins, a
//!   total order, so every node that sees the same updates in any order keeps
//!   the same value;
//! - `created_at_ms` to the earliest value seen (the same bytes added on two
//!   nodes carry two times; both keep the smaller; 0 means not known);
//! - name and MIME type stay as the store first saw them: they describe an
//!   upload, they are not synced once the asset exists.
//!
//! A version digests exactly the fields the merge makes equal, and a summary
//! carries the version (the whole 32-byte digest: a prefix of it could be
//! made to collide) and the creation time: after one session two nodes hold
//! equal summaries, and the next session moves nothing.

use prost::Message;

use super::{AssetHash, MalformedHash};
use crate::pb;

/// The most bytes of text an asset's metadata may hold: name, MIME type,
/// description and tags together. Stores refuse more where it
/// enters and never keep it, so no asset's metadata is too large to travel
/// in a frame.
pub const MAX_META_BYTES: u64 = 64 * 1024;

/// The bytes of `meta` that [`MAX_META_BYTES`] bounds.
pub fn meta_text_bytes(meta: &pb::AssetMeta) -> u64 {
    let tags: usize = meta.tags.iter().map(String::len).sum();
    (meta.name.len() + meta.mime_type.len() + meta.description.len() + tags) as u64
}

/// The LWW order key of a metadata value: its update time, then the BLAKE3 of
/// its mutable fields. Two values with equal keys have equal mutable fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetaVersion {
    /// `meta_updated_at_ms` of the value.
    pub updated_at_ms: i64,
    /// BLAKE3 of the protobuf encoding of the mutable fields (or a
    /// zero-padded prefix of it, as summaries carry it on the v2 wire).
    pub digest: [u8; 32],
}

impl MetaVersion {
    /// The version of `meta`: only its mutable fields count.
    pub fn of(meta: &pb::AssetMeta) -> Self {
        Self {
            updated_at_ms: meta.meta_updated_at_ms,
            digest: *blake3::hash(&mutable_fields(meta)).as_bytes(),
        }
    }

    /// This version with only the first `prefix` bytes of its digest, as
    /// summaries carry it on the v2 wire.
    pub fn truncated(mut self, prefix: usize) -> Self {
        self.digest[prefix.min(32)..].fill(0);
        self
    }

    /// The version a peer announced: a digest shorter than 32 bytes (v1
    /// peers send none) is zero-padded, so two versions truncated alike still
    /// order by their prefixes; peers that send no digest rank below any
    /// digest at the same time.
    pub fn announced(updated_at_ms: i64, digest: &[u8]) -> Self {
        let mut padded = [0u8; 32];
        let len = digest.len().min(32);
        padded[..len].copy_from_slice(&digest[..len]);
        Self {
            updated_at_ms,
            digest: padded,
        }
    }
}

/// A change of the mutable metadata fields of one asset: what `META_UPDATE`
/// and `POST /sync/meta` carry, with its hash parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaUpdate {
    /// The asset it changes.
    pub hash: AssetHash,
    /// The new description.
    pub description: String,
    /// The new tags, in order.
    pub tags: Vec<String>,
    /// The new trash flag.
    pub is_trashed: bool,
    /// When the change was made; the LWW key.
    pub meta_updated_at_ms: i64,
    /// When the asset entered its first store, as the sender knows it; merges
    /// to the earliest (0: not known).
    pub created_at_ms: i64,
}

impl MetaUpdate {
    /// The bytes of its text that [`MAX_META_BYTES`] bounds.
    pub fn text_bytes(&self) -> u64 {
        let tags: usize = self.tags.iter().map(String::len).sum();
        (self.description.len() + tags) as u64
    }

    /// The update that carries the mutable fields of `meta` for `hash`.
    pub fn of(hash: AssetHash, meta: &pb::AssetMeta) -> Self {
        Self {
            hash,
            description: meta.description.clone(),
            tags: meta.tags.clone(),
            is_trashed: meta.is_trashed,
            meta_updated_at_ms: meta.meta_updated_at_ms,
            created_at_ms: meta.created_at_ms,
        }
    }

    /// Parses a protobuf update; its hash is hex.
    pub fn from_pb(update: pb::MetaUpdate) -> Result<Self, MalformedHash> {
        Ok(Self {
            hash: update.hash.parse()?,
            description: update.description,
            tags: update.tags,
            is_trashed: update.is_trashed,
            meta_updated_at_ms: update.meta_updated_at_ms,
            created_at_ms: update.created_at_ms,
        })
    }

    /// The protobuf form.
    pub fn to_pb(&self) -> pb::MetaUpdate {
        pb::MetaUpdate {
            hash: self.hash.to_hex(),
            description: self.description.clone(),
            tags: self.tags.clone(),
            is_trashed: self.is_trashed,
            meta_updated_at_ms: self.meta_updated_at_ms,
            created_at_ms: self.created_at_ms,
        }
    }

    /// `meta` with this update's mutable fields, whatever their times.
    pub fn applied_to(&self, mut meta: pb::AssetMeta) -> pb::AssetMeta {
        meta.description = self.description.clone();
        meta.tags = self.tags.clone();
        meta.is_trashed = self.is_trashed;
        meta.meta_updated_at_ms = self.meta_updated_at_ms;
        meta
    }
}

/// A user's change of the mutable fields of one asset (`PATCH
/// /assets/{hash}/meta`): the fields given replace the stored ones, the
/// others stay. Unlike a [`MetaUpdate`] it carries no stamp: the store
/// stamps it when it applies it ([`edit_stamp`](super::edit_stamp)) and
/// applies it over whatever it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaEdit {
    /// The asset it changes.
    pub hash: AssetHash,
    /// The new description, if it changes.
    pub description: Option<String>,
    /// The new tags, in order, if they change.
    pub tags: Option<Vec<String>>,
    /// The new trash flag, if it changes.
    pub is_trashed: Option<bool>,
}

impl MetaEdit {
    /// The update this edit makes over `current`, stamped `stamp_ms`.
    pub fn update_over(&self, current: &pb::AssetMeta, stamp_ms: i64) -> MetaUpdate {
        MetaUpdate {
            hash: self.hash,
            description: self
                .description
                .clone()
                .unwrap_or_else(|| current.description.clone()),
            tags: self.tags.clone().unwrap_or_else(|| current.tags.clone()),
            is_trashed: self.is_trashed.unwrap_or(current.is_trashed),
            meta_updated_at_ms: stamp_ms,
            // An edit changes the mutable fields only.
            created_at_ms: 0,
        }
    }

    /// The bytes of its text that [`MAX_META_BYTES`] bounds (the fields it
    /// leaves alone count as they are stored).
    pub fn text_bytes_over(&self, current: &pb::AssetMeta) -> u64 {
        self.update_over(current, 0).text_bytes()
    }
}

/// Merges `update` into `current` (see the module docs): the mutable fields by
/// last-writer-wins, the creation time to the earliest. Returns true when
/// `current` changed.
pub fn merge_meta(current: &mut pb::AssetMeta, update: &MetaUpdate) -> bool {
    let mut changed = false;
    let candidate = update.applied_to(current.clone());
    if wins(&candidate, current) {
        *current = candidate;
        changed = true;
    }
    if earlier(update.created_at_ms, current.created_at_ms) {
        current.created_at_ms = update.created_at_ms;
        changed = true;
    }
    changed
}

/// The protobuf encoding of the mutable fields of `meta`: what a
/// [`MetaVersion`] digests.
fn mutable_fields(meta: &pb::AssetMeta) -> Vec<u8> {
    pb::AssetMeta {
        description: meta.description.clone(),
        tags: meta.tags.clone(),
        is_trashed: meta.is_trashed,
        meta_updated_at_ms: meta.meta_updated_at_ms,
        ..Default::default()
    }
    .encode_to_vec()
}

/// True when the mutable fields of `candidate` win over those of `current`:
/// the greater version wins, and a tie on the version between values that
/// differ (a BLAKE3 collision, which nobody can make today) is settled by
/// comparing the fields themselves, so the order stays total whatever the
/// digest.
fn wins(candidate: &pb::AssetMeta, current: &pb::AssetMeta) -> bool {
    let (new, old) = (MetaVersion::of(candidate), MetaVersion::of(current));
    newer(
        (new, &mutable_fields(candidate)),
        (old, &mutable_fields(current)),
    )
}

/// The order of [`wins`] over (version, mutable fields) pairs.
fn newer(candidate: (MetaVersion, &[u8]), current: (MetaVersion, &[u8])) -> bool {
    candidate > current
}

/// True when creation time `a` is known and earlier than `b` (0: not known).
pub fn earlier(a: i64, b: i64) -> bool {
    a != 0 && (b == 0 || a < b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(description: &str, at: i64) -> pb::AssetMeta {
        pb::AssetMeta {
            name: "a.txt".into(),
            description: description.into(),
            meta_updated_at_ms: at,
            created_at_ms: 5,
            ..Default::default()
        }
    }

    #[test]
    fn a_tie_on_the_version_is_settled_by_the_fields_themselves() {
        // Two values that share a version (as a digest collision would
        // make): the order between them is total and the same both ways.
        let version = MetaVersion::announced(10, &[7; 32]);
        let (a, b): (&[u8], &[u8]) = (b"description a", b"description b");
        assert!(newer((version, b), (version, a)));
        assert!(!newer((version, a), (version, b)));
        assert!(
            !newer((version, a), (version, a)),
            "equal values: no change"
        );
        // The version still comes first.
        let later = MetaVersion::announced(11, &[0; 32]);
        assert!(newer((later, a), (version, b)));
    }

    #[test]
    fn newer_update_wins_older_loses() {
        let hash = AssetHash::of(b"x");
        let mut current = meta("old", 10);
        assert!(!merge_meta(
            &mut current,
            &MetaUpdate::of(hash, &meta("older", 9))
        ));
        assert_eq!(current.description, "old");
        assert!(merge_meta(
            &mut current,
            &MetaUpdate::of(hash, &meta("new", 11))
        ));
        assert_eq!(current.description, "new");
        assert_eq!(current.name, "a.txt", "immutable fields stay");
    }

    #[test]
    fn ties_converge_whatever_the_order() {
        let hash = AssetHash::of(b"x");
        let a = MetaUpdate::of(hash, &meta("a", 10));
        let b = MetaUpdate::of(hash, &meta("b", 10));
        let mut first = meta("base", 1);
        merge_meta(&mut first, &a);
        merge_meta(&mut first, &b);
        let mut second = meta("base", 1);
        merge_meta(&mut second, &b);
        merge_meta(&mut second, &a);
        assert_eq!(first, second);
    }

    #[test]
    fn creation_times_merge_to_the_earliest_known() {
        let hash = AssetHash::of(b"x");
        let mut current = meta("d", 10);
        let mut older = MetaUpdate::of(hash, &meta("d", 10));
        older.created_at_ms = 3;
        assert!(
            merge_meta(&mut current, &older),
            "an earlier creation is news"
        );
        assert_eq!(current.created_at_ms, 3);
        older.created_at_ms = 4;
        assert!(!merge_meta(&mut current, &older), "a later one is not");
        older.created_at_ms = 0;
        assert!(!merge_meta(&mut current, &older), "an unknown one is not");
        assert_eq!(current.created_at_ms, 3);
    }

    #[test]
    fn the_version_digests_only_what_the_merge_makes_equal() {
        let mut a = meta("d", 10);
        let mut b = a.clone();
        b.name = "another name".into();
        b.created_at_ms = 99;
        b.mime_type = "text/plain".into();
        assert_eq!(MetaVersion::of(&a), MetaVersion::of(&b));
        a.tags.push("t".into());
        assert_ne!(MetaVersion::of(&a), MetaVersion::of(&b));
    }

    #[test]
    fn protobuf_round_trip_and_malformed_hash() {
        let update = MetaUpdate::of(AssetHash::of(b"x"), &meta("d", 3));
        assert_eq!(MetaUpdate::from_pb(update.to_pb()), Ok(update.clone()));
        let mut bad = update.to_pb();
        bad.hash = "nope".into();
        assert!(MetaUpdate::from_pb(bad).is_err());
    }

    #[test]
    fn announced_versions_pad_short_digests() {
        let full = MetaVersion::of(&meta("d", 3));
        let short = MetaVersion::announced(3, &full.digest[..8]);
        assert_eq!(short, full.truncated(8));
        assert!(MetaVersion::announced(3, &[]) <= short);
    }
}
