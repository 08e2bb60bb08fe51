//! Several sources: a node that pulls from two peers at once takes each
//! asset once, and an asset one source sends bad comes whole from the
//! other.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{ensure, Result};
use can_sync::asset::AssetHash;
use can_sync::can::{Can, SharedCan};
use can_sync::engine::RejectReason;
use can_sync::node::Protocol;
use common::{await_assets, bundle, memory_store, node, serve, FlakyCan, TIMEOUT};

async fn push_all(can: &dyn Can, range: std::ops::Range<u64>) -> Result<Vec<AssetHash>> {
    let mut hashes = Vec::new();
    for i in range {
        let b = bundle(i, 2000 + (i as usize % 7) * 500, 10);
        hashes.push(b.hash);
        can.push(b).await?;
    }
    Ok(hashes)
}

/// Two peers hold the same 3,000 assets; an empty node seeds from both at
/// once. Each asset arrives once, from one source or the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sources_at_once_send_each_asset_once() -> Result<()> {
    let (ca, cb, empty) = (memory_store()?, memory_store()?, memory_store()?);
    let archive = push_all(ca.as_ref(), 0..3_000).await?;
    push_all(cb.as_ref(), 0..3_000).await?;
    let (a, b, c) = (node(ca).await?, node(cb).await?, node(empty.clone()).await?);
    let _accepts = [serve(&a), serve(&b)];
    let (from_a, from_b) = tokio::time::timeout(
        TIMEOUT,
        futures::future::join(
            c.sync_with(&a.ticket(), Protocol::V2),
            c.sync_with(&b.ticket(), Protocol::V2),
        ),
    )
    .await?;
    let (from_a, from_b) = (from_a?, from_b?);
    await_assets(empty.as_ref(), &archive).await?;
    eprintln!(
        "from a: {}, from b: {}, duplicates {}",
        from_a.assets_received,
        from_b.assets_received,
        c.stats().duplicates.load(Ordering::Relaxed)
    );
    ensure!(from_a.assets_received + from_b.assets_received == 3_000);
    ensure!(c.stats().duplicates.load(Ordering::Relaxed) == 0);
    // How they split depends on timing (the session that reconciles first
    // claims first); the rate a source keeps is what paces it, measured in
    // PERFORMANCE.md ("Several sources").
    Ok(())
}

/// One of two sources sends every asset with a wrong byte. Each asset the
/// node asks it for is rejected (and named in its report) and then comes
/// whole from the other source: whether the two sessions run at once (how
/// the work splits then depends on which claims first) or the bad one
/// first, the node ends with every asset whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asset_a_bad_source_sends_comes_whole_from_the_other() -> Result<()> {
    let good = memory_store()?;
    let rotten = Arc::new(FlakyCan::new(memory_store()?));
    let archive = push_all(good.as_ref(), 0..2_000).await?;
    push_all(rotten.inner.as_ref(), 0..2_000).await?;
    rotten.set_rotten(true);
    let (a, b) = (node(good).await?, node(rotten.clone() as SharedCan).await?);
    let _accepts = [serve(&a), serve(&b)];
    for at_once in [true, false] {
        let empty = memory_store()?;
        let c = node(empty.clone()).await?;
        let (from_good, from_rotten) = if at_once {
            tokio::time::timeout(
                TIMEOUT,
                futures::future::join(
                    c.sync_with(&a.ticket(), Protocol::V2),
                    c.sync_with(&b.ticket(), Protocol::V2),
                ),
            )
            .await?
        } else {
            let from_rotten =
                tokio::time::timeout(TIMEOUT, c.sync_with(&b.ticket(), Protocol::V2)).await?;
            let from_good =
                tokio::time::timeout(TIMEOUT, c.sync_with(&a.ticket(), Protocol::V2)).await?;
            (from_good, from_rotten)
        };
        let (from_good, from_rotten) = (from_good?, from_rotten?);
        await_assets(empty.as_ref(), &archive).await?;
        for hash in &archive {
            let pulled = empty.pull(&[*hash]).await?;
            ensure!(
                AssetHash::of(&pulled.bundles[0].data) == *hash,
                "{hash} is whole"
            );
        }
        eprintln!(
            "at once: {at_once}: good source sent {}, bad source's rejected {}",
            from_good.assets_received,
            from_rotten.rejected.len()
        );
        ensure!(from_rotten.assets_received == 0);
        ensure!(from_good.assets_received == 2_000);
        ensure!(
            from_rotten
                .rejected
                .iter()
                .all(|r| matches!(r.reason, RejectReason::HashMismatch { .. })),
            "rejected for their hash: {:?}",
            from_rotten.rejected.first()
        );
        if !at_once {
            ensure!(
                from_rotten.rejected.len() == 2_000,
                "alone, the bad source was asked for everything: {} rejected",
                from_rotten.rejected.len()
            );
        }
    }
    Ok(())
}
