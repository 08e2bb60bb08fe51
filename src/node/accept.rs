//! The incoming side of a node: how a connection gets in, from its first
//! packet to its sessions.
//!
//! 1. A handshake takes a slot of the handshake budget (in all, and per source
//!    address: `handshakes`) and has [`HANDSHAKE_TIMEOUT`] to complete; the
//!    endpoint's access gate has already refused a stranger by then.
//! 2. The connection is admitted: by its endpoint id, or (a `/2` dialer
//!    unknown by id, while a grant is live) by the capability in its `HELLO`,
//!    read within [`HELLO_TIMEOUT`] while it still holds only its handshake
//!    slot.
//! 3. Only then does it take a session slot ([`ConnectionLimits`]) and a slot
//!    of its peer's share, so strangers never take the slots of allowed
//!    peers; then its sessions run with the peer's right.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use iroh::endpoint::Connection;
use iroh::EndpointId;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::access::{self, Admission, Right};
use super::handshakes::{self, Handshakes, Source};
use super::refusals::RefusalKind;
use super::{close_with_error, Node};
use crate::session::driver;
use crate::session::driver::v2::Opening;
use crate::session::Role;
use crate::wire::{CLOSE_BUSY, CLOSE_NOT_ALLOWED};

/// How many incoming connections a node serves at once: a stranger (or a
/// flood of them) cannot make it hold unbounded sessions.
///
/// Handshakes and sessions have budgets of their own. A connection takes a
/// session slot only once its handshake proved an admitted id, so
/// strangers' handshakes, stalled or refused, never take the slots of
/// allowed peers; and a handshake holds its own slot at most
/// [`HANDSHAKE_TIMEOUT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Admitted connections served at once, from everyone; one more is
    /// closed with [`CLOSE_BUSY`] after its handshake.
    pub max_connections: usize,
    /// Incoming connections served at once from one peer; one more is
    /// closed with [`CLOSE_BUSY`].
    pub per_peer: usize,
    /// Handshakes in progress at once; one more is refused before it starts.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one source address; one more
    /// from it is refused before it starts, so one stalled stranger cannot
    /// hold the handshakes of peers at other addresses.
    pub max_handshakes_per_source: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            per_peer: 4,
            max_handshakes: 256,
            max_handshakes_per_source: 16,
        }
    }
}

/// The longest a dialer unknown by id may take to present its capability
/// in `HELLO` once its handshake is done.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest an incoming handshake may take before it is dropped: a
/// dialer that stalls mid-handshake frees its slot by then.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's place in [`Node`]'s count of a peer's; freed on drop.
struct PeerSlot {
    serving: Arc<Mutex<HashMap<EndpointId, usize>>>,
    peer: EndpointId,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut serving = self.serving.lock().expect("serving lock");
        if let Some(count) = serving.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                serving.remove(&self.peer);
            }
        }
    }
}

impl Node {
    /// A slot for one more connection from `peer`, or `None` when it
    /// already has [`ConnectionLimits::per_peer`].
    fn peer_slot(&self, peer: EndpointId) -> Option<PeerSlot> {
        let mut serving = self.serving.lock().expect("serving lock");
        let count = serving.entry(peer).or_default();
        if *count >= self.limits.per_peer.max(1) {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            serving: self.serving.clone(),
            peer,
        })
    }

    /// Accepts connections until the endpoint closes or the node shuts down,
    /// serving one session per connection (then live sync, when on); each
    /// runs in its own task, so one bad peer stalls no other. On shutdown it
    /// waits for the connections it serves to wind down.
    pub async fn accept_loop(&self) {
        let mut sessions = JoinSet::new();
        let handshakes = Handshakes::new(
            self.limits.max_handshakes,
            self.limits.max_handshakes_per_source,
        );
        let session_slots = Arc::new(Semaphore::new(self.limits.max_connections.max(1)));
        loop {
            let incoming = tokio::select! {
                incoming = self.endpoint.accept() => incoming,
                _ = self.shutdown.cancelled() => break,
            };
            let Some(incoming) = incoming else { break };
            // Reap finished sessions so the set holds only live ones.
            while sessions.try_join_next().is_some() {}
            let handshake = match handshakes.try_take(Source::of(&incoming.remote_addr())) {
                Ok(slot) => slot,
                Err(full) => {
                    warn!(
                        ?full,
                        "refusing a connection: as many handshakes in progress as allowed"
                    );
                    incoming.refuse();
                    continue;
                }
            };
            let node = self.clone();
            let session_slots = session_slots.clone();
            sessions.spawn(async move { node.take_in(incoming, handshake, session_slots).await });
        }
        while sessions.join_next().await.is_some() {}
    }

    /// One incoming connection, from its handshake to the end of its
    /// sessions: the handshake within [`HANDSHAKE_TIMEOUT`] on its
    /// `handshake` slot; admission by id, or by the capability in its
    /// `HELLO` (read while it still holds only that slot, so it never takes
    /// a session slot of an allowed peer before it is admitted); then a
    /// session slot and a slot of its peer's share; then its sessions.
    async fn take_in(
        self,
        incoming: iroh::endpoint::Incoming,
        handshake: handshakes::HandshakeSlot,
        session_slots: Arc<Semaphore>,
    ) {
        let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => {
                // Includes peers the access gate refused.
                info!(error = %err, "incoming connection failed");
                return;
            }
            Err(_) => {
                info!("incoming handshake took too long: dropped");
                return;
            }
        };
        let admission =
            self.access
                .admission(&conn.remote_id(), conn.alpn(), crate::clock::now_ms());
        let (right, opening) = match admission {
            Some(Admission::Known(right)) => (right, fresh()),
            Some(Admission::ByCapability) => match self.admit_by_capability(&conn).await {
                Some(admitted) => admitted,
                None => return,
            },
            None => {
                // The endpoint's gate admitted it under another access.
                let reason = access::refusal_reason(&conn.remote_id());
                self.access.refusals().record(
                    RefusalKind::Stranger,
                    &conn.remote_id(),
                    "not allowed".into(),
                );
                conn.close(CLOSE_NOT_ALLOWED.into(), reason.as_bytes());
                return;
            }
        };
        drop(handshake);
        let Ok(_session) = session_slots.try_acquire_owned() else {
            warn!(
                peer = %conn.remote_id().fmt_short(),
                "closing a connection: serving as many as allowed"
            );
            conn.close(CLOSE_BUSY.into(), b"serving as many connections as allowed");
            return;
        };
        let Some(_slot) = self.peer_slot(conn.remote_id()) else {
            warn!(
                peer = %conn.remote_id().fmt_short(),
                "closing a connection: this peer has as many as allowed"
            );
            conn.close(CLOSE_BUSY.into(), b"too many connections from this peer");
            return;
        };
        self.serve(conn, right, opening).await;
    }

    /// Reads the `HELLO` of a dialer unknown by id and admits it by the
    /// capability it presents, or closes the connection with
    /// [`CLOSE_NOT_ALLOWED`]: before any store work, and before this node
    /// says anything. It has [`HELLO_TIMEOUT`] to say it.
    async fn admit_by_capability(&self, conn: &Connection) -> Option<(Right, Opening)> {
        let peer = conn.remote_id();
        let read = match driver::v2::read_hello(conn, HELLO_TIMEOUT).await {
            Ok(read) => read,
            Err(err) => {
                info!(peer = %peer.fmt_short(), error = %err, "no HELLO from a dialer unknown by id");
                close_with_error(conn, &err);
                return None;
            }
        };
        let right = self
            .access
            .right_of_capability(&read.hello.capability, crate::clock::now_ms());
        let Some(right) = right else {
            warn!(peer = %peer, "refused a dialer without a valid capability");
            let reason = access::capability_refusal_reason(&peer);
            self.access.refusals().record(
                RefusalKind::Capability,
                &peer,
                "no valid capability (none, unknown, expired or revoked)".into(),
            );
            conn.close(CLOSE_NOT_ALLOWED.into(), reason.as_bytes());
            return None;
        };
        info!(peer = %peer.fmt_short(), %right, "admitted by a granted capability");
        Some((right, Opening::HelloRead(Box::new(read))))
    }

    async fn serve(&self, conn: Connection, right: Right, opening: Opening) {
        let peer = conn.remote_id().fmt_short();
        match self
            .session_then_live(&conn, Role::Responder, right, opening)
            .await
        {
            Ok(report) if report.live.is_none() => {
                // The initiator closes once it has our last byte; wait for it so
                // our final acknowledgements are not cut off.
                let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
            }
            Ok(_) => {}
            // The peer said it was done, or this node is closing: not a failure.
            Err(err) if err.is_clean_close() => debug!(%peer, error = %err, "connection closed"),
            Err(err) => {
                warn!(%peer, error = %err, "session failed");
                close_with_error(&conn, &err);
            }
        }
    }
}

/// A control stream opened the usual way, presenting no capability.
fn fresh() -> Opening {
    Opening::Fresh {
        capability: Bytes::new(),
    }
}
