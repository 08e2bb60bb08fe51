//! Runs a [v2 session](crate::session::v2) on a connection: the control
//! bi-stream through the machine, the data uni-streams through the engine.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::info;

use super::pull::{read_want, write_wants, Pulling, WantStreams};
use super::{accept_session_stream, drive, now, WholeStoreBudget};
use crate::can::SharedCan;
use crate::engine::claims::{Claimed, Claims};
use crate::engine::send::SendPlan;
use crate::engine::{
    receive, send, EngineConfig, EngineError, EngineStats, Phase, RejectReason, Rejection,
};
use crate::pb;
use crate::session::machine::Machine;
use crate::session::v2::{pull, Answer, Request, Session, MAX_CONTROL_FRAME, MAX_HELLO_FRAME};
use crate::session::{Role, SessionError, SessionReport};
use crate::stream::{FrameReader, FrameWriter, StreamError};
use crate::wire::{Frame, FrameType, Violation};

/// How a session's control stream begins.
pub enum Opening {
    /// Opened by the initiator, accepted by the responder, here; the
    /// initiator presents `capability` in its `HELLO` (empty: none).
    Fresh {
        /// The secret of a granted ticket, or empty.
        capability: Bytes,
    },
    /// Accepted and the peer's `HELLO` already read ([`read_hello`]): the
    /// responder admitted a dialer by the capability in it.
    HelloRead(Box<HelloRead>),
}

/// A responder's control stream whose first frame, the peer's `HELLO`, was
/// read before the session began.
pub struct HelloRead {
    send: SendStream,
    reader: FrameReader<RecvStream>,
    frame: Frame,
    /// The peer's `HELLO`.
    pub hello: pb::Hello,
}

/// Accepts the control stream of `conn` and reads the peer's `HELLO`, within
/// the idle timeout and [`MAX_HELLO_FRAME`]: what a responder needs to admit
/// a dialer by the capability it presents before any store work.
pub async fn read_hello(conn: &Connection, idle: Duration) -> Result<HelloRead, SessionError> {
    let (send, recv) = accept_session_stream(conn, idle).await?;
    let mut reader = FrameReader::new(recv, MAX_HELLO_FRAME);
    let silent = Violation::Silent {
        waited: idle,
        during: "waiting for HELLO",
    };
    let frame = match tokio::time::timeout(idle, reader.next()).await {
        Err(_) => return Err(silent.into()),
        Ok(read) => read?.ok_or(Violation::EndedEarly {
            missing: "HELLO",
            stream: "the control stream",
        })?,
    };
    if frame.frame_type != FrameType::Hello {
        return Err(Violation::Unexpected {
            expected: "HELLO",
            got: frame.frame_type,
            stream: "the control stream",
        }
        .into());
    }
    let hello = Violation::decode("Hello", &frame.payload)?;
    reader.set_max_len(MAX_CONTROL_FRAME);
    Ok(HelloRead {
        send,
        reader,
        frame,
        hello,
    })
}

/// Runs one v2 session on `conn` against the local store `can`; `live` asks
/// the peer to keep the connection for live sync afterwards.
pub async fn run(
    conn: &Connection,
    can: &SharedCan,
    role: Role,
    config: &EngineConfig,
    stats: &Arc<EngineStats>,
    live: bool,
) -> Result<SessionReport, SessionError> {
    let opening = Opening::Fresh {
        capability: Bytes::new(),
    };
    let budget = WholeStoreBudget::default();
    let claims = Arc::new(Claims::default());
    run_opened(
        conn, opening, can, role, config, stats, &budget, &claims, live,
    )
    .await
}

/// [`run`], the control stream begun as `opening` says, a whole list for a
/// peer that does not page under a permit of the node's `budget`, what we
/// pull claimed among the node's `claims`.
#[allow(clippy::too_many_arguments)]
pub async fn run_opened(
    conn: &Connection,
    opening: Opening,
    can: &SharedCan,
    role: Role,
    config: &EngineConfig,
    stats: &Arc<EngineStats>,
    budget: &WholeStoreBudget,
    claims: &Arc<Claims>,
    live: bool,
) -> Result<SessionReport, SessionError> {
    let listing = Mutex::new(None);
    let started = Instant::now();
    stats.enter(Phase::Reconciling);
    // Leases are offered only by a store that can serve them: their
    // groups are sent with the asset's outboard. Taking them also needs a
    // store that keeps partial assets (checked as they are claimed).
    let config = &EngineConfig {
        split: config.split && can.keeps_outboards().await,
        ..config.clone()
    };
    let (mut machine, send, reader) = match opening {
        Opening::Fresh { capability } => {
            let (send, recv) = match role {
                Role::Initiator => conn.open_bi().await?,
                Role::Responder => accept_session_stream(conn, config.idle_timeout).await?,
            };
            let machine = Session::presenting(role, config.clone(), live, capability, now());
            (machine, send, FrameReader::new(recv, MAX_CONTROL_FRAME))
        }
        Opening::HelloRead(read) => {
            let read = *read;
            let mut machine = Session::new(role, config.clone(), live, now());
            machine.handle_frame(now(), read.frame);
            (machine, read.send, read.reader)
        }
    };
    let done = AtomicU8::new(0);
    let feed = Feed::new();
    let pulling = Pulling {
        claims,
        idle: config.idle_timeout,
        stalled_at: Mutex::new(None),
        claimed: Arc::new(Claimed::from_source(claims, *conn.remote_id().as_bytes())),
        wants: Arc::default(),
        lease_asks: Mutex::default(),
        split_sizes: Mutex::default(),
        leases: std::sync::atomic::AtomicBool::new(false),
    };
    let driven = drive(&mut machine, reader, FrameWriter::new(send), |request| {
        let whole = Whole {
            budget,
            held: &listing,
        };
        let session = Served {
            conn,
            can,
            stats,
            done: &done,
            feed: &feed,
            whole,
            pulling: &pulling,
        };
        serve(session, request).boxed()
    })
    .await;
    let outcome = driven.outcome?;
    if let Some(code) = outcome.close {
        conn.close(code.into(), b"session complete");
    }
    let mut report = outcome.report;
    // The session is over, every delivery of it stored or rejected: what
    // is still claimed, the peer told us of and never sent.
    report.rejected.extend(
        pulling
            .claimed
            .unsettled()
            .into_iter()
            .map(|hash| Rejection {
                hash,
                reason: RejectReason::NotSent,
            }),
    );
    report.wire_bytes += driven.written + driven.read;
    report.elapsed = started.elapsed();
    info!(peer = %conn.remote_id().fmt_short(), sent = report.assets_sent,
          received = report.assets_received, rejected = report.rejected.len(),
          secs = report.elapsed.as_secs_f64(), "v2 session complete");
    Ok(report)
}

/// Bits of a session's `done`: our sending, our receiving.
const SENT: u8 = 1;
const RECEIVED: u8 = 2;

/// Marks one half of the transfer done; once both are, the session only
/// waits for the peer's last word.
fn half_done(done: &AtomicU8, stats: &EngineStats, half: u8) {
    if done.fetch_or(half, Ordering::Relaxed) | half == SENT | RECEIVED {
        stats.enter(Phase::Finishing);
    }
}

/// The channel from the session's [`Request::Plan`]s to the engine that
/// [`Request::Send`] starts. One plan waits in it at most: a machine that
/// feeds faster than the engine plans waits for its `Planned` answer.
struct Feed {
    plans: Mutex<Option<mpsc::Sender<SendPlan>>>,
    engine: Mutex<Option<mpsc::Receiver<SendPlan>>>,
}

impl Feed {
    fn new() -> Self {
        let (plans, engine) = mpsc::channel(1);
        Self {
            plans: Mutex::new(Some(plans)),
            engine: Mutex::new(Some(engine)),
        }
    }

    /// The engine's end, as a stream of plans (once).
    fn take_engine_end(&self) -> impl futures::Stream<Item = SendPlan> + Send + 'static {
        let receiver = self.engine.lock().expect("feed lock").take();
        futures::stream::unfold(receiver, |receiver| async move {
            let mut receiver = receiver?;
            let plan = receiver.recv().await?;
            Some((plan, Some(receiver)))
        })
    }

    /// Hands `plan` to the engine, waiting for room; after the `last` plan the
    /// feed is closed, which ends the engine's streams once all is sent. An
    /// engine that already stopped (its error is the `Send` answer's) takes
    /// nothing, and that is not this call's to report.
    async fn plan(&self, plan: SendPlan, last: bool) {
        let sender = {
            let mut plans = self.plans.lock().expect("feed lock");
            if last {
                plans.take()
            } else {
                plans.clone()
            }
        };
        if let Some(sender) = sender {
            let _ = sender.send(plan).await;
        }
    }
}

/// The node's whole-store budget, and where this session keeps its permit.
#[derive(Clone, Copy)]
struct Whole<'a> {
    budget: &'a WholeStoreBudget,
    held: &'a Mutex<Option<OwnedSemaphorePermit>>,
}

/// Everything a request of one session is served with.
#[derive(Clone, Copy)]
struct Served<'a> {
    conn: &'a Connection,
    can: &'a SharedCan,
    stats: &'a Arc<EngineStats>,
    done: &'a AtomicU8,
    feed: &'a Feed,
    whole: Whole<'a>,
    pulling: &'a Pulling<'a>,
}

async fn serve(session: Served<'_>, request: Request) -> Answer {
    let Served {
        conn,
        can,
        stats,
        done,
        feed,
        whole,
        pulling,
    } = session;
    match request {
        Request::List => {
            Answer::Listed(whole.budget.list_all(conn, can.as_ref(), whole.held).await)
        }
        Request::Page {
            listing,
            after,
            limit,
        } => Answer::Page {
            listing,
            page: crate::can::listing::page_past_damage(can.as_ref(), after, limit).await,
        },
        Request::Probe => Answer::Probe(can.coded_probe().await),
        Request::Cells { start, count } => Answer::Cells(can.coded_cells(start, count).await),
        Request::Send { config, pull } => {
            stats.enter(Phase::Transferring);
            let plans = feed.take_engine_end();
            let sent = async {
                let mut streams = Vec::with_capacity(config.streams as usize);
                for _ in 0..config.streams {
                    let stream = conn.open_uni().await.map_err(StreamError::from)?;
                    streams.push(FrameWriter::new(stream));
                }
                if pull {
                    // After the data streams: the peer accepts it after them.
                    let stream = conn.open_uni().await.map_err(StreamError::from)?;
                    pulling.wants.ours.put(FrameWriter::new(stream));
                }
                send::run_fed(streams, can.clone(), plans, config, stats.clone()).await
            };
            let sent = sent.await;
            half_done(done, stats, SENT);
            Answer::Sent(sent)
        }
        Request::Plan { plan, last } => {
            feed.plan(plan, last).await;
            Answer::Planned
        }
        Request::Receive { config, pull } => {
            crate::node::endpoint::open_for_data(conn, config.streams + u32::from(pull));
            let accepted = pull.then(|| pulling.wants.clone());
            let readers = accept_data_streams(conn, &config, accepted);
            let claimed = pull.then(|| pulling.claimed.clone());
            let received = receive::run_settling(
                readers,
                can.clone(),
                config,
                stats.clone(),
                claimed,
                Some(conn.remote_id()),
            )
            .await;
            half_done(done, stats, RECEIVED);
            Answer::Received(received)
        }
        Request::Claim {
            assets,
            split_above,
        } => pulling.claim(can, assets, split_above).await,
        Request::AwaitFree { hashes } => pulling.await_free(hashes).await,
        Request::Want { hashes, resume } => pulling.want(can, hashes, resume).await,
        Request::EndWants { asked } => {
            let payload = Bytes::from(pull::wants_done_payload(asked));
            Answer::Wanted(write_wants(&pulling.wants, FrameType::Done, payload, true).await)
        }
        Request::ReadWant => Answer::PeerWant(read_want(conn, &pulling.wants).await),
        Request::PlanWanted { hashes, resume } => {
            let plan = SendPlan {
                wanted: hashes,
                resume,
                ..SendPlan::default()
            };
            feed.plan(plan, false).await;
            Answer::PlannedWanted
        }
    }
}

/// The peer's `config.streams` data streams, each accepted within the idle
/// timeout; then, when the session pulls, `wants` learns that the peer's
/// want stream is next.
fn accept_data_streams(
    conn: &Connection,
    config: &EngineConfig,
    wants: Option<Arc<WantStreams>>,
) -> impl futures::Stream<Item = Result<FrameReader<RecvStream>, EngineError>> + Unpin + use<> {
    let (conn, idle, max) = (conn.clone(), config.idle_timeout, config.max_frame_len());
    Box::pin(futures::stream::unfold(config.streams, move |left| {
        let conn = conn.clone();
        let wants = wants.clone();
        async move {
            if left == 0 {
                if let Some(wants) = wants {
                    wants.data_accepted.put(());
                }
                return None;
            }
            let accepted = match tokio::time::timeout(idle, conn.accept_uni()).await {
                Ok(Ok(stream)) => Ok(FrameReader::new(stream, max)),
                Ok(Err(err)) => Err(StreamError::from(err).into()),
                Err(_) => Err(Violation::Silent {
                    waited: idle,
                    during: "waiting for a data stream",
                }
                .into()),
            };
            Some((accepted, left - 1))
        }
    }))
}
