//! Finding our assets by the 8-byte hash prefix a coded reconciliation names
//! them by.
//!
//! A prefix almost always names one asset, but nothing stops a store from
//! holding several under one prefix (2^32 assets make a shared prefix likely,
//! and anyone can craft one), and the peer wants every one of them: the
//! lookup pages through the listing from the first hash with the prefix until
//! it reaches a hash beyond it, however many share it.

use std::future::Future;

use crate::asset::{AssetHash, HashPrefix, Summary};
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
}
