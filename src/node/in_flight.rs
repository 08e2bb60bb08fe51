//! What a node is doing for its peers right now: the sessions, live offers
//! and live answers under way, each registered for as long as it runs.
//!
//! A graceful shutdown lets this work finish; the registry is how
//! it knows whether it did. Whatever is still registered when the grace
//! period ends is what the shutdown cut short, and the daemon names it and
//! exits non-zero. A dial still connecting, or a live link with nothing on
//! the wire, is not work: stopping them loses nothing (the next session
//! reconciles whatever a link had not yet offered).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iroh::EndpointId;

/// Work under way for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkKind {
    /// A session (the initial one of a connection, or a one-shot one).
    Session,
    /// A live offer of this many assets, and the pushes it leads to.
    LiveOffer {
        /// Assets offered.
        assets: usize,
    },
    /// An answer to the peer's live offer: what we take from it.
    LiveAnswer,
}

/// One piece of work, as [`InFlight::snapshot`] reports it.
#[derive(Debug, Clone)]
pub struct Work {
    /// The peer it is for.
    pub peer: EndpointId,
    /// What it is.
    pub kind: WorkKind,
    /// How long it has run.
    pub running_for: Duration,
}

impl fmt::Display for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = self.peer.fmt_short();
        match self.kind {
            WorkKind::Session => write!(f, "a session with {peer}")?,
            WorkKind::LiveOffer { assets } => {
                write!(f, "a live offer of {assets} assets to {peer}")?
            }
            WorkKind::LiveAnswer => write!(f, "taking in a live offer from {peer}")?,
        }
        write!(f, " (running for {:.1} s)", self.running_for.as_secs_f64())
    }
}

/// The registry of work under way.
#[derive(Debug, Default)]
pub struct InFlight {
    next_id: AtomicU64,
    work: Mutex<BTreeMap<u64, (EndpointId, WorkKind, Instant)>>,
}

impl InFlight {
    /// Registers work for `peer` until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>, peer: EndpointId, kind: WorkKind) -> WorkGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.work
            .lock()
            .expect("in-flight lock")
            .insert(id, (peer, kind, Instant::now()));
        WorkGuard {
            registry: self.clone(),
            id,
        }
    }

    /// The work under way, oldest first.
    pub fn snapshot(&self) -> Vec<Work> {
        self.work
            .lock()
            .expect("in-flight lock")
            .values()
            .map(|(peer, kind, since)| Work {
                peer: *peer,
                kind: *kind,
                running_for: since.elapsed(),
            })
            .collect()
    }

    /// True when nothing is under way.
    pub fn is_idle(&self) -> bool {
        self.work.lock().expect("in-flight lock").is_empty()
    }
}

/// Keeps one piece of work registered; dropping it (the work ended, however
/// it ended) removes it.
#[derive(Debug)]
pub struct WorkGuard {
    registry: Arc<InFlight>,
    id: u64,
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        self.registry
            .work
            .lock()
            .expect("in-flight lock")
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u8) -> EndpointId {
        iroh::SecretKey::from_bytes(&[seed; 32]).public()
    }

    #[test]
    fn work_is_listed_while_its_guard_lives_and_named_by_kind_and_peer() {
        let registry = Arc::new(InFlight::default());
        assert!(registry.is_idle());
        let session = registry.begin(peer(1), WorkKind::Session);
        let offer = registry.begin(peer(2), WorkKind::LiveOffer { assets: 12 });
        let listed: Vec<String> = registry.snapshot().iter().map(Work::to_string).collect();
        assert_eq!(listed.len(), 2);
        assert!(listed[0].starts_with(&format!("a session with {}", peer(1).fmt_short())));
        assert!(listed[1].starts_with(&format!(
            "a live offer of 12 assets to {}",
            peer(2).fmt_short()
        )));
        drop(session);
        assert_eq!(registry.snapshot().len(), 1);
        drop(offer);
        assert!(registry.is_idle());
    }
}
