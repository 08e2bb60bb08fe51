//! `can-sync status`: what the running daemon is doing, from its `/status`.
//!
//! The daemon is found by `--http ADDR`, or by `--data-dir DIR`, where a
//! daemon started with `--http` writes the address it serves ([`HTTP_FILE`]).
//! It prints a table of the daemon's peers (id, state, last sync, what moved
//! each way, backlog, last error), with a line on object storage's health
//! when the store keeps its bytes in a bucket (`--blobs s3://…`), or with
//! `--json` the `/status` document as the daemon sent it. `--watch SECS` redraws it every SECS seconds with the
//! rates since the last redraw, until interrupted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use can_sync::can::PartialStats;
use can_sync::clock::now_ms;
use clap::Args;
use serde::Deserialize;

/// Where a daemon started with `--http` writes the address it serves.
pub(crate) const HTTP_FILE: &str = "http";

#[derive(Args)]
pub(crate) struct StatusArgs {
    /// The node's data folder (its daemon runs with --http).
    #[arg(long, required_unless_present = "http", conflicts_with = "http")]
    data_dir: Option<PathBuf>,
    /// The daemon's --http address.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Print the daemon's /status document (JSON) instead of a table.
    #[arg(long)]
    json: bool,
    /// Redraw every SECS seconds, with rates, until interrupted.
    #[arg(long, value_name = "SECS")]
    watch: Option<u64>,
}

/// The parts of `/status` the table shows.
#[derive(Debug, Deserialize)]
struct Status {
    id: String,
    #[serde(default)]
    sessions: u64,
    #[serde(default)]
    live_links: u64,
    #[serde(default)]
    partial: PartialStats,
    #[serde(default)]
    peers: Vec<Peer>,
    /// Absent (or null) when the store keeps its bytes on local disk.
    #[serde(default)]
    object_storage: Option<ObjectStorage>,
}

/// How the store's object storage has been doing (`ObjectStats`).
#[derive(Debug, Default, Deserialize)]
struct ObjectStorage {
    #[serde(default)]
    requests: u64,
    #[serde(default)]
    errors: u64,
    #[serde(default)]
    retries: u64,
    #[serde(default)]
    backing_off: u64,
    last_error: Option<String>,
    last_error_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
struct Peer {
    id: String,
    state: String,
    last_sync_ms: Option<i64>,
    last_error: Option<String>,
    #[serde(default)]
    assets_sent: u64,
    #[serde(default)]
    assets_received: u64,
    #[serde(default)]
    bytes_sent: u64,
    #[serde(default)]
    bytes_received: u64,
    #[serde(default)]
    backlog: u64,
}

pub(crate) async fn run(args: StatusArgs) -> Result<()> {
    let addr = match (args.http, &args.data_dir) {
        (Some(addr), _) => addr,
        (None, Some(dir)) => {
            let path = dir.join(HTTP_FILE);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "no daemon address in {}: start the daemon with --http 127.0.0.1:PORT, \
                     or give status --http",
                    path.display()
                )
            })?;
            text.trim()
                .parse()
                .with_context(|| format!("{} holds {text:?}, not an address", path.display()))?
        }
        (None, None) => bail!("give --data-dir or --http"),
    };
    let http = can_sync::can::client::http_client_builder()?
        .timeout(Duration::from_secs(5))
        .build()
        .context("HTTP client")?;
    let url = format!("http://{addr}/status");
    let mut previous: Option<(Instant, Status)> = None;
    loop {
        let body = http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("no daemon answers at {addr}: is it running?"))?
            .bytes()
            .await?;
        if args.json {
            println!("{}", String::from_utf8_lossy(&body).trim());
        } else {
            let status: Status = serde_json::from_slice(&body)
                .context("the daemon's /status is not what this version reads")?;
            let now = Instant::now();
            let since = previous
                .as_ref()
                .map(|(at, before)| (now.duration_since(*at), before));
            if args.watch.is_some() {
                // Clear the screen and go home, as `watch` does.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", table(&status, since, now_ms()));
            previous = Some((now, status));
        }
        let Some(every) = args.watch else {
            return Ok(());
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The table of `status`; with `since` (how long ago, and what it said
/// then), the rates in between.
fn table(status: &Status, since: Option<(Duration, &Status)>, now_ms: i64) -> String {
    let mut out = format!(
        "node {}  sessions {}  live links {}  partial assets {} ({})\n",
        short(&status.id),
        status.sessions,
        status.live_links,
        status.partial.assets,
        mb(status.partial.bytes)
    );
    if let Some(objects) = &status.object_storage {
        out.push_str(&object_storage_line(objects, now_ms));
    }
    if status.peers.is_empty() {
        out.push_str("no peers yet\n");
        return out;
    }
    let before: HashMap<&str, &Peer> = since
        .map(|(_, s)| s.peers.iter().map(|p| (p.id.as_str(), p)).collect())
        .unwrap_or_default();
    out.push_str(&format!(
        "{:<12} {:<12} {:>10} {:>22} {:>22} {:>8}  {}\n",
        "PEER", "STATE", "LAST SYNC", "SENT", "RECEIVED", "BACKLOG", "LAST ERROR"
    ));
    for peer in &status.peers {
        let rate = |now: u64, then: fn(&Peer) -> u64| match (since, before.get(peer.id.as_str())) {
            (Some((took, _)), Some(old)) if !took.is_zero() => format!(
                " {:.1} MB/s",
                now.saturating_sub(then(old)) as f64 / 1e6 / took.as_secs_f64()
            ),
            _ => String::new(),
        };
        let sent = format!(
            "{} ({}){}",
            peer.assets_sent,
            mb(peer.bytes_sent),
            rate(peer.bytes_sent, |p| p.bytes_sent)
        );
        let received = format!(
            "{} ({}){}",
            peer.assets_received,
            mb(peer.bytes_received),
            rate(peer.bytes_received, |p| p.bytes_received)
        );
        out.push_str(&format!(
            "{:<12} {:<12} {:>10} {:>22} {:>22} {:>8}  {}\n",
            short(&peer.id),
            peer.state,
            peer.last_sync_ms
                .map_or_else(|| "never".into(), |at| ago(now_ms - at)),
            sent,
            received,
            peer.backlog,
            peer.last_error.as_deref().unwrap_or("-")
        ));
    }
    out
}

/// One line on object storage: requests, failures, retries, requests
/// backing off right now, and the last failure with how long ago it was.
fn object_storage_line(objects: &ObjectStorage, now_ms: i64) -> String {
    let mut line = format!(
        "object storage: {} requests, {} errors, {} retries, {} backing off",
        objects.requests, objects.errors, objects.retries, objects.backing_off
    );
    if let Some(error) = &objects.last_error {
        let when = objects
            .last_error_at_ms
            .map_or_else(String::new, |at| format!(" ({})", ago(now_ms - at)));
        line.push_str(&format!("; last error{when}: {error}"));
    }
    line.push('\n');
    line
}

fn short(id: &str) -> String {
    id.chars().take(10).collect()
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn ago(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        _ => format!("{} h ago", secs / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(bytes_received: u64) -> Peer {
        Peer {
            id: "abcdef0123456789".into(),
            state: "live".into(),
            last_sync_ms: Some(1_000),
            last_error: None,
            assets_sent: 1,
            assets_received: 2,
            bytes_sent: 0,
            bytes_received,
            backlog: 3,
        }
    }

    #[test]
    fn the_table_shows_each_peer_and_its_rate_since_the_last_look() {
        let previous = Status {
            id: "node0123456789".into(),
            sessions: 1,
            live_links: 1,
            partial: PartialStats::default(),
            peers: vec![peer(1_000_000)],
            object_storage: None,
        };
        let now = Status {
            id: previous.id.clone(),
            sessions: 1,
            live_links: 1,
            partial: PartialStats {
                assets: 1,
                bytes: 5_000_000,
            },
            peers: vec![peer(3_000_000)],
            object_storage: None,
        };
        let text = table(&now, Some((Duration::from_secs(2), &previous)), 61_000);
        assert!(text.contains("abcdef0123"), "{text}");
        assert!(text.contains("live"), "{text}");
        assert!(text.contains("1 min ago"), "{text}");
        assert!(text.contains("2 (3.0 MB) 1.0 MB/s"), "{text}");
        assert!(text.contains("partial assets 1 (5.0 MB)"), "{text}");
        let alone = table(&now, None, 61_000);
        assert!(!alone.contains("MB/s"), "{alone}");
        assert!(!alone.contains("object storage"), "{alone}");
    }

    #[test]
    fn the_table_shows_object_storage_health_when_the_daemon_reports_it() {
        // As the daemon's /status sends it (`ObjectStats`).
        let status: Status = serde_json::from_value(serde_json::json!({
            "id": "node0123456789",
            "peers": [],
            "object_storage": {
                "requests": 120,
                "errors": 3,
                "retries": 2,
                "backing_off": 1,
                "last_error": "Generic S3 error: connection refused",
                "last_error_at_ms": 1_000,
            },
        }))
        .unwrap();
        let text = table(&status, None, 11_000);
        assert!(
            text.contains(
                "object storage: 120 requests, 3 errors, 2 retries, 1 backing off; \
                 last error (10 s ago): Generic S3 error: connection refused\n"
            ),
            "{text}"
        );
        // A healthy bucket: the counts, no error.
        let healthy: Status = serde_json::from_value(serde_json::json!({
            "id": "node0123456789",
            "object_storage": { "requests": 7, "errors": 0, "retries": 0,
                                "backing_off": 0, "last_error": null,
                                "last_error_at_ms": null },
        }))
        .unwrap();
        let text = table(&healthy, None, 11_000);
        assert!(
            text.contains("object storage: 7 requests, 0 errors, 0 retries, 0 backing off\n"),
            "{text}"
        );
        // A store on local disk: /status has `"object_storage": null`.
        let local: Status = serde_json::from_value(serde_json::json!({
            "id": "node0123456789",
            "object_storage": null,
        }))
        .unwrap();
        assert!(!table(&local, None, 11_000).contains("object storage"));
    }
}
