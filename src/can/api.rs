//! The HTTP API (`docs/openapi.json`) as both sides see it: its JSON bodies and its
//! header names and content type. The server ([`super::server`]) answers with
//! these types and the client ([`super::client`]) reads them, so the two cannot
//! drift apart. Protobuf bodies are the messages of [`crate::pb`].

use serde::{Deserialize, Serialize};

use crate::asset::AssetHash;
use crate::pb;

/// Content type of the sync API's bodies.
pub const PROTOBUF: &str = "application/x-protobuf";
/// Header of `PUT /sync/blob/{hash}`: base64 (standard alphabet) of a protobuf
/// `AssetMeta`.
pub const ASSET_META_HEADER: &str = "x-asset-meta";
/// Header of `GET /sync/events`: resume after this sequence number.
pub const LAST_EVENT_ID_HEADER: &str = "last-event-id";
/// Header of `POST /assets`: the asset's name.
pub const ASSET_NAME_HEADER: &str = "x-asset-name";
/// Header of `POST /assets`: the asset's MIME type.
pub const ASSET_MIME_HEADER: &str = "x-asset-mime";
/// Header of `POST /assets`: the asset's description.
pub const ASSET_DESCRIPTION_HEADER: &str = "x-asset-description";
/// Header of `POST /assets`: the asset's tags, comma-separated.
pub const ASSET_TAGS_HEADER: &str = "x-asset-tags";
/// Header of a `GET /assets` page that is not the last: the `after=` of the
/// next page.
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";
/// Header of a `GET /sync/outboard/{hash}` answer: the asset's size, which
/// the outboard's values alone do not prove.
pub const ASSET_SIZE_HEADER: &str = "x-asset-size";
/// What `GET /health` lists under `features` when the server answers
/// `GET /sync/outboard/{hash}`: a client then offers to send the runs of
/// groups several sources are asked for, each with its proof, reading only
/// those runs.
pub const FEATURE_OUTBOARDS: &str = "outboards";

/// Entries of a listing page when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 10_000;
/// The most entries of a listing page, whatever the request asks.
pub const MAX_PAGE: usize = 100_000;

/// The `limit` a listing page is served with.
pub fn page_limit(asked: Option<usize>) -> usize {
    asked.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

/// The cursor of a listing in hash order: the last hash, in hex.
pub fn hash_cursor(hash: &AssetHash) -> String {
    hash.to_hex()
}

/// The cursor of a listing by change time: `MS:HASH` of the last entry.
pub fn since_cursor(cursor: &crate::can::SinceCursor) -> String {
    format!("{}:{}", cursor.changed_at, cursor.hash)
}

/// Parses a cursor of [`since_cursor`].
pub fn parse_since_cursor(text: &str) -> Option<crate::can::SinceCursor> {
    let (at, hash) = text.split_once(':')?;
    Some(crate::can::SinceCursor {
        changed_at: at.parse().ok()?,
        hash: hash.parse().ok()?,
    })
}

/// The protobuf kind of a change (1 asset, 2 metadata).
pub fn change_kind_code(kind: crate::can::ChangeKind) -> u32 {
    match kind {
        crate::can::ChangeKind::Asset => 1,
        crate::can::ChangeKind::Meta => 2,
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// Hash mismatch (422): the hash the caller claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// Hash mismatch (422): the hash of the bytes received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<String>,
    /// Too large (413): bytes offered, at least.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Too large (413): the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// A damaged record (500): the asset whose record the store cannot
    /// read. Asking again will not help; the other assets can be listed
    /// past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
    /// A damaged index (500), answering a listing by hash: a page of the
    /// store's index of assets past the `after` asked for cannot be read.
    /// Asking again will not help; listing past a later key may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged_index: Option<bool>,
}

impl ErrorBody {
    /// An error with only a message.
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            ..Self::default()
        }
    }
}

/// `GET /assets/{hash}/meta`: every field of an asset's metadata ([`pb::AssetMeta`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AssetInfo {
    /// BLAKE3 of the bytes, hex.
    pub hash: String,
    /// Size in bytes.
    pub size: u64,
    /// When the asset entered its first store (Unix ms).
    pub created_at_ms: i64,
    /// Name given at upload.
    pub name: String,
    /// MIME type given at upload.
    pub mime_type: String,
    /// Mutable description.
    pub description: String,
    /// Mutable tags, in the order given.
    pub tags: Vec<String>,
    /// Mutable trash flag.
    pub is_trashed: bool,
    /// When the mutable fields last changed (Unix ms).
    pub meta_updated_at_ms: i64,
}

impl AssetInfo {
    /// The JSON form of a stored asset's metadata.
    pub fn new(hash: &AssetHash, size: u64, meta: pb::AssetMeta) -> Self {
        Self {
            hash: hash.to_hex(),
            size,
            created_at_ms: meta.created_at_ms,
            name: meta.name,
            mime_type: meta.mime_type,
            description: meta.description,
            tags: meta.tags,
            is_trashed: meta.is_trashed,
            meta_updated_at_ms: meta.meta_updated_at_ms,
        }
    }

    /// The protobuf metadata this JSON describes.
    pub fn into_meta(self) -> pb::AssetMeta {
        pb::AssetMeta {
            name: self.name,
            mime_type: self.mime_type,
            description: self.description,
            tags: self.tags,
            is_trashed: self.is_trashed,
            created_at_ms: self.created_at_ms,
            meta_updated_at_ms: self.meta_updated_at_ms,
        }
    }
}

/// One entry of `GET /assets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryInfo {
    /// BLAKE3 of the bytes, hex.
    pub hash: String,
    /// Size in bytes.
    pub size: u64,
    /// When the asset entered its first store (Unix ms).
    pub created_at_ms: i64,
    /// When its mutable fields last changed (Unix ms).
    pub meta_updated_at_ms: i64,
}

/// Answer of `POST /assets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// BLAKE3 of the bytes, hex.
    pub hash: String,
    /// Size in bytes.
    pub size: u64,
}

/// Answer of `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"` when the store answered.
    pub status: String,
    /// Number of assets.
    pub assets: u64,
    /// Sum of their sizes.
    pub bytes: u64,
    /// What this server serves beyond the routes every CAN service has
    /// ([`FEATURE_OUTBOARDS`]); absent from an older server's answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// Body of `PATCH /assets/{hash}/meta`: absent fields keep their value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaPatch {
    /// New description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// New tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// New trash flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_trashed: Option<bool>,
}

/// Answer of `POST /sync/meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// True when the update won by LWW and changed the stored metadata.
    pub applied: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_shape() {
        let hash = AssetHash::of(b"a");
        let other = AssetHash::of(b"b");
        let body = serde_json::to_value(ErrorBody {
            expected: Some(hash.to_hex()),
            actual: Some(other.to_hex()),
            ..ErrorBody::new("x")
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "x", "expected": hash.to_hex(), "actual": other.to_hex()})
        );
        assert_eq!(
            serde_json::to_value(ErrorBody::new("y")).unwrap(),
            serde_json::json!({"error": "y"})
        );
    }

    #[test]
    fn asset_info_round_trips_meta() {
        let meta = pb::AssetMeta {
            name: "n".into(),
            mime_type: "text/plain".into(),
            description: "d".into(),
            tags: vec!["b".into(), "a".into()],
            is_trashed: true,
            created_at_ms: 3,
            meta_updated_at_ms: 4,
        };
        let info = AssetInfo::new(&AssetHash::of(b"z"), 1, meta.clone());
        assert_eq!(info.clone().into_meta(), meta);
        let json = serde_json::to_value(&info).unwrap();
        for field in [
            "hash",
            "size",
            "created_at_ms",
            "name",
            "mime_type",
            "description",
            "tags",
            "is_trashed",
            "meta_updated_at_ms",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
    }
}
