//! Protocol v2 (ALPN `can-sync/2`) as a state machine: the control stream of
//! the pipelined session.
//!
//! On the control bi-stream opened by the initiator:
//! 1. `HELLO` both ways; [`negotiate`] settles on the smaller of each limit
//!    (streams, inline limit) and keeps every frame this side sends within the
//!    frame limit the peer announced;
//! 2. `RECON`: each side sends its summaries in the compact encoding of
//!    [`compact`] (raw hashes, varints, zstd) and computes [`recon::diff`] — a
//!    full exchange, behind an interface a sub-linear scheme can replace;
//! 3. each side asks the engine to send what the peer lacks over exactly the
//!    negotiated number of streams ([`Request::Send`]) and to receive the
//!    peer's ([`Request::Receive`]); the driver opens and accepts the streams;
//! 4. when everything it received is stored or rejected, each side sends
//!    `SUMMARY{received, rejected}` then `DONE` and finishes the control
//!    stream; the session is complete when both summaries are in, both
//!    pipelines are done and our control stream is acknowledged.
//!
//! The initiator then closes the connection with [`CLOSE_DONE`], unless both
//! `HELLO`s carried [`FEATURE_LIVE`]: then the connection stays open for live
//! sync, which starts from [`LiveStart`].
//!
//! Deadlines: the peer's `HELLO` and `RECON` must each come within the idle
//! timeout. Data streams have their own (the engine's); the peer's `SUMMARY`
//! comes when its receiving is done, however long its store takes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use tracing::info;

use super::machine::{Machine, Transmit};
use super::{LiveStart, Role, SessionError, SessionReport};
use crate::asset::{AssetHash, Summary};
use crate::can::CanError;
use crate::engine::config::FRAME_ENVELOPE;
use crate::engine::receive::ReceiveOutcome;
use crate::engine::send::{SendOutcome, SendPlan};
use crate::engine::{EngineConfig, EngineError, RejectReason, Rejection};
use crate::fault::Fault;
use crate::pb;
use crate::recon::{self, compact};
use crate::wire::data_stream::frame;
use crate::wire::{Frame, FrameType, Violation, CLOSE_DONE, DEFAULT_MAX_FRAME_LEN};

/// ALPN of protocol v2.
pub const ALPN_V2: &[u8] = b"can-sync/2";

/// Protocol version announced in `HELLO`.
pub const VERSION: u32 = 2;

/// The `HELLO` feature of a side that keeps the connection for live sync.
pub const FEATURE_LIVE: &str = "live";

/// Most summaries accepted from one peer in one session.
pub const MAX_SUMMARIES: u64 = 50_000_000;

/// Largest control-stream frame: the compact summaries of a large archive.
pub const MAX_CONTROL_FRAME: u32 = 1024 * 1024 * 1024;

/// The stream name violations carry.
const STREAM: &str = "the control stream";

/// The limits both sides settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Data streams each side opens.
    pub streams: u32,
    /// Inline limit for assets: the smaller of both sides'.
    pub inline_limit: u64,
    /// The largest frame payload the peer reads: every frame this side sends
    /// stays within it.
    pub peer_max_frame_len: u32,
    /// Both sides keep the connection for live sync.
    pub live: bool,
}

/// Settles on the smaller of each limit. A peer offering zero streams, a zero
/// inline limit or a frame limit too small for any asset is refused.
pub fn negotiate(ours: &pb::Hello, theirs: &pb::Hello) -> Result<Negotiated, Violation> {
    if theirs.version < VERSION {
        return Err(Violation::Version(theirs.version));
    }
    let streams = ours.max_streams.min(theirs.max_streams);
    let inline_limit = ours.inline_limit.min(theirs.inline_limit);
    if streams == 0 {
        return Err(Violation::Limit("zero streams"));
    }
    if inline_limit == 0 {
        return Err(Violation::Limit("a zero inline limit"));
    }
    // A peer that announces no frame limit reads the format's default.
    let peer_max_frame_len = match theirs.max_frame_len {
        0 => DEFAULT_MAX_FRAME_LEN,
        announced => announced,
    };
    if u64::from(peer_max_frame_len) <= FRAME_ENVELOPE {
        return Err(Violation::Limit("a frame limit below the frame envelope"));
    }
    let live = [ours, theirs]
        .iter()
        .all(|hello| hello.features.iter().any(|f| f == FEATURE_LIVE));
    Ok(Negotiated {
        streams,
        inline_limit,
        peer_max_frame_len,
        live,
    })
}

/// This side's `HELLO` for `config`; `live` asks to keep the connection.
pub fn hello(config: &EngineConfig, live: bool) -> pb::Hello {
    pb::Hello {
        version: VERSION,
        max_streams: config.streams,
        codecs: vec!["zstd".into(), "raw".into()],
        inline_limit: config.inline_limit,
        features: if live {
            vec![FEATURE_LIVE.into()]
        } else {
            Vec::new()
        },
        max_frame_len: config.max_frame_len(),
    }
}

/// The engine settings of a session: what this side receives with
/// (`receive`) and what it sends with (`send`, within the peer's frame limit).
fn session_configs(ours: &EngineConfig, limits: &Negotiated) -> (EngineConfig, EngineConfig) {
    let mut receive = ours.clone();
    receive.streams = limits.streams;
    receive.inline_limit = limits.inline_limit;
    let mut send = receive.clone();
    let room = u64::from(limits.peer_max_frame_len) - FRAME_ENVELOPE;
    send.inline_limit = send.inline_limit.min(room);
    // Chunks never exceed the inline limit, so they fit the peer's frames too.
    send.chunk_bytes = send.chunk_bytes.min(send.inline_limit as usize).max(1);
    (receive, send)
}

/// What a v2 session asks of its driver.
#[derive(Debug)]
pub enum Request {
    /// Our store's summaries.
    List,
    /// Send `plan` over `config.streams` new streams.
    Send {
        /// What the peer lacks.
        plan: SendPlan,
        /// The settings to send with.
        config: Arc<EngineConfig>,
    },
    /// Receive the peer's `config.streams` streams.
    Receive {
        /// The settings to receive with.
        config: Arc<EngineConfig>,
    },
}

/// The answer to a [`Request`].
#[derive(Debug)]
pub enum Answer {
    /// Answer to [`Request::List`].
    Listed(Result<Vec<Summary>, CanError>),
    /// Answer to [`Request::Send`].
    Sent(Result<SendOutcome, EngineError>),
    /// Answer to [`Request::Receive`].
    Received(Result<ReceiveOutcome, EngineError>),
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

/// The peer's `SUMMARY`, parsed.
#[derive(Debug)]
struct PeerSummary {
    refused: Vec<Rejection>,
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
    ours: Option<Vec<Summary>>,
    theirs: Option<Vec<Summary>>,
    sent: Option<SendOutcome>,
    received: Option<ReceiveOutcome>,
    peer_summary: Option<PeerSummary>,
    peer_done: bool,
    peer_ended: bool,
    finished: bool,
    deadline: Option<Instant>,
    transmit: VecDeque<Transmit>,
    requests: VecDeque<Request>,
    outcome: Option<Result<Outcome, SessionError>>,
    over: bool,
}

impl Session {
    /// A session starting at `now` with this side's engine settings; `live`
    /// asks the peer to keep the connection for live sync.
    pub fn new(role: Role, config: EngineConfig, live: bool, now: Instant) -> Self {
        let hello = hello(&config, live);
        let deadline = Some(now + config.idle_timeout);
        let first = Transmit::Frame(frame(FrameType::Hello, &hello.encode_to_vec()));
        Self {
            role,
            config,
            hello,
            phase: Phase::Hello,
            limits: None,
            receive_config: None,
            ours: None,
            theirs: None,
            sent: None,
            received: None,
            peer_summary: None,
            peer_done: false,
            peer_ended: false,
            finished: false,
            deadline,
            transmit: VecDeque::from([first]),
            requests: VecDeque::new(),
            outcome: None,
            over: false,
        }
    }

    /// The limits both sides settled on, once `HELLO`s crossed.
    pub fn limits(&self) -> Option<Negotiated> {
        self.limits
    }

    fn fail(&mut self, err: impl Into<SessionError>) {
        if self.outcome.is_none() {
            self.outcome = Some(Err(err.into()));
        }
    }

    fn unexpected(&self, expected: &'static str, got: FrameType) -> Violation {
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
        self.phase = Phase::Reconciling;
        self.requests.push_back(Request::List);
        self.deadline = Some(now + self.config.idle_timeout);
        Ok(())
    }

    fn handle_recon(&mut self, frame: Frame) -> Result<(), Violation> {
        if frame.frame_type != FrameType::Recon {
            return Err(self.unexpected("RECON", frame.frame_type));
        }
        let round: pb::Recon = Violation::decode("Recon", &frame.payload)?;
        self.theirs = Some(compact::decode(&round.packed_summaries, MAX_SUMMARIES)?);
        self.plan();
        Ok(())
    }

    fn handle_summary(&mut self, frame: Frame) -> Result<(), Violation> {
        if self.peer_done {
            return Err(Violation::AfterDone(frame.frame_type));
        }
        match (frame.frame_type, &self.peer_summary) {
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
                    .collect::<Result<Vec<_>, Violation>>()?;
                self.peer_summary = Some(PeerSummary { refused });
            }
            (FrameType::Done, Some(_)) => {
                let _: pb::StreamDone = Violation::decode("StreamDone", &frame.payload)?;
                self.peer_done = true;
            }
            (got, None) => return Err(self.unexpected("SUMMARY", got)),
            (got, Some(_)) => return Err(self.unexpected("DONE", got)),
        }
        Ok(())
    }

    /// Once both summary lists are in: what to send, and the engine started.
    fn plan(&mut self) {
        let (Some(ours), Some(theirs), Some(limits)) = (&self.ours, &self.theirs, &self.limits)
        else {
            return;
        };
        let diff = recon::diff(ours, theirs);
        let sizes: HashMap<AssetHash, u64> = ours.iter().map(|s| (s.hash, s.size)).collect();
        let plan = SendPlan {
            assets: diff
                .assets_to_send
                .iter()
                .map(|hash| (*hash, sizes[hash]))
                .collect(),
            meta: diff.meta_to_send,
        };
        info!(
            ours = ours.len(),
            theirs = theirs.len(),
            to_send = plan.assets.len(),
            to_receive = diff.assets_to_receive.len(),
            streams = limits.streams,
            "v2 reconciled"
        );
        let (receive, send) = session_configs(&self.config, limits);
        let receive = Arc::new(receive);
        self.requests.push_back(Request::Send {
            plan,
            config: Arc::new(send),
        });
        self.requests.push_back(Request::Receive {
            config: receive.clone(),
        });
        self.receive_config = Some(receive);
        self.phase = Phase::Transferring;
        self.deadline = None;
    }

    /// Notices the end of the session.
    fn advance(&mut self) {
        let complete = self.finished
            && self.peer_done
            && self.peer_ended
            && self.sent.is_some()
            && self.received.is_some()
            && self.peer_summary.is_some();
        if self.outcome.is_some() || !complete {
            return;
        }
        let (Some(sent), Some(mut received), Some(peer), Some(limits)) = (
            self.sent.take(),
            self.received.take(),
            self.peer_summary.take(),
            self.limits,
        ) else {
            unreachable!("checked above");
        };
        let live = limits.live.then(|| {
            Arc::new(LiveStart {
                engine: self.receive_config.clone().expect("set with the plan"),
                peer_holds: std::mem::take(&mut received.stored),
            })
        });
        let mut rejected = received.rejected;
        rejected.extend(sent.failed);
        rejected.extend(peer.refused);
        let report = SessionReport {
            assets_sent: sent.assets,
            assets_received: received.assets,
            duplicates_received: received.duplicates,
            payload_bytes: sent.bytes + received.bytes,
            bytes_sent: sent.bytes,
            wire_bytes: sent.wire_bytes + received.wire_bytes,
            meta_sent: sent.meta,
            meta_applied: received.meta_applied,
            rejected,
            elapsed: Default::default(),
            live,
        };
        let close = (self.role == Role::Initiator && !limits.live).then_some(CLOSE_DONE);
        self.outcome = Some(Ok(Outcome { report, close }));
    }
}

impl Machine for Session {
    type Request = Request;
    type Answer = Answer;
    type Outcome = Outcome;

    fn handle_frame(&mut self, now: Instant, frame: Frame) {
        if self.outcome.is_some() {
            return;
        }
        let handled = match self.phase {
            Phase::Hello => self.handle_hello(now, frame),
            Phase::Reconciling => self.handle_recon(frame),
            Phase::Transferring => self.handle_summary(frame),
        };
        if let Err(violation) = handled {
            self.fail(violation);
        }
        self.advance();
    }

    fn handle_end(&mut self, _now: Instant) {
        if !self.peer_done {
            let missing = match self.phase {
                Phase::Hello => "HELLO",
                Phase::Reconciling => "RECON",
                Phase::Transferring if self.peer_summary.is_none() => "SUMMARY",
                Phase::Transferring => "DONE",
            };
            self.fail(Violation::EndedEarly {
                missing,
                stream: STREAM,
            });
        }
        self.peer_ended = true;
        self.advance();
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|at| now >= at) && self.wants_frames() {
            let during = match self.phase {
                Phase::Hello => "waiting for HELLO",
                _ => "waiting for RECON",
            };
            self.fail(Violation::Silent {
                waited: self.config.idle_timeout,
                during,
            });
        }
    }

    fn handle_answer(&mut self, _now: Instant, answer: Answer) {
        if self.outcome.is_some() {
            return;
        }
        match answer {
            Answer::Listed(Ok(ours)) => {
                let ours: Vec<Summary> = ours
                    .into_iter()
                    .map(|s| s.truncated(compact::DIGEST_PREFIX))
                    .collect();
                let round = pb::Recon {
                    packed_summaries: Bytes::from(compact::encode(&ours, self.config.zstd_level)),
                    wants: Bytes::new(),
                    done: true,
                };
                self.transmit.push_back(Transmit::Frame(frame(
                    FrameType::Recon,
                    &round.encode_to_vec(),
                )));
                self.ours = Some(ours);
                self.plan();
            }
            Answer::Listed(Err(err)) => self.fail(Fault::Store(err)),
            Answer::Sent(Ok(sent)) => self.sent = Some(sent),
            Answer::Received(Ok(received)) => {
                let summary = pb::SessionSummary {
                    received: received.assets + received.duplicates,
                    rejected: received
                        .rejected
                        .iter()
                        .map(|r| pb::Rejection {
                            hash: Bytes::copy_from_slice(r.hash.as_bytes()),
                            reason: r.reason.to_string(),
                        })
                        .collect(),
                };
                self.transmit.extend([
                    Transmit::Frame(frame(FrameType::Summary, &summary.encode_to_vec())),
                    Transmit::Frame(frame(
                        FrameType::Done,
                        &pb::StreamDone::default().encode_to_vec(),
                    )),
                    Transmit::Finish,
                ]);
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
        self.transmit.pop_front()
    }

    fn poll_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.filter(|_| self.wants_frames())
    }

    fn wants_frames(&self) -> bool {
        self.outcome.is_none()
            && !self.peer_ended
            && match self.phase {
                Phase::Hello | Phase::Transferring => true,
                Phase::Reconciling => self.theirs.is_none(),
            }
    }

    fn poll_outcome(&mut self) -> Option<Result<Outcome, SessionError>> {
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
    fn negotiation_takes_the_smaller_limits_and_refuses_unusable_ones() {
        let ours = hello(&EngineConfig::default(), true);
        let mut theirs = hello(&EngineConfig::default(), false);
        theirs.max_streams = 2;
        theirs.inline_limit = 4096;
        theirs.max_frame_len = 512 * 1024;
        assert_eq!(
            negotiate(&ours, &theirs).unwrap(),
            Negotiated {
                streams: 2,
                inline_limit: 4096,
                peer_max_frame_len: 512 * 1024,
                live: false,
            }
        );
        theirs.features = vec![FEATURE_LIVE.into()];
        assert!(negotiate(&ours, &theirs).unwrap().live);
        theirs.max_streams = 0;
        assert!(matches!(
            negotiate(&ours, &theirs),
            Err(Violation::Limit("zero streams"))
        ));
        theirs.max_streams = 2;
        theirs.max_frame_len = 1024;
        assert!(matches!(
            negotiate(&ours, &theirs),
            Err(Violation::Limit(_))
        ));
        theirs.max_frame_len = 0;
        assert_eq!(
            negotiate(&ours, &theirs).unwrap().peer_max_frame_len,
            DEFAULT_MAX_FRAME_LEN,
            "no announced limit: the format's default"
        );
        theirs.version = 1;
        assert!(matches!(
            negotiate(&ours, &theirs),
            Err(Violation::Version(1))
        ));
    }

    #[test]
    fn a_sender_keeps_every_frame_within_the_peers_limit() {
        let ours = EngineConfig::default();
        let limits = Negotiated {
            streams: 4,
            inline_limit: ours.inline_limit,
            peer_max_frame_len: 512 * 1024,
            live: false,
        };
        let (receive, send) = session_configs(&ours, &limits);
        assert!(send.max_frame_len() <= limits.peer_max_frame_len);
        assert!(send.chunk_bytes as u64 <= send.inline_limit);
        assert_eq!(
            receive.inline_limit, ours.inline_limit,
            "we still accept ours"
        );
    }
}
