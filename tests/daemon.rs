//! The daemon as users run it, live: real `serve-can` and `daemon` processes
//! on loopback. Changes cross on the open connection; SIGTERM with work in
//! flight finishes that work and exits 0 (the store counted at exit), or, when
//! the grace period runs out, names what it cut and exits non-zero; the next
//! start converges; a CAN server restarted under a live agent loses no event.
//! A large asset two peers hold comes in ranges from both, whether the
//! second is there from the start, comes up mid-asset and is redialled, or
//! dials in mid-asset.

mod common;

use anyhow::{Context, Result};
use can_sync::asset::AssetHash;
use can_sync::can::{Can, HttpCan};
use common::process::{serve_can, serve_can_at, serve_can_with, start, start_daemon, terminate};
use common::{assert_converged, await_assets, bundle, TIMEOUT};
use futures::StreamExt;
use tokio::process::Child;

/// A daemon over the CAN at `url`, dialling `peers`; returns it and its ticket.
async fn daemon(url: &str, data_dir: &std::path::Path, peers: &[&str]) -> Result<(Child, String)> {
    daemon_with(url, data_dir, peers, &[]).await
}

/// [`daemon`] with extra arguments.
async fn daemon_with(
    url: &str,
    data_dir: &std::path::Path,
    peers: &[&str],
    extra: &[&str],
) -> Result<(Child, String)> {
    let mut args = vec![
        "--can",
        url,
        "--data-dir",
        data_dir.to_str().context("utf-8 path")?,
        "--listen",
        "127.0.0.1:0",
        "--no-relay",
        "--open",
        "write",
    ];
    for peer in peers {
        args.extend(["--peer", peer]);
    }
    args.extend(extra);
    start_daemon(&args).await
}

/// Two disk-backed CAN servers (A, B) with clients, and a daemon serving A;
/// `dirs[3]` is for B's daemon, which each test starts its own way. The
/// processes die with their `Child`, so a test keeps the whole `Pair`.
struct Pair {
    dirs: Vec<tempfile::TempDir>,
    can_a: Child,
    _can_b: Child,
    url_a: String,
    url_b: String,
    a: HttpCan,
    b: HttpCan,
    daemon_a: Child,
    ticket_a: String,
}

async fn pair() -> Result<Pair> {
    let dirs: Vec<_> = (0..4)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let (can_a, url_a) = serve_can(dirs[0].path()).await?;
    let (can_b, url_b) = serve_can(dirs[1].path()).await?;
    let (a, b) = (HttpCan::new(&url_a)?, HttpCan::new(&url_b)?);
    let (daemon_a, ticket_a) = daemon(&url_a, dirs[2].path(), &[]).await?;
    Ok(Pair {
        dirs,
        can_a,
        _can_b: can_b,
        url_a,
        url_b,
        a,
        b,
        daemon_a,
        ticket_a,
    })
}

async fn push_range(
    can: &dyn Can,
    range: std::ops::Range<u64>,
    len: usize,
) -> Result<Vec<AssetHash>> {
    let mut hashes = Vec::new();
    for i in range {
        let asset = bundle(i, len, 10);
        hashes.push(asset.hash);
        can.push(asset).await?;
    }
    Ok(hashes)
}

/// A loopback address with a port free at the time of asking.
fn free_local_port() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_daemons_converge_and_a_sigterm_mid_transfer_exits_zero() -> Result<()> {
    let pair = pair().await?;
    let http = free_local_port()?;
    let (mut daemon_b, _) = daemon_with(
        &pair.url_b,
        pair.dirs[3].path(),
        &[&pair.ticket_a],
        &["--http", &http],
    )
    .await?;

    // Writes on either side cross while both daemons run.
    let on_a = push_range(&pair.a, 0..20, 2000).await?;
    await_assets(&pair.b, &on_a).await?;
    let on_b = push_range(&pair.b, 100..120, 2000).await?;
    await_assets(&pair.a, &on_b).await?;

    // The daemon's own account of it, on --http. Its per-peer records are
    // updated when an offer's summary comes back, a moment after the bytes
    // land in the other CAN, so wait (bounded) for them to settle.
    let client = can_sync::can::client::http_client_builder()?.build()?;
    let get = |path: &str| client.get(format!("http://{http}{path}")).send();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let status = loop {
        let status: serde_json::Value =
            serde_json::from_str(&get("/status").await?.error_for_status()?.text().await?)?;
        let peer = &status["peers"][0];
        if (
            peer["assets_received"].as_u64(),
            peer["assets_sent"].as_u64(),
        ) == (Some(20), Some(20))
        {
            break status;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "per-peer counts never reached 20/20: {status}"
        );
        // Polling another process's HTTP status: there is no event to await.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status["live_links"], 1, "{status}");
    let peer = &status["peers"][0];
    assert_eq!(
        peer["id"],
        pair.ticket_a.split('@').next().unwrap(),
        "{status}"
    );
    assert_eq!(peer["state"], "live", "{status}");
    let metrics = get("/metrics").await?.error_for_status()?.text().await?;
    for series in [
        "\ncansync_assets_received_total 20\n",
        "\ncansync_assets_sent_total 20\n",
        "\ncansync_live_links 1\n",
    ] {
        assert!(metrics.contains(series), "{series:?} missing: {metrics}");
    }
    let peer_series = format!(
        "\ncansync_peer_assets_received_total{{peer={:?}}} 20\n",
        peer["id"].as_str().unwrap()
    );
    assert!(
        metrics.contains(&peer_series),
        "{peer_series:?} missing: {metrics}"
    );

    // A burst of 1 MiB assets; stop b as soon as the first of them lands.
    let mut arrivals = pair.b.subscribe(None).await?;
    let burst = push_range(&pair.a, 1000..1040, 1 << 20).await?;
    tokio::time::timeout(TIMEOUT, arrivals.next())
        .await
        .context("nothing of the burst arrived")?
        .context("event stream ended")??;
    let status = terminate(&mut daemon_b).await?;
    assert!(status.success(), "SIGTERM must exit 0, got {status}");

    // The next start picks up where it stopped.
    let (_daemon_b, _) = daemon(&pair.url_b, pair.dirs[3].path(), &[&pair.ticket_a]).await?;
    await_assets(&pair.b, &burst).await?;
    assert_converged(&pair.a, &pair.b).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_five_times_mid_transfer_ends_converged() -> Result<()> {
    let pair = pair().await?;
    // 48 MiB in 96 assets: enough that every kill lands mid-transfer.
    let all = push_range(&pair.a, 0..96, 512 * 1024).await?;

    for round in 0..5 {
        let mut arrivals = pair.b.subscribe(None).await?;
        let (mut daemon_b, _) = daemon(&pair.url_b, pair.dirs[3].path(), &[&pair.ticket_a]).await?;
        // Kill as soon as something new lands on B: mid-transfer, by construction.
        tokio::time::timeout(TIMEOUT, arrivals.next())
            .await
            .with_context(|| format!("round {round}: nothing arrived"))?
            .context("event stream ended")??;
        daemon_b.start_kill()?; // SIGKILL
        daemon_b.wait().await?;
        if round == 0 {
            let held = pair.b.stats().await?.assets;
            assert!(
                held < 96,
                "the first kill landed after the transfer ({held} held)"
            );
        }
    }
    let (_daemon_b, _) = daemon(&pair.url_b, pair.dirs[3].path(), &[&pair.ticket_a]).await?;
    await_assets(&pair.b, &all).await?;
    // Every asset verified: the same hashes, metadata and bytes on both sides.
    assert_converged(&pair.a, &pair.b).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_can_server_restarted_under_a_live_agent_loses_no_event() -> Result<()> {
    let mut pair = pair().await?;
    let (_daemon_b, _) = daemon(&pair.url_b, pair.dirs[3].path(), &[&pair.ticket_a]).await?;
    let before = push_range(&pair.a, 0..10, 3000).await?;
    await_assets(&pair.b, &before).await?;

    // Kill A's CAN server under its daemon and bring it back on the same
    // address and folder: the daemon's event stream must resume.
    pair.can_a.start_kill()?;
    pair.can_a.wait().await?;
    let listen = pair.url_a.trim_start_matches("http://");
    let (_can_a, url_again) = serve_can_at(pair.dirs[0].path(), listen).await?;
    assert_eq!(url_again, pair.url_a);
    let after = push_range(&pair.a, 10..40, 3000).await?;
    await_assets(&pair.b, &after).await?;
    assert_converged(&pair.a, &pair.b).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_sets_up_the_daemon_and_flags_override_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (from_file, from_flag) = (free_local_port()?, free_local_port()?);
    let config = dir.path().join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = {:?}\nlisten = \"127.0.0.1:0\"\nno-relay = true\nhttp = {from_file:?}\n",
            dir.path().join("node").display().to_string()
        ),
    )?;
    let config = config.to_str().context("utf-8 path")?;
    let (_daemon, line) = start(&["daemon", "--config", config, "--http", &from_flag]).await?;
    assert!(line.starts_with("ticket "), "{line}");

    // The flag's address serves the node (embedded store: the CAN API too);
    // the file's was overridden and is not bound.
    let client = can_sync::can::client::http_client_builder()?.build()?;
    let status = client
        .get(format!("http://{from_flag}/status"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    assert!(status.contains("\"live_links\":0"), "{status}");
    let health = client
        .get(format!("http://{from_flag}/health"))
        .send()
        .await?;
    assert!(health.status().is_success());
    assert!(client
        .get(format!("http://{from_file}/status"))
        .send()
        .await
        .is_err());
    Ok(())
}

/// The state of the first peer in a daemon's `/status`.
async fn peer_state(client: &reqwest::Client, http: &str) -> Result<String> {
    let text = client
        .get(format!("http://{http}/status"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let status: serde_json::Value = serde_json::from_str(&text)?;
    Ok(status["peers"][0]["state"]
        .as_str()
        .unwrap_or("none")
        .to_string())
}

/// Polls a daemon's `/status` until its first peer is (or is not) `live`.
async fn await_peer_live(client: &reqwest::Client, http: &str, live: bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let state = peer_state(client, http).await?;
        if (state == "live") == live {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "peer still {state}, waiting for live = {live}"
        );
        // Another process's state: there is no event to await, so poll.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_is_noticed_within_seconds_and_rejoined_after() -> Result<()> {
    let pair = pair().await?;
    let http = free_local_port()?;
    let (_daemon_b, _) = daemon_with(
        &pair.url_b,
        pair.dirs[3].path(),
        &[&pair.ticket_a],
        &["--http", &http],
    )
    .await?;
    let client = can_sync::can::client::http_client_builder()?.build()?;
    await_peer_live(&client, &http, true).await?;

    // Freeze A: no packets, no close. B's keep-alive goes unanswered and its
    // idle timeout (10 s) ends the link.
    let pid = pair.daemon_a.id().context("daemon a exited")?.to_string();
    let signal = |sig: &'static str| {
        let pid = pid.clone();
        async move {
            let status = tokio::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .await?;
            anyhow::ensure!(status.success(), "kill {sig} {pid} failed");
            Ok::<_, anyhow::Error>(())
        }
    };
    signal("-STOP").await?;
    let frozen_at = tokio::time::Instant::now();
    await_peer_live(&client, &http, false).await?;
    let noticed_after = frozen_at.elapsed();
    signal("-CONT").await?;
    assert!(
        noticed_after < std::time::Duration::from_secs(20),
        "a frozen peer took {noticed_after:?} to notice"
    );

    // Thawed, A is dialled again and changes flow.
    await_peer_live(&client, &http, true).await?;
    let later = push_range(&pair.a, 500..510, 2000).await?;
    await_assets(&pair.b, &later).await?;
    Ok(())
}

/// A daemon over a CAN server that answers every request `latency_ms` late,
/// with a `seed` of `count` assets into it under way; the daemon is sent
/// SIGTERM as soon as the first of them lands (an error if that was the
/// last), and the test gets everything to judge the stop by.
struct StoppedMidSeed {
    _dirs: Vec<tempfile::TempDir>,
    /// The daemon's store, opened after the daemon exited: no restart, no
    /// re-sync.
    held: can_sync::can::store::EmbeddedCan,
    /// What was sent.
    sent: Vec<AssetHash>,
    daemon_exit: std::process::ExitStatus,
    daemon_stderr: String,
    seed: std::process::Output,
}

async fn stop_mid_seed(count: u64, latency_ms: &str, grace_secs: &str) -> Result<StoppedMidSeed> {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let (can_process, url) =
        serve_can_with(dirs[0].path(), "127.0.0.1:0", &["--latency-ms", latency_ms]).await?;
    let can = HttpCan::new(&url)?;

    // What the seed sends, in an embedded store of its own.
    let source = dirs[1].path().join("source");
    let mut sent = Vec::new();
    {
        let store = can_sync::can::store::EmbeddedCan::open(
            &source,
            can_sync::can::store::StoreLimits::default(),
        )?;
        for i in 0..count {
            let asset = bundle(i, 4096, 10);
            sent.push(asset.hash);
            store.push(asset).await?;
        }
    }

    // The daemon, its stderr kept to read what it says at exit.
    let data_dir = dirs[2].path().to_str().context("utf-8 path")?;
    let mut daemon = tokio::process::Command::new(common::process::BIN)
        .args([
            "daemon",
            "--can",
            &url,
            "--data-dir",
            data_dir,
            "--listen",
            "127.0.0.1:0",
            "--no-relay",
            "--open",
            "write",
            "--shutdown-grace",
            grace_secs,
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdout = tokio::io::BufReader::new(daemon.stdout.take().context("stdout")?);
    let mut first = String::new();
    tokio::time::timeout(
        TIMEOUT,
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut first),
    )
    .await
    .context("no ticket line in time")??;
    let ticket = first
        .trim()
        .strip_prefix("ticket ")
        .with_context(|| format!("daemon's first line is {first:?}"))?
        .to_string();
    let mut stderr = daemon.stderr.take().context("stderr")?;
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });

    let mut arrivals = can.subscribe(None).await?;
    let seed = tokio::process::Command::new(common::process::BIN)
        .args(["seed", "--store", source.to_str().context("utf-8 path")?])
        .args(["--from", &ticket, "--no-relay", "--json"])
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .output();
    let seed = tokio::spawn(async move { tokio::time::timeout(TIMEOUT, seed).await });
    tokio::time::timeout(TIMEOUT, arrivals.next())
        .await
        .context("nothing of the seed arrived")?
        .context("event stream ended")??;
    let held_at_sigterm = can.stats().await?.assets;
    anyhow::ensure!(
        held_at_sigterm < count,
        "the session was over before the SIGTERM ({held_at_sigterm} of {count} held): nothing was in flight"
    );
    let daemon_exit = terminate(&mut daemon).await?;
    let seed = seed.await?.context("the seed did not end")??;
    // The daemon's store as it was left, read directly (its server answers
    // every request late).
    let mut can_process = can_process;
    terminate(&mut can_process).await?;
    let held = can_sync::can::store::EmbeddedCan::open(
        dirs[0].path(),
        can_sync::can::store::StoreLimits::default(),
    )?;
    Ok(StoppedMidSeed {
        _dirs: dirs,
        held,
        sent,
        daemon_exit,
        daemon_stderr: stderr.await?,
        seed,
    })
}

/// SIGTERM in the middle of a peer's session: the session runs to its end,
/// the daemon's store holds every asset when the daemon has exited (counted
/// then, with no restart and no re-sync), and the exit code is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_mid_session_finishes_its_pushes_and_exits_zero() -> Result<()> {
    let stopped = stop_mid_seed(400, "40", "30").await?;
    let total = stopped.sent.len() as u64;
    assert!(
        stopped.daemon_exit.success(),
        "nothing was cut short, so the exit is 0; got {}: {}",
        stopped.daemon_exit,
        stopped.daemon_stderr
    );
    let seed_out = String::from_utf8_lossy(&stopped.seed.stdout);
    assert!(
        stopped.seed.status.success(),
        "the seed completed: {seed_out}"
    );
    let report: serde_json::Value = serde_json::from_str(seed_out.trim())?;
    assert_eq!(report["assets_sent"], total, "{report}");
    // Every asset the peer was told we took is in the store at exit.
    let held = common::snapshot(&stopped.held).await?;
    assert_eq!(held.len() as u64, total);
    assert!(stopped.sent.iter().all(|hash| held.contains_key(hash)));
    Ok(())
}

/// A shutdown whose grace runs out with a session under way says so: it
/// names the session and its peer and exits non-zero, and what it did store
/// is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_runs_out_of_grace_names_what_it_cut_and_exits_non_zero() -> Result<()> {
    let stopped = stop_mid_seed(400, "150", "0").await?;
    assert!(
        !stopped.daemon_exit.success(),
        "a session was cut, so the exit is non-zero: {}",
        stopped.daemon_stderr
    );
    let stderr = &stopped.daemon_stderr;
    assert!(
        stderr.contains("grace period ran out") && stderr.contains("a session with "),
        "the daemon names what it cut: {stderr}"
    );
    assert!(
        !stopped.seed.status.success(),
        "the seed could not complete"
    );
    // Pushes already sent to the CAN server may still land after the cut;
    // whatever did is one of the seed's assets.
    let held = common::snapshot(&stopped.held).await?;
    assert!(held.keys().all(|hash| stopped.sent.contains(hash)));
    // What was stored is whole: every asset read back hashes to its name.
    for hash in held.keys() {
        let pulled = stopped.held.pull(&[*hash]).await?;
        assert_eq!(pulled.bundles.len(), 1);
        assert_eq!(AssetHash::of(&pulled.bundles[0].data), *hash);
    }
    Ok(())
}

/// `GET /status` of the daemon serving `--http` on `http`.
async fn status(client: &reqwest::Client, http: &str) -> Result<serde_json::Value> {
    let text = client
        .get(format!("http://{http}/status"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(serde_json::from_str(&text)?)
}

/// A loopback UDP address with a port free at the time of asking.
fn free_udp_port() -> Result<String> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(socket.local_addr()?.to_string())
}

/// `serve-can` on a disk store in `dir` that sends response bodies at
/// 10 MB/s, holding one large asset of `size` bytes; returns the server,
/// its URL and the asset's hash.
async fn throttled_can_holding(
    dir: &std::path::Path,
    data: &bytes::Bytes,
) -> Result<(Child, String)> {
    let (child, url) = serve_can_with(dir, "127.0.0.1:0", &["--bandwidth", "10000000"]).await?;
    let body = futures::stream::iter([Ok(data.clone())]);
    let meta = can_sync::pb::AssetMeta {
        name: "large.bin".into(),
        ..Default::default()
    };
    HttpCan::new(&url)?
        .write_blob(AssetHash::of(data), meta, Box::pin(body))
        .await?;
    Ok((child, url))
}

/// When the second source of a large asset joins daemon B's transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Join {
    /// C is up when B starts, and B dials it with A.
    AtStart,
    /// C is down when B starts; B dials it until it comes up mid-asset.
    Redialled,
    /// B does not know C; C comes up mid-asset and dials B, whose access is
    /// open: B pulls as the responder of the session.
    Dials,
    /// C is up from the start, and A is killed (SIGKILL) once B holds part
    /// of the asset: C sends the rest.
    FirstKilled,
}

impl Join {
    /// Whether C comes up only once the asset is under way.
    fn comes_later(self) -> bool {
        matches!(self, Self::Redialled | Self::Dials)
    }
}

/// How two sources shared one large asset, out of process.
struct Shared {
    /// Bytes of it daemon B held (in part) when C came up, or when A was
    /// killed.
    held_before: u64,
    /// The most peers B's `/status` named as sending it at once.
    most_senders: usize,
    /// Payload bytes each source's daemon sent (A: by the kill).
    from_a: u64,
    from_c: u64,
}

/// Daemon B (an embedded store) pulls one 128 MiB asset from daemons A and
/// C, each over a CAN server that holds it and sends bodies at 10 MB/s; C
/// joins as `join` says. Checks that B ends with the asset whole, and says
/// how the sources shared it.
async fn share_a_large_asset(join: Join) -> Result<Shared> {
    const MIB: usize = 1024 * 1024;
    let dirs: Vec<_> = (0..5)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut data = vec![0u8; 128 * MIB + 4321];
    blake3::Hasher::new()
        .update(b"one large asset from two sources")
        .finalize_xof()
        .fill(&mut data);
    let data = bytes::Bytes::from(data);
    let hash = AssetHash::of(&data);
    let (_can_a, url_a) = throttled_can_holding(dirs[0].path(), &data).await?;
    let (_can_c, url_c) = throttled_can_holding(dirs[1].path(), &data).await?;
    drop(data);

    let (http_a, http_b, http_c) = (free_local_port()?, free_local_port()?, free_local_port()?);
    let listen_c = free_udp_port()?;
    // Where C's status is read: a C that dials in comes back on this port.
    let http_c_later = free_local_port()?;
    let mut http_c_now = &http_c;
    let mut args_c = vec![
        "daemon",
        "--can",
        &url_c,
        "--data-dir",
        dirs[4].path().to_str().context("utf-8 path")?,
        "--listen",
        &listen_c,
        "--no-relay",
        "--open",
        "write",
        "--http",
        &http_c,
    ];
    // C's first start makes its key and tells its ticket; it stays up only
    // when it joins at the start.
    let (mut daemon_c, ticket_c) = start_daemon(&args_c[1..]).await?;
    if join.comes_later() {
        terminate(&mut daemon_c).await?;
    }
    let (mut daemon_a, ticket_a) =
        daemon_with(&url_a, dirs[2].path(), &[], &["--http", &http_a]).await?;
    let mut args_b = vec![
        "--data-dir",
        dirs[3].path().to_str().context("utf-8 path")?,
        "--listen",
        "127.0.0.1:0",
        "--no-relay",
        "--peer",
        &ticket_a,
        "--http",
        &http_b,
    ];
    match join {
        Join::AtStart | Join::Redialled | Join::FirstKilled => args_b.extend(["--peer", &ticket_c]),
        Join::Dials => args_b.extend(["--open", "write"]),
    }
    let (_daemon_b, ticket_b) = start_daemon(&args_b).await?;
    let client = can_sync::can::client::http_client_builder()?.build()?;
    // Polling other processes' HTTP status: there is no event to await.
    let poll = std::time::Duration::from_millis(50);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let (mut held_before, mut from_a_at_kill) = (0, 0);
    if join != Join::AtStart {
        // Under way: some groups held (to kill A, a few leases, some of
        // them A's delivered and some in flight).
        let enough = match join {
            Join::FirstKilled => 48 << 20,
            _ => 1,
        };
        held_before = loop {
            let b = status(&client, &http_b).await?;
            if let Some(held) = b["partial_assets"][0]["held"]
                .as_u64()
                .filter(|h| *h >= enough)
            {
                break held;
            }
            anyhow::ensure!(
                b["store"]["assets"] == 0,
                "the asset came whole before it was seen in part: {b}"
            );
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "never under way: {b}"
            );
            tokio::time::sleep(poll).await;
        };
        if join == Join::FirstKilled {
            from_a_at_kill = status(&client, &http_a).await?["payload_bytes"]
                .as_u64()
                .unwrap_or(0);
            daemon_a.start_kill()?;
            daemon_a.wait().await?;
        } else {
            if join == Join::Dials {
                // B needs no address of C: C comes back on fresh ports, so
                // no port taken meanwhile can fail its start.
                for (flag, value) in [("--listen", "127.0.0.1:0"), ("--http", &http_c_later)] {
                    let at = args_c.iter().position(|arg| *arg == flag);
                    args_c[at.context("a flag of C's")? + 1] = value;
                }
                http_c_now = &http_c_later;
                args_c.extend(["--peer", &ticket_b]);
            }
            daemon_c = start(&args_c).await?.0;
        }
    }
    let mut most_senders = 0;
    loop {
        let b = status(&client, &http_b).await?;
        if b["store"]["assets"] == 1 {
            break;
        }
        if let Some(from) = b["partial_assets"][0]["from"].as_array() {
            most_senders = most_senders.max(from.len());
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never whole: {b}");
        tokio::time::sleep(poll).await;
    }
    let sent = |status: serde_json::Value| status["payload_bytes"].as_u64().unwrap_or(0);
    let shared = Shared {
        held_before,
        most_senders,
        from_a: match join {
            Join::FirstKilled => from_a_at_kill,
            _ => sent(status(&client, &http_a).await?),
        },
        from_c: sent(status(&client, http_c_now).await?),
    };
    drop(daemon_c);
    let b = HttpCan::new(&format!("http://{http_b}"))?;
    let (_, mut body) = b.read_blob(hash, 0).await?;
    let mut hasher = blake3::Hasher::new();
    while let Some(piece) = body.next().await {
        hasher.update(&piece?);
    }
    anyhow::ensure!(
        AssetHash::from(hasher.finalize()) == hash,
        "B holds it whole"
    );
    Ok(shared)
}

/// Each source sent part of the asset, and together every group once but
/// for a lease taken again at the end.
fn assert_each_sent_part(shared: &Shared) {
    const SIZE: u64 = 128 * 1024 * 1024 + 4321;
    let Shared {
        held_before,
        most_senders,
        from_a,
        from_c,
    } = *shared;
    eprintln!(
        "{held_before} bytes held when C came; A sent {from_a}, C {from_c}; \
         at most {most_senders} senders at once"
    );
    let lease = can_sync::engine::split::LEASE_GROUPS * 1024 * 1024;
    assert_eq!(most_senders, 2, "B's status named both sources at once");
    assert!(
        from_c >= lease && from_a > held_before,
        "each source sent part, C a lease at least: A {from_a} (of which {held_before} \
         before C came), C {from_c}"
    );
    // Under load the paces may differ enough for a second lease to be taken
    // again.
    let retaken = 2 * lease;
    assert!(
        (SIZE..=SIZE + retaken).contains(&(from_a + from_c)),
        "every group once but a lease taken again: {} bytes for {SIZE}",
        from_a + from_c
    );
}

/// A daemon whose two peers both hold a large asset it lacks pulls ranges
/// of it from each at once, as users run them (the in-process checks are in
/// `tests/sources.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_pulls_one_large_asset_from_two_peers_at_once() -> Result<()> {
    assert_each_sent_part(&share_a_large_asset(Join::AtStart).await?);
    Ok(())
}

/// A peer that comes up while a large asset is under way from another
/// takes part of it: the daemon redials it, and the new session leases the
/// groups still free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_comes_up_mid_asset_sends_part_of_it() -> Result<()> {
    assert_each_sent_part(&share_a_large_asset(Join::Redialled).await?);
    Ok(())
}

/// A peer the daemon does not know that dials it mid-asset takes part of
/// it too: the daemon, the responder of that session, leases the asset
/// split now, by the size the initiator gave with what it lacks (or, from
/// a peer that gives none, by the size its split has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_dials_mid_asset_sends_part_of_it() -> Result<()> {
    assert_each_sent_part(&share_a_large_asset(Join::Dials).await?);
    Ok(())
}

/// A source killed mid-asset leaves the rest to the other: the daemon ends
/// with the asset whole, everything it lacked at the kill sent by the peer
/// still up, and of what A had sent only what never reached B again: C
/// takes A's leases again from where their deliveries had come to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_killed_mid_asset_leaves_the_rest_to_the_other() -> Result<()> {
    const SIZE: u64 = 128 * 1024 * 1024 + 4321;
    let shared = share_a_large_asset(Join::FirstKilled).await?;
    let (held, from_a, from_c) = (shared.held_before, shared.from_a, shared.from_c);
    eprintln!("{held} bytes held when A was killed, A had sent {from_a}; C sent {from_c}");
    assert!(
        from_c >= SIZE - held,
        "C sent at least what B lacked at the kill ({} bytes): {from_c}",
        SIZE - held
    );
    // A counts a group sent once it is in its QUIC send buffer: what it had
    // sent that never reached B when it died (at most a stream's receive
    // window and a group in the making, on each of its streams) is sent
    // again by C; nothing more.
    let streams = u64::from(can_sync::engine::EngineConfig::default().streams);
    let group = can_sync::can::store::ranges::GROUP_BYTES;
    let window = u64::from(can_sync::node::endpoint::STREAM_RECEIVE_WINDOW);
    let lost_with_a = streams * (window + group);
    assert!(
        from_a + from_c <= SIZE + lost_with_a,
        "A's delivered groups sent again: A {from_a} and C {from_c} for {SIZE}"
    );
    Ok(())
}
