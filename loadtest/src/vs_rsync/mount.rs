//! Where the work folder of `loadtest vs-rsync` may go: the filesystem a
//! folder is on, read from `/proc/self/mountinfo`, and the first candidate
//! folder that is on a disk, since writing to a disk is what the run measures
//! and tmpfs would flatter every row.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

/// A mounted filesystem, from `/proc/self/mountinfo`.
pub(super) struct Mount {
    /// `ext4`, `xfs`, `tmpfs`.
    fstype: String,
    /// The device (`/dev/vda`).
    source: String,
    /// Where it is mounted.
    point: PathBuf,
}

impl Mount {
    /// True when its files live in memory, not on a disk.
    fn in_memory(&self) -> bool {
        matches!(self.fstype.as_str(), "tmpfs" | "ramfs" | "devtmpfs")
            || self.source.starts_with("/dev/zram")
    }
}

impl std::fmt::Display for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on {} mounted at {}",
            self.fstype,
            self.source,
            self.point.display()
        )
    }
}

/// The filesystem `path` is on: the mount with the longest mount point
/// containing it (the last one mounted, when several share that point).
pub(super) fn filesystem_of(path: &Path) -> Result<Mount> {
    let path = path
        .canonicalize()
        .with_context(|| format!("resolving {}", path.display()))?;
    let table =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut best: Option<Mount> = None;
    for line in table.lines() {
        // `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE OPTIONS`
        let Some((mine, theirs)) = line.split_once(" - ") else {
            continue;
        };
        let (Some(point), mut rest) = (mine.split(' ').nth(4), theirs.split(' ')) else {
            continue;
        };
        let point = PathBuf::from(unescape_mount(point));
        let (Some(fstype), Some(source)) = (rest.next(), rest.next()) else {
            continue;
        };
        let longer = best
            .as_ref()
            .is_none_or(|b| point.as_os_str().len() >= b.point.as_os_str().len());
        if path.starts_with(&point) && longer {
            best = Some(Mount {
                fstype: fstype.to_string(),
                source: unescape_mount(source),
                point,
            });
        }
    }
    best.with_context(|| format!("no mount holds {}", path.display()))
}

/// Undoes mountinfo's octal escapes (`\040` is a space).
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The folder to make the work folder in: `--dir`, else the first of the temp
/// folder, /var/tmp and the current folder that is on a disk.
pub(super) fn disk_folder(asked: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = asked {
        let mount = filesystem_of(dir)?;
        ensure!(
            !mount.in_memory(),
            "{} is on {mount}, in memory: pass a --dir on a disk",
            dir.display()
        );
        return Ok(dir.to_path_buf());
    }
    let candidates = [
        std::env::temp_dir(),
        PathBuf::from("/var/tmp"),
        std::env::current_dir()?,
    ];
    for dir in candidates {
        if filesystem_of(&dir).is_ok_and(|m| !m.in_memory()) {
            return Ok(dir);
        }
    }
    bail!(
        "the temp folder, /var/tmp and the current folder are all in memory: pass --dir on a disk"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount(r"/mnt/my\040disk"), "/mnt/my disk");
        assert_eq!(unescape_mount(r"/a\\b"), r"/a\\b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }

    #[test]
    fn the_root_is_on_some_filesystem() -> Result<()> {
        let mount = filesystem_of(Path::new("/"))?;
        assert_eq!(mount.point, Path::new("/"));
        assert!(!mount.fstype.is_empty());
        Ok(())
    }
}
