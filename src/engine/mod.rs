//! The pipelined transfer engine of protocol v2.
//!
//! ```text
//!  send:    plan ─▶ [batches] ─▶ pull workers ─▶ [bundles] ─▶ encode workers ─▶ [jobs] ─▶ stream writers ═▶
//!  receive: ═▶ stream readers ─▶ [frames] ─▶ decode/verify workers ─▶ [verified] ─▶ push workers
//! ```
//!
//! - [`send`]: pulls what the peer lacks from the CAN in parallel batches,
//!   compresses where a sample says it pays, and spreads frames over several
//!   streams; assets above the inline limit stream in chunks.
//! - [`receive`]: one reader per stream; decoding, decompression and BLAKE3
//!   verification on the blocking pool; concurrent pushes to the CAN.
//! - [`claims`]: what this node is receiving right now, node-wide, so that
//!   an asset several peers hold arrives about once.
//! - [`config`], [`stats`], [`error`]: the knobs, the counters, and what can
//!   go wrong ([`EngineError`] for a whole pipeline, [`Rejection`] for one
//!   asset).
//!
//! Every queue between stages is a bounded `async-channel`, so a slow CAN or a
//! slow peer slows its producer instead of growing memory: memory is bounded by
//! queue depths × frame size whatever the archive size. Sending and receiving
//! share nothing but the connection, so neither waits on the other.
//!
//! The engine runs over any [`stream`](crate::stream) halves — iroh's QUIC
//! streams in production, in-memory pipes in tests — and knows nothing of
//! sessions: a session decides what to send and hands the engine the streams.

pub mod claims;
pub mod config;
pub mod error;
pub mod receive;
mod retry;
pub mod send;
pub mod split;
pub mod stats;

pub use config::EngineConfig;
pub use error::{EngineError, RejectReason, Rejection};
pub use stats::{EngineStats, Phase};

#[cfg(test)]
mod tests;
