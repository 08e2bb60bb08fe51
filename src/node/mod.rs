//! A node: an iroh endpoint plus a store, that runs sessions with peers.
//!
//! - [`keys`]: the persistent secret key of `--data-dir`;
//! - [`ticket`]: what peers dial;
//! - [`access`]: who may connect and with which right, decided right after
//!   the handshake;
//! - [`endpoint`]: binding, transport tuning, the access gate;
//! - `accept`: the incoming side: handshake, admission, slots, sessions;
//! - `handshakes`: the budget of incoming handshakes in progress, in all and
//!   per source address;
//! - [`live`]: live sync on a connection after its session;
//! - [`peers`]: what the node knows of each peer;
//! - [`supervisor`]: the daemon's dialling of its configured peers, with
//!   backoff; [`status`] and [`metrics`]: its `/status` and `/metrics`;
//! - [`Node`]: dial a peer and run a session; accept peers and serve sessions;
//!   with live sync on, keep each v2 connection and follow the peer live.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use iroh::endpoint::{ConnectOptions, Connection, ConnectionError};
use iroh::{Endpoint, EndpointId};
use tokio_util::sync::CancellationToken;

use crate::can::{EventStream, SharedCan};
use crate::engine::{EngineConfig, EngineStats};
use crate::fault::Fault;
use crate::session::driver;
use crate::session::driver::v2::Opening;
use crate::session::{v1, Role, SessionError, SessionReport, ALPN_V1, ALPN_V2};
use crate::wire::{CLOSE_NOT_ALLOWED, CLOSE_PROTOCOL_ERROR, CLOSE_SHUTDOWN};

mod accept;
pub mod access;
pub mod congestion;
pub mod endpoint;
mod handshakes;
pub mod in_flight;
pub mod keys;
pub mod live;
pub mod metrics;
pub mod page;
pub mod peers;
pub mod refusals;
pub mod status;
pub mod supervisor;
pub mod throughput;
pub mod ticket;

pub use accept::{ConnectionLimits, HANDSHAKE_TIMEOUT, HELLO_TIMEOUT};
pub use access::{Access, Admission, Right};
pub use endpoint::{bind, Congestion, EndpointOptions};
pub use in_flight::{InFlight, Work, WorkKind};
pub use live::LiveConfig;
pub use ticket::Ticket;

/// Which protocol a dialer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The original protocol, `can-sync/1`, only.
    V1,
    /// The pipelined protocol, `can-sync/2`, falling back to `/1` when the
    /// peer lacks it.
    V2,
}

/// Why a sync with a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The peer could not be reached or refused us.
    #[error("connecting to {peer}: {reason}")]
    Connect {
        /// Who we dialled.
        peer: String,
        /// What iroh said.
        reason: String,
    },
    /// The peer does not admit this node ([`access`]): it closed the
    /// connection with [`CLOSE_NOT_ALLOWED`] right after the handshake.
    #[error("{peer} refused this node: {reason}")]
    Refused {
        /// Who we dialled.
        peer: String,
        /// The reason it gave: how to be admitted.
        reason: String,
    },
    /// The session broke.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// A node: its endpoint and its store.
#[derive(Clone)]
pub struct Node {
    endpoint: Endpoint,
    can: SharedCan,
    v1: Arc<v1::V1Config>,
    engine: Arc<EngineConfig>,
    stats: Arc<EngineStats>,
    live: Option<Arc<LiveConfig>>,
    claims: Arc<live::Claims>,
    shutdown: CancellationToken,
    live_links: Arc<AtomicU64>,
    sessions: Arc<AtomicU64>,
    peers: Arc<peers::Peers>,
    limits: ConnectionLimits,
    /// The rights of the peers that connect (the endpoint's gate admits
    /// them; this says what each may do).
    access: Arc<Access>,
    /// The work that grows with the whole store, one at a time node-wide.
    whole_store: driver::WholeStoreBudget,
    /// Connections being served, by peer.
    serving: Arc<Mutex<HashMap<EndpointId, usize>>>,
    /// The sessions, offers and answers under way: what a shutdown waits for.
    in_flight: Arc<InFlight>,
    /// Payload rates of the last minutes, once [`Self::sample_throughput`]
    /// runs.
    throughput: Arc<throughput::Throughput>,
}

impl Node {
    /// A node over a bound endpoint and a store.
    pub fn new(endpoint: Endpoint, can: SharedCan) -> Self {
        Self {
            endpoint,
            can,
            v1: Arc::new(v1::V1Config::default()),
            engine: Arc::new(EngineConfig::default()),
            stats: Arc::default(),
            live: None,
            claims: Arc::default(),
            shutdown: CancellationToken::new(),
            live_links: Arc::default(),
            sessions: Arc::default(),
            peers: Arc::default(),
            limits: ConnectionLimits::default(),
            access: Arc::new(Access::open(Right::Write)),
            whole_store: driver::WholeStoreBudget::default(),
            serving: Arc::default(),
            in_flight: Arc::default(),
            throughput: Arc::default(),
        }
    }

    /// The same node giving the peers that connect the rights `access`
    /// names: the same access its endpoint was bound with
    /// ([`EndpointOptions::access`]). Without it, every peer the endpoint
    /// admits may write.
    pub fn with_access(mut self, access: Arc<Access>) -> Self {
        self.access = access;
        self
    }

    /// The same node with other limits on the connections it serves.
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The same node doing live sync: v2 connections stay open after their
    /// session and carry each new local change to the peer.
    pub fn with_live(mut self, config: LiveConfig) -> Self {
        self.live = Some(Arc::new(config));
        self
    }

    /// Starts a graceful shutdown: no new offers or sessions; live links let
    /// what is in flight finish, then close with
    /// [`CLOSE_SHUTDOWN`].
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// The sessions, live offers and live answers under way.
    pub fn in_flight(&self) -> &Arc<InFlight> {
        &self.in_flight
    }

    /// True once [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Resolves once [`shutdown`](Self::shutdown) was called.
    pub async fn shutting_down(&self) {
        self.shutdown.cancelled().await
    }

    /// The same node with other engine knobs (for v2 sessions).
    pub fn with_engine_config(mut self, config: EngineConfig) -> Self {
        self.engine = Arc::new(config);
        self
    }

    /// The same node with other v1 knobs.
    pub fn with_v1_config(mut self, config: v1::V1Config) -> Self {
        self.v1 = Arc::new(config);
        self
    }

    /// Counters of this node's sessions, both protocols.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// What the node does now, beside the engine counters.
    pub fn gauges(&self) -> metrics::NodeGauges {
        metrics::NodeGauges {
            live_links: self.live_links.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            // The store's, filled in where it is asked (`/metrics`).
            ..Default::default()
        }
    }

    /// Every peer this node has dialled or accepted, and how it is doing.
    pub fn peers(&self) -> &Arc<peers::Peers> {
        &self.peers
    }

    /// Whom this node refused: strangers, capabilities, future stamps.
    pub fn refusals(&self) -> &Arc<refusals::Refusals> {
        self.access.refusals()
    }

    /// Who may connect, and with which right.
    pub fn access(&self) -> &Arc<Access> {
        &self.access
    }

    /// The payload rates of the last minutes (empty until
    /// [`Self::sample_throughput`] runs).
    pub fn throughput(&self) -> &Arc<throughput::Throughput> {
        &self.throughput
    }

    /// Samples the payload counters into [`Self::throughput`] until the
    /// node shuts down: what the daemon runs for its page.
    pub fn sample_throughput(&self) -> tokio::task::JoinHandle<()> {
        let (throughput, stats) = (self.throughput.clone(), self.stats.clone());
        tokio::spawn(throughput.run(stats, self.shutdown.clone()))
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The store.
    pub fn can(&self) -> &SharedCan {
        &self.can
    }

    /// This node's ticket.
    pub fn ticket(&self) -> Ticket {
        endpoint::ticket(&self.endpoint)
    }

    /// Dials `peer` and runs one session in both directions.
    ///
    /// With live sync on and a v2 peer that does it too, then follows the
    /// peer live, returning the initial session's report only when the
    /// connection ends (cleanly: `Ok`).
    pub async fn sync_with(
        &self,
        peer: &Ticket,
        protocol: Protocol,
    ) -> Result<SessionReport, SyncError> {
        let (alpn, fallback) = match protocol {
            Protocol::V1 => (ALPN_V1, Vec::new()),
            Protocol::V2 => (ALPN_V2, vec![ALPN_V1.to_vec()]),
        };
        let options = ConnectOptions::new().with_additional_alpns(fallback);
        let connect = async {
            self.endpoint
                .connect_with_opts(peer.endpoint_addr(), alpn, options)
                .await
                .map_err(|err| err.to_string())?
                .await
                .map_err(|err| err.to_string())
        };
        self.peers.set_state(peer.id, peers::PeerState::Connecting);
        let conn = connect.await.map_err(|reason: String| {
            self.peers.failed(peer.id, &reason);
            SyncError::Connect {
                peer: peer.id.fmt_short().to_string(),
                reason,
            }
        })?;
        // We chose whom to dial: what it sends us is taken. A granted
        // ticket's capability goes in our HELLO.
        let opening = Opening::Fresh {
            capability: peer
                .capability
                .as_ref()
                .map(|capability| Bytes::copy_from_slice(capability.as_bytes()))
                .unwrap_or_default(),
        };
        let result = self
            .session_then_live(&conn, Role::Initiator, Right::Write, opening)
            .await;
        if let Err(err) = &result {
            if let Some(ConnectionError::ApplicationClosed(close)) = conn.close_reason() {
                if close.error_code == CLOSE_NOT_ALLOWED.into() {
                    return Err(SyncError::Refused {
                        peer: peer.id.fmt_short().to_string(),
                        reason: String::from_utf8_lossy(&close.reason).into_owned(),
                    });
                }
            }
            close_with_error(&conn, err);
        }
        Ok(result?)
    }

    /// Runs the session of `conn`, then live sync when both sides asked for
    /// it, keeping the peer's record up to date. The peer has `right`.
    async fn session_then_live(
        &self,
        conn: &Connection,
        role: Role,
        right: Right,
        opening: Opening,
    ) -> Result<SessionReport, SessionError> {
        let peer = conn.remote_id();
        self.peers.set_state(peer, peers::PeerState::Syncing);
        let _counted = self.peers.connected(conn);
        let result = self
            .session_then_live_inner(conn, role, Terms::of(self, right), opening)
            .await;
        match &result {
            Ok(_) => self.peers.set_state(peer, peers::PeerState::Disconnected),
            Err(err) => self.peers.failed(peer, &err.to_string()),
        }
        result
    }

    async fn session_then_live_inner(
        &self,
        conn: &Connection,
        role: Role,
        terms: Terms,
        opening: Opening,
    ) -> Result<SessionReport, SessionError> {
        // Subscribed before the session lists the store: no change falls
        // between the listing and the live phase.
        let events = match &self.live {
            Some(_) if conn.alpn() == ALPN_V2 => {
                Some(terms.can.subscribe(None).await.map_err(Fault::Store)?)
            }
            _ => None,
        };
        let session = self.in_flight.begin(conn.remote_id(), WorkKind::Session);
        let report = self
            .run_session(conn, role, &terms, opening, events.is_some())
            .await?;
        drop(session);
        // The event stream, opened before the session, carries every change
        // the session made or saw (a lagging subscriber re-reads the log, an
        // HTTP one resumes after its last event), skipping those the peer
        // caused; the first gap check looks back from here only, or it would
        // list everything the session received and offer it back.
        let session_ended_ms = crate::clock::now_ms();
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.peers.session(conn.remote_id(), &report);
        self.refusals()
            .rejected(&conn.remote_id(), &report.rejected);
        if let (Some(start), Some(events)) = (report.live.clone(), events) {
            self.follow(conn, &terms, &start, events, session_ended_ms)
                .await?;
        }
        Ok(report)
    }

    /// Live sync on `conn` until it ends.
    async fn follow(
        &self,
        conn: &Connection,
        terms: &Terms,
        start: &crate::session::LiveStart,
        events: EventStream,
        since_ms: i64,
    ) -> Result<(), SessionError> {
        let config = self.live.clone().unwrap_or_default();
        let view = live::PeerView::with_limit(config.peer_view_limit);
        view.record_changes(&start.peer_changes);
        for (hash, version) in &start.peer_holds {
            view.record(*hash, *version);
        }
        let link = Arc::new(live::Link {
            conn: conn.clone(),
            can: terms.can.clone(),
            engine: start.engine.clone(),
            stats: self.stats.clone(),
            config,
            claims: self.claims.clone(),
            peers: self.peers.clone(),
            refusals: self.refusals().clone(),
            view,
            peer_takes_nothing: start.peer_takes_nothing,
            shutdown: self.shutdown.clone(),
            in_flight: self.in_flight.clone(),
        });
        self.live_links.fetch_add(1, Ordering::Relaxed);
        let result = live::run(link, events, since_ms).await;
        self.live_links.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// Runs the session the connection's negotiated ALPN names.
    async fn run_session(
        &self,
        conn: &Connection,
        role: Role,
        terms: &Terms,
        opening: Opening,
        live: bool,
    ) -> Result<SessionReport, SessionError> {
        let Terms { can, engine } = terms;
        match conn.alpn() {
            ALPN_V2 => {
                let budget = &self.whole_store;
                driver::v2::run_opened(
                    conn,
                    opening,
                    can,
                    role,
                    engine,
                    &self.stats,
                    budget,
                    &self.claims,
                    live,
                )
                .await
            }
            ALPN_V1 => {
                driver::v1::run(conn, can, role, &self.v1, &self.stats, &self.whole_store).await
            }
            // The endpoint accepts only the ALPNs above, so this is our bug.
            other => Err(Fault::Bug(format!(
                "a connection with unexpected ALPN {:?}",
                String::from_utf8_lossy(other)
            ))
            .into()),
        }
    }
}

/// What one connection's sessions run with, by the peer's [`Right`]: the
/// store as the peer may touch it, and the engine settings that say so in
/// `HELLO`.
struct Terms {
    can: SharedCan,
    engine: Arc<EngineConfig>,
}

impl Terms {
    fn of(node: &Node, right: Right) -> Self {
        match right {
            Right::Write => Self {
                can: node.can.clone(),
                engine: node.engine.clone(),
            },
            Right::Read => Self {
                can: Arc::new(access::ReadOnly(node.can.clone())),
                engine: Arc::new(EngineConfig {
                    read_only_peer: true,
                    ..(*node.engine).clone()
                }),
            },
        }
    }
}

/// Closes `conn` with the code that says what went wrong (whose fault it was:
/// a violation's own code, [`CLOSE_SHUTDOWN`] for ours).
pub(crate) fn close_with_error(conn: &Connection, err: &SessionError) {
    let code = err.close_code().unwrap_or(CLOSE_SHUTDOWN);
    debug_assert!(code != CLOSE_PROTOCOL_ERROR || err.is_protocol_violation());
    let reason = err.to_string();
    conn.close(code.into(), &reason.as_bytes()[..reason.len().min(200)]);
}
