//! [`Violation`]: every way a peer can break the protocol, and the code the
//! connection is closed with for it.
//!
//! A violation is always the peer's fault: its bytes, its messages, their
//! order, or its silence. Faults of our own (a store that fails, a task that
//! panics, a shutdown) are never violations and never close a connection with
//! [`CLOSE_PROTOCOL_ERROR`]; see `crate::fault`.

use std::time::Duration;

use super::codes::{CLOSE_IDLE, CLOSE_PROTOCOL_ERROR};
use super::compress::CodecError;
use super::{FrameError, FrameType};
use crate::asset::{AssetHash, MalformedHash};
use crate::recon::compact::SummaryError;

/// How a peer broke the protocol.
///
/// Each variant's documentation ends with the close code it maps to
/// ([`Violation::close_code`]).
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    /// Bytes that are not frames: an oversized, truncated or unknown frame.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("bad frame from peer: {0}")]
    Frame(#[from] FrameError),
    /// A frame whose payload is not the message its tag promises.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("bad {message} message from peer: {source}")]
    Decode {
        /// The message expected.
        message: &'static str,
        /// What prost said.
        source: prost::DecodeError,
    },
    /// A hash that is neither 64 hex characters nor 32 raw bytes.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("peer sent a malformed hash: {0}")]
    MalformedHash(#[from] MalformedHash),
    /// A frame of a type not allowed at this point of the stream.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("expected {expected}, got {got} on {stream}")]
    Unexpected {
        /// What the protocol allows here.
        expected: &'static str,
        /// What came.
        got: FrameType,
        /// Which stream (control, data, live offer, v1).
        stream: &'static str,
    },
    /// The stream ended (cleanly) before a frame the protocol requires.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("{stream} ended before {missing}")]
    EndedEarly {
        /// The frame that never came.
        missing: &'static str,
        /// Which stream.
        stream: &'static str,
    },
    /// A frame after `DONE`: the sender must finish its stream there.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("{0} after DONE")]
    AfterDone(FrameType),
    /// `HELLO` from a peer that speaks an older protocol on the v2 ALPN.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("peer speaks protocol version {0} on the v2 ALPN; this build speaks {v} (upgrade the older side)", v = crate::session::v2::VERSION)]
    Version(u32),
    /// `HELLO` offering zero streams, a zero inline limit or a frame limit
    /// too small for any data frame. Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("peer offered an unusable limit: {0}")]
    Limit(&'static str),
    /// An `ASSET_BEGIN` naming a chunk codec this node does not speak.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("unknown chunk codec {0:?}")]
    UnknownCodec(String),
    /// A large asset whose chunks run past the size its header declared.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("asset {hash}: chunks run past the declared size of {size} bytes")]
    PastDeclaredSize {
        /// The asset.
        hash: AssetHash,
        /// What its header declared.
        size: u64,
    },
    /// A zstd payload that is corrupt, inflates past what its frame allows
    /// (a zstd bomb), or asks for too large a window.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("bad compressed payload from peer: {0}")]
    Compression(#[from] CodecError),
    /// Reconciliation summaries that do not parse or exceed the limit.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("bad summaries from peer: {0}")]
    Summaries(#[from] SummaryError),
    /// A `wants` field that is not a whole number of 32-byte hashes.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("wants field of {0} bytes is not a list of 32-byte hashes")]
    WantsNotWhole(usize),
    /// A `wants` field naming the same hash twice.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("wants field names {0} twice")]
    WantsTwice(AssetHash),
    /// The peer wants an asset that was not offered to it.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("peer wants {0}, which was not offered")]
    WantsNotOffered(AssetHash),
    /// A coded reconciliation message out of turn or beyond its bounds (see
    /// [`crate::recon::coded`]), or one that does not parse.
    /// Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("bad coded reconciliation from peer: {0}")]
    Recon(String),
    /// A want stream ([`crate::session::v2::pull`]) that asks beyond its
    /// bounds or miscounts in its `DONE`. Closes with [`CLOSE_PROTOCOL_ERROR`].
    #[error("bad want stream from peer: {0}")]
    Wants(String),
    /// Ranges of a large asset that break the rules of HELLO feature
    /// `ranges`: malformed group ranges, or an outboard of the wrong size.
    #[error("bad ranges from peer: {0}")]
    Ranges(String),
    /// The peer said nothing for longer than the deadline of what we were
    /// waiting for. Closes with [`CLOSE_IDLE`].
    #[error("peer silent for more than {waited:?} while {during}")]
    Silent {
        /// How long we waited.
        waited: Duration,
        /// What we were waiting for.
        during: &'static str,
    },
}

impl Violation {
    /// The application code the connection is closed with.
    pub fn close_code(&self) -> u32 {
        match self {
            Self::Silent { .. } => CLOSE_IDLE,
            _ => CLOSE_PROTOCOL_ERROR,
        }
    }

    /// Decodes a protobuf `payload` that must be a `message`.
    pub fn decode<M: prost::Message + Default>(
        message: &'static str,
        payload: &[u8],
    ) -> Result<M, Self> {
        M::decode(payload).map_err(|source| Self::Decode { message, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_silence_closes_as_idle() {
        let silent = Violation::Silent {
            waited: Duration::from_secs(3),
            during: "HELLO",
        };
        assert_eq!(silent.close_code(), CLOSE_IDLE);
        assert!(silent.to_string().contains("3s"), "{silent}");
        let bad = Violation::Frame(FrameError::UnknownType(0x7f));
        assert_eq!(bad.close_code(), CLOSE_PROTOCOL_ERROR);
        assert_eq!(Violation::Version(1).close_code(), CLOSE_PROTOCOL_ERROR);
    }

    #[test]
    fn decode_names_the_message() {
        let err = Violation::decode::<crate::pb::Hello>("Hello", &[0xff, 0xff]).unwrap_err();
        assert!(matches!(
            err,
            Violation::Decode {
                message: "Hello",
                ..
            }
        ));
    }
}
