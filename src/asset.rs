//! Assets: their names (BLAKE3 hashes), their metadata, and the last-writer-wins
//! rule that lets every node converge on the same metadata (DESIGN §1).
//!
//! Everything here is pure: no IO, no clock. The stores, the HTTP API and both
//! protocols share these types so that a hash or a merge means the same thing
//! everywhere.

use std::fmt;
use std::str::FromStr;

use prost::Message;

use crate::pb;

/// The name of an asset: the BLAKE3 hash of its bytes.
///
/// Shown as 64 lowercase hex characters in HTTP, JSON and protocol v1; sent as
/// raw 32 bytes in protocol v2.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssetHash([u8; 32]);

impl AssetHash {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Wraps raw hash bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, as used in HTTP and v1.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex characters, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl From<blake3::Hash> for AssetHash {
    fn from(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }
}

impl fmt::Display for AssetHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for AssetHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AssetHash({})", self.short())
    }
}

/// A string that is not a 64-character hex BLAKE3 hash.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed hash {0:?}: expected 64 hex characters")]
pub struct MalformedHash(pub String);

impl FromStr for AssetHash {
    type Err = MalformedHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut bytes).is_err() {
            return Err(MalformedHash(s.chars().take(80).collect()));
        }
        Ok(Self(bytes))
    }
}

impl serde::Serialize for AssetHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for AssetHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The LWW order key of a metadata value: its update time, then the BLAKE3 of
/// its encoding. Two values with equal keys are equal values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MetaVersion {
    /// `meta_updated_at_ms` of the value.
    pub updated_at_ms: i64,
    /// BLAKE3 of the protobuf encoding of the value.
    pub digest: [u8; 32],
}

impl MetaVersion {
    /// The version of `meta`.
    pub fn of(meta: &pb::AssetMeta) -> Self {
        Self {
            updated_at_ms: meta.meta_updated_at_ms,
            digest: *blake3::hash(&meta.encode_to_vec()).as_bytes(),
        }
    }

    /// This version with only the first `prefix` bytes of its digest, as
    /// summaries carry it on the wire (see [`Self::of_summary`]).
    pub fn truncated(mut self, prefix: usize) -> Self {
        self.digest[prefix.min(32)..].fill(0);
        self
    }

    /// The version a peer announced in a summary. A digest shorter than 32
    /// bytes (v2 sends an 8-byte prefix) is zero-padded, so two summaries
    /// truncated alike still order by their prefixes; peers that send no
    /// digest rank below any digest at the same time.
    pub fn of_summary(summary: &pb::AssetSummary) -> Self {
        let mut digest = [0u8; 32];
        let len = summary.meta_digest.len().min(32);
        digest[..len].copy_from_slice(&summary.meta_digest[..len]);
        Self {
            updated_at_ms: summary.meta_updated_at_ms,
            digest,
        }
    }
}

/// Applies `update` to `current` by last-writer-wins. Returns true when the
/// update won and `current` changed.
///
/// Only the mutable fields (description, tags, trash flag and their time) move;
/// name, MIME type and creation time stay as the asset first had them.
pub fn merge_meta(current: &mut pb::AssetMeta, update: &pb::MetaUpdate) -> bool {
    let candidate = apply_update(current.clone(), update);
    if MetaVersion::of(&candidate) > MetaVersion::of(current) {
        *current = candidate;
        true
    } else {
        false
    }
}

/// `meta` with the mutable fields of `update`, whatever their times.
pub fn apply_update(mut meta: pb::AssetMeta, update: &pb::MetaUpdate) -> pb::AssetMeta {
    meta.description = update.description.clone();
    meta.tags = update.tags.clone();
    meta.is_trashed = update.is_trashed;
    meta.meta_updated_at_ms = update.meta_updated_at_ms;
    meta
}

/// The update that carries the mutable fields of `meta` for `hash`.
pub fn update_of(hash: &AssetHash, meta: &pb::AssetMeta) -> pb::MetaUpdate {
    pb::MetaUpdate {
        hash: hash.to_hex(),
        description: meta.description.clone(),
        tags: meta.tags.clone(),
        is_trashed: meta.is_trashed,
        meta_updated_at_ms: meta.meta_updated_at_ms,
    }
}

/// The summary of an asset of `size` bytes with metadata `meta`, as
/// [`Can::list`](crate::can::Can::list) reports it.
pub fn summary_of(hash: &AssetHash, size: u64, meta: &pb::AssetMeta) -> pb::AssetSummary {
    pb::AssetSummary {
        hash: hash.to_hex(),
        timestamp: meta.created_at_ms,
        meta_updated_at_ms: meta.meta_updated_at_ms,
        size,
        meta_digest: MetaVersion::of(meta).digest.to_vec(),
    }
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
    fn hash_hex_round_trip_and_rejects_malformed() {
        let hash = AssetHash::of(b"hello");
        assert_eq!(hash.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(hash.to_hex().parse::<AssetHash>(), Ok(hash));
        assert!("abc".parse::<AssetHash>().is_err());
        assert!("zz".repeat(32).parse::<AssetHash>().is_err());
    }

    #[test]
    fn newer_update_wins_older_loses() {
        let hash = AssetHash::of(b"x");
        let mut current = meta("old", 10);
        assert!(!merge_meta(
            &mut current,
            &update_of(&hash, &meta("older", 9))
        ));
        assert_eq!(current.description, "old");
        assert!(merge_meta(
            &mut current,
            &update_of(&hash, &meta("new", 11))
        ));
        assert_eq!(current.description, "new");
        assert_eq!(current.name, "a.txt", "immutable fields stay");
    }

    #[test]
    fn ties_converge_whatever_the_order() {
        let hash = AssetHash::of(b"x");
        let a = update_of(&hash, &meta("a", 10));
        let b = update_of(&hash, &meta("b", 10));
        let mut first = meta("base", 1);
        merge_meta(&mut first, &a);
        merge_meta(&mut first, &b);
        let mut second = meta("base", 1);
        merge_meta(&mut second, &b);
        merge_meta(&mut second, &a);
        assert_eq!(first, second);
    }
}
