//! [`ReadOnly`]: the store as a peer with [`Right::Read`](super::Right)
//! is served it. A reader's honest build sends nothing (our `HELLO` says we
//! take nothing); this wrapper is what makes that true whatever it sends.

use async_trait::async_trait;

use crate::asset::{AssetHash, Bundle, MetaEdit, MetaUpdate, Summary, VerifiedBundle};
use crate::can::{
    ByteStream, Can, CanError, ChangePage, EventStream, Page, Pulled, Pushed, PushedBatch,
    SharedCan, SinceCursor, StoreStats,
};
use crate::pb;
use crate::recon::riblt::estimate::Probe;
use crate::recon::riblt::Cell;

/// The store as a peer with the right to read sees it: everything it may read,
/// and a refusal ([`CanError::ReadOnly`]) for every write, so whatever such
/// a peer sends is rejected and counted in the session's summary and
/// nothing of it is kept.
pub struct ReadOnly(pub SharedCan);

#[async_trait]
impl Can for ReadOnly {
    async fn list_page(
        &self,
        after: Option<AssetHash>,
        limit: usize,
    ) -> Result<Page<Summary, AssetHash>, CanError> {
        self.0.list_page(after, limit).await
    }

    async fn list_since(
        &self,
        since: i64,
        after: Option<SinceCursor>,
        limit: usize,
    ) -> Result<Page<Summary, SinceCursor>, CanError> {
        self.0.list_since(since, after, limit).await
    }

    async fn changes(&self, after: u64, limit: usize) -> Result<ChangePage, CanError> {
        self.0.changes(after, limit).await
    }

    async fn pull(&self, hashes: &[AssetHash]) -> Result<Pulled, CanError> {
        self.0.pull(hashes).await
    }

    async fn push(&self, _bundle: Bundle) -> Result<Pushed, CanError> {
        Err(CanError::ReadOnly)
    }

    async fn push_batch(&self, bundles: Vec<VerifiedBundle>) -> Result<PushedBatch, CanError> {
        Ok(bundles.iter().map(|_| Err(CanError::ReadOnly)).collect())
    }

    async fn apply_meta(&self, _update: MetaUpdate) -> Result<bool, CanError> {
        Err(CanError::ReadOnly)
    }

    async fn edit_meta(&self, _edit: MetaEdit) -> Result<pb::AssetMeta, CanError> {
        Err(CanError::ReadOnly)
    }

    async fn meta(&self, hash: AssetHash) -> Result<Option<(u64, pb::AssetMeta)>, CanError> {
        self.0.meta(hash).await
    }

    async fn stats(&self) -> Result<StoreStats, CanError> {
        self.0.stats().await
    }

    async fn coded_cells(&self, start: usize, count: usize) -> Result<Option<Vec<Cell>>, CanError> {
        self.0.coded_cells(start, count).await
    }

    async fn coded_probe(&self) -> Result<Option<Probe>, CanError> {
        self.0.coded_probe().await
    }

    async fn subscribe(&self, after_seq: Option<u64>) -> Result<EventStream, CanError> {
        self.0.subscribe(after_seq).await
    }

    async fn read_blob(&self, hash: AssetHash, offset: u64) -> Result<(u64, ByteStream), CanError> {
        self.0.read_blob(hash, offset).await
    }

    async fn outboard(&self, hash: AssetHash) -> Result<Option<crate::can::Outboard>, CanError> {
        self.0.outboard(hash).await
    }

    async fn keeps_outboards(&self) -> bool {
        self.0.keeps_outboards().await
    }

    fn outboards_cost_a_request(&self) -> bool {
        self.0.outboards_cost_a_request()
    }

    fn uploads_in_order(&self) -> bool {
        self.0.uploads_in_order()
    }

    async fn write_blob(
        &self,
        _hash: AssetHash,
        _meta: pb::AssetMeta,
        _body: ByteStream,
    ) -> Result<Pushed, CanError> {
        Err(CanError::ReadOnly)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_reader_reads_and_every_write_is_refused() {
        use crate::can::{EmbeddedCan, StoreLimits};
        let store: SharedCan = Arc::new(EmbeddedCan::memory(StoreLimits::default()).unwrap());
        let bundle = |data: &[u8]| Bundle {
            hash: AssetHash::of(data),
            data: bytes::Bytes::copy_from_slice(data),
            meta: pb::AssetMeta::default(),
        };
        store.push(bundle(b"held")).await.unwrap();
        let reader = ReadOnly(store.clone());
        assert_eq!(reader.stats().await.unwrap().assets, 1);
        let pulled = reader.pull(&[AssetHash::of(b"held")]).await.unwrap();
        assert_eq!(pulled.bundles.len(), 1);

        assert!(matches!(
            reader.push(bundle(b"planted")).await,
            Err(CanError::ReadOnly)
        ));
        let batch = reader
            .push_batch(vec![bundle(b"planted").verify().unwrap()])
            .await
            .unwrap();
        assert!(matches!(batch[..], [Err(CanError::ReadOnly)]));
        let update = MetaUpdate::of(AssetHash::of(b"held"), &pb::AssetMeta::default());
        assert!(matches!(
            reader.apply_meta(update).await,
            Err(CanError::ReadOnly)
        ));
        let body = futures::stream::empty().boxed();
        assert!(matches!(
            reader
                .write_blob(AssetHash::of(b""), pb::AssetMeta::default(), body)
                .await,
            Err(CanError::ReadOnly)
        ));
        assert_eq!(store.stats().await.unwrap().assets, 1, "nothing kept");
    }
}
