//! can-sync keeps the asset stores ("CANs": content-addressed stores of
//! BLAKE3-named blobs with mutable metadata) of many nodes in sync over iroh QUIC.
//!
//! # Layout
//!
//! - [`asset`]: hashes, metadata and the last-writer-wins merge — pure.
//! - [`wire`]: the frame codec and the protocol spec — sans-IO.
//! - [`can`]: the store boundary: the [`can::Can`] trait, the embedded store,
//!   the reference HTTP server and its client.
//! - [`recon`]: what each side must send, from both sides' summaries — sans-IO.
//! - [`engine`]: the pipelined send and receive stages of protocol v2.
//! - [`session`]: protocol sessions over one iroh connection.
//! - [`node`]: the iroh endpoint, tickets, keys, and the daemon.
//! - [`pb`]: the protobuf messages of `proto/cansync.proto`.
//!
//! The binary (`src/main.rs`) is only the command line over these.



pub mod asset;
pub mod backoff;
pub mod can;
pub mod clock;
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
