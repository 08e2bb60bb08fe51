//! Test fixtures shared by the store's tests: sample bundles, a run against
//! both backends (memory and disk), and concurrent pushes.

use std::sync::Arc;

use bytes::Bytes;

use super::{EmbeddedCan, StoreLimits};
use crate::asset::{AssetHash, Bundle};
use crate::can::Can;
use crate::pb;

/// A bundle of `data` with a description changed at `at`.
pub(super) fn bundle(data: &[u8], description: &str, at: i64) -> Bundle {
    Bundle {
        hash: AssetHash::of(data),
        data: Bytes::copy_from_slice(data),
        meta: pb::AssetMeta {
            description: description.into(),
            meta_updated_at_ms: at,
            created_at_ms: 1,
            ..Default::default()
        },
    }
}

/// Runs `check` on a fresh memory store, then on a fresh disk store.
pub(super) async fn each_backend(check: impl AsyncFn(EmbeddedCan)) {
    check(EmbeddedCan::memory(StoreLimits::default()).unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    check(EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap()).await;
}

/// Pushes `count` distinct new assets from `tasks` concurrent tasks, checks
/// each was acknowledged as new, and returns their hashes.
pub(super) async fn push_concurrently(
    store: &Arc<EmbeddedCan>,
    count: usize,
    tasks: usize,
) -> Vec<AssetHash> {
    let pushes = (0..tasks).map(|task| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut hashes = Vec::new();
            for i in (task..count).step_by(tasks) {
                let data = format!("asset number {i}").into_bytes();
                let pushed = store.push(bundle(&data, "", 1)).await.unwrap();
                assert!(!pushed.already_existed);
                hashes.push(pushed.hash);
            }
            hashes
        })
    });
    let hashes: Vec<AssetHash> = futures::future::join_all(pushes)
        .await
        .into_iter()
        .flat_map(|hashes| hashes.unwrap())
        .collect();
    assert_eq!(hashes.len(), count);
    hashes
}

/// `hashes` in byte order, to compare sets.
pub(super) fn sorted(mut hashes: Vec<AssetHash>) -> Vec<AssetHash> {
    hashes.sort_by_key(|h| *h.as_bytes());
    hashes
}

/// Every change the log holds after `after`, without summaries.
pub(super) fn logged(db: &redb::Database, after: u64) -> Vec<crate::can::ChangeEvent> {
    super::schema::read_changes_after(db, after, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(change, _)| change)
        .collect()
}
