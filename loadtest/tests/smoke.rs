//! The smoke configuration of the harness, as CI runs it: every scenario at
//! tiny sizes against the debug `can-sync` binary. It asserts convergence (every
//! run `ok: true`), never a time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Bound on the whole smoke run (it takes seconds; this catches a hang).
const TIMEOUT: Duration = Duration::from_secs(120);

/// The `can-sync` binary cargo built beside the harness.
fn can_sync_bin() -> Result<PathBuf> {
    let loadtest = Path::new(env!("CARGO_BIN_EXE_loadtest"));
    let bin = loadtest
        .parent()
        .context("the loadtest binary has no folder")?
        .join("can-sync");
    ensure!(
        bin.is_file(),
        "{} is missing: `cargo test --workspace` builds it; with `-p loadtest` alone, run \
         `cargo build -p can-sync` first",
        bin.display()
    );
    Ok(bin)
}

#[test]
fn every_scenario_converges_in_the_smoke_configuration() -> Result<()> {
    let bin = can_sync_bin()?;
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("smoke.jsonl");
    let svg = dir.path().join("smoke.svg");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("--smoke")
        .arg("--bin")
        .arg(&bin)
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("loadtest --smoke still running after {TIMEOUT:?}");
        }
        // Polling a child's exit with a bounded wait; std has no wait-with-timeout.
        std::thread::sleep(Duration::from_millis(100));
    };
    let table = std::io::read_to_string(child.stdout.take().context("stdout")?)?;
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
