//! Fault injection for load tests (`serve-can --latency-ms --error-rate
//! --bandwidth`): one middleware that adds latency, answers a share of requests
//! with a 500, and throttles response bodies. It is only layered on when a
//! knob is set, so a normal server pays nothing for it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use futures::{stream, StreamExt};
use tokio::time::Instant;

use super::error_response;

/// Fault knobs for load tests. The default injects nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Added before every request is handled.
    pub latency: Duration,
    /// Fraction (0.0–1.0) of requests answered `500 {"error":"injected fault"}`
    /// before they reach the store.
    pub error_rate: f64,
    /// Cap on the rate at which each response body is sent.
    pub bandwidth_bytes_per_sec: Option<u64>,
}

impl Faults {
    /// True when any knob is set, i.e. the fault middleware is needed.
    pub fn is_active(&self) -> bool {
        !self.latency.is_zero() || self.error_rate > 0.0 || self.bandwidth_bytes_per_sec.is_some()
    }
}

/// The fault middleware: latency first, then maybe an injected 500, then a
/// throttled response body.
pub(super) async fn inject_faults(
    State(faults): State<Arc<Faults>>,
    request: Request,
    next: Next,
) -> Response {
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "injected fault");
    }
    let response = next.run(request).await;
    match faults.bandwidth_bytes_per_sec {
        Some(rate) => {
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, throttle(body, rate.max(1)))
        }
        None => response,
    }
}

/// `body`, sent no faster than `rate` bytes per second (in pieces of 50 ms
/// worth, or 64 KiB when that is less, with at most one second of unused
/// allowance carried over).
fn throttle(body: Body, rate: u64) -> Body {
    struct Throttle {
        inner: BodyDataStream,
        pending: Bytes,
        /// Start of the current accounting window and bytes sent in it.
        window: Option<(Instant, u64)>,
    }
    let piece = (rate / 20).clamp(1, 64 * 1024) as usize;
    let state = Throttle {
        inner: body.into_data_stream(),
        pending: Bytes::new(),
        window: None,
    };
    let throttled = stream::unfold(state, move |mut state| async move {
        while state.pending.is_empty() {
            match state.inner.next().await? {
                Ok(chunk) => state.pending = chunk,
                Err(err) => return Some((Err(err), state)),
            }
        }
        let n = piece.min(state.pending.len());
        let out = state.pending.split_to(n);
        let now = Instant::now();
        let (start, sent) = match state.window {
            Some((start, sent))
                if start
                    + Duration::from_secs_f64(sent as f64 / rate as f64)
                    + Duration::from_secs(1)
                    >= now =>
            {
                (start, sent)
            }
            _ => (now, 0),
        };
        let sent = sent + n as u64;
        state.window = Some((start, sent));
        tokio::time::sleep_until(start + Duration::from_secs_f64(sent as f64 / rate as f64)).await;
        Some((Ok(out), state))
    });
    Body::from_stream(throttled)
}
