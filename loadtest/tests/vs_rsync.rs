//! `loadtest vs-rsync` at a tiny size (issue #11, item 4), against the debug
//! `can-sync` binary, in two passes and their medians: can-sync delivers
//! every file and every row of the table has a positive figure (raw QUIC a
//! large one only), or, for rsync, says why it was skipped. It asserts no
//! time.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{can_sync_bin, run_loadtest};
use serde_json::Value;

/// Bound on the whole run: it takes seconds (plus, the first time on a bare
/// machine run as root, an `apt-get install rsync`); this catches a hang.
const TIMEOUT: Duration = Duration::from_secs(120);
const FILES: u64 = 50;
const FILE_SIZE: u64 = 4096;
const LARGE: u64 = 2 << 20;

#[test]
fn vs_rsync_delivers_every_file_and_measures_every_row() -> Result<()> {
    let bin = can_sync_bin()?;
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("vs-rsync.json");
    let (files, file_size, large) = (FILES.to_string(), FILE_SIZE.to_string(), LARGE.to_string());
    let (status, table) = run_loadtest(
        &[
            "vs-rsync".as_ref(),
            "--files".as_ref(),
            files.as_ref(),
            "--file-size".as_ref(),
            file_size.as_ref(),
            "--large".as_ref(),
            large.as_ref(),
            "--bin".as_ref(),
            bin.as_os_str(),
            "--json".as_ref(),
            json.as_os_str(),
            "--runs".as_ref(),
            "2".as_ref(),
        ],
        TIMEOUT,
    )?;
    println!("{table}");
    ensure!(status.success(), "loadtest vs-rsync exited with {status}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    ensure!(report["ok"] == true, "the run failed: {report}");
    for (held, assets, bytes) in [
        ("can_sync_small_held", FILES, FILES * FILE_SIZE),
        ("can_sync_large_held", 1, LARGE),
    ] {
        ensure!(
            report[held]["assets"] == assets && report[held]["bytes"] == bytes,
            "store B held {} after the seed, not {assets} assets of {bytes} bytes",
            report[held]
        );
    }
    let rows = report["rows"].as_array().context("rows")?;
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    ensure!(
        names == ["rsync", "rsync --fsync", "can-sync v2", "raw QUIC", "disk"],
        "rows {names:?}"
    );
    ensure!(
        report["passes"] == 2,
        "not the median of 2 passes: {report}"
    );
    ensure!(
        table.matches("can-sync v2  ").count() == 3 && table.contains("medians of 2 passes"),
        "not two passes and their medians in\n{table}"
    );
    for row in rows {
        let name = row["name"].as_str().unwrap_or_default();
        if name == "raw QUIC" {
            // The transport alone: a large figure, no small one.
            ensure!(
                row["large_mb_per_s"].as_f64() > Some(0.0) && row["small_files_per_s"].is_null(),
                "raw QUIC row {row}"
            );
            continue;
        }
        let positive = ["small_files_per_s", "large_mb_per_s"]
            .iter()
            .all(|figure| row[figure].as_f64().is_some_and(|v| v > 0.0));
        if positive {
            continue;
        }
        // Only rsync may be missing, and only with its reason.
        let note = row["note"].as_str().unwrap_or_default();
        ensure!(
            name.starts_with("rsync") && note.contains("skipped: ") && note.contains("rsync"),
            "row {name} has no figure and no reason: {row}"
        );
    }
    if report["rsync"].is_string() {
        ensure!(
            report["small_vs_rsync"].as_f64() > Some(0.0),
            "no small-set ratio: {report}"
        );
    }
    for ratio in ["large_vs_disk", "large_vs_raw", "raw_vs_disk"] {
        ensure!(
            report[ratio].as_f64() > Some(0.0),
            "no {ratio} ratio: {report}"
        );
    }
    ensure!(table.contains("rsync files/s"), "no ratios in\n{table}");
    Ok(())
}
