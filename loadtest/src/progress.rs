//! The progress line on stderr while a run goes: scenario, phase, elapsed time,
//! each agent's RSS and CPU from its sampler, a counter (assets loaded), and the
//! asset counts of the CANs being filled (`GET /health`, once a second).
//!
//! On a terminal the line is redrawn in place every second; otherwise (CI, a
//! pipe) a line is printed every [`PLAIN_EVERY`] so logs stay short.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use can_sync::can::{Can, HttpCan};

use crate::procs::{Proc, Usage};

/// Redraw interval.
const TICK: Duration = Duration::from_secs(1);
/// Interval between plain lines when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// Shared handle to the progress line.
#[derive(Clone, Default)]
pub(crate) struct Progress(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    /// `small v1 run 1/3`.
    run: String,
    /// `load`, `sync`, `verify`.
    phase: String,
    /// When the phase began.
    since: Option<Instant>,
    /// Agents to show: name and live usage.
    procs: Vec<(String, Arc<Mutex<Usage>>)>,
    /// A counter of the phase: done, total, unit.
    counter: Option<(Arc<AtomicU64>, u64, &'static str)>,
    /// CANs whose asset count to show, with the count they should reach.
    watch: Vec<(String, HttpCan, u64)>,
    /// Their last counts.
    counts: Vec<Option<u64>>,
}

impl Progress {
    /// Starts the redraw task.
    pub(crate) fn start() -> Self {
        let progress = Self::default();
        let ticker = progress.clone();
        tokio::spawn(async move { ticker.redraw().await });
        progress
    }

    /// A new run begins: forget the previous one's agents and counters.
    pub(crate) fn run(&self, run: String) {
        let mut s = self.0.lock().expect("progress lock");
        *s = State {
            run,
            ..State::default()
        };
    }

    /// A new phase begins.
    pub(crate) fn phase(&self, phase: &str) {
        let mut s = self.0.lock().expect("progress lock");
        s.phase = phase.to_string();
        s.since = Some(Instant::now());
        s.counter = None;
        s.watch.clear();
        s.counts.clear();
    }

    /// Shows `proc`'s live RSS and CPU.
    pub(crate) fn track(&self, proc: &Proc) {
        let mut s = self.0.lock().expect("progress lock");
        s.procs.push((proc.name().to_string(), proc.usage_handle()));
    }

    /// Shows `done` of `total` `unit`.
    pub(crate) fn count(&self, done: Arc<AtomicU64>, total: u64, unit: &'static str) {
        self.0.lock().expect("progress lock").counter = Some((done, total, unit));
    }

    /// Shows how many assets `can` holds, out of `expected`.
    pub(crate) fn watch(&self, name: &str, can: &HttpCan, expected: u64) {
        let mut s = self.0.lock().expect("progress lock");
        s.watch.push((name.to_string(), can.clone(), expected));
        s.counts.push(None);
    }

    /// Prints a permanent line (above the progress line).
    pub(crate) fn say(&self, line: &str) {
        let mut err = std::io::stderr().lock();
        if err.is_terminal() {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{line}");
    }

    /// Clears the progress line.
    pub(crate) fn clear(&self) {
        if std::io::stderr().is_terminal() {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
        self.run(String::new());
    }

    async fn redraw(&self) {
        let terminal = std::io::stderr().is_terminal();
        let mut last_plain = Instant::now();
        let mut interval = tokio::time::interval(TICK);
        loop {
            interval.tick().await;
            self.poll_counts().await;
            let Some(line) = self.line() else { continue };
            let mut err = std::io::stderr().lock();
            if terminal {
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
            } else if last_plain.elapsed() >= PLAIN_EVERY {
                let _ = writeln!(err, "{line}");
                last_plain = Instant::now();
            }
        }
    }

    /// Refreshes the watched CANs' counts (bounded: one second each at most).
    async fn poll_counts(&self) {
        let watch: Vec<HttpCan> = {
            let s = self.0.lock().expect("progress lock");
            s.watch.iter().map(|(_, can, _)| can.clone()).collect()
        };
        let mut counts = Vec::with_capacity(watch.len());
        for can in &watch {
            let stats = tokio::time::timeout(TICK, can.stats()).await;
            counts.push(match stats {
                Ok(Ok(stats)) => Some(stats.assets),
                _ => None,
            });
        }
        let mut s = self.0.lock().expect("progress lock");
        if s.counts.len() == counts.len() {
            for (old, new) in s.counts.iter_mut().zip(counts) {
                if new.is_some() {
                    *old = new;
                }
            }
        }
    }

    fn line(&self) -> Option<String> {
        let s = self.0.lock().expect("progress lock");
        if s.run.is_empty() {
            return None;
        }
        let elapsed = s.since.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let mut line = format!("[{}] {} {elapsed:.0}s", s.run, s.phase);
        if let Some((done, total, unit)) = &s.counter {
            line.push_str(&format!(
                " | {}/{total} {unit}",
                done.load(Ordering::Relaxed)
            ));
        }
        for ((name, _, expected), count) in s.watch.iter().zip(&s.counts) {
            match count {
                Some(n) => line.push_str(&format!(" | {name} {n}/{expected}")),
                None => line.push_str(&format!(" | {name} ?/{expected}")),
            }
        }
        for (name, usage) in &s.procs {
            let u = *usage.lock().expect("usage lock");
            line.push_str(&format!(
                " | {name} {:.0} MB {:.1} cpu-s",
                u.rss as f64 / 1e6,
                u.cpu_s
            ));
        }
        Some(line)
    }
}
