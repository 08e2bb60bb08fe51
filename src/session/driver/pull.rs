//! The pulling side of a v2 session's driver ([`crate::session::v2::pull`]):
//! claiming what this node lacks node-wide (whole assets, or leases of a
//! large one split among sources), waiting for claims other sessions hold,
//! and the want streams the asks travel on. `v2.rs` dispatches the
//! requests; this file answers the pulling ones.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use tokio::sync::Notify;

use crate::asset::AssetHash;
use crate::can::store::ranges;
use crate::can::SharedCan;
use crate::engine::claims::{claim_lacking, lease_lacking, Claimed, Claims, Leased};
use crate::engine::send::RangesAsked;
use crate::engine::split;
use crate::session::v2::{pull, Answer, Claiming};
use crate::session::SessionError;
use crate::stream::{FrameReader, FrameWriter, StreamError};
use crate::wire::{Frame, FrameType};

/// What pulling needs here: the node's claims, the ones this session holds
/// (settled as their assets arrive), and the want streams.
pub(super) struct Pulling<'a> {
    pub(super) claims: &'a Arc<Claims>,
    /// How long a claim waits for room in the window at most.
    pub(super) idle: Duration,
    /// Our settled count when a wait for room last ran out.
    pub(super) stalled_at: Mutex<Option<u64>>,
    pub(super) claimed: Arc<Claimed>,
    pub(super) wants: Arc<WantStreams>,
    /// The groups of each lease taken and not yet asked for.
    pub(super) lease_asks: Mutex<HashMap<AssetHash, Range<u64>>>,
    /// The sizes of large assets claimed (a wait gives back hashes).
    pub(super) split_sizes: Mutex<HashMap<AssetHash, u64>>,
    /// This session may lease: it waits for leases given back too.
    pub(super) leases: AtomicBool,
}

/// A value one request puts and others take in turn: our want stream's
/// writer (put once opened after our data streams), the peer's reader.
pub(super) struct Slot<T> {
    pub(super) item: Mutex<Option<T>>,
    pub(super) filled: Notify,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            item: Mutex::new(None),
            filled: Notify::new(),
        }
    }
}

impl<T> Slot<T> {
    pub(super) fn put(&self, item: T) {
        *self.item.lock().expect("slot lock") = Some(item);
        self.filled.notify_waiters();
    }

    pub(super) async fn take(&self) -> T {
        loop {
            let filled = self.filled.notified();
            let mut filled = std::pin::pin!(filled);
            filled.as_mut().enable();
            if let Some(item) = self.item.lock().expect("slot lock").take() {
                return item;
            }
            filled.await;
        }
    }
}

/// The want streams of a session that pulls ([`crate::session::v2::pull`]).
#[derive(Default)]
pub(super) struct WantStreams {
    /// Ours, opened after our data streams.
    pub(super) ours: Slot<FrameWriter<SendStream>>,
    /// Filled once the peer's data streams are accepted: its want stream is
    /// the next.
    pub(super) data_accepted: Slot<()>,
    /// The peer's, once accepted.
    pub(super) theirs: Slot<FrameReader<RecvStream>>,
    pub(super) accepted: AtomicBool,
}

impl Pulling<'_> {
    /// `Claim`: takes what the store lacks of `assets` node-wide, within
    /// this session's window; large ones by leases when they split.
    pub(super) async fn claim(
        &self,
        can: &SharedCan,
        mut assets: Vec<(AssetHash, u64)>,
        split_above: Option<u64>,
    ) -> Answer {
        // A hash named twice, or one we already asked for, is ours:
        // waiting on our own claim would wait on ourselves.
        let mut seen = std::collections::HashSet::new();
        assets.retain(|(hash, _)| !self.claimed.holds(hash) && seen.insert(*hash));
        if assets.is_empty() {
            return Answer::Claimed(Ok(Claiming::default()));
        }
        // A split asset we waited for comes back without its size, and a
        // responder whose initiator sent no sizes knows what it lacks by
        // hash alone: one split now is leased by the size its split has.
        {
            let sizes = self.split_sizes.lock().expect("split sizes lock");
            for (hash, size) in assets.iter_mut().filter(|(_, size)| *size == 0) {
                *size = sizes
                    .get(hash)
                    .copied()
                    .or_else(|| self.claims.splits.size(hash))
                    .unwrap_or(0);
            }
        }
        // Large assets of more than a lease go by leases when the store
        // can take one asset from several deliveries: from several sources
        // at once, and from a lone source too, whose runs then travel on
        // several streams (one stream's 1 MiB window holds a lone large
        // asset below a queued path's rate) and which a source that
        // connects later can join. A store that uploads an asset as it
        // arrives in order takes a lone source's asset whole, in order.
        let several = self.claims.splits.several_pulling() || !can.uploads_in_order();
        self.leases.store(
            split_above.is_some() && can.keeps_partials(),
            Ordering::Relaxed,
        );
        let splits = |size: u64| {
            split_above.is_some_and(|limit| size > limit)
                && several
                && can.keeps_partials()
                && ranges::group_count(size) > split::LEASE_GROUPS
                && ranges::group_count(size) <= ranges::MAX_RANGED_GROUPS
        };
        // Room in our window first: a source takes more only as what it
        // was asked for arrives. An idle timeout at most, and no second
        // wait while nothing settled since the last one ran out: assets a
        // source never sends (it no longer holds them) must not stall
        // the session.
        let settled = self.claimed.settled();
        let stalled = *self.stalled_at.lock().expect("stall lock") == Some(settled);
        let room = self
            .claimed
            .until_room(pull::WINDOW_ASSETS, pull::WINDOW_BYTES);
        let waited = if stalled {
            Err(())
        } else {
            tokio::time::timeout(self.idle, room).await.map_err(|_| {
                *self.stalled_at.lock().expect("stall lock") = Some(settled);
            })
        };
        let fit = match waited {
            Ok(()) => self.claimed.fitting(
                assets.iter().map(|(_, size)| match splits(*size) {
                    true => (*size).min(split::LEASE_GROUPS * ranges::GROUP_BYTES),
                    false => *size,
                }),
                pull::WINDOW_ASSETS,
                pull::WINDOW_BYTES,
            ),
            // The window stayed full: the peer does not send what it was
            // asked for. Go on, a batch at a time.
            Err(_) => assets.len(),
        };
        let mut later = assets.split_off(fit.max(1).min(assets.len()));
        let (split_up, whole): (Vec<_>, Vec<_>) =
            assets.into_iter().partition(|(_, size)| splits(*size));
        let mut leased = Claiming::default();
        for &(hash, size) in &split_up {
            let taken = lease_lacking(self.claims, &self.claimed, can, hash, size).await;
            match taken {
                Ok(Leased::Ask { groups, more }) => {
                    self.lease_asks
                        .lock()
                        .expect("lease asks lock")
                        .insert(hash, groups);
                    leased.ask.push(hash);
                    if more {
                        // The next lease of it, once the window has room.
                        later.insert(0, (hash, size));
                    }
                }
                Ok(Leased::Busy) => leased.busy.push(hash),
                Ok(Leased::Drop) => {}
                Err(err) => return Answer::Claimed(Err(err)),
            }
        }
        let look = self.claimed.others_released(self.claims);
        {
            // A wait gives back hashes alone: keep the sizes of what
            // may come back, so that a large one can still be split.
            let mut sizes = self.split_sizes.lock().expect("split sizes lock");
            let large = |size: u64| split_above.is_some_and(|limit| size > limit);
            for (hash, size) in whole.iter().chain(&split_up) {
                if large(*size) {
                    sizes.insert(*hash, *size);
                }
            }
        }
        Answer::Claimed(
            claim_lacking(self.claims, can, whole, look)
                .await
                .map(|(claims, busy)| {
                    let mut ask = leased.ask;
                    ask.extend(claims.iter().map(|(claim, _)| claim.hash()));
                    self.claimed.hold(claims);
                    let mut waiting = leased.busy;
                    waiting.extend(busy);
                    Claiming {
                        ask,
                        busy: waiting,
                        later,
                    }
                }),
        )
    }

    /// `AwaitFree`: waits until one of `hashes`, claimed elsewhere, is free.
    pub(super) async fn await_free(&self, hashes: Vec<AssetHash>) -> Answer {
        let leases = self.leases.load(Ordering::Relaxed);
        let free = self.claims.until_free(&hashes, leases);
        let splits = &self.claims.splits;
        // Enabled before the look, so a grant in between wakes it.
        let granted = splits.granted();
        let mut granted = std::pin::pin!(granted);
        granted.as_mut().enable();
        let session = self.claimed.session();
        if hashes.iter().any(|hash| splits.may_retake(hash, session)) {
            // A lease another source's session holds may become worth
            // taking again as it ages: look again now and then.
            let _ = tokio::time::timeout(split::RECHECK, free).await;
        } else if hashes.iter().any(|hash| splits.is_split(hash)) {
            // Only our own source's leases are out: nothing to take
            // again until another source's session takes one.
            futures::future::select(std::pin::pin!(free), granted).await;
        } else {
            free.await;
        }
        Answer::Freed(hashes)
    }

    /// `Want`: asks the peer for `hashes` on our want stream, each by the
    /// groups it lacks when `resume`, a leased one by its lease's groups.
    pub(super) async fn want(
        &self,
        can: &SharedCan,
        hashes: Vec<AssetHash>,
        resume: bool,
    ) -> Answer {
        // What we hold in part is asked for by its missing groups; a
        // store that cannot say is asked for whole.
        let mut resume: Vec<RangesAsked> = if resume {
            match can.resume_points(&hashes).await {
                Ok(points) => points
                    .into_iter()
                    .map(|(hash, missing)| RangesAsked::new(hash, missing))
                    .collect(),
                Err(err) => {
                    tracing::warn!(%err, "could not read partial assets; asking for them whole");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        // A leased asset is asked for by its lease's groups alone, without
        // its outboard once an earlier lease brought it.
        {
            let mut leases = self.lease_asks.lock().expect("lease asks lock");
            if !leases.is_empty() {
                resume.retain(|asked| !leases.contains_key(&asked.hash));
                resume.extend(hashes.iter().filter_map(|hash| {
                    Some(RangesAsked {
                        hash: *hash,
                        groups: vec![leases.remove(hash)?],
                        outboard_held: self.claims.splits.holds_outboard(hash),
                    })
                }));
            }
        }
        let payload = Bytes::from(pull::want_payload(&hashes, &resume));
        Answer::Wanted(write_wants(&self.wants, FrameType::Want, payload, false).await)
    }
}

/// Writes one frame on our want stream (opened by `Send`), then, when it
/// is the `last`, ends the stream.
pub(super) async fn write_wants(
    wants: &WantStreams,
    frame_type: FrameType,
    payload: Bytes,
    last: bool,
) -> Result<(), SessionError> {
    let mut writer = wants.ours.take().await;
    let mut written = writer.send_payload(frame_type, payload).await;
    if last && written.is_ok() {
        written = writer.finish().await;
    }
    wants.ours.put(writer);
    Ok(written?)
}

/// The next frame of the peer's want stream, accepted (after its data
/// streams) on the first call. No deadline of its own: the peer may wait
/// long for deliveries from other peers before it asks. A dead peer is
/// found by the connection's idle timeout; a live one that never ends its
/// want stream holds this session as a live link holds its connection,
/// within the node's session slots.
pub(super) async fn read_want(
    conn: &Connection,
    wants: &WantStreams,
) -> Result<Option<Frame>, SessionError> {
    if !wants.accepted.swap(true, Ordering::Relaxed) {
        wants.data_accepted.take().await;
        let stream = conn.accept_uni().await.map_err(StreamError::from)?;
        wants
            .theirs
            .put(FrameReader::new(stream, pull::MAX_WANT_FRAME));
    }
    let mut reader = wants.theirs.take().await;
    let frame = reader.next().await;
    wants.theirs.put(reader);
    Ok(frame?)
}
