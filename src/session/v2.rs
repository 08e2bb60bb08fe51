//! Protocol v2 (ALPN `can-sync/2`): the pipelined session.
//!
//! On the control bi-stream opened by the initiator:
//! 1. `HELLO` both ways; the session uses the smaller of each limit (streams,
//!    inline limit, frame length);
//! 2. `RECON`: each side sends its summaries in the compact encoding of
//!    [`recon::compact`] (raw hashes, varints, zstd) and computes
//!    [`recon::diff`] — a full exchange, behind an interface a sub-linear
//!    scheme can replace without touching the engine;
//! 3. each side's [send pipeline](crate::engine::send) opens exactly the
//!    negotiated number of uni-streams and sends what the peer lacks, while its
//!    [receive pipeline](crate::engine::receive) takes the peer's streams;
//! 4. when everything it received is pushed or rejected, each side sends
//!    `SUMMARY{received, rejected}` then `DONE` and finishes the control
//!    stream; the session is complete when both summaries are in.
//!
//! The initiator then closes the connection with [`CLOSE_DONE`](super::CLOSE_DONE),
//! unless both `HELLO`s carried the [`FEATURE_LIVE`] feature: then the
//! connection stays open for [live sync](crate::node::live).

use std::sync::Arc;
use std::time::Instant;

use iroh::endpoint::Connection;
use tracing::info;

use super::framed::{FrameReader, FrameWriter};
use super::{decode, Rejected, Role, SessionError, SessionReport};
use crate::asset::AssetHash;
use crate::can::SharedCan;
use crate::engine::{receive, send, EngineConfig, EngineStats};
use crate::pb;
use crate::recon::{self, compact};
use crate::wire::FrameType;

/// ALPN of protocol v2.
pub const ALPN_V2: &[u8] = b"can-sync/2";

/// Protocol version announced in `HELLO`.
pub const VERSION: u32 = 2;

/// The `HELLO` feature of a side that keeps the connection for live sync.
pub const FEATURE_LIVE: &str = "live";

/// Most summaries accepted from one peer in one session.
pub const MAX_SUMMARIES: u64 = 50_000_000;

/// Largest control-stream frame: the compact summaries of a large archive.
pub(crate) const MAX_CONTROL_FRAME: u32 = 1024 * 1024 * 1024;

/// The limits both sides settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Data streams each side opens.
    pub streams: u32,
    /// Inline limit for assets.
    pub inline_limit: u64,
    /// Both sides keep the connection for live sync.
    pub live: bool,
}

/// Settles on the smaller of each limit; a peer offering zero streams or a
/// zero inline limit is refused.
pub fn negotiate(ours: &pb::Hello, theirs: &pb::Hello) -> Result<Negotiated, SessionError> {
    if theirs.version < VERSION {
        return Err(SessionError::Protocol(format!(
            "peer speaks protocol version {} on the v2 ALPN",
            theirs.version
        )));
    }
    let streams = ours.max_streams.min(theirs.max_streams);
    let inline_limit = ours.inline_limit.min(theirs.inline_limit);
    if streams == 0 || inline_limit == 0 {
        return Err(SessionError::Protocol(
            "peer offered zero streams or a zero inline limit".into(),
        ));
    }
    let live = [ours, theirs]
        .iter()
        .all(|hello| hello.features.iter().any(|f| f == FEATURE_LIVE));
    Ok(Negotiated {
        streams,
        inline_limit,
        live,
    })
}

fn hello(config: &EngineConfig, live: bool) -> pb::Hello {
    pb::Hello {
        version: VERSION,
        max_streams: config.streams,
        codecs: vec!["zstd".into(), "raw".into()],
        inline_limit: config.inline_limit,
        features: if live {
            vec![FEATURE_LIVE.into()]
        } else {
            Vec::new()
        },
        max_frame_len: config.max_frame_len(),
    }
}

/// Runs one v2 session on `conn` against the local store `can`; `live` asks
/// the peer to keep the connection for live sync afterwards.
pub async fn run(
    conn: &Connection,
    can: &SharedCan,
    role: Role,
    config: &EngineConfig,
    stats: &Arc<EngineStats>,
    live: bool,
) -> Result<SessionReport, SessionError> {
    let started = Instant::now();
    let peer = conn.remote_id().fmt_short();
    let (send_stream, recv_stream) = match role {
        Role::Initiator => conn.open_bi().await?,
        Role::Responder => conn.accept_bi().await?,
    };
    let mut control_out = FrameWriter::new(send_stream);
    let mut control_in = FrameReader::new(recv_stream, MAX_CONTROL_FRAME);
    let idle = config.idle_timeout;

    // 1. HELLO.
    let ours = hello(config, live);
    let (sent, theirs) = tokio::join!(
        control_out.send_msg(FrameType::Hello, &ours),
        expect(&mut control_in, FrameType::Hello, "Hello", Some(idle)),
    );
    sent?;
    let theirs: pb::Hello = theirs?;
    let limits = negotiate(&ours, &theirs)?;
    let mut config = config.clone();
    config.streams = limits.streams;
    config.inline_limit = limits.inline_limit;
    // Chunks never exceed the inline limit, so they fit the peer's frame limit.
    config.chunk_bytes = config.chunk_bytes.min(limits.inline_limit as usize);
    let config = Arc::new(config);

    // 2. RECON: a full compact exchange.
    let our_summaries: Vec<_> = can
        .list(None)
        .await?
        .into_iter()
        .map(|s| s.truncated(compact::DIGEST_PREFIX))
        .collect();
    let packed = compact::encode(&our_summaries, config.zstd_level);
    let round = pb::Recon {
        packed_summaries: packed.into(),
        wants: Default::default(),
        done: true,
    };
    let (sent, theirs) = tokio::join!(
        control_out.send_msg(FrameType::Recon, &round),
        expect::<pb::Recon>(&mut control_in, FrameType::Recon, "Recon", Some(idle)),
    );
    sent?;
    let their_summaries = compact::decode(&theirs?.packed_summaries, MAX_SUMMARIES)
        .map_err(|err| SessionError::Protocol(format!("peer summaries: {err}")))?;
    let diff = recon::diff(&our_summaries, &their_summaries);
    let sizes: std::collections::HashMap<AssetHash, u64> =
        our_summaries.iter().map(|s| (s.hash, s.size)).collect();
    let plan = send::SendPlan {
        assets: diff
            .assets_to_send
            .iter()
            .map(|h| (*h, sizes.get(h).copied().unwrap_or(0)))
            .collect(),
        meta: diff.meta_to_send.clone(),
    };
    info!(%peer, ours = our_summaries.len(), theirs = their_summaries.len(),
          to_send = plan.assets.len(), to_receive = diff.assets_to_receive.len(),
          streams = limits.streams, "v2 reconciled");

    // 3 and 4: send, receive then summarize, and read the peer's summary, all
    // at once.
    let mut data_streams = Vec::new();
    for _ in 0..limits.streams {
        data_streams.push(FrameWriter::new(conn.open_uni().await?));
    }
    let sending = send::run(
        data_streams,
        can.clone(),
        plan,
        config.clone(),
        stats.clone(),
    );
    let receiving = async {
        let readers = accept_data_streams(conn, &config, limits.streams);
        let outcome = receive::run(readers, can.clone(), config.clone(), stats.clone()).await?;
        send_summary(&mut control_out, &outcome).await?;
        Ok::<_, SessionError>(outcome)
    };
    let (sent, mut received, peer_summary) =
        tokio::try_join!(sending, receiving, read_summary(&mut control_in))?;

    if role == Role::Initiator && !limits.live {
        conn.close(super::CLOSE_DONE.into(), b"session complete");
    }
    let live = limits.live.then(|| {
        Arc::new(super::LiveStart {
            engine: config.clone(),
            peer_holds: std::mem::take(&mut received.stored),
        })
    });
    let mut rejected = received.rejected;
    rejected.extend(sent.failed);
    rejected.extend(peer_refusals(peer_summary));
    let report = SessionReport {
        assets_sent: sent.assets,
        assets_received: received.assets,
        duplicates_received: received.duplicates,
        payload_bytes: sent.bytes + received.bytes,
        bytes_sent: sent.bytes,
        wire_bytes: sent.wire_bytes
            + received.wire_bytes
            + control_out.bytes_written
            + control_in.bytes_read,
        meta_sent: sent.meta,
        meta_applied: received.meta_applied,
        rejected,
        elapsed: started.elapsed(),
        live,
    };
    info!(%peer, sent = report.assets_sent, received = report.assets_received,
          rejected = report.rejected.len(), secs = report.elapsed.as_secs_f64(),
          "v2 session complete");
    Ok(report)
}

/// The peer's `count` data streams, each accepted within the idle timeout.
fn accept_data_streams(
    conn: &Connection,
    config: &EngineConfig,
    count: u32,
) -> impl futures::Stream<Item = Result<FrameReader, SessionError>> + Unpin + use<> {
    let (conn, idle, max) = (conn.clone(), config.idle_timeout, config.max_frame_len());
    Box::pin(futures::stream::unfold(count, move |left| {
        let conn = conn.clone();
        async move {
            if left == 0 {
                return None;
            }
            let accepted = match tokio::time::timeout(idle, conn.accept_uni()).await {
                Ok(Ok(stream)) => Ok(FrameReader::new(stream, max)),
                Ok(Err(err)) => Err(SessionError::Connection(err)),
                Err(_) => Err(SessionError::Timeout(idle)),
            };
            Some((accepted, left - 1))
        }
    }))
}

/// Ends a control stream as a receiver does once everything it received is
/// pushed or rejected: `SUMMARY`, `DONE`, then finish.
pub(crate) async fn send_summary(
    out: &mut FrameWriter,
    outcome: &receive::ReceiveOutcome,
) -> Result<(), SessionError> {
    let summary = pb::SessionSummary {
        received: outcome.assets + outcome.duplicates,
        rejected: outcome
            .rejected
            .iter()
            .map(|r| pb::Rejection {
                hash: r
                    .hash
                    .parse::<AssetHash>()
                    .map(|h| bytes::Bytes::copy_from_slice(h.as_bytes()))
                    .unwrap_or_default(),
                reason: r.reason.clone(),
            })
            .collect(),
    };
    out.send_msg(FrameType::Summary, &summary).await?;
    out.send_msg(FrameType::Done, &pb::StreamDone::default())
        .await?;
    out.finish().await
}

/// Reads the peer's `SUMMARY`, `DONE` and the end of its control stream,
/// however long its receiving takes.
pub(crate) async fn read_summary(
    reader: &mut FrameReader,
) -> Result<pb::SessionSummary, SessionError> {
    let summary: pb::SessionSummary =
        expect(reader, FrameType::Summary, "SessionSummary", None).await?;
    let _: pb::StreamDone = expect(reader, FrameType::Done, "StreamDone", None).await?;
    reader.expect_end().await?;
    Ok(summary)
}

/// The assets a peer's summary says it refused, as our rejections.
pub(crate) fn peer_refusals(summary: pb::SessionSummary) -> impl Iterator<Item = Rejected> {
    summary.rejected.into_iter().map(|r| Rejected {
        hash: <[u8; 32]>::try_from(&r.hash[..])
            .map(|h| AssetHash::from_bytes(h).to_hex())
            .unwrap_or_default(),
        reason: format!("peer refused: {}", r.reason),
    })
}

/// Reads the next control frame, which must be `frame_type`, and decodes it.
/// `idle: None` waits as long as the data transfer takes (the peer sends its
/// summary only when its receiving is done).
pub(crate) async fn expect<M: prost::Message + Default>(
    reader: &mut FrameReader,
    frame_type: FrameType,
    what: &'static str,
    idle: Option<std::time::Duration>,
) -> Result<M, SessionError> {
    let next = match idle {
        Some(idle) => tokio::time::timeout(idle, reader.next())
            .await
            .map_err(|_| SessionError::Timeout(idle))??,
        None => reader.next().await?,
    };
    match next {
        Some((found, payload)) if found == frame_type => decode(what, &payload),
        Some((found, _)) => Err(SessionError::Protocol(format!(
            "expected {frame_type} on the control stream, got {found}"
        ))),
        None => Err(SessionError::Protocol(format!(
            "control stream ended before {frame_type}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_smaller_limits_and_refuses_zero() {
        let ours = hello(&EngineConfig::default(), true);
        let mut theirs = hello(&EngineConfig::default(), false);
        theirs.max_streams = 2;
        theirs.inline_limit = 4096;
        assert_eq!(
            negotiate(&ours, &theirs).unwrap(),
            Negotiated {
                streams: 2,
                inline_limit: 4096,
                live: false,
            }
        );
        theirs.features = vec![FEATURE_LIVE.into()];
        assert!(negotiate(&ours, &theirs).unwrap().live);
        theirs.max_streams = 0;
        assert!(negotiate(&ours, &theirs).is_err());
        theirs.max_streams = 2;
        theirs.version = 1;
        assert!(negotiate(&ours, &theirs).is_err());
    }
}
