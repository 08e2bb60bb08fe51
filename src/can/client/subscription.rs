//! The resumable event subscription of [`HttpCan`]: [`Can::subscribe`] over
//! `GET /sync/events`.
//!
//! When the connection drops, errs or goes quiet for longer than the idle
//! timeout, the subscription reconnects by itself (pausing by a [`Backoff`]
//! from 100 ms doubling to 5 s, jittered so that the clients of a restarted
//! CAN do not all come back at once) with `Last-Event-ID` set to the last sequence number it
//! delivered, so the server replays what was missed; duplicates are dropped.
//! The stream ends only when every clone of the client is dropped. One gap
//! remains: a subscription started live-only (`after_seq = None`) that drops
//! before it saw any event (or a bare `id:` line) has no position to resume
//! from and starts live again.
//!
//! [`Can::subscribe`]: crate::can::Can::subscribe

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{stream, StreamExt};
use reqwest::header;
use tokio::sync::watch;

use super::answers::{bad_answer, describe, send};
use super::HttpCan;
use crate::backoff::Backoff;
use crate::can::api::LAST_EVENT_ID_HEADER;
use crate::can::sse::{self, SseParser};
use crate::can::{CanError, ChangeEvent, EventStream};

/// First pause before reconnecting an event stream.
const RECONNECT_FIRST_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between reconnection attempts, before jitter.
const RECONNECT_MAX_PAUSE: Duration = Duration::from_secs(5);

/// The events of `can` after `after_seq` (live ones only when `None`), for as
/// long as a clone of `can` lives.
pub(super) async fn subscribe(
    can: &HttpCan,
    after_seq: Option<u64>,
) -> Result<EventStream, CanError> {
    let mut subscription = Subscription::new(can, after_seq);
    // The first connection is made now, so a store that cannot be reached
    // is reported, and events from here on are not missed.
    subscription.connect().await?;
    Ok(subscription.into_stream())
}

/// The state of one resumable event subscription.
struct Subscription {
    /// The client's connection pool, shared with its other requests.
    http: reqwest::Client,
    /// `GET /sync/events` of the CAN.
    url: String,
    /// Silence after which the connection is given up and made again.
    idle_timeout: Duration,
    /// Closed when the last [`HttpCan`] clone is dropped.
    alive: watch::Receiver<()>,
    /// The last sequence number delivered (or asked to start after).
    last_seq: Option<u64>,
    /// The open event stream, if any.
    connection: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    /// Parser of the open connection's bytes.
    parser: SseParser,
    /// Events parsed and not yet delivered.
    pending: VecDeque<ChangeEvent>,
    /// Pauses between reconnection attempts; back to the first one after a
    /// successful connect.
    backoff: Backoff,
}

/// Resolves when every [`HttpCan`] clone is gone.
async fn client_dropped(alive: &mut watch::Receiver<()>) {
    while alive.changed().await.is_ok() {}
}

impl Subscription {
    /// A subscription of `can`'s events after `after_seq`, not yet connected.
    fn new(can: &HttpCan, after_seq: Option<u64>) -> Self {
        Self {
            http: can.http.clone(),
            url: can.url("/sync/events"),
            idle_timeout: can.options.idle_timeout,
            alive: can.alive.subscribe(),
            last_seq: after_seq,
            connection: None,
            parser: SseParser::default(),
            pending: VecDeque::new(),
            backoff: Backoff::new(RECONNECT_FIRST_PAUSE, RECONNECT_MAX_PAUSE),
        }
    }

    /// Opens the event stream, resuming after `last_seq`.
    async fn connect(&mut self) -> Result<(), CanError> {
        let mut request = self
            .http
            .get(&self.url)
            .header(header::ACCEPT, sse::CONTENT_TYPE);
        if let Some(seq) = self.last_seq {
            request = request.header(LAST_EVENT_ID_HEADER, seq.to_string());
        }
        let response = tokio::time::timeout(self.idle_timeout, send(request, None))
            .await
            .map_err(|_| CanError::Unavailable("event stream did not answer".into()))??;
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with(sse::CONTENT_TYPE) {
            return Err(bad_answer(format!("event stream of type {content_type:?}")));
        }
        self.connection = Some(response.bytes_stream().boxed());
        self.parser = SseParser::default();
        self.backoff.reset();
        Ok(())
    }

    /// Takes in one chunk of the open stream; false when the connection must go.
    fn take_bytes(&mut self, bytes: &[u8]) -> bool {
        self.parser.feed(bytes);
        loop {
            match self.parser.next_message() {
                Ok(Some(message)) => {
                    if message
                        .event
                        .as_deref()
                        .is_some_and(|kind| kind != "message")
                    {
                        continue;
                    }
                    match sse::decode_change(&message) {
                        Ok(event) if self.last_seq.is_some_and(|last| event.seq <= last) => {}
                        Ok(event) => {
                            self.last_seq = Some(event.seq);
                            self.pending.push_back(event);
                        }
                        Err(err) => tracing::warn!(error = %err, "skipping a bad change event"),
                    }
                }
                Ok(None) => {
                    // An `id:` without data also moves the resume point.
                    let id = self
                        .parser
                        .last_event_id()
                        .and_then(|id| id.trim().parse().ok());
                    if let Some(id) = id {
                        self.last_seq = Some(self.last_seq.map_or(id, |last: u64| last.max(id)));
                    }
                    return true;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "event stream unreadable; reconnecting");
                    return false;
                }
            }
        }
    }

    /// The next event, reconnecting as often as needed; `None` once the
    /// client is gone.
    async fn next_event(&mut self) -> Option<ChangeEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            let Some(connection) = self.connection.as_mut() else {
                let delay = self.backoff.next_pause();
                let mut alive = self.alive.clone();
                let connected = tokio::select! {
                    () = client_dropped(&mut alive) => return None,
                    connected = async {
                        tokio::time::sleep(delay).await;
                        self.connect().await
                    } => connected,
                };
                if let Err(err) = connected {
                    tracing::debug!(error = %err, url = %self.url, "event stream reconnect failed");
                }
                continue;
            };
            let read = tokio::select! {
                () = client_dropped(&mut self.alive) => return None,
                read = tokio::time::timeout(self.idle_timeout, connection.next()) => read,
            };
            let keep = match read {
                Ok(Some(Ok(bytes))) => self.take_bytes(&bytes),
                Ok(Some(Err(err))) => {
                    tracing::debug!(error = %describe(&err), "event stream broke");
                    false
                }
                Ok(None) => {
                    tracing::debug!(url = %self.url, "event stream ended by the server");
                    false
                }
                Err(_) => {
                    tracing::debug!(url = %self.url, "event stream silent; reconnecting");
                    false
                }
            };
            if !keep {
                self.connection = None;
            }
        }
    }

    /// The subscription as a stream of events, ending when the client is gone.
    fn into_stream(self) -> EventStream {
        stream::unfold(self, |mut subscription| async move {
            let event = subscription.next_event().await?;
            Some((Ok(event), subscription))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asset::AssetHash;
    use crate::can::ChangeKind;

    #[test]
    fn subscription_keeps_order_drops_duplicates_and_follows_bare_ids() {
        let can = HttpCan::new("http://127.0.0.1:9").unwrap();
        let mut subscription = Subscription::new(&can, Some(4));
        let event = |seq: u64| {
            sse::encode_event(&ChangeEvent {
                seq,
                kind: ChangeKind::Asset,
                hash: AssetHash::of(&seq.to_be_bytes()),
                ts: 1,
            })
        };
        let text = format!("{}{}: ping\n\n{}", event(3), event(5), event(6));
        assert!(subscription.take_bytes(text.as_bytes()));
        let seqs: Vec<u64> = subscription.pending.drain(..).map(|e| e.seq).collect();
        assert_eq!(seqs, vec![5, 6]);
        assert!(subscription.take_bytes(b"id: 9\n\n"));
        assert_eq!(subscription.last_seq, Some(9));
        assert!(subscription.pending.is_empty());
        assert!(!subscription.take_bytes(&vec![b'x'; sse::DEFAULT_MAX_LINE + 1]));
    }

    #[test]
    fn reconnects_pause_from_100_ms_doubling_to_5_s() {
        let can = HttpCan::new("http://127.0.0.1:9").unwrap();
        let subscription = Subscription::new(&can, None);
        let mut pauses = subscription.backoff.clone().with_jitter(0.0);
        let ms = Duration::from_millis;
        let schedule: Vec<Duration> = (0..8).map(|_| pauses.next_pause()).collect();
        assert_eq!(
            schedule,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000].map(ms)
        );
        assert!(
            subscription.backoff.max_pause() <= ms(7500),
            "jitter adds at most half"
        );
    }
}
