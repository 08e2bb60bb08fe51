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
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::blocking;
use super::folders::{DurableShards, FolderSyncs};
use super::fs::{create_dir_if_missing, list_if_there, StoreFs, SyncPoint};
use super::objects::{Objects, Upload};
use super::partial::{PartialFile, PartialQuota};
use super::ranges::Outboard;
use crate::asset::AssetHash;
use crate::can::{ByteStream, CanError};
use write_behind::{write_behind, Verifier, WRITE_BEHIND_QUEUE};

mod read;
#[cfg(test)]
use read::file_chunks;
mod write_behind;

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

    /// The blob files of the store in `dir` as they are: nothing is made,
    /// and leftover temporary files stay (a store opened only to be read).
    pub(super) fn existing(fs: Arc<dyn StoreFs>, dir: &Path) -> Self {
        Self::Disk {
            root: dir.to_path_buf(),
            fs,
            shards: Arc::new(DurableShards::default()),
        }
    }

    /// Every blob file on disk, by the hash its name gives, and its length;
    /// none for blobs in memory or in object storage. Names that are not a
    /// hash are left out, and so are entries that cannot be measured (a
    /// FIFO put there): reading them is `fsck`'s, through the records.
    pub(super) fn files(&self) -> io::Result<Vec<(AssetHash, u64)>> {
        let Self::Disk { root, fs, .. } = self else {
            return Ok(Vec::new());
        };
        let blobs = root.join(BLOBS_DIR);
        let names = |folder: &Path| list_if_there(&**fs, folder);
        let mut found = Vec::new();
        for shard in names(&blobs)? {
            let folder = blobs.join(&shard);
            let Ok(files) = names(&folder) else {
                continue; // a file where a shard folder should be
            };
            for name in files {
                let Ok(hash) = name.parse::<AssetHash>() else {
                    continue;
                };
                if let Ok(len) = fs.open(&folder.join(&name)).and_then(|file| file.len()) {
                    found.push((hash, len));
                }
            }
        }
        found.sort_unstable();
        Ok(found)
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

    /// Removes the blob file of `hash`, if there is one, durably: for an
    /// asset being forgotten (`fsck --repair`) because its bytes are
    /// damaged, before its record goes, since a later push of the asset
    /// would take a file found in place as whole ([`Self::adopt`]).
    /// Objects stay: they are written only after their bytes hashed to
    /// their name.
    pub(super) async fn remove(&self, hash: &AssetHash) -> Result<(), CanError> {
        match self {
            Self::Disk { root, fs, .. } => {
                let (fs, path) = (fs.clone(), Self::blob_path(root, hash));
                blocking(move || {
                    match fs.remove_file(&path) {
                        Ok(()) => {}
                        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
                        Err(err) => {
                            return Err(CanError::Storage(format!(
                                "removing {}: {err}",
                                path.display()
                            )))
                        }
                    }
                    let shard = path.parent().expect("a blob file is in its shard folder");
                    fs.sync_dir(shard, SyncPoint::ForgottenBlob)?;
                    Ok(())
                })
                .await
            }
            Self::Memory(map) => {
                map.write().expect("blob map lock").remove(hash);
                Ok(())
            }
            Self::Object { .. } => Ok(()),
        }
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
}

#[cfg(test)]
mod tests;
