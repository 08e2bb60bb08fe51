//! One offer, receiver side: reads the offer, asks for claims and a lookup,
//! replies with what it holds and wants, lets the engine receive the rest,
//! then sends its `SUMMARY`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{recon_frame, MAX_OFFER_ENTRIES, STREAM};
use crate::asset::{AssetHash, Summary};
use crate::engine::receive::ReceiveOutcome;
use crate::engine::EngineError;
use crate::pb;
use crate::recon::compact;
use crate::session::machine::{Ending, Machine, Transmit};
use crate::session::summary::summary_transmits;
use crate::session::SessionError;
use crate::wire::{Frame, FrameType, Violation};

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
    ending: Ending<AnsweringOutcome>,
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
            ending: Ending::default(),
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
        if self.ending.is_set() {
            return;
        }
        // Only the offer is ours to read; the engine reads the rest.
        if let Err(violation) = self.handle_offer(frame) {
            self.ending.fail(violation);
        }
    }

    fn handle_end(&mut self, _now: Instant) {
        self.ending.fail(Violation::EndedEarly {
            missing: "RECON",
            stream: STREAM,
        });
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|at| now >= at) && !self.ending.is_set() {
            self.ending.fail(Violation::Silent {
                waited: self.idle,
                during: "waiting for an offer",
            });
        }
    }

    fn handle_answer(&mut self, _now: Instant, answer: AnsweringAnswer) {
        if self.ending.is_set() {
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
            AnsweringAnswer::Received(Err(err)) => self.ending.fail(err),
        }
    }

    fn handle_finished(&mut self, _now: Instant) {
        if let (Some(offered), Some(received)) = (self.offered.take(), self.received.take()) {
            self.ending.succeed(AnsweringOutcome { offered, received });
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
        !self.ending.is_set() && self.offered.is_none()
    }

    fn poll_outcome(&mut self) -> Option<Result<AnsweringOutcome, SessionError>> {
        self.ending.take()
    }
}
