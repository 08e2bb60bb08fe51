//! The grammar of a v2 data stream, both ways: which frames may follow which,
//! and how an asset becomes frames.
//!
//! ```text
//! data stream = *( inline | META_UPDATE | large ) DONE
//! inline      = ASSET_BUNDLE | BUNDLE_ZSTD
//! large       = ASSET_BEGIN *ASSET_OUTBOARD *ASSET_CHUNK ASSET_END
//! ```
//!
//! `ASSET_OUTBOARD` frames come only after the `ASSET_BEGIN` of a *ranged*
//! asset (HELLO feature `ranges`), and carry its whole outboard (32 bytes
//! per group, none for an asset of one group: [`crate::can::store::ranges`])
//! before its first chunk. They are left out (the header says
//! `outboard_omitted`) only when the receiver's `WANT` said it holds the
//! outboard already: a split asset's later leases, which would otherwise
//! carry the whole outboard for each run of 16 groups (2 MiB per 16 MiB
//! at the largest ranged size). A ranged asset's chunks are its groups, one per
//! `ASSET_CHUNK`, in the order of its header's ranges; the receiver checks
//! the outboard against the hash and each group against the outboard as it
//! arrives, so a bad range is found where it is, and what came before it is
//! kept.
//!
//! [`DataStreamParser`] checks a received stream against it, frame by frame,
//! and hands out typed [`DataItem`]s; the encoders below write it. Inline
//! payloads and chunks stay encoded here: decompressing and hashing them is
//! CPU work the receiver schedules (the engine, through [`crate::cpu`]), and the
//! size a large asset's chunks add up to is checked there, after decoding.
//!
//! Invariants: nothing follows `DONE` (the sender finishes the stream); a
//! stream that ends anywhere but after `DONE` is a violation, never a short
//! success; every hash is parsed here, so a malformed one is a violation.

use bytes::{Bytes, BytesMut};
use prost::Message;

use std::ops::Range;

use super::compress;
use super::{encode_frame, Frame, FrameType, Violation};
use crate::asset::{AssetHash, Bundle, MetaUpdate};
use crate::can::store::ranges;
use crate::pb;

/// The stream name violations carry.
const STREAM: &str = "a data stream";

/// One step of a data stream.
#[derive(Debug, Clone, PartialEq)]
pub enum DataItem {
    /// An inline asset, still encoded: a protobuf `AssetBundle`, zstd-compressed
    /// when `zstd` is set.
    Inline {
        /// Whether the payload is a zstd frame (`BUNDLE_ZSTD`).
        zstd: bool,
        /// The payload.
        payload: Bytes,
    },
    /// Newer metadata of one asset.
    Meta(MetaUpdate),
    /// The start of an asset above the inline limit; chunks follow.
    Begin(LargeHeader),
    /// Group values of the outboard of the ranged asset begun last (a
    /// multiple of 32 bytes).
    Outboard(Bytes),
    /// One chunk of the asset begun last, encoded as its header says.
    Chunk(Bytes),
    /// The end of the asset begun last.
    End,
    /// The end of the stream, with the sender's count of what it carried.
    Done(pb::StreamDone),
}

/// The header of an asset streamed in chunks (`ASSET_BEGIN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LargeHeader {
    /// The asset's hash, checked by the receiver over all chunks.
    pub hash: AssetHash,
    /// Its size; chunks that decode to more are a violation.
    pub size: u64,
    /// Its metadata.
    pub meta: pb::AssetMeta,
    /// Whether each chunk is a zstd frame (else raw bytes).
    pub zstd: bool,
    /// Ranged (HELLO feature `ranges`): the groups sent, in order, one per
    /// chunk, after the outboard. `None`: the asset's bytes in chunks of any
    /// size, checked whole at the end.
    pub ranges: Option<Vec<Range<u64>>>,
    /// Ranged only: no `ASSET_OUTBOARD` follows, the receiver said it
    /// holds the outboard (`Resume.outboard_held`).
    pub outboard_omitted: bool,
}

impl LargeHeader {
    /// Parses an `ASSET_BEGIN` payload.
    fn decode(payload: &[u8]) -> Result<Self, Violation> {
        let header: pb::AssetHeader = Violation::decode("AssetHeader", payload)?;
        let zstd = match header.codec.as_str() {
            CODEC_ZSTD => true,
            CODEC_RAW | "" => false,
            other => return Err(Violation::UnknownCodec(other.to_owned())),
        };
        let groups = ranges::group_count(header.size);
        if header.ranged && groups > ranges::MAX_RANGED_GROUPS {
            return Err(Violation::Ranges(format!(
                "a ranged asset of {} bytes, more than {} groups",
                header.size,
                ranges::MAX_RANGED_GROUPS
            )));
        }
        let ranges = match (header.ranged, header.ranges.is_empty()) {
            (false, true) => None,
            (false, false) => {
                return Err(Violation::Ranges(
                    "ranges in the header of an asset that is not ranged".into(),
                ))
            }
            (true, true) => Some(ranges::all_groups(header.size)),
            (true, false) => Some(
                ranges::parse_ranges(&header.ranges, groups)
                    .map_err(|err| Violation::Ranges(err.to_string()))?,
            ),
        };
        if header.outboard_omitted && ranges.is_none() {
            return Err(Violation::Ranges(
                "an outboard omitted for an asset that is not ranged".into(),
            ));
        }
        Ok(Self {
            hash: AssetHash::from_slice(&header.hash)?,
            size: header.size,
            meta: header.meta.unwrap_or_default(),
            zstd,
            ranges,
            outboard_omitted: header.outboard_omitted,
        })
    }

    /// Bytes of outboard that follow this header.
    pub fn outboard_bytes(&self) -> u64 {
        match self.ranges {
            Some(_) if !self.outboard_omitted => {
                ranges::outboard_len(self.size) * ranges::CV_BYTES as u64
            }
            _ => 0,
        }
    }

    /// The `ASSET_BEGIN` frame of this header.
    pub fn encode(&self) -> Bytes {
        let header = pb::AssetHeader {
            hash: Bytes::copy_from_slice(self.hash.as_bytes()),
            size: self.size,
            meta: Some(self.meta.clone()),
            codec: if self.zstd { CODEC_ZSTD } else { CODEC_RAW }.into(),
            ranged: self.ranges.is_some(),
            ranges: match &self.ranges {
                Some(sent) if *sent != ranges::all_groups(self.size) => {
                    ranges::flatten_ranges(sent)
                }
                _ => Vec::new(),
            },
            outboard_omitted: self.outboard_omitted,
        };
        frame(FrameType::AssetBegin, &header.encode_to_vec())
    }
}

/// The chunk codec name of zstd chunks in `ASSET_BEGIN`.
pub const CODEC_ZSTD: &str = "zstd";
/// The chunk codec name of raw chunks in `ASSET_BEGIN`.
pub const CODEC_RAW: &str = "raw";

/// Where a received data stream is in its grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between items.
    Items,
    /// After a ranged asset's header: this many bytes of its outboard
    /// are still to come.
    InOutboard(u64),
    /// Inside a large asset: chunks or its end.
    InAsset,
    /// After `DONE`: only the end of the stream.
    Done,
}

/// Checks a received data stream against the grammar, one frame at a time.
#[derive(Debug)]
pub struct DataStreamParser {
    state: State,
}

impl Default for DataStreamParser {
    fn default() -> Self {
        Self {
            state: State::Items,
        }
    }
}

impl DataStreamParser {
    /// The item `frame` carries, or how it breaks the grammar.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<DataItem, Violation> {
        let Frame {
            frame_type,
            payload,
        } = frame;
        let unexpected = |expected| Violation::Unexpected {
            expected,
            got: frame_type,
            stream: STREAM,
        };
        match self.state {
            State::Done => Err(Violation::AfterDone(frame_type)),
            State::InOutboard(left) => match frame_type {
                FrameType::AssetOutboard => {
                    let len = payload.len() as u64;
                    if len == 0 || len > left || !len.is_multiple_of(ranges::CV_BYTES as u64) {
                        return Err(Violation::Ranges(format!(
                            "an ASSET_OUTBOARD of {len} bytes where {left} bytes of \
                             32-byte values remain"
                        )));
                    }
                    self.state = match left - len {
                        0 => State::InAsset,
                        left => State::InOutboard(left),
                    };
                    Ok(DataItem::Outboard(payload))
                }
                _ => Err(unexpected("ASSET_OUTBOARD")),
            },
            State::InAsset => match frame_type {
                FrameType::AssetChunk => Ok(DataItem::Chunk(payload)),
                FrameType::AssetEnd => {
                    self.state = State::Items;
                    Ok(DataItem::End)
                }
                _ => Err(unexpected("ASSET_CHUNK or ASSET_END")),
            },
            State::Items => match frame_type {
                FrameType::AssetBundle | FrameType::BundleZstd => Ok(DataItem::Inline {
                    zstd: frame_type == FrameType::BundleZstd,
                    payload,
                }),
                FrameType::MetaUpdate => {
                    let update: pb::MetaUpdate = Violation::decode("MetaUpdate", &payload)?;
                    Ok(DataItem::Meta(MetaUpdate::from_pb(update)?))
                }
                FrameType::AssetBegin => {
                    let header = LargeHeader::decode(&payload)?;
                    self.state = match header.outboard_bytes() {
                        0 => State::InAsset,
                        bytes => State::InOutboard(bytes),
                    };
                    Ok(DataItem::Begin(header))
                }
                FrameType::Done => {
                    self.state = State::Done;
                    Ok(DataItem::Done(Violation::decode("StreamDone", &payload)?))
                }
                _ => Err(unexpected(
                    "ASSET_BUNDLE, BUNDLE_ZSTD, META_UPDATE, ASSET_BEGIN or DONE",
                )),
            },
        }
    }

    /// The stream ended cleanly: fine only after `DONE`.
    pub fn handle_end(&self) -> Result<(), Violation> {
        match self.state {
            State::Done => Ok(()),
            State::Items => Err(Violation::EndedEarly {
                missing: "DONE",
                stream: STREAM,
            }),
            State::InAsset | State::InOutboard(_) => Err(Violation::EndedEarly {
                missing: "ASSET_END",
                stream: STREAM,
            }),
        }
    }
}

/// Decodes an inline asset: decompresses it (never past `limit` bytes),
/// parses the bundle and its hash. CPU work: the receiver runs a large one
/// off the reactor. The bytes are not verified here.
pub fn decode_inline(zstd: bool, payload: Bytes, limit: usize) -> Result<Bundle, Violation> {
    let raw = if zstd {
        Bytes::from(compress::decompress_bounded(&payload, limit)?)
    } else {
        payload
    };
    let bundle: pb::AssetBundle = Violation::decode("AssetBundle", &raw)?;
    Ok(Bundle::from_pb(bundle)?)
}

/// The frame of one inline asset: `BUNDLE_ZSTD` when a sample of its bytes
/// compresses, else a plain `ASSET_BUNDLE`. CPU work: the sender runs a
/// large one off the reactor.
pub fn encode_inline(bundle: Bundle, level: i32) -> Bytes {
    let compressible = compress::worth_compressing(&bundle.data);
    let encoded = bundle.into_pb().encode_to_vec();
    if compressible {
        frame(FrameType::BundleZstd, &compress::compress(&encoded, level))
    } else {
        frame(FrameType::AssetBundle, &encoded)
    }
}

/// The `META_UPDATE` frame of `update`.
pub fn encode_meta(update: &MetaUpdate) -> Bytes {
    frame(FrameType::MetaUpdate, &update.to_pb().encode_to_vec())
}

/// The `DONE` frame that ends a data stream.
pub fn encode_done(assets: u64, bytes: u64) -> Bytes {
    frame(
        FrameType::Done,
        &pb::StreamDone { assets, bytes }.encode_to_vec(),
    )
}

/// One encoded frame. Every payload here is far below the 4 GiB the length
/// field can express.
pub(crate) fn frame(frame_type: FrameType, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(super::HEADER_LEN + payload.len());
    encode_frame(frame_type, payload, &mut out).expect("payloads here are below 4 GiB");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FrameDecoder;

    fn bundle(data: &'static [u8]) -> Bundle {
        Bundle {
            hash: AssetHash::of(data),
            data: Bytes::from_static(data),
            meta: pb::AssetMeta {
                name: "n".into(),
                ..Default::default()
            },
        }
    }

    /// Every frame of `wire`, decoded.
    fn frames(wire: &[Bytes]) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        for part in wire {
            buf.extend_from_slice(part);
        }
        let mut decoder = FrameDecoder::default();
        let mut out = Vec::new();
        while let Some(frame) = decoder.decode_eof(&mut buf).unwrap() {
            out.push(frame);
        }
        out
    }

    #[test]
    fn a_well_formed_stream_parses_item_by_item() {
        let text = bundle(b"{\"k\":\"v\"}{\"k\":\"v\"}{\"k\":\"v\"}{\"k\":\"v\"}");
        let header = LargeHeader {
            hash: AssetHash::of(b"large"),
            size: 5,
            meta: pb::AssetMeta::default(),
            zstd: false,
            ranges: None,
            outboard_omitted: false,
        };
        let update = MetaUpdate::of(text.hash, &text.meta);
        let wire = [
            encode_inline(text.clone(), 3),
            encode_meta(&update),
            header.encode(),
            frame(FrameType::AssetChunk, b"lar"),
            frame(FrameType::AssetChunk, b"ge"),
            frame(FrameType::AssetEnd, &[]),
            encode_done(2, 5 + text.data.len() as u64),
        ];
        let mut parser = DataStreamParser::default();
        let items: Vec<DataItem> = frames(&wire)
            .into_iter()
            .map(|f| parser.handle_frame(f).unwrap())
            .collect();
        parser.handle_end().unwrap();
        match &items[0] {
            DataItem::Inline { zstd, payload } => {
                assert_eq!(
                    decode_inline(*zstd, payload.clone(), 1 << 20).unwrap(),
                    text
                );
            }
            other => panic!("expected an inline asset, got {other:?}"),
        }
        assert_eq!(items[1], DataItem::Meta(update));
        assert_eq!(items[2], DataItem::Begin(header));
        assert_eq!(items[3], DataItem::Chunk(Bytes::from_static(b"lar")));
        assert_eq!(items[5], DataItem::End);
        assert!(matches!(&items[6], DataItem::Done(d) if d.assets == 2));
    }

    #[test]
    fn frames_out_of_place_are_violations() {
        let chunk = || Frame::new(FrameType::AssetChunk, &b"x"[..]);
        let mut parser = DataStreamParser::default();
        assert!(matches!(
            parser.handle_frame(chunk()),
            Err(Violation::Unexpected {
                got: FrameType::AssetChunk,
                ..
            })
        ));
        let mut parser = DataStreamParser::default();
        parser
            .handle_frame(Frame::new(FrameType::Done, Bytes::new()))
            .unwrap();
        assert!(matches!(
            parser.handle_frame(chunk()),
            Err(Violation::AfterDone(FrameType::AssetChunk))
        ));
        let mut parser = DataStreamParser::default();
        assert!(matches!(
            parser.handle_frame(Frame::new(FrameType::Hello, Bytes::new())),
            Err(Violation::Unexpected {
                got: FrameType::Hello,
                ..
            })
        ));
    }

    #[test]
    fn an_early_end_is_a_violation_never_a_short_success() {
        assert!(matches!(
            DataStreamParser::default().handle_end(),
            Err(Violation::EndedEarly {
                missing: "DONE",
                ..
            })
        ));
        let mut parser = DataStreamParser::default();
        let header = LargeHeader {
            hash: AssetHash::of(b"x"),
            size: 1,
            meta: pb::AssetMeta::default(),
            zstd: true,
            ranges: None,
            outboard_omitted: false,
        };
        let begin = frames(&[header.encode()]).remove(0);
        parser.handle_frame(begin).unwrap();
        assert!(matches!(
            parser.handle_end(),
            Err(Violation::EndedEarly {
                missing: "ASSET_END",
                ..
            })
        ));
    }

    #[test]
    fn bad_headers_are_violations() {
        let mut parser = DataStreamParser::default();
        let unknown_codec = pb::AssetHeader {
            hash: Bytes::copy_from_slice(AssetHash::of(b"x").as_bytes()),
            size: 1,
            meta: None,
            codec: "lz4".into(),
            ..Default::default()
        };
        assert!(matches!(
            parser.handle_frame(Frame::new(
                FrameType::AssetBegin,
                unknown_codec.encode_to_vec()
            )),
            Err(Violation::UnknownCodec(codec)) if codec == "lz4"
        ));
        let short_hash = pb::AssetHeader {
            hash: Bytes::from_static(&[1; 31]),
            codec: CODEC_RAW.into(),
            ..unknown_codec
        };
        assert!(matches!(
            parser.handle_frame(Frame::new(
                FrameType::AssetBegin,
                short_hash.encode_to_vec()
            )),
            Err(Violation::MalformedHash(_))
        ));
        let bad_meta = pb::MetaUpdate {
            hash: "nothex".into(),
            ..Default::default()
        };
        assert!(matches!(
            parser.handle_frame(Frame::new(FrameType::MetaUpdate, bad_meta.encode_to_vec())),
            Err(Violation::MalformedHash(_))
        ));
    }

    /// An outboard left out (the receiver said it holds it) means the
    /// ranged asset's chunks come straight after its header, and an
    /// `ASSET_OUTBOARD` there is out of place; on an asset that is not
    /// ranged it is a violation.
    #[test]
    // One run of groups: a list of one range is meant.
    #[allow(clippy::single_range_in_vec_init)]
    fn an_omitted_outboard_is_followed_by_chunks() {
        let size = 3 * ranges::GROUP_BYTES;
        let header = LargeHeader {
            hash: AssetHash::of(b"large"),
            size,
            meta: pb::AssetMeta::default(),
            zstd: false,
            ranges: Some(vec![1..3]),
            outboard_omitted: true,
        };
        assert_eq!(header.outboard_bytes(), 0);
        let sent = LargeHeader {
            outboard_omitted: false,
            ..header.clone()
        };
        assert_eq!(sent.outboard_bytes(), 3 * ranges::CV_BYTES as u64);

        let mut parser = DataStreamParser::default();
        let begin = frames(&[header.encode()]).remove(0);
        assert_eq!(
            parser.handle_frame(begin).unwrap(),
            DataItem::Begin(header.clone())
        );
        let outboard = Frame::new(FrameType::AssetOutboard, vec![0; ranges::CV_BYTES]);
        assert!(parser.handle_frame(outboard).is_err());
        let mut parser = DataStreamParser::default();
        parser
            .handle_frame(frames(&[header.encode()]).remove(0))
            .unwrap();
        let chunk = Frame::new(FrameType::AssetChunk, vec![0; 10]);
        assert!(matches!(parser.handle_frame(chunk), Ok(DataItem::Chunk(_))));

        let not_ranged = pb::AssetHeader {
            hash: Bytes::copy_from_slice(AssetHash::of(b"x").as_bytes()),
            size,
            codec: CODEC_RAW.into(),
            outboard_omitted: true,
            ..Default::default()
        };
        assert!(matches!(
            DataStreamParser::default().handle_frame(Frame::new(
                FrameType::AssetBegin,
                not_ranged.encode_to_vec()
            )),
            Err(Violation::Ranges(why)) if why.contains("not ranged")
        ));
    }

    #[test]
    fn a_zstd_bomb_is_a_violation_not_an_allocation() {
        let bomb = compress::compress(&vec![0u8; 8 << 20], 19);
        assert!(matches!(
            decode_inline(true, Bytes::from(bomb), 1 << 20),
            Err(Violation::Compression(_))
        ));
    }
}
