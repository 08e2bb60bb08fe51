//! `--svg FILE`: payload throughput per scenario and protocol as a horizontal
//! bar chart, on a log scale so the 4 KiB scenario and the raw-QUIC ceiling fit
//! on one page; each bar carries its number, assets/s and (live) latencies, so
//! nobody has to read values off the axis. Bars are medians of ok runs; a
//! scenario whose runs all failed shows FAILED instead of a bar.

use std::fmt::Write as _;

use crate::report::{medians, Median, Record, RAW_PROTOCOL};

const WIDTH: f64 = 980.0;
const LABEL_W: f64 = 150.0;
const PLOT_X0: f64 = 160.0;
const PLOT_X1: f64 = 660.0;
const BAR_H: f64 = 18.0;
const BAR_GAP: f64 = 4.0;
const GROUP_GAP: f64 = 12.0;
const TOP: f64 = 78.0;

/// Colours by protocol: v1 blue, v2 orange, raw QUIC grey.
fn colour(protocol: u8) -> &'static str {
    match protocol {
        RAW_PROTOCOL => "#7f7f7f",
        1 => "#1f77b4",
        2 => "#ff7f0e",
        _ => "#2ca02c",
    }
}

/// The chart of `records` as an SVG document; `subtitle` says what ran where.
pub(crate) fn chart(records: &[Record], subtitle: &str) -> String {
    let meds = medians(records);
    let values: Vec<f64> = meds
        .iter()
        .filter_map(|m| m.mb_per_s)
        .filter(|v| *v > 0.0)
        .collect();
    let lo = values
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(0.01);
    let hi = values.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (lo_exp, hi_exp) = if values.is_empty() {
        (0, 3)
    } else {
        (lo.log10().floor() as i32, hi.log10().ceil() as i32)
    };
    let x_of = |v: f64| {
        let t = (v.log10() - lo_exp as f64) / (hi_exp - lo_exp).max(1) as f64;
        PLOT_X0 + t.clamp(0.0, 1.0) * (PLOT_X1 - PLOT_X0)
    };

    // Rows, grouped by scenario label in first-seen order.
    let mut groups: Vec<(String, Vec<&Median>)> = Vec::new();
    for m in &meds {
        match groups.iter_mut().find(|(label, _)| *label == m.label) {
            Some((_, ms)) => ms.push(m),
            None => groups.push((m.label.clone(), vec![m])),
        }
    }
    let rows: usize = groups.iter().map(|(_, ms)| ms.len()).sum();
    let plot_h = rows as f64 * (BAR_H + BAR_GAP) + groups.len() as f64 * GROUP_GAP;
    let height = TOP + plot_h + 50.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="12" y="24" font-size="17" font-weight="bold">can-sync load test: payload throughput (MB/s, log scale)</text>
<text x="12" y="44" fill="#444">{}</text>"##,
        escape(subtitle)
    );

    // Legend.
    let mut protocols: Vec<u8> = meds.iter().map(|m| m.protocol).collect();
    protocols.sort();
    protocols.dedup();
    for (i, p) in protocols.iter().enumerate() {
        let x = PLOT_X0 + i as f64 * 130.0;
        let name = if *p == RAW_PROTOCOL {
            "raw QUIC (ceiling)".to_string()
        } else {
            format!("protocol v{p}")
        };
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="54" width="12" height="12" fill="{}"/><text x="{}" y="65">{name}</text>"#,
            colour(*p),
            x + 17.0
        );
    }

    // Decade grid lines with labels above and below the plot.
    for e in lo_exp..=hi_exp {
        let v = 10f64.powi(e);
        let x = x_of(v);
        let label = if e >= 0 {
            format!("{v:.0}")
        } else {
            format!("{v}")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 16.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">MB/s (10^6 bytes per second of asset payload)</text>"##,
        (PLOT_X0 + PLOT_X1) / 2.0,
        TOP + plot_h + 34.0
    );

    let mut y = TOP + GROUP_GAP / 2.0;
    for (label, ms) in &groups {
        let group_h = ms.len() as f64 * (BAR_H + BAR_GAP);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-weight="bold">{}</text>"#,
            LABEL_W - 30.0,
            y + group_h / 2.0 + 4.0,
            escape(label)
        );
        for m in ms {
            let tag = if m.protocol == RAW_PROTOCOL {
                "quic".to_string()
            } else {
                format!("v{}", m.protocol)
            };
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{tag}</text>"##,
                PLOT_X0 - 6.0,
                y + BAR_H - 5.0
            );
            match m.mb_per_s.filter(|v| *v > 0.0) {
                Some(v) => {
                    let x = x_of(v);
                    let _ = writeln!(
                        s,
                        r#"<rect x="{PLOT_X0}" y="{y:.1}" width="{:.1}" height="{BAR_H}" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                        (x - PLOT_X0).max(1.0),
                        colour(m.protocol),
                        x + 6.0,
                        y + BAR_H - 5.0,
                        escape(&value_text(m, v))
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" fill="#c00" font-weight="bold">FAILED ({} of {} runs ok)</text>"##,
                        PLOT_X0 + 4.0,
                        y + BAR_H - 5.0,
                        m.ok_runs,
                        m.runs
                    );
                }
            }
            y += BAR_H + BAR_GAP;
        }
        y += GROUP_GAP;
    }
    s.push_str("</svg>\n");
    s
}

fn value_text(m: &Median, mb: f64) -> String {
    let mut text = if mb >= 100.0 {
        format!("{mb:.0} MB/s")
    } else {
        format!("{mb:.1} MB/s")
    };
    if m.protocol != RAW_PROTOCOL {
        if let Some(a) = m.assets_per_s {
            text.push_str(&format!(" · {a:.0} assets/s"));
        }
    }
    if let (Some(p50), Some(p99)) = (m.p50_ms, m.p99_ms) {
        text.push_str(&format!(" · p50 {p50:.0} ms, p99 {p99:.0} ms"));
    }
    if m.ok_runs < m.runs {
        text.push_str(&format!(
            " ({} of {} runs failed)",
            m.runs - m.ok_runs,
            m.runs
        ));
    }
    text
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_has_a_bar_per_scenario_and_protocol() {
        let mut records = Vec::new();
        for (scenario, mb) in [("small", 8.0), ("large", 400.0)] {
            for protocol in [1, 2] {
                let mut r = Record::new(scenario, protocol, 1);
                r.bytes = (mb * 1e6) as u64 * protocol as u64;
                r.assets = 5;
                r.secs = 1.0;
                records.push(r.finish(true, None));
            }
        }
        records.push(Record::new("mesh", 1, 1).finish(false, Some("no".into())));
        let svg = chart(&records, "test <machine>");
        // Bars are the rects BAR_H tall; the legend's swatches are smaller.
        assert_eq!(svg.matches("height=\"18\" fill=").count(), 4);
        assert!(svg.contains("FAILED (0 of 1 runs ok)"));
        assert!(svg.contains("test &lt;machine&gt;"));
        assert!(svg.contains("800 MB/s"));
    }
}
