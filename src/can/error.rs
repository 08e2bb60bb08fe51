//! [`CanError`]: why a store operation failed, in terms every
//! implementation of [`Can`](super::Can) shares, so that the engine, the
//! HTTP server (which maps each variant to a status) and its client (which
//! maps the status back) agree on whose fault a failure is and whether
//! asking again may help ([`CanError::is_transient`]).

use crate::asset::{AssetHash, FutureStamp, HashMismatch};

use super::RangeError;

/// Why a store operation failed. The variants say whose fault it is: the
/// caller's (bad input), the data's, or the store's.
#[derive(Debug, thiserror::Error)]
pub enum CanError {
    /// The bytes do not hash to the hash they were offered under; nothing stored.
    #[error("hash mismatch: bytes hash to {actual}, not {expected}")]
    HashMismatch {
        /// The hash the caller claimed.
        expected: AssetHash,
        /// The hash of the bytes received.
        actual: AssetHash,
    },
    /// The store does not hold this asset.
    #[error("asset {0} not found")]
    NotFound(AssetHash),
    /// A body above the store's configured limit.
    #[error("body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes offered (at least).
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// Metadata above [`MAX_META_BYTES`](crate::asset::MAX_META_BYTES) of
    /// text; nothing of it kept.
    #[error("metadata of {size} bytes exceeds the limit of {limit} bytes")]
    MetaTooLarge {
        /// Bytes of text offered.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Metadata stamped further ahead of this store's clock than it accepts
    /// ([`crate::asset::stamp`]); nothing of it kept.
    #[error(transparent)]
    FutureStamp(#[from] FutureStamp),
    /// A write from a peer that may only read from this node
    /// ([`crate::node::access`]); nothing of it kept.
    #[error("refused: this peer may only read from this node")]
    ReadOnly,
    /// The embedded store's database is open in another process (a running
    /// daemon holds it); the folder is named.
    #[error("the store in {0} is open in another process (a running daemon?)")]
    InUse(String),
    /// A request the store cannot make sense of.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The store could not be reached or answered with a server error; worth a retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store failed internally (disk, database).
    #[error("storage failure: {0}")]
    Storage(String),
    /// The embedded store's record of an asset does not decode: it was
    /// damaged behind the store's back. Typed, so that `fsck` can name the
    /// asset and go on past it.
    #[error("the record of {hash} is damaged: {why}")]
    DamagedRecord {
        /// The asset whose record it is.
        hash: AssetHash,
        /// What does not decode.
        why: String,
    },
    /// The embedded store's index of assets cannot be read past `after`
    /// (from the start when `None`): a page of its database is damaged, so
    /// the records on it are lost to the listing. Typed, so that `fsck`
    /// and `export` can look for where the listing works again.
    #[error("a page of the index of assets is damaged somewhere past {}: {why}", .after.map_or("its start".to_string(), |hash| hash.to_string()))]
    DamagedIndex {
        /// The last asset listed before the damage.
        after: Option<AssetHash>,
        /// What the database library said.
        why: String,
    },
    /// A range of a large asset that does not verify against its outboard,
    /// or an outboard that does not verify against its hash; nothing of it
    /// kept (the groups verified before it are).
    #[error(transparent)]
    BadRange(#[from] RangeError),
}

impl CanError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<HashMismatch> for CanError {
    fn from(HashMismatch { expected, actual }: HashMismatch) -> Self {
        Self::HashMismatch { expected, actual }
    }
}

impl From<std::io::Error> for CanError {
    fn from(err: std::io::Error) -> Self {
        Self::Storage(err.to_string())
    }
}
