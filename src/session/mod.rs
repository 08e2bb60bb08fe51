//! Protocol sessions: what two nodes say to each other, as pure state
//! machines, and the thin drivers that run them over a connection.
//!
//! - [`machine`]: the [`Machine`](machine::Machine) trait every session
//!   implements: frames, timer expiries and answers in; frames, requests and
//!   deadlines out; no IO, no clock.
//! - [`v1`]: the original protocol (ALPN [`ALPN_V1`]) on one bi-stream.
//! - [`v2`]: the pipelined protocol's control stream (ALPN [`ALPN_V2`]); the
//!   data streams are the engine's.
//! - [`live`]: live sync's offer and answer on one bi-stream each.
//! - [`driver`]: one driver per connection or stream, owning the streams and
//!   serving the machine's requests from the store and the engine.
//!
//! A session's errors say whose fault it was ([`SessionError`]): the peer's
//! ([`Violation`], closing the connection with the code each variant names),
//! the transport's ([`StreamError`]), or ours ([`Fault`], closing with
//! [`CLOSE_SHUTDOWN`] and never blaming the peer).

use std::sync::Arc;
use std::time::Duration;

use crate::asset::{AssetHash, MetaVersion};
use crate::engine::{EngineConfig, EngineError, Rejection};
use crate::fault::Fault;
use crate::stream::{ReadError, StreamError};
use crate::wire::Violation;

pub mod driver;
pub mod live;
pub mod machine;
mod summary;
pub mod v1;
pub mod v2;

#[cfg(test)]
mod sim;

pub use crate::wire::{
    CLOSE_BUSY, CLOSE_DONE, CLOSE_IDLE, CLOSE_NOT_ALLOWED, CLOSE_PROTOCOL_ERROR, CLOSE_SHUTDOWN,
    RESET_LOCAL_FAILURE,
};
pub use v2::ALPN_V2;

/// ALPN of protocol v1: one bi-stream, hash sets, uncompressed bundles.
pub const ALPN_V1: &[u8] = b"can-sync/1";

/// Which end of the connection this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The dialer: opens the control stream and closes the connection at the end.
    Initiator,
    /// The acceptor.
    Responder,
}

/// What one session moved, from this node's point of view.
#[derive(Debug, Clone, Default)]
pub struct SessionReport {
    /// Assets this node sent.
    pub assets_sent: u64,
    /// Assets this node received and stored (new ones).
    pub assets_received: u64,
    /// Assets received that the store already had.
    pub duplicates_received: u64,
    /// Asset payload bytes sent plus received.
    pub payload_bytes: u64,
    /// Asset payload bytes sent.
    pub bytes_sent: u64,
    /// Frame bytes sent plus received on the session's streams.
    pub wire_bytes: u64,
    /// Metadata updates sent.
    pub meta_sent: u64,
    /// Metadata updates received that won LWW here.
    pub meta_applied: u64,
    /// Assets and metadata updates of ours the peer lacks but did not take:
    /// it grants us read only ([`v2::FEATURE_READ_ONLY`]), so we held them
    /// back. Not a failure.
    pub not_taken: u64,
    /// Assets refused (bad hash, store failure), left for the next session.
    pub rejected: Vec<Rejection>,
    /// Wall time of the session.
    pub elapsed: Duration,
    /// When both sides asked for live sync, what it starts from: the
    /// connection stays open after the session and carries
    /// [live offers](crate::node::live).
    pub live: Option<Arc<LiveStart>>,
}

/// What live sync takes over from the session before it.
#[derive(Debug)]
pub struct LiveStart {
    /// The engine settings both sides agreed on.
    pub engine: Arc<EngineConfig>,
    /// The peer takes nothing from us: live sync offers it nothing.
    pub peer_takes_nothing: bool,
    /// Assets the session received from the peer, with the metadata version
    /// they came with (truncated as summaries carry it): the peer holds them,
    /// so live sync must not offer them back.
    pub peer_holds: Vec<(AssetHash, MetaVersion)>,
    /// The changes the session's pushes made in our store's log: live sync
    /// follows the log and skips them, however many the session moved.
    pub peer_changes: crate::can::SeqRanges,
}

/// Why a session failed, and whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The peer broke the protocol (or stayed silent past a deadline).
    #[error(transparent)]
    Peer(#[from] Violation),
    /// A stream or the connection failed under us.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Our own side failed: the store, a bug, a shutdown.
    #[error(transparent)]
    Local(#[from] Fault),
}

impl From<EngineError> for SessionError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::Peer(violation) => Self::Peer(violation),
            EngineError::Stream(stream) => Self::Stream(stream),
            EngineError::Local(fault) => Self::Local(fault),
        }
    }
}

impl From<ReadError> for SessionError {
    fn from(err: ReadError) -> Self {
        EngineError::from(err).into()
    }
}

impl SessionError {
    /// True when the peer broke the protocol: its bytes, messages or their
    /// order (not mere silence, which may be a slow network).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(self, Self::Peer(v) if v.close_code() == CLOSE_PROTOCOL_ERROR)
    }

    /// True when either side closed the connection on purpose: a complete
    /// session or a shutdown, not an error.
    pub fn is_clean_close(&self) -> bool {
        matches!(self, Self::Stream(stream) if stream.is_clean_close())
    }

    /// The code to close the connection with for this error: the violation's
    /// own, or [`CLOSE_SHUTDOWN`] for our faults; `None` when the connection
    /// is already gone.
    pub fn close_code(&self) -> Option<u32> {
        match self {
            Self::Peer(violation) => Some(violation.close_code()),
            Self::Local(_) => Some(CLOSE_SHUTDOWN),
            Self::Stream(_) => None,
        }
    }
}
