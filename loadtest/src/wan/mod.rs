//! `loadtest wan` and `loadtest outage` (issue 12, item 5): can-sync over a
//! shaped path, through the seeded [impairment proxy](crate::impair) in
//! front of the serving daemon.
//!
//! Both start two `serve-can --memory` CANs, A (loaded, not timed) and B
//! (empty), and `can-sync daemon` on A; the proxy forwards to that daemon's
//! socket, and `can-sync daemon` on B is handed A's ticket with the proxy's
//! address in place of A's ([`crate::impair::via`]). Data then flows A → B
//! through the proxy's upstream → client direction, acknowledgements the
//! other way; both directions are impaired alike.
//!
//! The proxy must be the only path. iroh's in-band NAT traversal advertises
//! each endpoint's bound address over the connection and opens a direct
//! path to it when it can (the first try here moved every byte around the
//! proxy). So daemon A listens on IPv6 loopback (`[::1]:0`) and daemon B on
//! IPv4 loopback (`127.0.0.1:0`, what the proxy's front binds): neither has
//! a socket that can reach the address the other advertises, and only the
//! proxy bridges the two. B is a daemon, not `seed`, because `seed` binds
//! every interface of both families and has no `--listen`. A run also
//! checks the proxy carried at least the payload, and fails if not.
//!
//! - [`wan`](throughput): 50 ms RTT, 100 Mbit/s, 0.5% loss by default.
//!   Daemon B, started empty, pulls a set of large assets; then, restarted
//!   after small assets were added to A, those; then, its link to A live,
//!   assets written to A at a fixed rate are timed to B (live latency).
//!   Reported: large-asset MB/s and its ratio to the shaped rate, small
//!   assets/s, live p50/p99, and what the proxy did.
//! - [`outage`]: the same path without loss by default, mixed assets, and a
//!   blackhole (every packet dropped both ways) of `--outage-secs` starting
//!   `--outage-at` seconds after the proxy starts, mid-transfer. `daemon`
//!   on B dials A through the proxy and is left to recover by itself.
//!   Reported: what B held when the blackhole began, B's peer state over
//!   time, when the transfer completed, and what A sent more than once
//!   (its `/metrics` counters against what was loaded).
//!
//! Every run ends with [`crate::verify::check`] on both CANs; every wait has
//! a bound; only loopback is used. The seed of the impairment is printed
//! and, with `--seed`, replays the same luck.
//!
//! # Layout
//!
//! - this file: the flags shared by both ([`LinkArgs`]), the rig both start
//!   ([`Rig`]), helpers;
//! - [`throughput`]: `loadtest wan`;
//! - [`outage`]: `loadtest outage`.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use can_sync::can::HttpCan;
use serde::Serialize;

use crate::agents::{CanServer, Daemon, Faults, Launcher, Node};
use crate::data::{self, Gen, Loaded, Plan};
use crate::impair::{self, Counts, Impairment, Proxy, Window};
use crate::progress::Progress;

pub(crate) mod outage;
pub(crate) mod throughput;

/// The impairment seed both commands print and default to.
const DEFAULT_SEED: u64 = 20_261_130;
/// A daemon that only accepts never dials, so its resync period is moot.
const NEVER: u64 = 3600;
/// How long a daemon dialling through the proxy may take to go live.
const LIVE_WAIT: Duration = Duration::from_secs(60);

/// The shaped path, per direction; each command has its own defaults.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LinkArgs {
    /// Round-trip time the proxy adds, in ms (half each way).
    #[arg(long)]
    rtt_ms: Option<f64>,
    /// Each packet's one-way delay varies by up to this much either way, ms.
    #[arg(long)]
    jitter_ms: Option<f64>,
    /// Fraction of packets lost, each direction.
    #[arg(long)]
    loss: Option<f64>,
    /// Fraction of packets held back `--reorder-ms` (later ones overtake).
    #[arg(long)]
    reorder: Option<f64>,
    /// How long a reordered packet is held back, ms.
    #[arg(long, default_value_t = 5.0)]
    reorder_ms: f64,
    /// Bottleneck rate, Mbit/s (10^6 bits) each way; 0: no cap.
    #[arg(long)]
    rate_mbit: Option<f64>,
    /// The bottleneck queue, in ms at the rate; fuller, it drops at the tail.
    #[arg(long, default_value_t = 50.0)]
    queue_ms: f64,
    /// Congestion controllers to compare, e.g. `cubic,bbr`: the whole run
    /// repeats with each (the daemons' `--congestion`), in this order.
    /// Without: the daemons' default.
    #[arg(long, value_delimiter = ',')]
    congestion: Vec<String>,
    /// Seed of every random decision of the proxy.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// The daemons' `--no-ranges`: large assets sent and taken whole, as
    /// before verified ranges (the baseline of issue 21's measurements).
    #[arg(long)]
    no_ranges: bool,
    /// The can-sync binary (default: `can-sync` beside this binary).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Write the result as one JSON object (one line) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the scratch folder (process logs, daemon data).
    #[arg(long)]
    keep: bool,
}

/// A command's defaults for the [`LinkArgs`] left out.
struct LinkDefaults {
    rtt_ms: f64,
    loss: f64,
    rate_mbit: f64,
}

/// The path as resolved, as reported.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Path {
    rtt_ms: f64,
    jitter_ms: f64,
    loss: f64,
    reorder: f64,
    rate_mbit: f64,
    queue_ms: f64,
    seed: u64,
    /// The daemons' `--congestion`; `None`: their default.
    congestion: Option<String>,
    /// Large assets by verified ranges (false: the daemons' `--no-ranges`).
    ranges: bool,
}

impl Path {
    /// The shaped rate in MB/s (10^6 bytes), `None` without a cap.
    fn rate_mb_per_s(&self) -> Option<f64> {
        (self.rate_mbit > 0.0).then_some(self.rate_mbit / 8.0)
    }

    /// One direction's impairment, with `blackholes`.
    fn impairment(&self, blackholes: Vec<Window>) -> Impairment {
        let ms = |v: f64| Duration::from_secs_f64(v / 1e3);
        Impairment {
            delay: ms(self.rtt_ms / 2.0),
            jitter: ms(self.jitter_ms),
            loss: self.loss,
            reorder: self.reorder,
            rate_bps: (self.rate_mbit > 0.0).then_some((self.rate_mbit * 1e6) as u64),
            queue: ms(self.queue_ms),
            blackholes,
            ..Impairment::default()
        }
    }

    fn describe(&self) -> String {
        let rate = match self.rate_mb_per_s() {
            Some(_) => format!("{} Mbit/s", self.rate_mbit),
            None => "no rate cap".into(),
        };
        format!(
            "RTT {} ms, jitter ±{} ms, loss {}%, reorder {}%, {rate}, queue {} ms; seed {}; congestion control {}{}",
            self.rtt_ms,
            self.jitter_ms,
            self.loss * 100.0,
            self.reorder * 100.0,
            self.queue_ms,
            self.seed,
            self.congestion.as_deref().unwrap_or("(default)"),
            if self.ranges { "" } else { "; --no-ranges" }
        )
    }
}

impl LinkArgs {
    /// The congestion controllers to run with, in order: `[None]` for the
    /// daemons' default.
    fn controllers(&self) -> Vec<Option<String>> {
        if self.congestion.is_empty() {
            vec![None]
        } else {
            self.congestion.iter().cloned().map(Some).collect()
        }
    }

    fn resolve(&self, d: LinkDefaults, congestion: Option<String>) -> Result<(Path, Duration)> {
        let path = Path {
            rtt_ms: self.rtt_ms.unwrap_or(d.rtt_ms),
            jitter_ms: self.jitter_ms.unwrap_or(0.0),
            loss: self.loss.unwrap_or(d.loss),
            reorder: self.reorder.unwrap_or(0.0),
            rate_mbit: self.rate_mbit.unwrap_or(d.rate_mbit),
            queue_ms: self.queue_ms,
            seed: self.seed,
            congestion,
            ranges: !self.no_ranges,
        };
        for (what, v) in [("--loss", path.loss), ("--reorder", path.reorder)] {
            ensure!((0.0..1.0).contains(&v), "{what} must be in [0, 1)");
        }
        for (what, v) in [
            ("--rtt-ms", path.rtt_ms),
            ("--jitter-ms", path.jitter_ms),
            ("--rate-mbit", path.rate_mbit),
            ("--queue-ms", path.queue_ms),
            ("--reorder-ms", self.reorder_ms),
        ] {
            ensure!(v.is_finite() && v >= 0.0, "{what} must be a number ≥ 0");
        }
        Ok((path, Duration::from_secs_f64(self.reorder_ms / 1e3)))
    }
}

/// What both commands start: the CANs, the daemon on A, and the proxy in
/// front of it.
struct Rig {
    launcher: Launcher,
    _scratch: tempfile::TempDir,
    progress: Progress,
    a: CanServer,
    b: CanServer,
    daemon_a: Daemon,
    proxy: Proxy,
    /// A's ticket with the proxy's address: what B dials.
    proxied: String,
    http: reqwest::Client,
}

impl Rig {
    /// Starts the CANs, loads `plans` into A (not timed), starts the
    /// daemon on A and the proxy in front of it (whose clock, and so the
    /// blackhole windows, start then); what was loaded.
    async fn start(
        args: &LinkArgs,
        path: &Path,
        reorder_delay: Duration,
        blackholes: Vec<Window>,
        plans: &[Plan],
        gen: &Gen,
    ) -> Result<(Self, Vec<Loaded>)> {
        let bin = crate::can_sync_bin(args.bin.clone())?;
        let mut scratch = tempfile::Builder::new()
            .prefix("can-sync-wan-")
            .tempdir()
            .context("creating a scratch folder")?;
        if args.keep {
            scratch.disable_cleanup(true);
            eprintln!("keeping {}", scratch.path().display());
        }
        let progress = Progress::start();
        let launcher = Launcher {
            bin,
            dir: scratch.path().to_path_buf(),
            progress: progress.clone(),
            daemon_args: daemon_args(path),
        };
        progress.phase("starting CANs");
        // Bodies as large as the largest asset (with room for its
        // metadata), so a single asset above the server's default loads.
        let largest = plans.iter().map(|p| p.size).max().unwrap_or(0);
        let faults = Faults {
            max_body_bytes: if largest >= 256 << 20 {
                largest + (1 << 20)
            } else {
                0
            },
            ..Faults::default()
        };
        let (a, b) = tokio::try_join!(
            launcher.can_server("can-a", faults),
            launcher.can_server("can-b", faults)
        )?;
        let loaded = load(&progress, &a.can, plans, gen).await?;
        progress.phase("starting daemon A and the proxy");
        // On IPv6 loopback, B on IPv4 loopback: see the module doc.
        let daemon_a = launcher
            .daemon_on("daemon-a", &a.url, &[], 2, NEVER, "[::1]:0")
            .await?;
        let mut impairment = path.impairment(blackholes);
        impairment.reorder_delay = reorder_delay;
        let proxy = Proxy::start(
            impair::upstream_of(&daemon_a.ticket)?,
            impairment.clone(),
            impairment,
            path.seed,
        )
        .await?;
        let proxied = impair::via(&daemon_a.ticket, proxy.addr())?;
        let rig = Self {
            launcher,
            _scratch: scratch,
            progress,
            a,
            b,
            daemon_a,
            proxy,
            proxied,
            http: crate::agents::status_client()?,
        };
        Ok((rig, loaded))
    }

    /// Starts `daemon` on B, dialling A through the proxy; `name` names
    /// its log.
    async fn daemon_b(&self, name: &str, resync_secs: u64) -> Result<Daemon> {
        self.launcher
            .daemon(name, &self.b.url, &[&self.proxied], 2, resync_secs)
            .await
    }

    /// Waits until daemon A has a live link (B dialled through the proxy
    /// and its first session is done); false after [`LIVE_WAIT`].
    async fn wait_live(&self) -> bool {
        let deadline = Instant::now() + LIVE_WAIT;
        while Instant::now() < deadline {
            let live = self
                .daemon_a
                .status_json(&self.http)
                .await
                .and_then(|s| s["live_links"].as_u64());
            if live.unwrap_or(0) > 0 {
                return true;
            }
            // Polling another process's status: it has no push channel.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Starts B as a whole node on its own embedded store (which keeps
    /// a large asset received in part, so that a cut transfer resumes),
    /// dialling A through the proxy; `name` names its log and data folder.
    async fn node_b(&self, name: &str, resync_secs: u64) -> Result<Node> {
        let mut launcher = self.launcher.clone();
        launcher
            .daemon_args
            .extend(["--resync-secs".to_string(), resync_secs.to_string()]);
        let dir = self.launcher.dir.join(name);
        launcher
            .node_on(name, &dir, "127.0.0.1:0", &[&self.proxied], &[])
            .await
    }

    /// Stops the daemons (`others` too), then checks both CANs hold
    /// `expected`, then stops them; the problems found, if any.
    async fn finish(self, others: Vec<Daemon>, expected: &[Loaded]) -> Result<Vec<String>> {
        self.finish_with(others, expected, None).await
    }

    /// [`Self::finish`], checking `b` (a node's CAN API) in place of B's CAN
    /// server when given.
    async fn finish_with(
        mut self,
        others: Vec<Daemon>,
        expected: &[Loaded],
        b: Option<&HttpCan>,
    ) -> Result<Vec<String>> {
        self.progress.phase("checking");
        let mut problems = Vec::new();
        // A node's CAN API goes with its daemon, so it is checked first
        // (once every asset has arrived, nothing changes it).
        let early = match b {
            Some(b) => Some(crate::verify::check(&[("B", b)], expected).await?),
            None => None,
        };
        for daemon in others.into_iter().chain([self.daemon_a]) {
            if let Err(err) = daemon.stop().await {
                problems.push(format!("{err:#}"));
            }
        }
        self.proxy.stop();
        let verdict = match early {
            Some(b) => {
                let a = crate::verify::check(&[("A", &self.a.can)], expected).await?;
                if !b.ok() {
                    problems.push(format!("B did not converge: {}", b.summary()));
                }
                a
            }
            None => {
                crate::verify::check(&[("A", &self.a.can), ("B", &self.b.can)], expected).await?
            }
        };
        tokio::join!(self.a.stop(), self.b.stop());
        self.progress.clear();
        if !verdict.ok() {
            problems.push(format!("did not converge: {}", verdict.summary()));
        }
        Ok(problems)
    }
}

/// What the proxy did, both ways.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ProxyCounts {
    /// B → A: requests and acknowledgements.
    up: Counts,
    /// A → B: the data.
    down: Counts,
}

impl ProxyCounts {
    fn of(proxy: &Proxy) -> Self {
        Self {
            up: proxy.up(),
            down: proxy.down(),
        }
    }

    fn describe(&self) -> String {
        let one = |name: &str, c: &Counts| {
            format!(
                "{name}: {} packets ({:.1} MB) in, {} delivered; dropped {} lost, {} queue full, {} blackholed; {} overtook",
                c.packets,
                c.bytes as f64 / 1e6,
                c.delivered,
                c.lost,
                c.queue_full,
                c.blackholed,
                c.overtaking
            )
        };
        format!(
            "{}\n{}",
            one("proxy A→B", &self.down),
            one("proxy B→A", &self.up)
        )
    }
}

/// Runs `one` once per congestion controller the flags name (the daemons'
/// default when none), printing each report as it ends, then writes them all
/// as JSON lines when `--json` asks; true when every run was `ok`.
async fn each_controller<R: Serialize>(
    link: &LinkArgs,
    mut one: impl AsyncFnMut(Option<String>) -> Result<R>,
    describe: fn(&R) -> String,
    ok: fn(&R) -> bool,
) -> Result<bool> {
    let mut reports = Vec::new();
    for congestion in link.controllers() {
        let report = one(congestion).await?;
        print!("{}", describe(&report));
        reports.push(report);
    }
    if let Some(path) = link.json.as_deref() {
        let mut lines = String::new();
        for report in &reports {
            lines += &(serde_json::to_string(report)? + "\n");
        }
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(reports.iter().all(ok))
}

/// Loads `plans` into `can`, with a count on the progress line.
async fn load(
    progress: &Progress,
    can: &HttpCan,
    plans: &[Plan],
    gen: &Gen,
) -> Result<Vec<Loaded>> {
    progress.phase("loading A");
    let done = Arc::new(AtomicU64::new(0));
    progress.count(done.clone(), plans.len() as u64, "assets");
    data::load(can, plans, gen, &done).await
}

/// Flags every daemon of a run gets: its `--congestion` and `--no-ranges`.
fn daemon_args(path: &Path) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(c) = &path.congestion {
        args.extend(["--congestion".to_string(), c.clone()]);
    }
    if !path.ranges {
        args.push("--no-ranges".into());
    }
    args
}

/// Bytes of `loaded`.
fn total(loaded: &[Loaded]) -> u64 {
    loaded.iter().map(|l| l.size).sum()
}
