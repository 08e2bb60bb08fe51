//! Reading blobs back: whole, for a pull, or as a stream from an offset,
//! for a large asset or a resumed transfer. A blob file that is not a
//! regular file of the size its record says is damage, found without
//! reading a byte ([`open_blob_file`]).

use std::io::Seek as _;
use std::path::Path;

use bytes::Bytes;
use futures::{stream, StreamExt};

use super::{Blobs, READ_CHUNK};
use crate::asset::AssetHash;
use crate::can::store::blocking;
use crate::can::store::fs::{StoreFile, StoreFs};
use crate::can::store::objects::ObjectError;
use crate::can::{ByteStream, CanError};

impl Blobs {
    /// The whole blob of `hash`, `size` bytes as its record says, in
    /// memory. A file that is not a regular one, or not of that size, is
    /// damage: it is logged for `fsck` to name and answered as not found,
    /// unread (a sparse file of terabytes would not fit in memory), so the
    /// other assets of a pull go on.
    pub(in crate::can::store) async fn read_all(
        &self,
        hash: &AssetHash,
        size: u64,
    ) -> Result<Bytes, CanError> {
        match self {
            Self::Disk { root, fs, .. } => {
                let (fs, path, hash) = (fs.clone(), Self::blob_path(root, hash), *hash);
                blocking(move || {
                    let mut file = match open_blob_file(&*fs, &path, size) {
                        Ok(file) => file,
                        Err(BlobFileError::Missing) => return Err(CanError::NotFound(hash)),
                        Err(BlobFileError::Damaged(why)) => {
                            tracing::warn!(path = %path.display(), "a damaged blob file: {why}; run fsck");
                            return Err(CanError::NotFound(hash));
                        }
                        Err(BlobFileError::Io(err)) => return Err(err.into()),
                    };
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
    pub(in crate::can::store) async fn read_from(
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
                    let damaged = |what: String| {
                        CanError::Storage(format!("blob file {}: {what}", path.display()))
                    };
                    let mut file = match open_blob_file(&*fs, &path, size) {
                        Ok(file) => file,
                        Err(BlobFileError::Missing) => return Err(CanError::NotFound(hash)),
                        Err(BlobFileError::Damaged(why)) => return Err(damaged(why)),
                        Err(BlobFileError::Io(err)) => return Err(damaged(err.to_string())),
                    };
                    file.seek(std::io::SeekFrom::Start(offset))
                        .map_err(|err| damaged(err.to_string()))?;
                    Ok((file, size.saturating_sub(offset)))
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

/// Why a blob file could not be opened to read.
enum BlobFileError {
    /// There is none.
    Missing,
    /// It is not a regular file, or not the size its record says: damage,
    /// found without reading a byte (a sparse file of terabytes would
    /// otherwise be read whole to find it out).
    Damaged(String),
    /// Another failure of the file system.
    Io(std::io::Error),
}

/// The blob file at `path`, opened to read, when it is a regular file of
/// the `size` bytes its record says.
fn open_blob_file(
    fs: &dyn StoreFs,
    path: &Path,
    size: u64,
) -> Result<Box<dyn StoreFile>, BlobFileError> {
    let file = fs.open(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => BlobFileError::Missing,
        std::io::ErrorKind::InvalidInput => BlobFileError::Damaged(err.to_string()),
        _ => BlobFileError::Io(err),
    })?;
    let len = file.len().map_err(BlobFileError::Io)?;
    if len != size {
        return Err(BlobFileError::Damaged(format!(
            "{len} bytes where its record says {size}"
        )));
    }
    Ok(file)
}

/// The next `left` bytes of `file` in chunks of [`READ_CHUNK`] (the last
/// one shorter), each read by one blocking call straight into a buffer of
/// its own size: no copy between the kernel's and the caller's (tokio's own
/// file reads go through a buffer of their own), no zeroing first, and no
/// chunk holding more memory than its bytes. A file shorter than `left` ends
/// where it ends.
pub(super) fn file_chunks(
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
