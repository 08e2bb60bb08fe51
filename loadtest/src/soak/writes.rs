//! The soak's writes: each node, the measured daemon and every peer, gets
//! new assets through its own CAN API at a steady rate, so data flows both
//! ways on every link for the whole run.
//!
//! Asset `n` of node `k` is asset `k × NODE_STRIDE + n` of the run's
//! [`Gen`]: bytes and metadata are a pure function of it, and no two nodes
//! write the same asset. Every write is acknowledged before it is counted:
//! an acknowledged write is durable, so the asset must end up on every node
//! whatever happens to the one that took it afterwards, a kill included.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::path::PathBuf;

use anyhow::Result;
use can_sync::can::HttpCan;
use tokio::sync::watch;

use super::sampler::Churning;
use crate::data::{self, Content, Gen, Loaded, Plan};

/// Indices of one node's assets start at its number times this.
const NODE_STRIDE: u64 = 1_000_000;
/// Indices of the archive loaded before the churn start here, past every
/// node's (at most [`MAX_NODES`]). An index is also a metadata time in ms
/// after the generator's base, a day back: every index stays below a day,
/// or stores would refuse the stamp as ahead of their clock.
const ARCHIVE: u64 = MAX_NODES * NODE_STRIDE;
/// Bytes of each archived asset: what the archive is for is its count.
const ARCHIVE_ASSET: u64 = 512;
/// Nodes a run may write to: the measured daemon and its peers.
pub(crate) const MAX_NODES: u64 = 80;
const _: () = assert!(
    (MAX_NODES + 1) * NODE_STRIDE < 24 * 3600 * 1000,
    "stamps within a day"
);

/// Makes and pushes one node's assets.
pub(crate) struct Writer {
    /// The run's generator.
    pub(crate) gen: Gen,
    /// The node written to: 0 for the measured daemon, 1.. for the peers.
    pub(crate) node: u64,
    /// Bytes of each asset.
    pub(crate) size: u64,
    /// Assets written so far.
    pub(crate) count: u64,
    /// Counts every acknowledged write of the run.
    pub(crate) churning: Arc<Churning>,
}

impl Writer {
    /// Pushes the node's next asset to `can` (half of them random bytes,
    /// half text); what was acknowledged.
    pub(crate) async fn write(&mut self, can: &HttpCan) -> Result<Loaded> {
        let plan = Plan {
            index: self.node * NODE_STRIDE + self.count,
            size: self.size,
            content: if self.count.is_multiple_of(2) {
                Content::Random
            } else {
                Content::Text
            },
        };
        let loaded = data::push(can, self.gen.make(plan)).await?;
        self.count += 1;
        self.churning.written.fetch_add(1, Ordering::Relaxed);
        Ok(loaded)
    }
}

/// Puts the archive, `count` assets of [`ARCHIVE_ASSET`] bytes (half
/// random, half text), into the embedded store in each of `stores` before
/// any daemon opens them ([`data::into_stores`]). Seeding it over the
/// network instead would have the measured daemon serve every peer's first
/// session at once, and its heap would keep that peak for the whole run.
/// What every node holds now.
pub(crate) async fn archive(stores: &[PathBuf], gen: &Gen, count: u64) -> Result<Vec<Loaded>> {
    data::into_stores(
        stores,
        gen,
        &data::alternating(ARCHIVE, count, ARCHIVE_ASSET),
    )
    .await
}

/// Writes to `can` every `every`, from `first`, until `over` turns true;
/// the assets acknowledged, and the failures.
pub(crate) async fn steadily(
    writer: &mut Writer,
    can: &HttpCan,
    first: Instant,
    every: Duration,
    mut over: watch::Receiver<bool>,
) -> (Vec<Loaded>, Vec<String>) {
    let (mut written, mut failures) = (Vec::new(), Vec::new());
    let mut next = first;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            _ = over.wait_for(|over| *over) => return (written, failures),
        }
        match writer.write(can).await {
            Ok(loaded) => written.push(loaded),
            Err(err) => failures.push(format!("writing to node {}: {err:#}", writer.node)),
        }
        next = after(next, every);
    }
}

/// The write after one due at `due`: `every` later, or now when a slow
/// write or a restart made it late (missed writes are skipped, not
/// bunched).
pub(crate) fn after(due: Instant, every: Duration) -> Instant {
    (due + every).max(Instant::now())
}
