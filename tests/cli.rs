//! The binary as users run it: real `serve-can`, `daemon` and `seed` processes
//! on loopback, and a disk store that survives SIGKILL.

mod common;

use std::ffi::OsStr;

use anyhow::{bail, ensure, Context, Result};
use can_sync::asset::AssetHash;
use can_sync::can::{Can, EmbeddedCan, HttpCan, StoreLimits};
use common::process::{serve_can, start, start_daemon, BIN};
use common::{assert_converged, bundle, TIMEOUT};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_can_daemon_and_seed_bring_everything_across_both_ways() -> Result<()> {
    let dirs = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let (_can_a, url_a) = serve_can(dirs.0.path()).await?;
    let (_can_b, url_b) = serve_can(dirs.1.path()).await?;
    let (a, b) = (HttpCan::new(&url_a)?, HttpCan::new(&url_b)?);
    for i in 0..40 {
        a.push(bundle(i, 1500, 10)).await?;
    }
    for i in 30..70 {
        b.push(bundle(i, 1500, if i < 35 { 20 } else { 10 }))
            .await?;
    }

    let data_dir = dirs.2.path().to_str().unwrap();
    let (_daemon, line) = start(&[
        "daemon",
        "--can",
        &url_a,
        "--data-dir",
        data_dir,
        "--listen",
        "127.0.0.1:0",
        "--no-relay",
        "--open",
        "write",
    ])
    .await?;
    let ticket = line
        .strip_prefix("ticket ")
        .with_context(|| format!("daemon's first line is {line:?}"))?;

    let seed = tokio::time::timeout(
        TIMEOUT,
        Command::new(BIN)
            .args([
                "seed",
                "--can",
                &url_b,
                "--from",
                ticket,
                "--json",
                "--no-relay",
            ])
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await??;
    assert!(
        seed.status.success(),
        "seed failed: {}",
        String::from_utf8_lossy(&seed.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&seed.stdout)?;
    assert_eq!(result["assets_received"], 30);
    assert_eq!(result["assets_sent"], 30);
    assert_eq!(result["rejected"], 0);
    assert!(
        result["wire_bytes"].as_u64().unwrap() > result["bytes"].as_u64().unwrap(),
        "incompressible assets cost more on the wire than their payload: {result}"
    );
    assert_converged(&a, &b).await?;

    // The ticket command prints what the daemon announced.
    let printed = Command::new(BIN)
        .args(["ticket", "--data-dir", data_dir])
        .output()
        .await?;
    assert_eq!(String::from_utf8(printed.stdout)?.trim(), ticket);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_keeps_its_endpoint_id_across_restarts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_str().unwrap();
    let id =
        |out: std::process::Output| String::from_utf8(out.stdout).map(|s| s.trim().to_string());
    let before = id(Command::new(BIN)
        .args(["id", "--data-dir", data_dir])
        .output()
        .await?)?;
    let (mut daemon, line) = start(&[
        "daemon",
        "--data-dir",
        data_dir,
        "--listen",
        "127.0.0.1:0",
        "--no-relay",
        "--open",
        "write",
    ])
    .await?;
    assert!(line.starts_with(&format!("ticket {before}@")), "{line}");
    daemon.kill().await?;
    let (_again, line) = start(&[
        "daemon",
        "--data-dir",
        data_dir,
        "--listen",
        "127.0.0.1:0",
        "--no-relay",
        "--open",
        "write",
    ])
    .await?;
    assert!(line.starts_with(&format!("ticket {before}@")), "{line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_store_keeps_every_acknowledged_asset_through_sigkill() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut server, url) = serve_can(dir.path()).await?;
    let client = HttpCan::new(&url)?;

    // Push from several tasks; record each acknowledgement; kill mid-flight.
    let (acked_tx, acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut pushers = Vec::new();
    for worker in 0..4u64 {
        let client = client.clone();
        let acked_tx = acked_tx.clone();
        pushers.push(tokio::spawn(async move {
            for i in 0.. {
                let asset = bundle(worker * 1_000_000 + i, 64 * 1024, 1);
                let hash = asset.hash;
                if client.push(asset).await.is_err() {
                    return;
                }
                if acked_tx.send(vec![hash]).is_err() {
                    return;
                }
            }
        }));
    }
    drop(acked_tx);
    let acked = kill_while_pushing(&mut server, acked_rx, pushers, 100).await?;
    check_after_kill(dir.path(), &acked).await
}

/// Waits for `at_least` acknowledged assets, SIGKILLs `server` while the
/// pushers go on, and returns every asset acknowledged before it died.
async fn kill_while_pushing(
    server: &mut tokio::process::Child,
    mut acked_rx: tokio::sync::mpsc::UnboundedReceiver<Vec<AssetHash>>,
    pushers: Vec<tokio::task::JoinHandle<()>>,
    at_least: usize,
) -> Result<Vec<AssetHash>> {
    let mut acked = Vec::new();
    while acked.len() < at_least {
        let hashes = tokio::time::timeout(TIMEOUT, acked_rx.recv())
            .await?
            .context("pushers stopped")?;
        acked.extend(hashes);
    }
    server.start_kill()?; // SIGKILL
    server.wait().await?;
    for pusher in pushers {
        pusher.await?;
    }
    while let Ok(hashes) = acked_rx.try_recv() {
        acked.extend(hashes);
    }
    Ok(acked)
}

/// After a kill: every acknowledged asset is in the reopened store, whole;
/// every asset the store lists reads back as the bytes its hash names; and
/// no file under blobs/ is anything but the whole asset its name says.
async fn check_after_kill(dir: &std::path::Path, acked: &[AssetHash]) -> Result<()> {
    let store = EmbeddedCan::open(dir, StoreLimits::default())?;
    for hash in acked {
        let hash: AssetHash = *hash;
        assert!(
            store.meta(hash).await?.is_some(),
            "acknowledged asset {hash} lost"
        );
    }
    let mut listed = 0;
    let mut after = None;
    loop {
        let page = store.list_page(after, 500).await?;
        let hashes: Vec<AssetHash> = page.items.iter().map(|s| s.hash).collect();
        let pulled = store.pull(&hashes).await?;
        ensure!(
            pulled.missing.is_empty(),
            "listed but unreadable: {:?}",
            pulled.missing
        );
        for bundle in pulled.bundles {
            ensure!(
                AssetHash::of(&bundle.data) == bundle.hash,
                "half asset under {}",
                bundle.hash
            );
            listed += 1;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert!(listed >= acked.len());
    for shard in std::fs::read_dir(dir.join("blobs"))? {
        for file in std::fs::read_dir(shard?.path())? {
            let file = file?;
            let name = file.file_name().into_string().unwrap();
            let data = std::fs::read(file.path())?;
            if AssetHash::of(&data).to_hex() != name {
                bail!("half-written blob under {name}");
            }
        }
    }
    Ok(())
}

/// Batches of small assets (packed into segments) and larger ones (files),
/// pushed through `POST /sync/push-batch` from several tasks; SIGKILL while
/// they are in flight. Every acknowledged batch is whole after a reopen, and
/// nothing half-written is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_survive_sigkill_whole_or_not_at_all() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut server, url) = serve_can(dir.path()).await?;
    let client = HttpCan::new(&url)?;

    let (acked_tx, acked_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<AssetHash>>();
    let mut pushers = Vec::new();
    for worker in 0..4u64 {
        let client = client.clone();
        let acked_tx = acked_tx.clone();
        pushers.push(tokio::spawn(async move {
            for round in 0.. {
                let batch: Vec<_> = (0..32u64)
                    .map(|i| {
                        // One in eight is larger than the packed limit
                        // (256 KiB): a file; the others are packed.
                        let size = if i % 8 == 0 { 300 * 1024 } else { 4 * 1024 };
                        let seed = worker * 1_000_000_000 + round * 1_000 + i;
                        bundle(seed, size, 1).verify().expect("our own bytes")
                    })
                    .collect();
                let hashes: Vec<AssetHash> = batch.iter().map(|b| b.hash()).collect();
                match client.push_batch(batch).await {
                    Ok(answers) if answers.iter().all(|a| a.is_ok()) => {}
                    _ => return,
                }
                if acked_tx.send(hashes).is_err() {
                    return;
                }
            }
        }));
    }
    drop(acked_tx);
    let acked = kill_while_pushing(&mut server, acked_rx, pushers, 40 * 32).await?;
    check_after_kill(dir.path(), &acked).await
}

/// A daemon whose --http would serve its embedded store's CAN API beyond
/// loopback refuses to start without a write token, and says what to do.
#[tokio::test]
async fn daemon_refuses_an_open_can_api_beyond_loopback() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_str().context("utf-8 path")?;
    let refused = tokio::time::timeout(
        TIMEOUT,
        Command::new(BIN)
            .args([
                "daemon",
                "--data-dir",
                data_dir,
                "--listen",
                "127.0.0.1:0",
                "--http",
                "0.0.0.0:0",
                "--no-relay",
                "--open",
                "write",
            ])
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await??;
    assert!(!refused.status.success(), "started without a token");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--http-token"), "{stderr}");
    assert!(refused.stdout.is_empty(), "printed a ticket: {refused:?}");
    Ok(())
}

/// `serve-can --token`: a client without the token is refused its writes
/// with a 401 that names the fix; `--can-token` (or its environment
/// variable) writes; GET reads need no token (every other method does,
/// POST reads included: see the server's guard). Beyond loopback, serve-can refuses
/// to start without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_can_server_with_a_token_takes_writes_only_from_clients_that_give_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let (_server, line) = start(&[
        "serve-can",
        "--listen",
        "127.0.0.1:0",
        "--dir",
        store.to_str().context("utf-8")?,
        "--token",
        "s3cret",
    ])
    .await?;
    let url = line
        .strip_prefix("listening ")
        .with_context(|| format!("unexpected first line {line:?}"))?;
    let file = dir.path().join("note.txt");
    std::fs::write(&file, b"guarded")?;
    let add = |token: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(["add", "--can", url, "--json", file.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .env_remove("CAN_SYNC_CAN_TOKEN");
        if let Some(token) = token {
            command.env("CAN_SYNC_CAN_TOKEN", token);
        }
        tokio::time::timeout(TIMEOUT, command.output())
    };
    let refused = add(None).await??;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!refused.status.success(), "added without the token: {said}");
    assert!(said.contains("bearer token"), "{said}");
    let wrong = add(Some("guess")).await??;
    assert!(!wrong.status.success(), "added with a wrong token");

    let added = add(Some("s3cret")).await??;
    ensure!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let reader = HttpCan::new(url)?;
    assert_eq!(reader.stats().await?.assets, 1, "GET reads need no token");
    let hash = AssetHash::of(b"guarded");
    assert!(reader.meta(hash).await?.is_some());

    let open = tokio::time::timeout(
        TIMEOUT,
        Command::new(BIN)
            .args(["serve-can", "--listen", "0.0.0.0:0", "--memory"])
            .env("RUST_LOG", "warn")
            .env_remove("CAN_SYNC_TOKEN")
            .output(),
    )
    .await??;
    assert!(!open.status.success(), "served writes to anyone");
    assert!(String::from_utf8_lossy(&open.stderr).contains("--token"));
    Ok(())
}

/// `add` a folder tree and a file, `export` it back: the same files under
/// the same names; a second `add` finds everything present; a store a
/// running daemon holds is refused with the way to reach it instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_then_export_gives_back_the_same_files() -> Result<()> {
    let work = tempfile::tempdir()?;
    let source = work.path().join("photos");
    std::fs::create_dir_all(source.join("2026/summer"))?;
    let files = [
        ("2026/summer/beach.jpg", 3_000usize),
        ("2026/notes.txt", 10),
        ("big.bin", 20 * 1024 * 1024),
        ("empty", 0),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        let data: Vec<u8> = (0..*len).map(|b| (b * (i + 3) % 251) as u8).collect();
        std::fs::write(source.join(name), data)?;
    }
    let single = work.path().join("single.json");
    std::fs::write(&single, br#"{"one": 1}"#)?;
    let node = work.path().join("node");
    let node_dir = node.to_str().context("utf-8")?;

    let add = |paths: Vec<String>| {
        let mut args = vec!["add".to_string(), "--data-dir".into(), node_dir.into()];
        args.extend(paths);
        args.push("--json".into());
        tokio::time::timeout(
            TIMEOUT,
            Command::new(BIN)
                .args(&args)
                .env("RUST_LOG", "warn")
                .output(),
        )
    };
    let paths = vec![
        source.to_str().context("utf-8")?.to_string(),
        single.to_str().context("utf-8")?.to_string(),
    ];
    let first = add(paths.clone()).await??;
    ensure!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&first.stdout)?;
    assert_eq!(result["added"], 5, "{result}");
    assert_eq!(result["failed"], 0);
    let again: serde_json::Value = serde_json::from_slice(&add(paths).await??.stdout)?;
    assert_eq!(
        (again["added"].clone(), again["already_present"].clone()),
        (0.into(), 5.into())
    );

    let out = work.path().join("out");
    let export = tokio::time::timeout(
        TIMEOUT,
        Command::new(BIN)
            .args(["export", "--data-dir", node_dir, "--to"])
            .arg(&out)
            .arg("--json")
            .output(),
    )
    .await??;
    ensure!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    for (name, _) in files {
        assert_eq!(
            std::fs::read(out.join(name))?,
            std::fs::read(source.join(name))?,
            "{name}"
        );
    }
    assert_eq!(std::fs::read(out.join("single.json"))?, br#"{"one": 1}"#);

    // A daemon on the node holds its store: add says how to reach it.
    let (_daemon, _) = start(&[
        "daemon",
        "--data-dir",
        node_dir,
        "--listen",
        "127.0.0.1:0",
        "--no-relay",
        "--open",
        "write",
    ])
    .await?;
    let held = add(vec![single.to_str().context("utf-8")?.to_string()]).await??;
    assert!(!held.status.success());
    let stderr = String::from_utf8_lossy(&held.stderr);
    assert!(
        stderr.contains("--can") && stderr.contains("--http"),
        "{stderr}"
    );
    Ok(())
}

/// `add` puts small files into an embedded store in hash order, the asset
/// table's key order, whatever order the walk finds them in: the store's
/// change log, which numbers writes as they commit, lists them by hash.
/// More files than one read chunk (128), so the order holds across chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_puts_small_files_in_by_hash() -> Result<()> {
    let work = tempfile::tempdir()?;
    let source = work.path().join("tree");
    let mut written = Vec::new();
    for i in 0..300u32 {
        let folder = source.join(format!("d{}", i / 100));
        std::fs::create_dir_all(&folder)?;
        let data = format!("file {i}");
        std::fs::write(folder.join(format!("f{i:03}")), &data)?;
        written.push(AssetHash::of(data.as_bytes()));
    }
    let store = work.path().join("store");
    let added = tokio::time::timeout(
        TIMEOUT,
        Command::new(BIN)
            .arg("add")
            .arg("--store")
            .arg(&store)
            .arg(&source)
            .arg("--json")
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await??;
    ensure!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&added.stdout)?;
    assert_eq!(result["added"], 300, "{result}");

    let can = EmbeddedCan::open(&store, StoreLimits::default())?;
    let mut in_commit_order = Vec::new();
    let mut after = 0;
    loop {
        let page = can.changes(after, 1000).await?;
        if page.changes.is_empty() {
            break;
        }
        in_commit_order.extend(page.changes.iter().map(|change| change.summary.hash));
        after = page.next_after;
    }
    let mut by_hash = written.clone();
    by_hash.sort();
    assert_ne!(
        written, by_hash,
        "the walk's order must differ from hash order"
    );
    assert_eq!(in_commit_order, by_hash, "not added in hash order");
    Ok(())
}

/// `status` finds the daemon through its data folder and shows the peer a
/// seed session made, as a table and as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_daemons_peers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("node");
    let data_dir = data_dir.to_str().context("utf-8")?;
    let (_daemon, line) = start(&[
        "daemon",
        "--data-dir",
        data_dir,
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--no-relay",
        "--open",
        "write",
    ])
    .await?;
    let ticket = line.strip_prefix("ticket ").context("ticket line")?;
    let seeded = dir.path().join("seeded");
    let seed = tokio::time::timeout(
        TIMEOUT,
        Command::new(BIN)
            .args(["seed", "--store"])
            .arg(&seeded)
            .args(["--from", ticket, "--no-relay", "--json"])
            .output(),
    )
    .await??;
    ensure!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );
    let status = |extra: &'static [&'static str]| {
        tokio::time::timeout(
            TIMEOUT,
            Command::new(BIN)
                .args(["status", "--data-dir", data_dir])
                .args(extra)
                .output(),
        )
    };
    let table = status(&[]).await??;
    ensure!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("PEER") && text.contains("LAST SYNC"),
        "{text}"
    );
    assert_eq!(
        text.lines().count(),
        3,
        "the node, the header, one peer: {text}"
    );
    let json: serde_json::Value = serde_json::from_slice(&status(&["--json"]).await??.stdout)?;
    assert_eq!(json["peers"].as_array().map(Vec::len), Some(1), "{json}");
    Ok(())
}

/// Completions and man pages come from the clap definitions: every command
/// is in them.
#[tokio::test]
async fn completions_and_man_pages_cover_every_command() -> Result<()> {
    let bash = tokio::time::timeout(
        TIMEOUT,
        Command::new(BIN).args(["completions", "bash"]).output(),
    )
    .await??;
    ensure!(
        bash.status.success(),
        "{}",
        String::from_utf8_lossy(&bash.stderr)
    );
    let script = String::from_utf8(bash.stdout)?;
    for command in ["daemon", "seed", "add", "export", "status", "serve-can"] {
        assert!(script.contains(command), "bash completion lacks {command}");
    }
    let dir = tempfile::tempdir()?;
    let man = tokio::time::timeout(
        TIMEOUT,
        Command::new(BIN)
            .args(["man", "--out"])
            .arg(dir.path())
            .output(),
    )
    .await??;
    ensure!(
        man.status.success(),
        "{}",
        String::from_utf8_lossy(&man.stderr)
    );
    let page = std::fs::read_to_string(dir.path().join("can-sync-add.1"))?;
    assert!(
        page.contains(".TH") && page.contains("data\\-dir"),
        "{page}"
    );
    Ok(())
}

/// Under a pseudo-terminal `seed` draws its progress (the phase by name,
/// then the bar) on stderr and clears it before its result; with stderr
/// not a terminal it draws nothing. `script` (util-linux, in Debian's
/// essential bsdutils) provides the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_shows_its_progress_only_on_a_terminal() -> Result<()> {
    if Command::new("script")
        .arg("--version")
        .output()
        .await
        .is_err()
    {
        bail!("`script` (util-linux) is needed for this test: apt-get install bsdutils");
    }
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("source");
    std::fs::create_dir_all(&source)?;
    for i in 0..200u32 {
        let data: Vec<u8> = (0..64 * 1024u32).map(|b| (b ^ (i * 7)) as u8).collect();
        std::fs::write(source.join(format!("f{i}")), data)?;
    }
    let node = dir.path().join("node");
    let added = Command::new(BIN)
        .args(["add", "--data-dir"])
        .arg(&node)
        .arg(&source)
        .output()
        .await?;
    ensure!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let (_daemon, line) = start(&[
        "daemon",
        "--data-dir",
        node.to_str().context("utf-8")?,
        "--listen",
        "127.0.0.1:0",
        "--no-relay",
        "--open",
        "write",
    ])
    .await?;
    let ticket = line.strip_prefix("ticket ").context("ticket line")?;

    let seed = |store: &str| {
        format!(
            "{BIN} seed --store {} --from {ticket} --no-relay",
            dir.path().join(store).display()
        )
    };
    let on_terminal = tokio::time::timeout(
        TIMEOUT,
        Command::new("script")
            .args(["-qefc", &seed("tty"), "/dev/null"])
            .output(),
    )
    .await??;
    ensure!(
        on_terminal.status.success(),
        "{}",
        String::from_utf8_lossy(&on_terminal.stdout)
    );
    let screen = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(
        ["connecting", "reconciling", "transferring", "finishing"]
            .iter()
            .any(|phase| screen.contains(phase)),
        "no phase drawn: {screen:?}"
    );
    assert!(screen.contains("received 200 assets"), "{screen:?}");

    let piped = tokio::time::timeout(
        TIMEOUT,
        Command::new("sh").args(["-c", &seed("pipe")]).output(),
    )
    .await??;
    ensure!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !stderr.contains("connecting") && !stderr.contains('\u{1b}'),
        "{stderr:?}"
    );
    Ok(())
}

/// `demo`, the README's main job, at a small size: both nodes end in sync
/// and it says so.
#[tokio::test]
async fn the_demo_ends_in_sync() -> Result<()> {
    let demo = tokio::time::timeout(
        TIMEOUT,
        Command::new(BIN)
            .args([
                "demo",
                "--assets",
                "60",
                "--assets-back",
                "6",
                "--max-kib",
                "64",
            ])
            .output(),
    )
    .await??;
    ensure!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let out = String::from_utf8_lossy(&demo.stdout);
    assert!(
        out.contains("b received 60 assets and sent 6 back"),
        "{out}"
    );
    assert!(
        out.contains("a holds 66 assets") && out.trim_end().ends_with("in sync."),
        "{out}"
    );
    Ok(())
}

/// A daemon on a disk store in `dir/name` holding the assets `range`
/// (`bundle(i, 1500, 10)`), open for reading; with its ticket.
async fn daemon_holding(
    dir: &std::path::Path,
    name: &str,
    range: std::ops::Range<u64>,
) -> Result<(tokio::process::Child, String)> {
    let store = dir.join(name);
    {
        let can = EmbeddedCan::open(&store, StoreLimits::default())?;
        for i in range {
            can.push(bundle(i, 1500, 10)).await?;
        }
    }
    daemon_open_to_read(&store, &dir.join(format!("{name}-node"))).await
}

/// A daemon on the embedded store in `store`, run from `node`, open for
/// reading to anyone (loopback, no relay); with its ticket.
async fn daemon_open_to_read(
    store: &std::path::Path,
    node: &std::path::Path,
) -> Result<(tokio::process::Child, String)> {
    start_daemon(&[
        "--store",
        store.to_str().context("utf-8")?,
        "--data-dir",
        node.to_str().context("utf-8")?,
        "--listen",
        "127.0.0.1:0",
        "--no-relay",
        "--open",
        "read",
    ])
    .await
}

/// `seed --json` into `store` from each of `tickets`.
async fn seed_from(store: &std::path::Path, tickets: &[&str]) -> Result<std::process::Output> {
    let mut seed = Command::new(BIN);
    seed.args(["seed", "--store"]).arg(store);
    for ticket in tickets {
        seed.args(["--from", ticket]);
    }
    let seed = seed
        .args(["--no-relay", "--json"])
        .env("RUST_LOG", "warn")
        .output();
    Ok(tokio::time::timeout(TIMEOUT, seed).await??)
}

/// `seed --from A --from B` pulls from both daemons at once: a new store
/// ends with the union of their archives, each asset received once, and
/// the one JSON line sums both sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_from_two_daemons_takes_the_union_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_a, ticket_a) = daemon_holding(dir.path(), "a", 0..30).await?;
    let (_b, ticket_b) = daemon_holding(dir.path(), "b", 20..50).await?;
    let seeded = dir.path().join("seeded");
    let seed = seed_from(&seeded, &[&ticket_a, &ticket_b]).await?;
    ensure!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&seed.stdout)?;
    assert_eq!(result["assets_received"], 50, "{result}");
    assert_eq!(result["rejected"], 0, "{result}");
    let can = EmbeddedCan::open(&seeded, StoreLimits::default())?;
    for i in 0..50 {
        assert!(
            can.meta(bundle(i, 1500, 10).hash).await?.is_some(),
            "asset {i}"
        );
    }
    Ok(())
}

/// Overwrites the records of `hashes` in the closed store at `store` with
/// bytes that do not decode, as damage behind the store's back might.
fn damage_records(store: &std::path::Path, hashes: &[AssetHash]) -> Result<()> {
    let assets: redb::TableDefinition<[u8; 32], &[u8]> = redb::TableDefinition::new("assets");
    let db = redb::Database::open(store.join("meta.redb"))?;
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(assets)?;
        for hash in hashes {
            table.insert(*hash.as_bytes(), &b"not a record"[..])?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// A daemon whose store holds damaged records serves every other asset: a
/// seed from it takes them all and succeeds, and the daemon names the
/// damaged records in its log rather than failing the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_with_damaged_records_serves_the_rest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("a");
    let mut hashes: Vec<AssetHash> = (0..30).map(|i| bundle(i, 1500, 10).hash).collect();
    {
        let can = EmbeddedCan::open(&store, StoreLimits::default())?;
        for i in 0..30 {
            can.push(bundle(i, 1500, 10)).await?;
        }
    }
    hashes.sort();
    // The first in hash order, so that the first page fails at once, and
    // one in the middle.
    let damaged = [hashes[0], hashes[15]];
    damage_records(&store, &damaged)?;
    let node = dir.path().join("a-node");
    let (_daemon, ticket) = daemon_open_to_read(&store, &node).await?;
    let seeded = dir.path().join("seeded");
    let seed = seed_from(&seeded, &[&ticket]).await?;
    ensure!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&seed.stdout)?;
    assert_eq!(result["assets_received"], 28, "{result}");
    let can = EmbeddedCan::open(&seeded, StoreLimits::default())?;
    for hash in &hashes {
        let held = can.meta(*hash).await?.is_some();
        assert_eq!(held, !damaged.contains(hash), "{hash}");
    }
    Ok(())
}

/// A seed does not say "in sync" when its source lists an asset it cannot
/// send (its blob file is gone): the seed takes the rest, counts the asset
/// among the rejected, names it, and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_names_what_its_source_listed_and_never_sent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("a");
    let large = bundle(50, 2_000_000, 10);
    {
        let can = EmbeddedCan::open(&store, StoreLimits::default())?;
        for i in 0..20 {
            can.push(bundle(i, 1500, 10)).await?;
        }
        can.push(large.clone()).await?;
    }
    let hex = large.hash.to_hex();
    std::fs::remove_file(store.join("blobs").join(&hex[..2]).join(&hex))?;
    let node = dir.path().join("a-node");
    let (_daemon, ticket) = daemon_open_to_read(&store, &node).await?;
    let seeded = dir.path().join("seeded");
    let seed = seed_from(&seeded, &[&ticket]).await?;
    let stderr = String::from_utf8_lossy(&seed.stderr);
    ensure!(!seed.status.success(), "an asset never came: {stderr}");
    let result: serde_json::Value = serde_json::from_slice(&seed.stdout)?;
    assert_eq!(result["assets_received"], 20, "{result}");
    assert_eq!(result["rejected"], 1, "{result}");
    ensure!(
        stderr.contains(&large.hash.to_string()) && stderr.contains("asked for but not sent"),
        "{stderr}"
    );
    Ok(())
}

/// `fsck --repair` forgets each damaged asset (a record that does not
/// decode, a blob file gone), printing the metadata it held; fsck then
/// finds the store whole, and a seed from a peer that holds the assets
/// brings them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_repair_forgets_the_damaged_and_a_seed_brings_them_back() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (healthy, store) = (dir.path().join("healthy"), dir.path().join("store"));
    let large = bundle(50, 2_000_000, 10);
    for folder in [&healthy, &store] {
        let can = EmbeddedCan::open(folder, StoreLimits::default())?;
        for i in 0..20 {
            can.push(bundle(i, 1500, 10)).await?;
        }
        can.push(large.clone()).await?;
    }
    let record = bundle(3, 1500, 10).hash;
    damage_records(&store, &[record])?;
    let hex = large.hash.to_hex();
    std::fs::remove_file(store.join("blobs").join(&hex[..2]).join(&hex))?;

    let out = fsck_with(&[
        OsStr::new("--repair"),
        OsStr::new("--json"),
        OsStr::new("--store"),
        store.as_os_str(),
    ])
    .await?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("one JSON line: {}", String::from_utf8_lossy(&out.stdout)))?;
    ensure!(!out.status.success(), "it found damage: {json}");
    let forgotten = json["forgotten"].as_array().context("forgotten")?;
    ensure!(forgotten.len() == 2, "{json}");
    for entry in forgotten {
        let hash = entry["hash"].as_str().context("hash")?;
        if hash == large.hash.to_hex() {
            // Its record was whole: what it said is kept in the output.
            ensure!(entry["meta"]["size"] == 2_000_000, "{json}");
        } else {
            ensure!(hash == record.to_hex() && entry["meta"].is_null(), "{json}");
        }
    }
    let again = fsck(&store).await?;
    ensure!(
        again.status.success(),
        "whole after the repair: {}",
        String::from_utf8_lossy(&again.stdout)
    );

    let node = dir.path().join("node");
    let (_daemon, ticket) = daemon_open_to_read(&healthy, &node).await?;
    let seed = seed_from(&store, &[&ticket]).await?;
    ensure!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&seed.stdout)?;
    assert_eq!(result["assets_received"], 2, "{result}");
    let whole = fsck(&store).await?;
    ensure!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stdout)
    );
    Ok(())
}

/// A daemon whose store has a damaged page of its index serves every asset
/// outside the records that page hides, session after session: its
/// listings look past the page as fsck does. The store is too small to
/// have saved coded cells, and building them meets the page, so it opens
/// without: it serves none, and each session exchanges full lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_with_a_damaged_index_page_serves_the_rest() -> Result<()> {
    let (dir, hashes) = store_with_damaged_leaves(|sorted| sorted[sorted.len() / 2]).await?;
    let node = dir.path().join("node");
    let (_daemon, ticket) = daemon_open_to_read(&dir.path().join("store"), &node).await?;
    let seeded = dir.path().join("seeded");
    for round in 0..2 {
        // Each round lists past the page and asks for nothing it hides.
        let seed = seed_from(&seeded, &[&ticket]).await?;
        let said = String::from_utf8_lossy(&seed.stderr);
        ensure!(seed.status.success(), "round {round}: {said}");
    }
    let can = EmbeddedCan::open(&seeded, StoreLimits::default())?;
    let mut held = 0;
    for hash in &hashes {
        held += usize::from(can.meta(*hash).await?.is_some());
    }
    // A leaf holds some tens of records; every other asset came.
    ensure!(
        (hashes.len() - 200..hashes.len()).contains(&held),
        "{held} of {} assets came",
        hashes.len()
    );
    Ok(())
}

/// A source that is down does not hold up the others: the seed takes all
/// the live one holds, prints its JSON line, then exits non-zero naming
/// the source it could not reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_with_one_source_down_takes_the_others_and_names_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_a, ticket_a) = daemon_holding(dir.path(), "a", 0..30).await?;
    let (mut gone, ticket_gone) = daemon_holding(dir.path(), "gone", 30..40).await?;
    gone.start_kill()?;
    gone.wait().await?;
    let gone_id = ticket_gone.parse::<can_sync::node::Ticket>()?.id;
    let seeded = dir.path().join("seeded");
    let seed = seed_from(&seeded, &[&ticket_a, &ticket_gone]).await?;
    let stderr = String::from_utf8_lossy(&seed.stderr);
    ensure!(!seed.status.success(), "a source was down: {stderr}");
    let short = gone_id.fmt_short().to_string();
    assert!(
        stderr.contains("1 of 2 sources failed") && stderr.contains(&short),
        "names the source it could not reach ({short}): {stderr}"
    );
    let result: serde_json::Value = serde_json::from_slice(&seed.stdout)?;
    assert_eq!(result["assets_received"], 30, "{result}");
    let can = EmbeddedCan::open(&seeded, StoreLimits::default())?;
    for i in 0..30 {
        assert!(
            can.meta(bundle(i, 1500, 10).hash).await?.is_some(),
            "asset {i}"
        );
    }
    Ok(())
}

/// `can-sync fsck --store STORE`, bounded by the test's timeout.
async fn fsck(store: &std::path::Path) -> Result<std::process::Output> {
    fsck_with(&[OsStr::new("--store"), store.as_os_str()]).await
}

/// `can-sync fsck ARGS`, bounded by the test's timeout.
async fn fsck_with(args: &[&OsStr]) -> Result<std::process::Output> {
    let run = Command::new(BIN).arg("fsck").args(args).output();
    Ok(tokio::time::timeout(TIMEOUT, run)
        .await
        .context("fsck hung")??)
}

/// `fsck` and `export` check a store; they never make one. A folder that
/// does not exist, or holds no store, is named as such, and nothing is
/// created in it (a new store would pass every check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_of_a_folder_without_a_store_says_so_and_makes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty)?;
    let absent = dir.path().join("absent");
    for (store, command) in [(&empty, "fsck"), (&absent, "fsck"), (&empty, "export")] {
        let mut args = vec![command, "--store"];
        if command == "export" {
            args = vec![command, "--to", "out", "--store"];
        }
        let out = tokio::time::timeout(
            TIMEOUT,
            Command::new(BIN)
                .args(&args)
                .arg(store)
                .current_dir(dir.path())
                .output(),
        )
        .await??;
        let said = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "{command} of {}: {said}",
            store.display()
        );
        ensure!(
            said.contains("no store in") && said.contains("meta.redb"),
            "{said}"
        );
    }
    ensure!(
        std::fs::read_dir(&empty)?.next().is_none(),
        "nothing made in the empty folder"
    );
    ensure!(!absent.exists(), "no folder made");
    // A database emptied behind the store's back, with nothing else left.
    std::fs::write(empty.join("meta.redb"), b"")?;
    let out = fsck(&empty).await?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{said}");
    ensure!(said.contains("its meta.redb is empty"), "{said}");
    ensure!(
        std::fs::metadata(empty.join("meta.redb"))?.len() == 0,
        "left as it was"
    );
    Ok(())
}

/// Records damaged behind the store's back (their bytes overwritten in the
/// database) are named by their assets, and fsck goes on past each: the
/// first record in hash order (the first page fails at once) and one in the
/// middle (the page fails after whole records, which must still be read:
/// the segment their bytes are in is damaged too, so each is named). The
/// same through the CAN API: its error names the damaged asset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_names_every_damaged_record_and_checks_the_rest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let mut hashes: Vec<_> = (300..305).map(|i| bundle(i, 1000, 10).hash).collect();
    hashes.sort();
    let damaged = [hashes[0], hashes[3]];
    {
        let can = EmbeddedCan::open(&store, StoreLimits::default())?;
        for i in 300..305 {
            can.push(bundle(i, 1000, 10)).await?;
        }
    }
    damage_records(&store, &damaged)?;
    let segment = store.join("packs").join(format!("{:016x}", 1));
    let length = std::fs::metadata(&segment)?.len() as usize;
    std::fs::write(&segment, vec![0xff; length])?;
    let embedded = fsck(&store).await?;
    says_every_damaged_record(&embedded, &hashes, &damaged)?;
    let out = fsck_with(&[
        OsStr::new("--json"),
        OsStr::new("--store"),
        store.as_os_str(),
    ])
    .await?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("one JSON line: {}", String::from_utf8_lossy(&out.stdout)))?;
    let listed: Vec<&str> = json["damaged_assets"]
        .as_array()
        .context("damaged_assets")?
        .iter()
        .filter_map(|found| found["hash"].as_str())
        .collect();
    ensure!(
        !out.status.success() && json["damaged"] == 5 && listed.len() == 5,
        "{json}"
    );
    for hash in &hashes {
        ensure!(listed.contains(&hash.to_hex().as_str()), "{hash}: {json}");
    }
    // Through the CAN API, as a daemon's --http or serve-can serves it.
    let (_server, url) = serve_can(&store).await?;
    let served = fsck_with(&[OsStr::new("--can"), OsStr::new(&url)]).await?;
    says_every_damaged_record(&served, &hashes, &damaged)
}

/// What fsck must say of the store of
/// `fsck_names_every_damaged_record_and_checks_the_rest`, embedded or
/// served.
fn says_every_damaged_record(
    out: &std::process::Output,
    hashes: &[AssetHash],
    damaged: &[AssetHash],
) -> Result<()> {
    let said = String::from_utf8_lossy(&out.stdout);
    let why = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{said}{why}");
    for hash in damaged {
        ensure!(
            said.contains(&format!("damaged {hash}: its record is damaged")),
            "{hash} named: {said}"
        );
    }
    for hash in hashes.iter().filter(|hash| !damaged.contains(*hash)) {
        let named = said
            .lines()
            .find(|line| line.starts_with(&format!("damaged {hash} ")));
        ensure!(
            named.is_some_and(|line| line.contains("its bytes hash to")),
            "{hash} read: {said}"
        );
    }
    ensure!(
        said.contains("checked 5 assets") && said.contains("5 damaged or missing"),
        "{said}"
    );
    ensure!(
        why.contains("5 of 5 assets are damaged or missing"),
        "{why}"
    );
    Ok(())
}

/// A damaged page of the database's index hides the records on it: fsck
/// names the span of keys it could not list, checks every asset outside
/// it, and fails. redb panics on a page that does not parse; the store
/// turns that into an error, and the listing looks for where it works
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_names_a_damaged_index_page_and_checks_the_rest() -> Result<()> {
    let (dir, hashes) = store_with_damaged_leaves(|sorted| sorted[sorted.len() / 2]).await?;
    let store = dir.path().join("store");
    let out = fsck_with(&[
        OsStr::new("--json"),
        OsStr::new("--store"),
        store.as_os_str(),
    ])
    .await?;
    lists_all_but_the_damaged_spans(&out, &hashes)?;
    // Through the CAN API the same: its error says the index is damaged,
    // so the listing looks past it there too.
    let (_server, url) = serve_can(&store).await?;
    let served = fsck_with(&[OsStr::new("--json"), OsStr::new("--can"), OsStr::new(&url)]).await?;
    lists_all_but_the_damaged_spans(&served, &hashes)
}

/// The last leaf of the index, damaged, hides only its own records: every
/// listing is read in windows bounded at both ends, and redb walks to a
/// range's end before it yields anything, so an open end would reach the
/// damaged leaf and fail every listing of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_past_a_damaged_last_leaf_checks_the_rest() -> Result<()> {
    let (dir, hashes) = store_with_damaged_leaves(|sorted| sorted[sorted.len() - 1]).await?;
    let out = fsck_with(&[
        OsStr::new("--json"),
        OsStr::new("--store"),
        dir.path().join("store").as_os_str(),
    ])
    .await?;
    lists_all_but_the_damaged_spans(&out, &hashes)
}

/// A write whose place in the index is on a damaged page is refused alone
/// (its place is read first, a read whose failure harms nothing), and the
/// writer goes on with every other write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_onto_a_damaged_page_is_refused_alone() -> Result<()> {
    let (dir, hashes) = store_with_damaged_leaves(|sorted| sorted[sorted.len() - 1]).await?;
    let last = *hashes.last().context("assets")?;
    let (_server, url) = serve_can(&dir.path().join("store")).await?;
    let can = HttpCan::new(&url)?;
    // A new asset past the last key: its place is on the damaged leaf.
    let into_damage = bundle_where(10_000, "a hash past the last", |hash| *hash > last)?;
    let elsewhere = bundle_where(20_000, "a hash before the middle", |hash| {
        *hash < hashes[hashes.len() / 2]
    })?;
    refused_alone(&can, into_damage, elsewhere).await
}

/// Pushes `onto_damage` through `can`, which must be refused for its place
/// on a damaged page, then `elsewhere`, which the writer must still take.
async fn refused_alone(
    can: &HttpCan,
    onto_damage: can_sync::asset::Bundle,
    elsewhere: can_sync::asset::Bundle,
) -> Result<()> {
    let said = tokio::time::timeout(TIMEOUT, can.push(onto_damage))
        .await?
        .err()
        .context("a write onto the damaged page")?
        .to_string();
    ensure!(
        said.contains("the page of the store's index that holds its place is damaged"),
        "{said}"
    );
    let pushed = tokio::time::timeout(TIMEOUT, can.push(elsewhere)).await??;
    ensure!(!pushed.already_existed, "the writer goes on");
    Ok(())
}

/// A bulk load's group does not read each place first (that is what makes
/// it fast), so when its insert meets a damaged page redb panics in the
/// write and leaves the transaction half done: the writer stops, and says
/// so, for that group and every later write, while reads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_write_into_a_damaged_page_stops_writes_and_says_why() -> Result<()> {
    let (dir, hashes) = store_with_damaged_leaves(|sorted| sorted[sorted.len() - 1]).await?;
    let last = *hashes.last().context("assets")?;
    let (_server, url) = serve_can(&dir.path().join("store")).await?;
    let can = HttpCan::new(&url)?;
    // A batch of a bulk load's size, one of whose assets goes past the
    // last key, onto the damaged leaf.
    let mut batch: Vec<_> = (10_000..11_100).map(|i| bundle(i, 100, 10)).collect();
    if !batch.iter().any(|b| b.hash > last) {
        batch.push(bundle_where(20_000, "a hash past the last", |hash| {
            *hash > last
        })?);
    }
    let verified = batch
        .into_iter()
        .map(|b| b.verify())
        .collect::<Result<Vec<_>, _>>()?;
    let said = match tokio::time::timeout(TIMEOUT, can.push_batch(verified)).await? {
        Err(err) => err.to_string(),
        Ok(answers) => answers
            .into_iter()
            .find_map(|answer| answer.err())
            .context("a bulk write into a damaged store")?
            .to_string(),
    };
    let stopped = "the store's writer stopped: the store's database library failed";
    ensure!(
        said.contains(stopped) && said.contains("can-sync fsck"),
        "{said}"
    );
    let elsewhere = bundle_where(30_000, "a hash before the middle", |hash| {
        *hash < hashes[hashes.len() / 2]
    })?;
    let said = tokio::time::timeout(TIMEOUT, can.push(elsewhere))
        .await?
        .err()
        .context("a write after the writer stopped")?
        .to_string();
    ensure!(said.contains(stopped), "{said}");
    ensure!(
        can.meta(hashes[0]).await?.is_some(),
        "reads go on after the writer stopped"
    );
    Ok(())
}

/// Once a listing met a damaged page of the index, a write whose place is
/// on that page is refused on its own, and the store's writer goes on with
/// every other write: a node listing past the page invites its peers to
/// send the assets it hides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_listing_meets_a_damaged_page_only_writes_there_are_refused() -> Result<()> {
    let (dir, hashes) = store_with_damaged_leaves(|sorted| sorted[sorted.len() / 2]).await?;
    let middle = hashes[hashes.len() / 2];
    let (_server, url) = serve_can(&dir.path().join("store")).await?;
    let can = HttpCan::new(&url)?;
    let listed = tokio::time::timeout(TIMEOUT, can_sync::can::list_all(&can)).await??;
    ensure!(listed.len() < hashes.len(), "the damaged page hides some");
    let hidden = bundle_where(0, "the middle asset", |hash| *hash == middle)?;
    let elsewhere = bundle_where(20_000, "a hash near the start", |hash| *hash < hashes[10])?;
    refused_alone(&can, hidden, elsewhere).await
}

/// `fsck --repair` does not touch a store whose index is damaged: forgetting
/// assets does not mend the index, and a write near the damage would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_repair_leaves_a_store_with_a_damaged_index_as_it_is() -> Result<()> {
    let (dir, hashes) = store_with_damaged_leaves(|sorted| sorted[sorted.len() - 1]).await?;
    let store = dir.path().join("store");
    damage_records(&store, &[hashes[0]])?;
    let before = std::fs::read(store.join("meta.redb"))?;
    let out = fsck_with(&[
        OsStr::new("--repair"),
        OsStr::new("--store"),
        store.as_os_str(),
    ])
    .await?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && said.contains("not repairing: the store's index is damaged"),
        "{said}"
    );
    ensure!(
        std::fs::read(store.join("meta.redb"))? == before,
        "the store is as it was"
    );
    Ok(())
}

/// The first `bundle(i, 100, 10)` from `i = from` on whose hash is
/// `wanted`: a new asset placed where a test needs it in the key space.
fn bundle_where(
    from: u64,
    what: &str,
    wanted: impl Fn(&AssetHash) -> bool,
) -> Result<can_sync::asset::Bundle> {
    (from..from + 1_000_000)
        .map(|i| bundle(i, 100, 10))
        .find(|b| wanted(&b.hash))
        .with_context(|| format!("no {what}"))
}

/// A store of 3,000 assets whose database leaves holding the key `pick`
/// chooses (from the sorted hashes) are damaged; its folder and hashes.
async fn store_with_damaged_leaves(
    pick: impl FnOnce(&[AssetHash]) -> AssetHash,
) -> Result<(tempfile::TempDir, Vec<AssetHash>)> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let bundles: Vec<_> = (0..3000).map(|i| bundle(i, 100, 10)).collect();
    let mut hashes: Vec<AssetHash> = bundles.iter().map(|b| b.hash).collect();
    {
        let can = EmbeddedCan::open(&store, StoreLimits::default())?;
        let verified = bundles
            .into_iter()
            .map(|b| b.verify())
            .collect::<Result<_, _>>()?;
        for answer in can.push_batch(verified).await? {
            answer?;
        }
    }
    // The leaves that hold the key, found by its bytes (a leaf's first
    // byte is 1): one of the asset table, others of the indexes the store
    // does not read to check it. Each is given a count of entries that
    // does not fit its page (bytes 2 and 3), as a flipped bit might. This
    // is redb 3's page layout (4 KiB pages, a leaf's header): a redb that
    // lays its pages out otherwise fails the `leaves > 0` check below
    // rather than passing untested.
    hashes.sort();
    let key = pick(&hashes);
    let path = store.join("meta.redb");
    let mut file = std::fs::read(&path)?;
    let mut leaves = 0;
    let mut at = 0;
    while let Some(found) = file[at..]
        .windows(32)
        .position(|window| window == key.as_bytes())
    {
        let page = (at + found) / 4096 * 4096;
        if file[page] == 1 {
            file[page + 2..page + 4].copy_from_slice(&[0xff, 0x7f]);
            leaves += 1;
        }
        at += found + 1;
    }
    ensure!(leaves > 0, "no leaf holds the key");
    std::fs::write(&path, file)?;
    Ok((dir, hashes))
}

/// fsck's `--json` answer names the spans of the index it could not read
/// (one, or a few where a damaged leaf still answers for some of its
/// keys), holding exactly the assets it did not check, and finds the
/// others (all but a leaf's some tens) whole.
fn lists_all_but_the_damaged_spans(out: &std::process::Output, hashes: &[AssetHash]) -> Result<()> {
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "one JSON line: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    ensure!(!out.status.success(), "{json}");
    let spans = json["unreadable_index"]
        .as_array()
        .context("unreadable_index")?;
    ensure!((1..=3).contains(&spans.len()), "{json}");
    let checked = json["assets"].as_u64().context("assets")? as usize;
    ensure!(
        (hashes.len() - 200..hashes.len()).contains(&checked) && json["damaged"] == 0,
        "{json}"
    );
    let hidden = hashes
        .iter()
        .filter(|hash| {
            let hex = hash.to_hex();
            spans.iter().any(|span| {
                let (after, upto) = (span["after"].as_str(), span["upto"].as_str());
                after.is_none_or(|after| hex.as_str() > after)
                    && upto.is_none_or(|upto| hex.as_str() <= upto)
            })
        })
        .count();
    ensure!(
        hidden + checked == hashes.len() && hidden > 0,
        "the span holds exactly the assets not listed: {hidden} + {checked}: {json}"
    );
    Ok(())
}

/// Pack segment bytes past the recorded end, and a blob file no record
/// names, are reported, not counted as damage, and fsck leaves them where
/// they are: they may be the values a database put back from an older copy
/// no longer names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_reports_segment_bytes_no_record_names_and_leaves_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    {
        let can = EmbeddedCan::open(&store, StoreLimits::default())?;
        for i in 400..403 {
            can.push(bundle(i, 1000, 10)).await?;
        }
        // A blob file its record names, which is not reported.
        can.push(bundle(403, 300_000, 10)).await?;
    }
    let segment = store.join("packs").join(format!("{:016x}", 1));
    let recorded = std::fs::metadata(&segment)?.len();
    let mut bytes = std::fs::read(&segment)?;
    bytes.extend_from_slice(&[0xee; 500]);
    std::fs::write(&segment, &bytes)?;
    // And a blob file of an asset no record names.
    let stray = AssetHash::of(b"stray").to_hex();
    let shard = store.join("blobs").join(&stray[..2]);
    std::fs::create_dir_all(&shard)?;
    std::fs::write(shard.join(&stray), b"stray")?;

    let out = fsck(&store).await?;
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        said.contains("unrecorded packs/0000000000000001: 500 bytes past its recorded end"),
        "{said}"
    );
    ensure!(
        said.contains(&format!(
            "unrecorded blobs/{}/{stray}: 5 bytes",
            &stray[..2]
        )),
        "{said}"
    );
    ensure!(shard.join(&stray).exists(), "fsck left the blob file");
    ensure!(
        said.contains("checked 4 assets") && said.contains("every one whole"),
        "{said}"
    );
    ensure!(
        std::fs::metadata(&segment)?.len() == recorded + 500,
        "fsck left the bytes where they were"
    );

    // A FIFO named as a segment is said, and the result still comes, with
    // --json one line naming the damaged assets (here none).
    let fifo = store.join("packs").join(format!("{:016x}", 2));
    ensure!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()?
            .success(),
        "mkfifo"
    );
    let out = fsck_with(&[
        OsStr::new("--json"),
        OsStr::new("--store"),
        store.as_os_str(),
    ])
    .await?;
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "{said}");
    let json: serde_json::Value =
        serde_json::from_str(said.trim()).with_context(|| format!("one JSON line: {said}"))?;
    ensure!(json["assets"] == 4 && json["damaged"] == 0, "{json}");
    ensure!(
        json["damaged_assets"].as_array().is_some_and(Vec::is_empty),
        "{json}"
    );
    ensure!(
        json["unrecorded_error"]
            .as_str()
            .is_some_and(|err| err.contains("not a regular file")),
        "{json}"
    );
    ensure!(
        json["unrecorded_blobs"].as_array().map(Vec::len) == Some(1)
            && json["unrecorded_blobs"][0]["hash"] == stray.as_str(),
        "only the blob no record names: {json}"
    );
    Ok(())
}

/// Blob files that are not what their records say are named without
/// reading them: a FIFO put where one was (opening it to read would wait
/// for a writer forever) and a sparse file of 64 GiB (read whole, it would
/// take minutes). fsck ends within the test's timeout, naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_names_a_fifo_and_an_oversized_blob_without_reading_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let large = 1024 * 1024;
    let (fifo, sparse) = (bundle(200, large, 10).hash, bundle(201, large, 10).hash);
    {
        let can = EmbeddedCan::open(&store, StoreLimits::default())?;
        can.push(bundle(200, large, 10)).await?;
        can.push(bundle(201, large, 10)).await?;
        can.push(bundle(202, 1000, 10)).await?;
    }
    let blob = |hash: AssetHash| {
        let hex = hash.to_hex();
        store.join("blobs").join(&hex[..2]).join(hex.as_str())
    };
    std::fs::remove_file(blob(fifo))?;
    let made = std::process::Command::new("mkfifo")
        .arg(blob(fifo))
        .status()?;
    ensure!(made.success(), "mkfifo");
    std::fs::OpenOptions::new()
        .write(true)
        .open(blob(sparse))?
        .set_len(64 << 30)?;
    let out = fsck(&store).await?;
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(!out.status.success(), "{said}");
    let line_of = |hash: AssetHash| said.lines().find(|l| l.contains(&hash.to_string()));
    let fifo_line = line_of(fifo).context("the FIFO is named")?;
    ensure!(fifo_line.contains("not a regular file"), "{fifo_line}");
    let sparse_line = line_of(sparse).context("the oversized blob is named")?;
    ensure!(
        sparse_line.contains(&format!(
            "{} bytes where its record says {large}",
            64u64 << 30
        )),
        "{sparse_line}"
    );
    ensure!(
        said.contains("checked 3 assets") && said.contains("2 damaged or missing"),
        "{said}"
    );
    Ok(())
}

/// `fsck` reads every asset of a store: an intact one passes; a blob file
/// with a flipped byte, a blob file gone and a pack segment with a flipped
/// byte are each named, with what is wrong, and the exit code says so. The
/// other small assets (packed in the same segment) stay whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_names_a_damaged_and_a_missing_blob_and_exits_non_zero() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let (flipped, gone) = {
        let can = EmbeddedCan::open(&store, StoreLimits::default())?;
        for i in 0..20 {
            can.push(bundle(i, 1000, 10)).await?;
        }
        let large = 1024 * 1024;
        let (a, b) = (bundle(100, large, 10), bundle(101, large, 10));
        can.push(a.clone()).await?;
        can.push(b.clone()).await?;
        (a.hash, b.hash)
    };
    let fsck = || {
        tokio::time::timeout(
            TIMEOUT,
            Command::new(BIN)
                .args(["fsck", "--store"])
                .arg(&store)
                .env("RUST_LOG", "warn")
                .output(),
        )
    };
    let intact = fsck().await??;
    let said = String::from_utf8_lossy(&intact.stdout).to_string();
    ensure!(intact.status.success(), "{said}");
    ensure!(
        said.contains("checked 22 assets") && said.contains("every one whole"),
        "{said}"
    );

    let blob = |hash: AssetHash| {
        let hex = hash.to_hex();
        store.join("blobs").join(&hex[..2]).join(hex.as_str())
    };
    let mut bytes = std::fs::read(blob(flipped))?;
    bytes[1000] ^= 0x01;
    std::fs::write(blob(flipped), bytes)?;
    std::fs::remove_file(blob(gone))?;
    // The small assets were packed in push order, 1000 bytes each, into the
    // first segment: flip a byte of the sixth.
    let segment = store.join("packs").join(format!("{:016x}", 1));
    let mut packed = std::fs::read(&segment)?;
    ensure!(packed.len() == 20 * 1000, "{} bytes packed", packed.len());
    packed[5 * 1000 + 10] ^= 0x01;
    std::fs::write(&segment, packed)?;
    let in_segment = bundle(5, 1000, 10).hash;

    let broken = fsck().await??;
    let said = String::from_utf8_lossy(&broken.stdout).to_string();
    ensure!(
        !broken.status.success(),
        "a damaged store must fail: {said}"
    );
    let line_of = |hash: AssetHash| said.lines().find(|l| l.contains(&hash.to_string()));
    let flipped_line = line_of(flipped).context("the flipped blob is named")?;
    ensure!(flipped_line.contains("hash to"), "{flipped_line}");
    let gone_line = line_of(gone).context("the missing blob is named")?;
    ensure!(gone_line.contains("its bytes are missing"), "{gone_line}");
    let packed_line = line_of(in_segment).context("the damaged packed asset is named")?;
    ensure!(packed_line.contains("hash to"), "{packed_line}");
    ensure!(said.contains("3 damaged or missing"), "{said}");
    Ok(())
}
