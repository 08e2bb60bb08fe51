//! The live scenario: a connected pair; node A gets new assets at a fixed rate
//! for a fixed time; each asset's propagation latency to node B is measured.
//!
//! Daemon A accepts, daemon B dials A and re-syncs every `--resync-secs` (v1 has
//! no live sync; v2 pushes on change). The harness subscribes to B's change
//! events (`GET /sync/events`) before writing, then pushes one asset to A every
//! `1 / --live-rate` s, each on its own task so a slow push never delays the
//! schedule. An asset's latency runs from A acknowledging the push to B's event
//! for it reaching the harness. `secs` runs from the first write to the last
//! arrival; the run fails if any asset has not arrived by then plus the timeout.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use can_sync::asset::AssetHash;
use can_sync::can::HttpCan;

use super::{Arrivals, Ctx};
use crate::agents::{self, Faults};
use crate::config::{Scenario, Sizes};
use crate::data::{self, Content, Gen, Loaded, Plan};
use crate::progress::Progress;
use crate::report::{percentile, Record};
use crate::verify;

/// One run of the live scenario.
pub(crate) async fn run(ctx: &Ctx, protocol: u8, run: u32) -> Result<Record> {
    let s = &ctx.sizes;
    let salt = ctx.salt(Scenario::Live, run);
    let count = ((s.live_rate * s.live_secs).round() as u64).max(1);
    let (launcher, _scratch) = ctx.launcher()?;
    let progress = &ctx.progress;

    progress.phase("starting");
    let none = Faults::default();
    let (a, b) = tokio::try_join!(
        launcher.can_server("can-a", none),
        launcher.can_server("can-b", none)
    )?;
    let da = launcher
        .daemon("daemon-a", &a.url, &[], protocol, s.resync_secs)
        .await?;
    let db = launcher
        .daemon("daemon-b", &b.url, &[&da.ticket], protocol, s.resync_secs)
        .await?;

    let timed = write_and_time(progress, &a.can, &b.can, s, salt).await?;
    let (written, latencies, all_arrived) = (timed.written, timed.latencies_ms, timed.all_arrived);

    let mut record = Record::new("live", protocol, run);
    record.assets = written.len() as u64;
    record.bytes = written.iter().map(|l| l.size).sum();
    record.secs = timed.secs;
    record.p50_ms = percentile(&latencies, 50.0);
    record.p95_ms = percentile(&latencies, 95.0);
    record.p99_ms = percentile(&latencies, 99.0);

    progress.phase("checking");
    let http = agents::status_client()?;
    let daemons = [("daemon-a", da), ("daemon-b", db)];
    record.wire_bytes = agents::wire_bytes(&http, &daemons).await;
    let mut error = None;
    for (name, daemon) in daemons {
        match daemon.stop().await {
            Ok(exit) => record.agent(name, &exit),
            Err(err) => error = error.or(Some(format!("{err:#}"))),
        }
    }
    let verdict = verify::check(&[("A", &a.can), ("B", &b.can)], &written).await?;
    tokio::join!(a.stop(), b.stop());
    if !all_arrived {
        error = Some(format!(
            "{} of {count} assets never reached B",
            count as usize - latencies.len()
        ));
    } else if !verdict.ok() {
        error = Some(format!("did not converge: {}", verdict.summary()));
    }
    Ok(record.finish(all_arrived && verdict.ok(), error))
}

/// What [`write_and_time`] saw.
pub(crate) struct Timed {
    /// Every asset written to A.
    pub(crate) written: Vec<Loaded>,
    /// Each arrived asset's latency, A's acknowledgement to B's event, ms.
    pub(crate) latencies_ms: Vec<f64>,
    /// Every asset reached B before the timeout.
    pub(crate) all_arrived: bool,
    /// First write to last arrival.
    pub(crate) secs: f64,
}

/// Writes `live_rate × live_secs` assets of `live_asset_size` to `a` on a
/// fixed schedule and times each one's arrival on `b` (watched from before
/// the first write); waits at most `timeout` after the last write.
pub(crate) async fn write_and_time(
    progress: &Progress,
    a: &Arc<HttpCan>,
    b: &HttpCan,
    s: &Sizes,
    salt: u64,
) -> Result<Timed> {
    let count = ((s.live_rate * s.live_secs).round() as u64).max(1);
    // Arrival times on B (node 0 of the watch), from B's own change events.
    let mut arrivals = Arrivals::watch(&[b]).await?;

    progress.phase("writing to A");
    progress.count(arrivals.count.clone(), count, "arrived on B");
    let gen = Gen::new("live", salt);
    let written: Arc<Mutex<Vec<(Loaded, Instant)>>> = Arc::default();
    let mut writers = tokio::task::JoinSet::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / s.live_rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    for index in 0..count {
        ticks.tick().await;
        let plan = Plan {
            index,
            size: s.live_asset_size,
            content: if index % 2 == 0 {
                Content::Random
            } else {
                Content::Text
            },
        };
        let (can, gen, written) = (a.clone(), gen.clone(), written.clone());
        writers.spawn(async move {
            let loaded = data::push(&can, gen.make(plan)).await?;
            written
                .lock()
                .expect("written")
                .push((loaded, Instant::now()));
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.context("writer task")??;
    }

    progress.phase("waiting for B");
    let written = std::mem::take(&mut *written.lock().expect("written"));
    let expected: Vec<(usize, AssetHash)> = written.iter().map(|(l, _)| (0, l.hash)).collect();
    let all_arrived = arrivals
        .wait_for(&expected, Instant::now() + s.timeout)
        .await;
    arrivals.stop();
    let last = arrivals.latest().unwrap_or(started).max(started);
    let latencies_ms: Vec<f64> = written
        .iter()
        .filter_map(|(l, at)| {
            let seen = arrivals.at(0, &l.hash)?;
            Some(seen.saturating_duration_since(*at).as_secs_f64() * 1e3)
        })
        .collect();
    Ok(Timed {
        written: written.into_iter().map(|(l, _)| l).collect(),
        latencies_ms,
        all_arrived,
        secs: last.duration_since(started).as_secs_f64(),
    })
}
