//! The rsync rows of `loadtest vs-rsync`: rsync found on `PATH` (or installed
//! with apt-get when allowed), a read-only `rsync --daemon` on loopback serving
//! the source folders, and pulls from it plain and with `--fsync`, each into a
//! fresh folder and checked there.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::report::Row;
use super::source::{Asset, Source};
use super::{budget, remove, say, Work, GRACE, STARTUP};
use crate::procs::Proc;

/// How long each `apt-get` may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

/// rsync, found or installed.
pub(super) struct Rsync {
    /// Its path.
    path: PathBuf,
    /// The first line of `rsync --version`.
    pub(super) version: String,
    /// It has `--fsync` (3.2.4 and later).
    pub(super) fsync: bool,
}

/// rsync on this machine, installed with apt-get if missing and allowed;
/// otherwise why its rows are skipped.
pub(super) async fn find_rsync(work: &Work, no_install: bool) -> Result<Rsync, String> {
    let path = match which("rsync") {
        Some(path) => path,
        None => {
            install_rsync(work, no_install).await?;
            which("rsync").ok_or("apt-get installed rsync, yet it is not on PATH")?
        }
    };
    let mut version = Proc::spawn(
        "rsync-version",
        &path,
        &["--version".into()],
        &work.log("rsync-version"),
    )
    .map_err(|err| format!("{err:#}"))?;
    let line = version
        .first_line(STARTUP)
        .await
        .map_err(|err| format!("rsync --version: {err:#}"))?;
    let _ = version.wait(STARTUP).await;
    // An rsync without --fsync refuses the option before doing anything else.
    let fsync = work
        .timed(
            "rsync-fsync-probe",
            &path,
            &["--fsync".into(), "--version".into()],
            STARTUP,
        )
        .await
        .is_ok();
    Ok(Rsync {
        path,
        version: line.split_whitespace().collect::<Vec<_>>().join(" "),
        fsync,
    })
}

/// `apt-get install -y rsync` (after `apt-get update` if that fails), when
/// this runs as root and apt-get exists; otherwise why not.
async fn install_rsync(work: &Work, no_install: bool) -> Result<(), String> {
    if no_install {
        return Err("rsync is not installed (and --no-install forbids installing it)".into());
    }
    // The work folder was just made by this process, so it is owned by our
    // effective uid: root when it is 0.
    let root = std::fs::metadata(&work.dir).is_ok_and(|m| m.uid() == 0);
    if !root {
        return Err("rsync is not installed, and without root apt-get cannot install it".into());
    }
    if which("apt-get").is_none() {
        return Err("rsync is not installed, and there is no apt-get to install it".into());
    }
    say("rsync is missing: apt-get install -y rsync");
    let apt = |what: &'static [&'static str]| {
        let mut args = vec![
            "DEBIAN_FRONTEND=noninteractive".to_string(),
            "apt-get".into(),
        ];
        args.extend(what.iter().map(|s| s.to_string()));
        args
    };
    let env = Path::new("env");
    let install = apt(&["install", "-y", "-q", "rsync"]);
    if work
        .timed("apt-install", env, &install, INSTALL_TIMEOUT)
        .await
        .is_ok()
    {
        return Ok(());
    }
    // Stale or missing package lists are the usual reason.
    say("apt-get install failed: apt-get update, then again");
    let retried = async {
        work.timed("apt-update", env, &apt(&["update", "-q"]), INSTALL_TIMEOUT)
            .await?;
        work.timed("apt-install-2", env, &install, INSTALL_TIMEOUT)
            .await
    };
    retried
        .await
        .map(|_| ())
        .map_err(|err| format!("rsync is not installed, and apt-get could not install it: {err:#}"))
}

/// The two rsync rows: plain and `--fsync`, each pulling the small set and
/// the large file from a daemon on loopback.
pub(super) async fn rsync_rows(
    work: &Work,
    source: &Source,
    rsync: &Result<Rsync, String>,
) -> Vec<Row> {
    let (mut plain, mut fsync) = (Row::new("rsync"), Row::new("rsync --fsync"));
    let rsync = match rsync {
        Ok(rsync) => rsync,
        Err(why) => {
            plain.skip(why);
            fsync.skip(why);
            return vec![plain, fsync];
        }
    };
    plain.note = Some("not durable: the page cache holds what it wrote".into());
    fsync.note = Some("durable: rsync fsyncs each file it writes".into());
    let daemon = match RsyncDaemon::start(work, rsync).await {
        Ok(daemon) => daemon,
        Err(err) => {
            plain.fail("daemon", &err);
            fsync.fail("daemon", &err);
            return vec![plain, fsync];
        }
    };
    for (row, durable) in [(&mut plain, false), (&mut fsync, true)] {
        if durable && !rsync.fsync {
            row.skip(&format!(
                "{} has no --fsync (added in rsync 3.2.4)",
                rsync.version
            ));
            continue;
        }
        for (set, assets) in [("small", &source.small), ("large", &source.large)] {
            let took = daemon.pull(work, rsync, set, assets, durable).await;
            row.record(set, assets, took);
        }
    }
    daemon.stop().await;
    vec![plain, fsync]
}

/// `rsync --daemon` on 127.0.0.1, serving modules `small` and `large`.
struct RsyncDaemon {
    /// The daemon.
    proc: Proc,
    /// Its port.
    port: u16,
}

impl RsyncDaemon {
    async fn start(work: &Work, rsync: &Rsync) -> Result<Self> {
        let port = free_port()?;
        let config = work.dir.join("rsyncd.conf");
        // As root the daemon would read the modules as `nobody`, which cannot
        // enter our private work folder: read them as ourselves.
        let meta = std::fs::metadata(&work.dir)?;
        let ids = if meta.uid() == 0 {
            format!("uid = {}\ngid = {}\n", meta.uid(), meta.gid())
        } else {
            String::new()
        };
        let text = format!(
            "# loadtest vs-rsync: loopback only, read only\n\
             address = 127.0.0.1\n\
             hosts allow = 127.0.0.1\n\
             use chroot = no\n\
             {ids}\
             log file = {log}\n\
             [small]\n\
             path = {small}\n\
             read only = yes\n\
             [large]\n\
             path = {large}\n\
             read only = yes\n",
            log = work.log("rsyncd-transfers").display(),
            small = work.small.display(),
            large = work.large.display(),
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let args = vec![
            "--daemon".into(),
            "--no-detach".into(),
            format!("--config={}", config.display()),
            format!("--port={port}"),
            "--address=127.0.0.1".into(),
        ];
        let proc = Proc::spawn("rsyncd", &rsync.path, &args, &work.log("rsyncd"))?;
        let deadline = Instant::now() + STARTUP;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!(
                    "rsync --daemon did not listen on 127.0.0.1:{port} within {STARTUP:?}{}",
                    proc.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { proc, port })
    }

    /// Pulls module `set` into a fresh folder, timed; checks every file
    /// arrived whole, syncs (not timed) and removes the copy.
    async fn pull(
        &self,
        work: &Work,
        rsync: &Rsync,
        set: &str,
        assets: &[Asset],
        durable: bool,
    ) -> Result<Duration> {
        let kind = if durable { "fsync" } else { "plain" };
        let dest = work.fresh(&format!("rsync-{kind}-{set}"))?;
        let mut args = vec!["-a".to_string()];
        if durable {
            args.push("--fsync".into());
        }
        args.push(format!("rsync://127.0.0.1:{}/{set}/", self.port));
        args.push(format!("{}/", dest.display()));
        work.settle().await?;
        let took = work
            .timed(
                &format!("rsync-{kind}-{set}"),
                &rsync.path,
                &args,
                budget(assets.len(), Source::bytes(assets)),
            )
            .await?;
        for asset in assets {
            let name = asset.path.file_name().context("a source file name")?;
            let copy = std::fs::metadata(dest.join(name))
                .with_context(|| format!("rsync did not copy {}", asset.path.display()))?;
            ensure!(
                copy.len() == asset.size,
                "rsync copied {} bytes of {}",
                copy.len(),
                asset.path.display()
            );
        }
        // The plain run's writeback is not counted, and must not land in the
        // next measurement either.
        work.settle().await?;
        remove(&dest)?;
        Ok(took)
    }

    async fn stop(mut self) {
        let _ = self.proc.terminate(GRACE).await;
    }
}

/// An executable named `program` on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A loopback TCP port free a moment ago.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
