//! The can-sync row of `loadtest vs-rsync`: for each set, `can-sync daemon`
//! on its store A and `can-sync seed` into an empty on-disk store B, timed
//! spawn to exit like the other rows; then B is opened here and must hold
//! every source file, the spot-checked ones byte for byte.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use can_sync::asset::AssetHash;
use can_sync::can::{self, Can, EmbeddedCan, StoreLimits, StoreStats};
use futures::StreamExt;

use super::report::{Report, Row};
use super::source::{Asset, Source};
use super::{budget, remove, Work, GRACE, STARTUP};
use crate::agents::SeedReport;
use crate::procs::Proc;

/// Small files whose bytes are compared in store B (spread over the set).
const SPOT_CHECKS: usize = 16;

/// The can-sync row: for each set, a daemon on its store A and a seed into an
/// empty store B, then B checked.
pub(super) async fn can_sync_row(
    work: &Work,
    bin: &Path,
    source: &Source,
    report: &mut Report,
) -> Row {
    let mut row = Row::new("can-sync v2");
    row.note = Some("durable: embedded on-disk stores".into());
    for (set, assets) in [("small", &source.small), ("large", &source.large)] {
        match can_sync_pull(work, bin, set, assets).await {
            Ok((took, held, session)) => {
                row.record(set, assets, Ok(took));
                if set == "small" {
                    report.can_sync_small_held = Some(held);
                    report.can_sync_small_session_secs = Some(session);
                } else {
                    report.can_sync_large_held = Some(held);
                    report.can_sync_large_session_secs = Some(session);
                }
            }
            Err(err) => row.record(set, assets, Err(err)),
        }
    }
    row
}

/// The row of `--no-ranges-row`: the large file again, both agents with
/// `--no-ranges` (sent and taken whole, checked at its end: the path before
/// verified ranges). The small files are inline either way, so not rerun.
pub(super) async fn no_ranges_row(work: &Work, bin: &Path, source: &Source) -> Row {
    let mut row = Row::new("can-sync --no-ranges");
    row.note = Some("large file only, both agents with --no-ranges".into());
    let flags = ["--no-ranges".to_string()];
    let result = can_sync_pull_with(work, bin, "large", &source.large, &flags, "-no-ranges").await;
    row.record("large", &source.large, result.map(|(took, _, _)| took));
    row
}

/// [`can_sync_pull_with`] with the agents' defaults.
async fn can_sync_pull(
    work: &Work,
    bin: &Path,
    set: &str,
    assets: &[Asset],
) -> Result<(Duration, StoreStats, f64)> {
    can_sync_pull_with(work, bin, set, assets, &[], "").await
}

/// `can-sync daemon --store a-SET` and, timed spawn to exit, `can-sync seed
/// --store b-SET`; then B checked and removed. The wall time, what B held,
/// and the seed's own session seconds. `flags` go to both agents; `tag`
/// ends the names of their logs.
async fn can_sync_pull_with(
    work: &Work,
    bin: &Path,
    set: &str,
    assets: &[Asset],
    flags: &[String],
    tag: &str,
) -> Result<(Duration, StoreStats, f64)> {
    let (a, b, node) = (
        work.can(&format!("a-{set}")),
        work.can(&format!("b-{set}")),
        work.can(&format!("node-{set}")),
    );
    remove(&b)?;
    std::fs::create_dir_all(&node)?;
    let name = format!("daemon-{set}{tag}");
    let mut daemon = Proc::spawn(
        &name,
        bin,
        &[
            "daemon".into(),
            "--store".into(),
            path_string(&a)?,
            "--data-dir".into(),
            path_string(&node)?,
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--no-relay".into(),
            "--open".into(),
            "write".into(),
        ]
        .into_iter()
        .chain(flags.iter().cloned())
        .collect::<Vec<String>>(),
        &work.log(&name),
    )?;
    let line = daemon.first_line(STARTUP).await?;
    let ticket = line
        .strip_prefix("ticket ")
        .with_context(|| format!("{name} printed {line:?}, not `ticket T`"))?
        .to_string();

    work.settle().await?;
    let timeout = budget(assets.len(), Source::bytes(assets));
    let name = format!("seed-{set}{tag}");
    let started = Instant::now();
    let mut seed = Proc::spawn(
        &name,
        bin,
        &[
            "seed".into(),
            "--store".into(),
            path_string(&b)?,
            "--from".into(),
            ticket,
            "--json".into(),
            "--no-relay".into(),
        ]
        .into_iter()
        .chain(flags.iter().cloned())
        .collect::<Vec<String>>(),
        &work.log(&name),
    )?;
    // seed prints its one line when it is done, so this is most of the wait.
    let line = seed.first_line(timeout).await.ok();
    let left = timeout.saturating_sub(started.elapsed());
    let exit = seed.wait(left.max(Duration::from_secs(1))).await?;
    let took = started.elapsed();
    ensure!(
        exit.success(),
        "{name} exited with {:?}{}",
        exit.code,
        seed.log_tail()
    );
    let line = line.with_context(|| format!("{name} printed nothing"))?;
    let seeded: SeedReport = serde_json::from_str(&line)
        .with_context(|| format!("{name} printed {line:?}, not its JSON report"))?;
    let session: serde_json::Value = serde_json::from_str(&line)?;
    ensure!(
        seeded.assets_received == assets.len() as u64,
        "{name} received {} of {} assets",
        seeded.assets_received,
        assets.len()
    );
    let stopped = daemon.terminate(GRACE).await?;
    ensure!(
        stopped.success(),
        "daemon-{set}{tag} exited with {:?} after SIGTERM{}",
        stopped.code,
        daemon.log_tail()
    );

    let held = check_store(&b, assets).await?;
    remove(&b)?;
    Ok((took, held, session["secs"].as_f64().unwrap_or(0.0)))
}

/// Opens store `dir` and checks it holds exactly `assets`, comparing the
/// bytes of up to [`SPOT_CHECKS`] of them (spread over the set) with their
/// source files; what it holds.
async fn check_store(dir: &Path, assets: &[Asset]) -> Result<StoreStats> {
    let store = EmbeddedCan::open(dir, StoreLimits::default())
        .with_context(|| format!("opening store B in {}", dir.display()))?;
    let stats = store.stats().await?;
    let bytes = Source::bytes(assets);
    ensure!(
        stats.assets == assets.len() as u64 && stats.bytes == bytes,
        "store B holds {} assets of {} bytes, not {} of {bytes}",
        stats.assets,
        stats.bytes,
        assets.len()
    );
    let held: HashSet<AssetHash> = can::list_all(&store)
        .await?
        .into_iter()
        .map(|s| s.hash)
        .collect();
    let missing = assets.iter().filter(|a| !held.contains(&a.hash)).count();
    ensure!(missing == 0, "store B lacks {missing} of the source files");
    let step = assets.len().div_ceil(SPOT_CHECKS).max(1);
    for asset in assets.iter().step_by(step) {
        same_bytes(&store, asset).await?;
    }
    Ok(stats)
}

/// Streams `asset` out of `store` and compares it with its source file.
async fn same_bytes(store: &EmbeddedCan, asset: &Asset) -> Result<()> {
    let (size, mut body) = store.read_blob(asset.hash, 0).await?;
    ensure!(size == asset.size, "{} is {size} bytes in B", asset.hash);
    let mut file = std::io::BufReader::new(std::fs::File::open(&asset.path)?);
    let mut expected = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        expected.resize(chunk.len(), 0);
        file.read_exact(&mut expected)?;
        ensure!(
            expected[..] == chunk[..],
            "the bytes of {} differ in B",
            asset.path.display()
        );
    }
    ensure!(
        file.read(&mut [0u8; 1])? == 0,
        "{} is shorter in B",
        asset.path.display()
    );
    Ok(())
}

fn path_string(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
