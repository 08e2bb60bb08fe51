//! `loadtest scale --on-disk DIR`: reconciliation at archive scale between
//! two real processes on durable stores, so each side's peak RSS is its own
//! (issue #10, items 3 and 6).
//!
//! Two embedded stores on disk under `DIR` are filled directly through the
//! store API in large batches (not N HTTP requests): `N` tiny assets in both,
//! `only` more in each alone and `edits` newer metadata on B. Then
//! `can-sync daemon --store A` serves A; `can-sync seed` first seeds an
//! empty store C from it (first contact: everything moves, reconciled by the
//! full exchange), then runs twice with B: once to move the difference, once
//! more as a reconnect that moves nothing. Each run reports the session's frame bytes (for the
//! difference this includes the assets' bytes), the session's own time (as
//! `seed --json` reports it: connection to the end of the exchange), the seed
//! process's wall time (opening its store included) and CPU, the seed's peak RSS and the daemon's peak RSS so far (`VmHWM`, read
//! from `/proc`), and what moved. Protocol 2 negotiates coded
//! reconciliation; `--protocol 1` runs the original protocol for contrast.
//!
//! `--load-only` fills store A alone and stops: the loader by itself, its
//! rate printed each million (issue 22's bulk loading). The stores are
//! opened with the database cache of a bulk load.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use can_sync::can::store::{load_batch, load_cache};
use can_sync::can::{Can, EmbeddedCan, StoreLimits};

use crate::agents::SeedReport;
use crate::procs::Proc;
use crate::procs::{own_cpu_time, own_peak_rss};
use crate::scale::tiny;

/// The loader prints its rate each time this many more assets are in.
const MILLION: u64 = 1_000_000;
/// A daemon on a large store first builds its coded cells from it.
const STARTUP: Duration = Duration::from_secs(600);
/// The longest a seed may take.
const SESSION: Duration = Duration::from_secs(1_800);

/// Builds the two stores in `dir`, then runs the difference and the
/// reconnect through real processes of `bin` and prints one row each.
pub(crate) async fn run(
    dir: &Path,
    bin: &Path,
    assets: u64,
    only: u64,
    edits: u64,
    protocol: u8,
) -> Result<()> {
    ensure!(edits <= assets, "more edits than shared assets");
    let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
    for store in [&a, &b, &c] {
        if store.exists() {
            std::fs::remove_dir_all(store)
                .with_context(|| format!("clearing {}", store.display()))?;
        }
    }
    let started = Instant::now();
    let for_a = [(0..assets, 1), (1_000_000_000..1_000_000_000 + only, 1)];
    let for_b = [
        (0..assets, 1),
        (2_000_000_000..2_000_000_000 + only, 1),
        (0..edits, 2),
    ];
    // Two stores load at once: each takes half a load's cache.
    let load = Load {
        cache: load_cache() / 2,
        batch: None,
        by_hash: true,
    };
    let (loaded_a, loaded_b) = tokio::try_join!(fill(&a, &for_a, load), fill(&b, &for_b, load))?;
    println!(
        "loaded {loaded_a} assets into A and {loaded_b} into B on disk in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    let mut daemon = Proc::spawn(
        "daemon",
        bin,
        &args(&[
            "daemon",
            "--store",
            path(&a)?,
            "--data-dir",
            path(&dir.join("node-a"))?,
            "--listen",
            "127.0.0.1:0",
            "--no-relay",
            "--open",
            "write",
        ]),
        &dir.join("daemon.log"),
    )?;
    let line = daemon.first_line(STARTUP).await?;
    let ticket = line
        .strip_prefix("ticket ")
        .with_context(|| format!("the daemon printed {line:?}, not `ticket T`"))?
        .to_string();
    println!(
        "{:<11} {:>14} {:>9} {:>8} {:>8} {:>13} {:>15} {:>9}",
        "session",
        "wire bytes",
        "session s",
        "wall s",
        "cpu s",
        "seed peak MiB",
        "daemon peak MiB",
        "received"
    );
    // First contact: an empty store C seeds everything A holds, through the
    // full exchange (the difference is the whole store). Then B moves the
    // difference, then reconnects.
    let sessions = [
        ("first", &c, assets + only),
        ("difference", &b, only),
        ("reconnect", &b, 0),
    ];
    for (session, store, expected) in sessions {
        let started = Instant::now();
        let mut seed = Proc::spawn(
            session,
            bin,
            &args(&[
                "seed",
                "--store",
                path(store)?,
                "--from",
                &ticket,
                "--json",
                "--no-relay",
                "--protocol",
                &protocol.to_string(),
            ]),
            &dir.join(format!("seed-{session}.log")),
        )?;
        let line = seed.first_line(SESSION).await.ok();
        let exit = seed.wait(SESSION).await?;
        let wall = started.elapsed();
        ensure!(
            exit.success(),
            "seed ({session}) exited with {:?}{}",
            exit.code,
            seed.log_tail()
        );
        let line = line.with_context(|| format!("seed ({session}) printed nothing"))?;
        let report: SeedReport = serde_json::from_str(&line)
            .with_context(|| format!("seed ({session}) printed {line:?}"))?;
        let secs = serde_json::from_str::<serde_json::Value>(&line)?["secs"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let daemon_peak = daemon.usage_handle().lock().expect("usage lock").peak_rss;
        println!(
            "{:<11} {:>14} {:>9.3} {:>8.3} {:>8.3} {:>13.1} {:>15.1} {:>9}",
            session,
            report.wire_bytes,
            secs,
            wall.as_secs_f64(),
            exit.usage.cpu_s,
            mib(exit.usage.peak_rss),
            mib(daemon_peak),
            report.assets_received
        );
        ensure!(
            report.assets_received == expected,
            "seed ({session}) received {} assets, expected {expected}",
            report.assets_received
        );
    }
    let exit = daemon.terminate(Duration::from_secs(30)).await?;
    println!(
        "daemon: peak RSS {:.1} MiB, CPU {:.3} s (opening the store included)",
        mib(exit.usage.peak_rss),
        exit.usage.cpu_s
    );
    Ok(())
}

/// How a loader loads: the database cache of its store, its batches
/// (growing with the store, [`load_batch`], unless fixed), and the order
/// of its assets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) cache: usize,
    pub(crate) batch: Option<u64>,
    /// By hash, the store's key order, as `can-sync add` adds small files;
    /// otherwise by index, which is random in the key space.
    pub(crate) by_hash: bool,
}

impl Load {
    /// A bulk load's cache ([`load_cache`]), or `cache_mib`; batches of
    /// `batch` when given; by hash or by index.
    pub(crate) fn new(cache_mib: Option<usize>, batch: Option<u64>, by_hash: bool) -> Self {
        Self {
            cache: cache_mib.map_or_else(load_cache, |mib| mib << 20),
            batch,
            by_hash,
        }
    }
}

/// `--load-only`: fills store A in `dir` as [`run`] does (`assets` shared
/// and `only` of its own), printing the rate of each million, and stops.
pub(crate) async fn load_only(dir: &Path, assets: u64, only: u64, load: Load) -> Result<()> {
    let a = dir.join("a");
    if a.exists() {
        std::fs::remove_dir_all(&a).with_context(|| format!("clearing {}", a.display()))?;
    }
    println!(
        "database cache {} MiB, {}, {}",
        load.cache >> 20,
        load.batch.map_or_else(
            || "batches growing with the store".to_string(),
            |b| format!("{b} to a batch")
        ),
        if load.by_hash { "by hash" } else { "by index" }
    );
    let started = Instant::now();
    let loaded = fill(
        &a,
        &[(0..assets, 1), (1_000_000_000..1_000_000_000 + only, 1)],
        load,
    )
    .await?;
    println!(
        "loaded {loaded} assets into A on disk in {:.1} s ({:.0} assets/s; {})",
        started.elapsed().as_secs_f64(),
        loaded as f64 / started.elapsed().as_secs_f64(),
        a.display()
    );
    Ok(())
}

/// Opens (creates) the store in `dir`, with the database cache `load`
/// says, and pushes each range of tiny assets, metadata changed at the
/// paired time, in batches, printing the rate of each million (and the
/// CPU seconds it cost this process, every thread of it, and its peak RSS);
/// returns how many assets it holds once closed.
async fn fill(dir: &Path, ranges: &[(std::ops::Range<u64>, i64)], load: Load) -> Result<u64> {
    let limits = StoreLimits {
        database_cache: load.cache,
        ..StoreLimits::default()
    };
    let store = EmbeddedCan::open(dir, limits)?;
    let name = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    // Each asset's index and stamp, in the order they go in.
    let mut order: Vec<(u64, i64)> = ranges
        .iter()
        .flat_map(|(range, at)| range.clone().map(move |i| (i, *at)))
        .collect();
    if load.by_hash {
        order.sort_by_cached_key(|&(i, at)| tiny(i, at).hash);
    }
    let (mut pushed, mut mark) = (0u64, (Instant::now(), 0u64, own_cpu_time()));
    while (pushed as usize) < order.len() {
        let batch = load
            .batch
            .unwrap_or(load_batch(pushed, load.cache) as u64)
            .max(1) as usize;
        let next = pushed as usize;
        let end = (next + batch).min(order.len());
        let batch = order[next..end]
            .iter()
            .map(|&(i, at)| tiny(i, at).verify())
            .collect::<Result<Vec<_>, _>>()?;
        for answer in store.push_batch(batch).await? {
            answer?;
        }
        let before = pushed;
        pushed = end as u64;
        if pushed / MILLION != before / MILLION {
            let cpu = own_cpu_time();
            println!(
                "{name}: {pushed} assets, {:.0} assets/s over the last {} ({:.1} CPU s; peak RSS {:.0} MiB)",
                (pushed - mark.1) as f64 / mark.0.elapsed().as_secs_f64(),
                pushed - mark.1,
                (cpu - mark.2).as_secs_f64(),
                mib(own_peak_rss())
            );
            mark = (Instant::now(), pushed, cpu);
        }
    }
    let assets = store.stats().await?.assets;
    // Closing waits for the writer to end and save the coded cells, so the
    // daemon finds the folder free.
    tokio::task::spawn_blocking(move || drop(store)).await?;
    Ok(assets)
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|part| part.to_string()).collect()
}

fn path(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
