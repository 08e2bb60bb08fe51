//! The source of `loadtest vs-rsync`: the small files and the large file,
//! every byte a pure function of the seed, written to the work folder (what
//! rsync serves) and loaded into can-sync's stores A (what its daemon serves),
//! so every destination is checked against the same files.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bytes::Bytes;
use can_sync::asset::{AssetHash, Bundle};
use can_sync::can::{Can, EmbeddedCan, StoreLimits};
use can_sync::pb;
use futures::{StreamExt, TryStreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::Work;

/// Small files generated and pushed into store A at a time (their pushes
/// share the store's group commits).
const LOAD_CONCURRENCY: usize = 16;
/// Index of the large file in the byte generator (the small files count up from 0).
const LARGE_INDEX: u64 = u64::MAX;

/// One source file and the asset it is.
pub(super) struct Asset {
    /// BLAKE3 of its bytes.
    pub(super) hash: AssetHash,
    /// Where it is.
    pub(super) path: PathBuf,
    /// Its size.
    pub(super) size: u64,
}

/// The generated source: what every destination must end up holding.
pub(super) struct Source {
    /// The small set, in file order.
    pub(super) small: Vec<Asset>,
    /// The large file (a one-element set, so both go through the same code).
    pub(super) large: Vec<Asset>,
}

impl Source {
    pub(super) fn bytes(set: &[Asset]) -> u64 {
        set.iter().map(|a| a.size).sum()
    }
}

/// Writes the source files and pushes each into the store A of its set
/// (`can/a-small`, `can/a-large`), as `can-sync add` would; closes both
/// stores so the daemons can open them.
pub(super) async fn generate(
    work: &Work,
    files: u64,
    size: u64,
    large: u64,
    seed: u64,
) -> Result<Source> {
    let a_small = EmbeddedCan::open(&work.can("a-small"), StoreLimits::default())?;
    let small: Vec<Asset> = futures::stream::iter(0..files)
        .map(|index| {
            let path = work.small.join(format!("f{index:06}.bin"));
            load_file(&a_small, path, "small", seed, index, size)
        })
        .buffered(LOAD_CONCURRENCY)
        .try_collect()
        .await?;
    drop(a_small);
    let a_large = EmbeddedCan::open(&work.can("a-large"), StoreLimits::default())?;
    let path = work.large.join("large.bin");
    let large = load_file(&a_large, path, "large", seed, LARGE_INDEX, large).await?;
    drop(a_large);
    Ok(Source {
        small,
        large: vec![large],
    })
}

/// Generates file `index`, writes it to `path` and pushes it into `store`.
/// The bytes are held in memory once (the large file too: the hash must be
/// known before a push, and this harness has no streaming hasher of its own).
async fn load_file(
    store: &EmbeddedCan,
    path: PathBuf,
    set: &str,
    seed: u64,
    index: u64,
    size: u64,
) -> Result<Asset> {
    let size_usize = usize::try_from(size).context("file size")?;
    let written = path.clone();
    let (data, hash) = tokio::task::spawn_blocking(move || {
        let data = file_bytes(seed, index, size_usize);
        std::fs::write(&written, &data)
            .with_context(|| format!("writing {}", written.display()))?;
        let hash = AssetHash::of(&data);
        anyhow::Ok((data, hash))
    })
    .await
    .context("generator task")??;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let now = can_sync::clock::now_ms();
    let meta = pb::AssetMeta {
        name: format!("{set}/{name}"),
        mime_type: "application/octet-stream".into(),
        created_at_ms: now,
        meta_updated_at_ms: now,
        ..Default::default()
    };
    store
        .push(Bundle {
            hash,
            data: Bytes::from(data),
            meta,
        })
        .await
        .with_context(|| format!("loading {} into store A", path.display()))?;
    Ok(Asset { hash, path, size })
}

/// The bytes of file `index`: random, so incompressible, and the same for
/// the same seed.
pub(super) fn file_bytes(seed: u64, index: u64, size: usize) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed.rotate_left(32) ^ index);
    let mut data = vec![0u8; size];
    rng.fill_bytes(&mut data);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_bytes_are_deterministic_and_distinct() {
        assert_eq!(file_bytes(1, 3, 4096), file_bytes(1, 3, 4096));
        assert_ne!(file_bytes(1, 3, 4096), file_bytes(1, 4, 4096));
        assert_ne!(file_bytes(1, 3, 4096), file_bytes(2, 3, 4096));
    }
}
