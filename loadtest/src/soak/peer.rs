//! One peer of the soak: a `can-sync daemon` on its own embedded store that
//! dials the measured daemon, is written to while it runs, and is stopped
//! and started again every 2–5 s for the whole run.
//!
//! Each start is a new process on the same data folder, so the same key
//! (the measured daemon admits it by id) and the same store: it dials, is
//! admitted, reconciles what it missed while down, then follows live. Each
//! stop is, at random by `--kill-share`, either SIGTERM (the daemon closes
//! its connection, and the measured side learns of it at once) or SIGKILL
//! (nothing is closed: the measured side holds the dead connection, its
//! tasks and its slot until the idle timeout, while the same peer is
//! already back on a new one). Both ways of losing a peer are what a daemon
//! must survive for months without keeping anything of them.
//!
//! Which stops are kills is spread evenly, not drawn: each stop adds
//! `--kill-share` to the peer's debt, and a stop that brings it to 1 pays
//! it with a kill (from a random starting debt, so peers are out of step).
//! Drawn, the kills bunch and thin out by chance, and so do the dead links
//! the measured daemon holds for 10 s after each: its tasks would swing by
//! a fifth over a minute with no leak at all.
//!
//! When the writes end, the peer finishes the start it is in as usual and
//! starts once more, for good: its last reconnect, after which every asset
//! must reach every node.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::SmallRng;
use rand::RngExt;
use serde::Serialize;
use tokio::sync::watch;

use super::sampler::Churning;
use super::writes::{self, Writer};
use crate::agents::{Launcher, Node};
use crate::data::Loaded;

/// Tries at a start whose `--http` port was taken meanwhile.
const START_ATTEMPTS: u32 = 3;
/// How the daemon says its `--http` port was taken (in its log).
const PORT_TAKEN: &str = "binding --http";
/// How a start that ended with nothing on stdout, not even its ticket, is
/// reported: seen about once in six one-minute soaks, cause not yet known
/// (its log was empty). Retried, counted and printed, so the report shows
/// it and a peer that never starts still fails the run.
const SILENT_EXIT: &str = "exited before printing anything";

/// One peer's plan.
pub(crate) struct Churn {
    /// Its number, from 1 (0 is the measured daemon).
    pub(crate) index: u64,
    /// Starts its processes.
    pub(crate) launcher: Launcher,
    /// Its data folder: key, ticket, store.
    pub(crate) data_dir: PathBuf,
    /// The measured daemon's ticket.
    pub(crate) central: String,
    /// Each start runs for a time drawn uniformly from this, in seconds.
    pub(crate) up_secs: (f64, f64),
    /// The share of stops that are SIGKILL; the rest are SIGTERM.
    pub(crate) kill_share: f64,
    /// Kills owed: `kill_share` more at each stop, a kill pays 1. Starts
    /// in [0, 1).
    pub(crate) kill_debt: f64,
    /// Its writes.
    pub(crate) writer: Writer,
    /// Between two writes.
    pub(crate) write_every: Duration,
    /// Draws the run times and the first write's phase.
    pub(crate) rng: SmallRng,
    /// Where the churn stands.
    pub(crate) churning: Arc<Churning>,
    /// A client for its `/status`.
    pub(crate) http: reqwest::Client,
    /// What it went through so far.
    pub(crate) tally: Tally,
}

/// What one peer went through.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Tally {
    /// Processes started, the last one included.
    pub(crate) starts: u64,
    /// Stops whose process had a live link to the measured daemon then.
    pub(crate) live_at_stop: u64,
    /// Stops by SIGKILL.
    pub(crate) killed: u64,
    /// Stops by SIGTERM.
    pub(crate) terminated: u64,
    /// The longest a SIGTERM took to end a process, seconds.
    pub(crate) longest_stop_s: f64,
    /// Starts tried again because their `--http` port was taken.
    pub(crate) port_retries: u64,
    /// Starts tried again because the process ended before its ticket.
    pub(crate) silent_exits: u64,
    /// Every acknowledged write.
    #[serde(skip)]
    pub(crate) written: Vec<Loaded>,
    /// What went wrong (a failed write, a daemon that did not exit cleanly).
    pub(crate) problems: Vec<String>,
}

impl Churn {
    /// Starts the peer's next process and counts it. A start that lost
    /// its `--http` port to another process between the harness picking
    /// it and the daemon binding it is tried again on another (counted);
    /// any other failure to start is the run's.
    pub(crate) async fn start(&mut self) -> Result<(Node, String)> {
        self.tally.starts += 1;
        let name = format!("peer-{:02}-{}", self.index, self.tally.starts);
        let mut attempt = 1;
        let node = loop {
            match self
                .launcher
                .node(&name, &self.data_dir, &[&self.central], &[])
                .await
            {
                Ok(node) => break node,
                Err(err) if attempt < START_ATTEMPTS && format!("{err:#}").contains(PORT_TAKEN) => {
                    self.tally.port_retries += 1;
                    attempt += 1;
                }
                Err(err)
                    if attempt < START_ATTEMPTS && format!("{err:#}").contains(SILENT_EXIT) =>
                {
                    eprintln!("soak: {name} ended before its ticket; starting it again: {err:#}");
                    self.tally.silent_exits += 1;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        };
        self.churning.starts.fetch_add(1, Ordering::Relaxed);
        self.churning.peers_up.fetch_add(1, Ordering::Relaxed);
        Ok((node, name))
    }

    /// Runs the peer from its running `first` process (named `name`)
    /// until `writes_over` turns true and it has started a last time; what
    /// it went through and its last process, still running.
    pub(crate) async fn run(
        mut self,
        (first, name): (Node, String),
        mut writes_over: watch::Receiver<bool>,
    ) -> Result<(Tally, Node)> {
        let (mut node, mut name) = (first, name);
        // Peers write out of step with each other.
        let mut next_write = Instant::now() + self.write_every.mul_f64(self.rng.random::<f64>());
        loop {
            let (low, high) = self.up_secs;
            let stop_at =
                Instant::now() + Duration::from_secs_f64(self.rng.random_range(low..=high));
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next_write.min(stop_at).into()) => {}
                    _ = writes_over.wait_for(|over| *over) => break,
                }
                if Instant::now() >= stop_at {
                    break;
                }
                match self.writer.write(&node.can).await {
                    Ok(loaded) => self.tally.written.push(loaded),
                    Err(err) => self.tally.problems.push(format!("{name}: {err:#}")),
                }
                next_write = writes::after(next_write, self.write_every);
            }
            self.stop(node, &name).await;
            (node, name) = self.start().await?;
            if *writes_over.borrow() {
                return Ok((self.tally, node));
            }
        }
    }

    /// Ends one process of the peer, by SIGKILL or SIGTERM as drawn.
    async fn stop(&mut self, node: Node, name: &str) {
        let tally = &mut self.tally;
        let live = node
            .daemon
            .status_json(&self.http)
            .await
            .and_then(|status| status["live_links"].as_u64());
        if live.unwrap_or(0) > 0 {
            tally.live_at_stop += 1;
        }
        self.churning.peers_up.fetch_sub(1, Ordering::Relaxed);
        let started = Instant::now();
        self.kill_debt += self.kill_share;
        if self.kill_debt >= 1.0 {
            self.kill_debt -= 1.0;
            tally.killed += 1;
            if let Err(err) = node.daemon.kill().await {
                tally.problems.push(format!("{name}: killing: {err:#}"));
            }
        } else {
            tally.terminated += 1;
            if let Err(err) = node.daemon.stop().await {
                tally.problems.push(format!("{name}: {err:#}"));
            }
            tally.longest_stop_s = tally.longest_stop_s.max(started.elapsed().as_secs_f64());
        }
    }
}
