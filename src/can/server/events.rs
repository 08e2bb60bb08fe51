//! `GET /sync/events`: the store's change stream as server-sent events (see
//! [`crate::can::sse`] for the format), with a keep-alive comment when quiet.
//! A stream ends when the store's stream ends or fails (the client resumes by
//! `Last-Event-ID`) and when the server shuts down, so that a graceful
//! shutdown does not wait for clients that never leave.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use futures::{stream, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::input::{invalid, text_header};
use super::AppState;
use crate::can::api::LAST_EVENT_ID_HEADER;
use crate::can::{sse, CanError, EventStream};

/// `GET /sync/events`: replays after `Last-Event-ID` when given, else live only.
pub(super) async fn get_events(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, CanError> {
    let after = match text_header(&headers, LAST_EVENT_ID_HEADER)? {
        Some(id) if !id.trim().is_empty() => Some(
            id.trim()
                .parse::<u64>()
                .map_err(|_| invalid(format!("Last-Event-ID {id:?} is not a sequence number")))?,
        ),
        _ => None,
    };
    let permit = state
        .event_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| CanError::Unavailable("too many event streams open; try again".into()))?;
    let events = state.can.subscribe(after).await?;
    let body = event_body(events, state.config.keep_alive, state.shutdown.clone())
        // The stream's permit goes with its body.
        .map(move |chunk| {
            let _held = &permit;
            chunk
        });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(sse::CONTENT_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// Resolves when the server shuts down (or its serve future is gone); never
/// when there is no shutdown signal.
async fn shutting_down(shutdown: &mut Option<watch::Receiver<bool>>) {
    match shutdown {
        Some(rx) => {
            let _ = rx.wait_for(|stop| *stop).await;
        }
        None => std::future::pending().await,
    }
}

/// The SSE body: events as they come, a comment every `keep_alive`; ends when
/// the store's stream ends or fails (the client resumes by id) or at shutdown.
fn event_body(
    events: EventStream,
    keep_alive: Duration,
    shutdown: Option<watch::Receiver<bool>>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
    let mut ticks = tokio::time::interval_at(Instant::now() + keep_alive, keep_alive);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    stream::unfold(
        (events, ticks, shutdown),
        |(mut events, mut ticks, mut shutdown)| async move {
            let text = tokio::select! {
                biased;
                () = shutting_down(&mut shutdown) => return None,
                item = events.next() => match item? {
                    Ok(event) => sse::encode_event(&event),
                    Err(err) => {
                        tracing::warn!(error = %err, "event stream of the store failed");
                        return None;
                    }
                },
                _ = ticks.tick() => sse::encode_comment("keep-alive"),
            };
            Some((Ok(Bytes::from(text)), (events, ticks, shutdown)))
        },
    )
}
