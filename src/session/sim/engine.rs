//! What the engine does with a session's `Send` and `Receive` requests,
//! written plainly over simulated streams: frames as the real engine writes
//! them (`wire::data_stream`), read back with the real grammar
//! ([`DataStreamParser`]), verified and stored in a [`SimStore`].

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::net::{Net, StreamId};
use super::store::SimStore;
use crate::asset::{AssetHash, Bundle, MetaUpdate, MetaVersion};
use crate::engine::receive::ReceiveOutcome;
use crate::engine::send::{SendOutcome, SendPlan};
use crate::engine::{EngineConfig, EngineError, RejectReason, Rejection};
use crate::recon::compact;
use crate::wire::data_stream::{
    decode_inline, encode_done, encode_inline, encode_meta, frame, DataItem, DataStreamParser,
    LargeHeader,
};
use crate::wire::{FrameDecoder, FrameType, Violation};

/// Writes everything in `plan` from `store` over `streams` at `now` (frames
/// dealt round-robin, so they interleave across streams), each ending with
/// `DONE` and a finish. Returns what was sent and when the last finish is
/// acknowledged.
pub(crate) fn send(
    net: &mut Net,
    now: Instant,
    store: &SimStore,
    plan: &SendPlan,
    config: &EngineConfig,
    streams: &[StreamId],
) -> (SendOutcome, Instant) {
    let mut outcome = SendOutcome::default();
    let mut frames: Vec<Bytes> = Vec::new();
    // Sizes do not matter here: each asset is pulled whole and sized by its
    // bytes. Prefixes name whatever the store holds under them.
    let by_prefix = plan.lookup.iter().flat_map(|prefix| {
        store
            .list()
            .into_iter()
            .filter(move |s| s.hash.prefix() == *prefix)
            .map(|s| s.hash)
    });
    let hashes: Vec<_> = plan
        .assets
        .iter()
        .map(|(hash, _)| *hash)
        .chain(by_prefix)
        .chain(plan.wanted.iter().copied())
        .collect();
    for hash in &hashes {
        let pulled = store.pull(&[*hash]);
        let Some(bundle) = pulled.bundles.into_iter().next() else {
            outcome.failed.push(Rejection {
                hash: *hash,
                reason: RejectReason::Vanished,
            });
            continue;
        };
        outcome.assets += 1;
        outcome.bytes += bundle.data.len() as u64;
        if bundle.data.len() as u64 <= config.inline_limit {
            frames.push(encode_inline(bundle, config.zstd_level));
        } else {
            frames.extend(large_frames(bundle, config.chunk_bytes));
        }
    }
    for hash in &plan.meta {
        if let Some((_, meta)) = store.meta(*hash) {
            frames.push(encode_meta(&MetaUpdate::of(*hash, &meta)));
            outcome.meta += 1;
        }
    }
    // Large assets keep their frames together on one stream.
    let mut per_stream: Vec<Vec<Bytes>> = vec![Vec::new(); streams.len().max(1)];
    let mut next = 0;
    let mut in_asset = false;
    for frame in frames {
        let kind = frame[0];
        per_stream[next].push(frame);
        in_asset = match kind {
            k if k == u8::from(FrameType::AssetBegin) => true,
            k if k == u8::from(FrameType::AssetEnd) => false,
            _ => in_asset,
        };
        if !in_asset {
            next = (next + 1) % per_stream.len();
        }
    }
    let mut acked = now;
    for (id, frames) in streams.iter().zip(per_stream) {
        for frame in frames {
            net.send(*id, now, &frame);
        }
        net.send(*id, now, &encode_done(0, 0));
        acked = acked.max(net.finish(*id, now));
        outcome.wire_bytes += net.written(*id);
    }
    (outcome, acked)
}

/// A large asset as `ASSET_BEGIN`, raw chunks, `ASSET_END`.
fn large_frames(bundle: Bundle, chunk_bytes: usize) -> Vec<Bytes> {
    let header = LargeHeader {
        hash: bundle.hash,
        size: bundle.data.len() as u64,
        meta: bundle.meta,
        zstd: false,
        ranges: None,
        outboard_omitted: false,
    };
    let mut frames = vec![header.encode()];
    frames.extend(
        bundle
            .data
            .chunks(chunk_bytes.max(1))
            .map(|chunk| frame(FrameType::AssetChunk, chunk)),
    );
    frames.push(frame(FrameType::AssetEnd, &[]));
    frames
}

/// One data stream being received.
struct Incoming {
    id: StreamId,
    decoder: FrameDecoder,
    buf: BytesMut,
    parser: DataStreamParser,
    /// The large asset being assembled.
    large: Option<(LargeHeader, BytesMut)>,
    ended: bool,
}

/// The receive side of a transfer over simulated streams.
pub(crate) struct Receive {
    streams: Vec<Incoming>,
    limit: usize,
    outcome: ReceiveOutcome,
}

impl Receive {
    /// Receives `streams`, frames up to `config`'s limit; `leftover` holds
    /// bytes of the first stream already read (a live answer's).
    pub(crate) fn new(streams: &[StreamId], config: &EngineConfig, leftover: BytesMut) -> Self {
        let mut incoming: Vec<Incoming> = streams
            .iter()
            .map(|id| Incoming {
                id: *id,
                decoder: FrameDecoder::new(config.max_frame_len()),
                buf: BytesMut::new(),
                parser: DataStreamParser::default(),
                large: None,
                ended: false,
            })
            .collect();
        if let Some(first) = incoming.first_mut() {
            first.buf = leftover;
        }
        Self {
            streams: incoming,
            limit: config.max_frame_len() as usize,
            outcome: ReceiveOutcome::default(),
        }
    }

    /// Reads what arrived by `now` into `store`; the outcome once every
    /// stream has ended after its `DONE`, or the violation that stopped it.
    pub(crate) fn poll(
        &mut self,
        net: &mut Net,
        now: Instant,
        store: &mut SimStore,
    ) -> Option<Result<ReceiveOutcome, EngineError>> {
        for i in 0..self.streams.len() {
            if let Err(violation) = self.read(i, net, now, store) {
                return Some(Err(violation.into()));
            }
        }
        self.streams
            .iter()
            .all(|s| s.ended)
            .then(|| Ok(std::mem::take(&mut self.outcome)))
    }

    fn read(
        &mut self,
        i: usize,
        net: &mut Net,
        now: Instant,
        store: &mut SimStore,
    ) -> Result<(), Violation> {
        if self.streams[i].ended {
            return Ok(());
        }
        let id = self.streams[i].id;
        let arrived = net.take_ready(id, now);
        self.streams[i].buf.extend_from_slice(&arrived);
        let fin = net.fin_ready(id, now);
        loop {
            let stream = &mut self.streams[i];
            let frame = if fin {
                stream.decoder.decode_eof(&mut stream.buf)?
            } else {
                stream.decoder.decode(&mut stream.buf)?
            };
            let Some(frame) = frame else {
                if fin {
                    stream.parser.handle_end()?;
                    stream.ended = true;
                }
                return Ok(());
            };
            self.outcome.wire_bytes += frame.encoded_len() as u64;
            let item = stream.parser.handle_frame(frame)?;
            self.handle(i, item, store)?;
        }
    }

    fn handle(&mut self, i: usize, item: DataItem, store: &mut SimStore) -> Result<(), Violation> {
        match item {
            DataItem::Inline { zstd, payload } => {
                let bundle = decode_inline(zstd, payload, self.limit)?;
                self.store(bundle, store);
            }
            DataItem::Meta(update) => {
                if matches!(store.apply_meta(&update), Ok(true)) {
                    self.outcome.meta_applied += 1;
                }
            }
            DataItem::Begin(header) => self.streams[i].large = Some((header, BytesMut::new())),
            DataItem::Chunk(chunk) => {
                let (header, data) = self.streams[i].large.as_mut().expect("after BEGIN");
                if (data.len() + chunk.len()) as u64 > header.size {
                    return Err(Violation::PastDeclaredSize {
                        hash: header.hash,
                        size: header.size,
                    });
                }
                data.extend_from_slice(&chunk);
            }
            DataItem::End => {
                let (header, data) = self.streams[i].large.take().expect("after BEGIN");
                self.store(
                    Bundle {
                        hash: header.hash,
                        data: data.freeze(),
                        meta: header.meta,
                    },
                    store,
                );
            }
            // The simulated engine sends no ranged assets; a ranged one
            // would still be checked whole at its end.
            DataItem::Outboard(_) | DataItem::Done(_) => {}
        }
        Ok(())
    }

    /// Verifies and stores one asset, or rejects it.
    fn store(&mut self, bundle: Bundle, store: &mut SimStore) {
        let actual = AssetHash::of(&bundle.data);
        if actual != bundle.hash {
            self.outcome.rejected.push(Rejection {
                hash: bundle.hash,
                reason: RejectReason::HashMismatch { actual },
            });
            return;
        }
        let (hash, size) = (bundle.hash, bundle.data.len() as u64);
        let version = MetaVersion::of(&bundle.meta).truncated(compact::DIGEST_PREFIX);
        match store.push(bundle) {
            Ok(pushed) if pushed.already_existed => self.outcome.duplicates += 1,
            Ok(_) => {
                self.outcome.assets += 1;
                self.outcome.bytes += size;
                self.outcome.stored.push((hash, version));
            }
            Err(err) => self.outcome.rejected.push(Rejection {
                hash,
                reason: RejectReason::Store(err.to_string()),
            }),
        }
    }
}
