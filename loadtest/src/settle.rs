//! Waiting for other processes to reach a state: a daemon's live links,
//! the asset counts of nodes' stores. Neither has a push channel the
//! harness could await ("you now hold N", "your links are up"), so both
//! are polled at [`POLL`] until they hold or a deadline passes; the caller
//! says what it waited for when they do not.

use std::time::{Duration, Instant};

use can_sync::can::{Can, HttpCan};

use crate::agents::Daemon;

/// How often a daemon's gauge or a store's count is read while waiting.
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// Waits until `daemon` has exactly `links` live links (every peer
/// connected, no dead link left); false if `deadline` came first.
pub(crate) async fn live_links(
    daemon: &Daemon,
    http: &reqwest::Client,
    links: u64,
    deadline: Instant,
) -> bool {
    loop {
        if daemon.metric(http, "cansync_live_links").await == Some(links) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every one of `cans` holds `count` assets; false if
/// `deadline` came first.
pub(crate) async fn all_hold(cans: &[(&str, &HttpCan)], count: u64, deadline: Instant) -> bool {
    loop {
        let mut all = true;
        for (_, can) in cans {
            let held = can.stats().await.map_or(0, |s| s.assets);
            all &= held >= count;
            if !all {
                break;
            }
        }
        if all {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}
