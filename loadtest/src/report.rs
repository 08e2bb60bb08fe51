//! Results: one [`Record`] per (scenario, protocol, run), written as a human
//! table on stdout, one JSON object per line (`--json`), and the protocol
//! ratios when more than one protocol ran.
//!
//! Units: MB is 10^6 bytes (throughput, bytes, RSS); `secs` is the wall time
//! of the measured phase; a run that did not converge keeps its measurements
//! but has `ok: false` and zero rates, so it never reads as a fast result.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::procs::Exit;

/// Protocol number of the raw-QUIC ceiling (no sync protocol at all).
pub(crate) const RAW_PROTOCOL: u8 = 0;

/// Resource use of one agent process over a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AgentUsage {
    /// Which process (`seed`, `daemon-a`, `raw-client`).
    pub(crate) name: String,
    /// Its peak RSS in MB.
    pub(crate) peak_rss_mb: f64,
    /// Its user + system CPU seconds.
    pub(crate) cpu_s: f64,
}

impl AgentUsage {
    /// The usage of a finished process.
    pub(crate) fn of(name: &str, exit: &Exit) -> Self {
        Self {
            name: name.to_string(),
            peak_rss_mb: exit.usage.peak_rss as f64 / 1e6,
            cpu_s: exit.usage.cpu_s,
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Record {
    /// Scenario name (`small`, …; `raw` rows carry the stream count in `streams`).
    pub(crate) scenario: String,
    /// Sync protocol (1, 2), or [`RAW_PROTOCOL`].
    pub(crate) protocol: u8,
    /// Run number, from 1.
    pub(crate) run: u32,
    /// Assets that had to move (received by some node).
    pub(crate) assets: u64,
    /// Payload bytes that had to move.
    pub(crate) bytes: u64,
    /// Bytes on the wire as the agents counted them; `null` when they do not say.
    pub(crate) wire_bytes: Option<u64>,
    /// Wall time of the measured phase, seconds.
    pub(crate) secs: f64,
    /// `assets / secs` (0 when not ok).
    pub(crate) assets_per_s: f64,
    /// `bytes / secs` in MB/s (0 when not ok).
    pub(crate) mb_per_s: f64,
    /// Largest peak RSS of the run's agents, MB.
    pub(crate) peak_rss_mb: f64,
    /// CPU seconds of all the run's agents together.
    pub(crate) cpu_s: f64,
    /// Propagation latency percentiles (live only), ms.
    pub(crate) p50_ms: Option<f64>,
    /// 95th percentile, ms.
    pub(crate) p95_ms: Option<f64>,
    /// 99th percentile, ms.
    pub(crate) p99_ms: Option<f64>,
    /// Converged and checked.
    pub(crate) ok: bool,
    /// Why not, when not ok.
    pub(crate) error: Option<String>,
    /// Sessions it took (faulty: seed re-runs after a failed session).
    pub(crate) attempts: u32,
    /// Streams used (raw only).
    pub(crate) streams: Option<u32>,
    /// Per-agent resource use.
    pub(crate) agents: Vec<AgentUsage>,
}

impl Record {
    /// An empty record of a run about to start.
    pub(crate) fn new(scenario: &str, protocol: u8, run: u32) -> Self {
        Self {
            scenario: scenario.to_string(),
            protocol,
            run,
            assets: 0,
            bytes: 0,
            wire_bytes: None,
            secs: 0.0,
            assets_per_s: 0.0,
            mb_per_s: 0.0,
            peak_rss_mb: 0.0,
            cpu_s: 0.0,
            p50_ms: None,
            p95_ms: None,
            p99_ms: None,
            ok: false,
            error: None,
            attempts: 1,
            streams: None,
            agents: Vec::new(),
        }
    }

    /// A record of a run that failed before measuring anything.
    pub(crate) fn failed(scenario: &str, protocol: u8, run: u32, error: &anyhow::Error) -> Self {
        let mut record = Self::new(scenario, protocol, run);
        record.error = Some(format!("{error:#}"));
        record
    }

    /// Adds an agent's usage.
    pub(crate) fn agent(&mut self, name: &str, exit: &Exit) {
        self.agents.push(AgentUsage::of(name, exit));
    }

    /// Sets `ok`, the rates and the per-run totals from the fields filled in.
    pub(crate) fn finish(mut self, ok: bool, error: Option<String>) -> Self {
        self.ok = ok && error.is_none();
        self.error = error;
        self.peak_rss_mb = self
            .agents
            .iter()
            .map(|a| a.peak_rss_mb)
            .fold(0.0, f64::max);
        self.cpu_s = self.agents.iter().map(|a| a.cpu_s).sum();
        if self.ok && self.secs > 0.0 {
            self.assets_per_s = self.assets as f64 / self.secs;
            self.mb_per_s = self.bytes as f64 / 1e6 / self.secs;
        } else {
            self.assets_per_s = 0.0;
            self.mb_per_s = 0.0;
        }
        self
    }

    /// The label of its scenario in tables and charts (`raw ×4`).
    pub(crate) fn label(&self) -> String {
        match self.streams {
            Some(n) => format!("{} ×{n}", self.scenario),
            None => self.scenario.clone(),
        }
    }

    /// The protocol as shown to people.
    pub(crate) fn protocol_label(&self) -> String {
        if self.protocol == RAW_PROTOCOL {
            "quic".into()
        } else {
            format!("v{}", self.protocol)
        }
    }
}

/// Appends `record` to the JSON-lines file, if one was asked for.
pub(crate) fn append_json(path: Option<&Path>, record: &Record) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "{}", serde_json::to_string(record)?)?;
    Ok(())
}

/// The human table of every run.
pub(crate) fn table(records: &[Record]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<10} {:>5} {:>3} {:>7} {:>9} {:>9} {:>8} {:>9} {:>8} {:>8} {:>7} {:>17}  {}\n",
        "scenario",
        "proto",
        "run",
        "assets",
        "MB",
        "wire MB",
        "secs",
        "assets/s",
        "MB/s",
        "RSS MB",
        "CPU s",
        "p50/p95/p99 ms",
        "ok"
    ));
    for r in records {
        let latency = match (r.p50_ms, r.p95_ms, r.p99_ms) {
            (Some(a), Some(b), Some(c)) => format!("{a:.0}/{b:.0}/{c:.0}"),
            _ => "-".into(),
        };
        let wire = r
            .wire_bytes
            .map_or("-".into(), |w| format!("{:.1}", w as f64 / 1e6));
        let ok = if r.ok {
            "ok".to_string()
        } else {
            format!(
                "FAILED: {}",
                r.error.as_deref().unwrap_or("did not converge")
            )
        };
        out.push_str(&format!(
            "{:<10} {:>5} {:>3} {:>7} {:>9.1} {:>9} {:>8.2} {:>9.0} {:>8.1} {:>8.0} {:>7.2} {:>17}  {}\n",
            r.label(),
            r.protocol_label(),
            r.run,
            r.assets,
            r.bytes as f64 / 1e6,
            wire,
            r.secs,
            r.assets_per_s,
            r.mb_per_s,
            r.peak_rss_mb,
            r.cpu_s,
            latency,
            ok
        ));
    }
    out
}

/// Median of the ok runs of each (label, protocol), in first-seen order.
pub(crate) fn medians(records: &[Record]) -> Vec<Median> {
    let mut order: Vec<(String, u8)> = Vec::new();
    let mut groups: BTreeMap<(String, u8), Vec<&Record>> = BTreeMap::new();
    for r in records {
        let key = (r.label(), r.protocol);
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(r);
    }
    order
        .into_iter()
        .map(|key| {
            let runs = &groups[&key];
            let ok: Vec<&Record> = runs.iter().copied().filter(|r| r.ok).collect();
            let med = |f: &dyn Fn(&Record) -> Option<f64>| {
                median(ok.iter().filter_map(|r| f(r)).collect())
            };
            Median {
                label: key.0,
                protocol: key.1,
                runs: runs.len(),
                ok_runs: ok.len(),
                mb_per_s: med(&|r| Some(r.mb_per_s)),
                assets_per_s: med(&|r| Some(r.assets_per_s)),
                p50_ms: med(&|r| r.p50_ms),
                p99_ms: med(&|r| r.p99_ms),
            }
        })
        .collect()
}

/// The median figures of one (scenario, protocol).
#[derive(Debug, Clone)]
pub(crate) struct Median {
    /// Scenario label.
    pub(crate) label: String,
    /// Protocol.
    pub(crate) protocol: u8,
    /// Runs made.
    pub(crate) runs: usize,
    /// Runs that converged.
    pub(crate) ok_runs: usize,
    /// Median payload MB/s of the ok runs.
    pub(crate) mb_per_s: Option<f64>,
    /// Median assets/s of the ok runs.
    pub(crate) assets_per_s: Option<f64>,
    /// Median p50 latency (live).
    pub(crate) p50_ms: Option<f64>,
    /// Median p99 latency (live).
    pub(crate) p99_ms: Option<f64>,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// Ratios of every protocol to the first one, per scenario (medians of ok
/// runs); empty when one protocol ran.
pub(crate) fn ratios(records: &[Record], protocols: &[u8]) -> String {
    let Some((&base, others)) = protocols.split_first() else {
        return String::new();
    };
    if others.is_empty() {
        return String::new();
    }
    let meds = medians(records);
    let find = |label: &str, p: u8| meds.iter().find(|m| m.label == label && m.protocol == p);
    let mut out = String::from("\nratios (medians of ok runs):\n");
    for m in meds.iter().filter(|m| m.protocol == base) {
        for &p in others {
            let Some(o) = find(&m.label, p) else { continue };
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "n/a".into(),
            };
            let mut line = format!(
                "  {:<10} v{p}/v{base}: MB/s {}, assets/s {}",
                m.label,
                ratio(o.mb_per_s, m.mb_per_s),
                ratio(o.assets_per_s, m.assets_per_s)
            );
            if m.p50_ms.is_some() {
                line.push_str(&format!(
                    ", p50 latency {}, p99 latency {}",
                    ratio(o.p50_ms, m.p50_ms),
                    ratio(o.p99_ms, m.p99_ms)
                ));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// The p-th percentile (0–100) of `values` by nearest rank; `None` when empty.
pub(crate) fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(scenario: &str, protocol: u8, run: u32, mb: f64) -> Record {
        let mut r = Record::new(scenario, protocol, run);
        r.bytes = (mb * 1e6) as u64;
        r.assets = 10;
        r.secs = 1.0;
        r.finish(true, None)
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_failed_run_has_no_rates() {
        let mut r = Record::new("small", 1, 1);
        r.assets = 100;
        r.bytes = 1_000_000;
        r.secs = 0.001;
        let r = r.finish(false, Some("B lacks 3 assets".into()));
        assert!(!r.ok);
        assert_eq!((r.mb_per_s, r.assets_per_s), (0.0, 0.0));
        assert!(table(&[r]).contains("FAILED: B lacks 3 assets"));
    }

    #[test]
    fn ratios_compare_medians_per_scenario() {
        let records = vec![
            record("large", 1, 1, 100.0),
            record("large", 2, 1, 300.0),
            record("large", 1, 2, 110.0),
            record("large", 2, 2, 290.0),
        ];
        let text = ratios(&records, &[1, 2]);
        assert!(text.contains("v2/v1: MB/s 2.81×"), "{text}");
        assert!(ratios(&records, &[1]).is_empty());
    }

    #[test]
    fn json_lines_carry_the_documented_fields() {
        let value = serde_json::to_value(record("text", 1, 1, 5.0)).unwrap();
        for field in [
            "scenario",
            "protocol",
            "assets",
            "bytes",
            "wire_bytes",
            "secs",
            "assets_per_s",
            "mb_per_s",
            "peak_rss_mb",
            "cpu_s",
            "p50_ms",
            "p99_ms",
            "ok",
        ] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
    }
}
