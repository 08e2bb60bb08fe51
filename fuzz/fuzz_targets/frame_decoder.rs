//! The wire frame decoder (`src/wire/frame.rs`) on arbitrary bytes in
//! arbitrary chunkings.
//!
//! Checks the codec's contract (the invariants of `src/wire/mod.rs`), not only
//! that nothing panics:
//! - every byte string decodes to frames, then at most one typed
//!   [`FrameError`], exactly as a one-pass reference parser of the layout
//!   says, whatever the chunking;
//! - each frame's payload is within the decoder's limit, and re-encodes (with
//!   [`encode_frame`] and [`Frame::encode`]) to exactly the bytes consumed;
//! - `Ok(None)` consumes nothing, and no call ever grows the caller's buffer
//!   (nothing is reserved on a declared length);
//! - [`FrameDecoder::missing`] is the number of bytes the frame still needs;
//! - at the end of the stream, [`FrameDecoder::decode_eof`] yields the whole
//!   frames left, then `Ok(None)` only on an empty buffer, else
//!   [`FrameError::Truncated`] with the right numbers;
//! - [`parse_header`] agrees with the reference on every header seen.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use can_sync::wire::{
    encode_frame, parse_header, Frame, FrameDecoder, FrameError, FrameType, DEFAULT_MAX_FRAME_LEN,
    HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

/// What the reference parser makes of the bytes at `at`.
#[derive(Debug, PartialEq)]
enum Next {
    /// A whole frame: its type, payload range.
    Frame(FrameType, std::ops::Range<usize>),
    /// Not enough bytes yet: the total the frame needs (header included).
    Incomplete(usize),
    /// A bad header.
    Error(FrameError),
}

/// The frame layout, read the obvious way: no chunking, no state.
fn reference(data: &[u8], at: usize, limit: u32) -> Next {
    let rest = &data[at..];
    if rest.len() < HEADER_LEN {
        return Next::Incomplete(HEADER_LEN);
    }
    let tag = rest[0];
    let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
    let frame_type = match FrameType::ALL.iter().find(|t| u8::from(**t) == tag) {
        Some(t) => *t,
        None => return Next::Error(FrameError::UnknownType(tag)),
    };
    if len > limit {
        return Next::Error(FrameError::Oversized { len, max: limit });
    }
    let total = HEADER_LEN + len as usize;
    if rest.len() < total {
        return Next::Incomplete(total);
    }
    Next::Frame(frame_type, at + HEADER_LEN..at + total)
}

/// The limits worth trying: the edges, the default, and anything.
fn limit(u: &mut Unstructured<'_>) -> u32 {
    match u.int_in_range(0..=7u8).unwrap_or(0) {
        0 => 0,
        1 => 1,
        2 => 16,
        3 => 4096,
        4 => DEFAULT_MAX_FRAME_LEN,
        5 => u32::MAX,
        6 => u.int_in_range(0..=1024).unwrap_or(0),
        _ => u32::arbitrary(u).unwrap_or(0),
    }
}

/// Checks one frame against the bytes it came from.
fn check_frame(frame: &Frame, expected: &Next, data: &[u8], at: usize, limit: u32) -> usize {
    let Next::Frame(frame_type, range) = expected else {
        panic!("decoder yielded {frame:?} where the reference says {expected:?}");
    };
    assert_eq!(frame.frame_type, *frame_type);
    assert_eq!(&frame.payload[..], &data[range.clone()], "payload bytes");
    assert!(
        frame.payload.len() as u64 <= u64::from(limit),
        "payload of {} bytes over the limit {limit}",
        frame.payload.len()
    );
    assert_eq!(frame.encoded_len(), range.end - at);
    let mut again = BytesMut::new();
    encode_frame(frame.frame_type, &frame.payload, &mut again).expect("re-encodes");
    assert_eq!(&again[..], &data[at..range.end], "re-encoding differs");
    let mut again = BytesMut::new();
    frame.encode(&mut again).expect("re-encodes");
    assert_eq!(&again[..], &data[at..range.end], "Frame::encode differs");
    range.end
}

fuzz_target!(|input: &[u8]| {
    let mut u = Unstructured::new(input);
    let limit = limit(&mut u);
    // The chunking: up to 64 pieces of 0..=255 bytes (0: a call with
    // nothing new), then the rest in one piece.
    let pieces: Vec<u8> = (0..u.int_in_range(0..=64u8).unwrap_or(0))
        .map(|_| u8::arbitrary(&mut u).unwrap_or(0))
        .collect();
    let data = u.take_rest();

    let mut decoder = FrameDecoder::new(limit);
    assert_eq!(decoder.max_len(), limit);
    let mut buf = BytesMut::new();
    // `fed`: bytes appended to `buf`; `at`: bytes consumed as frames.
    let (mut fed, mut at) = (0usize, 0usize);
    let chunks = pieces
        .iter()
        .map(|&n| n as usize)
        .chain(std::iter::once(usize::MAX));
    for n in chunks {
        let end = fed.saturating_add(n).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
        loop {
            assert_eq!(buf.len(), fed - at, "buffer holds the unconsumed bytes");
            // The reference sees only what was fed so far.
            let expected = reference(&data[..fed], at, limit);
            let capacity = buf.capacity();
            let len = buf.len();
            let missing = decoder.missing(&buf);
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    at = check_frame(&frame, &expected, data, at, limit);
                    assert_eq!(missing, 0, "a whole frame misses nothing");
                }
                Ok(None) => {
                    let Next::Incomplete(total) = expected else {
                        panic!("decoder waits where the reference says {expected:?}");
                    };
                    assert_eq!(buf.len(), len, "Ok(None) consumed bytes");
                    assert_eq!(missing, total - len, "missing() of an incomplete frame");
                    assert!(missing > 0);
                    break;
                }
                Err(err) => {
                    assert_eq!(expected, Next::Error(err.clone()), "error differs");
                    assert_eq!(missing, 0, "a bad header needs nothing");
                    let header: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().unwrap();
                    assert_eq!(parse_header(header, limit), Err(err));
                    // The stream is dead (invariant 6): stop reading it.
                    return;
                }
            }
            assert!(
                buf.capacity() <= capacity,
                "decode grew the buffer from {capacity} to {}",
                buf.capacity()
            );
        }
    }
    assert_eq!(fed, data.len());

    // The stream ends: whole frames, then a clean end or Truncated.
    loop {
        let expected = reference(data, at, limit);
        match decoder.decode_eof(&mut buf) {
            Ok(Some(frame)) => at = check_frame(&frame, &expected, data, at, limit),
            Ok(None) => {
                assert!(buf.is_empty(), "a clean end with {} bytes left", buf.len());
                assert_eq!(at, data.len());
                break;
            }
            Err(FrameError::Truncated {
                expected: need,
                got,
            }) => {
                assert_eq!(expected, Next::Incomplete(need), "Truncated.expected");
                assert_eq!(got, data.len() - at, "Truncated.got");
                assert!(got > 0 && got < need);
                break;
            }
            Err(err) => panic!("decode_eof failed with {err:?} after decode accepted the header"),
        }
    }

    // A header on its own, through the public parser.
    if let Some(header) = data.first_chunk::<HEADER_LEN>() {
        match (parse_header(*header, limit), reference(header, 0, limit)) {
            (Ok((t, 0)), Next::Frame(expected, _)) => assert_eq!(t, expected),
            (Ok((t, len)), Next::Incomplete(total)) => {
                assert_eq!(u8::from(t), header[0]);
                assert_eq!(HEADER_LEN + len as usize, total);
            }
            (Err(err), Next::Error(expected)) => assert_eq!(err, expected),
            (got, expected) => panic!("parse_header gave {got:?}, reference {expected:?}"),
        }
    }
});
