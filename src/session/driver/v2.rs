//! Runs a [v2 session](crate::session::v2) on a connection: the control
//! bi-stream through the machine, the data uni-streams through the engine.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tracing::info;

use super::{accept_session_stream, drive, now, WholeStoreBudget};
use crate::asset::AssetHash;
use crate::can::store::ranges;
use crate::can::SharedCan;
use crate::engine::claims::{claim_lacking, lease_lacking, Claimed, Claims, Leased};
use crate::engine::send::SendPlan;
use crate::engine::split;
use crate::engine::{receive, send, EngineConfig, EngineError, EngineStats, Phase};
use crate::pb;
use crate::session::machine::Machine;
use crate::session::v2::{
    pull, Answer, Claiming, Request, Session, MAX_CONTROL_FRAME, MAX_HELLO_FRAME,
};
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
        split: config.split && can.keeps_outboards(),
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
        claimed: Arc::new(Claimed::new(claims)),
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

/// What pulling needs here: the node's claims, the ones this session holds
/// (settled as their assets arrive), and the want streams.
struct Pulling<'a> {
    claims: &'a Arc<Claims>,
    /// How long a claim waits for room in the window at most.
    idle: Duration,
    /// Our settled count when a wait for room last ran out.
    stalled_at: Mutex<Option<u64>>,
    claimed: Arc<Claimed>,
    wants: Arc<WantStreams>,
    /// The groups of each lease taken and not yet asked for.
    lease_asks: Mutex<std::collections::HashMap<AssetHash, std::ops::Range<u64>>>,
    /// The sizes of large assets claimed (a wait gives back hashes).
    split_sizes: Mutex<std::collections::HashMap<AssetHash, u64>>,
    /// This session may lease: it waits for leases given back too.
    leases: std::sync::atomic::AtomicBool,
}

/// A value one request puts and others take in turn: our want stream's
/// writer (put once opened after our data streams), the peer's reader.
struct Slot<T> {
    item: Mutex<Option<T>>,
    filled: Notify,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            item: Mutex::new(None),
            filled: Notify::new(),
        }
    }
}

impl<T> Slot<T> {
    fn put(&self, item: T) {
        *self.item.lock().expect("slot lock") = Some(item);
        self.filled.notify_waiters();
    }

    async fn take(&self) -> T {
        loop {
            let filled = self.filled.notified();
            let mut filled = std::pin::pin!(filled);
            filled.as_mut().enable();
            if let Some(item) = self.item.lock().expect("slot lock").take() {
                return item;
            }
            filled.await;
        }
    }
}

/// The want streams of a session that pulls ([`crate::session::v2::pull`]).
#[derive(Default)]
struct WantStreams {
    /// Ours, opened after our data streams.
    ours: Slot<FrameWriter<SendStream>>,
    /// Filled once the peer's data streams are accepted: its want stream is
    /// the next.
    data_accepted: Slot<()>,
    /// The peer's, once accepted.
    theirs: Slot<FrameReader<RecvStream>>,
    accepted: std::sync::atomic::AtomicBool,
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
            page: can.list_page(after, limit).await,
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
            let received =
                receive::run_settling(readers, can.clone(), config, stats.clone(), claimed).await;
            half_done(done, stats, RECEIVED);
            Answer::Received(received)
        }
        Request::Claim {
            assets,
            split_above,
        } => {
            // A hash named twice, or one we already asked for, is ours:
            // waiting on our own claim would wait on ourselves.
            let mut assets = assets;
            let mut seen = std::collections::HashSet::new();
            assets.retain(|(hash, _)| !pulling.claimed.holds(hash) && seen.insert(*hash));
            if assets.is_empty() {
                return Answer::Claimed(Ok(Claiming::default()));
            }
            // A split asset we waited for comes back without its size.
            {
                let sizes = pulling.split_sizes.lock().expect("split sizes lock");
                for (hash, size) in assets.iter_mut().filter(|(_, size)| *size == 0) {
                    *size = sizes.get(hash).copied().unwrap_or(0);
                }
            }
            // Large assets of more than a lease go by leases when the
            // store can take one asset from several deliveries and another
            // delivery is pulling.
            let several = pulling.claims.splits.several_pulling();
            pulling.leases.store(
                split_above.is_some() && can.keeps_partials(),
                std::sync::atomic::Ordering::Relaxed,
            );
            let splits = |size: u64| {
                split_above.is_some_and(|limit| size > limit)
                    && several
                    && can.keeps_partials()
                    && ranges::group_count(size) > split::LEASE_GROUPS
                    && ranges::group_count(size) <= ranges::MAX_RANGED_GROUPS
            };
            // Room in our window first: a source takes more only as what it
            // was asked for arrives. An idle timeout at most, and no second
            // wait while nothing settled since the last one ran out: assets a
            // source never sends (it no longer holds them) must not stall
            // the session.
            let settled = pulling.claimed.settled();
            let stalled = *pulling.stalled_at.lock().expect("stall lock") == Some(settled);
            let room = pulling
                .claimed
                .until_room(pull::WINDOW_ASSETS, pull::WINDOW_BYTES);
            let waited = if stalled {
                Err(())
            } else {
                tokio::time::timeout(pulling.idle, room).await.map_err(|_| {
                    *pulling.stalled_at.lock().expect("stall lock") = Some(settled);
                })
            };
            let fit = match waited {
                Ok(()) => pulling.claimed.fitting(
                    assets.iter().map(|(_, size)| match splits(*size) {
                        true => (*size).min(split::LEASE_GROUPS * ranges::GROUP_BYTES),
                        false => *size,
                    }),
                    pull::WINDOW_ASSETS,
                    pull::WINDOW_BYTES,
                ),
                // The window stayed full: the peer does not send what it was
                // asked for. Go on, a batch at a time.
                Err(_) => assets.len(),
            };
            let mut later = assets.split_off(fit.max(1).min(assets.len()));
            let (split_up, whole): (Vec<_>, Vec<_>) =
                assets.into_iter().partition(|(_, size)| splits(*size));
            let mut leased = Claiming::default();
            for &(hash, size) in &split_up {
                let taken = lease_lacking(pulling.claims, &pulling.claimed, can, hash, size).await;
                match taken {
                    Ok(Leased::Ask { groups, more }) => {
                        pulling
                            .lease_asks
                            .lock()
                            .expect("lease asks lock")
                            .insert(hash, groups);
                        leased.ask.push(hash);
                        if more {
                            // The next lease of it, once the window has room.
                            later.insert(0, (hash, size));
                        }
                    }
                    Ok(Leased::Busy) => leased.busy.push(hash),
                    Ok(Leased::Drop) => {}
                    Err(err) => return Answer::Claimed(Err(err)),
                }
            }
            let look = pulling.claimed.others_released(pulling.claims);
            {
                // A wait gives back hashes alone: keep the sizes of what
                // may come back, so that a large one can still be split.
                let mut sizes = pulling.split_sizes.lock().expect("split sizes lock");
                let large = |size: u64| split_above.is_some_and(|limit| size > limit);
                for (hash, size) in whole.iter().chain(&split_up) {
                    if large(*size) {
                        sizes.insert(*hash, *size);
                    }
                }
            }
            Answer::Claimed(claim_lacking(pulling.claims, can, whole, look).await.map(
                |(claims, busy)| {
                    let mut ask = leased.ask;
                    ask.extend(claims.iter().map(|(claim, _)| claim.hash()));
                    pulling.claimed.hold(claims);
                    let mut waiting = leased.busy;
                    waiting.extend(busy);
                    Claiming {
                        ask,
                        busy: waiting,
                        later,
                    }
                },
            ))
        }
        Request::AwaitFree { hashes } => {
            let leases = pulling.leases.load(std::sync::atomic::Ordering::Relaxed);
            let free = pulling.claims.until_free(&hashes, leases);
            if hashes
                .iter()
                .any(|hash| pulling.claims.splits.is_split(hash))
            {
                // A lease another session holds may become worth taking
                // again as it ages: look again now and then.
                let _ = tokio::time::timeout(split::RECHECK, free).await;
            } else {
                free.await;
            }
            Answer::Freed(hashes)
        }
        Request::Want { hashes, resume } => {
            // What we hold in part is asked for by its missing groups; a
            // store that cannot say is asked for whole.
            let mut resume = if resume {
                can.resume_points(&hashes).await.unwrap_or_else(|err| {
                    tracing::warn!(%err, "could not read partial assets; asking for them whole");
                    Vec::new()
                })
            } else {
                Vec::new()
            };
            // A leased asset is asked for by its lease's groups alone.
            {
                let mut leases = pulling.lease_asks.lock().expect("lease asks lock");
                if !leases.is_empty() {
                    resume.retain(|(hash, _)| !leases.contains_key(hash));
                    resume.extend(
                        hashes
                            .iter()
                            .filter_map(|hash| Some((*hash, vec![leases.remove(hash)?]))),
                    );
                }
            }
            let payload = Bytes::from(pull::want_payload(&hashes, &resume));
            Answer::Wanted(write_wants(&pulling.wants, FrameType::Want, payload, false).await)
        }
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

/// Writes one frame on our want stream (opened by `Send`), then, when it
/// is the `last`, ends the stream.
async fn write_wants(
    wants: &WantStreams,
    frame_type: FrameType,
    payload: Bytes,
    last: bool,
) -> Result<(), SessionError> {
    let mut writer = wants.ours.take().await;
    let mut written = writer.send_payload(frame_type, payload).await;
    if last && written.is_ok() {
        written = writer.finish().await;
    }
    wants.ours.put(writer);
    Ok(written?)
}

/// The next frame of the peer's want stream, accepted (after its data
/// streams) on the first call. No deadline of its own: the peer may wait
/// long for deliveries from other peers before it asks. A dead peer is
/// found by the connection's idle timeout; a live one that never ends its
/// want stream holds this session as a live link holds its connection,
/// within the node's session slots.
async fn read_want(conn: &Connection, wants: &WantStreams) -> Result<Option<Frame>, SessionError> {
    if !wants.accepted.swap(true, Ordering::Relaxed) {
        wants.data_accepted.take().await;
        let stream = conn.accept_uni().await.map_err(StreamError::from)?;
        wants
            .theirs
            .put(FrameReader::new(stream, pull::MAX_WANT_FRAME));
    }
    let mut reader = wants.theirs.take().await;
    let frame = reader.next().await;
    wants.theirs.put(reader);
    Ok(frame?)
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
