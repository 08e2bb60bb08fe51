//! `loadtest scale`: reconciliation at archive scale (issue #10).
//!
//! Two nodes in this process, each with an in-memory embedded store of the
//! same `N` tiny assets, loaded through the store API directly (no HTTP);
//! then, for each scheme (v2 with coded cells, v2 with full lists, v1):
//! a session that moves a fresh difference (`only` assets only on each side
//! and `edits` metadata edits, new for every scheme) and a reconnect that
//! moves nothing. Each reports reconciliation bytes (what crossed the wire
//! minus the data streams: the control stream, so for v1, whose assets ride
//! the control stream, the assets' bytes too), wall time and the CPU time of
//! the process (both sides together: an upper bound for either).
//!
//! Both sides share the process, so peak RSS is not reported per side here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use can_sync::asset::{AssetHash, Bundle};
use can_sync::can::{EmbeddedCan, SharedCan, StoreLimits};
use can_sync::engine::{EngineConfig, EngineStats};
use can_sync::node::{self, EndpointOptions, Node, Protocol};
use can_sync::pb;

use crate::procs::own_cpu_time;

/// One session's figures.
#[derive(Debug)]
pub(crate) struct Figures {
    recon_bytes: u64,
    wall: Duration,
    cpu: Duration,
    assets: (u64, u64),
    meta: u64,
}

/// A coded reconnect that moves nothing costs at most this, whatever the
/// archive (issue #10's target).
pub(crate) const RECONNECT_BOUND: u64 = 8 * 1024;

/// First contact: `assets` tiny assets seed from one store into an empty one
/// in one v2 session (coded reconciliation offered; the difference is the
/// whole archive, so it falls back to full lists), with the data streams
/// carrying every asset. Prints one row; fails unless everything arrived.
pub(crate) async fn seed(assets: u64) -> Result<Figures> {
    let (a, b) = (memory()?, memory()?);
    load(&a, &a, 0..assets, 1).await?;
    let figures = session(&a, &b, Protocol::V2, true).await?;
    print_row("v2 seed into empty", "first", &figures);
    ensure!(
        figures.assets == (0, assets),
        "seeded {:?} of {assets} assets",
        figures.assets
    );
    let held = b.stats().await?.assets;
    ensure!(
        held == assets,
        "the empty store holds {held} of {assets} assets"
    );
    Ok(figures)
}

/// Runs the scale comparison and prints its table; the figures of each
/// (scheme, session), checked for convergence and the reconnect bound.
pub(crate) async fn run(
    assets: u64,
    only: u64,
    edits: u64,
) -> Result<Vec<(&'static str, &'static str, Figures)>> {
    ensure!(edits <= assets, "more edits than shared assets");
    let (a, b) = (memory()?, memory()?);
    let started = Instant::now();
    load(&a, &b, 0..assets, 1).await?;
    println!(
        "loaded {assets} shared assets into both stores in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<22} {:<10} {:>14} {:>9} {:>9} {:>12} {:>6}",
        "scheme", "session", "recon bytes", "wall s", "cpu s", "sent/recv", "meta"
    );
    let schemes = [
        ("v2 coded cells", Protocol::V2, true),
        ("v2 full lists", Protocol::V2, false),
        ("v1", Protocol::V1, false),
    ];
    let mut figures = Vec::new();
    for (round, (name, protocol, coded)) in schemes.into_iter().enumerate() {
        // A fresh difference for this scheme: new assets on each side and
        // newer metadata on B for `edits` shared ones.
        let base = 1_000_000_000 + round as u64 * 10_000_000;
        load(&a, &a, base..base + only, 1).await?;
        load(&b, &b, base + 5_000_000..base + 5_000_000 + only, 1).await?;
        let edited = round as i64 + 2;
        load(&b, &b, 0..edits, edited).await?;
        let moved = session(&a, &b, protocol, coded).await?;
        print_row(name, "difference", &moved);
        ensure!(
            moved.assets == (only, only),
            "{name} moved {:?} assets, expected {only} each way",
            moved.assets
        );
        let again = session(&a, &b, protocol, coded).await?;
        print_row(name, "reconnect", &again);
        ensure!(
            again.assets == (0, 0) && again.meta == 0,
            "{name}: a reconnect moved data"
        );
        ensure!(
            !coded || again.recon_bytes <= RECONNECT_BOUND,
            "a coded reconnect cost {} bytes, above {RECONNECT_BOUND}",
            again.recon_bytes
        );
        figures.push((name, "difference", moved));
        figures.push((name, "reconnect", again));
    }
    Ok(figures)
}

fn print_row(name: &str, session: &str, f: &Figures) {
    println!(
        "{:<22} {:<10} {:>14} {:>9.3} {:>9.3} {:>12} {:>6}",
        name,
        session,
        f.recon_bytes,
        f.wall.as_secs_f64(),
        f.cpu.as_secs_f64(),
        format!("{}/{}", f.assets.0, f.assets.1),
        f.meta
    );
}

fn memory() -> Result<SharedCan> {
    Ok(Arc::new(EmbeddedCan::memory(StoreLimits::default())?))
}

/// A tiny asset: 64 bytes derived from `i`, metadata changed at `at`.
pub(crate) fn tiny(i: u64, at: i64) -> Bundle {
    let mut data = Vec::with_capacity(64);
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while data.len() < 64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    Bundle {
        hash: AssetHash::of(&data),
        data: Bytes::from(data),
        meta: pb::AssetMeta {
            name: format!("a{i}"),
            created_at_ms: 1_000,
            meta_updated_at_ms: at,
            ..Default::default()
        },
    }
}

/// Pushes the assets of `range` into both stores (once when they are the
/// same), from several tasks so the store's writer commits them in groups.
async fn load(a: &SharedCan, b: &SharedCan, range: std::ops::Range<u64>, at: i64) -> Result<()> {
    const TASKS: u64 = 16;
    let same = Arc::ptr_eq(a, b);
    let tasks = (0..TASKS).map(|task| {
        let (a, b, range) = (a.clone(), b.clone(), range.clone());
        tokio::spawn(async move {
            for i in range.skip(task as usize).step_by(TASKS as usize) {
                let asset = tiny(i, at);
                if !same {
                    b.push(asset.clone()).await?;
                }
                a.push(asset).await?;
            }
            anyhow::Ok(())
        })
    });
    for task in futures::future::join_all(tasks).await {
        task.context("loading task")??;
    }
    Ok(())
}

async fn node_of(can: &SharedCan, coded: bool) -> Result<Node> {
    let endpoint = node::bind(&EndpointOptions {
        secret_key: iroh::SecretKey::generate(),
        listen: Some("127.0.0.1:0".parse()?),
        relay: false,
        // A test rig: every dialer may write.
        access: std::sync::Arc::new(node::Access::open(node::Right::Write)),
        congestion: Default::default(),
    })
    .await?;
    Ok(
        Node::new(endpoint, can.clone()).with_engine_config(EngineConfig {
            coded_recon: coded,
            ..EngineConfig::default()
        }),
    )
}

/// One session, B dialling A.
async fn session(a: &SharedCan, b: &SharedCan, protocol: Protocol, coded: bool) -> Result<Figures> {
    let (server, client) = (node_of(a, coded).await?, node_of(b, coded).await?);
    let accept = {
        let server = server.clone();
        tokio::spawn(async move { server.accept_loop().await })
    };
    let data = |stats: &EngineStats| {
        stats.wire_bytes_sent.load(Ordering::Relaxed)
            + stats.wire_bytes_received.load(Ordering::Relaxed)
    };
    let (cpu, wall) = (own_cpu_time(), Instant::now());
    let report = client.sync_with(&server.ticket(), protocol).await?;
    let (cpu, wall) = (own_cpu_time().saturating_sub(cpu), wall.elapsed());
    accept.abort();
    Ok(Figures {
        recon_bytes: report.wire_bytes.saturating_sub(data(client.stats())),
        wall,
        cpu,
        assets: (report.assets_sent, report.assets_received),
        meta: report.meta_sent + report.meta_applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI's scale run: small, but every scheme converges, a coded reconnect
    /// stays within its bound and coded cells cost less than full lists.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_scale_run_converges_within_the_byte_bounds() -> Result<()> {
        let figures = tokio::time::timeout(Duration::from_secs(240), run(3_000, 30, 10)).await??;
        let bytes = |scheme: &str, session: &str| {
            figures
                .iter()
                .find(|(s, p, _)| *s == scheme && *p == session)
                .map(|(_, _, f)| f.recon_bytes)
                .expect("measured")
        };
        assert!(bytes("v2 coded cells", "reconnect") <= RECONNECT_BOUND);
        assert!(bytes("v2 coded cells", "difference") < bytes("v2 full lists", "difference"));
        assert!(bytes("v2 full lists", "reconnect") < bytes("v1", "reconnect"));
        Ok(())
    }
}
