//! The bulk scenarios (small, large, text, mixed, faulty): seeding an empty node
//! from a full one, as `can-sync seed` does it.
//!
//! 1. two `serve-can --memory` servers, A and B (with the fault knobs for faulty);
//! 2. A is loaded through `POST /sync/push` (not measured);
//! 3. `daemon` on A accepts sessions;
//! 4. measured: `seed --can B --from A --json`, spawn to exit. The faulty
//!    scenario re-runs `seed` after a failed session, as a user would, up to
//!    [`FAULTY_ATTEMPTS`] times; the time of every attempt counts;
//! 5. the daemon gets SIGTERM; both CANs are checked.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::Ctx;
use crate::agents::Faults;
use crate::config::Scenario;
use crate::data::{self, Content, Gen, Plan};
use crate::report::Record;
use crate::verify;

/// Sessions the faulty scenario may take before the run counts as failed.
const FAULTY_ATTEMPTS: u32 = 10;
/// A daemon that only accepts never dials, so its resync period is moot.
const NEVER: u64 = 3600;

/// The assets and CAN faults of one bulk scenario.
fn setup(ctx: &Ctx, scenario: Scenario, salt: u64) -> Result<(Vec<Plan>, Faults, u32)> {
    let s = &ctx.sizes;
    let none = Faults::default();
    Ok(match scenario {
        Scenario::Small => (
            data::fixed(s.small_assets, s.small_asset_size, Content::Random),
            none,
            1,
        ),
        Scenario::Large => (
            data::total_of(s.large_bytes, s.large_asset_size, Content::Random),
            none,
            1,
        ),
        Scenario::Text => (
            data::total_of(s.text_bytes, s.text_asset_size, Content::Text),
            none,
            1,
        ),
        Scenario::Mixed => (
            data::lognormal(s.mixed_bytes, s.max_asset_size, salt),
            none,
            1,
        ),
        Scenario::Faulty => (
            data::lognormal(s.faulty_bytes, s.max_asset_size, salt),
            Faults {
                latency_ms: s.faulty_latency_ms,
                error_rate: s.faulty_error_rate,
                ..Faults::default()
            },
            FAULTY_ATTEMPTS,
        ),
        other => bail!("{other} is not a bulk scenario"),
    })
}

/// One run of a bulk scenario.
pub(crate) async fn run(ctx: &Ctx, scenario: Scenario, protocol: u8, run: u32) -> Result<Record> {
    let salt = ctx.salt(scenario, run);
    let (plans, faults, max_attempts) = setup(ctx, scenario, salt)?;
    let (launcher, _scratch) = ctx.launcher()?;
    let progress = &ctx.progress;
    let deadline = Instant::now() + ctx.sizes.timeout;

    progress.phase("starting CANs");
    let (a, b) = tokio::try_join!(
        launcher.can_server("can-a", faults),
        launcher.can_server("can-b", faults)
    )?;

    progress.phase("loading A");
    let done = Arc::new(AtomicU64::new(0));
    progress.count(done.clone(), plans.len() as u64, "assets");
    let gen = Gen::new(scenario.name(), salt);
    let loaded = data::load(&a.can, &plans, &gen, &done).await?;

    progress.phase("starting daemon");
    let daemon = launcher
        .daemon("daemon-a", &a.url, &[], protocol, NEVER)
        .await?;

    progress.phase("seeding B");
    progress.watch("B", &b.can, loaded.len() as u64);
    let mut record = Record::new(scenario.name(), protocol, run);
    record.assets = loaded.len() as u64;
    record.bytes = loaded.iter().map(|l| l.size).sum();
    let mut wire = 0;
    let mut error = None;
    let started = Instant::now();
    for attempt in 1..=max_attempts {
        record.attempts = attempt;
        let name = if attempt == 1 {
            "seed".to_string()
        } else {
            format!("seed#{attempt}")
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let seed = launcher
            .seed(&name, &b.url, &daemon.ticket, protocol, left)
            .await?;
        record.agent(&name, &seed.exit);
        wire += seed.report.as_ref().map_or(0, |r| r.wire_bytes);
        error = seed.error.clone();
        let received = seed.report.as_ref().map_or(0, |r| r.assets_received);
        if error.is_none() && attempt == 1 && received != record.assets {
            error = Some(format!(
                "seed says it received {received} assets, not {}",
                record.assets
            ));
        }
        if error.is_none() {
            break;
        }
        progress.say(&format!(
            "  {scenario} v{protocol}: {name} failed, re-running: {}",
            first_line(&seed.error)
        ));
    }
    record.secs = started.elapsed().as_secs_f64();
    record.wire_bytes = Some(wire);

    progress.phase("checking");
    let daemon_exit = daemon.stop().await;
    match &daemon_exit {
        Ok(exit) => record.agent("daemon-a", exit),
        Err(err) if error.is_none() => error = Some(format!("{err:#}")),
        Err(_) => {}
    }
    let verdict = verify::check(&[("A", &a.can), ("B", &b.can)], &loaded).await?;
    tokio::join!(a.stop(), b.stop());
    if !verdict.ok() && error.is_none() {
        error = Some(format!("did not converge: {}", verdict.summary()));
    }
    Ok(record.finish(verdict.ok(), error))
}

fn first_line(error: &Option<String>) -> &str {
    error
        .as_deref()
        .and_then(|e| e.lines().next())
        .unwrap_or("")
}
