//! The readers' end of the pack segments ([`SegmentReader`]): a value by
//! its location, by pread from a handle per local segment, or by ranged
//! `GET`s from object storage for a sealed segment moved there.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt as _;

use super::{segment_path, Location, SegmentError};
use crate::can::store::fs::{StoreFile, StoreFs};
use crate::can::store::objects::{ObjectError, Objects};

/// Read handles kept open at once; beyond it they are dropped and reopened
/// as needed, so a store of many segments holds few descriptors.
const OPEN_HANDLES: usize = 64;

/// The readers' end of the segments: a value by its location.
pub(in crate::can::store) struct SegmentReader {
    fs: Arc<dyn StoreFs>,
    dir: PathBuf,
    /// Open read handles, by segment.
    handles: Mutex<HashMap<u64, Arc<dyn StoreFile>>>,
    /// Where sealed segments go once uploaded, when the store keeps them in
    /// object storage (see `offload.rs`): a value whose segment is no
    /// longer on disk is read from there, by a ranged `GET`.
    remote: Option<RemoteSegments>,
    /// Held while sealed segments are moved to object storage: the
    /// store's own task and an explicit `upload_sealed` share this reader,
    /// and two moves at once would race for one segment's file (one
    /// removes it while the other reads it to upload).
    pub(in crate::can::store) moving: tokio::sync::Mutex<()>,
}

/// Ranged `GET`s one [`SegmentReader::read_many`] runs at once.
const REMOTE_READS: usize = 16;

/// Values of one segment in object storage read together are fetched by
/// one `GET` when the bytes between them are at most this many (read and
/// thrown away): fewer requests for values stored side by side, as the
/// values added together are.
const COALESCE_GAP: u64 = 16 * 1024;

/// The most one coalesced `GET` fetches, so that a batch of values spread
/// over a segment does not become one read of the whole segment.
const COALESCE_SPAN: u64 = 1024 * 1024;

/// One ranged read of a remote segment and the values it serves.
#[derive(Debug, PartialEq, Eq)]
struct Span {
    segment: u64,
    range: std::ops::Range<u64>,
    /// Each value's index in the caller's list, and where it is.
    values: Vec<(usize, Location)>,
}

/// `wanted`, sorted by segment and offset, grouped into the spans to read:
/// a value joins the span before it when it is in the same segment, starts
/// at most [`COALESCE_GAP`] past the span's end, and keeps the span within
/// [`COALESCE_SPAN`] (a longer value is a span of its own).
fn coalesce(wanted: Vec<(usize, Location)>) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    for (index, at) in wanted {
        let end = at.offset + u64::from(at.len);
        if let Some(span) = spans.last_mut() {
            let joins = span.segment == at.segment
                && at.offset <= span.range.end + COALESCE_GAP
                && end.max(span.range.end) - span.range.start <= COALESCE_SPAN;
            if joins {
                span.range.end = span.range.end.max(end);
                span.values.push((index, at));
                continue;
            }
        }
        spans.push(Span {
            segment: at.segment,
            range: at.offset..end,
            values: vec![(index, at)],
        });
    }
    spans
}

/// A failed remote read as the I/O error a segment read reports: a missing
/// object is a missing value ([`SegmentError::is_missing`]).
fn remote_error(err: &ObjectError) -> io::Error {
    match err {
        ObjectError::Missing(_) => io::Error::new(io::ErrorKind::NotFound, err.to_string()),
        other => io::Error::other(other.to_string()),
    }
}

/// The sealed segments of one store in object storage.
pub(in crate::can::store) struct RemoteSegments {
    pub(in crate::can::store) objects: Arc<Objects>,
    pub(in crate::can::store) store_id: u64,
    /// Reads run on the blocking pool; the request runs on the runtime.
    pub(in crate::can::store) runtime: tokio::runtime::Handle,
}

impl SegmentReader {
    pub(in crate::can::store) fn new(fs: Arc<dyn StoreFs>, dir: PathBuf) -> Self {
        Self {
            fs,
            dir,
            handles: Mutex::new(HashMap::new()),
            remote: None,
            moving: tokio::sync::Mutex::new(()),
        }
    }

    /// The same reader, falling back to `remote` for a segment not on disk.
    pub(in crate::can::store) fn with_remote(mut self, remote: RemoteSegments) -> Self {
        self.remote = Some(remote);
        self
    }

    /// The bytes at `location`. Blocking: call it off the reactor.
    pub(in crate::can::store) fn read(&self, location: Location) -> Result<Bytes, SegmentError> {
        if location.len == 0 {
            // An empty asset may point into a segment no byte has made yet.
            return Ok(Bytes::new());
        }
        let segment = location.segment;
        let file = match (self.handle(segment), &self.remote) {
            (Ok(file), _) => file,
            (Err(err), Some(remote)) if err.is_missing() => {
                return Self::read_remote(remote, location)
            }
            (Err(err), _) => return Err(err),
        };
        let mut data = vec![0u8; location.len as usize];
        file.read_exact_at(&mut data, location.offset)
            .map_err(SegmentError::at(segment))?;
        Ok(data.into())
    }

    /// The bytes at each of `locations`, in their order: what
    /// [`Self::read`] gives for each, with the values of segments in
    /// object storage read together. A pull of many small values would
    /// otherwise wait for one ranged `GET` after another (about 5 ms each
    /// against a server on loopback: PERFORMANCE.md, "Object storage"):
    /// here values close together in one segment share one `GET`
    /// ([`COALESCE_GAP`], up to [`COALESCE_SPAN`]), and up to
    /// [`REMOTE_READS`] `GET`s run at once. Blocking: call it off the
    /// reactor.
    pub(in crate::can::store) fn read_many(
        &self,
        locations: &[Location],
    ) -> Vec<Result<Bytes, SegmentError>> {
        let mut read: Vec<Option<Result<Bytes, SegmentError>>> =
            locations.iter().map(|_| None).collect();
        let mut remote_reads = Vec::new();
        for (index, &location) in locations.iter().enumerate() {
            if location.len == 0 {
                // As `read`: no file needed.
                read[index] = Some(Ok(Bytes::new()));
                continue;
            }
            match self.handle(location.segment) {
                Ok(file) => {
                    let mut data = vec![0u8; location.len as usize];
                    let done = file
                        .read_exact_at(&mut data, location.offset)
                        .map(|()| Bytes::from(data))
                        .map_err(SegmentError::at(location.segment));
                    read[index] = Some(done);
                }
                Err(err) if err.is_missing() && self.remote.is_some() => {
                    remote_reads.push((index, location));
                }
                Err(err) => read[index] = Some(Err(err)),
            }
        }
        if let (Some(remote), false) = (&self.remote, remote_reads.is_empty()) {
            for (index, done) in Self::read_remote_many(remote, remote_reads) {
                read[index] = Some(done);
            }
        }
        read.into_iter()
            .map(|done| done.expect("every location read"))
            .collect()
    }

    /// The values at `wanted` (their index in the caller's list, and where
    /// they are), all in segments in object storage: coalesced into spans,
    /// the spans read at most [`REMOTE_READS`] at once.
    fn read_remote_many(
        remote: &RemoteSegments,
        mut wanted: Vec<(usize, Location)>,
    ) -> Vec<(usize, Result<Bytes, SegmentError>)> {
        wanted.sort_unstable_by_key(|(_, at)| (at.segment, at.offset));
        let spans = coalesce(wanted);
        let reads = futures::stream::iter(spans)
            .map(|span| async move {
                let key = remote.objects.segment_key(remote.store_id, span.segment);
                let bytes = remote.objects.read_range(&key, span.range.clone()).await;
                (span, bytes)
            })
            .buffer_unordered(REMOTE_READS)
            .collect::<Vec<_>>();
        let mut done = Vec::new();
        for (span, bytes) in remote.runtime.block_on(reads) {
            // A value of a shared span is copied out, so that it does not
            // keep its neighbours' bytes in memory while it travels.
            let shared = span.values.len() > 1;
            for (index, at) in span.values {
                let value = match &bytes {
                    Ok(bytes) => {
                        let start = (at.offset - span.range.start) as usize;
                        match bytes.get(start..start + at.len as usize) {
                            Some(value) => Ok(bytes.slice_ref(value)),
                            None => Err(SegmentError::at(at.segment)(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "object shorter than recorded",
                            ))),
                        }
                    }
                    Err(err) => Err(SegmentError::at(at.segment)(remote_error(err))),
                };
                let value = value.map(|v| {
                    if shared {
                        Bytes::copy_from_slice(&v)
                    } else {
                        v
                    }
                });
                done.push((index, value));
            }
        }
        done
    }

    /// The bytes at `location` of a segment uploaded and gone from disk.
    fn read_remote(remote: &RemoteSegments, location: Location) -> Result<Bytes, SegmentError> {
        let key = remote
            .objects
            .segment_key(remote.store_id, location.segment);
        let range = location.offset..location.offset + u64::from(location.len);
        let read = remote
            .runtime
            .block_on(remote.objects.read_range(&key, range))
            .map_err(|err| match err {
                ObjectError::Missing(_) => io::Error::new(io::ErrorKind::NotFound, err),
                other => io::Error::other(other),
            })
            .map_err(SegmentError::at(location.segment))?;
        if read.len() != location.len as usize {
            let short =
                io::Error::new(io::ErrorKind::UnexpectedEof, "object shorter than recorded");
            return Err(SegmentError::at(location.segment)(short));
        }
        Ok(read)
    }

    /// Forgets the read handle of `segment`, whose file was removed once
    /// uploaded: its disk space is freed when the last read of it ends.
    pub(in crate::can::store) fn forget(&self, segment: u64) {
        self.handles
            .lock()
            .expect("segment handles lock")
            .remove(&segment);
    }

    fn handle(&self, segment: u64) -> Result<Arc<dyn StoreFile>, SegmentError> {
        let mut handles = self.handles.lock().expect("segment handles lock");
        if let Some(file) = handles.get(&segment) {
            return Ok(file.clone());
        }
        let file: Arc<dyn StoreFile> = self
            .fs
            .open(&segment_path(&self.dir, segment))
            .map_err(SegmentError::at(segment))?
            .into();
        if handles.len() >= OPEN_HANDLES {
            handles.clear();
        }
        handles.insert(segment, file.clone());
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values side by side in one segment share a read; a gap past the
    /// bound, another segment, or a span past its bound starts another.
    #[test]
    fn remote_reads_coalesce_values_close_together() {
        let at = |segment, offset, len| Location {
            segment,
            offset,
            len,
        };
        let spans = coalesce(vec![
            (3, at(1, 0, 100)),
            (0, at(1, 100, 100)),
            // Within the gap: read through.
            (1, at(1, 200 + COALESCE_GAP, 10)),
            // Past it.
            (2, at(1, 210 + 2 * COALESCE_GAP + 1, 10)),
            (4, at(2, 0, 10)),
            // A span may not grow past its bound.
            (5, at(2, 10, COALESCE_SPAN as u32)),
        ]);
        let shape: Vec<(u64, std::ops::Range<u64>, Vec<usize>)> = spans
            .iter()
            .map(|span| {
                let indexes = span.values.iter().map(|(index, _)| *index).collect();
                (span.segment, span.range.clone(), indexes)
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, 0..210 + COALESCE_GAP, vec![3, 0, 1]),
                (
                    1,
                    210 + 2 * COALESCE_GAP + 1..220 + 2 * COALESCE_GAP + 1,
                    vec![2]
                ),
                (2, 0..10, vec![4]),
                (2, 10..10 + COALESCE_SPAN, vec![5]),
            ]
        );
    }
}
