//! Finding our assets as a peer names them, with their sizes from our store:
//! by the 8-byte hash prefix a coded reconciliation names them by, or by
//! whole hash when a peer that pulls asks for them ([`size_wanted`]: from
//! our listing where they run together, one lookup each where they do not).
//!
//! A prefix almost always names one asset, but nothing stops a store from
//! holding several under one prefix (2^32 assets make a shared prefix likely,
//! and anyone can craft one), and the peer wants every one of them: the
//! lookup pages through the listing from the first hash with the prefix until
//! it reaches a hash beyond it, however many share it.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use tracing::warn;

use super::{EngineStats, RejectReason, Shared};

use crate::asset::{AssetHash, HashPrefix, Summary};
use crate::can::listing::page_past_damage;
use crate::can::{CanError, Page};

/// Assets listed per page: one page holds any prefix anyone meets by chance.
const PAGE: usize = 4;

/// Every asset (hash, size) under `prefix`, in hash order, read through
/// `list_page` (a store's [`Can::list_page`](crate::can::Can::list_page):
/// up to `limit` summaries after a cursor, ascending by hash).
pub(super) async fn assets_under<F, Fut>(
    prefix: HashPrefix,
    mut list_page: F,
) -> Result<Vec<(AssetHash, u64)>, CanError>
where
    F: FnMut(Option<AssetHash>, usize) -> Fut,
    Fut: Future<Output = Result<Page<Summary, AssetHash>, CanError>>,
{
    let mut found = Vec::new();
    let mut after = AssetHash::just_before(prefix);
    loop {
        let page = list_page(after, PAGE).await?;
        let mut beyond = false;
        for summary in &page.items {
            match summary.hash.prefix().0.cmp(&prefix.0) {
                std::cmp::Ordering::Equal => found.push((summary.hash, summary.size)),
                std::cmp::Ordering::Greater => beyond = true,
                // A store that lists out of order; what it lists below the
                // prefix is not ours to send.
                std::cmp::Ordering::Less => {}
            }
        }
        match page.next {
            Some(next) if !beyond && !page.items.is_empty() => after = Some(next),
            _ => return Ok(found),
        }
    }
}

/// Store lookups of wanted assets in flight at once.
pub(super) const LOOKUPS_IN_FLIGHT: usize = 16;

/// The assets (hash, size) of `wanted` our store holds: sized from its
/// listing where they run together, one lookup each where they do not; one
/// we do not hold is reported and skipped.
pub(super) async fn size_wanted(
    shared: Arc<Shared>,
    mut wanted: Vec<AssetHash>,
) -> Vec<(AssetHash, u64)> {
    wanted.sort_unstable();
    wanted.dedup();
    let listed = shared
        .retried(|| {
            sizes_of(&wanted, |after, limit| {
                page_past_damage(&*shared.can, after, limit)
            })
        })
        .await;
    let (mut found, one_by_one) = match listed {
        Ok(sized) => {
            for hash in sized.not_held {
                shared.fail(hash, RejectReason::Vanished);
            }
            (sized.found, sized.unreached)
        }
        // The listing failed: each is looked up (and reported) on its own.
        Err(_) => (Vec::new(), wanted),
    };
    let looked_up: Vec<(AssetHash, u64)> = futures::stream::iter(one_by_one)
        .map(|hash| {
            let shared = shared.clone();
            async move { size_of(&shared, hash).await.map(|size| (hash, size)) }
        })
        .buffered(LOOKUPS_IN_FLIGHT)
        .filter_map(std::future::ready)
        .collect()
        .await;
    found.extend(looked_up);
    let bytes = found.iter().map(|(_, size)| size).sum();
    EngineStats::add(&shared.stats.planned_bytes, bytes);
    found
}

/// The size of `hash` in our store; an asset we do not hold (any more) is
/// reported and skipped.
async fn size_of(shared: &Shared, hash: AssetHash) -> Option<u64> {
    match shared.retried(|| shared.can.meta(hash)).await {
        Ok(Some((size, _))) => Some(size),
        Ok(None) => {
            shared.fail(hash, RejectReason::Vanished);
            None
        }
        Err(err) => {
            shared.store_failed(hash, &err);
            None
        }
    }
}

/// The assets (hash, size) our store holds under `prefix`: almost always one,
/// and every one when several share it.
pub(super) async fn by_prefix(shared: &Shared, prefix: HashPrefix) -> Vec<(AssetHash, u64)> {
    let found = shared
        .retried(|| {
            assets_under(prefix, |after, limit| {
                page_past_damage(&*shared.can, after, limit)
            })
        })
        .await;
    match found {
        Ok(found) => {
            if found.is_empty() {
                warn!(prefix = %hex::encode(prefix.0), "the peer wants an asset this store does not hold");
            }
            found
        }
        Err(err) => {
            let mut floor = [0u8; 32];
            floor[..HashPrefix::LEN].copy_from_slice(&prefix.0);
            shared.store_failed(AssetHash::from_bytes(floor), &err);
            Vec::new()
        }
    }
}

/// Summaries listed per page while sizing wanted assets.
const SIZING_PAGE: usize = 1024;

/// The sizes of `wanted` (sorted ascending, distinct) in our store, read
/// from its listing rather than one lookup each: a peer that pulls asks in
/// hash order, mostly for runs of consecutive assets (a new node lacks them
/// all), so a page or two of the listing sizes a whole `WANT`. The listing
/// is read from the first wanted hash's prefix for at most `4 × len + 16`
/// summaries; returns what it sized and, in order, the hashes it did not
/// reach (a sparse want: the caller looks those up one by one). A wanted
/// hash the listing passed without finding is not held.
pub(super) async fn sizes_of<F, Fut>(
    wanted: &[AssetHash],
    mut list_page: F,
) -> Result<Sized, CanError>
where
    F: FnMut(Option<AssetHash>, usize) -> Fut,
    Fut: Future<Output = Result<Page<Summary, AssetHash>, CanError>>,
{
    let mut sized = Sized::default();
    let Some(first) = wanted.first() else {
        return Ok(sized);
    };
    let mut budget = 4 * wanted.len() + 16;
    let mut after = AssetHash::just_before(first.prefix());
    let mut next_wanted = 0;
    while budget > 0 && next_wanted < wanted.len() {
        let page = list_page(after, budget.min(SIZING_PAGE)).await?;
        budget = budget.saturating_sub(page.items.len().max(1));
        for summary in &page.items {
            while next_wanted < wanted.len() && wanted[next_wanted] < summary.hash {
                sized.not_held.push(wanted[next_wanted]);
                next_wanted += 1;
            }
            if next_wanted < wanted.len() && wanted[next_wanted] == summary.hash {
                sized.found.push((summary.hash, summary.size));
                next_wanted += 1;
            }
        }
        match page.next {
            Some(next) if !page.items.is_empty() => after = Some(next),
            // The listing ended: whatever is left is not held.
            _ => {
                sized.not_held.extend_from_slice(&wanted[next_wanted..]);
                return Ok(sized);
            }
        }
    }
    sized.unreached.extend_from_slice(&wanted[next_wanted..]);
    Ok(sized)
}

/// What [`sizes_of`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Sized {
    /// Wanted assets we hold, with our sizes, in hash order.
    pub(super) found: Vec<(AssetHash, u64)>,
    /// Wanted hashes the listing passed: we do not hold them.
    pub(super) not_held: Vec<AssetHash>,
    /// Wanted hashes beyond what the listing read.
    pub(super) unreached: Vec<AssetHash>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::asset::MetaVersion;

    /// A store double holding only a listing: the hashes a test gives it,
    /// paged as a store pages them (strictly after the cursor, by hash).
    struct Listing {
        sizes: BTreeMap<AssetHash, u64>,
        pages_read: AtomicUsize,
    }

    impl Listing {
        fn of(hashes: &[AssetHash]) -> Self {
            Self {
                sizes: hashes
                    .iter()
                    .map(|h| (*h, u64::from(h.as_bytes()[31])))
                    .collect(),
                pages_read: AtomicUsize::new(0),
            }
        }

        async fn page(
            &self,
            after: Option<AssetHash>,
            limit: usize,
        ) -> Result<Page<Summary, AssetHash>, CanError> {
            self.pages_read.fetch_add(1, Ordering::Relaxed);
            let items: Vec<Summary> = self
                .sizes
                .iter()
                .filter(|(hash, _)| after.is_none_or(|after| **hash > after))
                .take(limit)
                .map(|(hash, size)| Summary {
                    hash: *hash,
                    created_at_ms: 0,
                    size: *size,
                    version: MetaVersion::announced(0, &[]),
                })
                .collect();
            let next = (items.len() == limit).then(|| items[limit - 1].hash);
            Ok(Page { items, next })
        }

        async fn under(&self, prefix: HashPrefix) -> Vec<(AssetHash, u64)> {
            assets_under(prefix, |after, limit| self.page(after, limit))
                .await
                .expect("a listing double does not fail")
        }
    }

    /// A hash of `prefix` followed by `tail` bytes (its last byte is the size).
    fn hash(prefix: [u8; 8], tail: u8) -> AssetHash {
        let mut bytes = [tail; 32];
        bytes[..8].copy_from_slice(&prefix);
        AssetHash::from_bytes(bytes)
    }

    #[tokio::test]
    async fn every_asset_sharing_a_prefix_is_found_across_pages() {
        let shared = [7, 7, 7, 7, 0, 0, 0, 1];
        // Ten assets under one prefix (pages of four), including the one
        // whose hash is the prefix's floor (all zeros after it) and the one
        // at its ceiling, between neighbours one below and one above.
        let mut under: Vec<AssetHash> = (0..10).map(|i| hash(shared, i * 25)).collect();
        under.push(hash(shared, 0xff));
        let below = hash([7, 7, 7, 7, 0, 0, 0, 0], 0xff);
        let above = hash([7, 7, 7, 7, 0, 0, 0, 2], 0);
        let mut all = under.clone();
        all.extend([below, above]);
        let listing = Listing::of(&all);

        let found: Vec<AssetHash> = listing
            .under(HashPrefix(shared))
            .await
            .into_iter()
            .map(|(hash, _)| hash)
            .collect();
        under.sort();
        assert_eq!(found, under, "all eleven, nothing of the neighbours");
        assert!(
            listing.pages_read.load(Ordering::Relaxed) <= 4,
            "the lookup stops at the first hash beyond the prefix"
        );
    }

    #[tokio::test]
    async fn the_sizes_come_from_the_store_and_the_edges_of_the_hash_space_work() {
        let zero = [0u8; 8];
        let top = [0xffu8; 8];
        let listing = Listing::of(&[hash(zero, 0), hash(zero, 9), hash(top, 3), hash(top, 0xff)]);
        assert_eq!(
            listing.under(HashPrefix(zero)).await,
            vec![(hash(zero, 0), 0), (hash(zero, 9), 9)]
        );
        assert_eq!(
            listing.under(HashPrefix(top)).await,
            vec![(hash(top, 3), 3), (hash(top, 0xff), 0xff)]
        );
        assert_eq!(listing.under(HashPrefix([1; 8])).await, vec![]);
    }

    #[test]
    fn the_cursor_before_a_prefix_sorts_below_its_floor_and_above_the_one_before() {
        let prefix = HashPrefix([0, 0, 0, 0, 0, 0, 1, 0]);
        let cursor = AssetHash::just_before(prefix).expect("not the zero prefix");
        assert!(cursor < hash(prefix.0, 0));
        assert!(cursor >= hash([0, 0, 0, 0, 0, 0, 0, 0xff], 0xff));
        assert_eq!(AssetHash::just_before(HashPrefix([0; 8])), None);
    }

    #[tokio::test]
    async fn a_run_of_wanted_assets_is_sized_from_the_listing_in_a_page() {
        let all: Vec<AssetHash> = (0..500u64)
            .map(|i| AssetHash::of(&i.to_le_bytes()))
            .collect();
        let listing = Listing::of(&all);
        let mut sorted = all.clone();
        sorted.sort();
        let wanted = &sorted[100..356];
        let sized = sizes_of(wanted, |after, limit| listing.page(after, limit))
            .await
            .unwrap();
        let found: Vec<AssetHash> = sized.found.iter().map(|(hash, _)| *hash).collect();
        assert_eq!(found, wanted);
        assert!(sized
            .found
            .iter()
            .all(|(hash, size)| *size == u64::from(hash.as_bytes()[31])));
        assert!(sized.not_held.is_empty() && sized.unreached.is_empty());
        assert_eq!(listing.pages_read.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn hashes_the_listing_passes_are_not_held_and_a_sparse_tail_is_left_over() {
        let all: Vec<AssetHash> = (0..2_000u64)
            .map(|i| AssetHash::of(&i.to_le_bytes()))
            .collect();
        let listing = Listing::of(&all);
        let mut sorted = all.clone();
        sorted.sort();
        // Between two held neighbours, a hash we do not hold.
        let mut missing = *sorted[10].as_bytes();
        missing[31] = missing[31].wrapping_add(1);
        let missing = AssetHash::from_bytes(missing);
        assert!(sorted[10] < missing && missing < sorted[11]);
        // Three wanted, the last far away: the budget (4 × 3 + 16) ends first.
        let wanted = [sorted[10], missing, sorted[1_900]];
        let sized = sizes_of(&wanted, |after, limit| listing.page(after, limit))
            .await
            .unwrap();
        assert_eq!(sized.found.len(), 1);
        assert_eq!(sized.not_held, vec![missing]);
        assert_eq!(sized.unreached, vec![sorted[1_900]]);
        // A listing that ends leaves nothing unreached: beyond it, nothing is held.
        let beyond = AssetHash::from_bytes([0xff; 32]);
        let sized = sizes_of(&[sorted[1_999], beyond], |after, limit| {
            listing.page(after, limit)
        })
        .await
        .unwrap();
        assert_eq!(
            (sized.found.len(), sized.not_held.clone()),
            (1, vec![beyond])
        );
    }
}
