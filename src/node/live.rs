//! Live sync (DESIGN §6): after a v2 session in which both sides asked for it
//! (the `live` feature of `HELLO`), the connection stays open and each side
//! offers its new local changes to the peer as they happen.
//!
//! # Protocol
//!
//! Each batch of changes travels on its own bi-stream, opened by the side that
//! has them (the *offerer*):
//!
//! 1. offerer → `RECON{packed_summaries: the batch, done: false}`, in the
//!    compact encoding of the session's reconciliation;
//! 2. receiver → `RECON{packed_summaries, wants, done: true}`: its own
//!    summaries of the offered assets it already holds, and the raw 32-byte
//!    hashes of the offered assets it lacks and has now *claimed*;
//! 3. offerer → the wanted assets, and for assets both hold the metadata whose
//!    version wins on its side, exactly as the send pipeline writes a data
//!    stream (bundles, large assets in chunks, `META_UPDATE`, then `DONE`);
//! 4. receiver → `SUMMARY` once everything is pushed or rejected, then `DONE`.
//!
//! The receive pipeline verifies every asset as in a session; a batch is one
//! short-lived stream, so a slow large asset in one batch never holds up the
//! next (up to [`LiveConfig::offers_in_flight`] run at once each way).
//!
//! # Invariants
//!
//! - **No echo.** Per connection, a [`PeerView`] keeps the metadata version
//!   of each asset the peer is known to hold: it offered it, answered with it,
//!   or we sent it. A change is offered only when our version is newer than
//!   that, so what came from a peer is never offered back to it, and nothing
//!   is offered to it twice.
//!   The view starts with what the initial session received from the peer.
//! - **About once in a mesh.** A receiver [claims](Claims) an asset node-wide
//!   before it wants it; while one peer delivers it, offers of it from other
//!   peers are declined.
//! - **Nothing missed.** The change stream is subscribed before the initial
//!   session lists the store, so every change after that listing is seen; when
//!   the stream fails, the loop resubscribes after the last sequence number it
//!   saw. Whatever an offer did not deliver — declined, refused by the peer,
//!   unreadable here, or the whole batch when the offer failed — is offered
//!   again at the next check; and every [`LiveConfig::check_interval`] the
//!   loop also offers whatever changed since the previous check (the first
//!   looks back to the start of the initial session), which costs the peer
//!   one declined offer when it already has everything.
//! - **A failure stays where it happened.** A receiver whose own store fails
//!   resets the stream with
//!   [`RESET_LOCAL_FAILURE`](crate::session::RESET_LOCAL_FAILURE): the offer
//!   fails and is retried, the connection stays. Only a peer that breaks the
//!   protocol gets the connection closed (`PROTOCOL_ERROR`).
//! - **Bounded.** An offer waits for its `SUMMARY` at most the idle timeout
//!   twice plus a second per MiB sent, so a hung peer frees the slot; the
//!   backlog of changes has a cap past which the check's window covers them.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use iroh::endpoint::{Connection, RecvStream, SendStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::asset::{AssetHash, MetaVersion, Summary};
use crate::can::{EventStream, SharedCan};
use crate::clock::now_ms;
use crate::engine::send::SendPlan;
use crate::engine::{receive, send, EngineConfig, EngineStats};
use crate::node::peers::{Moved, Peers};
use crate::pb;
use crate::recon::{self, compact};
use crate::session::framed::{FrameReader, FrameWriter};
use crate::session::{self, v2, SessionError};
use crate::wire::FrameType;

/// Largest offer frame read: a full batch of compact summaries is far below.
const MAX_OFFER_FRAME: u32 = 16 * 1024 * 1024;

/// Most summaries accepted in one offer.
const MAX_OFFER_ENTRIES: u64 = 100_000;

/// How far back the periodic check looks beyond its previous run, so a change
/// stamped slightly out of order (another clock, a slow commit) is not missed.
const CHECK_OVERLAP_MS: i64 = 2_000;

/// Most changes remembered for offering before the loop drops them and lets
/// the periodic check (whose window covers them) find them again.
const MAX_PENDING: usize = 1 << 20;

/// Concurrent metadata lookups when building or answering an offer.
const LOOKUPS: usize = 16;

/// Knobs of live sync.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// How long changes gather into one offer after the first of them.
    pub linger: Duration,
    /// Most assets per offer.
    pub max_batch: usize,
    /// Offers in flight per connection, each way.
    pub offers_in_flight: usize,
    /// How often what changed recently is offered again, to close any gap.
    pub check_interval: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            max_batch: 1024,
            offers_in_flight: 4,
            check_interval: Duration::from_secs(10),
        }
    }
}

/// The assets this node is receiving right now, from any peer: what an offer
/// from a second peer declines.
#[derive(Debug, Default)]
pub struct Claims(Mutex<HashSet<AssetHash>>);

impl Claims {
    /// Claims `hash`, or `None` when another delivery holds it.
    pub fn try_claim(self: &Arc<Self>, hash: AssetHash) -> Option<Claim> {
        let fresh = self.0.lock().expect("claims lock").insert(hash);
        fresh.then(|| Claim {
            claims: self.clone(),
            hash,
        })
    }
}

/// A held claim; dropping it releases the asset for other deliveries.
#[derive(Debug)]
pub struct Claim {
    claims: Arc<Claims>,
    hash: AssetHash,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims
            .0
            .lock()
            .expect("claims lock")
            .remove(&self.hash);
    }
}

/// Most entries a [`PeerView`] keeps before it forgets everything: forgetting
/// costs at most a declined offer, never a missed change.
const PEER_VIEW_LIMIT: usize = 1 << 18;

/// What one peer is known to hold: asset → the newest metadata version seen
/// on its side (digests truncated as offers carry them).
#[derive(Debug, Default)]
pub struct PeerView(Mutex<HashMap<AssetHash, MetaVersion>>);

impl PeerView {
    /// The peer holds `hash` at `version` (or newer).
    pub fn record(&self, hash: AssetHash, version: MetaVersion) {
        let mut known = self.0.lock().expect("peer view lock");
        if known.len() >= PEER_VIEW_LIMIT && !known.contains_key(&hash) {
            known.clear();
        }
        let entry = known.entry(hash).or_insert(version);
        *entry = (*entry).max(version);
    }

    /// True when the peer already holds `hash` at `version` or newer.
    pub fn holds(&self, hash: &AssetHash, version: MetaVersion) -> bool {
        self.0
            .lock()
            .expect("peer view lock")
            .get(hash)
            .is_some_and(|known| *known >= version)
    }
}

/// Everything one live connection needs.
pub struct Link {
    /// The connection, after its initial session.
    pub conn: Connection,
    /// The local store.
    pub can: SharedCan,
    /// The settings the session negotiated.
    pub engine: Arc<EngineConfig>,
    /// The node's counters.
    pub stats: Arc<EngineStats>,
    /// Live sync knobs.
    pub config: Arc<LiveConfig>,
    /// The node-wide claims.
    pub claims: Arc<Claims>,
    /// The node's peer records, where this link reports what it moves.
    pub peers: Arc<Peers>,
    /// What this peer holds.
    pub view: PeerView,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
}

/// Runs live sync on `link` until the connection ends or the node shuts down.
///
/// `events` must have been subscribed before the initial session listed the
/// store. Returns `Ok` when the peer closed the connection cleanly or we shut
/// down; an error when the connection broke or the peer broke the protocol
/// (then the connection is closed with a code saying so).
pub async fn run(link: Arc<Link>, events: EventStream, since_ms: i64) -> Result<(), SessionError> {
    let peer = link.conn.remote_id().fmt_short();
    info!(%peer, "live sync started");
    let (outbound, inbound) =
        tokio::join!(offer_changes(&link, events, since_ms), answer_offers(&link));
    let result = outbound.and(inbound);
    if link.shutdown.is_cancelled() {
        link.conn
            .close(session::CLOSE_SHUTDOWN.into(), b"shutting down");
    }
    match &result {
        Ok(()) => info!(%peer, "live sync ended"),
        Err(err) => warn!(%peer, error = %err, "live sync failed"),
    }
    result
}

/// What an offer or an answer ending in `result` means for the connection:
/// `Err` ends live sync (after closing the connection if the peer is at
/// fault); anything else is logged and left to the periodic check.
fn settle(link: &Link, what: &str, result: Result<(), SessionError>) -> Result<(), SessionError> {
    match result {
        Ok(()) => Ok(()),
        Err(err) if err.is_peer_fault() => {
            super::close_with_error(&link.conn, &err);
            Err(err)
        }
        // The link ends; the loops see the connection close.
        Err(err) if err.is_clean_close() => Ok(()),
        Err(err) if link.conn.close_reason().is_some() => Err(err),
        Err(err) => {
            warn!(peer = %link.conn.remote_id().fmt_short(), error = %err,
                  "live {what} failed; the periodic check will retry");
            Ok(())
        }
    }
}

/// A finished offer: its batch, and what it left undelivered (or why it failed).
type OfferDone = (Vec<AssetHash>, Result<Vec<AssetHash>, SessionError>);

/// The outbound half: local changes, batched, offered to the peer.
async fn offer_changes(
    link: &Arc<Link>,
    mut events: EventStream,
    since_ms: i64,
) -> Result<(), SessionError> {
    let config = link.config.clone();
    let mut pending = Backlog::default();
    // What an offer did not deliver: offered again at the next check.
    let mut retry: BTreeSet<AssetHash> = BTreeSet::new();
    let mut flush_at: Option<Instant> = None;
    let mut last_seq: Option<u64> = None;
    let mut last_check = since_ms;
    // Change time (the store's clock) of the oldest event still in `pending`.
    let mut oldest_pending: Option<i64> = None;
    let mut check = tokio::time::interval(config.check_interval);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await; // the first tick is immediate; the session just ran
    let mut offers: JoinSet<OfferDone> = JoinSet::new();
    let mut outcome = Ok(());

    let peer = link.conn.remote_id();
    loop {
        link.peers.set_backlog(peer, pending.len() as u64);
        let room = offers.len() < config.offers_in_flight.max(1);
        let deadline = flush_at.filter(|_| room);
        let flush = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = link.shutdown.cancelled() => break,
            _ = link.conn.closed() => break,
            Some(done) = offers.join_next(), if !offers.is_empty() => {
                let (batch, result) = match done {
                    Ok(done) => done,
                    Err(err) => {
                        // A bug of ours; its batch waits for the next check's window.
                        warn!(error = %err, "live offer task failed");
                        continue;
                    }
                };
                match result {
                    Ok(undelivered) => retry.extend(undelivered),
                    Err(err) => {
                        retry.extend(batch);
                        if let Err(err) = settle(link, "offer", Err(err)) {
                            outcome = Err(err);
                            break;
                        }
                    }
                }
            }
            () = flush => {
                let batch: Vec<AssetHash> = pending.take(config.max_batch);
                if pending.is_empty() {
                    oldest_pending = None;
                }
                flush_at = (!pending.is_empty()).then(Instant::now);
                let link = link.clone();
                offers.spawn(async move {
                    let result = offer(&link, batch.clone()).await;
                    (batch, result)
                });
            }
            event = events.next() => match event {
                Some(Ok(event)) => {
                    last_seq = Some(event.seq);
                    pending.insert(event.hash);
                    oldest_pending = Some(oldest_pending.map_or(event.ts, |t: i64| t.min(event.ts)));
                    if pending.len() > MAX_PENDING {
                        // The peer cannot keep up: stop remembering hashes one
                        // by one; a check that looks back to the oldest of
                        // them finds every one again.
                        warn!(pending = pending.len(), "live backlog over its cap; leaving it to the check");
                        pending.clear();
                        last_check = last_check.min(oldest_pending.take().unwrap_or(last_check));
                        check.reset_immediately();
                    }
                    if flush_at.is_none() {
                        flush_at = Some(Instant::now() + config.linger);
                    }
                    if pending.len() >= config.max_batch {
                        flush_at = Some(Instant::now());
                    }
                }
                failed => {
                    let reason = match failed {
                        Some(Err(err)) => err.to_string(),
                        _ => "the change stream ended".into(),
                    };
                    warn!(error = %reason, after = ?last_seq, "change stream lost; resubscribing");
                    match resubscribe(link, last_seq).await {
                        Some(resumed) => events = resumed,
                        None => break,
                    }
                    // Whatever the replay cannot give back, the check finds.
                    check.reset_immediately();
                }
            },
            _ = check.tick() => {
                pending.extend(std::mem::take(&mut retry));
                let started = now_ms();
                match link.can.list(Some(last_check - CHECK_OVERLAP_MS)).await {
                    Ok(changed) => {
                        debug!(changed = changed.len(), "periodic live check");
                        pending.extend(changed.iter().map(|s| s.hash));
                        last_check = started;
                        if !pending.is_empty() && flush_at.is_none() {
                            flush_at = Some(Instant::now());
                        }
                    }
                    Err(err) => warn!(error = %err, "periodic live check failed; will retry"),
                }
            }
        }
    }
    // Offers already on the wire finish (or fail with the connection).
    while let Some(done) = offers.join_next().await {
        if let Ok((_, Err(err))) = done {
            debug!(error = %err, "offer ended with the link");
        }
    }
    outcome
}

/// Changes waiting to be offered, in arrival order, each once: under load
/// the oldest go first, so no asset waits behind a stream of newer ones.
#[derive(Debug, Default)]
struct Backlog {
    order: VecDeque<AssetHash>,
    members: HashSet<AssetHash>,
}

impl Backlog {
    fn insert(&mut self, hash: AssetHash) {
        if self.members.insert(hash) {
            self.order.push_back(hash);
        }
    }

    fn extend(&mut self, hashes: impl IntoIterator<Item = AssetHash>) {
        for hash in hashes {
            self.insert(hash);
        }
    }

    /// Up to `max` of the oldest hashes.
    fn take(&mut self, max: usize) -> Vec<AssetHash> {
        let batch: Vec<AssetHash> = self.order.drain(..self.order.len().min(max)).collect();
        for hash in &batch {
            self.members.remove(hash);
        }
        batch
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn clear(&mut self) {
        self.order.clear();
        self.members.clear();
    }
}

/// Subscribes again after `last_seq`, retrying with backoff while the store is
/// down; `None` when the link ends first.
async fn resubscribe(link: &Link, last_seq: Option<u64>) -> Option<EventStream> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match link.can.subscribe(last_seq).await {
            Ok(events) => return Some(events),
            Err(err) => warn!(error = %err, retry_in = ?backoff, "resubscribing failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = link.shutdown.cancelled() => return None,
            _ = link.conn.closed() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Our summaries of `hashes`, digests truncated as offers carry them; assets
/// the store no longer has are left out.
async fn our_summaries(
    can: &SharedCan,
    hashes: Vec<AssetHash>,
) -> Result<Vec<Summary>, SessionError> {
    let found: Vec<Option<Summary>> = futures::stream::iter(hashes)
        .map(|hash| async move {
            let meta = can.meta(hash).await?;
            Ok::<_, SessionError>(meta.map(|(size, meta)| {
                Summary::of(hash, size, &meta).truncated(compact::DIGEST_PREFIX)
            }))
        })
        .buffered(LOOKUPS)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// Offers one batch to the peer and sends what it wants (steps 1–4 of the
/// module docs, offerer side). Returns what was offered but not delivered:
/// declined while another peer delivers it, refused by the peer, or not
/// readable here.
async fn offer(link: &Link, hashes: Vec<AssetHash>) -> Result<Vec<AssetHash>, SessionError> {
    let mut batch = our_summaries(&link.can, hashes).await?;
    batch.retain(|s| !link.view.holds(&s.hash, s.version));
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let idle = Some(link.engine.idle_timeout);
    let (send_half, recv_half) = link.conn.open_bi().await?;
    let mut out = FrameWriter::new(send_half);
    let mut input = FrameReader::new(recv_half, MAX_OFFER_FRAME);
    let offered = pb::Recon {
        packed_summaries: compact::encode(&batch, link.engine.zstd_level).into(),
        wants: Default::default(),
        done: false,
    };
    out.send_msg(FrameType::Recon, &offered).await?;

    let reply: pb::Recon = v2::expect(&mut input, FrameType::Recon, "Recon", idle).await?;
    let theirs = compact::decode(&reply.packed_summaries, batch.len() as u64)
        .map_err(|err| SessionError::Protocol(format!("live reply summaries: {err}")))?;
    for summary in &theirs {
        link.view.record(summary.hash, summary.version);
    }
    let sizes: HashMap<AssetHash, u64> = batch.iter().map(|s| (s.hash, s.size)).collect();
    let wants = parse_wants(&reply.wants)?;
    let held: HashSet<AssetHash> = theirs.iter().map(|s| s.hash).collect();
    let mut declined: HashSet<AssetHash> = sizes.keys().copied().collect();
    for hash in wants.iter().chain(&held) {
        declined.remove(hash);
    }
    let plan = SendPlan {
        assets: wants
            .into_iter()
            .map(|hash| match sizes.get(&hash) {
                Some(size) => Ok((hash, *size)),
                None => Err(SessionError::Protocol(format!(
                    "peer wants {hash}, which was not offered"
                ))),
            })
            .collect::<Result<_, _>>()?,
        meta: recon::diff(&batch, &theirs).meta_to_send,
    };
    let took: HashSet<AssetHash> = plan
        .assets
        .iter()
        .map(|(hash, _)| *hash)
        .chain(plan.meta.iter().copied())
        .collect();

    let sent = send::run(
        vec![out],
        link.can.clone(),
        plan,
        link.engine.clone(),
        link.stats.clone(),
    )
    .await?;
    // The peer answers once everything is pushed: allow the idle timeout
    // plus a second per MiB sent, so a hung peer frees the offer slot.
    let patience = link.engine.idle_timeout * 2 + Duration::from_secs(sent.bytes >> 20);
    let summary = tokio::time::timeout(patience, v2::read_summary(&mut input))
        .await
        .map_err(|_| SessionError::Timeout(patience))??;
    // The peer now holds what it took, except what failed on either side.
    let failed: HashSet<AssetHash> = sent
        .failed
        .into_iter()
        .chain(v2::peer_refusals(summary))
        .filter_map(|r| r.hash.parse().ok())
        .collect();
    link.peers.moved(
        link.conn.remote_id(),
        Moved {
            assets_sent: sent.assets,
            bytes_sent: sent.bytes,
            rejects: failed.len() as u64,
            ..Moved::default()
        },
    );
    for summary in &batch {
        if took.contains(&summary.hash) && !failed.contains(&summary.hash) {
            link.view.record(summary.hash, summary.version);
        }
    }
    Ok(declined.into_iter().chain(failed).collect())
}

/// The raw 32-byte hashes of a `wants` field, each at most once.
fn parse_wants(wants: &[u8]) -> Result<Vec<AssetHash>, SessionError> {
    if !wants.len().is_multiple_of(32) {
        return Err(SessionError::Protocol(format!(
            "wants field of {} bytes is not a list of 32-byte hashes",
            wants.len()
        )));
    }
    let hashes: Vec<AssetHash> = wants
        .chunks_exact(32)
        .map(|raw| AssetHash::from_bytes(raw.try_into().expect("32-byte chunk")))
        .collect();
    let distinct: HashSet<&AssetHash> = hashes.iter().collect();
    if distinct.len() != hashes.len() {
        return Err(SessionError::Protocol(
            "wants field names a hash twice".into(),
        ));
    }
    Ok(hashes)
}

/// The inbound half: accepts the peer's offers and answers each on its own task.
async fn answer_offers(link: &Arc<Link>) -> Result<(), SessionError> {
    let slots = Arc::new(Semaphore::new(link.config.offers_in_flight.max(1)));
    let mut answers: JoinSet<Result<(), SessionError>> = JoinSet::new();
    let mut outcome = Ok(());
    loop {
        let accepted = tokio::select! {
            biased;
            _ = link.shutdown.cancelled() => break,
            Some(done) = answers.join_next(), if !answers.is_empty() => {
                let result = done.unwrap_or_else(|err| {
                    Err(SessionError::Protocol(format!("answer task failed: {err}")))
                });
                if let Err(err) = settle(link, "answer", result) {
                    outcome = Err(err);
                    break;
                }
                continue;
            }
            accepted = async {
                let permit = slots.clone().acquire_owned().await.expect("semaphore open");
                (permit, link.conn.accept_bi().await)
            } => accepted,
        };
        match accepted {
            (permit, Ok((send_half, recv_half))) => {
                let link = link.clone();
                answers.spawn(async move {
                    let _slot = permit;
                    answer(&link, send_half, recv_half).await
                });
            }
            (_, Err(err)) => {
                let err = SessionError::from(err);
                if !err.is_clean_close() {
                    outcome = Err(err);
                }
                break;
            }
        }
    }
    // Pushes in flight finish before the connection is closed.
    while let Some(done) = answers.join_next().await {
        if let Ok(Err(err)) = done {
            debug!(error = %err, "answer ended with the link");
        }
    }
    outcome
}

/// Answers one offer (steps 1–4 of the module docs, receiver side). When our
/// own side fails, the stream is reset with
/// [`RESET_LOCAL_FAILURE`](session::RESET_LOCAL_FAILURE) so the offerer
/// retries instead of taking a short stream for a broken peer.
async fn answer(
    link: &Link,
    send_half: SendStream,
    recv_half: RecvStream,
) -> Result<(), SessionError> {
    let input = FrameReader::new(recv_half, MAX_OFFER_FRAME);
    let mut out = FrameWriter::new(send_half);
    let result = answer_on(link, input, &mut out).await;
    if let Err(err) = &result {
        if !err.is_peer_fault() {
            out.reset(session::RESET_LOCAL_FAILURE);
        }
    }
    result
}

async fn answer_on(
    link: &Link,
    mut input: FrameReader,
    out: &mut FrameWriter,
) -> Result<(), SessionError> {
    let offer: pb::Recon = v2::expect(
        &mut input,
        FrameType::Recon,
        "Recon",
        Some(link.engine.idle_timeout),
    )
    .await?;
    let offered = compact::decode(&offer.packed_summaries, MAX_OFFER_ENTRIES)
        .map_err(|err| SessionError::Protocol(format!("live offer: {err}")))?;

    // Claim first, then look: an asset that lands between the two is seen.
    let mut claims = Vec::new();
    let mut candidates = Vec::new();
    for summary in &offered {
        let hash = summary.hash;
        link.view.record(hash, summary.version);
        match link.claims.try_claim(hash) {
            Some(claim) => {
                claims.push(claim);
                candidates.push(hash);
            }
            None => debug!(%hash, "offered while another peer delivers it; declined"),
        }
    }
    let ours = our_summaries(&link.can, candidates).await?;
    let held: HashSet<AssetHash> = ours.iter().map(|s| s.hash).collect();
    claims.retain(|claim| !held.contains(&claim.hash));
    let wants: Vec<u8> = claims
        .iter()
        .flat_map(|claim| *claim.hash.as_bytes())
        .collect();
    let reply = pb::Recon {
        packed_summaries: compact::encode(&ours, link.engine.zstd_level).into(),
        wants: wants.into(),
        done: true,
    };
    out.send_msg(FrameType::Recon, &reply).await?;

    // From here the stream carries data frames, bounded like a session's.
    input.set_max_len(link.engine.max_frame_len());
    let readers = futures::stream::iter([Ok(input)]);
    let outcome = receive::run(
        readers,
        link.can.clone(),
        link.engine.clone(),
        link.stats.clone(),
    )
    .await?;
    // Everything wanted is stored (or rejected): other peers may offer again.
    drop(claims);
    link.peers.moved(
        link.conn.remote_id(),
        Moved {
            assets_received: outcome.assets,
            bytes_received: outcome.bytes,
            duplicates: outcome.duplicates,
            rejects: outcome.rejected.len() as u64,
            ..Moved::default()
        },
    );
    v2::send_summary(out, &outcome).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(at: i64) -> MetaVersion {
        MetaVersion {
            updated_at_ms: at,
            digest: [0; 32],
        }
    }

    #[test]
    fn a_claim_excludes_others_until_dropped() {
        let claims = Arc::new(Claims::default());
        let hash = AssetHash::of(b"x");
        let first = claims.try_claim(hash).expect("free");
        assert!(claims.try_claim(hash).is_none());
        drop(first);
        assert!(claims.try_claim(hash).is_some());
    }

    #[test]
    fn the_peer_view_suppresses_what_the_peer_holds_and_only_that() {
        let view = PeerView::default();
        let hash = AssetHash::of(b"x");
        assert!(!view.holds(&hash, version(1)));
        view.record(hash, version(5));
        assert!(view.holds(&hash, version(5)));
        assert!(view.holds(&hash, version(4)));
        assert!(!view.holds(&hash, version(6)), "a newer edit must still go");
        view.record(hash, version(3));
        assert!(
            view.holds(&hash, version(5)),
            "an older record never lowers it"
        );
    }

    #[test]
    fn the_backlog_gives_the_oldest_first_and_holds_each_hash_once() {
        let mut pending = Backlog::default();
        let hashes: Vec<AssetHash> = (0u8..10).map(|i| AssetHash::of(&[i])).collect();
        pending.extend(hashes.iter().copied());
        pending.insert(hashes[0]); // already waiting: not queued twice
        let batch = pending.take(4);
        assert_eq!(batch, hashes[..4], "oldest first");
        assert_eq!(batch.len(), 4);
        assert_eq!(pending.len(), 6);
        assert!(batch.iter().all(|h| !pending.members.contains(h)));
        pending.insert(hashes[0]);
        assert_eq!(pending.len(), 7, "a taken hash can wait again");
    }

    #[test]
    fn wants_must_be_whole_distinct_hashes() {
        let two: Vec<u8> = [[7u8; 32], [8u8; 32]].concat();
        assert_eq!(parse_wants(&two).unwrap().len(), 2);
        assert!(matches!(
            parse_wants(&[7; 64]),
            Err(SessionError::Protocol(_))
        ));
        assert!(matches!(
            parse_wants(&[7; 33]),
            Err(SessionError::Protocol(_))
        ));
    }
}
