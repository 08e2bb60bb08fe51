//! The outbound half of live sync: the store's change events, batched into
//! offers, with the periodic check that closes any gap.
//!
//! Changes wait in a `Backlog` (arrival order, each once) and leave it in
//! batches of at most [`LiveConfig::max_batch`](super::LiveConfig::max_batch),
//! a short linger after the first of them; up to
//! [`LiveConfig::offers_in_flight`](super::LiveConfig::offers_in_flight)
//! offers run at once. What an offer leaves undelivered waits for the next
//! check, which also re-offers whatever changed since the previous one.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{offer, settle, Link};
use crate::asset::AssetHash;
use crate::backoff::Backoff;
use crate::can::EventStream;
use crate::clock::now_ms;
use crate::session::SessionError;

/// How far back the periodic check looks beyond its previous run, so a change
/// stamped slightly out of order (another clock, a slow commit) is not missed.
const CHECK_OVERLAP_MS: i64 = 2_000;

/// Most changes remembered for offering before the loop drops them and lets
/// the periodic check (whose window covers them) find them again.
const MAX_PENDING: usize = 1 << 20;

/// A finished offer: its batch, and what it left undelivered (or why it failed).
type OfferDone = (Vec<AssetHash>, Result<Vec<AssetHash>, SessionError>);

/// The outbound half: local changes, batched, offered to the peer.
pub(super) async fn offer_changes(
    link: &Arc<Link>,
    mut events: EventStream,
    since_ms: i64,
) -> Result<(), SessionError> {
    let config = link.config.clone();
    let mut pending = Backlog::default();
    // What an offer did not deliver: offered again at the next check.
    let mut retry: BTreeSet<AssetHash> = BTreeSet::new();
    let mut flush_at: Option<Instant> = None;
    let mut last_seq: Option<u64> = None;
    let mut last_check = since_ms;
    // Change time (the store's clock) of the oldest event still in `pending`.
    let mut oldest_pending: Option<i64> = None;
    let mut check = tokio::time::interval(config.check_interval);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await; // the first tick is immediate; the session just ran
    let mut offers: JoinSet<OfferDone> = JoinSet::new();
    let mut outcome = Ok(());

    let peer = link.conn.remote_id();
    loop {
        link.peers.set_backlog(peer, pending.len() as u64);
        let room = offers.len() < config.offers_in_flight.max(1);
        let deadline = flush_at.filter(|_| room);
        let flush = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = link.shutdown.cancelled() => break,
            _ = link.conn.closed() => break,
            Some(done) = offers.join_next(), if !offers.is_empty() => {
                let (batch, result) = match done {
                    Ok(done) => done,
                    Err(err) => {
                        // A bug of ours; its batch waits for the next check's window.
                        warn!(error = %err, "live offer task failed");
                        continue;
                    }
                };
                match result {
                    Ok(undelivered) => retry.extend(undelivered),
                    Err(err) => {
                        retry.extend(batch);
                        if let Err(err) = settle(link, "offer", Err(err)) {
                            outcome = Err(err);
                            break;
                        }
                    }
                }
            }
            () = flush => {
                let batch: Vec<AssetHash> = pending.take(config.max_batch);
                if pending.is_empty() {
                    oldest_pending = None;
                }
                flush_at = (!pending.is_empty()).then(Instant::now);
                let link = link.clone();
                offers.spawn(async move {
                    let result = offer::offer(&link, batch.clone()).await;
                    (batch, result)
                });
            }
            event = events.next() => match event {
                Some(Ok(event)) => {
                    last_seq = Some(event.seq);
                    if link.view.caused(event.seq) {
                        // The peer sent us this very change: no news to it.
                        continue;
                    }
                    link.peers.offered(peer, 1);
                    pending.insert(event.hash);
                    oldest_pending = Some(oldest_pending.map_or(event.ts, |t: i64| t.min(event.ts)));
                    if pending.len() > MAX_PENDING {
                        // The peer cannot keep up: stop remembering hashes one
                        // by one; a check that looks back to the oldest of
                        // them finds every one again.
                        warn!(pending = pending.len(), "live backlog over its cap; leaving it to the check");
                        pending.clear();
                        last_check = last_check.min(oldest_pending.take().unwrap_or(last_check));
                        check.reset_immediately();
                    }
                    if flush_at.is_none() {
                        flush_at = Some(Instant::now() + config.linger);
                    }
                    if pending.len() >= config.max_batch {
                        flush_at = Some(Instant::now());
                    }
                }
                failed => {
                    let reason = match failed {
                        Some(Err(err)) => err.to_string(),
                        _ => "the change stream ended".into(),
                    };
                    warn!(error = %reason, after = ?last_seq, "change stream lost; resubscribing");
                    match resubscribe(link, last_seq).await {
                        Some(resumed) => events = resumed,
                        None => break,
                    }
                    // Whatever the replay cannot give back, the check finds.
                    check.reset_immediately();
                }
            },
            _ = check.tick() => {
                pending.extend(std::mem::take(&mut retry));
                let started = now_ms();
                match changed_since(link, last_check - CHECK_OVERLAP_MS).await {
                    Ok(changed) => {
                        debug!(changed = changed.len(), "periodic live check");
                        link.peers.offered(peer, changed.len() as u64);
                        pending.extend(changed);
                        last_check = started;
                        if !pending.is_empty() && flush_at.is_none() {
                            flush_at = Some(Instant::now());
                        }
                    }
                    Err(err) => warn!(error = %err, "periodic live check failed; will retry"),
                }
            }
        }
    }
    // Offers already on the wire finish (or fail with the connection).
    while let Some(done) = offers.join_next().await {
        if let Ok((_, Err(err))) = done {
            debug!(error = %err, "offer ended with the link");
        }
    }
    outcome
}

/// Changes waiting to be offered, in arrival order, each once: under load
/// the oldest go first, so no asset waits behind a stream of newer ones.
#[derive(Debug, Default)]
struct Backlog {
    order: VecDeque<AssetHash>,
    members: HashSet<AssetHash>,
}

impl Backlog {
    fn insert(&mut self, hash: AssetHash) {
        if self.members.insert(hash) {
            self.order.push_back(hash);
        }
    }

    fn extend(&mut self, hashes: impl IntoIterator<Item = AssetHash>) {
        for hash in hashes {
            self.insert(hash);
        }
    }

    /// Up to `max` of the oldest hashes.
    fn take(&mut self, max: usize) -> Vec<AssetHash> {
        let batch: Vec<AssetHash> = self.order.drain(..self.order.len().min(max)).collect();
        for hash in &batch {
            self.members.remove(hash);
        }
        batch
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn clear(&mut self) {
        self.order.clear();
        self.members.clear();
    }
}

/// The assets changed at or after `since` (Unix ms), read page by page.
async fn changed_since(link: &Link, since: i64) -> Result<Vec<AssetHash>, crate::can::CanError> {
    let mut changed = Vec::new();
    let mut after = None;
    loop {
        let page = link
            .can
            .list_since(since, after, crate::can::LIST_PAGE)
            .await?;
        changed.extend(page.items.iter().map(|s| s.hash));
        match page.next {
            Some(next) if changed.len() < MAX_PENDING => after = Some(next),
            _ => return Ok(changed),
        }
    }
}

/// Subscribes again after `last_seq`, retrying with backoff while the store is
/// down; `None` when the link ends first.
async fn resubscribe(link: &Link, last_seq: Option<u64>) -> Option<EventStream> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let pause = backoff.next_pause();
        match link.can.subscribe(last_seq).await {
            Ok(events) => return Some(events),
            Err(err) => warn!(error = %err, retry_in = ?pause, "resubscribing failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = link.shutdown.cancelled() => return None,
            _ = link.conn.closed() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_gives_the_oldest_first_and_holds_each_hash_once() {
        let mut pending = Backlog::default();
        let hashes: Vec<AssetHash> = (0u8..10).map(|i| AssetHash::of(&[i])).collect();
        pending.extend(hashes.iter().copied());
        pending.insert(hashes[0]); // already waiting: not queued twice
        let batch = pending.take(4);
        assert_eq!(batch, hashes[..4], "oldest first");
        assert_eq!(batch.len(), 4);
        assert_eq!(pending.len(), 6);
        assert!(batch.iter().all(|h| !pending.members.contains(h)));
        pending.insert(hashes[0]);
        assert_eq!(pending.len(), 7, "a taken hash can wait again");
    }
}
