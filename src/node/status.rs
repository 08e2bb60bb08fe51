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
//! | `id` | this node's endpoint id (what `--allow` takes) |
//! | `live_links` | peer connections in live sync now |
//! | `partial` | `{"assets": N, "bytes": N}`: large assets received in part, kept for a later transfer to complete (they count against the store's quota for unfinished transfers and are dropped when idle too long) |
//! | `payload_bytes` | asset bytes moved, both ways |
//! | `peers` | one [`PeerRecord`](super::peers::PeerRecord) per peer dialled or accepted |
//! | `sessions` | sessions completed |
//! | `ticket` | this node's ticket (what `--peer` takes) |
//!
//! The daemon merges this router with the CAN API's when its store is
//! embedded; the routes do not overlap.

use axum::routing::get;
use axum::Router;

use super::{metrics, Node};

/// The `Content-Type` of `/metrics`: Prometheus text exposition, version 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// `/status` (JSON) and `/metrics` (Prometheus text) of `node`.
pub fn router(node: &Node) -> Router {
    // Taken once, when the daemon prints its ticket: /status shows the
    // ticket peers were given.
    let ticket = node.ticket().to_string();
    let status = {
        let node = node.clone();
        move || {
            let (node, ticket) = (node.clone(), ticket.clone());
            async move {
                let (sent, received, bytes) = node.stats().snapshot();
                let gauges = node.gauges();
                // A store that cannot say shows none.
                let partial = node.can().partial_stats().await.unwrap_or_default();
                // Through `json!`, so the keys (the peer records' too) come
                // out sorted, as clients have always seen them.
                axum::Json(serde_json::json!({
                    "id": node.endpoint().id().to_string(),
                    "ticket": ticket,
                    "assets_sent": sent,
                    "assets_received": received,
                    "payload_bytes": bytes,
                    "live_links": gauges.live_links,
                    "sessions": gauges.sessions,
                    "partial": partial,
                    "object_storage": node.can().object_stats(),
                    "peers": node.peers().snapshot(),
                }))
            }
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
        .route("/metrics", get(metrics))
}
