//! The send pipeline: from the list of what the peer lacks to frames on
//! several streams.
//!
//! Stages, each a set of tasks joined by bounded channels:
//! 1. the **planner** groups small assets into pull batches (bounded by count
//!    and bytes), hands large assets straight to the writers, and turns
//!    metadata updates into frames;
//! 2. **pull workers** fetch batches from the CAN concurrently, with retries;
//! 3. **encode workers** build each bundle's frame (in their own task for a
//!    small bundle, on the blocking pool for a large one: [`crate::cpu`]):
//!    protobuf, and zstd when a sample of the asset says it pays;
//! 4. **stream writers**, one per stream, take frames from one shared queue
//!    (so a slow stream simply takes fewer) and write them, small frames
//!    gathered into writes that fill whole packets (the receiving QUIC stack
//!    cannot hold a lagging stream of tiny packets, see [`crate::stream`]); a writer that takes
//!    a large asset streams it from the CAN as `ASSET_BEGIN`, `ASSET_CHUNK`…,
//!    `ASSET_END` on its own stream, never holding more than one chunk.
//!
//! Each writer ends its stream with `DONE{assets, bytes}` once the queue is
//! closed and drained, then waits until the peer has every byte. The caller
//! opens the streams (a session opens exactly the negotiated number, empty
//! ones included, so the receiver knows how many to wait for).
//!
//! `large.rs` holds the streaming of one large asset; `lookup.rs` finds the
//! assets a peer names: by hash prefix (coded reconciliation) or by hash
//! (a peer that pulls), with their sizes from our store.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::task::JoinSet;
use tracing::warn;

use super::{retry, EngineConfig, EngineError, EngineStats, RejectReason, Rejection};
use crate::asset::{AssetHash, Bundle, HashPrefix, MetaUpdate};
use crate::can::{CanError, SharedCan};
use crate::fault::Fault;
use crate::stream::{FrameWriter, SendHalf};
use crate::wire::data_stream;
use large::stream_large;

mod large;
mod lookup;

/// What to send: assets the peer lacks (with their sizes, from our own
/// summaries, or looked up in our store) and assets whose metadata wins on
/// our side.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendPlan {
    /// Assets and their sizes.
    pub assets: Vec<(AssetHash, u64)>,
    /// Assets the peer asked for by hash prefix alone: hashes and sizes come
    /// from our store (never a size from the peer, whose word would decide how
    /// much we pull into memory at once); a prefix we hold nothing under is
    /// skipped with a warning (the peer's summary shows the shortfall).
    pub lookup: Vec<HashPrefix>,
    /// Assets the peer asked for by hash (it pulls: [`crate::session::v2::pull`]):
    /// sizes come from our store, and one we do not hold is reported as
    /// vanished.
    pub wanted: Vec<AssetHash>,
    /// Of the large assets asked for, those the peer holds in part: only
    /// the groups named are sent (HELLO feature `ranges`).
    pub resume: Vec<RangesAsked>,
    /// Assets whose metadata to send.
    pub meta: Vec<AssetHash>,
}

/// The groups a peer asked for of one large asset (`Want.resume`): one it
/// holds in part, or a lease of one it takes from several sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangesAsked {
    /// The asset.
    pub hash: AssetHash,
    /// Its groups asked for: ascending, disjoint runs of group indices.
    pub groups: Vec<Range<u64>>,
    /// The peer holds the asset's outboard, checked against its hash: it
    /// is not sent again (`AssetHeader.outboard_omitted`).
    pub outboard_held: bool,
}

impl RangesAsked {
    /// Groups of `hash` asked for by a peer that lacks its outboard.
    pub fn new(hash: AssetHash, groups: Vec<Range<u64>>) -> Self {
        Self {
            hash,
            groups,
            outboard_held: false,
        }
    }
}

impl SendPlan {
    /// Adds `more` to this plan.
    pub fn extend(&mut self, more: Self) {
        self.assets.extend(more.assets);
        self.lookup.extend(more.lookup);
        self.wanted.extend(more.wanted);
        self.resume.extend(more.resume);
        self.meta.extend(more.meta);
    }
}

/// What the send side did.
#[derive(Debug, Default)]
pub struct SendOutcome {
    /// Assets sent.
    pub assets: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Frame bytes written.
    pub wire_bytes: u64,
    /// Metadata updates sent.
    pub meta: u64,
    /// Assets that could not be read from our CAN; left for the next session.
    pub failed: Vec<Rejection>,
}

/// One unit of work for a stream writer.
enum Job {
    /// A complete encoded frame (header included).
    Frame {
        /// The frame bytes.
        bytes: Bytes,
        /// Assets it carries (0 for metadata).
        assets: u64,
        /// Asset payload bytes it carries.
        payload: u64,
        /// True for a metadata update.
        meta: bool,
    },
    /// An asset above the inline limit, streamed from the CAN by the writer.
    Large {
        /// Which asset.
        hash: AssetHash,
        /// Its size.
        size: u64,
    },
}

/// Shared state of one send run.
struct Shared {
    can: SharedCan,
    config: Arc<EngineConfig>,
    stats: Arc<EngineStats>,
    failed: Mutex<Vec<Rejection>>,
    /// Failures beyond [`MAX_RECORDED_FAILURES`].
    unrecorded: AtomicU64,
    /// The groups the peer asked for of large assets, until the asset is
    /// sent ([`SendPlan::resume`]): one entry per time it was named, in
    /// order (a split asset is asked for once per lease).
    resume: Mutex<Resumes>,
    /// The outboards of the last large assets sent by ranges.
    outboards: Mutex<RecentOutboards>,
}

/// The outboards of the large assets sent last, at most
/// [`RECENT_OUTBOARDS`]: a split asset is asked for once per lease, and a
/// store that keeps none would read it through each time.
#[derive(Default)]
struct RecentOutboards(std::collections::VecDeque<crate::can::Outboard>);

/// Outboards kept by a send: at most 16 MiB (an outboard of the largest
/// ranged asset is 2 MiB), usually a few KiB.
const RECENT_OUTBOARDS: usize = 8;

impl RecentOutboards {
    fn get(&self, hash: &AssetHash) -> Option<crate::can::Outboard> {
        self.0.iter().find(|kept| kept.hash() == *hash).cloned()
    }

    fn keep(&mut self, outboard: crate::can::Outboard) {
        if self.get(&outboard.hash()).is_some() {
            return;
        }
        if self.0.len() >= RECENT_OUTBOARDS {
            self.0.pop_front();
        }
        self.0.push_back(outboard);
    }
}

/// The ranges a peer named of the large assets it asked for, each asset's
/// in the order its `WANT`s named them.
#[derive(Default)]
struct Resumes {
    by_asset: HashMap<AssetHash, std::collections::VecDeque<RangesAsked>>,
    held: usize,
}

impl Resumes {
    /// Keeps one ask of ranges; false past [`MAX_RESUMES_HELD`] (that ask
    /// then goes whole).
    fn keep(&mut self, asked: RangesAsked) -> bool {
        if self.held >= MAX_RESUMES_HELD {
            return false;
        }
        self.held += 1;
        self.by_asset
            .entry(asked.hash)
            .or_default()
            .push_back(asked);
        true
    }

    /// The earliest ask of ranges of `hash` not yet sent.
    fn take(&mut self, hash: &AssetHash) -> Option<RangesAsked> {
        let asks = self.by_asset.get_mut(hash)?;
        let ranges = asks.pop_front();
        if asks.is_empty() {
            self.by_asset.remove(hash);
        }
        self.held -= usize::from(ranges.is_some());
        ranges
    }
}

impl Shared {
    /// Runs a CAN call with the engine's retries, counting them.
    async fn retried<T, F, Fut>(&self, call: F) -> Result<T, CanError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CanError>>,
    {
        retry::retried(&self.config, &self.stats, call).await
    }

    fn fail(&self, hash: AssetHash, reason: RejectReason) {
        let mut failed = self.failed.lock().expect("failed list lock");
        // A peer that pulls names what we send; one asking for hashes we
        // never held must not grow this list without end.
        if failed.len() < MAX_RECORDED_FAILURES {
            warn!(hash = %hash.short(), %reason, "could not send an asset; left for the next session");
            failed.push(Rejection { hash, reason });
        } else if self.unrecorded.fetch_add(1, Ordering::Relaxed) == 0 {
            warn!("more assets could not be sent than are recorded; the rest are not named");
        }
    }

    fn store_failed(&self, hash: AssetHash, err: &CanError) {
        let reason = match err {
            CanError::NotFound(_) => RejectReason::Vanished,
            other => RejectReason::Store(other.to_string()),
        };
        self.fail(hash, reason);
    }
}

/// Sends everything in `plan` over `streams`, ending each with `DONE` and
/// waiting until the peer has it.
pub async fn run<W: SendHalf>(
    streams: Vec<FrameWriter<W>>,
    can: SharedCan,
    plan: SendPlan,
    config: Arc<EngineConfig>,
    stats: Arc<EngineStats>,
) -> Result<SendOutcome, EngineError> {
    run_fed(streams, can, futures::stream::iter([plan]), config, stats).await
}

/// Sends every plan `feed` yields, as it yields them, then ends the streams
/// as [`run`] does once the feed ends. A plan is taken from the feed only
/// when the planner has room for it, so a reconciliation that produces its
/// plan a page at a time is held back by the transfer, not buffered.
pub async fn run_fed<W: SendHalf>(
    streams: Vec<FrameWriter<W>>,
    can: SharedCan,
    feed: impl futures::Stream<Item = SendPlan> + Send + 'static,
    config: Arc<EngineConfig>,
    stats: Arc<EngineStats>,
) -> Result<SendOutcome, EngineError> {
    let shared = Arc::new(Shared {
        can,
        config: config.clone(),
        stats,
        failed: Mutex::default(),
        unrecorded: AtomicU64::new(0),
        resume: Mutex::default(),
        outboards: Mutex::default(),
    });
    let depth = config.queue_depth.max(1);
    let (batch_tx, batch_rx) = async_channel::bounded::<Vec<AssetHash>>(depth);
    let (bundle_tx, bundle_rx) = async_channel::bounded::<Bundle>(depth);
    let (job_tx, job_rx) = async_channel::bounded::<Job>(depth);

    // Dropping the set (on error or cancellation) aborts every stage.
    let mut stages = JoinSet::new();
    stages.spawn(plan_task(shared.clone(), feed, batch_tx, job_tx.clone()));
    for _ in 0..config.pull_workers.max(1) {
        stages.spawn(pull_task(
            shared.clone(),
            batch_rx.clone(),
            bundle_tx.clone(),
        ));
    }
    for _ in 0..config.encode_workers.max(1) {
        stages.spawn(encode_task(
            shared.clone(),
            bundle_rx.clone(),
            job_tx.clone(),
        ));
    }
    drop((batch_rx, bundle_tx, bundle_rx, job_tx));

    let mut writers = JoinSet::new();
    for stream in streams {
        writers.spawn(write_stream(shared.clone(), stream, job_rx.clone()));
    }
    drop(job_rx);

    let mut outcome = SendOutcome::default();
    while let Some(joined) = writers.join_next().await {
        let totals = joined.map_err(|err| Fault::task("stream writer", err))??;
        outcome.assets += totals.assets;
        outcome.bytes += totals.bytes;
        outcome.wire_bytes += totals.wire_bytes;
        outcome.meta += totals.meta;
    }
    while let Some(joined) = stages.join_next().await {
        joined.map_err(|err| Fault::task("send stage", err))?;
    }
    outcome.failed = std::mem::take(&mut *shared.failed.lock().expect("failed list lock"));
    Ok(outcome)
}

/// Most large assets whose peer-named ranges ([`SendPlan::resume`]) a send
/// keeps at once, each at most
/// [`MAX_RANGES`](crate::can::store::ranges::MAX_RANGES) ranges: 4 MiB at
/// most.
const MAX_RESUMES_HELD: usize = 256;

/// Small assets in pull batches, large ones to the writers, then metadata
/// updates: plan by plan, as the feed yields them. A batch that is not full
/// waits for the next plan if one is ready, so a plan fed in many parts pulls
/// in the same batches as one whole plan; when none is, it goes as it is (a
/// peer that pulls may be waiting for exactly those assets before it asks
/// for more).
async fn plan_task(
    shared: Arc<Shared>,
    feed: impl futures::Stream<Item = SendPlan> + Send + 'static,
    batches: async_channel::Sender<Vec<AssetHash>>,
    jobs: async_channel::Sender<Job>,
) {
    let mut batch = Batch::default();
    let mut feed = std::pin::pin!(feed);
    loop {
        let ready = feed.next().now_or_never();
        let next = match ready {
            Some(next) => next,
            None => {
                if !batch.hashes.is_empty() {
                    let partial = std::mem::take(&mut batch);
                    if batches.send(partial.hashes).await.is_err() {
                        return;
                    }
                }
                feed.next().await
            }
        };
        let Some(plan) = next else { break };
        if plan_one(&shared, plan, &mut batch, &batches, &jobs)
            .await
            .is_err()
        {
            return;
        }
    }
    if !batch.hashes.is_empty() {
        let _ = batches.send(batch.hashes).await;
    }
}

/// A pull batch being filled.
#[derive(Default)]
struct Batch {
    hashes: Vec<AssetHash>,
    bytes: u64,
}

/// The pipeline is gone: the send is over (failed or cancelled).
struct Closed;

async fn plan_one(
    shared: &Arc<Shared>,
    plan: SendPlan,
    batch: &mut Batch,
    batches: &async_channel::Sender<Vec<AssetHash>>,
    jobs: &async_channel::Sender<Job>,
) -> Result<(), Closed> {
    let config = &shared.config;
    let stats = &shared.stats;
    if config.ranges && !plan.resume.is_empty() {
        let mut resume = shared.resume.lock().expect("resume lock");
        for asked in plan.resume {
            // Past the cap an asset goes whole, and the peer skips the
            // groups it holds: a hostile peer's ranges cannot grow memory.
            if !resume.keep(asked) {
                break;
            }
        }
    }
    EngineStats::add(
        &stats.planned_assets,
        (plan.assets.len() + plan.wanted.len()) as u64,
    );
    EngineStats::add(
        &stats.planned_bytes,
        plan.assets.iter().map(|(_, size)| size).sum(),
    );
    let looked_up = futures::stream::iter(plan.lookup)
        .map(|prefix| {
            let shared = shared.clone();
            async move { lookup::by_prefix(&shared, prefix).await }
        })
        // In order, several at a time: against an HTTP store each is a request.
        .buffered(lookup::LOOKUPS_IN_FLIGHT)
        .flat_map(futures::stream::iter);
    let wanted = futures::stream::once(lookup::size_wanted(shared.clone(), plan.wanted))
        .flat_map(futures::stream::iter);
    let mut items = futures::stream::iter(plan.assets)
        .chain(looked_up)
        .chain(wanted)
        .boxed();
    while let Some((hash, size)) = items.next().await {
        if size <= config.inline_limit && config.ranges {
            // Inline after all: whatever ranges the peer named go unused.
            shared.resume.lock().expect("resume lock").take(&hash);
        }
        if size > config.inline_limit {
            jobs.send(Job::Large { hash, size })
                .await
                .map_err(|_| Closed)?;
            continue;
        }
        batch.hashes.push(hash);
        batch.bytes += size;
        if batch.hashes.len() >= config.batch_assets || batch.bytes >= config.batch_bytes {
            let full = std::mem::take(batch);
            batches.send(full.hashes).await.map_err(|_| Closed)?;
        }
    }
    for hash in plan.meta {
        let update = match shared.retried(|| shared.can.meta(hash)).await {
            Ok(Some((_, meta))) => MetaUpdate::of(hash, &meta),
            Ok(None) => continue,
            Err(err) => {
                shared.store_failed(hash, &err);
                continue;
            }
        };
        let job = Job::Frame {
            bytes: data_stream::encode_meta(&update),
            assets: 0,
            payload: 0,
            meta: true,
        };
        jobs.send(job).await.map_err(|_| Closed)?;
    }
    Ok(())
}

async fn pull_task(
    shared: Arc<Shared>,
    batches: async_channel::Receiver<Vec<AssetHash>>,
    bundles: async_channel::Sender<Bundle>,
) {
    while let Ok(batch) = batches.recv().await {
        match shared.retried(|| shared.can.pull(&batch)).await {
            Ok(pulled) => {
                for hash in pulled.missing {
                    shared.fail(hash, RejectReason::Vanished);
                }
                let pulled_bytes = pulled.bundles.iter().map(|b| b.data.len() as u64).sum();
                shared.stats.queue_send_bytes(pulled_bytes);
                for bundle in pulled.bundles {
                    if bundles.send(bundle).await.is_err() {
                        return;
                    }
                }
            }
            Err(err) => {
                for hash in batch {
                    shared.store_failed(hash, &err);
                }
            }
        }
    }
}

/// The highest zstd level whose cost per byte is about that of a pass over
/// the bytes, so that a small bundle is encoded in its encode worker's task.
const FAST_ZSTD_LEVEL: i32 = 3;

async fn encode_task(
    shared: Arc<Shared>,
    bundles: async_channel::Receiver<Bundle>,
    jobs: async_channel::Sender<Job>,
) {
    let level = shared.config.zstd_level;
    while let Ok(bundle) = bundles.recv().await {
        let payload = bundle.data.len() as u64;
        // Above the fast levels, zstd costs far more per byte (64 KiB: 54 µs
        // at level 3, 20 ms at 19): always the blocking pool then.
        let work = if level <= FAST_ZSTD_LEVEL {
            bundle.data.len()
        } else {
            usize::MAX
        };
        let encoded =
            crate::cpu::run(work, move || data_stream::encode_inline(bundle, level)).await;
        let Ok(bytes) = encoded else {
            return; // the blocking pool is shutting down
        };
        let job = Job::Frame {
            bytes,
            assets: 1,
            payload,
            meta: false,
        };
        if jobs.send(job).await.is_err() {
            return;
        }
    }
}

/// How long a writer holding gathered frames waits for more before writing
/// them anyway. Long enough that a trickling sender still writes in packets
/// that carry several frames: a stalled receiver's QUIC stack holds a piece
/// per packet, and at one write per 5 ms it takes 5 s of trickle into a
/// reader that reads nothing to reach its 1,024 (the test in
/// `tests/engine_limits.rs` trickles for 3 s). Short, because a writer that
/// waits leaves the stream idle: 20 ms cost the harness's `small` scenario
/// about 15%, 5 ms nothing measurable. A session's last frames never wait
/// (the queue closes), so live sync's latency does not pay it.
const COALESCE_LINGER: Duration = Duration::from_millis(5);

/// The next job for a writer, or `None` once the queue is closed and drained.
/// Gathered frames are written once the oldest of them has waited
/// [`COALESCE_LINGER`] (a deadline from the first, so a producer that trickles
/// cannot hold them indefinitely), so small frames leave in large writes (see
/// [`FrameWriter::coalesce`]) without waiting on a slow producer for long.
async fn next_job<W: SendHalf>(
    jobs: &async_channel::Receiver<Job>,
    writer: &mut FrameWriter<W>,
) -> Result<Option<Job>, EngineError> {
    match jobs.try_recv() {
        Ok(job) => return Ok(Some(job)),
        Err(async_channel::TryRecvError::Closed) => return Ok(None),
        Err(async_channel::TryRecvError::Empty) => {}
    }
    if let Some(since) = writer.pending_since() {
        if let Ok(job) = tokio::time::timeout_at(since + COALESCE_LINGER, jobs.recv()).await {
            return Ok(job.ok());
        }
        writer.flush().await?;
    }
    Ok(jobs.recv().await.ok())
}

/// Most failures one send records (and its `SUMMARY` names).
pub const MAX_RECORDED_FAILURES: usize = 4096;

/// What one stream carried.
#[derive(Default)]
struct StreamTotals {
    assets: u64,
    bytes: u64,
    wire_bytes: u64,
    meta: u64,
}

async fn write_stream<W: SendHalf>(
    shared: Arc<Shared>,
    mut writer: FrameWriter<W>,
    jobs: async_channel::Receiver<Job>,
) -> Result<StreamTotals, EngineError> {
    let mut totals = StreamTotals::default();
    let stats = &shared.stats;
    while let Some(job) = next_job(&jobs, &mut writer).await? {
        match job {
            Job::Frame {
                bytes,
                assets,
                payload,
                meta,
            } => {
                writer.coalesce(bytes).await?;
                stats.dequeue_send_bytes(payload);
                totals.assets += assets;
                totals.bytes += payload;
                totals.meta += u64::from(meta);
                EngineStats::add(&stats.assets_sent, assets);
                EngineStats::add(&stats.bytes_sent, payload);
            }
            Job::Large { hash, size } => {
                // Its bytes are counted in the stats as they go.
                if let Some(sent) = stream_large(&shared, &mut writer, hash, size).await? {
                    totals.assets += 1;
                    totals.bytes += sent;
                    EngineStats::add(&stats.assets_sent, 1);
                }
            }
        }
    }
    writer
        .send(data_stream::encode_done(totals.assets, totals.bytes))
        .await?;
    writer.finish().await?;
    totals.wire_bytes = writer.bytes_written();
    EngineStats::add(&stats.wire_bytes_sent, totals.wire_bytes);
    Ok(totals)
}
