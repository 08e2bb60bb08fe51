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
//! The tree is walked on a thread of its own while the files it finds are
//! read and added, so memory does not grow with the tree and the first
//! batch goes in at once.
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
use can_sync::can::store::{load_batch, load_cache};
use can_sync::can::{ByteStream, SharedCan};
use can_sync::clock::now_ms;
use can_sync::pb;
use clap::Args;
use futures::{StreamExt, TryStreamExt};

use super::args::NodeStoreArgs;

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
/// Most files read in one hand-off to a blocking thread. A hand-off per
/// file cost more than the reading: 18M context switches and 434 s of
/// system time at 10M files (PERFORMANCE.md, "Loading").
const READ_CHUNK_FILES: usize = 128;
/// A chunk closes once it holds this many bytes of files, so chunks of
/// large files stay few.
const READ_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
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
    // What the store holds, and the files batched since: an embedded
    // store's batches grow with it.
    let mut held = if embedded {
        can.stats().await?.assets
    } else {
        0
    };
    let batch_files = |held: u64| {
        if embedded {
            load_batch(held, cache)
        } else {
            BATCH_FILES
        }
    };
    let started = Instant::now();
    let mut tally = Tally::default();
    // A mistyped argument fails before anything is added.
    for path in &args.paths {
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    }
    // The tree is walked on a thread of its own while what it found is
    // read and added: at 10M files the walk alone took two minutes and
    // 1.5 GB before the first file went in (PERFORMANCE.md). Small files
    // come through a bounded channel; large ones, few, are kept for the
    // end. The bar grows as files are found.
    let bar = super::report::bytes_bar(0, "adding");
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

    let mut reads = tokio_stream::wrappers::ReceiverStream::new(found_rx)
        .map(|chunk| tokio::task::spawn_blocking(move || read_chunk(chunk)))
        .buffered(CHUNKS_AHEAD);
    let mut batch: Vec<(Found, Bytes)> = Vec::new();
    let mut batch_bytes = 0;
    // One batch is pushed while the next is read: the store commits one
    // while the files of the other come off the disk.
    let mut pushing: Option<tokio::task::JoinHandle<Result<Tally>>> = None;
    while let Some(chunk) = reads.next().await {
        for (file, read) in chunk.context("reading task")? {
            match read {
                Ok(data) => {
                    batch_bytes += data.len() as u64;
                    batch.push((file, data));
                }
                Err(err) => fail(&mut tally, &file.path, &err.to_string()),
            }
            if batch.len() >= batch_files(held) || batch_bytes >= BATCH_BYTES {
                held += batch.len() as u64;
                if let Some(previous) = pushing.take() {
                    tally.add(previous.await.context("push task")??);
                }
                let (can, bar, full) = (can.clone(), bar.clone(), std::mem::take(&mut batch));
                pushing = Some(tokio::spawn(async move { push(&can, full, &bar).await }));
                batch_bytes = 0;
            }
        }
    }
    if let Some(previous) = pushing.take() {
        tally.add(previous.await.context("push task")??);
    }
    tally.add(push(&can, batch, &bar).await?);
    let walked = walker.await.context("walking task")?;
    tally.skipped += walked.skipped;
    for (dir, why) in &walked.unlisted {
        fail(&mut tally, dir, why);
    }
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

/// Files found by the walk and not yet sent to be read: up to
/// [`READ_CHUNK_FILES`] files or [`READ_CHUNK_BYTES`], whichever comes
/// first, read together on one blocking thread.
#[derive(Debug, Default)]
struct ReadChunk {
    files: Vec<Found>,
    bytes: u64,
}

impl ReadChunk {
    /// Adds `file`; the chunk's files once that fills it.
    fn take_if_full(&mut self, file: Found) -> Option<Vec<Found>> {
        self.bytes += file.size;
        self.files.push(file);
        if self.files.len() < READ_CHUNK_FILES && self.bytes < READ_CHUNK_BYTES {
            return None;
        }
        self.bytes = 0;
        Some(std::mem::take(&mut self.files))
    }
}

/// Reads a chunk's files, in order, on the calling (blocking) thread.
fn read_chunk(files: Vec<Found>) -> Vec<(Found, std::io::Result<Bytes>)> {
    files
        .into_iter()
        .map(|file| {
            let read = std::fs::read(&file.path).map(Bytes::from);
            (file, read)
        })
        .collect()
}

/// What the walk of the arguments left besides the small files it sent on.
#[derive(Debug, Default)]
struct Walked {
    /// Files above [`BATCH_FILE_LIMIT`], streamed in one by one at the end.
    large: Vec<Found>,
    /// Symbolic links and other non-files.
    skipped: u64,
    /// Folders (or entries) that could not be read, and why: counted as
    /// failures, the rest of the tree still added.
    unlisted: Vec<(PathBuf, String)>,
}

/// Visits every file under `path` (itself when it is a file) with the name
/// it gets: its path relative to `path`, or its own name for a file
/// argument. Folders are read in name order, so two imports of one tree go
/// in the same order. False when `visit` said to stop.
fn find(
    path: &Path,
    visit: &mut impl FnMut(Found) -> bool,
    skipped: &mut u64,
    unlisted: &mut Vec<(PathBuf, String)>,
) -> bool {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) => {
            unlisted.push((path.to_path_buf(), err.to_string()));
            return true;
        }
    };
    if meta.is_file() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        return visit(Found {
            path: path.to_path_buf(),
            name,
            size: meta.len(),
        });
    }
    if !meta.is_dir() {
        *skipped += 1;
        return true;
    }
    walk(path, path, visit, skipped, unlisted)
}

fn walk(
    root: &Path,
    dir: &Path,
    visit: &mut impl FnMut(Found) -> bool,
    skipped: &mut u64,
    unlisted: &mut Vec<(PathBuf, String)>,
) -> bool {
    let listed = std::fs::read_dir(dir).and_then(|entries| entries.collect::<Result<Vec<_>, _>>());
    let mut entries = match listed {
        Ok(entries) => entries,
        Err(err) => {
            unlisted.push((dir.to_path_buf(), format!("listing the folder: {err}")));
            return true;
        }
    };
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = match entry.file_type() {
            Ok(kind) => kind,
            Err(err) => {
                unlisted.push((path, err.to_string()));
                continue;
            }
        };
        let going_on = if kind.is_dir() {
            walk(root, &path, visit, skipped, unlisted)
        } else if kind.is_file() {
            let size = match entry.metadata() {
                Ok(meta) => meta.len(),
                Err(err) => {
                    unlisted.push((path, err.to_string()));
                    continue;
                }
            };
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let name = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            visit(Found { size, path, name })
        } else {
            *skipped += 1;
            true
        };
        if !going_on {
            return false;
        }
    }
    true
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

/// Hashes a batch of read files and pushes it; each file's answer counted
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
                let bundle = Bundle {
                    hash: AssetHash::of(&data),
                    data,
                    meta: meta_of(&file),
                };
                let verified: VerifiedBundle = bundle.verify().expect("hashed just now");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn found(name: &str, size: u64) -> Found {
        Found {
            path: PathBuf::from(name),
            name: name.to_string(),
            size,
        }
    }

    #[test]
    fn a_read_chunk_closes_at_its_file_count_or_its_bytes() {
        let mut chunk = ReadChunk::default();
        for i in 1..READ_CHUNK_FILES {
            assert_eq!(chunk.take_if_full(found(&format!("f{i}"), 1)), None);
        }
        let full = chunk.take_if_full(found("last", 1)).expect("full by count");
        assert_eq!(full.len(), READ_CHUNK_FILES);
        assert_eq!(full.last().unwrap().name, "last");
        assert!(chunk.files.is_empty());

        // Bytes: a file that crosses the bound closes the chunk with it,
        // and the next chunk starts from nothing.
        assert_eq!(chunk.take_if_full(found("a", READ_CHUNK_BYTES - 1)), None);
        let full = chunk.take_if_full(found("b", 2)).expect("full by bytes");
        assert_eq!(full.len(), 2);
        assert_eq!(chunk.take_if_full(found("c", READ_CHUNK_BYTES - 1)), None);
    }

    #[test]
    fn a_chunk_reads_in_order_and_names_the_file_it_could_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("one"), b"1").unwrap();
        std::fs::write(dir.path().join("three"), b"333").unwrap();
        let at = |name: &str| Found {
            path: dir.path().join(name),
            name: name.to_string(),
            size: 0,
        };
        let read = read_chunk(vec![at("one"), at("gone"), at("three")]);
        let names: Vec<&str> = read.iter().map(|(file, _)| file.name.as_str()).collect();
        assert_eq!(names, ["one", "gone", "three"]);
        assert_eq!(read[0].1.as_ref().unwrap().as_ref(), b"1");
        assert_eq!(
            read[1].1.as_ref().unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        assert_eq!(read[2].1.as_ref().unwrap().as_ref(), b"333");
    }

    #[test]
    fn names_are_paths_relative_to_the_argument() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/c.txt"), b"c").unwrap();
        std::fs::write(dir.path().join("top.json"), b"{}").unwrap();
        let (mut found, mut skipped, mut unlisted) = (Vec::new(), 0, Vec::new());
        let mut visit = |file: Found| {
            found.push(file);
            true
        };
        assert!(find(dir.path(), &mut visit, &mut skipped, &mut unlisted));
        assert!(find(
            &dir.path().join("top.json"),
            &mut visit,
            &mut skipped,
            &mut unlisted
        ));
        assert!(unlisted.is_empty(), "{unlisted:?}");
        let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a/b/c.txt", "top.json", "top.json"]);
        assert_eq!(skipped, 0);
        assert_eq!(meta_of(&found[0]).mime_type, "text/plain");
        assert_eq!(meta_of(&found[1]).mime_type, "application/json");
    }
}
