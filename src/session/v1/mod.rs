//! Protocol v1 (ALPN `can-sync/1`) as a state machine: the original agent's
//! session, kept for old peers and as the baseline every benchmark compares
//! against.
//!
//! On one bi-stream opened by the initiator:
//! 1. both sides send `HASH_SET` (every summary they hold) and read the peer's,
//!    in either order, so two large sets cannot block each other;
//! 2. each computes [`recon::diff`];
//! 3. each sends, while receiving, the assets the peer lacks as
//!    `ASSET_BUNDLE` frames (pulled from the store [`V1Config::pull_batch`] at
//!    a time, the next pull only once the last batch is handed to the stream,
//!    uncompressed),
//!    then `META_UPDATE` for assets whose metadata wins LWW here, then `DONE`,
//!    and finishes its side of the stream;
//! 4. the receiver pushes each bundle to its store (which verifies the BLAKE3)
//!    and applies each update by LWW, one at a time, reading the next frame
//!    only once the last is stored. A bundle the store refuses is reported and
//!    the session goes on: it is left for the next session.
//!
//! The initiator sends `DONE` when it has sent everything; the responder only
//! once it has also received and stored everything the initiator sent. So when
//! the initiator reads the responder's `DONE`, both stores are complete, and it
//! closes the connection with [`CLOSE_DONE`]. (Original peers read until `DONE`
//! whenever it comes, so this stays compatible.)
//!
//! A peer that says nothing for [`V1Config::idle_timeout`] while this side
//! waits for it fails the session ([`Violation::Silent`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use prost::Message;
use tracing::{debug, info, warn};

mod hash_set;

use hash_set::decode_hash_set;
pub use hash_set::MAX_HASH_SET;

use super::machine::{Ending, Machine, Transmit};
use super::{Role, SessionError, SessionReport};
use crate::asset::{AssetHash, Bundle, MetaUpdate, Summary};
use crate::can::{CanError, Pulled, Pushed};
use crate::engine::{RejectReason, Rejection};
use crate::fault::Fault;
use crate::pb;
use crate::recon;
use crate::wire::data_stream::frame;
use crate::wire::{Frame, FrameType, Violation, CLOSE_DONE};

/// The stream name violations carry.
const STREAM: &str = "the v1 stream";

/// Bytes of a bundle frame beyond the asset's own: the hash, the metadata
/// (at most [`MAX_META_BYTES`](crate::asset::MAX_META_BYTES)) and the
/// protobuf envelope.
const FRAME_ENVELOPE: u64 = 128 * 1024;

/// Most bytes of assets one pull brings into memory (one asset may exceed
/// it alone).
const PULL_BYTES: u64 = 16 * 1024 * 1024;

/// Knobs of a v1 session.
#[derive(Debug, Clone)]
pub struct V1Config {
    /// Largest frame accepted. v1 carries a whole asset (or the whole hash set)
    /// in one frame, so this bounds the largest asset it can move.
    pub max_frame_len: u32,
    /// Assets pulled from the store per request (10 in the original agent).
    pub pull_batch: usize,
    /// How long the peer may stay silent while this side waits for it.
    pub idle_timeout: Duration,
}

impl Default for V1Config {
    fn default() -> Self {
        Self {
            max_frame_len: 256 * 1024 * 1024,
            pull_batch: 10,
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// What a v1 session asks of its store.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Every summary the store holds.
    List,
    /// These assets' bytes and metadata.
    Pull(Vec<AssetHash>),
    /// One asset's metadata.
    Meta(AssetHash),
    /// Store a bundle the peer sent.
    Push(Bundle),
    /// Apply a metadata update the peer sent.
    ApplyMeta(MetaUpdate),
}

/// The store's answer to a [`Request`], in the same order of variants.
#[derive(Debug)]
pub enum Answer {
    /// Answer to [`Request::List`].
    Listed(Result<Vec<Summary>, CanError>),
    /// Answer to [`Request::Pull`].
    Pulled(Result<Pulled, CanError>),
    /// Answer to [`Request::Meta`].
    Meta(AssetHash, Result<Option<(u64, pb::AssetMeta)>, CanError>),
    /// Answer to [`Request::Push`]: the asset, its size, what the store said.
    Pushed(AssetHash, u64, Result<Pushed, CanError>),
    /// Answer to [`Request::ApplyMeta`].
    MetaApplied(AssetHash, Result<bool, CanError>),
}

/// A completed v1 session.
#[derive(Debug)]
pub struct Outcome {
    /// What moved (wire bytes and time are the driver's to fill in).
    pub report: SessionReport,
    /// The code to close the connection with, when this side closes it.
    pub close: Option<u32>,
}

/// One v1 session; see the module docs.
#[derive(Debug)]
pub struct Session {
    role: Role,
    config: V1Config,
    /// Our summaries, once listed; `None` until then.
    ours: Option<Vec<Summary>>,
    /// The peer's summaries, once its `HASH_SET` arrived.
    theirs: Option<Vec<Summary>>,
    /// Both sets are in and the diff is being carried out.
    transferring: bool,
    /// Assets still to pull and send, with their sizes.
    to_send: VecDeque<(AssetHash, u64)>,
    /// Assets whose metadata is still to send.
    meta_to_send: VecDeque<AssetHash>,
    /// A pull or metadata lookup is being served.
    reading_store: bool,
    /// A received bundle or update is being stored: reading waits for it.
    writing_store: bool,
    /// Our `DONE` (and finish) is queued.
    sent_done: bool,
    /// Our side of the stream reached the peer.
    finished: bool,
    /// The peer's `DONE` arrived.
    received_done: bool,
    /// The peer's stream ended after its `DONE`.
    ended: bool,
    /// When the peer's silence becomes a failure, while we wait for it.
    deadline: Option<Instant>,
    transmit: VecDeque<Transmit>,
    requests: VecDeque<Request>,
    report: SessionReport,
    ending: Ending<Outcome>,
}

impl Session {
    /// A session starting at `now`; it first asks for the store's summaries.
    pub fn new(role: Role, config: V1Config, now: Instant) -> Self {
        let deadline = Some(now + config.idle_timeout);
        Self {
            role,
            config,
            ours: None,
            theirs: None,
            transferring: false,
            to_send: VecDeque::new(),
            meta_to_send: VecDeque::new(),
            reading_store: true,
            writing_store: false,
            sent_done: false,
            finished: false,
            received_done: false,
            ended: false,
            deadline,
            transmit: VecDeque::new(),
            requests: VecDeque::from([Request::List]),
            report: SessionReport::default(),
            ending: Ending::default(),
        }
    }

    /// The largest frame this side reads.
    pub fn max_frame_len(&self) -> u32 {
        self.config.max_frame_len
    }

    fn fail(&mut self, err: impl Into<SessionError>) {
        self.ending.fail(err);
    }

    fn failed(&self) -> bool {
        self.ending.is_set()
    }

    fn send_frame(&mut self, frame_type: FrameType, message: &impl Message) {
        self.transmit
            .push_back(Transmit::Frame(frame(frame_type, &message.encode_to_vec())));
    }

    /// Starts the transfer once both summary sets are in.
    fn start_transfer(&mut self, now: Instant) {
        let (Some(ours), Some(theirs)) = (&self.ours, &self.theirs) else {
            return;
        };
        let diff = recon::diff(ours, theirs);
        info!(
            ours = ours.len(),
            theirs = theirs.len(),
            to_send = diff.assets_to_send.len(),
            to_receive = diff.assets_to_receive.len(),
            meta_to_send = diff.meta_to_send.len(),
            "v1 diff"
        );
        // An asset that cannot fit one frame is never pulled: it would cost
        // its whole size in memory only to fail the session at the limit.
        let sizes: std::collections::HashMap<AssetHash, u64> =
            ours.iter().map(|s| (s.hash, s.size)).collect();
        let fits = u64::from(self.config.max_frame_len).saturating_sub(FRAME_ENVELOPE);
        for hash in diff.assets_to_send {
            let size = sizes[&hash];
            if size > fits {
                warn!(%hash, size, "too large for protocol v1: skipped");
                self.report.rejected.push(Rejection {
                    hash,
                    reason: RejectReason::TooLargeForProtocol {
                        size,
                        limit: u64::from(self.config.max_frame_len),
                    },
                });
            } else {
                self.to_send.push_back((hash, size));
            }
        }
        self.meta_to_send = diff.meta_to_send.into();
        self.transferring = true;
        self.deadline = Some(now + self.config.idle_timeout);
    }

    /// Moves the sending half on and notices the end of the session.
    fn advance(&mut self) {
        if self.failed() || !self.transferring {
            return;
        }
        if !self.reading_store && self.transmit.is_empty() {
            if !self.to_send.is_empty() {
                // Up to `pull_batch` assets, fewer when they are large: a
                // batch holds at most PULL_BYTES (or one asset) in memory.
                let mut batch = Vec::new();
                let mut bytes = 0u64;
                while let Some(&(hash, size)) = self.to_send.front() {
                    let full = batch.len() >= self.config.pull_batch.max(1)
                        || (!batch.is_empty() && bytes + size > PULL_BYTES);
                    if full {
                        break;
                    }
                    self.to_send.pop_front();
                    batch.push(hash);
                    bytes += size;
                }
                self.requests.push_back(Request::Pull(batch));
                self.reading_store = true;
            } else if let Some(hash) = self.meta_to_send.pop_front() {
                self.requests.push_back(Request::Meta(hash));
                self.reading_store = true;
            } else if !self.sent_done
                && (self.role == Role::Initiator
                    || (self.received_done && self.ended && !self.writing_store))
            {
                // The responder's DONE says "and I hold everything you sent".
                self.transmit
                    .push_back(Transmit::Frame(frame(FrameType::Done, &[])));
                self.transmit.push_back(Transmit::Finish);
                self.sent_done = true;
            }
        }
        if self.finished && self.ended && !self.writing_store && !self.reading_store {
            let close = (self.role == Role::Initiator).then_some(CLOSE_DONE);
            self.ending.succeed(Outcome {
                report: std::mem::take(&mut self.report),
                close,
            });
        }
    }

    fn handle_hash_set(&mut self, now: Instant, frame: Frame) -> Result<(), Violation> {
        if frame.frame_type != FrameType::HashSet {
            return Err(Violation::Unexpected {
                expected: "HASH_SET",
                got: frame.frame_type,
                stream: STREAM,
            });
        }
        self.theirs = Some(decode_hash_set(&frame.payload, MAX_HASH_SET)?);
        self.start_transfer(now);
        Ok(())
    }

    fn handle_item(&mut self, frame: Frame) -> Result<(), Violation> {
        if self.received_done {
            return Err(Violation::AfterDone(frame.frame_type));
        }
        match frame.frame_type {
            FrameType::AssetBundle => {
                let bundle: pb::AssetBundle = Violation::decode("AssetBundle", &frame.payload)?;
                self.requests
                    .push_back(Request::Push(Bundle::from_pb(bundle)?));
                self.writing_store = true;
            }
            FrameType::MetaUpdate => {
                let update: pb::MetaUpdate = Violation::decode("MetaUpdate", &frame.payload)?;
                self.requests
                    .push_back(Request::ApplyMeta(MetaUpdate::from_pb(update)?));
                self.writing_store = true;
            }
            FrameType::Done => self.received_done = true,
            other => {
                return Err(Violation::Unexpected {
                    expected: "ASSET_BUNDLE, META_UPDATE or DONE",
                    got: other,
                    stream: STREAM,
                })
            }
        }
        Ok(())
    }
}

impl Machine for Session {
    type Request = Request;
    type Answer = Answer;
    type Outcome = Outcome;

    fn handle_frame(&mut self, now: Instant, frame: Frame) {
        if self.failed() {
            return;
        }
        let handled = if self.theirs.is_none() {
            self.handle_hash_set(now, frame)
        } else {
            self.handle_item(frame)
        };
        match handled {
            Ok(()) => self.deadline = Some(now + self.config.idle_timeout),
            Err(violation) => self.fail(violation),
        }
        self.advance();
    }

    fn handle_end(&mut self, _now: Instant) {
        if self.theirs.is_none() {
            self.fail(Violation::EndedEarly {
                missing: "HASH_SET",
                stream: STREAM,
            });
        } else if !self.received_done {
            self.fail(Violation::EndedEarly {
                missing: "DONE",
                stream: STREAM,
            });
        } else {
            self.ended = true;
        }
        self.advance();
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.wants_frames() && self.deadline.is_some_and(|at| now >= at) {
            self.fail(Violation::Silent {
                waited: self.config.idle_timeout,
                during: STREAM,
            });
        }
    }

    fn handle_answer(&mut self, now: Instant, answer: Answer) {
        if self.failed() {
            return;
        }
        match answer {
            Answer::Listed(Ok(ours)) => {
                self.reading_store = false;
                let set = pb::PeerHashSet {
                    assets: ours.iter().map(Summary::to_pb).collect(),
                };
                self.send_frame(FrameType::HashSet, &set);
                self.ours = Some(ours);
                self.start_transfer(now);
            }
            Answer::Pulled(Ok(pulled)) => {
                self.reading_store = false;
                for hash in pulled.missing {
                    // Listed a moment ago, gone now: nothing to send.
                    warn!(hash = %hash.short(), "asset vanished from the local store before sending");
                }
                for bundle in pulled.bundles {
                    let size = bundle.data.len() as u64;
                    self.send_frame(FrameType::AssetBundle, &bundle.into_pb());
                    self.report.assets_sent += 1;
                    self.report.bytes_sent += size;
                    self.report.payload_bytes += size;
                }
            }
            Answer::Meta(hash, Ok(found)) => {
                self.reading_store = false;
                if let Some((_, meta)) = found {
                    self.send_frame(FrameType::MetaUpdate, &MetaUpdate::of(hash, &meta).to_pb());
                    self.report.meta_sent += 1;
                }
            }
            Answer::Listed(Err(err)) | Answer::Pulled(Err(err)) | Answer::Meta(_, Err(err)) => {
                self.fail(Fault::Store(err))
            }
            Answer::Pushed(hash, size, pushed) => {
                self.writing_store = false;
                match pushed {
                    Ok(pushed) if pushed.already_existed => self.report.duplicates_received += 1,
                    Ok(_) => {
                        self.report.assets_received += 1;
                        self.report.payload_bytes += size;
                    }
                    Err(err) => {
                        warn!(%hash, error = %err, "refused an asset from the peer");
                        let reason = match err {
                            CanError::HashMismatch { actual, .. } => {
                                RejectReason::HashMismatch { actual }
                            }
                            other => RejectReason::Store(other.to_string()),
                        };
                        self.report.rejected.push(Rejection { hash, reason });
                    }
                }
                self.deadline = Some(now + self.config.idle_timeout);
            }
            Answer::MetaApplied(hash, applied) => {
                self.writing_store = false;
                match applied {
                    Ok(true) => self.report.meta_applied += 1,
                    Ok(false) => debug!(%hash, "metadata update lost LWW"),
                    Err(CanError::NotFound(_)) => {
                        debug!(%hash, "metadata update for an asset we do not hold")
                    }
                    Err(CanError::FutureStamp(stamp)) => self.report.rejected.push(Rejection {
                        hash,
                        reason: RejectReason::FutureStamp(format!("metadata: {stamp}")),
                    }),
                    Err(err) => self.report.rejected.push(Rejection {
                        hash,
                        reason: RejectReason::Store(format!("metadata: {err}")),
                    }),
                }
                self.deadline = Some(now + self.config.idle_timeout);
            }
        }
        self.advance();
    }

    fn handle_finished(&mut self, _now: Instant) {
        self.finished = true;
        self.advance();
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        let next = self.transmit.pop_front();
        if next.is_some() && self.transmit.is_empty() {
            // The last queued frame is taken: the next pull may start.
            self.advance();
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
        !self.failed()
            && !self.ended
            && !self.writing_store
            && (self.theirs.is_none() || self.transferring)
    }

    fn poll_outcome(&mut self) -> Option<Result<Outcome, SessionError>> {
        self.ending.take()
    }
}
