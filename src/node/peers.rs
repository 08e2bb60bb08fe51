//! What a node knows of each peer: its connection state, its last completed
//! sync, its last error, what crossed with it and the live backlog towards it.
//! Read by the daemon's `/status` and `/metrics`.
//!
//! Sessions report into it when they end, live offers and answers as they
//! complete, so the figures cover both the initial sessions and live sync.
//! The wire bytes are live: each connection is registered while it is open
//! ([`Peers::connected`]) and its QUIC counters are read at each snapshot,
//! then kept when it closes, so a long first session shows its rate as it
//! runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use iroh::endpoint::Connection;
use iroh::EndpointId;
use serde::Serialize;

use crate::clock::now_ms;
use crate::session::SessionReport;

/// Where a peer's connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Dialling it.
    Connecting,
    /// In the initial session.
    Syncing,
    /// Connected and syncing every change live.
    Live,
    /// Not connected (it ended cleanly, or a one-shot session is over).
    Disconnected,
    /// The last attempt failed; see `last_error`.
    Failed,
}

/// One peer's record.
#[derive(Debug, Clone, Serialize)]
pub struct PeerRecord {
    /// Its endpoint id.
    pub id: String,
    /// Where its connection is.
    pub state: PeerState,
    /// When a session with it last completed (Unix ms).
    pub last_sync_ms: Option<i64>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// Sessions completed with it.
    pub sessions: u64,
    /// Assets sent to it.
    pub assets_sent: u64,
    /// Assets received from it and newly stored.
    pub assets_received: u64,
    /// Payload bytes sent to it.
    pub bytes_sent: u64,
    /// Payload bytes received from it and newly stored.
    pub bytes_received: u64,
    /// Assets it sent that we already had.
    pub duplicates: u64,
    /// Assets refused on either side.
    pub rejects: u64,
    /// Local changes waiting to be offered to it.
    pub backlog: u64,
    /// Local changes queued for offering to it since the node started
    /// (changes it sent us itself are never queued).
    pub changes_offered: u64,
    /// Bytes of UDP datagrams sent to it, every connection, counted as
    /// they go (QUIC framing, retransmissions and handshakes included).
    pub wire_bytes_sent: u64,
    /// Bytes of UDP datagrams received from it, likewise.
    pub wire_bytes_received: u64,
}

impl PeerRecord {
    fn new(id: EndpointId) -> Self {
        Self {
            id: id.to_string(),
            state: PeerState::Connecting,
            last_sync_ms: None,
            last_error: None,
            sessions: 0,
            assets_sent: 0,
            assets_received: 0,
            bytes_sent: 0,
            bytes_received: 0,
            duplicates: 0,
            rejects: 0,
            backlog: 0,
            changes_offered: 0,
            wire_bytes_sent: 0,
            wire_bytes_received: 0,
        }
    }
}

/// What crossed in one live offer or answer.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    /// Assets sent.
    pub assets_sent: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Assets received and newly stored.
    pub assets_received: u64,
    /// Payload bytes received and newly stored.
    pub bytes_received: u64,
    /// Assets received that were already here.
    pub duplicates: u64,
    /// Assets refused.
    pub rejects: u64,
}

/// Every peer this node has dialled or accepted since it started.
#[derive(Debug, Default)]
pub struct Peers {
    records: Mutex<BTreeMap<EndpointId, PeerRecord>>,
    /// The connections open now, by their stable id: their counters are
    /// added to their peer's at each snapshot.
    open: Mutex<HashMap<usize, Connection>>,
}

/// A connection registered with [`Peers::connected`]; dropped when it is
/// done with, it keeps what the connection moved in its peer's record.
#[must_use = "the connection counts as open only while this lives"]
pub struct Connected {
    peers: Arc<Peers>,
    conn: Connection,
}

impl Drop for Connected {
    fn drop(&mut self) {
        // Under the records' lock, as `snapshot` reads: no snapshot sees the
        // connection's bytes twice, or not at all.
        let mut records = self.peers.records.lock().expect("peers lock");
        self.peers
            .open
            .lock()
            .expect("open connections lock")
            .remove(&self.conn.stable_id());
        let (sent, received) = wire_bytes(&self.conn);
        let id = self.conn.remote_id();
        let record = records.entry(id).or_insert_with(|| PeerRecord::new(id));
        record.wire_bytes_sent += sent;
        record.wire_bytes_received += received;
    }
}

/// What a connection has sent and received, in UDP datagram bytes.
fn wire_bytes(conn: &Connection) -> (u64, u64) {
    let stats = conn.stats();
    (stats.udp_tx.bytes, stats.udp_rx.bytes)
}

impl Peers {
    fn update(&self, id: EndpointId, change: impl FnOnce(&mut PeerRecord)) {
        let mut peers = self.records.lock().expect("peers lock");
        change(peers.entry(id).or_insert_with(|| PeerRecord::new(id)));
    }

    /// Counts `conn`'s bytes in its peer's record, live while the returned
    /// guard lives and for good once it is dropped.
    pub fn connected(self: &Arc<Self>, conn: &Connection) -> Connected {
        self.open
            .lock()
            .expect("open connections lock")
            .insert(conn.stable_id(), conn.clone());
        Connected {
            peers: self.clone(),
            conn: conn.clone(),
        }
    }

    /// The peer's connection moved to `state`.
    pub fn set_state(&self, id: EndpointId, state: PeerState) {
        self.update(id, |p| p.state = state);
    }

    /// An attempt with the peer failed.
    pub fn failed(&self, id: EndpointId, error: &str) {
        self.update(id, |p| {
            p.state = PeerState::Failed;
            p.last_error = Some(error.to_string());
        });
    }

    /// A session with the peer completed.
    pub fn session(&self, id: EndpointId, report: &SessionReport) {
        self.update(id, |p| {
            p.sessions += 1;
            p.last_sync_ms = Some(now_ms());
            p.last_error = None;
            p.assets_sent += report.assets_sent;
            p.assets_received += report.assets_received;
            p.bytes_sent += report.bytes_sent;
            p.bytes_received += report.payload_bytes - report.bytes_sent;
            p.duplicates += report.duplicates_received;
            p.rejects += report.rejected.len() as u64;
            p.state = if report.live.is_some() {
                PeerState::Live
            } else {
                PeerState::Disconnected
            };
        });
    }

    /// A live offer or answer with the peer completed.
    pub fn moved(&self, id: EndpointId, moved: Moved) {
        self.update(id, |p| {
            p.assets_sent += moved.assets_sent;
            p.bytes_sent += moved.bytes_sent;
            p.assets_received += moved.assets_received;
            p.bytes_received += moved.bytes_received;
            p.duplicates += moved.duplicates;
            p.rejects += moved.rejects;
            p.last_sync_ms = Some(now_ms());
        });
    }

    /// `count` local changes were queued for offering to the peer.
    pub fn offered(&self, id: EndpointId, count: u64) {
        self.update(id, |record| record.changes_offered += count);
    }

    /// Local changes waiting to be offered to the peer.
    pub fn set_backlog(&self, id: EndpointId, backlog: u64) {
        self.update(id, |p| p.backlog = backlog);
    }

    /// Every record, ordered by endpoint id, with what its open
    /// connections moved so far.
    pub fn snapshot(&self) -> Vec<PeerRecord> {
        // The records' lock, then the open connections': the order `Drop for
        // Connected` takes them, so a connection closing meanwhile is counted
        // once, in one or the other.
        let held = self.records.lock().expect("peers lock");
        let mut records = held.clone();
        for conn in self.open.lock().expect("open connections lock").values() {
            if let Some(record) = records.get_mut(&conn.remote_id()) {
                let (sent, received) = wire_bytes(conn);
                record.wire_bytes_sent += sent;
                record.wire_bytes_received += received;
            }
        }
        drop(held);
        records.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_live_moves_add_up_per_peer() {
        let peers = Peers::default();
        let (a, b) = (
            iroh::SecretKey::generate().public(),
            iroh::SecretKey::generate().public(),
        );
        peers.set_state(a, PeerState::Syncing);
        let report = SessionReport {
            assets_sent: 3,
            assets_received: 2,
            payload_bytes: 500,
            bytes_sent: 300,
            ..SessionReport::default()
        };
        peers.session(a, &report);
        peers.moved(
            a,
            Moved {
                assets_received: 1,
                bytes_received: 50,
                ..Moved::default()
            },
        );
        peers.failed(b, "unreachable");
        let all = peers.snapshot();
        let rec_a = all.iter().find(|p| p.id == a.to_string()).unwrap();
        assert_eq!(
            (
                rec_a.assets_sent,
                rec_a.assets_received,
                rec_a.bytes_sent,
                rec_a.bytes_received
            ),
            (3, 3, 300, 250)
        );
        assert_eq!(rec_a.state, PeerState::Disconnected);
        assert!(rec_a.last_sync_ms.is_some());
        let rec_b = all.iter().find(|p| p.id == b.to_string()).unwrap();
        assert_eq!(rec_b.state, PeerState::Failed);
        assert_eq!(rec_b.last_error.as_deref(), Some("unreachable"));
    }
}
