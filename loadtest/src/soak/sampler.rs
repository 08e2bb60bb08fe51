//! The measured daemon, read from outside every `--sample-ms` while the
//! soak runs: resident memory, threads and open descriptors from `/proc`
//! ([`Proc::holdings`](crate::procs::Proc::holdings)), its live tasks and
//! live links from its own `/metrics`, and where the churn stood then.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::agents::{self, Daemon};
use crate::progress::Progress;

/// The gauge of the daemon's live tokio tasks.
pub(crate) const TASKS: &str = "cansync_runtime_alive_tasks";
/// The gauge of its live links.
const LIVE_LINKS: &str = "cansync_live_links";

/// Where the churn stands, counted by the peers' loops and the writers.
#[derive(Debug, Default)]
pub(crate) struct Churning {
    /// Peer daemons running now (between their ticket and their stop).
    pub(crate) peers_up: AtomicU64,
    /// Peer daemons started so far.
    pub(crate) starts: AtomicU64,
    /// Assets written so far, on every node.
    pub(crate) written: AtomicU64,
}

/// One reading of the measured daemon.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Sample {
    /// Seconds since the churn began.
    pub(crate) t_s: f64,
    /// Resident memory, bytes.
    pub(crate) rss_bytes: u64,
    /// Open file descriptors.
    pub(crate) open_fds: u64,
    /// Of `open_fds`, those on the store's pack segments: a bounded cache,
    /// which the soak does not judge
    /// ([`Holdings::pack_fds`](crate::procs::Holdings::pack_fds)).
    pub(crate) pack_fds: u64,
    /// OS threads (the runtime's workers and its blocking pool).
    pub(crate) threads: u64,
    /// Tasks alive in its runtime; `None` when `/metrics` did not answer.
    pub(crate) tasks: Option<u64>,
    /// Its connections in live sync; `None` as for `tasks`.
    pub(crate) live_links: Option<u64>,
    /// Peer daemons running.
    pub(crate) peers_up: u64,
    /// Peer daemons started so far.
    pub(crate) starts: u64,
    /// Assets written so far.
    pub(crate) written: u64,
}

/// Reads `daemon` once; `None` when it has exited.
pub(crate) async fn sample(
    daemon: &Daemon,
    http: &reqwest::Client,
    origin: Instant,
    churning: &Churning,
) -> Option<Sample> {
    let metrics = daemon.metrics(http).await;
    let held = daemon.proc.holdings()?;
    let gauge = |name| metrics.as_deref().and_then(|m| agents::series(m, name));
    Some(Sample {
        t_s: origin.elapsed().as_secs_f64(),
        rss_bytes: held.rss,
        open_fds: held.fds,
        pack_fds: held.pack_fds,
        threads: held.threads,
        tasks: gauge(TASKS),
        live_links: gauge(LIVE_LINKS),
        peers_up: churning.peers_up.load(Ordering::Relaxed),
        starts: churning.starts.load(Ordering::Relaxed),
        written: churning.written.load(Ordering::Relaxed),
    })
}

/// What samples the measured daemon while the soak runs.
pub(crate) struct Sampler<'a> {
    /// The measured daemon.
    pub(crate) daemon: &'a Daemon,
    /// A client for its `/metrics`.
    pub(crate) http: &'a reqwest::Client,
    /// When the churn began: time zero of the samples.
    pub(crate) origin: Instant,
    /// Where the churn stands.
    pub(crate) churning: &'a Churning,
    /// Between samples.
    pub(crate) every: Duration,
    /// Between the lines said on the progress output.
    pub(crate) say_every: Duration,
    /// Where the lines go.
    pub(crate) progress: &'a Progress,
}

impl Sampler<'_> {
    /// Samples every [`Self::every`] until `done` turns true (or its sender
    /// is gone); the samples, in order.
    pub(crate) async fn run(&self, mut done: watch::Receiver<bool>) -> Vec<Sample> {
        let mut samples = Vec::new();
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_say = self.origin;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = done.wait_for(|done| *done) => return samples,
            }
            let Some(sample) = sample(self.daemon, self.http, self.origin, self.churning).await
            else {
                continue;
            };
            if Instant::now() >= next_say {
                self.progress.say(&line(&sample));
                next_say += self.say_every;
            }
            samples.push(sample);
        }
    }
}

/// One sample as a progress line.
pub(crate) fn line(s: &Sample) -> String {
    let opt = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
    format!(
        "  {:6.1} s: RSS {:.1} MiB, {} fds ({} on pack segments), {} threads, {} tasks, {} live links; {} peers up, {} starts, {} assets written",
        s.t_s,
        mib(s.rss_bytes),
        s.open_fds,
        s.pack_fds,
        s.threads,
        opt(s.tasks),
        opt(s.live_links),
        s.peers_up,
        s.starts,
        s.written
    )
}

/// The samples as CSV, a header line first; an unknown gauge is empty.
pub(crate) fn csv(samples: &[Sample]) -> String {
    let mut out = String::from(
        "t_s,rss_bytes,open_fds,threads,tasks,live_links,peers_up,starts,written,pack_fds\n",
    );
    let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    for s in samples {
        let _ = writeln!(
            out,
            "{:.3},{},{},{},{},{},{},{},{},{}",
            s.t_s,
            s.rss_bytes,
            s.open_fds,
            s.threads,
            opt(s.tasks),
            opt(s.live_links),
            s.peers_up,
            s.starts,
            s.written,
            s.pack_fds
        );
    }
    out
}

/// Bytes in MiB.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_header_and_a_row_per_sample_with_unknowns_empty() {
        let sample = Sample {
            t_s: 1.5,
            rss_bytes: 1 << 20,
            open_fds: 40,
            pack_fds: 2,
            threads: 9,
            tasks: Some(120),
            live_links: None,
            peers_up: 15,
            starts: 30,
            written: 7,
        };
        let text = csv(&[sample, Sample { t_s: 2.0, ..sample }]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].split(',').count(), lines[1].split(',').count());
        assert_eq!(lines[1], "1.500,1048576,40,9,120,,15,30,7,2");
        assert!(lines[2].starts_with("2.000,"));
    }
}
