//! One large asset on a writer's stream: read from the CAN as a byte stream
//! and sent as `ASSET_BEGIN`, `ASSET_CHUNK`…, `ASSET_END`, never holding more
//! than one chunk. Whether the chunks are zstd-compressed is decided on the
//! first one and announced in `ASSET_BEGIN`.
//!
//! With verified ranges (HELLO feature `ranges`) the asset goes as its
//! outboard (`ASSET_OUTBOARD` frames, from [`Can::outboard`](crate::can::Can::outboard))
//! and then one chunk per group, only the groups the peer lacks when it
//! named them in its `WANT`. A source that cannot read a group whole ends
//! the asset early: the receiver keeps what came and asks for the rest
//! later.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::Shared;
use crate::asset::AssetHash;
use crate::can::store::ranges;
use crate::engine::{EngineError, EngineStats, RejectReason};
use crate::fault::Fault;
use crate::stream::{FrameWriter, SendHalf};
use crate::wire::data_stream::{self, LargeHeader};
use crate::wire::{compress, FrameType};

/// Streams one large asset from the CAN, by verified ranges when they are
/// on. Returns the bytes of it sent, `None` when the CAN could not deliver
/// it (recorded as failed; the receiver sees a short asset and rejects it,
/// keeping what it can). Bytes are counted in the engine's stats as they
/// go: by group when ranged, so a cut transfer counts what it sent.
pub(super) async fn stream_large<W: SendHalf>(
    shared: &Shared,
    writer: &mut FrameWriter<W>,
    hash: AssetHash,
    size: u64,
) -> Result<Option<u64>, EngineError> {
    if !shared.config.ranges || ranges::group_count(size) > ranges::MAX_RANGED_GROUPS {
        shared.resume.lock().expect("resume lock").take(&hash);
        return stream_whole(shared, writer, hash, size).await;
    }
    let asked = shared.resume.lock().expect("resume lock").take(&hash);
    // A split asset is asked for once per lease: its outboard is found (or
    // computed) once.
    let cached = shared.outboards.lock().expect("outboards lock").get(&hash);
    let kept = match cached {
        Some(outboard) => Ok(Some(outboard)),
        // Where an outboard costs a request, an asset asked for whole that
        // a lease could hold goes whole: its ranges would buy a receiver
        // cut midway at most a lease's worth, for a round trip per asset
        // (measured: 256 assets of 4 MiB from a CAN service, 15% slower).
        None if asked.is_none()
            && shared.can.outboards_cost_a_request()
            && ranges::group_count(size) <= crate::engine::split::LEASE_GROUPS =>
        {
            return stream_whole(shared, writer, hash, size).await;
        }
        None => shared.retried(|| shared.can.outboard(hash)).await,
    };
    let outboard = match (kept, &asked) {
        // An outboard of another size is no use (and an empty one, for an
        // asset of one group, proves nothing of its size): the asset goes
        // whole, checked by its hash.
        (Ok(Some(outboard)), None) if outboard.size() != size => {
            return stream_whole(shared, writer, hash, size).await
        }
        (Ok(Some(outboard)), _) => outboard,
        // Where the outboard is another process's answer, its failure is
        // no reason not to send the asset whole when that was asked.
        (Err(err), None) if shared.can.outboards_cost_a_request() => {
            tracing::debug!(%hash, error = %err, "no outboard from the CAN; sending the asset whole");
            return stream_whole(shared, writer, hash, size).await;
        }
        // A store that keeps no outboards: read the asset through for one
        // only when the peer holds part of it; else send it whole (the
        // peer takes either).
        (Ok(None), None) => return stream_whole(shared, writer, hash, size).await,
        (Ok(None), Some(_)) => {
            match shared
                .retried(|| crate::can::outboard_by_reading(shared.can.as_ref(), hash))
                .await
            {
                Ok(Some(outboard)) => outboard,
                Ok(None) => {
                    shared.fail(hash, RejectReason::Vanished);
                    return Ok(None);
                }
                Err(err) => {
                    shared.store_failed(hash, &err);
                    return Ok(None);
                }
            }
        }
        (Err(err), _) => {
            shared.store_failed(hash, &err);
            return Ok(None);
        }
    };
    shared
        .outboards
        .lock()
        .expect("outboards lock")
        .keep(outboard.clone());
    stream_ranged(shared, writer, hash, size, outboard, asked).await
}

/// The asset as a run of chunks of any size, checked whole at the end.
async fn stream_whole<W: SendHalf>(
    shared: &Shared,
    writer: &mut FrameWriter<W>,
    hash: AssetHash,
    size: u64,
) -> Result<Option<u64>, EngineError> {
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
            return Ok(None);
        }
        Err(err) => {
            shared.store_failed(hash, &err);
            return Ok(None);
        }
    };

    let mut header = LargeHeader {
        hash,
        size,
        meta,
        zstd: false,
        ranges: None,
        outboard_omitted: false,
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
        return Ok(None);
    }
    EngineStats::add(&shared.stats.bytes_sent, size);
    Ok(Some(size))
}

/// The asset as its outboard and the groups `asked` (all when `None`), each
/// in one chunk.
async fn stream_ranged<W: SendHalf>(
    shared: &Shared,
    writer: &mut FrameWriter<W>,
    hash: AssetHash,
    size: u64,
    outboard: crate::can::Outboard,
    asked: Option<super::RangesAsked>,
) -> Result<Option<u64>, EngineError> {
    let groups = ranges::group_count(size);
    // Left out only for a peer that holds it, and never with the whole
    // asset: a peer that asked for groups of other bytes gets it again.
    let mut outboard_omitted = asked.as_ref().is_some_and(|asked| asked.outboard_held);
    // The peer's ranges were checked for form; here against the size.
    // Ranges that name nothing of this asset (the peer's partial asset was
    // of other bytes) ask for it whole.
    let sent: Vec<Range<u64>> = asked
        .map(|asked| {
            asked
                .groups
                .into_iter()
                .map(|range| range.start.min(groups)..range.end.min(groups))
                .filter(|range| !range.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|sent| !sent.is_empty())
        .unwrap_or_else(|| {
            outboard_omitted = false;
            ranges::all_groups(size)
        });
    let meta = shared.retried(|| shared.can.meta(hash)).await;
    let meta = match meta {
        Ok(Some((_, meta))) if outboard.size() == size => meta,
        Ok(_) => {
            shared.fail(hash, RejectReason::Vanished);
            return Ok(None);
        }
        Err(err) => {
            shared.store_failed(hash, &err);
            return Ok(None);
        }
    };
    let mut reader = GroupReader::new(shared, hash, size);
    // Compression is decided on the first group sent, before the header
    // that announces it.
    let first = match sent.first() {
        Some(range) => match reader.read(range.start).await {
            Ok(group) => Some(group),
            Err(err) => {
                shared.fail(hash, RejectReason::Store(format!("reading a group: {err}")));
                return Ok(None);
            }
        },
        None => None,
    };
    let header = LargeHeader {
        hash,
        size,
        meta,
        zstd: first
            .as_ref()
            .is_some_and(|group| compress::worth_compressing(group)),
        ranges: Some(sent.clone()),
        outboard_omitted,
    };
    writer.send(header.encode()).await?;
    if !outboard_omitted {
        let cvs = outboard.encoded_cvs();
        for part in cvs.chunks(OUTBOARD_FRAME) {
            writer
                .send_payload(FrameType::AssetOutboard, Bytes::copy_from_slice(part))
                .await?;
        }
    }
    let mut bytes = 0u64;
    let mut pending = first;
    let mut source_failed = None;
    'ranges: for range in sent {
        for index in range {
            let group = match pending.take() {
                Some(group) => group,
                None => match reader.read(index).await {
                    Ok(group) => group,
                    Err(err) => {
                        source_failed = Some(err);
                        break 'ranges;
                    }
                },
            };
            let len = group.len() as u64;
            send_group(shared, writer, header.zstd, group).await?;
            bytes += len;
            EngineStats::add(&shared.stats.bytes_sent, len);
        }
    }
    writer
        .send(data_stream::frame(FrameType::AssetEnd, &[]))
        .await?;
    if let Some(err) = source_failed {
        shared.fail(hash, RejectReason::Store(format!("reading a group: {err}")));
        return Ok(None);
    }
    Ok(Some(bytes))
}

/// Most outboard bytes in one `ASSET_OUTBOARD` (16,384 groups: 16 GiB of
/// asset), well within any frame limit that holds a group.
const OUTBOARD_FRAME: usize = 16_384 * ranges::CV_BYTES;

/// Reads groups of one asset from the CAN, reopening its byte stream only
/// where a range starts elsewhere than where the last one ended.
struct GroupReader<'a> {
    shared: &'a Shared,
    hash: AssetHash,
    size: u64,
    /// The open stream and the offset of its next byte.
    open: Option<(crate::can::ByteStream, u64)>,
    /// Bytes read past the last group, the start of the next.
    spill: BytesMut,
}

impl<'a> GroupReader<'a> {
    fn new(shared: &'a Shared, hash: AssetHash, size: u64) -> Self {
        Self {
            shared,
            hash,
            size,
            open: None,
            spill: BytesMut::new(),
        }
    }

    /// Group `index`, whole.
    async fn read(&mut self, index: u64) -> Result<Bytes, crate::can::CanError> {
        let range = ranges::group_range(self.size, index);
        let len = (range.end - range.start) as usize;
        let at = self
            .open
            .as_ref()
            .map(|(_, at)| *at - self.spill.len() as u64);
        if at != Some(range.start) {
            let (_, body) = self
                .shared
                .retried(|| self.shared.can.read_blob(self.hash, range.start))
                .await?;
            self.open = Some((body, range.start));
            self.spill.clear();
        }
        let (body, at) = self.open.as_mut().expect("opened above");
        // A piece that is the whole group (the embedded store reads in
        // groups) goes on without a copy.
        if self.spill.is_empty() {
            if let Some(piece) = body.next().await.transpose()? {
                *at += piece.len() as u64;
                if piece.len() == len {
                    return Ok(piece);
                }
                self.spill.reserve(len.max(piece.len()));
                self.spill.extend_from_slice(&piece);
            }
        }
        while self.spill.len() < len {
            match body.next().await.transpose()? {
                Some(piece) => {
                    *at += piece.len() as u64;
                    self.spill.extend_from_slice(&piece);
                }
                None => {
                    return Err(crate::can::CanError::Storage(format!(
                        "the asset ended {} bytes into group {index}",
                        self.spill.len()
                    )))
                }
            }
        }
        Ok(self.spill.split_to(len).freeze())
    }
}

/// Sends one group as an `ASSET_CHUNK`, compressed when its asset's are.
async fn send_group<W: SendHalf>(
    shared: &Shared,
    writer: &mut FrameWriter<W>,
    zstd: bool,
    group: Bytes,
) -> Result<(), EngineError> {
    let level = shared.config.zstd_level;
    let payload = if zstd {
        tokio::task::spawn_blocking(move || Bytes::from(compress::compress(&group, level)))
            .await
            .map_err(|err| Fault::task("compress", err))?
    } else {
        group
    };
    writer.send_payload(FrameType::AssetChunk, payload).await?;
    Ok(())
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
