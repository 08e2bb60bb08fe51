//! Ranges of one large asset from several sources: leases.
//!
//! A lone source's large asset is leased the same way (unless the store
//! uploads it as it arrives, in order): its runs travel on several streams,
//! and a source that connects later takes the runs still free.
//!
//! A large asset this node lacks is claimed once node-wide, like any asset
//! ([`super::claims`]); when it can travel by verified ranges, its claim
//! is held by a *split* instead of one delivery. A session that would pull
//! the asset takes a *lease* from the split, a run of at most
//! [`LEASE_GROUPS`] groups neither held nor leased, and asks its peer for
//! those groups only (a `WANT` naming the asset with the lease as its
//! ranges, HELLO feature `split`). When the groups arrive the session takes
//! the next lease, so each source takes work as fast as it delivers it: the
//! split follows each source's rate, and a slow source holds at most its
//! leases in flight at the end.
//!
//! Every group is verified by the store whoever sent it
//! ([`crate::can::store::ranges`]); the deliveries of one asset meet in one
//! partial asset there.
//!
//! Invariants:
//! - **disjoint**: a group is in at most one lease at a time, but for a
//!   lease taken again for the tail (below), which shares its groups with
//!   its twin; a lease whose delivery failed gives its groups back to be
//!   leased again, unless its twin still carries them, and but for those
//!   the store took before the delivery was cut;
//! - **a source that sent a bad range is dropped for that asset**: its
//!   session takes no more leases of it (the others finish it);
//! - **the split ends with the asset or its last lease**: once a delivery
//!   makes it whole, or no lease is out, its claim is released; the
//!   sessions waiting on it see it stored, or split again what the store
//!   still lacks;
//! - **the tail is re-asked from a faster source**: with nothing left to
//!   lease, a session may take again another's lease that it would deliver
//!   sooner, once ([`Splits::take`]), less the groups its holder's delivery
//!   already handed the store ([`Arrival`]): a source that went quiet
//!   midway costs only what it had not sent.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::claims::Claim;
use crate::asset::AssetHash;
use crate::can::Outboard;

mod lease;

pub use lease::{Arrival, Lease, Taken};

/// Most groups in one lease (16 MiB): a few leases fill a session's
/// window ([`crate::session::v2::pull::WINDOW_BYTES`]), so a source keeps
/// several in flight while the end waits for at most one of a slow source.
pub const LEASE_GROUPS: u64 = 16;

/// How often a session waiting on a split asset looks again whether a
/// lease another session holds is worth taking again.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The large assets split among sessions, node-wide.
#[derive(Debug, Default)]
pub struct Splits {
    splits: Mutex<HashMap<AssetHash, Split>>,
    next_lease: AtomicU64,
    /// Deliveries pulling now ([`super::claims::Claimed`]): an asset is
    /// split only when another could take part.
    pub pulling: std::sync::atomic::AtomicUsize,
    /// Notified when a split begins or a lease ends: groups may be free to
    /// lease, or a lease worth taking again.
    pub(super) freed: tokio::sync::Notify,
    /// Notified when a lease is granted: one another source's session holds
    /// may become worth taking again as it ages ([`Self::may_retake`]).
    granted: tokio::sync::Notify,
    /// The source (peer) of each delivery that named one, by session: a
    /// lease is never taken again by another session of its own source,
    /// which would only ask the same peer, over the same path, twice.
    sources: Mutex<HashMap<u64, [u8; 32]>>,
}

#[derive(Debug)]
struct Split {
    /// The asset's node-wide claim, released when the split ends.
    _claim: Claim,
    /// Its size, as the session that split it had it from its source (each
    /// answer's own size is checked against the groups it proves).
    size: u64,
    /// Runs of groups neither held nor leased, ascending and disjoint.
    free: Vec<Range<u64>>,
    /// Leases out, by id.
    leased: HashMap<u64, Out>,
    /// How long each session's last delivered lease took: its pace.
    paces: HashMap<u64, Duration>,
    /// Sessions whose source sent a bad range of it.
    refused: HashSet<u64>,
    /// Its outboard, once a delivery brought one that matched the hash:
    /// later leases are asked for without it (`Resume.outboard_held`).
    outboard: Option<Outboard>,
}

/// A lease out.
#[derive(Debug)]
struct Out {
    groups: Range<u64>,
    session: u64,
    since: Instant,
    /// The other lease of the same groups, when one was re-asked from a
    /// faster session ([`Splits::take`]): the retaken one's groups are the
    /// original's from where its delivery had come to.
    twin: Option<u64>,
    /// Its twin delivered its groups from this one on: they are held,
    /// whatever this one does.
    covered: Option<u64>,
    /// How far its delivery has come.
    arrival: Arrival,
}

impl Out {
    /// Whether a session whose source's sessions are `same_source` may
    /// take it again: another source's, not taken again yet, its groups
    /// not delivered by a twin.
    fn retakable_by(&self, same_source: &HashSet<u64>) -> bool {
        !same_source.contains(&self.session) && self.twin.is_none() && self.covered.is_none()
    }

    /// Its groups its delivery has not handed the store yet: what taking
    /// it again asks for.
    fn unarrived(&self) -> Range<u64> {
        let start = self.groups.start.saturating_add(self.arrival.groups());
        start.min(self.groups.end)..self.groups.end
    }
}

impl Splits {
    /// Whether more than one delivery is pulling. A store that uploads
    /// an asset as it arrives in order (object storage) splits a new
    /// asset only then, so that a lone source sends it whole, in order;
    /// any other store splits it for a lone source too, whose runs then
    /// travel on several streams and which a later source can join
    /// (`session::driver::pull`).
    pub fn several_pulling(&self) -> bool {
        self.pulling.load(Ordering::SeqCst) > 1
    }

    /// Session `session` pulls from `source` (until [`Self::left`]).
    pub fn joined(&self, session: u64, source: [u8; 32]) {
        let mut sources = self.sources.lock().expect("sources lock");
        sources.insert(session, source);
    }

    /// Session `session` is over.
    pub fn left(&self, session: u64) {
        self.sources.lock().expect("sources lock").remove(&session);
    }

    /// Whether `hash` is split now.
    pub fn is_split(&self, hash: &AssetHash) -> bool {
        self.splits.lock().expect("splits lock").contains_key(hash)
    }

    /// The size of `hash` when it is split now: what a session that knows
    /// an asset it lacks by hash alone (a responder whose initiator sent no
    /// sizes) leases it by.
    pub fn size(&self, hash: &AssetHash) -> Option<u64> {
        let splits = self.splits.lock().expect("splits lock");
        splits.get(hash).map(|split| split.size)
    }

    /// Whether `hash` is split and has groups to lease.
    pub fn has_free(&self, hash: &AssetHash) -> bool {
        self.splits
            .lock()
            .expect("splits lock")
            .get(hash)
            .is_some_and(|split| !split.free.is_empty())
    }

    /// Splits the asset `claim` holds, of `size` bytes, lacking the
    /// `missing` runs of groups (ascending, disjoint).
    pub fn start(&self, claim: Claim, size: u64, missing: Vec<Range<u64>>) {
        let hash = claim.hash();
        self.splits.lock().expect("splits lock").insert(
            hash,
            Split {
                _claim: claim,
                size,
                free: missing,
                leased: HashMap::new(),
                paces: HashMap::new(),
                refused: HashSet::new(),
                outboard: None,
            },
        );
        // Sessions that found it claimed while it was being split.
        self.freed.notify_waiters();
    }

    /// The next lease of `hash` for `session` at `now`; `more` says whether
    /// the session should come back for another (groups are left to lease,
    /// or leases of other sessions are out that it may take again).
    ///
    /// With no group left to lease, a session whose last lease of the asset
    /// was delivered and which holds none now may take again a lease another
    /// session holds (one of another source, [`Self::joined`]), when its own
    /// pace says it would deliver those groups before that session is
    /// expected to (by that session's last pace, or,
    /// when it has delivered none, once the lease is older than a whole lease
    /// at our pace). Each lease is taken again once at most, from the
    /// first group its delivery has not handed the store ([`Arrival`]);
    /// whichever delivery comes first writes the groups, the store skips
    /// them in the other. So the tail is re-asked from a faster source.
    pub fn take(self: &Arc<Self>, hash: AssetHash, session: u64, now: Instant) -> (Taken, bool) {
        let mut splits = self.splits.lock().expect("splits lock");
        let Some(split) = splits.get_mut(&hash) else {
            return (Taken::Ended, false);
        };
        if split.refused.contains(&session) {
            return (Taken::Refused, false);
        }
        let (groups, twin) = match split.free.first_mut() {
            Some(first) => {
                let end = first.end.min(first.start + LEASE_GROUPS);
                let groups = first.start..end;
                first.start = end;
                if first.is_empty() {
                    split.free.remove(0);
                }
                (groups, None)
            }
            None => match split.retake(session, now, &self.sources_like(session)) {
                Some((id, groups)) => (groups, Some(id)),
                None => {
                    let others = split.leased.values().any(|out| out.session != session);
                    return (Taken::Busy, others);
                }
            },
        };
        let id = self.next_lease.fetch_add(1, Ordering::Relaxed);
        if let Some(original) = twin.and_then(|twin| split.leased.get_mut(&twin)) {
            original.twin = Some(id);
        }
        let arrival = Arrival::default();
        split.leased.insert(
            id,
            Out {
                groups: groups.clone(),
                session,
                since: now,
                twin,
                covered: None,
                arrival: arrival.clone(),
            },
        );
        self.granted.notify_waiters();
        let more = !split.free.is_empty()
            || split
                .leased
                .values()
                .any(|out| out.session != session && out.twin.is_none());
        let lease = Lease::new(self.clone(), hash, id, groups, arrival);
        (Taken::Lease(lease), more)
    }

    /// Whether `session` may come to take again a lease of `hash` out now:
    /// one of another source's session, not taken again yet, with groups
    /// its delivery has not handed the store. While none is, a waiting
    /// session has nothing to look at as leases age, until a lease is
    /// granted ([`Self::granted`]) or ends.
    pub fn may_retake(&self, hash: &AssetHash, session: u64) -> bool {
        let same_source = self.sources_like(session);
        let splits = self.splits.lock().expect("splits lock");
        splits.get(hash).is_some_and(|split| {
            split
                .leased
                .values()
                .any(|out| out.retakable_by(&same_source) && !out.unarrived().is_empty())
        })
    }

    /// Resolves when a lease of any split asset is granted next (enable it
    /// before looking at [`Self::may_retake`], so a grant in between
    /// wakes it).
    pub fn granted(&self) -> tokio::sync::futures::Notified<'_> {
        self.granted.notified()
    }

    /// Keeps the outboard of a split asset that a delivery brought, checked
    /// against its hash, for the leases asked for after it (the first
    /// kept stays; its size is each answer's to claim, as the values do
    /// not prove one).
    pub fn keep_outboard(&self, outboard: &Outboard) {
        let mut splits = self.splits.lock().expect("splits lock");
        if let Some(split) = splits.get_mut(&outboard.hash()) {
            split.outboard.get_or_insert_with(|| outboard.clone());
        }
    }

    /// Whether the split of `hash` holds its outboard.
    pub fn holds_outboard(&self, hash: &AssetHash) -> bool {
        let splits = self.splits.lock().expect("splits lock");
        splits
            .get(hash)
            .is_some_and(|split| split.outboard.is_some())
    }

    /// The outboard of `hash` its split holds: what a lease's delivery
    /// without one is verified against.
    pub fn outboard(&self, hash: &AssetHash) -> Option<Outboard> {
        let splits = self.splits.lock().expect("splits lock");
        splits.get(hash)?.outboard.clone()
    }

    /// The sessions pulling from the same source as `session` (itself
    /// included).
    fn sources_like(&self, session: u64) -> HashSet<u64> {
        let sources = self.sources.lock().expect("sources lock");
        let Some(ours) = sources.get(&session) else {
            return HashSet::from([session]);
        };
        sources
            .iter()
            .filter(|(_, source)| *source == ours)
            .map(|(other, _)| *other)
            .collect()
    }

    /// `session`'s source sent a bad range of `hash`: it gets no more of it.
    pub fn refuse(&self, hash: &AssetHash, session: u64) {
        if let Some(split) = self.splits.lock().expect("splits lock").get_mut(hash) {
            split.refused.insert(session);
        }
    }

    /// The asset is whole and stored: the split ends, its claim with it.
    pub fn finish(&self, hash: &AssetHash) {
        let ended = self.splits.lock().expect("splits lock").remove(hash);
        drop(ended);
    }

    fn end_lease(&self, hash: &AssetHash, id: u64, delivered: bool, written: u64) {
        let ended = {
            let mut splits = self.splits.lock().expect("splits lock");
            let Some(split) = splits.get_mut(hash) else {
                return;
            };
            let Some(out) = split.leased.remove(&id) else {
                return;
            };
            let twin = out.twin.and_then(|twin| split.leased.get_mut(&twin));
            if delivered {
                split.paces.insert(out.session, out.since.elapsed());
                if let Some(twin) = twin {
                    // The later start of the two is the retaken one's.
                    twin.covered = Some(twin.groups.start.max(out.groups.start));
                }
            } else {
                // Where the groups a twin carries (or delivered) begin.
                let carried_from = match (twin, out.covered) {
                    (Some(twin), _) => {
                        twin.twin = None;
                        twin.groups.start
                    }
                    (None, Some(from)) => from,
                    (None, None) => out.groups.end,
                };
                // What the store took of it stays taken.
                let rest = (out.groups.start + written).min(carried_from)..carried_from;
                if !rest.is_empty() {
                    give_back(&mut split.free, rest);
                }
            }
            // Free groups, or a lease whose twin is gone: a waiting session
            // may take it (again).
            self.freed.notify_waiters();
            // No lease out: the split ends, and the next claim of the asset
            // splits what its store still lacks. So groups given back are
            // never stranded by sessions that left.
            split.leased.is_empty().then(|| splits.remove(hash))
        };
        // The claim is released outside the lock (it wakes waiters).
        drop(ended);
    }
}

impl Split {
    /// A lease of another session that `session` would deliver sooner, to
    /// take again (see [`Splits::take`]): its id, and its groups its
    /// holder's delivery has not handed the store yet. Never one of
    /// `same_source`, the sessions of `session`'s own source.
    fn retake(
        &self,
        session: u64,
        now: Instant,
        same_source: &HashSet<u64>,
    ) -> Option<(u64, Range<u64>)> {
        let ours = *self.paces.get(&session)?;
        if self.leased.values().any(|out| out.session == session) {
            return None;
        }
        self.leased
            .iter()
            .filter(|(_, out)| out.retakable_by(same_source) && !out.unarrived().is_empty())
            .filter_map(|(id, out)| {
                let age = now.saturating_duration_since(out.since);
                // How much longer its holder is expected to take.
                let left = match self.paces.get(&out.session) {
                    Some(pace) => pace.saturating_sub(age),
                    None if age > ours => Duration::MAX,
                    None => Duration::ZERO,
                };
                (ours < left).then_some((left, *id, out.unarrived()))
            })
            .max_by_key(|(left, id, _)| (*left, std::cmp::Reverse(*id)))
            .map(|(_, id, groups)| (id, groups))
    }
}

/// Puts `groups` back among the `free` runs, merging neighbours.
fn give_back(free: &mut Vec<Range<u64>>, groups: Range<u64>) {
    let at = free.partition_point(|run| run.start < groups.start);
    free.insert(at, groups);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(free.len());
    for run in free.drain(..) {
        match merged.last_mut() {
            Some(last) if last.end >= run.start => last.end = last.end.max(run.end),
            _ => merged.push(run),
        }
    }
    *free = merged;
}

#[cfg(test)]
// Runs of groups are ranges: a list of one is a list of one run.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::engine::claims::Claims;

    fn split(runs: Vec<Range<u64>>) -> (Arc<Claims>, AssetHash) {
        let claims = Arc::new(Claims::default());
        let hash = AssetHash::of(b"large");
        let claim = claims.try_claim(hash).unwrap();
        let size = runs
            .last()
            .map_or(0, |run| run.end * crate::can::store::ranges::GROUP_BYTES);
        claims.splits.start(claim, size, runs);
        (claims, hash)
    }

    fn lease(taken: (Taken, bool)) -> (Lease, bool) {
        match taken {
            (Taken::Lease(lease), more) => (lease, more),
            (other, _) => panic!("no lease: {other:?}"),
        }
    }

    /// The outboard a delivery brought is kept for the split's later
    /// leases, and goes with the split.
    #[test]
    fn a_split_keeps_the_outboard_a_delivery_brought_while_it_lasts() {
        use crate::can::store::ranges::{OutboardHasher, GROUP_BYTES};
        let data = vec![7u8; 3 * GROUP_BYTES as usize];
        let mut hasher = OutboardHasher::default();
        hasher.update(&data);
        let (hash, outboard) = hasher.finalize();
        let claims = Arc::new(Claims::default());
        let splits = &claims.splits;
        // Not split: nothing is kept.
        splits.keep_outboard(&outboard);
        assert!(!splits.holds_outboard(&hash));
        splits.start(
            claims.try_claim(hash).unwrap(),
            3 * crate::can::store::ranges::GROUP_BYTES,
            vec![0..3],
        );
        assert!(!splits.holds_outboard(&hash));
        let (only, _) = lease(splits.take(hash, 1, Instant::now()));
        splits.keep_outboard(&outboard);
        assert!(splits.holds_outboard(&hash));
        assert_eq!(
            splits.outboard(&hash).map(|kept| kept.encoded_cvs()),
            Some(outboard.encoded_cvs())
        );
        // Its last lease ends: so does the split, and the outboard with it.
        drop(only);
        assert!(!splits.is_split(&hash));
        assert!(splits.outboard(&hash).is_none());
    }

    #[test]
    fn sessions_lease_disjoint_runs_of_what_is_missing() {
        let (claims, hash) = split(vec![0..20, 30..34]);
        let splits = &claims.splits;
        let (a, more) = lease(splits.take(hash, 1, Instant::now()));
        assert_eq!((a.groups(), more), (0..16, true));
        let (b, more) = lease(splits.take(hash, 2, Instant::now()));
        assert_eq!((b.groups(), more), (16..20, true));
        let (c, more) = lease(splits.take(hash, 1, Instant::now()));
        assert_eq!(
            (c.groups(), more),
            (30..34, true),
            "nothing left to lease, but session 2's lease may be taken again"
        );
        assert!(matches!(
            splits.take(hash, 2, Instant::now()).0,
            Taken::Busy
        ));
        assert!(claims.is_held(&hash), "the split holds the asset's claim");
        a.delivered();
        c.delivered();
        b.delivered();
        assert!(
            !claims.is_held(&hash),
            "everything delivered: the split ends and releases the claim"
        );
    }

    #[test]
    fn a_failed_lease_gives_its_groups_back() {
        let (claims, hash) = split(vec![0..40]);
        let splits = &claims.splits;
        let (a, _) = lease(splits.take(hash, 1, Instant::now()));
        let (b, _) = lease(splits.take(hash, 2, Instant::now()));
        drop(a);
        assert!(splits.has_free(&hash));
        let (again, _) = lease(splits.take(hash, 2, Instant::now()));
        assert_eq!(again.groups(), 0..16, "the failed run goes first");
        drop(b);
        let (c, more) = lease(splits.take(hash, 1, Instant::now()));
        assert_eq!((c.groups(), more), (16..32, true), "runs merge back");
    }

    /// A delivery cut after the store took the first groups of its lease
    /// gives back only the rest: those groups are not sent again.
    #[test]
    fn a_lease_cut_midway_gives_back_only_what_was_not_written() {
        let (claims, hash) = split(vec![0..40]);
        let splits = &claims.splits;
        let (mut cut, _) = lease(splits.take(hash, 1, Instant::now()));
        let (_other, _) = lease(splits.take(hash, 2, Instant::now()));
        cut.written(5);
        drop(cut);
        let (again, _) = lease(splits.take(hash, 2, Instant::now()));
        assert_eq!(again.groups(), 5..16, "groups 0..5 were written");
        // Written past its end (a count the receiver got wrong) gives
        // back nothing rather than groups of another run.
        let (mut over, _) = lease(splits.take(hash, 3, Instant::now()));
        assert_eq!(over.groups(), 32..40);
        over.written(100);
        drop(over);
        assert!(!splits.has_free(&hash));
    }

    #[test]
    fn a_refused_source_gets_no_more_and_the_finished_asset_none() {
        let (claims, hash) = split(vec![0..64]);
        let splits = &claims.splits;
        let (good, _) = lease(splits.take(hash, 2, Instant::now()));
        let (bad, _) = lease(splits.take(hash, 1, Instant::now()));
        splits.refuse(&hash, 1);
        drop(bad);
        assert!(matches!(
            splits.take(hash, 1, Instant::now()).0,
            Taken::Refused
        ));
        let (next, _) = lease(splits.take(hash, 2, Instant::now()));
        assert_eq!(next.groups(), 16..32, "the refused run goes to the other");
        splits.finish(&hash);
        assert!(!claims.is_held(&hash));
        assert!(matches!(
            splits.take(hash, 2, Instant::now()).0,
            Taken::Ended
        ));
        good.delivered();
        next.delivered();
    }

    #[test]
    fn a_split_without_leases_ends_so_no_group_is_stranded() {
        let (claims, hash) = split(vec![0..64]);
        let (only, _) = lease(claims.splits.take(hash, 1, Instant::now()));
        drop(only);
        assert!(
            !claims.is_held(&hash),
            "its session left: the next claim splits what the store lacks"
        );
    }

    #[test]
    fn the_tail_is_taken_again_by_a_faster_session_once() {
        let (claims, hash) = split(vec![0..32]);
        let splits = &claims.splits;
        let start = Instant::now();
        let (fast, _) = lease(splits.take(hash, 1, start));
        let (slow, _) = lease(splits.take(hash, 2, start));
        fast.delivered();
        let (taken, more) = splits.take(hash, 1, start);
        assert!(
            matches!(taken, Taken::Busy) && more,
            "the slow lease is young: wait, and come back"
        );
        let later = start + Duration::from_secs(1);
        let (again, more) = lease(splits.take(hash, 1, later));
        assert_eq!((again.groups(), more), (16..32, false));
        assert!(
            matches!(splits.take(hash, 3, later).0, Taken::Busy),
            "taken again once at most"
        );
        slow.delivered();
        assert!(claims.is_held(&hash), "the twin is still out");
        drop(again);
        assert!(
            !claims.is_held(&hash),
            "the slow delivery brought the groups: the failed twin gives nothing back"
        );
    }

    /// A session may take a lease again only from another source's session:
    /// while only its own source's leases are out it has nothing to look
    /// at as they age, and a grant to another source wakes it.
    #[test]
    fn only_another_sources_lease_may_be_taken_again() {
        let (claims, hash) = split(vec![0..48]);
        let splits = &claims.splits;
        splits.joined(1, [1; 32]);
        splits.joined(2, [1; 32]);
        splits.joined(3, [2; 32]);
        let (_ours, _) = lease(splits.take(hash, 2, Instant::now()));
        assert!(
            !splits.may_retake(&hash, 1),
            "only our own source's lease is out"
        );
        let granted = splits.granted();
        let mut granted = std::pin::pin!(granted);
        granted.as_mut().enable();
        let (_theirs, _) = lease(splits.take(hash, 3, Instant::now()));
        assert!(
            futures::FutureExt::now_or_never(granted).is_some(),
            "the grant woke the waiter"
        );
        assert!(splits.may_retake(&hash, 1), "another source's lease is out");
    }

    /// Two sessions with one peer (a live link's offers, say) share its
    /// path: the faster of them never asks it again for the other's lease.
    /// A session with another peer does.
    #[test]
    fn a_lease_is_not_taken_again_from_the_same_source() {
        let (claims, hash) = split(vec![0..48]);
        let splits = &claims.splits;
        let (peer, other_peer) = ([1; 32], [2; 32]);
        splits.joined(1, peer);
        splits.joined(2, peer);
        splits.joined(3, other_peer);
        let start = Instant::now();
        let (fast, _) = lease(splits.take(hash, 1, start));
        let (_slow, _) = lease(splits.take(hash, 2, start));
        let (other, _) = lease(splits.take(hash, 3, start));
        fast.delivered();
        other.delivered();
        let later = start + Duration::from_secs(1);
        assert!(
            matches!(splits.take(hash, 1, later).0, Taken::Busy),
            "the same peer is not asked twice"
        );
        let (again, _) = lease(splits.take(hash, 3, later));
        assert_eq!(
            again.groups(),
            16..32,
            "another peer takes the slow lease again"
        );
        splits.left(1);
        assert_eq!(splits.sources_like(2), HashSet::from([2]));
    }

    #[test]
    fn a_failed_lease_leaves_its_groups_to_its_twin() {
        let (claims, hash) = split(vec![0..32]);
        let splits = &claims.splits;
        let start = Instant::now();
        let (fast, _) = lease(splits.take(hash, 1, start));
        let (slow, _) = lease(splits.take(hash, 2, start));
        fast.delivered();
        let (again, _) = lease(splits.take(hash, 1, start + Duration::from_secs(1)));
        drop(slow);
        assert!(!splits.has_free(&hash), "its twin still carries them");
        again.delivered();
        assert!(
            !claims.is_held(&hash),
            "delivered by the twin: the split ends"
        );
    }

    /// A lease taken again from a holder that went quiet midway asks only
    /// for what the holder's delivery had not handed the store; should the
    /// holder then fail, it gives back what it handed but the store did
    /// not write, and nothing its twin carries.
    #[test]
    fn a_lease_taken_again_skips_what_its_holder_handed_the_store() {
        let (claims, hash) = split(vec![0..32]);
        let splits = &claims.splits;
        let start = Instant::now();
        let (fast, _) = lease(splits.take(hash, 1, start));
        let (mut quiet, _) = lease(splits.take(hash, 2, start));
        quiet.arrival().handed(5);
        fast.delivered();
        let later = start + Duration::from_secs(1);
        let (again, _) = lease(splits.take(hash, 1, later));
        assert_eq!(again.groups(), 21..32, "groups 16..21 had arrived");
        // The quiet holder's store wrote only 3 of the 5 it was handed.
        quiet.written(3);
        drop(quiet);
        let (rest, _) = lease(splits.take(hash, 3, later));
        assert_eq!(rest.groups(), 19..21, "handed but not written");
        again.delivered();
        rest.delivered();
        assert!(!claims.is_held(&hash), "every group delivered");
    }

    /// A twin that delivered its groups first leaves the original's
    /// failure to give back only what neither wrote.
    #[test]
    fn a_quiet_holder_failing_after_its_twin_delivered_gives_back_the_gap() {
        let (claims, hash) = split(vec![0..48]);
        let splits = &claims.splits;
        // Session 3 shares session 1's source: its lease keeps the split
        // going, and is never session 1's to take again.
        splits.joined(1, [1; 32]);
        splits.joined(3, [1; 32]);
        splits.joined(2, [2; 32]);
        let start = Instant::now();
        let (quiet, _) = lease(splits.take(hash, 2, start));
        let (fast, _) = lease(splits.take(hash, 1, start));
        let (_same_source, _) = lease(splits.take(hash, 3, start));
        fast.delivered();
        quiet.arrival().handed(4);
        let later = start + Duration::from_secs(1);
        let (again, _) = lease(splits.take(hash, 1, later));
        assert_eq!(again.groups(), 4..16);
        again.delivered();
        assert!(claims.is_held(&hash), "the quiet lease is still out");
        drop(quiet);
        let (gap, _) = lease(splits.take(hash, 1, later));
        assert_eq!(gap.groups(), 0..4, "handed, never written, not carried");
        gap.delivered();
    }

    /// The original delivered after all: its twin's failure gives back
    /// nothing. A twin that fails first leaves the original to be taken
    /// again, from where its delivery has come to since.
    #[test]
    fn either_of_two_twins_may_end_first() {
        let (claims, hash) = split(vec![0..32]);
        let splits = &claims.splits;
        let start = Instant::now();
        let later = start + Duration::from_secs(1);
        let (fast, _) = lease(splits.take(hash, 1, start));
        let (slow, _) = lease(splits.take(hash, 2, start));
        fast.delivered();
        slow.arrival().handed(5);
        let (again, _) = lease(splits.take(hash, 1, later));
        assert_eq!(again.groups(), 21..32);
        drop(again);
        assert!(!splits.has_free(&hash), "the original still carries them");
        slow.arrival().handed(9);
        let (twice, _) = lease(splits.take(hash, 1, later));
        assert_eq!(twice.groups(), 25..32, "taken again from where it is now");
        slow.delivered();
        assert!(claims.is_held(&hash), "the twin is still out");
        drop(twice);
        assert!(!splits.has_free(&hash), "the original delivered them all");
        assert!(!claims.is_held(&hash), "no lease out: the split ends");
    }

    /// A lease whose every group has arrived is not worth taking again:
    /// its delivery is about to end, one way or the other.
    #[test]
    fn a_lease_whose_groups_all_arrived_is_not_taken_again() {
        let (claims, hash) = split(vec![0..32]);
        let splits = &claims.splits;
        let start = Instant::now();
        let (fast, _) = lease(splits.take(hash, 1, start));
        let (arrived, _) = lease(splits.take(hash, 2, start));
        fast.delivered();
        arrived.arrival().handed(16);
        let later = start + Duration::from_secs(1);
        assert!(matches!(splits.take(hash, 1, later).0, Taken::Busy));
        assert!(
            !splits.may_retake(&hash, 1),
            "nothing to wait for but its end"
        );
        arrived.delivered();
    }

    #[test]
    fn runs_given_back_merge_with_their_neighbours() {
        let mut free = vec![0..4, 10..12];
        give_back(&mut free, 4..10);
        assert_eq!(free, vec![0..12]);
        give_back(&mut free, 20..22);
        assert_eq!(free, vec![0..12, 20..22]);
    }
}
