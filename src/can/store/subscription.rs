//! The store's change stream ([`Can::subscribe`](crate::can::Can::subscribe)):
//! what the change log holds after a sequence number, then live changes as the
//! [`writer`](super::writer) commits them.
//!
//! Live changes come from a broadcast channel the writer sends on after each
//! commit; the change log in the database is the truth behind it. A
//! subscriber joins the channel before it reads the log, so nothing committed
//! in between is lost, and drops what it already delivered by sequence
//! number. When it falls more than [`EVENT_BUFFER`] changes behind, or sees a
//! gap in the sequence numbers, it reads the log again from where it is. So
//! every subscriber sees each change once, in sequence order.

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
            if self.needs_log_read {
                let db = self.db.clone();
                let after = self.last_seq;
                self.backlog = blocking(move || read_changes_after(&db, after))
                    .await?
                    .into();
                self.needs_log_read = false;
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

    use super::super::fixtures::{bundle, each_backend, push_concurrently};
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
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(replay.next().await.unwrap().unwrap());
            }
            assert_eq!(
                seen.iter()
                    .map(|e| (e.seq, e.kind, e.hash))
                    .collect::<Vec<_>>(),
                vec![
                    (1, ChangeKind::Asset, a),
                    (2, ChangeKind::Asset, b),
                    (3, ChangeKind::Meta, a)
                ]
            );
            let first_live = live_only.next().await.unwrap().unwrap();
            assert_eq!((first_live.seq, first_live.hash), (2, b));
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
            assert_eq!(seen, read_changes_after(&store.db, 50).unwrap());
            assert_eq!(
                seen.iter().filter(|e| e.kind == ChangeKind::Meta).count(),
                50
            );
            let quiet = tokio::time::timeout(Duration::from_millis(100), events.next()).await;
            assert!(quiet.is_err(), "no event beyond the 300 changes");
        })
        .await;
    }
}
