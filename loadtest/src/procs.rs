//! Child processes, measured from outside.
//!
//! [`Proc::spawn`] starts a program with its stdout piped (the first line is the
//! handshake every `can-sync` command prints) and its stderr in a log file; a
//! sampler reads `/proc/PID/status` (`VmHWM`, `VmRSS`) and `/proc/PID/stat`
//! (`utime + stime`) every [`SAMPLE_EVERY`] while the process runs.
//! [`Proc::holdings`] reads, on demand, what a leak would show: resident
//! memory, threads and open file descriptors (`/proc/PID/fd`).
//!
//! Reaping is done in two steps so the numbers are exact and the sampler can
//! never read a recycled pid: `waitid(WNOWAIT)` waits for the exit and leaves
//! a zombie; the sampler is stopped; then `wait4` reaps it and returns the
//! kernel's own rusage. Peak RSS is the last `VmHWM` seen (a high-water mark,
//! so a sample close to the end holds it). Not `ru_maxrss`: Linux folds the
//! forking parent's RSS into it at `exec`, so every child would report at
//! least the harness's own size. CPU seconds are `ru_utime + ru_stime`, which
//! include the last instants `/proc` polling misses.
//!
//! A [`Proc`] dropped before it was reaped is killed and reaped, so a failed run
//! never leaves processes behind.
//!
//! The only `unsafe` of the workspace is here: calls into libc for what std
//! does not offer (`waitid` with `WNOWAIT`, `wait4`'s rusage, signals,
//! `sysconf`), each on values this module owns.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::oneshot;

/// How often `/proc` is read while a process runs.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Resource use of one process, as seen so far or at its end.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Usage {
    /// Peak resident set size in bytes (`VmHWM`, `ru_maxrss`).
    pub(crate) peak_rss: u64,
    /// Resident set size at the last sample, in bytes.
    pub(crate) rss: u64,
    /// User plus system CPU seconds.
    pub(crate) cpu_s: f64,
}

/// What a running process holds at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Holdings {
    /// Resident set size in bytes (`VmRSS`).
    pub(crate) rss: u64,
    /// Threads (`Threads`).
    pub(crate) threads: u64,
    /// Open file descriptors (entries of `/proc/PID/fd`).
    pub(crate) fds: u64,
    /// Of `fds`, those open on files in a folder named `packs`: a store's
    /// pack segments, a cache bounded by design (its writer keeps the open
    /// segment, its readers up to 64 segments they read), opened by the
    /// first write or read and kept.
    pub(crate) pack_fds: u64,
}

/// How a process ended.
#[derive(Debug, Clone)]
pub(crate) struct Exit {
    /// The exit code; `None` when a signal ended it.
    pub(crate) code: Option<i32>,
    /// Final resource use.
    pub(crate) usage: Usage,
}

impl Exit {
    /// True for exit code 0.
    pub(crate) fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// A running child process with its sampler.
pub(crate) struct Proc {
    /// A short name for reports and logs (`daemon-a`, `seed`).
    name: String,
    /// The child's pid; valid until `reaped`.
    pid: libc::pid_t,
    /// Set once the zombie is reaped: from then on the pid is not ours.
    reaped: bool,
    /// The latest sample, shared with the sampler task and progress line.
    usage: Arc<Mutex<Usage>>,
    /// The sampler task; stopped before reaping.
    sampler: tokio::task::JoinHandle<()>,
    /// The first stdout line, until taken.
    first_line: Option<oneshot::Receiver<Option<String>>>,
    /// Where stderr goes.
    log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args`, stderr to `log`, `RUST_LOG=warn` unless
    /// the caller's environment sets it.
    pub(crate) fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        let stderr = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} ({name})", program.display()))?;
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        let stdout = child.stdout.take().context("child stdout")?;
        // The std Child is dropped here without waiting: this module reaps by pid.
        drop(child);

        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || read_stdout(stdout, tx))
            .context("starting the stdout reader")?;

        let usage = Arc::new(Mutex::new(Usage::default()));
        let sampler = tokio::spawn(sample_loop(pid, usage.clone()));
        Ok(Self {
            name: name.to_string(),
            pid,
            reaped: false,
            usage,
            sampler,
            first_line: Some(rx),
            log: log.to_path_buf(),
        })
    }

    /// The name given at spawn.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A handle to the live usage, for the progress line.
    pub(crate) fn usage_handle(&self) -> Arc<Mutex<Usage>> {
        self.usage.clone()
    }

    /// The first line the process printed on stdout, within `timeout`.
    pub(crate) async fn first_line(&mut self, timeout: Duration) -> Result<String> {
        let rx = self.first_line.take().context("first line already taken")?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(_) => bail!(
                "{} exited before printing anything{}",
                self.name,
                self.log_tail()
            ),
            Err(_) => bail!(
                "{} printed nothing within {timeout:?}{}",
                self.name,
                self.log_tail()
            ),
        }
    }

    /// Waits for the process to exit by itself; kills it after `timeout`.
    pub(crate) async fn wait(&mut self, timeout: Duration) -> Result<Exit> {
        let pid = self.pid;
        let mut exited = tokio::task::spawn_blocking(move || wait_exited(pid));
        match tokio::time::timeout(timeout, &mut exited).await {
            Ok(joined) => joined.context("waiter task")??,
            Err(_) => {
                self.signal(libc::SIGKILL);
                exited.await.context("waiter task")??;
                let _ = self.reap().await;
                bail!("{} still running after {timeout:?}: killed", self.name);
            }
        }
        self.reap().await
    }

    /// What the process holds now; `None` once it has exited.
    pub(crate) fn holdings(&self) -> Option<Holdings> {
        if self.reaped {
            return None;
        }
        // The pid is ours until reaped, so this reads no other process.
        read_holdings(self.pid)
    }

    /// Sends SIGKILL and reaps: the process gets no chance to close anything.
    pub(crate) async fn kill(&mut self, timeout: Duration) -> Result<Exit> {
        if self.reaped {
            bail!("{} was already reaped", self.name);
        }
        self.signal(libc::SIGKILL);
        self.wait(timeout).await
    }

    /// Sends SIGTERM and waits for the exit; SIGKILL after `grace`.
    pub(crate) async fn terminate(&mut self, grace: Duration) -> Result<Exit> {
        if self.reaped {
            bail!("{} was already reaped", self.name);
        }
        self.signal(libc::SIGTERM);
        self.wait(grace).await
    }

    /// The last lines of the process's stderr, formatted to end an error message.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n    ");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its stderr ({}) ends:\n    {tail}", self.log.display())
        }
    }

    fn signal(&self, signal: libc::c_int) {
        if !self.reaped {
            // SAFETY: plain syscall on a pid we spawned and have not reaped, so
            // it cannot name another process.
            unsafe { libc::kill(self.pid, signal) };
        }
    }

    /// Stops the sampler, reads the zombie's final counters and reaps it.
    async fn reap(&mut self) -> Result<Exit> {
        self.sampler.abort();
        let _ = (&mut self.sampler).await;
        let sampled = *self.usage.lock().expect("usage lock");
        let pid = self.pid;
        let (status, rusage) = tokio::task::spawn_blocking(move || reap_blocking(pid))
            .await
            .context("reaper task")??;
        self.reaped = true;
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let usage = Usage {
            peak_rss: sampled.peak_rss,
            rss: sampled.rss,
            cpu_s: (tv(rusage.ru_utime) + tv(rusage.ru_stime)).max(sampled.cpu_s),
        };
        *self.usage.lock().expect("usage lock") = usage;
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        Ok(Exit { code, usage })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sampler.abort();
        if !self.reaped {
            self.signal(libc::SIGKILL);
            let mut status = 0;
            // SAFETY: reaps our own child after SIGKILL; returns promptly.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
        }
    }
}

/// Sends the first stdout line, then drains the rest so the child never blocks
/// on a full pipe.
fn read_stdout(stdout: std::process::ChildStdout, tx: oneshot::Sender<Option<String>>) {
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().and_then(|line| line.ok());
    let _ = tx.send(first);
    for _ in lines {}
}

/// Blocks until `pid` exits, leaving it a zombie (`WNOWAIT`).
fn wait_exited(pid: libc::pid_t) -> Result<()> {
    loop {
        // SAFETY: zeroed siginfo is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waits on our own child without reaping it.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("waitid");
        }
    }
}

/// Reaps an exited `pid`, returning its wait status and rusage.
fn reap_blocking(pid: libc::pid_t) -> Result<(libc::c_int, libc::rusage)> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: reaps our own child, which has exited.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut rusage) };
        if rc == pid {
            return Ok((status, rusage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
}

async fn sample_loop(pid: libc::pid_t, usage: Arc<Mutex<Usage>>) {
    let ticks = clock_ticks();
    let mut interval = tokio::time::interval(SAMPLE_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(sample) = read_proc(pid, ticks) else {
            // A zombie has no memory map; keep the last good sample.
            continue;
        };
        let mut u = usage.lock().expect("usage lock");
        u.peak_rss = u.peak_rss.max(sample.peak_rss);
        u.rss = sample.rss;
        u.cpu_s = u.cpu_s.max(sample.cpu_s);
    }
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// One reading of `/proc/PID`; `None` when the process has no memory map
/// (zombie) or is gone.
fn read_proc(pid: libc::pid_t, ticks: f64) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let peak_rss = kib("VmHWM:")? * 1024;
    let rss = kib("VmRSS:")? * 1024;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(Usage {
        peak_rss,
        rss,
        cpu_s: parse_stat_cpu(&stat)? / ticks,
    })
}

/// Resident memory and threads from `/proc/PID/status`, open descriptors
/// from `/proc/PID/fd`; `None` when the process is gone or a zombie.
fn read_holdings(pid: libc::pid_t) -> Option<Holdings> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let (rss, threads) = parse_status_holdings(&status)?;
    let (mut fds, mut pack_fds) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        fds += 1;
        let target = entry.ok().and_then(|e| std::fs::read_link(e.path()).ok());
        let folder = target.as_deref().and_then(Path::parent);
        if folder.and_then(Path::file_name) == Some("packs".as_ref()) {
            pack_fds += 1;
        }
    }
    Some(Holdings {
        rss,
        threads,
        fds,
        pack_fds,
    })
}

/// `VmRSS` in bytes and `Threads` from a `/proc/PID/status` text.
fn parse_status_holdings(status: &str) -> Option<(u64, u64)> {
    let field = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("VmRSS:")? * 1024, field("Threads:")?))
}

/// `utime + stime` in clock ticks from a `/proc/PID/stat` line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted from
/// the last `)`.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: f64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: f64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// This process's peak resident set size in bytes (`VmHWM`), 0 when
/// `/proc` cannot tell.
pub(crate) fn own_peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
            line.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// User and system CPU time of this process so far.
pub(crate) fn own_cpu_time() -> std::time::Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let of = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec as u64)
            + std::time::Duration::from_micros(t.tv_usec as u64)
    };
    of(usage.ru_utime) + of(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn stat_cpu_is_read_after_the_command_name() {
        let stat = "4242 (can sync) (x)) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    731 269 0 0 20 0 9 0 123 456 789";
        assert_eq!(parse_stat_cpu(stat), Some(1000.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn rss_and_threads_are_read_from_status() {
        let status = "Name:\tcan-sync\nVmHWM:\t  5000 kB\nVmRSS:\t  4096 kB\nThreads:\t7\n";
        assert_eq!(parse_status_holdings(status), Some((4096 * 1024, 7)));
        // A zombie has no VmRSS line.
        assert_eq!(parse_status_holdings("Name:\tx\nThreads:\t1\n"), None);
    }

    #[tokio::test]
    async fn holdings_count_what_the_child_opened_and_end_with_it() -> Result<()> {
        let dir = tempfile::tempdir()?;
        // Descriptors 0–2 from the spawn, and 5 more the script opens and
        // keeps, one of them on a file in a `packs` folder.
        std::fs::create_dir(dir.path().join("packs"))?;
        let segment = dir.path().join("packs").join("0000000000000001");
        std::fs::write(&segment, b"values")?;
        let script = format!(
            "exec 5</dev/null 6</dev/null 7</dev/null 8</dev/null 9<{}; echo ready; exec sleep 30",
            segment.display()
        );
        let mut p = Proc::spawn(
            "holder",
            Path::new("/bin/sh"),
            &["-c".into(), script],
            &dir.path().join("holder.log"),
        )?;
        assert_eq!(p.first_line(Duration::from_secs(10)).await?, "ready");
        let held = p.holdings().context("the child runs")?;
        assert!(held.fds >= 8, "{held:?}");
        assert_eq!(held.pack_fds, 1, "{held:?}");
        assert!(held.rss > 0 && held.threads >= 1, "{held:?}");
        let exit = p.kill(Duration::from_secs(10)).await?;
        assert_eq!(exit.code, None, "a killed process has no exit code");
        assert_eq!(p.holdings(), None);
        Ok(())
    }

    #[tokio::test]
    async fn a_child_is_measured_and_reaped() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let script = "echo ready; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done";
        let mut p = Proc::spawn(
            "sh",
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            &dir.path().join("sh.log"),
        )?;
        assert_eq!(p.first_line(Duration::from_secs(10)).await?, "ready");
        let exit = p.wait(Duration::from_secs(30)).await?;
        assert!(exit.success());
        assert!(exit.usage.peak_rss > 0);
        assert!(exit.usage.cpu_s >= 0.0);
        Ok(())
    }

    #[tokio::test]
    async fn a_hung_child_is_killed_at_the_timeout() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut p = Proc::spawn(
            "sleeper",
            Path::new("/bin/sleep"),
            &["30".into()],
            &dir.path().join("sleep.log"),
        )?;
        let started = Instant::now();
        assert!(p.wait(Duration::from_millis(200)).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(10));
        Ok(())
    }
}
