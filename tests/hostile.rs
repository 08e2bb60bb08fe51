//! A real `can-sync daemon` under attack from every slot it admits but one,
//! while a good peer (`can-sync seed`, its own store) syncs with it: the
//! agent stays under [`RSS_LIMIT`], answers every attack with a clear close,
//! and the good peer's assets all land, verified (issue 12, item 1).
//!
//! The daemon serves at most 64 connections (`ConnectionLimits`, 4 per
//! peer); 64 hostile ones would lock the good peer out by design, so the
//! attack takes [`HOSTILE`] = 63 slots, one endpoint (one key) each, and the
//! good peer the last. The daemon is `--open write`, so unknown peers reach
//! the session code and every attack below gets past the handshake (a closed
//! daemon refuses them all right there: `tests/access.rs`). Each slot attacks, waits
//! for the daemon's close, pauses, and attacks again until the good peer is
//! done; what each attack is expected to get:
//!
//! | attack | what it sends | the daemon's answer |
//! |---|---|---|
//! | `Silent` | v2: a connection, and no stream at all | close [`CLOSE_IDLE`] after the idle timeout (it used to hold its slot for good) |
//! | `StreamFlood` | v2: no control stream, 32 data streams of 1 MiB each, never accepted | close [`CLOSE_IDLE`] after the idle timeout; no data stream may open before a session asks (it used to park 32 MiB) |
//! | `HugeHello` | v2: a `HELLO` header declaring 64 KiB (`MAX_HELLO_FRAME`, the most before `HELLO`), then a byte every half second | close [`CLOSE_IDLE`] after the idle timeout |
//! | `BlastHello` | v2: a `HELLO` header declaring 1 GiB, then 16 MiB of it as fast as it goes | close [`CLOSE_PROTOCOL_ERROR`] (oversized) at the header: nothing buffered (it used to buffer it all) |
//! | `HugeRecon` | v2: `HELLO`, then a `RECON` header declaring 1 GiB (`MAX_CONTROL_FRAME`), then a byte every half second | close [`CLOSE_IDLE`] after the idle timeout: nothing reserved for the 1 GiB |
//! | `FiftyMillion` | v2: `HELLO`, then a `RECON` whose list declares 50,000,000 entries and holds 3 | close [`CLOSE_PROTOCOL_ERROR`] (malformed summaries); room only for what arrived |
//! | `InflatedList` | v2: `HELLO`, then a `RECON` of 2.7 MB whose list inflates 16× to a million well-formed (all-zero) entries, padded with a skippable zstd frame | close [`CLOSE_PROTOCOL_ERROR`] before inflating: lists may inflate 4× (`compact::MAX_INFLATION`) |
//! | `ReconBomb` | v2: `HELLO`, then a `RECON` list that is 128 KiB of zstd RLE blocks inflating to 4 GiB, size undeclared | close [`CLOSE_PROTOCOL_ERROR`] once it inflates past 4 × its size |
//! | `ReconDeclared` | the same bomb declaring its 4 GiB in the zstd frame header | close [`CLOSE_PROTOCOL_ERROR`] before inflating |
//! | `BundleBomb` | v2: a whole handshake, then a data stream whose `BUNDLE_ZSTD` inflates to 4 GiB, size undeclared | close [`CLOSE_PROTOCOL_ERROR`] once it inflates past the frame limit |
//! | `BundleDeclared` | the same `BUNDLE_ZSTD` declaring 4 GiB | close [`CLOSE_PROTOCOL_ERROR`] before inflating |
//! | `HugeDataFrame` | v2: a whole handshake, then a data-stream frame header declaring 1 GiB | close [`CLOSE_PROTOCOL_ERROR`] (oversized) at the header |
//! | `V1HugeHashSet` | v1: a `HASH_SET` header declaring 1 GiB | close [`CLOSE_PROTOCOL_ERROR`] (oversized) at the header |
//! | `V1EmptyEntries` | v1: a whole 2 MiB `HASH_SET` of empty 2-byte entries | close [`CLOSE_PROTOCOL_ERROR`] (malformed hash) at the first entry: prost used to make each an ~100-byte summary first, 100 MB per connection (issue 19) |
//!
//! A stream that ends early (its sender dropped) would be another
//! violation, so every attacker holds its streams until the daemon closes.
//! A `RECON` whose 1 GiB is really sent is not among the attacks: the
//! reconciliation phase still buffers whatever arrives, up to
//! `MAX_CONTROL_FRAME` per connection (seven peers sending 64 MiB each took
//! the daemon to 532 MiB); bounding it needs a node-wide budget.
//!
//! The `#[ignore]`d test measures the good peer with and without the attack
//! (see its doc); it is a measurement, not an assertion.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::BytesMut;
use can_sync::asset::AssetHash;
use can_sync::can::{Can, EmbeddedCan, HttpCan, StoreLimits};
use can_sync::node::Ticket;
use can_sync::pb;
use can_sync::recon::compact;
use can_sync::session::v2::{MAX_CONTROL_FRAME, MAX_HELLO_FRAME, MAX_SUMMARIES};
use can_sync::session::{ALPN_V1, ALPN_V2, CLOSE_IDLE, CLOSE_PROTOCOL_ERROR};
use can_sync::wire::{compress, encode_frame, FrameType};
use common::process::{cpu_secs, start_logging, vm_bytes, BIN};
use common::{await_armed, bundle, read_frame, TIMEOUT};
use iroh::endpoint::{presets, Connection, ConnectionError, SendStream};
use iroh::{Endpoint, EndpointAddr};
use prost::Message;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Hostile connections at once: every slot of the daemon's 64 but the good
/// peer's.
const HOSTILE: usize = 63;

/// The most the daemon may hold in memory, at its peak, through the test.
const RSS_LIMIT: u64 = 128 << 20;

/// The daemon's idle timeout: how long a silent (or trickling) peer keeps
/// its slot. Short, so the test stays short; long enough that the held
/// connections outlast the good peer's sync.
const IDLE_SECS: u64 = 5;

/// How long an attack round may take before it counts as a hang: the idle
/// timeout plus generous slack for a loaded 2-core machine.
const ROUND_LIMIT: Duration = Duration::from_secs(IDLE_SECS * 4);

/// Pause between one slot's attacks. The attack is the 63 connections held
/// at once, not a handshake flood: the attacker shares the machine's cores
/// with the daemon, and a flood would measure the attacker's CPU.
const REATTACK_PAUSE: Duration = Duration::from_millis(500);

/// The good peer's archive: small assets inline, a few above the inline
/// limit (1 MiB) so they stream in chunks.
#[derive(Debug, Clone, Copy)]
struct Archive {
    /// Assets of [`SMALL_LEN`].
    small: u64,
    /// Assets of [`LARGE_LEN`].
    large: u64,
}
const SMALL_LEN: usize = 64 * 1024;
const LARGE_LEN: usize = 3 << 20;

/// What the test moves: 32 MB, quick on 2 cores.
const TEST_ARCHIVE: Archive = Archive {
    small: 300,
    large: 4,
};

/// What the measurement moves: 161 MB, so the transfer, not the start of
/// the processes, dominates the time.
const BENCH_ARCHIVE: Archive = Archive {
    small: 1500,
    large: 20,
};

/// Bytes of its declared 1 GiB a blasting peer sends, as fast as it can:
/// before the per-phase limit, seven such peers sending 64 MiB each took
/// the daemon to 537 MiB; six sending 16 MiB would pass the limit too.
const BLAST_LEN: u64 = 16 << 20;

/// Bytes of the `V1EmptyEntries` attack's `HASH_SET`: a million empty
/// entries, which prost made 100 MB of heap per connection before the
/// streamed decode. (The frame itself is buffered as it arrives, up to the
/// v1 frame limit: an admitted v1 peer can still make the daemon hold that.)
const V1_ENTRIES_LEN: usize = 2 << 20;

/// Bytes a zstd bomb inflates to.
const BOMB_LEN: u64 = 4 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Attack {
    Silent,
    StreamFlood,
    HugeHello,
    BlastHello,
    HugeRecon,
    FiftyMillion,
    InflatedList,
    ReconBomb,
    ReconDeclared,
    BundleBomb,
    BundleDeclared,
    HugeDataFrame,
    V1HugeHashSet,
    V1EmptyEntries,
}

impl Attack {
    const ALL: [Self; 14] = [
        Self::Silent,
        Self::StreamFlood,
        Self::HugeHello,
        Self::BlastHello,
        Self::HugeRecon,
        Self::FiftyMillion,
        Self::InflatedList,
        Self::ReconBomb,
        Self::ReconDeclared,
        Self::BundleBomb,
        Self::BundleDeclared,
        Self::HugeDataFrame,
        Self::V1HugeHashSet,
        Self::V1EmptyEntries,
    ];

    /// The close code the daemon must answer with (the table above).
    fn expected_close(self) -> u32 {
        match self {
            Self::Silent | Self::StreamFlood | Self::HugeHello | Self::HugeRecon => CLOSE_IDLE,
            _ => CLOSE_PROTOCOL_ERROR,
        }
    }

    fn alpn(self) -> &'static [u8] {
        match self {
            Self::V1HugeHashSet | Self::V1EmptyEntries => ALPN_V1,
            _ => ALPN_V2,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_under_63_hostile_connections_serves_a_good_peer_within_128_mib() -> Result<()> {
    let run = run_scenario(true, TEST_ARCHIVE).await?;
    eprintln!(
        "good peer under attack: {} bytes in {:.2} s; daemon peak RSS {} MiB; {} attacks",
        run.bytes,
        run.secs,
        run.peak_rss >> 20,
        run.attacks
    );
    ensure!(
        run.peak_rss < RSS_LIMIT,
        "the daemon peaked at {} MiB, over the {} MiB limit",
        run.peak_rss >> 20,
        RSS_LIMIT >> 20
    );
    Ok(())
}

/// The good peer's throughput with and without the attack, one after the
/// other in one run, each against a fresh daemon:
///
/// ```text
/// cargo test --release --test hostile -- --ignored --nocapture
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints the good peer's throughput with and without the attack"]
async fn good_peer_throughput_with_and_without_attackers() -> Result<()> {
    for attacked in [false, true, false, true] {
        let run = run_scenario(attacked, BENCH_ARCHIVE).await?;
        println!(
            "attacked={attacked}: {:.1} MB in {:.3} s = {:.1} MB/s; daemon peak RSS {} MiB; \
             {} attacks; CPU s during the sync: daemon {:.2}, attackers {:.2}",
            run.bytes as f64 / 1e6,
            run.secs,
            run.bytes as f64 / 1e6 / run.secs,
            run.peak_rss >> 20,
            run.attacks,
            run.cpu.1,
            run.cpu.0,
        );
    }
    Ok(())
}

/// What one run measured.
struct Run {
    /// Payload bytes the good peer moved, and in how long (its own `--json`).
    bytes: u64,
    secs: f64,
    /// The daemon's VmHWM.
    peak_rss: u64,
    /// Attack rounds answered.
    attacks: usize,
    /// CPU seconds the test process (the attackers) and the daemon used
    /// while the good peer ran.
    cpu: (f64, f64),
}

/// Starts a daemon, attacks it (when `attacked`) while a good peer seeds
/// it, then checks every attack's close, every asset at the daemon and that
/// the daemon still serves.
async fn run_scenario(attacked: bool, archive: Archive) -> Result<Run> {
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
    let hashes = fill_seed_store(dirs.1.path(), archive).await?;
    let mut daemon = Daemon::start(dirs.0.path()).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (armed_tx, mut armed_rx) = mpsc::channel::<()>(HOSTILE);
    let mut attackers = JoinSet::new();
    if attacked {
        for slot in 0..HOSTILE {
            let attack = Attack::ALL[slot % Attack::ALL.len()];
            let addr = daemon.ticket.endpoint_addr();
            let from = attacker_address(slot);
            attackers.spawn(attacker(
                attack,
                from,
                addr,
                armed_tx.clone(),
                stop_rx.clone(),
            ));
        }
        // The good peer starts once every slot has attacked at least once:
        // the held ones are holding, the others come back every pause. An
        // attacker that fails (a wrong close code) says why at once.
        await_armed(&mut armed_rx, &mut attackers, HOSTILE).await?;
    }
    drop(armed_tx);

    let cpu_before = (cpu_secs("self")?, daemon.cpu_secs()?);
    let seeded = seed(dirs.1.path(), &daemon.ticket).await;
    let cpu = (
        cpu_secs("self")? - cpu_before.0,
        daemon.cpu_secs()? - cpu_before.1,
    );
    let _ = stop_tx.send(true);
    let mut rounds: HashMap<Attack, Rounds> = HashMap::new();
    while let Some(ended) = tokio::time::timeout(TIMEOUT, attackers.join_next())
        .await
        .context("an attacker hung")?
    {
        let (attack, slot) = ended??;
        let all = rounds.entry(attack).or_default();
        all.closed += slot.closed;
        all.reset += slot.reset;
    }
    if attacked {
        for attack in Attack::ALL {
            let got = rounds.get(&attack).copied().unwrap_or_default();
            eprintln!(
                "{attack:?}: {} closed as expected, {} reset",
                got.closed, got.reset
            );
            ensure!(
                got.closed > 0,
                "{attack:?} never got its close code: {got:?}"
            );
        }
    }
    let attacks = rounds.values().map(|r| r.closed + r.reset).sum();
    let (bytes, secs) = seeded?;
    let peak_rss = daemon.peak_rss()?;

    // Every asset of the good peer is at the daemon, whole.
    let seed_store = EmbeddedCan::open(dirs.1.path(), StoreLimits::default())?;
    tokio::time::timeout(TIMEOUT, common::assert_converged(&seed_store, &daemon.http))
        .await
        .context("checking the daemon's store hung")??;
    ensure!(
        seed_store.stats().await?.assets == hashes.len() as u64,
        "the seed store changed"
    );
    drop(seed_store);

    // The daemon is alive and serves a new peer.
    ensure!(
        daemon.child.try_wait()?.is_none(),
        "the daemon died under attack"
    );
    let late = tempfile::tempdir()?;
    {
        let store = EmbeddedCan::open(late.path(), StoreLimits::default())?;
        store.push(bundle(1_000_000, 5000, 1)).await?;
    }
    seed(late.path(), &daemon.ticket)
        .await
        .context("after the attack")?;
    let late_meta =
        tokio::time::timeout(TIMEOUT, daemon.http.meta(bundle(1_000_000, 5000, 1).hash))
            .await
            .context("asking the daemon hung")??;
    ensure!(late_meta.is_some(), "the late asset did not land");
    Ok(Run {
        bytes,
        secs,
        peak_rss,
        attacks,
        cpu,
    })
}

/// A `can-sync daemon` process on loopback with its embedded store, its
/// CAN API on `--http` for checking what landed.
struct Daemon {
    child: Child,
    ticket: Ticket,
    http: HttpCan,
}

impl Daemon {
    async fn start(dir: &Path) -> Result<Self> {
        let idle = IDLE_SECS.to_string();
        // Errors only: every attack is a warning, 63 at a time.
        let (child, line) = start_logging(
            &[
                "daemon",
                "--data-dir",
                dir.to_str().context("utf-8 path")?,
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--no-relay",
                "--open",
                "write",
                "--idle-timeout-secs",
                &idle,
            ],
            "error",
        )
        .await?;
        let ticket: Ticket = line
            .strip_prefix("ticket ")
            .with_context(|| format!("daemon's first line is {line:?}"))?
            .parse()?;
        // Written before the ticket is printed.
        let http = std::fs::read_to_string(dir.join("http"))?;
        Ok(Self {
            child,
            ticket,
            http: HttpCan::new(&format!("http://{}", http.trim()))?,
        })
    }

    /// CPU seconds the daemon has used.
    fn cpu_secs(&self) -> Result<f64> {
        cpu_secs(&self.child.id().context("the daemon exited")?.to_string())
    }

    /// The daemon's peak resident set (VmHWM), in bytes.
    fn peak_rss(&self) -> Result<u64> {
        vm_bytes(self.child.id().context("the daemon exited")?, "VmHWM")
    }
}

/// Fills an embedded store in `dir` with the good peer's archive; its hashes.
async fn fill_seed_store(dir: &Path, archive: Archive) -> Result<Vec<AssetHash>> {
    let store = EmbeddedCan::open(dir, StoreLimits::default())?;
    let mut hashes = Vec::new();
    for i in 0..archive.small + archive.large {
        let len = if i < archive.small {
            SMALL_LEN
        } else {
            LARGE_LEN
        };
        let asset = bundle(i, len, 1);
        hashes.push(asset.hash);
        store.push(asset).await?;
    }
    Ok(hashes)
}

/// Runs `can-sync seed` from the store in `dir` against `ticket`: the
/// payload bytes it moved and its own timing.
async fn seed(dir: &Path, ticket: &Ticket) -> Result<(u64, f64)> {
    let out = tokio::time::timeout(
        TIMEOUT,
        Command::new(BIN)
            .args([
                "seed",
                "--store",
                dir.to_str().context("utf-8 path")?,
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

/// How one slot's rounds ended.
#[derive(Debug, Default, Clone, Copy)]
struct Rounds {
    /// Closed by the daemon with the code the module doc's table says.
    closed: usize,
    /// Ended by a stateless reset: the daemon's close packet was lost on
    /// the loaded loopback (UDP; RFC 9000 §10.2 does not retransmit it) and
    /// the daemon had already forgotten the connection. A clear end, but
    /// one that names no reason.
    reset: usize,
}

/// Where attacker `slot` dials from: eight loopback addresses of their own
/// (127.0.0.2 to 127.0.0.9), as attackers on other hosts would, since the
/// daemon takes at most 16 handshakes at once from one address; the good
/// peer dials from 127.0.0.1.
fn attacker_address(slot: usize) -> std::net::SocketAddr {
    let host = 2 + (slot % 8) as u8;
    std::net::SocketAddr::from(([127, 0, 0, host], 0))
}

/// One attacker slot: its own endpoint (key), attacking again and again
/// until told to stop. Every round must end in the expected close (or a
/// stateless reset, see [`Rounds`]); any other code, or no end within
/// [`ROUND_LIMIT`], fails the slot.
async fn attacker(
    attack: Attack,
    from: std::net::SocketAddr,
    daemon: EndpointAddr,
    armed: mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Result<(Attack, Rounds)> {
    let endpoint = Endpoint::builder(presets::Minimal)
        .clear_ip_transports()
        .bind_addr(from)?
        .bind()
        .await?;
    let mut armed = Some(armed);
    let mut rounds = Rounds::default();
    loop {
        let conn =
            tokio::time::timeout(ROUND_LIMIT, endpoint.connect(daemon.clone(), attack.alpn()))
                .await
                .with_context(|| format!("{attack:?}: connecting hung"))??;
        let round = async {
            // A step fails once the daemon has closed the connection (that
            // is the point); the close code below says how it ended.
            let _ = attack_once(attack, &conn, &mut armed).await;
            conn.closed().await
        };
        let closed = tokio::time::timeout(ROUND_LIMIT, round)
            .await
            .with_context(|| format!("{attack:?}: the daemon never closed the connection"))?;
        match closed {
            ConnectionError::ApplicationClosed(close)
                if close.error_code == attack.expected_close().into() =>
            {
                rounds.closed += 1
            }
            ConnectionError::Reset => rounds.reset += 1,
            other => bail!(
                "{attack:?}: expected close code {}, got {other}",
                attack.expected_close()
            ),
        }
        if let Some(armed) = armed.take() {
            // Armed by the daemon's answer when the attack does not hold.
            let _ = armed.send(()).await;
        }
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(REATTACK_PAUSE) => {}
            _ = stop.changed() => break,
        }
    }
    // Bounded: closing waits for the peer to acknowledge.
    let _ = tokio::time::timeout(ROUND_LIMIT, endpoint.close()).await;
    Ok((attack, rounds))
}

/// Sends one attack on `conn`. Holding attacks report `armed` once their
/// hold begins, so the good peer starts while they hold.
async fn attack_once(
    attack: Attack,
    conn: &Connection,
    armed: &mut Option<mpsc::Sender<()>>,
) -> Result<()> {
    if matches!(attack, Attack::Silent | Attack::StreamFlood) {
        // Armed at once: the flood may block on flow control.
        if let Some(armed) = armed.take() {
            armed.send(()).await?;
        }
        let mut streams = Vec::new();
        if attack == Attack::StreamFlood {
            let block = vec![0u8; 1 << 20];
            for _ in 0..32 {
                let mut data = conn.open_uni().await?;
                data.write_all(&block).await?;
                streams.push(data);
            }
        }
        conn.closed().await;
        return Ok(());
    }
    let (mut control, mut control_in) = conn.open_bi().await?;
    if attack == Attack::V1HugeHashSet {
        control
            .write_all(&header(FrameType::HashSet, MAX_CONTROL_FRAME))
            .await?;
        conn.closed().await;
        return Ok(());
    }
    if attack == Attack::V1EmptyEntries {
        // Every entry is `0a 00`: field 1, zero bytes long.
        let entries = [0x0a, 0x00].repeat(V1_ENTRIES_LEN / 2);
        // The daemon may close before it has read it all.
        let _ = control
            .write_all(&frame(FrameType::HashSet, &entries))
            .await;
        conn.closed().await;
        return Ok(());
    }
    if attack == Attack::BlastHello {
        control
            .write_all(&header(FrameType::Hello, MAX_CONTROL_FRAME))
            .await?;
        let block = vec![0u8; 1 << 20];
        for _ in 0..BLAST_LEN >> 20 {
            control.write_all(&block).await?;
        }
        conn.closed().await;
        return Ok(());
    }
    if attack == Attack::HugeHello {
        control
            .write_all(&header(FrameType::Hello, MAX_HELLO_FRAME))
            .await?;
        return trickle(conn, &mut control, armed).await;
    }
    control
        .write_all(&frame(FrameType::Hello, &hello()))
        .await?;
    let (tag, _) = read_frame(&mut control_in).await?;
    ensure!(tag == FrameType::Hello as u8, "expected HELLO, got {tag}");
    let list = |packed: Vec<u8>| {
        pb::Recon {
            packed_summaries: packed.into(),
            done: true,
            ..Default::default()
        }
        .encode_to_vec()
    };
    match attack {
        Attack::HugeRecon => {
            control
                .write_all(&header(FrameType::Recon, MAX_CONTROL_FRAME))
                .await?;
            return trickle(conn, &mut control, armed).await;
        }
        Attack::FiftyMillion => {
            let recon = list(fifty_million_entries());
            control.write_all(&frame(FrameType::Recon, &recon)).await?;
        }
        Attack::InflatedList => {
            static LIST: OnceLock<Vec<u8>> = OnceLock::new();
            let recon = list(LIST.get_or_init(inflated_list).clone());
            control.write_all(&frame(FrameType::Recon, &recon)).await?;
        }
        Attack::ReconBomb | Attack::ReconDeclared => {
            let bomb = rle_bomb(BOMB_LEN, attack == Attack::ReconDeclared);
            control
                .write_all(&frame(FrameType::Recon, &list(bomb)))
                .await?;
        }
        Attack::BundleBomb | Attack::BundleDeclared | Attack::HugeDataFrame => {
            // Claim to hold exactly what the daemon holds, so it sends
            // nothing and waits for our data stream.
            let (tag, payload) = read_frame(&mut control_in).await?;
            ensure!(tag == FrameType::Recon as u8, "expected RECON, got {tag}");
            let theirs = pb::Recon::decode(&payload[..])?;
            control
                .write_all(&frame(
                    FrameType::Recon,
                    &list(theirs.packed_summaries.to_vec()),
                ))
                .await?;
            let mut data = conn.open_uni().await?;
            let script = match attack {
                Attack::HugeDataFrame => header(FrameType::AssetBundle, MAX_CONTROL_FRAME),
                other => frame(
                    FrameType::BundleZstd,
                    &rle_bomb(BOMB_LEN, other == Attack::BundleDeclared),
                ),
            };
            data.write_all(&script).await?;
            // Dropping a stream would finish it: a different violation.
            conn.closed().await;
            return Ok(());
        }
        Attack::Silent
        | Attack::StreamFlood
        | Attack::HugeHello
        | Attack::BlastHello
        | Attack::V1HugeHashSet
        | Attack::V1EmptyEntries => {
            unreachable!("sent above")
        }
    }
    // The streams stay open until the daemon closes: dropping one would
    // finish it, and a stream that ends mid-frame is another violation.
    conn.closed().await;
    Ok(())
}

/// Holds `conn` with a byte now and then on `stream`, so it is never
/// silent, until the daemon closes it; reports `armed` once holding.
async fn trickle(
    conn: &Connection,
    stream: &mut SendStream,
    armed: &mut Option<mpsc::Sender<()>>,
) -> Result<()> {
    if let Some(armed) = armed.take() {
        armed.send(()).await?;
    }
    loop {
        tokio::select! {
            _ = conn.closed() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(500)) => stream.write_all(&[0]).await?,
        }
    }
}

/// Our `HELLO`: an honest v2 peer's, without coded reconciliation, so the
/// daemon takes (and must bound) a full summary list.
fn hello() -> Vec<u8> {
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

/// A compact list that declares [`MAX_SUMMARIES`] entries and holds three.
fn fifty_million_entries() -> Vec<u8> {
    let mut raw = Vec::new();
    prost::encoding::encode_varint(MAX_SUMMARIES, &mut raw);
    for i in 0..3u8 {
        raw.extend_from_slice(AssetHash::of(&[i]).as_bytes());
        raw.extend_from_slice(&[0, 0, 0]); // times and size, as varints
        raw.extend_from_slice(&[0; compact::DIGEST_PREFIX]);
    }
    compress::compress(&raw, 3)
}

/// A list of a million well-formed entries (all zeros) that inflates 16×
/// its size: the zstd frame of the entries, then a skippable frame of
/// padding so the payload looks big enough for what it inflates to. Before
/// lists were held to 4×, one such peer cost the daemon 135 MiB.
fn inflated_list() -> Vec<u8> {
    let entries = 1_000_000u64;
    let mut raw = Vec::new();
    prost::encoding::encode_varint(entries, &mut raw);
    raw.resize(raw.len() + entries as usize * 43, 0);
    let mut packed = compress::compress(&raw, 3);
    let pad = raw.len() / 16 + 1 - packed.len() - 8;
    packed.extend_from_slice(&[0x50, 0x2A, 0x4D, 0x18]); // skippable frame
    packed.extend_from_slice(&(pad as u32).to_le_bytes());
    packed.resize(packed.len() + pad, 0);
    packed
}

/// A zstd frame of RLE blocks (4 bytes each for 128 KiB of zeros) that
/// inflates to `len` bytes; with `declare`, its header says so.
///
/// RFC 8878: magic; a frame header descriptor (content size field of 8 bytes
/// when declared, else none; not single-segment, so a window descriptor
/// follows: 2^17); then blocks, each a 3-byte little-endian header (last
/// flag, type 1 = RLE, size) and the byte to repeat.
fn rle_bomb(len: u64, declare: bool) -> Vec<u8> {
    const BLOCK: u64 = 128 * 1024;
    let mut out = vec![0x28, 0xB5, 0x2F, 0xFD];
    out.push(if declare { 0xC0 } else { 0x00 });
    out.push(7 << 3); // window log 10 + 7
    if declare {
        out.extend_from_slice(&len.to_le_bytes());
    }
    let blocks = len / BLOCK;
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let block_header = last | (1 << 1) | ((BLOCK as u32) << 3);
        out.extend_from_slice(&block_header.to_le_bytes()[..3]);
        out.push(0);
    }
    out
}

fn frame(frame_type: FrameType, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(frame_type, payload, &mut out).expect("a small frame");
    out.to_vec()
}

/// A frame header alone, declaring `len` payload bytes that never come.
fn header(frame_type: FrameType, len: u32) -> Vec<u8> {
    let mut out = vec![frame_type as u8];
    out.extend_from_slice(&len.to_be_bytes());
    out
}

#[test]
fn the_bombs_are_what_they_claim() -> Result<()> {
    // Small enough to check by inflating: 1 MiB in eight blocks.
    for declare in [false, true] {
        let bomb = rle_bomb(1 << 20, declare);
        assert_eq!(bomb.len(), 6 + if declare { 8 } else { 0 } + 8 * 4);
        assert_eq!(
            compress::decompress_bounded(&bomb, 1 << 20)?,
            vec![0; 1 << 20]
        );
    }
    assert!(rle_bomb(BOMB_LEN, false).len() <= 128 * 1024 + 6);
    Ok(())
}
