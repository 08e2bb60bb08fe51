//! One offer, offerer side: sends the batch, reads the reply, asks the
//! engine to send what the peer wants, then reads its `SUMMARY`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{parse_wants, recon_frame, STREAM};
use crate::asset::{AssetHash, MetaVersion, Summary};
use crate::engine::send::{SendOutcome, SendPlan};
use crate::engine::EngineError;
use crate::pb;
use crate::recon::{self, compact};
use crate::session::machine::{Ending, Machine, Transmit};
use crate::session::summary::SummaryReader;
use crate::session::SessionError;
use crate::wire::{Frame, FrameType, Violation};

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
    ending: Ending<OfferingOutcome>,
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
            summary: SummaryReader::new(STREAM),
            deadline: Some(now + idle),
            transmit: VecDeque::from([offer]),
            requests: VecDeque::new(),
            ending: Ending::default(),
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
            ..SendPlan::default()
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
        if self.ending.is_set() || !self.summary.ended || self.sent.is_none() {
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
        self.ending.succeed(OfferingOutcome {
            peer_holds,
            undelivered,
            assets_sent: sent.assets,
            bytes_sent: sent.bytes,
            rejects: failed.len() as u64,
        });
    }
}

impl Machine for Offering {
    type Request = OfferingRequest;
    type Answer = OfferingAnswer;
    type Outcome = OfferingOutcome;

    fn handle_frame(&mut self, _now: Instant, frame: Frame) {
        if self.ending.is_set() {
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
            Err(violation) => self.ending.fail(violation),
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
            self.ending.fail(violation);
        }
        self.advance();
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|at| now >= at) && !self.ending.is_set() {
            let (waited, during) = match &self.sent {
                None => (self.idle, "waiting for the reply to an offer"),
                Some(sent) => (
                    patience(self.idle, sent.bytes),
                    "waiting for the SUMMARY of an offer",
                ),
            };
            self.ending.fail(Violation::Silent { waited, during });
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
                self.ending.fail(err);
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
        !self.ending.is_set() && !self.summary.ended
    }

    fn poll_outcome(&mut self) -> Option<Result<OfferingOutcome, SessionError>> {
        self.ending.take()
    }
}

/// How long an offerer waits for the `SUMMARY` after sending `bytes`.
fn patience(idle: Duration, bytes: u64) -> Duration {
    idle * 2 + Duration::from_secs(bytes >> 20)
}
