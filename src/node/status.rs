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
//! | `grants` | the node's grants ([`GrantView`]: id, right, when made, when they expire, whether live; never the capability), `[]` without any |
//! | `id` | this node's endpoint id (what `--allow` takes) |
//! | `live_links` | peer connections in live sync now |
//! | `object_storage` | with `--blobs s3://…`, the bucket's requests, errors and retries; `null` otherwise |
//! | `partial` | `{"assets": N, "bytes": N}`: large assets received in part, kept for a later transfer to complete (they count against the store's quota for unfinished transfers and are dropped when idle too long) |
//! | `partial_assets` | up to [`PARTIAL_ASSETS_SHOWN`] of them, those being received first: [`PartialAsset`](crate::can::PartialAsset) (hash, size, bytes held, whether a transfer is writing it now, when it was last written) |
//! | `payload_bytes` | asset bytes moved, both ways |
//! | `peers` | one [`PeerRecord`](super::peers::PeerRecord) per peer dialled or accepted |
//! | `refusals` | [`RefusalsView`](super::refusals::RefusalsView): counts of strangers, refused capabilities and future-stamped updates since start, and the last few |
//! | `sessions` | sessions completed |
//! | `store` | `{"assets": N, "bytes": N, "disk_bytes": N}`: what the store holds; `disk_bytes` (what its folder takes on disk, measured at most every 10 s) is `null` for a store the node reaches over HTTP |
//! | `ticket` | this node's ticket (what `--peer` takes) |
//!
//! `GET /status/throughput` is the node's payload rate each way over the
//! last fifteen minutes ([`Series`](super::throughput::Series)), and `GET /`
//! the [page](super::page) that shows all of it in a browser.
//!
//! The daemon merges this router with the CAN API's when its store is
//! embedded; the routes do not overlap.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use serde::Serialize;

use super::access::grants::Grant;
use super::access::Right;
use super::{metrics, page, Node};

/// The `Content-Type` of `/metrics`: Prometheus text exposition, version 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Partial assets `/status` lists with their progress.
pub const PARTIAL_ASSETS_SHOWN: usize = 10;

/// How long a measured disk use is shown before the folder is walked again.
const DISK_USE_AGE: Duration = Duration::from_secs(10);

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

/// What the store's folder takes on disk, walked at most every
/// [`DISK_USE_AGE`]: a walk of a large store costs a stat per file, too much
/// for every poll of a page.
#[derive(Debug)]
struct DiskUse {
    dir: PathBuf,
    last: Mutex<Option<(Instant, u64)>>,
}

impl DiskUse {
    async fn bytes(self: &Arc<Self>) -> Option<u64> {
        if let Some((at, bytes)) = *self.last.lock().expect("disk use lock") {
            if at.elapsed() < DISK_USE_AGE {
                return Some(bytes);
            }
        }
        let this = self.clone();
        let bytes = tokio::task::spawn_blocking(move || disk_bytes(&this.dir))
            .await
            .ok()?;
        *self.last.lock().expect("disk use lock") = Some((Instant::now(), bytes));
        Some(bytes)
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

/// The `/status` object of `node`; see the module docs.
async fn status_json(node: &Node, ticket: &str, disk: Option<&Arc<DiskUse>>) -> serde_json::Value {
    let (sent, received, bytes) = node.stats().snapshot();
    let gauges = node.gauges();
    // A store that cannot say shows none.
    let partial = node.can().partial_stats().await.unwrap_or_default();
    let partial_assets = node
        .can()
        .partial_assets(PARTIAL_ASSETS_SHOWN)
        .await
        .unwrap_or_default();
    let stats = node.can().stats().await.ok();
    let disk_bytes = match disk {
        Some(disk) => disk.bytes().await,
        None => None,
    };
    let now = crate::clock::now_ms();
    let grants: Vec<GrantView> = node
        .access()
        .grant_book()
        .and_then(|book| book.list().ok())
        .unwrap_or_default()
        .iter()
        .map(|grant| GrantView::of(grant, now))
        .collect();
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
    let disk = store_dir.map(|dir| {
        Arc::new(DiskUse {
            dir,
            last: Mutex::new(None),
        })
    });
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
