//! [`Fault`]: a failure of this node's own side.
//!
//! The counterpart of [`Violation`](crate::wire::Violation): a fault is never
//! the peer's doing, so it never closes a connection as a protocol error. A
//! connection ends with [`CLOSE_SHUTDOWN`](crate::wire::CLOSE_SHUTDOWN) for it,
//! a stream is reset with [`RESET_LOCAL_FAILURE`](crate::wire::RESET_LOCAL_FAILURE),
//! and the peer retries later.

use crate::can::CanError;

/// Why this node could not go on, through no fault of the peer.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The local store failed in a way that stops the work.
    #[error("local store: {0}")]
    Store(#[from] CanError),
    /// This node is shutting down.
    #[error("this node is shutting down")]
    Shutdown,
    /// A bug of ours: a task panicked or an internal channel closed early.
    #[error("internal error (a bug): {0}")]
    Bug(String),
}

impl Fault {
    /// A task that failed to complete: always our bug (tasks are only
    /// cancelled by dropping their set, which ends the work first).
    pub fn task(what: &str, err: tokio::task::JoinError) -> Self {
        Self::Bug(format!("{what} task: {err}"))
    }
}
