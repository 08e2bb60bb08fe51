//! Full lists from 63 connections against a store of a million assets, while
//! an allowed peer syncs (issue 19's hostile-load measurement).
//!
//! Whole-store work (a v1 listing, the whole list for a v2 peer that does
//! not page its lists) must run under one node-wide budget, never
//! multiplied by the connection slots: the daemon's `WholeStoreBudget`
//! (`src/session/driver/mod.rs`) lets listings hold at most a million
//! summaries at once, node-wide. This measures what that buys against the
//! cheapest attack on it: a `can-sync daemon --open write` on a durable store
//! of [`DEFAULT_ASSETS`] tiny assets (`FULL_LISTS_ASSETS` to change) takes
//! 63 connections, each its own key, from 127.0.0.2 to 127.0.0.9, that each
//! send a v2 `HELLO` with no features (so neither coded nor paged
//! reconciliation: the daemon must send its whole list) and a `RECON` with
//! an empty list (`done`), then read the daemon's `HELLO` and its whole
//! `RECON` as fast as they can (into a small buffer, discarded), and hold
//! the connection until the daemon closes it; then they attack again, until
//! the good peer is done. Meanwhile the good peer, `can-sync seed` with its
//! own store (a copy of the daemon's plus [`DEFAULT_GOOD_ASSETS`] new assets
//! of 64 KiB, `FULL_LISTS_GOOD_ASSETS` to change), syncs with the daemon
//! (coded reconciliation: the difference is its new assets).
//!
//! One daemon serves [`PAIRS`] pairs of runs, without and with the attack,
//! alternately. Its idle resident set is taken once it has printed its
//! ticket and settled (no CPU, a steady resident set); each run resets its
//! peak (`VmHWM`, via `clear_refs`) first, then reports the peak, the peak
//! beyond idle, the good peer's MB/s (its own `--json` figures) and what the
//! attackers got. After each run the test waits for the daemon to settle
//! again: sessions the attack left waiting for the budget may still run.
//!
//! A measurement, not a test of limits: it asserts only that every asset of
//! the good peer arrives and that the daemon is alive at the end.
//!
//! ```text
//! cargo build --release
//! CAN_SYNC_BIN=target/release/can-sync FULL_LISTS_ASSETS=1000000 \
//!     cargo test --release --test full_lists -- --ignored --nocapture
//! ```

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::BytesMut;
use can_sync::can::{Can, EmbeddedCan, HttpCan, StoreLimits};
use can_sync::node::Ticket;
use can_sync::pb;
use can_sync::recon::compact;
use can_sync::session::ALPN_V2;
use can_sync::wire::{encode_frame, FrameType};
use common::process::{cpu_secs, measured_bin, reset_peak_rss, start_program, vm_bytes};
use common::{await_armed, bundle, read_frame, TIMEOUT};
use iroh::endpoint::{presets, Connection, ConnectionError, RecvStream};
use iroh::{Endpoint, EndpointAddr};
use prost::Message;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Attacking connections: every slot of the daemon's 64 but the good peer's.
const ATTACKERS: usize = 63;

/// Tiny assets in the daemon's store unless `FULL_LISTS_ASSETS` says.
const DEFAULT_ASSETS: u64 = 1_000_000;

/// The good peer's new assets per run unless `FULL_LISTS_GOOD_ASSETS` says:
/// 98 MB, so the transfer, not the session's start, dominates its time.
const DEFAULT_GOOD_ASSETS: u64 = 1_500;

/// Bytes of each of the good peer's assets.
const GOOD_ASSET_LEN: usize = 64 * 1024;

/// Bytes of each tiny asset of the daemon's store.
const TINY_LEN: usize = 64;

/// Assets per store commit while filling.
const LOAD_BATCH: u64 = 8_192;

/// Pairs of runs, without and with the attack.
const PAIRS: usize = 2;

/// The daemon opens its store before it prints its ticket.
const STARTUP: Duration = Duration::from_secs(600);

/// How often the daemon is sampled while waiting for it to settle, and how
/// many samples in a row must be quiet.
const SETTLE_SAMPLE: Duration = Duration::from_millis(250);
const QUIET_SAMPLES: usize = 8;

/// CPU seconds the daemon may use over [`QUIET_SAMPLES`] samples and still
/// count as settled (a tick or two of timers).
const QUIET_CPU_SECS: f64 = 0.03;

/// The longest the daemon may take to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(900);

/// The longest one run may take, attack included.
const RUN_LIMIT: Duration = Duration::from_secs(900);

/// Number of the good peer's first asset in run `run`: every run moves new
/// ones, since the daemon keeps what the runs before moved.
fn good_asset_base(run: usize) -> u64 {
    10_000_000_000 + run as u64 * 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: full lists from 63 connections against a large store"]
async fn full_lists_from_63_connections_against_a_large_store() -> Result<()> {
    let assets = env_u64("FULL_LISTS_ASSETS", DEFAULT_ASSETS)?;
    let good_assets = env_u64("FULL_LISTS_GOOD_ASSETS", DEFAULT_GOOD_ASSETS)?;
    let bin = measured_bin();
    let dir = tempfile::tempdir()?;
    let (daemon_store, good_store) = (dir.path().join("daemon-store"), dir.path().join("good"));

    let started = Instant::now();
    fill_tiny(&daemon_store, assets).await?;
    copy_dir(&daemon_store, &good_store)?;
    println!(
        "binary {bin}; {assets} tiny assets loaded on disk and copied for the good peer in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut daemon = Daemon::start(&bin, &daemon_store, &dir.path().join("node")).await?;
    let idle = daemon.settle().await?;
    println!(
        "daemon idle: RSS {:.1} MiB (peak so far {:.1} MiB), settled {:.1} s after its ticket",
        mib(idle.rss),
        mib(vm_bytes(daemon.pid()?, "VmHWM")?),
        idle.waited.as_secs_f64()
    );
    println!(
        "{:<10} {:>9} {:>10} {:>10} {:>12} {:>6} {:>8} {:>6} {:>10} {:>7} {:>9} {:>8}",
        "run",
        "good MB/s",
        "good MB",
        "peak MiB",
        "beyond idle",
        "lists",
        "list MB",
        "closed",
        "connects",
        "cpu s",
        "settle s",
        "after MiB"
    );
    let mut rows = Vec::new();
    for run in 0..PAIRS * 2 {
        let attacked = run % 2 == 1;
        let base = good_asset_base(run);
        add_good_assets(&good_store, base, good_assets).await?;
        let measured =
            tokio::time::timeout(RUN_LIMIT, run_once(&bin, &daemon, &good_store, attacked))
                .await
                .context("a run hung")??;
        for i in base..base + good_assets {
            let hash = bundle(i, GOOD_ASSET_LEN, 1).hash;
            let landed = tokio::time::timeout(TIMEOUT, daemon.http.meta(hash))
                .await
                .context("asking the daemon hung")??;
            ensure!(landed.is_some(), "asset {i} of the good peer did not land");
        }
        let settled = daemon.settle().await?;
        println!(
            "{:<10} {:>9.1} {:>10.1} {:>10.1} {:>12.1} {:>6} {:>8.1} {:>6} {:>10} {:>7.2} {:>9.1} {:>8.1}",
            if attacked { "attacked" } else { "quiet" },
            measured.mb_per_s(),
            measured.bytes as f64 / 1e6,
            mib(measured.peak_rss),
            mib(measured.peak_rss.saturating_sub(idle.rss)),
            measured.attack.lists,
            measured.attack.list_bytes as f64 / 1e6,
            measured.attack.closed_by_daemon,
            measured.attack.connections,
            measured.daemon_cpu,
            settled.waited.as_secs_f64(),
            mib(settled.rss),
        );
        rows.push((attacked, measured));
    }
    ensure!(daemon.alive()?, "the daemon died");

    let rate = |attacked: bool| {
        let rates: Vec<f64> = rows
            .iter()
            .filter(|(a, _)| *a == attacked)
            .map(|(_, m)| m.mb_per_s())
            .collect();
        rates.iter().sum::<f64>() / rates.len() as f64
    };
    let peak = rows
        .iter()
        .filter(|(attacked, _)| *attacked)
        .map(|(_, m)| m.peak_rss)
        .max()
        .unwrap_or(0);
    let lists: u64 = rows.iter().map(|(_, m)| m.attack.lists).sum();
    println!(
        "summary: idle RSS {:.1} MiB; peak under attack {:.1} MiB, {:.1} MiB beyond idle; \
         good peer {:.1} MB/s quiet, {:.1} MB/s attacked (mean), ratio {:.2}; \
         {lists} whole lists answered",
        mib(idle.rss),
        mib(peak),
        mib(peak.saturating_sub(idle.rss)),
        rate(false),
        rate(true),
        rate(true) / rate(false),
    );
    Ok(())
}

/// What one run measured.
struct Measured {
    /// Payload bytes the good peer moved, and in how long (its own `--json`).
    bytes: u64,
    secs: f64,
    /// The daemon's peak resident set during the run.
    peak_rss: u64,
    /// CPU seconds the daemon used while the good peer synced.
    daemon_cpu: f64,
    attack: AttackCounts,
}

impl Measured {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs
    }
}

/// One run: the attack (when `attacked`) armed first, then the good peer's
/// sync, then the attackers stopped.
async fn run_once(
    bin: &str,
    daemon: &Daemon,
    good_store: &Path,
    attacked: bool,
) -> Result<Measured> {
    reset_peak_rss(daemon.pid()?)?;
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (armed_tx, mut armed_rx) = mpsc::channel::<()>(ATTACKERS);
    let mut attackers = JoinSet::new();
    if attacked {
        for slot in 0..ATTACKERS {
            attackers.spawn(attacker(
                slot,
                daemon.ticket.endpoint_addr(),
                tally.clone(),
                armed_tx.clone(),
                stop_rx.clone(),
            ));
        }
        // The good peer starts once every attacker has asked for the whole
        // list; an attacker that fails says why at once.
        await_armed(&mut armed_rx, &mut attackers, ATTACKERS).await?;
    }
    drop(armed_tx);

    let cpu_before = cpu_secs(&daemon.pid()?.to_string())?;
    let seeded = seed(bin, good_store, &daemon.ticket).await;
    let daemon_cpu = cpu_secs(&daemon.pid()?.to_string())? - cpu_before;
    let peak_rss = vm_bytes(daemon.pid()?, "VmHWM")?;
    let _ = stop_tx.send(true);
    while let Some(ended) = tokio::time::timeout(TIMEOUT, attackers.join_next())
        .await
        .context("an attacker hung")?
    {
        ended??;
    }
    let (bytes, secs) = seeded?;
    Ok(Measured {
        bytes,
        secs,
        peak_rss,
        daemon_cpu,
        attack: tally.counts(),
    })
}

/// What the attackers got, counted as it happens.
#[derive(Default)]
struct Tally {
    /// Connections made.
    connections: AtomicU64,
    /// Whole lists read to their end.
    lists: AtomicU64,
    /// Their bytes.
    list_bytes: AtomicU64,
    /// Connections the daemon closed (with a code).
    closed_by_daemon: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy)]
struct AttackCounts {
    connections: u64,
    lists: u64,
    list_bytes: u64,
    closed_by_daemon: u64,
}

impl Tally {
    fn counts(&self) -> AttackCounts {
        AttackCounts {
            connections: self.connections.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            list_bytes: self.list_bytes.load(Ordering::Relaxed),
            closed_by_daemon: self.closed_by_daemon.load(Ordering::Relaxed),
        }
    }
}

/// Where attacker `slot` dials from: 127.0.0.2 to 127.0.0.9, as attackers
/// on other hosts would (the daemon takes at most 16 handshakes at once from
/// one address); the good peer dials from 127.0.0.1.
fn attacker_address(slot: usize) -> std::net::SocketAddr {
    let host = 2 + (slot % 8) as u8;
    std::net::SocketAddr::from(([127, 0, 0, host], 0))
}

/// One attacker: its own endpoint (key), asking for the whole list again
/// and again until told to stop; reports `armed` once it first asked.
async fn attacker(
    slot: usize,
    daemon: EndpointAddr,
    tally: Arc<Tally>,
    armed: mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let endpoint = Endpoint::builder(presets::Minimal)
        .clear_ip_transports()
        .bind_addr(attacker_address(slot))?
        .bind()
        .await?;
    let mut armed = Some(armed);
    while !*stop.borrow() {
        let conn = tokio::select! {
            connected = tokio::time::timeout(TIMEOUT, endpoint.connect(daemon.clone(), ALPN_V2)) => {
                connected.context("connecting hung")??
            }
            _ = stop.changed() => break,
        };
        tally.connections.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            attacked = ask_for_the_whole_list(&conn, &tally, &mut armed) => attacked?,
            _ = stop.changed() => {
                conn.close(0u32.into(), b"measurement over");
                break;
            }
        }
    }
    // Bounded: closing waits for the daemon to acknowledge.
    let _ = tokio::time::timeout(TIMEOUT, endpoint.close()).await;
    Ok(())
}

/// One attack on `conn`: `HELLO` without features and an empty `RECON`,
/// then the daemon's whole list read as fast as it comes, then the
/// connection held until the daemon closes it.
async fn ask_for_the_whole_list(
    conn: &Connection,
    tally: &Tally,
    armed: &mut Option<mpsc::Sender<()>>,
) -> Result<()> {
    let (mut control, mut control_in) = tokio::time::timeout(TIMEOUT, conn.open_bi())
        .await
        .context("opening the control stream hung")??;
    let mut opening = frame(FrameType::Hello, &hello_without_features());
    opening.extend_from_slice(&frame(FrameType::Recon, &empty_list()));
    tokio::time::timeout(TIMEOUT, control.write_all(&opening))
        .await
        .context("sending HELLO and RECON hung")??;
    if let Some(armed) = armed.take() {
        armed.send(()).await?;
    }
    // The daemon's list may wait for the node's budget as long as the other
    // attackers hold it: no deadline here; the stop signal ends the wait.
    // Whether the list comes or the connection closes first, the daemon
    // closing the connection is what ends the attack.
    if let Ok(bytes) = read_the_whole_list(&mut control_in).await {
        tally.lists.fetch_add(1, Ordering::Relaxed);
        tally.list_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    // The control stream stays open (a dropped one would finish it).
    if let ConnectionError::ApplicationClosed(_) = conn.closed().await {
        tally.closed_by_daemon.fetch_add(1, Ordering::Relaxed);
    }
    drop(control);
    Ok(())
}

/// Reads the daemon's `HELLO` and then its `RECON`, the whole list, through
/// a 64 KiB buffer: the list's length in bytes.
async fn read_the_whole_list(recv: &mut RecvStream) -> Result<u64> {
    let (tag, _) = tokio::time::timeout(TIMEOUT, read_frame(recv))
        .await
        .context("the daemon's HELLO never came")??;
    ensure!(tag == FrameType::Hello as u8, "expected HELLO, got {tag}");
    let mut header = [0u8; 5];
    recv.read_exact(&mut header).await?;
    ensure!(
        header[0] == FrameType::Recon as u8,
        "expected RECON, got {}",
        header[0]
    );
    let len = u64::from(u32::from_be_bytes(header[1..].try_into()?));
    let mut buffer = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let part = left.min(buffer.len() as u64) as usize;
        recv.read_exact(&mut buffer[..part]).await?;
        left -= part as u64;
    }
    Ok(len)
}

/// An honest v2 `HELLO` of an older peer: no features, so neither coded nor
/// paged reconciliation, and the daemon owes it its whole list at once.
fn hello_without_features() -> Vec<u8> {
    pb::Hello {
        version: can_sync::session::v2::VERSION,
        max_streams: 1,
        codecs: vec!["zstd".into()],
        inline_limit: 64 * 1024,
        features: vec![],
        max_frame_len: 1 << 20,
        capability: Default::default(),
    }
    .encode_to_vec()
}

/// A full `RECON` of an empty store: the whole list, done.
fn empty_list() -> Vec<u8> {
    pb::Recon {
        packed_summaries: compact::encode(&[], 3).into(),
        done: true,
        ..Default::default()
    }
    .encode_to_vec()
}

fn frame(frame_type: FrameType, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(frame_type, payload, &mut out).expect("a small frame");
    out.to_vec()
}

/// The daemon under measurement, its CAN API on `--http` for checking what
/// landed.
struct Daemon {
    child: Child,
    ticket: Ticket,
    http: HttpCan,
}

/// The daemon at rest: its resident set, and how long it took to get there.
struct Settled {
    rss: u64,
    waited: Duration,
}

impl Daemon {
    async fn start(bin: &str, store: &Path, data_dir: &Path) -> Result<Self> {
        // Errors only: every attack may warn.
        let (child, line) = start_program(
            bin,
            &[
                "daemon",
                "--store",
                path(store)?,
                "--data-dir",
                path(data_dir)?,
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--no-relay",
                "--open",
                "write",
            ],
            "error",
            STARTUP,
        )
        .await?;
        let ticket: Ticket = line
            .strip_prefix("ticket ")
            .with_context(|| format!("daemon's first line is {line:?}"))?
            .parse()?;
        // Written before the ticket is printed.
        let http = std::fs::read_to_string(data_dir.join("http"))?;
        Ok(Self {
            child,
            ticket,
            http: HttpCan::new(&format!("http://{}", http.trim()))?,
        })
    }

    fn pid(&self) -> Result<u32> {
        self.child.id().context("the daemon exited")
    }

    fn alive(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Waits until the daemon is at rest: [`QUIET_SAMPLES`] samples in a row
    /// with (almost) no CPU and a resident set that moved by less than a
    /// MiB. Nothing the daemon says marks the end of its work (a session
    /// queued for the whole-store budget runs after its peer is gone), so
    /// this watches what `/proc` shows.
    async fn settle(&self) -> Result<Settled> {
        let pid = self.pid()?;
        let started = Instant::now();
        let mut samples: Vec<(f64, u64)> = Vec::new();
        loop {
            samples.push((cpu_secs(&pid.to_string())?, vm_bytes(pid, "VmRSS")?));
            if samples.len() > QUIET_SAMPLES {
                let window = &samples[samples.len() - QUIET_SAMPLES - 1..];
                let cpu = window[QUIET_SAMPLES].0 - window[0].0;
                let (low, high) = window.iter().fold((u64::MAX, 0), |(low, high), (_, rss)| {
                    (low.min(*rss), high.max(*rss))
                });
                if cpu <= QUIET_CPU_SECS && high - low < 1 << 20 {
                    return Ok(Settled {
                        rss: window[QUIET_SAMPLES].1,
                        waited: started.elapsed(),
                    });
                }
            }
            ensure!(started.elapsed() < SETTLE_LIMIT, "the daemon never settled");
            tokio::time::sleep(SETTLE_SAMPLE).await;
        }
    }
}

/// Runs `can-sync seed` from the store in `dir` against `ticket`: the
/// payload bytes it moved and its own timing.
async fn seed(bin: &str, dir: &Path, ticket: &Ticket) -> Result<(u64, f64)> {
    let out = tokio::time::timeout(
        RUN_LIMIT,
        Command::new(bin)
            .args([
                "seed",
                "--store",
                path(dir)?,
                "--from",
                &ticket.to_string(),
                "--json",
                "--no-relay",
            ])
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the good peer's seed hung")??;
    ensure!(
        out.status.success(),
        "the good peer's seed failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(result["rejected"] == 0, "rejections: {result}");
    Ok((
        result["bytes"].as_u64().context("bytes")?,
        result["secs"].as_f64().context("secs")?,
    ))
}

/// Fills a durable store in `dir` with `assets` tiny assets, [`LOAD_BATCH`]
/// per commit, and closes it (which saves its coded cells, from 12,000
/// assets on).
async fn fill_tiny(dir: &Path, assets: u64) -> Result<()> {
    let store = EmbeddedCan::open(dir, StoreLimits::default())?;
    let mut next = 0;
    while next < assets {
        let end = (next + LOAD_BATCH).min(assets);
        let batch = (next..end)
            .map(|i| bundle(i, TINY_LEN, 1).verify())
            .collect::<Result<Vec<_>, _>>()?;
        for answer in store.push_batch(batch).await? {
            answer?;
        }
        next = end;
    }
    ensure!(store.stats().await?.assets == assets, "the store is short");
    // Closing joins the store's writer thread.
    tokio::task::spawn_blocking(move || drop(store)).await?;
    Ok(())
}

/// Adds the good peer's assets `base..base + count` to its store in `dir`.
async fn add_good_assets(dir: &Path, base: u64, count: u64) -> Result<()> {
    let store = EmbeddedCan::open(dir, StoreLimits::default())?;
    for i in base..base + count {
        store.push(bundle(i, GOOD_ASSET_LEN, 1)).await?;
    }
    tokio::task::spawn_blocking(move || drop(store)).await?;
    Ok(())
}

/// Copies the closed store in `from` to `to`, files and folders.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{name}={value} is not a number")),
        Err(_) => Ok(default),
    }
}

fn path(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
