//! Live sync: after a v2 session in which both sides asked for it
//! (the `live` feature of `HELLO`), the connection stays open and each side
//! offers its new local changes to the peer as they happen.
//!
//! The exchange on each offer's stream is specified, and checked, by the
//! state machines of [`crate::session::live`]; this module runs them:
//!
//! - [`scheduler`]: the outbound half: follows the store's change events,
//!   batches them, and keeps up to [`LiveConfig::offers_in_flight`] offers
//!   going;
//! - `backlog.rs`: what the outbound half remembers meanwhile, bounded by
//!   [`LiveConfig::backlog`], and where it reads again what it could not
//!   remember;
//! - [`offer`]: one offer, offerer side (the [`Offering`] machine and the
//!   engine's send pipeline on one bi-stream);
//! - [`answer`]: the inbound half: accepts the peer's offers and answers each
//!   (the [`Answering`] machine, node-wide claims, the receive pipeline);
//! - [`state`]: what is remembered of a peer between offers: [`PeerView`]
//!   (the node-wide [`Claims`] are the engine's, sessions take them too).
//!
//! A batch is one short-lived stream, so a slow large asset in one batch never
//! holds up the next.
//!
//! # Invariants
//!
//! - **No echo.** Per connection, a [`PeerView`] keeps the metadata version
//!   of each asset the peer is known to hold: it offered it, answered with it,
//!   or we sent it. A change is offered only when our version is newer than
//!   that, so what came from a peer is never offered back to it, and nothing
//!   is offered to it twice.
//!   The view starts with what the initial session received from the peer.
//!   It is bounded like the backlog ([`LiveConfig::peer_view_limit`],
//!   `--live-backlog` sets both, 16,384 assets by default), so it also keeps,
//!   as ranges,
//!   the numbers of the changes of our log that the peer's deliveries made
//!   (a bulk seed's pushes are one run): their events are skipped before
//!   they are queued, however many the peer sent.
//! - **About once in a mesh.** A receiver [claims](Claims) an asset node-wide
//!   before it wants it; while one peer delivers it, offers of it from other
//!   peers are declined. Sessions take the same claims for what they pull
//!   ([`crate::session::v2::pull`]), so a live offer and a session never
//!   bring one asset twice either.
//! - **Nothing missed.** The change stream is subscribed before the initial
//!   session lists the store, so every change after that listing is seen; when
//!   the stream fails, the loop resubscribes after the last sequence number it
//!   saw. Whatever an offer did not deliver — declined, refused by the peer,
//!   unreadable here, or the whole batch when the offer failed — is offered
//!   again at the next check; and every [`LiveConfig::check_interval`] the
//!   loop also offers whatever changed since the previous check (the first
//!   looks back to the end of the initial session), which costs the peer
//!   one declined offer when it already has everything.
//! - **No burst of any size skips an asset.** A link remembers at most
//!   [`LiveConfig::backlog`] changes: waiting, in offers on the wire, and to
//!   retry. It never forgets one to make room; what it has no room for stays
//!   where it can be read again, in order:
//!   - a change event it has no room for is not taken: the link stops
//!     reading events, and as offers free room it reads the store's change
//!     log ([`Can::changes`](crate::can::Can::changes)) after the last change
//!     it took, a page of at most the room left at a time; when the log has
//!     nothing more it subscribes again after the last change it read. The
//!     log is compacted (an asset's latest change only), so whatever changed
//!     in between is on a later page or in the new subscription;
//!   - the periodic check lists what changed since the previous one a page
//!     at a time, as room allows, and keeps its cursor across ticks: the
//!     next check starts only where a complete one started;
//!   - retries take at most half the backlog, so they never crowd out new
//!     changes; those past it are left to the next check, which then looks
//!     back to the oldest of them.
//!
//!   So memory per link is bounded by the backlog whatever the burst, and a
//!   full backlog costs a store read per page, never an asset.
//! - **A failure stays where it happened.** A receiver whose own store fails
//!   resets the stream with [`RESET_LOCAL_FAILURE`]: the offer fails and is
//!   retried, the connection stays. Only a peer that breaks the protocol gets
//!   the connection closed (`PROTOCOL_ERROR`).
//! - **Bounded.** An offer waits for its `SUMMARY` at most the idle timeout
//!   twice plus a second per MiB sent, so a hung peer frees the slot; an
//!   offer carries at most [`LiveConfig::max_batch`] assets, and at most its
//!   share of the backlog, so a small backlog still keeps every offer slot
//!   busy.
//!
//! [`Offering`]: crate::session::live::Offering
//! [`Answering`]: crate::session::live::Answering
//! [`RESET_LOCAL_FAILURE`]: crate::wire::RESET_LOCAL_FAILURE

use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::Connection;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::asset::{AssetHash, Summary};
use crate::can::{EventStream, SharedCan};
use crate::engine::{EngineConfig, EngineStats};
use crate::fault::Fault;
use crate::node::peers::Peers;
use crate::recon::compact;
use crate::session::SessionError;
use crate::wire::CLOSE_SHUTDOWN;

pub mod answer;
mod backlog;
pub mod offer;
pub mod scheduler;
pub mod state;

pub use crate::engine::claims::{Claim, Claims};
pub use state::PeerView;

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
    /// Most assets remembered per peer as held by it (see [`PeerView`]);
    /// the daemon sets it to the backlog.
    pub peer_view_limit: usize,
    /// Most changes one link remembers on their way to the peer: waiting,
    /// in offers on the wire, and to retry. Past it the link reads the
    /// store's change log instead of its events (see the module docs).
    pub backlog: usize,
}

/// The default [`LiveConfig::backlog`]: 16 full offers (4 in flight and 12
/// queued behind them), so a link that reads the change log never waits on
/// its own pages; a few MiB per link at most.
pub const DEFAULT_BACKLOG: usize = 1 << 14;

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            max_batch: 1024,
            offers_in_flight: 4,
            check_interval: Duration::from_secs(10),
            peer_view_limit: state::PEER_VIEW_LIMIT,
            backlog: DEFAULT_BACKLOG,
        }
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
    /// The node's refusals, where a live answer records future-stamped
    /// updates it refused.
    pub refusals: Arc<crate::node::refusals::Refusals>,
    /// What this peer holds.
    pub view: PeerView,
    /// The peer takes nothing from us (it grants us read only): we offer it
    /// nothing. (That we take nothing from it is `engine.read_only_peer`.)
    pub peer_takes_nothing: bool,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
    /// Where offers and answers register while they run, so a shutdown
    /// knows what it waits for.
    pub in_flight: Arc<crate::node::InFlight>,
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
    let outbound = async {
        if link.peer_takes_nothing {
            return Ok(());
        }
        scheduler::offer_changes(&link, events, since_ms).await
    };
    let (outbound, inbound) = tokio::join!(outbound, answer::answer_offers(&link));
    let result = outbound.and(inbound);
    if link.shutdown.is_cancelled() {
        link.conn.close(CLOSE_SHUTDOWN.into(), b"shutting down");
    }
    match &result {
        Ok(()) => info!(%peer, "live sync ended"),
        Err(err) => warn!(%peer, error = %err, "live sync failed"),
    }
    result
}

/// What an offer or an answer ending in `result` means for the connection:
/// `Err` ends live sync (after closing the connection if the peer broke the
/// protocol); anything else is logged and left to the periodic check.
fn settle(link: &Link, what: &str, result: Result<(), SessionError>) -> Result<(), SessionError> {
    match result {
        Ok(()) => Ok(()),
        Err(err) if err.is_protocol_violation() => {
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

/// Concurrent metadata lookups when building or answering an offer.
const LOOKUPS: usize = 16;

/// Our summaries of `hashes`, digests truncated as offers carry them; assets
/// the store no longer has are left out.
async fn our_summaries(can: &SharedCan, hashes: Vec<AssetHash>) -> Result<Vec<Summary>, Fault> {
    use futures::{StreamExt, TryStreamExt};
    let found: Vec<Option<Summary>> = futures::stream::iter(hashes)
        .map(|hash| async move {
            let meta = can.meta(hash).await?;
            Ok::<_, Fault>(meta.map(|(size, meta)| {
                Summary::of(hash, size, &meta).truncated(compact::DIGEST_PREFIX)
            }))
        })
        .buffered(LOOKUPS)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}
