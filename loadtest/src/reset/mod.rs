//! `loadtest reset` (issue 20): a store reset under live links, and the
//! duplicates it costs, counted from outside. Issue 20's held-out check
//! resets stores under live links and wants duplicates at most 5% of what
//! moved; this is that check with real processes, so it can be run before
//! and after a change to the engine.
//!
//! `--nodes` `can-sync daemon`s, each on its own embedded store with its
//! CAN API, `/status` and `/metrics` on its `--http` port, run in a full
//! mesh on loopback, relays and discovery off (`--no-relay`), access closed
//! ([`mesh`]: each pair has one dialer, which names the other's ticket with
//! `--peer`; the other `--allow`s its id). Every store starts with the same
//! archive, `--assets` assets of `--size` bytes.
//!
//! The archive is put into every store through the store API before any
//! daemon opens it ([`crate::data::into_stores`]), not into one node for
//! the mesh to spread: the nodes then start as nodes that have synced
//! before, their initial sessions move nothing, and the mesh is quiet as
//! soon as every link is live, so the baseline is clean (no session still
//! running across it) and the set-up takes seconds, not a network seeding
//! that would not be measured anyway. The reset node's catch-up is the
//! only bulk transfer a round contains.
//!
//! Each of `--rounds` rounds ([`round`]) resets one node, another each round
//! (the last node first: it dials every other, so it reconnects to all of
//! them at once; then the one before it, whose links come from both sides):
//! 1. once every node has a live link to every other and the counters
//!    stand still, each daemon's [`counters`] are read;
//! 2. the node is stopped by SIGTERM, its store deleted (its key kept, so
//!    its peers still admit it, and its address, so those that dial it find
//!    it again), and started again with the same flags;
//! 3. with `--writes`, a burst of `--burst` new assets goes to the other
//!    nodes through their CAN APIs at once, so live offers overlap the
//!    restarted node's initial sessions;
//! 4. the restarted node must hold every asset within `--timeout-secs`
//!    (its catch-up time), then every node must, every link must be live
//!    again and the counters stand still; they are read once more and
//!    every node's listing and metadata compared with what was loaded
//!    ([`crate::verify`]).
//!
//! [`report`] adds up what every node received during the round and the
//! duplicates among it: the restarted node counts from zero, the others
//! from the baseline. The run fails (exit code 1) when a node lacks an
//! asset, a wait runs out, a daemon does not exit cleanly on SIGTERM, or a
//! round's duplicates exceed `--max-duplicates` percent of what was
//! received (`--max-duplicates 100` only measures).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use crate::agents::{self, Launcher};
use crate::config::ByteSize;
use crate::data::{self, Gen};
use crate::progress::Progress;

pub(crate) mod counters;
pub(crate) mod mesh;
pub(crate) mod report;
pub(crate) mod round;

use mesh::Mesh;
use report::Report;
use round::Run;

/// Asset indices are metadata times in ms after the generator's base, a
/// day back: they must stay below a day, or stores refuse the stamps.
const MAX_INDEX: u64 = 50_000_000;

/// Flags of `loadtest reset`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Daemons in the full mesh.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Assets every store holds before the first reset.
    #[arg(long, default_value_t = 20_000)]
    assets: u64,
    /// Bytes of each asset, archived or written.
    #[arg(long, default_value = "4KiB")]
    size: ByteSize,
    /// Write a burst to the other nodes while the reset node catches up
    /// (`--writes false`: the catch-up alone).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    writes: bool,
    /// Assets in each burst, spread over the nodes not reset.
    #[arg(long, default_value_t = 2000)]
    burst: u64,
    /// Resets, each of another node (in turn, from the last).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Most duplicates a round may bring, as a percentage of the assets
    /// received (newly stored) by all nodes; 100 only measures.
    #[arg(long, default_value_t = 5.0)]
    max_duplicates: f64,
    /// `--live-backlog` of every daemon (default: the daemon's own), to
    /// push the bursts through small backlogs.
    #[arg(long)]
    live_backlog: Option<u64>,
    /// Seconds each wait may take: the links to go live, a node to hold
    /// every asset, the counters to stand still.
    #[arg(long, default_value_t = 180)]
    timeout_secs: u64,
    /// Seed of the assets.
    #[arg(long, default_value_t = 20)]
    seed: u64,
    /// The can-sync binary (default: `can-sync` beside this binary).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Write the result as one JSON object to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the scratch folder (process logs, the nodes' data).
    #[arg(long)]
    keep: bool,
}

impl Args {
    fn check(&self) -> Result<()> {
        ensure!(
            (2..=16).contains(&self.nodes),
            "--nodes must be from 2 to 16"
        );
        ensure!(self.assets > 0, "--assets must be above 0");
        ensure!(self.size.0 > 0, "--size must be above 0");
        ensure!(self.rounds > 0, "--rounds must be above 0");
        ensure!(
            self.assets + u64::from(self.rounds) * self.burst <= MAX_INDEX,
            "--assets and --rounds × --burst must add up to at most {MAX_INDEX}"
        );
        ensure!(
            self.max_duplicates >= 0.0,
            "--max-duplicates must be at least 0"
        );
        ensure!(
            self.timeout_secs >= 10,
            "--timeout-secs must be at least 10"
        );
        Ok(())
    }

    fn config(&self) -> Config {
        Config {
            nodes: self.nodes,
            assets: self.assets,
            size: self.size.0,
            writes: self.writes,
            burst: if self.writes { self.burst } else { 0 },
            rounds: self.rounds,
            max_duplicates: self.max_duplicates,
            live_backlog: self.live_backlog,
            seed: self.seed,
        }
    }
}

/// The flags as the report shows them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Config {
    pub(crate) nodes: usize,
    pub(crate) assets: u64,
    pub(crate) size: u64,
    pub(crate) writes: bool,
    pub(crate) burst: u64,
    pub(crate) rounds: u32,
    pub(crate) max_duplicates: f64,
    pub(crate) live_backlog: Option<u64>,
    pub(crate) seed: u64,
}

/// Runs the resets and prints their report; true when it passed.
pub(crate) async fn run(args: Args) -> Result<bool> {
    args.check()?;
    let bin = crate::can_sync_bin(args.bin.clone())?;
    let mut scratch = tempfile::Builder::new()
        .prefix("can-sync-reset-")
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
        daemon_args: args
            .live_backlog
            .map(|n| vec!["--live-backlog".to_string(), n.to_string()])
            .unwrap_or_default(),
    };
    let config = args.config();
    println!("{}", report::headline(&config));

    let mut mesh = Mesh::prepare(&launcher, args.nodes).await?;
    let gen = Gen::new("reset", args.seed);
    progress.say(&format!(
        "putting the archive ({} assets) in every store",
        args.assets
    ));
    let plans = data::alternating(0, args.assets, args.size.0);
    let expected = data::into_stores(&mesh.stores(), &gen, &plans).await?;
    progress.say("starting the mesh");
    mesh.start_all().await?;
    let mut run = Run {
        mesh,
        gen,
        http: agents::status_client()?,
        progress,
        expected,
        next_index: args.assets,
        size: args.size.0,
        burst: config.burst,
        timeout: Duration::from_secs(args.timeout_secs),
        problems: Vec::new(),
    };

    let mut rounds = Vec::new();
    let nodes = run.mesh.len();
    for number in 1..=args.rounds {
        let reset = nodes - 1 - (number as usize - 1) % nodes;
        match round::reset_once(&mut run, number, reset).await {
            Ok(round) => rounds.push(round),
            Err(err) => {
                run.problems.push(format!("round {number}: {err:#}"));
                break;
            }
        }
    }
    let mut problems = run.problems;
    problems.extend(run.mesh.stop_all().await);

    let report = Report::new(config, rounds, problems);
    run.progress.clear();
    print!("{}", report::describe(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.ok)
}
