//! Access (issue 19): closed by default, a right per peer, and a
//! refusal the dialer can act on. Each test states what a stranger, a reader
//! and a writer each get, by protocol, in the library and through the binary.

mod common;

use anyhow::{bail, ensure, Context, Result};
use can_sync::can::SharedCan;
use std::time::Duration;

use can_sync::node::access::{Capability, GrantBook, Revoke};
use can_sync::node::{Access, ConnectionLimits, Protocol, Right, SyncError, Ticket};
use can_sync::session::CLOSE_NOT_ALLOWED;
use common::process::{start, BIN};
use common::{bundle, memory_store, node, node_with_access, node_with_key, serve, TIMEOUT};
use tokio::process::Command;

/// The `&str`s of `args`, as [`start`] takes them.
fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A store holding assets `range`, 2 KiB each.
async fn store_with(range: std::ops::Range<u64>) -> Result<SharedCan> {
    let can = memory_store()?;
    for i in range {
        can.push(bundle(i, 2048, 10)).await?;
    }
    Ok(can)
}

async fn count(can: &SharedCan) -> Result<u64> {
    Ok(can.stats().await?.assets)
}

/// A stranger is refused right after the handshake, on both protocols, with
/// the close code of its own and a reason naming the way in; it reads
/// nothing and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_node_refuses_a_stranger_on_both_protocols() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let home = store_with(0..20).await?;
        let server = node_with_access(home.clone(), Access::closed()).await?;
        let _serving = serve(&server);
        for protocol in [Protocol::V2, Protocol::V1] {
            let theirs = store_with(100..105).await?;
            let stranger = node(theirs.clone()).await?;
            let stranger_id = stranger.endpoint().id();
            let refused = stranger.sync_with(&server.ticket(), protocol).await;
            let err = match refused {
                Err(err @ SyncError::Refused { .. }) => err,
                other => bail!("{protocol:?}: expected a refusal, got {other:?}"),
            };
            let text = err.to_string();
            ensure!(
                text.contains(&format!("--allow {stranger_id}")),
                "{protocol:?}: the refusal names the way in: {text}"
            );
            assert_eq!(count(&theirs).await?, 5, "{protocol:?}: read nothing");
        }
        assert_eq!(count(&home).await?, 20, "wrote nothing");
        Ok(())
    })
    .await
    .context("test timed out")?
}

/// The close code itself, as a raw dialer reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refusal_carries_its_own_close_code() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let server = node_with_access(memory_store()?, Access::closed()).await?;
        let _serving = serve(&server);
        let stranger = node(memory_store()?).await?;
        let conn = stranger
            .endpoint()
            .connect(server.ticket().endpoint_addr(), can_sync::session::ALPN_V2)
            .await;
        let code = match conn {
            Ok(conn) => common::close_code(&conn).await,
            Err(iroh::endpoint::ConnectError::Connection { source, .. }) => match source {
                iroh::endpoint::ConnectionError::ApplicationClosed(close) => {
                    Some(close.error_code.into_inner())
                }
                other => bail!("expected an application close, got {other}"),
            },
            Err(other) => bail!("expected a connection closed by the node, got {other}"),
        };
        assert_eq!(code, Some(u64::from(CLOSE_NOT_ALLOWED)));
        Ok(())
    })
    .await
    .context("test timed out")?
}

/// A writer by id moves both ways; a reader by id gets everything and the
/// node takes nothing of its own, which it counts as not taken, with no
/// rejection: a reader's seed is a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_moves_both_ways_and_a_reader_only_pulls() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let (writer_key, reader_key) = (iroh::SecretKey::generate(), iroh::SecretKey::generate());
        let home = store_with(0..20).await?;
        let access = Access::closed()
            .allow(writer_key.public(), Right::Write)
            .allow(reader_key.public(), Right::Read);
        let server = node_with_access(home.clone(), access).await?;
        let _serving = serve(&server);

        for protocol in [Protocol::V2, Protocol::V1] {
            let reader_store = store_with(200..205).await?;
            let reader =
                node_with_key(reader_store.clone(), reader_key.clone(), Access::closed()).await?;
            let report = reader.sync_with(&server.ticket(), protocol).await?;
            assert_eq!(count(&reader_store).await?, 25, "{protocol:?}: pulled all");
            assert_eq!(count(&home).await?, 20, "{protocol:?}: took nothing");
            if protocol == Protocol::V2 {
                // v2 says so in HELLO: the reader sends nothing and counts it.
                assert_eq!(report.not_taken, 5);
                assert!(report.rejected.is_empty(), "{:?}", report.rejected);
                assert_eq!(report.assets_sent, 0);
            }
        }

        let writer_store = store_with(300..305).await?;
        let writer = node_with_key(writer_store.clone(), writer_key, Access::closed()).await?;
        let report = writer.sync_with(&server.ticket(), Protocol::V2).await?;
        assert_eq!((report.assets_sent, report.not_taken), (5, 0));
        assert_eq!(count(&home).await?, 25);
        assert_eq!(count(&writer_store).await?, 25);
        Ok(())
    })
    .await
    .context("test timed out")?
}

/// A reader's metadata updates are refused: a newer description from it
/// does not land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readers_metadata_updates_are_refused() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let reader_key = iroh::SecretKey::generate();
        let home = store_with(0..3).await?;
        let server = node_with_access(
            home.clone(),
            Access::closed().allow(reader_key.public(), Right::Read),
        )
        .await?;
        let _serving = serve(&server);
        let reader_store = store_with(0..3).await?;
        let mut newer = bundle(1, 2048, 50);
        newer.meta.description = "the reader's".into();
        reader_store
            .apply_meta(can_sync::asset::MetaUpdate::of(newer.hash, &newer.meta))
            .await?;
        let reader = node_with_key(reader_store, reader_key, Access::closed()).await?;
        // v1 has no HELLO to warn the reader: it sends, and is refused.
        reader.sync_with(&server.ticket(), Protocol::V1).await?;
        let (_, meta) = home.meta(newer.hash).await?.context("held")?;
        assert_eq!(meta.description, "asset 1");
        Ok(())
    })
    .await
    .context("test timed out")?
}

/// Strangers refused by the dozen take no session slot: with room for one
/// session, an allowed peer is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_strangers_take_no_slot_of_an_allowed_peer() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let friend_key = iroh::SecretKey::generate();
        let home = store_with(0..5).await?;
        let server = node_with_access(
            home,
            Access::closed().allow(friend_key.public(), Right::Write),
        )
        .await?
        .with_connection_limits(ConnectionLimits {
            max_connections: 1,
            ..ConnectionLimits::default()
        });
        let _serving = serve(&server);
        let mut strangers = Vec::new();
        for _ in 0..12 {
            strangers.push(node(memory_store()?).await?);
        }
        let ticket = server.ticket();
        let attempts = strangers
            .iter()
            .map(|stranger| stranger.sync_with(&ticket, Protocol::V2));
        for refused in futures::future::join_all(attempts).await {
            ensure!(refused.is_err(), "a stranger was served");
        }
        let friend_store = memory_store()?;
        let friend = node_with_key(friend_store.clone(), friend_key, Access::closed()).await?;
        friend.sync_with(&ticket, Protocol::V2).await?;
        assert_eq!(count(&friend_store).await?, 5);
        Ok(())
    })
    .await
    .context("test timed out")?
}

/// A granted ticket admits whoever presents it, with the grant's right, on
/// `/2`; a revoked one, an expired one or a made-up one is refused with the
/// same code as a stranger, and nothing of the store is read or written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_capability_admits_until_revoked() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let dir = tempfile::tempdir()?;
        let book = GrantBook::at(dir.path());
        let home = store_with(0..10).await?;
        let server =
            node_with_access(home.clone(), Access::closed().with_grants(book.clone())).await?;
        let _serving = serve(&server);
        let granted = |capability| Ticket {
            capability: Some(capability),
            ..server.ticket()
        };
        let now = can_sync::clock::now_ms();

        // A reader's grant: it pulls everything, the node takes nothing.
        let (read_cap, read_grant) = book.grant(Right::Read, None, now)?;
        let reader_store = store_with(100..103).await?;
        let report = node_with_access(reader_store.clone(), Access::closed())
            .await?
            .sync_with(&granted(read_cap.clone()), Protocol::V2)
            .await?;
        assert_eq!(count(&reader_store).await?, 13);
        assert_eq!((report.not_taken, count(&home).await?), (3, 10));

        // A writer's grant: both ways. The grant was made after the node
        // started: it is seen without a restart.
        let (write_cap, _) = book.grant(Right::Write, None, now)?;
        let writer_store = store_with(200..202).await?;
        node_with_access(writer_store.clone(), Access::closed())
            .await?
            .sync_with(&granted(write_cap), Protocol::V2)
            .await?;
        assert_eq!(count(&home).await?, 12);

        // Revoked, expired, made up: refused, nothing read.
        book.revoke(&Revoke::One(read_grant.id))?;
        let (expired, _) = book.grant(Right::Write, Some(Duration::from_secs(1)), now - 2_000)?;
        for capability in [read_cap, expired, Capability::generate()] {
            let theirs = memory_store()?;
            let refused = node_with_access(theirs.clone(), Access::closed())
                .await?
                .sync_with(&granted(capability), Protocol::V2)
                .await;
            match refused {
                Err(SyncError::Refused { reason, .. }) => ensure!(
                    reason.contains("no valid capability"),
                    "the refusal says why: {reason}"
                ),
                other => bail!("expected a refusal, got {other:?}"),
            }
            assert_eq!(count(&theirs).await?, 0, "read nothing");
        }
        // No HELLO on /1: a capability cannot admit there.
        let (v1_cap, _) = book.grant(Right::Write, None, now)?;
        let v1 = node_with_access(memory_store()?, Access::closed())
            .await?
            .sync_with(&granted(v1_cap), Protocol::V1)
            .await;
        ensure!(matches!(v1, Err(SyncError::Refused { .. })), "{v1:?}");
        assert_eq!(count(&home).await?, 12);
        Ok(())
    })
    .await
    .context("test timed out")?
}

async fn run_cli(args: &[&str]) -> Result<std::process::Output> {
    Ok(
        tokio::time::timeout(TIMEOUT, Command::new(BIN).args(args).output())
            .await
            .context("command timed out")??,
    )
}

/// Through the binary: a daemon with no access flags refuses a seed and the
/// seed says how to get in; `--allow-read` of the seed's persistent id lets
/// it pull everything and exit 0, with what the node did not take in its
/// JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_is_closed_by_default_and_a_reader_seed_succeeds() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (node_dir, seed_dir, files) = (
        dir.path().join("node"),
        dir.path().join("seed"),
        dir.path().join("files"),
    );
    std::fs::create_dir_all(&files)?;
    for i in 0..4 {
        std::fs::write(files.join(format!("n{i}.txt")), format!("node file {i}"))?;
    }
    let node_dir = node_dir.to_str().context("utf-8")?;
    let seed_dir = seed_dir.to_str().context("utf-8")?;
    let added = run_cli(&[
        "add",
        "--data-dir",
        node_dir,
        files.to_str().context("utf-8")?,
    ])
    .await?;
    ensure!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let own = dir.path().join("own.txt");
    std::fs::write(&own, "the seed's own")?;
    let added = run_cli(&[
        "add",
        "--data-dir",
        seed_dir,
        own.to_str().context("utf-8")?,
    ])
    .await?;
    ensure!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );

    let daemon = |extra: &[&str]| {
        let mut args = vec![
            "daemon",
            "--data-dir",
            node_dir,
            "--listen",
            "127.0.0.1:0",
            "--no-relay",
        ];
        args.extend(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let (mut closed, line) = start(&as_strs(&daemon(&[]))).await?;
    let ticket = line
        .strip_prefix("ticket ")
        .context("a ticket line")?
        .to_string();
    let refused = run_cli(&[
        "seed",
        "--data-dir",
        seed_dir,
        "--from",
        &ticket,
        "--no-relay",
    ])
    .await?;
    let seed_id = String::from_utf8(run_cli(&["id", "--data-dir", seed_dir]).await?.stdout)?;
    let seed_id = seed_id.trim();
    ensure!(!refused.status.success(), "a stranger's seed succeeded");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        stderr.contains(&format!("--allow {seed_id}")),
        "the refusal names the way in: {stderr}"
    );
    closed.kill().await?;
    closed.wait().await?;

    let (_reader_daemon, line) = start(&as_strs(&daemon(&["--allow-read", seed_id]))).await?;
    let ticket = line
        .strip_prefix("ticket ")
        .context("a ticket line")?
        .to_string();
    let seeded = run_cli(&[
        "seed",
        "--data-dir",
        seed_dir,
        "--from",
        &ticket,
        "--no-relay",
        "--json",
    ])
    .await?;
    ensure!(
        seeded.status.success(),
        "a reader's seed: {}",
        String::from_utf8_lossy(&seeded.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&seeded.stdout)?;
    assert_eq!(json["assets_received"], 4, "{json}");
    assert_eq!(json["not_taken"], 1, "{json}");
    assert_eq!(json["rejected"], 0, "{json}");

    // A granted ticket, made while the daemon runs, admits a fresh seed
    // (no --data-dir: a throwaway id the node never heard of) to write.
    let granted = run_cli(&[
        "ticket",
        "--data-dir",
        node_dir,
        "--grant",
        "write",
        "--expires",
        "1h",
    ])
    .await?;
    ensure!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    let granted = String::from_utf8(granted.stdout)?.trim().to_string();
    ensure!(
        granted.contains('#'),
        "a granted ticket carries its capability: {granted}"
    );
    let fresh = dir.path().join("fresh-store");
    let fresh = fresh.to_str().context("utf-8")?;
    let added = run_cli(&["add", "--store", fresh, own.to_str().context("utf-8")?]).await?;
    ensure!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let seeded = run_cli(&[
        "seed",
        "--store",
        fresh,
        "--from",
        &granted,
        "--no-relay",
        "--json",
    ])
    .await?;
    ensure!(
        seeded.status.success(),
        "{}",
        String::from_utf8_lossy(&seeded.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&seeded.stdout)?;
    assert_eq!(
        (json["assets_sent"].as_u64(), json["not_taken"].as_u64()),
        (Some(1), Some(0)),
        "{json}"
    );

    // Revoked, it admits no more.
    let revoked = run_cli(&["ticket", "--data-dir", node_dir, "--revoke", "all"]).await?;
    ensure!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let refused = run_cli(&["seed", "--store", fresh, "--from", &granted, "--no-relay"]).await?;
    ensure!(!refused.status.success(), "a revoked ticket still admits");
    Ok(())
}

/// Client Initial packets of `count` distinct connection attempts to the
/// endpoint `id`: each dial is sent to a trap socket that never answers, and
/// the first datagram of each new destination connection id is kept. Sent
/// again from another socket to a node, each starts a handshake that never
/// completes.
async fn stalled_initials(id: iroh::EndpointId, count: usize) -> Result<Vec<Vec<u8>>> {
    let trap = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let dialer = node(memory_store()?).await?;
    let target = iroh::EndpointAddr::from_parts(id, [iroh::TransportAddr::Ip(trap.local_addr()?)]);
    let mut dials = tokio::task::JoinSet::new();
    let mut seen = std::collections::HashSet::new();
    let mut initials = Vec::new();
    let mut buf = vec![0u8; 65536];
    for _ in 0..count {
        let (endpoint, target) = (dialer.endpoint().clone(), target.clone());
        dials.spawn(async move {
            let _ = endpoint.connect(target, can_sync::session::ALPN_V2).await;
        });
    }
    while initials.len() < count {
        let (len, _) = trap.recv_from(&mut buf).await?;
        let packet = &buf[..len];
        // A long header: flags, version (4), DCID length, DCID.
        ensure!(len > 6 && packet[0] & 0x80 != 0, "not a QUIC long header");
        let dcid_len = usize::from(packet[5]);
        let dcid = packet[6..6 + dcid_len].to_vec();
        if seen.insert(dcid) {
            initials.push(packet.to_vec());
        }
    }
    dials.abort_all();
    Ok(initials)
}

/// Stalled handshakes from one address hold at most that address's share of
/// the handshake budget: an allowed peer at another address is still served.
/// With the whole budget open to one source, the same stall locks it out:
/// the stall is real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_from_one_address_leave_room_for_others() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        for (per_source, friend_served) in [(4, true), (16, false)] {
            let friend_key = iroh::SecretKey::generate();
            let server = node_with_access(
                store_with(0..2).await?,
                Access::closed().allow(friend_key.public(), Right::Write),
            )
            .await?
            .with_connection_limits(ConnectionLimits {
                max_handshakes: 16,
                max_handshakes_per_source: per_source,
                ..ConnectionLimits::default()
            });
            let _serving = serve(&server);
            let addr = *server.ticket().addrs.first().context("an address")?;
            // The stranger stalls from 127.0.0.2, a source of its own.
            let initials = stalled_initials(server.endpoint().id(), 24).await?;
            let mut sockets = Vec::new();
            for initial in &initials {
                let socket = tokio::net::UdpSocket::bind("127.0.0.2:0").await?;
                socket.send_to(initial, addr).await?;
                sockets.push(socket);
            }
            // Each stall is in once the node answered it (its handshake
            // flight, or a refusal past the source's share).
            for socket in &sockets {
                let mut buf = vec![0u8; 65536];
                tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
                    .await
                    .context("the node never answered a stalled Initial")??;
            }
            let friend =
                node_with_key(store_with(10..11).await?, friend_key, Access::closed()).await?;
            let synced = tokio::time::timeout(
                Duration::from_secs(5),
                friend.sync_with(&server.ticket(), Protocol::V2),
            )
            .await;
            let served = matches!(synced, Ok(Ok(_)));
            assert_eq!(
                served, friend_served,
                "per-source share {per_source}: friend served? {synced:?}"
            );
        }
        Ok(())
    })
    .await
    .context("test timed out")?
}
