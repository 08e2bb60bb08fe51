//! Protocol v2 (ALPN `can-sync/2`) as a state machine: the control stream of
//! the pipelined session.
//!
//! On the control bi-stream opened by the initiator:
//! 1. `HELLO` both ways; [`negotiate`] settles on the smaller of each limit
//!    (streams, inline limit) and keeps every frame this side sends within the
//!    frame limit the peer announced;
//! 2. `RECON`: when both `HELLO`s offer [`crate::recon::coded::FEATURE`], the
//!    coded exchange of [`crate::recon::coded`] (a probe, cells, the wants:
//!    bytes in proportion to the difference, carried as `coded.rs` in this
//!    module describes); otherwise, or when
//!    it falls back, the full exchange: each side sends its summaries in the
//!    compact encoding of [`compact`](crate::recon::compact) (raw hashes, varints, zstd). When both
//!    `HELLO`s offer [`paged::FEATURE`], in hash-ordered pages merged as they
//!    come (`paged.rs` in this module); otherwise as one list each, compared
//!    with [`recon::diff`](crate::recon::diff) (`whole.rs` in this module);
//! 3. each side asks the engine to send over exactly the negotiated number of
//!    streams ([`Request::Send`]) and feeds it what the peer lacks
//!    ([`Request::Plan`]: at once, or page by page in the paged exchange), and
//!    asks it to receive the peer's streams ([`Request::Receive`]); the driver
//!    opens and accepts the streams. When both `HELLO`s carry
//!    [`pull::FEATURE`] (the default), assets go only when the peer asks for
//!    them on its want stream, each claimed node-wide first, so that a node
//!    several peers serve at once takes each asset from one ([`pull`]);
//!    metadata updates still go as the exchange decides. When both carry
//!    [`FEATURE_RANGES`] (the default), a large asset goes as its outboard
//!    and its groups, each verified on arrival, and a side that holds part
//!    of one names in its `WANT` only the groups it lacks;
//! 4. when everything it received is stored or rejected, each side sends
//!    `SUMMARY{received, rejected}` then `DONE` and finishes the control
//!    stream; the session is complete when both summaries are in, both
//!    pipelines are done and our control stream is acknowledged.
//!
//! The initiator then closes the connection with [`CLOSE_DONE`], unless both
//! `HELLO`s carried [`FEATURE_LIVE`]: then the connection stays open for live
//! sync, which starts from [`LiveStart`].
//!
//! Limits per phase: until the peer's `HELLO` is in, the control
//! stream takes frames of at most [`MAX_HELLO_FRAME`]; from then on, while
//! reconciling, [`paged::MAX_PAGED_RECON_FRAME`] when both sides page their
//! lists, else [`MAX_CONTROL_FRAME`] (a peer that sends its whole list in one
//! frame). The driver applies the phase's limit before each read
//! ([`Machine::frame_limit`]).
//!
//! Deadlines: the peer's `HELLO` and `RECON` must each come within the idle
//! timeout. Data streams have their own (the engine's). The peer's `SUMMARY`
//! comes when its receiving is done; once everything we sent is in its hands
//! it has only its last pushes left, so it must come within
//! [`SUMMARY_GRACE`] idle timeouts of that.

use std::collections::VecDeque;

mod coded;
mod negotiate;
pub mod paged;
pub mod pull;
mod requests;
mod whole;

use negotiate::session_configs;
pub use negotiate::{hello, negotiate, Negotiated};
pub use requests::{Answer, Claiming, Request};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use tracing::info;

use super::machine::{Ending, Machine, Transmit};
use super::summary::{summary_transmits, SummaryReader};
use super::{LiveStart, Role, SessionError, SessionReport};
use crate::asset::Summary;
use crate::engine::receive::ReceiveOutcome;
use crate::engine::send::{SendOutcome, SendPlan};
use crate::engine::EngineConfig;
use crate::fault::Fault;
use crate::pb;
use crate::recon::coded::{CodedRecon, Side};
use crate::wire::data_stream::frame;
use crate::wire::{Frame, FrameType, Violation, CLOSE_DONE};

/// ALPN of protocol v2.
pub const ALPN_V2: &[u8] = b"can-sync/2";

/// Protocol version announced in `HELLO`. Version 3 summaries (lists,
/// coded cells, live offers) carry the whole 32-byte metadata digest where
/// version 2 carried 8 bytes of it; a peer announcing less is refused.
pub const VERSION: u32 = 3;

/// The `HELLO` feature of a side that keeps the connection for live sync.
pub const FEATURE_LIVE: &str = "live";

/// The `HELLO` feature of a side that moves large assets by verified ranges
/// ([`crate::can::store::ranges`]): each is sent as its outboard, then one
/// `ASSET_CHUNK` per group, each verified by the receiver as it arrives; a
/// receiver that holds part of an asset names the groups it lacks in its
/// `WANT` (`Want.resume`), and only those are sent. On when both `HELLO`s
/// carry it and both frame limits hold a group.
pub const FEATURE_RANGES: &str = "ranges";

/// The `HELLO` feature of a side that takes one large asset from several
/// sources ([`crate::engine::split`]): with it, a `WANT` may name an asset
/// again, each time with the run of groups it now asks for
/// (`Want.resume`), and the sender sends each ask's groups in turn. Offered
/// with [`FEATURE_RANGES`] by a side whose store has its outboards at hand
/// (an embedded store, or a CAN service that serves them), so that it
/// reads only the runs asked of it; on when both `HELLO`s carry both.
pub const FEATURE_SPLIT: &str = "split";

/// The `HELLO` feature of a side that takes nothing from its peer: the peer
/// may only read from it ([`crate::node::access`]). The peer sends it no
/// asset and no metadata and reports how many it held back
/// ([`SessionReport::not_taken`]); what it sends anyway is refused. Either
/// side may announce it.
pub const FEATURE_READ_ONLY: &str = "read-only";

/// Most summaries accepted from one peer in one session.
pub const MAX_SUMMARIES: u64 = 50_000_000;

/// Largest control-stream frame: the compact summaries of a large archive.
pub const MAX_CONTROL_FRAME: u32 = 1024 * 1024 * 1024;

/// Largest frame on the control stream before the peer's `HELLO` is in: a
/// `HELLO` is a few numbers and names, so a peer cannot make this side
/// buffer more than this before it has said what it speaks (the per-phase
/// limits of [`crate::wire`]; `RECON` lists may then take [`MAX_CONTROL_FRAME`]).
pub const MAX_HELLO_FRAME: u32 = 64 * 1024;

/// Idle timeouts the peer's `SUMMARY` may take once our sending is done.
pub const SUMMARY_GRACE: u32 = 2;

/// The stream name violations carry.
const STREAM: &str = "the control stream";

/// What of `plan` goes to the peer: all of it, or nothing when the peer
/// takes nothing from us (it grants us read only), counting in `not_taken`
/// what it held.
fn plan_for_peer(limits: Option<Negotiated>, not_taken: &mut u64, plan: SendPlan) -> SendPlan {
    match limits {
        Some(limits) if limits.peer_takes_nothing => {
            *not_taken += (plan.assets.len() + plan.lookup.len() + plan.meta.len()) as u64;
            SendPlan::default()
        }
        _ => plan,
    }
}

/// A completed v2 session.
#[derive(Debug)]
pub struct Outcome {
    /// What moved (control bytes and time are the driver's to add).
    pub report: SessionReport,
    /// The code to close the connection with, when this side closes it.
    pub close: Option<u32>,
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Our `HELLO` is out; waiting for the peer's.
    Hello,
    /// Listing our summaries and waiting for the peer's.
    Reconciling,
    /// The engine moves data; `SUMMARY`s close the session.
    Transferring,
}

/// The control stream of one v2 session; see the module docs.
#[derive(Debug)]
pub struct Session {
    role: Role,
    config: EngineConfig,
    hello: pb::Hello,
    phase: Phase,
    limits: Option<Negotiated>,
    /// The settings this side receives with, once negotiated.
    receive_config: Option<Arc<EngineConfig>>,
    /// The coded exchange while it runs.
    coded: Option<CodedRecon>,
    /// The full exchange has begun (our summaries are asked for).
    listing: bool,
    /// The paged full exchange while it runs.
    paged: Option<paged::Paged>,
    /// Pulled transfers, when both sides pull.
    pull: Option<pull::Pull>,
    /// `Plan`s handed to the driver and not yet taken by the engine.
    plans_out: usize,
    /// Assets we told the peer of (summaries listed, hashes it lacks, or
    /// what our cells can name): a peer that pulls asks for no more.
    advertised: u64,
    ours: Option<Vec<Summary>>,
    theirs: Option<Vec<Summary>>,
    sent: Option<SendOutcome>,
    received: Option<ReceiveOutcome>,
    /// Assets and metadata updates the peer lacks but takes nothing of.
    not_taken: u64,
    /// The peer's `SUMMARY`, `DONE` and end of stream.
    peer_summary: SummaryReader,
    finished: bool,
    deadline: Option<Instant>,
    transmit: VecDeque<Transmit>,
    requests: VecDeque<Request>,
    ending: Ending<Outcome>,
}

impl Session {
    /// A session starting at `now` with this side's engine settings; `live`
    /// asks the peer to keep the connection for live sync.
    pub fn new(role: Role, config: EngineConfig, live: bool, now: Instant) -> Self {
        Self::presenting(role, config, live, Bytes::new(), now)
    }

    /// [`Session::new`], the dialer presenting `capability` (the secret of a
    /// granted ticket; empty: none) in its `HELLO`.
    pub fn presenting(
        role: Role,
        config: EngineConfig,
        live: bool,
        capability: Bytes,
        now: Instant,
    ) -> Self {
        let hello = pb::Hello {
            capability,
            ..hello(&config, live)
        };
        let deadline = Some(now + config.idle_timeout);
        let first = Transmit::Frame(frame(FrameType::Hello, &hello.encode_to_vec()));
        Self {
            role,
            config,
            hello,
            phase: Phase::Hello,
            limits: None,
            receive_config: None,
            coded: None,
            listing: false,
            paged: None,
            pull: None,
            plans_out: 0,
            advertised: 0,
            ours: None,
            theirs: None,
            sent: None,
            received: None,
            not_taken: 0,
            peer_summary: SummaryReader::new(STREAM),
            finished: false,
            deadline,
            transmit: VecDeque::from([first]),
            requests: VecDeque::new(),
            ending: Ending::default(),
        }
    }

    /// The limits both sides settled on, once `HELLO`s crossed.
    pub fn limits(&self) -> Option<Negotiated> {
        self.limits
    }

    fn fail(&mut self, err: impl Into<SessionError>) {
        self.ending.fail(err);
    }

    pub(super) fn unexpected(&self, expected: &'static str, got: FrameType) -> Violation {
        Violation::Unexpected {
            expected,
            got,
            stream: STREAM,
        }
    }

    fn handle_hello(&mut self, now: Instant, frame: Frame) -> Result<(), Violation> {
        if frame.frame_type != FrameType::Hello {
            return Err(self.unexpected("HELLO", frame.frame_type));
        }
        let theirs: pb::Hello = Violation::decode("Hello", &frame.payload)?;
        let limits = negotiate(&self.hello, &theirs)?;
        self.limits = Some(limits);
        if limits.pull {
            self.pull = Some(pull::Pull::default());
        }
        self.phase = Phase::Reconciling;
        self.deadline = Some(now + self.config.idle_timeout);
        if limits.coded {
            let side = match self.role {
                Role::Initiator => Side::Initiator,
                Role::Responder => Side::Responder,
            };
            self.coded = Some(CodedRecon::new(side));
            self.pump_coded(now);
        } else {
            self.fall_back(now);
        }
        Ok(())
    }

    fn handle_recon(&mut self, now: Instant, frame: Frame) -> Result<(), Violation> {
        if frame.frame_type != FrameType::Recon {
            return Err(self.unexpected("RECON", frame.frame_type));
        }
        let round: pb::Recon = Violation::decode("Recon", &frame.payload)?;
        if round.coded {
            return self.handle_coded(now, round);
        }
        // A full list: the peer does not code, or fell back; so do we.
        self.fall_back(now);
        if self.paged.is_some() {
            return self.handle_peer_page(now, round);
        }
        self.handle_their_list(round)
    }

    /// Hands `plan` to the engine (see [`plan_for_peer`]). A peer that pulls
    /// asks for the assets it lacks itself: only the metadata goes, and the
    /// exchange's last plan does not end the streams ([`pull`]).
    pub(super) fn hand_plan(&mut self, plan: SendPlan, last: bool) {
        let mut plan = plan_for_peer(self.limits, &mut self.not_taken, plan);
        let mut last = last;
        if self.pull.is_some() {
            plan.assets.clear();
            plan.lookup.clear();
            if last {
                self.exchange_planned();
                last = false;
            }
        }
        self.plans_out += 1;
        self.requests.push_back(Request::Plan { plan, last });
    }

    /// Asks for the engine to start sending (what [`Request::Plan`]s will
    /// name) and to receive the peer's streams, with the settings `limits`
    /// make of ours.
    pub(super) fn start_engine(&mut self, limits: Negotiated) {
        let (receive, send) = session_configs(&self.config, &limits);
        let receive = Arc::new(receive);
        let pull = self.pull.is_some();
        self.requests.push_back(Request::Send {
            config: Arc::new(send),
            pull,
        });
        self.requests.push_back(Request::Receive {
            config: receive.clone(),
            pull,
        });
        self.receive_config = Some(receive);
    }

    /// Reconciliation is over on the control stream: what comes next from
    /// the peer is its `SUMMARY`, due once our sending is done.
    pub(super) fn enter_transfer(&mut self) {
        self.phase = Phase::Transferring;
        self.deadline = None;
    }

    /// Takes the steps pulling can take, and notices the end of the session.
    fn advance(&mut self) {
        if !self.ending.is_set() {
            self.pump_pull();
        }
        let complete = self.finished
            && self.peer_summary.ended
            && self.sent.is_some()
            && self.received.is_some();
        if self.ending.is_set() || !complete {
            return;
        }
        let (Some(sent), Some(mut received), Some(limits)) =
            (self.sent.take(), self.received.take(), self.limits)
        else {
            unreachable!("checked above");
        };
        if let Some(pull) = &self.pull {
            let counts = pull.counts();
            info!(
                asked = counts.asked,
                deferred = counts.deferred,
                served = counts.served,
                "v2 pulled"
            );
        }
        let refused = self.peer_summary.refused.take().unwrap_or_default();
        let live = limits.live.then(|| {
            Arc::new(LiveStart {
                engine: self.receive_config.clone().expect("set with the plan"),
                peer_takes_nothing: limits.peer_takes_nothing,
                peer_holds: std::mem::take(&mut received.stored),
                peer_changes: std::mem::take(&mut received.changes),
            })
        });
        let mut rejected = received.rejected;
        rejected.extend(sent.failed);
        rejected.extend(refused);
        let report = SessionReport {
            assets_sent: sent.assets,
            assets_received: received.assets,
            duplicates_received: received.duplicates,
            payload_bytes: sent.bytes + received.bytes,
            bytes_sent: sent.bytes,
            wire_bytes: sent.wire_bytes + received.wire_bytes,
            meta_sent: sent.meta,
            meta_applied: received.meta_applied,
            not_taken: self.not_taken,
            rejected,
            elapsed: Default::default(),
            live,
        };
        let close = (self.role == Role::Initiator && !limits.live).then_some(CLOSE_DONE);
        self.ending.succeed(Outcome { report, close });
    }
}

impl Machine for Session {
    type Request = Request;
    type Answer = Answer;
    type Outcome = Outcome;

    fn handle_frame(&mut self, now: Instant, frame: Frame) {
        if self.ending.is_set() {
            return;
        }
        let handled = match self.phase {
            Phase::Hello => self.handle_hello(now, frame),
            Phase::Reconciling => self.handle_recon(now, frame),
            Phase::Transferring => self.peer_summary.handle_frame(frame),
        };
        if let Err(violation) = handled {
            self.fail(violation);
        }
        self.advance();
    }

    fn handle_end(&mut self, _now: Instant) {
        let ended = match self.phase {
            Phase::Transferring => self.peer_summary.handle_end(),
            Phase::Hello | Phase::Reconciling => Err(Violation::EndedEarly {
                missing: if self.phase == Phase::Hello {
                    "HELLO"
                } else {
                    "RECON"
                },
                stream: STREAM,
            }),
        };
        if let Err(violation) = ended {
            self.fail(violation);
        }
        self.advance();
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|at| now >= at) && self.wants_frames() {
            let idle = self.config.idle_timeout;
            let (during, waited) = match self.phase {
                Phase::Hello => ("waiting for HELLO", idle),
                Phase::Reconciling => ("waiting for RECON", idle),
                Phase::Transferring => ("waiting for SUMMARY", idle * SUMMARY_GRACE),
            };
            self.fail(Violation::Silent { waited, during });
        }
    }

    fn handle_answer(&mut self, now: Instant, answer: Answer) {
        if self.ending.is_set() {
            return;
        }
        match answer {
            Answer::Listed(Ok(ours)) => self.handle_listed(now, ours),
            Answer::Listed(Err(err)) => self.fail(Fault::Store(err)),
            Answer::Page { listing, page } => self.handle_our_page(now, listing, page),
            Answer::Planned => {
                self.plans_out = self.plans_out.saturating_sub(1);
                self.handle_planned(now);
            }
            // Claiming and waiting may have paused our reading of the
            // peer's pages (see `wants_frames`): that pause is ours.
            Answer::Claimed(Ok(claiming)) => {
                self.handle_claimed(claiming);
                self.made_progress(now);
            }
            Answer::Claimed(Err(err)) => self.fail(Fault::Store(err)),
            Answer::Freed(hashes) => {
                self.handle_freed(hashes);
                self.made_progress(now);
            }
            Answer::Wanted(Ok(())) => self.handle_wanted(),
            Answer::Wanted(Err(err)) | Answer::PeerWant(Err(err)) => self.fail(err),
            Answer::PeerWant(Ok(frame)) => {
                if let Err(violation) = self.handle_peer_want(now, frame) {
                    self.fail(violation);
                }
            }
            Answer::PlannedWanted => self.handle_planned_wanted(),
            Answer::Probe(Ok(probe)) => {
                if let Some(exchange) = self.coded.as_mut() {
                    exchange.handle_probe(probe);
                    self.deadline = Some(now + self.config.idle_timeout);
                    self.pump_coded(now);
                }
            }
            Answer::Cells(Ok(cells)) => {
                if let Some(exchange) = self.coded.as_mut() {
                    exchange.handle_cells(cells);
                    self.deadline = Some(now + self.config.idle_timeout);
                    self.pump_coded(now);
                }
            }
            Answer::Probe(Err(err)) | Answer::Cells(Err(err)) => self.fail(Fault::Store(err)),
            Answer::Sent(Ok(sent)) => {
                self.sent = Some(sent);
                if !self.peer_summary.ended {
                    self.deadline = Some(now + self.config.idle_timeout * SUMMARY_GRACE);
                }
            }
            Answer::Received(Ok(received)) => {
                self.transmit.extend(summary_transmits(&received));
                self.received = Some(received);
            }
            Answer::Sent(Err(err)) | Answer::Received(Err(err)) => self.fail(err),
        }
        self.advance();
    }

    fn handle_finished(&mut self, _now: Instant) {
        self.finished = true;
        self.advance();
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        let next = self.transmit.pop_front();
        if self.transmit.is_empty() {
            // The last page we queued is in the driver's hands: list the next.
            self.list_for_peer();
        }
        next
    }

    fn poll_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.filter(|_| self.wants_frames())
    }

    fn wants_frames(&self) -> bool {
        !self.ending.is_set()
            && !self.peer_summary.ended
            && match self.phase {
                Phase::Hello | Phase::Transferring => true,
                Phase::Reconciling => match (&self.coded, &self.paged) {
                    (Some(exchange), _) => exchange.wants_message(),
                    // What we lack waits to be claimed: a page of it at most.
                    (None, Some(paged)) => {
                        paged.wants_theirs()
                            && self
                                .pull
                                .as_ref()
                                .is_none_or(|pull| pull.backlog() < paged.page)
                    }
                    (None, None) => self.theirs.is_none(),
                },
            }
    }

    fn poll_outcome(&mut self) -> Option<Result<Outcome, SessionError>> {
        self.ending.take()
    }

    fn frame_limit(&self) -> Option<u32> {
        let paged = self.limits.is_some_and(|limits| limits.paged);
        match self.phase {
            Phase::Hello => Some(MAX_HELLO_FRAME),
            Phase::Reconciling if paged => Some(paged::MAX_PAGED_RECON_FRAME),
            Phase::Reconciling | Phase::Transferring => None,
        }
    }
}
