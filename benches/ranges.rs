//! What verifying by ranges costs per byte, and why groups are 1 MiB.
//!
//! - `hash/plain`: BLAKE3 of 64 MiB in one hasher: what checking a whole
//!   asset at its end costs, the floor;
//! - `hash/outboard`: [`OutboardHasher`] over the same bytes: the hash and
//!   the outboard kept while a blob is written;
//! - `verify/SIZE`: each group of SIZE checked on its own against its
//!   chaining value, as a receiver checks what arrives (computed with
//!   `blake3::hazmat` at each size; the store's groups are 1 MiB). Smaller
//!   groups give BLAKE3's SIMD fewer chunks at once and cost a larger
//!   outboard (32 bytes per group).
//!
//! Run with `cargo bench --bench ranges` (add `-- --quick` for a fast pass).

use std::hint::black_box;

use blake3::hazmat::HasherExt as _;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use can_sync::can::store::ranges::{Outboard, OutboardHasher, GROUP_BYTES};

mod support;
use support::random_bytes;

/// Bytes hashed per iteration.
const BYTES: usize = 64 * 1024 * 1024;

/// Group sizes compared: 16 KiB to 4 MiB.
const GROUP_SIZES: [(usize, &str); 5] = [
    (16 * 1024, "16KiB"),
    (64 * 1024, "64KiB"),
    (256 * 1024, "256KiB"),
    (1024 * 1024, "1MiB"),
    (4 * 1024 * 1024, "4MiB"),
];

fn hashing(c: &mut Criterion) {
    let data = random_bytes(21, BYTES);
    let mut group = c.benchmark_group("hash");
    group.throughput(Throughput::Bytes(BYTES as u64));
    group.bench_function("plain", |b| b.iter(|| blake3::hash(black_box(&data))));
    group.bench_function("outboard", |b| {
        b.iter(|| {
            let mut hasher = OutboardHasher::default();
            hasher.update(black_box(&data));
            hasher.finalize()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Bytes(BYTES as u64));
    for (size, name) in GROUP_SIZES {
        group.bench_function(name, |b| {
            b.iter(|| {
                for (index, piece) in data.chunks(size).enumerate() {
                    let mut hasher = blake3::Hasher::new();
                    hasher.set_input_offset((index * size) as u64);
                    hasher.update(piece);
                    black_box(hasher.finalize_non_root());
                }
            })
        });
    }
    // The store's own check, at its group size, against its outboard.
    let mut hasher = OutboardHasher::default();
    hasher.update(&data);
    let (_, outboard): (_, Outboard) = hasher.finalize();
    group.bench_function("store", |b| {
        b.iter(|| {
            for (index, piece) in data.chunks(GROUP_BYTES as usize).enumerate() {
                outboard.verify_group(index as u64, piece).unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, hashing);
criterion_main!(benches);
