//! What the outbound half of live sync remembers between the store's changes
//! and the offers that carry them, bounded by
//! [`LiveConfig::backlog`](super::LiveConfig::backlog): no IO, no clock, so
//! the bound and the "nothing skipped" rule are tested without sockets.
//!
//! Three kinds of hashes count against the cap: those waiting to be offered
//! (arrival order, each once), those in offers on the wire, and the retry set
//! (what an offer did not deliver, offered again at the next check). A page
//! being read counts too, for as many as it may bring. Whatever cannot be
//! remembered is never dropped, but left where it can be read again:
//!
//! - **Change events** past the cap are not taken: the link stops reading
//!   the event stream (`Taken::Full`) and remembers the sequence number
//!   where it stopped. As room comes back it reads the store's change log
//!   from there, a page of at most the room left at a time, and when a page
//!   comes back empty it subscribes again after the last change it read.
//! - **The periodic check** lists what changed since the previous check a
//!   page at a time, as room allows, its cursor kept across ticks; the check
//!   after it starts where it started, only once it has reached the end.
//! - **Retries** fill at most half the cap, so they can never crowd out new
//!   changes; past that they are forgotten for the check to find again: each
//!   remembered hash carries a floor (a change time no later than the change
//!   it stands for), and the next check looks back to the lowest floor
//!   forgotten.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::asset::{AssetHash, Summary};
use crate::can::{ChangePage, Page, SinceCursor, LIST_PAGE};

/// How far back the periodic check looks beyond its previous run, so a change
/// stamped slightly out of order (another clock, a slow commit) is not missed.
pub(super) const CHECK_OVERLAP_MS: i64 = 2_000;

/// A change time (the store's clock, Unix ms) at or before the change a
/// remembered hash stands for: a check that looks back to it lists the hash
/// again.
type Floor = i64;

/// The bounded memory of one link's outbound half; see the module docs.
#[derive(Debug)]
pub(super) struct Backlog {
    cap: usize,
    /// Waiting to be offered, oldest first.
    order: VecDeque<(AssetHash, Floor)>,
    members: HashSet<AssetHash>,
    /// Hashes in offers on the wire.
    in_flight: usize,
    /// What offers did not deliver: offered again at the next check.
    retry: HashMap<AssetHash, Floor>,
    /// Room promised to the page being read.
    reserved: usize,
    /// Set while change events are not taken: the log is read instead.
    behind: Option<Behind>,
    check: Check,
}

/// Where reading the change log in place of the event stream stands.
#[derive(Debug, Clone, Copy)]
struct Behind {
    /// The last sequence number read; the next page starts after it.
    after: u64,
    /// Change time of the first change not taken from the stream: every
    /// change read from here on is no older.
    floor: Floor,
    /// The store the sequence numbers belong to, once a page said.
    store_id: Option<u64>,
}

/// The periodic check's window and its scan in progress.
#[derive(Debug)]
struct Check {
    /// When the last complete scan started: the next one looks back to here.
    last: i64,
    /// The lowest floor of the retries forgotten since: the next scan looks
    /// back to it too.
    spilled: Option<Floor>,
    scan: Option<Scan>,
}

/// A check listing changes since `since`, page by page.
#[derive(Debug, Clone, Copy)]
struct Scan {
    since: i64,
    started: i64,
    after: Option<SinceCursor>,
}

/// What [`Backlog::event`] did with a change event.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Taken {
    /// Queued for offering (`false`: it was already waiting).
    Queued(bool),
    /// No room: the event was not taken, and from it on the change log is
    /// read instead of the stream. The caller drops the stream.
    Full,
}

/// A read of the store the backlog has room for; its answer goes back to
/// [`Backlog::log_page`] or [`Backlog::check_page`], or
/// [`Backlog::read_failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// `Can::changes(after, limit)`.
    Log {
        /// Sequence number to read after.
        after: u64,
        /// Most changes.
        limit: usize,
    },
    /// `Can::list_since(since, after, limit)`.
    Check {
        /// Change time the check looks back to.
        since: i64,
        /// Where the scan stopped.
        after: Option<SinceCursor>,
        /// Most summaries.
        limit: usize,
    },
}

impl Read {
    fn limit(&self) -> usize {
        match self {
            Self::Log { limit, .. } | Self::Check { limit, .. } => *limit,
        }
    }
}

/// What a page of the change log did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LogRead {
    /// This many hashes newly queued; more of the log may follow.
    Queued(usize),
    /// The log holds nothing after this sequence number: follow the event
    /// stream again from there.
    CaughtUp(u64),
}

/// Hashes taken for one offer, with the lowest floor among them.
#[derive(Debug)]
pub(super) struct Batch {
    /// The hashes, oldest first.
    pub(super) hashes: Vec<AssetHash>,
    floor: Floor,
}

impl Backlog {
    /// An empty backlog of at most `cap` hashes whose first check looks back
    /// to `since_ms`.
    pub(super) fn new(cap: usize, since_ms: i64) -> Self {
        Self {
            cap: cap.max(1),
            order: VecDeque::new(),
            members: HashSet::new(),
            in_flight: 0,
            retry: HashMap::new(),
            reserved: 0,
            behind: None,
            check: Check {
                last: since_ms,
                spilled: None,
                scan: None,
            },
        }
    }

    /// Hashes held: waiting, on the wire, to retry, and promised to a read.
    /// Never more than the cap.
    pub(super) fn remembered(&self) -> usize {
        self.order.len() + self.in_flight + self.retry.len() + self.reserved
    }

    fn room(&self) -> usize {
        self.cap.saturating_sub(self.remembered())
    }

    /// Changes known and not yet offered (what the status shows).
    pub(super) fn waiting(&self) -> usize {
        self.order.len() + self.retry.len()
    }

    /// Hashes ready for the next offer.
    pub(super) fn queued(&self) -> usize {
        self.order.len()
    }

    /// True while the change log is read in place of the event stream.
    #[cfg(test)]
    pub(super) fn is_behind(&self) -> bool {
        self.behind.is_some()
    }

    /// Change event `seq` (at `ts`) of `hash`, not one the peer caused.
    pub(super) fn event(&mut self, hash: AssetHash, seq: u64, ts: i64) -> Taken {
        debug_assert!(self.behind.is_none(), "no events are read while behind");
        if self.room() == 0 {
            self.behind = Some(Behind {
                after: seq.saturating_sub(1),
                floor: ts,
                store_id: None,
            });
            return Taken::Full;
        }
        Taken::Queued(self.insert(hash, ts))
    }

    fn insert(&mut self, hash: AssetHash, floor: Floor) -> bool {
        let fresh = self.members.insert(hash);
        if fresh {
            self.order.push_back((hash, floor));
        }
        fresh
    }

    /// The next read there is room for: the change log while behind, else
    /// the check's next page. Reserves room for all it may bring. Reads wait
    /// for a quarter of the cap to be free, so pages stay large; a check's
    /// page takes at most half the room, as events still come in.
    pub(super) fn read(&mut self) -> Option<Read> {
        let room = self.room();
        if room < (self.cap / 4).max(1) {
            return None;
        }
        let read = match (self.behind, self.check.scan) {
            (Some(behind), _) => Read::Log {
                after: behind.after,
                limit: room.min(LIST_PAGE),
            },
            // Events still come in meanwhile: half the room stays theirs.
            (None, Some(scan)) => Read::Check {
                since: scan.since,
                after: scan.after,
                limit: (room / 2).clamp(1, LIST_PAGE),
            },
            (None, None) => return None,
        };
        self.reserved += read.limit();
        Some(read)
    }

    /// The answer to a [`Read::Log`]: queues what the page holds, but the
    /// changes `caused` says the peer made.
    pub(super) fn log_page(
        &mut self,
        read: Read,
        page: ChangePage,
        mut caused: impl FnMut(u64) -> bool,
    ) -> LogRead {
        self.reserved -= read.limit();
        let Some(behind) = self.behind.as_mut() else {
            return LogRead::Queued(0);
        };
        if behind.store_id.is_some_and(|id| id != page.store_id) {
            // Another store behind the same address: its numbers mean
            // nothing here, so its whole log is read.
            *behind = Behind {
                after: 0,
                floor: Floor::MIN,
                store_id: Some(page.store_id),
            };
            return LogRead::Queued(0);
        }
        behind.store_id = Some(page.store_id);
        if page.changes.is_empty() {
            let after = behind.after;
            self.behind = None;
            return LogRead::CaughtUp(after);
        }
        behind.after = page.next_after.max(behind.after);
        let floor = behind.floor;
        let mut queued = 0;
        for change in page.changes.iter().take(read.limit()) {
            if !caused(change.seq) && self.insert(change.summary.hash, floor) {
                queued += 1;
            }
        }
        LogRead::Queued(queued)
    }

    /// The answer to a [`Read::Check`]: queues what the page lists; the scan
    /// goes on from its cursor, or is complete.
    pub(super) fn check_page(&mut self, read: Read, page: Page<Summary, SinceCursor>) -> usize {
        self.reserved -= read.limit();
        let Some(scan) = self.check.scan.as_mut() else {
            return 0;
        };
        let floor = scan.since;
        match page.next {
            Some(next) => scan.after = Some(next),
            None => {
                self.check.last = scan.started;
                self.check.scan = None;
            }
        }
        page.items
            .iter()
            .take(read.limit())
            .filter(|summary| self.insert(summary.hash, floor))
            .count()
    }

    /// A read failed: its room is free again. A log read is tried again
    /// from the same place; a check scan is dropped, and the next tick
    /// starts it again from the same window.
    pub(super) fn read_failed(&mut self, read: Read) {
        self.reserved -= read.limit();
        if let Read::Check { .. } = read {
            self.check.scan = None;
        }
    }

    /// The periodic check at `now_ms`: the retries wait again to be offered,
    /// and unless a scan is still paging, a new one lists what changed since
    /// the last one started, or since the oldest retry forgotten.
    pub(super) fn tick(&mut self, now_ms: i64) {
        for (hash, floor) in std::mem::take(&mut self.retry) {
            self.insert(hash, floor);
        }
        if self.check.scan.is_none() {
            let since = self
                .check
                .spilled
                .take()
                .map_or(self.check.last, |spilled| spilled.min(self.check.last));
            self.check.scan = Some(Scan {
                since: since.saturating_sub(CHECK_OVERLAP_MS),
                started: now_ms,
                after: None,
            });
        }
    }

    /// Up to `max` of the oldest waiting hashes, now on the wire.
    pub(super) fn take_batch(&mut self, max: usize) -> Option<Batch> {
        let count = self.order.len().min(max.max(1));
        if count == 0 {
            return None;
        }
        let mut floor = Floor::MAX;
        let hashes = self
            .order
            .drain(..count)
            .map(|(hash, at)| {
                self.members.remove(&hash);
                floor = floor.min(at);
                hash
            })
            .collect();
        self.in_flight += count;
        Some(Batch { hashes, floor })
    }

    /// An offer of `batch` ended; `undelivered` (all of the batch when the
    /// offer failed) is retried, within half the cap, or else left to the
    /// next check.
    pub(super) fn offer_done(&mut self, batch: &Batch, undelivered: Vec<AssetHash>) {
        self.in_flight -= batch.hashes.len();
        let retry_cap = self.cap / 2;
        for hash in undelivered {
            if self.retry.len() < retry_cap || self.retry.contains_key(&hash) {
                let floor = self.retry.entry(hash).or_insert(batch.floor);
                *floor = (*floor).min(batch.floor);
            } else {
                self.spill(batch.floor);
            }
        }
    }

    fn spill(&mut self, floor: Floor) {
        self.check.spilled = Some(self.check.spilled.map_or(floor, |s| s.min(floor)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asset::MetaVersion;
    use crate::can::{Change, ChangeKind};

    fn hash(i: u64) -> AssetHash {
        AssetHash::of(&i.to_le_bytes())
    }

    fn summary(i: u64) -> Summary {
        Summary {
            hash: hash(i),
            size: 1,
            created_at_ms: 0,
            version: MetaVersion {
                updated_at_ms: 0,
                digest: [0; 32],
            },
        }
    }

    /// A change log of one store: change `seq` is of asset `seq` at time
    /// `seq`, and `Can::changes` reads it.
    struct Log {
        head: u64,
    }

    impl Log {
        fn changes(&self, after: u64, limit: usize) -> ChangePage {
            let changes: Vec<Change> = (after + 1..=self.head)
                .take(limit)
                .map(|seq| Change {
                    seq,
                    kind: ChangeKind::Asset,
                    summary: summary(seq),
                })
                .collect();
            ChangePage {
                next_after: changes.last().map_or(after, |c| c.seq),
                changes,
                store_id: 7,
            }
        }
    }

    #[test]
    fn the_backlog_gives_the_oldest_first_and_holds_each_hash_once() {
        let mut backlog = Backlog::new(100, 0);
        for i in 0..10 {
            assert_eq!(backlog.event(hash(i), i + 1, 0), Taken::Queued(true));
        }
        assert_eq!(backlog.event(hash(0), 11, 0), Taken::Queued(false));
        let batch = backlog.take_batch(4).expect("four waiting");
        assert_eq!(batch.hashes, (0..4).map(hash).collect::<Vec<_>>());
        assert_eq!(backlog.queued(), 6);
        assert_eq!(backlog.remembered(), 10, "the batch on the wire counts");
        assert_eq!(backlog.event(hash(0), 12, 0), Taken::Queued(true));
        assert_eq!(backlog.queued(), 7, "a taken hash can wait again");
    }

    /// A burst 40 times the cap, offered by a peer that takes a batch at a
    /// time: the backlog never holds more than its cap, the events past it
    /// are read back from the log, and every asset is offered.
    #[test]
    fn a_burst_far_past_the_cap_is_offered_whole_within_the_cap() {
        let (cap, burst) = (500, 20_000u64);
        let log = Log { head: burst };
        let mut backlog = Backlog::new(cap, 0);
        let mut offered = HashSet::new();
        let mut next_event = 1u64;
        let mut most = 0;
        let mut caught_up = 0;
        for _ in 0..10_000 {
            if offered.len() == burst as usize {
                break;
            }
            // The stream, while it is followed.
            while !backlog.is_behind() && next_event <= log.head {
                match backlog.event(hash(next_event), next_event, next_event as i64) {
                    Taken::Queued(_) => next_event += 1,
                    Taken::Full => break,
                }
                most = most.max(backlog.remembered());
            }
            // The log, when there is room.
            while let Some(read) = backlog.read() {
                let Read::Log { after, limit } = read else {
                    panic!("no check was started");
                };
                most = most.max(backlog.remembered());
                if let LogRead::CaughtUp(after) =
                    backlog.log_page(read, log.changes(after, limit), |_| false)
                {
                    // Subscribed again after `after`.
                    next_event = after + 1;
                    caught_up += 1;
                }
            }
            // Two offers in flight, then both delivered.
            let batches: Vec<Batch> = (0..2).filter_map(|_| backlog.take_batch(128)).collect();
            most = most.max(backlog.remembered());
            for batch in batches {
                offered.extend(batch.hashes.iter().copied());
                backlog.offer_done(&batch, Vec::new());
            }
        }
        assert!(most <= cap, "held {most} of a cap of {cap}");
        assert!(caught_up >= 1, "the burst went past the cap");
        assert_eq!(offered, (1..=burst).map(hash).collect::<HashSet<_>>());
        assert_eq!(backlog.remembered(), 0);
    }

    #[test]
    fn the_log_is_read_after_the_first_event_not_taken_and_skips_the_peers_changes() {
        let mut backlog = Backlog::new(8, 0);
        for seq in 1..=8 {
            assert_eq!(backlog.event(hash(seq), seq, 100), Taken::Queued(true));
        }
        assert_eq!(backlog.event(hash(9), 9, 100), Taken::Full);
        assert!(backlog.is_behind());
        assert_eq!(backlog.read(), None, "no room yet");
        let batch = backlog.take_batch(8).expect("eight waiting");
        backlog.offer_done(&batch, Vec::new());
        let read = backlog.read().expect("room again");
        assert_eq!(read, Read::Log { after: 8, limit: 8 });
        let log = Log { head: 12 };
        let queued = backlog.log_page(read, log.changes(8, 8), |seq| seq == 10);
        assert_eq!(queued, LogRead::Queued(3), "9, 11, 12: the peer made 10");
        let read = backlog.read().expect("room left");
        assert_eq!(
            read,
            Read::Log {
                after: 12,
                limit: 5
            }
        );
        assert_eq!(
            backlog.log_page(read, log.changes(12, 5), |_| false),
            LogRead::CaughtUp(12)
        );
        assert!(!backlog.is_behind());
    }

    #[test]
    fn retries_fill_half_the_cap_and_the_rest_is_left_to_the_check_from_its_floor() {
        let mut backlog = Backlog::new(10, 50_000);
        for seq in 1..=10 {
            backlog.event(hash(seq), seq, 60_000 + seq as i64);
        }
        let batch = backlog.take_batch(10).expect("ten waiting");
        // The peer declines all ten (another peer delivers them).
        backlog.offer_done(&batch, batch.hashes.clone());
        assert_eq!(backlog.remembered(), 5, "half the cap retried");
        assert!(backlog.room() >= 5, "new changes still have room");
        backlog.tick(70_000);
        assert_eq!(backlog.queued(), 5, "the retries wait again");
        // The check looks back to the oldest forgotten retry, not only to
        // the previous check.
        let read = backlog.read().expect("room for the check");
        let Read::Check { since, after, .. } = read else {
            panic!("a check, got {read:?}");
        };
        assert_eq!((since, after), (50_000 - CHECK_OVERLAP_MS, None));
    }

    #[test]
    fn a_check_pages_across_ticks_and_the_next_starts_where_it_started() {
        let mut backlog = Backlog::new(16, 1_000);
        assert_eq!(backlog.read(), None, "no check before the first tick");
        backlog.tick(10_000);
        let read = backlog.read().expect("room");
        // Half the room: events keep the other half.
        let expected = Read::Check {
            since: 1_000 - CHECK_OVERLAP_MS,
            after: None,
            limit: 8,
        };
        assert_eq!(read, expected);
        assert_eq!(backlog.remembered(), 8, "the page's room is reserved");
        let cursor = SinceCursor {
            changed_at: 5_000,
            hash: hash(8),
        };
        let page = Page {
            items: (1..=8).map(summary).collect(),
            next: Some(cursor),
        };
        assert_eq!(backlog.check_page(read, page), 8);
        // A tick meanwhile does not restart the scan: it goes on from its
        // cursor, in the room left.
        backlog.tick(20_000);
        let read = backlog.read().expect("room left");
        let expected = Read::Check {
            since: 1_000 - CHECK_OVERLAP_MS,
            after: Some(cursor),
            limit: 4,
        };
        assert_eq!(read, expected);
        let last = Page {
            items: vec![summary(9)],
            next: None,
        };
        assert_eq!(backlog.check_page(read, last), 1);
        assert_eq!(backlog.read(), None, "the scan is complete");
        let batch = backlog.take_batch(16).expect("nine waiting");
        assert_eq!(batch.hashes.len(), 9);
        backlog.offer_done(&batch, Vec::new());
        // The next scan looks back to where the complete one started.
        backlog.tick(30_000);
        let Some(Read::Check { since, after, .. }) = backlog.read() else {
            panic!("a new check");
        };
        assert_eq!((since, after), (10_000 - CHECK_OVERLAP_MS, None));
    }
}
