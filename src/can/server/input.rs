//! Reading requests: the hash in a path, UTF-8 headers, the list query, and
//! buffered bodies (protobuf or JSON) within the configured limit. A refused
//! body is drained so that the client gets to read the answer.

use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap};
use bytes::BytesMut;
use futures::StreamExt;
use prost::Message;
use serde::Deserialize;

use super::AppState;
use crate::asset::AssetHash;
use crate::can::CanError;

/// How much of a refused body is read and dropped so the client sees the answer.
const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// How long a refused body is drained at most.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// A request the server cannot make sense of (400).
pub(super) fn invalid(message: impl std::fmt::Display) -> CanError {
    CanError::Invalid(message.to_string())
}

/// The asset hash of a `{hash}` path.
pub(super) fn parse_hash(path: Result<Path<String>, PathRejection>) -> Result<AssetHash, CanError> {
    let Path(text) = path.map_err(|rejection| invalid(rejection.body_text()))?;
    text.parse().map_err(invalid)
}

/// The declared `Content-Length`, if any.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Refuses a body whose declared length is above `limit`, before reading it.
pub(super) fn check_declared_length(headers: &HeaderMap, limit: u64) -> Result<(), CanError> {
    match content_length(headers) {
        Some(size) if size > limit => Err(CanError::TooLarge { size, limit }),
        _ => Ok(()),
    }
}

/// Reads a whole request body, refusing more than `limit` bytes.
pub(super) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<Bytes, CanError> {
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
pub(super) async fn drain(body: &mut BodyDataStream) {
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

/// A whole protobuf body, within the buffered body limit.
pub(super) async fn read_protobuf<M: Message + Default>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<M, CanError> {
    let bytes = read_body(headers, body, state.config.max_body_bytes).await?;
    M::decode(bytes).map_err(|err| invalid(format!("bad protobuf: {err}")))
}

/// A whole JSON body, within the buffered body limit.
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, CanError> {
    let bytes = read_body(headers, body, state.config.max_body_bytes).await?;
    serde_json::from_slice(&bytes).map_err(|err| invalid(format!("bad JSON: {err}")))
}

/// A UTF-8 header value, if present.
pub(super) fn text_header(headers: &HeaderMap, name: &str) -> Result<Option<String>, CanError> {
    headers
        .get(name)
        .map(|value| {
            std::str::from_utf8(value.as_bytes())
                .map(str::to_owned)
                .map_err(|_| invalid(format!("header {name} is not UTF-8")))
        })
        .transpose()
}

/// Query of `GET /assets` and `GET /sync/hashes`.
#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    /// Only what changed at or after this time (Unix ms).
    pub(super) since: Option<i64>,
    /// At most this many entries (bounded by `api::MAX_PAGE`).
    pub(super) limit: Option<usize>,
    /// Continue after this cursor (the previous page's `next`).
    pub(super) after: Option<String>,
}

/// Query of `GET /sync/changes`.
#[derive(Debug, Deserialize)]
pub(super) struct ChangesQuery {
    /// Continue after this sequence number (0: from the start).
    #[serde(default)]
    pub(super) after: u64,
    /// At most this many entries (bounded by `api::MAX_PAGE`).
    pub(super) limit: Option<usize>,
}

/// The query of `GET /sync/coded/cells`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct CellsQuery {
    /// The first cell's index.
    #[serde(default)]
    pub(super) start: usize,
    /// How many cells (cut to the cells the store keeps).
    pub(super) count: usize,
}

/// The list query, or why it is malformed.
pub(super) fn list_query(
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<ListQuery, CanError> {
    query
        .map(|Query(query)| query)
        .map_err(|rejection| invalid(format!("bad query: {}", rejection.body_text())))
}
