//! Pulled transfers: what a v2 [`Session`] does when both `HELLO`s carry
//! [`FEATURE`]. Assets then move only when their receiver asks for them, so
//! a node that several peers could serve at once (a store reset under live
//! links, writes that cross the first sessions of a mesh) takes each asset
//! from one of them.
//!
//! **What each side lacks.** Whatever the exchange, each side learns which
//! assets it lacks: the paged merge and the whole-list diff name them on
//! both sides; in the coded exchange the initiator decodes them and tells
//! the responder its share in its last coded message (`lacks`, whole
//! hashes, with their sizes in `lack_sizes`; it sends no hash prefixes
//! then). Metadata updates still go unasked, as the exchange decides them.
//!
//! **Asking.** For each asset it lacks, in the order named, a side:
//! 1. claims it node-wide ([`Request::Claim`], [`crate::engine::claims`]):
//!    what it claimed and still lacks it may ask for; what its store holds by
//!    now is dropped; what another delivery holds is *busy*;
//! 2. asks the peer for what it claimed: `WANT` frames (at most
//!    [`MAX_WANT`] hashes each) on its *want stream*;
//! 3. waits for a busy asset's delivery to end ([`Request::AwaitFree`]),
//!    then claims it again: stored by then, it is dropped; if that delivery
//!    failed, it is asked for here.
//!
//! With verified ranges ([`super::FEATURE_RANGES`]), a `WANT` also names,
//! for each asset it asks for that the store holds in part, the groups
//! still lacking (`Want.resume`: `[start, end)` pairs of group indices);
//! the sender sends only those. A resume entry must name a hash of its
//! `WANT`, once, with ascending, disjoint, non-empty ranges: anything else
//! is a violation, and so is a resume entry without the feature.
//!
//! With [`super::FEATURE_SPLIT`] as well, a large asset may come from
//! several sessions at once ([`crate::engine::split`]): each asks for the
//! run of groups it leased, and asks for the asset again, with its next
//! run, when that one arrived. A `WANT` may then name an asset it named
//! before, with a resume entry: those asks count apart from the assets the
//! peer was told of, at most [`MAX_RANGED_ASKS`] a session, and the sender
//! sends each ask's groups in the order they were asked. Once one run's
//! answer brought the asset's outboard (checked against its hash), the
//! asks for later runs say so (`Resume.outboard_held`) and their answers
//! leave it out (`AssetHeader.outboard_omitted`): their groups are checked
//! against the outboard the receiver holds. An answer that leaves out an
//! outboard the receiver does not hold is refused as a bad range of that
//! asset. The responder of the coded exchange plans its asks by the sizes
//! the initiator gives with its `lacks`, so a node dialled by several
//! sources splits a large asset among them as one that dials does. A side
//! that knows an asset it lacks by hash alone (from a peer that sends no
//! sizes, or a split asset it waited for) leases it by the size of its
//! split when another session split it already, so such a peer that dials
//! in mid-asset takes part; one not split yet it asks for whole.
//!
//! When the exchange named everything and nothing is left to claim, busy or
//! being written, `DONE{assets}` (the number of hashes asked for) ends the
//! want stream. A side that takes nothing from its peer (read-only) asks for
//! nothing.
//!
//! **Serving.** A side reads the peer's want stream one `WANT` at a time and
//! hands it to its engine ([`Request::PlanWanted`]), reading the next only
//! once the engine took the last: what the peer asks for waits in the
//! engine's bounded queues, never in a list here. Its data streams end once
//! the peer's `DONE` is in (its count must match the hashes asked for) and
//! the exchange planned everything else. A hash it does not hold is
//! reported as vanished in the sender's outcome.
//!
//! **Want streams.** Each side's want stream is the unidirectional stream it
//! opens right after its data streams, so the peer accepts it after them.
//! It carries `WANT` frames of at most [`MAX_WANT_FRAME`] bytes, then
//! `DONE`, then ends: a frame of another type, a `WANT` after `DONE` or an
//! end without `DONE` is a violation.
//!
//! Invariants:
//! - an honest sender sends no asset unasked, and a side asks only for what
//!   it claimed: two sessions of one node never ask for the same asset at
//!   once, but for the runs of groups of a split asset, each leased to one
//!   session (what arrives unasked is verified and stored like any
//!   delivery);
//! - a peer asks for at most as many assets as we told it of (summaries
//!   listed, hashes it lacks, what our cells can name), each `WANT` naming
//!   some: more is a violation; asks by ranges with `split` count apart,
//!   within their own bound;
//! - a claim ends when its asset is stored or rejected here, or when the
//!   session ends, never on a reconciliation's progress: a busy asset waits
//!   only for data. An asset its source never sends (it no longer holds it)
//!   keeps its claim until that session ends, which the data streams' idle
//!   timeout bounds while anything asked is on its way: so two sessions
//!   waiting on each other's claims wait at most that long;
//! - what a side has asked for and not received stays within a window
//!   ([`WINDOW_ASSETS`], [`WINDOW_BYTES`]), so a source takes more only as
//!   what it was asked for arrives;
//! - memory follows the page: the paged merge reads the peer's next page
//!   only while fewer than a page of assets wait here to be claimed or for
//!   a busy delivery.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use tracing::debug;

use super::{Request, Session};
use crate::asset::AssetHash;
use crate::can::store::ranges;
use crate::engine::send::{RangesAsked, SendPlan};
use crate::pb;
use crate::session::live::parse_wants;
use crate::wire::{Frame, FrameType, Violation};

/// The `HELLO` feature of a side that pulls.
pub const FEATURE: &str = "pull";

/// Most hashes in one `WANT`.
pub const MAX_WANT: usize = 16_384;

/// Most assets claimed (and asked for) at a time. Small, so that several
/// sessions pulling from different peers take turns asset run by asset run,
/// and a source takes more only as it delivers (see [`WINDOW_ASSETS`]).
pub const CLAIM_BATCH: usize = 256;

/// Most assets one session has asked for and not yet received; a claim
/// waits for room. With [`WINDOW_BYTES`], what paces a session to its
/// source's rate: a slow source holds at most this much of the work.
pub const WINDOW_ASSETS: usize = 8192;

/// Most bytes (by the peer's sizes) one session has asked for and not yet
/// received.
pub const WINDOW_BYTES: u64 = 64 << 20;

/// Most bytes of `Want.resume` in one `WANT`; the assets held in part
/// beyond it are asked for whole (the store skips the groups it holds).
pub const RESUME_BUDGET: usize = 64 * 1024;

/// Most asks by ranges a peer with [`super::FEATURE_SPLIT`] makes in one
/// session: 1 TiB of large assets, one lease
/// ([`crate::engine::split::LEASE_GROUPS`]) at a time.
pub const MAX_RANGED_ASKS: u64 = 1 << 16;

/// Largest `WANT` frame: [`MAX_WANT`] hashes, [`RESUME_BUDGET`] and the
/// envelope.
pub const MAX_WANT_FRAME: u32 = (MAX_WANT * 32 + RESUME_BUDGET + 64) as u32;

/// The stream name violations carry.
const STREAM: &str = "the want stream";

/// Where a pulling session stands, both ways.
#[derive(Debug, Default)]
pub(super) struct Pull {
    /// Assets we lack, named by the exchange, not yet claimed, with the
    /// peer's sizes (0: unknown).
    lacking: VecDeque<(AssetHash, u64)>,
    /// A `Claim` is out.
    claiming: bool,
    /// Claimed and lacking, for the next `WANT`.
    to_ask: Vec<AssetHash>,
    /// A `Want` is being written.
    asking: bool,
    /// Held by other deliveries, not yet waited for.
    busy: Vec<AssetHash>,
    /// Assets in the `AwaitFree` that is out.
    awaiting: usize,
    /// The exchange named everything we lack.
    named_all: bool,
    /// Our `DONE` is out.
    asked_all: bool,
    /// A `ReadWant` is out.
    reading: bool,
    /// A `PlanWanted` is out.
    planning: bool,
    /// The peer's `DONE` is in.
    peer_done: bool,
    /// The exchange handed the engine its last plan of metadata.
    exchange_planned: bool,
    /// The plan that ends our data streams is out.
    ended: bool,
    counts: Counts,
}

/// What the session log line reports.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counts {
    /// Assets asked for.
    pub(super) asked: u64,
    /// Assets found busy (each time).
    pub(super) deferred: u64,
    /// Assets the peer asked us for (each time it named one).
    pub(super) served: u64,
    /// Of those, asks within the assets we told it of.
    pub(super) first_asks: u64,
    /// Of those, asks by ranges with `split`, counted apart.
    pub(super) ranged_asks: u64,
}

impl Pull {
    /// Assets waiting here to be claimed or for a busy delivery: what holds
    /// back the paged merge (see the invariants).
    pub(super) fn backlog(&self) -> usize {
        self.lacking.len() + self.busy.len() + self.awaiting + self.to_ask.len()
    }

    pub(super) fn counts(&self) -> Counts {
        self.counts
    }
}

impl Session {
    /// The exchange found that we lack `hashes` (more may follow).
    pub(super) fn lack(&mut self, assets: impl IntoIterator<Item = (AssetHash, u64)>) {
        let takes_nothing = self.config.read_only_peer;
        if let Some(pull) = self.pull.as_mut() {
            if !takes_nothing {
                pull.lacking.extend(assets);
            }
        }
    }

    /// The exchange named everything we lack.
    pub(super) fn lacked_all(&mut self) {
        if let Some(pull) = self.pull.as_mut() {
            pull.named_all = true;
        }
    }

    /// The exchange handed its last plan to the engine.
    pub(super) fn exchange_planned(&mut self) {
        if let Some(pull) = self.pull.as_mut() {
            pull.exchange_planned = true;
        }
    }

    /// Every step pulling can take now, both ways.
    pub(super) fn pump_pull(&mut self) {
        let engine_started = self.receive_config.is_some();
        let plans_out = self.plans_out;
        let ranges = self.limits.is_some_and(|limits| limits.ranges);
        let split_above = self
            .limits
            .filter(|limits| limits.split)
            .map(|limits| limits.inline_limit);
        let Some(pull) = self.pull.as_mut() else {
            return;
        };
        if !pull.claiming && !pull.asking && pull.to_ask.is_empty() && !pull.lacking.is_empty() {
            let take = pull.lacking.len().min(CLAIM_BATCH);
            let assets = pull.lacking.drain(..take).collect();
            pull.claiming = true;
            self.requests.push_back(Request::Claim {
                assets,
                split_above,
            });
        }
        if !pull.asking && !pull.to_ask.is_empty() {
            let hashes = std::mem::take(&mut pull.to_ask);
            pull.counts.asked += hashes.len() as u64;
            pull.asking = true;
            self.requests.push_back(Request::Want {
                hashes,
                resume: ranges,
            });
        }
        if pull.awaiting == 0 && !pull.busy.is_empty() {
            let hashes = std::mem::take(&mut pull.busy);
            pull.awaiting = hashes.len();
            self.requests.push_back(Request::AwaitFree { hashes });
        }
        let settled = pull.lacking.is_empty()
            && !pull.claiming
            && pull.to_ask.is_empty()
            && !pull.asking
            && pull.busy.is_empty()
            && pull.awaiting == 0;
        if pull.named_all && settled && !pull.asked_all {
            pull.asked_all = true;
            pull.asking = true;
            self.requests.push_back(Request::EndWants {
                asked: pull.counts.asked,
            });
        }
        if engine_started && !pull.reading && !pull.planning && !pull.peer_done {
            pull.reading = true;
            self.requests.push_back(Request::ReadWant);
        }
        let served_all = pull.peer_done && pull.exchange_planned && !pull.planning;
        if served_all && plans_out == 0 && !pull.ended {
            pull.ended = true;
            self.plans_out += 1;
            self.requests.push_back(Request::Plan {
                plan: SendPlan::default(),
                last: true,
            });
        }
    }

    /// Our claims: ask for what we got, wait for what is busy.
    pub(super) fn handle_claimed(&mut self, claiming: super::Claiming) {
        if let Some(pull) = self.pull.as_mut() {
            pull.claiming = false;
            for asset in claiming.later.into_iter().rev() {
                pull.lacking.push_front(asset);
            }
            pull.counts.deferred += claiming.busy.len() as u64;
            pull.to_ask.extend(claiming.ask);
            pull.busy.extend(claiming.busy);
        }
    }

    /// Our `WANT` is written.
    pub(super) fn handle_wanted(&mut self) {
        if let Some(pull) = self.pull.as_mut() {
            pull.asking = false;
        }
    }

    /// Deliveries that held these ended: claim them again.
    pub(super) fn handle_freed(&mut self, hashes: Vec<AssetHash>) {
        if let Some(pull) = self.pull.as_mut() {
            pull.awaiting = 0;
            // Sizes only pace the asking; these few go unpaced.
            pull.lacking
                .extend(hashes.into_iter().map(|hash| (hash, 0)));
        }
    }

    /// The engine took what the peer asked for.
    pub(super) fn handle_planned_wanted(&mut self) {
        if let Some(pull) = self.pull.as_mut() {
            pull.planning = false;
        }
    }

    /// The next frame of the peer's want stream (`None`: it ended).
    pub(super) fn handle_peer_want(
        &mut self,
        _now: Instant,
        frame: Option<Frame>,
    ) -> Result<(), Violation> {
        let peer_takes_nothing = self.limits.is_some_and(|l| l.peer_takes_nothing);
        let split = self.limits.is_some_and(|l| l.split);
        let advertised = self.advertised;
        let Some(pull) = self.pull.as_mut() else {
            return Ok(());
        };
        pull.reading = false;
        let Some(frame) = frame else {
            return Err(Violation::EndedEarly {
                missing: "DONE",
                stream: STREAM,
            });
        };
        match frame.frame_type {
            FrameType::Done => {
                let done: pb::StreamDone = Violation::decode("StreamDone", &frame.payload)?;
                if done.assets != pull.counts.served {
                    return Err(Violation::Wants(format!(
                        "the want stream's DONE counts {} assets, its WANTs named {}",
                        done.assets, pull.counts.served
                    )));
                }
                pull.peer_done = true;
                Ok(())
            }
            FrameType::Want => {
                let want: pb::Want = Violation::decode("Want", &frame.payload)?;
                let hashes = parse_wants(&want.hashes)?;
                if hashes.len() > MAX_WANT {
                    return Err(Violation::Wants(format!(
                        "a WANT of {} hashes, more than {MAX_WANT}",
                        hashes.len()
                    )));
                }
                if hashes.is_empty() {
                    return Err(Violation::Wants("an empty WANT".into()));
                }
                if peer_takes_nothing {
                    return Err(Violation::Wants(
                        "a peer that takes nothing asked for assets".into(),
                    ));
                }
                let resume = parse_resume(&want.resume, &hashes)?;
                if !resume.is_empty() && !self.limits.is_some_and(|limits| limits.ranges) {
                    return Err(Violation::Wants(
                        "ranges asked for without the feature \"ranges\"".into(),
                    ));
                }
                // An honest peer asks for each asset we told it of once at
                // most: more is junk or repeats, store reads for nothing.
                // With `split` it asks a large asset again, by runs of its
                // groups: those asks count apart, within their own bound.
                let ranged = if split { resume.len() as u64 } else { 0 };
                let first = hashes.len() as u64 - ranged;
                if pull.counts.first_asks + first > advertised {
                    return Err(Violation::Wants(format!(
                        "asks for {} assets where it was told of {advertised}",
                        pull.counts.first_asks + first
                    )));
                }
                if pull.counts.ranged_asks + ranged > MAX_RANGED_ASKS {
                    return Err(Violation::Wants(format!(
                        "more than {MAX_RANGED_ASKS} asks by ranges"
                    )));
                }
                pull.counts.first_asks += first;
                pull.counts.ranged_asks += ranged;
                debug!(
                    assets = hashes.len(),
                    resumed = resume.len(),
                    "the peer asks"
                );
                pull.counts.served += hashes.len() as u64;
                pull.planning = true;
                self.requests
                    .push_back(Request::PlanWanted { hashes, resume });
                Ok(())
            }
            got => Err(Violation::Unexpected {
                expected: "WANT or DONE",
                got,
                stream: STREAM,
            }),
        }
    }
}

/// The groups of a `WANT`'s partly held assets: each one of the `WANT`'s
/// hashes, named once, its ranges well formed (checked against the asset's
/// size by the sender, which alone knows it).
fn parse_resume(
    resume: &[pb::Resume],
    hashes: &[AssetHash],
) -> Result<Vec<RangesAsked>, Violation> {
    let named: HashSet<&AssetHash> = hashes.iter().collect();
    let mut seen = HashSet::new();
    resume
        .iter()
        .map(|entry| {
            let hash = AssetHash::from_slice(&entry.hash)?;
            if !named.contains(&hash) || !seen.insert(hash) {
                return Err(Violation::Wants(format!(
                    "ranges of {hash}, which the WANT does not name once"
                )));
            }
            let ranges = ranges::parse_ranges(&entry.missing, u64::MAX)
                .map_err(|err| Violation::Ranges(err.to_string()))?;
            if ranges.is_empty() {
                return Err(Violation::Ranges(format!("no ranges of {hash}")));
            }
            Ok(RangesAsked {
                hash,
                groups: ranges,
                outboard_held: entry.outboard_held,
            })
        })
        .collect()
}

/// The payload of a `WANT` frame: `hashes`, and of those held in part,
/// the groups lacking, within [`RESUME_BUDGET`] (those past it are asked
/// for whole).
pub fn want_payload(hashes: &[AssetHash], resume: &[RangesAsked]) -> Vec<u8> {
    use prost::Message as _;
    let mut budget = RESUME_BUDGET;
    let resume = resume
        .iter()
        .filter(|asked| !asked.groups.is_empty())
        .map(|asked| pb::Resume {
            hash: bytes::Bytes::copy_from_slice(asked.hash.as_bytes()),
            missing: ranges::flatten_ranges(&asked.groups),
            outboard_held: asked.outboard_held,
        })
        .take_while(|entry| {
            // The entry, its tag and its length prefix.
            let cost = entry.encoded_len() + 4;
            let fits = cost <= budget;
            budget = budget.saturating_sub(cost);
            fits
        })
        .collect();
    pb::Want {
        hashes: hashes.iter().flat_map(|h| *h.as_bytes()).collect(),
        resume,
    }
    .encode_to_vec()
}

/// The payload of the `DONE` that ends a want stream which asked for
/// `asked` assets.
pub fn wants_done_payload(asked: u64) -> Vec<u8> {
    use prost::Message as _;
    pb::StreamDone {
        assets: asked,
        bytes: 0,
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    //! The pulling half of the session machine, driven by hand: every
    //! request it makes and every answer it takes, no sockets, no store.

    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use prost::Message as _;

    use super::*;
    use crate::asset::{MetaVersion, Summary};
    use crate::engine::EngineConfig;
    use crate::recon::compact;
    use crate::session::machine::Machine;
    use crate::session::v2::{hello, Answer, Claiming};
    use crate::session::{Role, SessionError};

    /// Whole lists, pulled: the exchange names what each side lacks at once.
    fn config() -> EngineConfig {
        EngineConfig {
            coded_recon: false,
            paged_lists: false,
            idle_timeout: Duration::from_secs(10),
            ..EngineConfig::default()
        }
    }

    fn summary(i: u8) -> Summary {
        Summary {
            hash: AssetHash::of(&[i]),
            created_at_ms: 1,
            size: 10,
            version: MetaVersion {
                updated_at_ms: 1,
                digest: [0; 32],
            },
        }
    }

    fn requests(session: &mut Session) -> Vec<Request> {
        std::iter::from_fn(|| session.poll_request()).collect()
    }

    fn frame(frame_type: FrameType, payload: Vec<u8>) -> Frame {
        Frame::new(frame_type, Bytes::from(payload))
    }

    /// A session that holds assets 0 and 1 against a peer (announcing
    /// `peer`'s settings) that holds 1, 2 and 3: we lack 2 and 3, the peer
    /// lacks 0. Returns it with the requests of the reconciled exchange.
    fn reconciled(peer: EngineConfig) -> (Session, Instant, Vec<Request>) {
        let now = Instant::now();
        let mut session = Session::new(Role::Initiator, config(), false, now);
        let theirs = hello(&peer, false);
        session.handle_frame(now, frame(FrameType::Hello, theirs.encode_to_vec()));
        assert!(matches!(requests(&mut session)[..], [Request::List]));
        session.handle_answer(now, Answer::Listed(Ok(vec![summary(0), summary(1)])));
        let round = pb::Recon {
            packed_summaries: Bytes::from(compact::encode(
                &[summary(1), summary(2), summary(3)],
                3,
            )),
            done: true,
            ..Default::default()
        };
        session.handle_frame(now, frame(FrameType::Recon, round.encode_to_vec()));
        let reconciled = requests(&mut session);
        (session, now, reconciled)
    }

    #[test]
    fn assets_go_only_when_asked_and_a_busy_one_waits_for_its_delivery() {
        let (mut session, now, reconciled) = reconciled(config());
        let (lacking, mut plans) = (vec![summary(2).hash, summary(3).hash], 0);
        for request in &reconciled {
            match request {
                Request::Plan { plan, last } => {
                    // The peer lacks asset 0, but asks for it itself.
                    assert!(plan.assets.is_empty() && plan.lookup.is_empty(), "{plan:?}");
                    assert!(!last, "the streams stay open for what the peer asks");
                    plans += 1;
                }
                Request::Claim { assets, .. } => {
                    let mut hashes: Vec<AssetHash> = assets.iter().map(|(hash, _)| *hash).collect();
                    hashes.sort();
                    let mut expected = lacking.clone();
                    expected.sort();
                    assert_eq!(hashes, expected);
                }
                Request::Send { pull, .. } | Request::Receive { pull, .. } => assert!(pull),
                Request::ReadWant => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(plans, 1);
        assert!(reconciled.iter().any(|r| matches!(r, Request::ReadWant)));
        session.handle_answer(now, Answer::Planned);

        // Asset 2 is ours to ask for; asset 3 another delivery holds.
        let (two, three) = (summary(2).hash, summary(3).hash);
        session.handle_answer(
            now,
            Answer::Claimed(Ok(Claiming {
                ask: vec![two],
                busy: vec![three],
                later: Vec::new(),
            })),
        );
        let asked = requests(&mut session);
        assert!(asked
            .iter()
            .any(|r| matches!(r, Request::Want { hashes, .. } if *hashes == [two])));
        assert!(asked
            .iter()
            .any(|r| matches!(r, Request::AwaitFree { hashes } if *hashes == [three])));
        session.handle_answer(now, Answer::Wanted(Ok(())));
        assert!(
            requests(&mut session).is_empty(),
            "no DONE while a delivery we wait for is out"
        );
        // That delivery ended: claim again; it stored the asset, so nothing
        // is left to ask for.
        session.handle_answer(now, Answer::Freed(vec![three]));
        assert!(matches!(
            &requests(&mut session)[..],
            [Request::Claim { assets, .. }] if *assets == [(three, 0)]
        ));
        session.handle_answer(now, Answer::Claimed(Ok(Claiming::default())));
        assert!(matches!(
            &requests(&mut session)[..],
            [Request::EndWants { asked: 1 }]
        ));

        // The peer asks for asset 0, then ends its want stream.
        let zero = summary(0).hash;
        let want = frame(FrameType::Want, want_payload(&[zero], &[]));
        session.handle_answer(now, Answer::PeerWant(Ok(Some(want))));
        assert!(matches!(
            &requests(&mut session)[..],
            [Request::PlanWanted { hashes, .. }] if *hashes == [zero]
        ));
        session.handle_answer(now, Answer::PlannedWanted);
        assert!(matches!(&requests(&mut session)[..], [Request::ReadWant]));
        let done = frame(FrameType::Done, wants_done_payload(1));
        session.handle_answer(now, Answer::PeerWant(Ok(Some(done))));
        assert!(
            matches!(&requests(&mut session)[..], [Request::Plan { plan, last: true }] if *plan == SendPlan::default()),
            "the peer's DONE ends our streams"
        );
        assert!(session.poll_outcome().is_none());
    }

    fn served_until_failure(peer: EngineConfig, frames: Vec<Frame>) -> SessionError {
        let (mut session, now, _) = reconciled(peer);
        for want in frames {
            session.handle_answer(now, Answer::PeerWant(Ok(Some(want))));
            if let Some(outcome) = session.poll_outcome() {
                return outcome.expect_err("a violation");
            }
            let _ = requests(&mut session);
            session.handle_answer(now, Answer::PlannedWanted);
        }
        session.handle_answer(now, Answer::PeerWant(Ok(None)));
        session
            .poll_outcome()
            .expect("over")
            .expect_err("a violation")
    }

    #[test]
    fn a_want_stream_that_breaks_its_grammar_fails_the_session() {
        let zero = summary(0).hash;
        let want = || frame(FrameType::Want, want_payload(&[zero], &[]));
        let cases: Vec<(&str, EngineConfig, Vec<Frame>, &str)> = vec![
            ("ends without DONE", config(), vec![want()], "DONE"),
            (
                "DONE miscounts",
                config(),
                vec![want(), frame(FrameType::Done, wants_done_payload(2))],
                "counts 2 assets, its WANTs named 1",
            ),
            (
                "another frame type",
                config(),
                vec![frame(FrameType::Summary, Vec::new())],
                "WANT or DONE",
            ),
            (
                "a hash twice",
                config(),
                vec![frame(FrameType::Want, want_payload(&[zero, zero], &[]))],
                "twice",
            ),
            (
                "an empty WANT",
                config(),
                vec![frame(FrameType::Want, want_payload(&[], &[]))],
                "an empty WANT",
            ),
            (
                "more than it was told of",
                config(),
                vec![frame(
                    FrameType::Want,
                    want_payload(&[zero, summary(1).hash, summary(9).hash], &[]),
                )],
                "asks for 3 assets where it was told of 2",
            ),
            (
                "a peer that takes nothing asks",
                EngineConfig {
                    read_only_peer: true,
                    ..config()
                },
                vec![want()],
                "takes nothing",
            ),
        ];
        for (case, peer, frames, says) in cases {
            let err = served_until_failure(peer, frames).to_string();
            assert!(err.contains(says), "{case}: {err}");
        }
    }

    /// With `split`, a peer asks for one large asset again and again, each
    /// time by the run of groups it leased: each ask is served with its run,
    /// and the want stream's `DONE` counts every ask. Without it, asking
    /// again counts against the assets the peer was told of.
    #[test]
    fn with_split_an_asset_is_asked_again_by_runs_of_groups() {
        let zero = summary(0).hash;
        // The first run brings the outboard; the later ones say it is held.
        let asked = |run: std::ops::Range<u64>| RangesAsked {
            outboard_held: run.start > 0,
            ..RangesAsked::new(zero, vec![run])
        };
        let by_run = |run: std::ops::Range<u64>| {
            frame(
                FrameType::Want,
                want_payload(&[zero], &[asked(run.clone())]),
            )
        };
        let runs = [0..16, 16..32, 32..48];
        let (mut session, now, _) = reconciled(config());
        for run in runs.clone() {
            session.handle_answer(now, Answer::PeerWant(Ok(Some(by_run(run.clone())))));
            assert!(session.poll_outcome().is_none(), "asked again by {run:?}");
            let planned = requests(&mut session);
            assert!(
                planned.iter().any(|request| matches!(
                    request,
                    Request::PlanWanted { hashes, resume }
                        if *hashes == [zero] && *resume == [asked(run.clone())]
                )),
                "{run:?} is planned with its run: {planned:?}"
            );
            session.handle_answer(now, Answer::PlannedWanted);
        }
        session.handle_answer(
            now,
            Answer::PeerWant(Ok(Some(frame(FrameType::Done, wants_done_payload(3))))),
        );
        assert!(
            session.poll_outcome().is_none(),
            "three asks, DONE counts 3"
        );

        let without = EngineConfig {
            split: false,
            ..config()
        };
        let asks = runs.into_iter().map(by_run).collect();
        let err = served_until_failure(without, asks).to_string();
        assert!(
            err.contains("asks for 3 assets where it was told of 2"),
            "{err}"
        );
    }

    #[test]
    fn a_side_that_takes_nothing_asks_for_nothing() {
        let now = Instant::now();
        let ours = EngineConfig {
            read_only_peer: true,
            ..config()
        };
        let mut session = Session::new(Role::Initiator, ours, false, now);
        let theirs = hello(&config(), false);
        session.handle_frame(now, frame(FrameType::Hello, theirs.encode_to_vec()));
        let _ = requests(&mut session);
        session.handle_answer(now, Answer::Listed(Ok(Vec::new())));
        let round = pb::Recon {
            packed_summaries: Bytes::from(compact::encode(&[summary(1)], 3)),
            done: true,
            ..Default::default()
        };
        session.handle_frame(now, frame(FrameType::Recon, round.encode_to_vec()));
        let reconciled = requests(&mut session);
        assert!(
            !reconciled
                .iter()
                .any(|r| matches!(r, Request::Claim { .. })),
            "{reconciled:?}"
        );
        assert!(reconciled
            .iter()
            .any(|r| matches!(r, Request::EndWants { asked: 0 })));
    }

    #[test]
    fn what_did_not_fit_the_window_is_claimed_next_and_first() {
        let (mut session, now, _) = reconciled(config());
        session.handle_answer(now, Answer::Planned);
        let (two, three) = (summary(2).hash, summary(3).hash);
        // The window had room for one: asset 3 waits.
        session.handle_answer(
            now,
            Answer::Claimed(Ok(Claiming {
                ask: vec![two],
                busy: Vec::new(),
                later: vec![(three, 10)],
            })),
        );
        let asked = requests(&mut session);
        assert!(
            matches!(&asked[..], [Request::Want { hashes, .. }] if *hashes == [two]),
            "{asked:?}"
        );
        session.handle_answer(now, Answer::Wanted(Ok(())));
        assert!(matches!(
            &requests(&mut session)[..],
            [Request::Claim { assets, .. }] if *assets == [(three, 10)]
        ));
    }
}
