//! What stores list and move: [`Summary`] (one asset's identity and metadata
//! version) and [`Bundle`] (one asset's bytes and metadata), with their
//! protobuf forms.

use bytes::Bytes;

use super::{AssetHash, MalformedHash, MetaVersion};
use crate::pb;

/// What a store tells about one asset when it lists itself: enough to decide
/// whether a peer lacks it or holds older metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The asset.
    pub hash: AssetHash,
    /// When it entered its first store (Unix ms).
    pub created_at_ms: i64,
    /// Its size in bytes.
    pub size: u64,
    /// The version of its metadata.
    pub version: MetaVersion,
}

impl Summary {
    /// The summary of an asset of `size` bytes with metadata `meta`.
    pub fn of(hash: AssetHash, size: u64, meta: &pb::AssetMeta) -> Self {
        Self {
            hash,
            created_at_ms: meta.created_at_ms,
            size,
            version: MetaVersion::of(meta),
        }
    }

    /// Parses a protobuf summary (hex hash).
    pub fn from_pb(summary: &pb::AssetSummary) -> Result<Self, MalformedHash> {
        Ok(Self {
            hash: summary.hash.parse()?,
            created_at_ms: summary.timestamp,
            size: summary.size,
            version: MetaVersion::announced(summary.meta_updated_at_ms, &summary.meta_digest),
        })
    }

    /// The protobuf form, with the whole 32-byte digest.
    pub fn to_pb(&self) -> pb::AssetSummary {
        pb::AssetSummary {
            hash: self.hash.to_hex(),
            timestamp: self.created_at_ms,
            meta_updated_at_ms: self.version.updated_at_ms,
            size: self.size,
            meta_digest: Bytes::copy_from_slice(&self.version.digest),
        }
    }

    /// This summary with its digest cut to `prefix` bytes, as v2 carries it.
    pub fn truncated(mut self, prefix: usize) -> Self {
        self.version = self.version.truncated(prefix);
        self
    }
}

/// One asset: its bytes and metadata, with its hash parsed. Not verified:
/// whoever stores it checks that the bytes hash to `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The hash the bytes claim.
    pub hash: AssetHash,
    /// The bytes.
    pub data: Bytes,
    /// Its metadata.
    pub meta: pb::AssetMeta,
}

impl Bundle {
    /// Parses a protobuf bundle (hex hash); the bytes are shared, not copied.
    pub fn from_pb(bundle: pb::AssetBundle) -> Result<Self, MalformedHash> {
        Ok(Self {
            hash: bundle.hash.parse()?,
            data: bundle.data,
            meta: bundle.meta.unwrap_or_default(),
        })
    }

    /// The protobuf form; the bytes are shared, not copied.
    pub fn into_pb(self) -> pb::AssetBundle {
        pb::AssetBundle {
            hash: self.hash.to_hex(),
            data: self.data,
            meta: Some(self.meta),
        }
    }

    /// Its summary, as a store holding it would list it.
    pub fn summary(&self) -> Summary {
        Summary::of(self.hash, self.data.len() as u64, &self.meta)
    }
}

/// A bundle whose bytes were hashed and found to match its hash. Only
/// [`Bundle::verify`] makes one, so a store handed a `VerifiedBundle` may
/// skip hashing the bytes again: the engine verifies every asset it
/// receives, and an embedded store trusts that instead of paying a second
/// BLAKE3 pass. A bundle that crosses a process boundary (the HTTP API) is a
/// plain [`Bundle`] again and the other side verifies it anew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBundle(Bundle);

/// The bytes of a bundle do not hash to the hash it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("hash mismatch: bytes hash to {actual}, not {expected}")]
pub struct HashMismatch {
    /// The hash the bundle claims.
    pub expected: AssetHash,
    /// The hash of its bytes.
    pub actual: AssetHash,
}

impl Bundle {
    /// Hashes the bytes (CPU work: a caller on an async runtime runs it on
    /// the blocking pool) and vouches for them when they match.
    pub fn verify(self) -> Result<VerifiedBundle, HashMismatch> {
        let actual = AssetHash::of(&self.data);
        if actual != self.hash {
            return Err(HashMismatch {
                expected: self.hash,
                actual,
            });
        }
        Ok(VerifiedBundle(self))
    }
}

impl VerifiedBundle {
    /// The verified hash.
    pub fn hash(&self) -> AssetHash {
        self.0.hash
    }

    /// The bytes.
    pub fn data(&self) -> &Bytes {
        &self.0.data
    }

    /// The metadata (not covered by the hash).
    pub fn meta(&self) -> &pb::AssetMeta {
        &self.0.meta
    }

    /// The bundle itself, no longer vouched for.
    pub fn into_bundle(self) -> Bundle {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> pb::AssetMeta {
        pb::AssetMeta {
            name: "n".into(),
            description: "d".into(),
            created_at_ms: 7,
            meta_updated_at_ms: 9,
            ..Default::default()
        }
    }

    #[test]
    fn summaries_round_trip_through_protobuf() {
        let summary = Summary::of(AssetHash::of(b"a"), 1, &meta());
        assert_eq!(Summary::from_pb(&summary.to_pb()), Ok(summary));
        let mut bad = summary.to_pb();
        bad.hash.pop();
        assert!(Summary::from_pb(&bad).is_err());
    }

    #[test]
    fn bundles_round_trip_through_protobuf() {
        let bundle = Bundle {
            hash: AssetHash::of(b"abc"),
            data: Bytes::from_static(b"abc"),
            meta: meta(),
        };
        assert_eq!(
            Bundle::from_pb(bundle.clone().into_pb()),
            Ok(bundle.clone())
        );
        assert_eq!(bundle.summary().size, 3);
        let mut bad = bundle.into_pb();
        bad.hash = "z".repeat(64);
        assert!(Bundle::from_pb(bad).is_err());
    }

    #[test]
    fn only_matching_bytes_verify() {
        let bundle = Bundle {
            hash: AssetHash::of(b"abc"),
            data: Bytes::from_static(b"abc"),
            meta: meta(),
        };
        let verified = bundle.clone().verify().unwrap();
        assert_eq!(
            (verified.hash(), verified.data()),
            (bundle.hash, &bundle.data)
        );
        let forged = Bundle {
            data: Bytes::from_static(b"abd"),
            ..bundle
        };
        assert_eq!(
            forged.clone().verify(),
            Err(HashMismatch {
                expected: forged.hash,
                actual: AssetHash::of(b"abd")
            })
        );
    }
}
