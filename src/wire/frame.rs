//! Frame types, the frame encoder and the incremental frame decoder.
//!
//! The layout, tags and limits are specified in the [parent module](super).

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of a frame header: one tag byte and a big-endian `u32` payload length.
pub const HEADER_LEN: usize = 5;

/// The largest payload, in bytes, a reader accepts unless told otherwise: 64 MiB.
///
/// [`FrameDecoder::default`] uses it. It bounds the memory one frame can make a
/// stream's reader hold; a frame whose header declares a longer payload is
/// rejected with [`FrameError::Oversized`] before anything is allocated for it.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 64 * 1024 * 1024;

/// The tag in the first byte of every frame: what the payload is.
///
/// The tag space is shared by both protocol versions; each variant says where it
/// is used. Convert from a byte with [`TryFrom<u8>`], to one with [`u8::from`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// `HASH_SET` (v1 only): a `PeerHashSet`, every asset summary the sender has.
    HashSet = 0x01,
    /// `ASSET_BUNDLE` (v1 and v2): one asset inline as an `AssetBundle`; v2 sends it
    /// uncompressed when compression does not pay.
    AssetBundle = 0x02,
    /// `META_UPDATE` (v1 and v2): a `MetaUpdate`, newer metadata of one asset.
    MetaUpdate = 0x03,
    /// `DONE` (v1 and v2): the last frame of a stream; empty in v1, a
    /// `StreamDone{assets, bytes}` in v2.
    Done = 0x04,
    /// `HELLO` (v2 only): a `Hello` with the version, limits, codecs and features.
    Hello = 0x05,
    /// `RECON` (v2 only): a `Recon`, one reconciliation round on the control
    /// stream or on a live-sync stream.
    Recon = 0x06,
    /// `BUNDLE_ZSTD` (v2 only): a zstd frame of an encoded `AssetBundle` of an
    /// asset within the inline limit; it inflates to at most the reader's frame
    /// limit.
    BundleZstd = 0x07,
    /// `ASSET_BEGIN` (v2 only): the `AssetHeader` of an asset above the inline limit;
    /// its bytes follow as `ASSET_CHUNK` frames.
    AssetBegin = 0x08,
    /// `ASSET_CHUNK` (v2 only): one chunk of a large asset, zstd or raw as its
    /// `AssetHeader` says.
    AssetChunk = 0x09,
    /// `ASSET_END` (v2 only): empty; ends a large asset, whose BLAKE3 the receiver
    /// then checks over all its chunks.
    AssetEnd = 0x0A,
    /// `SUMMARY` (v2 only): a `SessionSummary` of what the sender received and rejected.
    Summary = 0x0B,
    /// `WANT` (v2 only, HELLO feature `pull`): a `Want`, assets the sender
    /// asks its peer for, on the sender's want stream.
    Want = 0x0C,
    /// `ASSET_OUTBOARD` (v2 only, HELLO feature `ranges`): group values of
    /// the outboard of the ranged asset begun last, 32 bytes each.
    AssetOutboard = 0x0D,
}

impl FrameType {
    /// Every frame type, in tag order.
    pub const ALL: [Self; 13] = [
        Self::HashSet,
        Self::AssetBundle,
        Self::MetaUpdate,
        Self::Done,
        Self::Hello,
        Self::Recon,
        Self::BundleZstd,
        Self::AssetBegin,
        Self::AssetChunk,
        Self::AssetEnd,
        Self::Summary,
        Self::Want,
        Self::AssetOutboard,
    ];

    /// The protocol name of this frame type, as in the spec and in logs: `"DONE"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::HashSet => "HASH_SET",
            Self::AssetBundle => "ASSET_BUNDLE",
            Self::MetaUpdate => "META_UPDATE",
            Self::Done => "DONE",
            Self::Hello => "HELLO",
            Self::Recon => "RECON",
            Self::BundleZstd => "BUNDLE_ZSTD",
            Self::AssetBegin => "ASSET_BEGIN",
            Self::AssetChunk => "ASSET_CHUNK",
            Self::AssetEnd => "ASSET_END",
            Self::Summary => "SUMMARY",
            Self::Want => "WANT",
            Self::AssetOutboard => "ASSET_OUTBOARD",
        }
    }

    /// Whether `can-sync/1` uses this frame type.
    pub const fn in_v1(self) -> bool {
        matches!(
            self,
            Self::HashSet | Self::AssetBundle | Self::MetaUpdate | Self::Done
        )
    }

    /// Whether `can-sync/2` uses this frame type.
    pub const fn in_v2(self) -> bool {
        !matches!(self, Self::HashSet)
    }
}

impl TryFrom<u8> for FrameType {
    type Error = FrameError;

    /// Parses a tag byte; any byte not in the tag table is
    /// [`FrameError::UnknownType`].
    fn try_from(tag: u8) -> Result<Self, FrameError> {
        Ok(match tag {
            0x01 => Self::HashSet,
            0x02 => Self::AssetBundle,
            0x03 => Self::MetaUpdate,
            0x04 => Self::Done,
            0x05 => Self::Hello,
            0x06 => Self::Recon,
            0x07 => Self::BundleZstd,
            0x08 => Self::AssetBegin,
            0x09 => Self::AssetChunk,
            0x0A => Self::AssetEnd,
            0x0B => Self::Summary,
            0x0C => Self::Want,
            0x0D => Self::AssetOutboard,
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

impl From<FrameType> for u8 {
    fn from(frame_type: FrameType) -> Self {
        frame_type as Self
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One frame: a type and its payload, still encoded (protobuf, zstd or raw bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub frame_type: FrameType,
    /// The payload bytes; when decoded, they share the read buffer's memory.
    pub payload: Bytes,
}

impl Frame {
    /// A frame of `frame_type` carrying `payload`.
    pub fn new(frame_type: FrameType, payload: impl Into<Bytes>) -> Self {
        Self {
            frame_type,
            payload: payload.into(),
        }
    }

    /// The number of bytes [`Frame::encode`] writes: [`HEADER_LEN`] plus the payload.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Appends this frame to `dst`; see [`encode_frame`].
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        encode_frame(self.frame_type, &self.payload, dst)
    }
}

/// Appends one frame (header, then `payload`) to `dst`.
///
/// Fails with [`EncodeError::PayloadTooLarge`], leaving `dst` untouched, when the
/// payload is longer than `u32::MAX` bytes, the most the length field can say. It
/// does not check any reader's limit: keeping payloads within the peer's limit is
/// the sender's job.
pub fn encode_frame(
    frame_type: FrameType,
    payload: &[u8],
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let len = payload_len(payload.len())?;
    dst.reserve(HEADER_LEN + payload.len());
    dst.put_u8(frame_type.into());
    dst.put_u32(len);
    dst.put_slice(payload);
    Ok(())
}

/// The length field for a payload of `len` bytes, if the format can express it.
fn payload_len(len: usize) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| EncodeError::PayloadTooLarge { len })
}

/// Reads a frame header: its type and its payload length.
///
/// Fails with [`FrameError::UnknownType`] for a tag outside the tag table and with
/// [`FrameError::Oversized`] when the declared length exceeds `max_len`. A streaming
/// reader that fills the payload itself uses this to validate exactly as
/// [`FrameDecoder`] does, before it allocates for the payload.
pub fn parse_header(
    header: [u8; HEADER_LEN],
    max_len: u32,
) -> Result<(FrameType, u32), FrameError> {
    let [tag, len @ ..] = header;
    let frame_type = FrameType::try_from(tag)?;
    let len = u32::from_be_bytes(len);
    if len > max_len {
        return Err(FrameError::Oversized { len, max: max_len });
    }
    Ok((frame_type, len))
}

/// Splits a byte stream into [`Frame`]s, incrementally, never reserving memory
/// for what has not arrived.
///
/// The caller owns the buffer: it appends whatever bytes arrive, calls
/// [`decode`](Self::decode) until it returns `Ok(None)`, and when the stream ends
/// calls [`decode_eof`](Self::decode_eof) until it returns `Ok(None)`. After an
/// error the stream cannot be resynchronised: stop reading it.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    /// The largest payload accepted; a longer declared length is an error before any
    /// memory is reserved for it.
    max_len: u32,
}

impl FrameDecoder {
    /// A decoder that accepts payloads of at most `max_len` bytes.
    pub fn new(max_len: u32) -> Self {
        Self { max_len }
    }

    /// The largest payload this decoder accepts.
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    /// Takes the next whole frame off the front of `src`.
    ///
    /// Returns `Ok(None)` when `src` does not yet hold a whole frame: that is not an
    /// error, append more bytes and call again. Returns `Ok(Some(frame))` after
    /// consuming exactly that frame's bytes. As soon as the header is buffered its
    /// tag and length are checked (see [`parse_header`]); an invalid header is an
    /// error. Nothing is ever reserved in `src`: a declared length is a ceiling,
    /// and the caller's buffer grows only with bytes that arrived.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some((frame_type, frame_len)) = self.peek_header(src)? else {
            return Ok(None);
        };
        if src.len() < frame_len {
            return Ok(None);
        }
        let mut frame = src.split_to(frame_len);
        frame.advance(HEADER_LEN);
        Ok(Some(Frame {
            frame_type,
            payload: frame.freeze(),
        }))
    }

    /// How many more bytes the frame at the front of `src` needs before
    /// [`decode`](Self::decode) can return it (the rest of the header when even
    /// that is incomplete). A reader uses it to size its next read; a header
    /// that will fail to decode counts as needing nothing.
    pub fn missing(&self, src: &[u8]) -> usize {
        match self.peek_header(src) {
            Ok(Some((_, frame_len))) => frame_len.saturating_sub(src.len()),
            Ok(None) => HEADER_LEN - src.len(),
            Err(_) => 0,
        }
    }

    /// Like [`decode`](Self::decode), for when the stream has ended and no more
    /// bytes will come.
    ///
    /// Returns the next frame if a whole one is buffered and `Ok(None)` once `src` is
    /// empty. Bytes left over that do not make a whole frame are
    /// [`FrameError::Truncated`]: a stream that ends mid-frame never looks like a
    /// clean end.
    pub fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if src.is_empty() {
            return Ok(None);
        }
        let expected = match self.peek_header(src)? {
            Some((_, frame_len)) => frame_len,
            None => HEADER_LEN,
        };
        Err(FrameError::Truncated {
            expected,
            got: src.len(),
        })
    }

    /// The type and total encoded length (header included) of the frame at the front
    /// of `src`, once its header is buffered and valid.
    fn peek_header(&self, src: &[u8]) -> Result<Option<(FrameType, usize)>, FrameError> {
        let Some(header) = src.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let (frame_type, len) = parse_header(*header, self.max_len)?;
        // Only fails where usize is narrower than 33 bits: such a frame cannot be
        // buffered there, so it is over any limit the reader can honour.
        let frame_len = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_add(HEADER_LEN))
            .ok_or(FrameError::Oversized {
                len,
                max: self.max_len,
            })?;
        Ok(Some((frame_type, frame_len)))
    }
}

impl Default for FrameDecoder {
    /// A decoder with the [`DEFAULT_MAX_FRAME_LEN`] limit.
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

/// Why bytes read from a stream are not a valid run of frames.
///
/// Every variant means the stream is unusable: the reader stops and closes it.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A header declared a payload longer than the reader's limit.
    #[error(
        "frame payload of {len} bytes exceeds this reader's limit of {max} bytes; \
         the sender must keep frames within the limit its peer announced"
    )]
    Oversized {
        /// The payload length the header declared.
        len: u32,
        /// The reader's limit.
        max: u32,
    },
    /// A header's tag is not in the tag table.
    #[error(
        "unknown frame type 0x{0:02x}; the peer speaks a different protocol version \
         or the stream is corrupt"
    )]
    UnknownType(u8),
    /// The stream ended with an incomplete frame buffered.
    #[error(
        "stream ended mid-frame after {got} of {expected} bytes; \
         the peer stopped or the connection dropped before the frame was complete"
    )]
    Truncated {
        /// Bytes the frame needs, header included; [`HEADER_LEN`] when even the
        /// header was incomplete.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
}

/// Why a frame cannot be encoded.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The payload is longer than the `u32` length field can express.
    #[error(
        "payload of {len} bytes does not fit a frame (at most 4294967295 bytes); \
         split it into smaller frames"
    )]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
    },
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;
    use crate::wire::compress;
    use crate::wire::golden::{self, hex};

    /// Checks the golden frame of `frame_type` carrying `payload`: it encodes
    /// to exactly `header` (the 5 header bytes) then `payload`, both through
    /// [`encode_frame`] and [`Frame::encode`], and decodes back to itself,
    /// consuming every byte.
    fn assert_golden(frame_type: FrameType, header: &[u8], payload: &[u8]) {
        assert_eq!(header.len(), HEADER_LEN, "a header is {HEADER_LEN} bytes");
        let expected = [header, payload].concat();
        let frame = Frame::new(frame_type, payload.to_vec());

        let mut wire = BytesMut::new();
        encode_frame(frame_type, payload, &mut wire).expect("encodes");
        assert_eq!(
            ::hex::encode(&wire[..HEADER_LEN]),
            ::hex::encode(header),
            "header of {frame_type}"
        );
        assert_eq!(&wire[..], &expected[..], "encoding of {frame_type}");
        assert_eq!(frame.encoded_len(), expected.len());

        let mut via_frame = BytesMut::new();
        frame.encode(&mut via_frame).expect("encodes");
        assert_eq!(via_frame, wire);

        let mut decoder = FrameDecoder::default();
        assert_eq!(decoder.decode(&mut wire), Ok(Some(frame)));
        assert!(wire.is_empty());
    }

    fn header_only(tag: u8, len: u32) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[tag]);
        buf.extend_from_slice(&len.to_be_bytes());
        buf
    }

    // ---- golden encodings, one per frame type --------------------------------
    // Each frame carries the golden encoding of the message its type carries
    // (see `golden.rs`), so these bytes are what a peer really sends.

    #[test]
    fn golden_hash_set() {
        assert_golden(
            FrameType::HashSet,
            &hex("01        # type: HASH_SET
                  000000c8  # len: 200 bytes, the PeerHashSet vector"),
            &hex(golden::PEER_HASH_SET),
        );
    }

    #[test]
    fn golden_asset_bundle() {
        assert_golden(
            FrameType::AssetBundle,
            &hex("02        # type: ASSET_BUNDLE
                  00000090  # len: 144 bytes, the AssetBundle vector"),
            &hex(golden::ASSET_BUNDLE),
        );
    }

    #[test]
    fn golden_meta_update() {
        assert_golden(
            FrameType::MetaUpdate,
            &hex("03        # type: META_UPDATE
                  0000006a  # len: 106 bytes, the MetaUpdate vector"),
            &hex(golden::META_UPDATE),
        );
    }

    #[test]
    fn golden_done_v1() {
        // v1's DONE is empty; the same bytes are a v2 StreamDone of zeros.
        assert_golden(
            FrameType::Done,
            &hex("04        # type: DONE
                  00000000  # len: 0, no payload"),
            &[],
        );
    }

    #[test]
    fn golden_done_v2() {
        assert_golden(
            FrameType::Done,
            &hex("04        # type: DONE
                  00000007  # len: 7 bytes, the StreamDone vector"),
            &hex(golden::STREAM_DONE),
        );
    }

    #[test]
    fn golden_hello() {
        assert_golden(
            FrameType::Hello,
            &hex("05        # type: HELLO
                  0000001d  # len: 29 bytes, the Hello vector"),
            &hex(golden::HELLO),
        );
    }

    #[test]
    fn golden_recon() {
        assert_golden(
            FrameType::Recon,
            &hex("06        # type: RECON
                  0000007d  # len: 125 bytes, the Recon vector"),
            &hex(golden::RECON),
        );
    }

    #[test]
    fn golden_bundle_zstd() {
        // Compressed bytes depend on the zstd version, so the header's length is
        // the payload's and the payload is checked by what it decompresses to.
        let bundle = hex(golden::ASSET_BUNDLE);
        let payload = compress::compress(&bundle, 3);
        let len = u32::try_from(payload.len()).expect("a small payload");
        let mut header = hex("07  # type: BUNDLE_ZSTD");
        header.extend_from_slice(&len.to_be_bytes());
        assert_golden(FrameType::BundleZstd, &header, &payload);
        assert_eq!(payload[..4], hex("28b52ffd  # zstd frame magic"));
        assert_eq!(
            compress::decompress_bounded(&payload, bundle.len()).expect("decompresses"),
            bundle
        );
    }

    #[test]
    fn golden_asset_begin() {
        assert_golden(
            FrameType::AssetBegin,
            &hex("08        # type: ASSET_BEGIN
                  00000062  # len: 98 bytes, the AssetHeader vector"),
            &hex(golden::ASSET_HEADER),
        );
    }

    #[test]
    fn golden_asset_chunk() {
        // Raw asset bytes, over 255 of them, so the length uses more than its
        // last byte: 00 01 02 .. ff 00 01.
        let payload: Vec<u8> = (0..=257u16).map(|i| i as u8).collect();
        assert_golden(
            FrameType::AssetChunk,
            &hex("09        # type: ASSET_CHUNK
                  00000102  # len: 258 bytes"),
            &payload,
        );
    }

    #[test]
    fn golden_asset_end() {
        assert_golden(
            FrameType::AssetEnd,
            &hex("0a        # type: ASSET_END
                  00000000  # len: 0, no payload"),
            &[],
        );
    }

    #[test]
    fn golden_summary() {
        assert_golden(
            FrameType::Summary,
            &hex("0b        # type: SUMMARY
                  00000052  # len: 82 bytes, the SessionSummary vector"),
            &hex(golden::SESSION_SUMMARY),
        );
    }

    // ---- tags ----------------------------------------------------------------

    #[test]
    fn tags_round_trip_and_nothing_else_parses() {
        let mut known = 0;
        for tag in 0..=u8::MAX {
            match FrameType::try_from(tag) {
                Ok(ty) => {
                    known += 1;
                    assert_eq!(u8::from(ty), tag);
                    assert_eq!(FrameType::ALL[usize::from(tag) - 1], ty);
                }
                Err(e) => assert_eq!(e, FrameError::UnknownType(tag)),
            }
        }
        assert_eq!(known, FrameType::ALL.len());
    }

    #[test]
    fn versions_match_design_table() {
        let v1: Vec<_> = FrameType::ALL.into_iter().filter(|t| t.in_v1()).collect();
        assert_eq!(
            v1,
            [
                FrameType::HashSet,
                FrameType::AssetBundle,
                FrameType::MetaUpdate,
                FrameType::Done
            ]
        );
        let not_v2: Vec<_> = FrameType::ALL.into_iter().filter(|t| !t.in_v2()).collect();
        assert_eq!(not_v2, [FrameType::HashSet]);
        assert_eq!(FrameType::AssetEnd.to_string(), "ASSET_END");
    }

    // ---- header parsing --------------------------------------------------------

    #[test]
    fn parse_header_reads_big_endian_length() {
        assert_eq!(
            parse_header([0x02, 0x01, 0x02, 0x03, 0x04], u32::MAX),
            Ok((FrameType::AssetBundle, 0x0102_0304))
        );
        assert_eq!(
            parse_header([0x02, 0x01, 0x02, 0x03, 0x04], 0x0102_0304),
            Ok((FrameType::AssetBundle, 0x0102_0304))
        );
        assert_eq!(
            parse_header([0x02, 0x01, 0x02, 0x03, 0x04], 0x0102_0303),
            Err(FrameError::Oversized {
                len: 0x0102_0304,
                max: 0x0102_0303
            })
        );
    }

    #[test]
    fn parse_header_checks_tag_before_length() {
        assert_eq!(
            parse_header([0x0E, 0xff, 0xff, 0xff, 0xff], 0),
            Err(FrameError::UnknownType(0x0E))
        );
    }

    // ---- decoder errors --------------------------------------------------------

    #[test]
    fn unknown_type_is_rejected_from_the_header_alone() {
        for tag in [0x00, 0x0E, 0x7f, 0xff] {
            let mut buf = header_only(tag, 3);
            let capacity = buf.capacity();
            assert_eq!(
                FrameDecoder::default().decode(&mut buf),
                Err(FrameError::UnknownType(tag))
            );
            assert_eq!(buf.capacity(), capacity, "nothing reserved");
        }
    }

    #[test]
    fn oversized_is_rejected_before_allocating() {
        let mut buf = header_only(0x02, u32::MAX);
        let capacity = buf.capacity();
        assert_eq!(
            FrameDecoder::default().decode(&mut buf),
            Err(FrameError::Oversized {
                len: u32::MAX,
                max: DEFAULT_MAX_FRAME_LEN
            })
        );
        assert_eq!(buf.capacity(), capacity, "nothing reserved");

        let mut buf = header_only(0x02, DEFAULT_MAX_FRAME_LEN + 1);
        assert_eq!(
            FrameDecoder::default().decode_eof(&mut buf),
            Err(FrameError::Oversized {
                len: DEFAULT_MAX_FRAME_LEN + 1,
                max: DEFAULT_MAX_FRAME_LEN
            })
        );
    }

    #[test]
    fn limit_is_inclusive() {
        let mut decoder = FrameDecoder::new(4);
        let mut buf = BytesMut::from(&hex("09 00000004 01020304 09 00000005")[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Frame::new(FrameType::AssetChunk, hex("01020304"))))
        );
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::Oversized { len: 5, max: 4 })
        );

        let mut buf = BytesMut::from(&hex("04 00000000 04 00000001")[..]);
        let mut decoder = FrameDecoder::new(0);
        assert_eq!(decoder.max_len(), 0);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Frame::new(FrameType::Done, Bytes::new())))
        );
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::Oversized { len: 1, max: 0 })
        );
    }

    #[test]
    fn truncated_header_at_eof() {
        let mut buf = BytesMut::from(&hex("02 0000")[..]);
        let mut decoder = FrameDecoder::default();
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(
            decoder.decode_eof(&mut buf),
            Err(FrameError::Truncated {
                expected: HEADER_LEN,
                got: 3
            })
        );
    }

    #[test]
    fn truncated_payload_at_eof() {
        let mut buf = BytesMut::from(&hex("02 0000000a 01020304")[..]);
        let mut decoder = FrameDecoder::default();
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(
            decoder.decode_eof(&mut buf),
            Err(FrameError::Truncated {
                expected: HEADER_LEN + 10,
                got: HEADER_LEN + 4
            })
        );
    }

    #[test]
    fn eof_yields_whole_frames_then_reports_the_partial_one() {
        let mut buf = BytesMut::from(&hex("04 00000000 0a")[..]);
        let mut decoder = FrameDecoder::default();
        assert_eq!(
            decoder.decode_eof(&mut buf),
            Ok(Some(Frame::new(FrameType::Done, Bytes::new())))
        );
        assert_eq!(
            decoder.decode_eof(&mut buf),
            Err(FrameError::Truncated {
                expected: HEADER_LEN,
                got: 1
            })
        );
    }

    #[test]
    fn eof_on_empty_buffer_is_a_clean_end() {
        assert_eq!(
            FrameDecoder::default().decode_eof(&mut BytesMut::new()),
            Ok(None)
        );
    }

    #[test]
    fn eof_reports_a_bad_header_as_such() {
        let mut buf = BytesMut::from(&hex("ee 00000001")[..]);
        assert_eq!(
            FrameDecoder::default().decode_eof(&mut buf),
            Err(FrameError::UnknownType(0xee))
        );
    }

    #[test]
    fn payload_longer_than_u32_cannot_be_encoded() {
        assert_eq!(payload_len(0), Ok(0));
        assert_eq!(payload_len(u32::MAX as usize), Ok(u32::MAX));
        #[cfg(target_pointer_width = "64")]
        assert_eq!(
            payload_len(u32::MAX as usize + 1),
            Err(EncodeError::PayloadTooLarge {
                len: u32::MAX as usize + 1
            })
        );
    }

    #[test]
    fn error_messages_carry_the_numbers() {
        let msg = FrameError::Oversized { len: 70, max: 64 }.to_string();
        assert!(
            msg.contains("70 bytes") && msg.contains("limit of 64 bytes"),
            "{msg}"
        );
        let msg = FrameError::UnknownType(0x0e).to_string();
        assert!(msg.contains("0x0e"), "{msg}");
        let msg = FrameError::Truncated {
            expected: 15,
            got: 9,
        }
        .to_string();
        assert!(msg.contains("9 of 15 bytes"), "{msg}");
        let msg = EncodeError::PayloadTooLarge { len: 1 << 33 }.to_string();
        assert!(
            msg.contains("8589934592") && msg.contains("4294967295"),
            "{msg}"
        );
    }

    // ---- decoder behaviour -----------------------------------------------------

    #[test]
    fn incomplete_is_not_an_error_and_consumes_nothing() {
        let wire = hex("03 00000002 2001");
        let mut decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        for (i, byte) in wire.iter().enumerate() {
            assert_eq!(buf.len(), i, "nothing consumed before the frame is whole");
            assert_eq!(decoder.decode(&mut buf), Ok(None));
            buf.extend_from_slice(&[*byte]);
        }
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Frame::new(FrameType::MetaUpdate, hex("2001"))))
        );
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn decode_consumes_exactly_one_frame() {
        let mut buf = BytesMut::from(&hex("02 00000001 aa 04 00000000 05")[..]);
        let mut decoder = FrameDecoder::default();
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Frame::new(FrameType::AssetBundle, hex("aa"))))
        );
        assert_eq!(&buf[..], &hex("04 00000000 05")[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Frame::new(FrameType::Done, Bytes::new())))
        );
        assert_eq!(&buf[..], &hex("05")[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn a_declared_length_reserves_nothing_and_is_reported_missing() {
        let mut buf = header_only(0x09, 1000);
        let capacity = buf.capacity();
        let decoder = FrameDecoder::new(1000);
        assert_eq!(decoder.clone().decode(&mut buf), Ok(None));
        assert_eq!(buf.capacity(), capacity, "nothing reserved");
        assert_eq!(decoder.missing(&buf), 1000);
        buf.extend_from_slice(&[0; 400]);
        assert_eq!(decoder.missing(&buf), 600);
        assert_eq!(decoder.missing(&[0x09, 0]), HEADER_LEN - 2);
        assert_eq!(
            decoder.missing(&header_only(0x09, 1001)),
            0,
            "invalid: nothing to wait for"
        );
    }

    // ---- properties --------------------------------------------------------------

    /// Largest payload of generated frames, and the limit of the decoders reading them.
    const PROP_MAX_LEN: u32 = 1024;

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            proptest::sample::select(FrameType::ALL.to_vec()),
            prop_oneof![
                vec(any::<u8>(), 0..64),
                vec(any::<u8>(), 0..=PROP_MAX_LEN as usize),
            ],
        )
            .prop_map(|(ty, payload)| Frame::new(ty, payload))
    }

    /// Byte strings that are mostly framing-shaped, so every decoder path is hit:
    /// random bytes, and headers with a near-valid tag and a length around the limit
    /// followed by a body that may be shorter or longer than declared.
    fn arb_hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
        let random = vec(any::<u8>(), 0..32);
        let header_like = (
            prop_oneof![4 => 1u8..=0x0B, 1 => any::<u8>()],
            prop_oneof![0u32..=PROP_MAX_LEN + 8, any::<u32>()],
            vec(any::<u8>(), 0..=PROP_MAX_LEN as usize + 8),
        )
            .prop_map(|(tag, len, body)| {
                let mut bytes = vec![tag];
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.extend_from_slice(&body);
                bytes
            });
        vec(prop_oneof![random, header_like], 0..6).prop_map(|parts| parts.concat())
    }

    /// `data` cut at the positions picked by `cuts`.
    fn chunks<'a>(data: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
        at.push(data.len());
        at.sort_unstable();
        let mut out = Vec::new();
        let mut start = 0;
        for end in at {
            out.push(&data[start..end]);
            start = end;
        }
        out
    }

    /// Feeds `chunks` to a decoder limited to `max_len`, then ends the stream.
    /// Returns the frames and the error that stopped decoding, if any; checks after
    /// every step that the buffer never grows past the limit, a header and the input.
    fn decode_stream(chunks: &[&[u8]], max_len: u32) -> (Vec<Frame>, Option<FrameError>) {
        let input_len: usize = chunks.iter().map(|c| c.len()).sum();
        // The decoder reserves nothing, so the buffer holds at most the input
        // (what `extend_from_slice` grew it to); what this rules out is a
        // reservation driven by a hostile length field (up to 4 GiB).
        let bound = 2 * (HEADER_LEN + input_len);
        let mut decoder = FrameDecoder::new(max_len);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            assert!(buf.capacity() <= bound, "{} > {bound}", buf.capacity());
            loop {
                let step = decoder.decode(&mut buf);
                assert!(buf.capacity() <= bound, "{} > {bound}", buf.capacity());
                match step {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(e) => return (frames, Some(e)),
                }
            }
        }
        loop {
            let step = decoder.decode_eof(&mut buf);
            assert!(buf.capacity() <= bound, "{} > {bound}", buf.capacity());
            match step {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return (frames, None),
                Err(e) => return (frames, Some(e)),
            }
        }
    }

    proptest! {
        #[test]
        fn frames_round_trip_through_any_chunking(
            frames in vec(arb_frame(), 0..8),
            cuts in vec(any::<Index>(), 0..24),
        ) {
            let mut wire = BytesMut::new();
            for frame in &frames {
                frame.encode(&mut wire)?;
            }
            prop_assert_eq!(
                wire.len(),
                frames.iter().map(Frame::encoded_len).sum::<usize>()
            );
            let (decoded, error) = decode_stream(&chunks(&wire, &cuts), PROP_MAX_LEN);
            prop_assert_eq!(error, None);
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn any_bytes_decode_to_frames_or_a_typed_error(
            input in arb_hostile_bytes(),
            cuts in vec(any::<Index>(), 0..24),
        ) {
            let (frames, error) = decode_stream(&chunks(&input, &cuts), PROP_MAX_LEN);

            // The outcome does not depend on how the bytes were split.
            let (whole_frames, whole_error) = decode_stream(&[&input], PROP_MAX_LEN);
            prop_assert_eq!(&frames, &whole_frames);
            prop_assert_eq!(&error, &whole_error);

            // What was decoded is exactly a prefix of the input, frame by frame.
            let mut reencoded = BytesMut::new();
            for frame in &frames {
                prop_assert!(frame.payload.len() <= PROP_MAX_LEN as usize);
                frame.encode(&mut reencoded)?;
            }
            prop_assert!(input.starts_with(&reencoded));
            match error {
                // A clean end means every byte was a frame.
                None => prop_assert_eq!(reencoded.len(), input.len()),
                Some(FrameError::Truncated { expected, got }) => {
                    prop_assert_eq!(got, input.len() - reencoded.len());
                    prop_assert!(got < expected);
                }
                Some(FrameError::Oversized { len, max }) => {
                    prop_assert_eq!(max, PROP_MAX_LEN);
                    prop_assert!(len > max);
                }
                Some(FrameError::UnknownType(tag)) => {
                    prop_assert_eq!(Some(&tag), input.get(reencoded.len()));
                }
            }
        }
    }
}
