//! The embedded store's operations, on each backend: pushes and their
//! metadata, listings, the change log, packing, reopening, old schemas.

use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;

use super::fixtures::{bundle, each_backend};
use super::open::DATABASE_FILE;
use super::*;
use crate::asset::{MetaEdit, MetaUpdate};
use crate::can::{Can, ChangeKind, StoreStats};
use crate::clock::now_ms;

#[tokio::test]
async fn push_is_verified_idempotent_and_merges_metadata() {
    each_backend(async |store| {
        let first = store.push(bundle(b"abc", "one", 1)).await.unwrap();
        assert!(!first.already_existed);
        let again = store.push(bundle(b"abc", "two", 2)).await.unwrap();
        assert!(again.already_existed);
        let (size, meta) = store.meta(first.hash).await.unwrap().unwrap();
        assert_eq!((size, meta.description.as_str()), (3, "two"));
        assert_eq!(
            store.stats().await.unwrap(),
            StoreStats {
                assets: 1,
                bytes: 3
            }
        );

        let mut forged = bundle(b"abc", "x", 1);
        forged.data = Bytes::from_static(b"abd");
        assert!(matches!(
            store.push(forged).await,
            Err(CanError::HashMismatch { .. })
        ));
        assert_eq!(store.stats().await.unwrap().assets, 1);

        let pulled = store
            .pull(&[first.hash, AssetHash::of(b"nope")])
            .await
            .unwrap();
        assert_eq!(pulled.bundles.len(), 1);
        assert_eq!(pulled.bundles[0].data, &b"abc"[..]);
        assert_eq!(pulled.missing, vec![AssetHash::of(b"nope")]);
    })
    .await;
}

/// A stamp further ahead than the bound is refused wherever metadata
/// enters, and nothing of it is kept: the `i64::MAX` freeze of issue 19.
#[tokio::test]
async fn metadata_from_the_future_is_refused_and_keeps_nothing() {
    each_backend(async |store| {
        let frozen = bundle(b"frozen", "from the future", i64::MAX);
        let hash = frozen.hash;
        assert!(matches!(
            store.push(frozen.clone()).await,
            Err(CanError::FutureStamp(_))
        ));
        assert!(store.meta(hash).await.unwrap().is_none(), "no bytes kept");
        let stream = futures::stream::iter([Ok(frozen.data.clone())]).boxed();
        assert!(matches!(
            store.write_blob(hash, frozen.meta.clone(), stream).await,
            Err(CanError::FutureStamp(_))
        ));
        assert!(store.meta(hash).await.unwrap().is_none());

        let now = now_ms();
        store.push(bundle(b"frozen", "mine", now)).await.unwrap();
        let update = MetaUpdate::of(hash, &frozen.meta);
        let refused = store.apply_meta(update).await.unwrap_err();
        assert!(
            refused.to_string().contains("ahead of this node's clock"),
            "{refused}"
        );
        // Within the bound (a peer whose clock runs a minute ahead): kept.
        let ahead = MetaUpdate::of(hash, &bundle(b"frozen", "ahead", now + 60_000).meta);
        assert!(store.apply_meta(ahead).await.unwrap());
        let (_, meta) = store.meta(hash).await.unwrap().unwrap();
        assert_eq!(meta.description, "ahead");
    })
    .await;
}

/// A user's edit wins over what it replaces, even a stamp a peer put
/// ahead of this clock, without taking a far-future stamp; and the
/// edit then wins on a node that held the replaced value.
#[tokio::test]
async fn an_edit_wins_over_what_it_replaces_and_on_other_nodes() {
    each_backend(async |store| {
        let ahead_ms = now_ms() + 60_000;
        let planted = bundle(b"edited", "planted by a peer", ahead_ms);
        let hash = planted.hash;
        store.push(planted.clone()).await.unwrap();
        let other = EmbeddedCan::memory(StoreLimits::default()).unwrap();
        other.push(planted).await.unwrap();

        let edit = MetaEdit {
            hash,
            description: Some("the owner's".into()),
            tags: None,
            is_trashed: Some(true),
        };
        let after = store.edit_meta(edit).await.unwrap();
        assert_eq!(after.description, "the owner's");
        assert!(after.is_trashed);
        assert_eq!(
            after.meta_updated_at_ms,
            ahead_ms + 1,
            "one past what it replaced"
        );
        let kept = store.pull(&[hash]).await.unwrap();
        assert_eq!(
            kept.bundles[0].data,
            &b"edited"[..],
            "an edit keeps the bytes"
        );
        assert!(after.meta_updated_at_ms <= now_ms() + StoreLimits::default().clock.max_skew_ms);

        assert!(other
            .apply_meta(MetaUpdate::of(hash, &after))
            .await
            .unwrap());
        let (_, there) = other.meta(hash).await.unwrap().unwrap();
        assert_eq!(there.description, "the owner's");

        let unknown = MetaEdit {
            hash: AssetHash::of(b"unknown"),
            description: None,
            tags: None,
            is_trashed: Some(true),
        };
        assert!(matches!(
            store.edit_meta(unknown).await,
            Err(CanError::NotFound(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn list_since_follows_change_time() {
    each_backend(async |store| {
        store.push(bundle(b"one", "", 1)).await.unwrap();
        let all = store.list_since(i64::MIN, None, 10).await.unwrap();
        assert_eq!((all.items.len(), all.next), (1, None));
        let later = now_ms() + 60_000;
        assert!(store
            .list_since(later, None, 10)
            .await
            .unwrap()
            .items
            .is_empty());
        assert_eq!(store.list_since(0, None, 10).await.unwrap().items.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn listings_page_with_cursors_and_never_answer_with_everything() {
    each_backend(async |store| {
        for i in 0..25u32 {
            store.push(bundle(&i.to_le_bytes(), "", 1)).await.unwrap();
        }
        let mut by_hash = Vec::new();
        let mut after = None;
        loop {
            let page = store.list_page(after, 10).await.unwrap();
            assert!(page.items.len() <= 10);
            by_hash.extend(page.items.iter().map(|s| s.hash));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut sorted = by_hash.clone();
        sorted.sort();
        assert_eq!(by_hash, sorted, "hash order");
        assert_eq!(by_hash.len(), 25);

        let mut since = Vec::new();
        let mut after = None;
        loop {
            let page = store.list_since(0, after, 7).await.unwrap();
            since.extend(page.items.iter().map(|s| s.hash));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(since.len(), 25, "every asset once, by change time");
    })
    .await;
}

#[tokio::test]
async fn the_change_log_keeps_the_latest_change_of_each_asset() {
    each_backend(async |store| {
        let a = store.push(bundle(b"a", "", 1)).await.unwrap().hash;
        let b = store.push(bundle(b"b", "", 1)).await.unwrap().hash;
        for at in 2..6 {
            let mut update = MetaUpdate::of(a, &bundle(b"a", "edited", at).meta);
            update.created_at_ms = 0;
            assert!(store.apply_meta(update).await.unwrap());
        }
        let page = store.changes(0, 100).await.unwrap();
        let log: Vec<_> = page
            .changes
            .iter()
            .map(|c| (c.summary.hash, c.kind))
            .collect();
        assert_eq!(log, vec![(b, ChangeKind::Asset), (a, ChangeKind::Meta)]);
        assert_eq!(page.next_after, page.changes[1].seq);
        assert_eq!(page.changes[1].summary.version.updated_at_ms, 5);
        let rest = store.changes(page.next_after, 100).await.unwrap();
        assert!(rest.changes.is_empty());
        assert_eq!(
            (rest.next_after, rest.store_id),
            (page.next_after, page.store_id)
        );
        // A second page picks up where the first ended.
        let first = store.changes(0, 1).await.unwrap();
        let second = store.changes(first.next_after, 1).await.unwrap();
        assert_eq!(second.changes[0].summary.hash, a);
    })
    .await;
}

#[tokio::test]
async fn a_disk_store_reopens_with_everything_and_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let hash = {
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        std::fs::write(dir.path().join("tmp").join("leftover"), b"half").unwrap();
        store.push(bundle(b"kept", "d", 3)).await.unwrap().hash
    };
    let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
    assert_eq!(store.meta(hash).await.unwrap().unwrap().1.description, "d");
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

fn verified(data: &[u8], description: &str) -> VerifiedBundle {
    bundle(data, description, 1).verify().unwrap()
}

/// A batch mixing a small asset, one past the inline limit, one already
/// held and one too large: one commit, one answer per bundle in order,
/// and the refusal fails only its own slot.
#[tokio::test]
async fn a_batch_commits_together_and_answers_each_bundle() {
    let limits = StoreLimits {
        max_asset_bytes: 2 * INLINE_LIMIT,
        ..StoreLimits::default()
    };
    let dir = tempfile::tempdir().unwrap();
    for store in [
        EmbeddedCan::memory(limits).unwrap(),
        EmbeddedCan::open(dir.path(), limits).unwrap(),
    ] {
        let held = store.push(bundle(b"held", "", 1)).await.unwrap();
        let large = vec![9u8; INLINE_LIMIT as usize + 1];
        let too_large = vec![7u8; 2 * INLINE_LIMIT as usize + 1];
        let before = schema::read_last_seq(&store.db).unwrap();
        let answers = store
            .push_batch(vec![
                verified(b"small", "s"),
                verified(&large, "l"),
                verified(b"held", ""),
                verified(&too_large, "x"),
            ])
            .await
            .unwrap();
        assert_eq!(answers.len(), 4);
        let small = answers[0].as_ref().unwrap();
        assert!(!small.already_existed);
        assert!(!answers[1].as_ref().unwrap().already_existed);
        assert_eq!(answers[2].as_ref().unwrap().hash, held.hash);
        assert!(answers[2].as_ref().unwrap().already_existed);
        assert!(matches!(answers[3], Err(CanError::TooLarge { .. })));
        // The two new assets share one commit: consecutive changes.
        assert_eq!(
            (small.seq, answers[1].as_ref().unwrap().seq),
            (Some(before + 1), Some(before + 2))
        );
        let pulled = store
            .pull(&[small.hash, AssetHash::of(&large)])
            .await
            .unwrap();
        assert_eq!(pulled.bundles[0].data, &b"small"[..]);
        assert_eq!(pulled.bundles[1].data, large);
        assert_eq!(store.stats().await.unwrap().assets, 3);
    }
}

/// Small assets are packed into a segment, larger ones are files; both
/// read back whole and from an offset, and survive a reopen.
#[tokio::test]
async fn small_assets_are_packed_and_large_ones_files() {
    let dir = tempfile::tempdir().unwrap();
    let small = b"a small asset".to_vec();
    let large = vec![3u8; INLINE_LIMIT as usize + 10];
    {
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        store.push(bundle(&small, "", 1)).await.unwrap();
        store
            .push_batch(vec![verified(&large, "")])
            .await
            .unwrap()
            .remove(0)
            .unwrap();
    }
    let files: Vec<_> = walk(&dir.path().join("blobs"));
    assert_eq!(
        files,
        vec![AssetHash::of(&large).to_hex()],
        "one file, the large one"
    );
    let packs = dir.path().join(segments::PACKS_DIR);
    assert_eq!(walk(&packs).len(), 1, "one segment");
    assert_eq!(
        std::fs::read(packs.join(&walk(&packs)[0])).unwrap(),
        small,
        "the segment holds the small asset's bytes and nothing else"
    );
    let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
    for data in [&small, &large] {
        let (size, body) = store.read_blob(AssetHash::of(data), 5).await.unwrap();
        assert_eq!(size, data.len() as u64);
        let read: Vec<Bytes> = body.map(|chunk| chunk.unwrap()).collect().await;
        assert_eq!(read.concat(), data[5..]);
    }
}

/// A batch of a bulk load's size whose group took a held asset for new (the
/// writer takes new assets for new unless the last such group met one held)
/// is applied again: its segment keeps each value once, the held asset is
/// answered as held and its metadata merged, and everything reads back after
/// a reopen. So does a batch of held assets only, whose second attempt
/// appends nothing: the first attempt's bytes are still cut. And so when
/// segments are sealed within the dropped group: the segments it made are
/// removed before it is applied again.
#[tokio::test]
async fn a_batch_meeting_a_held_asset_packs_each_value_once() {
    for segment_bytes in [StoreLimits::default().segment_bytes, 4_000] {
        let limits = StoreLimits {
            segment_bytes,
            ..StoreLimits::default()
        };
        a_batch_meeting_a_held_asset_packs_each_value_once_with(limits).await;
    }
}

async fn a_batch_meeting_a_held_asset_packs_each_value_once_with(limits: StoreLimits) {
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<Vec<u8>> = (0..3000)
        .map(|i| format!("value {i};").into_bytes())
        .collect();
    {
        let store = EmbeddedCan::open(dir.path(), limits).unwrap();
        store.push(bundle(&values[0], "", 1)).await.unwrap();
        let mut batch: Vec<VerifiedBundle> =
            values[1..1500].iter().map(|v| verified(v, "")).collect();
        batch.insert(700, bundle(&values[0], "again", 2).verify().unwrap());
        let answers = store.push_batch(batch).await.unwrap();
        let held: Vec<usize> = answers
            .iter()
            .enumerate()
            .filter(|(_, a)| a.as_ref().unwrap().already_existed)
            .map(|(at, _)| at)
            .collect();
        assert_eq!(held, vec![700], "only the held asset is answered as held");
        // Met none held: the next large batch takes its assets for new.
        let rest: Vec<VerifiedBundle> = values[1500..].iter().map(|v| verified(v, "")).collect();
        store.push_batch(rest).await.unwrap();
        let again: Vec<VerifiedBundle> =
            values[1000..2500].iter().map(|v| verified(v, "")).collect();
        let answers = store.push_batch(again).await.unwrap();
        assert!(answers.iter().all(|a| a.as_ref().unwrap().already_existed));
        assert_eq!(store.stats().await.unwrap().assets, 3000);
    }
    let packs = dir.path().join(segments::PACKS_DIR);
    let mut files = walk(&packs);
    files.sort();
    let expected_files = values
        .concat()
        .len()
        .div_ceil(limits.segment_bytes as usize);
    assert!(
        files.len() >= expected_files,
        "{} segments for {expected_files}",
        files.len()
    );
    let packed: Vec<u8> = files
        .iter()
        .flat_map(|name| std::fs::read(packs.join(name)).unwrap())
        .collect();
    let expected = values.concat();
    assert!(
        packed == expected,
        "the bytes of the dropped group were cut back before it was applied again: \
         {} bytes in {} segments for {}",
        packed.len(),
        files.len(),
        expected.len()
    );
    let store = EmbeddedCan::open(dir.path(), limits).unwrap();
    let hashes: Vec<AssetHash> = values.iter().map(|v| AssetHash::of(v)).collect();
    let pulled = store.pull(&hashes).await.unwrap();
    let data: Vec<&[u8]> = pulled.bundles.iter().map(|b| &b.data[..]).collect();
    assert_eq!(data, values.iter().map(|v| &v[..]).collect::<Vec<_>>());
    let first = store.meta(hashes[0]).await.unwrap().unwrap();
    assert_eq!(
        first.1.description, "again",
        "the held asset's metadata merged"
    );
}

/// The names of the files under `dir`, recursively.
fn walk(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            names.extend(walk(&entry.path()));
        } else {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names
}

/// Bytes past a segment's recorded end (a group a crash cut before its
/// commit) are cut at open and written over, and newer segment files
/// that no commit recorded are removed; every acknowledged value reads
/// back, across sealed segments.
#[tokio::test]
async fn opening_cuts_segments_back_to_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let limits = StoreLimits {
        segment_bytes: 10_000,
        ..StoreLimits::default()
    };
    let data: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 3_000]).collect();
    let packs = dir.path().join(segments::PACKS_DIR);
    {
        let store = EmbeddedCan::open(dir.path(), limits).unwrap();
        for value in &data[..6] {
            store.push(bundle(value, "", 1)).await.unwrap();
        }
    }
    let names = walk(&packs);
    assert_eq!(names.len(), 2, "sealed at 3 values: {names:?}");
    let open = packs.join(names.iter().max().unwrap());
    let mut junk = std::fs::read(&open).unwrap();
    junk.extend_from_slice(&[0xee; 1_000]);
    std::fs::write(&open, junk).unwrap();
    std::fs::write(packs.join(format!("{:016x}", 3)), b"no commit").unwrap();
    {
        let store = EmbeddedCan::open(dir.path(), limits).unwrap();
        assert!(!packs.join(format!("{:016x}", 3)).exists());
        assert_eq!(std::fs::metadata(&open).unwrap().len(), 9_000);
        for value in &data[6..] {
            store.push(bundle(value, "", 1)).await.unwrap();
        }
    }
    let store = EmbeddedCan::open(dir.path(), limits).unwrap();
    let hashes: Vec<AssetHash> = data.iter().map(|d| AssetHash::of(d)).collect();
    let pulled = store.pull(&hashes).await.unwrap();
    assert!(pulled.missing.is_empty());
    for (bundle, value) in pulled.bundles.iter().zip(&data) {
        assert_eq!(bundle.data, value);
    }
    assert_eq!(walk(&packs).len(), 4);
}

/// Every file and folder under `dir`, with the hash of each file's bytes.
fn contents(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Option<AssetHash>> {
    let mut found = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            found.insert(entry.path(), None);
            found.extend(contents(&entry.path()));
        } else {
            let bytes = std::fs::read(entry.path()).unwrap();
            found.insert(entry.path(), Some(AssetHash::of(&bytes)));
        }
    }
    found
}

/// A store opened only to be read changes nothing of its folder, not a
/// byte of its database file either (redb writes to it on every open and
/// close, into memory here): bytes
/// past the open segment's recorded end and a newer segment file stay, and
/// are reported; a leftover temporary file stays; writes fail, small or
/// large, and leave nothing behind. Opened to write afterwards, the store
/// cuts what no commit names, as it always does.
#[tokio::test]
async fn a_store_opened_to_read_changes_nothing_and_reports_unrecorded_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let packs = dir.path().join(segments::PACKS_DIR);
    {
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        store.push(bundle(b"kept", "", 1)).await.unwrap();
        assert!(store.unrecorded_segment_bytes().unwrap().is_empty());
    }
    let open_segment = packs.join(format!("{:016x}", 1));
    let mut bytes = std::fs::read(&open_segment).unwrap();
    bytes.extend_from_slice(&[0xee; 1_000]);
    std::fs::write(&open_segment, &bytes).unwrap();
    // Newer files with a gap between: 3 is gone (moved, or removed by hand).
    std::fs::write(packs.join(format!("{:016x}", 2)), b"no commit").unwrap();
    std::fs::write(packs.join(format!("{:016x}", 4)), b"none here").unwrap();
    std::fs::write(dir.path().join("tmp").join("leftover"), b"half a blob").unwrap();
    let before = contents(dir.path());
    {
        let store = EmbeddedCan::open_to_read(dir.path(), StoreLimits::default(), None).unwrap();
        assert_eq!(
            store.unrecorded_segment_bytes().unwrap(),
            vec![
                Unrecorded {
                    segment: 1,
                    bytes: 1_000,
                    whole_file: false
                },
                Unrecorded {
                    segment: 2,
                    bytes: 9,
                    whole_file: true
                },
                Unrecorded {
                    segment: 4,
                    bytes: 9,
                    whole_file: true
                }
            ]
        );
        let pulled = store.pull(&[AssetHash::of(b"kept")]).await.unwrap();
        assert_eq!(pulled.bundles[0].data, &b"kept"[..]);
        for data in [b"small".to_vec(), vec![7u8; 2 * INLINE_LIMIT as usize]] {
            // Refused by the store before a byte goes to a file (or, in
            // object storage, to the bucket), not by its file system.
            let refused = store.push(bundle(&data, "", 1)).await.unwrap_err();
            assert_eq!(
                refused.to_string(),
                "storage failure: the store was opened only to be read"
            );
        }
    }
    assert_eq!(
        contents(dir.path()),
        before,
        "nothing in the folder changed, the database file included"
    );
    // Opened to write, the store cuts the open segment back and removes
    // the newer files it counts on to; one past a gap stays until the
    // writer reaches its number and replaces it.
    let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
    assert_eq!(
        store.unrecorded_segment_bytes().unwrap(),
        vec![Unrecorded {
            segment: 4,
            bytes: 9,
            whole_file: true
        }]
    );
    assert!(!packs.join(format!("{:016x}", 2)).exists());
    assert!(store
        .pull(&[AssetHash::of(b"kept")])
        .await
        .unwrap()
        .missing
        .is_empty());
}

/// A store of schema 3 (small assets' bytes as rows of the database)
/// opens as schema 4: its rows read where they are, and new small
/// assets go to segments.
#[tokio::test]
async fn a_schema_3_store_opens_and_its_rows_read_in_place() {
    use redb::{ReadableDatabase as _, ReadableTableMetadata as _};

    let dir = tempfile::tempdir().unwrap();
    let old = b"a row of schema 3".to_vec();
    {
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        store.writer.skip_saving_cells();
    }
    // What schema 3 wrote: the record and the row, no segment tables.
    {
        let db = Database::create(dir.path().join("meta.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(schema::SEGMENTS).unwrap();
        {
            let hash = *AssetHash::of(&old).as_bytes();
            let record = schema::Record {
                size: old.len() as u64,
                changed_at: 5,
                seq: 1,
                location: None,
                meta: bundle(&old, "old", 1).meta,
            };
            let mut assets = txn.open_table(schema::ASSETS).unwrap();
            assets.insert(hash, record.encode().as_slice()).unwrap();
            let mut rows = txn.open_table(schema::INLINE_BLOBS).unwrap();
            rows.insert(hash, old.as_slice()).unwrap();
            let mut counters = txn.open_table(schema::COUNTERS).unwrap();
            counters.insert("schema", 3).unwrap();
            counters.insert("assets", 1).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
    let new = store.push(bundle(b"a new one", "", 1)).await.unwrap().hash;
    let pulled = store.pull(&[AssetHash::of(&old), new]).await.unwrap();
    assert_eq!(pulled.bundles.len(), 2);
    assert_eq!(pulled.bundles[0].data, old);
    assert_eq!(pulled.bundles[1].data, &b"a new one"[..]);
    let (_, body) = store.read_blob(AssetHash::of(&old), 2).await.unwrap();
    let read: Vec<Bytes> = body.map(|chunk| chunk.unwrap()).collect().await;
    assert_eq!(read.concat(), old[2..]);
    let txn = store.db.begin_read().unwrap();
    let counters = txn.open_table(schema::COUNTERS).unwrap();
    assert_eq!(
        counters.get("schema").unwrap().unwrap().value(),
        schema::SCHEMA_VERSION
    );
    let rows = txn.open_table(schema::INLINE_BLOBS).unwrap();
    assert_eq!(rows.len().unwrap(), 1, "the new asset is not a row");
}

/// An empty asset, the first value of a store (no segment file made
/// yet), reads back, before and after a reopen.
#[tokio::test]
async fn an_empty_asset_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let hash = AssetHash::of(b"");
    for _ in 0..2 {
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        store.push(bundle(b"", "", 1)).await.unwrap();
        let pulled = store.pull(&[hash]).await.unwrap();
        assert_eq!(pulled.bundles[0].data, &b""[..]);
        let (size, body) = store.read_blob(hash, 0).await.unwrap();
        let read: Vec<Bytes> = body.map(|chunk| chunk.unwrap()).collect().await;
        assert_eq!((size, read.concat().len()), (0, 0));
    }
}

#[test]
fn a_store_of_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap());
    {
        let db = Database::create(dir.path().join("meta.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(schema::COUNTERS)
            .unwrap()
            .insert("schema", 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let Err(refused) = EmbeddedCan::open(dir.path(), StoreLimits::default()) else {
        panic!("a store of schema 99 opened");
    };
    assert!(refused.to_string().contains("newer can-sync"), "{refused}");
}

#[tokio::test]
async fn limits_refuse_large_assets() {
    let store = EmbeddedCan::memory(StoreLimits {
        max_asset_bytes: 4,
        ..StoreLimits::default()
    })
    .unwrap();
    assert!(matches!(
        store.push(bundle(b"12345", "", 1)).await,
        Err(CanError::TooLarge { size: 5, limit: 4 })
    ));
}

/// A database deleted or emptied behind the store's back leaves a damaged
/// store, not an empty one: opening it is refused, naming what the folder
/// still holds, and the segment and the blob file are left as they were (a
/// new database would have cut the segment back to nothing).
#[tokio::test]
async fn a_store_without_its_database_is_refused_and_its_bytes_kept() {
    let dir = tempfile::tempdir().unwrap();
    let small = vec![7u8; 1000];
    let large = vec![9u8; 1 << 20];
    {
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        store.push(bundle(&small, "", 1)).await.unwrap();
        store.push(bundle(&large, "", 1)).await.unwrap();
    }
    let database = dir.path().join(DATABASE_FILE);
    let segment = dir
        .path()
        .join(segments::PACKS_DIR)
        .join(walk(&dir.path().join(segments::PACKS_DIR))[0].clone());
    assert_eq!(std::fs::read(&segment).unwrap(), small);
    for damage in ["emptied", "deleted"] {
        if damage == "emptied" {
            std::fs::write(&database, b"").unwrap();
        } else {
            std::fs::remove_file(&database).unwrap();
        }
        let Err(refused) = EmbeddedCan::open(dir.path(), StoreLimits::default()) else {
            panic!("a store whose database was {damage} opened");
        };
        let said = refused.to_string();
        assert!(
            said.contains("meta.redb is missing or empty")
                && said.contains("holds pack segments and blob files"),
            "{said}"
        );
        assert_eq!(std::fs::read(&segment).unwrap(), small, "{damage}");
    }
    // Nothing of a store in the folder: a new one is made, as always.
    std::fs::remove_dir_all(dir.path().join(segments::PACKS_DIR)).unwrap();
    std::fs::remove_dir_all(dir.path().join(blobs::BLOBS_DIR)).unwrap();
    let fresh = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
    assert_eq!(fresh.stats().await.unwrap().assets, 0);
}

/// redb panics on a database file cut to half its length; opening says the
/// database may be damaged instead of taking the process down.
#[tokio::test]
async fn a_database_cut_short_is_named_damaged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        store.push(bundle(b"kept", "", 1)).await.unwrap();
    }
    let database = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(DATABASE_FILE))
        .unwrap();
    let len = database.metadata().unwrap().len();
    database.set_len(len / 2).unwrap();
    drop(database);
    let Err(refused) = EmbeddedCan::open(dir.path(), StoreLimits::default()) else {
        panic!("a database cut to half opened");
    };
    let said = refused.to_string();
    assert!(said.contains("meta.redb may be damaged"), "{said}");
}

/// A store opened and closed without a write commits nothing of its own:
/// its tables are current and its saved coded cells still include the last
/// change, so neither is written again (the cells, 13 MiB, were written at
/// every close). What is left is redb's own commit of its allocator state
/// when the database closes. The store holds enough assets for its cells
/// to be saved at all ([`SAVE_FROM_ASSETS`](super::coded::SAVE_FROM_ASSETS)).
#[tokio::test]
async fn a_store_opened_only_to_read_commits_nothing_of_its_own() {
    use super::fs::{StoreFs, SyncPoint};
    use super::simfs::{Op, SimFs};

    let fs = SimFs::new();
    let path = Path::new("/data/store");
    let open = || EmbeddedCan::open_on(Arc::new(fs.clone()), path, StoreLimits::default());
    {
        let store = open().unwrap();
        for i in 0..super::coded::SAVE_FROM_ASSETS {
            store.push(bundle(&i.to_le_bytes(), "", 1)).await.unwrap();
        }
    }
    let database_syncs = || {
        fs.trace()
            .iter()
            .filter(|op| {
                matches!(
                    op,
                    Op::Sync {
                        point: SyncPoint::Database,
                        ..
                    }
                )
            })
            .count()
    };
    // What redb syncs by itself to open the file and close it again.
    let before = database_syncs();
    drop(
        fs.database(&path.join(DATABASE_FILE), &redb::Builder::new())
            .unwrap(),
    );
    let redb_own = database_syncs() - before;
    let before = database_syncs();
    {
        let store = open().unwrap();
        assert_eq!(
            store.stats().await.unwrap().assets,
            super::coded::SAVE_FROM_ASSETS
        );
    }
    assert_eq!(database_syncs() - before, redb_own);
    // A write makes the cells worth saving again: one commit for the
    // write, one for the cells.
    let before = database_syncs();
    {
        let store = open().unwrap();
        store.push(bundle(b"two", "", 1)).await.unwrap();
    }
    assert_eq!(database_syncs() - before, redb_own + 2);
}

/// A pull meets a damaged blob file as a lost asset and serves the others:
/// a sparse file of 2 GiB where a 1 MiB blob was is not read into memory,
/// and a FIFO does not keep a thread waiting for a writer.
#[tokio::test]
async fn a_pull_skips_blob_files_that_are_not_what_their_records_say() {
    let dir = tempfile::tempdir().unwrap();
    let (sparse, fifo, small) = (vec![1u8; 1 << 20], vec![2u8; 1 << 20], vec![3u8; 100]);
    let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
    for data in [&sparse, &fifo, &small] {
        store.push(bundle(data, "", 1)).await.unwrap();
    }
    let blob = |data: &[u8]| {
        let hex = AssetHash::of(data).to_hex();
        dir.path()
            .join(blobs::BLOBS_DIR)
            .join(&hex[..2])
            .join(hex.as_str())
    };
    std::fs::OpenOptions::new()
        .write(true)
        .open(blob(&sparse))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    std::fs::remove_file(blob(&fifo)).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(blob(&fifo))
        .status()
        .unwrap();
    assert!(made.success());
    let asked: Vec<AssetHash> = [&sparse, &fifo, &small]
        .iter()
        .map(|data| AssetHash::of(data))
        .collect();
    let pulled = tokio::time::timeout(std::time::Duration::from_secs(30), store.pull(&asked))
        .await
        .expect("the pull ends")
        .unwrap();
    assert_eq!(pulled.missing, asked[..2]);
    assert_eq!(pulled.bundles.len(), 1);
    assert_eq!(pulled.bundles[0].data, small);
}

/// One damaged record does not keep a store from opening when its coded
/// cells must be built again (after a crash, the saved ones are stale):
/// the record is left out of the cells, and reading it names the asset.
#[tokio::test]
async fn a_damaged_record_does_not_keep_the_store_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    let damaged = AssetHash::of(b"two");
    {
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        for data in [&b"one"[..], b"two", b"three"] {
            store.push(bundle(data, "", 1)).await.unwrap();
        }
        store.writer.skip_saving_cells();
    }
    damage_record(dir.path(), damaged);
    let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
    let said = store.list_page(None, 10).await.unwrap_err().to_string();
    assert!(
        said.contains(&format!("the record of {damaged} is damaged")),
        "{said}"
    );
    let whole = store.meta(AssetHash::of(b"one")).await.unwrap();
    assert!(whole.is_some(), "the other records read");

    // Writes of the damaged asset are refused, each on its own: the others
    // in the same group are stored, and the damaged record is left as it
    // was for fsck to name.
    let answers = store
        .push_batch(
            [&b"two"[..], b"four"]
                .into_iter()
                .map(|data| bundle(data, "again", 2).verify().unwrap())
                .collect(),
        )
        .await
        .unwrap();
    assert!(
        matches!(&answers[0], Err(CanError::DamagedRecord { hash, .. }) if *hash == damaged),
        "{:?}",
        answers[0]
    );
    assert!(answers[1].is_ok(), "{:?}", answers[1]);
    let update = MetaUpdate::of(damaged, &bundle(b"two", "later", 3).meta);
    assert!(matches!(
        store.apply_meta(update).await,
        Err(CanError::DamagedRecord { .. })
    ));
    assert!(store.meta(AssetHash::of(b"four")).await.unwrap().is_some());
    let said = store.meta(damaged).await.unwrap_err().to_string();
    assert!(said.contains("is damaged"), "still damaged: {said}");
}

/// Forgetting an asset (`fsck --repair`) takes it out of everything, its
/// record whole or damaged: listings, the change log, the totals and the
/// coded cells (as a store built from its records has them); its blob
/// file goes first; sequence numbers go on growing past the ones it had;
/// and a push brings it back.
#[tokio::test]
async fn a_forgotten_asset_is_gone_everywhere_and_a_push_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let large = vec![7u8; 300_000];
    let (kept, whole, damaged) = (
        AssetHash::of(b"one"),
        AssetHash::of(b"two"),
        AssetHash::of(b"three"),
    );
    {
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        for data in [&b"one"[..], b"two", b"three", &large] {
            store.push(bundle(data, "", 1)).await.unwrap();
        }
    }
    damage_record(dir.path(), damaged);
    let large_hash = AssetHash::of(&large);
    let hex = large_hash.to_hex();
    let blob_file = dir.path().join("blobs").join(&hex[..2]).join(&hex);
    assert!(blob_file.exists(), "the large asset is a blob file");
    let cells_after_forgetting = {
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        let last_before = schema::read_last_seq(&store.db).unwrap();
        for hash in [whole, damaged, large_hash] {
            assert!(store.forget(hash).await.unwrap(), "{hash}");
        }
        assert!(!store.forget(whole).await.unwrap(), "gone already");
        assert!(!blob_file.exists(), "its blob file went first");

        let listed: Vec<AssetHash> = crate::can::list_all(&store)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.hash)
            .collect();
        assert_eq!(listed, vec![kept]);
        // The damaged record's size went with it, though it could not be
        // read: the total is counted again from what remains.
        assert_eq!(
            store.stats().await.unwrap(),
            StoreStats {
                assets: 1,
                bytes: 3
            }
        );
        let logged: Vec<AssetHash> = store
            .changes(0, 100)
            .await
            .unwrap()
            .changes
            .into_iter()
            .map(|c| c.summary.hash)
            .collect();
        assert_eq!(logged, vec![kept], "their log entries went too");
        let since = store.list_since(i64::MIN, None, 100).await.unwrap();
        assert_eq!(since.items.len(), 1);
        assert!(
            schema::read_last_seq(&store.db).unwrap() > last_before,
            "forgetting moves the last sequence number on"
        );
        let cells = store.coded_cells(0, 64).await.unwrap().unwrap();
        store.writer.skip_saving_cells();
        cells
    };
    // Opened again without saved cells, the store builds them from its
    // records: the same as those kept current while forgetting.
    let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
    assert_eq!(
        store.coded_cells(0, 64).await.unwrap().unwrap(),
        cells_after_forgetting
    );
    let last = schema::read_last_seq(&store.db).unwrap();
    let pushed = store.push(bundle(b"two", "", 1)).await.unwrap();
    assert!(!pushed.already_existed, "a push brings it back as new");
    assert!(pushed.seq.is_some_and(|seq| seq > last), "{pushed:?}");
    assert!(store.meta(whole).await.unwrap().is_some());
}

/// Overwrites the record of `hash` in the closed store in `dir` with bytes
/// that do not decode, as damage behind the store's back might.
fn damage_record(dir: &Path, hash: AssetHash) {
    let db = Database::create(dir.join(DATABASE_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(schema::ASSETS)
        .unwrap()
        .insert(*hash.as_bytes(), &b"not a record"[..])
        .unwrap();
    txn.commit().unwrap();
}
