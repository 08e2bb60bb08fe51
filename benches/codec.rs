//! Wire codec throughput: frames and compact summaries, no IO.
//!
//! - `frame/encode/SIZE`: [`encode_frame`] of a run of frames with SIZE-byte
//!   payloads (64 B, 4 KiB, 1 MiB) into a reused buffer;
//! - `frame/decode/SIZE`: [`FrameDecoder`] splitting the same run back into
//!   frames (zero-copy: the figure is per-frame overhead, not a memcpy);
//! - `summary/encode` and `summary/decode`: the compact `RECON` summary
//!   encoding of 10,000 assets, zstd included.
//!
//! Each run holds about 4 MiB of payload (at least 16 frames), so the
//! per-frame cost of small payloads and the copy cost of large ones both show.
//!
//! Run with `cargo bench --bench codec` (add `-- --quick` for a fast pass).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use can_sync::asset::{AssetHash, MetaVersion, Summary};
use can_sync::recon::compact;
use can_sync::wire::{encode_frame, FrameDecoder, FrameType, HEADER_LEN};

mod support;
use support::random_bytes;

/// Payload sizes of the frame benches.
const FRAME_SIZES: [(usize, &str); 3] = [(64, "64B"), (4 * 1024, "4KiB"), (1024 * 1024, "1MiB")];

/// Payload bytes per run of frames.
const RUN_BYTES: usize = 4 * 1024 * 1024;

/// Summaries per compact summary.
const SUMMARIES: usize = 10_000;

/// The zstd level the v2 session uses for summaries (`EngineConfig` default).
const SUMMARY_LEVEL: i32 = 3;

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for (size, label) in FRAME_SIZES {
        let count = (RUN_BYTES / size).max(16);
        let payload = random_bytes(size as u64, size);
        let mut encoded = BytesMut::with_capacity(count * (HEADER_LEN + size));
        for _ in 0..count {
            encode_frame(FrameType::AssetBundle, &payload, &mut encoded).expect("small payload");
        }
        let encoded = encoded.freeze();
        group.throughput(Throughput::ElementsAndBytes {
            elements: count as u64,
            bytes: (count * size) as u64,
        });

        let mut buf = BytesMut::with_capacity(encoded.len());
        group.bench_function(format!("encode/{label}"), |b| {
            b.iter(|| {
                buf.clear();
                for _ in 0..count {
                    encode_frame(FrameType::AssetBundle, black_box(&payload), &mut buf)
                        .expect("small payload");
                }
                black_box(buf.len())
            })
        });

        group.bench_function(format!("decode/{label}"), |b| {
            b.iter_batched(
                || BytesMut::from(&encoded[..]),
                |mut src| {
                    let mut decoder = FrameDecoder::default();
                    let mut n = 0usize;
                    while let Some(frame) = decoder.decode(&mut src).expect("valid frames") {
                        n += black_box(frame).payload.len();
                    }
                    assert_eq!(n, count * size);
                    src
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// `n` summaries as a store lists them: sorted by hash, full 32-byte digests.
fn summaries(n: usize) -> Vec<Summary> {
    let mut out: Vec<Summary> = (0..n as u64)
        .map(|i| Summary {
            hash: AssetHash::of(&i.to_le_bytes()),
            created_at_ms: 1_700_000_000_000 + i as i64 * 1_000,
            size: 4096 + (i * 7919) % (1 << 20),
            version: MetaVersion::announced(
                1_700_000_000_000 + i as i64 * 1_500,
                &random_bytes(i, 32),
            ),
        })
        .collect();
    out.sort_by_key(|s| s.hash);
    out
}

fn summary(c: &mut Criterion) {
    let list = summaries(SUMMARIES);
    let packed = compact::encode(&list, SUMMARY_LEVEL);
    let mut group = c.benchmark_group("summary");
    group.throughput(Throughput::Elements(SUMMARIES as u64));
    group.bench_function("encode/10k", |b| {
        b.iter(|| compact::encode(black_box(&list), SUMMARY_LEVEL))
    });
    group.bench_function("decode/10k", |b| {
        b.iter(|| compact::decode(black_box(&packed), SUMMARIES as u64).expect("valid summary"))
    });
    group.finish();
    println!(
        "summary: {SUMMARIES} entries pack to {} bytes ({:.1} B/entry)",
        packed.len(),
        packed.len() as f64 / SUMMARIES as f64
    );
}

criterion_group!(benches, frames, summary);
criterion_main!(benches);
