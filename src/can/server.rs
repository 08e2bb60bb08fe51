//! `can-sync serve-can`: the CAN HTTP API of DESIGN §3 over any [`Can`](super::Can).
//!
//! This is the reference server that a sync agent in another process talks to
//! through [`HttpCan`](super::HttpCan), and the CAN API a daemon with an
//! embedded store exposes on its `--http` port. It holds no logic of its own:
//! every route parses its input, calls one [`Can`](super::Can) operation and encodes the
//! answer, so the HTTP and in-process paths behave the same.
//!
//! Routes:
//! - user-facing, JSON: `POST /assets`, `GET /assets/{hash}` (Range),
//!   `GET|PATCH /assets/{hash}/meta`, `GET /assets?since=&limit=`, `GET /health`;
//! - sync API, protobuf (`application/x-protobuf`): `GET /sync/hashes`,
//!   `POST /sync/pull`, `POST /sync/push`, `POST /sync/meta` (answers JSON),
//!   `GET /sync/events` (SSE, see [`super::sse`]), `GET|PUT /sync/blob/{hash}`
//!   (streamed both ways, never held whole in memory).
//!
//! Every error is JSON [`ErrorBody`] with a status that says whose fault it is;
//! [`CanError`] maps to a status in one place, its `IntoResponse`. Buffered
//! bodies are bounded by [`ServerConfig::max_body_bytes`], streamed blob uploads
//! by [`ServerConfig::max_blob_bytes`] and the store's own limit (413 either way).
//!
//! For load tests, [`Faults`] adds latency, random 500s and a bandwidth cap as
//! one middleware, present only when a knob is set.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use bytes::BytesMut;
use futures::{stream, StreamExt};
use prost::Message;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::api::{
    Applied, AssetInfo, ErrorBody, Health, MetaPatch, Stored, SummaryInfo,
    ASSET_DESCRIPTION_HEADER, ASSET_META_HEADER, ASSET_MIME_HEADER, ASSET_NAME_HEADER,
    ASSET_TAGS_HEADER, LAST_EVENT_ID_HEADER, PROTOBUF,
};
use super::sse;
use super::{ByteStream, CanError, EventStream, Pushed, SharedCan};
use crate::asset::{AssetHash, Bundle, MetaUpdate};
use crate::clock::now_ms;
use crate::pb;

/// Default bound on buffered request bodies (protobuf and JSON bodies, `POST /assets`).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// Default interval of keep-alive comments on `GET /sync/events`.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Bodies above this size are hashed off the async reactor.
const HASH_INLINE_LIMIT: usize = 1024 * 1024;
/// How much of a refused body is read and dropped so the client sees the answer.
const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// How long a refused body is drained at most.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_blob_bytes: None,
            keep_alive: DEFAULT_KEEP_ALIVE,
            faults: Faults::default(),
        }
    }
}

/// Shared by every handler.
#[derive(Clone)]
struct AppState {
    can: SharedCan,
    config: Arc<ServerConfig>,
    /// Turns true when the server shuts down, so event streams end and the
    /// graceful shutdown can finish; `None` when nobody will shut it down.
    shutdown: Option<watch::Receiver<bool>>,
}

/// The router of every route of DESIGN §3 over `can`.
///
/// Event streams of this router only end when their client leaves; use
/// [`serve`] for a server that can be shut down gracefully.
pub fn router(can: SharedCan, config: ServerConfig) -> Router {
    build_router(can, config, None)
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = build_router(can, config, Some(stop_rx));
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
    let faults = Arc::new(config.faults.clone());
    let state = AppState {
        can,
        config: Arc::new(config),
        shutdown,
    };
    let router = Router::new()
        .route("/assets", post(post_asset).get(list_assets))
        .route("/assets/{hash}", get(get_blob))
        .route("/assets/{hash}/meta", get(get_meta).patch(patch_meta))
        .route("/health", get(health))
        .route("/sync/hashes", get(sync_hashes))
        .route("/sync/pull", post(sync_pull))
        .route("/sync/push", post(sync_push))
        .route("/sync/meta", post(sync_meta))
        .route("/sync/events", get(sync_events))
        .route("/sync/blob/{hash}", get(get_blob).put(put_blob))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    if faults.is_active() {
        router.layer(middleware::from_fn_with_state(faults, inject_faults))
    } else {
        router
    }
}

// ---- errors ----

impl IntoResponse for CanError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::HashMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "CAN API request failed");
        }
        let mut body = ErrorBody::new(self.to_string());
        match self {
            Self::HashMismatch { expected, actual } => {
                body.expected = Some(expected.to_hex());
                body.actual = Some(actual.to_hex());
            }
            Self::TooLarge { size, limit } => {
                body.size = Some(size);
                body.limit = Some(limit);
            }
            _ => {}
        }
        (status, Json(body)).into_response()
    }
}

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

fn invalid(message: impl std::fmt::Display) -> CanError {
    CanError::Invalid(message.to_string())
}

// ---- input helpers ----

fn parse_hash(path: Result<Path<String>, PathRejection>) -> Result<AssetHash, CanError> {
    let Path(text) = path.map_err(|rejection| invalid(rejection.body_text()))?;
    text.parse().map_err(invalid)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn check_declared_length(headers: &HeaderMap, limit: u64) -> Result<(), CanError> {
    match content_length(headers) {
        Some(size) if size > limit => Err(CanError::TooLarge { size, limit }),
        _ => Ok(()),
    }
}

/// Reads a whole request body, refusing more than `limit` bytes.
async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Bytes, CanError> {
    let mut chunks = body.into_data_stream();
    let read = async {
        check_declared_length(headers, limit)?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|err| invalid(format!("reading body: {err}")))?;
            let size = (buf.len() + chunk.len()) as u64;
            if size > limit {
                return Err(CanError::TooLarge { size, limit });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
    .await;
    if read.is_err() {
        drain(&mut chunks).await;
    }
    read
}

/// Reads and drops what is left of a refused request body (within bounds), so
/// the client gets to read the error answer: a server that closes on unread
/// bytes resets the connection, and the client sees a broken pipe instead.
async fn drain(body: &mut BodyDataStream) {
    let discard = async {
        let mut left = DRAIN_MAX_BYTES;
        while let Some(Ok(chunk)) = body.next().await {
            left = left.saturating_sub(chunk.len() as u64);
            if left == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, discard).await;
}

async fn read_protobuf<M: Message + Default>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<M, CanError> {
    let bytes = read_body(headers, body, state.config.max_body_bytes).await?;
    M::decode(bytes).map_err(|err| invalid(format!("bad protobuf: {err}")))
}

async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, CanError> {
    let bytes = read_body(headers, body, state.config.max_body_bytes).await?;
    serde_json::from_slice(&bytes).map_err(|err| invalid(format!("bad JSON: {err}")))
}

/// A UTF-8 header value, if present.
fn text_header(headers: &HeaderMap, name: &str) -> Result<Option<String>, CanError> {
    headers
        .get(name)
        .map(|value| {
            std::str::from_utf8(value.as_bytes())
                .map(str::to_owned)
                .map_err(|_| invalid(format!("header {name} is not UTF-8")))
        })
        .transpose()
}

fn protobuf(message: &impl Message) -> Response {
    ([(header::CONTENT_TYPE, PROTOBUF)], message.encode_to_vec()).into_response()
}

// ---- user-facing routes ----

/// `POST /assets`: stores raw bytes with metadata from headers.
async fn post_asset(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CanError> {
    let data = read_body(&headers, body, state.config.max_body_bytes).await?;
    let now = now_ms();
    let meta = pb::AssetMeta {
        name: text_header(&headers, ASSET_NAME_HEADER)?.unwrap_or_default(),
        mime_type: text_header(&headers, ASSET_MIME_HEADER)?.unwrap_or_default(),
        description: text_header(&headers, ASSET_DESCRIPTION_HEADER)?.unwrap_or_default(),
        tags: text_header(&headers, ASSET_TAGS_HEADER)?
            .map(|tags| {
                tags.split(',')
                    .map(str::trim)
                    .filter(|tag| !tag.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        is_trashed: false,
        created_at_ms: now,
        meta_updated_at_ms: now,
    };
    let size = data.len() as u64;
    let hash = if data.len() > HASH_INLINE_LIMIT {
        let data = data.clone();
        tokio::task::spawn_blocking(move || AssetHash::of(&data))
            .await
            .map_err(|err| CanError::Storage(format!("hashing task failed: {err}")))?
    } else {
        AssetHash::of(&data)
    };
    let answer = Json(Stored {
        hash: hash.to_hex(),
        size,
    });
    // Uploading bytes again must not overwrite the metadata they already have.
    if state.can.meta(hash).await?.is_some() {
        return Ok((StatusCode::OK, answer).into_response());
    }
    let pushed = state.can.push(Bundle { hash, data, meta }).await?;
    let status = if pushed.already_existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, answer).into_response())
}

/// What a `Range` header asks of an asset of a known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// No (usable) range: the whole asset.
    Full,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// A well-formed range outside the asset.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n`. Anything else (other units,
/// several ranges, bad syntax) is ignored, as RFC 9110 allows.
fn parse_range(value: &str, size: u64) -> ByteRange {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return ByteRange::Full;
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (first.is_empty(), last.is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => match number(last) {
            None => ByteRange::Full,
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if size == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Part {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        },
        (false, _) => {
            let Some(start) = number(first) else {
                return ByteRange::Full;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match number(last) {
                    Some(end) if end >= start => end,
                    _ => return ByteRange::Full,
                }
            };
            if start >= size {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Part {
                    start,
                    end: end.min(size - 1),
                }
            }
        }
        (true, true) => ByteRange::Full,
    }
}

/// At most `len` bytes of `body`.
fn take_bytes(body: ByteStream, len: u64) -> ByteStream {
    stream::unfold((body, len), |(mut body, remaining)| async move {
        if remaining == 0 {
            return None;
        }
        match body.next().await? {
            Ok(mut chunk) => {
                if chunk.len() as u64 > remaining {
                    chunk.truncate(remaining as usize);
                }
                let left = remaining - chunk.len() as u64;
                Some((Ok(chunk), (body, left)))
            }
            Err(err) => Some((Err(err), (body, 0))),
        }
    })
    .boxed()
}

/// `GET /assets/{hash}` and `GET /sync/blob/{hash}`: streamed bytes, with Range.
async fn get_blob(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, CanError> {
    let hash = parse_hash(path)?;
    let (size, meta) = state
        .can
        .meta(hash)
        .await?
        .ok_or(CanError::NotFound(hash))?;
    let range = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .map_or(ByteRange::Full, |value| parse_range(value, size));
    let content_type = HeaderValue::from_str(&meta.mime_type)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut response = match range {
        ByteRange::Unsatisfiable => {
            let mut response = error_response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("range not satisfiable: the asset has {size} bytes"),
            );
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("ASCII"),
            );
            return Ok(response);
        }
        ByteRange::Full => {
            let (_, body) = state.can.read_blob(hash, 0).await?;
            let mut response = Response::new(Body::from_stream(body));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            response
        }
        ByteRange::Part { start, end } => {
            let len = end - start + 1;
            let (_, body) = state.can.read_blob(hash, start).await?;
            let mut response = Response::new(Body::from_stream(take_bytes(body, len)));
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")).expect("ASCII"),
            );
            response
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{hash}\"")).expect("hex is ASCII"),
    );
    Ok(response)
}

/// `GET /assets/{hash}/meta`.
async fn get_meta(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<AssetInfo>, CanError> {
    let hash = parse_hash(path)?;
    let (size, meta) = state
        .can
        .meta(hash)
        .await?
        .ok_or(CanError::NotFound(hash))?;
    Ok(Json(AssetInfo::new(&hash, size, meta)))
}

/// `PATCH /assets/{hash}/meta`: a user edit, stamped so that it wins LWW.
async fn patch_meta(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<AssetInfo>, CanError> {
    let hash = parse_hash(path)?;
    let patch: MetaPatch = read_json(&state, &headers, body).await?;
    let (_, current) = state
        .can
        .meta(hash)
        .await?
        .ok_or(CanError::NotFound(hash))?;
    let update = MetaUpdate {
        hash,
        description: patch.description.unwrap_or(current.description),
        tags: patch.tags.unwrap_or(current.tags),
        is_trashed: patch.is_trashed.unwrap_or(current.is_trashed),
        meta_updated_at_ms: now_ms().max(current.meta_updated_at_ms.saturating_add(1)),
    };
    state.can.apply_meta(update).await?;
    // Whatever won (ours, or a newer edit that raced it) is what we show.
    let (size, meta) = state
        .can
        .meta(hash)
        .await?
        .ok_or(CanError::NotFound(hash))?;
    Ok(Json(AssetInfo::new(&hash, size, meta)))
}

/// Query of `GET /assets` and `GET /sync/hashes`.
#[derive(Debug, Deserialize)]
struct ListQuery {
    since: Option<i64>,
    limit: Option<usize>,
}

fn list_query(query: Result<Query<ListQuery>, QueryRejection>) -> Result<ListQuery, CanError> {
    query
        .map(|Query(query)| query)
        .map_err(|rejection| invalid(format!("bad query: {}", rejection.body_text())))
}

/// `GET /assets?since=MS&limit=N`.
async fn list_assets(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<SummaryInfo>>, CanError> {
    let query = list_query(query)?;
    let mut summaries = state.can.list(query.since).await?;
    if let Some(limit) = query.limit {
        summaries.truncate(limit);
    }
    Ok(Json(
        summaries
            .into_iter()
            .map(|s| SummaryInfo {
                hash: s.hash.to_hex(),
                size: s.size,
                created_at_ms: s.created_at_ms,
                meta_updated_at_ms: s.version.updated_at_ms,
            })
            .collect(),
    ))
}

/// `GET /health`.
async fn health(State(state): State<AppState>) -> Result<Json<Health>, CanError> {
    let stats = state.can.stats().await?;
    Ok(Json(Health {
        status: "ok".into(),
        assets: stats.assets,
        bytes: stats.bytes,
    }))
}

// ---- sync API ----

/// `GET /sync/hashes?since=MS`.
async fn sync_hashes(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, CanError> {
    let query = list_query(query)?;
    let summaries = state.can.list(query.since).await?;
    Ok(protobuf(&pb::HashList {
        assets: summaries.iter().map(|s| s.to_pb()).collect(),
    }))
}

/// `POST /sync/pull`.
async fn sync_pull(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CanError> {
    let request: pb::PullRequest = read_protobuf(&state, &headers, body).await?;
    let hashes = request
        .hashes
        .iter()
        .map(|hash| hash.parse())
        .collect::<Result<Vec<AssetHash>, _>>()
        .map_err(invalid)?;
    let pulled = state.can.pull(&hashes).await?;
    Ok(protobuf(&pb::PullResponse {
        bundles: pulled.bundles.into_iter().map(Bundle::into_pb).collect(),
        missing: pulled.missing.iter().map(AssetHash::to_hex).collect(),
    }))
}

/// `POST /sync/push`.
async fn sync_push(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CanError> {
    let bundle: pb::AssetBundle = read_protobuf(&state, &headers, body).await?;
    let pushed = state
        .can
        .push(Bundle::from_pb(bundle).map_err(invalid)?)
        .await?;
    Ok(protobuf(&pb::PushResponse {
        hash: pushed.hash.to_hex(),
        already_existed: pushed.already_existed,
    }))
}

/// `POST /sync/meta`.
async fn sync_meta(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Applied>, CanError> {
    let update: pb::MetaUpdate = read_protobuf(&state, &headers, body).await?;
    let applied = state
        .can
        .apply_meta(MetaUpdate::from_pb(update).map_err(invalid)?)
        .await?;
    Ok(Json(Applied { applied }))
}

/// `GET /sync/events`: replays after `Last-Event-ID` when given, else live only.
async fn sync_events(
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
    let events = state.can.subscribe(after).await?;
    let body = event_body(events, state.config.keep_alive, state.shutdown.clone());
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

/// `PUT /sync/blob/{hash}`: the body streams into the store, verified on the way.
async fn put_blob(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CanError> {
    let mut body = body.into_data_stream();
    let stored = put_blob_impl(&state, path, &headers, &mut body).await;
    if stored.is_err() {
        drain(&mut body).await;
    }
    let pushed = stored?;
    Ok(protobuf(&pb::PushResponse {
        hash: pushed.hash.to_hex(),
        already_existed: pushed.already_existed,
    }))
}

async fn put_blob_impl(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: &mut BodyDataStream,
) -> Result<Pushed, CanError> {
    let hash = parse_hash(path)?;
    let meta = match headers.get(ASSET_META_HEADER) {
        None => pb::AssetMeta::default(),
        Some(value) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(value.as_bytes())
                .map_err(|err| invalid(format!("{ASSET_META_HEADER}: bad base64: {err}")))?;
            pb::AssetMeta::decode(raw.as_slice())
                .map_err(|err| invalid(format!("{ASSET_META_HEADER}: bad protobuf: {err}")))?
        }
    };
    let limit = state.config.max_blob_bytes.unwrap_or(u64::MAX);
    check_declared_length(headers, limit)?;
    // The handler keeps the body (to drain it if the store gives up early) and
    // pumps it to the store through a short channel.
    let (chunks_tx, chunks_rx) = mpsc::channel::<Result<Bytes, CanError>>(4);
    let pump = async move {
        let mut received = 0u64;
        while let Some(chunk) = body.next().await {
            let item = match chunk {
                Ok(chunk) => {
                    received += chunk.len() as u64;
                    if received > limit {
                        Err(CanError::TooLarge {
                            size: received,
                            limit,
                        })
                    } else {
                        Ok(chunk)
                    }
                }
                Err(err) => Err(invalid(format!("reading body: {err}"))),
            };
            let last = item.is_err();
            if chunks_tx.send(item).await.is_err() || last {
                break;
            }
        }
    };
    let stream: ByteStream = ReceiverStream::new(chunks_rx).boxed();
    let write = state.can.write_blob(hash, meta, stream);
    tokio::pin!(write);
    tokio::select! {
        // The store finished (or gave up) first: stop pumping.
        stored = &mut write => stored,
        () = pump => write.await,
    }
}

// ---- fault injection ----

/// The fault middleware: latency first, then maybe an injected 500, then a
/// throttled response body.
async fn inject_faults(
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

/// `body`, sent no faster than `rate` bytes per second (in pieces of about
/// 50 ms worth, with at most one second of unused allowance carried over).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use ByteRange::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=90-", 100), Part { start: 90, end: 99 });
        assert_eq!(
            parse_range("bytes=90-500", 100),
            Part { start: 90, end: 99 }
        );
        assert_eq!(parse_range("bytes=-10", 100), Part { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-500", 100), Part { start: 0, end: 99 });
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 100), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=a-b", 100), Full);
        assert_eq!(parse_range("bytes=-", 100), Full);
        assert_eq!(parse_range("bytes=+1-2", 100), Full);
    }
}
