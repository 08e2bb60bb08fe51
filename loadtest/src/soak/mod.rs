//! `loadtest soak` (issue 20): one daemon, measured, and `--peers` peers
//! that reconnect to it every 2–5 s for `--duration`, with writes on every
//! side. Does the daemon keep anything of the peers it lost? After the
//! warm-up its resident memory, open descriptors and live tasks must stay
//! flat (no more than `--max-growth` above their baseline at the end; the
//! descriptors of its store's pack segments, a cache bounded by design that
//! its first write or read opens, are counted apart and not judged), and
//! once the writes stop and the peers reconnect a last time, every asset
//! must be on every node.
//!
//! All real processes on loopback, relays off. The measured daemon and
//! every peer are `can-sync daemon`s, each on its own embedded store, the
//! CAN API served on its `--http` port. Access stays closed as a user
//! leaves it: the measured daemon `--allow`s the peers' ids (read with
//! `can-sync id --data-dir` before anything starts), each peer dials it
//! with `--peer`, which admits it back.
//!
//! Peers reconnect by restarting ([`peer`]): the only way to drop and
//! redo a live link from outside, and the whole of one — the measured
//! daemon sees a handshake, an admission, a reconciliation of what the
//! peer missed, a live phase, then the link's end: announced (SIGTERM) or
//! not (SIGKILL, found by the idle timeout while the peer is already back).
//! `seed` in a loop would never reach the live phase; cutting a link in an
//! impairment proxy only ever ends it by the idle timeout, 10 s at least.
//!
//! Every store starts with the same archive (`--archive` small assets, put
//! in through the store API before any daemon opens it): the measured
//! daemon's in-memory parts that grow with its store, such as its coded
//! cells (10 MiB once the store holds a few thousand assets), are in place
//! before the baseline, and no peer's first session has to seed it.
//!
//! The run has three phases:
//! 1. *Calm before*: every peer starts once; when the measured daemon has
//!    one live link per peer, it is sampled at rest.
//! 2. *Churn*, `--duration` long: the peers restart, [`writes`] go to
//!    every node at `--rate`, and the [`sampler`] reads the measured
//!    daemon every `--sample-ms`: `/proc` for memory, threads and
//!    descriptors, its `/metrics` for live tasks
//!    (`cansync_runtime_alive_tasks`) and links.
//! 3. *Calm after*: the writes stop, every peer restarts a last time, every
//!    node must hold every asset (listings compared, [`crate::verify`]);
//!    once the dead links of killed peers have timed out (one live link
//!    per peer again), the daemon is sampled at rest once more.
//!
//! Two verdicts on the daemon's resources: [`flat`] compares the end of the
//! churn with its baseline after the warm-up (medians; memory, descriptors
//! and tasks judged), and the calm after is compared with the calm before
//! (descriptors and tasks, which at rest depend on nothing but what is
//! connected: the churn's noise is gone). [`report`] says it all, and
//! writes the samples (`--csv`) and the result (`--json`).
//!
//! The writes are light by default (a 256-byte asset every 10 s per node):
//! each asset stored grows the daemon's database page cache until that
//! reaches its bound (64 MiB), by about 3 KiB for a small asset (the fresh
//! B-tree pages of its commit) and 8 KiB for a 4 KiB one, and the RSS
//! verdict is there to find what reconnects leave behind, not the cache
//! filling.
//!
//! The run fails (exit code 1) when a judged series grew beyond the limit,
//! the daemon holds more at rest after the churn than before it, a node
//! lacks an asset or holds other metadata than the rest, a write failed, a
//! daemon did not exit cleanly on SIGTERM, or a peer could not be started.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use can_sync::can::HttpCan;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tokio::sync::watch;

use crate::agents::{self, Launcher, Node};
use crate::config::ByteSize;
use crate::data::{Gen, Loaded};
use crate::progress::Progress;
use crate::settle;

pub(crate) mod flat;
pub(crate) mod peer;
pub(crate) mod report;
pub(crate) mod sampler;
pub(crate) mod writes;

use flat::{Trend, Windows};
use peer::{Churn, Tally};
use sampler::{Churning, Sample, Sampler};
use writes::Writer;

/// Flags of `loadtest soak`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Seconds the peers reconnect and every node is written to: the
    /// measured span.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Peer daemons reconnecting to the measured one.
    #[arg(long, default_value_t = 16)]
    peers: u64,
    /// Shortest run of a peer process before it is stopped, seconds.
    #[arg(long, default_value_t = 2.0)]
    up_min: f64,
    /// Longest run of a peer process before it is stopped, seconds.
    #[arg(long, default_value_t = 5.0)]
    up_max: f64,
    /// Share of the peers' stops that are SIGKILL; the rest are SIGTERM.
    #[arg(long, default_value_t = 0.25)]
    kill_share: f64,
    /// Assets every node holds before anything starts: stores of some
    /// size, whose in-memory parts that grow with the store (the coded
    /// cells) are in place before the baseline.
    #[arg(long, default_value_t = 4000)]
    archive: u64,
    /// Assets written per second to each node while it runs. Light by
    /// default: every asset stored grows the daemon's page cache (up to
    /// its bound, 64 MiB), which is not what the soak looks for.
    #[arg(long, default_value_t = 0.1)]
    rate: f64,
    /// Bytes of each asset written (small assets live in the database, so
    /// in its page cache once written).
    #[arg(long, default_value = "256")]
    asset_size: ByteSize,
    /// Most a judged series (RSS, open descriptors, tasks) may grow from
    /// its baseline to the end, as a fraction: 0.1 is 10%.
    #[arg(long, default_value_t = 0.10)]
    max_growth: f64,
    /// Milliseconds between two samples of the measured daemon.
    #[arg(long, default_value_t = 500)]
    sample_ms: u64,
    /// Seconds every asset may take to reach every node after the peers'
    /// last reconnect.
    #[arg(long, default_value_t = 120)]
    settle_secs: u64,
    /// Seed of the peers' run times, stops and the assets.
    #[arg(long, default_value_t = 20)]
    seed: u64,
    /// The can-sync binary (default: `can-sync` beside this binary).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Write every sample of the measured daemon to this file, as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write the result as one JSON object to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the scratch folder (process logs, the nodes' data).
    #[arg(long)]
    keep: bool,
}

impl Args {
    fn config(&self) -> Config {
        Config {
            duration_s: self.duration,
            peers: self.peers,
            archive: self.archive,
            up_secs: (self.up_min, self.up_max),
            kill_share: self.kill_share,
            rate_per_node: self.rate,
            asset_size: self.asset_size.0,
            max_growth: self.max_growth,
            sample_ms: self.sample_ms,
            seed: self.seed,
        }
    }

    fn check(&self) -> Result<()> {
        ensure!(self.duration >= 40, "--duration must be at least 40 s");
        ensure!(
            (1..writes::MAX_NODES).contains(&self.peers),
            "--peers must be from 1 to {}",
            writes::MAX_NODES - 1
        );
        ensure!(
            self.up_min > 0.0 && self.up_min <= self.up_max,
            "--up-min must be above 0 and not above --up-max"
        );
        ensure!(
            (0.0..=1.0).contains(&self.kill_share),
            "--kill-share must be in [0, 1]"
        );
        ensure!(
            self.rate > 0.0 && self.rate.is_finite(),
            "--rate must be above 0"
        );
        ensure!(self.asset_size.0 > 0, "--asset-size must be above 0");
        ensure!(
            self.archive <= 1_000_000,
            "--archive must be at most 1,000,000"
        );
        ensure!(self.max_growth >= 0.0, "--max-growth must be ≥ 0");
        ensure!(self.sample_ms >= 50, "--sample-ms must be at least 50");
        Ok(())
    }
}

/// The flags as the report shows them.
#[derive(Debug, Serialize)]
pub(crate) struct Config {
    duration_s: u64,
    peers: u64,
    archive: u64,
    up_secs: (f64, f64),
    kill_share: f64,
    rate_per_node: f64,
    asset_size: u64,
    max_growth: f64,
    sample_ms: u64,
    seed: u64,
}

/// The churn, every peer's tally summed.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Churned {
    /// Peer processes started, the last ones included.
    starts: u64,
    /// Stops with a live link then.
    live_at_stop: u64,
    /// Stops by SIGKILL.
    killed: u64,
    /// Stops by SIGTERM.
    terminated: u64,
    /// The longest a SIGTERM took, seconds.
    longest_stop_s: f64,
    /// Starts tried again because their `--http` port was taken.
    port_retries: u64,
    /// Starts tried again because the process ended before its ticket.
    silent_exits: u64,
}

impl Churned {
    fn add(&mut self, tally: &Tally) {
        self.starts += tally.starts;
        self.live_at_stop += tally.live_at_stop;
        self.killed += tally.killed;
        self.terminated += tally.terminated;
        self.longest_stop_s = self.longest_stop_s.max(tally.longest_stop_s);
        self.port_retries += tally.port_retries;
        self.silent_exits += tally.silent_exits;
    }
}

/// The result, as printed and written with `--json`.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    config: Config,
    /// The compared windows, seconds from the start of the churn.
    windows: Windows,
    /// Each sampled series; RSS, descriptors and tasks are judged.
    trends: Vec<Trend>,
    /// Samples taken.
    samples: usize,
    churn: Churned,
    /// Assets every node must hold: the archive and every write
    /// acknowledged.
    assets: u64,
    /// Of those, written during the churn to the measured daemon.
    assets_on_central: u64,
    /// Their bytes.
    bytes: u64,
    /// Seconds from the end of the writes until every node held every
    /// asset (the peers' last reconnect included).
    settled_s: Option<f64>,
    /// The measured daemon before and after the churn, at rest.
    calm: Calm,
    problems: Vec<String>,
    ok: bool,
}

/// Runs the soak and prints its report; true when it passed.
pub(crate) async fn run(args: Args) -> Result<bool> {
    args.check()?;
    let bin = crate::can_sync_bin(args.bin.clone())?;
    let mut scratch = tempfile::Builder::new()
        .prefix("can-sync-soak-")
        .tempdir()
        .context("creating a scratch folder")?;
    if args.keep {
        scratch.disable_cleanup(true);
        eprintln!("keeping {}", scratch.path().display());
    }
    let dir = scratch.path().to_path_buf();
    let progress = Progress::start();
    let launcher = Launcher {
        bin,
        dir: dir.clone(),
        progress: progress.clone(),
        daemon_args: Vec::new(),
    };
    let config = args.config();
    println!("{}", report::headline(&config));

    let peer_dirs: Vec<PathBuf> = (1..=args.peers)
        .map(|i| dir.join(format!("peer-{i:02}")))
        .collect();
    let ids = futures::future::try_join_all(peer_dirs.iter().zip(1..).map(|(d, i)| {
        let launcher = &launcher;
        async move { launcher.endpoint_id(&format!("id-{i:02}"), d).await }
    }))
    .await?;
    let gen = Gen::new("soak", args.seed);
    let central_dir = dir.join("central");
    progress.say(&format!(
        "putting the archive ({} assets) in every store",
        args.archive
    ));
    let stores: Vec<PathBuf> = std::iter::once(&central_dir)
        .chain(&peer_dirs)
        .map(|d| agents::node_store(d))
        .collect();
    let archive = writes::archive(&stores, &gen, args.archive).await?;
    let mut central = launcher.node("central", &central_dir, &[], &ids).await?;
    let http = agents::status_client()?;
    let churning = Arc::new(Churning::default());
    let (over_tx, over_rx) = watch::channel(false);

    let mut churns = churns(
        &args, &launcher, &central, peer_dirs, &gen, &churning, &http,
    );

    // The calm before: every peer connected once, live, nothing written.
    progress.say("starting the peers");
    let firsts = futures::future::try_join_all(churns.iter_mut().map(Churn::start)).await?;
    let calm_deadline = Instant::now() + Duration::from_secs(args.settle_secs);
    let mut problems = Vec::new();
    if !settle::live_links(&central.daemon, &http, args.peers, calm_deadline).await {
        problems.push(format!(
            "the measured daemon never had one live link per peer ({}) before the churn",
            args.peers
        ));
    }
    let origin = Instant::now();
    let before = sampler::sample(&central.daemon, &http, origin, &churning).await;

    let peers: Vec<_> = churns
        .into_iter()
        .zip(firsts)
        .map(|(churn, first)| tokio::spawn(churn.run(first, over_rx.clone())))
        .collect();
    let mut central_writer = Writer {
        gen,
        node: 0,
        size: args.asset_size.0,
        count: 0,
        churning: churning.clone(),
    };
    let sampler = Sampler {
        daemon: &central.daemon,
        http: &http,
        origin,
        churning: &churning,
        every: Duration::from_millis(args.sample_ms),
        say_every: Duration::from_secs((args.duration / 20).max(10)),
        progress: &progress,
    };
    let duration = Duration::from_secs(args.duration);
    let (samples, (central_written, failures), ()) = tokio::join!(
        sampler.run(over_rx.clone()),
        writes::steadily(
            &mut central_writer,
            &central.can,
            origin,
            Duration::from_secs_f64(1.0 / args.rate),
            over_rx.clone()
        ),
        async {
            tokio::time::sleep(duration).await;
            over_tx.send_replace(true);
        }
    );
    let writes_over = Instant::now();
    problems.extend(failures);
    progress.say("writes over: every peer reconnects a last time");

    let mut churn = Churned::default();
    let assets_on_central = central_written.len() as u64;
    let mut expected: Vec<Loaded> = archive;
    expected.extend(central_written);
    let mut nodes: Vec<(String, Node)> = Vec::new();
    for (index, handle) in (1..).zip(peers) {
        match handle.await.context("peer task")? {
            Ok((tally, node)) => {
                churn.add(&tally);
                problems.extend(tally.problems);
                expected.extend(tally.written);
                nodes.push((format!("peer-{index:02}"), node));
            }
            Err(err) => problems.push(format!("peer-{index:02}: {err:#}")),
        }
    }

    progress.say(&format!(
        "waiting for {} assets on {} nodes",
        expected.len(),
        nodes.len() + 1
    ));
    let mut cans: Vec<(&str, &HttpCan)> = vec![("central", &*central.can)];
    cans.extend(nodes.iter().map(|(name, node)| (name.as_str(), &*node.can)));
    let deadline = Instant::now() + Duration::from_secs(args.settle_secs);
    let settled = settle::all_hold(&cans, expected.len() as u64, deadline)
        .await
        .then(|| writes_over.elapsed());
    let verdict = crate::verify::check(&cans, &expected).await?;
    if !verdict.ok() {
        problems.push(format!("did not converge: {}", verdict.summary()));
    }

    // The harness's own connections to the CAN API (its writes, the
    // listings just read) are not the daemon's to answer for, and none were
    // open before the churn: a fresh client closes them while the links of
    // killed peers time out.
    drop(cans);
    central.can = Arc::new(HttpCan::new(central.can.base_url()).context("CAN client")?);

    // The calm after: the links of killed peers time out; then the daemon
    // must hold what it held before the churn.
    progress.say("waiting for the links of killed peers to time out");
    let deadline = Instant::now() + Duration::from_secs(args.settle_secs);
    let rested = settle::live_links(&central.daemon, &http, args.peers, deadline).await;
    let after = sampler::sample(&central.daemon, &http, origin, &churning).await;
    if !rested {
        problems.push(format!(
            "the measured daemon still had {} live links for {} peers {} s after the churn",
            after
                .and_then(|s| s.live_links)
                .map_or("?".into(), |n| n.to_string()),
            args.peers,
            args.settle_secs
        ));
    }
    let calm = calm_compare(before, after, args.max_growth, &mut problems);

    for (name, node) in nodes {
        if let Err(err) = node.daemon.stop().await {
            problems.push(format!("{name} (last start): {err:#}"));
        }
    }
    if let Err(err) = central.daemon.stop().await {
        problems.push(format!("the measured daemon: {err:#}"));
    }

    let windows = Windows::of(duration.as_secs_f64());
    let trends = trends(&samples, &windows, args.max_growth, &mut problems);

    let report = Report {
        config,
        windows,
        trends,
        samples: samples.len(),
        churn,
        assets: expected.len() as u64,
        assets_on_central,
        bytes: expected.iter().map(|l| l.size).sum(),
        settled_s: settled.map(|d| d.as_secs_f64()),
        calm,
        ok: problems.is_empty(),
        problems,
    };
    progress.clear();
    print!("{}", report::describe(&report));
    if let Some(path) = &args.csv {
        std::fs::write(path, sampler::csv(&samples))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.ok)
}

/// One [`Churn`] per peer folder, its draws seeded from `--seed`.
fn churns(
    args: &Args,
    launcher: &Launcher,
    central: &Node,
    peer_dirs: Vec<PathBuf>,
    gen: &Gen,
    churning: &Arc<Churning>,
    http: &reqwest::Client,
) -> Vec<Churn> {
    let mut rng = SmallRng::seed_from_u64(args.seed);
    peer_dirs
        .into_iter()
        .zip(1..)
        .map(|(data_dir, index)| Churn {
            index,
            launcher: launcher.clone(),
            data_dir,
            central: central.daemon.ticket.clone(),
            up_secs: (args.up_min, args.up_max),
            kill_share: args.kill_share,
            kill_debt: rng.random::<f64>(),
            writer: Writer {
                gen: gen.clone(),
                node: index,
                size: args.asset_size.0,
                count: 0,
                churning: churning.clone(),
            },
            write_every: Duration::from_secs_f64(1.0 / args.rate),
            rng: SmallRng::seed_from_u64(rng.random()),
            churning: churning.clone(),
            http: http.clone(),
            tally: Tally::default(),
        })
        .collect()
}

/// Each sampled series judged over `windows`: memory, descriptors and
/// tasks against `max_growth` (a problem each when they grew more, or
/// when a window has no sample), threads and live links only reported.
fn trends(
    samples: &[Sample],
    windows: &Windows,
    max_growth: f64,
    problems: &mut Vec<String>,
) -> Vec<Trend> {
    type Series = (&'static str, bool, fn(&Sample) -> Option<u64>);
    let series: [Series; 5] = [
        ("rss_bytes", true, |s| Some(s.rss_bytes)),
        ("open_fds", true, |s| Some(s.open_fds - s.pack_fds)),
        ("tasks", true, |s| s.tasks),
        ("threads", false, |s| Some(s.threads)),
        ("live_links", false, |s| s.live_links),
    ];
    let mut trends = Vec::new();
    for (name, judged, value) in series {
        let points: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|s| Some((s.t_s, value(s)? as f64)))
            .collect();
        let limit = judged.then_some(max_growth);
        match Trend::of(name, &points, windows, limit) {
            Some(trend) => {
                if !trend.ok() {
                    problems.push(format!(
                        "{name} grew {:.1}% (limit {:.0}%)",
                        trend.growth * 100.0,
                        max_growth * 100.0
                    ));
                }
                trends.push(trend);
            }
            None if judged => problems.push(format!("{name}: no samples in a compared window")),
            None => {}
        }
    }
    trends
}

/// The measured daemon at rest: every peer connected once, live, before
/// the churn; and after it, when the dead links have timed out.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Calm {
    before: Option<Sample>,
    after: Option<Sample>,
}

/// Compares the calm after the churn with the calm before it: open
/// descriptors and tasks may not have grown more than `max_growth` (memory
/// is not compared: before, nothing was cached yet).
fn calm_compare(
    before: Option<Sample>,
    after: Option<Sample>,
    max_growth: f64,
    problems: &mut Vec<String>,
) -> Calm {
    let (Some(b), Some(a)) = (before, after) else {
        problems.push("the measured daemon could not be sampled at rest".into());
        return Calm { before, after };
    };
    let pairs = [
        (
            "open descriptors besides its pack segments",
            Some(b.open_fds - b.pack_fds),
            Some(a.open_fds - a.pack_fds),
        ),
        ("tasks", b.tasks, a.tasks),
    ];
    for (what, was, is) in pairs {
        match (was, is) {
            (Some(was), Some(is)) if is as f64 > was as f64 * (1.0 + max_growth) => {
                problems.push(format!(
                    "at rest the measured daemon holds {is} {what}, {was} before the churn"
                ));
            }
            (Some(_), Some(_)) => {}
            _ => problems.push(format!("the measured daemon's {what} at rest are unknown")),
        }
    }
    Calm { before, after }
}
