//! `/metrics` of the daemon's `--http` port: the node's counters in the
//! Prometheus text exposition format (version 0.0.4).
//!
//! Node-wide series sum over every peer and session; `cansync_peer_*` series
//! carry a `peer` label (the endpoint id) from the node's [peer
//! records](super::peers). `cansync_runtime_alive_tasks` is read from the
//! tokio runtime that serves the request (the daemon has one): a count that
//! keeps climbing while the peers it serves stay as many is a task leak, what
//! the soak of `loadtest soak` watches for.

use std::fmt::Write as _;

use super::peers::{PeerRecord, PeerState};
use super::refusals::RefusalCounts;
use crate::can::store::objects::ObjectStats;
use crate::engine::EngineStats;

/// What the node does besides the engine counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeGauges {
    /// Connections in their live phase now.
    pub live_links: u64,
    /// Sessions completed since start.
    pub sessions: u64,
    /// Large assets the store keeps in part, for a transfer to resume.
    pub partial_assets: u64,
    /// Bytes those hold.
    pub partial_bytes: u64,
}

/// What the tokio runtime says about itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeGauges {
    /// Tasks spawned and not yet finished (`num_alive_tasks`).
    pub alive_tasks: u64,
}

impl RuntimeGauges {
    /// The runtime this is called on, `None` outside one.
    pub fn current() -> Option<Self> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        Some(Self {
            alive_tasks: handle.metrics().num_alive_tasks() as u64,
        })
    }
}

/// The Prometheus text of a store's object storage (`--blobs s3://…`): its
/// requests, failures and retries, the retries waiting now, and the last
/// failure (its text as a label, its time as the value).
pub fn render_objects(objects: &ObjectStats) -> String {
    let series: [(&str, &str, &str, u64); 4] = [
        (
            "cansync_s3_requests_total",
            "counter",
            "Requests to object storage, retries included.",
            objects.requests,
        ),
        (
            "cansync_s3_errors_total",
            "counter",
            "Requests to object storage that failed.",
            objects.errors,
        ),
        (
            "cansync_s3_retries_total",
            "counter",
            "Requests to object storage made again after a failure that may pass.",
            objects.retries,
        ),
        (
            "cansync_s3_backing_off",
            "gauge",
            "Requests to object storage waiting to be retried now.",
            objects.backing_off,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in series {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    if let (Some(error), Some(at)) = (&objects.last_error, objects.last_error_at_ms) {
        let name = "cansync_s3_last_error_timestamp_ms";
        let error: String = error
            .chars()
            .take(200)
            .map(|c| match c {
                '"' | '\\' | '\n' => ' ',
                c => c,
            })
            .collect();
        let _ = writeln!(
            out,
            "# HELP {name} When object storage last failed (Unix ms), the failure as a label.\n\
             # TYPE {name} gauge\n{name}{{error=\"{error}\"}} {at}"
        );
    }
    out
}

/// The Prometheus text of what the node refused since start, one series
/// per kind (`stranger`, `capability`, `future_stamp`).
pub fn render_refusals(counts: &RefusalCounts) -> String {
    let name = "cansync_refusals_total";
    let mut out = format!(
        "# HELP {name} Connections and updates refused: strangers, dialers without a \
         valid capability, metadata stamped in the future.\n# TYPE {name} counter\n"
    );
    for (kind, count) in [
        ("stranger", counts.strangers),
        ("capability", counts.capabilities),
        ("future_stamp", counts.future_stamps),
    ] {
        let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {count}");
    }
    out
}

/// The Prometheus text of `stats`, `gauges`, each of `peers` and, inside a
/// tokio runtime, the runtime's own gauges.
pub fn render(stats: &EngineStats, gauges: NodeGauges, peers: &[PeerRecord]) -> String {
    render_with(stats, gauges, peers, RuntimeGauges::current())
}

/// [`render`] with the runtime's gauges given (`None`: not rendered).
fn render_with(
    stats: &EngineStats,
    gauges: NodeGauges,
    peers: &[PeerRecord],
    runtime: Option<RuntimeGauges>,
) -> String {
    let get = EngineStats::get;
    let series: [(&str, &str, &str, u64); 15] = [
        (
            "cansync_assets_sent_total",
            "counter",
            "Assets sent to peers.",
            get(&stats.assets_sent),
        ),
        (
            "cansync_assets_received_total",
            "counter",
            "Assets received and newly stored.",
            get(&stats.assets_received),
        ),
        (
            "cansync_duplicates_received_total",
            "counter",
            "Assets received that the store already had.",
            get(&stats.duplicates),
        ),
        (
            "cansync_bytes_sent_total",
            "counter",
            "Asset payload bytes sent.",
            get(&stats.bytes_sent),
        ),
        (
            "cansync_bytes_received_total",
            "counter",
            "Asset payload bytes received.",
            get(&stats.bytes_received),
        ),
        (
            "cansync_wire_bytes_sent_total",
            "counter",
            "Frame bytes written to data streams.",
            get(&stats.wire_bytes_sent),
        ),
        (
            "cansync_wire_bytes_received_total",
            "counter",
            "Frame bytes read from data streams.",
            get(&stats.wire_bytes_received),
        ),
        (
            "cansync_rejects_total",
            "counter",
            "Assets refused on receipt (bad hash, store refusal).",
            get(&stats.rejects),
        ),
        (
            "cansync_retries_total",
            "counter",
            "CAN calls retried.",
            get(&stats.retries),
        ),
        (
            "cansync_send_queue_bytes",
            "gauge",
            "Payload bytes queued between CAN pulls and streams.",
            get(&stats.send_bytes_queued),
        ),
        (
            "cansync_send_queue_bytes_peak",
            "gauge",
            "Most payload bytes ever queued on the send side.",
            get(&stats.send_bytes_queued_peak),
        ),
        (
            "cansync_live_links",
            "gauge",
            "Peer connections in live sync now.",
            gauges.live_links,
        ),
        (
            "cansync_sessions_total",
            "counter",
            "Sessions completed.",
            gauges.sessions,
        ),
        (
            "cansync_partial_assets",
            "gauge",
            "Large assets kept in part for a transfer to resume.",
            gauges.partial_assets,
        ),
        (
            "cansync_partial_bytes",
            "gauge",
            "Bytes of the large assets kept in part.",
            gauges.partial_bytes,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in series {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    type Field = fn(&PeerRecord) -> u64;
    let per_peer: [(&str, &str, &str, Field); 10] = [
        (
            "cansync_peer_assets_sent_total",
            "counter",
            "Assets sent to the peer.",
            |p| p.assets_sent,
        ),
        (
            "cansync_peer_assets_received_total",
            "counter",
            "Assets received from the peer and newly stored.",
            |p| p.assets_received,
        ),
        (
            "cansync_peer_bytes_sent_total",
            "counter",
            "Payload bytes sent to the peer.",
            |p| p.bytes_sent,
        ),
        (
            "cansync_peer_bytes_received_total",
            "counter",
            "Payload bytes received from the peer and newly stored.",
            |p| p.bytes_received,
        ),
        (
            "cansync_peer_wire_bytes_sent_total",
            "counter",
            "UDP datagram bytes sent to the peer, every connection, as they go.",
            |p| p.wire_bytes_sent,
        ),
        (
            "cansync_peer_wire_bytes_received_total",
            "counter",
            "UDP datagram bytes received from the peer, every connection, as they come.",
            |p| p.wire_bytes_received,
        ),
        (
            "cansync_peer_duplicates_total",
            "counter",
            "Assets the peer sent that were already here.",
            |p| p.duplicates,
        ),
        (
            "cansync_peer_rejects_total",
            "counter",
            "Assets refused with the peer, either side.",
            |p| p.rejects,
        ),
        (
            "cansync_peer_backlog",
            "gauge",
            "Local changes waiting to be offered to the peer.",
            |p| p.backlog,
        ),
        (
            "cansync_peer_live",
            "gauge",
            "1 while the peer is connected live.",
            |p| u64::from(p.state == PeerState::Live),
        ),
    ];
    for (name, kind, help, field) in per_peer {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for peer in peers {
            let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", peer.id, field(peer));
        }
    }
    if let Some(runtime) = runtime {
        let name = "cansync_runtime_alive_tasks";
        let _ = writeln!(
            out,
            "# HELP {name} Tasks alive in the node's async runtime.\n# TYPE {name} gauge\n{name} {}",
            runtime.alive_tasks
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_has_help_type_and_its_value() {
        let stats = EngineStats::default();
        stats
            .duplicates
            .store(7, std::sync::atomic::Ordering::Relaxed);
        let peers = crate::node::peers::Peers::default();
        let id = iroh::SecretKey::generate().public();
        peers.set_state(id, PeerState::Live);
        let gauges = NodeGauges {
            live_links: 2,
            sessions: 5,
            partial_assets: 1,
            partial_bytes: 3 << 20,
        };
        let text = render_with(&stats, gauges, &peers.snapshot(), None);
        let live = format!("\ncansync_peer_live{{peer=\"{id}\"}} 1\n");
        assert!(text.contains(&live), "{text}");
        assert!(text.contains("# TYPE cansync_duplicates_received_total counter\ncansync_duplicates_received_total 7\n"));
        assert!(text.contains("\ncansync_live_links 2\n"));
        assert!(text.contains("\ncansync_sessions_total 5\n"));
        assert!(text.contains("\ncansync_partial_bytes 3145728\n"));
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, 15 + 10, "15 node series, 10 for the one peer");
        assert_eq!(text.matches("# HELP").count(), 15 + 10);

        let runtime = RuntimeGauges { alive_tasks: 42 };
        let text = render_with(&stats, gauges, &peers.snapshot(), Some(runtime));
        assert!(text.ends_with(
            "# TYPE cansync_runtime_alive_tasks gauge\ncansync_runtime_alive_tasks 42\n"
        ));
    }

    #[test]
    fn refusals_are_one_counter_labelled_by_kind() {
        let counts = RefusalCounts {
            strangers: 3,
            capabilities: 1,
            future_stamps: 0,
        };
        let text = render_refusals(&counts);
        assert!(text.starts_with("# HELP cansync_refusals_total "), "{text}");
        assert!(
            text.contains("# TYPE cansync_refusals_total counter\n"),
            "{text}"
        );
        for line in [
            "cansync_refusals_total{kind=\"stranger\"} 3\n",
            "cansync_refusals_total{kind=\"capability\"} 1\n",
            "cansync_refusals_total{kind=\"future_stamp\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn outside_a_runtime_there_are_no_runtime_gauges() {
        assert_eq!(RuntimeGauges::current(), None);
        let text = render(&EngineStats::default(), NodeGauges::default(), &[]);
        assert!(!text.contains("cansync_runtime_"), "{text}");
    }

    #[tokio::test]
    async fn alive_tasks_count_what_runs_and_forget_what_ended() {
        let count = || RuntimeGauges::current().expect("in a runtime").alive_tasks;
        let before = count();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waiting = tokio::spawn(async move {
            let _ = rx.await;
        });
        assert_eq!(count(), before + 1);
        let text = render(&EngineStats::default(), NodeGauges::default(), &[]);
        assert!(
            text.contains(&format!("\ncansync_runtime_alive_tasks {}\n", before + 1)),
            "{text}"
        );
        drop(tx);
        waiting.await.expect("the task ends");
        assert_eq!(count(), before);
    }

    /// The object-storage series carry their values, and the last error
    /// becomes a label that cannot break the exposition format.
    #[test]
    fn object_storage_series_carry_counts_and_the_last_error() {
        let text = render_objects(&ObjectStats {
            requests: 40,
            errors: 3,
            retries: 2,
            backing_off: 1,
            last_error: Some("connection refused \"127.0.0.1\"\nretry".into()),
            last_error_at_ms: Some(1_700_000_000_000),
        });
        for line in [
            "cansync_s3_requests_total 40",
            "cansync_s3_errors_total 3",
            "cansync_s3_retries_total 2",
            "cansync_s3_backing_off 1",
            "cansync_s3_last_error_timestamp_ms{error=\"connection refused  127.0.0.1  retry\"} 1700000000000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!render_objects(&ObjectStats::default()).contains("last_error"));
    }
}
