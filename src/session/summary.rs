//! The end of a receiving side: `SUMMARY{received, rejected}`, `DONE`, and
//! the end of the stream. Shared by the v2 control stream and live answers.
//!
//! A receiver sends its `SUMMARY` once everything it received is stored or
//! rejected ([`summary_transmits`]); the sender reads it with a
//! [`SummaryReader`], which checks the order (`SUMMARY`, `DONE`, end) and
//! parses every refused hash: a malformed one is a violation, never dropped.

use bytes::Bytes;
use prost::Message;

use super::machine::Transmit;
use crate::asset::AssetHash;
use crate::engine::receive::ReceiveOutcome;
use crate::engine::{RejectReason, Rejection};
use crate::pb;
use crate::wire::data_stream::frame;
use crate::wire::{Frame, FrameType, Violation};

/// Reads a `SUMMARY` then `DONE` off a stream, then its end.
#[derive(Debug)]
pub(crate) struct SummaryReader {
    /// The stream name violations carry.
    stream: &'static str,
    /// What the peer's `SUMMARY` says it refused, once it came.
    pub(crate) refused: Option<Vec<Rejection>>,
    /// The peer's `DONE` came.
    pub(crate) done: bool,
    /// The stream ended after `DONE`.
    pub(crate) ended: bool,
}

impl SummaryReader {
    /// A reader for `stream` (named in violations).
    pub(crate) fn new(stream: &'static str) -> Self {
        Self {
            stream,
            refused: None,
            done: false,
            ended: false,
        }
    }

    /// Takes the next frame: `SUMMARY` first, then `DONE`, nothing after.
    pub(crate) fn handle_frame(&mut self, frame: Frame) -> Result<(), Violation> {
        if self.done {
            return Err(Violation::AfterDone(frame.frame_type));
        }
        match (frame.frame_type, &self.refused) {
            (FrameType::Summary, None) => {
                let summary: pb::SessionSummary =
                    Violation::decode("SessionSummary", &frame.payload)?;
                let refused = summary
                    .rejected
                    .into_iter()
                    .map(|r| {
                        Ok(Rejection {
                            hash: AssetHash::from_slice(&r.hash)?,
                            reason: RejectReason::PeerRefused(r.reason),
                        })
                    })
                    .collect::<Result<_, Violation>>()?;
                self.refused = Some(refused);
            }
            (FrameType::Done, Some(_)) => self.done = true,
            (got, refused) => {
                return Err(Violation::Unexpected {
                    expected: if refused.is_none() { "SUMMARY" } else { "DONE" },
                    got,
                    stream: self.stream,
                })
            }
        }
        Ok(())
    }

    /// The stream ended: fine only after `DONE`.
    pub(crate) fn handle_end(&mut self) -> Result<(), Violation> {
        if !self.done {
            return Err(Violation::EndedEarly {
                missing: if self.refused.is_none() {
                    "SUMMARY"
                } else {
                    "DONE"
                },
                stream: self.stream,
            });
        }
        self.ended = true;
        Ok(())
    }
}

/// The `SUMMARY`, `DONE` and finish that end a receiver's side.
pub(crate) fn summary_transmits(outcome: &ReceiveOutcome) -> [Transmit; 3] {
    let summary = pb::SessionSummary {
        received: outcome.assets + outcome.duplicates,
        rejected: outcome
            .rejected
            .iter()
            .map(|r| pb::Rejection {
                hash: Bytes::copy_from_slice(r.hash.as_bytes()),
                reason: r.reason.to_string(),
            })
            .collect(),
    };
    [
        Transmit::Frame(frame(FrameType::Summary, &summary.encode_to_vec())),
        Transmit::Frame(frame(
            FrameType::Done,
            &pb::StreamDone::default().encode_to_vec(),
        )),
        Transmit::Finish,
    ]
}
