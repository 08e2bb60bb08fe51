//! One object of known size uploaded as one streamed `PUT` ([`Streamed`]),
//! its body fed as the bytes arrive.
//!
//! A multipart upload costs the server a second pass at its completion: it
//! joins the parts into the object (s3s-fs copies them through 64 KiB
//! reads while it MD5s them, 3 to 5 s per GiB on the test machine, and no
//! client can shorten that). One `PUT` writes the object once, as it
//! streams: measured on s3s-fs, 1 GiB went up in 6.8–8.0 s this way
//! against 13.2–14.8 s as a multipart upload of 8 MiB parts, 4 in flight
//! (`S3_PUT_SINGLE=1 target/release/examples/s3_put`, PERFORMANCE.md).
//! S3 takes up to 5 GiB in one `PUT` ([`STREAMED_PUT_MAX`]).
//!
//! The request is presigned by `object_store` (SigV4 in the query, the
//! payload unsigned: a streamed body cannot be hashed before it is sent;
//! its bytes are verified by the node, against their hash, before the
//! object may become whole). It carries `If-None-Match: *`, bound to the
//! signature: an object already there answers 412, which counts as
//! success, as the same name is the same bytes.
//!
//! Rules it keeps, as a multipart upload does:
//! - **nothing is visible before the caller says the bytes are right**: the
//!   last chunk pushed is held back until [`Streamed::finish`], and a
//!   `Content-Length` fixed in advance means the server cannot take a
//!   shorter body for the object: an abandoned upload (dropped, aborted,
//!   the node killed) leaves nothing under the name;
//! - **a slow server slows the sender**: the body is fed through a channel
//!   of [`CHUNKS_IN_FLIGHT`] chunks.
//!
//! It is used when the size is known as the upload begins: an asset
//! arriving from a peer, whose header gives it, by verified ranges in order
//! or whole.
//!
//! What it does not do is retry: a body already sent cannot be sent again.
//! A failed streamed upload fails its [`push`](Streamed::push) or
//! [`finish`](Streamed::finish); the store then uploads the object again
//! from its local copy when it has one (a partial asset made whole), with
//! retries, or fails the transfer for its peer to send again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use object_store::path::Path as ObjectPath;
use object_store::signer::{SignedUrlOptions, Signer as _};
use object_store::ObjectStoreExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{ObjectError, Objects};

/// The largest object sent as one streamed `PUT`: S3's own limit for one
/// `PUT`. Larger objects go up as multipart uploads.
pub const STREAMED_PUT_MAX: u64 = 5 * 1024 * 1024 * 1024;

/// The largest object sent as one streamed `PUT` in force:
/// [`STREAMED_PUT_MAX`], or `CAN_SYNC_S3_STREAMED_PUT_MAX` (0 turns it
/// off), read once, for measuring it again against multipart uploads.
pub fn streamed_put_max() -> u64 {
    static MAX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("CAN_SYNC_S3_STREAMED_PUT_MAX")
            .ok()
            .and_then(|value| value.parse::<u64>().ok())
            .map_or(STREAMED_PUT_MAX, |max| max.min(STREAMED_PUT_MAX))
    })
}

/// Chunks queued for the request's body: a group of 1 MiB each, as the
/// store pushes them.
const CHUNKS_IN_FLIGHT: usize = 4;

/// How long a presigned request stays valid: it is made at once.
const PRESIGNED_FOR: Duration = Duration::from_secs(15 * 60);

/// Longest a chunk may wait for the server to take it: a server that
/// stops reading the body fails the upload instead of holding the
/// transfer that feeds it.
const STALL: Duration = Duration::from_secs(60);

/// Longest the server may take to answer once the whole body is sent.
const ANSWER_WAIT: Duration = Duration::from_secs(300);

/// A streamed `PUT` under way.
pub(super) struct Streamed {
    key: ObjectPath,
    /// Feeds the request's body; dropped to end it.
    body: Option<mpsc::Sender<Bytes>>,
    /// The request: it answers once the server took (or refused) the
    /// object. Aborted when this is dropped unfinished; never polled again
    /// once it answered (`answered`).
    request: JoinHandle<Result<(), ObjectError>>,
    answered: bool,
    /// The last chunk pushed, sent only by [`Streamed::finish`].
    held: Option<Bytes>,
    /// Bytes pushed so far, and the object's size.
    pushed: u64,
    size: u64,
    /// The server answered before the body was whole, with success (412:
    /// the object was there already). What is pushed from then on goes
    /// nowhere.
    there_already: bool,
}

impl Streamed {
    /// Starts the `PUT` of `size` bytes to `key`.
    pub(super) fn start(objects: &Arc<Objects>, key: ObjectPath, size: u64) -> Self {
        let (body, chunks) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let request = objects
            .runtime
            .spawn(put(objects.clone(), key.clone(), size, chunks));
        Self {
            key,
            body: Some(body),
            request,
            answered: false,
            held: None,
            pushed: 0,
            size,
            there_already: false,
        }
    }

    /// Takes the next chunk; sends the one before it, waiting while the
    /// request's body has [`CHUNKS_IN_FLIGHT`] queued (at most [`STALL`]).
    pub(super) async fn push(&mut self, chunk: Bytes) -> Result<(), ObjectError> {
        if chunk.is_empty() {
            // Held back, it would let the real last chunk go early.
            return Ok(());
        }
        self.pushed += chunk.len() as u64;
        if self.pushed > self.size {
            return Err(self.failure(
                format!(
                    "{} bytes pushed for an object of {}",
                    self.pushed, self.size
                ),
                false,
            ));
        }
        match self.held.replace(chunk) {
            Some(previous) => self.send(previous).await,
            None => Ok(()),
        }
    }

    /// Sends the chunk held back and waits for the server's answer: the
    /// object is whole under its name when this returns `Ok`.
    pub(super) async fn finish(mut self) -> Result<(), ObjectError> {
        if self.pushed != self.size {
            return Err(self.failure(
                format!(
                    "{} bytes pushed for an object of {}",
                    self.pushed, self.size
                ),
                false,
            ));
        }
        if let Some(last) = self.held.take() {
            self.send(last).await?;
        }
        drop(self.body.take());
        if self.answered {
            // Only an object already there answers before its body.
            return Ok(());
        }
        let answer = tokio::time::timeout(ANSWER_WAIT, &mut self.request)
            .await
            .map_err(|_| {
                self.failure(
                    format!("no answer {} s after the whole body", ANSWER_WAIT.as_secs()),
                    true,
                )
            })?;
        self.answered = true;
        self.settle(answer)
    }

    async fn send(&mut self, chunk: Bytes) -> Result<(), ObjectError> {
        if self.there_already {
            return Ok(());
        }
        let body = self.body.as_ref().expect("a body until finish");
        // The request may end while the body waits for room: an answer
        // (an error, or 412) from a server that reads no further.
        let sent = tokio::select! {
            sent = tokio::time::timeout(STALL, body.send(chunk)) => sent,
            answer = &mut self.request => {
                self.answered = true;
                return self.settle(answer);
            }
        };
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                // The body was dropped: the request ended, and says why.
                let answer = tokio::time::timeout(ANSWER_WAIT, &mut self.request)
                    .await
                    .map_err(|_| {
                        self.failure(
                            "the request dropped its body and gave no answer".into(),
                            true,
                        )
                    })?;
                self.answered = true;
                self.settle(answer)
            }
            Err(_) => Err(self.failure(
                format!("the server took no byte for {} s", STALL.as_secs()),
                true,
            )),
        }
    }

    /// What the request's answer means for this upload: an error fails
    /// it; a success before the whole body can only be an object already
    /// there, which stands.
    fn settle(
        &mut self,
        answer: Result<Result<(), ObjectError>, tokio::task::JoinError>,
    ) -> Result<(), ObjectError> {
        answer.map_err(|err| ObjectError::Task {
            key: self.key.to_string(),
            why: err.to_string(),
        })??;
        self.there_already = true;
        Ok(())
    }

    /// This upload's failure; `transient` when it may pass.
    fn failure(&self, why: String, transient: bool) -> ObjectError {
        ObjectError::Put {
            key: self.key.to_string(),
            why,
            transient,
        }
    }
}

impl Drop for Streamed {
    /// Unfinished, the request is cut: the server never sees the whole
    /// body its `Content-Length` announced, so it keeps nothing.
    fn drop(&mut self) {
        self.request.abort();
    }
}

/// The request: presigned, then sent with `chunks` as its body.
async fn put(
    objects: Arc<Objects>,
    key: ObjectPath,
    size: u64,
    chunks: mpsc::Receiver<Bytes>,
) -> Result<(), ObjectError> {
    let failed = |why: String, transient: bool| {
        objects.health.failed(&why);
        ObjectError::Put {
            key: key.to_string(),
            why,
            transient,
        }
    };
    objects.health.requests.fetch_add(1, Ordering::Relaxed);
    let create_only = SignedUrlOptions::default().with_signed_header(
        reqwest::header::IF_NONE_MATCH,
        reqwest::header::HeaderValue::from_static("*"),
    );
    let url = objects
        .store
        .signed_url_opts(reqwest::Method::PUT, &key, PRESIGNED_FOR, &create_only)
        .await
        .map_err(|err| failed(format!("presigning the upload: {err}"), false))?;
    let body =
        tokio_stream::wrappers::ReceiverStream::new(chunks).map(Ok::<_, std::convert::Infallible>);
    let answer = objects
        .put_http
        .put(url)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .header(reqwest::header::IF_NONE_MATCH, "*")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    let response = match answer {
        Ok(response) => response,
        Err(err) => {
            // A server that answers 412 before the body and closes the
            // connection may leave the client with a cut connection rather
            // than the answer: an object there, whole, is that answer.
            // One look, no retries: a server that is away fails the PUT.
            objects.health.requests.fetch_add(1, Ordering::Relaxed);
            if objects.store.head(&key).await.map(|meta| meta.size).ok() == Some(size) {
                return Ok(());
            }
            // Without its URL: a presigned one is a credential for this key.
            let err = err.without_url();
            return Err(failed(crate::can::client::describe(&err), true));
        }
    };
    let status = response.status();
    if status.is_success() || status == reqwest::StatusCode::PRECONDITION_FAILED {
        // 412: an object is there already, and stands (same name, same bytes).
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    let text = text.chars().take(300).collect::<String>();
    Err(failed(
        format!("PUT answered {status}: {text}"),
        status.is_server_error(),
    ))
}
