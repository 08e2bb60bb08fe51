//! Live sync's exchange as two state machines: [`Offering`], the
//! side that has new changes, and [`Answering`], the side that receives them.
//!
//! After a v2 session in which both sides asked for it (the `live` feature of
//! `HELLO`), the connection stays open and each batch of changes travels on
//! its own bi-stream, opened by the side that has them:
//!
//! 1. offerer → `RECON{packed_summaries: the batch, done: false}`, in the
//!    compact encoding of the session's reconciliation;
//! 2. receiver → `RECON{packed_summaries, wants, done: true}`: its own
//!    summaries of the offered assets it already holds, and the raw 32-byte
//!    hashes of the offered assets it lacks and has now *claimed* (so no
//!    other peer delivers them at the same time);
//! 3. offerer → the wanted assets, and for assets both hold the metadata whose
//!    version wins on its side, exactly as the engine writes a data stream
//!    (bundles, large assets in chunks, `META_UPDATE`, then `DONE`);
//! 4. receiver → `SUMMARY` once everything is stored or rejected, then `DONE`.
//!
//! Invariants checked here: the offer and the reply are well-formed compact
//! summaries within their limits; `wants` is a whole number of distinct
//! hashes, each one offered; nothing follows `DONE`. Deadlines: the reply and
//! the offer each within the idle timeout; the `SUMMARY` within twice the idle
//! timeout plus a second per MiB sent, so a hung peer frees the offer's slot.

use std::collections::HashSet;

use bytes::Bytes;
use prost::Message;

use super::machine::Transmit;
use crate::asset::{AssetHash, Summary};
use crate::pb;
use crate::recon::compact;
use crate::wire::data_stream::frame;
use crate::wire::{FrameType, Violation};

mod answering;
mod offering;

pub use answering::{Answering, AnsweringAnswer, AnsweringOutcome, AnsweringRequest};
pub use offering::{Offering, OfferingAnswer, OfferingOutcome, OfferingRequest};

/// Largest frame of an offer or a reply: a full batch of compact summaries is
/// far below.
pub const MAX_OFFER_FRAME: u32 = 16 * 1024 * 1024;

/// Most summaries accepted in one offer.
pub const MAX_OFFER_ENTRIES: u64 = 100_000;

/// The stream name violations carry.
pub(crate) const STREAM: &str = "a live offer stream";

/// The raw 32-byte hashes of a `wants` field, each at most once.
pub fn parse_wants(wants: &[u8]) -> Result<Vec<AssetHash>, Violation> {
    if !wants.len().is_multiple_of(32) {
        return Err(Violation::WantsNotWhole(wants.len()));
    }
    let mut seen = HashSet::new();
    wants
        .chunks_exact(32)
        .map(|raw| {
            let hash = AssetHash::from_slice(raw)?;
            if !seen.insert(hash) {
                return Err(Violation::WantsTwice(hash));
            }
            Ok(hash)
        })
        .collect()
}

/// A `RECON` round of `summaries` and `wants`.
pub(crate) fn recon_frame(summaries: &[Summary], wants: Bytes, done: bool, level: i32) -> Transmit {
    let round = pb::Recon {
        packed_summaries: Bytes::from(compact::encode(summaries, level)),
        wants,
        done,
        ..Default::default()
    };
    Transmit::Frame(frame(FrameType::Recon, &round.encode_to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wants_must_be_whole_distinct_hashes() {
        let two: Vec<u8> = [[7u8; 32], [8u8; 32]].concat();
        assert_eq!(parse_wants(&two).unwrap().len(), 2);
        assert!(matches!(
            parse_wants(&[7; 64]),
            Err(Violation::WantsTwice(_))
        ));
        assert!(matches!(
            parse_wants(&[7; 33]),
            Err(Violation::WantsNotWhole(33))
        ));
    }
}
