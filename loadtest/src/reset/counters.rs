//! What each daemon says it received, from its own `/metrics`: assets
//! newly stored (`cansync_assets_received_total`), assets it already had
//! (`cansync_duplicates_received_total`) and the frame bytes it read and
//! wrote (`cansync_wire_bytes_*_total`).
//!
//! The counters live in the process: a node started again counts from
//! zero, so what it did since its start is its reading as is, and what the
//! others did is the difference of two readings ([`Counters::since`]).
//! Readings are taken when the mesh is quiet ([`quiet`]): with something
//! still in flight, a duplicate could land after the reading and be missed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::agents::{self, Daemon};

/// Between two readings that must be equal for the mesh to count as quiet:
/// longer than a live offer's round trip on loopback, short against a
/// round.
const QUIET_GAP: Duration = Duration::from_secs(1);

/// One daemon's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Counters {
    /// Assets received and newly stored.
    pub(crate) received: u64,
    /// Assets received that the store already had.
    pub(crate) duplicates: u64,
    /// Frame bytes read from data streams.
    pub(crate) wire_bytes_received: u64,
    /// Frame bytes written to data streams.
    pub(crate) wire_bytes_sent: u64,
}

impl Counters {
    /// The counters in a `/metrics` text; `None` if one is missing.
    pub(crate) fn parse(metrics: &str) -> Option<Self> {
        let series = |name| agents::series(metrics, name);
        Some(Self {
            received: series("cansync_assets_received_total")?,
            duplicates: series("cansync_duplicates_received_total")?,
            wire_bytes_received: series("cansync_wire_bytes_received_total")?,
            wire_bytes_sent: series("cansync_wire_bytes_sent_total")?,
        })
    }

    /// What was counted between `before` and `self`, readings of the same
    /// process.
    pub(crate) fn since(self, before: Self) -> Self {
        Self {
            received: self.received.saturating_sub(before.received),
            duplicates: self.duplicates.saturating_sub(before.duplicates),
            wire_bytes_received: self
                .wire_bytes_received
                .saturating_sub(before.wire_bytes_received),
            wire_bytes_sent: self.wire_bytes_sent.saturating_sub(before.wire_bytes_sent),
        }
    }
}

/// Reads `daemon`'s counters.
pub(crate) async fn read(name: &str, daemon: &Daemon, http: &reqwest::Client) -> Result<Counters> {
    let metrics = daemon
        .metrics(http)
        .await
        .with_context(|| format!("{name} did not answer /metrics"))?;
    Counters::parse(&metrics).with_context(|| format!("{name}'s /metrics lacks a counter"))
}

/// Every daemon's counters, read until two readings [`QUIET_GAP`] apart are
/// equal (nothing moved in between), or `deadline`: the last readings, and
/// whether they were quiet.
pub(crate) async fn quiet(
    daemons: &[(&str, &Daemon)],
    http: &reqwest::Client,
    deadline: Instant,
) -> Result<(Vec<Counters>, bool)> {
    let mut last = read_all(daemons, http).await?;
    loop {
        // Nothing announces "nothing in flight": compare readings.
        tokio::time::sleep(QUIET_GAP).await;
        let now = read_all(daemons, http).await?;
        if now == last {
            return Ok((now, true));
        }
        if Instant::now() >= deadline {
            return Ok((now, false));
        }
        last = now;
    }
}

async fn read_all(daemons: &[(&str, &Daemon)], http: &reqwest::Client) -> Result<Vec<Counters>> {
    let mut all = Vec::with_capacity(daemons.len());
    for (name, daemon) in daemons {
        all.push(read(name, daemon, http).await?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_are_read_from_the_metrics_text() {
        let text = "# HELP cansync_assets_received_total Assets received and newly stored.\n\
                    # TYPE cansync_assets_received_total counter\n\
                    cansync_assets_received_total 120\n\
                    cansync_duplicates_received_total 7\n\
                    cansync_wire_bytes_sent_total 900\n\
                    cansync_wire_bytes_received_total 5000\n\
                    cansync_peer_duplicates_total{peer=\"ab\"} 7\n";
        let counters = Counters::parse(text).expect("every counter");
        assert_eq!(
            counters,
            Counters {
                received: 120,
                duplicates: 7,
                wire_bytes_received: 5000,
                wire_bytes_sent: 900,
            }
        );
        assert_eq!(Counters::parse("cansync_assets_received_total 1\n"), None);
    }

    #[test]
    fn a_difference_is_taken_counter_by_counter() {
        let before = Counters {
            received: 10,
            duplicates: 2,
            wire_bytes_received: 100,
            wire_bytes_sent: 50,
        };
        let after = Counters {
            received: 25,
            duplicates: 2,
            wire_bytes_received: 400,
            wire_bytes_sent: 60,
        };
        assert_eq!(
            after.since(before),
            Counters {
                received: 15,
                duplicates: 0,
                wire_bytes_received: 300,
                wire_bytes_sent: 10,
            }
        );
    }
}
