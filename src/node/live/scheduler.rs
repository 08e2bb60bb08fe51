//! The outbound half of live sync: the store's change events, batched into
//! offers, with the periodic check that closes any gap.
//!
//! Changes wait in a `Backlog` (`backlog.rs`: arrival order, each once, at most
//! [`LiveConfig::backlog`](super::LiveConfig::backlog) hashes remembered in
//! all) and leave it in batches of at most
//! [`LiveConfig::max_batch`](super::LiveConfig::max_batch), a short linger
//! after the first of them; up to
//! [`LiveConfig::offers_in_flight`](super::LiveConfig::offers_in_flight)
//! offers run at once. What an offer leaves undelivered waits for the next
//! check, which also re-offers whatever changed since the previous one.
//!
//! When the backlog is full this loop stops reading the event stream and
//! reads the store's change log instead, from the first change it did not
//! take, as room comes back; once the log has nothing more it subscribes
//! again from there (`backlog.rs` says why nothing is skipped). One
//! read of the store runs at a time, beside the offers and the events.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::backlog::{Backlog, Batch, LogRead, Read, Taken};
use super::{offer, settle, Link};
use crate::asset::{AssetHash, Summary};
use crate::backoff::Backoff;
use crate::can::{CanError, ChangePage, EventStream, Page, SinceCursor};
use crate::clock::now_ms;
use crate::fault::Fault;
use crate::session::SessionError;

/// A finished offer: its batch, and what it left undelivered (or why it failed).
type OfferDone = (Batch, Result<Vec<AssetHash>, SessionError>);

/// The answer of a [`Read`].
enum Answer {
    Log(Result<ChangePage, CanError>),
    Check(Result<Page<Summary, SinceCursor>, CanError>),
}

/// The outbound half: local changes, batched, offered to the peer.
pub(super) async fn offer_changes(
    link: &Arc<Link>,
    events: EventStream,
    since_ms: i64,
) -> Result<(), SessionError> {
    let config = link.config.clone();
    let mut backlog = Backlog::new(config.backlog, since_ms);
    // Every offer in flight gets its share of the backlog, so a small one
    // still keeps them all going.
    let max_batch = config
        .max_batch
        .min(config.backlog / config.offers_in_flight.max(1))
        .max(1);
    // `None` while the backlog is full and the change log is read instead.
    let mut events = Some(events);
    let mut flush_at: Option<Instant> = None;
    let mut last_seq: Option<u64> = None;
    let mut reading: Option<BoxFuture<'static, (Read, Answer)>> = None;
    // After a failed read, the next waits this long.
    let mut read_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut read_paused_until: Option<Instant> = None;
    let mut check = tokio::time::interval(config.check_interval);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await; // the first tick is immediate; the session just ran
    let mut offers: JoinSet<OfferDone> = JoinSet::new();
    let mut outcome = Ok(());

    let peer = link.conn.remote_id();
    loop {
        link.peers.set_backlog(peer, backlog.waiting() as u64);
        if reading.is_none() && read_paused_until.is_none() {
            if let Some(read) = backlog.read() {
                reading = Some(start_read(link.clone(), read));
            }
        }
        let room = offers.len() < config.offers_in_flight.max(1);
        let deadline = flush_at.filter(|_| room);
        let flush = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let read_pause = async move {
            match read_paused_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = link.shutdown.cancelled() => break,
            _ = link.conn.closed() => break,
            Some(done) = offers.join_next(), if !offers.is_empty() => {
                let Ok((batch, result)) = done else {
                    // Offers are never aborted and catch their panics: only
                    // a runtime shutting down gets here.
                    break;
                };
                match result {
                    Ok(undelivered) => backlog.offer_done(&batch, undelivered),
                    Err(err) => {
                        let all = batch.hashes.clone();
                        backlog.offer_done(&batch, all);
                        if let Err(err) = settle(link, "offer", Err(err)) {
                            outcome = Err(err);
                            break;
                        }
                    }
                }
            }
            (read, answer) = async { reading.as_mut().expect("checked").await }, if reading.is_some() => {
                reading = None;
                let queued = match answer {
                    Answer::Log(Ok(page)) => {
                        read_backoff.reset();
                        match backlog.log_page(read, page, |seq| link.view.caused(seq)) {
                            LogRead::Queued(queued) => queued,
                            LogRead::CaughtUp(after) => {
                                debug!(after, "live backlog caught up with the change log; following events again");
                                match resubscribe(link, Some(after)).await {
                                    Some(resumed) => events = Some(resumed),
                                    None => break,
                                }
                                last_seq = Some(after);
                                0
                            }
                        }
                    }
                    Answer::Check(Ok(page)) => {
                        read_backoff.reset();
                        let queued = backlog.check_page(read, page);
                        debug!(queued, "periodic live check page");
                        queued
                    }
                    Answer::Log(Err(err)) | Answer::Check(Err(err)) => {
                        backlog.read_failed(read);
                        let pause = read_backoff.next_pause();
                        warn!(error = %err, retry_in = ?pause, "reading the store for live sync failed");
                        read_paused_until = Some(Instant::now() + pause);
                        0
                    }
                };
                link.peers.offered(peer, queued as u64);
                if backlog.queued() > 0 && flush_at.is_none() {
                    flush_at = Some(Instant::now());
                }
            }
            () = read_pause => read_paused_until = None,
            () = flush => {
                let Some(batch) = backlog.take_batch(max_batch) else {
                    flush_at = None;
                    continue;
                };
                flush_at = (backlog.queued() > 0).then(Instant::now);
                let link = link.clone();
                offers.spawn(async move {
                    let offered = std::panic::AssertUnwindSafe(offer::offer(&link, batch.hashes.clone()))
                        .catch_unwind()
                        .await;
                    let result = offered.unwrap_or_else(|_| {
                        Err(Fault::Bug("a live offer panicked".into()).into())
                    });
                    (batch, result)
                });
            }
            event = next_event(&mut events) => match event {
                Some(Ok(event)) => {
                    last_seq = Some(event.seq);
                    if link.view.caused(event.seq) {
                        // The peer sent us this very change: no news to it.
                        continue;
                    }
                    match backlog.event(event.hash, event.seq, event.ts) {
                        Taken::Queued(fresh) => {
                            link.peers.offered(peer, u64::from(fresh));
                        }
                        Taken::Full => {
                            debug!(from = event.seq, "live backlog full; reading the change log instead of events");
                            events = None;
                            continue;
                        }
                    }
                    if flush_at.is_none() {
                        flush_at = Some(Instant::now() + config.linger);
                    }
                    if backlog.queued() >= max_batch {
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
                        Some(resumed) => events = Some(resumed),
                        None => break,
                    }
                    // Whatever the replay cannot give back, the check finds.
                    check.reset_immediately();
                }
            },
            _ = check.tick() => {
                backlog.tick(now_ms());
                if backlog.queued() > 0 && flush_at.is_none() {
                    flush_at = Some(Instant::now());
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

/// The next change event; never, while the change log is read instead.
async fn next_event(
    events: &mut Option<EventStream>,
) -> Option<Result<crate::can::ChangeEvent, CanError>> {
    match events.as_mut() {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// Runs `read` against the link's store.
fn start_read(link: Arc<Link>, read: Read) -> BoxFuture<'static, (Read, Answer)> {
    async move {
        let answer = match read {
            Read::Log { after, limit } => Answer::Log(link.can.changes(after, limit).await),
            Read::Check {
                since,
                after,
                limit,
            } => Answer::Check(link.can.list_since(since, after, limit).await),
        };
        (read, answer)
    }
    .boxed()
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
