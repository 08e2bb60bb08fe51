//! The reset run's figures and verdict: per round, what every node
//! received and how much of it was a duplicate, the reset node's catch-up;
//! over all rounds, the totals. Printed as a table and written with
//! `--json`.
//!
//! Duplicates are counted against the assets received (newly stored), as
//! `tests/live.rs` counts them: a node stores each asset it lacks exactly
//! once, so the received count is what had to move, and the duplicates are
//! what moved on top of it.

use std::fmt::Write as _;

use serde::Serialize;

use super::counters::Counters;
use super::Config;

/// One node's part in a round.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeRound {
    /// `node-1`, …
    pub(crate) name: String,
    /// True for the node reset this round.
    pub(crate) reset: bool,
    /// Its counters over the round: since its restart for the reset node,
    /// since the round's baseline for the others.
    pub(crate) counted: Counters,
}

/// One reset: what the reset node and its peers went through.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Round {
    /// From 1.
    pub(crate) round: u32,
    /// The node reset.
    pub(crate) reset_node: String,
    /// Seconds from its restart (its ticket printed) until it held every
    /// asset again, the burst included.
    pub(crate) catch_up_s: f64,
    /// Seconds from its restart until every node held every asset.
    pub(crate) all_hold_s: f64,
    /// Assets written to the other nodes during the catch-up.
    pub(crate) burst: u64,
    /// Seconds from the restart until the last of them was acknowledged:
    /// below `catch_up_s`, the writes overlapped the catch-up throughout.
    pub(crate) burst_written_s: f64,
    /// Assets every node holds at the end of the round.
    pub(crate) assets: u64,
    /// Their payload bytes: what the reset node had to receive, at least.
    pub(crate) asset_bytes: u64,
    /// Assets the nodes had to store: every asset on the reset node, and on
    /// each other node the burst written elsewhere.
    pub(crate) expected_received: u64,
    /// Every node's counters over the round.
    pub(crate) nodes: Vec<NodeRound>,
    /// Whether the counters had stopped moving when read (both readings).
    pub(crate) quiet: bool,
}

impl Round {
    /// Assets received (newly stored) by every node.
    pub(crate) fn received(&self) -> u64 {
        self.nodes.iter().map(|n| n.counted.received).sum()
    }

    /// Duplicate receptions on every node.
    pub(crate) fn duplicates(&self) -> u64 {
        self.nodes.iter().map(|n| n.counted.duplicates).sum()
    }

    /// The reset node's counters.
    pub(crate) fn reset_counted(&self) -> Counters {
        self.nodes
            .iter()
            .find(|n| n.reset)
            .map(|n| n.counted)
            .unwrap_or_default()
    }
}

/// Every round added up.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Totals {
    pub(crate) received: u64,
    pub(crate) duplicates: u64,
    /// Duplicates as a percentage of `received`.
    pub(crate) duplicate_percent: f64,
}

impl Totals {
    pub(crate) fn of(rounds: &[Round]) -> Self {
        let received = rounds.iter().map(Round::received).sum();
        let duplicates = rounds.iter().map(Round::duplicates).sum();
        Self {
            received,
            duplicates,
            duplicate_percent: percent(duplicates, received),
        }
    }
}

/// The result, as printed and written with `--json`.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) config: Config,
    pub(crate) rounds: Vec<Round>,
    pub(crate) totals: Totals,
    pub(crate) problems: Vec<String>,
    pub(crate) ok: bool,
}

impl Report {
    /// The report of `rounds`, with a problem added for every round whose
    /// duplicates exceed the limit; ok when there is no problem at all.
    pub(crate) fn new(config: Config, rounds: Vec<Round>, mut problems: Vec<String>) -> Self {
        for round in &rounds {
            let (duplicates, received) = (round.duplicates(), round.received());
            if !within(duplicates, received, config.max_duplicates) {
                problems.push(format!(
                    "round {}: {duplicates} duplicates, {:.1}% of the {received} assets received \
                     (limit {}%)",
                    round.round,
                    percent(duplicates, received),
                    config.max_duplicates
                ));
            }
        }
        Self {
            totals: Totals::of(&rounds),
            config,
            rounds,
            ok: problems.is_empty(),
            problems,
        }
    }
}

/// Whether `duplicates` are at most `max_percent` % of `received`.
pub(crate) fn within(duplicates: u64, received: u64, max_percent: f64) -> bool {
    duplicates as f64 * 100.0 <= received as f64 * max_percent
}

/// `part` as a percentage of `whole`; 0 of nothing is 0%.
pub(crate) fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        if part == 0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The first line: what is about to run.
pub(crate) fn headline(c: &Config) -> String {
    let burst = if c.writes {
        format!(
            "{} assets written to the others during each catch-up",
            c.burst
        )
    } else {
        "no writes during the catch-up".into()
    };
    let backlog = c
        .live_backlog
        .map_or(String::new(), |n| format!(", --live-backlog {n}"));
    format!(
        "reset: {} nodes in a full mesh{backlog}, {} assets of {} bytes on every node; {} round(s), \
         each resetting one node under its live links; {burst}; duplicates limit {}%; seed {}",
        c.nodes, c.assets, c.size, c.rounds, c.max_duplicates, c.seed
    )
}

/// The whole report.
pub(crate) fn describe(r: &Report) -> String {
    let mut out = String::new();
    for round in &r.rounds {
        describe_round(&mut out, round);
    }
    let t = &r.totals;
    if r.rounds.len() > 1 {
        let _ = writeln!(
            out,
            "total over {} rounds: {} received, {} duplicates ({:.1}%)",
            r.rounds.len(),
            t.received,
            t.duplicates,
            t.duplicate_percent
        );
    }
    for problem in &r.problems {
        let _ = writeln!(out, "PROBLEM: {problem}");
    }
    out.push_str(if r.ok { "ok\n" } else { "FAILED\n" });
    out
}

fn describe_round(out: &mut String, round: &Round) {
    let reset = round.reset_counted();
    let _ = writeln!(
        out,
        "round {}: {} reset; it held all {} assets again {:.1} s after its restart, every node {:.1} s after{}",
        round.round,
        round.reset_node,
        round.assets,
        round.catch_up_s,
        round.all_hold_s,
        if round.quiet {
            ""
        } else {
            " (counters still moving when read)"
        }
    );
    let _ = writeln!(
        out,
        "  {:<8} {:<5} {:>10} {:>10} {:>7} {:>12} {:>12}",
        "node", "role", "received", "duplicates", "dup %", "wire in MB", "wire out MB"
    );
    for node in &round.nodes {
        let c = &node.counted;
        let _ = writeln!(
            out,
            "  {:<8} {:<5} {:>10} {:>10} {:>7.1} {:>12.1} {:>12.1}",
            node.name,
            if node.reset { "reset" } else { "peer" },
            c.received,
            c.duplicates,
            percent(c.duplicates, c.received),
            mb(c.wire_bytes_received),
            mb(c.wire_bytes_sent)
        );
    }
    let (received, duplicates) = (round.received(), round.duplicates());
    let _ = writeln!(
        out,
        "  {:<8} {:<5} {:>10} {:>10} {:>7.1}   (expected {} received)",
        "all",
        "",
        received,
        duplicates,
        percent(duplicates, received),
        round.expected_received,
    );
    if round.burst > 0 {
        let _ = writeln!(
            out,
            "  {} assets written to the other nodes, the last acknowledged {:.1} s after the restart",
            round.burst, round.burst_written_s
        );
    }
    let _ = writeln!(
        out,
        "  the reset node read {:.1} MB of frames for {:.1} MB of assets ({:.2}×)",
        mb(reset.wire_bytes_received),
        mb(round.asset_bytes),
        reset.wire_bytes_received as f64 / round.asset_bytes.max(1) as f64
    );
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, reset: bool, received: u64, duplicates: u64) -> NodeRound {
        NodeRound {
            name: name.into(),
            reset,
            counted: Counters {
                received,
                duplicates,
                ..Counters::default()
            },
        }
    }

    fn round(number: u32, nodes: Vec<NodeRound>) -> Round {
        Round {
            round: number,
            reset_node: "node-3".into(),
            catch_up_s: 1.0,
            all_hold_s: 1.5,
            burst: 2000,
            burst_written_s: 0.5,
            assets: 22_000,
            asset_bytes: 22_000 * 4096,
            expected_received: 23_000,
            nodes,
            quiet: true,
        }
    }

    fn config(max_duplicates: f64) -> Config {
        Config {
            nodes: 3,
            assets: 20_000,
            size: 4096,
            writes: true,
            burst: 2000,
            rounds: 2,
            max_duplicates,
            live_backlog: None,
            seed: 20,
        }
    }

    #[test]
    fn duplicates_are_judged_against_what_was_received() {
        assert!(within(5, 100, 5.0));
        assert!(!within(6, 100, 5.0));
        assert!(within(0, 0, 5.0));
        assert!(
            !within(1, 0, 100.0),
            "a duplicate of nothing is never within"
        );
        assert_eq!(percent(1, 4), 25.0);
        assert_eq!(percent(0, 0), 0.0);
        assert!(percent(3, 0).is_infinite());
    }

    #[test]
    fn a_round_adds_up_its_nodes_and_the_totals_add_up_the_rounds() {
        let first = round(
            1,
            vec![
                node("node-1", false, 1000, 10),
                node("node-2", false, 1000, 0),
                node("node-3", true, 22_000, 20_000),
            ],
        );
        assert_eq!(first.received(), 24_000);
        assert_eq!(first.duplicates(), 20_010);
        assert_eq!(first.reset_counted().received, 22_000);
        let second = round(
            2,
            vec![node("node-2", true, 24_000, 0), node("node-1", false, 0, 0)],
        );
        let totals = Totals::of(&[first, second]);
        assert_eq!((totals.received, totals.duplicates), (48_000, 20_010));
        assert!((totals.duplicate_percent - 41.6875).abs() < 1e-9);
    }

    #[test]
    fn a_round_over_the_limit_fails_the_report_and_is_named() {
        let nodes = || {
            vec![
                node("node-1", false, 1000, 0),
                node("node-3", true, 1000, 150),
            ]
        };
        let strict = Report::new(config(5.0), vec![round(1, nodes())], Vec::new());
        assert!(!strict.ok);
        assert_eq!(strict.problems.len(), 1);
        assert!(strict.problems[0].starts_with("round 1: 150 duplicates, 7.5%"));
        assert!(describe(&strict).ends_with("FAILED\n"));

        let measuring = Report::new(config(100.0), vec![round(1, nodes())], Vec::new());
        assert!(measuring.ok, "{:?}", measuring.problems);
        assert!(describe(&measuring).ends_with("ok\n"));

        let broken = Report::new(config(100.0), Vec::new(), vec!["node-2 lacks 3".into()]);
        assert!(!broken.ok);
    }
}
