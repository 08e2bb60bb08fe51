//! The daemon's supervisor (`can_sync::node::supervisor`) driving real
//! loopback nodes, relays off: a peer that is down at first is dialled again
//! after a backoff pause and synced once it is up; a v1 peer gets a session
//! every resync interval; shutdown stops a pausing dial loop at once.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use can_sync::can::Can;
use can_sync::node::supervisor::{DialConfig, DialOutcome, Dialled, Supervisor};
use can_sync::node::{self, EndpointOptions, LiveConfig, Node, Protocol, Ticket};
use common::{await_assets, bundle, node, node_allowing, serve, store, Backend, TIMEOUT};
use tokio::sync::broadcast;

/// Pushes assets `range` to `can`; returns their hashes.
async fn push_range(
    can: &dyn Can,
    range: std::ops::Range<u64>,
) -> Result<Vec<can_sync::asset::AssetHash>> {
    let mut hashes = Vec::new();
    for i in range {
        let asset = bundle(i, 1500, 10);
        hashes.push(asset.hash);
        can.push(asset).await?;
    }
    Ok(hashes)
}

/// The next dial's end the supervisor reports.
async fn next_dial(events: &mut broadcast::Receiver<Dialled>) -> Result<Dialled> {
    tokio::time::timeout(TIMEOUT, events.recv())
        .await
        .context("no dial ended in time")?
        .context("the supervisor's events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_down_at_first_is_dialled_again_and_synced_once_up() -> Result<()> {
    // Up to two dials that time out (iroh gives up on a silent address after
    // 10 s) plus the sync: well within the bound.
    tokio::time::timeout(2 * TIMEOUT, async {
        let (store_a, store_b) = (
            store(Backend::Embedded).await?,
            store(Backend::Embedded).await?,
        );
        let on_a = push_range(store_a.can.as_ref(), 0..20).await?;
        let on_b = push_range(store_b.can.as_ref(), 100..110).await?;

        // B is down: its address is a socket that swallows every packet,
        // held so no one else takes the port before B binds it.
        let key_b = iroh::SecretKey::generate();
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let ticket_b = Ticket {
            id: key_b.public(),
            addrs: vec![silent.local_addr()?],
            capability: None,
        };

        let a = node(store_a.can.clone())
            .await?
            .with_live(LiveConfig::default());
        let config = DialConfig::default();
        let mut supervisor = Supervisor::new(a.clone(), config.clone());
        let mut events = supervisor.subscribe();
        supervisor.dial(ticket_b.clone());
        supervisor.accept();

        let first = next_dial(&mut events).await?;
        assert_eq!(first.peer, ticket_b.id);
        assert!(matches!(first.outcome, DialOutcome::Failed(_)), "{first:?}");
        assert!(
            first.pause >= config.first_backoff && first.pause <= config.first_backoff * 3 / 2,
            "the first pause is the backoff's first, plus jitter: {first:?}"
        );

        // B comes up where its ticket says. Should the redial beat it, that
        // dial times out too and the one after connects.
        let listen = silent.local_addr()?;
        drop(silent);
        let endpoint_b = node::bind(&EndpointOptions {
            secret_key: key_b,
            listen: Some(listen),
            relay: false,
            // A test rig: every dialer may write.
            access: std::sync::Arc::new(node::Access::open(node::Right::Write)),
            congestion: Default::default(),
        })
        .await?;
        let b = Node::new(endpoint_b, store_b.can.clone()).with_live(LiveConfig::default());
        let _accepting = serve(&b);

        await_assets(store_b.can.as_ref(), &on_a).await?;
        await_assets(store_a.can.as_ref(), &on_b).await?;
        // The link stays up, so the only dial ends so far are failures.
        while let Ok(dialled) = events.try_recv() {
            assert!(
                matches!(dialled.outcome, DialOutcome::Failed(_)),
                "{dialled:?}"
            );
        }

        assert!(
            supervisor.shutdown(TIMEOUT).await.drained,
            "the live link and the accept loop wind down on shutdown"
        );
        b.shutdown();
        a.endpoint().close().await;
        b.endpoint().close().await;
        Ok(())
    })
    .await
    .context("timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_peer_gets_a_session_every_resync_interval() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let (store_a, store_b) = (
            store(Backend::Embedded).await?,
            store(Backend::Embedded).await?,
        );
        let first = push_range(store_b.can.as_ref(), 0..5).await?;
        let a = node(store_a.can.clone()).await?;
        let b = node(store_b.can.clone()).await?;
        let _accepting = serve(&b);

        let resync = Duration::from_millis(200);
        let mut supervisor = Supervisor::new(
            a.clone(),
            DialConfig {
                protocol: Protocol::V1,
                resync,
                ..DialConfig::default()
            },
        );
        let mut events = supervisor.subscribe();
        supervisor.dial(b.ticket());

        let dialled = next_dial(&mut events).await?;
        assert_eq!(dialled.outcome, DialOutcome::Synced);
        assert_eq!(dialled.pause, resync);
        await_assets(store_a.can.as_ref(), &first).await?;

        // A change on B after that session crosses in the next one.
        let later = push_range(store_b.can.as_ref(), 5..8).await?;
        await_assets(store_a.can.as_ref(), &later).await?;
        let dialled = next_dial(&mut events).await?;
        assert_eq!(dialled.outcome, DialOutcome::Synced);

        assert!(supervisor.shutdown(TIMEOUT).await.drained);
        b.shutdown();
        a.endpoint().close().await;
        b.endpoint().close().await;
        Ok(())
    })
    .await
    .context("timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_pausing_dial_loop_at_once() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let (store_a, store_b) = (
            store(Backend::Embedded).await?,
            store(Backend::Embedded).await?,
        );
        // B is up but lets only someone else in: every dial fails at once.
        let someone_else = iroh::SecretKey::generate().public();
        let b = node_allowing(store_b.can.clone(), vec![someone_else]).await?;
        let _accepting = serve(&b);

        let a = node(store_a.can.clone()).await?;
        let hour = Duration::from_secs(3600);
        let mut supervisor = Supervisor::new(
            a.clone(),
            DialConfig {
                first_backoff: hour,
                max_backoff: hour,
                ..DialConfig::default()
            },
        );
        let mut events = supervisor.subscribe();
        supervisor.dial(b.ticket());
        supervisor.accept();

        let refused = next_dial(&mut events).await?;
        assert!(
            matches!(refused.outcome, DialOutcome::Failed(_)),
            "{refused:?}"
        );
        assert!(refused.pause >= hour, "{refused:?}");

        // The loop now pauses for an hour; shutdown must not wait for it.
        let started = tokio::time::Instant::now();
        let drained = supervisor.shutdown(TIMEOUT).await.drained;
        let took = started.elapsed();
        ensure!(drained, "the supervisor's tasks did not end");
        ensure!(
            took < Duration::from_secs(5),
            "shutdown took {took:?} with a dial loop pausing"
        );
        assert!(events.try_recv().is_err(), "no dial after the shutdown");
        b.shutdown();
        a.endpoint().close().await;
        b.endpoint().close().await;
        Ok(())
    })
    .await
    .context("timed out")?
}
