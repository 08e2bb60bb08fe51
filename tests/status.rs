//! The daemon's status router (`can_sync::node::status`), served on loopback
//! over a node that has just synced: `/status` names the peer and the
//! counters, `/metrics` has the same figures as Prometheus text.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use can_sync::can::SharedCan;
use can_sync::node::{status, Node, Protocol};
use common::{bundle, node, serve, store, Backend, Gate, SlowCan, TIMEOUT};

/// Serves `node`'s status router on a free loopback port; returns its address.
async fn serve_status(node: &Node) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = status::router(node, None);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_the_peers_and_metrics_the_counters() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let (store_a, store_b) = (
            store(Backend::Embedded).await?,
            store(Backend::Embedded).await?,
        );
        for i in 0..5 {
            store_a.can.push(bundle(i, 1000, 10)).await?;
        }
        for i in 10..13 {
            store_b.can.push(bundle(i, 1000, 10)).await?;
        }
        let a = node(store_a.can.clone()).await?;
        let _accepting = serve(&a);
        let b = node(store_b.can.clone()).await?;
        let report = b.sync_with(&a.ticket(), Protocol::V2).await?;
        assert_eq!((report.assets_received, report.assets_sent), (5, 3));

        // The dialler's figures are final once `sync_with` returned.
        let addr = serve_status(&b).await?;
        let client = can_sync::can::client::http_client_builder()?.build()?;
        let text = get_text(&client, addr, "/status").await?;
        assert!(
            text.starts_with("{\"assets_received\":5,\"assets_sent\":3,\"grants\":[],\"id\":"),
            "keys in alphabetical order, as always: {text}"
        );
        let status: serde_json::Value = serde_json::from_str(&text)?;
        assert_eq!(status["id"], b.endpoint().id().to_string(), "{status}");
        assert_eq!(status["ticket"], b.ticket().to_string(), "{status}");
        assert_eq!(status["payload_bytes"], 8 * 1000, "{status}");
        assert_eq!(status["sessions"], 1, "{status}");
        assert_eq!(status["live_links"], 0, "{status}");
        let peers = status["peers"].as_array().context("peers is a list")?;
        assert_eq!(peers.len(), 1, "{status}");
        let peer = &peers[0];
        assert_eq!(peer["id"], a.endpoint().id().to_string(), "{status}");
        assert_eq!(peer["state"], "disconnected", "{status}");
        assert_eq!(peer["sessions"], 1, "{status}");
        assert_eq!(peer["assets_sent"], 3, "{status}");
        assert_eq!(peer["assets_received"], 5, "{status}");
        assert!(peer["last_sync_ms"].is_i64(), "{status}");
        // The closed connection's datagrams are kept: more than the payload.
        let wire = |key: &str| peer[key].as_u64().unwrap_or(0);
        assert!(wire("wire_bytes_received") > 5 * 1000, "{status}");
        assert!(wire("wire_bytes_sent") > 3 * 1000, "{status}");
        // What the store holds: its five and the peer's three.
        assert_eq!(status["store"]["assets"], 8, "{status}");
        assert_eq!(status["store"]["bytes"], 8 * 1000, "{status}");
        assert_eq!(
            status["refusals"]["counts"],
            serde_json::json!({"strangers": 0, "capabilities": 0, "future_stamps": 0}),
            "{status}"
        );

        // The chart's series: nothing sampled on a node whose sampler was
        // never started, and the window it reaches over.
        let series: serde_json::Value =
            serde_json::from_str(&get_text(&client, addr, "/status/throughput").await?)?;
        assert_eq!(series["period_ms"], 5000, "{series}");
        assert_eq!(series["window_ms"], 15 * 60 * 1000, "{series}");
        assert_eq!(series["points"], serde_json::json!([]), "{series}");

        let response = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await?
            .error_for_status()?;
        assert_eq!(
            response.headers()["content-type"],
            status::METRICS_CONTENT_TYPE
        );
        let metrics = response.text().await?;
        let a_id = a.endpoint().id();
        for sample in [
            "\ncansync_assets_received_total 5\n".to_string(),
            "\ncansync_assets_sent_total 3\n".to_string(),
            "\ncansync_sessions_total 1\n".to_string(),
            format!("\ncansync_peer_assets_sent_total{{peer=\"{a_id}\"}} 3\n"),
            format!("\ncansync_peer_assets_received_total{{peer=\"{a_id}\"}} 5\n"),
            format!("\ncansync_peer_live{{peer=\"{a_id}\"}} 0\n"),
            "\ncansync_refusals_total{kind=\"stranger\"} 0\n".to_string(),
        ] {
            assert!(metrics.contains(&sample), "no {sample:?} in\n{metrics}");
        }
        b.endpoint().close().await;
        a.endpoint().close().await;
        Ok(())
    })
    .await
    .context("timed out")?
}

/// A large asset held midway shows in `/status` as partial, with what is
/// held so far and the peer it arrives from; once it is whole it is gone
/// from the list and in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_asset_arriving_shows_its_progress_and_its_source() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let (store_a, store_b) = (
            store(Backend::Embedded).await?,
            store(Backend::Embedded).await?,
        );
        // Eight groups of a MiB: large, so it crosses by verified ranges.
        let large = bundle(1, 8 << 20, 10);
        store_a.can.push(large.clone()).await?;
        // Its outboard is computed after the push, in the background; with
        // it, the asset goes by ranges.
        while store_a.can.outboard(large.hash).await?.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let a = node(store_a.can.clone()).await?;
        let _accepting = serve(&a);
        let gate = Gate::after_pulls(u64::MAX);
        let held_midway: SharedCan = Arc::new(SlowCan {
            ranges_gate: Some((3, gate.clone())),
            ..SlowCan::delayed(store_b.can.clone(), Duration::ZERO, Duration::ZERO)
        });
        let b = node(held_midway).await?;
        let addr = serve_status(&b).await?;
        let ticket = a.ticket();
        let syncing = tokio::spawn({
            let b = b.clone();
            async move { b.sync_with(&ticket, Protocol::V2).await }
        });

        let client = can_sync::can::client::http_client_builder()?.build()?;
        let partial = loop {
            let status = get_status(&client, addr).await?;
            let listed = status["partial_assets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if listed.first().is_some_and(|p| p["held"] == 3 << 20) {
                break listed[0].clone();
            }
            // Another task's progress: nothing to await but the figure.
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(partial["hash"], large.hash.to_hex(), "{partial}");
        assert_eq!(partial["size"], 8 << 20, "{partial}");
        assert_eq!(partial["receiving"], true, "{partial}");
        assert_eq!(
            partial["from"],
            serde_json::json!([a.endpoint().id().to_string()]),
            "{partial}"
        );

        gate.open();
        let report = syncing.await??;
        assert_eq!(report.assets_received, 1);
        let status = get_status(&client, addr).await?;
        assert_eq!(status["partial_assets"], serde_json::json!([]), "{status}");
        assert_eq!(status["store"]["assets"], 1, "{status}");
        Ok(())
    })
    .await
    .context("timed out")?
}

/// The body of `GET path` on the status router at `addr`.
async fn get_text(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<String> {
    Ok(client
        .get(format!("http://{addr}{path}"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// `/status`, parsed.
async fn get_status(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &get_text(client, addr, "/status").await?,
    )?)
}
