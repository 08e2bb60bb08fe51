//! The node's limits on the connections it serves (issue 12, item 1): one
//! peer cannot hold more than its share, and nobody more than the total;
//! what is over gets a clear refusal, not a session.

mod common;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use can_sync::engine::EngineConfig;
use can_sync::node::{ConnectionLimits, Node, Protocol};
use can_sync::session::{ALPN_V2, CLOSE_BUSY};
use common::{memory_store, node, serve, TIMEOUT};
use iroh::endpoint::{presets, ConnectionError};
use iroh::Endpoint;

/// A raw endpoint on loopback, no relay, no discovery.
async fn raw_endpoint() -> Result<Endpoint> {
    Ok(Endpoint::builder(presets::Minimal)
        .alpns(vec![ALPN_V2.to_vec()])
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")?
        .bind()
        .await?)
}

/// A serving node whose sessions wait long for a silent peer, so a held
/// connection stays held for the whole test.
async fn serving(limits: ConnectionLimits) -> Result<Node> {
    let server = node(memory_store()?)
        .await?
        .with_engine_config(EngineConfig {
            idle_timeout: Duration::from_secs(120),
            ..EngineConfig::default()
        })
        .with_connection_limits(limits);
    serve(&server);
    Ok(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_gets_at_most_its_share_of_connections() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let server = serving(ConnectionLimits {
            max_connections: 8,
            per_peer: 1,
            ..ConnectionLimits::default()
        })
        .await?;
        let addr = server.ticket().endpoint_addr();
        let peer = raw_endpoint().await?;
        // Two connections of one peer. The server takes in whichever
        // handshake it finishes first, which need not be the one our side
        // finished first: that one is served (it waits for our HELLO) and
        // the other is closed as busy.
        let first = peer.connect(addr.clone(), ALPN_V2).await?;
        let second = peer.connect(addr.clone(), ALPN_V2).await?;
        let busy = |closed: ConnectionError| match closed {
            ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, CLOSE_BUSY.into());
                Ok(())
            }
            other => bail!("expected CLOSE_BUSY, got {other}"),
        };
        let first_refused = tokio::select! {
            closed = first.closed() => { busy(closed)?; true }
            closed = second.closed() => { busy(closed)?; false }
        };
        let held = if first_refused { second } else { first };
        // Another peer is served meanwhile: a whole session.
        let other = node(memory_store()?).await?;
        other.sync_with(&server.ticket(), Protocol::V2).await?;
        assert!(
            held.close_reason().is_none(),
            "the connection served is still open"
        );
        held.close(0u32.into(), b"done");
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_total_are_refused() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let server = serving(ConnectionLimits {
            max_connections: 1,
            per_peer: 4,
            ..ConnectionLimits::default()
        })
        .await?;
        let addr = server.ticket().endpoint_addr();
        let first = raw_endpoint().await?;
        // Once our handshake is done the server has taken this connection
        // in: it counts from then on.
        let held = first.connect(addr.clone(), ALPN_V2).await?;
        let refused = node(memory_store()?)
            .await?
            .sync_with(&server.ticket(), Protocol::V2)
            .await;
        // The second is closed as busy once its handshake is done.
        match refused {
            Err(err) if err.to_string().contains("as many connections as allowed") => {}
            other => bail!("expected the connection to be closed as busy, got {other:?}"),
        }
        held.close(0u32.into(), b"done");
        Ok(())
    })
    .await
    .context("test timed out")?
}
