//! `can-sync serve-can`: the CAN HTTP API (`docs/openapi.json`) over any [`Can`](super::Can).
//!
//! This is the reference server that a sync agent in another process talks to
//! through [`HttpCan`](super::HttpCan), and the CAN API a daemon with an
//! embedded store exposes on its `--http` port. It holds no store logic of its
//! own: every route parses its input, calls the [`Can`](super::Can) operations
//! it stands for and encodes the answer, so the HTTP and in-process paths
//! behave the same.
//!
//! Routes:
//! - user-facing, JSON: `POST /assets`, `GET /assets/{hash}` (Range),
//!   `GET|PATCH /assets/{hash}/meta`, `GET /assets?since=&limit=`, `GET /health`;
//! - sync API, protobuf (`application/x-protobuf`): `GET /sync/hashes`
//!   (paged), `GET /sync/changes` (the compacted change log, paged),
//!   `POST /sync/pull`, `POST /sync/push`, `POST /sync/meta` (answers JSON),
//!   `GET /sync/events` (SSE, see [`super::sse`]), `GET|PUT /sync/blob/{hash}`
//!   (streamed both ways, never held whole in memory), `GET
//!   /sync/outboard/{hash}` (an asset's outboard, so that a client can send
//!   any run of its groups with their proof; listed under `features` in
//!   `GET /health`);
//! - coded cells for rateless reconciliation, `application/octet-stream` in
//!   the wire forms of [`crate::recon::riblt`]: `GET /sync/coded/probe`,
//!   `GET /sync/coded/cells?start=&count=`; 404 when the store keeps none.
//!
//! Every error is JSON [`ErrorBody`] with a status that says whose fault it is;
//! [`CanError`] maps to a status in one place, its `IntoResponse`. Buffered
//! bodies are bounded by [`ServerConfig::max_body_bytes`], streamed blob uploads
//! by [`ServerConfig::max_blob_bytes`] and the store's own limit (413 either way).
//!
//! The routes are described for clients in `docs/openapi.json` (OpenAPI 3;
//! [`api_paths`] lists the paths it must cover).
//!
//! A guard covers every route: at most [`ServerConfig::max_requests`] in
//! flight (503 beyond), the browser rules (a `Host` that is loopback or in
//! [`ServerConfig::allowed_hosts`], else 421; nothing on behalf of a web page
//! of another origin, 403), and with [`ServerConfig::write_token`] every
//! write must carry it (401 otherwise). Each write route states the body
//! type it takes (415 otherwise). Assets are served with
//! `X-Content-Type-Options: nosniff` and `Content-Security-Policy: sandbox`.
//! Why each rule: `browser.rs`. For load tests, [`Faults`] adds latency,
//! random 500s and a bandwidth cap as one middleware, present only when a
//! knob is set.
//!
//! # Layout
//!
//! - `mod.rs`: [`ServerConfig`], the router, [`serve`] with its graceful
//!   shutdown, and how a [`CanError`] becomes an answer;
//! - `input.rs`: reading requests: hashes in paths, headers, queries, and
//!   bodies within their limit;
//! - `assets.rs`: the user-facing routes, JSON;
//! - `sync.rs`: the sync API's protobuf routes;
//! - `blobs.rs`: one asset's bytes streamed out (both APIs, Range) and in;
//! - `range.rs`: what a `Range` header asks for, and cutting a stream to it;
//! - `events.rs`: `GET /sync/events`, the change stream as SSE;
//! - `guard.rs`: the request limit, the browser rules and the write token;
//! - `browser.rs`: what a web page must not do: the Host, origin and
//!   content-type rules, and why;
//! - `faults.rs`: [`Faults`] and the middleware that injects them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use prost::Message;
use tokio::sync::watch;

use super::api::{ErrorBody, PROTOBUF};
use super::{CanError, SharedCan};

mod assets;
mod blobs;
mod browser;
mod events;
mod faults;
mod guard;
mod input;
mod range;
mod sync;

pub use browser::{parse_allowed_host, InvalidHostName, SIMPLE_CONTENT_TYPES};
use browser::{takes, BodyType};
pub use faults::Faults;
use guard::Guard;

/// Default bound on buffered request bodies (protobuf and JSON bodies, `POST /assets`).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// Default interval of keep-alive comments on `GET /sync/events`.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest buffered request body (protobuf, JSON, `POST /assets`); larger gets 413.
    pub max_body_bytes: u64,
    /// Largest streamed upload (`PUT /sync/blob`); `None` leaves it to the
    /// store's own limit. Larger gets 413.
    pub max_blob_bytes: Option<u64>,
    /// Interval of keep-alive comments on event streams.
    pub keep_alive: Duration,
    /// Injected faults, for load tests.
    pub faults: Faults,
    /// A bearer token every write (any method but GET and HEAD) must carry
    /// in `Authorization: Bearer <token>`; 401 otherwise. `None`: writes are
    /// open, for a server only loopback reaches.
    pub write_token: Option<String>,
    /// Requests handled at once; one more is answered 503 at once rather
    /// than queued (a flood cannot pile work up in the server).
    pub max_requests: usize,
    /// Event streams (`GET /sync/events`) open at once; one more is
    /// answered 503. Each holds a store subscription for as long as its
    /// client stays.
    pub max_event_streams: usize,
    /// Host names (or IP addresses) beyond loopback that requests may be
    /// addressed to, without port; a request whose `Host` is neither
    /// loopback nor one of these is answered 421 (DNS rebinding, see
    /// `browser.rs`). A server reached by a name or a non-loopback address
    /// needs it here.
    pub allowed_hosts: Vec<String>,
}

/// Default of [`ServerConfig::max_event_streams`].
pub const DEFAULT_MAX_EVENT_STREAMS: usize = 64;

/// Default of [`ServerConfig::max_requests`].
pub const DEFAULT_MAX_REQUESTS: usize = 512;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_blob_bytes: None,
            keep_alive: DEFAULT_KEEP_ALIVE,
            faults: Faults::default(),
            write_token: None,
            max_requests: DEFAULT_MAX_REQUESTS,
            max_event_streams: DEFAULT_MAX_EVENT_STREAMS,
            allowed_hosts: Vec::new(),
        }
    }
}

/// What every handler is given.
#[derive(Clone)]
struct AppState {
    /// The store every route reads and writes.
    can: SharedCan,
    /// The limits handlers check.
    config: Arc<ServerConfig>,
    /// Turns true when the server shuts down, so event streams end and the
    /// graceful shutdown can finish; `None` when nobody will shut it down.
    shutdown: Option<watch::Receiver<bool>>,
    /// One permit per open event stream.
    event_streams: Arc<tokio::sync::Semaphore>,
}

/// The router of every route of the CAN HTTP API over `can`.
///
/// Event streams of this router only end when their client leaves; use
/// [`serve`] for a server that can be shut down gracefully.
pub fn router(can: SharedCan, config: ServerConfig) -> Router {
    guarded(build_router(can, config.clone(), None), &config)
}

/// Serves the API on `listener` until `shutdown` completes, then ends open
/// event streams, lets in-flight requests finish, and returns once every
/// connection is closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    can: SharedCan,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, Some(can), config, Router::new(), shutdown).await
}

/// [`serve`], with `extra` routes beside the CAN API (a daemon's `/status`),
/// or only those when `can` is `None`. The guard of `config` (the write token
/// and the request limit) covers every route.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    can: Option<SharedCan>,
    config: ServerConfig,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = match can {
        Some(can) => build_router(can, config.clone(), Some(stop_rx)).merge(extra),
        None => extra,
    };
    let app = guarded(app, &config);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "CAN API listening");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Receivers read the value before waiting, so a stream that
            // starts after this (and after the sender is gone) still ends.
            let _ = stop_tx.send(true);
        })
        .await
}

fn build_router(
    can: SharedCan,
    config: ServerConfig,
    shutdown: Option<watch::Receiver<bool>>,
) -> Router {
    let knobs = config.faults.clone();
    let state = AppState {
        can,
        event_streams: Arc::new(tokio::sync::Semaphore::new(config.max_event_streams.max(1))),
        config: Arc::new(config),
        shutdown,
    };
    let router = api_routes()
        .into_iter()
        .fold(Router::new(), |router, (path, routes)| {
            router.route(path, routes)
        })
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    if knobs.is_active() {
        router.layer(middleware::from_fn_with_state(
            faults::FaultState::new(knobs),
            faults::inject_faults,
        ))
    } else {
        router
    }
}

/// Every route of the CAN API: its path (axum's syntax, `{hash}` for a
/// parameter) and its handlers, each write route with the body type it
/// takes (see `browser.rs`).
fn api_routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        (
            "/assets",
            takes(
                get(assets::list_assets).post(assets::post_asset),
                BodyType::Bytes,
            ),
        ),
        ("/assets/{hash}", get(blobs::get_blob)),
        (
            "/assets/{hash}/meta",
            takes(
                get(assets::get_meta).patch(assets::patch_meta),
                BodyType::Json,
            ),
        ),
        ("/health", get(assets::health)),
        ("/sync/hashes", get(sync::hashes)),
        ("/sync/changes", get(sync::changes)),
        ("/sync/coded/cells", get(sync::coded_cells)),
        ("/sync/coded/probe", get(sync::coded_probe)),
        ("/sync/pull", takes(post(sync::pull), BodyType::Protobuf)),
        ("/sync/push", takes(post(sync::push), BodyType::Protobuf)),
        (
            "/sync/push-batch",
            takes(post(sync::push_batch), BodyType::Protobuf),
        ),
        ("/sync/meta", takes(post(sync::meta), BodyType::Protobuf)),
        ("/sync/events", get(events::get_events)),
        (
            "/sync/blob/{hash}",
            takes(get(blobs::get_blob).put(blobs::put_blob), BodyType::Bytes),
        ),
        ("/sync/outboard/{hash}", get(blobs::get_outboard)),
    ]
}

/// The path of every route of the CAN API, as the router matches it
/// (`{hash}` for a parameter): the paths `docs/openapi.json` describes.
pub fn api_paths() -> Vec<&'static str> {
    api_routes().into_iter().map(|(path, _)| path).collect()
}

/// `router` behind the guard of `config`.
fn guarded(router: Router, config: &ServerConfig) -> Router {
    let guard = Arc::new(Guard::of(config));
    router.layer(middleware::from_fn_with_state(guard, guard::check))
}

impl CanError {
    /// The HTTP status that says whose fault this is.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::HashMismatch { .. } | Self::BadRange(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::TooLarge { .. } | Self::MetaTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Invalid(_) | Self::FutureStamp(_) => StatusCode::BAD_REQUEST,
            Self::ReadOnly => StatusCode::FORBIDDEN,
            Self::Unavailable(_) | Self::InUse(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Storage(_) | Self::DamagedRecord { .. } | Self::DamagedIndex { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for CanError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "CAN API request failed");
        }
        let mut body = ErrorBody::new(self.to_string());
        match self {
            Self::HashMismatch { expected, actual } => {
                body.expected = Some(expected.to_hex());
                body.actual = Some(actual.to_hex());
            }
            Self::TooLarge { size, limit } | Self::MetaTooLarge { size, limit } => {
                body.size = Some(size);
                body.limit = Some(limit);
            }
            Self::DamagedRecord { hash, .. } => body.damaged = Some(hash.to_hex()),
            Self::DamagedIndex { .. } => body.damaged_index = Some(true),
            _ => {}
        }
        (status, Json(body)).into_response()
    }
}

/// An error answer with only a message, for refusals that are no [`CanError`]
/// (no such route, injected faults, a range outside the asset).
fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(message))).into_response()
}

async fn no_route(request: Request) -> Response {
    let message = format!("no route for {} {}", request.method(), request.uri().path());
    error_response(StatusCode::NOT_FOUND, message)
}

async fn method_not_allowed(request: Request) -> Response {
    let message = format!(
        "{} is not allowed on {}",
        request.method(),
        request.uri().path()
    );
    error_response(StatusCode::METHOD_NOT_ALLOWED, message)
}

/// A protobuf answer of the sync API.
fn protobuf(message: &impl Message) -> Response {
    ([(header::CONTENT_TYPE, PROTOBUF)], message.encode_to_vec()).into_response()
}
