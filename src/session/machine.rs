//! What every session state machine offers its driver.
//!
//! A machine is the protocol of one stream (or one connection's control
//! stream) with the IO taken out, in the way quinn-proto is to quinn: the
//! driver feeds it what happened (`handle_*`: a frame arrived, the stream
//! ended, a timer fired, the store or the engine answered, our side of the
//! stream was acknowledged) and carries out what it asks (`poll_*`: frames to
//! send, requests to serve, when to wake it). The machine holds no socket,
//! runs no future and reads no clock; the time is an argument.
//!
//! The driver's loop, for any machine `m`:
//! 1. if `m.poll_outcome()` is `Some`, the session is over;
//! 2. serve every `m.poll_request()`, send every `m.poll_transmit()` (in
//!    order, [`Transmit::Finish`] after the frames before it);
//! 3. wait for whichever comes first: a frame (only while
//!    `m.wants_frames()`), a served request's answer, the acknowledgement of
//!    a finish, or `m.poll_timeout()`; hand it to the machine; repeat.

use std::time::Instant;

use bytes::Bytes;

use super::SessionError;
use crate::wire::Frame;

/// What a machine asks to be written on its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// One encoded frame (header included).
    Frame(Bytes),
    /// End the stream once everything before is written, and report (through
    /// [`Machine::handle_finished`]) when the peer has acknowledged it all.
    Finish,
}

/// A session state machine; see the module docs for the driver's loop.
pub trait Machine {
    /// What the machine asks of the store or the engine.
    type Request;
    /// The answer to a request.
    type Answer;
    /// What a completed session yields.
    type Outcome;

    /// A frame arrived on the stream.
    fn handle_frame(&mut self, now: Instant, frame: Frame);
    /// The peer finished the stream cleanly (between frames).
    fn handle_end(&mut self, now: Instant);
    /// The deadline of [`poll_timeout`](Self::poll_timeout) passed.
    fn handle_timeout(&mut self, now: Instant);
    /// A request was served.
    fn handle_answer(&mut self, now: Instant, answer: Self::Answer);
    /// Everything up to a [`Transmit::Finish`] reached the peer.
    fn handle_finished(&mut self, now: Instant);

    /// The next frame to send, or a finish.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// The next request to serve.
    fn poll_request(&mut self) -> Option<Self::Request>;
    /// When to call [`handle_timeout`](Self::handle_timeout), if at all.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Whether the machine wants the next frame now. While it does not, the
    /// driver leaves the stream unread, so QUIC's flow control holds the peer
    /// back: this is how a machine applies backpressure.
    fn wants_frames(&self) -> bool;
    /// The end of the session, once: its outcome or why it failed.
    fn poll_outcome(&mut self) -> Option<Result<Self::Outcome, SessionError>>;

    /// The largest frame payload the machine takes in its current phase,
    /// when that is below the limit its stream's reader was built with; the
    /// driver applies it before each read. Limits are per phase ([`crate::wire`]):
    /// a phase that expects only small frames must not let a peer make the
    /// reader buffer a large one.
    fn frame_limit(&self) -> Option<u32> {
        None
    }
}

/// How a machine's session ended: set once (the first ending wins, so a
/// failure is never overwritten by a later one), handed out once by
/// [`Machine::poll_outcome`].
#[derive(Debug)]
pub(crate) struct Ending<T> {
    slot: Option<Result<T, SessionError>>,
    handed_out: bool,
}

impl<T> Default for Ending<T> {
    fn default() -> Self {
        Self {
            slot: None,
            handed_out: false,
        }
    }
}

impl<T> Ending<T> {
    /// True once the session ended (whether or not the ending was taken).
    pub(crate) fn is_set(&self) -> bool {
        self.slot.is_some() || self.handed_out
    }

    /// Ends the session with `err`, unless it already ended.
    pub(crate) fn fail(&mut self, err: impl Into<SessionError>) {
        if !self.is_set() {
            self.slot = Some(Err(err.into()));
        }
    }

    /// Ends the session with `value`, unless it already ended.
    pub(crate) fn succeed(&mut self, value: T) {
        if !self.is_set() {
            self.slot = Some(Ok(value));
        }
    }

    /// The ending, the first time it is asked for after it was set.
    pub(crate) fn take(&mut self) -> Option<Result<T, SessionError>> {
        let ending = self.slot.take();
        self.handed_out |= ending.is_some();
        ending
    }
}
