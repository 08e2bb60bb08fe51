//! The mesh scenario: three nodes, data spread across them, all converge.
//!
//! Log-normal assets are dealt round-robin to CANs A, B and C, and every tenth
//! one to a second node too (so the same asset arrives from two sides). Daemon
//! A only accepts; B dials A; C dials A and B; all re-sync every
//! `--resync-secs`. Measured: from starting B's daemon until every CAN's
//! `GET /health` counts every asset (polled every [`POLL`]). `bytes` is what
//! had to move: for each node, the assets it lacked.
//!
//! Then a live phase: new assets written round-robin to A, B and C at
//! `--live-rate` for two seconds; each one's arrival on the two other nodes is
//! timestamped from their change events, which gives the record's latency
//! percentiles (from the writing CAN's acknowledgement to the event).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use can_sync::asset::AssetHash;
use can_sync::can::{Can, HttpCan};

use super::{Arrivals, Ctx};
use crate::agents::{self, Faults};
use crate::config::Scenario;
use crate::data::{self, Content, Gen, Loaded, Plan};
use crate::report::{percentile, Record};
use crate::verify;

/// How often the CANs' counts are read while converging.
const POLL: Duration = Duration::from_millis(50);
/// Nodes of the mesh.
const NODES: [&str; 3] = ["A", "B", "C"];

/// One run of the mesh scenario.
pub(crate) async fn run(ctx: &Ctx, protocol: u8, run: u32) -> Result<Record> {
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

    let mut expected = expected;
    let mut live_ok = true;
    if converged {
        progress.phase("live writes");
        let clients = [a.can.clone(), b.can.clone(), c.can.clone()];
        let live = live_writes(ctx, &clients, salt).await?;
        record.p50_ms = percentile(&live.latencies_ms, 50.0);
        record.p95_ms = percentile(&live.latencies_ms, 95.0);
        record.p99_ms = percentile(&live.latencies_ms, 99.0);
        live_ok = live.all_arrived;
        expected.extend(live.written);
    }

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
    if !live_ok {
        error = Some("live writes did not reach every node".into());
    }
    if !converged {
        error = Some(format!(
            "not converged after {:?}: {}",
            ctx.sizes.timeout,
            verdict.summary()
        ));
    } else if !verdict.ok() {
        error = Some(format!("did not converge: {}", verdict.summary()));
    }
    Ok(record.finish(converged && live_ok && verdict.ok(), error))
}

/// What the live phase wrote and how long each write took to reach each
/// other node.
struct LiveWrites {
    written: Vec<Loaded>,
    latencies_ms: Vec<f64>,
    all_arrived: bool,
}

/// Writes new assets round-robin to the nodes at the live rate for two
/// seconds and times their arrival on the other two.
async fn live_writes(ctx: &Ctx, cans: &[Arc<HttpCan>; 3], salt: u64) -> Result<LiveWrites> {
    let s = &ctx.sizes;
    let count = ((s.live_rate * 2.0).round() as u64).max(6);
    let mut arrivals = Arrivals::watch(&[&cans[0], &cans[1], &cans[2]]).await?;

    let gen = Gen::new("mesh-live", salt);
    let mut writes = tokio::task::JoinSet::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / s.live_rate));
    for index in 0..count {
        ticks.tick().await;
        let node = index as usize % 3;
        let plan = Plan {
            index: 1_000_000 + index,
            size: s.live_asset_size,
            content: Content::Random,
        };
        let (can, gen) = (cans[node].clone(), gen.clone());
        writes.spawn(async move {
            let loaded = data::push(&can, gen.make(plan)).await?;
            Ok::<_, anyhow::Error>((loaded, node, Instant::now()))
        });
    }
    let mut written = Vec::new();
    while let Some(joined) = writes.join_next().await {
        written.push(joined.context("writer task")??);
    }

    // Each write must reach the two nodes it was not written to.
    let others = |from: usize| (0..3).filter(move |n| *n != from);
    let expected: Vec<(usize, AssetHash)> = written
        .iter()
        .flat_map(|(l, from, _)| others(*from).map(|n| (n, l.hash)))
        .collect();
    let all_arrived = arrivals
        .wait_for(&expected, Instant::now() + s.timeout)
        .await;
    arrivals.stop();
    let latencies_ms = written
        .iter()
        .flat_map(|(l, from, at)| {
            others(*from)
                .filter_map(|n| arrivals.at(n, &l.hash))
                .map(|seen| seen.saturating_duration_since(*at).as_secs_f64() * 1e3)
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(LiveWrites {
        written: written.into_iter().map(|(l, _, _)| l).collect(),
        latencies_ms,
        all_arrived,
    })
}
