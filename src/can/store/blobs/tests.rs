use futures::{stream, StreamExt};

use super::super::fixtures::each_backend;
use super::super::fs::RealFs;
use super::super::EmbeddedCan;
use super::write_behind::FLUSH_EVERY;
use super::*;
use crate::can::Can;
use crate::pb;

/// A blob larger than [`FLUSH_EVERY`] goes through background flushes
/// and reads back whole; one whose body fails midway leaves no file, in
/// `tmp/` or under its hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_keeps_whole_blobs_and_drops_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedCan::open(dir.path(), Default::default()).unwrap();
    let data = Bytes::from(
        (0..(2 * FLUSH_EVERY + 12_345))
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let hash = AssetHash::of(&data);
    let chunks = |fail_after: Option<usize>| -> ByteStream {
        let mut parts: Vec<Result<Bytes, CanError>> = (0..data.len())
            .step_by(1 << 20)
            .map(|at| Ok(data.slice(at..(at + (1 << 20)).min(data.len()))))
            .collect();
        if let Some(at) = fail_after {
            parts.truncate(at);
            parts.push(Err(CanError::Unavailable("peer went away".into())));
        }
        stream::iter(parts).boxed()
    };
    let broken = store
        .write_blob(hash, pb::AssetMeta::default(), chunks(Some(20)))
        .await;
    assert!(
        matches!(broken, Err(CanError::Unavailable(_))),
        "{broken:?}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    assert!(store.meta(hash).await.unwrap().is_none());

    store
        .write_blob(hash, pb::AssetMeta::default(), chunks(None))
        .await
        .unwrap();
    let (size, body) = store.read_blob(hash, 0).await.unwrap();
    assert_eq!(size, data.len() as u64);
    let read: Vec<Bytes> = body.map(|c| c.unwrap()).collect().await;
    assert_eq!(read.concat(), data);
}

/// Every test below is bounded by this, so a hang fails instead of
/// stalling the suite.
const TEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The files in the store's `tmp/`.
fn temp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("tmp")).unwrap().count()
}

/// A body that yields `first`, then, when the store asks for more (so
/// it has counted and queued `first`), says so on the returned receiver
/// and goes on with `rest`.
fn body_then(
    first: Bytes,
    rest: impl futures::Stream<Item = Result<Bytes, CanError>> + Send + 'static,
) -> (ByteStream, tokio::sync::oneshot::Receiver<()>) {
    let (asked, on_asked) = tokio::sync::oneshot::channel();
    let signal = stream::once(async move {
        let _ = asked.send(());
    })
    .filter_map(|()| async { None });
    let body = stream::iter([Ok(first)]).chain(signal).chain(rest).boxed();
    (body, on_asked)
}

/// A streamed write whose body fails midway keeps nothing: no file in
/// `tmp/`, and its bytes no longer count against the quota.
#[tokio::test]
async fn a_failed_stream_leaves_no_partial_file_and_gives_its_quota_back() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedCan::open(dir.path(), Default::default()).unwrap();
        let chunk = Bytes::from(vec![5u8; 100_000]);
        let body = stream::iter([
            Ok(chunk.clone()),
            Ok(chunk),
            Err(CanError::Unavailable("stream reset".into())),
        ])
        .boxed();
        let failed = store
            .write_blob(AssetHash::of(b"whatever"), pb::AssetMeta::default(), body)
            .await;
        assert!(
            matches!(failed, Err(CanError::Unavailable(_))),
            "{failed:?}"
        );
        assert_eq!(temp_files(dir.path()), 0);
        assert_eq!(store.partial.counted(), 0);
    })
    .await
    .expect("in time");
}

/// A streamed write dropped midway (its task aborted while the body
/// waits for bytes that never come) leaves no file in `tmp/` once the
/// drop returns, and gives its quota back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_leaves_no_partial_file() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(EmbeddedCan::open(dir.path(), Default::default()).unwrap());
        let (body, asked) = body_then(Bytes::from(vec![1u8; 70_000]), stream::pending());
        let writing = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write_blob(
                        AssetHash::of(b"never whole"),
                        pb::AssetMeta::default(),
                        body,
                    )
                    .await
            }
        });
        asked.await.unwrap();
        assert_eq!(temp_files(dir.path()), 1, "the partial file is there");
        assert_eq!(store.partial.counted(), 70_000);
        writing.abort();
        let joined = writing.await;
        assert!(joined.unwrap_err().is_cancelled());
        // The future is dropped before the join answers: no waiting.
        assert_eq!(temp_files(dir.path()), 0);
        assert_eq!(store.partial.counted(), 0);
    })
    .await
    .expect("in time");
}

/// Two writes in flight share the quota: the one whose chunk crosses it
/// fails, naming the quota, and removes its file while the other goes
/// on; what it had counted is given back at once, so a write that fits
/// beside the other then succeeds, and once all are done the whole
/// quota is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_the_quota_and_the_one_crossing_it_fails() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let limits = super::super::StoreLimits {
            max_partial_bytes: 1_000,
            ..Default::default()
        };
        let store = std::sync::Arc::new(EmbeddedCan::open(dir.path(), limits).unwrap());
        let write = |data: Vec<u8>, chunk: usize| {
            let hash = AssetHash::of(&data);
            let parts: Vec<Result<Bytes, CanError>> = data
                .chunks(chunk)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            store.write_blob(hash, pb::AssetMeta::default(), stream::iter(parts).boxed())
        };

        // The first holds 600 bytes and waits.
        let first = Bytes::from(vec![1u8; 600]);
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let rest = stream::once(async move {
            let _ = finished.await;
        })
        .filter_map(|()| async { None });
        let (body, asked) = body_then(first.clone(), rest);
        let holding = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write_blob(AssetHash::of(&first), pb::AssetMeta::default(), body)
                    .await
            }
        });
        asked.await.unwrap();
        assert_eq!(store.partial.counted(), 600);

        // The second counts 300, then its next 300 would make 1200.
        let crossing = write(vec![2u8; 600], 300).await;
        let Err(err) = crossing else {
            panic!("the write crossing the quota succeeded");
        };
        assert!(matches!(err, CanError::Unavailable(_)), "{err:?}");
        assert!(err.to_string().contains("max_partial_bytes"), "{err}");
        assert_eq!(temp_files(dir.path()), 1, "only the holding write's file");
        assert_eq!(
            store.partial.counted(),
            600,
            "the failed write's 300 given back"
        );

        // 600 + 300 fits only because the failed write gave its 300 back.
        write(vec![3u8; 300], 300).await.unwrap();

        finish.send(()).unwrap();
        holding.await.unwrap().unwrap();
        assert_eq!(store.partial.counted(), 0);
        assert_eq!(temp_files(dir.path()), 0);
        write(vec![4u8; 1_000], 250).await.unwrap();
    })
    .await
    .expect("in time");
}

/// An asset over the store's limit is refused as too large, not as a
/// full quota, even when its bytes would also cross the quota: the one
/// is final, the other worth a retry.
#[tokio::test]
async fn an_asset_over_the_limit_is_too_large_not_over_quota() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let limits = super::super::StoreLimits {
            max_asset_bytes: 1_000,
            max_partial_bytes: 1_000,
            ..super::super::StoreLimits::default()
        };
        let dir = tempfile::tempdir().unwrap();
        for store in [
            EmbeddedCan::memory(limits).unwrap(),
            EmbeddedCan::open(dir.path(), limits).unwrap(),
        ] {
            let data = Bytes::from(vec![6u8; 1_200]);
            let body = stream::iter([Ok(data.clone())]).boxed();
            let refused = store
                .write_blob(AssetHash::of(&data), pb::AssetMeta::default(), body)
                .await;
            assert!(
                matches!(
                    refused,
                    Err(CanError::TooLarge {
                        size: 1_200,
                        limit: 1_000
                    })
                ),
                "{refused:?}"
            );
            assert_eq!(store.partial.counted(), 0);
        }
        assert_eq!(temp_files(dir.path()), 0);
    })
    .await
    .expect("in time");
}

/// A file is read in whole chunks and one short last one, from any
/// offset, each chunk's buffer its own size; one of exactly whole chunks
/// ends without an empty chunk.
#[tokio::test]
async fn files_are_read_in_whole_chunks_from_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    for (size, offset) in [
        (0, 0),
        (READ_CHUNK, 0),
        (2 * READ_CHUNK + 1, 0),
        (READ_CHUNK + 9, 9),
    ] {
        let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let path = dir.path().join(format!("blob-{size}"));
        std::fs::write(&path, &data).unwrap();
        let mut file = RealFs.open(&path).unwrap();
        file.seek(std::io::SeekFrom::Start(offset as u64)).unwrap();
        let rest = size - offset;
        let chunks: Vec<Bytes> = file_chunks(file, rest as u64)
            .map(|c| c.unwrap())
            .collect()
            .await;
        let sizes: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        let mut expected = vec![READ_CHUNK; rest / READ_CHUNK];
        if rest % READ_CHUNK != 0 {
            expected.push(rest % READ_CHUNK);
        }
        assert_eq!(sizes, expected, "{size} bytes from {offset}");
        assert_eq!(chunks.concat(), data[offset..]);
    }
    // A file shorter than it was said to be ends where it ends.
    let path = dir.path().join("short");
    std::fs::write(&path, [1u8; 100]).unwrap();
    let file = RealFs.open(&path).unwrap();
    let chunks: Vec<Bytes> = file_chunks(file, 5_000).map(|c| c.unwrap()).collect().await;
    assert_eq!(chunks.concat(), [1u8; 100]);
}

#[tokio::test]
async fn streamed_write_commits_only_a_matching_hash() {
    each_backend(async |store| {
        let data = vec![7u8; 700_000];
        let hash = AssetHash::of(&data);
        let chunks = || -> ByteStream {
            let parts: Vec<Result<Bytes, CanError>> = data
                .chunks(65_536)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            stream::iter(parts).boxed()
        };
        let wrong = store
            .write_blob(AssetHash::of(b"other"), pb::AssetMeta::default(), chunks())
            .await;
        assert!(matches!(wrong, Err(CanError::HashMismatch { .. })));
        assert_eq!(store.stats().await.unwrap().assets, 0);
        let pushed = store
            .write_blob(hash, pb::AssetMeta::default(), chunks())
            .await
            .unwrap();
        assert!(!pushed.already_existed);
        let (size, body) = store.read_blob(hash, 100).await.unwrap();
        assert_eq!(size, 700_000);
        let read: Vec<Bytes> = body.map(|c| c.unwrap()).collect().await;
        assert_eq!(read.concat(), data[100..]);
    })
    .await;
}
