//! Object storage (`--blobs s3://…`) against a real S3 server: `s3s-fs`
//! started on loopback by each test (`common::s3`), never a mock. A seed
//! into an S3-backed node, a restart of it with its index intact, the
//! server killed mid-transfer, `fsck` over damaged objects, a mismatched
//! upload, and a large asset streamed up as one `PUT` (and one cut midway).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use can_sync::asset::AssetHash;
use can_sync::can::store::objects::PART_BYTES;
use can_sync::can::{Can, CanError, EmbeddedCan, SharedCan, StoreLimits};
use can_sync::node::Protocol;
use can_sync::pb;
use common::s3::S3Server;
use common::{assert_converged, bundle, memory_store, node, serve, FlakyCan, TIMEOUT};
use futures::StreamExt;

/// Small segments, so that a test's few hundred small assets seal several
/// and the sealed ones move to the bucket.
fn limits() -> StoreLimits {
    StoreLimits {
        segment_bytes: 256 * 1024,
        ..StoreLimits::default()
    }
}

/// A source holding every size class an S3-backed store handles
/// differently: packed values (sealing segments), blobs of one `PUT`, and
/// blobs of a multipart upload (several parts, and a short last one).
async fn source() -> Result<SharedCan> {
    let can = memory_store()?;
    for i in 0..300 {
        can.push(bundle(i, 4096, 10)).await?;
    }
    for i in 300..303 {
        can.push(bundle(i, 300 * 1024 + i as usize, 10)).await?;
    }
    for i in 303..305 {
        can.push(bundle(i, 2 * PART_BYTES + 12_345 * i as usize, 10))
            .await?;
    }
    Ok(can)
}

/// Every object under `prefix/blobs` hashes to its name.
fn assert_blob_objects_whole(server: &S3Server, prefix: &str) -> usize {
    let objects = server.objects(prefix, "blobs");
    for path in &objects {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let actual = AssetHash::of(&std::fs::read(path).unwrap()).to_hex();
        assert_eq!(
            actual,
            name,
            "object {} does not hash to its name",
            path.display()
        );
    }
    objects.len()
}

/// The files in the store's `packs/`.
fn local_segments(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("packs")).unwrap().count()
}

async fn open(dir: &Path, server: &S3Server, retry_for: Duration) -> Result<Arc<EmbeddedCan>> {
    Ok(Arc::new(EmbeddedCan::open_with_objects(
        dir,
        limits(),
        &server.config("node-b", retry_for),
    )?))
}

/// A seed into an S3-backed node stores large blobs as objects named by
/// their hash and moves sealed segments to the bucket; reopened with its
/// index intact (and no local copy of anything but the open segment), the
/// node serves everything, to a reader and to a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_s3_node_serves_everything_after_a_restart() -> Result<()> {
    tokio::time::timeout(TIMEOUT * 3, async {
        let server = S3Server::start().await?;
        let src = source().await?;
        let dir = tempfile::tempdir()?;
        let store = open(dir.path(), &server, Duration::from_secs(10)).await?;
        let (a, b) = (node(src.clone()).await?, node(store.clone()).await?);
        let _accept = serve(&a);
        let report = b.sync_with(&a.ticket(), Protocol::V2).await?;
        assert_eq!(report.assets_received, 305);
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        assert_converged(src.as_ref(), store.as_ref()).await?;

        assert_eq!(assert_blob_objects_whole(&server, "node-b"), 5);
        assert!(
            !dir.path().join("blobs").exists(),
            "no blob is kept locally"
        );
        store.upload_sealed().await?;
        let uploaded = server.objects("node-b", "packs").len();
        assert!(uploaded >= 3, "{uploaded} segments uploaded");
        assert_eq!(local_segments(dir.path()), 1, "only the open segment stays");
        let stats = store.object_stats().expect("an S3-backed store");
        assert_eq!(stats.errors, 0, "{stats:?}");
        drop((a, b));
        drop(store);

        let reopened = open(dir.path(), &server, Duration::from_secs(10)).await?;
        assert_converged(src.as_ref(), reopened.as_ref()).await?;
        // Large blobs read by range, from any offset.
        let large = bundle(303, 2 * PART_BYTES + 12_345 * 303, 10);
        let offset = PART_BYTES as u64 + 7;
        let (size, body) = reopened.read_blob(large.hash, offset).await?;
        assert_eq!(size, large.data.len() as u64);
        let read: Vec<Bytes> = body.map(|chunk| chunk.unwrap()).collect().await;
        assert_eq!(read.concat(), large.data[offset as usize..]);
        // And to a fresh peer, from the reopened node.
        let c = memory_store()?;
        let (from, to) = (node(reopened.clone()).await?, node(c.clone()).await?);
        let _accept = serve(&from);
        let report = to.sync_with(&from.ticket(), Protocol::V2).await?;
        assert_eq!(report.assets_received, 305);
        assert_converged(src.as_ref(), c.as_ref()).await?;
        anyhow::Ok(())
    })
    .await?
}

/// A body that yields `data` in 1 MiB chunks.
fn chunks(data: &Bytes) -> can_sync::can::ByteStream {
    let parts: Vec<Result<Bytes, CanError>> = (0..data.len())
        .step_by(1 << 20)
        .map(|at| Ok(data.slice(at..(at + (1 << 20)).min(data.len()))))
        .collect();
    futures::stream::iter(parts).boxed()
}

/// Bytes that do not hash to the hash they are offered under are refused,
/// the multipart upload of a large one aborted (its streamed `PUT` cut when
/// its size was told): no object appears, under either hash, and the server
/// keeps no part of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_upload_is_aborted_and_nothing_is_visible() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let server = S3Server::start().await?;
        let dir = tempfile::tempdir()?;
        let store = open(dir.path(), &server, Duration::from_secs(10)).await?;
        for len in [PART_BYTES / 2, 3 * PART_BYTES + 5] {
            let data = Bytes::from(bundle(1, len, 10).data.to_vec());
            let claimed = AssetHash::of(b"something else");
            let refused = store
                .write_blob(claimed, pb::AssetMeta::default(), chunks(&data))
                .await;
            assert!(
                matches!(refused, Err(CanError::HashMismatch { .. })),
                "{refused:?}"
            );
            assert!(!server.blob_file("node-b", &claimed).exists());
            assert!(!server.blob_file("node-b", &AssetHash::of(&data)).exists());
            assert!(store.meta(claimed).await?.is_none());
        }
        // The same with the size told (a peer's header): one streamed PUT,
        // cut, whatever the bytes; and a body shorter than told.
        let data = Bytes::from(bundle(3, 3 * PART_BYTES + 5, 10).data.to_vec());
        let claimed = AssetHash::of(b"something else again");
        let refused = store
            .write_blob_of_size(
                claimed,
                pb::AssetMeta::default(),
                data.len() as u64,
                chunks(&data),
            )
            .await;
        assert!(
            matches!(refused, Err(CanError::HashMismatch { .. })),
            "{refused:?}"
        );
        let short = store
            .write_blob_of_size(
                AssetHash::of(&data),
                pb::AssetMeta::default(),
                data.len() as u64 + 1,
                chunks(&data),
            )
            .await;
        assert!(short.is_err(), "a body shorter than told: {short:?}");
        for hash in [claimed, AssetHash::of(&data)] {
            assert!(!server.blob_file("node-b", &hash).exists());
            assert!(store.meta(hash).await?.is_none());
        }
        // The aborted upload's parts are gone from the server.
        let leftovers: Vec<_> = std::fs::read_dir(server.bucket_dir().parent().unwrap())?
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".upload_id-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // The same bytes under their own hash go in, and an existing
        // object is success, not an error.
        let data = Bytes::from(bundle(2, 3 * PART_BYTES + 5, 10).data.to_vec());
        let hash = AssetHash::of(&data);
        store
            .write_blob(hash, pb::AssetMeta::default(), chunks(&data))
            .await?;
        let other = tempfile::tempdir()?;
        let second = open(other.path(), &server, Duration::from_secs(10)).await?;
        let again = second
            .write_blob(hash, pb::AssetMeta::default(), chunks(&data))
            .await?;
        assert!(!again.already_existed, "new to the second index");
        assert_eq!(assert_blob_objects_whole(&server, "node-b"), 1);
        anyhow::Ok(())
    })
    .await?
}

/// The server killed while a seed streams large blobs into the node: the
/// seed fails, no object that does not hash to its name is left, and once
/// the server is back a second seed completes, with every asset whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_transfer_leaves_no_bad_object() -> Result<()> {
    tokio::time::timeout(TIMEOUT * 3, async {
        let mut server = S3Server::start().await?;
        let src = memory_store()?;
        for i in 0..6 {
            src.push(bundle(1000 + i, 3 * PART_BYTES + 99 * i as usize, 10))
                .await?;
        }
        let dir = tempfile::tempdir()?;
        // Requests fail after a second of retries: the seed gives up.
        let store = open(dir.path(), &server, Duration::from_secs(1)).await?;
        let (a, b) = (node(src.clone()).await?, node(store.clone()).await?);
        let _accept = serve(&a);
        let seeding = {
            let (b, ticket) = (b.clone(), a.ticket());
            tokio::spawn(async move { b.sync_with(&ticket, Protocol::V2).await })
        };
        // Mid-transfer: parts of the first uploads have reached the server.
        let mut watch = tokio::time::interval(Duration::from_millis(20));
        while store.object_stats().unwrap().requests < 6 {
            watch.tick().await;
        }
        server.kill().await?;
        let first = seeding.await?;
        let incomplete = match &first {
            Ok(report) => report.assets_received < 6,
            Err(_) => true,
        };
        assert!(incomplete, "the seed finished before the kill: {first:?}");
        let stats = store.object_stats().unwrap();
        assert!(stats.errors > 0 && stats.last_error.is_some(), "{stats:?}");
        assert_blob_objects_whole(&server, "node-b");

        server.restart().await?;
        let second = b.sync_with(&a.ticket(), Protocol::V2).await?;
        assert!(second.rejected.is_empty(), "{:?}", second.rejected);
        assert_converged(src.as_ref(), store.as_ref()).await?;
        assert_eq!(assert_blob_objects_whole(&server, "node-b"), 6);
        anyhow::Ok(())
    })
    .await?
}

/// A large asset whose groups arrive in order goes up as they arrive, as
/// one streamed `PUT`: one request, where a multipart upload makes one per
/// part and two more. Cut midway (its source fails), the `PUT` is given up
/// and nothing is visible under its name, on the server or in the index;
/// the next session completes the partial asset, and its local copy goes
/// up whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_asset_streams_up_as_one_put_and_a_cut_one_leaves_nothing() -> Result<()> {
    tokio::time::timeout(TIMEOUT * 2, async {
        let server = S3Server::start().await?;
        let dir = tempfile::tempdir()?;
        let store = open(dir.path(), &server, Duration::from_secs(10)).await?;
        let b = node(store.clone()).await?;

        let src = memory_store()?;
        let whole = bundle(2000, 3 * PART_BYTES + 99, 10);
        src.push(whole.clone()).await?;
        let a = node(src).await?;
        let _accept_a = serve(&a);
        let report = b.sync_with(&a.ticket(), Protocol::V2).await?;
        assert_eq!(report.assets_received, 1);
        let stats = store.object_stats().expect("an S3-backed store");
        assert_eq!((stats.requests, stats.errors), (1, 0), "one PUT: {stats:?}");
        assert!(server.blob_file("node-b", &whole.hash).exists());

        // A second node over the same bucket and prefix, its own index
        // empty: its PUT of the same asset finds the object there (412,
        // answered before the body), which stands.
        let other_dir = tempfile::tempdir()?;
        let other = open(other_dir.path(), &server, Duration::from_secs(10)).await?;
        let o = node(other.clone()).await?;
        let again = o.sync_with(&a.ticket(), Protocol::V2).await?;
        assert_eq!(again.assets_received, 1, "{:?}", again.rejected);
        assert!(other.meta(whole.hash).await?.is_some());
        let stats = other.object_stats().expect("an S3-backed store");
        assert_eq!(stats.errors, 0, "{stats:?}");
        assert_eq!(assert_blob_objects_whole(&server, "node-b"), 1);

        let flaky = Arc::new(FlakyCan::new(memory_store()?));
        let cut = bundle(2001, 3 * PART_BYTES + 77, 10);
        flaky.inner.push(cut.clone()).await?;
        flaky.cut_reads_at(PART_BYTES as u64 + 3);
        let c = node(flaky.clone()).await?;
        let _accept_c = serve(&c);
        let first = b.sync_with(&c.ticket(), Protocol::V2).await;
        assert!(
            first.map_or(true, |report| report.assets_received == 0),
            "the cut asset was not received"
        );
        assert!(!server.blob_file("node-b", &cut.hash).exists());
        assert!(store.meta(cut.hash).await?.is_none());
        assert_eq!(store.partial_stats().await?.assets, 1, "kept in part");

        flaky.cut_reads_at(u64::MAX);
        let second = b.sync_with(&c.ticket(), Protocol::V2).await?;
        assert!(second.rejected.is_empty(), "{:?}", second.rejected);
        assert!(store.meta(cut.hash).await?.is_some());
        assert_eq!(assert_blob_objects_whole(&server, "node-b"), 2);
        assert_eq!(store.partial_stats().await?.assets, 0);
        anyhow::Ok(())
    })
    .await?
}

/// `fsck` through the CLI with `--blobs`: it reads every asset from the
/// bucket and names the one whose object was damaged, the one whose object
/// is gone, and the packed values of a sealed segment whose object is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_names_damaged_and_missing_objects() -> Result<()> {
    tokio::time::timeout(TIMEOUT * 2, async {
        let server = S3Server::start().await?;
        let dir = tempfile::tempdir()?;
        let store = open(dir.path(), &server, Duration::from_secs(10)).await?;
        let src = source().await?;
        let (a, b) = (node(src.clone()).await?, node(store.clone()).await?);
        let _accept = serve(&a);
        b.sync_with(&a.ticket(), Protocol::V2).await?;
        store.upload_sealed().await?;
        drop((a, b));
        drop(store);

        let damaged = bundle(300, 300 * 1024 + 300, 10).hash;
        let missing = bundle(303, 2 * PART_BYTES + 12_345 * 303, 10).hash;
        let mut bytes = std::fs::read(server.blob_file("node-b", &damaged))?;
        bytes[1000] ^= 0xff;
        std::fs::write(server.blob_file("node-b", &damaged), bytes)?;
        std::fs::remove_file(server.blob_file("node-b", &missing))?;
        let segment = server.objects("node-b", "packs").remove(0);
        std::fs::remove_file(&segment)?;

        let url = "s3://archive/node-b";
        let out = tokio::process::Command::new(common::process::BIN)
            .args(["fsck", "--store", dir.path().to_str().unwrap()])
            .args(["--blobs", url, "--s3-endpoint", &server.endpoint])
            .env("RUST_LOG", "error")
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{stdout}");
        let named: Vec<&str> = stdout
            .lines()
            .filter(|line| line.starts_with("damaged "))
            .collect();
        assert!(
            named
                .iter()
                .any(|line| line.contains(&damaged.to_hex()) && line.contains("hash")),
            "{stdout}"
        );
        assert!(
            named
                .iter()
                .any(|line| line.contains(&missing.to_hex()) && line.contains("missing")),
            "{stdout}"
        );
        // The lost segment's values: 256 KiB segments hold 63 of 4 KiB.
        assert!(named.len() >= 2 + 60, "{} named:\n{stdout}", named.len());
        anyhow::Ok(())
    })
    .await?
}

/// Small values served back from sealed segments in the bucket: a pull of
/// many of them reads the values stored side by side with one ranged `GET`
/// per run of them (here one per segment, the values having been added
/// together), not one per value, and gives each value back whole, in the
/// order asked, beside a value of the open segment on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_from_sealed_segments_in_the_bucket_reads_neighbours_together() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let server = S3Server::start().await?;
        let dir = tempfile::tempdir()?;
        let store = open(dir.path(), &server, Duration::from_secs(10)).await?;
        let values: Vec<_> = (0..200).map(|i| bundle(5000 + i, 4096, 10)).collect();
        let verified = values
            .iter()
            .cloned()
            .map(|b| b.verify())
            .collect::<Result<Vec<_>, _>>()?;
        for pushed in store.push_batch(verified).await? {
            pushed?;
        }
        // The store's own task moves them too, after the commit: until both
        // are done, a try may find a file the other just removed.
        let mut tries = 0;
        while store.upload_sealed().await.is_err() || local_segments(dir.path()) > 1 {
            tries += 1;
            assert!(tries < 100, "the sealed segments never all moved");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // And no request of that task may land during the pull.
        let requests = || store.object_stats().expect("an S3-backed store").requests;
        let mut settled = requests();
        loop {
            tokio::time::sleep(Duration::from_millis(700)).await;
            if requests() == settled {
                break;
            }
            settled = requests();
        }
        let sealed = server.objects("node-b", "packs").len() as u64;
        // 256 KiB segments hold 63 values of 4 KiB: three sealed, the
        // fourth open on disk.
        assert_eq!(sealed, 3, "sealed segments in the bucket");
        assert_eq!(local_segments(dir.path()), 1, "only the open segment stays");

        // Asked in reverse, so that the order asked is not the order stored.
        let asked: Vec<AssetHash> = values.iter().rev().map(|b| b.hash).collect();
        let before = requests();
        let pulled = store.pull(&asked).await?;
        let used = requests() - before;
        assert!(pulled.missing.is_empty(), "{:?}", pulled.missing);
        let got: Vec<(AssetHash, Bytes)> = pulled
            .bundles
            .iter()
            .map(|b| (b.hash, b.data.clone()))
            .collect();
        let want: Vec<(AssetHash, Bytes)> = values
            .iter()
            .rev()
            .map(|b| (b.hash, b.data.clone()))
            .collect();
        assert!(
            got == want,
            "the values came back whole, in the order asked"
        );
        assert_eq!(used, sealed, "one GET per sealed segment, not per value");
        anyhow::Ok(())
    })
    .await?
}
