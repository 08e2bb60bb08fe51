//! Live sync's exchange (DESIGN §6) as two state machines: [`Offering`], the
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use super::machine::{Machine, Transmit};
use super::SessionError;
use crate::asset::{AssetHash, MetaVersion, Summary};
use crate::engine::receive::ReceiveOutcome;
use crate::engine::send::{SendOutcome, SendPlan};
use crate::engine::{EngineError, RejectReason, Rejection};
use crate::pb;
use crate::recon::{self, compact};
use crate::wire::data_stream::frame;
use crate::wire::{Frame, FrameType, Violation};

/// Largest frame of an offer or a reply: a full batch of compact summaries is
/// far below.
pub const MAX_OFFER_FRAME: u32 = 16 * 1024 * 1024;

/// Most summaries accepted in one offer.
pub const MAX_OFFER_ENTRIES: u64 = 100_000;

/// The stream name violations carry.
const STREAM: &str = "a live offer stream";

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

fn recon_frame(summaries: &[Summary], wants: Bytes, done: bool, level: i32) -> Transmit {
    let round = pb::Recon {
        packed_summaries: Bytes::from(compact::encode(summaries, level)),
        wants,
        done,
    };
    Transmit::Frame(frame(FrameType::Recon, &round.encode_to_vec()))
}

/// Reads a `SUMMARY` then `DONE` off a stream, then its end.
#[derive(Debug, Default)]
struct SummaryReader {
    refused: Option<Vec<Rejection>>,
    done: bool,
    ended: bool,
}

impl SummaryReader {
    fn handle_frame(&mut self, frame: Frame) -> Result<(), Violation> {
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
                    stream: STREAM,
                })
            }
        }
        Ok(())
    }

    fn handle_end(&mut self) -> Result<(), Violation> {
        if !self.done {
            return Err(Violation::EndedEarly {
                missing: if self.refused.is_none() {
                    "SUMMARY"
                } else {
                    "DONE"
                },
                stream: STREAM,
            });
        }
        self.ended = true;
        Ok(())
    }
}

/// The `SUMMARY`, `DONE` and finish that end a receiver's side.
fn summary_transmits(outcome: &ReceiveOutcome) -> [Transmit; 3] {
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

/// What an [`Offering`] asks of its driver.
#[derive(Debug, PartialEq, Eq)]
pub enum OfferingRequest {
    /// Send the plan over the offer's stream (which the engine then finishes).
    Send(SendPlan),
}

/// The answer to an [`OfferingRequest`].
#[derive(Debug)]
pub enum OfferingAnswer {
    /// The send finished.
    Sent(Result<SendOutcome, EngineError>),
}

/// A delivered offer.
#[derive(Debug, Default)]
pub struct OfferingOutcome {
    /// What the peer is now known to hold, at which metadata version.
    pub peer_holds: Vec<(AssetHash, MetaVersion)>,
    /// Offered but not delivered (declined while another peer delivers it,
    /// refused by the peer, unreadable here): to offer again later.
    pub undelivered: Vec<AssetHash>,
    /// Assets sent.
    pub assets_sent: u64,
    /// Their payload bytes.
    pub bytes_sent: u64,
    /// Assets that failed on either side.
    pub rejects: u64,
}

/// One offer, offerer side; see the module docs.
#[derive(Debug)]
pub struct Offering {
    batch: Vec<Summary>,
    idle: Duration,
    /// The peer's reply arrived and the plan is out.
    replied: bool,
    /// Offered assets the peer holds already, at its version.
    held: Vec<Summary>,
    /// Offered assets neither wanted nor held: another peer delivers them.
    declined: Vec<AssetHash>,
    /// Assets the plan sends bytes or metadata of.
    took: HashSet<AssetHash>,
    sent: Option<SendOutcome>,
    summary: SummaryReader,
    deadline: Option<Instant>,
    transmit: VecDeque<Transmit>,
    requests: VecDeque<OfferingRequest>,
    outcome: Option<Result<OfferingOutcome, SessionError>>,
    over: bool,
}

impl Offering {
    /// Offers `batch` (summaries with digests truncated as v2 carries them),
    /// starting at `now`.
    pub fn new(batch: Vec<Summary>, zstd_level: i32, idle: Duration, now: Instant) -> Self {
        let offer = recon_frame(&batch, Bytes::new(), false, zstd_level);
        Self {
            batch,
            idle,
            replied: false,
            held: Vec::new(),
            declined: Vec::new(),
            took: HashSet::new(),
            sent: None,
            summary: SummaryReader::default(),
            deadline: Some(now + idle),
            transmit: VecDeque::from([offer]),
            requests: VecDeque::new(),
            outcome: None,
            over: false,
        }
    }

    fn handle_reply(&mut self, frame: Frame) -> Result<(), Violation> {
        if frame.frame_type != FrameType::Recon {
            return Err(Violation::Unexpected {
                expected: "RECON",
                got: frame.frame_type,
                stream: STREAM,
            });
        }
        let reply: pb::Recon = Violation::decode("Recon", &frame.payload)?;
        let held = compact::decode(&reply.packed_summaries, self.batch.len() as u64)?;
        let sizes: HashMap<AssetHash, u64> = self.batch.iter().map(|s| (s.hash, s.size)).collect();
        let wants = parse_wants(&reply.wants)?;
        let assets = wants
            .iter()
            .map(|hash| match sizes.get(hash) {
                Some(size) => Ok((*hash, *size)),
                None => Err(Violation::WantsNotOffered(*hash)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let plan = SendPlan {
            assets,
            meta: recon::diff(&self.batch, &held).meta_to_send,
        };
        let answered: HashSet<AssetHash> = wants
            .iter()
            .chain(held.iter().map(|s| &s.hash))
            .copied()
            .collect();
        self.declined = self
            .batch
            .iter()
            .map(|s| s.hash)
            .filter(|hash| !answered.contains(hash))
            .collect();
        self.took = plan
            .assets
            .iter()
            .map(|(hash, _)| *hash)
            .chain(plan.meta.iter().copied())
            .collect();
        self.held = held;
        self.replied = true;
        self.requests.push_back(OfferingRequest::Send(plan));
        Ok(())
    }

    fn advance(&mut self) {
        if self.outcome.is_some() || !self.summary.ended || self.sent.is_none() {
            return;
        }
        let sent = self.sent.take().expect("checked above");
        let refused = self.summary.refused.take().unwrap_or_default();
        // The peer now holds what it took, except what failed on either side.
        let failed: HashSet<AssetHash> =
            sent.failed.iter().chain(&refused).map(|r| r.hash).collect();
        let mut peer_holds: Vec<(AssetHash, MetaVersion)> =
            self.held.iter().map(|s| (s.hash, s.version)).collect();
        peer_holds.extend(
            self.batch
                .iter()
                .filter(|s| self.took.contains(&s.hash) && !failed.contains(&s.hash))
                .map(|s| (s.hash, s.version)),
        );
        let mut undelivered = std::mem::take(&mut self.declined);
        undelivered.extend(failed.iter().copied());
        self.outcome = Some(Ok(OfferingOutcome {
            peer_holds,
            undelivered,
            assets_sent: sent.assets,
            bytes_sent: sent.bytes,
            rejects: failed.len() as u64,
        }));
    }
}

impl Machine for Offering {
    type Request = OfferingRequest;
    type Answer = OfferingAnswer;
    type Outcome = OfferingOutcome;

    fn handle_frame(&mut self, _now: Instant, frame: Frame) {
        if self.outcome.is_some() {
            return;
        }
        let handled = if self.replied {
            self.summary.handle_frame(frame)
        } else {
            self.handle_reply(frame)
        };
        match handled {
            // The reply is in: what is left is the peer storing what we send.
            Ok(()) if self.sent.is_none() => self.deadline = None,
            Ok(()) => {}
            Err(violation) => self.outcome = Some(Err(violation.into())),
        }
        self.advance();
    }

    fn handle_end(&mut self, _now: Instant) {
        let ended = if self.replied {
            self.summary.handle_end()
        } else {
            Err(Violation::EndedEarly {
                missing: "RECON",
                stream: STREAM,
            })
        };
        if let Err(violation) = ended {
            self.outcome.get_or_insert(Err(violation.into()));
        }
        self.advance();
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|at| now >= at) && self.outcome.is_none() {
            let (waited, during) = match &self.sent {
                None => (self.idle, "waiting for the reply to an offer"),
                Some(sent) => (
                    patience(self.idle, sent.bytes),
                    "waiting for the SUMMARY of an offer",
                ),
            };
            self.outcome = Some(Err(Violation::Silent { waited, during }.into()));
        }
    }

    fn handle_answer(&mut self, now: Instant, answer: OfferingAnswer) {
        match answer {
            OfferingAnswer::Sent(Ok(sent)) => {
                if !self.summary.ended {
                    self.deadline = Some(now + patience(self.idle, sent.bytes));
                }
                self.sent = Some(sent);
            }
            OfferingAnswer::Sent(Err(err)) => {
                self.outcome.get_or_insert(Err(err.into()));
            }
        }
        self.advance();
    }

    fn handle_finished(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmit.pop_front()
    }

    fn poll_request(&mut self) -> Option<OfferingRequest> {
        self.requests.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    fn wants_frames(&self) -> bool {
        self.outcome.is_none() && !self.summary.ended
    }

    fn poll_outcome(&mut self) -> Option<Result<OfferingOutcome, SessionError>> {
        if self.over {
            return None;
        }
        let outcome = self.outcome.take();
        self.over = outcome.is_some();
        outcome
    }
}

/// How long an offerer waits for the `SUMMARY` after sending `bytes`.
fn patience(idle: Duration, bytes: u64) -> Duration {
    idle * 2 + Duration::from_secs(bytes >> 20)
}

/// What an [`Answering`] asks of its driver.
#[derive(Debug, PartialEq, Eq)]
pub enum AnsweringRequest {
    /// Claim the offered assets this node lacks (node-wide, so no other peer
    /// delivers them meanwhile) and look up the ones it holds.
    Claim(Vec<Summary>),
    /// Receive the rest of the stream with the engine.
    Receive,
}

/// The answer to an [`AnsweringRequest`].
#[derive(Debug)]
pub enum AnsweringAnswer {
    /// Answer to [`AnsweringRequest::Claim`].
    Claimed {
        /// Our summaries of the offered assets we hold (digests truncated).
        held: Vec<Summary>,
        /// The offered assets we lack and have claimed.
        wants: Vec<AssetHash>,
    },
    /// Answer to [`AnsweringRequest::Receive`].
    Received(Result<ReceiveOutcome, EngineError>),
}

/// An answered offer.
#[derive(Debug)]
pub struct AnsweringOutcome {
    /// What the offer said the peer holds.
    pub offered: Vec<Summary>,
    /// What was received.
    pub received: ReceiveOutcome,
}

/// One offer, receiver side; see the module docs.
#[derive(Debug)]
pub struct Answering {
    idle: Duration,
    zstd_level: i32,
    offered: Option<Vec<Summary>>,
    received: Option<ReceiveOutcome>,
    deadline: Option<Instant>,
    transmit: VecDeque<Transmit>,
    requests: VecDeque<AnsweringRequest>,
    outcome: Option<Result<AnsweringOutcome, SessionError>>,
    over: bool,
}

impl Answering {
    /// Waits for an offer from `now` on.
    pub fn new(zstd_level: i32, idle: Duration, now: Instant) -> Self {
        Self {
            idle,
            zstd_level,
            offered: None,
            received: None,
            deadline: Some(now + idle),
            transmit: VecDeque::new(),
            requests: VecDeque::new(),
            outcome: None,
            over: false,
        }
    }

    fn handle_offer(&mut self, frame: Frame) -> Result<(), Violation> {
        if frame.frame_type != FrameType::Recon {
            return Err(Violation::Unexpected {
                expected: "RECON",
                got: frame.frame_type,
                stream: STREAM,
            });
        }
        let offer: pb::Recon = Violation::decode("Recon", &frame.payload)?;
        let offered = compact::decode(&offer.packed_summaries, MAX_OFFER_ENTRIES)?;
        self.requests
            .push_back(AnsweringRequest::Claim(offered.clone()));
        self.offered = Some(offered);
        self.deadline = None;
        Ok(())
    }
}

impl Machine for Answering {
    type Request = AnsweringRequest;
    type Answer = AnsweringAnswer;
    type Outcome = AnsweringOutcome;

    fn handle_frame(&mut self, _now: Instant, frame: Frame) {
        if self.outcome.is_some() {
            return;
        }
        // Only the offer is ours to read; the engine reads the rest.
        if let Err(violation) = self.handle_offer(frame) {
            self.outcome = Some(Err(violation.into()));
        }
    }

    fn handle_end(&mut self, _now: Instant) {
        self.outcome.get_or_insert(Err(Violation::EndedEarly {
            missing: "RECON",
            stream: STREAM,
        }
        .into()));
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|at| now >= at) && self.outcome.is_none() {
            self.outcome = Some(Err(Violation::Silent {
                waited: self.idle,
                during: "waiting for an offer",
            }
            .into()));
        }
    }

    fn handle_answer(&mut self, _now: Instant, answer: AnsweringAnswer) {
        if self.outcome.is_some() {
            return;
        }
        match answer {
            AnsweringAnswer::Claimed { held, wants } => {
                let wants: Vec<u8> = wants.iter().flat_map(|h| *h.as_bytes()).collect();
                self.transmit.push_back(recon_frame(
                    &held,
                    Bytes::from(wants),
                    true,
                    self.zstd_level,
                ));
                self.requests.push_back(AnsweringRequest::Receive);
            }
            AnsweringAnswer::Received(Ok(received)) => {
                self.transmit.extend(summary_transmits(&received));
                self.received = Some(received);
            }
            AnsweringAnswer::Received(Err(err)) => self.outcome = Some(Err(err.into())),
        }
    }

    fn handle_finished(&mut self, _now: Instant) {
        if let (Some(offered), Some(received)) = (self.offered.take(), self.received.take()) {
            self.outcome
                .get_or_insert(Ok(AnsweringOutcome { offered, received }));
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmit.pop_front()
    }

    fn poll_request(&mut self) -> Option<AnsweringRequest> {
        self.requests.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    fn wants_frames(&self) -> bool {
        self.outcome.is_none() && self.offered.is_none()
    }

    fn poll_outcome(&mut self) -> Option<Result<AnsweringOutcome, SessionError>> {
        if self.over {
            return None;
        }
        let outcome = self.outcome.take();
        self.over = outcome.is_some();
        outcome
    }
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
