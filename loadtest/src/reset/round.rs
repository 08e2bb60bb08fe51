//! One round of `loadtest reset`: the mesh quiet, the counters read, one
//! node stopped, its store deleted and started again while a burst goes to
//! the others; then every node must hold every asset, the counters are
//! read again and every listing is compared with what was loaded.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use can_sync::can::Can;

use super::counters;
use super::mesh::Mesh;
use super::report::{NodeRound, Round};
use crate::data::{self, Gen, Loaded};
use crate::progress::Progress;
use crate::settle;

/// What the rounds share.
pub(crate) struct Run {
    pub(crate) mesh: Mesh,
    pub(crate) gen: Gen,
    pub(crate) http: reqwest::Client,
    pub(crate) progress: Progress,
    /// Every asset every node must hold: the archive, the bursts so far.
    pub(crate) expected: Vec<Loaded>,
    /// Index of the next asset written.
    pub(crate) next_index: u64,
    /// Bytes of each asset written.
    pub(crate) size: u64,
    /// Assets written during each catch-up (0 with `--writes false`).
    pub(crate) burst: u64,
    /// The bound of every wait.
    pub(crate) timeout: Duration,
    /// What went wrong without ending the run.
    pub(crate) problems: Vec<String>,
}

/// Round `number`: resets node `reset` and measures what it cost; an error
/// when a wait ran out.
pub(crate) async fn reset_once(run: &mut Run, number: u32, reset: usize) -> Result<Round> {
    let name = run.mesh.name(reset).to_string();
    run.progress
        .say(&format!("round {number}: waiting for a quiet mesh"));
    run.mesh
        .await_live(&run.http, Instant::now() + run.timeout)
        .await?;
    let (before, quiet_before) = counters::quiet(
        &run.mesh.daemons()?,
        &run.http,
        Instant::now() + run.timeout,
    )
    .await?;

    run.progress.say(&format!(
        "round {number}: {name} stopped, its store deleted, started again"
    ));
    if let Err(err) = run.mesh.stop(reset).await {
        run.problems.push(format!("round {number}: {err:#}"));
    }
    run.mesh.wipe_store(reset)?;
    run.mesh.start(reset).await?;
    let restarted = Instant::now();

    // The burst, spread evenly over the other nodes, written while the
    // restarted node's initial sessions run.
    let others: Vec<usize> = (0..run.mesh.len()).filter(|&i| i != reset).collect();
    let shares = shares(run.burst, others.len());
    let mut plans = Vec::new();
    for share in &shares {
        plans.push(data::alternating(run.next_index, *share, run.size));
        run.next_index += share;
    }
    let assets = run.expected.len() as u64 + run.burst;
    let written = Arc::new(AtomicU64::new(0));
    // A failed write ends the round at once (try_join), not at the end of
    // a catch-up that waits for the asset.
    let writes = async {
        let loads = others.iter().zip(&plans).map(|(&i, plans)| {
            let (mesh, gen, written) = (&run.mesh, &run.gen, &written);
            async move { data::load(&mesh.node(i)?.can, plans, gen, written).await }
        });
        let burst = futures::future::try_join_all(loads)
            .await
            .context("writing the burst")?;
        Ok::<_, anyhow::Error>((burst, restarted.elapsed()))
    };
    let reset_can = run.mesh.node(reset)?.can.clone();
    let deadline = restarted + run.timeout;
    let catch_up = async {
        if settle::all_hold(&[(name.as_str(), &*reset_can)], assets, deadline).await {
            return Ok(restarted.elapsed());
        }
        let held = reset_can.stats().await.map_or(0, |s| s.assets);
        bail!(
            "waited {} s for {name} to hold all {assets} assets again after its restart; it held {held}",
            run.timeout.as_secs()
        )
    };
    let ((burst, burst_written), catch_up) = tokio::try_join!(writes, catch_up)?;
    run.expected.extend(burst.into_iter().flatten());

    run.progress
        .say(&format!("round {number}: waiting for every node"));
    let cans = run.mesh.cans();
    if !settle::all_hold(&cans, assets, deadline).await {
        let mut held = Vec::new();
        for (node, can) in &cans {
            let count = can.stats().await.map_or(0, |s| s.assets);
            held.push(format!("{node} {count}"));
        }
        bail!(
            "waited {} s for every node to hold all {assets} assets; they held: {}",
            run.timeout.as_secs(),
            held.join(", ")
        );
    }
    let all_hold = restarted.elapsed();
    run.mesh
        .await_live(&run.http, Instant::now() + run.timeout)
        .await?;
    let (after, quiet_after) = counters::quiet(
        &run.mesh.daemons()?,
        &run.http,
        Instant::now() + run.timeout,
    )
    .await?;
    let verdict = crate::verify::check(&run.mesh.cans(), &run.expected).await?;
    if !verdict.ok() {
        run.problems.push(format!(
            "round {number}: did not converge: {}",
            verdict.summary()
        ));
    }

    let nodes = (0..run.mesh.len())
        .map(|i| NodeRound {
            name: run.mesh.name(i).to_string(),
            reset: i == reset,
            // The restarted process counts from zero.
            counted: if i == reset {
                after[i]
            } else {
                after[i].since(before[i])
            },
        })
        .collect();
    Ok(Round {
        round: number,
        reset_node: name,
        catch_up_s: catch_up.as_secs_f64(),
        all_hold_s: all_hold.as_secs_f64(),
        burst: run.burst,
        burst_written_s: burst_written.as_secs_f64(),
        assets,
        asset_bytes: run.expected.iter().map(|l| l.size).sum(),
        expected_received: expected_received(assets, run.burst, &shares),
        nodes,
        quiet: quiet_before && quiet_after,
    })
}

/// `burst` assets over `nodes` nodes, as evenly as they go.
fn shares(burst: u64, nodes: usize) -> Vec<u64> {
    let nodes = nodes as u64;
    (0..nodes)
        .map(|i| burst / nodes + u64::from(i < burst % nodes))
        .collect()
}

/// Assets the nodes must newly store in a round: the reset node all
/// `assets`, every other node the burst but its own `shares` of it.
fn expected_received(assets: u64, burst: u64, shares: &[u64]) -> u64 {
    assets + shares.iter().map(|own| burst - own).sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_shared_evenly_and_each_node_receives_the_others_shares() {
        assert_eq!(shares(2000, 2), vec![1000, 1000]);
        assert_eq!(shares(10, 3), vec![4, 3, 3]);
        assert_eq!(shares(0, 2), vec![0, 0]);
        // Three nodes, one reset: it needs all 22,000, each other node
        // the other's 1,000.
        assert_eq!(expected_received(22_000, 2000, &shares(2000, 2)), 24_000);
        assert_eq!(expected_received(20_000, 0, &shares(0, 2)), 20_000);
    }
}
