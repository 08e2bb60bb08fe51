//! A store for simulated peers: assets in a map, answered at once, with the
//! same rules as the real stores (hash checked on push, LWW on metadata).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::asset::{merge_meta, AssetHash, Bundle, MetaUpdate, Summary};
use crate::can::{CanError, Pulled, Pushed};
use crate::pb;
use crate::recon::riblt::{CodedCells, Element};

/// Assets by hash: bytes and metadata.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct SimStore(pub(crate) BTreeMap<AssetHash, (Bytes, pb::AssetMeta)>);

impl SimStore {
    /// A store holding `bundles`.
    pub(crate) fn with(bundles: impl IntoIterator<Item = Bundle>) -> Self {
        let mut store = Self::default();
        for bundle in bundles {
            store.push(bundle).expect("valid bundle");
        }
        store
    }

    /// Up to `limit` summaries after `after`, as a store's `list_page` gives
    /// them.
    pub(crate) fn list_page(
        &self,
        after: Option<AssetHash>,
        limit: usize,
    ) -> crate::can::Page<Summary, AssetHash> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let items: Vec<Summary> = self
            .0
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|(hash, (data, meta))| Summary::of(*hash, data.len() as u64, meta))
            .collect();
        let next = (items.len() == limit)
            .then(|| items.last().map(|s| s.hash))
            .flatten();
        crate::can::Page { items, next }
    }

    pub(crate) fn list(&self) -> Vec<Summary> {
        self.0
            .iter()
            .map(|(hash, (data, meta))| Summary::of(*hash, data.len() as u64, meta))
            .collect()
    }

    /// The coded cells of the store's summaries, as an embedded store keeps
    /// them.
    pub(crate) fn coded(&self) -> CodedCells {
        let mut cells = CodedCells::new(crate::recon::coded::KEPT_CELLS);
        for summary in self.list() {
            cells.insert(&Element::of(&summary));
        }
        cells
    }

    pub(crate) fn pull(&self, hashes: &[AssetHash]) -> Pulled {
        let mut pulled = Pulled::default();
        for hash in hashes {
            match self.0.get(hash) {
                Some((data, meta)) => pulled.bundles.push(Bundle {
                    hash: *hash,
                    data: data.clone(),
                    meta: meta.clone(),
                }),
                None => pulled.missing.push(*hash),
            }
        }
        pulled
    }

    pub(crate) fn meta(&self, hash: AssetHash) -> Option<(u64, pb::AssetMeta)> {
        self.0
            .get(&hash)
            .map(|(data, meta)| (data.len() as u64, meta.clone()))
    }

    pub(crate) fn push(&mut self, bundle: Bundle) -> Result<Pushed, CanError> {
        let actual = AssetHash::of(&bundle.data);
        if actual != bundle.hash {
            return Err(CanError::HashMismatch {
                expected: bundle.hash,
                actual,
            });
        }
        let already_existed = match self.0.get_mut(&bundle.hash) {
            Some((_, meta)) => {
                merge_meta(meta, &MetaUpdate::of(bundle.hash, &bundle.meta));
                true
            }
            None => {
                self.0.insert(bundle.hash, (bundle.data, bundle.meta));
                false
            }
        };
        Ok(Pushed {
            hash: bundle.hash,
            already_existed,
            seq: None,
        })
    }

    pub(crate) fn apply_meta(&mut self, update: &MetaUpdate) -> Result<bool, CanError> {
        match self.0.get_mut(&update.hash) {
            Some((_, meta)) => Ok(merge_meta(meta, update)),
            None => Err(CanError::NotFound(update.hash)),
        }
    }
}

/// Deterministic asset `i` of `len` bytes with metadata stamped `at`.
pub(crate) fn asset(i: u64, len: usize, at: i64) -> Bundle {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    Bundle {
        hash: AssetHash::of(&data),
        data: data.into(),
        meta: pb::AssetMeta {
            name: format!("asset-{i}"),
            description: format!("asset {i}"),
            created_at_ms: 1_000 + i as i64,
            meta_updated_at_ms: at,
            ..Default::default()
        },
    }
}
