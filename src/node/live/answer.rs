//! The inbound half of live sync: accepts the peer's offers and answers each
//! on its own task with the [`Answering`] machine.
//!
//! The stream changes hands once: the driver reads the offer and writes the
//! reply, then the engine's receive pipeline takes the receive half for the
//! data, while the driver keeps the send half for the `SUMMARY`. Claims taken
//! for the wanted assets are held until everything is stored, so no other
//! peer delivers them meanwhile.

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use iroh::endpoint::{RecvStream, SendStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::debug;

use super::offer::sleep_until;
use super::{our_summaries, settle, Claim, Link};
use crate::asset::AssetHash;
use crate::engine::receive::{self, ReceiveOutcome};
use crate::engine::EngineError;
use crate::fault::Fault;
use crate::node::peers::Moved;
use crate::session::driver::now;
use crate::session::live::{Answering, AnsweringAnswer, AnsweringRequest, MAX_OFFER_FRAME};
use crate::session::machine::{Machine, Transmit};
use crate::session::SessionError;
use crate::stream::{FrameReader, FrameWriter, StreamError};
use crate::wire::RESET_LOCAL_FAILURE;

/// Accepts the peer's offers until the connection ends or the node shuts
/// down, answering up to `offers_in_flight` at once.
pub(super) async fn answer_offers(link: &Arc<Link>) -> Result<(), SessionError> {
    let slots = Arc::new(Semaphore::new(link.config.offers_in_flight.max(1)));
    let mut answers: JoinSet<Result<(), SessionError>> = JoinSet::new();
    let mut outcome = Ok(());
    loop {
        let accepted = tokio::select! {
            biased;
            _ = link.shutdown.cancelled() => break,
            Some(done) = answers.join_next(), if !answers.is_empty() => {
                let result = done.unwrap_or_else(|err| Err(Fault::task("live answer", err).into()));
                if let Err(err) = settle(link, "answer", result) {
                    outcome = Err(err);
                    break;
                }
                continue;
            }
            accepted = async {
                let permit = slots.clone().acquire_owned().await.expect("semaphore open");
                (permit, link.conn.accept_bi().await)
            } => accepted,
        };
        match accepted {
            (permit, Ok((send_half, recv_half))) => {
                let link = link.clone();
                answers.spawn(async move {
                    let _slot = permit;
                    answer(&link, send_half, recv_half).await
                });
            }
            (_, Err(err)) => {
                let err = SessionError::from(StreamError::from(err));
                if !err.is_clean_close() {
                    outcome = Err(err);
                }
                break;
            }
        }
    }
    // Pushes in flight finish before the connection is closed.
    while let Some(done) = answers.join_next().await {
        if let Ok(Err(err)) = done {
            debug!(error = %err, "answer ended with the link");
        }
    }
    outcome
}

/// Answers one offer. When our own side fails, the stream is reset with
/// [`RESET_LOCAL_FAILURE`] so the offerer retries instead of taking a short
/// stream for a broken peer.
async fn answer(
    link: &Link,
    send_half: SendStream,
    recv_half: RecvStream,
) -> Result<(), SessionError> {
    let _work = link
        .in_flight
        .begin(link.conn.remote_id(), crate::node::WorkKind::LiveAnswer);
    let mut writer = FrameWriter::new(send_half);
    let result = answer_on(
        link,
        FrameReader::new(recv_half, MAX_OFFER_FRAME),
        &mut writer,
    )
    .await;
    if let Err(SessionError::Local(_)) = &result {
        writer.reset(RESET_LOCAL_FAILURE);
    }
    result
}

async fn answer_on(
    link: &Link,
    reader: FrameReader<RecvStream>,
    writer: &mut FrameWriter<SendStream>,
) -> Result<(), SessionError> {
    let mut reader = Some(reader);
    let mut machine = Answering::new(link.engine.zstd_level, link.engine.idle_timeout, now());
    let mut claims: Vec<Claim> = Vec::new();
    let mut receiving: Option<BoxFuture<'_, Result<ReceiveOutcome, EngineError>>> = None;
    let outcome = loop {
        if let Some(outcome) = machine.poll_outcome() {
            break outcome?;
        }
        // Work done here without waiting may have moved the machine on:
        // look at it again before waiting.
        let mut progressed = false;
        while let Some(transmit) = machine.poll_transmit() {
            match transmit {
                Transmit::Frame(frame) => writer.send(frame).await?,
                Transmit::Finish => {
                    writer.finish().await?;
                    machine.handle_finished(now());
                    progressed = true;
                }
            }
        }
        while let Some(request) = machine.poll_request() {
            match request {
                AnsweringRequest::Claim(offered) => {
                    let answer = claim(link, &offered, &mut claims).await?;
                    machine.handle_answer(now(), answer);
                    progressed = true;
                }
                AnsweringRequest::Receive => {
                    let mut stream = reader
                        .take()
                        .ok_or_else(|| Fault::Bug("an answer receives once".into()))?;
                    // From here the stream carries data frames, bounded like a session's.
                    stream.set_max_len(link.engine.max_frame_len());
                    receiving = Some(
                        receive::run_settling(
                            futures::stream::iter([Ok(stream)]),
                            link.can.clone(),
                            link.engine.clone(),
                            link.stats.clone(),
                            None,
                            Some(link.conn.remote_id()),
                        )
                        .boxed(),
                    );
                }
            }
        }
        if progressed {
            continue;
        }
        let deadline = machine.poll_timeout();
        let received = async {
            match receiving.as_mut() {
                Some(receiving) => receiving.await,
                None => std::future::pending().await,
            }
        };
        let wants_frames = machine.wants_frames() && reader.is_some();
        tokio::select! {
            read = async { reader.as_mut().expect("wanted").next().await }, if wants_frames => match read? {
                Some(frame) => machine.handle_frame(now(), frame),
                None => machine.handle_end(now()),
            },
            received = received => {
                receiving = None;
                machine.handle_answer(now(), AnsweringAnswer::Received(received));
            }
            () = sleep_until(deadline) => machine.handle_timeout(now()),
        }
    };
    // Everything wanted is stored (or rejected): other peers may offer again.
    drop(claims);
    let received = outcome.received;
    // Its events reach our own offers next: they are the peer's, not news.
    link.view.record_changes(&received.changes);
    link.refusals
        .rejected(&link.conn.remote_id(), &received.rejected);
    link.peers.moved(
        link.conn.remote_id(),
        Moved {
            assets_received: received.assets,
            bytes_received: received.bytes,
            duplicates: received.duplicates,
            rejects: received.rejected.len() as u64,
            ..Moved::default()
        },
    );
    Ok(())
}

/// Records what the offer says the peer holds, claims the offered assets this
/// node lacks, and looks up the ones it holds. Claim first, then look: an
/// asset that lands between the two is seen.
async fn claim(
    link: &Link,
    offered: &[crate::asset::Summary],
    claims: &mut Vec<Claim>,
) -> Result<AnsweringAnswer, SessionError> {
    let mut candidates = Vec::new();
    for summary in offered {
        link.view.record(summary.hash, summary.version);
        if link.engine.read_only_peer {
            // A peer that may only read: none of its offers is pulled.
            continue;
        }
        match link.claims.try_claim(summary.hash) {
            Some(claim) => {
                claims.push(claim);
                candidates.push(summary.hash);
            }
            None => {
                debug!(hash = %summary.hash, "offered while another peer delivers it; declined")
            }
        }
    }
    let held = our_summaries(&link.can, candidates).await?;
    let held_hashes: HashSet<AssetHash> = held.iter().map(|s| s.hash).collect();
    claims.retain(|claim| !held_hashes.contains(&claim.hash()));
    let wants = claims.iter().map(Claim::hash).collect();
    Ok(AnsweringAnswer::Claimed { held, wants })
}
