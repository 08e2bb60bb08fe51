//! `can-sync export [STORE] --to DIR`: every asset of a node's store written
//! out as a file, under its name (its hash when it has none).
//!
//! Each file is written to a temporary name in `DIR`, hashed as it is
//! written, and renamed into place only when its bytes hash to the asset's
//! hash: a file under its final name is always whole and correct. A name that
//! would leave `DIR` (absolute, `..`, empty parts) is not used: the asset is
//! written under its hash instead. Two assets of one name: the second gets
//! `~` and the start of its hash appended. Trashed assets are left out
//! unless `--trashed`.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use can_sync::asset::AssetHash;
use can_sync::can::{SharedCan, LIST_PAGE};
use clap::Args;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::args::NodeStoreArgs;

#[derive(Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    store: NodeStoreArgs,
    /// Folder to write the assets into (created when missing).
    #[arg(long)]
    to: PathBuf,
    /// Also write assets that are in the trash.
    #[arg(long)]
    trashed: bool,
    /// Print one JSON line with the result instead of a summary.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: ExportArgs) -> Result<()> {
    let (can, _) = args.store.open()?;
    let started = Instant::now();
    tokio::fs::create_dir_all(&args.to)
        .await
        .with_context(|| format!("creating {}", args.to.display()))?;
    let total = can.stats().await?.bytes;
    let bar = super::report::bytes_bar(total, "exporting");
    let (mut written, mut bytes, mut failed, mut trashed) = (0u64, 0u64, 0u64, 0u64);
    let mut taken = HashSet::new();
    let mut after = None;
    loop {
        let page = can.list_page(after, LIST_PAGE).await?;
        for summary in &page.items {
            let Some((size, meta)) = can.meta(summary.hash).await? else {
                continue; // gone since it was listed
            };
            if meta.is_trashed && !args.trashed {
                trashed += 1;
                bar.inc(size);
                continue;
            }
            let name = place(&meta.name, summary.hash, &mut taken);
            match write_one(&can, summary.hash, &args.to, &name).await {
                Ok(()) => {
                    written += 1;
                    bytes += size;
                }
                Err(err) => {
                    failed += 1;
                    eprintln!(
                        "not exported: {} ({}): {err:#}",
                        summary.hash,
                        name.display()
                    );
                }
            }
            bar.inc(size);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    super::report::finish_progress(&bar);
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "written": written,
                "bytes": bytes,
                "failed": failed,
                "trashed_left_out": trashed,
                "secs": secs,
            })
        );
    } else {
        println!(
            "wrote {written} files, {:.1} MB, to {} in {secs:.2} s{}{}",
            bytes as f64 / 1e6,
            args.to.display(),
            if trashed > 0 {
                format!("; {trashed} trashed assets left out (--trashed writes them)")
            } else {
                String::new()
            },
            if failed > 0 {
                format!("; {failed} FAILED")
            } else {
                String::new()
            }
        );
    }
    if failed > 0 {
        bail!("{failed} assets were not exported (named above)");
    }
    Ok(())
}

/// The relative path an asset is written under: its name when that stays
/// inside the folder and is free, else its hash; a name already taken gets
/// `~` and the start of the hash appended.
fn place(name: &str, hash: AssetHash, taken: &mut HashSet<PathBuf>) -> PathBuf {
    let path = safe_path(name).unwrap_or_else(|| PathBuf::from(hash.to_hex()));
    let path = if taken.contains(&path) {
        let mut renamed = path.clone().into_os_string();
        renamed.push(format!("~{}", &hash.to_hex()[..12]));
        PathBuf::from(renamed)
    } else {
        path
    };
    taken.insert(path.clone());
    path
}

/// `name` as a relative path of plain parts, or `None` when it is empty or
/// would climb out (absolute, `..`, a drive, `.`).
fn safe_path(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains('\0') || name.contains('\\') {
        return None;
    }
    let path = Path::new(name);
    let plain = path
        .components()
        .all(|part| matches!(part, Component::Normal(_)));
    (plain && !name.split('/').any(str::is_empty)).then(|| path.to_path_buf())
}

/// Streams one asset into `dir/name` through a temporary file, checking its
/// hash before the rename.
async fn write_one(can: &SharedCan, hash: AssetHash, dir: &Path, name: &Path) -> Result<()> {
    let target = dir.join(name);
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let temp = dir.join(format!(".can-sync-export-{}", hash.to_hex()));
    let written = async {
        let (_, mut body) = can.read_blob(hash, 0).await?;
        let mut file = tokio::fs::File::create(&temp).await?;
        let mut hasher = blake3::Hasher::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        let actual = AssetHash::from(hasher.finalize());
        if actual != hash {
            bail!("the store's bytes hash to {actual}");
        }
        tokio::fs::rename(&temp, &target).await?;
        anyhow::Ok(())
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_leave_the_folder_are_not_used() {
        for bad in [
            "",
            "/etc/passwd",
            "../up",
            "a/../../b",
            "a//b",
            "./a",
            "c:\\x",
            "a/",
        ] {
            assert_eq!(safe_path(bad), None, "{bad:?}");
        }
        assert_eq!(safe_path("a/b.txt"), Some(PathBuf::from("a/b.txt")));
        let hash = AssetHash::of(b"x");
        let mut taken = HashSet::new();
        assert_eq!(place("n", hash, &mut taken), PathBuf::from("n"));
        let second = place("n", hash, &mut taken);
        assert!(second.to_string_lossy().starts_with("n~"), "{second:?}");
        assert_eq!(
            place("../x", hash, &mut taken),
            PathBuf::from(hash.to_hex())
        );
    }
}
