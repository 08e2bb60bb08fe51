//! The smoke configuration of the harness, as CI runs it: every scenario at
//! tiny sizes against the debug `can-sync` binary. It asserts convergence (every
//! run `ok: true`), never a time.

mod common;

use std::time::Duration;

use anyhow::{ensure, Result};
use common::{can_sync_bin, run_loadtest};

/// Bound on the whole smoke run (it takes seconds; this catches a hang).
const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn every_scenario_converges_in_the_smoke_configuration() -> Result<()> {
    let bin = can_sync_bin()?;
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("smoke.jsonl");
    let svg = dir.path().join("smoke.svg");
    let (status, table) = run_loadtest(
        &[
            "--smoke".as_ref(),
            "--bin".as_ref(),
            bin.as_os_str(),
            "--json".as_ref(),
            json.as_os_str(),
            "--svg".as_ref(),
            svg.as_os_str(),
        ],
        TIMEOUT,
    )?;
    println!("{table}");

    let lines = std::fs::read_to_string(&json)?;
    let records: Vec<serde_json::Value> = lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let scenarios: Vec<&str> = records
        .iter()
        .filter_map(|r| r["scenario"].as_str())
        .collect();
    for expected in [
        "small", "large", "text", "mixed", "live", "mesh", "faulty", "raw",
    ] {
        ensure!(
            scenarios.contains(&expected),
            "no {expected} record in {lines}"
        );
    }
    // Both protocols ran (the default is 1,2), every scenario but raw with each.
    for protocol in [1, 2] {
        let runs = records.iter().filter(|r| r["protocol"] == protocol).count();
        ensure!(
            runs == 7,
            "{runs} records for protocol {protocol}, not 7: {lines}"
        );
    }
    for record in &records {
        ensure!(record["ok"] == true, "a run failed: {record}");
        ensure!(
            record["bytes"].as_u64() > Some(0),
            "a run moved nothing: {record}"
        );
    }
    ensure!(status.success(), "loadtest --smoke exited with {status}");
    ensure!(
        std::fs::read_to_string(&svg)?.contains("</svg>"),
        "no chart"
    );
    Ok(())
}
