//! The full exchange in pages: what a v2 [`Session`] does when both `HELLO`s
//! carry [`FEATURE`] and the lists must be exchanged (no coded cells, or the
//! coded exchange fell back, as on first contact with an empty node).
//!
//! Each side lists its store twice, a page at a time, in hash order:
//! - **for the peer**: each page goes out as one `RECON` (`coded` unset,
//!   `packed_summaries` one page in the compact encoding, `done` on the last
//!   page, which may be empty); the next page is listed only once the
//!   previous one is in the driver's hands, so a peer that reads slowly holds
//!   back our listing instead of growing a queue;
//! - **for the merge**: a [`MergeJoin`] of our pages and the peer's decides
//!   each asset once both listings have passed it, and what it decides is fed
//!   to the engine as it is decided ([`Request::Plan`]).
//!
//! Listing twice is what keeps both bounded: the pages we send never wait for
//! the merge (which waits for the peer and the engine), and the merge never
//! holds pages for the peer's sake. The two listings may see a store that
//! changed in between; that costs at most an asset sent to a peer that
//! already has it, never one missed (the merge reads our store as it is).
//!
//! Invariants, each checked:
//! - a peer's page holds at most [`MAX_PAGE`] summaries, and its pages
//!   ascend strictly by hash across the whole listing (else a violation);
//! - we read the peer's next page only while fewer than a page of its
//!   summaries wait in the merge and fewer than a page of decisions wait for
//!   the engine: memory follows the page size, never the archive;
//! - the engine is fed one plan at a time, the next only once it took the
//!   last (`Answer::Planned`).
//!
//! The peer's last page moves the session to its transfer phase at once (what
//! follows on the control stream is its `SUMMARY`); our merge goes on until
//! our own listing ends, then the last plan ends the engine's streams.

use std::time::Instant;

use bytes::Bytes;
use prost::Message as _;
use tracing::info;

use super::negotiate::Negotiated;
use super::{Phase, Request, Session};
use crate::asset::{AssetHash, Summary};
use crate::can::{CanError, Page};
use crate::engine::send::SendPlan;
use crate::fault::Fault;
use crate::pb;
use crate::recon::compact;
use crate::recon::merge::{Decided, MergeJoin};
use crate::session::machine::Transmit;
use crate::wire::data_stream::frame;
use crate::wire::{FrameType, Violation};

/// The `HELLO` feature of a side that pages its full list.
pub const FEATURE: &str = "recon:paged-lists";

/// Most summaries a peer's page may hold.
pub const MAX_PAGE: usize = 65_536;

/// Largest `RECON` frame once both sides page: a page at its most (at most
/// [`MAX_PAGE`] × 70 bytes, 4.6 MB, before zstd) or any coded message (all
/// the cells kept, 10.7 MB at most), with room for the envelope. Without
/// paging a full list has no such bound ([`super::MAX_CONTROL_FRAME`]).
pub const MAX_PAGED_RECON_FRAME: u32 = 16 * 1024 * 1024;

const _: () = assert!(
    MAX_PAGE * crate::recon::compact::MAX_ENTRY_LEN < MAX_PAGED_RECON_FRAME as usize,
    "a page could exceed the paged RECON frame limit"
);
const _: () = assert!(
    crate::recon::coded::KEPT_CELLS * crate::recon::riblt::CELL_WIRE_MAX
        < MAX_PAGED_RECON_FRAME as usize,
    "a coded message could exceed the paged RECON frame limit"
);

/// Which of our two listings a page is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Pages sent to the peer.
    Peer,
    /// Pages merged with the peer's.
    Merge,
}

/// Where one of our listings stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// Nothing listed yet.
    Start,
    /// Listed up to this hash.
    After(AssetHash),
    /// Everything listed.
    Ended,
}

impl Cursor {
    fn after(page_next: Option<AssetHash>) -> Self {
        page_next.map_or(Self::Ended, Self::After)
    }

    fn hash(self) -> Option<AssetHash> {
        match self {
            Self::After(hash) => Some(hash),
            Self::Start | Self::Ended => None,
        }
    }
}

/// One listing of our store: its cursor and whether a page is being read.
#[derive(Debug)]
struct OurListing {
    cursor: Cursor,
    asked: bool,
}

impl OurListing {
    fn new() -> Self {
        Self {
            cursor: Cursor::Start,
            asked: false,
        }
    }

    /// The request for its next page, unless one is out or it ended.
    fn next(&mut self, listing: Listing, limit: usize) -> Option<Request> {
        if self.asked || self.cursor == Cursor::Ended {
            return None;
        }
        self.asked = true;
        Some(Request::Page {
            listing,
            after: self.cursor.hash(),
            limit,
        })
    }
}

/// Totals for the log line that ends the exchange.
#[derive(Debug, Default)]
struct Counts {
    ours: u64,
    theirs: u64,
    to_send: u64,
    meta_to_send: u64,
    to_receive: u64,
}

/// The paged exchange's state inside a [`Session`].
#[derive(Debug)]
pub(super) struct Paged {
    pub(super) page: usize,
    for_peer: OurListing,
    for_merge: OurListing,
    merge: MergeJoin,
    /// Decisions not yet handed to the engine.
    decided: Decided,
    /// A plan is with the engine, not yet taken.
    feeding: bool,
    /// The last plan is out: the exchange is over.
    fed_last: bool,
    counts: Counts,
}

impl Paged {
    fn new(page: usize) -> Self {
        Self {
            page: page.clamp(1, MAX_PAGE),
            for_peer: OurListing::new(),
            for_merge: OurListing::new(),
            merge: MergeJoin::new(),
            decided: Decided::default(),
            feeding: false,
            fed_last: false,
            counts: Counts::default(),
        }
    }

    /// Whether we read the peer's next page now (see the invariants).
    pub(super) fn wants_theirs(&self) -> bool {
        !self.merge.theirs_ended()
            && self.merge.theirs_buffered() < self.page
            && self.decided.len() < self.page
    }
}

impl Session {
    /// Starts the paged exchange: the engine (fed as the merge decides) and
    /// both listings.
    pub(super) fn start_paged(&mut self, now: Instant, limits: Negotiated) {
        let mut paged = Paged::new(self.config.list_page);
        let page = paged.page;
        self.requests
            .extend(paged.for_peer.next(Listing::Peer, page));
        self.requests
            .extend(paged.for_merge.next(Listing::Merge, page));
        self.paged = Some(paged);
        self.start_engine(limits);
        self.deadline = Some(now + self.config.idle_timeout);
    }

    /// Lists the next page for the peer, if the exchange runs and wants one.
    pub(super) fn list_for_peer(&mut self) {
        if let Some(paged) = self.paged.as_mut() {
            let page = paged.page;
            self.requests
                .extend(paged.for_peer.next(Listing::Peer, page));
        }
    }

    /// A page of our store, for the peer or for the merge.
    pub(super) fn handle_our_page(
        &mut self,
        now: Instant,
        listing: Listing,
        page: Result<Page<Summary, AssetHash>, CanError>,
    ) {
        let Some(paged) = self.paged.as_mut() else {
            return;
        };
        let page = match page {
            Ok(page) => page,
            Err(err) => return self.fail(Fault::Store(err)),
        };
        let last = page.next.is_none();
        let summaries: Vec<Summary> = page
            .items
            .into_iter()
            .map(|s| s.truncated(compact::DIGEST_PREFIX))
            .collect();
        match listing {
            Listing::Peer => {
                paged.for_peer = OurListing {
                    cursor: Cursor::after(page.next),
                    asked: false,
                };
                paged.counts.ours += summaries.len() as u64;
                self.advertised += summaries.len() as u64;
                let round = pb::Recon {
                    packed_summaries: Bytes::from(compact::encode(
                        &summaries,
                        self.config.zstd_level,
                    )),
                    done: last,
                    ..Default::default()
                };
                self.transmit.push_back(Transmit::Frame(frame(
                    FrameType::Recon,
                    &round.encode_to_vec(),
                )));
            }
            Listing::Merge => {
                paged.for_merge = OurListing {
                    cursor: Cursor::after(page.next),
                    asked: false,
                };
                if let Err(err) = paged.merge.push_ours(summaries, last) {
                    let err = CanError::Storage(format!("the store's listing is unordered: {err}"));
                    return self.fail(Fault::Store(err));
                }
            }
        }
        self.made_progress(now);
        self.pump_paged();
    }

    /// A non-coded `RECON` from a peer that pages: its next page.
    pub(super) fn handle_peer_page(
        &mut self,
        now: Instant,
        round: pb::Recon,
    ) -> Result<(), Violation> {
        let Some(paged) = self.paged.as_mut() else {
            return Ok(());
        };
        if paged.merge.theirs_ended() {
            return Err(self.unexpected("SUMMARY", FrameType::Recon));
        }
        let page = compact::decode(&round.packed_summaries, MAX_PAGE as u64)?;
        paged.counts.theirs += page.len() as u64;
        paged
            .merge
            .push_theirs(page, round.done)
            .map_err(|err| Violation::Recon(err.to_string()))?;
        if round.done {
            self.enter_transfer();
        } else {
            self.deadline = Some(now + self.config.idle_timeout);
        }
        self.pump_paged();
        Ok(())
    }

    /// The engine took the last plan.
    pub(super) fn handle_planned(&mut self, now: Instant) {
        if let Some(paged) = self.paged.as_mut() {
            paged.feeding = false;
            self.made_progress(now);
            self.pump_paged();
        }
    }

    /// While we wait for the peer's pages, our own progress restarts its
    /// clock: we may have paused reading it (the merge, the engine or what
    /// we pull was full), and the pause is not its silence.
    pub(super) fn made_progress(&mut self, now: Instant) {
        if self.phase == Phase::Reconciling {
            self.deadline = Some(now + self.config.idle_timeout);
        }
    }

    /// Decides what the merge can, feeds the engine, lists our next merge
    /// page when there is room, hands what we lack to pulling: every step
    /// the exchange can take now.
    fn pump_paged(&mut self) {
        let Some(paged) = self.paged.as_mut() else {
            return;
        };
        paged.merge.drain(&mut paged.decided);
        let lacking = std::mem::take(&mut paged.decided.assets_to_receive);
        paged.counts.to_receive += lacking.len() as u64;
        let mut plan = None;
        if !paged.feeding && !paged.fed_last {
            let done = paged.merge.is_done();
            if done || !paged.decided.is_empty() {
                let decided = std::mem::take(&mut paged.decided);
                let counts = &mut paged.counts;
                counts.to_send += decided.assets_to_send.len() as u64;
                counts.meta_to_send += decided.meta_to_send.len() as u64;
                paged.feeding = true;
                paged.fed_last = done;
                plan = Some((
                    SendPlan {
                        assets: decided.assets_to_send,
                        meta: decided.meta_to_send,
                        ..SendPlan::default()
                    },
                    done,
                ));
                if done {
                    info!(
                        ours = counts.ours,
                        theirs = counts.theirs,
                        to_send = counts.to_send,
                        meta_to_send = counts.meta_to_send,
                        to_receive = counts.to_receive,
                        "v2 reconciled with paged lists"
                    );
                }
            }
        }
        self.lack(lacking);
        if let Some((plan, last)) = plan {
            self.hand_plan(plan, last);
            if last {
                self.lacked_all();
            }
        }
        let Some(paged) = self.paged.as_mut() else {
            return;
        };
        let room = paged.merge.ours_buffered() < paged.page && paged.decided.len() < paged.page;
        if room {
            let page = paged.page;
            self.requests
                .extend(paged.for_merge.next(Listing::Merge, page));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::asset::MetaVersion;
    use crate::engine::EngineConfig;
    use crate::session::machine::Machine;
    use crate::session::v2::{hello, Answer};
    use crate::session::Role;
    use crate::wire::Frame;

    fn config(page: usize) -> EngineConfig {
        // Pushed: these tests follow the plans the merge feeds the engine.
        EngineConfig {
            coded_recon: false,
            pull: false,
            list_page: page,
            idle_timeout: Duration::from_secs(10),
            ..EngineConfig::default()
        }
    }

    /// `n` summaries in hash order.
    fn summaries(n: u8) -> Vec<Summary> {
        let mut list: Vec<Summary> = (0..n)
            .map(|i| Summary {
                hash: AssetHash::of(&[i]),
                created_at_ms: 1,
                size: 10,
                version: MetaVersion {
                    updated_at_ms: 1,
                    digest: [0; 32],
                },
            })
            .collect();
        list.sort_by_key(|s| s.hash);
        list
    }

    fn peer_page(page: &[Summary], done: bool) -> Frame {
        let round = pb::Recon {
            packed_summaries: Bytes::from(compact::encode(page, 3)),
            done,
            ..Default::default()
        };
        Frame::new(FrameType::Recon, Bytes::from(round.encode_to_vec()))
    }

    fn requests(session: &mut Session) -> Vec<Request> {
        std::iter::from_fn(|| session.poll_request()).collect()
    }

    fn page_of(list: &[Summary], next: bool) -> Result<Page<Summary, AssetHash>, CanError> {
        Ok(Page {
            items: list.to_vec(),
            next: next.then(|| list.last().expect("a page").hash),
        })
    }

    /// A session past `HELLO` with a peer that pages, and its first requests.
    fn started(page: usize) -> (Session, Instant, Vec<Request>) {
        let now = Instant::now();
        let mut session = Session::new(Role::Initiator, config(page), false, now);
        let theirs = hello(&config(page), false);
        session.handle_frame(
            now,
            Frame::new(FrameType::Hello, Bytes::from(theirs.encode_to_vec())),
        );
        let first = requests(&mut session);
        (session, now, first)
    }

    #[test]
    fn both_listings_start_with_the_engine_and_pages_go_out_one_at_a_time() {
        let (mut session, now, first) = started(2);
        assert!(matches!(
            first.as_slice(),
            [
                Request::Page {
                    listing: Listing::Peer,
                    after: None,
                    limit: 2
                },
                Request::Page {
                    listing: Listing::Merge,
                    after: None,
                    limit: 2
                },
                Request::Send { .. },
                Request::Receive { .. },
            ]
        ));
        let ours = summaries(3);
        while session.poll_transmit().is_some() {} // our HELLO
        session.handle_answer(
            now,
            Answer::Page {
                listing: Listing::Peer,
                page: page_of(&ours[..2], true),
            },
        );
        assert!(requests(&mut session).is_empty(), "the page is not yet out");
        assert!(session.poll_transmit().is_some(), "the page goes out");
        assert!(matches!(
            requests(&mut session).as_slice(),
            [Request::Page { listing: Listing::Peer, after: Some(after), .. }] if *after == ours[1].hash
        ));
    }

    #[test]
    fn the_peer_is_not_read_while_the_engine_has_not_taken_a_page_of_plans() {
        let (mut session, now, _) = started(2);
        let all = summaries(9);
        let (ours, theirs) = all.split_at(8);
        // The peer lists one hash above all of ours: each of ours is ours alone.
        session.handle_frame(now, peer_page(theirs, false));
        session.handle_answer(
            now,
            Answer::Page {
                listing: Listing::Merge,
                page: page_of(&ours[..2], true),
            },
        );
        let fed = requests(&mut session);
        assert!(
            matches!(&fed[..], [Request::Plan { plan, last: false }, Request::Page { listing: Listing::Merge, .. }] if plan.assets.len() == 2),
            "{fed:?}"
        );
        assert!(session.wants_frames());
        // The engine has not taken that plan: two more decisions fill a page.
        session.handle_answer(
            now,
            Answer::Page {
                listing: Listing::Merge,
                page: page_of(&ours[2..4], true),
            },
        );
        assert!(
            requests(&mut session).is_empty(),
            "no plan and no listing while a page of decisions waits"
        );
        assert!(!session.wants_frames(), "nor the peer's next page");
        assert!(
            session.poll_timeout().is_none(),
            "and the pause is not the peer's silence"
        );
        session.handle_answer(now, Answer::Planned);
        assert!(matches!(
            requests(&mut session).as_slice(),
            [Request::Plan { plan, last: false }, Request::Page { listing: Listing::Merge, .. }] if plan.assets.len() == 2
        ));
        assert!(session.wants_frames());
    }

    #[test]
    fn the_last_plan_follows_the_end_of_both_listings() {
        let (mut session, now, _) = started(4);
        let ours = summaries(3);
        session.handle_frame(now, peer_page(&ours[1..], true));
        assert_eq!(
            session.phase,
            Phase::Transferring,
            "what follows is the peer's SUMMARY"
        );
        session.handle_answer(
            now,
            Answer::Page {
                listing: Listing::Merge,
                page: page_of(&ours, false),
            },
        );
        let fed = requests(&mut session);
        assert!(
            matches!(&fed[..], [Request::Plan { plan, last: true }] if plan.assets == vec![(ours[0].hash, 10)]),
            "{fed:?}"
        );
    }
}
