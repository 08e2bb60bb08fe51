//! What the daemon's `--http` port tells about the node: `GET /status`, a JSON
//! object, and `GET /metrics`, the Prometheus text that [`metrics`]
//! renders. Both read the node's counters, gauges and [peer
//! records](super::peers) at the time of the request; neither changes
//! anything.
//!
//! `/status` is one object; its keys, and each peer record's, come out in
//! alphabetical order:
//!
//! | key | what |
//! |---|---|
//! | `assets_received` | assets received and newly stored, every peer |
//! | `assets_sent` | assets sent, every peer |
//! | `grants` | the node's grants ([`GrantView`]: id, right, when made, when they expire, whether live; never the capability), `[]` without any, `null` when the grants file cannot be read |
//! | `id` | this node's endpoint id (what `--allow` takes) |
//! | `live_links` | peer connections in live sync now |
//! | `now_ms` | the node's clock (Unix ms), against which a reader on another machine reads the other times |
//! | `object_storage` | with `--blobs s3://…`, the bucket's requests, errors and retries; `null` otherwise |
//! | `partial` | `{"assets": N, "bytes": N}`: large assets received in part, kept for a later transfer to complete (they count against the store's quota for unfinished transfers and are dropped when idle too long) |
//! | `partial_assets` | up to [`PARTIAL_ASSETS_SHOWN`] of them, those being received first: [`PartialView`]: hash, size, bytes held, whether a transfer is writing it now, when it was last written, and `from`, the peers sending it now |
//! | `payload_bytes` | asset bytes moved, both ways |
//! | `peers` | one [`PeerRecord`](super::peers::PeerRecord) per peer dialled or accepted |
//! | `refusals` | [`RefusalsView`](super::refusals::RefusalsView): counts of strangers, refused capabilities and future-stamped updates since start, and the last few |
//! | `sessions` | sessions completed |
//! | `store` | `{"assets": N, "bytes": N, "disk_bytes": N}`: what the store holds; `disk_bytes` is what its folder takes on disk, measured in the background (every 10 s at most, less often when a walk of the folder takes long), `null` until first measured and for a store the node reaches over HTTP |
//! | `ticket` | this node's ticket (what `--peer` takes) |
//!
//! `GET /status/throughput` is the node's payload rate each way over the
//! last fifteen minutes ([`Series`](super::throughput::Series)), and `GET /`
//! the page ([`super::page`]) that shows all of it in a browser.
//!
//! The daemon merges this router with the CAN API's when its store is
//! embedded; the routes do not overlap.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use serde::Serialize;

use super::access::grants::Grant;
use super::access::Right;
use super::{metrics, page, Node};
use crate::asset::AssetHash;
use crate::can::PartialAsset;

/// The `Content-Type` of `/metrics`: Prometheus text exposition, version 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Partial assets `/status` lists with their progress.
pub const PARTIAL_ASSETS_SHOWN: usize = 10;

/// How long a measured disk use is shown before the folder is walked again.
const DISK_USE_AGE: Duration = Duration::from_secs(10);

/// A partial asset as `/status` shows it: its progress, and the peers it
/// arrives from now (none while idle).
#[derive(Debug, Clone, Serialize)]
pub struct PartialView {
    /// Hash, size, bytes held, whether it is being written, when it was.
    #[serde(flatten)]
    pub asset: PartialAsset,
    /// The endpoint ids of the peers sending it now.
    pub from: Vec<String>,
}

/// A grant as `/status` shows it: what it admits, never the capability
/// (only its holder has that) nor its hash.
#[derive(Debug, Clone, Serialize)]
pub struct GrantView {
    /// What `ticket --revoke` takes.
    pub id: String,
    /// What its holder may do.
    pub right: Right,
    /// When it was made (Unix ms).
    pub created_at_ms: i64,
    /// When it stops admitting (Unix ms); `null`: never.
    pub expires_at_ms: Option<i64>,
    /// Whether it admits now.
    pub live: bool,
}

impl GrantView {
    fn of(grant: &Grant, now_ms: i64) -> Self {
        Self {
            id: grant.id.clone(),
            right: grant.right,
            created_at_ms: grant.created_at_ms,
            expires_at_ms: grant.expires_at_ms,
            live: grant.is_live(now_ms),
        }
    }
}

/// What the store's folder takes on disk. A walk stats every file, which
/// on a store of millions takes long: so `/status` never waits for one. It
/// shows the last figure (none until the first walk ends) and starts a walk
/// in the background when none runs and the last is older than
/// [`DISK_USE_AGE`], or ten times the last walk's length if that is more.
#[derive(Debug)]
struct DiskUse {
    dir: PathBuf,
    /// When the last walk ended, how long it took, what it found.
    last: Mutex<Option<(Instant, Duration, u64)>>,
    walking: AtomicBool,
}

impl DiskUse {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            last: Mutex::new(None),
            walking: AtomicBool::new(false),
        }
    }

    /// The last figure, starting a walk if it is due; never waits.
    fn bytes(self: &Arc<Self>) -> Option<u64> {
        let last = *self.last.lock().expect("disk use lock");
        let due =
            last.is_none_or(|(ended, took, _)| ended.elapsed() >= DISK_USE_AGE.max(took * 10));
        if due && !self.walking.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let bytes = disk_bytes(&this.dir);
                *this.last.lock().expect("disk use lock") =
                    Some((Instant::now(), started.elapsed(), bytes));
                this.walking.store(false, Ordering::Release);
            });
        }
        last.map(|(_, _, bytes)| bytes)
    }
}

/// Bytes the files under `dir` take on disk (allocated blocks, so a sparse
/// partial asset counts what it holds); what cannot be read counts nothing.
pub fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_bytes(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The node's grants as `/status` shows them: `[]` without a grant book,
/// `None` when its file cannot be read (the page says so, rather than
/// "no grant").
async fn grant_views(node: &Node, now_ms: i64) -> Option<Vec<GrantView>> {
    let Some(book) = node.access().grant_book().cloned() else {
        return Some(Vec::new());
    };
    // A file read: off the async workers.
    let grants = tokio::task::spawn_blocking(move || book.list())
        .await
        .ok()?;
    match grants {
        Ok(grants) => Some(
            grants
                .iter()
                .map(|grant| GrantView::of(grant, now_ms))
                .collect(),
        ),
        Err(err) => {
            tracing::warn!(error = %err, "/status: the grants are unreadable");
            None
        }
    }
}

/// The `/status` object of `node`; see the module docs.
async fn status_json(node: &Node, ticket: &str, disk: Option<&Arc<DiskUse>>) -> serde_json::Value {
    let (sent, received, bytes) = node.stats().snapshot();
    let gauges = node.gauges();
    // A store that cannot say shows none.
    let partial = node.can().partial_stats().await.unwrap_or_default();
    let partial_assets: Vec<PartialView> = node
        .can()
        .partial_assets(PARTIAL_ASSETS_SHOWN)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|asset| {
            let from = asset
                .hash
                .parse::<AssetHash>()
                .map(|hash| node.stats().arriving.from(&hash))
                .unwrap_or_default();
            PartialView {
                asset,
                from: from.iter().map(ToString::to_string).collect(),
            }
        })
        .collect();
    let stats = node.can().stats().await.ok();
    let disk_bytes = disk.and_then(DiskUse::bytes);
    let now = crate::clock::now_ms();
    let grants = grant_views(node, now).await;
    // Through `json!`, so the keys (the peer records' too) come out
    // sorted, as clients have always seen them.
    serde_json::json!({
        "id": node.endpoint().id().to_string(),
        "ticket": ticket,
        "assets_sent": sent,
        "assets_received": received,
        "payload_bytes": bytes,
        "live_links": gauges.live_links,
        "sessions": gauges.sessions,
        "partial": partial,
        "partial_assets": partial_assets,
        "object_storage": node.can().object_stats(),
        "peers": node.peers().snapshot(),
        "refusals": node.refusals().snapshot(),
        "grants": grants,
        "now_ms": now,
        "store": {
            "assets": stats.map(|s| s.assets),
            "bytes": stats.map(|s| s.bytes),
            "disk_bytes": disk_bytes,
        },
    })
}

/// `/status` (JSON), `/status/throughput`, `/metrics` (Prometheus text)
/// and the page (`/`) of `node`. `store_dir` is the embedded store's
/// folder, whose disk use `/status` shows; `None` for a store reached over
/// HTTP.
pub fn router(node: &Node, store_dir: Option<PathBuf>) -> Router {
    // Taken once, when the daemon prints its ticket: /status shows the
    // ticket peers were given.
    let ticket = node.ticket().to_string();
    let disk = store_dir.map(|dir| Arc::new(DiskUse::new(dir)));
    let status = {
        let node = node.clone();
        move || {
            let (node, ticket, disk) = (node.clone(), ticket.clone(), disk.clone());
            async move { axum::Json(status_json(&node, &ticket, disk.as_ref()).await) }
        }
    };
    let throughput = {
        let node = node.clone();
        move || {
            let series = node.throughput().series();
            async move { axum::Json(series) }
        }
    };
    let metrics = {
        let node = node.clone();
        move || {
            let node = node.clone();
            async move {
                let mut gauges = node.gauges();
                let partial = node.can().partial_stats().await.unwrap_or_default();
                gauges.partial_assets = partial.assets;
                gauges.partial_bytes = partial.bytes;
                let mut text = metrics::render(node.stats(), gauges, &node.peers().snapshot());
                text.push_str(&metrics::render_refusals(&node.refusals().counts()));
                if let Some(objects) = node.can().object_stats() {
                    text.push_str(&metrics::render_objects(&objects));
                }
                ([("content-type", METRICS_CONTENT_TYPE)], text)
            }
        }
    };
    Router::new()
        .route("/status", get(status))
        .route("/status/throughput", get(throughput))
        .route("/metrics", get(metrics))
        .merge(page::router())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/status` never waits for a walk: the first look starts one and
    /// shows nothing, a later one shows what it found.
    #[tokio::test]
    async fn disk_use_is_measured_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("blob"), vec![1u8; 64 * 1024]).unwrap();
        let disk = Arc::new(DiskUse::new(dir.path().to_path_buf()));
        assert_eq!(disk.bytes(), None, "the first look waits for no walk");
        let deadline = Instant::now() + Duration::from_secs(10);
        let bytes = loop {
            if let Some(bytes) = disk.bytes() {
                break bytes;
            }
            assert!(Instant::now() < deadline, "the walk never ended");
            // A blocking thread's work: nothing to await but its result.
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(bytes >= 64 * 1024, "{bytes}");
        assert!(!disk.walking.load(Ordering::Acquire));
    }
}
