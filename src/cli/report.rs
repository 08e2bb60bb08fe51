//! What a command shows its user: a spinner on stderr while a sync runs
//! (seed, demo), a bar of bytes while files move (add, export), and the
//! seed's result on stdout, a sentence or, with `--json`,
//! one line for machines (its fields are in README).

use std::time::Duration;

use can_sync::node::Node;
use can_sync::session::SessionReport;

/// The progress of a sync on stderr, fed by the node's live counters: the
/// phase (connecting, reconciling, transferring, finishing), then once the
/// session has planned what to send a bar of assets sent against the plan,
/// with bytes both ways, the rate and an ETA. Log lines print above it.
/// Hidden when stderr is not a terminal. End it with [`finish_progress`].
pub(crate) fn progress_bar(node: &Node) -> indicatif::ProgressBar {
    use std::io::IsTerminal;

    use can_sync::engine::EngineStats;

    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix:>12} {elapsed_precise} {msg}")
            .expect("static template"),
    );
    bar.set_prefix("connecting");
    super::logs::print_above(&bar);
    let stats = node.stats().clone();
    let ticker = bar.clone();
    let started = std::time::Instant::now();
    // Ticks on its own clock, so it moves while nothing arrives; ends with
    // the bar.
    tokio::spawn(async move {
        let mut planned_shown = false;
        while !ticker.is_finished() {
            let get = EngineStats::get;
            let planned = get(&stats.planned_assets);
            if planned > 0 && !planned_shown {
                ticker.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {pos}/{len} assets sent, {msg}, ETA {eta}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                planned_shown = true;
            }
            if planned_shown {
                // The plan grows while a paged exchange is still merging.
                ticker.set_length(planned);
            }
            ticker.set_prefix(stats.phase().name());
            ticker.set_position(get(&stats.assets_sent));
            let moved = get(&stats.bytes_sent) + get(&stats.bytes_received);
            ticker.set_message(format!(
                "{:.1}/{:.1} MB; received {} ({:.1} MB); {:.1} MB/s",
                get(&stats.bytes_sent) as f64 / 1e6,
                get(&stats.planned_bytes) as f64 / 1e6,
                get(&stats.assets_received),
                get(&stats.bytes_received) as f64 / 1e6,
                moved as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-3)
            ));
            ticker.tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    bar
}

/// Ends a [`progress_bar`]: cleared, and logs go straight to stderr again.
pub(crate) fn finish_progress(bar: &indicatif::ProgressBar) {
    bar.finish_and_clear();
    super::logs::bar_done();
}

/// A bar of `total` bytes on stderr (done, rate, ETA), labelled `what`;
/// hidden when stderr is not a terminal, so pipes and logs get only the
/// result. End it with [`finish_progress`].
pub(crate) fn bytes_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;

    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    super::logs::print_above(&bar);
    bar
}

/// Prints a session's result on stdout: a sentence for people or, with
/// `json`, one line for machines, keys sorted:
/// `{"assets_received":N,"assets_sent":N,"bytes":N,"not_taken":N,"rejected":N,"secs":F,"wire_bytes":N}`;
/// `not_taken` counts what of ours the peer lacks but did not take (it
/// grants us read only).
pub(crate) fn print_report(report: &SessionReport, elapsed: Duration, json: bool) {
    let secs = elapsed.as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "assets_received": report.assets_received,
                "assets_sent": report.assets_sent,
                "bytes": report.payload_bytes,
                "wire_bytes": report.wire_bytes,
                "secs": secs,
                "rejected": report.rejected.len(),
                "not_taken": report.not_taken,
            })
        );
    } else {
        println!(
            "sent {} and received {} assets ({:.1} MB payload, {:.1} MB on the wire) in {:.2} s: {:.1} MB/s; {} metadata updates sent, {} applied; {} rejected",
            report.assets_sent,
            report.assets_received,
            report.payload_bytes as f64 / 1e6,
            report.wire_bytes as f64 / 1e6,
            secs,
            report.payload_bytes as f64 / 1e6 / secs.max(1e-9),
            report.meta_sent,
            report.meta_applied,
            report.rejected.len()
        );
        if report.not_taken > 0 {
            println!(
                "the peer grants this node read only: it did not take {} of our assets and \
                 metadata updates",
                report.not_taken
            );
        }
    }
}
