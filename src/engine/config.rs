//! [`EngineConfig`]: every knob of the engine, with measured defaults.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::can::retry::RetryPolicy;

/// Bytes a frame's payload may carry beyond its asset bytes: the protobuf
/// envelope of a bundle or header, and the asset's metadata.
pub const FRAME_ENVELOPE: u64 = 256 * 1024;

/// Every knob of the engine. Defaults are measured on the 2-core reference
/// machine (see PERFORMANCE.md); the daemon and `seed` take each but
/// [`attempts`](Self::attempts) and [`retry_backoff`](Self::retry_backoff) as
/// a flag.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Uni-streams each side opens for data.
    pub streams: u32,
    /// Concurrent CAN pulls on the send side.
    pub pull_workers: usize,
    /// Most assets per pull request.
    pub batch_assets: usize,
    /// Most payload bytes per pull request.
    pub batch_bytes: u64,
    /// Concurrent encode (protobuf + zstd) jobs on the blocking pool.
    pub encode_workers: usize,
    /// Concurrent decode/verify jobs on the blocking pool.
    pub verify_workers: usize,
    /// Concurrent CAN pushes on the receive side.
    pub push_workers: usize,
    /// Depth of every queue between stages, in items.
    pub queue_depth: usize,
    /// zstd level for compressible assets.
    pub zstd_level: i32,
    /// Assets up to this size travel whole in one frame; larger ones stream
    /// as `ASSET_BEGIN`, `ASSET_CHUNK`…, `ASSET_END`.
    pub inline_limit: u64,
    /// Payload bytes per `ASSET_CHUNK`.
    pub chunk_bytes: usize,
    /// How long a stream may stay silent before the session fails.
    pub idle_timeout: Duration,
    /// Attempts of a CAN pull or push before the asset is given up for this
    /// session (the first try included).
    pub attempts: u32,
    /// Pause before the first retry; doubles each time, jittered.
    pub retry_backoff: Duration,
    /// Offer coded reconciliation ([`crate::recon::coded`]) in `HELLO`;
    /// off, sessions exchange full summary lists (the measured baseline).
    pub coded_recon: bool,
    /// Offer the paged full exchange ([`crate::session::v2::paged`]) in
    /// `HELLO`; off, a full exchange sends each side's whole list at once.
    pub paged_lists: bool,
    /// Offer pulled transfers ([`crate::session::v2::pull`]) in `HELLO`:
    /// assets move only when their receiver asks, each claimed node-wide
    /// first; off, each side sends what the peer lacks unasked.
    pub pull: bool,
    /// Offer verified ranges ([`crate::can::store::ranges`]) in `HELLO`
    /// (feature `ranges`): large assets travel as groups, each verified on
    /// arrival, and a receiver holding part of one asks only for the rest.
    /// Off, a large asset travels whole and is checked at its end.
    pub ranges: bool,
    /// Offer split assets ([`crate::engine::split`]) in `HELLO` (feature
    /// `split`, with `ranges`): one large asset taken from several sources
    /// by leases of its groups, and asks by leases served. Set per session
    /// from the store: only one that has outboards at hand offers it, and
    /// only one that keeps partial assets takes leases.
    pub split: bool,
    /// This side takes nothing from the peer: the peer may only read
    /// ([`crate::node::access`]). Announced in `HELLO` as
    /// [`FEATURE_READ_ONLY`](crate::session::v2::FEATURE_READ_ONLY), so the
    /// peer sends nothing; live offers from it are declined. Set per
    /// connection by the node from the peer's right, never by a flag.
    pub read_only_peer: bool,
    /// Summaries per page of the paged full exchange (at most
    /// [`crate::session::v2::paged::MAX_PAGE`]).
    pub list_page: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            streams: 4,
            pull_workers: 4,
            batch_assets: 64,
            batch_bytes: 4 * 1024 * 1024,
            encode_workers: 2,
            verify_workers: 2,
            push_workers: 16,
            queue_depth: 32,
            zstd_level: 3,
            inline_limit: 1024 * 1024,
            chunk_bytes: 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            attempts: 4,
            retry_backoff: Duration::from_millis(100),
            coded_recon: true,
            paged_lists: true,
            pull: true,
            ranges: true,
            split: true,
            read_only_peer: false,
            list_page: 8192,
        }
    }
}

impl EngineConfig {
    /// The largest frame payload this configuration sends or accepts: an
    /// inline asset or a chunk, plus its envelope.
    pub fn max_frame_len(&self) -> u32 {
        // A ranged asset's chunks are whole groups, whatever `chunk_bytes`.
        let group = if self.ranges {
            crate::can::store::ranges::GROUP_BYTES
        } else {
            0
        };
        let body = self.inline_limit.max(self.chunk_bytes as u64).max(group);
        u32::try_from(body + FRAME_ENVELOPE).unwrap_or(u32::MAX)
    }

    /// How CAN calls are retried.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempts: self.attempts.max(1),
            backoff: Backoff::new(self.retry_backoff, self.retry_backoff * 16),
        }
    }
}
