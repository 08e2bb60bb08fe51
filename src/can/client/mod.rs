//! [`HttpCan`]: a [`Can`] in another process, reached over the HTTP API of
//! `docs/openapi.json` (as served by [`super::server`], in the terms of
//! [`super::api`]).
//!
//! Each trait operation is one request of the sync API (protobuf bodies), apart
//! from `meta` and `stats`, which use the JSON routes. Blobs stream both ways
//! without being held in memory. HTTP answers map back to [`CanError`]: 422 →
//! [`CanError::HashMismatch`], 404 → [`CanError::NotFound`], 413 →
//! [`CanError::TooLarge`], other 4xx → [`CanError::Invalid`], 5xx and transport
//! failures → [`CanError::Unavailable`] (the transient kind, worth a retry).
//!
//! [`Can::subscribe`] follows `GET /sync/events` and resumes by itself when the
//! connection drops (see `subscription.rs`); the stream ends only when every
//! clone of the client is dropped.
//!
//! # Layout
//!
//! - `mod.rs`: [`HttpCan`], its options, and its [`Can`] operations;
//! - `answers.rs`: HTTP answers back to [`CanError`]s and store types;
//! - `blobs.rs`: one asset's bytes streamed down (resuming by Range) and up;
//! - `subscription.rs`: the resumable event subscription.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;
use reqwest::header;
use reqwest::RequestBuilder;
use tokio::sync::watch;

use super::api::{self, Applied, AssetInfo, Health, PROTOBUF};
use super::{
    store, ByteStream, Can, CanError, Change, ChangeKind, ChangePage, EventStream, Page, Pulled,
    Pushed, PushedBatch, SinceCursor, StoreStats,
};
use crate::asset::{AssetHash, Bundle, MetaUpdate, Summary, VerifiedBundle};
use crate::pb;
pub(crate) use answers::describe;
use answers::{bad_answer, pushed_of, send, slot_of, transport};

mod answers;
mod blobs;
mod subscription;

/// Timeouts of an [`HttpCan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpCanOptions {
    /// Bound on establishing a TCP connection.
    pub connect_timeout: Duration,
    /// Bound on a whole request/answer of the non-streaming calls (list, pull,
    /// push, apply_meta, meta, stats). Streaming calls have no total bound.
    pub request_timeout: Duration,
    /// Longest silence tolerated from a blob download or an event stream,
    /// while waiting for its answer and while reading it (the server sends a
    /// keep-alive comment every 15 s): a read blob fails, an event stream
    /// reconnects.
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
    /// The connection pool every request and subscription of every clone uses.
    http: reqwest::Client,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8080`.
    base: String,
    /// The timeouts requests are bounded by.
    options: HttpCanOptions,
    /// Dropped with the last clone; event subscriptions end when it is gone.
    alive: Arc<watch::Sender<()>>,
    /// False once the server answered that it has no `POST /sync/push-batch`
    /// (it predates the route): batches are then pushed one by one.
    batches: Arc<AtomicBool>,
    /// Whether the server serves outboards (`GET /sync/outboard/{hash}`),
    /// as its `GET /health` last said: one of the `OUTBOARDS_*` values.
    outboards: Arc<AtomicU8>,
}

/// [`HttpCan::outboards`]: not asked yet.
const OUTBOARDS_UNKNOWN: u8 = 0;
/// [`HttpCan::outboards`]: the server listed [`api::FEATURE_OUTBOARDS`].
const OUTBOARDS_SERVED: u8 = 1;
/// [`HttpCan::outboards`]: the server did not list it (it predates the route).
const OUTBOARDS_ABSENT: u8 = 2;

impl HttpCan {
    /// A client of the CAN service at `base_url` (`http://host:port`, an
    /// optional path prefix allowed), with default timeouts.
    pub fn new(base_url: &str) -> Result<Self, CanError> {
        Self::with_options(base_url, HttpCanOptions::default())
    }

    /// A client with the given timeouts.
    pub fn with_options(base_url: &str, options: HttpCanOptions) -> Result<Self, CanError> {
        Self::build(base_url, options, None)
    }

    /// A client that sends `token` as `Authorization: Bearer` with every
    /// request: what a server guarding its writes with a token (the daemon's
    /// `--http-token`, `serve-can --token`) asks of a writer.
    pub fn with_token(
        base_url: &str,
        options: HttpCanOptions,
        token: &str,
    ) -> Result<Self, CanError> {
        Self::build(base_url, options, Some(token))
    }

    fn build(
        base_url: &str,
        options: HttpCanOptions,
        token: Option<&str>,
    ) -> Result<Self, CanError> {
        let url = reqwest::Url::parse(base_url)
            .map_err(|err| CanError::Invalid(format!("CAN URL {base_url:?}: {err}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(CanError::Invalid(format!(
                "CAN URL {base_url:?}: expected http://host:port"
            )));
        }
        let mut headers = header::HeaderMap::new();
        if let Some(token) = token {
            let mut value =
                header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    CanError::Invalid("the CAN token is not a valid header value".into())
                })?;
            // Kept out of debug output and logs.
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let http = http_client_builder()?
            .connect_timeout(options.connect_timeout)
            .default_headers(headers)
            .build()
            .map_err(|err| CanError::Invalid(format!("HTTP client: {}", describe(&err))))?;
        let (alive, _) = watch::channel(());
        Ok(Self {
            http,
            base: url.as_str().trim_end_matches('/').to_owned(),
            options,
            alive: Arc::new(alive),
            batches: Arc::new(AtomicBool::new(true)),
            outboards: Arc::new(AtomicU8::new(OUTBOARDS_UNKNOWN)),
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

    /// A request whose 404 (or 405) means "this store has no such thing" (a
    /// server that predates the route, or a store that keeps none), not an
    /// error.
    async fn unary_unless_absent(
        &self,
        request: RequestBuilder,
    ) -> Result<Option<Bytes>, CanError> {
        let request = request.timeout(self.options.request_timeout);
        let response = request.send().await.map_err(transport)?;
        if matches!(
            response.status(),
            reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::METHOD_NOT_ALLOWED
        ) {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(answers::error_of(response, None).await);
        }
        Ok(Some(response.bytes().await.map_err(transport)?))
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

/// A batch pushed one `POST /sync/push` at a time (a server that predates the
/// batch route).
async fn push_each(can: &HttpCan, bundles: Vec<VerifiedBundle>) -> Result<PushedBatch, CanError> {
    let mut answers = Vec::with_capacity(bundles.len());
    for bundle in bundles {
        answers.push(can.push(bundle.into_bundle()).await);
    }
    Ok(answers)
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

impl HttpCan {
    /// One page of `GET /sync/hashes` at `path`: its summaries and the
    /// cursor of the next page, if any.
    async fn hash_page(&self, path: &str) -> Result<(Vec<Summary>, Option<String>), CanError> {
        let list: pb::HashList = self
            .unary_protobuf(self.http.get(self.url(path)), None)
            .await?;
        let items = list
            .assets
            .iter()
            .map(Summary::from_pb)
            .collect::<Result<_, _>>()
            .map_err(|err| bad_answer(err.to_string()))?;
        Ok((items, Some(list.next).filter(|next| !next.is_empty())))
    }
}

#[async_trait]
impl Can for HttpCan {
    async fn list_page(
        &self,
        after: Option<AssetHash>,
        limit: usize,
    ) -> Result<Page<Summary, AssetHash>, CanError> {
        let mut path = format!("/sync/hashes?limit={limit}");
        if let Some(after) = after {
            path.push_str(&format!("&after={}", api::hash_cursor(&after)));
        }
        let (items, next) = self.hash_page(&path).await.map_err(|err| match err {
            CanError::DamagedIndex { why, .. } => CanError::DamagedIndex { after, why },
            err => err,
        })?;
        let next = next
            .map(|text| text.parse::<AssetHash>())
            .transpose()
            .map_err(|err| bad_answer(format!("page cursor: {err}")))?;
        Ok(Page { items, next })
    }

    async fn list_since(
        &self,
        since: i64,
        after: Option<SinceCursor>,
        limit: usize,
    ) -> Result<Page<Summary, SinceCursor>, CanError> {
        let mut path = format!("/sync/hashes?since={since}&limit={limit}");
        if let Some(after) = after {
            path.push_str(&format!("&after={}", api::since_cursor(&after)));
        }
        let (items, next) = self.hash_page(&path).await?;
        let next = next
            .map(|text| {
                api::parse_since_cursor(&text)
                    .ok_or_else(|| bad_answer(format!("page cursor {text:?}")))
            })
            .transpose()?;
        Ok(Page { items, next })
    }

    async fn coded_cells(
        &self,
        start: usize,
        count: usize,
    ) -> Result<Option<Vec<crate::recon::riblt::Cell>>, CanError> {
        let path = format!("/sync/coded/cells?start={start}&count={count}");
        let Some(body) = self
            .unary_unless_absent(self.http.get(self.url(&path)))
            .await?
        else {
            return Ok(None);
        };
        let cells = crate::recon::riblt::decode_cells(&body, count)
            .map_err(|err| bad_answer(format!("coded cells: {err}")))?;
        Ok(Some(cells))
    }

    async fn coded_probe(&self) -> Result<Option<crate::recon::riblt::estimate::Probe>, CanError> {
        let Some(body) = self
            .unary_unless_absent(self.http.get(self.url("/sync/coded/probe")))
            .await?
        else {
            return Ok(None);
        };
        let probe = crate::recon::riblt::estimate::Probe::decode(&body)
            .map_err(|err| bad_answer(format!("coded probe: {err}")))?;
        Ok(Some(probe))
    }

    async fn changes(&self, after: u64, limit: usize) -> Result<ChangePage, CanError> {
        let path = format!("/sync/changes?after={after}&limit={limit}");
        let page: pb::ChangePage = self
            .unary_protobuf(self.http.get(self.url(&path)), None)
            .await?;
        let changes = page
            .changes
            .into_iter()
            .map(|change| {
                let kind = match change.kind {
                    1 => ChangeKind::Asset,
                    2 => ChangeKind::Meta,
                    other => return Err(bad_answer(format!("change kind {other}"))),
                };
                let summary = change
                    .summary
                    .as_ref()
                    .ok_or_else(|| bad_answer("change without a summary".into()))
                    .and_then(|s| Summary::from_pb(s).map_err(|err| bad_answer(err.to_string())))?;
                Ok(Change {
                    seq: change.seq,
                    kind,
                    summary,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ChangePage {
            changes,
            next_after: page.next_after,
            store_id: page.store_id,
        })
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

    /// One `POST /sync/push-batch`; the server verifies every bundle again
    /// (the bytes crossed the network). A server without the route gets the
    /// bundles one `POST /sync/push` at a time, from then on.
    async fn push_batch(&self, bundles: Vec<VerifiedBundle>) -> Result<PushedBatch, CanError> {
        if !self.batches.load(Ordering::Relaxed) {
            return push_each(self, bundles).await;
        }
        let asked: Vec<(AssetHash, u64)> = bundles
            .iter()
            .map(|bundle| (bundle.hash(), bundle.data().len() as u64))
            .collect();
        let batch = pb::PushBatch {
            bundles: bundles
                .iter()
                .map(|bundle| bundle.clone().into_bundle().into_pb())
                .collect(),
        };
        let request = self.post_protobuf("/sync/push-batch", &batch);
        drop(batch);
        let Some(body) = self.unary_unless_absent(request).await? else {
            tracing::debug!("the CAN has no batch push; pushing one by one");
            self.batches.store(false, Ordering::Relaxed);
            return push_each(self, bundles).await;
        };
        let answer = pb::PushBatchResponse::decode(body)
            .map_err(|err| bad_answer(format!("protobuf: {err}")))?;
        if answer.results.len() != asked.len() {
            return Err(bad_answer(format!(
                "{} results for a batch of {}",
                answer.results.len(),
                asked.len()
            )));
        }
        Ok(answer
            .results
            .into_iter()
            .zip(asked)
            .map(|(result, (hash, size))| slot_of(result, hash, size))
            .collect())
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
        let outboards = if health
            .features
            .iter()
            .any(|feature| feature == api::FEATURE_OUTBOARDS)
        {
            OUTBOARDS_SERVED
        } else {
            OUTBOARDS_ABSENT
        };
        self.outboards.store(outboards, Ordering::Relaxed);
        Ok(StoreStats {
            assets: health.assets,
            bytes: health.bytes,
        })
    }

    async fn subscribe(&self, after_seq: Option<u64>) -> Result<EventStream, CanError> {
        subscription::subscribe(self, after_seq).await
    }

    async fn read_blob(&self, hash: AssetHash, offset: u64) -> Result<(u64, ByteStream), CanError> {
        self.download(hash, offset).await
    }

    async fn write_blob(
        &self,
        hash: AssetHash,
        meta: pb::AssetMeta,
        body: ByteStream,
    ) -> Result<Pushed, CanError> {
        self.upload(hash, meta, body).await
    }

    async fn outboard(&self, hash: AssetHash) -> Result<Option<store::ranges::Outboard>, CanError> {
        if self.outboards.load(Ordering::Relaxed) == OUTBOARDS_ABSENT {
            return Ok(None);
        }
        self.fetch_outboard(hash).await
    }

    fn outboards_cost_a_request(&self) -> bool {
        true
    }

    /// Asks the server's `GET /health` once whether it serves outboards;
    /// a server that could not be asked is taken as one that does not,
    /// until it is asked again.
    async fn keeps_outboards(&self) -> bool {
        if self.outboards.load(Ordering::Relaxed) == OUTBOARDS_UNKNOWN {
            if let Err(err) = self.stats().await {
                tracing::debug!("asking the CAN whether it serves outboards: {err}");
                return false;
            }
        }
        self.outboards.load(Ordering::Relaxed) == OUTBOARDS_SERVED
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
}
