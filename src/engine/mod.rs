//! The pipelined transfer engine of protocol v2 (DESIGN §5).
//!
//! ```text
//!  send:    plan ─▶ [batches] ─▶ pull workers ─▶ [bundles] ─▶ encode workers ─▶ [jobs] ─▶ stream writers ═▶
//!  receive: ═▶ stream readers ─▶ [frames] ─▶ decode/verify workers ─▶ [verified] ─▶ push workers
//! ```
//!
//! - [`send`]: pulls what the peer lacks from the CAN in parallel batches,
//!   compresses where a sample says it pays, and spreads frames over several
//!   QUIC uni-streams; assets above the inline limit stream in chunks.
//! - [`receive`]: one reader per stream; decoding, decompression and BLAKE3
//!   verification on the blocking pool; concurrent pushes to the CAN.
//!
//! Every queue between stages is a bounded `async-channel`, so a slow CAN or a
//! slow peer slows its producer instead of growing memory: memory is bounded by
//! queue depths × frame size whatever the archive size. Sending and receiving
//! share nothing but the connection, so neither waits on the other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::can::CanError;

pub mod receive;
pub mod send;

/// Every knob of the engine. Defaults are measured on the 2-core reference
/// machine (see PERFORMANCE.md); each has a command-line flag.
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
    /// Delay before the first retry; doubles each time.
    pub retry_backoff: Duration,
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
        }
    }
}

impl EngineConfig {
    /// The largest frame payload this configuration sends or accepts: an
    /// inline asset or a chunk, plus its protobuf envelope and metadata.
    pub fn max_frame_len(&self) -> u32 {
        let body = self.inline_limit.max(self.chunk_bytes as u64);
        u32::try_from(body + 256 * 1024).unwrap_or(u32::MAX)
    }
}

/// Counters of the engine, shared by all stages and sessions of a node; read
/// by progress bars, `/status`, metrics and the load test.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Assets sent (inline or streamed).
    pub assets_sent: AtomicU64,
    /// Assets received and newly stored.
    pub assets_received: AtomicU64,
    /// Assets received that the store already had.
    pub duplicates: AtomicU64,
    /// Asset payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// Asset payload bytes received.
    pub bytes_received: AtomicU64,
    /// Frame bytes written to data streams.
    pub wire_bytes_sent: AtomicU64,
    /// Frame bytes read from data streams.
    pub wire_bytes_received: AtomicU64,
    /// Assets refused on receipt (bad hash, store refusal).
    pub rejects: AtomicU64,
    /// CAN calls retried.
    pub retries: AtomicU64,
    /// Payload bytes the send side holds between its CAN pulls and its
    /// streams right now: what the bounded queues bound.
    pub send_bytes_queued: AtomicU64,
    /// The most [`Self::send_bytes_queued`] has been.
    pub send_bytes_queued_peak: AtomicU64,
}

impl EngineStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn queue_send_bytes(&self, n: u64) {
        let now = self.send_bytes_queued.fetch_add(n, Ordering::Relaxed) + n;
        self.send_bytes_queued_peak
            .fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn dequeue_send_bytes(&self, n: u64) {
        self.send_bytes_queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// A snapshot: (assets sent, assets received, payload bytes both ways).
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            Self::get(&self.assets_sent),
            Self::get(&self.assets_received),
            Self::get(&self.bytes_sent) + Self::get(&self.bytes_received),
        )
    }
}

/// Runs `call` up to `attempts` times while it fails with a transient error,
/// doubling the delay between tries.
pub(crate) async fn with_retry<T, F, Fut>(
    attempts: u32,
    backoff: Duration,
    stats: &EngineStats,
    mut call: F,
) -> Result<T, CanError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CanError>>,
{
    let mut delay = backoff;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(err) if err.is_transient() && attempt < attempts => {
                EngineStats::add(&stats.retries, 1);
                tracing::debug!(error = %err, attempt, "CAN call failed, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_backoff_then_given_up() {
        let stats = EngineStats::default();
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let result: Result<(), CanError> =
            with_retry(3, Duration::from_millis(100), &stats, || {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err(CanError::Unavailable("500".into())) }
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        assert_eq!(EngineStats::get(&stats.retries), 2);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(300),
            "100 ms then 200 ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let stats = EngineStats::default();
        let calls = AtomicU32::new(0);
        let result: Result<(), CanError> =
            with_retry(5, Duration::from_millis(100), &stats, || {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err(CanError::Invalid("bad".into())) }
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
