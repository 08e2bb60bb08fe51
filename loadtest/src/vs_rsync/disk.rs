//! The disk row of `loadtest vs-rsync`: what the disk itself does durably,
//! with no transfer tool in the way — a loop here that creates, writes and
//! fsyncs the small files one by one, and `dd conv=fsync` of the large size.
//! The other rows are read against it.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::report::Row;
use super::source::{file_bytes, Source};
use super::{budget, remove, Work};

/// The disk row: the small-file fsync loop and `dd conv=fsync`.
pub(super) async fn disk_row(work: &Work, source: &Source) -> Row {
    let mut row = Row::new("disk");
    row.note = Some("small: write+fsync each file; large: dd conv=fsync".into());
    let small = fsync_loop(work, source.small.len(), source.small[0].size).await;
    row.record("small", &source.small, small);
    let large = dd(work, source.large[0].size).await;
    // dd writes whole MiB: its rate is of what it wrote.
    let written = source.large[0].size.div_ceil(1 << 20) << 20;
    match large {
        Ok(took) => row.set_large(written, took),
        Err(err) => row.fail("large", &err),
    }
    row
}

/// Creates, writes and fsyncs `files` files of `size` bytes one by one, then
/// fsyncs their folder: the disk's durable small-file rate.
async fn fsync_loop(work: &Work, files: usize, size: u64) -> Result<Duration> {
    let dir = work.fresh("disk-small")?;
    work.settle().await?;
    let data = file_bytes(0, 0, usize::try_from(size)?);
    let deadline = Instant::now() + budget(files, files as u64 * size);
    let folder = dir.clone();
    let took = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        for index in 0..files {
            ensure!(Instant::now() < deadline, "the fsync loop ran out of time");
            let path = folder.join(format!("f{index:06}.bin"));
            let mut file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(&data)?;
            file.sync_all()?;
        }
        std::fs::File::open(&folder)?.sync_all()?;
        Ok(started.elapsed())
    })
    .await
    .context("fsync loop task")?;
    // The files stay until the work folder goes (see `Work::fresh`).
    took
}

/// `dd if=/dev/zero bs=1M conv=fsync` of `bytes` (rounded up to MiB).
async fn dd(work: &Work, bytes: u64) -> Result<Duration> {
    let dir = work.fresh("disk-large")?;
    let count = bytes.div_ceil(1 << 20);
    let args = vec![
        "if=/dev/zero".to_string(),
        format!("of={}", dir.join("dd.bin").display()),
        "bs=1M".into(),
        format!("count={count}"),
        "conv=fsync".into(),
    ];
    work.settle().await?;
    let took = work
        .timed("dd", Path::new("dd"), &args, budget(1, count << 20))
        .await?;
    remove(&dir)?;
    Ok(took)
}
