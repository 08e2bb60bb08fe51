//! Fault injection for load tests (`serve-can --latency-ms --error-rate
//! --bandwidth`): one middleware that adds latency, answers a share of requests
//! with a 500, and throttles response bodies. It is only layered on when a
//! knob is set, so a normal server pays nothing for it.
//!
//! The bandwidth is the server's, shared by every body it sends at once, as
//! a CAN behind a slow disk or link has: a client that reads several ranges
//! at once gets no more from it than one that reads one.

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
    /// Cap on the rate at which response bodies are sent, all of them
    /// together.
    pub bandwidth_bytes_per_sec: Option<u64>,
}

impl Faults {
    /// True when any knob is set, i.e. the fault middleware is needed.
    pub fn is_active(&self) -> bool {
        !self.latency.is_zero() || self.error_rate > 0.0 || self.bandwidth_bytes_per_sec.is_some()
    }
}

/// What the fault middleware holds: the knobs, and the server's one pace
/// for its bodies.
pub(super) struct FaultState {
    faults: Faults,
    pace: Option<Arc<Pace>>,
}

impl FaultState {
    pub(super) fn new(faults: Faults) -> Arc<Self> {
        let pace = faults
            .bandwidth_bytes_per_sec
            .map(|rate| Arc::new(Pace::new(rate.max(1))));
        Arc::new(Self { faults, pace })
    }
}

/// The fault middleware: latency first, then maybe an injected 500, then a
/// throttled response body.
pub(super) async fn inject_faults(
    State(state): State<Arc<FaultState>>,
    request: Request,
    next: Next,
) -> Response {
    let faults = &state.faults;
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "injected fault");
    }
    let response = next.run(request).await;
    match &state.pace {
        Some(pace) => {
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, throttle(body, pace.clone()))
        }
        None => response,
    }
}

/// The server's sending pace: `rate` bytes per second over all bodies, with
/// at most one second of unused allowance carried over.
pub(super) struct Pace {
    rate: u64,
    /// Start of the current accounting window and bytes sent in it.
    window: std::sync::Mutex<Option<(Instant, u64)>>,
}

impl Pace {
    fn new(rate: u64) -> Self {
        Self {
            rate,
            window: std::sync::Mutex::new(None),
        }
    }

    /// When `n` more bytes may go.
    fn reserve(&self, n: u64) -> Instant {
        let rate = self.rate as f64;
        let now = Instant::now();
        let mut window = self.window.lock().expect("pace lock");
        let (start, sent) = match *window {
            Some((start, sent))
                if start + Duration::from_secs_f64(sent as f64 / rate) + Duration::from_secs(1)
                    >= now =>
            {
                (start, sent)
            }
            _ => (now, 0),
        };
        let sent = sent + n;
        *window = Some((start, sent));
        start + Duration::from_secs_f64(sent as f64 / rate)
    }
}

/// `body`, sent at the server's `pace` (in pieces of 50 ms worth of it, or
/// 64 KiB when that is less).
fn throttle(body: Body, pace: Arc<Pace>) -> Body {
    struct Throttle {
        inner: BodyDataStream,
        pending: Bytes,
        pace: Arc<Pace>,
    }
    let piece = (pace.rate / 20).clamp(1, 64 * 1024) as usize;
    let state = Throttle {
        inner: body.into_data_stream(),
        pending: Bytes::new(),
        pace,
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
        tokio::time::sleep_until(state.pace.reserve(n as u64)).await;
        Some((Ok(out), state))
    });
    Body::from_stream(throttled)
}
