//! What a store that keeps neither outboards nor partial assets answers for
//! the operations built on them: [`outboard_by_reading`] reads the asset
//! through and hashes it, [`write_ranges_whole`] takes a large asset's
//! groups only whole and in order. The HTTP client, and any store without
//! a place for either, answer with these.

use std::sync::Arc;

use crate::asset::AssetHash;
use crate::pb;

use super::{store, Can, CanError, GroupStream, Outboard, RangesWritten};

/// [`Can::outboard`] of a store that keeps no outboards: reads the asset
/// through and hashes it, off the async threads.
pub async fn outboard_by_reading<C: Can + ?Sized>(
    can: &C,
    hash: AssetHash,
) -> Result<Option<Outboard>, CanError> {
    use futures::StreamExt as _;
    let mut body = match can.read_blob(hash, 0).await {
        Ok((_, body)) => body,
        Err(CanError::NotFound(_)) => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut hasher = store::ranges::OutboardHasher::default();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        hasher = tokio::task::spawn_blocking(move || {
            hasher.update(&chunk);
            hasher
        })
        .await
        .map_err(|err| CanError::Storage(format!("hashing task failed: {err}")))?;
    }
    let (actual, outboard) = hasher.finalize();
    if actual != hash {
        return Err(CanError::HashMismatch {
            expected: hash,
            actual,
        });
    }
    Ok(Some(outboard))
}

/// [`Can::write_ranges`] of a store that keeps no partial assets: the
/// groups must come whole and in order; each is verified, then streamed into
/// [`Can::write_blob`].
pub async fn write_ranges_whole<C: Can + ?Sized>(
    can: &C,
    meta: pb::AssetMeta,
    outboard: Outboard,
    groups: GroupStream,
) -> Result<RangesWritten, CanError> {
    use futures::StreamExt as _;
    let hash = outboard.hash();
    let outboard = Arc::new(outboard);
    let mut next = 0u64;
    let body = groups
        .then(move |group| {
            let outboard = outboard.clone();
            let expected = next;
            next += 1;
            async move {
                let (index, data) = group?;
                if index != expected {
                    return Err(CanError::Invalid(format!(
                        "this store keeps no partial assets: group {index} came where \
                         group {expected} was due"
                    )));
                }
                tokio::task::spawn_blocking(move || {
                    outboard.verify_group(index, &data)?;
                    Ok(data)
                })
                .await
                .map_err(|err| CanError::Storage(format!("verification task failed: {err}")))?
            }
        })
        .boxed();
    can.write_blob(hash, meta, body)
        .await
        .map(RangesWritten::Whole)
}
