//! The soak's result for a reader: what ran, each series' baseline and end,
//! what the churn did, whether every asset reached every node, and the
//! verdict.

use std::fmt::Write as _;

use super::flat::Trend;
use super::sampler::mib;
use super::{Config, Report};

/// The first line: what is about to run.
pub(crate) fn headline(c: &Config) -> String {
    format!(
        "soak: {} peers reconnecting every {}–{} s ({:.0}% of stops SIGKILL, the rest SIGTERM) \
         to one measured daemon holding {} assets, for {} s; {} assets of {} bytes per second \
         to every node; growth limit {:.0}%; seed {}",
        c.peers,
        c.up_secs.0,
        c.up_secs.1,
        c.kill_share * 100.0,
        c.archive,
        c.duration_s,
        c.rate_per_node,
        c.asset_size,
        c.max_growth * 100.0,
        c.seed
    )
}

/// The whole report.
pub(crate) fn describe(r: &Report) -> String {
    let mut out = String::new();
    let w = &r.windows;
    let _ = writeln!(
        out,
        "measured daemon, {} samples; median over {:.0}–{:.0} s (after the warm-up) → median over {:.0}–{:.0} s (the end):",
        r.samples, w.baseline.start, w.baseline.end, w.end.start, w.end.end
    );
    for trend in &r.trends {
        let _ = writeln!(out, "  {}", trend_line(trend));
    }
    let c = &r.churn;
    let stops = c.killed + c.terminated;
    let _ = writeln!(
        out,
        "churn: {} peer starts; {stops} stops ({} SIGKILL, {} SIGTERM, the longest SIGTERM {:.2} s); \
         {} of the stops ({:.0}%) found the peer live; {} starts retried for a taken port, {} for an exit before the ticket",
        c.starts,
        c.killed,
        c.terminated,
        c.longest_stop_s,
        c.live_at_stop,
        percent(c.live_at_stop, stops),
        c.port_retries,
        c.silent_exits
    );
    let _ = writeln!(
        out,
        "assets: {} ({:.1} MB), the archive and what was written: {} of them to the measured daemon during the churn",
        r.assets,
        r.bytes as f64 / 1e6,
        r.assets_on_central
    );
    let _ = writeln!(
        out,
        "after the writes: {}",
        match r.settled_s {
            Some(s) =>
                format!("every peer reconnected and every node held every asset within {s:.1} s"),
            None => "some node still lacked assets at the deadline".into(),
        }
    );
    for (when, sample) in [
        ("before the churn", &r.calm.before),
        ("after it", &r.calm.after),
    ] {
        if let Some(s) = sample {
            let _ = writeln!(
                out,
                "at rest {when}: RSS {:.1} MiB, {} fds ({} on pack segments), {} threads, {} tasks, {} live links",
                mib(s.rss_bytes),
                s.open_fds,
                s.pack_fds,
                s.threads,
                s.tasks.map_or("?".into(), |t| t.to_string()),
                s.live_links.map_or("?".into(), |t| t.to_string())
            );
        }
    }
    for problem in &r.problems {
        let _ = writeln!(out, "PROBLEM: {problem}");
    }
    out.push_str(if r.ok { "ok\n" } else { "FAILED\n" });
    out
}

/// One series: baseline → end, growth, peak, verdict.
fn trend_line(t: &Trend) -> String {
    let value = |v: f64| {
        if t.name == "rss_bytes" {
            format!("{:.1} MiB", mib(v as u64))
        } else {
            format!("{v:.1}")
        }
    };
    let verdict = match t.limit {
        Some(limit) if t.ok() => format!("ok (limit +{:.0}%)", limit * 100.0),
        Some(limit) => format!("GREW (limit +{:.0}%)", limit * 100.0),
        None => "not judged".into(),
    };
    format!(
        "{:<11} {:>10} → {:>10}  {:>+6.1}%  peak {:>10}  {verdict}",
        t.name,
        value(t.baseline),
        value(t.end),
        t.growth * 100.0,
        value(t.peak)
    )
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}
