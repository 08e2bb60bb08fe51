//! Protocol v2 over real loopback iroh endpoints and real stores: convergence
//! against both CAN backends, every size class, fallback to v1.

mod common;

use anyhow::Result;
use can_sync::asset::AssetHash;
use can_sync::engine::EngineConfig;
use can_sync::node::{Node, Protocol};
use common::{assert_converged, bundle, node, serve, store, Backend, TIMEOUT};

async fn converge_both_ways(backend: Backend) -> Result<()> {
    let (sa, sb) = (store(backend).await?, store(backend).await?);
    for i in 0..150 {
        sa.can.push(bundle(i, 1000 + i as usize * 37, 10)).await?;
    }
    for i in 150..200 {
        sa.can
            .push(bundle(i, 2000, if i < 160 { 50 } else { 10 }))
            .await?;
        sb.can
            .push(bundle(
                i,
                2000,
                if (160..170).contains(&i) { 60 } else { 10 },
            ))
            .await?;
    }
    for i in 200..350 {
        sb.can.push(bundle(i, 500 + i as usize, 10)).await?;
    }
    let (a, b) = (node(sa.can.clone()).await?, node(sb.can.clone()).await?);
    let _accept = serve(&a);
    let report = tokio::time::timeout(TIMEOUT, b.sync_with(&a.ticket(), Protocol::V2)).await??;
    assert_eq!(
        (report.assets_received, report.assets_sent),
        (150, 150),
        "{backend:?}"
    );
    assert_eq!(
        (report.meta_sent, report.meta_applied),
        (10, 10),
        "{backend:?}"
    );
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_converged(sa.can.as_ref(), sb.can.as_ref()).await?;

    let again = tokio::time::timeout(TIMEOUT, b.sync_with(&a.ticket(), Protocol::V2)).await??;
    assert_eq!(
        (again.assets_sent, again.assets_received, again.meta_sent),
        (0, 0, 0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_converges_both_ways_on_embedded_stores() -> Result<()> {
    converge_both_ways(Backend::Embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_converges_both_ways_over_http_cans() -> Result<()> {
    converge_both_ways(Backend::Http).await
}

/// A small inline limit makes the size classes cheap to cover.
fn small_inline() -> EngineConfig {
    EngineConfig {
        inline_limit: 64 * 1024,
        chunk_bytes: 16 * 1024,
        ..EngineConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_class_crosses_intact_both_ways() -> Result<()> {
    for backend in [Backend::Embedded, Backend::Http] {
        let (sa, sb) = (store(backend).await?, store(backend).await?);
        let limit = 64 * 1024;
        let sizes = [0, 1, limit - 1, limit, limit + 1, 5 * limit + 17];
        let mut expected = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            // Compressible and incompressible variants of each size.
            let noisy = bundle(i as u64, *size, 10);
            let mut text = noisy.clone();
            text.data = b"{\"k\":\"v\"},"
                .iter()
                .cycle()
                .take(*size)
                .copied()
                .collect::<Vec<u8>>()
                .into();
            text.hash = AssetHash::of(&text.data);
            let target = if i % 2 == 0 { &sa } else { &sb };
            for asset in [noisy, text] {
                expected.push(asset.hash);
                target.can.push(asset).await?;
            }
        }
        let a = node(sa.can.clone())
            .await?
            .with_engine_config(small_inline());
        let b = node(sb.can.clone())
            .await?
            .with_engine_config(small_inline());
        let _accept = serve(&a);
        let report =
            tokio::time::timeout(TIMEOUT, b.sync_with(&a.ticket(), Protocol::V2)).await??;
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        // "0 bytes" twice (noisy and text are the same empty asset).
        assert_eq!(
            report.assets_sent + report.assets_received,
            11,
            "{backend:?}"
        );
        assert_converged(sa.can.as_ref(), sb.can.as_ref()).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mib_asset_crosses_intact() -> Result<()> {
    let (sa, sb) = (
        store(Backend::Embedded).await?,
        store(Backend::Embedded).await?,
    );
    let big = bundle(42, 100 * 1024 * 1024, 10);
    let hash: AssetHash = big.hash;
    sa.can.push(big).await?;
    let (a, b) = (node(sa.can.clone()).await?, node(sb.can.clone()).await?);
    let _accept = serve(&a);
    let report = tokio::time::timeout(TIMEOUT, b.sync_with(&a.ticket(), Protocol::V2)).await??;
    assert_eq!(report.assets_received, 1);
    let pulled = sb.can.pull(&[hash]).await?;
    assert_eq!(AssetHash::of(&pulled.bundles[0].data), hash);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressible_data_crosses_in_fewer_wire_bytes() -> Result<()> {
    let (sa, sb) = (
        store(Backend::Embedded).await?,
        store(Backend::Embedded).await?,
    );
    let mut payload = 0;
    for i in 0..200u32 {
        let data = format!("{{\"id\":{i},\"name\":\"asset {i}\",\"tags\":[\"json\",\"text\"]}}\n")
            .repeat(100);
        payload += data.len() as u64;
        let mut asset = bundle(i as u64, 0, 1);
        asset.hash = AssetHash::of(data.as_bytes());
        asset.data = data.into_bytes().into();
        sa.can.push(asset).await?;
    }
    let (a, b) = (node(sa.can.clone()).await?, node(sb.can.clone()).await?);
    let _accept = serve(&a);
    let report = tokio::time::timeout(TIMEOUT, b.sync_with(&a.ticket(), Protocol::V2)).await??;
    assert_eq!(report.payload_bytes, payload);
    assert!(
        report.wire_bytes * 3 < payload,
        "wire {} vs payload {payload}",
        report.wire_bytes
    );
    assert_converged(sa.can.as_ref(), sb.can.as_ref()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_dialer_falls_back_to_v1_peers() -> Result<()> {
    let (sa, sb) = (
        store(Backend::Embedded).await?,
        store(Backend::Embedded).await?,
    );
    sa.can.push(bundle(1, 3000, 1)).await?;
    sb.can.push(bundle(2, 3000, 1)).await?;
    // An old peer: its endpoint speaks only can-sync/1.
    let old_endpoint = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .alpns(vec![can_sync::session::ALPN_V1.to_vec()])
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")?
        .bind()
        .await?;
    let old = Node::new(old_endpoint, sa.can.clone());
    let _accept = serve(&old);
    let b = node(sb.can.clone()).await?;
    let report = tokio::time::timeout(TIMEOUT, b.sync_with(&old.ticket(), Protocol::V2)).await??;
    assert_eq!((report.assets_sent, report.assets_received), (1, 1));
    assert_converged(sa.can.as_ref(), sb.can.as_ref()).await?;
    Ok(())
}

/// Reconciliation costs what differs. Two stores holding the same
/// 3,000 assets reconnect for a few kilobytes with coded cells, whatever they
/// hold; the full exchange pays for every summary. A difference costs cells
/// in proportion to it, and both ways converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coded_reconciliation_costs_the_difference_not_the_archive() -> Result<()> {
    let (a_store, b_store) = (common::memory_store()?, common::memory_store()?);
    for i in 0..3_000u64 {
        let asset = bundle(i, 64, 1);
        a_store.push(asset.clone()).await?;
        b_store.push(asset).await?;
    }
    let run = |coded: bool| {
        let (a_store, b_store) = (a_store.clone(), b_store.clone());
        async move {
            let config = EngineConfig {
                coded_recon: coded,
                ..EngineConfig::default()
            };
            let a = node(a_store).await?.with_engine_config(config.clone());
            let b = node(b_store).await?.with_engine_config(config);
            let _accept = serve(&a);
            let report =
                tokio::time::timeout(TIMEOUT, b.sync_with(&a.ticket(), Protocol::V2)).await??;
            anyhow::Ok(report)
        }
    };
    let coded = run(true).await?;
    let full = run(false).await?;
    assert_eq!((coded.assets_sent, coded.assets_received), (0, 0));
    assert_eq!((full.assets_sent, full.assets_received), (0, 0));
    assert!(
        coded.wire_bytes <= 8 * 1024,
        "a reconnect with nothing to move cost {} bytes",
        coded.wire_bytes
    );
    assert!(
        full.wire_bytes > 10 * coded.wire_bytes,
        "full lists ({} bytes) against coded cells ({} bytes)",
        full.wire_bytes,
        coded.wire_bytes
    );

    // 40 assets only on A, 25 only on B, 10 metadata edits on B.
    for i in 10_000..10_040u64 {
        a_store.push(bundle(i, 64, 1)).await?;
    }
    for i in 20_000..20_025u64 {
        b_store.push(bundle(i, 64, 1)).await?;
    }
    for i in 0..10u64 {
        b_store.push(bundle(i, 64, 5)).await?;
    }
    let moved = run(true).await?;
    assert_eq!((moved.assets_sent, moved.assets_received), (25, 40));
    assert_eq!(moved.meta_sent, 10);
    assert!(moved.rejected.is_empty());
    assert_converged(a_store.as_ref(), b_store.as_ref()).await?;
    Ok(())
}

/// The paged full exchange through the real driver and engine, against both
/// CAN backends: lists of 1,200 and 900 summaries in pages of 64 (about 35
/// pages crossing, the engine fed page by page), with the same result as
/// whole lists; a first contact with an empty node too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_lists_converge_through_the_real_engine() -> Result<()> {
    for backend in [Backend::Embedded, Backend::Http] {
        let (sa, sb) = (store(backend).await?, store(backend).await?);
        for i in 0..1_000u64 {
            let asset = bundle(i, 200, 1);
            sa.can.push(asset.clone()).await?;
            if i % 5 != 0 {
                sb.can.push(asset).await?;
            }
        }
        for i in 5_000..5_200u64 {
            sa.can.push(bundle(i, 300, 1)).await?;
        }
        for i in 7_000..7_100u64 {
            sb.can.push(bundle(i, 300, 1)).await?;
        }
        let config = EngineConfig {
            coded_recon: false,
            list_page: 64,
            ..EngineConfig::default()
        };
        let a = node(sa.can.clone())
            .await?
            .with_engine_config(config.clone());
        let b = node(sb.can.clone())
            .await?
            .with_engine_config(config.clone());
        let _accept = serve(&a);
        let report =
            tokio::time::timeout(TIMEOUT, b.sync_with(&a.ticket(), Protocol::V2)).await??;
        assert_eq!(
            (report.assets_received, report.assets_sent),
            (400, 100),
            "{backend:?}"
        );
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        assert_converged(sa.can.as_ref(), sb.can.as_ref()).await?;

        let empty = store(backend).await?;
        let c = node(empty.can.clone()).await?.with_engine_config(config);
        let first = tokio::time::timeout(TIMEOUT, c.sync_with(&a.ticket(), Protocol::V2)).await??;
        assert_eq!(first.assets_received, 1_300, "{backend:?}");
        assert_converged(sa.can.as_ref(), empty.can.as_ref()).await?;
    }
    Ok(())
}
