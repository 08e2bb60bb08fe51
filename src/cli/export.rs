//! `can-sync export [STORE] --to DIR`: every asset of a node's store written
//! out as a file, under its name (its hash when it has none).
//!
//! Each file is written to a fresh temporary file in its folder, hashed as it
//! is written, and put under its final name only when its bytes hash to the
//! asset's hash: a file under its final name is always whole and correct. A
//! name that would leave `DIR` (absolute, `..`, empty parts) is not used: the
//! asset is written under its hash instead. Two assets of one name: the
//! second gets `~` and the start of its hash appended. Trashed assets are
//! left out unless `--trashed`.
//!
//! # Staying inside `DIR`, leaving the user's files alone
//!
//! Asset names come from peers, and `DIR` may already hold things. Two
//! attacks worked before these rules: a symbolic link `DIR/docs` pointing
//! elsewhere made the asset `docs/x.txt` land in the link's target, outside
//! `DIR`; and an asset named `keep.txt` replaced the user's own
//! `DIR/keep.txt`. So:
//!
//! - **No link is ever followed.** Folders below `DIR` are created one
//!   component at a time, each checked with `symlink_metadata`; a component
//!   that is a symbolic link (or a file) skips the asset. A symbolic link
//!   at the final name skips it too, with `--overwrite` or without: it is
//!   neither written through nor replaced. `DIR` itself is taken as the
//!   user gave it (it may be a link they made).
//! - **No file export did not write is replaced**, unless `--overwrite`.
//!   A file already under the name whose bytes hash to the asset's hash is
//!   the same file (a second export into the same folder): it is counted as
//!   already there, neither rewritten nor a conflict. A file of other bytes
//!   skips the asset; `--overwrite` replaces it.
//! - A skipped asset is named on stderr with the reason; the others are
//!   still exported, then the command says how many were skipped and exits
//!   non-zero. So is an asset whose bytes cannot be read or whose record is
//!   damaged: a damaged store gives up everything else it holds.
//!
//! What holds even against someone changing `DIR` while the export runs:
//! bytes are only ever written into a temporary file created with
//! `O_CREAT|O_EXCL` (`create_new`), which never opens an existing file or
//! follows a link; it reaches its final name by `link(2)` when nothing may
//! be replaced (which fails if anything, a link included, took the name
//! meanwhile) or by `rename(2)` with `--overwrite` (which replaces the
//! directory entry itself, never what a link points to). So no file is
//! ever truncated or written through a link, and without `--overwrite` no
//! existing entry is ever replaced. What a race can still do: swap a folder
//! checked here for a link before the temporary file is created in it (std
//! offers no `openat`-style folder handles to close that), so a file of the
//! export may appear in the linked folder under a new name, replacing
//! nothing; and on a file system without hard links the no-replace step
//! falls back to check-then-rename, which a file created in between would
//! lose to.

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
use can_sync::can::listing::{Listed, Listing, Span};

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
    /// Replace a file already in the folder that holds other bytes than the
    /// asset of its name. Without it, such a file is left alone and its
    /// asset skipped (named on stderr; the command then exits non-zero). A
    /// file that already holds the asset's bytes is never a conflict, and
    /// symbolic links are never followed or replaced, with this or without.
    #[arg(long)]
    overwrite: bool,
    /// Print one JSON line with the result instead of a summary.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: ExportArgs) -> Result<()> {
    let can = args.store.open_to_read()?.can();
    let started = Instant::now();
    tokio::fs::create_dir_all(&args.to)
        .await
        .with_context(|| format!("creating {}", args.to.display()))?;
    let total = can.stats().await?.bytes;
    let bar = super::report::bytes_bar(total, "exporting");
    let (mut written, mut bytes, mut failed, mut trashed) = (0u64, 0u64, 0u64, 0u64);
    let (mut already_there, mut skipped) = (0u64, 0u64);
    let mut taken = HashSet::new();
    let mut listing = Listing::new(LIST_PAGE);
    while let Some(listed) = listing.next(&*can).await? {
        let page = match listed {
            Listed::Page(page) => page,
            Listed::Damaged { hash, why } => {
                failed += 1;
                eprintln!("not exported: {hash}: its record is damaged: {why}");
                continue;
            }
            Listed::Unreadable { after, upto, why } => {
                failed += 1;
                let span = Span { after, upto };
                eprintln!("not exported: {span}: the store's index is damaged there: {why}");
                continue;
            }
        };
        for summary in &page {
            let Some((size, meta)) = can.meta(summary.hash).await? else {
                continue; // gone since it was listed
            };
            if meta.is_trashed && !args.trashed {
                trashed += 1;
                bar.inc(size);
                continue;
            }
            let name = place(&meta.name, summary.hash, &mut taken);
            match write_one(&can, summary.hash, &args.to, &name, args.overwrite).await {
                Ok(Outcome::Written) => {
                    written += 1;
                    bytes += size;
                }
                Ok(Outcome::AlreadyThere) => already_there += 1,
                Ok(Outcome::Skipped(refusal)) => {
                    skipped += 1;
                    eprintln!("skipped: {} ({}): {refusal}", summary.hash, name.display());
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
    }
    super::report::finish_progress(&bar);
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "written": written,
                "bytes": bytes,
                "already_present": already_there,
                "skipped": skipped,
                "failed": failed,
                "trashed_left_out": trashed,
                "secs": secs,
            })
        );
    } else {
        println!(
            "wrote {written} files, {:.1} MB, to {} in {secs:.2} s{}{}{}{}",
            bytes as f64 / 1e6,
            args.to.display(),
            if already_there > 0 {
                format!("; {already_there} already there")
            } else {
                String::new()
            },
            if skipped > 0 {
                format!("; {skipped} SKIPPED (named above)")
            } else {
                String::new()
            },
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
    if skipped + failed > 0 {
        bail!("{skipped} assets skipped and {failed} failed, so not exported (named above)");
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

/// What became of one asset whose bytes the store could read.
enum Outcome {
    /// Written under its name.
    Written,
    /// A file of exactly its bytes was already under its name.
    AlreadyThere,
    /// Not written, by a rule of this module.
    Skipped(Refusal),
}

/// Why an asset was not written although nothing failed; each names the
/// path (relative to `DIR`) in the way.
enum Refusal {
    /// A folder on the way is a symbolic link.
    LinkedFolder(PathBuf),
    /// Something on the way that should be a folder is not one.
    NotAFolder(PathBuf),
    /// The final name is a symbolic link.
    LinkedFile(PathBuf),
    /// The final name is a folder or something else that is not a file.
    NotAFile(PathBuf),
    /// A file of other bytes has the name, and `--overwrite` was not given.
    Exists(PathBuf),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LinkedFolder(path) => write!(
                f,
                "{} is a symbolic link; export never follows links",
                path.display()
            ),
            Self::NotAFolder(path) => write!(f, "{} is in the way: not a folder", path.display()),
            Self::LinkedFile(path) => write!(
                f,
                "{} is a symbolic link; export never follows or replaces links, \
                 not even with --overwrite",
                path.display()
            ),
            Self::NotAFile(path) => write!(f, "{} is in the way: not a file", path.display()),
            Self::Exists(path) => write!(
                f,
                "{} already exists with other content; --overwrite replaces it",
                path.display()
            ),
        }
    }
}

/// What is under an asset's final name before it is written.
enum Existing {
    Nothing,
    /// A regular file whose bytes hash to the asset's hash.
    Same,
    /// A regular file of other bytes.
    Other,
    Link,
    NotAFile,
}

/// Streams one asset into `dir/name` through a temporary file, checking its
/// hash before it takes the name, by the rules of the module doc.
async fn write_one(
    can: &SharedCan,
    hash: AssetHash,
    dir: &Path,
    name: &Path,
    overwrite: bool,
) -> Result<Outcome> {
    let file_name = name.file_name().context("an asset name has a last part")?;
    let folders = name.parent().unwrap_or(Path::new("")).to_path_buf();
    let folder = {
        let dir = dir.to_path_buf();
        match tokio::task::spawn_blocking(move || make_folders(&dir, &folders)).await?? {
            Ok(folder) => folder,
            Err(refusal) => return Ok(Outcome::Skipped(refusal)),
        }
    };
    let target = folder.join(file_name);
    let existing = {
        let target = target.clone();
        tokio::task::spawn_blocking(move || what_is_at(&target, hash)).await??
    };
    match existing {
        Existing::Nothing => {}
        Existing::Same => return Ok(Outcome::AlreadyThere),
        Existing::Link => return Ok(Outcome::Skipped(Refusal::LinkedFile(name.into()))),
        Existing::NotAFile => return Ok(Outcome::Skipped(Refusal::NotAFile(name.into()))),
        Existing::Other if !overwrite => return Ok(Outcome::Skipped(Refusal::Exists(name.into()))),
        Existing::Other => {}
    }

    // A new file of a random name: `create_new` never opens what is there,
    // a link included. Removed by its guard on any failure below.
    let temp = TempFile {
        path: folder.join(format!(
            ".can-sync-export-{}-{:016x}",
            &hash.to_hex()[..12],
            rand::random::<u64>()
        )),
        taken: false,
    };
    let file = std::fs::File::create_new(&temp.path)
        .with_context(|| format!("creating {}", temp.path.display()))?;
    let mut file = tokio::fs::File::from_std(file);
    let (_, mut body) = can.read_blob(hash, 0).await?;
    let mut hasher = blake3::Hasher::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    drop(file);
    let actual = AssetHash::from(hasher.finalize());
    if actual != hash {
        bail!("the store's bytes hash to {actual}");
    }
    let name = name.to_path_buf();
    tokio::task::spawn_blocking(move || put_in_place(temp, &target, &name, overwrite)).await?
}

/// Creates the folders `relative` below `dir` one part at a time, refusing a
/// part that is a symbolic link or not a folder; returns the last one.
fn make_folders(dir: &Path, relative: &Path) -> Result<Result<PathBuf, Refusal>> {
    let mut at = dir.to_path_buf();
    let mut shown = PathBuf::new();
    for part in relative.components() {
        at.push(part);
        shown.push(part);
        let found = match std::fs::symlink_metadata(&at) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::create_dir(&at) {
                    Ok(()) => continue,
                    // Made by someone else meanwhile: look at what it is.
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::fs::symlink_metadata(&at)?
                    }
                    Err(err) => {
                        return Err(err).with_context(|| format!("creating {}", at.display()))
                    }
                }
            }
            found => found.with_context(|| format!("looking at {}", at.display()))?,
        };
        if found.file_type().is_symlink() {
            return Ok(Err(Refusal::LinkedFolder(shown)));
        }
        if !found.is_dir() {
            return Ok(Err(Refusal::NotAFolder(shown)));
        }
    }
    Ok(Ok(at))
}

/// What is at `target`, without following a link: a regular file is hashed
/// to tell the asset's own bytes from a file of the user's.
fn what_is_at(target: &Path, hash: AssetHash) -> Result<Existing> {
    let found = match std::fs::symlink_metadata(target) {
        Ok(found) => found,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(err) => return Err(err).with_context(|| format!("looking at {}", target.display())),
    };
    if found.file_type().is_symlink() {
        return Ok(Existing::Link);
    }
    if !found.is_file() {
        return Ok(Existing::NotAFile);
    }
    let mut file =
        std::fs::File::open(target).with_context(|| format!("reading {}", target.display()))?;
    // Opened by name: make sure it is the file just looked at, not a link
    // put there in between.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let opened = file.metadata()?;
        if (opened.dev(), opened.ino()) != (found.dev(), found.ino()) {
            return Ok(Existing::Other);
        }
    }
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(if AssetHash::from(hasher.finalize()) == hash {
        Existing::Same
    } else {
        Existing::Other
    })
}

/// Gives the whole, checked temporary file its final name: by `link(2)`,
/// which replaces nothing, or with `overwrite` by `rename(2)`, which
/// replaces a file but never writes through a link (a link found there is
/// refused, not replaced).
fn put_in_place(temp: TempFile, target: &Path, name: &Path, overwrite: bool) -> Result<Outcome> {
    if overwrite {
        match what_is_at_now(target)? {
            Existing::Link => return Ok(Outcome::Skipped(Refusal::LinkedFile(name.into()))),
            Existing::NotAFile => return Ok(Outcome::Skipped(Refusal::NotAFile(name.into()))),
            _ => {}
        }
        std::fs::rename(&temp.path, target)
            .with_context(|| format!("renaming into {}", target.display()))?;
        temp.taken();
        return Ok(Outcome::Written);
    }
    match std::fs::hard_link(&temp.path, target) {
        // The temporary name goes with `temp`; the file stays under `target`.
        Ok(()) => Ok(Outcome::Written),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(Outcome::Skipped(Refusal::Exists(name.into())))
        }
        // No hard links on this file system: check, then rename.
        Err(_) => match what_is_at_now(target)? {
            Existing::Nothing => {
                std::fs::rename(&temp.path, target)
                    .with_context(|| format!("renaming into {}", target.display()))?;
                temp.taken();
                Ok(Outcome::Written)
            }
            _ => Ok(Outcome::Skipped(Refusal::Exists(name.into()))),
        },
    }
}

/// What kind of entry is at `target` (a link is not followed); a file is
/// [`Existing::Other`], unhashed.
fn what_is_at_now(target: &Path) -> Result<Existing> {
    match std::fs::symlink_metadata(target) {
        Ok(found) if found.file_type().is_symlink() => Ok(Existing::Link),
        Ok(found) if found.is_file() => Ok(Existing::Other),
        Ok(_) => Ok(Existing::NotAFile),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Existing::Nothing),
        Err(err) => Err(err).with_context(|| format!("looking at {}", target.display())),
    }
}

/// A temporary file of the export, removed when dropped unless
/// [`taken`](Self::taken): a failed or interrupted asset leaves no
/// `.can-sync-export-*` file behind.
struct TempFile {
    path: PathBuf,
    taken: bool,
}

impl TempFile {
    /// The file was renamed to its final name: nothing left to remove.
    fn taken(mut self) {
        self.taken = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.taken {
            let _ = std::fs::remove_file(&self.path);
        }
    }
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
