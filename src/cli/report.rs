//! What a command shows its user: a spinner on stderr while a sync runs
//! (seed, demo), a bar of bytes while files move (add, export), and the
//! seed's result on stdout, a sentence or, with `--json`,
//! the one line DESIGN §7 specifies for machines.

use std::time::Duration;

use can_sync::node::Node;
use can_sync::session::SessionReport;

/// A spinner on stderr fed by the node's live counters; finish it before
/// printing the result.
pub(crate) fn progress_bar(node: &Node) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .expect("static template"),
    );
    let progress = node.stats().clone();
    let ticker = bar.clone();
    // Ticks on its own clock, so the spinner moves while nothing arrives;
    // ends with the bar.
    tokio::spawn(async move {
        while !ticker.is_finished() {
            let (sent, received, bytes) = progress.snapshot();
            ticker.set_message(format!(
                "sent {sent}, received {received} assets, {:.1} MB",
                bytes as f64 / 1e6
            ));
            ticker.tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    bar
}

/// A bar of `total` bytes on stderr (done, rate, ETA), labelled `what`;
/// hidden when stderr is not a terminal, so pipes and logs get only the
/// result.
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
    bar
}

/// Prints a session's result on stdout: a sentence for people or, with
/// `json`, one line for machines, keys sorted:
/// `{"assets_received":N,"assets_sent":N,"bytes":N,"rejected":N,"secs":F,"wire_bytes":N}`.
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
    }
}
