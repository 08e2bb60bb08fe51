//! Inline bundle throughput: the CPU stages of the v2 engine for one asset.
//!
//! - `bundle/encode/KIND/SIZE`: [`encode_inline`] at the engine's default zstd
//!   level: protobuf, the compressibility sample, zstd when it pays, framing;
//! - `bundle/trial/KIND/SIZE`: the compressibility trial alone, the part of
//!   `encode` spent deciding;
//! - `bundle/decode_verify/KIND/SIZE`: what the receive side's verify worker
//!   does with that frame: header check, bounded zstd inflate (for
//!   `BUNDLE_ZSTD`), protobuf decode, BLAKE3 of the data against the claimed
//!   hash.
//!
//! KIND is `random` (incompressible: sent as `ASSET_BUNDLE`) or `json`
//! (JSON-like records: sent as `BUNDLE_ZSTD`); SIZE is 1 KiB, 4 KiB, 64 KiB
//! and 1 MiB (the default inline limit). Throughput is asset bytes per second.
//! The wire size of each frame is printed once per case.
//!
//! Run with `cargo bench --bench bundle` (add `-- --quick` for a fast pass).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use can_sync::asset::{AssetHash, Bundle};
use can_sync::engine::EngineConfig;
use can_sync::wire::data_stream::{decode_inline, encode_inline};
use can_sync::wire::{parse_header, FrameType, HEADER_LEN};

mod support;
use support::{bundle_of, random_bytes};

/// Asset sizes, up to the default inline limit.
const SIZES: [(usize, &str); 4] = [
    (1024, "1KiB"),
    (4 * 1024, "4KiB"),
    (64 * 1024, "64KiB"),
    (1024 * 1024, "1MiB"),
];

/// Deterministic JSON-like records: repeated keys, varying numbers and a hex
/// checksum per record, so it compresses like real metadata dumps (a few
/// times), not like a repeated string.
fn json_like(seed: u64, len: usize) -> Vec<u8> {
    const MIMES: [&str; 4] = ["image/png", "image/jpeg", "video/mp4", "text/plain"];
    const TAGS: [&str; 6] = ["holiday", "work", "family", "draft", "archive", "shared"];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = String::with_capacity(len + 256);
    out.push('[');
    let mut id = 0u64;
    while out.len() < len {
        let r = next();
        out.push_str(&format!(
            "{{\"id\":{id},\"name\":\"asset-{id}.{ext}\",\"mime\":\"{mime}\",\
             \"tags\":[\"{t1}\",\"{t2}\"],\"width\":{w},\"height\":{h},\
             \"created_at_ms\":{created},\"checksum\":\"{sum:016x}\"}},\n",
            ext = ["png", "jpg", "mp4", "txt"][(r % 4) as usize],
            mime = MIMES[(r % 4) as usize],
            t1 = TAGS[(r >> 8) as usize % TAGS.len()],
            t2 = TAGS[(r >> 16) as usize % TAGS.len()],
            w = 320 + (r >> 24) % 3520,
            h = 240 + (r >> 36) % 1920,
            created = 1_700_000_000_000 + (r >> 20) % 100_000_000_000,
            sum = next(),
        ));
        id += 1;
    }
    out.truncate(len);
    out.into_bytes()
}

/// What the receive side's verify worker does with one frame: header check,
/// [`decode_inline`] (bounded inflate, protobuf, hash parse), BLAKE3.
fn decode_and_verify(frame: &Bytes, limit: u32) -> Bundle {
    let header: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("whole header");
    let (frame_type, len) = parse_header(header, limit).expect("valid header");
    let payload = frame.slice(HEADER_LEN..);
    assert_eq!(payload.len(), len as usize);
    let zstd = match frame_type {
        FrameType::BundleZstd => true,
        FrameType::AssetBundle => false,
        other => panic!("not a bundle frame: {other:?}"),
    };
    let bundle = decode_inline(zstd, payload, limit as usize).expect("a valid bundle");
    assert!(AssetHash::of(&bundle.data) == bundle.hash, "hash mismatch");
    bundle
}

/// Makes `len` bytes of one kind of content from a seed.
type MakeBytes = fn(u64, usize) -> Vec<u8>;

fn bundles(c: &mut Criterion) {
    let config = EngineConfig::default();
    let level = config.zstd_level;
    let limit = config.max_frame_len();
    let mut group = c.benchmark_group("bundle");
    let kinds: [(&str, MakeBytes); 2] = [("random", random_bytes), ("json", json_like)];
    for (kind, make) in kinds {
        for (size, label) in SIZES {
            let bundle = bundle_of(make(size as u64, size), size as u64);
            let frame = encode_inline(bundle.clone(), level);
            let (frame_type, _) =
                parse_header(frame[..HEADER_LEN].try_into().expect("header"), limit)
                    .expect("valid header");
            println!(
                "bundle {kind}/{label}: {} as {} frame of {} bytes ({:.2}x)",
                size,
                frame_type.name(),
                frame.len(),
                size as f64 / frame.len() as f64
            );
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(format!("encode/{kind}/{label}"), |b| {
                b.iter(|| encode_inline(black_box(bundle.clone()), level))
            });
            group.bench_function(format!("trial/{kind}/{label}"), |b| {
                b.iter(|| can_sync::wire::compress::worth_compressing(black_box(&bundle.data)))
            });
            group.bench_function(format!("decode_verify/{kind}/{label}"), |b| {
                b.iter(|| decode_and_verify(black_box(&frame), limit))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bundles);
criterion_main!(benches);
