//! Protocol v1 over real loopback iroh endpoints and real stores, against both
//! CAN backends.

mod common;

use anyhow::Result;
use can_sync::asset::{AssetHash, MetaUpdate};
use can_sync::can::Can;
use can_sync::node::Protocol;

use common::{assert_converged, bundle, node, serve, store, Backend, BACKENDS, TIMEOUT};

/// 200 assets each, 50 of them in common; 10 of the common ones newer on a,
/// 10 newer on b.
async fn two_archives(a: &dyn Can, b: &dyn Can) -> Result<()> {
    for i in 0..150 {
        a.push(bundle(i, 1000 + i as usize * 37, 10)).await?;
    }
    for i in 150..200 {
        a.push(bundle(i, 2000, if i < 160 { 50 } else { 10 }))
            .await?;
        b.push(bundle(
            i,
            2000,
            if (160..170).contains(&i) { 60 } else { 10 },
        ))
        .await?;
    }
    for i in 200..350 {
        b.push(bundle(i, 500 + i as usize, 10)).await?;
    }
    Ok(())
}

async fn converge_both_ways(backend: Backend) -> Result<()> {
    let (sa, sb) = (store(backend).await?, store(backend).await?);
    two_archives(sa.can.as_ref(), sb.can.as_ref()).await?;
    let (a, b) = (node(sa.can.clone()).await?, node(sb.can.clone()).await?);
    let _accept = serve(&a);

    let report = tokio::time::timeout(TIMEOUT, b.sync_with(&a.ticket(), Protocol::V1)).await??;
    assert_eq!(report.assets_received, 150, "{backend:?}");
    assert_eq!(report.assets_sent, 150, "{backend:?}");
    assert_eq!(report.meta_sent, 10, "b's newer metadata goes to a");
    assert_eq!(report.meta_applied, 10, "a's newer metadata lands on b");
    assert!(report.rejected.is_empty());
    assert_converged(sa.can.as_ref(), sb.can.as_ref()).await?;

    let newer_on_a = AssetHash::from_bytes(*AssetHash::of(&bundle(155, 2000, 0).data).as_bytes());
    let (_, meta) = sb.can.meta(newer_on_a).await?.unwrap();
    assert_eq!(meta.meta_updated_at_ms, 50);
    let newer_on_b = AssetHash::of(&bundle(165, 2000, 0).data);
    let (_, meta) = sa.can.meta(newer_on_b).await?.unwrap();
    assert_eq!(meta.meta_updated_at_ms, 60);

    // A second session finds nothing to do.
    let again = tokio::time::timeout(TIMEOUT, b.sync_with(&a.ticket(), Protocol::V1)).await??;
    assert_eq!(
        (again.assets_sent, again.assets_received, again.meta_sent),
        (0, 0, 0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_converges_both_ways_on_embedded_stores() -> Result<()> {
    converge_both_ways(Backend::Embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_converges_both_ways_over_http_cans() -> Result<()> {
    converge_both_ways(Backend::Http).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_edit_after_sync_travels_on_next_session() -> Result<()> {
    for backend in BACKENDS {
        let (sa, sb) = (store(backend).await?, store(backend).await?);
        let shared = bundle(7, 4096, 10);
        let hash: AssetHash = shared.hash;
        sa.can.push(shared).await?;
        let (a, b) = (node(sa.can.clone()).await?, node(sb.can.clone()).await?);
        let _accept = serve(&a);
        tokio::time::timeout(TIMEOUT, b.sync_with(&a.ticket(), Protocol::V1)).await??;
        let won = sb
            .can
            .apply_meta(MetaUpdate {
                hash,
                description: "edited on b".into(),
                tags: vec!["x".into()],
                is_trashed: true,
                meta_updated_at_ms: 99,
                created_at_ms: 0,
            })
            .await?;
        assert!(won);
        let report =
            tokio::time::timeout(TIMEOUT, b.sync_with(&a.ticket(), Protocol::V1)).await??;
        assert_eq!(report.meta_sent, 1);
        let (_, meta) = sa.can.meta(hash).await?.unwrap();
        assert_eq!(meta.description, "edited on b");
        assert!(meta.is_trashed);
        assert_converged(sa.can.as_ref(), sb.can.as_ref()).await?;
    }
    Ok(())
}
