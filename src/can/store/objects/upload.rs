//! Uploads of one object as its bytes come ([`Upload`]): buffered up to a
//! part, then a multipart upload whose parts go up while the next bytes
//! arrive, completed only when the caller says the bytes are right; or,
//! when the size is known, one streamed `PUT` ([`super::streamed`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::PutPayload;

use super::streamed::Streamed;
use super::{already_there, part_bytes, parts_in_flight, ObjectError, Objects};

/// The task uploading one part; it answers the part's id.
type PartTask = tokio::task::JoinHandle<Result<PartId, ObjectError>>;

/// A multipart upload under way: its id, and the parts sent or sending.
struct Multipart {
    id: String,
    /// Parts uploading, in order; each answers its part's id.
    sending: std::collections::VecDeque<PartTask>,
    /// Parts the server took, in order.
    sent: Vec<PartId>,
    /// The next part's index.
    next: usize,
}

/// One object being uploaded as its bytes come: buffered up to
/// [`part_bytes`]; past that, a multipart upload whose parts go up while
/// the next ones arrive; or, made with its size, one streamed `PUT`.
/// Nothing is visible until [`Upload::finish`]; dropped unfinished, a
/// multipart upload is aborted and a streamed one cut.
pub(in crate::can::store) struct Upload {
    objects: Arc<Objects>,
    key: ObjectPath,
    /// Bytes not yet in a part.
    buffer: Vec<Bytes>,
    buffered: usize,
    multipart: Option<Multipart>,
    /// The streamed `PUT` this upload is, if it is one.
    streamed: Option<Streamed>,
}

impl Upload {
    /// An upload by parts (one `PUT` if it fits one).
    pub(super) fn new(objects: Arc<Objects>, key: ObjectPath) -> Self {
        Self {
            objects,
            key,
            buffer: Vec::new(),
            buffered: 0,
            multipart: None,
            streamed: None,
        }
    }

    /// An upload of `size` bytes as one streamed `PUT`, starting now.
    pub(super) fn streamed(objects: Arc<Objects>, key: ObjectPath, size: u64) -> Self {
        let mut upload = Self::new(objects, key);
        upload.streamed = Some(Streamed::start(&upload.objects, upload.key.clone(), size));
        upload
    }

    /// Takes the next chunk; sends a part when one is full, waiting while
    /// [`parts_in_flight`] are uploading (so a slow server slows the sender).
    pub(in crate::can::store) async fn push(&mut self, chunk: Bytes) -> Result<(), ObjectError> {
        if let Some(streamed) = self.streamed.as_mut() {
            return streamed.push(chunk).await;
        }
        self.buffered += chunk.len();
        self.buffer.push(chunk);
        while self.buffered >= part_bytes() {
            let part = self.take_part(part_bytes());
            self.send_part(part).await?;
        }
        Ok(())
    }

    /// The first `len` buffered bytes as one payload.
    fn take_part(&mut self, len: usize) -> PutPayload {
        let mut part = Vec::new();
        let mut left = len;
        while left > 0 {
            let first = &mut self.buffer[0];
            if first.len() <= left {
                left -= first.len();
                part.push(self.buffer.remove(0));
            } else {
                part.push(first.split_to(left));
                left = 0;
            }
        }
        self.buffered -= len;
        part.into_iter().collect()
    }

    async fn send_part(&mut self, part: PutPayload) -> Result<(), ObjectError> {
        let objects = self.objects.clone();
        if self.multipart.is_none() {
            let key = &self.key;
            let id = objects
                .retrying(key, || objects.store.create_multipart(key))
                .await?;
            self.multipart = Some(Multipart {
                id,
                sending: Default::default(),
                sent: Vec::new(),
                next: 0,
            });
        }
        let multipart = self.multipart.as_mut().expect("made above");
        let permit = objects
            .parts
            .clone()
            .acquire_owned()
            .await
            .expect("the part semaphore is never closed");
        let (key, id, index) = (self.key.clone(), multipart.id.clone(), multipart.next);
        multipart.next += 1;
        multipart.sending.push_back(tokio::spawn(async move {
            let _permit = permit;
            objects
                .retrying(&key, || {
                    objects.store.put_part(&key, &id, index, part.clone())
                })
                .await
        }));
        // Keep at most the semaphore's share in flight for this upload too,
        // collecting finished parts as they come.
        while multipart.sending.len() >= parts_in_flight() {
            Self::collect_one(multipart).await?;
        }
        Ok(())
    }

    async fn collect_one(multipart: &mut Multipart) -> Result<(), ObjectError> {
        if let Some(joined) = multipart.sending.pop_front() {
            let joined = joined.await;
            let part = joined.map_err(|err| ObjectError::Task {
                key: String::new(),
                why: err.to_string(),
            })??;
            multipart.sent.push(part);
        }
        Ok(())
    }

    /// Makes the object visible with every byte pushed: one `PUT` when it
    /// fits a part, else the last part and the completion of the multipart
    /// upload, both only if no object is there (one already there stands).
    pub(in crate::can::store) async fn finish(mut self) -> Result<(), ObjectError> {
        if let Some(streamed) = self.streamed.take() {
            return streamed.finish().await;
        }
        if self.multipart.is_none() {
            let rest = self.take_part(self.buffered);
            return self.objects.put_whole(&self.key, rest).await;
        }
        // From here, an early return leaves `self.multipart` set: dropping
        // `self` then cancels the parts and aborts the upload.
        if self.buffered > 0 {
            let rest = self.take_part(self.buffered);
            self.send_part(rest).await?;
        }
        let multipart = self.multipart.as_mut().expect("checked above");
        while !multipart.sending.is_empty() {
            Self::collect_one(multipart).await?;
        }
        let (objects, key) = (&self.objects, &self.key);
        let (id, parts) = (&multipart.id, &multipart.sent);
        let complete = || objects.completer.complete_multipart(key, id, parts.clone());
        let done = match objects.retrying(key, complete).await {
            Ok(_) => Ok(()),
            Err(ObjectError::Request { source, .. }) if already_there(&source) => Ok(()),
            Err(err) => Err(err),
        };
        if done.is_ok() {
            // Complete: nothing to abort.
            self.multipart = None;
        }
        done
    }

    /// Gives the upload up: its parts in flight are waited for, then the
    /// upload is aborted, so the server keeps no part of it
    /// and nothing becomes visible.
    pub(in crate::can::store) async fn abort(mut self) {
        // A streamed one is cut as it is dropped.
        drop(self.streamed.take());
        if let Some(multipart) = self.multipart.take() {
            abort(&self.objects, &self.key, multipart).await;
        }
    }
}

impl Drop for Upload {
    /// An upload dropped unfinished is aborted in the background, as
    /// [`Upload::abort`] does: an upload never completed is invisible
    /// anyway; this frees the server's parts.
    fn drop(&mut self) {
        if let Some(multipart) = self.multipart.take() {
            let (objects, key) = (self.objects.clone(), self.key.clone());
            self.objects.runtime.spawn(async move {
                abort(&objects, &key, multipart).await;
            });
        }
    }
}

/// Waits for the part uploads of `multipart` still running to end (a part
/// cancelled mid-request may still land after the abort, and some servers,
/// s3s-fs among them, then keep it), and aborts the upload.
async fn abort(objects: &Objects, key: &ObjectPath, multipart: Multipart) {
    for part in multipart.sending {
        let _ = part.await;
    }
    // One attempt: an upload left behind is invisible, and a bucket's
    // lifecycle rule clears what an abort missed.
    objects.health.requests.fetch_add(1, Ordering::Relaxed);
    if let Err(err) = objects.store.abort_multipart(key, &multipart.id).await {
        objects.health.failed(&err);
        tracing::debug!(%key, error = %err, "aborting a multipart upload failed");
    }
}
