//! The receive pipeline: from the peer's uni-streams to pushes into the CAN.
//!
//! - One **reader** per stream reads frames (each bounded by the session's frame
//!   limit before any allocation) and routes them: inline bundles to the verify
//!   queue, metadata straight to the CAN, large assets into a streamed
//!   [`Can::write_blob`](crate::can::Can::write_blob) fed chunk by chunk.
//! - **Verify workers** decompress (bounded: a zstd bomb is an error, not an
//!   allocation), decode and check BLAKE3 on the blocking pool.
//! - **Push workers** push verified bundles to the CAN concurrently, retrying
//!   transient failures.
//!
//! What is verified, when, by whom: every inline asset's hash here, before the
//! CAN sees it, and again by the CAN; every large asset's hash by the CAN while
//! it streams in, committed only if the whole matches. A wrong hash rejects
//! that asset (reported in `SUMMARY`) and the session goes on; bytes that are
//! not valid frames, protobuf or zstd fail the session, and the connection is
//! closed with a protocol-error code.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::{with_retry, EngineConfig, EngineStats};
use crate::asset::{AssetHash, MetaVersion};
use crate::can::{CanError, SharedCan};
use crate::pb;
use crate::recon::compact;
use crate::session::framed::FrameReader;
use crate::session::{decode, Rejected, SessionError};
use crate::wire::{compress, FrameType};

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
    pub rejected: Vec<Rejected>,
    /// The first [`STORED_RECORD_LIMIT`] assets received, with the metadata
    /// version they came with: what live sync must not offer back.
    pub stored: Vec<(AssetHash, MetaVersion)>,
}

/// Most entries of [`ReceiveOutcome::stored`]: beyond it, an asset offered
/// back costs the peer one declined offer, not a transfer.
pub const STORED_RECORD_LIMIT: usize = 1 << 18;

/// An inline bundle frame waiting for verification.
struct InlineFrame {
    frame_type: FrameType,
    payload: Bytes,
}

struct Shared {
    can: SharedCan,
    config: Arc<EngineConfig>,
    stats: Arc<EngineStats>,
    outcome: Mutex<ReceiveOutcome>,
}

impl Shared {
    fn reject(&self, hash: String, reason: String) {
        warn!(%hash, %reason, "rejected an asset from the peer");
        EngineStats::add(&self.stats.rejects, 1);
        self.outcome
            .lock()
            .expect("outcome lock")
            .rejected
            .push(Rejected { hash, reason });
    }

    fn stored(&self, hash: AssetHash, meta: &pb::AssetMeta, already_existed: bool, size: u64) {
        let mut outcome = self.outcome.lock().expect("outcome lock");
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
pub async fn run(
    mut readers: impl Stream<Item = Result<FrameReader, SessionError>> + Unpin,
    can: SharedCan,
    config: Arc<EngineConfig>,
    stats: Arc<EngineStats>,
) -> Result<ReceiveOutcome, SessionError> {
    let shared = Arc::new(Shared {
        can,
        config: config.clone(),
        stats,
        outcome: Mutex::default(),
    });
    let depth = config.queue_depth.max(1);
    let (frame_tx, frame_rx) = async_channel::bounded::<InlineFrame>(depth);
    let (verified_tx, verified_rx) = async_channel::bounded::<pb::AssetBundle>(depth);

    // Readers and workers in one set: the first error fails the session at
    // once (dropping the set aborts the rest). Readers return the frame bytes
    // they read; workers return 0.
    let mut tasks: JoinSet<Result<u64, SessionError>> = JoinSet::new();
    for _ in 0..config.verify_workers.max(1) {
        let (shared, frames, verified) = (shared.clone(), frame_rx.clone(), verified_tx.clone());
        tasks.spawn(async move { verify_task(shared, frames, verified).await.map(|()| 0) });
    }
    for _ in 0..config.push_workers.max(1) {
        let (shared, bundles) = (shared.clone(), verified_rx.clone());
        tasks.spawn(async move { push_task(shared, bundles).await.map(|()| 0) });
    }
    drop((frame_rx, verified_tx, verified_rx));

    loop {
        let reader = tokio::select! {
            next = readers.next() => match next {
                Some(reader) => reader?,
                None => break,
            },
            Some(Ok(Err(err))) = tasks.join_next() => return Err(err),
        };
        tasks.spawn(read_stream(shared.clone(), reader, frame_tx.clone()));
    }
    // Once every reader is done the queues close and the workers drain them.
    drop(frame_tx);
    while let Some(joined) = tasks.join_next().await {
        let wire_bytes =
            joined.map_err(|err| SessionError::Protocol(format!("receive task: {err}")))??;
        shared.outcome.lock().expect("outcome lock").wire_bytes += wire_bytes;
        EngineStats::add(&shared.stats.wire_bytes_received, wire_bytes);
    }
    let outcome = std::mem::take(&mut *shared.outcome.lock().expect("outcome lock"));
    Ok(outcome)
}

/// Reads one stream to its `DONE`; returns the frame bytes it read.
async fn read_stream(
    shared: Arc<Shared>,
    mut reader: FrameReader,
    inline: async_channel::Sender<InlineFrame>,
) -> Result<u64, SessionError> {
    let idle = shared.config.idle_timeout;
    let result = async {
        loop {
            let frame = tokio::time::timeout(idle, reader.next())
                .await
                .map_err(|_| SessionError::Timeout(idle))??;
            match frame {
                None => {
                    return Err(SessionError::Protocol(
                        "data stream ended without DONE".into(),
                    ))
                }
                Some((FrameType::Done, payload)) => {
                    let done: pb::StreamDone = decode("StreamDone", &payload)?;
                    debug!(assets = done.assets, bytes = done.bytes, "data stream done");
                    reader.expect_end().await?;
                    return Ok(reader.bytes_read);
                }
                Some((frame_type @ (FrameType::AssetBundle | FrameType::BundleZstd), payload)) => {
                    let frame = InlineFrame {
                        frame_type,
                        payload,
                    };
                    if inline.send(frame).await.is_err() {
                        return Err(SessionError::Protocol("receive workers stopped".into()));
                    }
                }
                Some((FrameType::MetaUpdate, payload)) => {
                    apply_meta(&shared, decode("MetaUpdate", &payload)?).await;
                }
                Some((FrameType::AssetBegin, payload)) => {
                    let header: pb::AssetHeader = decode("AssetHeader", &payload)?;
                    receive_large(&shared, &mut reader, header).await?;
                }
                Some((other, _)) => {
                    return Err(SessionError::Protocol(format!(
                        "{other} is not allowed on a v2 data stream"
                    )))
                }
            }
        }
    }
    .await;
    if result.is_err() {
        reader.stop(crate::session::CLOSE_PROTOCOL_ERROR);
    }
    result
}

async fn apply_meta(shared: &Shared, update: pb::MetaUpdate) {
    let config = &shared.config;
    let hash = update.hash.clone();
    let update = match crate::asset::MetaUpdate::from_pb(update) {
        Ok(update) => update,
        Err(err) => return shared.reject(hash, err.to_string()),
    };
    let applied = with_retry(config.attempts, config.retry_backoff, &shared.stats, || {
        shared.can.apply_meta(update.clone())
    })
    .await;
    match applied {
        Ok(true) => shared.outcome.lock().expect("outcome lock").meta_applied += 1,
        Ok(false) => debug!(%hash, "metadata update lost LWW"),
        Err(CanError::NotFound(_)) => debug!(%hash, "metadata for an asset we do not hold"),
        Err(err) => shared.reject(hash, format!("metadata: {err}")),
    }
}

/// Streams one large asset from `reader` into the CAN, chunk by chunk.
async fn receive_large(
    shared: &Shared,
    reader: &mut FrameReader,
    header: pb::AssetHeader,
) -> Result<(), SessionError> {
    let hash = AssetHash::from_bytes(header.hash[..].try_into().map_err(|_| {
        SessionError::Protocol(format!("ASSET_BEGIN hash of {} bytes", header.hash.len()))
    })?);
    let zstd = match header.codec.as_str() {
        "zstd" => true,
        "raw" | "" => false,
        other => {
            return Err(SessionError::Protocol(format!(
                "unknown chunk codec {other:?}"
            )))
        }
    };
    let size = header.size;
    let idle = shared.config.idle_timeout;
    let limit = shared.config.max_frame_len() as usize;

    // The CAN consumes chunks as they come; the small queue is the only buffer.
    let (chunk_tx, chunk_rx) = async_channel::bounded::<Result<Bytes, CanError>>(4);
    let can = shared.can.clone();
    let meta = header.meta.unwrap_or_default();
    let write = {
        let meta = meta.clone();
        tokio::spawn(async move { can.write_blob(hash, meta, chunk_rx.boxed()).await })
    };

    let mut received = 0u64;
    let mut write_failed = false;
    loop {
        let frame = tokio::time::timeout(idle, reader.next())
            .await
            .map_err(|_| SessionError::Timeout(idle))??;
        match frame {
            Some((FrameType::AssetChunk, payload)) => {
                let remaining = (size - received) as usize;
                let chunk = if zstd {
                    // Past the declared size is an error even while decoding.
                    let bound = remaining.min(limit) + 1;
                    tokio::task::spawn_blocking(move || {
                        compress::decompress_bounded(&payload, bound)
                    })
                    .await
                    .map_err(|err| SessionError::Protocol(format!("decompress task: {err}")))?
                    .map(Bytes::from)
                    .map_err(|err| SessionError::Protocol(format!("asset {hash}: {err}")))?
                } else {
                    payload
                };
                if chunk.len() > remaining {
                    write.abort();
                    return Err(SessionError::Protocol(format!(
                        "asset {hash}: chunks run past the declared size of {size} bytes"
                    )));
                }
                received += chunk.len() as u64;
                if !write_failed && chunk_tx.send(Ok(chunk)).await.is_err() {
                    // The CAN gave up (its error comes from `write` below);
                    // keep reading to the end of this asset.
                    write_failed = true;
                }
            }
            Some((FrameType::AssetEnd, _)) => break,
            Some((other, _)) => {
                write.abort();
                return Err(SessionError::Protocol(format!(
                    "{other} inside asset {hash}; expected ASSET_CHUNK or ASSET_END"
                )));
            }
            None => {
                write.abort();
                return Err(SessionError::Protocol(format!(
                    "stream ended inside asset {hash}"
                )));
            }
        }
    }
    if received != size {
        let _ = chunk_tx
            .send(Err(CanError::Invalid(format!(
                "asset ended after {received} of {size} bytes"
            ))))
            .await;
    }
    drop(chunk_tx);
    match write.await {
        Ok(Ok(pushed)) => shared.stored(hash, &meta, pushed.already_existed, size),
        Ok(Err(err)) => shared.reject(hash.to_hex(), err.to_string()),
        Err(err) => shared.reject(hash.to_hex(), format!("store task failed: {err}")),
    }
    Ok(())
}

/// Why an inline frame could not be turned into a verified bundle.
enum Unverified {
    /// The bytes are not what the frame type promises: the peer is broken.
    Corrupt(SessionError),
    /// A well-formed bundle whose bytes do not match its hash.
    WrongHash { hash: String, actual: AssetHash },
}

/// Decompresses (bounded), decodes and verifies one inline frame. CPU work:
/// runs on the blocking pool.
fn decode_and_verify(frame: InlineFrame, limit: usize) -> Result<pb::AssetBundle, Unverified> {
    let raw = match frame.frame_type {
        FrameType::BundleZstd => Bytes::from(
            compress::decompress_bounded(&frame.payload, limit)
                .map_err(|err| Unverified::Corrupt(SessionError::Protocol(err.to_string())))?,
        ),
        _ => frame.payload,
    };
    let bundle: pb::AssetBundle = decode("AssetBundle", &raw).map_err(Unverified::Corrupt)?;
    let claimed: AssetHash = bundle
        .hash
        .parse()
        .map_err(|err| Unverified::Corrupt(SessionError::MalformedHash(err)))?;
    let actual = AssetHash::of(&bundle.data);
    if actual != claimed {
        return Err(Unverified::WrongHash {
            hash: bundle.hash,
            actual,
        });
    }
    Ok(bundle)
}

async fn verify_task(
    shared: Arc<Shared>,
    frames: async_channel::Receiver<InlineFrame>,
    verified: async_channel::Sender<pb::AssetBundle>,
) -> Result<(), SessionError> {
    let limit = shared.config.max_frame_len() as usize;
    while let Ok(frame) = frames.recv().await {
        let checked = tokio::task::spawn_blocking(move || decode_and_verify(frame, limit))
            .await
            .map_err(|err| SessionError::Protocol(format!("verify task: {err}")))?;
        match checked {
            Ok(bundle) => {
                if verified.send(bundle).await.is_err() {
                    return Ok(());
                }
            }
            Err(Unverified::WrongHash { hash, actual }) => {
                shared.reject(hash, format!("hash mismatch: bytes hash to {actual}"))
            }
            Err(Unverified::Corrupt(err)) => return Err(err),
        }
    }
    Ok(())
}

async fn push_task(
    shared: Arc<Shared>,
    bundles: async_channel::Receiver<pb::AssetBundle>,
) -> Result<(), SessionError> {
    let config = &shared.config;
    while let Ok(bundle) = bundles.recv().await {
        let size = bundle.data.len() as u64;
        let hash = bundle.hash.clone();
        let bundle = match crate::asset::Bundle::from_pb(bundle) {
            Ok(bundle) => bundle,
            Err(err) => {
                shared.reject(hash, err.to_string());
                continue;
            }
        };
        let pushed = with_retry(config.attempts, config.retry_backoff, &shared.stats, || {
            shared.can.push(bundle.clone())
        })
        .await;
        match pushed {
            Ok(pushed) => shared.stored(bundle.hash, &bundle.meta, pushed.already_existed, size),
            Err(err) => shared.reject(hash, err.to_string()),
        }
    }
    Ok(())
}
