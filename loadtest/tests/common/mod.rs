//! What the harness's integration tests share: the `can-sync` binary cargo
//! built beside the harness, and running the harness with a bound on its
//! whole run.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// The `can-sync` binary cargo built beside the harness.
pub(crate) fn can_sync_bin() -> Result<PathBuf> {
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

/// Runs the harness with `args` (stderr shown as it comes), killing it if it
/// is still running after `timeout`; its exit status and stdout.
pub(crate) fn run_loadtest(
    args: &[&std::ffi::OsStr],
    timeout: Duration,
) -> Result<(ExitStatus, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("loadtest {args:?} still running after {timeout:?}");
        }
        // Polling a child's exit with a bounded wait; std has no wait-with-timeout.
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::io::read_to_string(child.stdout.take().context("stdout")?)?;
    Ok((status, stdout))
}
