//! `loadtest wan` and `loadtest outage` at tiny sizes (issue 12, item 5),
//! against the debug `can-sync` binary: every asset arrives and both CANs
//! converge, the data went through the impairment proxy, and the proxy
//! impaired something (its drop counters). It asserts no time.

mod common;

use std::ffi::OsStr;
use std::time::Duration;

use anyhow::{ensure, Result};
use common::{can_sync_bin, run_loadtest};
use serde_json::Value;

/// Bound on each run: seconds of work, plus the daemons' start and stop;
/// this catches a hang.
const TIMEOUT: Duration = Duration::from_secs(180);

/// Runs `loadtest COMMAND ARGS --bin … --json …`; its JSON report.
fn run(command: &str, args: &[&str]) -> Result<Value> {
    let bin = can_sync_bin()?;
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("report.json");
    let mut all: Vec<&OsStr> = vec![command.as_ref()];
    all.extend(args.iter().map(OsStr::new));
    all.extend([
        "--bin".as_ref(),
        bin.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    let (status, out) = run_loadtest(&all, TIMEOUT)?;
    println!("{out}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    ensure!(
        status.success(),
        "loadtest {command} exited with {status}: {report}"
    );
    ensure!(report["ok"] == true, "the run failed: {report}");
    Ok(report)
}

fn count(report: &Value, direction: &str, what: &str) -> u64 {
    report["proxy"][direction][what].as_u64().unwrap_or(0)
}

#[test]
fn wan_delivers_everything_through_a_lossy_shaped_path() -> Result<()> {
    // 2% loss so a few MB surely lose packets.
    let report = run(
        "wan",
        &[
            "--large-bytes",
            "2MiB",
            "--large-asset-size",
            "512KiB",
            "--small-assets",
            "50",
            "--live-rate",
            "10",
            "--live-secs",
            "1",
            "--rtt-ms",
            "20",
            "--rate-mbit",
            "50",
            "--loss",
            "0.02",
            "--timeout-secs",
            "120",
        ],
    )?;
    ensure!(report["large_assets"] == 4 && report["small_assets"] == 50);
    ensure!(report["live_assets"] == 10, "live: {report}");
    for figure in ["large_mb_per_s", "large_vs_shaped", "small_assets_per_s"] {
        ensure!(
            report[figure].as_f64() > Some(0.0),
            "{figure} missing: {report}"
        );
    }
    ensure!(report["live_p50_ms"].as_f64() > Some(0.0), "{report}");
    // The payload went through the proxy, and the proxy lost some of it.
    ensure!(
        count(&report, "down", "delivered_bytes") >= 2 << 20,
        "{report}"
    );
    ensure!(
        count(&report, "down", "lost") + count(&report, "up", "lost") > 0,
        "the proxy lost nothing: {report}"
    );
    Ok(())
}

#[test]
fn outage_completes_with_nothing_sent_twice_beyond_what_was_in_flight() -> Result<()> {
    // 8 Mbit/s: 4 MB take about 4 s, so a 1 s blackhole at 1.5 s falls
    // inside the transfer.
    let report = run(
        "outage",
        &[
            "--bytes",
            "4MiB",
            "--max-asset-size",
            "1MiB",
            "--rtt-ms",
            "20",
            "--rate-mbit",
            "8",
            "--outage-at",
            "1.5",
            "--outage-secs",
            "1",
            "--timeout-secs",
            "120",
        ],
    )?;
    ensure!(count(&report, "down", "blackholed") + count(&report, "up", "blackholed") > 0);
    ensure!(report["completed_s"].as_f64().is_some(), "{report}");
    // `ok` already says the transfer was complete and verified and that
    // A sent no more twice than was in flight; the figures say it again.
    let twice = report["sent_twice_bytes"].as_u64().unwrap_or(u64::MAX);
    let in_flight = report["in_flight_bytes"].as_u64().unwrap_or(0);
    ensure!(twice <= in_flight, "{report}");
    let duplicates = report["after"]["b_duplicates"].as_u64().unwrap_or(u64::MAX);
    ensure!(
        duplicates <= report["in_flight_assets"].as_u64().unwrap_or(0),
        "{report}"
    );
    Ok(())
}
