//! The CAN boundary: the one trait through which the engine reads and
//! writes an asset store, and its implementations.
//!
//! - [`Can`]: the operations a sync agent needs of a store.
//! - [`store`]: the embedded store (blobs on disk or in memory, metadata and
//!   change log in redb); the reference server stores through it too.
//! - [`api`]: the HTTP API's JSON bodies and header names, shared by the
//!   server and the client.
//! - [`server`]: `can-sync serve-can`, the HTTP API (`docs/openapi.json`) over any [`Can`].
//! - [`client`]: [`HttpCan`], the HTTP client of that API, itself a [`Can`].
//! - [`sse`]: the `text/event-stream` encoding of change events, both ways.
//! - [`retry`]: retrying a call that failed transiently, by the shared
//!   [`Backoff`](crate::backoff::Backoff).
//! - [`listing`]: listing a store whole, or page by page past damaged
//!   records.
//! - `error.rs`: [`CanError`], whose variants say whose fault a failure is;
//!   `whole.rs`: what a store without outboards or partial assets answers
//!   for them ([`outboard_by_reading`], [`write_ranges_whole`]).
//!
//! Invariants every implementation keeps:
//! - a blob is stored under a hash only after its bytes were hashed and matched
//!   (a mismatch stores nothing and answers [`CanError::HashMismatch`]); by
//!   verified ranges ([`Can::write_ranges`]), each group is checked against
//!   an outboard checked against the hash, and a partial asset is listed
//!   nowhere until every group is held;
//! - an acknowledged push is durable (for disk stores) and idempotent; an
//!   acknowledged batch is too, every bundle of it;
//! - metadata only moves forward by the LWW rule of [`crate::asset::merge_meta`],
//!   but for a user's edit ([`Can::edit_meta`]), which replaces it;
//! - no stored metadata stamp is further ahead of the store's clock than its
//!   [`ClockBound`] (see [`crate::asset::stamp`]);
//! - every change gets a sequence number, and [`Can::subscribe`] replays from any
//!   sequence number still in the log, then follows live.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::asset::{
    edit_stamp, AssetHash, Bundle, ClockBound, MetaEdit, MetaUpdate, Summary, VerifiedBundle,
};
use crate::pb;

pub mod api;
pub mod client;
mod error;
pub mod listing;
pub mod retry;
pub mod seq_ranges;
pub mod server;
pub mod sse;
pub mod store;
mod whole;

pub use client::HttpCan;
pub use error::CanError;
pub use listing::{list_all, LIST_PAGE};
pub use seq_ranges::SeqRanges;
pub use store::ranges::{Outboard, RangeError};
pub use store::{EmbeddedCan, PartialAsset, PartialStats, StoreLimits};
pub use whole::{outboard_by_reading, write_ranges_whole};

/// A shared handle to any store.
pub type SharedCan = Arc<dyn Can>;

/// A stream of bytes of one blob.
pub type ByteStream = BoxStream<'static, Result<Bytes, CanError>>;

/// A stream of groups of one large asset: each its index and bytes
/// ([`store::ranges`]).
pub type GroupStream = BoxStream<'static, Result<(u64, Bytes), CanError>>;

/// What [`Can::write_ranges`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangesWritten {
    /// The asset is whole and stored.
    Whole(Pushed),
    /// The store keeps a partial asset of `held` of its `groups` groups.
    Partial {
        /// Groups held now.
        held: u64,
        /// Groups of the asset.
        groups: u64,
    },
}

/// A stream of change events, replayed then live.
pub type EventStream = BoxStream<'static, Result<ChangeEvent, CanError>>;

/// What kind of change an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A new asset (bytes and first metadata).
    Asset,
    /// A metadata change of an existing asset.
    Meta,
}

/// One entry of a store's change log, as `GET /sync/events` sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// Position in the change log; strictly increasing; the SSE `id`.
    #[serde(skip)]
    pub seq: u64,
    /// Asset or metadata change.
    pub kind: ChangeKind,
    /// The asset that changed.
    pub hash: AssetHash,
    /// When it changed (Unix ms).
    pub ts: i64,
}

/// A page of a listing: the items, and the cursor to continue after when
/// there may be more (`None`: the listing is complete). No listing answers
/// with the whole store at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, C> {
    /// Up to the asked number of items.
    pub items: Vec<T>,
    /// Where the next page starts (exclusive).
    pub next: Option<C>,
}

/// Where a listing by change time stopped: the change time and hash of the
/// last item (the listing's order is by both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinceCursor {
    /// The change time (Unix ms).
    pub changed_at: i64,
    /// The asset.
    pub hash: AssetHash,
}

/// One entry of the compacted change log: the latest change of one asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its sequence number.
    pub seq: u64,
    /// New asset or metadata change.
    pub kind: ChangeKind,
    /// The asset as it is now.
    pub summary: Summary,
}

/// A page of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePage {
    /// Changes in sequence order.
    pub changes: Vec<Change>,
    /// The sequence number to ask after for the next page (the last one
    /// here, or the one asked after when the page is empty).
    pub next_after: u64,
    /// The store's identity: when it differs from the one a remembered
    /// sequence number came with, that number means nothing here.
    pub store_id: u64,
}

/// The answer of a batched pull.
#[derive(Debug, Default)]
pub struct Pulled {
    /// The assets found, bytes and metadata.
    pub bundles: Vec<Bundle>,
    /// The asked hashes the store does not hold.
    pub missing: Vec<AssetHash>,
}

/// The answer of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// The asset's hash.
    pub hash: AssetHash,
    /// True when the store held the bytes before this push.
    pub already_existed: bool,
    /// The change the push committed in the store's change log (`None` when
    /// it changed nothing, or the store does not say): how a node tells the
    /// changes a peer sent it from others when it follows the log.
    pub seq: Option<u64>,
}

/// Counts of a store, for `GET /health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Number of assets.
    pub assets: u64,
    /// Sum of their sizes.
    pub bytes: u64,
}

/// The answer of a batched push: one per bundle, in order. A bundle's own
/// refusal (too large, or for a plain batch over HTTP a wrong hash) fails its
/// slot only; the others are stored.
pub type PushedBatch = Vec<Result<Pushed, CanError>>;

/// The operations the sync engine needs of an asset store.
#[async_trait]
pub trait Can: Send + Sync + 'static {
    /// Up to `limit` summaries in hash order, after `after` (from the first
    /// when `None`).
    async fn list_page(
        &self,
        after: Option<AssetHash>,
        limit: usize,
    ) -> Result<Page<Summary, AssetHash>, CanError>;

    /// Up to `limit` summaries of the assets changed (created or metadata
    /// updated) at or after `since` (Unix ms), ascending by change time,
    /// after `after`.
    async fn list_since(
        &self,
        since: i64,
        after: Option<SinceCursor>,
        limit: usize,
    ) -> Result<Page<Summary, SinceCursor>, CanError>;

    /// Up to `limit` entries of the compacted change log after sequence
    /// number `after` (from the start when 0).
    async fn changes(&self, after: u64, limit: usize) -> Result<ChangePage, CanError>;

    /// Bytes and metadata of the given assets; unknown hashes come back in
    /// [`Pulled::missing`].
    async fn pull(&self, hashes: &[AssetHash]) -> Result<Pulled, CanError>;

    /// Stores one asset after checking that `bundle.data` hashes to
    /// `bundle.hash`. Idempotent; the bundle's metadata is merged by LWW.
    async fn push(&self, bundle: Bundle) -> Result<Pushed, CanError>;

    /// Stores a batch of assets already verified, as one durable commit where
    /// the store can: a bundle's answer, in its slot, means it was committed.
    /// The outer error fails the whole batch: nothing of it is acknowledged
    /// (some may be stored all the same; a push is idempotent). The default
    /// pushes one by one.
    async fn push_batch(&self, bundles: Vec<VerifiedBundle>) -> Result<PushedBatch, CanError> {
        let mut answers = Vec::with_capacity(bundles.len());
        for bundle in bundles {
            answers.push(self.push(bundle.into_bundle()).await);
        }
        Ok(answers)
    }

    /// Applies a metadata update by LWW; true when it won. Unknown asset:
    /// [`CanError::NotFound`].
    async fn apply_meta(&self, update: MetaUpdate) -> Result<bool, CanError>;

    /// Applies a user's edit ([`MetaEdit`]) over whatever metadata the asset
    /// has, stamped by [`edit_stamp`] so that it wins without inheriting a
    /// far-future stamp; answers the metadata the asset has afterwards.
    /// Unknown asset: [`CanError::NotFound`].
    ///
    /// The default reads the metadata, stamps the edit by the local clock and
    /// applies it by LWW: a concurrent newer update may win instead, and the
    /// answer then shows it. A store that can applies the edit in one step.
    async fn edit_meta(&self, edit: MetaEdit) -> Result<pb::AssetMeta, CanError> {
        let hash = edit.hash;
        let (_, current) = self.meta(hash).await?.ok_or(CanError::NotFound(hash))?;
        let stamp = edit_stamp(
            current.meta_updated_at_ms,
            crate::clock::now_ms(),
            ClockBound::default(),
        );
        self.apply_meta(edit.update_over(&current, stamp)).await?;
        let (_, after) = self.meta(hash).await?.ok_or(CanError::NotFound(hash))?;
        Ok(after)
    }

    /// Metadata and size of one asset, `None` when unknown.
    async fn meta(&self, hash: AssetHash) -> Result<Option<(u64, pb::AssetMeta)>, CanError>;

    /// Number of assets and bytes held.
    async fn stats(&self) -> Result<StoreStats, CanError>;

    /// Up to `count` of the store's coded cells from index `start` (the cells
    /// of its summaries, see [`crate::recon::riblt`]), or `None` when this
    /// store does not keep them: reconciliation then falls back to the full
    /// exchange.
    async fn coded_cells(
        &self,
        _start: usize,
        _count: usize,
    ) -> Result<Option<Vec<crate::recon::riblt::Cell>>, CanError> {
        Ok(None)
    }

    /// The probe of the store's coded cells (see
    /// [`crate::recon::riblt::estimate`]), or `None` as for
    /// [`coded_cells`](Self::coded_cells).
    async fn coded_probe(&self) -> Result<Option<crate::recon::riblt::estimate::Probe>, CanError> {
        Ok(None)
    }

    /// Change events after `after_seq`, then live ones, in order; only live
    /// ones when `after_seq` is `None`. An HTTP implementation reconnects and resumes by
    /// itself; the stream ends only when the store goes away.
    async fn subscribe(&self, after_seq: Option<u64>) -> Result<EventStream, CanError>;

    /// Streams one asset's bytes from byte `offset`, with its total size,
    /// without holding the asset in memory.
    async fn read_blob(&self, hash: AssetHash, offset: u64) -> Result<(u64, ByteStream), CanError>;

    /// Streams one asset's bytes in; verified while streaming and committed only
    /// when the whole hash matches (nothing kept otherwise).
    async fn write_blob(
        &self,
        hash: AssetHash,
        meta: pb::AssetMeta,
        body: ByteStream,
    ) -> Result<Pushed, CanError>;

    /// [`write_blob`](Self::write_blob) of an asset whose size the caller
    /// was told (a peer's header): a store that uploads what it writes to
    /// object storage streams it up as one request when it knows the size.
    /// The bytes are checked all the same, and a body of another length
    /// fails. The default ignores the size.
    async fn write_blob_of_size(
        &self,
        hash: AssetHash,
        meta: pb::AssetMeta,
        _size: u64,
        body: ByteStream,
    ) -> Result<Pushed, CanError> {
        self.write_blob(hash, meta, body).await
    }

    /// The outboard of a held asset ([`store::ranges`]) when the store has
    /// it at hand, `None` otherwise (not held, or not kept). The default
    /// keeps none: computing one means reading the whole asset, which a
    /// sender pays only for a peer that holds part of it
    /// ([`outboard_by_reading`]); otherwise it sends the asset whole.
    async fn outboard(&self, _hash: AssetHash) -> Result<Option<Outboard>, CanError> {
        Ok(None)
    }

    /// Whether this store has the outboard of every large asset it holds
    /// at hand ([`outboard`](Self::outboard)), kept or quick to compute, so
    /// that it can serve the runs of groups several sources are asked for
    /// ([`crate::engine::split`]). Asked as each session begins. The
    /// default has none: computing one means reading the whole asset.
    async fn keeps_outboards(&self) -> bool {
        false
    }

    /// Whether [`outboard`](Self::outboard) costs a request to another
    /// process, so that a sender asks for one only where ranges pay for it.
    /// The default (a store in this process) answers from its own disk or
    /// memory.
    fn outboards_cost_a_request(&self) -> bool {
        false
    }

    /// Whether this store uploads a large asset as its bytes arrive in
    /// order (blobs in object storage): a lone source then sends such an
    /// asset whole, in order, instead of by runs of groups on several
    /// streams. The default does not.
    fn uploads_in_order(&self) -> bool {
        false
    }

    /// Whether this store keeps partial assets, so that the groups of one
    /// large asset may arrive from several deliveries at once
    /// ([`write_ranges`](Self::write_ranges)). The default keeps none.
    fn keeps_partials(&self) -> bool {
        false
    }

    /// For each of `hashes` this store holds a partial asset of: the groups
    /// it still lacks. The default keeps no partial assets.
    async fn resume_points(
        &self,
        _hashes: &[AssetHash],
    ) -> Result<Vec<(AssetHash, Vec<std::ops::Range<u64>>)>, CanError> {
        Ok(Vec::new())
    }

    /// Writes groups of a large asset whose verified `outboard` is given,
    /// each verified before it is kept: a group that does not verify fails
    /// the call with [`CanError::BadRange`], keeping what came before it. A
    /// store that keeps partial assets keeps what arrived when the groups
    /// end early, for a later call to complete. The default keeps none: it
    /// takes every group, in order, into [`write_blob`](Self::write_blob).
    async fn write_ranges(
        &self,
        meta: pb::AssetMeta,
        outboard: Outboard,
        groups: GroupStream,
    ) -> Result<RangesWritten, CanError> {
        write_ranges_whole(self, meta, outboard, groups).await
    }

    /// Partial assets kept, for `status` (none by default).
    async fn partial_stats(&self) -> Result<PartialStats, CanError> {
        Ok(PartialStats::default())
    }

    /// At most `limit` of the partial assets kept, with their progress,
    /// those being received first (none by default).
    async fn partial_assets(&self, _limit: usize) -> Result<Vec<PartialAsset>, CanError> {
        Ok(Vec::new())
    }

    /// How the object storage the store keeps its bytes in has been doing,
    /// for `status` and `/metrics`; `None` for a store without (the default).
    fn object_stats(&self) -> Option<store::objects::ObjectStats> {
        None
    }
}
