//! The guard in front of every route: a bound on requests in flight, the
//! browser rules of `browser.rs` (the Host must be ours, no requests on
//! behalf of pages of other origins), and the bearer token writes must carry
//! when the server is reachable beyond loopback. The checks run in that
//! order: 503, 421, 403, 401.
//!
//! Reads (GET, HEAD) never need the token: they change nothing. Everything
//! else (POST, PUT, PATCH, DELETE) does once a token is configured. A request
//! over the limit is answered 503 at once, never queued, so a flood of
//! requests costs the server a refusal each, not memory. A request counts
//! until its response body is sent, so downloads and event streams count
//! while they stream; event streams also have a cap of their own
//! ([`super::ServerConfig::max_event_streams`]), well below, so that
//! subscribers alone can never take every permit.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::browser::BrowserRules;
use super::{error_response, ServerConfig};

/// What the guard checks, from the server's settings.
#[derive(Debug)]
pub(super) struct Guard {
    /// `Authorization` a write must carry, whole (`Bearer <token>`).
    expected: Option<String>,
    /// One permit per request in flight.
    in_flight: Arc<Semaphore>,
    /// The Host and origin rules.
    browser: BrowserRules,
}

impl Guard {
    pub(super) fn of(config: &ServerConfig) -> Self {
        Self {
            expected: config.write_token.as_ref().map(|t| format!("Bearer {t}")),
            in_flight: Arc::new(Semaphore::new(config.max_requests.max(1))),
            browser: BrowserRules::new(&config.allowed_hosts),
        }
    }
}

/// The middleware: 503 over the limit, 421 for a Host not ours, 403 for a
/// page of another origin, 401 for a write without the token.
pub(super) async fn check(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(permit) = guard.in_flight.clone().try_acquire_owned() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight; try again",
        );
    };
    if let Err(refusal) = guard.browser.check(request.method(), request.headers()) {
        return refusal.into_response();
    }
    let write = !matches!(*request.method(), Method::GET | Method::HEAD);
    if let (true, Some(expected)) = (write, &guard.expected) {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if !same(given, expected.as_bytes()) {
            return error_response(
                StatusCode::UNAUTHORIZED,
                "this server takes writes only with its bearer token (Authorization: Bearer <token>)",
            );
        }
    }
    // The request is in flight until its body is sent: a blob download or
    // an event stream holds its permit while it streams.
    next.run(request).await.map(|body| {
        axum::body::Body::new(Held {
            body,
            _permit: permit,
        })
    })
}

/// A response body that holds a guard permit until it is sent or dropped.
struct Held {
    body: axum::body::Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    // Kept, so a response of known length keeps its Content-Length.
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guess was right.
fn same(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"Bearer abc", b"Bearer abc"));
        assert!(!same(b"Bearer abd", b"Bearer abc"));
        assert!(!same(b"Bearer ab", b"Bearer abc"));
        assert!(!same(b"", b"Bearer abc"));
    }
}
