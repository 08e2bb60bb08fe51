//! `can-sync add [STORE] PATH...`: files and folders into a node's store.
//!
//! Each file becomes one asset named by its path relative to the argument it
//! was found under (a file argument: its own name), with the MIME type its
//! extension suggests. Files up to [`BATCH_FILE_LIMIT`] are read, hashed and
//! pushed in batches ([`Can::push_batch`](can_sync::can::Can::push_batch):
//! one durable commit each in an embedded store, one request to a CAN
//! service); larger ones are hashed, then streamed in
//! ([`Can::write_blob`](can_sync::can::Can::write_blob)) without being held
//! in memory.
//!
//! Small files go in by hash, the asset table's key order, which keeps an
//! embedded store's pace the same however many it holds: a first pass
//! reads and hashes them, a run at a time, and a second reads each run
//! again in hash order and adds it ([`SortedRun`]). A run is bounded by
//! the load's share of memory, and so are its bytes, so the second read
//! comes from the page cache. The tree is walked on a thread of its own
//! while the files it finds are hashed, so a tree larger than a run never
//! sits whole in memory.
//!
//! The summary counts what the store acknowledged: a file that could not be
//! read or stored, or a folder that could not be listed, is named on stderr
//! and makes the command fail (the rest still goes in), so an import that
//! lost anything is never reported as done. Symbolic links are not
//! followed (a link to a folder could loop); they are counted as skipped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use can_sync::asset::{AssetHash, Bundle, VerifiedBundle};
use can_sync::can::store::load_cache;
use can_sync::can::{ByteStream, SharedCan};
use can_sync::clock::now_ms;
use can_sync::pb;
use clap::Args;
use futures::{StreamExt, TryStreamExt};

use super::args::NodeStoreArgs;
use sorted::{Adder, RunBounds, SortedRun, ADDING, HASHING};
use walk::{find, hash_of, read_chunk, ReadChunk, Walked};

mod sorted;
mod walk;

/// Files up to this size travel in batches; larger ones stream alone.
const BATCH_FILE_LIMIT: u64 = 16 * 1024 * 1024;
/// Most files in one batch to a CAN service. An embedded store takes
/// batches that grow with what it holds ([`load_batch`]): one durable
/// commit each, its syncs shared by all their files, and few enough new
/// records that their pages fit the load's database cache (PERFORMANCE.md,
/// "Loading", issue 22).
const BATCH_FILES: usize = 4096;
/// Most bytes in one batch.
const BATCH_BYTES: u64 = 32 * 1024 * 1024;
/// Chunks read at once while a batch fills: reads in flight for a disk
/// whose files are not in the page cache.
const CHUNKS_AHEAD: usize = 8;
/// Chunks found and not yet read: the walk runs this far ahead.
const WALK_AHEAD: usize = 64;

#[derive(Args)]
pub(crate) struct AddArgs {
    #[command(flatten)]
    store: NodeStoreArgs,
    /// Files and folders to add (folders recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Print one JSON line with the result instead of a summary.
    #[arg(long)]
    json: bool,
}

/// One file to import, and the name it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    path: PathBuf,
    name: String,
    size: u64,
    /// What the first pass hashed its bytes to; none until then.
    hashed: Option<AssetHash>,
}

/// What an import did.
#[derive(Debug, Default)]
struct Tally {
    new: u64,
    existing: u64,
    bytes: u64,
    failed: u64,
    skipped: u64,
}

impl Tally {
    /// Adds what another part of the import counted.
    fn add(&mut self, other: Self) {
        self.new += other.new;
        self.existing += other.existing;
        self.bytes += other.bytes;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

pub(crate) async fn run(args: AddArgs) -> Result<()> {
    let cache = load_cache();
    let (can, embedded) = args.store.open_for_load(cache)?;
    // What the store holds: an embedded store's batches grow with it.
    let held = if embedded {
        can.stats().await?.assets
    } else {
        0
    };
    let started = Instant::now();
    let mut tally = Tally::default();
    // A mistyped argument fails before anything is added.
    for path in &args.paths {
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    }
    // The tree is walked on a thread of its own while what it found is
    // hashed: at 10M files the walk alone took two minutes and 1.5 GB
    // (PERFORMANCE.md). Small files come through a bounded channel; large
    // ones, few, are kept for the end. The bar grows as files are found
    // and moves as they are added.
    let bar = super::report::bytes_bar(0, HASHING);
    let (found_tx, found_rx) = tokio::sync::mpsc::channel::<Vec<Found>>(WALK_AHEAD);
    let walker = {
        let (paths, bar) = (args.paths.clone(), bar.clone());
        tokio::task::spawn_blocking(move || {
            let mut walked = Walked::default();
            let mut chunk = ReadChunk::default();
            for path in &paths {
                let mut visit = |file: Found| {
                    bar.inc_length(file.size);
                    if file.size > BATCH_FILE_LIMIT {
                        walked.large.push(file);
                        return true;
                    }
                    // False once the reading side is gone.
                    match chunk.take_if_full(file) {
                        Some(full) => found_tx.blocking_send(full).is_ok(),
                        None => true,
                    }
                };
                if !find(path, &mut visit, &mut walked.skipped, &mut walked.unlisted) {
                    break;
                }
            }
            if !chunk.files.is_empty() {
                // Fails only when the reading side is gone.
                let _ = found_tx.blocking_send(chunk.files);
            }
            walked
        })
    };

    // First pass: each file is read and hashed, and its bytes let go. The
    // hashes sort the run; the second pass reads the run's files again, in
    // that order, and adds them.
    let bounds = RunBounds::for_cache(cache);
    let mut hashed = tokio_stream::wrappers::ReceiverStream::new(found_rx)
        .map(|chunk| tokio::task::spawn_blocking(move || read_chunk(chunk, hash_of)))
        .buffered(CHUNKS_AHEAD);
    let mut adder = Adder {
        can: can.clone(),
        bar: bar.clone(),
        held,
        embedded,
        cache,
    };
    let mut run = SortedRun::default();
    while let Some(chunk) = hashed.next().await {
        for (file, hash) in chunk.context("hashing task")? {
            match hash {
                Ok(hash) => run.push(Found {
                    hashed: Some(hash),
                    ..file
                }),
                Err(err) => fail(&mut tally, &file.path, &err.to_string()),
            }
            if run.is_full(bounds) {
                tally.add(adder.add(std::mem::take(&mut run)).await?);
            }
        }
    }
    tally.add(adder.add(run).await?);
    let walked = walker.await.context("walking task")?;
    tally.skipped += walked.skipped;
    for (dir, why) in &walked.unlisted {
        fail(&mut tally, dir, why);
    }
    bar.set_message(ADDING);
    for file in walked.large {
        match stream_in(&can, &file).await {
            Ok(already) => count(&mut tally, already, file.size),
            Err(err) => fail(&mut tally, &file.path, &format!("{err:#}")),
        }
        bar.inc(file.size);
    }
    super::report::finish_progress(&bar);

    let secs = started.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "added": tally.new,
                "already_present": tally.existing,
                "bytes": tally.bytes,
                "failed": tally.failed,
                "skipped": tally.skipped,
                "secs": secs,
            })
        );
    } else {
        println!(
            "added {} files ({} new, {} already present), {:.1} MB in {:.2} s{}{}",
            tally.new + tally.existing,
            tally.new,
            tally.existing,
            tally.bytes as f64 / 1e6,
            secs,
            if tally.skipped > 0 {
                format!("; {} symbolic links skipped", tally.skipped)
            } else {
                String::new()
            },
            if tally.failed > 0 {
                format!("; {} FAILED", tally.failed)
            } else {
                String::new()
            },
        );
    }
    if tally.failed > 0 {
        bail!("{} of the files were not added (named above)", tally.failed);
    }
    Ok(())
}

/// The metadata a new file gets.
fn meta_of(file: &Found) -> pb::AssetMeta {
    let now = now_ms();
    pb::AssetMeta {
        name: file.name.clone(),
        mime_type: mime_guess::from_path(&file.path)
            .first_or_octet_stream()
            .essence_str()
            .to_string(),
        created_at_ms: now,
        meta_updated_at_ms: now,
        ..Default::default()
    }
}

/// Checks a batch of read files against their hashes and pushes it; each file's answer counted
/// in the tally returned.
async fn push(
    can: &SharedCan,
    batch: Vec<(Found, Bytes)>,
    bar: &indicatif::ProgressBar,
) -> Result<Tally> {
    let mut counted = Tally::default();
    let tally = &mut counted;
    if batch.is_empty() {
        return Ok(counted);
    }
    let (files, verified) = tokio::task::spawn_blocking(move || {
        batch
            .into_iter()
            .map(|(file, data)| {
                let claimed = file.hashed.unwrap_or_else(|| AssetHash::of(&data));
                let bundle = Bundle {
                    hash: claimed,
                    data: data.clone(),
                    meta: meta_of(&file),
                };
                let verified: VerifiedBundle = match bundle.verify() {
                    Ok(verified) => verified,
                    // Changed since the first pass: it goes in as it is now.
                    Err(changed) => Bundle {
                        hash: changed.actual,
                        data,
                        meta: meta_of(&file),
                    }
                    .verify()
                    .expect("hashed just now"),
                };
                (file, verified)
            })
            .unzip::<_, _, Vec<Found>, Vec<VerifiedBundle>>()
    })
    .await
    .context("hashing task")?;
    let answers = match can.push_batch(verified).await {
        Ok(answers) => answers,
        Err(err) => {
            for file in &files {
                fail(tally, &file.path, &err.to_string());
            }
            return Ok(counted);
        }
    };
    for (file, answer) in files.iter().zip(answers) {
        match answer {
            Ok(pushed) => count(tally, pushed.already_existed, file.size),
            Err(err) => fail(tally, &file.path, &err.to_string()),
        }
        bar.inc(file.size);
    }
    Ok(counted)
}

/// A large file: hashed in one pass, streamed into the store in a second
/// (the store checks the hash again as it writes). True when the store
/// already held it.
async fn stream_in(can: &SharedCan, file: &Found) -> Result<bool> {
    let path = file.path.clone();
    let hash = tokio::task::spawn_blocking(move || -> std::io::Result<AssetHash> {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(std::fs::File::open(path)?)?;
        Ok(AssetHash::from(hasher.finalize()))
    })
    .await
    .context("hashing task")??;
    let opened = tokio::fs::File::open(&file.path).await?;
    let body: ByteStream = tokio_util::io::ReaderStream::with_capacity(opened, 1 << 20)
        .map_err(can_sync::can::CanError::from)
        .boxed();
    let pushed = can.write_blob(hash, meta_of(file), body).await?;
    Ok(pushed.already_existed)
}

fn count(tally: &mut Tally, already: bool, size: u64) {
    if already {
        tally.existing += 1;
    } else {
        tally.new += 1;
        tally.bytes += size;
    }
}

fn fail(tally: &mut Tally, path: &Path, why: &str) {
    tally.failed += 1;
    eprintln!("not added: {}: {why}", path.display());
}

/// A file found under `name`, of `size` bytes, for the tests of the passes.
#[cfg(test)]
fn found(name: &str, size: u64) -> Found {
    Found {
        path: PathBuf::from(name),
        name: name.to_string(),
        size,
        hashed: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use can_sync::can::{EmbeddedCan, StoreLimits};

    use super::*;

    /// A file whose bytes changed after the first pass hashed them goes in
    /// under the hash of the bytes read now, counted new; one that did not
    /// change goes in under the first pass's hash.
    #[tokio::test]
    async fn a_file_changed_since_it_was_hashed_goes_in_as_it_is_now() -> Result<()> {
        let can: SharedCan = Arc::new(EmbeddedCan::memory(StoreLimits::default())?);
        let kept = Found {
            hashed: Some(AssetHash::of(b"kept")),
            ..found("kept", 4)
        };
        let changed = Found {
            hashed: Some(AssetHash::of(b"before")),
            ..found("changed", 5)
        };
        let batch = vec![
            (kept, Bytes::from_static(b"kept")),
            (changed, Bytes::from_static(b"after")),
        ];
        let tally = push(&can, batch, &indicatif::ProgressBar::hidden()).await?;
        assert_eq!((tally.new, tally.failed, tally.bytes), (2, 0, 9));
        assert!(can.meta(AssetHash::of(b"kept")).await?.is_some());
        assert!(can.meta(AssetHash::of(b"after")).await?.is_some());
        assert!(can.meta(AssetHash::of(b"before")).await?.is_none());
        Ok(())
    }
}
