//! [`EngineStats`]: counters of a node's transfers, shared by every stage and
//! session; read by progress bars, `/status`, metrics and the load test.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

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
