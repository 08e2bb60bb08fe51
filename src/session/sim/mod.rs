//! An in-memory pair of peers for the session machines: a simulated clock, a
//! simulated network and simulated stores, no sockets, no tokio.
//!
//! The network models what QUIC streams look like to an application: bytes
//! of one stream arrive in order (a lost packet is retransmitted after a
//! timeout and holds back everything behind it), while different streams are
//! independent, so their frames interleave in any order. Each run is seeded:
//! a failure replays from its seed.
//!
//! The world advances from event to event (a packet ready, a deadline, an
//! acknowledgement). A machine that waits with nothing in flight and no
//! deadline is a deadlock, and the runner fails the test there instead of
//! spinning.
//!
//! - [`net`]: streams, packets, loss, the clock;
//! - [`store`]: a store that answers at once;
//! - [`engine`]: what the engine does with `Send`/`Receive` requests, written
//!   plainly over simulated streams (the data-stream grammar is the real one);
//! - the tests: `v1_tests`, `v2_tests`, `v2_hostile_tests`, `live_tests`.

pub(crate) mod engine;
pub(crate) mod net;
pub(crate) mod store;

mod convergence_tests;
mod live_tests;
mod v1_tests;
mod v2_hostile_tests;
mod v2_tests;

use std::time::Instant;

use bytes::BytesMut;

use super::machine::{Machine, Transmit};
use super::SessionError;
use crate::stream::ReadError;
use crate::wire::{FrameDecoder, FrameError, Violation};
use net::{Net, StreamId};

/// One machine on one bi-stream of the simulated network, driven the way
/// `session::driver::drive` drives a real one.
pub(crate) struct Side<M: Machine> {
    pub(crate) machine: M,
    /// The stream it writes.
    pub(crate) out: StreamId,
    /// The stream it reads.
    pub(crate) inp: StreamId,
    decoder: FrameDecoder,
    /// The decoder's limit as built: the most any phase may take.
    most: u32,
    buf: BytesMut,
    /// The end of the input was handed to the machine.
    end_seen: bool,
    /// When our finish is acknowledged, once we finished.
    finish_acked_at: Option<Instant>,
    /// The machine's outcome (or the driver's error), once there is one.
    pub(crate) outcome: Option<Result<M::Outcome, SessionError>>,
}

impl<M: Machine> Side<M> {
    pub(crate) fn new(machine: M, out: StreamId, inp: StreamId, max_frame_len: u32) -> Self {
        Self {
            machine,
            out,
            inp,
            decoder: FrameDecoder::new(max_frame_len),
            most: max_frame_len,
            buf: BytesMut::new(),
            end_seen: false,
            finish_acked_at: None,
            outcome: None,
        }
    }

    pub(crate) fn is_over(&self) -> bool {
        self.outcome.is_some()
    }

    /// Hands over what was read from the input but not yet cut into frames:
    /// a stream whose rest another reader (the engine) takes.
    pub(crate) fn take_input(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
    }

    /// Does everything that can be done at `now`; returns the requests the
    /// machine made, for the caller to serve.
    pub(crate) fn pump(&mut self, now: Instant, net: &mut Net) -> Vec<M::Request> {
        let mut requests = Vec::new();
        if self.outcome.is_some() {
            return requests;
        }
        loop {
            let mut progressed = false;
            while let Some(transmit) = self.machine.poll_transmit() {
                progressed = true;
                match transmit {
                    Transmit::Frame(frame) => net.send(self.out, now, &frame),
                    Transmit::Finish => self.finish_acked_at = Some(net.finish(self.out, now)),
                }
            }
            if self.finish_acked_at.is_some_and(|at| at <= now) {
                self.finish_acked_at = None;
                self.machine.handle_finished(now);
                progressed = true;
            }
            // Bytes are taken off the network only while the machine reads:
            // what it leaves there is backpressure (or another reader's).
            if self.machine.wants_frames() {
                self.buf.extend_from_slice(&net.take_ready(self.inp, now));
            }
            while self.machine.wants_frames() && self.outcome.is_none() {
                let ended = net.fin_ready(self.inp, now);
                let limit = self
                    .machine
                    .frame_limit()
                    .map_or(self.most, |limit| limit.min(self.most));
                if self.decoder.max_len() != limit {
                    self.decoder = FrameDecoder::new(limit);
                }
                let frame = if ended {
                    self.decoder.decode_eof(&mut self.buf)
                } else {
                    self.decoder.decode(&mut self.buf)
                };
                match frame {
                    Ok(Some(frame)) => self.machine.handle_frame(now, frame),
                    Ok(None) if ended && !self.end_seen => {
                        self.end_seen = true;
                        self.machine.handle_end(now);
                    }
                    Ok(None) => break,
                    Err(err) => self.outcome = Some(Err(read_error(err))),
                }
                progressed = true;
            }
            if self
                .machine
                .poll_timeout()
                .is_some_and(|deadline| deadline <= now)
            {
                self.machine.handle_timeout(now);
                progressed = true;
            }
            while let Some(request) = self.machine.poll_request() {
                requests.push(request);
                progressed = true;
            }
            if let Some(outcome) = self.machine.poll_outcome() {
                self.outcome.get_or_insert(outcome);
            }
            if !progressed || self.outcome.is_some() {
                return requests;
            }
        }
    }

    /// The next moment this side has something to do on its own.
    pub(crate) fn next_event(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            return None;
        }
        [self.machine.poll_timeout(), self.finish_acked_at]
            .into_iter()
            .flatten()
            .min()
    }
}

fn read_error(err: FrameError) -> SessionError {
    SessionError::from(ReadError::Violation(Violation::Frame(err)))
}
