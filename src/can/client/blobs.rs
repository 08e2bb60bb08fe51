//! One asset's bytes through [`HttpCan`], never held whole in memory:
//! downloads from `GET /sync/blob/{hash}` (from an offset by Range, failing
//! when the server goes quiet for the idle timeout) and uploads to
//! `PUT /sync/blob/{hash}` with the metadata in a header; and an asset's
//! outboard from `GET /sync/outboard/{hash}`, checked against its hash.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::{stream, StreamExt};
use prost::Message;
use reqwest::header::{self, HeaderMap};
use reqwest::{Response, StatusCode};

use super::answers::{bad_answer, error_of, pushed_of, send, transport};
use super::HttpCan;
use crate::asset::AssetHash;
use crate::can::api::{ASSET_META_HEADER, ASSET_SIZE_HEADER};
use crate::can::store::ranges::{self, Outboard};
use crate::can::{ByteStream, CanError, Pushed};
use crate::pb;

impl HttpCan {
    /// [`Can::outboard`](crate::can::Can::outboard): the outboard of `hash`
    /// as the server keeps or computes it, `None` when the asset is unknown.
    /// An outboard that does not merge to `hash` is a bad answer, never
    /// passed on: a peer would refuse every group sent with it.
    pub(super) async fn fetch_outboard(
        &self,
        hash: AssetHash,
    ) -> Result<Option<Outboard>, CanError> {
        let request = self
            .http
            .get(self.url(&format!("/sync/outboard/{hash}")))
            .timeout(self.options.request_timeout);
        let mut response = request.send().await.map_err(transport)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(error_of(response, Some(hash)).await);
        }
        let size = response
            .headers()
            .get(ASSET_SIZE_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok())
            .ok_or_else(|| bad_answer(format!("outboard of {hash} without {ASSET_SIZE_HEADER}")))?;
        let expected = ranges::outboard_len(size).saturating_mul(ranges::CV_BYTES as u64);
        if response.content_length().is_some_and(|len| len != expected) {
            return Err(bad_answer(format!(
                "outboard of {hash}: {} bytes for an asset of {size}",
                response.content_length().unwrap_or_default()
            )));
        }
        if ranges::group_count(size) > ranges::MAX_RANGED_GROUPS {
            // Larger assets go whole: their outboard is of no use.
            return Ok(None);
        }
        // Read within the length the size implies, whatever the server
        // declared (or did not).
        let mut raw = Vec::with_capacity(expected as usize);
        while let Some(piece) = response.chunk().await.map_err(transport)? {
            if (raw.len() + piece.len()) as u64 > expected {
                return Err(bad_answer(format!(
                    "outboard of {hash}: more than {expected} bytes for an asset of {size}"
                )));
            }
            raw.extend_from_slice(&piece);
        }
        let outboard = crate::cpu::run(raw.len(), move || Outboard::decode(hash, size, &raw))
            .await
            .map_err(|err| CanError::Storage(format!("outboard task failed: {err}")))?
            .map_err(|err| bad_answer(format!("outboard of {hash}: {err}")))?;
        Ok(Some(outboard))
    }

    /// [`Can::read_blob`](crate::can::Can::read_blob): the bytes of `hash` from
    /// byte `offset`, with the asset's total size.
    pub(super) async fn download(
        &self,
        hash: AssetHash,
        offset: u64,
    ) -> Result<(u64, ByteStream), CanError> {
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

    /// [`Can::write_blob`](crate::can::Can::write_blob): streams `body` up as
    /// the bytes of `hash`; the server verifies them.
    pub(super) async fn upload(
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

#[cfg(test)]
mod tests {
    use super::*;

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
