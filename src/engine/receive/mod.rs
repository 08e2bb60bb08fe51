//! The receive pipeline: from the peer's data streams to pushes into the CAN.
//!
//! - One **reader** per stream reads frames (each bounded by the session's frame
//!   limit before any allocation), checks them against the data-stream grammar
//!   ([`DataStreamParser`]) and routes them: inline bundles to the verify
//!   queue, metadata straight to the CAN, large assets into a streamed
//!   [`Can::write_blob`](crate::can::Can::write_blob) fed chunk by chunk.
//!   (`large.rs` in this module).
//! - **Verify workers** decompress (bounded: a zstd bomb is a violation, not an
//!   allocation), decode and check BLAKE3: in their own task for small
//!   frames, on the blocking pool for large ones ([`crate::cpu`]).
//! - **Push workers** take whatever verified bundles are waiting (up to the
//!   batch limits of [`EngineConfig`]) and push them as one batch
//!   ([`Can::push_batch`](crate::can::Can::push_batch): one durable commit
//!   in the embedded store, one request over HTTP), concurrently, retrying
//!   transient failures.
//!
//! What is verified, when, by whom: every inline asset's hash here, before the
//! CAN sees it; an embedded CAN takes the [`VerifiedBundle`] at its word, an
//! HTTP CAN verifies again on its side; every large asset's hash by the CAN while
//! it streams in, committed only if the whole matches. A wrong hash rejects
//! that asset (reported in `SUMMARY`) and the session goes on; bytes that are
//! not valid frames, protobuf or zstd are a [`Violation`]: the stream is
//! stopped with `PROTOCOL_ERROR` and the pipeline fails.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::claims::{Claimed, LeaseEnd};
use super::split::Arrival;
use super::{retry, EngineConfig, EngineError, EngineStats, RejectReason, Rejection};
use crate::asset::{AssetHash, Bundle, MetaUpdate, MetaVersion, VerifiedBundle};
use crate::can::{CanError, Pushed, SeqRanges, SharedCan};
use crate::fault::Fault;
use crate::recon::compact;
use crate::stream::{FrameReader, RecvHalf};
use crate::wire::data_stream::{self, DataItem, DataStreamParser};
use crate::wire::{compress, Frame, Violation, CLOSE_PROTOCOL_ERROR, RESET_LOCAL_FAILURE};
use large::receive_large;

mod large;

/// What the receive side did.
#[derive(Debug, Default)]
pub struct ReceiveOutcome {
    /// Assets newly stored.
    pub assets: u64,
    /// Assets the store already had.
    pub duplicates: u64,
    /// Payload bytes newly stored.
    pub bytes: u64,
    /// Frame bytes read from data streams.
    pub wire_bytes: u64,
    /// Metadata updates that won LWW here.
    pub meta_applied: u64,
    /// Assets refused, with reasons.
    pub rejected: Vec<Rejection>,
    /// The first [`STORED_RECORD_LIMIT`] assets received, with the metadata
    /// version they came with: what live sync must not offer back.
    pub stored: Vec<(AssetHash, MetaVersion)>,
    /// The changes the pushes made in our store's log, as far as the store
    /// says: what live sync, following the log, must not offer back, however
    /// many (a bulk seed's pushes are one run of numbers).
    pub changes: SeqRanges,
}

/// Most entries of [`ReceiveOutcome::stored`]: beyond it, an asset offered
/// back costs the peer one declined offer, not a transfer. The change
/// ranges cover a bulk seed whatever its size, so this record only needs
/// the few assets a store pushes without a sequence number; at 72 bytes an
/// entry, 2^18 of them were 19 MB of a seeding node's peak (heaptrack).
pub const STORED_RECORD_LIMIT: usize = 1 << 16;

/// An inline bundle frame waiting for verification.
struct InlineFrame {
    zstd: bool,
    payload: Bytes,
}

struct Shared {
    can: SharedCan,
    config: Arc<EngineConfig>,
    stats: Arc<EngineStats>,
    outcome: Mutex<ReceiveOutcome>,
    /// The claims of this delivery, released as their assets settle.
    claimed: Option<Arc<Claimed>>,
    /// The peer sending, for [`EngineStats::arriving`].
    from: Option<iroh::EndpointId>,
    /// When a frame last arrived on any of the delivery's streams.
    last_frame: Mutex<Instant>,
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

    fn reject(&self, hash: AssetHash, reason: RejectReason) {
        self.settle(&hash);
        warn!(hash = %hash.short(), %reason, "rejected an asset from the peer");
        EngineStats::add(&self.stats.rejects, 1);
        self.outcome
            .lock()
            .expect("outcome lock")
            .rejected
            .push(Rejection { hash, reason });
    }

    /// Rejects an asset the store refused.
    fn refused(&self, hash: AssetHash, err: CanError) {
        let reason = match err {
            CanError::HashMismatch { actual, .. } => RejectReason::HashMismatch { actual },
            CanError::BadRange(bad) => RejectReason::BadRange(bad.to_string()),
            CanError::FutureStamp(stamp) => RejectReason::FutureStamp(stamp.to_string()),
            other => RejectReason::Store(other.to_string()),
        };
        self.reject(hash, reason);
    }

    /// `hash` is stored or rejected: another delivery may take it now.
    fn settle(&self, hash: &AssetHash) {
        if let Some(claimed) = &self.claimed {
            claimed.settle(hash);
        }
    }

    /// The lease of `hash` a delivery naming `ranges` answers, and whether
    /// it names exactly the lease's groups ([`Claimed::match_lease`]).
    fn match_lease(
        &self,
        hash: &AssetHash,
        ranges: &[std::ops::Range<u64>],
    ) -> Option<(u64, bool)> {
        self.claimed
            .as_ref()
            .and_then(|claimed| claimed.match_lease(hash, ranges))
    }

    /// Where the delivery of a lease reports how far it has come.
    fn lease_arrival(&self, hash: &AssetHash, first: u64) -> Option<Arrival> {
        self.claimed.as_ref()?.lease_arrival(hash, first)
    }

    /// The outboard of split asset `hash` an earlier lease's delivery
    /// brought.
    fn held_outboard(&self, hash: &AssetHash) -> Option<crate::can::Outboard> {
        self.claimed.as_ref()?.held_outboard(hash)
    }

    /// Keeps the outboard a lease's delivery brought for the asset's
    /// later leases.
    fn keep_outboard(&self, outboard: &crate::can::Outboard) {
        if let Some(claimed) = &self.claimed {
            claimed.keep_outboard(outboard);
        }
    }

    /// Whether `hash` is split now.
    fn is_split(&self, hash: &AssetHash) -> bool {
        self.claimed
            .as_ref()
            .is_some_and(|claimed| claimed.is_split(hash))
    }

    /// Every lease of `hash` ends as `end` (a delivery of it that was not
    /// by ranges).
    fn settle_leases(&self, hash: &AssetHash, end: LeaseEnd) {
        if let Some(claimed) = &self.claimed {
            claimed.settle_leases(hash, end);
        }
    }

    /// The delivery of a lease was cut after the store took its first
    /// `groups` groups.
    fn lease_written(&self, hash: &AssetHash, first: u64, groups: u64) {
        if let Some(claimed) = &self.claimed {
            claimed.lease_written(hash, first, groups);
        }
    }

    /// The delivery of a lease ended as `end`: its groups are settled.
    fn settle_lease(&self, hash: &AssetHash, first: u64, end: LeaseEnd) {
        if let Some(claimed) = &self.claimed {
            claimed.settle_lease(hash, first, end);
        }
    }

    /// A lease's groups (`bytes` of them) arrived and were written; the
    /// asset is not whole yet.
    fn delivered_part(&self, bytes: u64) {
        self.outcome.lock().expect("outcome lock").bytes += bytes;
        EngineStats::add(&self.stats.bytes_received, bytes);
    }

    fn stored(&self, meta: &crate::pb::AssetMeta, pushed: &Pushed, size: u64) {
        let (hash, already_existed) = (pushed.hash, pushed.already_existed);
        self.settle(&hash);
        // Whole: whatever leases of it are left are done.
        self.settle_leases(&hash, LeaseEnd::Whole);
        let mut outcome = self.outcome.lock().expect("outcome lock");
        if let Some(seq) = pushed.seq {
            outcome.changes.insert(seq);
        }
        if outcome.stored.len() < STORED_RECORD_LIMIT {
            let version = MetaVersion::of(meta).truncated(compact::DIGEST_PREFIX);
            outcome.stored.push((hash, version));
        }
        if already_existed {
            outcome.duplicates += 1;
            EngineStats::add(&self.stats.duplicates, 1);
        } else {
            outcome.assets += 1;
            outcome.bytes += size;
            EngineStats::add(&self.stats.assets_received, 1);
            EngineStats::add(&self.stats.bytes_received, size);
        }
    }
}

/// Receives every stream `readers` yields until each has sent `DONE`, and
/// everything they carried is pushed or rejected.
pub async fn run<R: RecvHalf>(
    readers: impl Stream<Item = Result<FrameReader<R>, EngineError>> + Unpin,
    can: SharedCan,
    config: Arc<EngineConfig>,
    stats: Arc<EngineStats>,
) -> Result<ReceiveOutcome, EngineError> {
    run_settling(readers, can, config, stats, None, None).await
}

/// [`run`], releasing each of `claimed` as its asset is stored or rejected;
/// a large asset arriving by ranges counts as arriving `from` that peer
/// while it is written ([`EngineStats::arriving`]).
pub async fn run_settling<R: RecvHalf>(
    mut readers: impl Stream<Item = Result<FrameReader<R>, EngineError>> + Unpin,
    can: SharedCan,
    config: Arc<EngineConfig>,
    stats: Arc<EngineStats>,
    claimed: Option<Arc<Claimed>>,
    from: Option<iroh::EndpointId>,
) -> Result<ReceiveOutcome, EngineError> {
    let shared = Arc::new(Shared {
        can,
        config: config.clone(),
        stats,
        outcome: Mutex::default(),
        claimed,
        from,
        last_frame: Mutex::new(Instant::now()),
    });
    let depth = config.queue_depth.max(1);
    let (frame_tx, frame_rx) = async_channel::bounded::<InlineFrame>(depth);
    // Deep enough that a push worker finds a whole batch waiting.
    let (verified_tx, verified_rx) =
        async_channel::bounded::<VerifiedBundle>(depth.max(config.batch_assets));

    // Readers and workers in one set: the first error fails the pipeline at
    // once (dropping the set aborts the rest). Readers return the frame bytes
    // they read; workers return 0.
    let mut tasks: JoinSet<Result<u64, EngineError>> = JoinSet::new();
    for _ in 0..config.verify_workers.max(1) {
        let (shared, frames, verified) = (shared.clone(), frame_rx.clone(), verified_tx.clone());
        tasks.spawn(async move { verify_task(shared, frames, verified).await.map(|()| 0) });
    }
    for _ in 0..config.push_workers.max(1) {
        let (shared, bundles) = (shared.clone(), verified_rx.clone());
        tasks.spawn(async move {
            push_task(shared, bundles).await;
            Ok(0)
        });
    }
    drop((frame_rx, verified_tx, verified_rx));

    loop {
        let reader = tokio::select! {
            next = readers.next() => match next {
                Some(reader) => reader?,
                None => break,
            },
            Some(joined) = tasks.join_next() => match joined {
                // A stream may be read to its end before the next one is
                // even accepted: its bytes count all the same.
                Ok(Ok(wire_bytes)) => {
                    count_wire_bytes(&shared, wire_bytes);
                    continue;
                }
                Ok(Err(err)) => return Err(err),
                Err(err) => return Err(Fault::task("receive", err).into()),
            },
        };
        tasks.spawn(read_stream(shared.clone(), reader, frame_tx.clone()));
    }
    // Once every reader is done the queues close and the workers drain them.
    drop(frame_tx);
    while let Some(joined) = tasks.join_next().await {
        let wire_bytes = joined.map_err(|err| Fault::task("receive", err))??;
        count_wire_bytes(&shared, wire_bytes);
    }
    let outcome = std::mem::take(&mut *shared.outcome.lock().expect("outcome lock"));
    Ok(outcome)
}

/// Adds the frame bytes of a finished stream reader (workers report 0).
fn count_wire_bytes(shared: &Shared, wire_bytes: u64) {
    shared.outcome.lock().expect("outcome lock").wire_bytes += wire_bytes;
    EngineStats::add(&shared.stats.wire_bytes_received, wire_bytes);
}

/// The next frame of a data stream, within the idle timeout of the whole
/// delivery: a stream may be silent while another carries a large asset,
/// and a pulling session that has nothing asked for on its way hears nothing
/// until it asks again (it may wait for another peer's delivery); neither
/// silence is a fault. A dead peer is still found by the connection's own
/// idle timeout.
async fn next_frame<R: RecvHalf>(
    shared: &Shared,
    reader: &mut FrameReader<R>,
    idle: Duration,
) -> Result<Option<Frame>, EngineError> {
    let mut next = std::pin::pin!(reader.next());
    loop {
        match tokio::time::timeout(idle, next.as_mut()).await {
            Ok(read) => {
                *shared.last_frame.lock().expect("last frame lock") = Instant::now();
                return read.map_err(EngineError::from);
            }
            Err(_) if shared.claimed.as_ref().is_some_and(|c| c.is_empty()) => continue,
            Err(_) if shared.last_frame.lock().expect("last frame lock").elapsed() < idle => {
                continue
            }
            Err(_) => {
                return Err(Violation::Silent {
                    waited: idle,
                    during: "a data stream",
                }
                .into())
            }
        }
    }
}

/// Reads one stream to its `DONE`; returns the frame bytes it read. On a
/// failure the stream is stopped with a code that says whose it was.
async fn read_stream<R: RecvHalf>(
    shared: Arc<Shared>,
    mut reader: FrameReader<R>,
    inline: async_channel::Sender<InlineFrame>,
) -> Result<u64, EngineError> {
    let result = read_items(&shared, &mut reader, &inline).await;
    match &result {
        Err(EngineError::Peer(_)) => reader.stop(CLOSE_PROTOCOL_ERROR),
        Err(EngineError::Local(_)) => reader.stop(RESET_LOCAL_FAILURE),
        _ => {}
    }
    result.map(|()| reader.bytes_read())
}

async fn read_items<R: RecvHalf>(
    shared: &Shared,
    reader: &mut FrameReader<R>,
    inline: &async_channel::Sender<InlineFrame>,
) -> Result<(), EngineError> {
    let idle = shared.config.idle_timeout;
    let mut parser = DataStreamParser::default();
    loop {
        let Some(frame) = next_frame(shared, reader, idle).await? else {
            parser.handle_end()?;
            return Ok(());
        };
        match parser.handle_frame(frame)? {
            DataItem::Inline { zstd, payload } => {
                if inline.send(InlineFrame { zstd, payload }).await.is_err() {
                    return Err(Fault::Bug("verify workers stopped early".into()).into());
                }
            }
            DataItem::Meta(update) => apply_meta(shared, update).await,
            DataItem::Begin(header) => receive_large(shared, reader, &mut parser, header).await?,
            DataItem::Done(done) => {
                debug!(assets = done.assets, bytes = done.bytes, "data stream done");
            }
            DataItem::Chunk(_) | DataItem::End | DataItem::Outboard(_) => {
                unreachable!("the parser yields these only between ASSET_BEGIN and ASSET_END")
            }
        }
    }
}

async fn apply_meta(shared: &Shared, update: MetaUpdate) {
    let hash = update.hash;
    match shared
        .retried(|| shared.can.apply_meta(update.clone()))
        .await
    {
        Ok(true) => shared.outcome.lock().expect("outcome lock").meta_applied += 1,
        Ok(false) => debug!(%hash, "metadata update lost LWW"),
        Err(CanError::NotFound(_)) => debug!(%hash, "metadata for an asset we do not hold"),
        Err(err) => shared.refused(hash, err),
    }
}

/// Why an inline frame did not become a verified bundle.
enum Unverified {
    /// The bytes are not what the frame type promises: the peer is broken.
    Corrupt(Violation),
    /// A well-formed bundle whose bytes do not match its hash.
    WrongHash { hash: AssetHash, actual: AssetHash },
}

/// Decompresses (bounded), decodes and verifies one inline frame. CPU work:
/// the verify workers run it through [`crate::cpu::run`].
fn decode_and_verify(frame: InlineFrame, limit: usize) -> Result<VerifiedBundle, Unverified> {
    let bundle: Bundle = data_stream::decode_inline(frame.zstd, frame.payload, limit)
        .map_err(Unverified::Corrupt)?;
    bundle.verify().map_err(|wrong| Unverified::WrongHash {
        hash: wrong.expected,
        actual: wrong.actual,
    })
}

async fn verify_task(
    shared: Arc<Shared>,
    frames: async_channel::Receiver<InlineFrame>,
    verified: async_channel::Sender<VerifiedBundle>,
) -> Result<(), EngineError> {
    let limit = shared.config.max_frame_len() as usize;
    while let Ok(frame) = frames.recv().await {
        // A compressed frame costs what it inflates to (its header tells) or
        // what it reads, whichever is more: empty blocks declare nothing and
        // still take time to walk.
        let work = if frame.zstd {
            compress::output_bound(&frame.payload, limit).max(frame.payload.len())
        } else {
            frame.payload.len()
        };
        let checked = crate::cpu::run(work, move || decode_and_verify(frame, limit))
            .await
            .map_err(|err| Fault::task("verify", err))?;
        match checked {
            Ok(bundle) => {
                if verified.send(bundle).await.is_err() {
                    return Ok(());
                }
            }
            Err(Unverified::WrongHash { hash, actual }) => {
                shared.reject(hash, RejectReason::HashMismatch { actual })
            }
            Err(Unverified::Corrupt(violation)) => return Err(violation.into()),
        }
    }
    Ok(())
}

async fn push_task(shared: Arc<Shared>, bundles: async_channel::Receiver<VerifiedBundle>) {
    let (max_assets, max_bytes) = (
        shared.config.batch_assets.max(1),
        shared.config.batch_bytes.max(1),
    );
    while let Ok(first) = bundles.recv().await {
        // No waiting for company: a batch is what is queued now, so a lone
        // asset (live sync) is pushed at once.
        let mut bytes = first.data().len() as u64;
        let mut batch = vec![first];
        while batch.len() < max_assets && bytes < max_bytes {
            match bundles.try_recv() {
                Ok(bundle) => {
                    bytes += bundle.data().len() as u64;
                    batch.push(bundle);
                }
                Err(_) => break,
            }
        }
        push_batch(&shared, batch).await;
    }
}

/// Pushes one batch; the whole batch is retried while the CAN fails
/// transiently, then each bundle whose own slot failed transiently, up to the
/// configured attempts. Every bundle ends stored or rejected.
async fn push_batch(shared: &Shared, batch: Vec<VerifiedBundle>) {
    let policy = shared.config.retry_policy();
    let mut backoff = policy.backoff.clone();
    let mut pending = batch;
    let mut attempt = 1;
    while !pending.is_empty() {
        let answers = match shared
            .retried(|| shared.can.push_batch(pending.clone()))
            .await
        {
            Ok(answers) => answers,
            Err(err) => {
                let reason = err.to_string();
                for bundle in pending {
                    shared.reject(bundle.hash(), RejectReason::Store(reason.clone()));
                }
                return;
            }
        };
        if answers.len() != pending.len() {
            let reason = format!(
                "the CAN answered {} of a batch of {}",
                answers.len(),
                pending.len()
            );
            for bundle in pending {
                shared.reject(bundle.hash(), RejectReason::Store(reason.clone()));
            }
            return;
        }
        let mut again = Vec::new();
        for (bundle, answer) in pending.into_iter().zip(answers) {
            match answer {
                Ok(pushed) => shared.stored(bundle.meta(), &pushed, bundle.data().len() as u64),
                Err(err) if err.is_transient() && attempt < policy.attempts => {
                    EngineStats::add(&shared.stats.retries, 1);
                    again.push(bundle);
                }
                Err(err) => shared.refused(bundle.hash(), err),
            }
        }
        if !again.is_empty() {
            attempt += 1;
            tokio::time::sleep(backoff.next_pause()).await;
        }
        pending = again;
    }
}
