//! `/metrics` of the daemon's `--http` port: the node's counters in the
//! Prometheus text exposition format (version 0.0.4).
//!
//! Counters are node-wide, summed over every peer and session; per-peer
//! series are not kept yet (see issue 5's note).

use std::fmt::Write as _;

use crate::engine::EngineStats;

/// What the node does besides the engine counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeGauges {
    /// Connections in their live phase now.
    pub live_links: u64,
    /// Sessions completed since start.
    pub sessions: u64,
}

/// The Prometheus text of `stats` and `gauges`.
pub fn render(stats: &EngineStats, gauges: NodeGauges) -> String {
    let get = EngineStats::get;
    let series: [(&str, &str, &str, u64); 13] = [
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
    ];
    let mut out = String::new();
    for (name, kind, help, value) in series {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
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
        EngineStats::get(&stats.assets_sent);
        stats
            .duplicates
            .store(7, std::sync::atomic::Ordering::Relaxed);
        let text = render(
            &stats,
            NodeGauges {
                live_links: 2,
                sessions: 5,
            },
        );
        assert!(text.contains("# TYPE cansync_duplicates_received_total counter\ncansync_duplicates_received_total 7\n"));
        assert!(text.contains("\ncansync_live_links 2\n"));
        assert!(text.contains("\ncansync_sessions_total 5\n"));
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, 13);
        assert_eq!(text.matches("# HELP").count(), 13);
    }
}
