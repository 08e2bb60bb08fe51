//! can-sync keeps the asset stores ("CANs": content-addressed stores of
//! BLAKE3-named blobs with mutable metadata) of many nodes in sync over iroh QUIC.
//!
//! # Layout
//!
//! Pure (no IO, no clock: unit-tested on plain values):
//! - [`asset`]: hashes, summaries, bundles, metadata and the last-writer-wins
//!   merge.
//! - [`wire`]: the protocol spec: frames, the data-stream grammar, every
//!   [`wire::Violation`] and close code.
//! - [`recon`]: what each side must send, from both sides' summaries.
//! - [`session`]: the sessions (v1, v2's control stream, live offers and
//!   answers) as state machines, plus the thin drivers that run them.
//! - [`backoff`]: the one retry pause schedule.
//!
//! IO at the edges:
//! - [`stream`]: the one frame reader (and writer) over iroh streams or
//!   in-memory pipes.
//! - [`engine`]: the pipelined send and receive stages of protocol v2.
//! - [`can`]: the store boundary: the [`can::Can`] trait, the embedded store,
//!   the reference HTTP server and its client.
//! - [`node`]: the iroh endpoint, tickets, keys, live sync, and the daemon's
//!   supervisor and status.
//! - [`clock`], [`fault`]: the wall clock, read only here; failures of our own.
//! - [`cpu`]: where CPU-bound work on bytes runs (here or the blocking pool).
//! - [`pb`]: the protobuf messages of `proto/cansync.proto`.
//!
//! The binary (`src/main.rs`, with one file per command under `src/cli/`) is
//! only the command line over these.

pub mod asset;
pub mod backoff;
pub mod can;
pub mod clock;
pub mod cpu;
pub mod engine;
pub mod fault;
pub mod node;
pub mod recon;
pub mod session;
pub mod stream;
pub mod wire;

/// Protobuf messages of `proto/cansync.proto`, generated at build time.
#[allow(missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/cansync.rs"));
}
