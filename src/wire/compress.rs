//! The compression codec of protocol v2: zstd, with the limits a receiver needs
//! to survive a hostile peer.
//!
//! Invariants:
//! - [`decompress_bounded`] never produces more than the caller's bound, and
//!   allocates for what the frame declares (within the bound) or, when it
//!   declares nothing, for what it produces: a frame that inflates past the
//!   bound, or that asks for a window larger than [`MAX_WINDOW_LOG`], is a
//!   [`CodecError`], not an allocation;
//! - [`worth_compressing`] decides per asset from a sample, so incompressible
//!   data (media, archives, random bytes) costs one small trial, not a full pass.
//!
//! zstd contexts are kept per thread and reused: creating one costs more than
//! compressing a 4 KiB asset (the profile of the `small` load test showed
//! context setup and its allocations as the agent's largest CPU item).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;

use zstd::bulk::{Compressor, Decompressor};

thread_local! {
    /// This thread's compression contexts, by level.
    static COMPRESSORS: RefCell<HashMap<i32, Compressor<'static>>> = RefCell::default();
    /// This thread's decompression context, its window limit already set.
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Largest zstd window a receiver accepts: 2^27 = 128 MiB is the most any
/// level of ours uses; a frame asking for more is refused before decoding.
pub const MAX_WINDOW_LOG: u32 = 27;

/// Bytes of an asset tried to decide whether compression pays.
pub const SAMPLE_LEN: usize = 16 * 1024;

/// Compression must save at least this fraction of the sample to be used.
pub const MIN_SAVING: f64 = 0.10;

/// Why a compressed payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The payload inflates past the bound the frame allows, or is not zstd.
    #[error("zstd payload is corrupt or inflates past {bound} bytes: {source}")]
    Inflate {
        /// The most the payload may decode to.
        bound: usize,
        /// What zstd said.
        source: io::Error,
    },
    /// The frame header asks for a window above [`MAX_WINDOW_LOG`].
    #[error("zstd frame asks for a 2^{log} byte window; at most 2^{MAX_WINDOW_LOG} is accepted")]
    Window {
        /// The window log the frame asked for.
        log: u32,
    },
    /// zstd could not be set up (out of memory).
    #[error("zstd: {0}")]
    Setup(io::Error),
}

/// Compresses `data` at `level` into a single zstd frame.
pub fn compress(data: &[u8], level: i32) -> Vec<u8> {
    COMPRESSORS.with(|compressors| {
        let mut compressors = compressors.borrow_mut();
        let compressor = match compressors.entry(level) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(Compressor::new(level).expect("a zstd context (out of memory?)"))
            }
        };
        compressor
            .compress(data)
            .expect("compressing into a growable buffer cannot fail")
    })
}

/// Decompresses one zstd frame, refusing to produce more than `bound` bytes or
/// to use a window above [`MAX_WINDOW_LOG`].
pub fn decompress_bounded(data: &[u8], bound: usize) -> Result<Vec<u8>, CodecError> {
    if let Some(log) = window_log(data) {
        if log > MAX_WINDOW_LOG {
            return Err(CodecError::Window { log });
        }
    }
    // Room for what the frame declares, when it declares it: a 4 KiB asset
    // must not cost an allocation of the whole bound. A frame that inflates
    // past its own declaration fails like one that inflates past the bound.
    // One that declares nothing (ours always declare) is decoded as a stream
    // into a buffer that grows with what it produces.
    let capacity = match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(declared)) if declared > bound as u64 => {
            return Err(CodecError::Inflate {
                bound,
                source: io::Error::other(format!("the frame declares {declared} bytes")),
            })
        }
        Ok(Some(declared)) => declared as usize,
        _ => return decompress_undeclared(data, bound),
    };
    DECOMPRESSOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        let decompressor = match &mut *slot {
            Some(decompressor) => decompressor,
            None => {
                let mut fresh = Decompressor::new().map_err(CodecError::Setup)?;
                fresh
                    .set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(MAX_WINDOW_LOG))
                    .map_err(CodecError::Setup)?;
                slot.insert(fresh)
            }
        };
        decompressor
            .decompress(data, capacity)
            .map_err(|source| CodecError::Inflate { bound, source })
    })
}

/// The most bytes [`decompress_bounded`] may produce from `data` with
/// `bound`: what the frame declares when it declares less, else the bound.
/// Known before decoding; with the input's own length it bounds what
/// decoding costs.
pub fn output_bound(data: &[u8], bound: usize) -> usize {
    match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(declared)) => declared.min(bound as u64) as usize,
        _ => bound,
    }
}

/// [`decompress_bounded`] for a frame without a declared size: memory follows
/// the output (at most twice it, as the buffer grows), never the bound.
fn decompress_undeclared(data: &[u8], bound: usize) -> Result<Vec<u8>, CodecError> {
    use std::io::Read;
    let inflate = |source| CodecError::Inflate { bound, source };
    let mut decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(CodecError::Setup)?;
    decoder
        .window_log_max(MAX_WINDOW_LOG)
        .map_err(CodecError::Setup)?;
    // Only one frame: what follows it is not ours to decode.
    let mut decoder = decoder.single_frame();
    let mut out = Vec::new();
    decoder
        .by_ref()
        .take(bound as u64 + 1)
        .read_to_end(&mut out)
        .map_err(inflate)?;
    if out.len() > bound {
        return Err(inflate(io::Error::other(
            "the frame inflates past the bound",
        )));
    }
    Ok(out)
}

/// The window log a zstd frame header declares (RFC 8878 §3.1.1.1), when it
/// has a window descriptor. Single-segment frames have none: their window is
/// their content size, which the output bound already limits.
fn window_log(frame: &[u8]) -> Option<u32> {
    const MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
    let descriptor = *frame.get(4)?;
    if frame[..4] != MAGIC || descriptor & 0x20 != 0 {
        return None;
    }
    let window = *frame.get(5)?;
    Some(10 + u32::from(window >> 3))
}

/// Bytes counted for the entropy test: enough to tell noise from anything
/// an order-0 coder could shrink by [`MIN_SAVING`] (for random bytes the
/// estimate's spread is a few hundredths of a bit, against a margin of 0.4),
/// and a quarter of a 4 KiB asset's cost of counting every byte.
const ENTROPY_BYTES: usize = 1024;

/// The parts of `sample` the entropy test counts: all of it when short,
/// else four slices spread over it, so that a sample of mixed content is
/// not judged by one end of it.
fn entropy_parts(sample: &[u8]) -> impl Iterator<Item = &[u8]> {
    const PARTS: usize = 4;
    let (parts, len) = if sample.len() <= ENTROPY_BYTES {
        (1, sample.len())
    } else {
        (PARTS, ENTROPY_BYTES / PARTS)
    };
    (0..parts).map(move |k| {
        let start = k * (sample.len() / parts);
        &sample[start..start + len]
    })
}

/// The collision entropy (Rényi order 2) of the byte values of `bytes`, in
/// bits per byte: 8 for bytes spread evenly, less the more some values
/// repeat. Estimated from the parts [`entropy_parts`] picks (at most
/// [`ENTROPY_BYTES`]), without bias from the pair counts, and with one
/// logarithm rather than one per byte value.
fn byte_entropy(bytes: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0usize;
    for part in entropy_parts(bytes) {
        for &byte in part {
            counts[byte as usize] += 1;
        }
        n += part.len();
    }
    let n = n as f64;
    let pairs: f64 = counts
        .iter()
        .map(|&c| f64::from(c) * (f64::from(c) - 1.0))
        .sum();
    let collision = pairs / (n * (n - 1.0));
    if collision <= 0.0 {
        return 8.0;
    }
    (-collision.log2()).min(8.0)
}

/// True when compressing a sample of `data` at a fast level saves at least
/// [`MIN_SAVING`]: the per-asset decision of the send pipeline.
///
/// The zstd trial cost most of encoding a small random asset (`cargo bench
/// --bench bundle`, `trial` against `encode`: 3.6 of 4.3 µs at 4 KiB, 11.2
/// of 13.7 µs at 64 KiB), so a sample first passes a cheaper test: bytes
/// spread so evenly that no order-0 coder could save [`MIN_SAVING`] are sent
/// as they are without a trial (2.4 µs at 4 KiB, 8.5 µs at 64 KiB; 0.6 µs
/// at any size once it counted 1 KiB of the sample, not all). Data
/// that only an LZ pass would shrink (a random block repeated) is sent
/// uncompressed: rare in assets, and never wrong.
pub fn worth_compressing(data: &[u8]) -> bool {
    if data.len() < 64 {
        return false;
    }
    // The middle of the asset: headers at the start are often compressible
    // even in incompressible formats.
    let start = data.len().saturating_sub(SAMPLE_LEN) / 2;
    let sample = &data[start..(start + SAMPLE_LEN).min(data.len())];
    if byte_entropy(sample) > 8.0 * (1.0 - MIN_SAVING / 2.0) {
        return false;
    }
    let compressed = compress(sample, 1).len();
    (compressed as f64) < sample.len() as f64 * (1.0 - MIN_SAVING)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn round_trip_within_bound() {
        let text = b"{\"name\":\"asset\",\"tags\":[\"a\",\"b\"]}".repeat(1000);
        let packed = compress(&text, 3);
        assert!(packed.len() < text.len() / 10);
        assert_eq!(decompress_bounded(&packed, text.len()).unwrap(), text);
    }

    #[test]
    fn a_bomb_is_refused_at_the_bound() {
        let zeros = vec![0u8; 10 * 1024 * 1024];
        let bomb = compress(&zeros, 19);
        assert!(bomb.len() < 4096, "10 MiB of zeros packs small");
        assert!(matches!(
            decompress_bounded(&bomb, 1024 * 1024),
            Err(CodecError::Inflate { bound: 1048576, .. })
        ));
    }

    #[test]
    fn a_frame_that_declares_more_than_the_bound_is_refused_before_decoding() {
        let packed = compress(&vec![7u8; 100_000], 3);
        assert!(matches!(
            decompress_bounded(&packed, 50_000),
            Err(CodecError::Inflate { bound: 50_000, .. })
        ));
        // Contexts are reused: the same call twice gives the same answer.
        assert_eq!(decompress_bounded(&packed, 100_000).unwrap().len(), 100_000);
        assert_eq!(decompress_bounded(&packed, 100_000).unwrap().len(), 100_000);
    }

    /// A frame that declares no size (a streaming encoder's): decoded into
    /// what it produces, however large the bound; past the bound, refused.
    #[test]
    fn a_frame_without_a_declared_size_costs_its_output_not_the_bound() {
        let undeclared = |data: &[u8]| {
            let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            io::Write::write_all(&mut encoder, data).unwrap();
            encoder.finish().unwrap()
        };
        let small = undeclared(b"twelve bytes");
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&small)
                .ok()
                .flatten(),
            None,
            "the test needs a frame without a size"
        );
        let out = decompress_bounded(&small, 1 << 30).unwrap();
        assert_eq!(out, b"twelve bytes");
        assert!(out.capacity() < 4096, "reserved {} bytes", out.capacity());

        let bomb = undeclared(&vec![0u8; 10 * 1024 * 1024]);
        assert!(matches!(
            decompress_bounded(&bomb, 1024 * 1024),
            Err(CodecError::Inflate { .. })
        ));
        let exact = undeclared(&[5u8; 1000]);
        assert_eq!(decompress_bounded(&exact, 1000).unwrap().len(), 1000);
    }

    #[test]
    fn the_output_bound_is_the_declared_size_within_the_bound() {
        let declared = compress(&[7u8; 10_000], 1);
        assert_eq!(output_bound(&declared, 1 << 20), 10_000);
        assert_eq!(output_bound(&declared, 4_096), 4_096);
        assert_eq!(output_bound(b"not zstd", 4_096), 4_096);
    }

    #[test]
    fn text_behind_noise_is_still_found_worth_compressing() {
        let text = b"{\"name\":\"asset\",\"tags\":[\"a\",\"b\"]} ".repeat(400);
        let mut mixed = random(4096);
        mixed.extend_from_slice(&text[..SAMPLE_LEN - 4096]);
        assert!(worth_compressing(&mixed));
        assert!(!worth_compressing(&random(SAMPLE_LEN)));
        assert!(!worth_compressing(&random(700)));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decompress_bounded(b"definitely not zstd", 1 << 20).is_err());
    }

    #[test]
    fn a_huge_window_request_is_refused() {
        // A frame header asking for a 2^31 window (window descriptor 0xA8 =
        // exponent 21 + 10 = 31): magic, frame header descriptor, window byte.
        let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 0xA8];
        frame.extend_from_slice(&[0x01, 0x00, 0x00]); // a last raw block of 0 bytes
        assert!(matches!(
            decompress_bounded(&frame, 1 << 20),
            Err(CodecError::Window { log: 31 })
        ));
    }

    #[test]
    fn sampling_tells_text_from_noise() {
        assert!(worth_compressing(&b"hello world, ".repeat(10_000)));
        assert!(!worth_compressing(&random(200_000)));
        assert!(!worth_compressing(b"tiny"));
        // Small ones too: random bytes skip the trial, text still compresses.
        assert!(!worth_compressing(&random(4096)));
        assert!(!worth_compressing(&random(1024)));
        assert!(worth_compressing(
            &b"{\"name\":\"asset\",\"size\":4096}".repeat(40)
        ));
    }
}
