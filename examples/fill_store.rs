//! How much disk an embedded store takes for what it holds, and how fast it
//! loads: fills a new store with `COUNT` assets of `SIZE` random bytes each,
//! in batches that grow with the store as a bulk loader's do
//! (`load_batch`) unless a fixed `BATCH` is given, and
//! prints the rate of each tenth of the load (with the CPU seconds it cost
//! the process, all threads, and its peak RSS so far), the bytes held, and
//! the store's size on disk (the `du -sb` of issue 22's space figures).
//!
//! `cargo run --release --example fill_store -- DIR COUNT SIZE [BATCH]`
//!
//! The store is opened with the database cache of a bulk load
//! (`load_cache()`); `FILL_CACHE_MIB=64` gives it another size, in MiB (64
//! is a daemon's).
//!
//! The bytes are drawn from BLAKE3's output for each index, so every run
//! makes the same assets and none compress or repeat.
//!
//! Assets go in by hash, the store's key order, as `can-sync add` adds
//! small files; `FILL_ORDER=index` pushes them in the order of their
//! indexes instead (random in the key space: the order `add` used before).

use std::path::{Path, PathBuf};
use std::time::Instant;

use can_sync::asset::{AssetHash, Bundle};
use can_sync::can::store::{load_batch, load_cache};
use can_sync::can::{Can, EmbeddedCan, StoreLimits};
use can_sync::pb;

fn asset(index: u64, size: usize) -> Bundle {
    let mut data = vec![0u8; size];
    blake3::Hasher::new()
        .update(&index.to_le_bytes())
        .finalize_xof()
        .fill(&mut data);
    Bundle {
        hash: AssetHash::of(&data),
        data: data.into(),
        meta: pb::AssetMeta {
            name: format!("file-{index:08}.bin"),
            created_at_ms: 1,
            meta_updated_at_ms: 1,
            ..Default::default()
        },
    }
}

/// CPU seconds this process has used (user + system, all threads), and its
/// peak resident set size in MiB.
fn usage() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rfind(')')
        .map_or("", |at| &stat[at + 1..])
        .split_whitespace()
        .collect();
    // After the name: state is field 3, utime field 14, stime field 15, in
    // clock ticks of 1/100 s.
    let ticks = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let cpu = ticks(14).unwrap_or(0.0) + ticks(15).unwrap_or(0.0);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu / 100.0, peak_kib / 1024.0)
}

/// Bytes the files under `path` take on disk, as `du -sb` counts them
/// (apparent sizes).
fn disk_bytes(path: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            disk_bytes(&entry.path())? + meta.len()
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, count, size, batch) = match args.as_slice() {
        [dir, count, size] => (dir, count, size, None),
        [dir, count, size, batch] => (dir, count, size, Some(batch.parse::<u64>()?)),
        _ => anyhow::bail!("usage: fill_store DIR COUNT SIZE [BATCH]"),
    };
    let (dir, count, size) = (PathBuf::from(dir), count.parse::<u64>()?, size.parse()?);
    let limits = StoreLimits {
        database_cache: std::env::var("FILL_CACHE_MIB")
            .ok()
            .map_or(Ok(load_cache()), |mib| {
                mib.parse::<usize>().map(|m| m << 20)
            })?,
        ..StoreLimits::default()
    };
    let store = EmbeddedCan::open(&dir, limits)?;
    println!(
        "database cache {} MiB, {}",
        limits.database_cache >> 20,
        batch.map_or("batches growing with the store".into(), |b| format!(
            "{b} to a batch"
        ))
    );
    let started = Instant::now();
    let tenth = (count / 10).max(1);
    let order: Vec<u64> = if std::env::var("FILL_ORDER").is_ok_and(|o| o == "index") {
        println!("in the order of their indexes");
        (0..count).collect()
    } else {
        let mut keyed: Vec<(AssetHash, u64)> =
            (0..count).map(|i| (asset(i, size).hash, i)).collect();
        keyed.sort_unstable();
        println!(
            "by hash: sorted in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        keyed.into_iter().map(|(_, i)| i).collect()
    };
    let mut mark = (Instant::now(), 0u64, usage().0);
    let mut next = 0u64;
    while next < count {
        let batch = batch.unwrap_or(load_batch(next, limits.database_cache) as u64);
        let end = (next + batch.max(1)).min(count);
        let batch = order[next as usize..end as usize]
            .iter()
            .map(|&i| asset(i, size).verify())
            .collect::<Result<Vec<_>, _>>()?;
        for answer in store.push_batch(batch).await? {
            answer?;
        }
        if end / tenth != next / tenth || end == count {
            let took = mark.0.elapsed().as_secs_f64();
            let (cpu, peak_rss) = usage();
            println!(
                "{end} assets: {:.0} assets/s over the last {} ({:.1} CPU s; peak RSS {peak_rss:.0} MiB)",
                (end - mark.1) as f64 / took,
                end - mark.1,
                cpu - mark.2
            );
            mark = (Instant::now(), end, cpu);
        }
        next = end;
    }
    let stats = store.stats().await?;
    let (cpu, peak_rss) = usage();
    println!("CPU {cpu:.1} s in all, peak RSS {peak_rss:.0} MiB");
    let secs = started.elapsed().as_secs_f64();
    tokio::task::spawn_blocking(move || drop(store)).await?;
    let disk = disk_bytes(&dir)?;
    println!(
        "{} assets, {} bytes held, loaded in {secs:.1} s ({:.0} assets/s); {disk} bytes on disk: {:.3}x",
        stats.assets,
        stats.bytes,
        stats.assets as f64 / secs,
        disk as f64 / stats.bytes as f64
    );
    Ok(())
}
