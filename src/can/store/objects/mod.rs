//! Object storage: large blobs and sealed pack segments of the embedded
//! store kept in an S3-compatible bucket (`--blobs s3://BUCKET/PREFIX`),
//! for archives larger than one machine's disk.
//!
//! The index (records, metadata, change log, coded cells) stays in the
//! store's database on the node and stays the authority; this module only
//! holds bytes, under keys that never change:
//! - `PREFIX/blobs/<hex[0..2]>/<hex>`: a large blob, named by its hash;
//! - `PREFIX/packs/<store id>-<segment>`: a sealed pack segment (16 hex
//!   digits each). The store's id is part of the name because segment
//!   numbers start again at 1 in a store made anew (`fsck`, a reset), and a
//!   name must never mean two different contents.
//!
//! Rules every write keeps:
//! - **nothing is visible under a name before its bytes are whole**: a
//!   small object is one `PUT` made only after its bytes were hashed; a
//!   large one of known size (an asset arriving from a peer, by verified
//!   ranges in order or whole) is one streamed `PUT` whose last chunk is
//!   sent only once every byte was verified, cut otherwise (`streamed.rs`);
//!   any other
//!   large one is a multipart upload whose parts go up while the bytes
//!   stream in, hashed on the way, and completed only when the whole
//!   matches its hash, aborted otherwise (S3 shows nothing of an upload
//!   before its completion);
//! - **objects are created only if absent** (`If-None-Match: *`, on the
//!   `PUT` and on the multipart completion): an object already there counts
//!   as success, as its name is its content;
//! - **a failure is retried** with the shared [`Backoff`] for a bounded
//!   time when it may pass (the server unreachable, a 5xx, a cut
//!   connection), and counted, so `status` and `/metrics` show a server in
//!   trouble ([`ObjectStats`]).
//!
//! Reads are ranged `GET`s: a large blob from any offset (so verified ranges
//! and resumed transfers work as on disk), a small value from its segment.
//!
//! The client is `object_store` (Apache Arrow's), which shares its HTTP
//! stack (reqwest, hyper, rustls with ring) with the rest of the node; it
//! also presigns the streamed `PUT`s, which are sent with that stack.
//!
//! # Layout
//!
//! - `mod.rs`: the bucket (`Objects`): keys, retries and their counts,
//!   reads, whole `PUT`s, and uploads of a local file;
//! - `config.rs`: what names a bucket (`ObjectsConfig`), the part size and
//!   count, and the S3 client over the node's HTTP stack (`connect`);
//! - `error.rs`: `ObjectError`, and which failures may pass;
//! - `upload.rs`: `Upload`, one object uploaded as its bytes come, by
//!   parts or as one streamed `PUT`;
//! - `streamed.rs`: the streamed `PUT`, and why it is preferred.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions,
    PutPayload,
};
use serde::Serialize;
use tokio::sync::Semaphore;

use std::path::PathBuf;

use super::fs::{StoreFile, StoreFs};
use crate::asset::AssetHash;
use crate::backoff::Backoff;
use crate::can::{ByteStream, CanError};

mod config;
mod error;
mod streamed;
mod upload;

pub use config::{
    connect, part_bytes, parts_in_flight, ObjectsConfig, DEFAULT_RETRY_FOR, PARTS_IN_FLIGHT,
    PART_BYTES,
};
use config::{node_http_client, streamed_puts_allowed};
pub use error::ObjectError;
use error::{already_there, is_transient};
pub use streamed::{streamed_put_max, STREAMED_PUT_MAX};
pub(super) use upload::Upload;

/// Blobs read back to clients come in chunks of this size, as from disk.
const READ_CHUNK: usize = 1024 * 1024;

/// How object storage has been doing, for `status` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ObjectStats {
    /// Requests made, retries included.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Requests made again after a failure that may pass.
    pub retries: u64,
    /// Requests waiting to be made again right now.
    pub backing_off: u64,
    /// The last failure, as the client said it.
    pub last_error: Option<String>,
    /// When it happened, Unix ms.
    pub last_error_at_ms: Option<i64>,
}

/// The counters behind [`ObjectStats`].
#[derive(Debug, Default)]
struct Health {
    requests: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    backing_off: AtomicU64,
    last_error: Mutex<Option<(String, i64)>>,
}

impl Health {
    fn failed(&self, err: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().expect("health lock") =
            Some((err.to_string(), crate::clock::now_ms()));
    }

    fn snapshot(&self) -> ObjectStats {
        let last = self.last_error.lock().expect("health lock").clone();
        ObjectStats {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            backing_off: self.backing_off.load(Ordering::Relaxed),
            last_error_at_ms: last.as_ref().map(|(_, at)| *at),
            last_error: last.map(|(text, _)| text),
        }
    }
}

/// The bucket of one store: its client, its key prefix, its health.
pub(super) struct Objects {
    store: Arc<AmazonS3>,
    /// The same bucket through a client that sends `If-None-Match: *` on
    /// every request: used only to complete multipart uploads, which
    /// `object_store` completes unconditionally otherwise.
    completer: Arc<AmazonS3>,
    prefix: String,
    retry_for: Duration,
    health: Health,
    /// Bounds the parts uploading at once ([`parts_in_flight`]).
    parts: Arc<Semaphore>,
    /// Where aborts of dropped uploads, and streamed uploads, run.
    runtime: tokio::runtime::Handle,
    /// The HTTP client of streamed `PUT`s ([`streamed`]), which are
    /// presigned and sent around `object_store`.
    put_http: reqwest::Client,
    /// Whether large uploads of known size may be streamed `PUT`s
    /// ([`streamed_puts_allowed`]).
    streamed_puts: bool,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Objects({}/{})", self.store, self.prefix)
    }
}

impl Objects {
    /// The bucket `config` names. Makes no request: a server that is away
    /// now is retried when the store needs it.
    pub(super) fn open(config: &ObjectsConfig) -> Result<Arc<Self>, ObjectError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ObjectError::NoRuntime)?;
        // Timeouts are the connector's (`NodeHttp`); the headers here are
        // added to requests by object_store itself.
        let options = ClientOptions::new();
        let mut create_only = object_store::HeaderMap::new();
        create_only.insert("if-none-match", object_store::HeaderValue::from_static("*"));
        Ok(Arc::new(Self {
            store: Arc::new(connect(config, options.clone())?),
            completer: Arc::new(connect(config, options.with_default_headers(create_only))?),
            prefix: config.prefix.clone(),
            retry_for: config.retry_for,
            health: Health::default(),
            parts: Arc::new(Semaphore::new(parts_in_flight())),
            runtime,
            streamed_puts: streamed_puts_allowed(),
            put_http: node_http_client(None).map_err(|err| {
                ObjectError::Client(object_store::Error::Generic {
                    store: "S3",
                    source: Box::new(err),
                })
            })?,
        }))
    }

    /// How object storage has been doing.
    pub(super) fn stats(&self) -> ObjectStats {
        self.health.snapshot()
    }

    fn key(&self, rest: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(rest)
        } else {
            ObjectPath::from(format!("{}/{rest}", self.prefix))
        }
    }

    /// Where a large blob is.
    pub(super) fn blob_key(&self, hash: &AssetHash) -> ObjectPath {
        let hex = hash.to_hex();
        self.key(&format!("blobs/{}/{hex}", &hex[..2]))
    }

    /// Where a sealed pack segment of the store `store_id` is.
    pub(super) fn segment_key(&self, store_id: u64, segment: u64) -> ObjectPath {
        self.key(&format!("packs/{store_id:016x}-{segment:016x}"))
    }

    /// Runs `request` until it succeeds, fails for good, or has failed for
    /// longer than the retry time; counts each attempt, failure and retry.
    async fn retrying<T, F, Fut>(&self, key: &ObjectPath, mut request: F) -> Result<T, ObjectError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            self.health.requests.fetch_add(1, Ordering::Relaxed);
            let err = match request().await {
                Ok(done) => return Ok(done),
                Err(err) => err,
            };
            if let object_store::Error::NotFound { .. } = err {
                return Err(ObjectError::Missing(key.to_string()));
            }
            if already_there(&err) {
                // A conditional create that found the object: the caller's
                // success, no failure of the server's.
                return Err(ObjectError::Request {
                    key: key.to_string(),
                    source: err,
                });
            }
            self.health.failed(&err);
            if !is_transient(&err) || started.elapsed() >= self.retry_for {
                return Err(ObjectError::Request {
                    key: key.to_string(),
                    source: err,
                });
            }
            tracing::warn!(%key, error = %err, "object storage request failed; retrying");
            self.health.retries.fetch_add(1, Ordering::Relaxed);
            self.health.backing_off.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff.next_pause()).await;
            self.health.backing_off.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The size of the object at `key`, or `None` when there is none.
    pub(super) async fn size(&self, key: &ObjectPath) -> Result<Option<u64>, ObjectError> {
        match self.retrying(key, || self.store.head(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(ObjectError::Missing(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Creates the object at `key` with `payload` in one `PUT`, unless one
    /// is there already (then that one stands: same name, same bytes).
    pub(super) async fn put_whole(
        &self,
        key: &ObjectPath,
        payload: PutPayload,
    ) -> Result<(), ObjectError> {
        let create = || {
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            self.store.put_opts(key, payload.clone(), options)
        };
        match self.retrying(key, create).await {
            Ok(_) => Ok(()),
            Err(ObjectError::Request { source, .. }) if already_there(&source) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// An upload of the object at `key`, fed chunk by chunk.
    pub(super) fn upload(self: &Arc<Self>, key: ObjectPath) -> Upload {
        Upload::new(self.clone(), key)
    }

    /// An upload of the object at `key` of `size` bytes, fed chunk by
    /// chunk: one streamed `PUT` when it is larger than a part and S3 takes
    /// it in one ([`streamed`]), else as [`Objects::upload`].
    pub(super) fn upload_sized(self: &Arc<Self>, key: ObjectPath, size: u64) -> Upload {
        if self.streamed_puts && size > part_bytes() as u64 && size <= streamed_put_max() {
            Upload::streamed(self.clone(), key, size)
        } else {
            Upload::new(self.clone(), key)
        }
    }

    /// Uploads the first `len` bytes of the local file at `path` to `key`
    /// (a partial asset made whole, a sealed segment), reading it a part at
    /// a time while the previous parts go up; fails when the file is
    /// shorter.
    pub(super) async fn upload_file(
        self: &Arc<Self>,
        key: ObjectPath,
        fs: Arc<dyn StoreFs>,
        path: PathBuf,
        len: u64,
    ) -> Result<(), ObjectError> {
        let local = |source| ObjectError::Local {
            path: path.display().to_string(),
            source,
        };
        let file: Arc<dyn StoreFile> = {
            let (fs, path) = (fs.clone(), path.clone());
            tokio::task::spawn_blocking(move || fs.open(&path))
                .await
                .map_err(|err| local(std::io::Error::other(err)))?
                .map_err(local)?
                .into()
        };
        let mut upload = self.upload(key);
        let mut at = 0u64;
        while at < len {
            let want = (len - at).min(part_bytes() as u64) as usize;
            let file = file.clone();
            let chunk = tokio::task::spawn_blocking(move || {
                let mut chunk = vec![0u8; want];
                file.read_exact_at(&mut chunk, at).map(|()| chunk)
            })
            .await
            .map_err(|err| local(std::io::Error::other(err)))?
            .map_err(local)?;
            at += want as u64;
            upload.push(chunk.into()).await?;
        }
        upload.finish().await
    }

    /// `len` bytes of the object at `key` from `offset`, in one ranged `GET`.
    pub(super) async fn read_range(
        &self,
        key: &ObjectPath,
        range: Range<u64>,
    ) -> Result<Bytes, ObjectError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let get = || async {
            let options = GetOptions {
                range: Some(GetRange::Bounded(range.clone())),
                ..GetOptions::default()
            };
            self.store.get_opts(key, options).await?.bytes().await
        };
        self.retrying(key, get).await
    }

    /// The object at `key` from `offset` to its end, `size` bytes in all,
    /// in chunks of [`READ_CHUNK`]: one ranged `GET`, retried until it
    /// answers; a failure once its body flows ends the stream with it (the
    /// reader resumes from where it got to, as from a cut transfer).
    pub(super) async fn read_from(
        &self,
        key: &ObjectPath,
        offset: u64,
        size: u64,
    ) -> Result<ByteStream, ObjectError> {
        if offset >= size {
            return Ok(stream::empty().boxed());
        }
        let get = || async {
            let options = GetOptions {
                range: Some(GetRange::Offset(offset)),
                ..GetOptions::default()
            };
            self.store.get_opts(key, options).await
        };
        let body = self.retrying(key, get).await?.into_stream();
        let failing_key = key.to_string();
        let body = body.map_err(move |source| {
            CanError::from(ObjectError::Request {
                key: failing_key.clone(),
                source,
            })
        });
        Ok(rechunk(body.boxed(), READ_CHUNK))
    }

    /// The whole object at `key`.
    pub(super) async fn read_all(&self, key: &ObjectPath) -> Result<Bytes, ObjectError> {
        let get = || async { self.store.get(key).await?.bytes().await };
        self.retrying(key, get).await
    }
}

/// `body` cut and joined into chunks of `size` bytes (the last shorter).
fn rechunk(body: ByteStream, size: usize) -> ByteStream {
    stream::try_unfold(
        (body, BytesMut::new(), false),
        move |(mut body, mut held, mut ended)| async move {
            while !ended && held.len() < size {
                match body.next().await {
                    Some(chunk) => held.extend_from_slice(&chunk?),
                    None => ended = true,
                }
            }
            if held.is_empty() {
                return Ok(None);
            }
            let chunk = held.split_to(held.len().min(size)).freeze();
            Ok(Some((chunk, (body, held, ended))))
        },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_are_cut_and_joined_to_size() {
        let parts: Vec<Result<Bytes, CanError>> = [3usize, 5, 1, 7]
            .iter()
            .map(|&n| Ok(Bytes::from(vec![n as u8; n])))
            .collect();
        let chunks: Vec<Bytes> = rechunk(stream::iter(parts).boxed(), 4)
            .map(|c| c.unwrap())
            .collect()
            .await;
        let sizes: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        assert_eq!(sizes, vec![4, 4, 4, 4]);
    }
}
