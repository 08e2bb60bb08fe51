//! Runs a [v1 session](crate::session::v1) on a connection: one bi-stream,
//! requests served by the store one at a time as the machine asks.

use std::sync::Mutex;
use std::time::Instant;

use futures::FutureExt;
use iroh::endpoint::Connection;
use tracing::info;

use tokio::sync::OwnedSemaphorePermit;

use super::{accept_session_stream, drive, now, WholeStoreBudget};
use crate::can::SharedCan;
use crate::engine::EngineStats;
use crate::session::v1::{Answer, Request, Session, V1Config};
use crate::session::{Role, SessionError, SessionReport};
use crate::stream::{FrameReader, FrameWriter};

/// Runs one v1 session on `conn` against the local store `can`; its listing
/// of the whole store waits for a permit of `budget`.
pub async fn run(
    conn: &Connection,
    can: &SharedCan,
    role: Role,
    config: &V1Config,
    stats: &EngineStats,
    budget: &WholeStoreBudget,
) -> Result<SessionReport, SessionError> {
    let listing = Mutex::new(None);
    let started = Instant::now();
    let (send, recv) = match role {
        Role::Initiator => conn.open_bi().await?,
        Role::Responder => accept_session_stream(conn, config.idle_timeout).await?,
    };
    let mut machine = Session::new(role, config.clone(), now());
    let reader = FrameReader::new(recv, machine.max_frame_len());
    let driven = drive(&mut machine, reader, FrameWriter::new(send), |request| {
        serve(conn, can, stats, budget, &listing, request).boxed()
    })
    .await;
    let outcome = driven.outcome?;
    if let Some(code) = outcome.close {
        conn.close(code.into(), b"session complete");
    }
    let mut report = outcome.report;
    report.wire_bytes = driven.written + driven.read;
    report.elapsed = started.elapsed();
    info!(peer = %conn.remote_id().fmt_short(), sent = report.assets_sent,
          received = report.assets_received, rejected = report.rejected.len(),
          "v1 session complete");
    Ok(report)
}

/// Serves one request from the store, counting what moves for progress.
async fn serve(
    conn: &Connection,
    can: &SharedCan,
    stats: &EngineStats,
    budget: &WholeStoreBudget,
    listing: &Mutex<Option<OwnedSemaphorePermit>>,
    request: Request,
) -> Answer {
    match request {
        Request::List => Answer::Listed(budget.list_all(conn, can.as_ref(), listing).await),
        Request::Pull(batch) => {
            let pulled = can.pull(&batch).await;
            if let Ok(pulled) = &pulled {
                let bytes = pulled.bundles.iter().map(|b| b.data.len() as u64).sum();
                EngineStats::add(&stats.assets_sent, pulled.bundles.len() as u64);
                EngineStats::add(&stats.bytes_sent, bytes);
            }
            Answer::Pulled(pulled)
        }
        Request::Meta(hash) => Answer::Meta(hash, can.meta(hash).await),
        Request::Push(bundle) => {
            let (hash, size) = (bundle.hash, bundle.data.len() as u64);
            let pushed = can.push(bundle).await;
            if matches!(&pushed, Ok(p) if !p.already_existed) {
                EngineStats::add(&stats.assets_received, 1);
                EngineStats::add(&stats.bytes_received, size);
            }
            Answer::Pushed(hash, size, pushed)
        }
        Request::ApplyMeta(update) => {
            let hash = update.hash;
            Answer::MetaApplied(hash, can.apply_meta(update).await)
        }
    }
}
