//! The mesh scenario: three nodes, data spread across them, all converge.
//!
//! Log-normal assets are dealt round-robin to CANs A, B and C, and every tenth
//! one to a second node too (so the same asset arrives from two sides). Daemon
//! A only accepts; B dials A; C dials A and B; all re-sync every
//! `--resync-secs`. Measured: from starting B's daemon until every CAN's
//! `GET /health` counts every asset (polled every [`POLL`]). `bytes` is what
//! had to move: for each node, the assets it lacked.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use can_sync::asset::AssetHash;
use can_sync::can::Can;

use super::Ctx;
use crate::agents::{self, Faults};
use crate::config::Scenario;
use crate::data::{self, Gen, Loaded, Plan};
use crate::report::Record;
use crate::verify;

/// How often the CANs' counts are read while converging.
const POLL: Duration = Duration::from_millis(50);
/// Nodes of the mesh.
const NODES: [&str; 3] = ["A", "B", "C"];

/// One run of the mesh scenario.
pub async fn run(ctx: &Ctx, protocol: u8, run: u32) -> Result<Record> {
    let salt = ctx.salt(Scenario::Mesh, run);
    let plans = data::lognormal(ctx.sizes.mesh_bytes, ctx.sizes.max_asset_size, salt);
    let (launcher, _scratch) = ctx.launcher()?;
    let progress = &ctx.progress;

    progress.phase("starting CANs");
    let none = Faults::default();
    let (a, b, c) = tokio::try_join!(
        launcher.can_server("can-a", none),
        launcher.can_server("can-b", none),
        launcher.can_server("can-c", none)
    )?;
    let cans = [&a, &b, &c];

    progress.phase("loading A, B, C");
    let mut shares: [Vec<Plan>; 3] = Default::default();
    for plan in &plans {
        let home = plan.index as usize % 3;
        shares[home].push(*plan);
        if plan.index % 10 == 0 {
            shares[(home + 1) % 3].push(*plan);
        }
    }
    let done = Arc::new(AtomicU64::new(0));
    progress.count(
        done.clone(),
        shares.iter().map(|s| s.len() as u64).sum(),
        "assets",
    );
    let gen = Gen::new("mesh", salt);
    let (la, lb, lc) = tokio::try_join!(
        data::load(&a.can, &shares[0], &gen, &done),
        data::load(&b.can, &shares[1], &gen, &done),
        data::load(&c.can, &shares[2], &gen, &done)
    )?;
    let held = [&la, &lb, &lc];
    let mut union: HashMap<AssetHash, Loaded> = HashMap::new();
    for l in held.iter().flat_map(|h| h.iter()) {
        union.insert(l.hash, l.clone());
    }
    let expected: Vec<Loaded> = union.values().cloned().collect();
    let mut record = Record::new("mesh", protocol, run);
    for h in held {
        let has: HashMap<AssetHash, ()> = h.iter().map(|l| (l.hash, ())).collect();
        for l in expected.iter().filter(|l| !has.contains_key(&l.hash)) {
            record.assets += 1;
            record.bytes += l.size;
        }
    }

    progress.phase("starting daemons");
    let resync = ctx.sizes.resync_secs;
    let da = launcher
        .daemon("daemon-a", &a.url, &[], protocol, resync)
        .await?;
    progress.phase("converging");
    for (name, can) in NODES.iter().zip(cans) {
        progress.watch(name, &can.can, expected.len() as u64);
    }
    let started = Instant::now();
    let db = launcher
        .daemon("daemon-b", &b.url, &[&da.ticket], protocol, resync)
        .await?;
    let dc = launcher
        .daemon(
            "daemon-c",
            &c.url,
            &[&da.ticket, &db.ticket],
            protocol,
            resync,
        )
        .await?;
    let deadline = started + ctx.sizes.timeout;
    let mut converged = false;
    while Instant::now() < deadline {
        let mut all = true;
        for can in cans {
            let count = can.can.stats().await.map(|s| s.assets).unwrap_or(0);
            all &= count == expected.len() as u64;
        }
        if all {
            converged = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    record.secs = started.elapsed().as_secs_f64();

    progress.phase("checking");
    let http = agents::status_client()?;
    let daemons = [("daemon-a", da), ("daemon-b", db), ("daemon-c", dc)];
    record.wire_bytes = agents::wire_bytes(&http, &daemons).await;
    let mut error = None;
    for (name, daemon) in daemons {
        match daemon.stop().await {
            Ok(exit) => record.agent(name, &exit),
            Err(err) => error = error.or(Some(format!("{err:#}"))),
        }
    }
    let nodes: Vec<(&str, &can_sync::can::HttpCan)> = NODES
        .iter()
        .copied()
        .zip(cans.iter().map(|c| &*c.can))
        .collect();
    let verdict = verify::check(&nodes, &expected).await?;
    tokio::join!(a.stop(), b.stop(), c.stop());
    if !converged {
        error = Some(format!(
            "not converged after {:?}: {}",
            ctx.sizes.timeout,
            verdict.summary()
        ));
    } else if !verdict.ok() {
        error = Some(format!("did not converge: {}", verdict.summary()));
    }
    Ok(record.finish(converged && verdict.ok(), error))
}
