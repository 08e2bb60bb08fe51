//! The can-sync wire protocol: frames, their tags and their limits.
//!
//! This module is the specification of what travels on every QUIC stream between
//! two can-sync nodes, and the sans-IO code that writes and reads it. It owns no
//! socket and runs no future: [`encode_frame`] writes bytes into a buffer,
//! [`FrameDecoder`] takes bytes out of one, and the session code drives the
//! actual iroh streams around them.
//!
//! # Layout
//!
//! - The frame codec, from `frame.rs`, re-exported here: [`FrameType`],
//!   [`Frame`], [`encode_frame`], [`parse_header`], [`FrameDecoder`], their
//!   errors [`FrameError`] and [`EncodeError`], and the limits below.
//! - [`codes`]: the application error codes a node closes a connection, or
//!   resets or stops a stream, with; each named constant is re-exported here.
//! - [`compress`]: the zstd codec of v2 payloads (`BUNDLE_ZSTD`, zstd chunks,
//!   `RECON` summaries) and the bounds a receiver keeps against a hostile peer.
//! - [`data_stream`]: the grammar of a v2 data stream, both ways: its parser
//!   checks a received stream frame by frame and parses its payloads; its
//!   encoders turn assets into frames.
//! - [`Violation`], from `violation.rs`: every way a peer can break the
//!   protocol, and the close code each one maps to.
//!
//! The golden tests (`golden.rs`, tests only) pin the encoding of every
//! protobuf message, and `frame.rs` tests a frame of each type carrying it.
//!
//! # Goals
//!
//! - **One framing for both protocol versions.** `can-sync/1` (the original agent's
//!   protocol) and `can-sync/2` (the pipelined one) share the frame layout and the
//!   tag space, so a v2 node reads v1 streams byte for byte.
//! - **Incremental parsing with bounded memory.** A reader learns a frame's type and
//!   length from a fixed 5-byte header, so it can reject the frame before its
//!   payload arrives, and knows how many bytes are still to come
//!   ([`FrameDecoder::missing`]). Nothing is reserved on a peer's word: memory held
//!   per stream grows only with bytes that arrived, up to one frame within the
//!   reader's limit plus a bounded read-ahead, never with what a peer claims.
//! - **Hostile input is an error, not a crash.** Every byte string a peer can send
//!   decodes to frames or to a typed [`FrameError`]; nothing panics, nothing hangs
//!   on a bogus length, nothing is silently dropped.
//! - **Sans-IO.** No sockets, no async, no clock in the codec, so it is unit-tested
//!   and fuzzed on plain buffers.
//!
//! # Non-goals
//!
//! - **Payload schemas in the codec.** The frame codec carries payloads as opaque
//!   bytes. Their protobuf messages are in `proto/cansync.proto` (generated as
//!   [`crate::pb`]); [`data_stream`] parses the payloads of a v2 data stream, the
//!   session those of the control, live-sync and v1 streams.
//! - **Integrity and encryption.** QUIC already authenticates and encrypts every
//!   stream. Asset integrity is end to end: the receiver checks the BLAKE3 hash of
//!   the bytes it got, not of the frames that carried them.
//! - **Multiplexing and flow control.** One stream carries one ordered run of frames;
//!   parallelism comes from opening more QUIC streams, backpressure from QUIC.
//! - **Version negotiation.** The ALPN (`can-sync/1` or `can-sync/2`) fixes the
//!   version for the whole connection; frames carry no version field.
//!
//! # Frame layout
//!
//! ```text
//!  0        1                                5                          5 + len
//!  +--------+--------+--------+--------+--------+---------- ... ----------+
//!  |  type  |          len (u32, big-endian)    |      payload (len B)    |
//!  +--------+--------+--------+--------+--------+---------- ... ----------+
//!  \_______________ header: 5 bytes ___________/
//! ```
//!
//! `type` is one of the tags below; `len` counts the payload bytes only, not the
//! header. An empty payload is `len = 0`: a v1 `DONE` frame is the five bytes
//! `04 00 00 00 00`.
//!
//! # Frame types
//!
//! Each row is a [`FrameType`] variant; a test checks this table against the code.
//!
//! | tag | name | variant | payload | v1 | v2 |
//! |---|---|---|---|---|---|
//! | 0x01 | `HASH_SET` | [`FrameType::HashSet`] | `PeerHashSet`: every summary the sender has | yes | – |
//! | 0x02 | `ASSET_BUNDLE` | [`FrameType::AssetBundle`] | `AssetBundle`: one asset inline, uncompressed | yes | yes |
//! | 0x03 | `META_UPDATE` | [`FrameType::MetaUpdate`] | `MetaUpdate`: newer metadata of one asset | yes | yes |
//! | 0x04 | `DONE` | [`FrameType::Done`] | empty (v1) / `StreamDone{assets, bytes}` (v2) | yes | yes |
//! | 0x05 | `HELLO` | [`FrameType::Hello`] | `Hello`: version, limits, codecs, features | – | yes |
//! | 0x06 | `RECON` | [`FrameType::Recon`] | `Recon{packed_summaries, wants, done}`: one reconciliation round | – | yes |
//! | 0x07 | `BUNDLE_ZSTD` | [`FrameType::BundleZstd`] | a zstd frame of an encoded `AssetBundle` of an asset within the inline limit; it inflates to at most the reader's frame limit | – | yes |
//! | 0x08 | `ASSET_BEGIN` | [`FrameType::AssetBegin`] | `AssetHeader{hash, size, meta, codec, ranged, ranges}` of an asset above the inline limit | – | yes |
//! | 0x09 | `ASSET_CHUNK` | [`FrameType::AssetChunk`] | one chunk of that asset (zstd or raw, as its header's `codec` says) | – | yes |
//! | 0x0A | `ASSET_END` | [`FrameType::AssetEnd`] | empty; the receiver checks the BLAKE3 of all chunks | – | yes |
//! | 0x0B | `SUMMARY` | [`FrameType::Summary`] | `SessionSummary{received, rejected}` | – | yes |
//! | 0x0C | `WANT` | [`FrameType::Want`] | `Want{hashes, resume}`: assets the sender asks its peer for (feature `pull`), and the groups it lacks of those it holds in part (feature `ranges`) | – | yes |
//! | 0x0D | `ASSET_OUTBOARD` | [`FrameType::AssetOutboard`] | raw 32-byte group values of the outboard of the ranged asset begun last (feature `ranges`) | – | yes |
//!
//! Any other tag is rejected with [`FrameError::UnknownType`] as soon as the header
//! is buffered. Which tags are legal at which point of a session (for example no
//! `HELLO` on a v1 stream) is not the codec's business: [`data_stream`] checks it
//! for v2 data streams, the session for the other streams.
//!
//! # Limits
//!
//! A test checks the numbers in this table against the constants.
//!
//! | limit | constant | value |
//! |---|---|---|
//! | header size | [`HEADER_LEN`] | 5 bytes |
//! | default largest payload a reader accepts | [`DEFAULT_MAX_FRAME_LEN`] | 67108864 bytes (64 MiB) |
//! | largest payload the format can express | `u32::MAX` | 4294967295 bytes |
//!
//! The reader's limit applies to `len`, the payload length. A [`FrameDecoder`]
//! built with [`FrameDecoder::default`] uses [`DEFAULT_MAX_FRAME_LEN`]; a reader can
//! be given a smaller or larger limit (v2 peers announce the limit of their data
//! streams in `HELLO`; one that announces 0 is held to [`DEFAULT_MAX_FRAME_LEN`]). A
//! sender must keep every payload within the limit of the peer that reads it; the
//! encoder only refuses what the format cannot express: [`encode_frame`] returns
//! [`EncodeError::PayloadTooLarge`] for a payload longer than `u32::MAX` bytes
//! rather than writing a wrong length.
//!
//! # Invariants
//!
//! 1. **A reader rejects a frame longer than its limit before allocating.** The tag
//!    and the length are checked ([`parse_header`]) as soon as the 5 header bytes are
//!    buffered; a frame over the limit yields [`FrameError::Oversized`] and not one
//!    byte is reserved for its payload.
//! 2. **Nothing is allocated on a peer's word.** The decoder never reserves
//!    memory: a declared length is a ceiling, and a reader's buffer grows only
//!    with bytes that actually arrived (the stream reader adds at most a fixed
//!    read-ahead, `crate::stream::READ_AHEAD`).
//! 3. **Incomplete is not invalid.** [`FrameDecoder::decode`] returns `Ok(None)`
//!    while a frame is still arriving, and consumes exactly one frame once it has
//!    arrived.
//! 4. **A stream that ends mid-frame is an error, never silent success.** When the
//!    stream ends, the reader calls [`FrameDecoder::decode_eof`], which returns
//!    [`FrameError::Truncated`] if any bytes remain that do not make a whole frame.
//! 5. **Every stream ends with `DONE`, and the sender then finishes the stream.**
//!    This holds for data and control streams, in both versions and in live sync.
//!    Nothing follows `DONE` ([`Violation::AfterDone`]). A receiver treats a stream
//!    that ends without `DONE` as cut short ([`Violation::EndedEarly`]), even when
//!    its last frame was whole.
//! 6. **After an error the stream is dead.** Framing has no resynchronisation point,
//!    so a reader that gets a [`FrameError`] stops reading; the session fails with
//!    [`Violation::Frame`], and the connection is closed with
//!    [`CLOSE_PROTOCOL_ERROR`].
//!
//! # Streams
//!
//! - `can-sync/1`: one bi-stream. Both sides send `HASH_SET`, compute the diff, send
//!   what the other lacks as `ASSET_BUNDLE` (and `META_UPDATE`) frames while
//!   receiving, then `DONE`.
//! - `can-sync/2`: a control bi-stream carries `HELLO` both ways, a `RECON` each
//!   way, and finally `SUMMARY` then `DONE` from each side. Assets travel on
//!   uni-streams, each a run of `ASSET_BUNDLE`, `BUNDLE_ZSTD`, `ASSET_BEGIN` /
//!   `ASSET_CHUNK`… / `ASSET_END` and `META_UPDATE` frames ending in `DONE` (the
//!   grammar of [`data_stream`]). When both `HELLO`s carry `pull`, each side
//!   also opens a want stream, a uni-stream right after its data streams:
//!   `WANT` frames, then `DONE{assets}` counting the hashes they named (see
//!   [`crate::session::v2::pull`]).
//! - Live sync, after a v2 session whose `HELLO`s both carried the `live` feature:
//!   each batch of changes travels on its own bi-stream, a `RECON` offer answered
//!   by a `RECON` reply, then the offered assets as a data stream one way and
//!   `SUMMARY`, `DONE` the other (see [`crate::session::live`]).
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use can_sync::wire::{encode_frame, FrameDecoder, FrameType, HEADER_LEN};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//!
//! let mut wire = BytesMut::new();
//! encode_frame(FrameType::AssetBundle, b"bundle", &mut wire)?;
//! encode_frame(FrameType::Done, &[], &mut wire)?;
//! assert_eq!(wire.len(), 2 * HEADER_LEN + 6);
//!
//! // The reader sees the bytes in arbitrary pieces.
//! let mut decoder = FrameDecoder::default();
//! let mut buf = BytesMut::new();
//! buf.extend_from_slice(&wire[..3]);
//! assert!(decoder.decode(&mut buf)?.is_none()); // header incomplete: wait
//! assert_eq!(decoder.missing(&buf), 2); // for the rest of the header
//! buf.extend_from_slice(&wire[3..8]);
//! assert!(decoder.decode(&mut buf)?.is_none()); // payload incomplete: wait
//! assert_eq!(decoder.missing(&buf), 3); // its length is known, not reserved
//! buf.extend_from_slice(&wire[8..]);
//! let bundle = decoder.decode(&mut buf)?.expect("a whole frame");
//! assert_eq!(bundle.frame_type, FrameType::AssetBundle);
//! assert_eq!(&bundle.payload[..], b"bundle");
//! let done = decoder.decode(&mut buf)?.expect("a whole frame");
//! assert_eq!(done.frame_type, FrameType::Done);
//! // The stream ended: nothing may be left over.
//! assert!(decoder.decode_eof(&mut buf)?.is_none());
//! # Ok(())
//! # }
//! ```

pub mod codes;
pub mod compress;
pub mod data_stream;
mod frame;
mod violation;

#[cfg(test)]
mod golden;

pub use codes::{
    CLOSE_BUSY, CLOSE_DONE, CLOSE_IDLE, CLOSE_NOT_ALLOWED, CLOSE_PROTOCOL_ERROR, CLOSE_SHUTDOWN,
    RESET_LOCAL_FAILURE,
};
pub use frame::{
    encode_frame, parse_header, EncodeError, Frame, FrameDecoder, FrameError, FrameType,
    DEFAULT_MAX_FRAME_LEN, HEADER_LEN,
};
pub use violation::Violation;

#[cfg(test)]
mod tests {
    //! Checks that the specification above says what the code does.

    use super::{FrameType, DEFAULT_MAX_FRAME_LEN, HEADER_LEN};

    /// This file's own source: the module doc is the specification under test.
    const SPEC: &str = include_str!("mod.rs");

    /// The row of a `//!` table whose first or second cell is `key`.
    fn doc_row(key: &str) -> Vec<&'static str> {
        let rows: Vec<Vec<&str>> = SPEC
            .lines()
            .filter_map(|line| line.strip_prefix("//! |"))
            .map(|row| row.split('|').map(str::trim).collect())
            .filter(|cells: &Vec<&str>| cells.len() > 2 && (cells[0] == key || cells[1] == key))
            .collect();
        assert_eq!(rows.len(), 1, "exactly one doc table row for {key}");
        rows.into_iter().next().unwrap_or_default()
    }

    /// The first whole number in `cell`, e.g. 67108864 in "67108864 bytes (64 MiB)".
    fn leading_number(cell: &str) -> u64 {
        let digits: String = cell.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("no number in {cell:?}"))
    }

    #[test]
    fn documented_limits_match_constants() {
        let header = doc_row("[`HEADER_LEN`]");
        assert_eq!(leading_number(header[2]), HEADER_LEN as u64);

        let default_max = doc_row("[`DEFAULT_MAX_FRAME_LEN`]");
        assert_eq!(
            leading_number(default_max[2]),
            u64::from(DEFAULT_MAX_FRAME_LEN)
        );
        assert!(default_max[2].contains("(64 MiB)"));
        assert_eq!(DEFAULT_MAX_FRAME_LEN, 64 << 20);

        let format_max = doc_row("`u32::MAX`");
        assert_eq!(leading_number(format_max[2]), u64::from(u32::MAX));
    }

    #[test]
    fn documented_tag_table_matches_frame_types() {
        let tag_rows = SPEC
            .lines()
            .filter(|line| line.starts_with("//! | 0x"))
            .count();
        assert_eq!(tag_rows, FrameType::ALL.len(), "one doc row per frame type");

        for ty in FrameType::ALL {
            let row = doc_row(&format!("0x{:02X}", u8::from(ty)));
            assert_eq!(row[1], format!("`{}`", ty.name()), "name of {ty:?}");
            assert_eq!(
                row[2],
                format!("[`FrameType::{ty:?}`]"),
                "variant of {ty:?}"
            );
            assert_eq!(row[4] == "yes", ty.in_v1(), "v1 column of {ty:?}");
            assert_eq!(row[5] == "yes", ty.in_v2(), "v2 column of {ty:?}");
        }
    }
}
