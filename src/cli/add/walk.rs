//! The walk of `add`'s arguments, and the reading of the files it finds:
//! in chunks on blocking threads, each file's bytes kept or only hashed.

use std::path::{Path, PathBuf};

use can_sync::asset::AssetHash;

use super::{Found, BATCH_FILE_LIMIT};

/// Most files read in one hand-off to a blocking thread. A hand-off per
/// file cost more than the reading: 18M context switches and 434 s of
/// system time at 10M files (PERFORMANCE.md, "Loading").
pub(super) const READ_CHUNK_FILES: usize = 128;
/// A chunk closes once it holds this many bytes of files, so chunks of
/// large files stay few.
const READ_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// Files found by the walk and not yet sent to be read: up to
/// [`READ_CHUNK_FILES`] files or [`READ_CHUNK_BYTES`], whichever comes
/// first, read together on one blocking thread.
#[derive(Debug, Default)]
pub(super) struct ReadChunk {
    pub(super) files: Vec<Found>,
    bytes: u64,
}

impl ReadChunk {
    /// Adds `file`; the chunk's files once that fills it.
    pub(super) fn take_if_full(&mut self, file: Found) -> Option<Vec<Found>> {
        self.bytes += file.size;
        self.files.push(file);
        if self.files.len() < READ_CHUNK_FILES && self.bytes < READ_CHUNK_BYTES {
            return None;
        }
        self.bytes = 0;
        Some(std::mem::take(&mut self.files))
    }
}

/// Reads a chunk's files, in order, on the calling (blocking) thread, and
/// makes of each file's bytes what `then` says: the bytes to add, or their
/// hash to sort by.
pub(super) fn read_chunk<T>(
    files: Vec<Found>,
    then: impl Fn(Vec<u8>) -> T,
) -> Vec<(Found, std::io::Result<T>)> {
    files
        .into_iter()
        .map(|file| {
            let read = read_found(&file.path).map(&then);
            (file, read)
        })
        .collect()
}

/// Reads a small file the walk found, as it is now. Its second read comes
/// a whole first pass after the walk saw it (two minutes at 10M files), so
/// it may have changed since: a symbolic link put in its place is not
/// followed (as the walk follows none), a FIFO is not waited on, and a
/// file grown past [`BATCH_FILE_LIMIT`] is not read into memory. Each is
/// that file's failure, named, and the rest goes in.
fn read_found(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, Read};

    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|err| {
        #[cfg(unix)]
        if err.raw_os_error() == Some(libc::ELOOP) {
            return Error::other("replaced by a symbolic link since it was found");
        }
        err
    })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::other("no longer a regular file"));
    }
    let grown = || {
        Error::other(format!(
            "grew past {BATCH_FILE_LIMIT} bytes since it was found; add it again"
        ))
    };
    if meta.len() > BATCH_FILE_LIMIT {
        return Err(grown());
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(BATCH_FILE_LIMIT + 1).read_to_end(&mut data)?;
    if data.len() as u64 > BATCH_FILE_LIMIT {
        return Err(grown());
    }
    Ok(data)
}

/// A file's hash, from its bytes, which are let go.
pub(super) fn hash_of(data: Vec<u8>) -> AssetHash {
    AssetHash::of(&data)
}

/// What the walk of the arguments left besides the small files it sent on.
#[derive(Debug, Default)]
pub(super) struct Walked {
    /// Files above [`BATCH_FILE_LIMIT`], streamed in one by one at the end.
    pub(super) large: Vec<Found>,
    /// Symbolic links and other non-files.
    pub(super) skipped: u64,
    /// Folders (or entries) that could not be read, and why: counted as
    /// failures, the rest of the tree still added.
    pub(super) unlisted: Vec<(PathBuf, String)>,
}

/// Visits every file under `path` (itself when it is a file) with the name
/// it gets: its path relative to `path`, or its own name for a file
/// argument. Folders are read in name order, so two imports of one tree go
/// in the same order. False when `visit` said to stop.
pub(super) fn find(
    path: &Path,
    visit: &mut impl FnMut(Found) -> bool,
    skipped: &mut u64,
    unlisted: &mut Vec<(PathBuf, String)>,
) -> bool {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) => {
            unlisted.push((path.to_path_buf(), err.to_string()));
            return true;
        }
    };
    if meta.is_file() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        return visit(Found {
            path: path.to_path_buf(),
            name,
            size: meta.len(),
            hashed: None,
        });
    }
    if !meta.is_dir() {
        *skipped += 1;
        return true;
    }
    walk(path, path, visit, skipped, unlisted)
}

fn walk(
    root: &Path,
    dir: &Path,
    visit: &mut impl FnMut(Found) -> bool,
    skipped: &mut u64,
    unlisted: &mut Vec<(PathBuf, String)>,
) -> bool {
    let listed = std::fs::read_dir(dir).and_then(|entries| entries.collect::<Result<Vec<_>, _>>());
    let mut entries = match listed {
        Ok(entries) => entries,
        Err(err) => {
            unlisted.push((dir.to_path_buf(), format!("listing the folder: {err}")));
            return true;
        }
    };
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = match entry.file_type() {
            Ok(kind) => kind,
            Err(err) => {
                unlisted.push((path, err.to_string()));
                continue;
            }
        };
        let going_on = if kind.is_dir() {
            walk(root, &path, visit, skipped, unlisted)
        } else if kind.is_file() {
            let size = match entry.metadata() {
                Ok(meta) => meta.len(),
                Err(err) => {
                    unlisted.push((path, err.to_string()));
                    continue;
                }
            };
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let name = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            visit(Found {
                size,
                path,
                name,
                hashed: None,
            })
        } else {
            *skipped += 1;
            true
        };
        if !going_on {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::{found, meta_of};
    use super::*;

    #[test]
    fn a_read_chunk_closes_at_its_file_count_or_its_bytes() {
        let mut chunk = ReadChunk::default();
        for i in 1..READ_CHUNK_FILES {
            assert_eq!(chunk.take_if_full(found(&format!("f{i}"), 1)), None);
        }
        let full = chunk.take_if_full(found("last", 1)).expect("full by count");
        assert_eq!(full.len(), READ_CHUNK_FILES);
        assert_eq!(full.last().unwrap().name, "last");
        assert!(chunk.files.is_empty());

        // Bytes: a file that crosses the bound closes the chunk with it,
        // and the next chunk starts from nothing.
        assert_eq!(chunk.take_if_full(found("a", READ_CHUNK_BYTES - 1)), None);
        let full = chunk.take_if_full(found("b", 2)).expect("full by bytes");
        assert_eq!(full.len(), 2);
        assert_eq!(chunk.take_if_full(found("c", READ_CHUNK_BYTES - 1)), None);
    }

    #[test]
    fn a_chunk_reads_in_order_and_names_the_file_it_could_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("one"), b"1").unwrap();
        std::fs::write(dir.path().join("three"), b"333").unwrap();
        let at = |name: &str| Found {
            path: dir.path().join(name),
            name: name.to_string(),
            size: 0,
            hashed: None,
        };
        let read = read_chunk(vec![at("one"), at("gone"), at("three")], Bytes::from);
        let names: Vec<&str> = read.iter().map(|(file, _)| file.name.as_str()).collect();
        assert_eq!(names, ["one", "gone", "three"]);
        assert_eq!(read[0].1.as_ref().unwrap().as_ref(), b"1");
        assert_eq!(
            read[1].1.as_ref().unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        assert_eq!(read[2].1.as_ref().unwrap().as_ref(), b"333");
        // The first pass keeps only the hash.
        let hashed = read_chunk(vec![at("gone"), at("three")], hash_of);
        assert!(hashed[0].1.is_err());
        assert_eq!(*hashed[1].1.as_ref().unwrap(), AssetHash::of(b"333"));
    }

    /// A run's files are read again a whole first pass after the walk saw
    /// them: each that changed into something `add` would not have taken
    /// fails alone, saying what it became, and is not followed, waited on
    /// or read whole.
    #[cfg(unix)]
    #[test]
    fn a_file_changed_since_the_walk_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("target"), b"t").unwrap();
        std::fs::write(path("fine"), b"fine").unwrap();
        std::os::unix::fs::symlink(path("target"), path("link")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(path("fifo"))
            .status()
            .unwrap();
        assert!(made.success());
        std::fs::create_dir(path("folder")).unwrap();
        // Sparse: no 16 MiB written.
        std::fs::File::create(path("grown"))
            .unwrap()
            .set_len(BATCH_FILE_LIMIT + 1)
            .unwrap();
        let at = |name: &str| Found {
            path: path(name),
            name: name.to_string(),
            size: 1,
            hashed: None,
        };
        let names = ["link", "fifo", "folder", "grown", "fine"];
        let read = read_chunk(names.iter().map(|n| at(n)).collect(), Bytes::from);
        let said: Vec<String> = read
            .iter()
            .map(|(_, read)| match read {
                Ok(data) => format!("read {} bytes", data.len()),
                Err(err) => err.to_string(),
            })
            .collect();
        assert!(said[0].contains("symbolic link"), "{said:?}");
        assert!(said[1].contains("no longer a regular file"), "{said:?}");
        assert!(said[2].contains("no longer a regular file"), "{said:?}");
        assert!(said[3].contains("grew past"), "{said:?}");
        assert_eq!(said[4], "read 4 bytes");
    }

    #[test]
    fn names_are_paths_relative_to_the_argument() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/c.txt"), b"c").unwrap();
        std::fs::write(dir.path().join("top.json"), b"{}").unwrap();
        let (mut found, mut skipped, mut unlisted) = (Vec::new(), 0, Vec::new());
        let mut visit = |file: Found| {
            found.push(file);
            true
        };
        assert!(find(dir.path(), &mut visit, &mut skipped, &mut unlisted));
        assert!(find(
            &dir.path().join("top.json"),
            &mut visit,
            &mut skipped,
            &mut unlisted
        ));
        assert!(unlisted.is_empty(), "{unlisted:?}");
        let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a/b/c.txt", "top.json", "top.json"]);
        assert_eq!(skipped, 0);
        assert_eq!(meta_of(&found[0]).mime_type, "text/plain");
        assert_eq!(meta_of(&found[1]).mime_type, "application/json");
    }
}
