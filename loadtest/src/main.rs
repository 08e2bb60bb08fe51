//! `loadtest`: every performance claim of can-sync, measured one way, from
//! outside, on what users run (issue #3).
//!
//! It starts real `can-sync` processes on 127.0.0.1 — `serve-can --memory`
//! CAN servers and `daemon`/`seed` agents — loads data through the CAN HTTP
//! API, lets the agents sync, and measures wall time, assets/s, payload MB/s,
//! wire bytes (the agents' own count), each agent's peak RSS and CPU seconds
//! (from `/proc` and its rusage) and, live, each asset's propagation latency.
//! Every run ends with a convergence check; a run that did not converge is
//! reported `ok: false`.
//!
//! # Layout
//!
//! - [`config`]: scenarios, presets (`--quick`, `--smoke`) and size knobs.
//! - [`procs`]: child processes, `/proc` sampling, exact reaping.
//! - [`agents`]: the `can-sync` commands a run starts.
//! - [`data`]: generated assets and loading them into a CAN.
//! - [`retry`]: retries of the harness's own CAN requests.
//! - [`scenarios`]: what each scenario runs and measures.
//! - [`raw`]: the raw-QUIC ceiling, and the hidden `raw-server`/`raw-client`.
//! - [`verify`]: the convergence check.
//! - [`report`]: records, the table, JSON lines, ratios; [`svg`]: the chart.
//! - [`progress`]: the progress line.
//! - [`vs_rsync`]: `loadtest vs-rsync`, durable file transfer against rsync
//!   and the disk.
//! - [`impair`]: the seeded UDP impairment proxy (delay, loss, rate cap,
//!   blackholes); [`wan`]: `loadtest wan` and `loadtest outage` through it.
//! - [`soak`]: `loadtest soak`, peers reconnecting to one daemon for
//!   minutes; its memory, descriptors and tasks must stay flat.
//! - [`reset`]: `loadtest reset`, a node's store deleted under live links
//!   in a mesh; the duplicates its catch-up costs, from `/metrics`.
//! - [`sources`]: `loadtest sources`, one large asset from one source and
//!   from two, each behind its own impairment proxy.
//! - [`settle`]: waiting for daemons' links and stores' counts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

mod agents;
mod config;
mod data;
mod impair;
mod procs;
mod progress;
mod raw;
mod report;
mod reset;
mod retry;
mod scale;
mod scale_disk;
mod scenarios;
mod settle;
mod soak;
mod sources;
mod svg;
mod verify;
mod vs_rsync;
mod wan;

use config::{Knobs, Preset, Scenario, Sizes};
use progress::Progress;
use report::Record;
use scenarios::Ctx;

/// Load-test can-sync: real agents and CAN servers on loopback, measured from outside.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Hidden>,
    #[command(flatten)]
    run: RunArgs,
}

/// Helpers the harness runs as child processes, and the in-process scale run.
#[derive(Subcommand)]
enum Hidden {
    /// Reconciliation at archive scale, in this process: two memory stores of
    /// N shared tiny assets, coded v2 against full-list v2 and v1.
    Scale {
        /// Assets both stores hold.
        #[arg(long, default_value_t = 100_000)]
        assets: u64,
        /// Assets only on each side, per scheme.
        #[arg(long, default_value_t = 500)]
        only: u64,
        /// Metadata edits on one side, per scheme.
        #[arg(long, default_value_t = 100)]
        edits: u64,
        /// Instead: seed `assets` tiny assets into an empty store in one
        /// session (the first contact of a new node).
        #[arg(long)]
        seed_empty: bool,
        /// Instead: two durable stores in this folder (on a real disk) and
        /// a daemon and a seed process between them, each side's peak RSS
        /// measured.
        #[arg(long)]
        on_disk: Option<PathBuf>,
        /// With --on-disk: only fill store A (`assets` + `only` tiny
        /// assets), printing the rate of each million, and stop: the
        /// harness's loader alone (issue 22).
        #[arg(long, requires = "on_disk")]
        load_only: bool,
        /// With --load-only: assets per batch, fixed (by default batches
        /// grow with the store, as a bulk loader's do), to compare.
        #[arg(long, requires = "load_only")]
        load_batch: Option<u64>,
        /// With --load-only: the store's database cache in MiB (by default
        /// a bulk load's), to compare.
        #[arg(long, requires = "load_only")]
        load_cache_mib: Option<usize>,
        /// With --load-only: push the assets in the order of their indexes,
        /// random in the key space, instead of by hash as `can-sync add`
        /// adds small files, to compare.
        #[arg(long, requires = "load_only")]
        load_in_index_order: bool,
        /// With --on-disk: the protocol the seed speaks.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
        protocol: u8,
        /// With --on-disk: the can-sync binary (default: beside this one).
        #[arg(long)]
        bin: Option<PathBuf>,
    },
    /// Durable file transfer as users compare it (issue #11): N small files
    /// and one large file by rsync (plain, --fsync), by can-sync between two
    /// on-disk stores, and the disk's own fsync and dd conv=fsync rates.
    VsRsync(vs_rsync::Args),
    /// can-sync over a shaped path (issue 12): through a seeded UDP
    /// impairment proxy, by default 50 ms RTT, 100 Mbit/s, 0.5% loss; large
    /// MB/s against the shaped rate, small assets/s, live latency.
    Wan(wan::throughput::Args),
    /// A blackhole mid-transfer (issue 12): by default 20 s, through the
    /// impairment proxy; the transfer must complete with nothing lost and
    /// nothing sent twice beyond what was in flight.
    Outage(wan::outage::Args),
    /// Peers reconnecting for minutes (issue 20): by default 16 peer
    /// daemons restarted every 2–5 s against one daemon, writes on every
    /// side; its RSS, open descriptors and tasks must stay flat and every
    /// asset must end up on every node.
    Soak(soak::Args),
    /// A store reset under live links (issue 20): by default 3 daemons in
    /// a full mesh holding 20,000 assets of 4 KiB; one is stopped, its
    /// store deleted, and started again while 2,000 new assets are written
    /// to the others. Reports the duplicates every node received (from
    /// `/metrics`) against what it stored, and the catch-up time; fails
    /// above `--max-duplicates` percent or when a node lacks an asset.
    Reset(reset::Args),
    /// One large asset from one source, then from two at once (issue 21,
    /// several sources): two daemons on embedded stores, each behind its
    /// own shaped path (by default 20 MB/s, 10 ms RTT); seconds, what each
    /// source sent, the seed's peak RSS. With --old-bin, also one source
    /// over plain loopback, this build against an older one.
    Sources(sources::Args),
    /// Raw-QUIC sink: accept one connection, read every stream, answer the total.
    #[command(hide = true)]
    RawServer,
    /// Raw-QUIC source: push bytes over uni-streams to a raw-server.
    #[command(hide = true)]
    RawClient {
        /// The raw-server's ticket.
        #[arg(long)]
        ticket: String,
        /// Payload bytes in all.
        #[arg(long)]
        bytes: u64,
        /// Uni-streams to spread them over.
        #[arg(long)]
        streams: u32,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Sizes that run every scenario in under five minutes on two cores.
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// Tiny sizes for CI: seconds, convergence only.
    #[arg(long)]
    smoke: bool,
    /// Protocols to compare, e.g. `1,2`: each scenario runs with each, runs
    /// alternating, and the ratios are printed.
    #[arg(long, value_delimiter = ',', default_value = "1,2",
          value_parser = clap::value_parser!(u8).range(1..=2))]
    protocol: Vec<u8>,
    /// Scenarios to run (default: all): small, large, text, mixed, live, mesh, faulty, raw.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Runs of each (scenario, protocol).
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Append one JSON object per (scenario, protocol, run) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw throughput per scenario and protocol as an SVG bar chart.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// The can-sync binary (default: `can-sync` beside this binary).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep each run's scratch folder (process logs, daemon data) for a post-mortem.
    #[arg(long)]
    keep: bool,
    #[command(flatten)]
    knobs: Knobs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Hidden::RawServer) => raw::server().await.map(|()| true),
        Some(Hidden::RawClient {
            ticket,
            bytes,
            streams,
        }) => raw::client(&ticket, bytes, streams).await.map(|()| true),
        Some(Hidden::Scale {
            assets,
            only,
            edits,
            seed_empty,
            on_disk,
            load_only,
            load_batch,
            load_cache_mib,
            load_in_index_order,
            protocol,
            bin,
        }) => {
            if let (Some(dir), true) = (&on_disk, load_only) {
                let load = scale_disk::Load::new(load_cache_mib, load_batch, !load_in_index_order);
                scale_disk::load_only(dir, assets, only, load)
                    .await
                    .map(|()| true)
            } else if let Some(dir) = on_disk {
                match bin.map_or_else(|| beside_me("can-sync"), Ok) {
                    Ok(bin) => scale_disk::run(&dir, &bin, assets, only, edits, protocol)
                        .await
                        .map(|()| true),
                    Err(err) => Err(err),
                }
            } else if seed_empty {
                scale::seed(assets).await.map(|_| true)
            } else {
                scale::run(assets, only, edits).await.map(|_| true)
            }
        }
        Some(Hidden::VsRsync(args)) => vs_rsync::run(args).await,
        Some(Hidden::Wan(args)) => wan::throughput::run(args).await,
        Some(Hidden::Outage(args)) => wan::outage::run(args).await,
        Some(Hidden::Soak(args)) => soak::run(args).await,
        Some(Hidden::Reset(args)) => reset::run(args).await,
        Some(Hidden::Sources(args)) => sources::run(args).await,
        None => run(cli.run).await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("loadtest: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every asked scenario; true when every run converged.
async fn run(args: RunArgs) -> Result<bool> {
    let preset = match (args.quick, args.smoke) {
        (_, true) => Preset::Smoke,
        (true, _) => Preset::Quick,
        _ => Preset::Full,
    };
    let sizes = Sizes::resolve(preset, &args.knobs)?;
    let bin = match args.bin {
        Some(bin) => bin,
        None => {
            let bin = beside_me("can-sync")?;
            build_when_run_by_cargo(&bin)?;
            bin
        }
    };
    if !bin.is_file() {
        bail!(
            "no can-sync binary at {}: build it (`cargo build --release -p can-sync`) or pass --bin",
            bin.display()
        );
    }
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios
    };
    let mut protocols = args.protocol;
    protocols.dedup();
    if let Some(path) = &args.json {
        // One file per invocation: a stale file would mix old runs into the new.
        std::fs::write(path, "").with_context(|| format!("creating {}", path.display()))?;
    }

    let progress = Progress::start();
    let ctx = Ctx {
        bin,
        sizes,
        progress: progress.clone(),
        seed: args.seed,
        keep: args.keep,
    };
    progress.say(&format!(
        "loadtest: {} with {} ({:?} sizes, {} run(s) each)",
        names(&scenarios),
        ctx.bin.display(),
        preset,
        args.runs
    ));

    let mut records: Vec<Record> = Vec::new();
    for &scenario in &scenarios {
        for run in 1..=args.runs {
            for protocol in scenarios::protocols_of(scenario, &protocols) {
                let label = if protocol == report::RAW_PROTOCOL {
                    format!("{scenario} run {run}/{}", args.runs)
                } else {
                    format!("{scenario} v{protocol} run {run}/{}", args.runs)
                };
                progress.run(label.clone());
                for record in scenarios::run(&ctx, scenario, protocol, run).await {
                    progress.clear();
                    progress.say(&one_line(&label, &record));
                    report::append_json(args.json.as_deref(), &record)?;
                    records.push(record);
                }
            }
        }
    }
    progress.clear();

    print!("{}", report::table(&records));
    print!("{}", report::ratios(&records, &protocols));
    if let Some(path) = &args.svg {
        let subtitle = format!(
            "{} cores, {:?} sizes, medians of {} run(s); bars are asset payload per second of wall time",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            preset,
            args.runs
        );
        std::fs::write(path, svg::chart(&records, &subtitle))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let failed = records.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        eprintln!(
            "loadtest: {failed} of {} runs did not converge or failed",
            records.len()
        );
    }
    Ok(failed == 0)
}

/// Under `cargo run -p loadtest`, builds the `can-sync` binary the harness
/// drives (same profile as the harness), so the measured agent is never
/// missing or older than the source. Run directly, the harness uses what is
/// there.
fn build_when_run_by_cargo(bin: &Path) -> Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let release = bin
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|dir| dir == "release");
    let mut build = std::process::Command::new(cargo);
    build.args(["build", "--quiet", "-p", "can-sync", "--bin", "can-sync"]);
    if release {
        build.arg("--release");
    }
    let status = build.status().context("running cargo to build can-sync")?;
    if !status.success() {
        bail!("building can-sync failed ({status})");
    }
    Ok(())
}

/// The can-sync binary: `--bin`, else the one beside this binary (built
/// first when run by cargo).
pub(crate) fn can_sync_bin(bin: Option<PathBuf>) -> Result<PathBuf> {
    let bin = match bin {
        Some(bin) => bin,
        None => {
            let bin = beside_me("can-sync")?;
            build_when_run_by_cargo(&bin)?;
            bin
        }
    };
    anyhow::ensure!(
        bin.is_file(),
        "no can-sync binary at {}: build it (`cargo build --release -p can-sync`) or pass --bin",
        bin.display()
    );
    Ok(bin)
}

/// A file beside this executable (where cargo puts the workspace's binaries).
fn beside_me(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the loadtest binary")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    Ok(dir.join(name))
}

fn names(scenarios: &[Scenario]) -> String {
    scenarios
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one-line summary of a finished run.
fn one_line(label: &str, r: &Record) -> String {
    let streams = r.streams.map_or(String::new(), |n| format!(" ×{n}"));
    if r.ok {
        let mut line = format!(
            "{label}{streams}: {} assets, {:.1} MB in {:.2} s: {:.1} MB/s, {:.0} assets/s; peak RSS {:.0} MB, {:.1} CPU s",
            r.assets,
            r.bytes as f64 / 1e6,
            r.secs,
            r.mb_per_s,
            r.assets_per_s,
            r.peak_rss_mb,
            r.cpu_s
        );
        if let (Some(p50), Some(p99)) = (r.p50_ms, r.p99_ms) {
            line.push_str(&format!("; latency p50 {p50:.0} ms, p99 {p99:.0} ms"));
        }
        line
    } else {
        format!(
            "{label}{streams}: FAILED: {}",
            r.error.as_deref().unwrap_or("did not converge")
        )
    }
}
