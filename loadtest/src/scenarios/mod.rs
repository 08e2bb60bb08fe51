//! The scenarios of issue #3 and what one run of each measures.
//!
//! Every run starts its own processes in a fresh scratch folder, so runs do not
//! share caches or state, and ends with [`crate::verify::check`].
//!
//! - [`bulk`]: small, large, text, mixed and faulty — node A holds the data,
//!   node B is empty; a daemon serves A and `seed` on B pulls everything. The
//!   measured phase is the `seed` process, spawn to exit.
//! - [`live`]: a connected pair of daemons; assets are written to A at a fixed
//!   rate and each one's arrival on B is timestamped.
//! - [`mesh`]: three daemons, data spread over them; measured from the start of
//!   the dialling daemons until every CAN holds everything.
//! - [`crate::raw`]: the ceiling — raw iroh streams, no CAN, no protocol.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use can_sync::asset::AssetHash;
use can_sync::can::{Can, ChangeKind, HttpCan};
use futures::StreamExt;
use tokio::sync::Notify;

use crate::agents::Launcher;
use crate::config::{Scenario, Sizes};
use crate::progress::Progress;
use crate::report::{Record, RAW_PROTOCOL};

pub(crate) mod bulk;
pub(crate) mod live;
pub(crate) mod mesh;

/// What every run needs.
#[derive(Clone)]
pub(crate) struct Ctx {
    /// The `can-sync` binary.
    pub(crate) bin: PathBuf,
    /// Sizes of every scenario.
    pub(crate) sizes: Sizes,
    /// The progress line.
    pub(crate) progress: Progress,
    /// Base of the per-run salts: same seed, same data.
    pub(crate) seed: u64,
    /// Keep each run's scratch folder (logs, daemon data) instead of removing it.
    pub(crate) keep: bool,
}

impl Ctx {
    /// A launcher with a fresh scratch folder (removed when the guard drops,
    /// unless `keep`).
    pub(crate) fn launcher(&self) -> Result<(Launcher, tempfile::TempDir)> {
        let mut dir = tempfile::Builder::new()
            .prefix("can-sync-loadtest-")
            .tempdir()
            .context("creating a scratch folder")?;
        if self.keep {
            dir.disable_cleanup(true);
            self.progress
                .say(&format!("  keeping {}", dir.path().display()));
        }
        let launcher = Launcher {
            bin: self.bin.clone(),
            dir: dir.path().to_path_buf(),
            progress: self.progress.clone(),
            daemon_args: Vec::new(),
        };
        Ok((launcher, dir))
    }

    /// The data salt of one run.
    pub(crate) fn salt(&self, scenario: Scenario, run: u32) -> u64 {
        self.seed
            .wrapping_mul(1_000_003)
            .wrapping_add(scenario as u64 * 1000 + u64::from(run))
    }
}

/// Runs `scenario` once with `protocol`; raw gives one record per stream count.
pub(crate) async fn run(ctx: &Ctx, scenario: Scenario, protocol: u8, run: u32) -> Vec<Record> {
    let result = match scenario {
        Scenario::Raw => return crate::raw::run(ctx, run).await,
        Scenario::Live => live::run(ctx, protocol, run).await,
        Scenario::Mesh => mesh::run(ctx, protocol, run).await,
        bulk_scenario => bulk::run(ctx, bulk_scenario, protocol, run).await,
    };
    let record = result.unwrap_or_else(|err| Record::failed(scenario.name(), protocol, run, &err));
    vec![record]
}

/// The protocols a scenario runs with: raw has none of its own.
pub(crate) fn protocols_of(scenario: Scenario, protocols: &[u8]) -> Vec<u8> {
    if scenario == Scenario::Raw {
        vec![RAW_PROTOCOL]
    } else {
        protocols.to_vec()
    }
}

/// When each asset first showed up in each watched CAN, from the CANs' own
/// change events: what the live and mesh scenarios time propagation with.
pub(crate) struct Arrivals {
    seen: Arc<Mutex<HashMap<(usize, AssetHash), Instant>>>,
    news: Arc<Notify>,
    /// Asset events seen so far, for the progress line.
    pub(crate) count: Arc<AtomicU64>,
    watchers: tokio::task::JoinSet<()>,
}

impl Arrivals {
    /// Subscribes to every CAN of `cans` (node `i` is `cans[i]`) before
    /// anything is written, so no arrival is missed.
    pub(crate) async fn watch(cans: &[&HttpCan]) -> Result<Self> {
        let seen: Arc<Mutex<HashMap<(usize, AssetHash), Instant>>> = Arc::default();
        let news = Arc::new(Notify::new());
        let count = Arc::new(AtomicU64::new(0));
        let mut watchers = tokio::task::JoinSet::new();
        for (node, can) in cans.iter().enumerate() {
            let mut events = can.subscribe(None).await.context("subscribing to events")?;
            let (seen, news, count) = (seen.clone(), news.clone(), count.clone());
            watchers.spawn(async move {
                while let Some(event) = events.next().await {
                    let Ok(event) = event else { continue };
                    if event.kind == ChangeKind::Asset {
                        seen.lock()
                            .expect("arrivals")
                            .entry((node, event.hash))
                            .or_insert_with(Instant::now);
                        count.fetch_add(1, Ordering::Relaxed);
                        news.notify_one();
                    }
                }
            });
        }
        Ok(Self {
            seen,
            news,
            count,
            watchers,
        })
    }

    /// When `hash` first showed up on `node`.
    pub(crate) fn at(&self, node: usize, hash: &AssetHash) -> Option<Instant> {
        self.seen
            .lock()
            .expect("arrivals")
            .get(&(node, *hash))
            .copied()
    }

    /// The latest arrival so far.
    pub(crate) fn latest(&self) -> Option<Instant> {
        self.seen.lock().expect("arrivals").values().max().copied()
    }

    /// Waits until every `(node, hash)` of `expected` has arrived; false if
    /// `deadline` came first.
    pub(crate) async fn wait_for(
        &self,
        expected: &[(usize, AssetHash)],
        deadline: Instant,
    ) -> bool {
        loop {
            let all = {
                let seen = self.seen.lock().expect("arrivals");
                expected.iter().all(|key| seen.contains_key(key))
            };
            if all {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), self.news.notified())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Stops watching.
    pub(crate) fn stop(&mut self) {
        self.watchers.abort_all();
    }
}
