//! One large asset on a writer's stream: read from the CAN as a byte stream
//! and sent as `ASSET_BEGIN`, `ASSET_CHUNK`…, `ASSET_END`, never holding more
//! than one chunk. Whether the chunks are zstd-compressed is decided on the
//! first one and announced in `ASSET_BEGIN`.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::Shared;
use crate::asset::AssetHash;
use crate::engine::{EngineError, RejectReason};
use crate::fault::Fault;
use crate::stream::{FrameWriter, SendHalf};
use crate::wire::data_stream::{self, LargeHeader};
use crate::wire::{compress, FrameType};

/// Streams one large asset from the CAN. Returns false when the CAN could not
/// deliver it whole (recorded as failed; the receiver sees a short asset and
/// rejects it).
pub(super) async fn stream_large<W: SendHalf>(
    shared: &Shared,
    writer: &mut FrameWriter<W>,
    hash: AssetHash,
    size: u64,
) -> Result<bool, EngineError> {
    let config = &shared.config;
    let opened = shared
        .retried(|| async {
            let meta = shared.can.meta(hash).await?;
            let blob = shared.can.read_blob(hash, 0).await?;
            Ok((meta, blob))
        })
        .await;
    let (meta, mut body) = match opened {
        Ok((Some((_, meta)), (_, body))) => (meta, body),
        Ok((None, _)) => {
            shared.fail(hash, RejectReason::Vanished);
            return Ok(false);
        }
        Err(err) => {
            shared.store_failed(hash, &err);
            return Ok(false);
        }
    };

    let mut header = LargeHeader {
        hash,
        size,
        meta,
        zstd: false,
    };
    let chunk_bytes = config.chunk_bytes.max(1);
    // Where the source's pieces are gathered into chunks; a piece that is a
    // whole chunk by itself (the embedded store reads in chunks of the
    // default size) goes out as it is, without a copy.
    let mut pending = BytesMut::new();
    // Decided on the first chunk, announced in ASSET_BEGIN.
    let mut zstd: Option<bool> = None;
    let mut source_failed = None;
    loop {
        let finished = match body.next().await {
            Some(Ok(bytes)) if pending.is_empty() && bytes.len() == chunk_bytes => {
                send_chunk(shared, writer, &mut header, &mut zstd, bytes).await?;
                continue;
            }
            Some(Ok(bytes)) => {
                if pending.is_empty() {
                    // Room for a whole chunk at once: it does not grow (and
                    // copy itself) piece by piece.
                    pending.reserve(chunk_bytes);
                }
                pending.extend_from_slice(&bytes);
                false
            }
            Some(Err(err)) => {
                source_failed = Some(err);
                true
            }
            None => true,
        };
        while pending.len() >= chunk_bytes || (finished && !pending.is_empty()) {
            let chunk = pending.split_to(pending.len().min(chunk_bytes)).freeze();
            send_chunk(shared, writer, &mut header, &mut zstd, chunk).await?;
        }
        if finished {
            break;
        }
    }
    if zstd.is_none() {
        // Nothing came from the source: still announce the asset, so the
        // receiver sees a complete (if short) record and decides.
        writer.send(header.encode()).await?;
    }
    writer
        .send(data_stream::frame(FrameType::AssetEnd, &[]))
        .await?;
    if let Some(err) = source_failed {
        shared.fail(
            hash,
            RejectReason::Store(format!("reading mid-asset: {err}")),
        );
        return Ok(false);
    }
    Ok(true)
}

/// Sends one chunk of a large asset: before the first, `ASSET_BEGIN`, which
/// announces whether the chunks are compressed (decided on that first one).
async fn send_chunk<W: SendHalf>(
    shared: &Shared,
    writer: &mut FrameWriter<W>,
    header: &mut LargeHeader,
    zstd: &mut Option<bool>,
    chunk: Bytes,
) -> Result<(), EngineError> {
    let use_zstd = match *zstd {
        Some(decided) => decided,
        None => {
            header.zstd = compress::worth_compressing(&chunk);
            writer.send(header.encode()).await?;
            *zstd = Some(header.zstd);
            header.zstd
        }
    };
    let level = shared.config.zstd_level;
    let payload = if use_zstd {
        tokio::task::spawn_blocking(move || Bytes::from(compress::compress(&chunk, level)))
            .await
            .map_err(|err| Fault::task("compress", err))?
    } else {
        chunk
    };
    writer.send_payload(FrameType::AssetChunk, payload).await?;
    Ok(())
}
