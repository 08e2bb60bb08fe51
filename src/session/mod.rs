//! Protocol sessions over one iroh connection.
//!
//! A session is one reconciliation-and-transfer run between two nodes: each
//! learns what the other lacks, sends it, and receives what it lacks, both
//! directions at once. [`framed`] puts the sans-IO frame codec on QUIC streams;
//! [`v1`] is the original protocol (ALPN [`ALPN_V1`]); [`v2`] the pipelined one
//! (ALPN [`ALPN_V2`]).
//!
//! Error codes a session closes streams and connections with are the `CLOSE_*`
//! constants below, so a peer's log names the reason.

use std::time::Duration;

use crate::can::CanError;
use crate::wire::FrameError;

pub mod framed;
pub mod v1;
pub mod v2;

pub use v2::ALPN_V2;

/// ALPN of protocol v1: one bi-stream, hash sets, uncompressed bundles.
pub const ALPN_V1: &[u8] = b"can-sync/1";

/// Connection closed after a complete session.
pub const CLOSE_DONE: u32 = 0;
/// Closed because the peer broke the protocol (bad frame, bad message).
pub const CLOSE_PROTOCOL_ERROR: u32 = 1;
/// Closed because the peer's endpoint id is not on the allow-list.
pub const CLOSE_NOT_ALLOWED: u32 = 2;
/// Closed because this node is shutting down, or its own side failed.
pub const CLOSE_SHUTDOWN: u32 = 3;
/// Closed because the peer stayed silent past the idle timeout.
pub const CLOSE_IDLE: u32 = 4;
/// Stream reset code: this side could not go on with the stream for a local
/// reason (its store failed); nothing is wrong with the peer.
pub const RESET_LOCAL_FAILURE: u32 = 5;

/// Which end of the connection this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The dialer: opens the control stream and closes the connection at the end.
    Initiator,
    /// The acceptor.
    Responder,
}

/// One asset the receiving side refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The hash the sender claimed.
    pub hash: String,
    /// Why it was refused.
    pub reason: String,
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
    /// Assets refused (bad hash, store failure), left for the next session.
    pub rejected: Vec<Rejected>,
    /// Wall time of the session.
    pub elapsed: Duration,
    /// When both sides asked for live sync, what it starts from: the
    /// connection stays open after the session and carries
    /// [live offers](crate::node::live).
    pub live: Option<std::sync::Arc<LiveStart>>,
}

/// What live sync takes over from the session before it.
#[derive(Debug)]
pub struct LiveStart {
    /// The engine settings both sides agreed on.
    pub engine: std::sync::Arc<crate::engine::EngineConfig>,
    /// Assets the session received from the peer, with the metadata version
    /// they came with (truncated as summaries carry it): the peer holds them,
    /// so live sync must not offer them back.
    pub peer_holds: Vec<(crate::asset::AssetHash, crate::asset::MetaVersion)>,
}

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Opening or accepting a stream failed: the connection is gone.
    #[error("connection lost: {0}")]
    Connection(#[from] iroh::endpoint::ConnectionError),
    /// Reading from a stream failed.
    #[error("reading from peer: {0}")]
    Read(#[from] iroh::endpoint::ReadError),
    /// Writing to a stream failed.
    #[error("writing to peer: {0}")]
    Write(#[from] iroh::endpoint::WriteError),
    /// The peer sent bytes that are not valid frames.
    #[error("bad frame from peer: {0}")]
    Frame(#[from] FrameError),
    /// A frame whose payload is not the message its tag promises.
    #[error("bad {what} message from peer: {source}")]
    Decode {
        /// Which message was expected.
        what: &'static str,
        /// What prost said.
        source: prost::DecodeError,
    },
    /// Frames in an order or of a kind the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The local store failed in a way that stops the session.
    #[error("local store: {0}")]
    Can(#[from] CanError),
    /// A hash that is not 64 hex characters.
    #[error("peer sent a malformed hash: {0}")]
    MalformedHash(#[from] crate::asset::MalformedHash),
    /// The peer said nothing for too long.
    #[error("peer idle for more than {0:?}")]
    Timeout(Duration),
    /// The peer told us to stop sending on a stream (it gave up on it).
    #[error("peer stopped our stream with code {0}")]
    Stopped(u64),
}

impl SessionError {
    /// True when the peer broke the protocol (its bytes, messages or their
    /// order), as opposed to a lost connection or a failure on our side.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            Self::Frame(_) | Self::Decode { .. } | Self::Protocol(_) | Self::MalformedHash(_)
        )
    }

    /// The connection error underneath, when the connection is what failed.
    pub fn connection_lost(&self) -> Option<&iroh::endpoint::ConnectionError> {
        use iroh::endpoint::{ReadError, WriteError};
        match self {
            Self::Connection(err)
            | Self::Read(ReadError::ConnectionLost(err))
            | Self::Write(WriteError::ConnectionLost(err)) => Some(err),
            _ => None,
        }
    }

    /// True when either side closed the connection on purpose: a complete
    /// session or a shutdown, not an error.
    pub fn is_clean_close(&self) -> bool {
        use iroh::endpoint::ConnectionError;
        match self.connection_lost() {
            Some(ConnectionError::LocallyClosed) => true,
            Some(ConnectionError::ApplicationClosed(close)) => {
                close.error_code == CLOSE_DONE.into() || close.error_code == CLOSE_SHUTDOWN.into()
            }
            _ => false,
        }
    }
}

/// Decodes a protobuf payload, naming the message in the error.
pub(crate) fn decode<M: prost::Message + Default>(
    what: &'static str,
    payload: &[u8],
) -> Result<M, SessionError> {
    M::decode(payload).map_err(|source| SessionError::Decode { what, source })
}
