//! `add`'s second pass: runs of small files, hashed by the first, added
//! to the store in hash order.

use anyhow::{Context, Result};
use bytes::Bytes;
use can_sync::can::store::load_batch;
use can_sync::can::SharedCan;
use futures::StreamExt;

use super::walk::{read_chunk, ReadChunk};
use super::{fail, push, Found, Tally, BATCH_BYTES, BATCH_FILES, CHUNKS_AHEAD};

/// What the progress bar says while a run's files are hashed, and while
/// they are added.
pub(super) const HASHING: &str = "hashing";
pub(super) const ADDING: &str = "adding";

/// How much one sorted run holds: entries (a hash, a path and a name)
/// taking no more than half the load's database cache, and no more file
/// bytes than the whole cache, so that the second read of a run finds its
/// files still in the page cache. With 4 GiB and short paths, a run holds
/// about 12M files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RunBounds {
    entry_bytes: usize,
    bytes: u64,
}

impl RunBounds {
    /// The bounds for a load whose database cache is `cache` bytes (a
    /// quarter of the machine's memory, 1 to 4 GiB:
    /// [`load_cache`](can_sync::can::store::load_cache)). A load in key
    /// order touches few of its pages, so the cache's memory is mostly
    /// the run's to use.
    pub(super) fn for_cache(cache: usize) -> Self {
        Self {
            entry_bytes: cache / 2,
            bytes: cache as u64,
        }
    }
}

/// The memory a file's entry in a run takes: the entry, its path and its
/// name, and the allocator's overhead of the two.
fn entry_bytes(file: &Found) -> usize {
    std::mem::size_of::<Found>() + file.path.as_os_str().len() + file.name.len() + 32
}

/// Files hashed and waiting to be added in hash order.
///
/// The asset table is a B-tree keyed by hash. Files added in the order
/// they are found land on random leaves, and each commit rewrites about a
/// leaf per file, and those cost more as the store grows: at 10M files the
/// last million went in at 0.64–0.80 of the pace of the first. Added in hash
/// order, each batch extends the leaves the one before it wrote, so a
/// file costs the same however many the store holds (PERFORMANCE.md,
/// "Loading in key order"). That holds while a run is large beside what
/// the store already holds: a run much smaller than the store spreads
/// over its leaves as thinly as files in any order, and then reading each
/// file twice buys nothing.
#[derive(Debug, Default)]
pub(super) struct SortedRun {
    /// Files the first pass hashed (`hashed` set).
    files: Vec<Found>,
    entry_bytes: usize,
    bytes: u64,
}

impl SortedRun {
    pub(super) fn push(&mut self, file: Found) {
        self.bytes += file.size;
        self.entry_bytes += entry_bytes(&file);
        self.files.push(file);
    }

    pub(super) fn is_full(&self, bounds: RunBounds) -> bool {
        self.entry_bytes >= bounds.entry_bytes || self.bytes >= bounds.bytes
    }

    /// The run's files in hash order, cut into the chunks they are read
    /// in as they are asked for, so the run is not held twice. Files of
    /// one content go in path order, so two imports of a tree name a
    /// shared content alike.
    fn into_read_chunks(mut self) -> impl Iterator<Item = Vec<Found>> {
        self.files
            .sort_unstable_by(|a, b| (a.hashed, &a.path).cmp(&(b.hashed, &b.path)));
        let mut files = self.files.into_iter();
        std::iter::from_fn(move || {
            let mut chunk = ReadChunk::default();
            for file in files.by_ref() {
                if let Some(full) = chunk.take_if_full(file) {
                    return Some(full);
                }
            }
            (!chunk.files.is_empty()).then_some(chunk.files)
        })
    }
}

/// The second pass: adds sorted runs of files to the store in batches.
pub(super) struct Adder {
    pub(super) can: SharedCan,
    pub(super) bar: indicatif::ProgressBar,
    /// What the store holds, counting the batches sent since.
    pub(super) held: u64,
    pub(super) embedded: bool,
    pub(super) cache: usize,
}

impl Adder {
    /// Files in one batch: an embedded store takes batches that grow with
    /// what it holds ([`load_batch`]), a CAN service [`BATCH_FILES`].
    fn batch_files(&self) -> usize {
        if self.embedded {
            load_batch(self.held, self.cache)
        } else {
            BATCH_FILES
        }
    }

    /// Reads the run's files again, in hash order, and adds them. A file
    /// that changed since it was hashed goes in as it is now (its hash is
    /// taken again), only out of order.
    pub(super) async fn add(&mut self, run: SortedRun) -> Result<Tally> {
        let mut tally = Tally::default();
        if run.files.is_empty() {
            return Ok(tally);
        }
        self.bar.set_message(ADDING);
        let mut reads = futures::stream::iter(run.into_read_chunks())
            .map(|chunk| tokio::task::spawn_blocking(move || read_chunk(chunk, Bytes::from)))
            .buffered(CHUNKS_AHEAD);
        let mut batch: Vec<(Found, Bytes)> = Vec::new();
        let mut batch_bytes = 0;
        // One batch is pushed while the next is read: the store commits one
        // while the files of the other come off the disk.
        let mut pushing: Option<tokio::task::JoinHandle<Result<Tally>>> = None;
        while let Some(chunk) = reads.next().await {
            for (mut file, read) in chunk.context("reading task")? {
                match read {
                    Ok(data) => {
                        // Counted as read, in case it changed since the walk.
                        file.size = data.len() as u64;
                        batch_bytes += data.len() as u64;
                        batch.push((file, data));
                    }
                    Err(err) => fail(&mut tally, &file.path, &err.to_string()),
                }
                if batch.len() >= self.batch_files() || batch_bytes >= BATCH_BYTES {
                    self.held += batch.len() as u64;
                    if let Some(previous) = pushing.take() {
                        tally.add(previous.await.context("push task")??);
                    }
                    let (can, bar) = (self.can.clone(), self.bar.clone());
                    let full = std::mem::take(&mut batch);
                    pushing = Some(tokio::spawn(async move { push(&can, full, &bar).await }));
                    batch_bytes = 0;
                }
            }
        }
        if let Some(previous) = pushing.take() {
            tally.add(previous.await.context("push task")??);
        }
        self.held += batch.len() as u64;
        tally.add(push(&self.can, batch, &self.bar).await?);
        self.bar.set_message(HASHING);
        Ok(tally)
    }
}

#[cfg(test)]
mod tests {
    use can_sync::asset::AssetHash;

    use super::super::found;
    use super::super::walk::READ_CHUNK_FILES;
    use super::*;

    #[test]
    fn a_run_is_read_back_in_hash_order_and_closes_at_its_bounds() {
        let entry = entry_bytes(&found("z", 1));
        let bounds = RunBounds {
            entry_bytes: 3 * entry,
            bytes: 100,
        };
        let mut run = SortedRun::default();
        // Two files of one content: they go in path order.
        let contents = ["c", "a", "b", "a"];
        let names = ["z", "y", "x", "w"];
        for (content, name) in contents.iter().zip(names).take(3) {
            assert!(!run.is_full(bounds));
            run.push(Found {
                hashed: Some(AssetHash::of(content.as_bytes())),
                ..found(name, 1)
            });
        }
        assert!(run.is_full(bounds), "full by the memory of its entries");
        run.push(Found {
            hashed: Some(AssetHash::of(b"a")),
            ..found(names[3], 1)
        });

        let read: Vec<Found> = run.into_read_chunks().flatten().collect();
        let hashes: Vec<AssetHash> = read
            .iter()
            .map(|file| {
                let at = names.iter().position(|n| *n == file.name).unwrap();
                AssetHash::of(contents[at].as_bytes())
            })
            .collect();
        assert!(hashes.is_sorted(), "not in hash order: {read:?}");
        let of_a: Vec<&str> = read
            .iter()
            .filter(|file| file.name == "y" || file.name == "w")
            .map(|file| file.name.as_str())
            .collect();
        assert_eq!(of_a, ["w", "y"], "one content's files in path order");

        let mut run = SortedRun::default();
        run.push(Found {
            hashed: Some(AssetHash::of(b"big")),
            ..found("big", 100)
        });
        assert!(run.is_full(bounds), "full by bytes");
        // A run longer than a read chunk is read in several, in order.
        let mut run = SortedRun::default();
        for i in 0..READ_CHUNK_FILES as u64 + 1 {
            run.push(Found {
                hashed: Some(AssetHash::of(&i.to_le_bytes())),
                ..found(&format!("f{i}"), 1)
            });
        }
        let chunks: Vec<Vec<Found>> = run.into_read_chunks().collect();
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [READ_CHUNK_FILES, 1]
        );
    }
}
