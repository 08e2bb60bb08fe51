//! A node: an iroh endpoint plus a store, that runs sessions with peers.
//!
//! - [`keys`]: the persistent secret key of `--data-dir`;
//! - [`ticket`]: what peers dial;
//! - [`endpoint`]: binding, transport tuning, the allow-list;
//! - [`Node`]: dial a peer and run a session; accept peers and serve sessions.

use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::Connection;
use iroh::Endpoint;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::can::SharedCan;
use crate::session::{self, v1, Role, SessionError, SessionReport, ALPN_V1};

pub mod endpoint;
pub mod keys;
pub mod ticket;

pub use endpoint::{bind, EndpointOptions};
pub use ticket::Ticket;

/// Which protocol a dialer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The original protocol, `can-sync/1`.
    V1,
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
}

impl Node {
    /// A node over a bound endpoint and a store.
    pub fn new(endpoint: Endpoint, can: SharedCan) -> Self {
        Self {
            endpoint,
            can,
            v1: Arc::new(v1::V1Config::default()),
        }
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
    pub async fn sync_with(
        &self,
        peer: &Ticket,
        protocol: Protocol,
    ) -> Result<SessionReport, SyncError> {
        let Protocol::V1 = protocol;
        let conn = self
            .endpoint
            .connect(peer.endpoint_addr(), ALPN_V1)
            .await
            .map_err(|err| SyncError::Connect {
                peer: peer.id.fmt_short().to_string(),
                reason: err.to_string(),
            })?;
        let result = v1::run(&conn, &self.can, Role::Initiator, &self.v1).await;
        if let Err(err) = &result {
            close_with_error(&conn, err);
        }
        Ok(result?)
    }

    /// Accepts connections until the endpoint closes, serving one session per
    /// connection; each runs in its own task, so one bad peer stalls no other.
    pub async fn accept_loop(&self) {
        let mut sessions = JoinSet::new();
        while let Some(incoming) = self.endpoint.accept().await {
            let node = self.clone();
            sessions.spawn(async move {
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(err) => {
                        // Includes peers the allow-list refused.
                        info!(error = %err, "incoming connection failed");
                        return;
                    }
                };
                node.serve(conn).await;
            });
            // Reap finished sessions so the set does not grow with history.
            while sessions.try_join_next().is_some() {}
        }
        sessions.shutdown().await;
    }

    async fn serve(&self, conn: Connection) {
        let peer = conn.remote_id().fmt_short();
        let result = match conn.alpn() {
            ALPN_V1 => v1::run(&conn, &self.can, Role::Responder, &self.v1).await,
            other => {
                warn!(%peer, alpn = %String::from_utf8_lossy(other), "unexpected ALPN");
                return;
            }
        };
        match result {
            Ok(_) => {
                // The initiator closes once it has our last byte; wait for it so
                // our final acknowledgements are not cut off.
                let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
            }
            Err(err) => {
                warn!(%peer, error = %err, "session failed");
                close_with_error(&conn, &err);
            }
        }
    }
}

fn close_with_error(conn: &Connection, err: &SessionError) {
    let code = match err {
        SessionError::Frame(_) | SessionError::Decode { .. } | SessionError::Protocol(_) => {
            session::CLOSE_PROTOCOL_ERROR
        }
        _ => session::CLOSE_SHUTDOWN,
    };
    let reason = err.to_string();
    conn.close(code.into(), &reason.as_bytes()[..reason.len().min(200)]);
}
