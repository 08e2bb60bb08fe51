//! The pack segments, written and read back: seals, reads of many values
//! at once, and cut-backs after a crash or a failed group.

use std::sync::Arc;

use super::*;
use crate::can::store::fs::RealFs;

fn writer(dir: &Path, committed: Committed, max: u64) -> SegmentWriter {
    SegmentWriter::open(Arc::new(RealFs), dir.to_path_buf(), committed, max).unwrap()
}

/// Values read back from where they were appended, across a seal; the
/// ends returned are those of every segment written, and a sealed
/// segment is never written again.
#[test]
fn values_read_back_and_segments_seal_at_their_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut segments = writer(dir.path(), Committed::EMPTY, 10);
    let a = segments.append(b"abcdef").unwrap();
    let b = segments.append(b"ghijk").unwrap();
    assert_eq!((a.segment, a.offset, b.segment, b.offset), (1, 0, 2, 0));
    assert_eq!(segments.sync().unwrap(), vec![(1, 6), (2, 5)]);
    segments.committed();
    let reader = SegmentReader::new(Arc::new(RealFs), dir.path().to_path_buf());
    assert_eq!(reader.read(a).unwrap(), &b"abcdef"[..]);
    assert_eq!(reader.read(b).unwrap(), &b"ghijk"[..]);
    let empty = SegmentWriter::open(
        Arc::new(RealFs),
        dir.path().join("none"),
        Committed::EMPTY,
        10,
    )
    .unwrap()
    .append(b"")
    .unwrap();
    assert_eq!(reader.read(empty).unwrap(), &b""[..], "no file needed");
    let c = segments.append(b"lm").unwrap();
    assert_eq!((c.segment, c.offset), (2, 5));
    assert_eq!(segments.sync().unwrap(), vec![(2, 7)]);
    assert_eq!(
        std::fs::read(dir.path().join(format!("{:016x}", 1))).unwrap(),
        b"abcdef"
    );
}

/// Many values read at once come back as one by one, in the order
/// asked, an empty one without a file, a missing segment as missing.
#[test]
fn values_read_together_come_back_in_the_order_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut segments = writer(dir.path(), Committed::EMPTY, 10);
    let a = segments.append(b"abcdef").unwrap();
    let b = segments.append(b"ghijk").unwrap();
    let empty = segments.append(b"").unwrap();
    segments.sync().unwrap();
    segments.committed();
    let gone = Location {
        segment: 9,
        offset: 0,
        len: 3,
    };
    let reader = SegmentReader::new(Arc::new(RealFs), dir.path().to_path_buf());
    let read = reader.read_many(&[b, empty, gone, a]);
    assert_eq!(read[0].as_ref().unwrap(), &b"ghijk"[..]);
    assert_eq!(read[1].as_ref().unwrap(), &b""[..]);
    assert!(read[2].as_ref().unwrap_err().is_missing());
    assert_eq!(read[3].as_ref().unwrap(), &b"abcdef"[..]);
}

/// What no commit recorded is cut back: after a failed group, and at
/// open (the open segment cut to its end, a newer file removed).
#[test]
fn what_no_commit_recorded_is_cut_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = |segment: u64| dir.path().join(format!("{segment:016x}"));
    let mut segments = writer(dir.path(), Committed::EMPTY, 8);
    segments.append(b"kept").unwrap();
    segments.sync().unwrap();
    segments.committed();
    segments.append(b"lost").unwrap();
    segments.append(b"lost too").unwrap();
    segments.sync().unwrap();
    assert!(path(2).exists());
    segments.failed();
    let again = segments.append(b"next").unwrap();
    assert_eq!((again.segment, again.offset), (1, 4));
    assert!(!path(2).exists(), "the failed group's new segment is gone");
    assert_eq!(segments.sync().unwrap(), vec![(1, 8)]);
    drop(segments);

    std::fs::write(path(2), b"uncommitted").unwrap();
    let mut segments = writer(dir.path(), Committed { segment: 1, end: 4 }, 8);
    assert!(!path(2).exists());
    assert_eq!(std::fs::read(path(1)).unwrap(), b"kept");
    let next = segments.append(b"more").unwrap();
    assert_eq!((next.segment, next.offset), (1, 4));
}

/// An open segment shorter than its recorded end is left for fsck, and
/// values go to a new one.
#[test]
fn a_short_open_segment_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{:016x}", 3));
    std::fs::write(&path, b"ab").unwrap();
    let mut segments = writer(dir.path(), Committed { segment: 3, end: 9 }, 100);
    let next = segments.append(b"x").unwrap();
    assert_eq!((next.segment, next.offset), (4, 0));
    assert_eq!(std::fs::read(&path).unwrap(), b"ab");
    let reader = SegmentReader::new(Arc::new(RealFs), dir.path().to_path_buf());
    let lost = reader.read(Location {
        segment: 3,
        offset: 0,
        len: 9,
    });
    assert!(lost.unwrap_err().is_missing());
}
