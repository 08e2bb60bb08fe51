//! The `can-sync` binary as a child process: start it, read its first line,
//! and read what `/proc` says of it (resident set, CPU time).

use std::process::Stdio;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::TIMEOUT;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_can-sync");

/// Starts the binary and returns it with the first stdout line it printed.
pub(crate) async fn start(args: &[&str]) -> Result<(Child, String)> {
    start_logging(args, "warn").await
}

/// Starts `can-sync daemon` with `args` (after `daemon`) and returns it
/// with the ticket its first line prints.
pub(crate) async fn start_daemon(args: &[&str]) -> Result<(Child, String)> {
    let args: Vec<&str> = std::iter::once("daemon")
        .chain(args.iter().copied())
        .collect();
    let (child, line) = start(&args).await?;
    let ticket = line
        .strip_prefix("ticket ")
        .with_context(|| format!("daemon's first line is {line:?}"))?
        .to_string();
    Ok((child, ticket))
}

/// [`start`] with the child's `RUST_LOG` set to `log`.
pub(crate) async fn start_logging(args: &[&str], log: &str) -> Result<(Child, String)> {
    start_program(BIN, args, log, TIMEOUT).await
}

/// The binary a measurement runs: `CAN_SYNC_BIN` when set (say, a release
/// build), else the one cargo built for this test.
pub(crate) fn measured_bin() -> String {
    std::env::var("CAN_SYNC_BIN").unwrap_or_else(|_| BIN.to_owned())
}

/// [`start_logging`] of the binary at `bin`, its first line due within
/// `first_line_within` (a daemon on a large store opens it first).
pub(crate) async fn start_program(
    bin: &str,
    args: &[&str],
    log: &str,
    first_line_within: std::time::Duration,
) -> Result<(Child, String)> {
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(first_line_within, lines.next_line())
        .await
        .context("no first line in time")??
        .context("exited before printing")?;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, first))
}

/// `serve-can` on a disk store in `dir`, on a free port; returns its URL.
pub(crate) async fn serve_can(dir: &std::path::Path) -> Result<(Child, String)> {
    serve_can_at(dir, "127.0.0.1:0").await
}

/// `serve-can` on a disk store in `dir`, listening on `listen`.
pub(crate) async fn serve_can_at(dir: &std::path::Path, listen: &str) -> Result<(Child, String)> {
    serve_can_with(dir, listen, &[]).await
}

/// [`serve_can_at`] with `extra` arguments (fault knobs, a token).
pub(crate) async fn serve_can_with(
    dir: &std::path::Path,
    listen: &str,
    extra: &[&str],
) -> Result<(Child, String)> {
    let dir = dir.to_str().context("utf-8 path")?;
    let args: Vec<&str> = ["serve-can", "--listen", listen, "--dir", dir]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let (child, line) = start(&args).await?;
    let url = line
        .strip_prefix("listening ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_string();
    Ok((child, url))
}

/// Sends SIGTERM to `child` (a graceful stop) and waits for its exit status.
pub(crate) async fn terminate(child: &mut Child) -> Result<std::process::ExitStatus> {
    let pid = child.id().context("the child already exited")?;
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
    Ok(tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .context("no exit after SIGTERM")??)
}

/// A `Vm*` field of `/proc/PID/status` (`VmRSS`, `VmHWM`: the resident set
/// now, at its peak), in bytes.
pub(crate) fn vm_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.split_once(':').is_some_and(|(name, _)| name == field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("{field} value"))?
        .parse()?;
    Ok(kib * 1024)
}

/// Resets the peak resident set (`VmHWM`) of process `pid` to its resident
/// set now (`clear_refs` 5, Linux 4.0 on), so each run measures its own peak.
pub(crate) fn reset_peak_rss(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting VmHWM of {pid}"))
}

/// CPU seconds (user and system) process `pid` ("self": this one) has
/// used: fields 14 and 15 of /proc/PID/stat, in clock ticks of 1/100 s.
pub(crate) fn cpu_secs(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("no comm field")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}
