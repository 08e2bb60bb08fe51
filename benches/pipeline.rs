//! Whole sessions: two nodes on loopback (relays off), in-memory stores, one
//! side full and the other empty, protocol v1 against v2.
//!
//! Each case syncs a fresh empty receiver with a sender whose store was filled
//! once: the receiver dials, the session runs both ways (nothing flows back),
//! and the time from dial to the session's end is measured (QUIC handshake
//! included; binding the receiver and tearing it down are not).
//!
//! - `pipeline/2000x4KiB/{v1,v2}`: many small inline assets;
//! - `pipeline/64x1MiB/{v1,v2}`: inline assets at the default inline limit;
//! - `pipeline/4x16MiB/{v1,v2}`: assets above the inline limit, which v2
//!   streams in chunks and v1 sends as one frame each.
//!
//! The data is random, so v2 sends it uncompressed: this compares the
//! pipelines, not compression. Throughput is asset bytes (and assets) moved
//! per second. Every case prints one session report before it is measured.
//!
//! Run with `cargo bench --bench pipeline` (a few minutes on 2 cores; add
//! `-- --quick` for a fast pass, or a filter such as `-- 4x16MiB`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tokio::runtime::Runtime;

use can_sync::can::{EmbeddedCan, SharedCan, StoreLimits};
use can_sync::node::{self, EndpointOptions, Node, Protocol};

mod support;

/// The cases: (name, assets, bytes per asset).
const CASES: [(&str, u64, usize); 3] = [
    ("2000x4KiB", 2000, 4 * 1024),
    ("64x1MiB", 64, 1024 * 1024),
    ("4x16MiB", 4, 16 * 1024 * 1024),
];

/// A session that takes longer than this is a hang, not a measurement.
const SESSION_TIMEOUT: Duration = Duration::from_secs(120);

/// Deterministic asset `i` of `len` random (incompressible) bytes.
fn bundle(i: u64, len: usize) -> can_sync::asset::Bundle {
    support::bundle_of(support::random_bytes(i, len), i)
}

/// A node on 127.0.0.1 with a fresh key, relays and discovery off.
async fn loopback_node(can: SharedCan) -> Result<Node> {
    let endpoint = node::bind(&EndpointOptions {
        secret_key: iroh::SecretKey::generate(),
        listen: Some("127.0.0.1:0".parse()?),
        relay: false,
        // A benchmark rig: every dialer may write.
        access: std::sync::Arc::new(node::Access::open(node::Right::Write)),
        congestion: Default::default(),
    })
    .await?;
    Ok(Node::new(endpoint, can))
}

fn memory_store() -> Result<SharedCan> {
    Ok(Arc::new(EmbeddedCan::memory(StoreLimits::default())?))
}

/// The full side of every session of a case: filled once, serving.
struct Sender {
    node: Node,
    accept: tokio::task::JoinHandle<()>,
    assets: u64,
}

impl Sender {
    async fn filled(assets: u64, size: usize) -> Result<Self> {
        let can = memory_store()?;
        for i in 0..assets {
            can.push(bundle(i, size)).await?;
        }
        let node = loopback_node(can).await?;
        let serving = node.clone();
        let accept = tokio::spawn(async move { serving.accept_loop().await });
        Ok(Self {
            node,
            accept,
            assets,
        })
    }

    async fn shut_down(self) {
        self.node.endpoint().close().await;
        let _ = self.accept.await;
    }

    /// One session into a fresh empty receiver; returns its report and the
    /// time from dial to the end of the session.
    async fn sync_fresh(
        &self,
        protocol: Protocol,
    ) -> Result<(can_sync::session::SessionReport, Duration)> {
        let receiver = loopback_node(memory_store()?).await?;
        let ticket = self.node.ticket();
        let start = Instant::now();
        let report =
            tokio::time::timeout(SESSION_TIMEOUT, receiver.sync_with(&ticket, protocol)).await??;
        let elapsed = start.elapsed();
        receiver.endpoint().close().await;
        ensure!(
            report.assets_received == self.assets && report.rejected.is_empty(),
            "incomplete session: {report:?}"
        );
        Ok((report, elapsed))
    }
}

fn pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("pipeline");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    for (name, assets, size) in CASES {
        let sender = runtime
            .block_on(Sender::filled(assets, size))
            .expect("filling the sender");
        group.throughput(Throughput::ElementsAndBytes {
            elements: assets,
            bytes: assets * size as u64,
        });
        for (label, protocol) in [("v1", Protocol::V1), ("v2", Protocol::V2)] {
            print_one(&runtime, &sender, name, label, protocol);
            let sender = &sender;
            group.bench_function(format!("{name}/{label}"), |b| {
                b.to_async(&runtime).iter_custom(|iters| async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (_, elapsed) =
                            sender.sync_fresh(protocol).await.expect("session failed");
                        total += elapsed;
                    }
                    total
                })
            });
        }
        runtime.block_on(sender.shut_down());
    }
    group.finish();
}

/// Runs one session outside the measurement and prints what it moved.
fn print_one(runtime: &Runtime, sender: &Sender, name: &str, label: &str, protocol: Protocol) {
    let (report, elapsed) = runtime
        .block_on(sender.sync_fresh(protocol))
        .expect("session failed");
    println!(
        "pipeline {name}/{label}: {} assets, {} payload bytes, {} wire bytes in {:.0?} \
         ({:.0} MB/s)",
        report.assets_received,
        report.payload_bytes,
        report.wire_bytes,
        elapsed,
        report.payload_bytes as f64 / elapsed.as_secs_f64() / 1e6
    );
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
