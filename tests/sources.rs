//! Several sources: a node that pulls from two peers at once takes each
//! asset once, and an asset one source sends bad comes whole from the
//! other. Large assets travel by verified ranges: a bad range is refused by
//! name and what verified before it is kept, and a transfer cut midway
//! (the receiver restarted in between) resumes with only what is missing.

// Runs of groups are ranges: a list of one is a list of one run.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{ensure, Result};
use can_sync::asset::AssetHash;
use can_sync::can::{Can, SharedCan};
use can_sync::can::{EmbeddedCan, StoreLimits};
use can_sync::engine::RejectReason;
use can_sync::node::Protocol;
use can_sync::session::SessionReport;
use common::{await_assets, bundle, memory_store, node, serve, FlakyCan, TIMEOUT};

const MIB: u64 = 1024 * 1024;

/// One large asset of `groups` groups of 1 MiB and a tail, in `can`.
async fn push_large(can: &dyn Can, groups: u64) -> Result<AssetHash> {
    let data: Vec<u8> = (0..groups * MIB + 4321)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let hash = AssetHash::of(&data);
    let meta = can_sync::pb::AssetMeta {
        name: "large.bin".into(),
        ..Default::default()
    };
    let body = futures::stream::iter([Ok(bytes::Bytes::from(data))]);
    can.write_blob(hash, meta, Box::pin(body)).await?;
    Ok(hash)
}

/// The whole bytes of `hash` in `can` hash to it.
async fn is_whole(can: &dyn Can, hash: AssetHash) -> Result<bool> {
    use futures::StreamExt as _;
    let (_, mut body) = can.read_blob(hash, 0).await?;
    let mut hasher = blake3::Hasher::new();
    while let Some(piece) = body.next().await {
        hasher.update(&piece?);
    }
    Ok(AssetHash::from(hasher.finalize()) == hash)
}

/// An empty store on disk seeded from nodes over `first` and `second` at
/// once: its folder, the store, and each source's report.
async fn seed_from_both(
    first: SharedCan,
    second: SharedCan,
) -> Result<(
    tempfile::TempDir,
    Arc<EmbeddedCan>,
    SessionReport,
    SessionReport,
)> {
    let (a, b) = (node(first).await?, node(second).await?);
    let _accepts = [serve(&a), serve(&b)];
    let dir = tempfile::tempdir()?;
    let receiving = Arc::new(EmbeddedCan::open(dir.path(), StoreLimits::default())?);
    let c = node(receiving.clone()).await?;
    let (from_first, from_second) = tokio::time::timeout(
        TIMEOUT,
        futures::future::join(
            c.sync_with(&a.ticket(), Protocol::V2),
            c.sync_with(&b.ticket(), Protocol::V2),
        ),
    )
    .await?;
    Ok((dir, receiving, from_first?, from_second?))
}

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

/// Two peers hold one large asset of 96 groups; an empty node seeds from
/// both at once. The asset is split into leases of 16 groups: each source
/// sends some of them, no group travels twice, and the asset is committed
/// once, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_large_asset_comes_in_ranges_from_two_sources_at_once() -> Result<()> {
    let (ca, cb) = (memory_store()?, memory_store()?);
    split_between(ca, cb).await
}

/// The same from two sources that each run over a CAN service (`--can`):
/// the outboard comes from the service (`GET /sync/outboard/{hash}`) and
/// each run of groups from a ranged read, so neither source reads the
/// whole asset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_large_asset_comes_in_ranges_from_two_sources_behind_can_services() -> Result<()> {
    let (ca, _serving_a) = common::over_http(memory_store()?).await?;
    let (cb, _serving_b) = common::over_http(memory_store()?).await?;
    ensure!(ca.keeps_outboards().await && cb.keeps_outboards().await);
    split_between(ca, cb).await
}

/// `ca` and `cb` holding one asset of 96 groups and a tail, each
/// reconciling only once both sessions have begun (so that neither has
/// sent the whole asset before the other asks); with its hash and size.
async fn holding_one_large_asset(
    ca: SharedCan,
    cb: SharedCan,
) -> Result<(SharedCan, SharedCan, AssetHash, u64)> {
    let hash = push_large(ca.as_ref(), 96).await?;
    push_large(cb.as_ref(), 96).await?;
    let meeting = common::Meeting::of(2);
    let meet = |can: SharedCan, party: usize| -> SharedCan {
        Arc::new(common::SlowCan {
            meeting: Some((meeting.clone(), party)),
            ..common::SlowCan::delayed(can, std::time::Duration::ZERO, std::time::Duration::ZERO)
        })
    };
    Ok((meet(ca, 0), meet(cb, 1), hash, 96 * MIB + 4321))
}

/// The asset of `size` came whole into `receiving`, each source sent part
/// of it and nothing was refused; no group came twice but for the last
/// leases: a session with nothing left to lease takes a slower one's lease
/// again (once each), and on a loaded machine either may be the slower.
async fn assert_split_once(
    receiving: &EmbeddedCan,
    (hash, size): (AssetHash, u64),
    from_a: &SessionReport,
    from_b: &SessionReport,
) -> Result<()> {
    eprintln!(
        "from a: {} payload bytes, from b: {}",
        from_a.payload_bytes, from_b.payload_bytes
    );
    ensure!(is_whole(receiving, hash).await?);
    ensure!(
        from_a.rejected.is_empty() && from_b.rejected.is_empty(),
        "nothing refused: {:?} {:?}",
        from_a.rejected,
        from_b.rejected
    );
    ensure!(
        from_a.payload_bytes > 0 && from_b.payload_bytes > 0,
        "each source sent part of it: {} and {}",
        from_a.payload_bytes,
        from_b.payload_bytes
    );
    let sent = from_a.payload_bytes + from_b.payload_bytes;
    let retaken = 2 * can_sync::engine::split::LEASE_GROUPS * MIB;
    ensure!(
        (size..=size + retaken).contains(&sent),
        "every group once but a re-taken tail: {sent} bytes for {size}"
    );
    ensure!(receiving.partial_stats().await?.assets == 0);
    Ok(())
}

/// Both sources hold one asset of 96 groups and a tail; an empty store
/// seeds from both at once. Each sends part, no group comes twice but for
/// a re-taken tail, and the asset is committed once, whole.
async fn split_between(ca: SharedCan, cb: SharedCan) -> Result<()> {
    let (ca, cb, hash, size) = holding_one_large_asset(ca, cb).await?;
    let (_dir, receiving, from_a, from_b) = seed_from_both(ca, cb).await?;
    assert_split_once(&receiving, (hash, size), &from_a, &from_b).await?;
    ensure!(
        from_a.assets_received + from_b.assets_received == 1,
        "committed once"
    );
    Ok(())
}

/// Two peers that hold one large asset dial a node that lacks it. The
/// node, the responder of both sessions, learns what it lacks from each
/// initiator's last coded message, sizes included, so it splits the asset
/// between them as it does when it dials: each sends part, no group twice
/// but for a re-taken tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dialled_by_two_sources_splits_a_large_asset_between_them() -> Result<()> {
    let (ca, cb, hash, size) = holding_one_large_asset(memory_store()?, memory_store()?).await?;
    let (a, b) = (node(ca).await?, node(cb).await?);
    let dir = tempfile::tempdir()?;
    let receiving = Arc::new(EmbeddedCan::open(dir.path(), StoreLimits::default())?);
    let c = node(receiving.clone()).await?;
    let _accepts = serve(&c);
    let (from_a, from_b) = tokio::time::timeout(
        TIMEOUT,
        futures::future::join(
            a.sync_with(&c.ticket(), Protocol::V2),
            b.sync_with(&c.ticket(), Protocol::V2),
        ),
    )
    .await?;
    assert_split_once(&receiving, (hash, size), &from_a?, &from_b?).await
}

/// Two sources of one large asset, one of which starts every read 12 s
/// late. Once the fast source delivered its own leases, nothing is left to
/// lease, and the leases the slow one holds are re-asked from the fast one:
/// every group of the asset comes from the fast source, well before the
/// slow one sends anything.
/// A source that connects after the first began a large asset joins it:
/// a lone source's large asset is leased by runs from the start, so the
/// second session takes the runs still free, and each source sends part.
/// The receiver holds every delivery before its first group until the
/// second source reads a run: the first session, whose window holds four
/// runs of ten, can take no more meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_connects_later_joins_a_large_asset_under_way() -> Result<()> {
    let (first, second) = (memory_store()?, memory_store()?);
    let hash = push_large(first.as_ref(), 160).await?;
    push_large(second.as_ref(), 160).await?;
    let size = 160 * MIB + 4321;
    let gate = common::Gate::after_pulls(1);
    let second = Arc::new(common::SlowCan {
        reads_open: Some(gate.clone()),
        ..common::SlowCan::delayed(second, std::time::Duration::ZERO, std::time::Duration::ZERO)
    });
    let (a, b) = (node(first).await?, node(second).await?);
    let _accepts = [serve(&a), serve(&b)];
    let dir = tempfile::tempdir()?;
    let store = Arc::new(EmbeddedCan::open(dir.path(), StoreLimits::default())?);
    let receiving = Arc::new(common::SlowCan {
        ranges_gate: Some((0, gate)),
        ..common::SlowCan::delayed(
            store.clone(),
            std::time::Duration::ZERO,
            std::time::Duration::ZERO,
        )
    });
    let c = node(receiving).await?;
    tokio::time::timeout(TIMEOUT, async {
        let from_first = {
            let (c, ticket) = (c.clone(), a.ticket());
            tokio::spawn(async move { c.sync_with(&ticket, Protocol::V2).await })
        };
        // Under way: the first delivery began (its partial asset exists).
        let mut look = tokio::time::interval(std::time::Duration::from_millis(20));
        while store.partial_stats().await?.assets == 0 {
            look.tick().await;
        }
        let from_second = c.sync_with(&b.ticket(), Protocol::V2).await?;
        let from_first = from_first.await??;
        eprintln!(
            "first: {} payload bytes, second: {}",
            from_first.payload_bytes, from_second.payload_bytes
        );
        ensure!(is_whole(store.as_ref(), hash).await?);
        ensure!(
            from_first.payload_bytes > 0 && from_second.payload_bytes > 0,
            "each source sent part: {} and {}",
            from_first.payload_bytes,
            from_second.payload_bytes
        );
        let sent = from_first.payload_bytes + from_second.payload_bytes;
        let retaken = 2 * can_sync::engine::split::LEASE_GROUPS * MIB;
        ensure!(
            (size..=size + retaken).contains(&sent),
            "every group once but a re-taken tail: {sent} bytes for {size}"
        );
        ensure!(store.partial_stats().await?.assets == 0);
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_is_re_asked_from_the_faster_source() -> Result<()> {
    let (fast, slow) = (memory_store()?, memory_store()?);
    let hash = push_large(fast.as_ref(), 64).await?;
    push_large(slow.as_ref(), 64).await?;
    let size = 64 * MIB + 4321;
    // Split only if both sessions are pulling when one claims it: the
    // sources reconcile once both sessions have begun.
    let meeting = common::Meeting::of(2);
    let fast = Arc::new(common::SlowCan {
        meeting: Some((meeting.clone(), 0)),
        ..common::SlowCan::delayed(fast, std::time::Duration::ZERO, std::time::Duration::ZERO)
    });
    let slow = Arc::new(common::SlowCan {
        meeting: Some((meeting, 1)),
        ..common::SlowCan::delayed(
            slow,
            std::time::Duration::ZERO,
            std::time::Duration::from_secs(12),
        )
    });
    let (_dir, receiving, from_fast, from_slow) =
        seed_from_both(fast as SharedCan, slow as SharedCan).await?;
    eprintln!(
        "fast: {} payload bytes, slow: {} (its groups came twice)",
        from_fast.payload_bytes, from_slow.payload_bytes
    );
    ensure!(is_whole(receiving.as_ref(), hash).await?);
    ensure!(from_fast.rejected.is_empty() && from_slow.rejected.is_empty());
    ensure!(
        from_fast.payload_bytes == size,
        "every group from the fast source: {} of {size} bytes",
        from_fast.payload_bytes
    );
    ensure!(
        from_fast.assets_received == 1 && from_slow.assets_received == 0,
        "committed once, by the fast source's delivery"
    );
    Ok(())
}

/// A source sends group 3 of a 7-group asset with a flipped byte. The
/// receiver refuses that group by name ("bad range"), keeps groups 0 to 2,
/// and the other source then sends only groups 3 to 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_range_from_one_source_is_refused_and_the_other_sends_only_the_rest() -> Result<()> {
    let good = memory_store()?;
    let rotten = Arc::new(FlakyCan::new(memory_store()?));
    let hash = push_large(good.as_ref(), 6).await?;
    push_large(rotten.inner.as_ref(), 6).await?;
    rotten.set_rotten(true);
    let (a, b) = (node(good).await?, node(rotten.clone() as SharedCan).await?);
    let _accepts = [serve(&a), serve(&b)];
    let dir = tempfile::tempdir()?;
    let receiving = Arc::new(EmbeddedCan::open(dir.path(), StoreLimits::default())?);
    let c = node(receiving.clone()).await?;

    let from_rotten =
        tokio::time::timeout(TIMEOUT, c.sync_with(&b.ticket(), Protocol::V2)).await??;
    ensure!(from_rotten.assets_received == 0);
    let why = from_rotten
        .rejected
        .iter()
        .find(|r| r.hash == hash)
        .map(|r| r.reason.clone());
    ensure!(
        matches!(&why, Some(RejectReason::BadRange(text)) if text.contains("group 3")),
        "the bad source is named for group 3: {why:?}"
    );
    ensure!(receiving.meta(hash).await?.is_none(), "nothing visible yet");
    ensure!(
        receiving.resume_points(&[hash]).await? == vec![(hash, vec![3..7])],
        "groups 0 to 2 kept"
    );

    let from_good = tokio::time::timeout(TIMEOUT, c.sync_with(&a.ticket(), Protocol::V2)).await??;
    ensure!(from_good.assets_received == 1);
    ensure!(is_whole(receiving.as_ref(), hash).await?);
    eprintln!(
        "bad source: {} wire bytes; good source: {} wire bytes for the rest",
        from_rotten.wire_bytes, from_good.wire_bytes
    );
    ensure!(
        from_good.payload_bytes <= 4 * MIB + 4321 && from_good.payload_bytes > 3 * MIB,
        "the good source sent groups 3 to 6 only: {} payload bytes",
        from_good.payload_bytes
    );
    Ok(())
}

/// A source whose reads fail halfway through a 10-group asset: the
/// receiver keeps the first half. It restarts (its store reopened from
/// disk), and the next session, with a healthy source, moves only the
/// second half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_midway_resumes_after_a_restart() -> Result<()> {
    let healthy = memory_store()?;
    let failing = Arc::new(FlakyCan::new(memory_store()?));
    let hash = push_large(healthy.as_ref(), 10).await?;
    push_large(failing.inner.as_ref(), 10).await?;
    failing.cut_reads_at(5 * MIB + 100);
    let (a, b) = (
        node(healthy).await?,
        node(failing.clone() as SharedCan).await?,
    );
    let _accepts = [serve(&a), serve(&b)];
    let dir = tempfile::tempdir()?;
    {
        let receiving = Arc::new(EmbeddedCan::open(dir.path(), StoreLimits::default())?);
        let c = node(receiving.clone()).await?;
        let cut = tokio::time::timeout(TIMEOUT, c.sync_with(&b.ticket(), Protocol::V2)).await??;
        ensure!(cut.assets_received == 0);
        ensure!(receiving.meta(hash).await?.is_none(), "nothing visible yet");
        ensure!(
            receiving.partial_stats().await?.bytes == 5 * MIB,
            "five groups kept: {:?}",
            receiving.partial_stats().await?
        );
        c.endpoint().close().await;
    }
    let receiving = Arc::new(EmbeddedCan::open(dir.path(), StoreLimits::default())?);
    ensure!(receiving.resume_points(&[hash]).await? == vec![(hash, vec![5..11])]);
    let c = node(receiving.clone()).await?;
    let resumed = tokio::time::timeout(TIMEOUT, c.sync_with(&a.ticket(), Protocol::V2)).await??;
    ensure!(resumed.assets_received == 1);
    ensure!(is_whole(receiving.as_ref(), hash).await?);
    ensure!(
        resumed.payload_bytes == 5 * MIB + 4321,
        "only the second half moved: {} payload bytes",
        resumed.payload_bytes
    );
    ensure!(receiving.partial_stats().await?.assets == 0);
    Ok(())
}

/// A lone source's large asset travels by leases, and each lease is an
/// answer of its own: only those asked before the first answer brought
/// the outboard carry it, the later ones say the receiver holds it
/// (`Resume.outboard_held`) and come without. So what moves beyond the
/// asset's bytes is a few outboards, not one per lease (at the largest
/// ranged size an outboard is 2 MiB, one per 16 MiB lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_leases_of_an_asset_come_without_its_outboard() -> Result<()> {
    use can_sync::can::store::ranges;
    let source = memory_store()?;
    let groups = 320;
    let hash = push_large(source.as_ref(), groups).await?;
    let size = groups * MIB + 4321;
    let outboard_bytes = ranges::outboard_len(size) * ranges::CV_BYTES as u64;
    let leases = ranges::group_count(size).div_ceil(can_sync::engine::split::LEASE_GROUPS);
    let a = node(source).await?;
    let _accept = serve(&a);
    let dir = tempfile::tempdir()?;
    let receiving = Arc::new(EmbeddedCan::open(dir.path(), StoreLimits::default())?);
    let c = node(receiving.clone()).await?;
    let report = tokio::time::timeout(TIMEOUT, c.sync_with(&a.ticket(), Protocol::V2)).await??;
    ensure!(is_whole(receiving.as_ref(), hash).await?);
    ensure!(report.payload_bytes == size, "{report:?}");
    let beyond = report.wire_bytes - report.payload_bytes;
    eprintln!(
        "{leases} leases, outboard {outboard_bytes} bytes; {beyond} bytes beyond the payload"
    );
    // A window holds four leases, so four or five are asked before the
    // outboard has come; frames cost some 60 bytes a group besides. With
    // an outboard for each lease, this is over twice the bound.
    ensure!(
        beyond < leases / 2 * outboard_bytes,
        "{beyond} bytes beyond the payload: the outboard ({outboard_bytes} bytes) came with \
         half the leases or more ({leases} in all)"
    );
    Ok(())
}
