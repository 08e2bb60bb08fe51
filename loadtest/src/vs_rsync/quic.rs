//! The raw QUIC row of `loadtest vs-rsync`: the large file's size pushed
//! over one iroh QUIC stream between two processes on loopback, with no
//! store, no framing, no hashing and no disk (`loadtest raw-server` and
//! `raw-client`, as in the harness's `raw` scenario). It is the transport's
//! own ceiling on this machine, read against can-sync's large figure. Unlike
//! the other rows it is timed from its first byte to its last, not from
//! process start to exit, so can-sync's share of it is slightly understated
//! (for 1 GiB, can-sync's own session is within 2% of its wall time).

use super::report::Row;
use super::source::Source;
use super::{budget, Work};
use crate::raw;

/// The raw QUIC row: large only (there is no small-file transfer to compare).
pub(super) async fn quic_row(work: &Work, source: &Source) -> Row {
    let mut row = Row::new("raw QUIC");
    row.note = Some(
        "one iroh QUIC stream, nothing stored, timed first byte to last: the transport's ceiling"
            .into(),
    );
    let bytes = Source::bytes(&source.large);
    let took = async {
        work.settle().await?;
        let logs = work.logs.join(format!("raw-{}", work.pass.get()));
        std::fs::create_dir_all(&logs)?;
        let pass = raw::transfer(&logs, bytes, 1, budget(1, bytes), |_| {}).await?;
        anyhow::ensure!(
            pass.bytes == bytes,
            "the server received {} bytes",
            pass.bytes
        );
        Ok(std::time::Duration::from_secs_f64(pass.secs))
    }
    .await;
    row.record("large", &source.large, took);
    row
}
