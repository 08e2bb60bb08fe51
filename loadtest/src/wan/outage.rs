//! `loadtest outage`: a blackhole in the middle of a transfer. Does it
//! complete, with nothing lost and nothing sent twice beyond what was in
//! flight when the path went dark?
//!
//! A holds `--bytes` of mixed assets (log-normal sizes up to
//! `--max-asset-size`, half text), or with `--single-asset SIZE` one
//! incompressible asset of SIZE; `daemon` on B dials A through the proxy,
//! which drops every packet both ways from `--outage-at` to `--outage-at +
//! --outage-secs` after it started. The daemon is left to itself: its
//! connection dies at the endpoint's idle timeout if the blackhole outlasts
//! it, and its dial loop retries with backoff.
//!
//! While it runs, B's peer state (`/status`) is recorded at every change,
//! and both daemons' counters (`/metrics`) are sampled just before the
//! blackhole ends: A's payload counted sent minus B's counted received is
//! what was in flight, stuck in buffers or lost. At the end A's totals
//! against what was loaded say what it sent twice; that must not exceed
//! what was in flight. Then both CANs are checked.
//!
//! With `--embedded`, B is a whole node on its own embedded store, which
//! keeps a large asset received in part (verified ranges, issue 21), so a
//! cut transfer resumes. Then A counts a ranged asset's bytes group by group
//! as it writes them, and in flight is what A counted sent that B holds
//! neither whole (the assets arrived by the sample) nor in part (its
//! `/status`). B's own received counter is not used there: it counts each
//! delivered lease of an asset still in part, which the part counts again. A whole-asset
//! stream (`--no-ranges`) cut midway is not counted by A at all, so what it
//! sends again shows only in what the proxy carried beyond the payload,
//! which the report gives too. B takes a large asset by leases of 16 groups
//! there, each answered apart and counted by A as an asset sent, so only
//! bytes say what was sent twice.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use can_sync::asset::AssetHash;
use serde::Serialize;

use super::{each_controller, total, LinkArgs, LinkDefaults, Path, ProxyCounts, Rig};
use crate::agents::Daemon;
use crate::config::ByteSize;
use crate::data::{self, Gen, Loaded};
use crate::impair::Window;
use crate::scenarios::Arrivals;

/// How often B's peer state is read.
const POLL: Duration = Duration::from_millis(250);
/// How long before the blackhole's end the in-flight sample is taken: late
/// enough that nothing more can be sent into the dark, early enough that no
/// redial has got through yet.
const SAMPLE_BEFORE_END: Duration = Duration::from_millis(500);

/// Flags of `loadtest outage`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    link: LinkArgs,
    /// Total bytes of the mixed assets.
    #[arg(long, default_value = "384MiB")]
    bytes: ByteSize,
    /// Largest asset (sizes are log-normal from 1 KiB up to this).
    #[arg(long, default_value = "64MiB")]
    max_asset_size: ByteSize,
    /// Seconds after the proxy starts that the blackhole begins.
    #[arg(long, default_value_t = 10.0)]
    outage_at: f64,
    /// Seconds the blackhole lasts.
    #[arg(long, default_value_t = 20.0)]
    outage_secs: f64,
    /// Load one incompressible asset of this size instead of mixed assets
    /// (`--bytes` and `--max-asset-size` are then ignored).
    #[arg(long)]
    single_asset: Option<ByteSize>,
    /// B is a whole node on its own embedded store (`daemon --store`)
    /// instead of a daemon over a CAN server: the store that keeps a large
    /// asset received in part, so that a cut transfer resumes where it was.
    #[arg(long)]
    embedded: bool,
    /// Seconds the whole transfer may take before the run fails.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// Both daemons' counters at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Counters {
    /// Seconds after the proxy started.
    at_s: f64,
    a_assets_sent: u64,
    a_bytes_sent: u64,
    b_assets_received: u64,
    b_bytes_received: u64,
    b_duplicates: u64,
    /// Bytes B holds of large assets received in part (its `/status`;
    /// always 0 on a CAN server, which keeps none).
    b_partial_bytes: u64,
}

/// B's view of its peer A when it changed.
#[derive(Debug, Clone, Serialize, PartialEq)]
struct PeerState {
    /// Seconds after the proxy started.
    at_s: f64,
    state: String,
    sessions: u64,
    last_error: Option<String>,
}

/// The result, as printed and written with `--json`.
#[derive(Debug, Serialize)]
struct Report {
    path: Path,
    assets: u64,
    bytes: u64,
    outage_start_s: f64,
    outage_end_s: f64,
    /// What B held when the blackhole began.
    held_at_outage_assets: u64,
    held_at_outage_bytes: u64,
    /// The blackhole began with some but not all of the assets on B.
    mid_transfer: bool,
    /// The first asset B stored after the blackhole ended, seconds after
    /// the end.
    resumed_after_s: Option<f64>,
    /// The last asset reached B, seconds after the proxy started.
    completed_s: Option<f64>,
    /// Counters just before the blackhole ended.
    before_end: Counters,
    /// Counters at the end.
    after: Counters,
    /// A's payload counted sent but not held by B before the end (neither
    /// received whole nor kept in part).
    in_flight_assets: u64,
    in_flight_bytes: u64,
    /// What A sent beyond what was loaded.
    sent_twice_assets: u64,
    sent_twice_bytes: u64,
    /// B was a node on an embedded store (`--embedded`).
    embedded: bool,
    /// Bytes the proxy carried A → B beyond the payload: QUIC and frame
    /// overhead plus everything sent again, including what A does not count
    /// (a whole-asset stream cut midway).
    proxy_down_beyond_payload: u64,
    /// B's peer state over time.
    states: Vec<PeerState>,
    proxy: ProxyCounts,
    problems: Vec<String>,
    ok: bool,
}

/// Runs the outage and prints the result; true when everything arrived,
/// both CANs converged and nothing was sent twice beyond what was in flight.
pub(crate) async fn run(args: Args) -> Result<bool> {
    each_controller(
        &args.link,
        async |congestion| run_one(&args, congestion).await,
        describe,
        |report| report.ok,
    )
    .await
}

/// One run with the daemons' `--congestion` set to `congestion`.
async fn run_one(args: &Args, congestion: Option<String>) -> Result<Report> {
    ensure!(
        args.outage_at >= 0.0 && args.outage_secs > 0.0,
        "--outage-at must be ≥ 0 and --outage-secs > 0"
    );
    ensure!(
        args.bytes.0 > 0 && args.max_asset_size.0 >= 1024,
        "--bytes must be above 0 and --max-asset-size at least 1 KiB"
    );
    let (path, reorder_delay) = args.link.resolve(
        LinkDefaults {
            rtt_ms: 50.0,
            loss: 0.0,
            rate_mbit: 100.0,
        },
        congestion,
    )?;
    let window = Window {
        start: Duration::from_secs_f64(args.outage_at),
        end: Duration::from_secs_f64(args.outage_at + args.outage_secs),
    };
    println!(
        "outage: {}; blackhole from {} s to {} s",
        path.describe(),
        args.outage_at,
        args.outage_at + args.outage_secs
    );
    let plans = match args.single_asset {
        Some(size) => vec![data::Plan {
            index: 0,
            size: size.0,
            content: data::Content::Random,
        }],
        None => data::lognormal(args.bytes.0, args.max_asset_size.0, path.seed),
    };
    let (rig, loaded) = Rig::start(
        &args.link,
        &path,
        reorder_delay,
        vec![window],
        &plans,
        &Gen::new("outage", path.seed),
    )
    .await?;
    let mut problems = Vec::new();

    // An embedded B serves its CAN API only once it runs, so it starts
    // first; a CAN server is watched before its daemon starts.
    let (mut arrivals, daemon_b, b_can) = if args.embedded {
        rig.progress.phase("node B pulling through the proxy");
        let node = rig.node_b("node-b", 1).await?;
        let arrivals = Arrivals::watch(&[&node.can]).await?;
        (arrivals, node.daemon, Some(node.can))
    } else {
        let arrivals = Arrivals::watch(&[&rig.b.can]).await?;
        rig.progress.phase("daemon B pulling through the proxy");
        (arrivals, rig.daemon_b("daemon-b", 1).await?, None)
    };
    rig.progress
        .count(arrivals.count.clone(), loaded.len() as u64, "arrived on B");
    let expected: Vec<(usize, AssetHash)> = loaded.iter().map(|l| (0, l.hash)).collect();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let origin = rig.proxy.started();
    let mut states = Vec::new();
    let mut before_end = None;
    let all_arrived = {
        let wait = arrivals.wait_for(&expected, deadline);
        let watch = watch(
            &rig,
            &daemon_b,
            origin,
            window,
            &mut states,
            &mut before_end,
        );
        tokio::pin!(wait);
        tokio::select! {
            all = &mut wait => all,
            () = watch => wait.await,
        }
    };
    arrivals.stop();
    if !all_arrived {
        problems.push(format!(
            "{} of {} assets never reached B",
            expected.len() - arrived(&arrivals, &loaded, None).0 as usize,
            expected.len()
        ));
    }
    let after = counters(&rig, &daemon_b, origin).await;
    let before_end = before_end.unwrap_or_default();
    let proxy = ProxyCounts::of(&rig.proxy);
    problems.extend(
        rig.finish_with(vec![daemon_b], &loaded, b_can.as_deref())
            .await?,
    );

    let at = |d: Duration| origin + d;
    let (held_assets, held_bytes) = arrived(&arrivals, &loaded, Some(at(window.start)));
    let resumed = loaded
        .iter()
        .filter_map(|l| arrivals.at(0, &l.hash))
        .filter(|t| *t >= at(window.end))
        .min();
    let in_flight_assets = before_end
        .a_assets_sent
        .saturating_sub(before_end.b_assets_received);
    // What B held at the sample: the assets whole by then (B's own
    // received counter also counts each delivered lease of an asset still
    // in part, which its partial bytes count again) and the part.
    let sampled = origin + Duration::from_secs_f64(before_end.at_s);
    let (_, whole_at_sample) = arrived(&arrivals, &loaded, Some(sampled));
    let in_flight_bytes = before_end
        .a_bytes_sent
        .saturating_sub(whole_at_sample + before_end.b_partial_bytes);
    let sent_twice_assets = after.a_assets_sent.saturating_sub(loaded.len() as u64);
    let sent_twice_bytes = after.a_bytes_sent.saturating_sub(total(&loaded));
    // A leased asset is one asset sent per lease (above).
    let assets_twice = !args.embedded && sent_twice_assets > in_flight_assets;
    if assets_twice || sent_twice_bytes > in_flight_bytes {
        problems.push(format!(
            "A sent {sent_twice_assets} assets ({sent_twice_bytes} bytes) twice, more than the \
             {in_flight_assets} ({in_flight_bytes} bytes) in flight"
        ));
    }
    let report = Report {
        assets: loaded.len() as u64,
        bytes: total(&loaded),
        outage_start_s: window.start.as_secs_f64(),
        outage_end_s: window.end.as_secs_f64(),
        held_at_outage_assets: held_assets,
        held_at_outage_bytes: held_bytes,
        mid_transfer: held_assets > 0 && held_assets < loaded.len() as u64,
        resumed_after_s: resumed.map(|t| t.duration_since(at(window.end)).as_secs_f64()),
        completed_s: arrivals
            .latest()
            .filter(|_| all_arrived)
            .map(|t| t.saturating_duration_since(origin).as_secs_f64()),
        before_end,
        after,
        in_flight_assets,
        in_flight_bytes,
        sent_twice_assets,
        sent_twice_bytes,
        embedded: args.embedded,
        proxy_down_beyond_payload: proxy.down.bytes.saturating_sub(total(&loaded)),
        states,
        proxy,
        ok: problems.is_empty(),
        problems,
        path,
    };
    Ok(report)
}

/// Records B's peer state at each change, and the counters once,
/// [`SAMPLE_BEFORE_END`] before the blackhole ends (or at its start, if it
/// is shorter). Runs until dropped.
async fn watch(
    rig: &Rig,
    daemon_b: &Daemon,
    origin: Instant,
    window: Window,
    states: &mut Vec<PeerState>,
    before_end: &mut Option<Counters>,
) {
    let sample_at = origin
        + window
            .end
            .saturating_sub(SAMPLE_BEFORE_END)
            .max(window.start);
    let mut ticks = tokio::time::interval(POLL);
    loop {
        ticks.tick().await;
        if before_end.is_none() && Instant::now() >= sample_at {
            *before_end = Some(counters(rig, daemon_b, origin).await);
        }
        let Some(status) = daemon_b.status_json(&rig.http).await else {
            continue;
        };
        let Some(peer) = status["peers"].as_array().and_then(|p| p.first()) else {
            continue;
        };
        let state = PeerState {
            at_s: origin.elapsed().as_secs_f64(),
            state: peer["state"].as_str().unwrap_or("?").to_string(),
            sessions: peer["sessions"].as_u64().unwrap_or(0),
            last_error: peer["last_error"].as_str().map(str::to_string),
        };
        let changed = states.last().is_none_or(|last: &PeerState| {
            (&last.state, last.sessions, &last.last_error)
                != (&state.state, state.sessions, &state.last_error)
        });
        if changed {
            rig.progress.say(&format!(
                "  {:6.1} s: B's link to A is {} ({} sessions){}",
                state.at_s,
                state.state,
                state.sessions,
                state
                    .last_error
                    .as_deref()
                    .map_or(String::new(), |e| format!("; last error: {e}"))
            ));
            states.push(state);
        }
    }
}

/// Both daemons' counters now (zero where one did not answer).
async fn counters(rig: &Rig, daemon_b: &Daemon, origin: Instant) -> Counters {
    let a = |name| rig.daemon_a.metric(&rig.http, name);
    let b = |name| daemon_b.metric(&rig.http, name);
    let (a_assets_sent, a_bytes_sent, b_assets_received, b_bytes_received, b_duplicates, b_status) = tokio::join!(
        a("cansync_assets_sent_total"),
        a("cansync_bytes_sent_total"),
        b("cansync_assets_received_total"),
        b("cansync_bytes_received_total"),
        b("cansync_duplicates_received_total"),
        daemon_b.status_json(&rig.http),
    );
    Counters {
        at_s: origin.elapsed().as_secs_f64(),
        a_assets_sent: a_assets_sent.unwrap_or(0),
        a_bytes_sent: a_bytes_sent.unwrap_or(0),
        b_assets_received: b_assets_received.unwrap_or(0),
        b_bytes_received: b_bytes_received.unwrap_or(0),
        b_duplicates: b_duplicates.unwrap_or(0),
        b_partial_bytes: b_status
            .and_then(|s| s["partial"]["bytes"].as_u64())
            .unwrap_or(0),
    }
}

/// Assets of `loaded` that reached B (before `by`, when given), and their
/// bytes.
fn arrived(arrivals: &Arrivals, loaded: &[Loaded], by: Option<Instant>) -> (u64, u64) {
    loaded
        .iter()
        .filter(|l| {
            arrivals
                .at(0, &l.hash)
                .is_some_and(|t| by.is_none_or(|by| t < by))
        })
        .fold((0, 0), |(n, bytes), l| (n + 1, bytes + l.size))
}

fn describe(r: &Report) -> String {
    let secs = |v: Option<f64>| v.map_or("never".into(), |v| format!("{v:.1} s"));
    let mb = |b: u64| b as f64 / 1e6;
    let pct = |b: u64| 100.0 * b as f64 / r.bytes.max(1) as f64;
    let mut out = format!(
        "{} assets, {:.1} MB; blackhole {:.1}–{:.1} s\n\
         B held {} assets ({:.1} MB) when it began{}\n\
         first asset after it: {} after its end; all on B at {}\n\
         in flight before its end: {} assets ({:.1} MB) counted sent by A, not held by B \
         ({:.1} MB held in part)\n\
         sent twice: {} assets ({:.1} MB, {:.2}% of the payload); B counted {} duplicates\n\
         proxy A→B carried {:.1} MB beyond the payload ({:.2}%: QUIC and frames, and all sent again)\n\
         {}\n",
        r.assets,
        mb(r.bytes),
        r.outage_start_s,
        r.outage_end_s,
        r.held_at_outage_assets,
        mb(r.held_at_outage_bytes),
        if r.mid_transfer {
            ""
        } else {
            " (not mid-transfer)"
        },
        secs(r.resumed_after_s),
        secs(r.completed_s),
        r.in_flight_assets,
        mb(r.in_flight_bytes),
        mb(r.before_end.b_partial_bytes),
        r.sent_twice_assets,
        mb(r.sent_twice_bytes),
        pct(r.sent_twice_bytes),
        r.after.b_duplicates,
        mb(r.proxy_down_beyond_payload),
        pct(r.proxy_down_beyond_payload),
        r.proxy.describe(),
    );
    for state in &r.states {
        out.push_str(&format!(
            "  {:6.1} s: {} ({} sessions){}\n",
            state.at_s,
            state.state,
            state.sessions,
            state
                .last_error
                .as_deref()
                .map_or(String::new(), |e| format!("; {e}"))
        ));
    }
    for problem in &r.problems {
        out.push_str(&format!("PROBLEM: {problem}\n"));
    }
    out.push_str(if r.ok { "ok\n" } else { "FAILED\n" });
    out
}
