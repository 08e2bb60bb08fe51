//! One live offer, offerer side: the [`Offering`] machine on a new bi-stream,
//! with the engine's send pipeline writing what the peer wants.
//!
//! The stream changes hands once: the driver writes the offer, then the
//! engine takes the send half for the data (and finishes it after `DONE`),
//! while the driver keeps reading the receive half for the reply and the
//! `SUMMARY`.

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{our_summaries, Link};
use crate::asset::AssetHash;
use crate::engine::send::{self, SendOutcome};
use crate::engine::EngineError;
use crate::fault::Fault;
use crate::node::peers::Moved;
use crate::node::WorkKind;
use crate::session::driver::now;
use crate::session::live::{Offering, OfferingAnswer, OfferingRequest, MAX_OFFER_FRAME};
use crate::session::machine::{Machine, Transmit};
use crate::session::SessionError;
use crate::stream::{FrameReader, FrameWriter};

/// Offers `hashes` to the peer and sends what it wants. Returns what was
/// offered but not delivered: declined while another peer delivers it,
/// refused by the peer, or not readable here.
pub(super) async fn offer(
    link: &Link,
    hashes: Vec<AssetHash>,
) -> Result<Vec<AssetHash>, SessionError> {
    let mut batch = our_summaries(&link.can, hashes).await?;
    batch.retain(|s| !link.view.holds(&s.hash, s.version));
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let _work = link.in_flight.begin(
        link.conn.remote_id(),
        WorkKind::LiveOffer {
            assets: batch.len(),
        },
    );
    let (send_half, recv_half) = link.conn.open_bi().await?;
    let mut writer = Some(FrameWriter::new(send_half));
    let mut reader = FrameReader::new(recv_half, MAX_OFFER_FRAME);
    let mut machine = Offering::new(
        batch,
        link.engine.zstd_level,
        link.engine.idle_timeout,
        now(),
    );
    let mut sending: Option<BoxFuture<'_, Result<SendOutcome, EngineError>>> = None;

    let outcome = loop {
        if let Some(outcome) = machine.poll_outcome() {
            break outcome?;
        }
        while let Some(transmit) = machine.poll_transmit() {
            let (Transmit::Frame(frame), Some(writer)) = (transmit, writer.as_mut()) else {
                return Err(Fault::Bug("an offer writes only before its data".into()).into());
            };
            writer.send(frame).await?;
        }
        if let Some(OfferingRequest::Send(plan)) = machine.poll_request() {
            let stream = writer
                .take()
                .ok_or_else(|| Fault::Bug("an offer sends its data once".into()))?;
            sending = Some(
                send::run(
                    vec![stream],
                    link.can.clone(),
                    plan,
                    link.engine.clone(),
                    link.stats.clone(),
                )
                .boxed(),
            );
        }
        let deadline = machine.poll_timeout();
        let sent = async {
            match sending.as_mut() {
                Some(sending) => sending.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = reader.next(), if machine.wants_frames() => match read? {
                Some(frame) => machine.handle_frame(now(), frame),
                None => machine.handle_end(now()),
            },
            sent = sent => {
                sending = None;
                machine.handle_answer(now(), OfferingAnswer::Sent(sent));
            }
            () = sleep_until(deadline) => machine.handle_timeout(now()),
        }
    };
    for (hash, version) in &outcome.peer_holds {
        link.view.record(*hash, *version);
    }
    link.peers.moved(
        link.conn.remote_id(),
        Moved {
            assets_sent: outcome.assets_sent,
            bytes_sent: outcome.bytes_sent,
            rejects: outcome.rejects,
            ..Moved::default()
        },
    );
    Ok(outcome.undelivered)
}

/// Sleeps until `deadline`; never returns without one.
pub(super) async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
