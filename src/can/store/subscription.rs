//! The store's change stream ([`Can::subscribe`](crate::can::Can::subscribe)):
//! what the change log holds after a sequence number, then live changes as the
//! [`writer`](super::writer) commits them.
//!
//! Live changes come from a broadcast channel the writer sends on after each
//! commit; the change log in the database is the truth behind it. A
//! subscriber joins the channel before it reads the log, so nothing committed
//! in between is lost, and drops what it already delivered by sequence
//! number. When it falls more than [`EVENT_BUFFER`] changes behind, or sees a
//! gap in the sequence numbers, it reads the log again from where it is, a
//! page of [`REPLAY_PAGE`] at a time. So every subscriber sees each change
//! once, in sequence order; a replay of the compacted log yields the latest
//! change of each asset changed since, never more than one per asset, and
//! never holds more than a page.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::{stream, StreamExt};
use redb::Database;
use tokio::sync::broadcast;

use super::blocking;
use super::schema::{read_changes_after, read_last_seq};
use crate::can::{CanError, ChangeEvent, EventStream};

/// How many live events a slow subscriber may fall behind before it re-reads
/// the log from the database.
pub(super) const EVENT_BUFFER: usize = 4096;

/// Changes read from the log at a time when replaying.
const REPLAY_PAGE: usize = 1024;

/// Where one subscriber is.
struct Follower {
    db: Arc<Database>,
    live: broadcast::Receiver<ChangeEvent>,
    /// The sequence number of the last change delivered (or to start after).
    last_seq: u64,
    /// Changes read from the log and not yet delivered.
    backlog: VecDeque<ChangeEvent>,
    /// The live channel cannot be trusted to continue from `last_seq`: read
    /// the log before waiting on it.
    needs_log_read: bool,
}

/// The changes of `db` after `after_seq`, then live ones from `live`; only
/// live ones when `after_seq` is `None`. `live` must be subscribed before
/// this is called.
pub(super) async fn follow(
    db: Arc<Database>,
    live: broadcast::Receiver<ChangeEvent>,
    after_seq: Option<u64>,
) -> Result<EventStream, CanError> {
    let start = match after_seq {
        Some(seq) => seq,
        None => {
            let db = db.clone();
            blocking(move || read_last_seq(&db)).await?
        }
    };
    let follower = Follower {
        db,
        live,
        last_seq: start,
        backlog: VecDeque::new(),
        needs_log_read: after_seq.is_some(),
    };
    let events = stream::try_unfold(follower, |mut follower| async move {
        let event = follower.next_event().await?;
        Ok(event.map(|event| (event, follower)))
    });
    Ok(events.boxed())
}

impl Follower {
    /// The next change in sequence order; `None` once the store is gone.
    async fn next_event(&mut self) -> Result<Option<ChangeEvent>, CanError> {
        loop {
            if self.needs_log_read && self.backlog.is_empty() {
                let db = self.db.clone();
                let after = self.last_seq;
                let page = blocking(move || read_changes_after(&db, after, REPLAY_PAGE)).await?;
                // A full page: more may follow, read before waiting live.
                self.needs_log_read = page.len() == REPLAY_PAGE;
                self.backlog = page.into_iter().map(|(change, _)| change).collect();
            }
            if let Some(event) = self.backlog.pop_front() {
                self.last_seq = event.seq;
                return Ok(Some(event));
            }
            match self.live.recv().await {
                Ok(event) if event.seq <= self.last_seq => continue,
                Ok(event) if event.seq == self.last_seq + 1 => {
                    self.last_seq = event.seq;
                    return Ok(Some(event));
                }
                // A gap (events sent out of commit order, or missed): the log
                // has the truth.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.needs_log_read = true;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::fixtures::{bundle, each_backend, logged, push_concurrently};
    use crate::asset::MetaUpdate;
    use crate::can::{Can, ChangeKind};
    use crate::pb;

    use super::*;

    #[tokio::test]
    async fn subscribe_replays_then_follows_live() {
        each_backend(async |store| {
            let a = store.push(bundle(b"a", "", 1)).await.unwrap().hash;
            let mut live_only = store.subscribe(None).await.unwrap();
            let mut replay = store.subscribe(Some(0)).await.unwrap();
            let b = store.push(bundle(b"b", "", 1)).await.unwrap().hash;
            store
                .apply_meta(MetaUpdate::of(
                    a,
                    &pb::AssetMeta {
                        description: "edited".into(),
                        meta_updated_at_ms: 5,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap();
            // The log is compacted: `a`'s first change gave way to its edit.
            let mut seen = Vec::new();
            for _ in 0..2 {
                seen.push(next_within(&mut replay).await);
            }
            assert_eq!(
                seen.iter()
                    .map(|e| (e.seq, e.kind, e.hash))
                    .collect::<Vec<_>>(),
                vec![(2, ChangeKind::Asset, b), (3, ChangeKind::Meta, a)]
            );
            let c = store.push(bundle(b"c", "", 1)).await.unwrap().hash;
            let after_replay = next_within(&mut replay).await;
            assert_eq!((after_replay.seq, after_replay.hash), (4, c));
            let first_live = next_within(&mut live_only).await;
            assert_eq!((first_live.seq, first_live.hash), (2, b));
        })
        .await;
    }

    /// The next event, failing the test instead of hanging.
    async fn next_within(events: &mut EventStream) -> ChangeEvent {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .expect("no store error")
    }

    #[tokio::test]
    async fn a_replay_longer_than_a_page_delivers_each_change_once_then_live_ones() {
        each_backend(async |store| {
            let count = 2 * REPLAY_PAGE as u64 + 300;
            for i in 0..count {
                store
                    .push(bundle(format!("asset {i}").as_bytes(), "", 1))
                    .await
                    .unwrap();
            }
            let mut replay = store.subscribe(Some(0)).await.unwrap();
            for seq in 1..=count {
                assert_eq!(next_within(&mut replay).await.seq, seq);
            }
            let last = store
                .push(bundle(b"after the replay", "", 1))
                .await
                .unwrap();
            let live = next_within(&mut replay).await;
            assert_eq!((live.seq, live.hash), (count + 1, last.hash));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_subscriber_sees_every_concurrent_change_once_in_order() {
        each_backend(async |store| {
            let store = Arc::new(store);
            let earlier = push_concurrently(&store, 50, 8).await;
            let mut events = store.subscribe(None).await.unwrap();
            // 250 new assets and 50 metadata updates, all at once.
            let updates = earlier.iter().map(|hash| {
                let (store, hash) = (store.clone(), *hash);
                tokio::spawn(async move {
                    let update = MetaUpdate::of(
                        hash,
                        &pb::AssetMeta {
                            description: "edited".into(),
                            meta_updated_at_ms: 7,
                            ..Default::default()
                        },
                    );
                    assert!(store.apply_meta(update).await.unwrap());
                })
            });
            let updates = futures::future::join_all(updates);
            let (_, _) = tokio::join!(updates, async {
                // Distinct from the first 50: `push_concurrently` names by index.
                let more = (50..300).map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let data = format!("asset number {i}").into_bytes();
                        store.push(bundle(&data, "", 1)).await.unwrap()
                    })
                });
                futures::future::join_all(more).await
            });
            let mut seen = Vec::new();
            for _ in 0..300 {
                let next = tokio::time::timeout(Duration::from_secs(10), events.next());
                seen.push(next.await.unwrap().unwrap().unwrap());
            }
            assert_eq!(
                seen.iter().map(|e| e.seq).collect::<Vec<_>>(),
                (51..=350).collect::<Vec<_>>()
            );
            assert_eq!(seen, logged(&store.db, 50));
            assert_eq!(
                seen.iter().filter(|e| e.kind == ChangeKind::Meta).count(),
                50
            );
            let quiet = tokio::time::timeout(Duration::from_millis(100), events.next()).await;
            assert!(quiet.is_err(), "no event beyond the 300 changes");
        })
        .await;
    }

    /// A subscriber that falls behind a burst of batches (more changes than
    /// the live buffer holds) still sees every asset once, in order: the
    /// replay of the log fills what the channel dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_behind_a_burst_of_batches_sees_every_asset_once() {
        each_backend(async |store| {
            let mut events = store.subscribe(None).await.unwrap();
            let total = EVENT_BUFFER + 2_000;
            let mut pushed = Vec::new();
            for start in (0..total).step_by(64) {
                let batch: Vec<_> = (start..(start + 64).min(total))
                    .map(|i| {
                        let data = format!("burst asset {i}").into_bytes();
                        bundle(&data, "", 1).verify().unwrap()
                    })
                    .collect();
                pushed.extend(batch.iter().map(|b| b.hash()));
                for answer in store.push_batch(batch).await.unwrap() {
                    answer.unwrap();
                }
            }
            let mut seen = Vec::new();
            for _ in 0..total {
                let next = tokio::time::timeout(Duration::from_secs(10), events.next());
                seen.push(next.await.unwrap().unwrap().unwrap());
            }
            let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
            let mut hashes: Vec<_> = seen.iter().map(|e| e.hash).collect();
            hashes.sort();
            pushed.sort();
            assert_eq!(hashes, pushed);
        })
        .await;
    }
}
