//! Live sync past its backlog: a burst of changes far larger than the
//! backlog a link may remember, toward a peer whose store answers late,
//! arrives whole. The link reads the change log in place of the events it
//! had no room for; the periodic check is off, so nothing else could make up
//! for a change it skipped.
//!
//! Arrival is awaited through the receiving store's own change events.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use can_sync::asset::{AssetHash, VerifiedBundle};
use can_sync::can::{Can, EmbeddedCan, HttpCan, SharedCan, StoreLimits};
use can_sync::node::LiveConfig;

use common::{
    await_assets, bundle, follow, memory_store, node, over_http, serve, SlowCan, TIMEOUT,
};

/// The backlog of the tests below: 40 times smaller than the burst.
const BACKLOG: usize = 500;

/// Assets in the burst from an embedded store.
const BURST: u64 = 20_000;

/// Assets in the burst from an HTTP store, where each lookup is a request:
/// still ten times the backlog, in a few seconds.
const HTTP_BURST: u64 = 5_000;

/// Writes `range` as tiny assets, a thousand per commit.
async fn write_burst(can: &dyn Can, range: std::ops::Range<u64>) -> Result<Vec<AssetHash>> {
    let mut hashes = Vec::new();
    let all: Vec<u64> = range.collect();
    for chunk in all.chunks(1_000) {
        let bundles = chunk
            .iter()
            .map(|&i| bundle(i, 48, 10).verify())
            .collect::<Result<Vec<VerifiedBundle>, _>>()?;
        hashes.extend(bundles.iter().map(VerifiedBundle::hash));
        for answer in can.push_batch(bundles).await? {
            answer?;
        }
    }
    Ok(hashes)
}

/// A writes a burst of `burst` tiny assets into `ca`; B, whose store
/// delays every push, follows A live with a backlog of [`BACKLOG`] and no
/// periodic check. Every asset reaches B, and A's status never shows more
/// than the backlog waiting.
async fn a_burst_past_the_backlog_arrives_whole(ca: SharedCan, burst: u64) -> Result<()> {
    let cb = memory_store()?;
    let slow: SharedCan = Arc::new(SlowCan::delayed(
        cb.clone(),
        Duration::from_millis(0),
        Duration::ZERO,
    ));
    let config = LiveConfig {
        backlog: BACKLOG,
        // No periodic check: only the change log can make up for the events
        // the link had no room for.
        check_interval: Duration::from_secs(3600),
        ..LiveConfig::default()
    };
    let a = node(ca.clone()).await?.with_live(config.clone());
    let b = node(slow).await?.with_live(config);
    let _accept = serve(&a);
    let link = follow(&b, a.ticket());
    // Once this one crossed live, the link is up: the burst is live sync's.
    let first = write_burst(ca.as_ref(), 0..1).await?;
    await_assets(cb.as_ref(), &first).await?;

    // What A's status shows waiting for B, sampled while the burst moves
    // (a measurement beside the test, not a wait).
    let most_waiting = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peers, most, b_id) = (
            a.peers().clone(),
            most_waiting.clone(),
            b.endpoint().id().to_string(),
        );
        tokio::spawn(async move {
            loop {
                for record in peers.snapshot() {
                    if record.id == b_id {
                        most.fetch_max(record.backlog, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let started = Instant::now();
    let hashes = write_burst(ca.as_ref(), 1..burst + 1).await?;
    let written = started.elapsed();
    await_assets(cb.as_ref(), &hashes).await?;
    let arrived = started.elapsed();
    sampler.abort();
    eprintln!("burst of {burst}: written in {written:?}, all at the peer after {arrived:?}");

    let most_waiting = most_waiting.load(Ordering::Relaxed);
    eprintln!("most waiting seen in the status: {most_waiting}");
    assert!(
        (1..=BACKLOG as u64).contains(&most_waiting),
        "the status showed up to {most_waiting} waiting"
    );
    // Shutdown lets the pushes in flight finish: B's counts are final.
    b.shutdown();
    tokio::time::timeout(TIMEOUT, link).await???;
    assert_eq!(
        b.stats().assets_received.load(Ordering::Relaxed),
        burst + 1,
        "each asset received once"
    );
    assert_eq!(b.stats().duplicates.load(Ordering::Relaxed), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_backlog_reaches_a_slow_peer_from_an_embedded_store() -> Result<()> {
    a_burst_past_the_backlog_arrives_whole(memory_store()?, BURST).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_backlog_reaches_a_slow_peer_from_an_http_store() -> Result<()> {
    let (ca, _server) = over_http(Arc::new(EmbeddedCan::memory(StoreLimits::default())?)).await?;
    a_burst_past_the_backlog_arrives_whole(ca, HTTP_BURST).await
}

/// `NAME` from the environment as a number, or `default`.
fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(text) => text.parse().with_context(|| format!("{name}={text:?}")),
        Err(_) => Ok(default),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A measurement: two daemons as users run them (each over its own
/// `serve-can` on disk), B following A live; `LIVE_BURST` tiny assets
/// (200,000 by default) are written into A's CAN at once. Prints how long
/// they took to reach B's CAN and the daemons' peak resident sets (their
/// stores live in the `serve-can` processes, so a daemon's set is the node
/// and its links). `LIVE_BACKLOG` sets `--live-backlog` (else the default);
/// `CAN_SYNC_BIN` picks the binary (say, a release build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: a large burst between two daemons, time and peak RSS"]
async fn a_large_burst_between_two_daemons() -> Result<()> {
    use common::process::{measured_bin, reset_peak_rss, start_program, vm_bytes};
    use futures::StreamExt;

    const LIMIT: Duration = Duration::from_secs(1800);
    let burst = env_u64("LIVE_BURST", 200_000)?;
    let backlog = std::env::var("LIVE_BACKLOG").ok();
    let bin = measured_bin();
    let dirs: Vec<tempfile::TempDir> = (0..4)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let path = |i: usize| dirs[i].path().to_str().expect("utf-8").to_owned();
    let serve = |dir: String| {
        let bin = bin.clone();
        async move {
            let args = ["serve-can", "--listen", "127.0.0.1:0", "--dir", &dir];
            let (child, line) = start_program(&bin, &args, "warn", TIMEOUT).await?;
            let url = line
                .strip_prefix("listening ")
                .with_context(|| format!("serve-can said {line:?}"))?
                .to_owned();
            Ok::<_, anyhow::Error>((child, url))
        }
    };
    let (_can_a, url_a) = serve(path(0)).await?;
    let (_can_b, url_b) = serve(path(1)).await?;
    let daemon = |url: String, dir: String, peer: Option<String>| {
        let (bin, backlog) = (bin.clone(), backlog.clone());
        async move {
            let mut args = vec![
                "daemon".to_owned(),
                "--can".into(),
                url,
                "--data-dir".into(),
                dir,
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--no-relay".into(),
                "--open".into(),
                "write".into(),
            ];
            if let Some(peer) = peer {
                args.extend(["--peer".into(), peer]);
            }
            if let Some(backlog) = backlog {
                args.extend(["--live-backlog".into(), backlog]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (child, line) = start_program(&bin, &args, "warn", TIMEOUT).await?;
            let ticket = line
                .strip_prefix("ticket ")
                .with_context(|| format!("daemon said {line:?}"))?
                .to_owned();
            Ok::<_, anyhow::Error>((child, ticket))
        }
    };
    let (daemon_a, ticket_a) = daemon(url_a.clone(), path(2), None).await?;
    let (daemon_b, _) = daemon(url_b.clone(), path(3), Some(ticket_a)).await?;
    let (a, b) = (HttpCan::new(&url_a)?, HttpCan::new(&url_b)?);
    // Live once one asset crossed.
    let first = write_burst(&a, 0..1).await?;
    await_assets(&b, &first).await?;

    let pids = [
        daemon_a.id().context("daemon a")?,
        daemon_b.id().context("daemon b")?,
    ];
    let idle: Vec<u64> = pids
        .iter()
        .map(|pid| vm_bytes(*pid, "VmRSS"))
        .collect::<Result<_>>()?;
    for pid in pids {
        reset_peak_rss(pid)?;
    }
    let mut events = b.subscribe(None).await?;
    let started = Instant::now();
    let hashes = write_burst(&a, 1..burst + 1).await?;
    let written = started.elapsed();
    let mut missing: std::collections::HashSet<AssetHash> = hashes.into_iter().collect();
    tokio::time::timeout(LIMIT, async {
        while !missing.is_empty() {
            let event = events.next().await.context("B's events ended")??;
            missing.remove(&event.hash);
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .with_context(|| format!("{} assets never reached B", missing.len()))??;
    let arrived = started.elapsed();
    let peaks: Vec<u64> = pids
        .iter()
        .map(|pid| vm_bytes(*pid, "VmHWM"))
        .collect::<Result<_>>()?;
    println!(
        "binary {bin}; --live-backlog {}; burst of {burst}: written into A's CAN in {:.1} s, \
         all in B's CAN after {:.1} s ({:.0} assets/s); daemon A RSS idle {:.1} MiB, peak {:.1} MiB; \
         daemon B idle {:.1} MiB, peak {:.1} MiB",
        backlog.as_deref().unwrap_or("default"),
        written.as_secs_f64(),
        arrived.as_secs_f64(),
        burst as f64 / arrived.as_secs_f64(),
        mib(idle[0]),
        mib(peaks[0]),
        mib(idle[1]),
        mib(peaks[1]),
    );
    Ok(())
}
