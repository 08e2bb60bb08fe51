//! One asset above the inline limit, received: its chunks streamed from
//! the data stream into [`Can::write_blob`](crate::can::Can::write_blob)
//! as they come, bounded by a small queue, decompressed within what may
//! remain of its declared size. The CAN hashes it on the way and commits it
//! only if the whole matches; an asset cut short or refused is rejected and
//! nothing of it is kept.
//!
//! A ranged asset (HELLO feature `ranges`) goes instead into
//! [`Can::write_ranges`](crate::can::Can::write_ranges): its outboard first,
//! checked against the hash, then its groups, each checked by the store as
//! it comes. A store that keeps partial assets keeps the groups that
//! verified when the asset is cut short or a group is bad.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tracing::debug;

use super::{next_frame, Shared};
use crate::can::store::ranges;
use crate::can::{CanError, Outboard, RangesWritten};
use crate::engine::claims::LeaseEnd;
use crate::engine::{EngineError, RejectReason};
use crate::fault::Fault;
use crate::stream::{FrameReader, RecvHalf};
use crate::wire::data_stream::{DataItem, DataStreamParser, LargeHeader};
use crate::wire::{compress, Violation};

/// Streams one large asset from `reader` into the CAN, chunk by chunk, or
/// group by group when it is ranged.
pub(super) async fn receive_large<R: RecvHalf>(
    shared: &Shared,
    reader: &mut FrameReader<R>,
    parser: &mut DataStreamParser,
    header: LargeHeader,
) -> Result<(), EngineError> {
    if header.ranges.is_some() {
        if !shared.config.ranges {
            return Err(Violation::Ranges(
                "a ranged asset, where ranges were not agreed in HELLO".into(),
            )
            .into());
        }
        return receive_ranged(shared, reader, parser, header).await;
    }
    let LargeHeader {
        hash,
        size,
        meta,
        zstd,
        ranges: _,
        outboard_omitted: _,
    } = header;
    let idle = shared.config.idle_timeout;
    let limit = shared.config.max_frame_len() as usize;

    // The CAN consumes chunks as they come; the small queue is the only buffer.
    let (chunk_tx, chunk_rx) = async_channel::bounded::<Result<Bytes, CanError>>(4);
    let can = shared.can.clone();
    let write = {
        let meta = meta.clone();
        tokio::spawn(async move {
            can.write_blob_of_size(hash, meta, size, chunk_rx.boxed())
                .await
        })
    };
    // Aborts the store's write if this asset fails midway: nothing is kept.
    let mut write = AbortOnDrop(write);

    let mut received = 0u64;
    let mut write_failed = false;
    loop {
        let Some(frame) = next_frame(shared, reader, idle).await? else {
            return Err(Violation::EndedEarly {
                missing: "ASSET_END",
                stream: "a data stream",
            }
            .into());
        };
        match parser.handle_frame(frame)? {
            DataItem::Chunk(payload) => {
                let remaining = size - received;
                // One byte past what may remain is enough to see an overrun.
                let chunk = decoded(payload, zstd, (remaining as usize).min(limit) + 1).await?;
                if chunk.len() as u64 > remaining {
                    return Err(Violation::PastDeclaredSize { hash, size }.into());
                }
                received += chunk.len() as u64;
                if !write_failed && chunk_tx.send(Ok(chunk)).await.is_err() {
                    // The CAN gave up (its error comes from `write` below);
                    // keep reading to the end of this asset.
                    write_failed = true;
                }
            }
            DataItem::End => break,
            other => unreachable!("the parser yields only chunks or the end here: {other:?}"),
        }
    }
    let short = received != size;
    if short {
        let _ = chunk_tx
            .send(Err(CanError::Invalid(format!(
                "asset ended after {received} of {size} bytes"
            ))))
            .await;
    }
    drop(chunk_tx);
    let written = (&mut write.0)
        .await
        .map_err(|err| Fault::task("store write", err))?;
    if written.is_err() {
        // A leased asset sent whole (the sender could not keep our ranges).
        shared.settle_leases(&hash, LeaseEnd::Failed);
    }
    match written {
        Ok(pushed) => shared.stored(&meta, &pushed, size),
        Err(_) if short => shared.reject(hash, RejectReason::Short { received, size }),
        Err(err) => shared.refused(hash, err),
    }
    Ok(())
}

/// Receives a ranged asset: its outboard, checked against the hash, then
/// its groups into [`Can::write_ranges`](crate::can::Can::write_ranges),
/// which verifies each before it keeps it. A store that keeps partial
/// assets keeps what arrived when the sender ends early or a group is bad.
async fn receive_ranged<R: RecvHalf>(
    shared: &Shared,
    reader: &mut FrameReader<R>,
    parser: &mut DataStreamParser,
    header: LargeHeader,
) -> Result<(), EngineError> {
    let idle = shared.config.idle_timeout;
    let outboard_bytes = header.outboard_bytes();
    let LargeHeader {
        hash,
        size,
        meta,
        zstd,
        ranges,
        outboard_omitted,
    } = header;
    let ranges = ranges.unwrap_or_default();
    // The lease of a split asset this answers, if any: delivered only if
    // the sender sent exactly its groups.
    let lease = shared.match_lease(&hash, &ranges);
    let mut order = ranges.into_iter().flatten();
    let next = async |reader: &mut FrameReader<R>, parser: &mut DataStreamParser| match next_frame(
        shared, reader, idle,
    )
    .await?
    {
        Some(frame) => Ok::<_, EngineError>(parser.handle_frame(frame)?),
        None => Err(Violation::EndedEarly {
            missing: "ASSET_END",
            stream: "a data stream",
        }
        .into()),
    };

    // Skips the asset's groups (no more than its header named), keeping
    // the stream.
    let skip = async |reader: &mut FrameReader<R>,
                      parser: &mut DataStreamParser,
                      order: &mut (dyn Iterator<Item = u64> + Send)| {
        while !matches!(next(reader, parser).await?, DataItem::End) {
            if order.next().is_none() {
                return Err(EngineError::from(Violation::Ranges(format!(
                    "more groups of {hash} than its header named"
                ))));
            }
        }
        Ok(())
    };
    let outboard = if outboard_omitted {
        // Left out because the split holds it, from an earlier answer. Its
        // values are checked against the hash, not its size (a size is
        // settled by the last group): each answer's own size is taken.
        // None held and the asset stored: its split ended whole and this
        // answer is late. Else the sender left out what we do not hold.
        match shared.held_outboard(&hash) {
            Some(held) if held.size() == size => Ok(held),
            Some(held) => Outboard::decode(hash, size, &held.encoded_cvs())
                .map_err(|bad| format!("sent as {size} bytes: {bad}")),
            None if !shared.is_split(&hash)
                && matches!(shared.can.meta(hash).await, Ok(Some(_))) =>
            {
                skip(reader, parser, &mut order).await?;
                if let Some((first, _)) = lease {
                    shared.settle_lease(&hash, first, LeaseEnd::Whole);
                }
                return Ok(());
            }
            None => Err("sent without its outboard, which this node does not hold".into()),
        }
    } else {
        // The outboard grows only with bytes that arrived (the parser
        // holds the peer to the size its header declared).
        let mut cvs = BytesMut::new();
        while (cvs.len() as u64) < outboard_bytes {
            match next(reader, parser).await? {
                DataItem::Outboard(part) => cvs.extend_from_slice(&part),
                other => unreachable!("the parser yields the outboard first: {other:?}"),
            }
        }
        Outboard::decode(hash, size, &cvs).map_err(|bad| bad.to_string())
    };
    let outboard = match outboard {
        Ok(outboard) => outboard,
        Err(why) => {
            // Not the asset it claims, or nothing to check it by: the
            // sender is blamed for this asset.
            skip(reader, parser, &mut order).await?;
            if let Some((first, _)) = lease {
                shared.settle_lease(&hash, first, LeaseEnd::BadRange);
            }
            shared.reject(hash, RejectReason::BadRange(why));
            return Ok(());
        }
    };
    if lease.is_some() && !outboard_omitted {
        // Checked against the hash: the asset's later leases are asked
        // for without it.
        shared.keep_outboard(&outboard);
    }
    // What status shows beside the partial asset's progress.
    let _arriving = shared
        .from
        .map(|from| crate::engine::stats::Arriving::begin(&shared.stats, hash, from));

    let (group_tx, group_rx) = async_channel::bounded::<Result<(u64, Bytes), CanError>>(4);
    let can = shared.can.clone();
    let write = {
        let meta = meta.clone();
        tokio::spawn(async move { can.write_ranges(meta, outboard, group_rx.boxed()).await })
    };
    let mut write = AbortOnDrop(write);
    let mut received = 0u64;
    // Groups handed to the store, in the order the header named them; of
    // an answer that is exactly its lease, told to the split as they go,
    // so that a session taking the lease again asks only for the rest.
    let mut passed = 0u64;
    let arrival = match lease {
        Some((first, true)) => shared.lease_arrival(&hash, first),
        _ => None,
    };
    let mut write_failed = false;
    let read: Result<(), EngineError> = async {
        loop {
            match next(reader, parser).await? {
                DataItem::Chunk(payload) => {
                    let Some(index) = order.next() else {
                        return Err(Violation::Ranges(format!(
                            "more groups of {hash} than its header named"
                        ))
                        .into());
                    };
                    let range = ranges::group_range(size, index);
                    let len = (range.end - range.start) as usize;
                    let group = decoded(payload, zstd, len + 1).await?;
                    if group.len() != len {
                        return Err(Violation::Ranges(format!(
                            "group {index} of {hash} is {} bytes, not {len}",
                            group.len()
                        ))
                        .into());
                    }
                    received += len as u64;
                    if !write_failed && group_tx.send(Ok((index, group))).await.is_err() {
                        // The store gave up (its error comes from `write`);
                        // keep reading to the end of this asset.
                        write_failed = true;
                    }
                    passed += u64::from(!write_failed);
                    if let Some(arrival) = &arrival {
                        arrival.handed(passed);
                    }
                }
                DataItem::End => return Ok(()),
                other => {
                    unreachable!("the parser yields only chunks or the end here: {other:?}")
                }
            }
        }
    }
    .await;
    if let Err(EngineError::Peer(_)) = read {
        // The peer broke the grammar: nothing of this answer is kept (the
        // store's write is aborted with it).
        return read;
    }
    let short = read.is_err() || order.next().is_some();
    if short && !write_failed && !shared.can.keeps_partials() {
        // Cut short: a store that keeps no partial assets must not take
        // what came for the whole (and blame the sender's bytes). One that
        // keeps them keeps what came, told by the end of its groups.
        let _ = group_tx
            .send(Err(CanError::Invalid(format!(
                "asset ended after {received} bytes of the groups asked"
            ))))
            .await;
    }
    drop(group_tx);
    let written = (&mut write.0)
        .await
        .map_err(|err| Fault::task("store write", err))?;
    let exact = lease.is_some_and(|(_, exact)| exact);
    if let (Some((first, _)), true, Ok(RangesWritten::Partial { .. })) =
        (lease, exact && short, &written)
    {
        // A lease cut midway: the groups the store took stay taken, and
        // only the rest is leased again (from this source or another).
        shared.lease_written(&hash, first, passed);
    }
    let lease_end = match &written {
        Ok(RangesWritten::Whole(_)) => LeaseEnd::Whole,
        Ok(RangesWritten::Partial { .. }) if !short && exact => LeaseEnd::Delivered,
        Err(CanError::BadRange(_)) => LeaseEnd::BadRange,
        _ => LeaseEnd::Failed,
    };
    if let Some((first, _)) = lease {
        shared.settle_lease(&hash, first, lease_end);
    }
    match written {
        // Another delivery of the same split asset made it whole and
        // committed it: this lease's groups were part of it all the same.
        Ok(RangesWritten::Whole(pushed)) if lease.is_some() && pushed.already_existed => {
            shared.delivered_part(received)
        }
        Ok(RangesWritten::Whole(pushed)) => shared.stored(&meta, &pushed, received),
        Ok(RangesWritten::Partial { held, groups }) if exact && !short => {
            debug!(%hash, held, groups, "a lease of a split asset delivered");
            shared.delivered_part(received);
        }
        Ok(RangesWritten::Partial { held, groups }) => {
            debug!(%hash, held, groups, "kept part of an asset for later");
            shared.reject(hash, RejectReason::Short { received, size })
        }
        // What the store says of an asset cut short is about the cut.
        Err(err) if short && !matches!(err, CanError::BadRange(_)) => {
            debug!(%hash, %err, "an asset cut short");
            shared.reject(hash, RejectReason::Short { received, size })
        }
        Err(err) => shared.refused(hash, err),
    }
    // The stream or the connection failed mid-answer: settled above like
    // any cut answer, what the store took kept; the session ends with it.
    read
}

/// A chunk's bytes: as they came, or when its asset's chunks are zstd,
/// decompressed off the reactor and never past `bound` bytes (a peer's
/// declared size is a ceiling, not an allocation).
async fn decoded(payload: Bytes, zstd: bool, bound: usize) -> Result<Bytes, EngineError> {
    if !zstd {
        return Ok(payload);
    }
    let decoded =
        tokio::task::spawn_blocking(move || compress::decompress_bounded(&payload, bound))
            .await
            .map_err(|err| Fault::task("decompress", err))?
            .map_err(Violation::from)?;
    Ok(Bytes::from(decoded))
}

/// A spawned task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
