//! One asset's bytes, streamed both ways and never held whole in memory:
//! `GET /assets/{hash}` and `GET /sync/blob/{hash}` (with Range), and
//! `PUT /sync/blob/{hash}`, verified by the store while it streams in; and
//! `GET /sync/outboard/{hash}`, the proof that lets a sync agent send any
//! run of an asset's groups after reading only that run.
//! Served bytes carry `X-Content-Type-Options: nosniff` and
//! `Content-Security-Policy: sandbox`: their type came from whoever uploaded
//! them.

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use futures::StreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::input::{check_declared_length, drain, invalid, parse_hash};
use super::range::{parse_range, take_bytes, ByteRange};
use super::{error_response, protobuf, AppState};
use crate::can::api::{ASSET_META_HEADER, ASSET_SIZE_HEADER};
use crate::can::{ByteStream, CanError, Pushed};
use crate::pb;

/// `GET /assets/{hash}` and `GET /sync/blob/{hash}`: streamed bytes, with Range.
pub(super) async fn get_blob(
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
    // The type is whatever the asset's uploader (maybe a peer) chose: the
    // browser must not guess another, and HTML must never run with the
    // API's origin (a sandboxed page has an opaque one; see `browser.rs`).
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    Ok(response)
}

/// `GET /sync/outboard/{hash}`: the asset's outboard
/// ([`crate::can::store::ranges::Outboard`]: the BLAKE3 chaining value of
/// each 1 MiB group, 32 bytes each, in order; none for an asset of one
/// group), with its size in [`ASSET_SIZE_HEADER`].
///
/// A sync agent over this server needs it to serve the runs of groups a
/// peer pulling one large asset from several sources asks of it: each run
/// goes with the proof its receiver checks. Without this route the agent
/// would read the whole asset through (at the speed it is served) before
/// sending the first run. An outboard the store has not kept (a blob stored
/// before outboards were kept, a store in memory) is computed here, from
/// the store's own copy: no cheaper place to read it exists.
pub(super) async fn get_outboard(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, CanError> {
    let hash = parse_hash(path)?;
    let outboard = match state.can.outboard(hash).await? {
        Some(outboard) => outboard,
        None => crate::can::outboard_by_reading(state.can.as_ref(), hash)
            .await?
            .ok_or(CanError::NotFound(hash))?,
    };
    let mut response = Response::new(Body::from(outboard.encoded_cvs()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(ASSET_SIZE_HEADER, HeaderValue::from(outboard.size()));
    Ok(response)
}

/// `PUT /sync/blob/{hash}`: the body streams into the store, verified on the way.
pub(super) async fn put_blob(
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
        seq: pushed.seq.unwrap_or(0),
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
