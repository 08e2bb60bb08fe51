//! Large assets received in part, kept across dropped connections and
//! restarts so that the next transfer sends only what is missing, and the
//! outboards a store keeps for the large assets it holds.
//!
//! A partial asset is two files in `DIR/partial/`:
//! - `<hex>.data`: the asset's bytes at their offsets, written group by
//!   group (a sparse file: holes where groups are missing);
//! - `<hex>.state`: its size, its verified outboard and the set of groups
//!   written, rewritten (to a new name, then renamed over) every
//!   [`STATE_EVERY`] groups and when a transfer ends.
//!
//! Invariants:
//! - **never visible until whole**: a partial asset is in no record and
//!   under no blob name; the store lists it only once every group is held,
//!   when its data file is synced and renamed to its hash's name like any
//!   streamed blob (`blobs.rs`), and committed;
//! - **every group is verified before it is written** against the outboard,
//!   which was verified against the hash ([`super::ranges`]);
//! - **what a state file claims is checked again** by the first process
//!   that resumes it (the group's bytes are read back and verified), so a
//!   state file newer than its data (a power cut, a disk that lied) costs
//!   bytes, never a wrong asset. That is why neither file is synced while
//!   the asset is partial: SIGKILL keeps both (the page cache), and a power
//!   cut at worst loses progress;
//! - **bounded**: held bytes count against the store's quota for
//!   unfinished transfers ([`super::partial::PartialQuota`]), together with
//!   transfers in flight. A group that would cross it first evicts idle
//!   partial assets, least recently written first, and fails its transfer
//!   when that is not enough. A partial asset not written for
//!   [`StoreLimits::partial_expiry`](super::StoreLimits::partial_expiry) is
//!   dropped (at open, and whenever another one starts);
//! - **one writer per asset**: a partial asset being written is *busy*; a
//!   second transfer of it is refused as unavailable (the node's claims make
//!   that rare: [`crate::engine::claims`]).
//!
//! Outboards of whole blobs live in `DIR/outboards/<hex[0..2]>/<hex>`: kept
//! when a blob is written, computed from the blob when missing. They are a
//! cache: never synced, checked against the hash each time they are read.
//!
//! # Layout
//!
//! - `mod.rs`: [`Partials`], the partial assets of a store folder: loading,
//!   expiry, eviction, and starting a transfer ([`Partials::begin`]);
//! - `writing.rs`: one transfer writing groups ([`Writing`]) and a whole
//!   asset on its way into the store ([`Completing`]);
//! - `outboards.rs`: the outboard cache of whole blobs.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::partial::{PartialQuota, QuotaShare};
use super::ranges::{group_range, GroupSet, Outboard};
use crate::asset::AssetHash;
use crate::can::CanError;
use crate::clock::now_ms;

mod outboards;
mod writing;

use writing::Flusher;
pub(super) use writing::{Completing, Writing};

/// Groups written between two rewrites of a state file: what a killed
/// process can lose is at most this many groups, plus those queued.
pub(super) const STATE_EVERY: u64 = 8;

/// The first bytes of a state file.
const STATE_MAGIC: &[u8; 8] = b"CSPART1\n";

/// The partial assets of one store folder.
pub(super) struct Partials {
    /// The store folder.
    store_dir: PathBuf,
    /// `DIR/partial/`.
    dir: PathBuf,
    /// `DIR/outboards/`.
    outboards: PathBuf,
    quota: PartialQuota,
    expiry: Duration,
    entries: Mutex<HashMap<AssetHash, Entry>>,
    /// Outboards being computed ([`compute_later`](Self::compute_later)).
    computing: Mutex<HashSet<AssetHash>>,
}

/// One partial asset, idle or being written.
struct Entry {
    outboard: Arc<Outboard>,
    held: GroupSet,
    /// When a group was last written (Unix ms).
    written_ms: i64,
    /// A transfer is writing it: its state is with that transfer.
    busy: bool,
    /// Its held groups were read back and verified by this process.
    checked: bool,
    /// The quota its held bytes take.
    share: QuotaShare,
    /// Bytes of its held groups, kept current by the transfer writing it
    /// (whose own set of held groups this entry's `held` is not, while
    /// busy): what `status` shows of its progress.
    progress: Arc<AtomicU64>,
}

/// One partial asset, for `status`: how far along it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartialAsset {
    /// Its hash, hex.
    pub hash: String,
    /// Its size.
    pub size: u64,
    /// Bytes of it held now: verified as they were written, or (for an
    /// asset no transfer has resumed since the store opened) as its saved
    /// state claims, which the next transfer checks.
    pub held: u64,
    /// A transfer is writing it now.
    pub receiving: bool,
    /// When a group of it was last written (Unix ms).
    pub written_ms: i64,
}

/// What a partial asset holds, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartialStats {
    /// Partial assets kept.
    pub assets: u64,
    /// Bytes of their held groups.
    pub bytes: u64,
}

impl Partials {
    /// The partial assets kept in `store_dir`: loads every state file, drops
    /// expired and broken ones (and data files with no state).
    pub(super) fn open(
        store_dir: &Path,
        quota: PartialQuota,
        expiry: Duration,
    ) -> Result<Self, CanError> {
        let dir = store_dir.join("partial");
        let outboards = store_dir.join("outboards");
        for folder in [&dir, &outboards] {
            match std::fs::create_dir(folder) {
                Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err.into()),
                _ => {}
            }
        }
        let partials = Self {
            store_dir: store_dir.to_path_buf(),
            dir,
            outboards,
            quota,
            expiry,
            entries: Mutex::new(HashMap::new()),
            computing: Mutex::default(),
        };
        let mut stems = Vec::new();
        for found in std::fs::read_dir(&partials.dir)? {
            let name = found?.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".state") {
                stems.push(stem.to_owned());
            } else if !name.ends_with(".data") {
                // A state file cut while renamed: nothing refers to it.
                remove_quietly(&partials.dir.join(&*name));
            }
        }
        {
            let mut entries = partials.entries.lock().expect("partials lock");
            for stem in stems {
                let loaded = stem
                    .parse::<AssetHash>()
                    .ok()
                    .and_then(|hash| Some((hash, partials.load_state(hash).ok()?)));
                match loaded {
                    Some((hash, entry)) => {
                        entries.insert(hash, entry);
                    }
                    None => partials.remove_files_of_stem(&stem),
                }
            }
        }
        // Data files whose state never made it.
        for found in std::fs::read_dir(&partials.dir)? {
            let name = found?.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".data") {
                if !partials.dir.join(format!("{stem}.state")).exists() {
                    remove_quietly(&partials.dir.join(&*name));
                }
            }
        }
        partials.expire();
        Ok(partials)
    }

    fn data_path(&self, hash: &AssetHash) -> PathBuf {
        self.dir.join(format!("{}.data", hash.to_hex()))
    }

    fn state_path(&self, hash: &AssetHash) -> PathBuf {
        self.dir.join(format!("{}.state", hash.to_hex()))
    }

    fn outboard_path(&self, hash: &AssetHash) -> PathBuf {
        let hex = hash.to_hex();
        self.outboards.join(&hex[..2]).join(hex)
    }

    fn remove_files_of_stem(&self, stem: &str) {
        for suffix in ["data", "state"] {
            remove_quietly(&self.dir.join(format!("{stem}.{suffix}")));
        }
    }

    /// Reads a state file. Its held bytes take their share of the quota
    /// even past it: they are on disk already.
    fn load_state(&self, hash: AssetHash) -> Result<Entry, CanError> {
        let raw = std::fs::read(self.state_path(&hash))?;
        let broken = || CanError::Storage(format!("broken partial state of {hash}"));
        let header = 8 + 8 + 8 + 8;
        if raw.len() < header || &raw[..8] != STATE_MAGIC {
            return Err(broken());
        }
        let word = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().expect("8 bytes"));
        let (size, written_ms, cv_bytes) = (word(8), word(16) as i64, word(24) as usize);
        let cvs_end = header.checked_add(cv_bytes).ok_or_else(broken)?;
        let cvs = raw.get(header..cvs_end).ok_or_else(broken)?;
        let outboard = Outboard::decode(hash, size, cvs).map_err(|_| broken())?;
        let held = GroupSet::decode(outboard.groups(), &raw[cvs_end..]).ok_or_else(broken)?;
        let bytes = held_bytes(&outboard, &held);
        let mut share = self.quota.share();
        share.grow_unchecked(bytes);
        Ok(Entry {
            outboard: Arc::new(outboard),
            held,
            written_ms,
            busy: false,
            checked: false,
            share,
            progress: Arc::new(AtomicU64::new(bytes)),
        })
    }

    /// Drops partial assets idle for longer than the expiry.
    fn expire(&self) {
        let oldest = now_ms().saturating_sub(self.expiry.as_millis() as i64);
        let mut entries = self.entries.lock().expect("partials lock");
        let expired: Vec<AssetHash> = entries
            .iter()
            .filter(|(_, entry)| !entry.busy && entry.written_ms < oldest)
            .map(|(hash, _)| *hash)
            .collect();
        for hash in expired {
            tracing::info!(%hash, "dropping a partial asset not written for too long");
            entries.remove(&hash);
            self.remove_files_of_stem(&hash.to_hex());
        }
    }

    /// Drops the idle partial asset written least recently; false when
    /// there is none. What frees room when the quota for unfinished
    /// transfers is full ([`PartialQuota::set_evictor`]).
    fn evict_oldest(&self) -> bool {
        let mut entries = self.entries.lock().expect("partials lock");
        let oldest = entries
            .iter()
            .filter(|(_, entry)| !entry.busy)
            .min_by_key(|(_, entry)| entry.written_ms)
            .map(|(hash, _)| *hash);
        let Some(hash) = oldest else {
            return false;
        };
        tracing::info!(%hash, "dropping an idle partial asset to make room for a transfer");
        entries.remove(&hash);
        self.remove_files_of_stem(&hash.to_hex());
        true
    }

    /// Lets the store's quota drop idle partial assets when a transfer
    /// needs room, whether it writes groups or a whole blob.
    pub(super) fn give_way_when_full(self: &Arc<Self>) {
        let partials = Arc::downgrade(self);
        self.quota.set_evictor(Box::new(move || {
            partials
                .upgrade()
                .is_some_and(|partials| partials.evict_oldest())
        }));
    }

    /// Drops the partial asset of `hash` unless a transfer writes it: the
    /// asset was stored whole another way.
    pub(super) fn discard(&self, hash: &AssetHash) {
        let mut entries = self.entries.lock().expect("partials lock");
        if entries.get(hash).is_some_and(|entry| !entry.busy) {
            entries.remove(hash);
            self.remove_files_of_stem(&hash.to_hex());
        }
    }

    /// What is kept, for `status`.
    pub(super) fn stats(&self) -> PartialStats {
        // A node nobody sends to still drops what expired.
        self.expire();
        let entries = self.entries.lock().expect("partials lock");
        PartialStats {
            assets: entries.len() as u64,
            bytes: entries
                .values()
                .map(|entry| entry.progress.load(Ordering::Relaxed))
                .sum(),
        }
    }

    /// At most `limit` partial assets: those being received first, then
    /// the most recently written.
    pub(super) fn list(&self, limit: usize) -> Vec<PartialAsset> {
        let entries = self.entries.lock().expect("partials lock");
        let mut assets: Vec<PartialAsset> = entries
            .iter()
            .map(|(hash, entry)| PartialAsset {
                hash: hash.to_hex(),
                size: entry.outboard.size(),
                held: entry.progress.load(Ordering::Relaxed),
                receiving: entry.busy,
                written_ms: entry.written_ms,
            })
            .collect();
        assets.sort_by_key(|asset| std::cmp::Reverse((asset.receiving, asset.written_ms)));
        assets.truncate(limit);
        assets
    }

    /// The groups a partial asset of `hash` lacks, `None` when there is
    /// none, it is being written, or it lacks nothing (a transfer of it
    /// then completes at once). What its state claims is trusted here and
    /// checked when a transfer resumes it ([`begin`](Self::begin)): a claim
    /// that does not hold costs a later transfer those groups, never a
    /// wrong asset.
    pub(super) fn missing(&self, hash: &AssetHash) -> Option<Vec<Range<u64>>> {
        let entries = self.entries.lock().expect("partials lock");
        let entry = entries.get(hash).filter(|entry| !entry.busy)?;
        (!entry.held.is_full()).then(|| entry.held.missing())
    }

    /// The groups of `claimed` whose bytes on disk verify.
    fn verify_held(&self, outboard: &Outboard, claimed: &GroupSet) -> GroupSet {
        let mut verified = GroupSet::empty(claimed.groups());
        let Ok(file) = File::open(self.data_path(&outboard.hash())) else {
            return verified;
        };
        let mut buffer = Vec::new();
        for index in claimed.iter() {
            let range = group_range(outboard.size(), index);
            buffer.resize((range.end - range.start) as usize, 0);
            if file.read_exact_at(&mut buffer, range.start).is_ok()
                && outboard.verify_group(index, &buffer).is_ok()
            {
                verified.insert(index);
            }
        }
        verified
    }

    /// Starts writing groups of `outboard`'s asset: resumes its partial
    /// asset or starts one. Refused while another transfer writes it.
    /// Blocking: what a state written by another process claims is read
    /// back and verified first.
    ///
    /// An outboard proves every group's value but not the size (BLAKE3's
    /// parent nodes carry no length), so two outboards with the same values
    /// may differ in size, and only the last group can tell which is true:
    /// the partial asset then keeps its other groups and takes the new size,
    /// and its last group is asked for again.
    pub(super) fn begin(self: &Arc<Self>, outboard: Outboard) -> Result<Writing, CanError> {
        let hash = outboard.hash();
        let resumed = {
            let mut entries = self.entries.lock().expect("partials lock");
            match entries.get_mut(&hash) {
                Some(entry) if entry.busy => {
                    return Err(CanError::Unavailable(format!(
                        "{hash} is being received by another transfer"
                    )))
                }
                Some(entry) if entry.outboard.encoded_cvs() == outboard.encoded_cvs() => {
                    if entry.outboard.size() != outboard.size() {
                        entry.held.remove(outboard.groups() - 1);
                        entry.outboard = Arc::new(outboard.clone());
                    }
                    entry.busy = true;
                    // The entry stays, busy, so that no other transfer opens
                    // its files; its share of the quota moves to this one.
                    let share = std::mem::replace(&mut entry.share, self.quota.share());
                    let progress = entry.progress.clone();
                    Ok((
                        entry.held.clone(),
                        entry.checked,
                        share,
                        entry.written_ms,
                        progress,
                    ))
                }
                Some(_) => {
                    // Values that cannot both merge to one hash: not ours
                    // to judge here, and not worth another's progress.
                    return Err(CanError::Invalid(format!(
                        "an outboard of {hash} unlike the partial asset held"
                    )));
                }
                None => {
                    let progress = Arc::new(AtomicU64::new(0));
                    entries.insert(
                        hash,
                        Entry {
                            outboard: Arc::new(outboard.clone()),
                            held: GroupSet::empty(outboard.groups()),
                            written_ms: now_ms(),
                            busy: true,
                            checked: true,
                            share: self.quota.share(),
                            progress: progress.clone(),
                        },
                    );
                    Err(progress)
                }
            }
        };
        if resumed.is_err() {
            self.expire();
        }
        let path = self.data_path(&hash);
        let opened = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => Ok((file, true)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map(|file| (file, false)),
            Err(err) => Err(err),
        };
        let (file, existed) = match opened {
            Ok(opened) => opened,
            Err(err) => {
                self.release(hash, None);
                return Err(err.into());
            }
        };
        let (mut held, checked, share, written_ms, progress) = resumed.unwrap_or_else(|progress| {
            (
                GroupSet::empty(outboard.groups()),
                true,
                self.quota.share(),
                now_ms(),
                progress,
            )
        });
        if !existed {
            // Its bytes are gone, whatever its state says.
            held = GroupSet::empty(outboard.groups());
        }
        let flusher = match Flusher::new(&file) {
            Ok(flusher) => flusher,
            Err(err) => {
                self.release(hash, None);
                return Err(err.into());
            }
        };
        let mut writing = Writing {
            partials: self.clone(),
            outboard: Arc::new(outboard),
            file,
            held,
            share,
            unsaved: 0,
            written_ms,
            finished: false,
            flusher,
            progress,
        };
        if !checked && existed {
            writing.held = self.verify_held(&writing.outboard, &writing.held);
        }
        // The share counts what is held now, whatever came before.
        let bytes = held_bytes(&writing.outboard, &writing.held);
        let counted = writing.share.bytes();
        if counted > bytes {
            writing.share.shrink(counted - bytes);
        } else {
            writing.share.grow_unchecked(bytes - counted);
        }
        writing.progress.store(bytes, Ordering::Relaxed);
        Ok(writing)
    }

    /// Puts a partial asset back as idle, with the state its transfer left
    /// (`None`: it has none, its files are gone).
    fn release(&self, hash: AssetHash, entry: Option<Entry>) {
        let mut entries = self.entries.lock().expect("partials lock");
        match entry {
            Some(entry) => {
                entries.insert(hash, entry);
            }
            None => {
                entries.remove(&hash);
            }
        }
    }
}

/// Removes a file no longer needed. One already gone is fine; a failure
/// is logged, and whatever is left goes at the store's next open.
fn remove_quietly(path: &Path) {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), %err, "could not remove a partial asset's file")
        }
        _ => {}
    }
}

/// The bytes of the held groups.
fn held_bytes(outboard: &Outboard, held: &GroupSet) -> u64 {
    held.iter()
        .map(|index| {
            let range = group_range(outboard.size(), index);
            range.end - range.start
        })
        .sum()
}

#[cfg(test)]
// Runs of groups are ranges: a list of one is a list of one run.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use bytes::Bytes;
    use futures::StreamExt as _;

    use super::super::ranges::{OutboardHasher, RangeError, GROUP_BYTES};
    use super::super::{EmbeddedCan, StoreLimits};
    use super::*;
    use crate::can::{Can, RangesWritten};
    use crate::pb;

    fn asset(groups: u64, seed: u8) -> (Bytes, Outboard) {
        let data: Vec<u8> = (0..groups * GROUP_BYTES - 100)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let mut hasher = OutboardHasher::default();
        hasher.update(&data);
        (Bytes::from(data), hasher.finalize().1)
    }

    fn groups_of(data: &Bytes, indices: impl IntoIterator<Item = u64>) -> crate::can::GroupStream {
        let size = data.len() as u64;
        let groups: Vec<_> = indices
            .into_iter()
            .map(|index| {
                let range = group_range(size, index);
                Ok((index, data.slice(range.start as usize..range.end as usize)))
            })
            .collect();
        futures::stream::iter(groups).boxed()
    }

    async fn read_back(store: &EmbeddedCan, hash: AssetHash) -> Vec<u8> {
        let (_, mut body) = store.read_blob(hash, 0).await.unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    /// Groups written by one transfer survive the store's restart; the
    /// next transfer is told what is missing, sends only that, and the asset
    /// appears only once it is whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partial_asset_survives_a_restart_and_completes() {
        let dir = tempfile::tempdir().unwrap();
        let (data, outboard) = asset(6, 1);
        let hash = outboard.hash();
        {
            let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
            let written = store
                .write_ranges(
                    pb::AssetMeta::default(),
                    outboard.clone(),
                    groups_of(&data, [0, 1, 2, 4]),
                )
                .await
                .unwrap();
            assert_eq!(written, RangesWritten::Partial { held: 4, groups: 6 });
            assert!(
                store.meta(hash).await.unwrap().is_none(),
                "not visible until whole"
            );
            assert_eq!(
                store.partial_stats().await.unwrap(),
                PartialStats {
                    assets: 1,
                    bytes: 4 * GROUP_BYTES
                }
            );
        }
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        assert_eq!(
            store.resume_points(&[hash]).await.unwrap(),
            vec![(hash, vec![3..4, 5..6])]
        );
        let written = store
            .write_ranges(pb::AssetMeta::default(), outboard, groups_of(&data, [3, 5]))
            .await
            .unwrap();
        assert!(matches!(written, RangesWritten::Whole(pushed) if !pushed.already_existed));
        assert_eq!(read_back(&store, hash).await, data);
        assert!(store.resume_points(&[hash]).await.unwrap().is_empty());
        assert_eq!(
            store.partial_stats().await.unwrap(),
            PartialStats::default()
        );
        assert_eq!(
            store
                .outboard(hash)
                .await
                .unwrap()
                .unwrap()
                .encoded_cvs()
                .len(),
            6 * 32,
            "the outboard is kept to serve ranges onward"
        );
    }

    /// `status` sees a partial asset's progress while a transfer writes it,
    /// not only once the transfer ends, and again after a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partial_asset_shows_its_progress_while_it_is_received() {
        let dir = tempfile::tempdir().unwrap();
        let (data, outboard) = asset(6, 2);
        let hash = outboard.hash();
        let store = Arc::new(EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap());
        let (groups, rest) = futures::channel::mpsc::unbounded();
        let send = |index: u64| {
            let range = group_range(data.len() as u64, index);
            groups
                .unbounded_send(Ok((
                    index,
                    data.slice(range.start as usize..range.end as usize),
                )))
                .unwrap();
        };
        send(0);
        send(1);
        let receiving = tokio::spawn({
            let (store, outboard) = (store.clone(), outboard.clone());
            async move {
                store
                    .write_ranges(pb::AssetMeta::default(), outboard, rest.boxed())
                    .await
            }
        });
        let expected = |held: u64, receiving: bool| PartialAsset {
            hash: hash.to_hex(),
            size: data.len() as u64,
            held: held * GROUP_BYTES,
            receiving,
            written_ms: 0,
        };
        let listed = |mut assets: Vec<PartialAsset>| {
            assets.iter_mut().for_each(|asset| asset.written_ms = 0);
            assets
        };
        // The writer runs on a thread of its own: look until it has written.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let now = listed(store.partial_assets(10).await.unwrap());
            if now == [expected(2, true)] {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{now:?}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(store.partial_stats().await.unwrap().bytes, 2 * GROUP_BYTES);
        send(3);
        drop(groups);
        let written = receiving.await.unwrap().unwrap();
        assert_eq!(written, RangesWritten::Partial { held: 3, groups: 6 });
        assert_eq!(
            listed(store.partial_assets(10).await.unwrap()),
            [expected(3, false)]
        );
        drop(store);
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        assert_eq!(
            listed(store.partial_assets(10).await.unwrap()),
            [expected(3, false)]
        );
        assert!(store.partial_assets(0).await.unwrap().is_empty());
    }

    /// Two deliveries of one asset at once (two sources, each sending the
    /// groups it was asked for) meet in one partial asset: each answers once
    /// its own groups are written, a bad group is refused to its sender
    /// alone, and the asset is committed once, by the delivery that made it
    /// whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_deliveries_of_one_asset_meet_and_it_is_committed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap());
        let (data, outboard) = asset(6, 3);
        let hash = outboard.hash();
        let group = |index: u64| {
            let range = group_range(data.len() as u64, index);
            Ok((index, data.slice(range.start as usize..range.end as usize)))
        };
        let (first_tx, first_rx) = futures::channel::mpsc::unbounded();
        let first = {
            let (store, outboard) = (store.clone(), outboard.clone());
            tokio::spawn(async move {
                store
                    .write_ranges(pb::AssetMeta::default(), outboard, first_rx.boxed())
                    .await
            })
        };
        first_tx.unbounded_send(group(0)).unwrap();
        // The first delivery holds the partial asset open.
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while store.partial_stats().await.unwrap().assets == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the first delivery starts");

        let mut second: Vec<_> = groups_of(&data, [3, 4, 5]).collect().await;
        if let Ok((_, bytes)) = &mut second[2] {
            let mut bad = bytes.to_vec();
            bad[1] ^= 1;
            *bytes = Bytes::from(bad);
        }
        let refused = store
            .write_ranges(
                pb::AssetMeta::default(),
                outboard.clone(),
                futures::stream::iter(second).boxed(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                &refused,
                CanError::BadRange(RangeError::Group { index: 5, .. })
            ),
            "the bad group is the second delivery's: {refused:?}"
        );
        assert!(store.meta(hash).await.unwrap().is_none());

        for index in [1, 2, 5] {
            first_tx.unbounded_send(group(index)).unwrap();
        }
        drop(first_tx);
        let written = tokio::time::timeout(std::time::Duration::from_secs(10), first)
            .await
            .expect("the first delivery ends")
            .unwrap()
            .unwrap();
        assert!(
            matches!(written, RangesWritten::Whole(pushed) if !pushed.already_existed),
            "{written:?}"
        );
        assert_eq!(read_back(&store, hash).await, data);
        assert_eq!(
            store.partial_stats().await.unwrap(),
            PartialStats::default()
        );
        // A late delivery of groups already held adds nothing.
        let late = store
            .write_ranges(pb::AssetMeta::default(), outboard, groups_of(&data, [4]))
            .await
            .unwrap();
        assert!(matches!(late, RangesWritten::Whole(pushed) if pushed.already_existed));
    }

    /// A group that does not verify is refused by name; the groups before
    /// it are kept, and one changed on disk behind the store's back is found
    /// by the next transfer after a restart and asked for again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_groups_are_refused_and_damaged_ones_asked_again() {
        let dir = tempfile::tempdir().unwrap();
        let (data, outboard) = asset(4, 2);
        let hash = outboard.hash();
        {
            let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
            let mut groups: Vec<_> = groups_of(&data, [0, 1, 2]).collect().await;
            if let Ok((_, bytes)) = &mut groups[2] {
                let mut bad = bytes.to_vec();
                bad[7] ^= 1;
                *bytes = Bytes::from(bad);
            }
            let refused = store
                .write_ranges(
                    pb::AssetMeta::default(),
                    outboard.clone(),
                    futures::stream::iter(groups).boxed(),
                )
                .await
                .unwrap_err();
            assert!(
                matches!(
                    &refused,
                    CanError::BadRange(RangeError::Group { index: 2, .. })
                ),
                "{refused:?}"
            );
            assert_eq!(
                store.resume_points(&[hash]).await.unwrap(),
                vec![(hash, vec![2..4])]
            );
        }
        // Damage group 0 on disk.
        let path = dir
            .path()
            .join("partial")
            .join(format!("{}.data", hash.to_hex()));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"x", 10).unwrap();
        // The state's word is taken for what to ask; the transfer that
        // resumes it reads the claimed groups back first, finds group 0
        // bad and lacks it at its end.
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        assert_eq!(
            store.resume_points(&[hash]).await.unwrap(),
            vec![(hash, vec![2..4])]
        );
        let written = store
            .write_ranges(
                pb::AssetMeta::default(),
                outboard.clone(),
                groups_of(&data, [2, 3]),
            )
            .await
            .unwrap();
        assert_eq!(written, RangesWritten::Partial { held: 3, groups: 4 });
        assert_eq!(
            store.resume_points(&[hash]).await.unwrap(),
            vec![(hash, vec![0..1])]
        );
        let written = store
            .write_ranges(pb::AssetMeta::default(), outboard, groups_of(&data, [0]))
            .await
            .unwrap();
        assert!(matches!(written, RangesWritten::Whole(_)));
        assert_eq!(read_back(&store, hash).await, data);
    }

    /// Partial assets count against the quota: a new transfer short of room
    /// drops the idle partial asset written least recently, and one that
    /// cannot get room fails as unavailable, naming the quota.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partial_assets_past_the_quota_make_room_or_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            max_partial_bytes: 5 * GROUP_BYTES,
            ..StoreLimits::default()
        };
        let store = EmbeddedCan::open(dir.path(), limits).unwrap();
        let (old, old_outboard) = asset(4, 3);
        let (new, new_outboard) = asset(4, 4);
        store
            .write_ranges(
                pb::AssetMeta::default(),
                old_outboard.clone(),
                groups_of(&old, [0, 1, 2]),
            )
            .await
            .unwrap();
        // 3 groups held; 3 more do not fit beside them: the idle one goes.
        let written = store
            .write_ranges(
                pb::AssetMeta::default(),
                new_outboard.clone(),
                groups_of(&new, [0, 1, 2]),
            )
            .await
            .unwrap();
        assert_eq!(written, RangesWritten::Partial { held: 3, groups: 4 });
        assert!(store
            .resume_points(&[old_outboard.hash()])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store.partial_stats().await.unwrap(),
            PartialStats {
                assets: 1,
                bytes: 3 * GROUP_BYTES
            }
        );
        // An asset larger than the whole quota cannot get room.
        let (huge, huge_outboard) = asset(7, 5);
        let refused = store
            .write_ranges(
                pb::AssetMeta::default(),
                huge_outboard.clone(),
                groups_of(&huge, 0..7),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, CanError::Unavailable(why) if why.contains("max_partial_bytes")),
            "{refused:?}"
        );
        assert!(store.meta(huge_outboard.hash()).await.unwrap().is_none());
        // What it held is kept within the quota, and nothing is lost.
        let stats = store.partial_stats().await.unwrap();
        assert!(stats.bytes <= 5 * GROUP_BYTES, "{stats:?}");
    }

    /// An outboard proves no size: one that claims another size with the
    /// same values does not wipe what a partial asset holds, only its last
    /// group, which alone depends on the size.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outboard_of_another_size_keeps_the_groups_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
        let (data, outboard) = asset(4, 7);
        let hash = outboard.hash();
        store
            .write_ranges(
                pb::AssetMeta::default(),
                outboard.clone(),
                groups_of(&data, [0, 1, 3]),
            )
            .await
            .unwrap();
        let forged = Outboard::decode(hash, outboard.size() - 1, &outboard.encoded_cvs()).unwrap();
        let written = store
            .write_ranges(
                pb::AssetMeta::default(),
                forged,
                futures::stream::empty().boxed(),
            )
            .await
            .unwrap();
        assert_eq!(written, RangesWritten::Partial { held: 2, groups: 4 });
        assert_eq!(
            store.resume_points(&[hash]).await.unwrap(),
            vec![(hash, vec![2..4])]
        );
        let written = store
            .write_ranges(pb::AssetMeta::default(), outboard, groups_of(&data, [2, 3]))
            .await
            .unwrap();
        assert!(matches!(written, RangesWritten::Whole(_)));
        assert_eq!(
            read_back(&store, hash).await,
            data,
            "cut back to its true size"
        );
    }

    /// Idle partial assets give way to a whole blob being written too, not
    /// only to other partial assets; one stored whole another way goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_partial_assets_give_way_to_whole_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            max_partial_bytes: 4 * GROUP_BYTES,
            ..StoreLimits::default()
        };
        let store = EmbeddedCan::open(dir.path(), limits).unwrap();
        let (idle, idle_outboard) = asset(4, 8);
        store
            .write_ranges(
                pb::AssetMeta::default(),
                idle_outboard.clone(),
                groups_of(&idle, [0, 1, 2]),
            )
            .await
            .unwrap();
        let (whole, _) = asset(3, 9);
        let hash = AssetHash::of(&whole);
        let body = futures::stream::iter([Ok(whole.clone())]).boxed();
        store
            .write_blob(hash, pb::AssetMeta::default(), body)
            .await
            .unwrap();
        assert!(store
            .resume_points(&[idle_outboard.hash()])
            .await
            .unwrap()
            .is_empty());

        // A partial asset of what then arrives whole is dropped.
        let (other, other_outboard) = asset(2, 10);
        store
            .write_ranges(
                pb::AssetMeta::default(),
                other_outboard.clone(),
                groups_of(&other, [0]),
            )
            .await
            .unwrap();
        let body = futures::stream::iter([Ok(other.clone())]).boxed();
        store
            .write_blob(other_outboard.hash(), pb::AssetMeta::default(), body)
            .await
            .unwrap();
        assert_eq!(
            store.partial_stats().await.unwrap(),
            PartialStats::default()
        );
    }

    /// An idle partial asset older than the expiry is dropped at open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_partial_asset_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (data, outboard) = asset(3, 6);
        {
            let store = EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap();
            store
                .write_ranges(
                    pb::AssetMeta::default(),
                    outboard.clone(),
                    groups_of(&data, [0]),
                )
                .await
                .unwrap();
        }
        let limits = StoreLimits {
            partial_expiry: Duration::ZERO,
            ..StoreLimits::default()
        };
        // Written "now" is not older than now: wait for the clock to move.
        let written = now_ms();
        while now_ms() == written {
            std::thread::yield_now();
        }
        let store = EmbeddedCan::open(dir.path(), limits).unwrap();
        assert!(store
            .resume_points(&[outboard.hash()])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("partial"))
                .unwrap()
                .count(),
            0
        );
    }
}
