//! The engine's errors and rejections.
//!
//! [`EngineError`] ends a whole pipeline and says whose fault it was: the
//! peer's ([`Violation`]), the transport's ([`StreamError`]) or ours
//! ([`Fault`]). A [`Rejection`] ends only one asset: it is counted, reported
//! in `SUMMARY`, and the rest goes on.

use std::fmt;

use crate::asset::AssetHash;
use crate::fault::Fault;
use crate::stream::{ReadError, StreamError};
use crate::wire::Violation;

/// Why a pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The peer broke the protocol.
    #[error(transparent)]
    Peer(#[from] Violation),
    /// A stream or the connection failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Our own side failed.
    #[error(transparent)]
    Local(#[from] Fault),
}

impl From<ReadError> for EngineError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Violation(violation) => Self::Peer(violation),
            ReadError::Stream(stream) => Self::Stream(stream),
        }
    }
}

/// One asset that did not cross, and why; the session goes on without it and
/// the next session tries again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The asset.
    pub hash: AssetHash,
    /// Why.
    pub reason: RejectReason,
}

/// Why an asset did not cross.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// Its bytes hash to something else: the sender's copy is corrupt.
    HashMismatch {
        /// What the bytes hash to.
        actual: AssetHash,
    },
    /// A large asset whose chunks ended short of its declared size.
    Short {
        /// Bytes that arrived.
        received: u64,
        /// Bytes declared.
        size: u64,
    },
    /// The store refused or failed to store it (or to read it, sending).
    Store(String),
    /// Its metadata is stamped further ahead of this node's clock than it
    /// accepts; nothing of it was kept.
    FutureStamp(String),
    /// A range of it (or its outboard) did not verify: the sender's copy is
    /// corrupt there. What verified before it is kept.
    BadRange(String),
    /// It left the local store between listing and sending, or its bytes
    /// are missing there (a damaged store lists what it cannot read).
    Vanished,
    /// The peer told us of it and we asked for it, but the session ended
    /// without it: the peer could not read it (see its log), or it left
    /// the peer's store meanwhile.
    NotSent,
    /// The peer refused it, for the reason its `SUMMARY` gave.
    PeerRefused(String),
    /// Too large for the protocol spoken: protocol v1 carries a whole asset
    /// in one frame, and this one would not fit the frame limit. It was not
    /// read; protocol v2 streams it.
    TooLargeForProtocol {
        /// The asset's size.
        size: u64,
        /// The largest frame the protocol takes.
        limit: u64,
    },
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HashMismatch { actual } => write!(f, "hash mismatch: bytes hash to {actual}"),
            Self::Short { received, size } => {
                write!(f, "asset ended after {received} of {size} bytes")
            }
            Self::Store(why) => write!(f, "store: {why}"),
            Self::FutureStamp(why) => write!(f, "store: {why}"),
            Self::BadRange(why) => write!(f, "bad range: {why}"),
            Self::Vanished => f.write_str(
                "the local store could not give its bytes (gone since it was listed, or \
                 missing: run `can-sync fsck`)",
            ),
            Self::NotSent => f.write_str(
                "asked for but not sent whole: the peer lists it but could not read it, \
                 cut it short, or it left the peer's store",
            ),
            Self::PeerRefused(why) => write!(f, "peer refused: {why}"),
            Self::TooLargeForProtocol { size, limit } => write!(
                f,
                "{size} bytes do not fit a can-sync/1 frame of at most {limit} bytes; \
                 can-sync/2 moves it"
            ),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.hash, self.reason)
    }
}
