//! `loadtest sources` (issue 21, several sources): one large asset taken
//! from one source, then from two at once, each source behind its own
//! shaped path, so that what the split of a large asset (leases of runs of
//! groups, HELLO feature `split`) gains is measured from outside.
//!
//! Two daemons A and B run on embedded stores (which keep outboards, what
//! the split needs), each filled with the same generated asset by
//! `can-sync add` before it starts. Each is reached only through its own
//! [impairment proxy](crate::impair) (by default 20 MB/s, 10 ms RTT, no
//! loss): the seed is handed each daemon's ticket with the proxy's address
//! in place of the daemon's ([`crate::impair::via`]). The daemons listen
//! on IPv6 loopback and the proxies on IPv4 loopback, as in `loadtest wan`;
//! `seed` binds both families, so a run also checks that the proxies
//! carried the payload (a direct path around them would show as a proxy
//! that carried less than its share) and says so if not.
//!
//! Then, RUNS times, alternating: an empty `--store` seeded from A, then
//! from A and B (`seed --from A --from B`). Each run reports the seed's own
//! `secs`, its peak RSS (`VmHWM`), the UDP payload each proxy delivered
//! towards the seed (what each source sent: `seed --json` prints only the
//! sum of its sessions), `fsck` of the seeded store, and the load average
//! when it started.
//!
//! With `--old-bin`, a regression check of the same asset over plain
//! loopback, one source, no proxy: a daemon of the old build on a store
//! the old build filled, seeded by the old build, against daemon A seeded
//! by this build, alternating, `--loopback-runs` times each.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use crate::agents::{node_store, Launcher, Node};
use crate::impair::{self, Counts, Impairment, Proxy};
use crate::procs::Proc;
use crate::progress::Progress;

/// How long one seed may take.
const SEED_TIMEOUT: Duration = Duration::from_secs(900);

/// `loadtest sources`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Size of the one asset, MiB (random bytes).
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Each source's path: rate cap in MB/s (10^6 bytes), each way.
    #[arg(long, default_value_t = 20.0)]
    rate_mb: f64,
    /// Each source's path: round-trip time added, ms (half each way).
    #[arg(long, default_value_t = 10.0)]
    rtt_ms: f64,
    /// Each source's bottleneck queue, in ms at the rate.
    #[arg(long, default_value_t = 50.0)]
    queue_ms: f64,
    /// Pairs of (one source, two sources) seeds.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// An older can-sync build: with it, the loopback regression check.
    #[arg(long)]
    old_bin: Option<PathBuf>,
    /// Pairs of (old, this build) single-source loopback seeds.
    #[arg(long, default_value_t = 3)]
    loopback_runs: u32,
    /// Before each seed, wait up to this long for the 1-minute load
    /// average to fall under `--calm-load` (other work on the machine).
    #[arg(long, default_value_t = 60)]
    calm_wait_secs: u64,
    /// The load average a seed waits for (see `--calm-wait-secs`).
    #[arg(long, default_value_t = 2.0)]
    calm_load: f64,
    /// Seed of every random decision of the proxies and of the asset.
    #[arg(long, default_value_t = 20_261_206)]
    seed: u64,
    /// The can-sync binary (default: `can-sync` beside this binary).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Where the scratch folder goes (default: the system's temp folder).
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Keep the scratch folder (process logs, stores).
    #[arg(long)]
    keep: bool,
}

/// The fields of `seed --json` used here.
#[derive(Debug, Deserialize)]
struct SeedJson {
    assets_received: u64,
    bytes: u64,
    secs: f64,
}

/// One finished seed.
struct Seeded {
    secs: f64,
    bytes: u64,
    assets: u64,
    peak_rss: u64,
    /// UDP payload each proxy delivered towards the seed during it.
    per_source: Vec<u64>,
    /// The 1-minute load average when it started.
    load: f64,
    /// `fsck` of the seeded store passed.
    whole: bool,
}

pub(crate) async fn run(args: Args) -> Result<bool> {
    ensure!(
        args.size_mib > 0 && args.runs > 0,
        "--size-mib and --runs must be > 0"
    );
    ensure!(
        args.rate_mb.is_finite() && args.rate_mb >= 0.0 && args.rtt_ms >= 0.0,
        "--rate-mb and --rtt-ms must be ≥ 0"
    );
    let bin = crate::can_sync_bin(args.bin.clone())?;
    let mut builder = tempfile::Builder::new();
    builder.prefix("can-sync-sources-");
    let mut scratch = match &args.scratch {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
    .context("creating a scratch folder")?;
    if args.keep {
        scratch.disable_cleanup(true);
    }
    let dir = scratch.path().to_path_buf();
    println!(
        "sources: one asset of {} MiB; each source behind its own path of {} MB/s, RTT {} ms, queue {} ms, no loss; {} runs; scratch {}",
        args.size_mib,
        args.rate_mb,
        args.rtt_ms,
        args.queue_ms,
        args.runs,
        dir.display()
    );
    let progress = Progress::start();
    let launcher = Launcher {
        bin: bin.clone(),
        dir: dir.clone(),
        progress: progress.clone(),
        daemon_args: vec!["--open".into(), "read".into()],
    };

    progress.phase("writing the asset");
    let file = dir.join("asset.bin");
    write_random(&file, args.size_mib << 20, args.seed)?;
    let size = args.size_mib << 20;
    progress.phase("filling and starting the sources");
    let a = source(&launcher, "a", &file).await?;
    let b = source(&launcher, "b", &file).await?;
    let old = match &args.old_bin {
        Some(old_bin) => {
            let old_launcher = Launcher {
                bin: old_bin.clone(),
                ..launcher.clone()
            };
            Some(source(&old_launcher, "old", &file).await?)
        }
        None => None,
    };
    std::fs::remove_file(&file).ok();

    let impairment = Impairment {
        delay: Duration::from_secs_f64(args.rtt_ms / 2e3),
        rate_bps: (args.rate_mb > 0.0).then_some((args.rate_mb * 8e6) as u64),
        queue: Duration::from_secs_f64(args.queue_ms / 1e3),
        ..Impairment::default()
    };
    let mut proxies = Vec::new();
    let mut proxied = Vec::new();
    for (i, node) in [&a, &b].into_iter().enumerate() {
        let proxy = Proxy::start(
            impair::upstream_of(&node.daemon.ticket)?,
            impairment.clone(),
            impairment.clone(),
            args.seed.wrapping_add(i as u64),
        )
        .await?;
        proxied.push(impair::via(&node.daemon.ticket, proxy.addr())?);
        proxies.push(proxy);
    }
    progress.clear();

    let mut problems = Vec::new();
    let mut ones = Vec::new();
    let mut twos = Vec::new();
    for run in 1..=args.runs {
        for n in [1, 2] {
            progress.phase(&format!("run {run}/{}: {n} source(s)", args.runs));
            let seeded = seed(
                &launcher,
                &progress,
                &args,
                &bin,
                &format!("seed-{n}-{run}"),
                &proxied[..n],
                &proxies,
            )
            .await?;
            progress.clear();
            println!(
                "run {run}: {n} source(s): {}",
                describe(&seeded, args.rate_mb)
            );
            check(
                &seeded,
                size,
                n,
                &mut problems,
                &format!("run {run}, {n} source(s)"),
            );
            if n == 1 { &mut ones } else { &mut twos }.push(seeded);
        }
    }

    let mut loopback = (Vec::new(), Vec::new());
    if let (Some(old_bin), Some(old)) = (&args.old_bin, &old) {
        for run in 1..=args.loopback_runs {
            for (which, bin, ticket) in [
                ("old", old_bin, &old.daemon.ticket),
                ("new", &bin, &a.daemon.ticket),
            ] {
                progress.phase(&format!(
                    "loopback {run}/{}: {which} build",
                    args.loopback_runs
                ));
                let seeded = seed(
                    &launcher,
                    &progress,
                    &args,
                    bin,
                    &format!("loopback-{which}-{run}"),
                    std::slice::from_ref(ticket),
                    &[],
                )
                .await?;
                progress.clear();
                println!(
                    "loopback run {run}: {which} build, one source: {}",
                    describe(&seeded, 0.0)
                );
                check(
                    &seeded,
                    size,
                    0,
                    &mut problems,
                    &format!("loopback {which} run {run}"),
                );
                if which == "old" {
                    &mut loopback.0
                } else {
                    &mut loopback.1
                }
                .push(seeded);
            }
        }
    }

    for proxy in &mut proxies {
        proxy.stop();
    }
    for node in [Some(a), Some(b), old].into_iter().flatten() {
        if let Err(err) = node.daemon.stop().await {
            problems.push(format!("{err:#}"));
        }
    }
    progress.clear();

    let one = median(ones.iter().map(|s| s.secs));
    let two = median(twos.iter().map(|s| s.secs));
    println!(
        "median over {} runs: one source {one:.2} s, two sources {two:.2} s: two are {:.2}x faster (target ≥ 1.8); peak RSS of the seed: one {:.0} MB, two {:.0} MB",
        args.runs,
        one / two,
        median(ones.iter().map(|s| s.peak_rss as f64)) / 1e6,
        median(twos.iter().map(|s| s.peak_rss as f64)) / 1e6,
    );
    if !loopback.0.is_empty() {
        let old = median(loopback.0.iter().map(|s| s.secs));
        let new = median(loopback.1.iter().map(|s| s.secs));
        println!(
            "loopback, one source, median over {} runs: old build {old:.2} s ({:.0} MB/s), this build {new:.2} s ({:.0} MB/s): this build takes {:.2}x the old's time; peak RSS old {:.0} MB, new {:.0} MB",
            args.loopback_runs,
            size as f64 / 1e6 / old,
            size as f64 / 1e6 / new,
            new / old,
            median(loopback.0.iter().map(|s| s.peak_rss as f64)) / 1e6,
            median(loopback.1.iter().map(|s| s.peak_rss as f64)) / 1e6,
        );
    }
    for problem in &problems {
        println!("PROBLEM: {problem}");
    }
    Ok(problems.is_empty())
}

/// Fills a node's store with `file` (`can-sync add`) and starts its daemon
/// on IPv6 loopback, admitting every reader.
async fn source(launcher: &Launcher, name: &str, file: &Path) -> Result<Node> {
    let data_dir = launcher.dir.join(name);
    std::fs::create_dir_all(&data_dir)?;
    let store = node_store(&data_dir);
    let mut add = Proc::spawn(
        &format!("add-{name}"),
        &launcher.bin,
        &[
            "add".into(),
            "--store".into(),
            path_str(&store)?.into(),
            path_str(file)?.into(),
        ],
        &launcher.dir.join(format!("add-{name}.log")),
    )?;
    let exit = add.wait(Duration::from_secs(600)).await?;
    if !exit.success() {
        bail!(
            "add to {name} exited with {:?}{}",
            exit.code,
            add.log_tail()
        );
    }
    launcher.node_on(name, &data_dir, "[::1]:0", &[], &[]).await
}

/// Waits (at most `--calm-wait-secs`) for the load to fall, then seeds an
/// empty store from `tickets` with `bin`, checks it with `fsck` and
/// deletes it.
async fn seed(
    launcher: &Launcher,
    progress: &Progress,
    args: &Args,
    bin: &Path,
    name: &str,
    tickets: &[String],
    proxies: &[Proxy],
) -> Result<Seeded> {
    let calm_until = Instant::now() + Duration::from_secs(args.calm_wait_secs);
    let mut load = load_average()?;
    while load >= args.calm_load && Instant::now() < calm_until {
        // The load average has no push channel.
        tokio::time::sleep(Duration::from_secs(2)).await;
        load = load_average()?;
    }
    let store = launcher.dir.join(name);
    let mut seed_args = vec![
        "seed".to_string(),
        "--store".into(),
        path_str(&store)?.into(),
        "--json".into(),
        "--no-relay".into(),
        // IPv4 loopback only: the daemons listen on ::1, so the seed can
        // reach them through the proxies alone (bound to every address, it
        // learned their direct ::1 paths and went around them).
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    for ticket in tickets {
        seed_args.extend(["--from".to_string(), ticket.clone()]);
    }
    let before: Vec<Counts> = proxies.iter().map(Proxy::down).collect();
    let started = Instant::now();
    let log = launcher.dir.join(format!("{name}.log"));
    let mut proc = Proc::spawn(name, bin, &seed_args, &log)?;
    progress.track(&proc);
    let line = proc.first_line(SEED_TIMEOUT).await;
    let left = SEED_TIMEOUT.saturating_sub(started.elapsed());
    let exit = proc.wait(left.max(Duration::from_secs(5))).await?;
    let line = line.with_context(|| format!("{name} printed nothing{}", proc.log_tail()))?;
    if !exit.success() {
        bail!("{name} exited with {:?}{}", exit.code, proc.log_tail());
    }
    let report: SeedJson = serde_json::from_str(&line)
        .with_context(|| format!("{name} printed {line:?}, not its JSON report"))?;
    let per_source = proxies
        .iter()
        .zip(&before)
        .take(tickets.len())
        .map(|(p, b)| p.down().delivered_bytes - b.delivered_bytes)
        .collect();
    let mut fsck = Proc::spawn(
        &format!("fsck-{name}"),
        bin,
        &["fsck".into(), "--store".into(), path_str(&store)?.into()],
        &launcher.dir.join(format!("fsck-{name}.log")),
    )?;
    let whole = fsck.wait(Duration::from_secs(600)).await?.success();
    std::fs::remove_dir_all(&store).ok();
    Ok(Seeded {
        secs: report.secs,
        bytes: report.bytes,
        assets: report.assets_received,
        peak_rss: exit.usage.peak_rss,
        per_source,
        load,
        whole,
    })
}

/// Adds what is wrong with `s` to `problems`: not the whole asset, or
/// (through `sources` proxies) a proxy that carried less than the payload
/// it was due, which means a path around it.
fn check(s: &Seeded, size: u64, sources: usize, problems: &mut Vec<String>, what: &str) {
    if s.assets != 1 || s.bytes != size || !s.whole {
        problems.push(format!(
            "{what}: {} assets, {} payload bytes of {size}, fsck {}",
            s.assets,
            s.bytes,
            if s.whole { "clean" } else { "FAILED" }
        ));
    }
    if sources > 0 {
        let carried: u64 = s.per_source.iter().sum();
        if carried < size {
            problems.push(format!(
                "{what}: the proxies carried {carried} bytes, less than the asset's {size}: a path around them"
            ));
        }
    }
}

fn describe(s: &Seeded, rate_mb: f64) -> String {
    let mut line = format!(
        "{:.2} s, {:.1} MB/s, {} asset(s) of {:.1} MB, fsck {}; seed peak RSS {:.0} MB; load {:.2}",
        s.secs,
        s.bytes as f64 / 1e6 / s.secs,
        s.assets,
        s.bytes as f64 / 1e6,
        if s.whole { "clean" } else { "FAILED" },
        s.peak_rss as f64 / 1e6,
        s.load
    );
    if !s.per_source.is_empty() {
        let total: u64 = s.per_source.iter().sum();
        let each: Vec<String> = s
            .per_source
            .iter()
            .zip(["A", "B"])
            .map(|(b, n)| {
                format!(
                    "{n} {:.1} MB ({:.1}%)",
                    *b as f64 / 1e6,
                    *b as f64 * 100.0 / total as f64
                )
            })
            .collect();
        line += &format!(
            "; delivered by the proxies (UDP payload): {}, sum {:.1} MB ({:.2}x the asset)",
            each.join(", "),
            total as f64 / 1e6,
            total as f64 / s.bytes.max(1) as f64
        );
        if rate_mb > 0.0 {
            line += &format!(
                "; {:.0}% of the shaped rate of {} source(s)",
                s.bytes as f64 / 1e6 / s.secs / (rate_mb * s.per_source.len() as f64) * 100.0,
                s.per_source.len()
            );
        }
    }
    line
}

/// `size` bytes from a SplitMix64 stream seeded with `seed` (incompressible).
fn write_random(path: &Path, size: u64, seed: u64) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut state = seed;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

/// The 1-minute load average.
fn load_average() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .context("parsing /proc/loadavg")
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
