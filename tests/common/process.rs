//! The `can-sync` binary as a child process: start it, read its first line.

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

/// [`start`] with the child's `RUST_LOG` set to `log`.
pub(crate) async fn start_logging(args: &[&str], log: &str) -> Result<(Child, String)> {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(TIMEOUT, lines.next_line())
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
    let (child, line) = start(&[
        "serve-can",
        "--listen",
        listen,
        "--dir",
        dir.to_str().unwrap(),
    ])
    .await?;
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
