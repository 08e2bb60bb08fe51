//! [`EngineStats`]: counters of a node's transfers, shared by every stage and
//! session; read by progress bars, `/status`, metrics and the load test.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use iroh::EndpointId;

use crate::asset::AssetHash;

/// Counters of the engine, shared by all stages and sessions of a node.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Assets sent (inline or streamed).
    pub assets_sent: AtomicU64,
    /// Assets received and newly stored.
    pub assets_received: AtomicU64,
    /// Assets received that the store already had.
    pub duplicates: AtomicU64,
    /// Asset payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// Asset payload bytes received.
    pub bytes_received: AtomicU64,
    /// Frame bytes written to data streams.
    pub wire_bytes_sent: AtomicU64,
    /// Frame bytes read from data streams.
    pub wire_bytes_received: AtomicU64,
    /// Assets refused on receipt (bad hash, store refusal).
    pub rejects: AtomicU64,
    /// CAN calls retried.
    pub retries: AtomicU64,
    /// Payload bytes the send side holds between its CAN pulls and its
    /// streams right now: what the bounded queues bound.
    pub send_bytes_queued: AtomicU64,
    /// The most [`Self::send_bytes_queued`] has been.
    pub send_bytes_queued_peak: AtomicU64,
    /// Assets the sessions' send plans hold, once reconciled: with
    /// [`Self::planned_bytes`], the totals a progress bar counts towards.
    pub planned_assets: AtomicU64,
    /// Payload bytes of [`Self::planned_assets`].
    pub planned_bytes: AtomicU64,
    /// Where the latest v2 session is, as a [`Phase`] number: what a
    /// one-session command (`seed`) shows its user.
    pub phase: AtomicU8,
    /// Large assets arriving by verified ranges right now, and from whom.
    pub arriving: Arriving,
}

/// Large assets arriving by verified ranges right now, with the peers each
/// comes from (several, when it is split among sources): what `status`
/// shows beside a partial asset's progress. A delivery registers an asset
/// for as long as it writes it ([`Arriving::begin`]).
#[derive(Debug, Default)]
pub struct Arriving(Mutex<HashMap<AssetHash, Vec<EndpointId>>>);

/// One delivery of an arriving asset; dropped when it ends.
#[must_use = "the asset counts as arriving only while this lives"]
pub struct Delivering {
    stats: Arc<EngineStats>,
    hash: AssetHash,
    from: EndpointId,
}

impl Arriving {
    /// `hash` arrives from `from` until the returned guard is dropped.
    pub fn begin(stats: &Arc<EngineStats>, hash: AssetHash, from: EndpointId) -> Delivering {
        stats
            .arriving
            .0
            .lock()
            .expect("arriving lock")
            .entry(hash)
            .or_default()
            .push(from);
        Delivering {
            stats: stats.clone(),
            hash,
            from,
        }
    }

    /// The peers `hash` arrives from now, each once.
    pub fn from(&self, hash: &AssetHash) -> Vec<EndpointId> {
        let arriving = self.0.lock().expect("arriving lock");
        let mut peers = arriving.get(hash).cloned().unwrap_or_default();
        peers.sort();
        peers.dedup();
        peers
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        let mut arriving = self.stats.arriving.0.lock().expect("arriving lock");
        if let Some(peers) = arriving.get_mut(&self.hash) {
            if let Some(at) = peers.iter().position(|peer| *peer == self.from) {
                peers.swap_remove(at);
            }
            if peers.is_empty() {
                arriving.remove(&self.hash);
            }
        }
    }
}

/// The phases of a session, as a progress display names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Dialling, or waiting for the peer's connection.
    Connecting = 0,
    /// Connected; comparing what each side holds.
    Reconciling = 1,
    /// Moving assets both ways.
    Transferring = 2,
    /// Our side is sent; waiting for the peer to store the last of it.
    Finishing = 3,
}

impl Phase {
    /// Its name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Reconciling => "reconciling",
            Self::Transferring => "transferring",
            Self::Finishing => "finishing",
        }
    }
}

impl EngineStats {
    /// Adds `n` to one counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn queue_send_bytes(&self, n: u64) {
        let now = self.send_bytes_queued.fetch_add(n, Ordering::Relaxed) + n;
        self.send_bytes_queued_peak
            .fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn dequeue_send_bytes(&self, n: u64) {
        self.send_bytes_queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// Records the phase the latest session entered.
    pub fn enter(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// The phase of the latest session.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            1 => Phase::Reconciling,
            2 => Phase::Transferring,
            3 => Phase::Finishing,
            _ => Phase::Connecting,
        }
    }

    /// A snapshot: (assets sent, assets received, payload bytes both ways).
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            Self::get(&self.assets_sent),
            Self::get(&self.assets_received),
            Self::get(&self.bytes_sent) + Self::get(&self.bytes_received),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_asset_arrives_from_each_delivery_until_it_ends() {
        let stats = Arc::new(EngineStats::default());
        let hash = AssetHash::of(b"large");
        let (a, b) = (
            iroh::SecretKey::generate().public(),
            iroh::SecretKey::generate().public(),
        );
        let from_a = Arriving::begin(&stats, hash, a);
        let from_b = Arriving::begin(&stats, hash, b);
        let again_a = Arriving::begin(&stats, hash, a);
        let mut both = vec![a, b];
        both.sort();
        assert_eq!(stats.arriving.from(&hash), both, "each peer once");
        drop(from_b);
        drop(from_a);
        assert_eq!(stats.arriving.from(&hash), vec![a], "a still delivers");
        drop(again_a);
        assert!(stats.arriving.from(&hash).is_empty());
        assert!(
            stats.arriving.0.lock().unwrap().is_empty(),
            "nothing left behind"
        );
    }
}
