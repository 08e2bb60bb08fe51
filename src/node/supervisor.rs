//! The daemon's supervisor: keeps a [`Node`] connected to its
//! configured peers and serving the ones that dial it, until shutdown.
//!
//! One task per configured peer dials it forever: a v2 peer is followed live
//! on one connection and redialled when that connection ends; a v1 peer (or
//! any peer when live sync is off) gets one session every
//! [`resync`](DialConfig::resync). Failures, and live links that end soon
//! after they started, are retried after the pauses of a [`Backoff`], so a
//! peer back from an outage is not hammered by every node in lockstep. One
//! more task runs the node's [accept loop](Node::accept_loop).
//!
//! [`Supervisor::shutdown`] starts the node's graceful shutdown and waits,
//! within a grace period, for those tasks to end. A dial loop stops at once
//! when it is pausing. A dial in progress is not cut short: a session or
//! live link finishes what is in flight (live sync winds itself down), and a
//! connection attempt ends on its own (iroh gives up on a silent address
//! after the endpoint's 10 s idle timeout); the grace period bounds the
//! whole.
//!
//! Each dial's end is published to whoever [subscribed](Supervisor::subscribe):
//! tests, and anything else that watches the daemon work.

use std::time::Duration;

use iroh::EndpointId;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Node, Protocol, SyncError, Ticket, Work};
use crate::backoff::Backoff;
use crate::session::SessionReport;

/// How the supervisor dials its peers.
#[derive(Debug, Clone)]
pub struct DialConfig {
    /// The protocol asked for (a v2 dialer falls back to v1 when the peer
    /// lacks v2).
    pub protocol: Protocol,
    /// The pause between sessions with a peer that does not stay connected:
    /// a v1 peer, or any peer when either side has live sync off.
    pub resync: Duration,
    /// The first pause after a failure, and the pause before redialling a
    /// live link that ended after it had been stable.
    pub first_backoff: Duration,
    /// No pause after failures is longer than this, before jitter.
    pub max_backoff: Duration,
    /// A live link that ends sooner than this counts as a failure: a peer
    /// that accepts and drops at once is not redialled in a tight loop.
    pub stable_link: Duration,
}

impl Default for DialConfig {
    /// The daemon's schedule: protocol 2, a session every 30 s with v1
    /// peers, pauses from 250 ms up to 30 s, links stable after 10 s.
    fn default() -> Self {
        Self {
            protocol: Protocol::V2,
            resync: Duration::from_secs(30),
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            stable_link: Duration::from_secs(10),
        }
    }
}

/// How one dial of a peer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialOutcome {
    /// A session completed and its connection closed, live sync being off on
    /// one side: the next session is after [`DialConfig::resync`].
    Synced,
    /// A live link ended cleanly, after `lasted` (the initial session
    /// included).
    LinkEnded {
        /// How long the connection was up.
        lasted: Duration,
    },
    /// Connecting or the session failed; the error as displayed.
    Failed(String),
}

/// The end of one dial, as [`Supervisor::subscribe`] reports it.
#[derive(Debug, Clone)]
pub struct Dialled {
    /// The peer dialled.
    pub peer: EndpointId,
    /// How it went.
    pub outcome: DialOutcome,
    /// How long the supervisor waits before dialling the peer again.
    pub pause: Duration,
}

/// Dials configured peers and serves incoming ones until
/// [`shutdown`](Self::shutdown).
///
/// Build it with [`new`](Self::new), [`subscribe`](Self::subscribe) if
/// watching, then start its tasks with [`dial`](Self::dial) and
/// [`accept`](Self::accept). Dropping it aborts whatever still runs.
pub struct Supervisor {
    /// The node every task works for; its shutdown token stops them.
    node: Node,
    /// The schedule every dial loop follows.
    config: DialConfig,
    /// The dial loops and the accept loop, drained on shutdown.
    tasks: JoinSet<()>,
    /// Where dial loops publish each dial's end; sending to no subscriber is
    /// fine.
    events: broadcast::Sender<Dialled>,
}

/// Dial ends a subscriber may fall behind by before it misses some.
const EVENT_BACKLOG: usize = 64;

impl Supervisor {
    /// A supervisor of `node` that dials on `config`'s schedule; no task
    /// runs yet.
    pub fn new(node: Node, config: DialConfig) -> Self {
        Self {
            node,
            config,
            tasks: JoinSet::new(),
            events: broadcast::channel(EVENT_BACKLOG).0,
        }
    }

    /// Every dial's end from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Dialled> {
        self.events.subscribe()
    }

    /// Starts dialling `peer`, forever (until shutdown).
    pub fn dial(&mut self, peer: Ticket) {
        let (node, config, events) = (self.node.clone(), self.config.clone(), self.events.clone());
        self.tasks
            .spawn(async move { dial_forever(node, peer, config, events).await });
    }

    /// Starts the node's accept loop.
    pub fn accept(&mut self) {
        let node = self.node.clone();
        self.tasks.spawn(async move { node.accept_loop().await });
    }

    /// Shuts the node down gracefully and waits up to `grace` for every task
    /// to end; the tasks still running then are aborted.
    pub async fn shutdown(&mut self, grace: Duration) -> Stopped {
        self.node.shutdown();
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if drained {
            return Stopped {
                drained,
                cut: Vec::new(),
            };
        }
        let cut = self.node.in_flight().snapshot();
        if cut.is_empty() {
            // Dials still connecting and idle links: stopping them loses nothing.
            info!(
                ?grace,
                "stopping what was still connecting at the end of the grace period"
            );
        }
        for work in &cut {
            warn!(%work, "cut short at the end of the grace period");
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        Stopped { drained, cut }
    }
}

/// How a [`Supervisor::shutdown`] went.
#[derive(Debug)]
pub struct Stopped {
    /// Every task ended within the grace period.
    pub drained: bool,
    /// The work still under way when the grace period ran out: empty when
    /// nothing was cut short (a dial still connecting is not work).
    pub cut: Vec<Work>,
}

/// Syncs with one peer until shutdown, pausing between dials as
/// [`Schedule`] says.
async fn dial_forever(
    node: Node,
    peer: Ticket,
    config: DialConfig,
    events: broadcast::Sender<Dialled>,
) {
    let mut schedule = Schedule::new(&config);
    loop {
        let started = Instant::now();
        let result = node.sync_with(&peer, config.protocol).await;
        if node.is_shutting_down() {
            return;
        }
        let outcome = outcome(&peer, result, started.elapsed());
        let pause = schedule.pause_after(&outcome);
        let _ = events.send(Dialled {
            peer: peer.id,
            outcome,
            pause,
        });
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = node.shutting_down() => return,
        }
    }
}

/// What a dial's result means for the schedule, logged as it is classed.
fn outcome(
    peer: &Ticket,
    result: Result<SessionReport, SyncError>,
    lasted: Duration,
) -> DialOutcome {
    match result {
        Ok(report) if report.live.is_some() => {
            info!(peer = %peer.id.fmt_short(), "live link ended; redialling");
            DialOutcome::LinkEnded { lasted }
        }
        Ok(report) => {
            info!(peer = %peer.id.fmt_short(), sent = report.assets_sent,
                  received = report.assets_received, "synced with peer");
            DialOutcome::Synced
        }
        Err(err) => {
            warn!(peer = %peer.id.fmt_short(), error = %err, "sync failed");
            DialOutcome::Failed(err.to_string())
        }
    }
}

/// The pauses between dials of one peer. Pure: it says how long, the dial
/// loop sleeps.
#[derive(Debug)]
struct Schedule {
    /// Pauses after failures, reset by a success.
    backoff: Backoff,
    /// The pause before redialling a stable live link.
    redial: Duration,
    /// The pause between one-shot sessions.
    resync: Duration,
    /// Live links shorter than this are failures.
    stable_link: Duration,
}

impl Schedule {
    fn new(config: &DialConfig) -> Self {
        Self {
            backoff: Backoff::new(config.first_backoff, config.max_backoff),
            redial: config.first_backoff,
            resync: config.resync,
            stable_link: config.stable_link,
        }
    }

    /// The pause before the dial that follows `outcome`.
    fn pause_after(&mut self, outcome: &DialOutcome) -> Duration {
        match outcome {
            DialOutcome::Failed(_) => self.backoff.next_pause(),
            DialOutcome::LinkEnded { lasted } if *lasted < self.stable_link => {
                self.backoff.next_pause()
            }
            DialOutcome::LinkEnded { .. } => {
                self.backoff.reset();
                self.redial
            }
            DialOutcome::Synced => {
                self.backoff.reset();
                self.resync
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule::new(&DialConfig {
            resync: Duration::from_secs(7),
            ..DialConfig::default()
        })
    }

    /// Asserts `pause` is `base` plus at most half of it again (the jitter).
    #[track_caller]
    fn assert_backoff(pause: Duration, base_ms: u64) {
        let base = Duration::from_millis(base_ms);
        assert!(
            pause >= base && pause <= base + base / 2,
            "{pause:?} is not {base:?} plus jitter"
        );
    }

    #[test]
    fn failures_back_off_to_the_cap_and_a_success_resets() {
        let mut schedule = schedule();
        let failed = DialOutcome::Failed("unreachable".into());
        for base_ms in [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000] {
            assert_backoff(schedule.pause_after(&failed), base_ms);
        }
        assert_eq!(
            schedule.pause_after(&DialOutcome::Synced),
            Duration::from_secs(7),
            "a completed session waits for the resync interval"
        );
        assert_backoff(schedule.pause_after(&failed), 250);
    }

    #[test]
    fn a_live_link_that_ends_early_counts_as_a_failure() {
        let mut schedule = schedule();
        let short = DialOutcome::LinkEnded {
            lasted: Duration::from_secs(2),
        };
        assert_backoff(schedule.pause_after(&short), 250);
        assert_backoff(schedule.pause_after(&short), 500);
        assert_backoff(schedule.pause_after(&short), 1000);
        let stable = DialOutcome::LinkEnded {
            lasted: Duration::from_secs(60),
        };
        assert_eq!(
            schedule.pause_after(&stable),
            Duration::from_millis(250),
            "a stable link is redialled after the first pause, without jitter"
        );
        assert_backoff(schedule.pause_after(&DialOutcome::Failed("x".into())), 250);
    }
}
