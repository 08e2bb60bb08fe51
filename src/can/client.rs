//! [`HttpCan`]: a [`Can`] in another process, reached over the HTTP API of
//! DESIGN §3 (as served by [`super::server`], in the terms of
//! [`super::api`]).
//!
//! Each trait operation is one request of the sync API (protobuf bodies), apart
//! from `meta` and `stats`, which use the JSON routes. Blobs stream both ways
//! without being held in memory. HTTP answers map back to [`CanError`]: 422 →
//! [`CanError::HashMismatch`], 404 → [`CanError::NotFound`], 413 →
//! [`CanError::TooLarge`], other 4xx → [`CanError::Invalid`], 5xx and transport
//! failures → [`CanError::Unavailable`] (the transient kind, worth a retry).
//!
//! [`Can::subscribe`] follows `GET /sync/events`. When the connection drops,
//! errs or goes quiet for longer than the idle timeout, the subscription
//! reconnects by itself (backoff from 100 ms doubling to 5 s) with
//! `Last-Event-ID` set to the last sequence number it delivered, so the server
//! replays what was missed; duplicates are dropped. The stream ends only when
//! every clone of the client is dropped. One gap remains: a subscription
//! started live-only (`after_seq = None`) that drops before it saw any event
//! (or a bare `id:` line) has no position to resume from and starts live again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{stream, StreamExt};
use prost::Message;
use reqwest::header::{self, HeaderMap};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::sync::watch;

use super::api::{
    Applied, AssetInfo, ErrorBody, Health, ASSET_META_HEADER, LAST_EVENT_ID_HEADER, PROTOBUF,
};
use super::sse::{self, SseParser};
use super::{ByteStream, Can, CanError, ChangeEvent, EventStream, Pulled, Pushed, StoreStats};
use crate::asset::{AssetHash, Bundle, MetaUpdate, Summary};
use crate::pb;

/// First delay before reconnecting an event stream.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// At most this much of an error answer is read.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Timeouts of an [`HttpCan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpCanOptions {
    /// Bound on establishing a TCP connection.
    pub connect_timeout: Duration,
    /// Bound on a whole request/answer of the non-streaming calls (list, pull,
    /// push, meta, stats). Streaming calls have no total bound.
    pub request_timeout: Duration,
    /// Longest silence tolerated while reading a blob or an event stream (the
    /// server sends a keep-alive comment every 15 s): a read blob fails, an
    /// event stream reconnects.
    pub idle_timeout: Duration,
}

impl Default for HttpCanOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The HTTP client of a CAN service; itself a [`Can`]. Clones share one
/// connection pool.
#[derive(Debug, Clone)]
pub struct HttpCan {
    http: reqwest::Client,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8080`.
    base: String,
    options: HttpCanOptions,
    /// Dropped with the last clone; event subscriptions end when it is gone.
    alive: Arc<watch::Sender<()>>,
}

impl HttpCan {
    /// A client of the CAN service at `base_url` (`http://host:port`, an
    /// optional path prefix allowed), with default timeouts.
    pub fn new(base_url: &str) -> Result<Self, CanError> {
        Self::with_options(base_url, HttpCanOptions::default())
    }

    /// A client with the given timeouts.
    pub fn with_options(base_url: &str, options: HttpCanOptions) -> Result<Self, CanError> {
        let url = reqwest::Url::parse(base_url)
            .map_err(|err| CanError::Invalid(format!("CAN URL {base_url:?}: {err}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(CanError::Invalid(format!(
                "CAN URL {base_url:?}: expected http://host:port"
            )));
        }
        let http = http_client_builder()?
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(|err| CanError::Invalid(format!("HTTP client: {}", describe(&err))))?;
        let (alive, _) = watch::channel(());
        Ok(Self {
            http,
            base: url.as_str().trim_end_matches('/').to_owned(),
            options,
            alive: Arc::new(alive),
        })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a non-streaming request: bounded by the request timeout, and any
    /// non-2xx answer turned into its error.
    async fn unary(
        &self,
        request: RequestBuilder,
        context: Option<AssetHash>,
    ) -> Result<Bytes, CanError> {
        let response = send(request.timeout(self.options.request_timeout), context).await?;
        response.bytes().await.map_err(transport)
    }

    async fn unary_protobuf<M: Message + Default>(
        &self,
        request: RequestBuilder,
        context: Option<AssetHash>,
    ) -> Result<M, CanError> {
        let body = self.unary(request, context).await?;
        M::decode(body).map_err(|err| bad_answer(format!("protobuf: {err}")))
    }

    async fn unary_json<T: serde::de::DeserializeOwned>(
        &self,
        request: RequestBuilder,
        context: Option<AssetHash>,
    ) -> Result<T, CanError> {
        let body = self.unary(request, context).await?;
        serde_json::from_slice(&body).map_err(|err| bad_answer(format!("JSON: {err}")))
    }

    fn post_protobuf(&self, path: &str, message: &impl Message) -> RequestBuilder {
        self.http
            .post(self.url(path))
            .header(header::CONTENT_TYPE, PROTOBUF)
            .body(message.encode_to_vec())
    }
}

/// A reqwest client builder fit for talking to a CAN service: no proxies, no
/// Nagle delay, and TLS set up explicitly.
///
/// iroh builds reqwest with rustls but without a default crypto provider, so a
/// plain `reqwest::Client::builder().build()` panics in this crate's build;
/// this builder hands reqwest a rustls configuration (iroh's crypto provider,
/// Mozilla's roots) instead of installing a process-wide provider. Anything
/// else in the crate or its tests that speaks HTTP should start from here.
pub fn http_client_builder() -> Result<reqwest::ClientBuilder, CanError> {
    let tls = iroh::tls::CaTlsConfig::embedded()
        .client_config(iroh::tls::default_provider())
        .map_err(|err| CanError::Invalid(format!("TLS configuration: {err}")))?;
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .tcp_nodelay(true)
        .no_proxy())
}

// ---- answers and errors ----

/// Sends `request` and keeps only 2xx answers; others become errors.
async fn send(request: RequestBuilder, context: Option<AssetHash>) -> Result<Response, CanError> {
    let response = request.send().await.map_err(transport)?;
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(error_of(response, context).await)
    }
}

/// A reqwest error with its causes, which its own message leaves out.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn transport(err: reqwest::Error) -> CanError {
    CanError::Unavailable(describe(&err))
}

fn bad_answer(what: String) -> CanError {
    CanError::Unavailable(format!("undecodable answer from the CAN: {what}"))
}

/// The error an unsuccessful answer stands for. `context` is the asset the
/// request was about, used when the answer does not name one.
async fn error_of(mut response: Response, context: Option<AssetHash>) -> CanError {
    let status = response.status();
    let mut raw = Vec::new();
    while raw.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => raw.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let body: ErrorBody = serde_json::from_slice(&raw).unwrap_or_else(|_| {
        ErrorBody::new(String::from_utf8_lossy(&raw[..raw.len().min(512)]).into_owned())
    });
    error_of_answer(status, body, context)
}

/// Maps a status and its JSON error body back to a [`CanError`].
fn error_of_answer(status: StatusCode, body: ErrorBody, context: Option<AssetHash>) -> CanError {
    let parse = |hex: &Option<String>| hex.as_deref().and_then(|h| h.parse::<AssetHash>().ok());
    let unknown = AssetHash::from_bytes([0; 32]);
    match status {
        StatusCode::UNPROCESSABLE_ENTITY => {
            let expected = parse(&body.expected).or(context).unwrap_or(unknown);
            let actual = parse(&body.actual).unwrap_or(expected);
            CanError::HashMismatch { expected, actual }
        }
        StatusCode::NOT_FOUND => match context {
            Some(hash) => CanError::NotFound(hash),
            None => CanError::Invalid(format!("HTTP 404: {}", body.error)),
        },
        StatusCode::PAYLOAD_TOO_LARGE => CanError::TooLarge {
            size: body.size.unwrap_or(0),
            limit: body.limit.unwrap_or(0),
        },
        StatusCode::BAD_REQUEST => CanError::Invalid(body.error),
        status if status.is_server_error() => {
            CanError::Unavailable(format!("HTTP {}: {}", status.as_u16(), body.error))
        }
        status => CanError::Invalid(format!("HTTP {}: {}", status.as_u16(), body.error)),
    }
}

/// The total size in a `Content-Range` header (`bytes a-b/size` or `bytes */size`).
fn range_total(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    value.rsplit_once('/')?.1.trim().parse().ok()
}

/// The first byte of a `Content-Range: bytes a-b/size` header.
fn range_start(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let spec = value.trim().strip_prefix("bytes ")?;
    spec.split_once('-')?.0.trim().parse().ok()
}

/// The body of `response` as a [`ByteStream`], failing when it stalls for
/// `idle`, after skipping its first `skip` bytes.
fn body_stream(response: Response, idle: Duration, skip: u64) -> ByteStream {
    let chunks = response.bytes_stream().boxed();
    stream::unfold((chunks, skip), move |(mut chunks, mut skip)| async move {
        loop {
            let chunk = match tokio::time::timeout(idle, chunks.next()).await {
                Err(_) => Err(CanError::Unavailable(format!(
                    "blob download stalled for {idle:?}"
                ))),
                Ok(None) => return None,
                Ok(Some(chunk)) => chunk.map_err(transport),
            };
            match chunk {
                Ok(mut chunk) if skip > 0 => {
                    let n = skip.min(chunk.len() as u64);
                    skip -= n;
                    let rest = chunk.split_off(n as usize);
                    if !rest.is_empty() {
                        return Some((Ok(rest), (chunks, skip)));
                    }
                }
                Ok(chunk) => return Some((Ok(chunk), (chunks, skip))),
                // One error ends the stream: `skip` no longer matters.
                Err(err) => return Some((Err(err), (stream::empty().boxed(), 0))),
            }
        }
    })
    .boxed()
}

// ---- the trait ----

#[async_trait]
impl Can for HttpCan {
    async fn list(&self, since: Option<i64>) -> Result<Vec<Summary>, CanError> {
        let path = match since {
            Some(since) => format!("/sync/hashes?since={since}"),
            None => "/sync/hashes".to_owned(),
        };
        let list: pb::HashList = self
            .unary_protobuf(self.http.get(self.url(&path)), None)
            .await?;
        list.assets
            .iter()
            .map(Summary::from_pb)
            .collect::<Result<_, _>>()
            .map_err(|err| bad_answer(err.to_string()))
    }

    async fn pull(&self, hashes: &[AssetHash]) -> Result<Pulled, CanError> {
        if hashes.is_empty() {
            return Ok(Pulled::default());
        }
        let request = pb::PullRequest {
            hashes: hashes.iter().map(AssetHash::to_hex).collect(),
        };
        let answer: pb::PullResponse = self
            .unary_protobuf(self.post_protobuf("/sync/pull", &request), None)
            .await?;
        let missing = answer
            .missing
            .iter()
            .map(|hash| hash.parse())
            .collect::<Result<Vec<AssetHash>, _>>()
            .map_err(|err| bad_answer(err.to_string()))?;
        let bundles = answer
            .bundles
            .into_iter()
            .map(Bundle::from_pb)
            .collect::<Result<_, _>>()
            .map_err(|err| bad_answer(err.to_string()))?;
        Ok(Pulled { bundles, missing })
    }

    async fn push(&self, bundle: Bundle) -> Result<Pushed, CanError> {
        let context = Some(bundle.hash);
        let answer: pb::PushResponse = self
            .unary_protobuf(self.post_protobuf("/sync/push", &bundle.into_pb()), context)
            .await?;
        pushed_of(answer)
    }

    async fn apply_meta(&self, update: MetaUpdate) -> Result<bool, CanError> {
        let context = Some(update.hash);
        let answer: Applied = self
            .unary_json(self.post_protobuf("/sync/meta", &update.to_pb()), context)
            .await?;
        Ok(answer.applied)
    }

    async fn meta(&self, hash: AssetHash) -> Result<Option<(u64, pb::AssetMeta)>, CanError> {
        let request = self.http.get(self.url(&format!("/assets/{hash}/meta")));
        match self.unary_json::<AssetInfo>(request, Some(hash)).await {
            Ok(info) => Ok(Some((info.size, info.into_meta()))),
            Err(CanError::NotFound(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn stats(&self) -> Result<StoreStats, CanError> {
        let health: Health = self
            .unary_json(self.http.get(self.url("/health")), None)
            .await?;
        Ok(StoreStats {
            assets: health.assets,
            bytes: health.bytes,
        })
    }

    async fn subscribe(&self, after_seq: Option<u64>) -> Result<EventStream, CanError> {
        let mut subscription = Subscription {
            http: self.http.clone(),
            url: self.url("/sync/events"),
            idle_timeout: self.options.idle_timeout,
            alive: self.alive.subscribe(),
            last_seq: after_seq,
            connection: None,
            parser: SseParser::default(),
            pending: VecDeque::new(),
            backoff: INITIAL_BACKOFF,
        };
        // The first connection is made now, so a store that cannot be reached
        // is reported, and events from here on are not missed.
        subscription.connect().await?;
        Ok(subscription.into_stream())
    }

    async fn read_blob(&self, hash: AssetHash, offset: u64) -> Result<(u64, ByteStream), CanError> {
        let mut request = self.http.get(self.url(&format!("/sync/blob/{hash}")));
        if offset > 0 {
            request = request.header(header::RANGE, format!("bytes={offset}-"));
        }
        let idle = self.options.idle_timeout;
        let response = tokio::time::timeout(idle, request.send())
            .await
            .map_err(|_| CanError::Unavailable(format!("blob {hash} did not answer")))?
            .map_err(transport)?;
        match response.status() {
            StatusCode::OK => {
                let size = response
                    .content_length()
                    .ok_or_else(|| bad_answer("blob without a length".into()))?;
                // A server that ignores Range sends everything: skip the start.
                Ok((size, body_stream(response, idle, offset.min(size))))
            }
            StatusCode::PARTIAL_CONTENT => {
                let headers = response.headers();
                let size = range_total(headers)
                    .ok_or_else(|| bad_answer("206 without Content-Range".into()))?;
                if range_start(headers) != Some(offset) {
                    return Err(bad_answer(format!("206 does not start at byte {offset}")));
                }
                Ok((size, body_stream(response, idle, 0)))
            }
            StatusCode::RANGE_NOT_SATISFIABLE => match range_total(response.headers()) {
                // Reading from the end (or beyond) of an asset: nothing to read.
                Some(size) if offset >= size => Ok((size, stream::empty().boxed())),
                _ => Err(error_of(response, Some(hash)).await),
            },
            _ => Err(error_of(response, Some(hash)).await),
        }
    }

    async fn write_blob(
        &self,
        hash: AssetHash,
        meta: pb::AssetMeta,
        body: ByteStream,
    ) -> Result<Pushed, CanError> {
        // An error of the caller's stream aborts the upload; keep it to report
        // it instead of the transport error it causes.
        let failure: Arc<Mutex<Option<CanError>>> = Arc::default();
        let slot = failure.clone();
        let body = body.map(move |chunk| {
            chunk.map_err(|err| {
                let message = err.to_string();
                *slot.lock().expect("failure slot") = Some(err);
                std::io::Error::other(message)
            })
        });
        let encoded_meta = base64::engine::general_purpose::STANDARD.encode(meta.encode_to_vec());
        let request = self
            .http
            .put(self.url(&format!("/sync/blob/{hash}")))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(ASSET_META_HEADER, encoded_meta)
            .body(reqwest::Body::wrap_stream(body));
        let answer = match send(request, Some(hash)).await {
            Ok(response) => response.bytes().await.map_err(transport),
            Err(err) => Err(err),
        };
        if let Some(err) = failure.lock().expect("failure slot").take() {
            return Err(err);
        }
        let answer = pb::PushResponse::decode(answer?)
            .map_err(|err| bad_answer(format!("protobuf: {err}")))?;
        pushed_of(answer)
    }
}

fn pushed_of(answer: pb::PushResponse) -> Result<Pushed, CanError> {
    Ok(Pushed {
        hash: answer
            .hash
            .parse()
            .map_err(|err: crate::asset::MalformedHash| bad_answer(err.to_string()))?,
        already_existed: answer.already_existed,
    })
}

// ---- event subscription ----

/// The state of one resumable event subscription.
struct Subscription {
    http: reqwest::Client,
    url: String,
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
    /// Delay before the next reconnection attempt.
    backoff: Duration,
}

/// Resolves when every [`HttpCan`] clone is gone.
async fn client_dropped(alive: &mut watch::Receiver<()>) {
    while alive.changed().await.is_ok() {}
}

impl Subscription {
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
        self.backoff = INITIAL_BACKOFF;
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
                let delay = self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
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

    #[test]
    fn rejects_bad_base_urls() {
        assert!(matches!(
            HttpCan::new("not a url"),
            Err(CanError::Invalid(_))
        ));
        assert!(matches!(HttpCan::new("ftp://x"), Err(CanError::Invalid(_))));
        let can = HttpCan::new("http://127.0.0.1:9/prefix/").unwrap();
        assert_eq!(can.base_url(), "http://127.0.0.1:9/prefix");
    }

    #[test]
    fn maps_answers_to_errors() {
        let a = AssetHash::of(b"a");
        let b = AssetHash::of(b"b");
        let mismatch = ErrorBody {
            expected: Some(a.to_hex()),
            actual: Some(b.to_hex()),
            ..ErrorBody::new("mismatch")
        };
        assert!(matches!(
            error_of_answer(StatusCode::UNPROCESSABLE_ENTITY, mismatch, None),
            CanError::HashMismatch { expected, actual } if expected == a && actual == b
        ));
        assert!(matches!(
            error_of_answer(StatusCode::UNPROCESSABLE_ENTITY, ErrorBody::new("x"), Some(a)),
            CanError::HashMismatch { expected, actual } if expected == a && actual == a
        ));
        assert!(matches!(
            error_of_answer(StatusCode::NOT_FOUND, ErrorBody::new("x"), Some(a)),
            CanError::NotFound(h) if h == a
        ));
        let large = ErrorBody {
            size: Some(10),
            limit: Some(5),
            ..ErrorBody::new("big")
        };
        assert!(matches!(
            error_of_answer(StatusCode::PAYLOAD_TOO_LARGE, large, None),
            CanError::TooLarge { size: 10, limit: 5 }
        ));
        assert!(matches!(
            error_of_answer(StatusCode::BAD_REQUEST, ErrorBody::new("x"), None),
            CanError::Invalid(_)
        ));
        for status in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert!(error_of_answer(status, ErrorBody::new("x"), None).is_transient());
        }
    }

    #[test]
    fn subscription_keeps_order_drops_duplicates_and_follows_bare_ids() {
        let can = HttpCan::new("http://127.0.0.1:9").unwrap();
        let mut subscription = Subscription {
            http: can.http.clone(),
            url: can.url("/sync/events"),
            idle_timeout: Duration::from_secs(1),
            alive: can.alive.subscribe(),
            last_seq: Some(4),
            connection: None,
            parser: SseParser::default(),
            pending: VecDeque::new(),
            backoff: INITIAL_BACKOFF,
        };
        let event = |seq: u64| {
            sse::encode_event(&ChangeEvent {
                seq,
                kind: super::super::ChangeKind::Asset,
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
    fn content_range_parsing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_RANGE, "bytes 5-9/10".parse().unwrap());
        assert_eq!(range_total(&headers), Some(10));
        assert_eq!(range_start(&headers), Some(5));
        headers.insert(header::CONTENT_RANGE, "bytes */7".parse().unwrap());
        assert_eq!(range_total(&headers), Some(7));
        assert_eq!(range_start(&headers), None);
    }
}
