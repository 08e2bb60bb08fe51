//! Where the bytes of each asset live: one file per asset on disk, or a map
//! in memory (`--memory`).
//!
//! On disk, a blob is written to `DIR/tmp/` under a random name, flushed and
//! fsynced, then renamed to `DIR/blobs/ab/abcdef…` (sharded by the first byte
//! of its hash) and the shard folder fsynced. Only then does the store queue
//! the database write that makes the asset visible (see
//! [`writer`](super::writer)), so a file under a hash is always whole and
//! correct, and after a power cut still there. The folder syncs come just
//! before that commit ([`Blobs::sync_folders`]), once per folder for a whole
//! batch: each shard folder a blob entered, and `blobs/` when this process
//! has not synced it since one of those shard folders appeared (made now,
//! or found made by a concurrent write or by a process killed since, which
//! may not have synced it). A blob already in place when a push comes
//! ([`Blobs::adopt`]) owes the same syncs. Streamed writes are hashed as they arrive and renamed only when
//! the hash matches. A temporary file is removed as soon as its write fails
//! or is dropped, and the bytes of streamed writes in flight count against
//! the store's quota for unfinished transfers (see [`partial`](super::partial):
//! a peer that starts and cuts large transfers cannot fill the disk).
//!
//! Every file operation goes through [`StoreFs`]: the
//! disk in production, a simulated one that can lose power in tests.
//!
//! This file knows nothing of metadata: which blobs are listed is the
//! database's business.

use std::collections::HashMap;
use std::io::Seek as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use futures::{stream, StreamExt};

use super::blocking;
use super::folders::{DurableShards, FolderSyncs};
use super::fs::{create_dir_if_missing, StoreFile, StoreFs, SyncPoint};
use super::objects::{ObjectError, Objects, Upload};
use super::partial::{PartialFile, PartialQuota};
use super::ranges::{Outboard, OutboardHasher};
use crate::asset::AssetHash;
use crate::can::{ByteStream, CanError};

/// The folder of the blob files in a store folder, one shard folder per
/// first two hex digits of a hash.
pub(super) const BLOBS_DIR: &str = "blobs";

/// Blobs are read back to clients in chunks of this size: the engine's
/// default chunk (`--chunk-bytes`), so a sender frames them as they come.
const READ_CHUNK: usize = 1024 * 1024;

/// Where blob bytes live.
pub(super) enum Blobs {
    /// One file per asset under `root/blobs/`, written through `root/tmp/`.
    Disk {
        root: PathBuf,
        /// Every file operation goes through it: `std::fs`, or in tests a
        /// simulated disk that can lose power.
        fs: Arc<dyn StoreFs>,
        /// The shard folders this process synced `blobs/` after seeing.
        shards: Arc<DurableShards>,
    },
    /// A map, for tests and load tests: no durability.
    Memory(RwLock<HashMap<AssetHash, Bytes>>),
    /// Objects in an S3-compatible bucket ([`objects`](super::objects)),
    /// uploaded as they stream and visible only once whole; `fs` reads the
    /// local files of partial assets made whole, to upload them.
    Object {
        objects: Arc<Objects>,
        fs: Arc<dyn StoreFs>,
    },
}

impl Blobs {
    /// The blob files of the store in `dir`. Whatever is left in `tmp/` is
    /// removed: it was never acknowledged (a write cut by a crash; one that
    /// failed or was dropped removed its own file). The caller syncs `dir`,
    /// whose entries `tmp/` and `blobs/` may be new.
    pub(super) fn open(fs: Arc<dyn StoreFs>, dir: &Path) -> Result<Self, CanError> {
        let tmp = dir.join("tmp");
        if fs.exists(&tmp)? {
            fs.remove_dir_all(&tmp)?;
        }
        create_dir_if_missing(&*fs, &tmp)?;
        create_dir_if_missing(&*fs, &dir.join(BLOBS_DIR))?;
        Ok(Self::Disk {
            root: dir.to_path_buf(),
            fs,
            shards: Arc::new(DurableShards::default()),
        })
    }

    /// Blobs kept in memory.
    pub(super) fn memory() -> Self {
        Self::Memory(RwLock::new(HashMap::new()))
    }

    fn blob_path(root: &Path, hash: &AssetHash) -> PathBuf {
        let hex = hash.to_hex();
        root.join(BLOBS_DIR).join(&hex[..2]).join(hex)
    }

    fn temp_path(root: &Path) -> PathBuf {
        root.join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()))
    }

    /// When the bytes of `hash` are stored (listed in the database or not),
    /// the folder syncs they still owe before a record may list them: a file
    /// found in place may have been renamed there by a push still in flight,
    /// or by one cut before its folder syncs, so its shard folder is synced
    /// again ([`SyncPoint::AdoptedBlob`]), and `blobs/` too when this process
    /// has not synced it for that shard yet. Its bytes were synced before
    /// the rename.
    pub(super) async fn adopt(&self, hash: &AssetHash) -> Option<FolderSyncs> {
        match self {
            Self::Disk { root, fs, shards } => {
                let (fs, path, index) =
                    (fs.clone(), Self::blob_path(root, hash), hash.as_bytes()[0]);
                let found = blocking(move || Ok(fs.exists(&path)?)).await;
                found.unwrap_or(false).then(|| {
                    let mut owed = FolderSyncs::default();
                    owed.shard(index, SyncPoint::AdoptedBlob, shards);
                    owed
                })
            }
            Self::Memory(map) => map
                .read()
                .expect("blob map lock")
                .contains_key(hash)
                .then(FolderSyncs::default),
            // An object is whole once visible: nothing more to make durable.
            Self::Object { objects, .. } => {
                matches!(objects.size(&objects.blob_key(hash)).await, Ok(Some(_)))
                    .then(FolderSyncs::default)
            }
        }
    }

    /// Makes the folders of stored blobs durable: `blobs/` once, when any
    /// of their shard folders' own entries may not be yet
    /// ([`SyncPoint::BlobsFolder`]), then each shard folder once. Called
    /// before the commit that lists the blobs, once for a whole batch.
    pub(super) async fn sync_folders(&self, owed: FolderSyncs) -> Result<(), CanError> {
        let Self::Disk { root, fs, shards } = self else {
            return Ok(());
        };
        if owed.is_empty() {
            return Ok(());
        }
        let (root, fs, shards) = (root.join(BLOBS_DIR), fs.clone(), shards.clone());
        blocking(move || {
            if !owed.new_shards.is_empty() {
                fs.sync_dir(&root, SyncPoint::BlobsFolder)?;
                for &index in &owed.new_shards {
                    shards.mark(index);
                }
            }
            for (&index, &point) in &owed.shards {
                fs.sync_dir(&root.join(format!("{index:02x}")), point)?;
            }
            Ok(())
        })
        .await
    }

    /// Moves a fully written and fsynced temporary file to its hash's name,
    /// making the shard folder first if it is missing. Returns the folder
    /// syncs the blob owes before a record may list it (see
    /// [`sync_folders`](Self::sync_folders)). Dropped before it runs, the
    /// temporary file is removed; dropped while it runs, it finishes: a
    /// whole blob, unlisted until a push of it adopts it, or, when the
    /// rename fails, no file.
    async fn commit_file(
        root: &Path,
        fs: &Arc<dyn StoreFs>,
        shards: &Arc<DurableShards>,
        temp: PartialFile,
        hash: &AssetHash,
    ) -> Result<FolderSyncs, CanError> {
        let target = Self::blob_path(root, hash);
        let (fs, shards, index) = (fs.clone(), shards.clone(), hash.as_bytes()[0]);
        blocking(move || {
            let shard = target.parent().expect("blob path has a shard folder");
            if !shards.is_marked(index) {
                create_dir_if_missing(&*fs, shard)?;
            }
            match fs.rename(temp.path(), &target) {
                // A shard folder removed behind the store's back: made again.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound && !fs.exists(shard)? => {
                    create_dir_if_missing(&*fs, shard)?;
                    shards.unmark(index);
                    fs.rename(temp.path(), &target)?;
                }
                renamed => renamed?,
            }
            temp.committed();
            let mut owed = FolderSyncs::default();
            owed.shard(index, SyncPoint::ShardFolder, &shards);
            Ok(owed)
        })
        .await
    }

    /// Stores bytes already verified to hash to `hash`. Returns the folder
    /// syncs they owe before a record may list them.
    pub(super) async fn store_verified(
        &self,
        hash: &AssetHash,
        data: Bytes,
    ) -> Result<FolderSyncs, CanError> {
        match self {
            Self::Disk { root, fs, shards } => {
                // Removed by the guard if writing fails or this is dropped.
                let (temp, mut file) = PartialFile::create(fs.clone(), Self::temp_path(root))?;
                blocking(move || {
                    use std::io::Write as _;
                    file.write_all(&data)?;
                    file.sync(SyncPoint::BlobFile)?;
                    Ok(())
                })
                .await?;
                Self::commit_file(root, fs, shards, temp, hash).await
            }
            Self::Memory(map) => {
                map.write().expect("blob map lock").insert(*hash, data);
                Ok(FolderSyncs::default())
            }
            Self::Object { objects, .. } => {
                objects
                    .put_whole(&objects.blob_key(hash), data.into())
                    .await?;
                Ok(FolderSyncs::default())
            }
        }
    }

    /// Streams `body` in, checking on the way that it stays within
    /// `max_bytes` and that the store's unfinished transfers stay within
    /// `quota`, and at its end that it hashes to `hash`; stores it only
    /// then. Returns its size and the folder syncs it owes before a record
    /// may list it. Failed or dropped, it leaves no file and gives its share
    /// of the quota back.
    pub(super) async fn store_stream(
        &self,
        hash: AssetHash,
        mut body: ByteStream,
        size: Option<u64>,
        max_bytes: u64,
        quota: &PartialQuota,
    ) -> Result<(u64, FolderSyncs, Outboard), CanError> {
        let mut verifier = Verifier::new(hash, max_bytes);
        // Given back when this returns (a stored blob is no longer partial)
        // or is dropped.
        let mut counted = quota.share();
        match self {
            Self::Disk { root, fs, shards } => {
                // Removed by the guard unless committed: on every error
                // return below, and when this future is dropped.
                let (temp, file) = PartialFile::create(fs.clone(), Self::temp_path(root))?;
                // The file is written, hashed and flushed on a thread of its
                // own while the next chunks arrive; the queue is the only
                // buffer, so a slow disk slows the sender down.
                let (chunks, queued) = tokio::sync::mpsc::channel::<Bytes>(WRITE_BEHIND_QUEUE);
                let writer =
                    tokio::task::spawn_blocking(move || write_behind(file, queued, verifier));
                let mut failed = None;
                let mut received = 0u64;
                while let Some(chunk) = body.next().await {
                    // The asset's own limit first (the writer checks it too,
                    // later): an asset too large for the store is refused for
                    // good, not as a busy store worth a retry. Then counted
                    // before it is written: the file never holds bytes the
                    // quota did not grant.
                    let chunk = chunk.and_then(|chunk| {
                        received += chunk.len() as u64;
                        if received > max_bytes {
                            return Err(CanError::TooLarge {
                                size: received,
                                limit: max_bytes,
                            });
                        }
                        counted.grow(chunk.len() as u64)?;
                        Ok(chunk)
                    });
                    match chunk {
                        // The writer stops taking chunks only when it failed;
                        // its error says why.
                        Ok(chunk) => {
                            if chunks.send(chunk).await.is_err() {
                                break;
                            }
                        }
                        Err(err) => {
                            failed = Some(err);
                            break;
                        }
                    }
                }
                drop(chunks);
                let written = writer
                    .await
                    .map_err(|err| CanError::Storage(format!("blob writer failed: {err}")))?;
                let (size, outboard) = match (failed, written) {
                    (None, Ok(written)) => written,
                    (Some(err), _) | (None, Err(err)) => return Err(err),
                };
                let owed = Self::commit_file(root, fs, shards, temp, &hash).await?;
                Ok((size, owed, outboard))
            }
            Self::Memory(map) => {
                let mut data = BytesMut::new();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk?;
                    // The asset's own limit first, as on disk.
                    verifier.take(&chunk)?;
                    counted.grow(chunk.len() as u64)?;
                    data.extend_from_slice(&chunk);
                }
                let (size, outboard) = verifier.check()?;
                map.write()
                    .expect("blob map lock")
                    .insert(hash, data.freeze());
                Ok((size, FolderSyncs::default(), outboard))
            }
            Self::Object { objects, .. } => {
                // Parts go up while the next chunks arrive and are hashed;
                // the upload completes only when the whole matches, and is
                // aborted (on every error return, and when this future is
                // dropped) otherwise.
                let key = objects.blob_key(&hash);
                let mut upload = match size {
                    Some(size) => objects.upload_sized(key, size),
                    None => objects.upload(key),
                };
                while let Some(chunk) = body.next().await {
                    let chunk = chunk?;
                    // The asset's own limit first, as on disk.
                    let hashed = chunk.clone();
                    verifier = blocking(move || {
                        verifier.take(&hashed)?;
                        Ok(verifier)
                    })
                    .await?;
                    counted.grow(chunk.len() as u64)?;
                    upload.push(chunk).await?;
                }
                let (size, outboard) = match blocking(move || verifier.check()).await {
                    Ok(checked) => checked,
                    Err(err) => {
                        upload.abort().await;
                        return Err(err);
                    }
                };
                upload.finish().await?;
                Ok((size, FolderSyncs::default(), outboard))
            }
        }
    }

    /// Moves the synced data file of a partial asset made whole (`resume/`)
    /// to its hash's name. Returns the folder syncs it owes before a record
    /// may list it. A disk store's only: partial assets are kept on disk.
    ///
    /// In object storage, `streamed` is the upload of its bytes made while
    /// they arrived, every group of it pushed: completed now (its groups
    /// were each verified against an outboard checked against the hash)
    /// instead of uploading the file again, unless completing it fails.
    pub(super) async fn store_completed(
        &self,
        hash: &AssetHash,
        path: PathBuf,
        streamed: Option<Upload>,
    ) -> Result<FolderSyncs, CanError> {
        match self {
            Self::Disk { root, fs, shards } => {
                let temp = PartialFile::adopt(fs.clone(), path);
                Self::commit_file(root, fs, shards, temp, hash).await
            }
            Self::Memory(_) => Err(CanError::Storage(
                "a store in memory keeps no partial assets".into(),
            )),
            Self::Object { objects, fs } => {
                // Removed by the guard once uploaded, or when this fails:
                // the partial asset was whole, its groups verified; a
                // transfer that fails here starts that asset again.
                let local = PartialFile::adopt(fs.clone(), path.clone());
                if let Some(upload) = streamed {
                    match upload.finish().await {
                        Ok(()) => {
                            drop(local);
                            return Ok(FolderSyncs::default());
                        }
                        // A streamed PUT is not retried (its body is
                        // gone); the local copy is, with retries.
                        Err(err) => tracing::warn!(
                            %hash,
                            error = %err,
                            "uploading the asset as it arrived failed; uploading its local copy"
                        ),
                    }
                }
                let len = {
                    let (fs, path) = (fs.clone(), path.clone());
                    blocking(move || Ok(fs.open(&path)?.len()?)).await?
                };
                objects
                    .upload_file(objects.blob_key(hash), fs.clone(), path, len)
                    .await?;
                drop(local);
                Ok(FolderSyncs::default())
            }
        }
    }

    /// Whether blobs are objects, uploaded as their bytes arrive.
    pub(super) fn are_objects(&self) -> bool {
        matches!(self, Self::Object { .. })
    }

    /// An upload of the blob of `hash`, `size` bytes, to feed as its bytes
    /// arrive, when blobs are objects.
    pub(super) fn upload_of(&self, hash: &AssetHash, size: u64) -> Option<Upload> {
        match self {
            Self::Object { objects, .. } => {
                Some(objects.upload_sized(objects.blob_key(hash), size))
            }
            _ => None,
        }
    }

    /// The whole blob of `hash`, `size` bytes as its record says, in
    /// memory. A file that is not a regular one, or not of that size, is
    /// damage: it is logged for `fsck` to name and answered as not found,
    /// unread (a sparse file of terabytes would not fit in memory), so the
    /// other assets of a pull go on.
    pub(super) async fn read_all(&self, hash: &AssetHash, size: u64) -> Result<Bytes, CanError> {
        match self {
            Self::Disk { root, fs, .. } => {
                let (fs, path, hash) = (fs.clone(), Self::blob_path(root, hash), *hash);
                blocking(move || {
                    let damaged = |why: String| {
                        tracing::warn!(path = %path.display(), "a damaged blob file: {why}; run fsck");
                        CanError::NotFound(hash)
                    };
                    let mut file = match fs.open(&path) {
                        Ok(file) => file,
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                            return Err(CanError::NotFound(hash))
                        }
                        Err(err) if err.kind() == std::io::ErrorKind::InvalidInput => {
                            return Err(damaged(err.to_string()))
                        }
                        Err(err) => return Err(err.into()),
                    };
                    let len = file.len()?;
                    if len != size {
                        return Err(damaged(format!("{len} bytes where its record says {size}")));
                    }
                    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                    std::io::Read::read_to_end(&mut file, &mut data)?;
                    Ok(data.into())
                })
                .await
            }
            Self::Memory(map) => map
                .read()
                .expect("blob map lock")
                .get(hash)
                .cloned()
                .ok_or(CanError::NotFound(*hash)),
            Self::Object { objects, .. } => match objects.read_all(&objects.blob_key(hash)).await {
                Err(ObjectError::Missing(_)) => Err(CanError::NotFound(*hash)),
                read => Ok(read?),
            },
        }
    }

    /// The blob of `hash`, `size` bytes as its record says, from byte
    /// `offset` (at most its size) to its end, in chunks of [`READ_CHUNK`].
    pub(super) async fn read_from(
        &self,
        hash: &AssetHash,
        offset: u64,
        size: u64,
    ) -> Result<ByteStream, CanError> {
        match self {
            Self::Object { objects, .. } => {
                match objects
                    .read_from(&objects.blob_key(hash), offset, size)
                    .await
                {
                    Err(ObjectError::Missing(_)) => Err(CanError::NotFound(*hash)),
                    read => Ok(read?),
                }
            }
            Self::Disk { root, fs, .. } => {
                let (fs, path) = (fs.clone(), Self::blob_path(root, hash));
                let hash = *hash;
                let (file, left) = blocking(move || {
                    // Damage named with the file's path; a file of another
                    // size than its record is refused before a byte is read
                    // (a sparse file of terabytes would otherwise be read
                    // whole to find it out).
                    let damaged = |what: String| {
                        CanError::Storage(format!("blob file {}: {what}", path.display()))
                    };
                    let mut file = match fs.open(&path) {
                        Ok(file) => file,
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                            return Err(CanError::NotFound(hash))
                        }
                        Err(err) => return Err(damaged(err.to_string())),
                    };
                    let len = file.len().map_err(|err| damaged(err.to_string()))?;
                    if len != size {
                        return Err(damaged(format!("{len} bytes where its record says {size}")));
                    }
                    file.seek(std::io::SeekFrom::Start(offset))
                        .map_err(|err| damaged(err.to_string()))?;
                    Ok((file, len.saturating_sub(offset)))
                })
                .await?;
                Ok(file_chunks(file, left).boxed())
            }
            Self::Memory(_) => {
                let data = self.read_all(hash, size).await?.slice(offset as usize..);
                let chunks: Vec<Result<Bytes, CanError>> = (0..data.len())
                    .step_by(READ_CHUNK)
                    .map(|at| Ok(data.slice(at..(at + READ_CHUNK).min(data.len()))))
                    .collect();
                Ok(stream::iter(chunks).boxed())
            }
        }
    }
}

/// The next `left` bytes of `file` in chunks of [`READ_CHUNK`] (the last
/// one shorter), each read by one blocking call straight into a buffer of
/// its own size: no copy between the kernel's and the caller's (tokio's own
/// file reads go through a buffer of their own), no zeroing first, and no
/// chunk holding more memory than its bytes. A file shorter than `left` ends
/// where it ends.
fn file_chunks(
    file: Box<dyn StoreFile>,
    left: u64,
) -> impl futures::Stream<Item = Result<Bytes, CanError>> {
    stream::try_unfold((file, left), |(file, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = left.min(READ_CHUNK as u64);
        let (file, chunk) = blocking(move || {
            use std::io::Read as _;
            let mut file = file;
            let mut chunk = Vec::with_capacity(want as usize);
            file.by_ref().take(want).read_to_end(&mut chunk)?;
            Ok((file, chunk))
        })
        .await?;
        if chunk.is_empty() {
            return Ok(None);
        }
        let left = left - chunk.len() as u64;
        Ok(Some((Bytes::from(chunk), (file, left))))
    })
}

/// Chunks that may wait for a blob's writer thread.
const WRITE_BEHIND_QUEUE: usize = 8;
/// Bytes written between two background flushes of a blob being written:
/// the final fsync then has at most about this much (plus what the flusher
/// has not finished) left to write, instead of the whole blob.
const FLUSH_EVERY: u64 = 16 * 1024 * 1024;

/// Writes the chunks of one blob to `file` (its temporary file, which the
/// caller's guard removes) as they come, hashing them and checking the size
/// limit first, while a second thread flushes what was written every
/// [`FLUSH_EVERY`] bytes; at the end checks the hash and makes the file
/// durable. Returns the blob's size and outboard. Runs on the blocking pool.
fn write_behind(
    mut file: Box<dyn StoreFile>,
    mut chunks: tokio::sync::mpsc::Receiver<Bytes>,
    mut verifier: Verifier,
) -> Result<(u64, Outboard), CanError> {
    use std::io::Write as _;

    let flushed = file.try_clone()?;
    // A flush asked while one runs is merged into the next.
    let (ask_flush, flush_asked) = std::sync::mpsc::sync_channel::<()>(1);
    let flusher = std::thread::Builder::new()
        .name("can-blob-flush".into())
        .spawn(move || -> std::io::Result<()> {
            while flush_asked.recv().is_ok() {
                flushed.write_back()?;
            }
            Ok(())
        })?;
    let written = (|| -> Result<(), CanError> {
        let mut unflushed = 0u64;
        while let Some(chunk) = chunks.blocking_recv() {
            verifier.take(&chunk)?;
            file.write_all(&chunk)?;
            unflushed += chunk.len() as u64;
            if unflushed >= FLUSH_EVERY {
                let _ = ask_flush.try_send(());
                unflushed = 0;
            }
        }
        Ok(())
    })();
    drop(ask_flush);
    let flush = flusher
        .join()
        .map_err(|_| CanError::Storage("blob flusher panicked".into()))?;
    written?;
    flush?;
    let checked = verifier.check()?;
    file.sync(SyncPoint::BlobFile)?;
    Ok(checked)
}

/// Hashes and counts a blob's bytes as they stream in, keeping its outboard
/// on the way (at the cost of hashing it: [`OutboardHasher`]).
struct Verifier {
    /// The hash the bytes were offered under.
    expected: AssetHash,
    hasher: OutboardHasher,
    /// Bytes taken so far.
    size: u64,
    /// The most bytes accepted.
    max_bytes: u64,
}

impl Verifier {
    fn new(expected: AssetHash, max_bytes: u64) -> Self {
        Self {
            expected,
            hasher: OutboardHasher::default(),
            size: 0,
            max_bytes,
        }
    }

    /// Takes the next chunk; refuses it when it carries the blob over the limit.
    fn take(&mut self, chunk: &[u8]) -> Result<(), CanError> {
        self.size += chunk.len() as u64;
        if self.size > self.max_bytes {
            return Err(CanError::TooLarge {
                size: self.size,
                limit: self.max_bytes,
            });
        }
        self.hasher.update(chunk);
        Ok(())
    }

    /// Checks, once every chunk was taken, that the bytes hash to the hash
    /// they were offered under; their size and outboard.
    fn check(self) -> Result<(u64, Outboard), CanError> {
        let (actual, outboard) = self.hasher.finalize();
        if actual != self.expected {
            return Err(CanError::HashMismatch {
                expected: self.expected,
                actual,
            });
        }
        Ok((self.size, outboard))
    }
}

#[cfg(test)]
mod tests {
    use futures::{stream, StreamExt};

    use super::super::fixtures::each_backend;
    use super::super::fs::RealFs;
    use super::super::EmbeddedCan;
    use super::*;
    use crate::can::Can;
    use crate::pb;

    /// A blob larger than [`FLUSH_EVERY`] goes through background flushes
    /// and reads back whole; one whose body fails midway leaves no file, in
    /// `tmp/` or under its hash.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_behind_keeps_whole_blobs_and_drops_broken_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedCan::open(dir.path(), Default::default()).unwrap();
        let data = Bytes::from(
            (0..(2 * FLUSH_EVERY + 12_345))
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>(),
        );
        let hash = AssetHash::of(&data);
        let chunks = |fail_after: Option<usize>| -> ByteStream {
            let mut parts: Vec<Result<Bytes, CanError>> = (0..data.len())
                .step_by(1 << 20)
                .map(|at| Ok(data.slice(at..(at + (1 << 20)).min(data.len()))))
                .collect();
            if let Some(at) = fail_after {
                parts.truncate(at);
                parts.push(Err(CanError::Unavailable("peer went away".into())));
            }
            stream::iter(parts).boxed()
        };
        let broken = store
            .write_blob(hash, pb::AssetMeta::default(), chunks(Some(20)))
            .await;
        assert!(
            matches!(broken, Err(CanError::Unavailable(_))),
            "{broken:?}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert!(store.meta(hash).await.unwrap().is_none());

        store
            .write_blob(hash, pb::AssetMeta::default(), chunks(None))
            .await
            .unwrap();
        let (size, body) = store.read_blob(hash, 0).await.unwrap();
        assert_eq!(size, data.len() as u64);
        let read: Vec<Bytes> = body.map(|c| c.unwrap()).collect().await;
        assert_eq!(read.concat(), data);
    }

    /// Every test below is bounded by this, so a hang fails instead of
    /// stalling the suite.
    const TEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

    /// The files in the store's `tmp/`.
    fn temp_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("tmp")).unwrap().count()
    }

    /// A body that yields `first`, then, when the store asks for more (so
    /// it has counted and queued `first`), says so on the returned receiver
    /// and goes on with `rest`.
    fn body_then(
        first: Bytes,
        rest: impl futures::Stream<Item = Result<Bytes, CanError>> + Send + 'static,
    ) -> (ByteStream, tokio::sync::oneshot::Receiver<()>) {
        let (asked, on_asked) = tokio::sync::oneshot::channel();
        let signal = stream::once(async move {
            let _ = asked.send(());
        })
        .filter_map(|()| async { None });
        let body = stream::iter([Ok(first)]).chain(signal).chain(rest).boxed();
        (body, on_asked)
    }

    /// A streamed write whose body fails midway keeps nothing: no file in
    /// `tmp/`, and its bytes no longer count against the quota.
    #[tokio::test]
    async fn a_failed_stream_leaves_no_partial_file_and_gives_its_quota_back() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedCan::open(dir.path(), Default::default()).unwrap();
            let chunk = Bytes::from(vec![5u8; 100_000]);
            let body = stream::iter([
                Ok(chunk.clone()),
                Ok(chunk),
                Err(CanError::Unavailable("stream reset".into())),
            ])
            .boxed();
            let failed = store
                .write_blob(AssetHash::of(b"whatever"), pb::AssetMeta::default(), body)
                .await;
            assert!(
                matches!(failed, Err(CanError::Unavailable(_))),
                "{failed:?}"
            );
            assert_eq!(temp_files(dir.path()), 0);
            assert_eq!(store.partial.counted(), 0);
        })
        .await
        .expect("in time");
    }

    /// A streamed write dropped midway (its task aborted while the body
    /// waits for bytes that never come) leaves no file in `tmp/` once the
    /// drop returns, and gives its quota back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_write_leaves_no_partial_file() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let dir = tempfile::tempdir().unwrap();
            let store =
                std::sync::Arc::new(EmbeddedCan::open(dir.path(), Default::default()).unwrap());
            let (body, asked) = body_then(Bytes::from(vec![1u8; 70_000]), stream::pending());
            let writing = tokio::spawn({
                let store = store.clone();
                async move {
                    store
                        .write_blob(
                            AssetHash::of(b"never whole"),
                            pb::AssetMeta::default(),
                            body,
                        )
                        .await
                }
            });
            asked.await.unwrap();
            assert_eq!(temp_files(dir.path()), 1, "the partial file is there");
            assert_eq!(store.partial.counted(), 70_000);
            writing.abort();
            let joined = writing.await;
            assert!(joined.unwrap_err().is_cancelled());
            // The future is dropped before the join answers: no waiting.
            assert_eq!(temp_files(dir.path()), 0);
            assert_eq!(store.partial.counted(), 0);
        })
        .await
        .expect("in time");
    }

    /// Two writes in flight share the quota: the one whose chunk crosses it
    /// fails, naming the quota, and removes its file while the other goes
    /// on; what it had counted is given back at once, so a write that fits
    /// beside the other then succeeds, and once all are done the whole
    /// quota is free again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_the_quota_and_the_one_crossing_it_fails() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let dir = tempfile::tempdir().unwrap();
            let limits = super::super::StoreLimits {
                max_partial_bytes: 1_000,
                ..Default::default()
            };
            let store = std::sync::Arc::new(EmbeddedCan::open(dir.path(), limits).unwrap());
            let write = |data: Vec<u8>, chunk: usize| {
                let hash = AssetHash::of(&data);
                let parts: Vec<Result<Bytes, CanError>> = data
                    .chunks(chunk)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                store.write_blob(hash, pb::AssetMeta::default(), stream::iter(parts).boxed())
            };

            // The first holds 600 bytes and waits.
            let first = Bytes::from(vec![1u8; 600]);
            let (finish, finished) = tokio::sync::oneshot::channel::<()>();
            let rest = stream::once(async move {
                let _ = finished.await;
            })
            .filter_map(|()| async { None });
            let (body, asked) = body_then(first.clone(), rest);
            let holding = tokio::spawn({
                let store = store.clone();
                async move {
                    store
                        .write_blob(AssetHash::of(&first), pb::AssetMeta::default(), body)
                        .await
                }
            });
            asked.await.unwrap();
            assert_eq!(store.partial.counted(), 600);

            // The second counts 300, then its next 300 would make 1200.
            let crossing = write(vec![2u8; 600], 300).await;
            let Err(err) = crossing else {
                panic!("the write crossing the quota succeeded");
            };
            assert!(matches!(err, CanError::Unavailable(_)), "{err:?}");
            assert!(err.to_string().contains("max_partial_bytes"), "{err}");
            assert_eq!(temp_files(dir.path()), 1, "only the holding write's file");
            assert_eq!(
                store.partial.counted(),
                600,
                "the failed write's 300 given back"
            );

            // 600 + 300 fits only because the failed write gave its 300 back.
            write(vec![3u8; 300], 300).await.unwrap();

            finish.send(()).unwrap();
            holding.await.unwrap().unwrap();
            assert_eq!(store.partial.counted(), 0);
            assert_eq!(temp_files(dir.path()), 0);
            write(vec![4u8; 1_000], 250).await.unwrap();
        })
        .await
        .expect("in time");
    }

    /// An asset over the store's limit is refused as too large, not as a
    /// full quota, even when its bytes would also cross the quota: the one
    /// is final, the other worth a retry.
    #[tokio::test]
    async fn an_asset_over_the_limit_is_too_large_not_over_quota() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let limits = super::super::StoreLimits {
                max_asset_bytes: 1_000,
                max_partial_bytes: 1_000,
                ..super::super::StoreLimits::default()
            };
            let dir = tempfile::tempdir().unwrap();
            for store in [
                EmbeddedCan::memory(limits).unwrap(),
                EmbeddedCan::open(dir.path(), limits).unwrap(),
            ] {
                let data = Bytes::from(vec![6u8; 1_200]);
                let body = stream::iter([Ok(data.clone())]).boxed();
                let refused = store
                    .write_blob(AssetHash::of(&data), pb::AssetMeta::default(), body)
                    .await;
                assert!(
                    matches!(
                        refused,
                        Err(CanError::TooLarge {
                            size: 1_200,
                            limit: 1_000
                        })
                    ),
                    "{refused:?}"
                );
                assert_eq!(store.partial.counted(), 0);
            }
            assert_eq!(temp_files(dir.path()), 0);
        })
        .await
        .expect("in time");
    }

    /// A file is read in whole chunks and one short last one, from any
    /// offset, each chunk's buffer its own size; one of exactly whole chunks
    /// ends without an empty chunk.
    #[tokio::test]
    async fn files_are_read_in_whole_chunks_from_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        for (size, offset) in [
            (0, 0),
            (READ_CHUNK, 0),
            (2 * READ_CHUNK + 1, 0),
            (READ_CHUNK + 9, 9),
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
            let path = dir.path().join(format!("blob-{size}"));
            std::fs::write(&path, &data).unwrap();
            let mut file = RealFs.open(&path).unwrap();
            file.seek(std::io::SeekFrom::Start(offset as u64)).unwrap();
            let rest = size - offset;
            let chunks: Vec<Bytes> = file_chunks(file, rest as u64)
                .map(|c| c.unwrap())
                .collect()
                .await;
            let sizes: Vec<usize> = chunks.iter().map(Bytes::len).collect();
            let mut expected = vec![READ_CHUNK; rest / READ_CHUNK];
            if rest % READ_CHUNK != 0 {
                expected.push(rest % READ_CHUNK);
            }
            assert_eq!(sizes, expected, "{size} bytes from {offset}");
            assert_eq!(chunks.concat(), data[offset..]);
        }
        // A file shorter than it was said to be ends where it ends.
        let path = dir.path().join("short");
        std::fs::write(&path, [1u8; 100]).unwrap();
        let file = RealFs.open(&path).unwrap();
        let chunks: Vec<Bytes> = file_chunks(file, 5_000).map(|c| c.unwrap()).collect().await;
        assert_eq!(chunks.concat(), [1u8; 100]);
    }

    #[tokio::test]
    async fn streamed_write_commits_only_a_matching_hash() {
        each_backend(async |store| {
            let data = vec![7u8; 700_000];
            let hash = AssetHash::of(&data);
            let chunks = || -> ByteStream {
                let parts: Vec<Result<Bytes, CanError>> = data
                    .chunks(65_536)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                stream::iter(parts).boxed()
            };
            let wrong = store
                .write_blob(AssetHash::of(b"other"), pb::AssetMeta::default(), chunks())
                .await;
            assert!(matches!(wrong, Err(CanError::HashMismatch { .. })));
            assert_eq!(store.stats().await.unwrap().assets, 0);
            let pushed = store
                .write_blob(hash, pb::AssetMeta::default(), chunks())
                .await
                .unwrap();
            assert!(!pushed.already_existed);
            let (size, body) = store.read_blob(hash, 100).await.unwrap();
            assert_eq!(size, 700_000);
            let read: Vec<Bytes> = body.map(|c| c.unwrap()).collect().await;
            assert_eq!(read.concat(), data[100..]);
        })
        .await;
    }
}
