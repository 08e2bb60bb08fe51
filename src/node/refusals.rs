//! What a node refused, and from whom: counts since start and the last few
//! refusals, for the daemon's `/status` and its page.
//!
//! Three kinds are recorded where they are decided:
//! - **strangers**: a connection from an endpoint the node does not admit,
//!   closed right after the handshake (the access gate, `accept`);
//! - **capabilities**: a dialer unknown by id whose `HELLO` presented no
//!   valid capability (none, unknown, expired or revoked);
//! - **future stamps**: a metadata update stamped further ahead of this
//!   node's clock than it accepts, refused by the node's embedded store in
//!   a session or a live answer (see [`crate::asset::check_stamp`]). A CAN
//!   service reached over HTTP refuses such an update with a plain 400,
//!   which the node cannot tell from other bad input: it is rejected and
//!   reported with the peer's other rejections, not counted here.
//!
//! The last [`RECENT_REFUSALS`] of every kind share one list: a flood of
//! strangers pushes the others out of it, never out of the counts.
//!
//! Counting must never cost the path it watches: a node under a flood of
//! strangers records each with one atomic add and one short lock of a
//! bounded ring.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use iroh::EndpointId;
use serde::Serialize;

use crate::clock::now_ms;
use crate::engine::{RejectReason, Rejection};

/// How many refusals [`Refusals::snapshot`] lists, newest first.
pub const RECENT_REFUSALS: usize = 20;

/// What was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// A connection from an endpoint that is not admitted.
    Stranger,
    /// A dialer whose `HELLO` presented no valid capability.
    Capability,
    /// A metadata update stamped too far in the future.
    FutureStamp,
}

/// One refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// What was refused.
    pub kind: RefusalKind,
    /// The endpoint id it came from.
    pub peer: String,
    /// When (Unix ms).
    pub at_ms: i64,
    /// What the refusal says (for a future stamp: the asset and the stamp).
    pub detail: String,
}

/// Counts of each kind since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RefusalCounts {
    /// Connections from endpoints not admitted.
    pub strangers: u64,
    /// Dialers refused for their capability.
    pub capabilities: u64,
    /// Metadata updates refused for their stamp.
    pub future_stamps: u64,
}

/// What `/status` shows under `refusals`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RefusalsView {
    /// Counts since start.
    pub counts: RefusalCounts,
    /// The last [`RECENT_REFUSALS`], newest first.
    pub recent: Vec<Refusal>,
}

/// The refusals of one node; see the module docs.
#[derive(Debug, Default)]
pub struct Refusals {
    strangers: AtomicU64,
    capabilities: AtomicU64,
    future_stamps: AtomicU64,
    recent: Mutex<VecDeque<Refusal>>,
}

impl Refusals {
    /// Records one refusal of `kind` from `peer`.
    pub fn record(&self, kind: RefusalKind, peer: &EndpointId, detail: String) {
        let counter = match kind {
            RefusalKind::Stranger => &self.strangers,
            RefusalKind::Capability => &self.capabilities,
            RefusalKind::FutureStamp => &self.future_stamps,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut recent = self.recent.lock().expect("refusals lock");
        if recent.len() == RECENT_REFUSALS {
            recent.pop_front();
        }
        recent.push_back(Refusal {
            kind,
            peer: peer.to_string(),
            at_ms: now_ms(),
            detail,
        });
    }

    /// Records the future-stamped updates among what a session or a live
    /// answer with `peer` rejected; the other rejections are the peer
    /// records' business.
    pub fn rejected(&self, peer: &EndpointId, rejected: &[Rejection]) {
        for rejection in rejected {
            if let RejectReason::FutureStamp(why) = &rejection.reason {
                let detail = format!("{}: {why}", rejection.hash);
                self.record(RefusalKind::FutureStamp, peer, detail);
            }
        }
    }

    /// Counts since start.
    pub fn counts(&self) -> RefusalCounts {
        RefusalCounts {
            strangers: self.strangers.load(Ordering::Relaxed),
            capabilities: self.capabilities.load(Ordering::Relaxed),
            future_stamps: self.future_stamps.load(Ordering::Relaxed),
        }
    }

    /// Counts and the last few, newest first.
    pub fn snapshot(&self) -> RefusalsView {
        let recent = self.recent.lock().expect("refusals lock");
        RefusalsView {
            counts: self.counts(),
            recent: recent.iter().rev().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asset::AssetHash;

    fn id() -> EndpointId {
        iroh::SecretKey::generate().public()
    }

    #[test]
    fn each_kind_counts_apart_and_the_newest_come_first() {
        let refusals = Refusals::default();
        let (stranger, dialer) = (id(), id());
        refusals.record(RefusalKind::Stranger, &stranger, "not allowed".into());
        refusals.record(RefusalKind::Capability, &dialer, "no capability".into());
        refusals.record(RefusalKind::Stranger, &stranger, "not allowed".into());
        let view = refusals.snapshot();
        assert_eq!(
            view.counts,
            RefusalCounts {
                strangers: 2,
                capabilities: 1,
                future_stamps: 0
            }
        );
        let kinds: Vec<_> = view.recent.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                RefusalKind::Stranger,
                RefusalKind::Capability,
                RefusalKind::Stranger
            ]
        );
        assert_eq!(view.recent[1].peer, dialer.to_string());
    }

    #[test]
    fn the_recent_list_keeps_the_last_ones_while_the_counts_keep_all() {
        let refusals = Refusals::default();
        let peer = id();
        for n in 0..RECENT_REFUSALS + 5 {
            refusals.record(RefusalKind::Stranger, &peer, format!("attempt {n}"));
        }
        let view = refusals.snapshot();
        assert_eq!(view.counts.strangers, RECENT_REFUSALS as u64 + 5);
        assert_eq!(view.recent.len(), RECENT_REFUSALS);
        assert_eq!(
            view.recent[0].detail,
            format!("attempt {}", RECENT_REFUSALS + 4)
        );
        assert_eq!(view.recent.last().unwrap().detail, "attempt 5");
    }

    #[test]
    fn only_future_stamps_are_taken_from_rejections() {
        let refusals = Refusals::default();
        let (stamped, corrupt) = (AssetHash::of(b"stamped"), AssetHash::of(b"corrupt"));
        refusals.rejected(
            &id(),
            &[
                Rejection {
                    hash: stamped,
                    reason: RejectReason::FutureStamp("ahead of this node's clock".into()),
                },
                Rejection {
                    hash: corrupt,
                    reason: RejectReason::Store("disk full".into()),
                },
            ],
        );
        let view = refusals.snapshot();
        assert_eq!(view.counts.future_stamps, 1);
        assert_eq!(view.recent.len(), 1);
        assert!(view.recent[0].detail.starts_with(&stamped.to_string()));
    }
}
