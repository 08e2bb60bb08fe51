//! Protocol v1 (ALPN `can-sync/1`): the original agent's session, kept for old
//! peers and as the baseline every benchmark compares against.
//!
//! On one bi-stream opened by the initiator:
//! 1. both sides send `HASH_SET` (every summary they hold) and read the peer's —
//!    at the same time, so two large sets cannot block each other on flow control;
//! 2. each computes [`recon::diff`];
//! 3. each sends, concurrently with receiving, the assets the peer lacks as
//!    `ASSET_BUNDLE` frames (pulled from the CAN ten at a time, one bundle in
//!    flight, uncompressed), then `META_UPDATE` for assets whose metadata wins
//!    LWW here, then `DONE`, and finishes its side of the stream;
//! 4. the receiver pushes each bundle to its CAN (which verifies the BLAKE3) and
//!    applies each update by LWW. A bundle the CAN refuses is recorded in the
//!    report and the session goes on: it is left for the next session.
//!
//! The initiator sends `DONE` when it has sent everything; the responder only
//! once it has also received and pushed everything the initiator sent. So when
//! the initiator reads the responder's `DONE`, both stores are complete, and it
//! closes the connection with [`CLOSE_DONE`](super::CLOSE_DONE). (Original
//! peers read until `DONE` whenever it comes, so this stays compatible.)

use std::time::{Duration, Instant};

use bytes::Bytes;
use iroh::endpoint::Connection;
use tracing::{debug, info, warn};

use super::framed::{FrameReader, FrameWriter};
use super::{decode, Rejected, Role, SessionError, SessionReport};
use crate::asset::{Bundle, MetaUpdate};
use crate::can::{CanError, SharedCan};
use crate::engine::EngineStats;
use crate::pb;
use crate::recon::{self, Diff};
use crate::wire::FrameType;

/// Knobs of a v1 session.
#[derive(Debug, Clone)]
pub struct V1Config {
    /// Largest frame accepted. v1 carries a whole asset (or the whole hash set)
    /// in one frame, so this bounds the largest asset it can move.
    pub max_frame_len: u32,
    /// Assets pulled from the CAN per request (10 in the original agent).
    pub pull_batch: usize,
    /// How long the peer may stay silent before the session fails.
    pub idle_timeout: Duration,
}

impl Default for V1Config {
    fn default() -> Self {
        Self {
            max_frame_len: 256 * 1024 * 1024,
            pull_batch: 10,
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// What the receiving half counted.
#[derive(Default)]
struct Received {
    assets: u64,
    duplicates: u64,
    bytes: u64,
    meta_applied: u64,
    rejected: Vec<Rejected>,
}

/// What the sending half counted.
#[derive(Default)]
struct Sent {
    assets: u64,
    bytes: u64,
    meta: u64,
}

/// Runs one v1 session on `conn` against the local store `can`.
pub async fn run(
    conn: &Connection,
    can: &SharedCan,
    role: Role,
    config: &V1Config,
    stats: &EngineStats,
) -> Result<SessionReport, SessionError> {
    let started = Instant::now();
    let peer = conn.remote_id().fmt_short();
    let (send, recv) = match role {
        Role::Initiator => conn.open_bi().await?,
        Role::Responder => conn.accept_bi().await?,
    };
    let mut writer = FrameWriter::new(send);
    let mut reader = FrameReader::new(recv, config.max_frame_len);

    let ours = can.list(None).await?;
    let our_set = pb::PeerHashSet {
        assets: ours.iter().map(|s| s.to_pb()).collect(),
    };
    let (sent_set, their_set) = tokio::join!(
        writer.send_msg(FrameType::HashSet, &our_set),
        read_hash_set(&mut reader, config.idle_timeout),
    );
    sent_set?;
    let their_set = their_set?;
    let theirs = their_set
        .assets
        .iter()
        .map(crate::asset::Summary::from_pb)
        .collect::<Result<Vec<_>, _>>()?;
    let diff = recon::diff(&ours, &theirs);
    info!(
        %peer,
        ours = ours.len(),
        theirs = their_set.assets.len(),
        to_send = diff.assets_to_send.len(),
        to_receive = diff.assets_to_receive.len(),
        meta_to_send = diff.meta_to_send.len(),
        "v1 diff"
    );

    // The responder ends its side only once it holds everything the initiator
    // sent: so when the initiator reads that DONE, both stores are complete.
    let (sent, received) = match role {
        Role::Initiator => tokio::try_join!(
            async {
                let sent = send_missing(can, &mut writer, &diff, config, stats).await?;
                end_stream(&mut writer).await?;
                Ok(sent)
            },
            receive_until_done(can, &mut reader, config.idle_timeout, stats),
        )?,
        Role::Responder => {
            let both = tokio::try_join!(
                send_missing(can, &mut writer, &diff, config, stats),
                receive_until_done(can, &mut reader, config.idle_timeout, stats),
            )?;
            end_stream(&mut writer).await?;
            both
        }
    };

    if role == Role::Initiator {
        conn.close(super::CLOSE_DONE.into(), b"session complete");
    }
    let report = SessionReport {
        assets_sent: sent.assets,
        assets_received: received.assets,
        duplicates_received: received.duplicates,
        payload_bytes: sent.bytes + received.bytes,
        bytes_sent: sent.bytes,
        wire_bytes: writer.bytes_written + reader.bytes_read,
        meta_sent: sent.meta,
        meta_applied: received.meta_applied,
        rejected: received.rejected,
        elapsed: started.elapsed(),
        live: None,
    };
    info!(%peer, sent = report.assets_sent, received = report.assets_received,
          rejected = report.rejected.len(), "v1 session complete");
    Ok(report)
}

async fn read_hash_set(
    reader: &mut FrameReader,
    idle: Duration,
) -> Result<pb::PeerHashSet, SessionError> {
    match next_frame(reader, idle).await? {
        Some((FrameType::HashSet, payload)) => decode("PeerHashSet", &payload),
        Some((other, _)) => Err(SessionError::Protocol(format!(
            "expected HASH_SET first, got {other:?}"
        ))),
        None => Err(SessionError::Protocol(
            "stream ended before the peer's HASH_SET".into(),
        )),
    }
}

async fn next_frame(
    reader: &mut FrameReader,
    idle: Duration,
) -> Result<Option<(FrameType, Bytes)>, SessionError> {
    tokio::time::timeout(idle, reader.next())
        .await
        .map_err(|_| SessionError::Timeout(idle))?
}

async fn send_missing(
    can: &SharedCan,
    writer: &mut FrameWriter,
    diff: &Diff,
    config: &V1Config,
    stats: &EngineStats,
) -> Result<Sent, SessionError> {
    let mut sent = Sent::default();
    for batch in diff.assets_to_send.chunks(config.pull_batch.max(1)) {
        let pulled = can.pull(batch).await?;
        for hash in &pulled.missing {
            // Listed a moment ago, gone now: nothing to send.
            warn!(hash = %hash.short(), "asset vanished from the local store before sending");
        }
        for bundle in pulled.bundles {
            sent.bytes += bundle.data.len() as u64;
            let size = bundle.data.len() as u64;
            writer
                .send_msg(FrameType::AssetBundle, &bundle.into_pb())
                .await?;
            sent.assets += 1;
            EngineStats::add(&stats.assets_sent, 1);
            EngineStats::add(&stats.bytes_sent, size);
        }
    }
    for hash in &diff.meta_to_send {
        if let Some((_, meta)) = can.meta(*hash).await? {
            writer
                .send_msg(FrameType::MetaUpdate, &MetaUpdate::of(*hash, &meta).to_pb())
                .await?;
            sent.meta += 1;
        }
    }
    Ok(sent)
}

/// Sends `DONE` and waits until the peer has acknowledged every byte.
async fn end_stream(writer: &mut FrameWriter) -> Result<(), SessionError> {
    writer.send(FrameType::Done, &[]).await?;
    writer.finish().await
}

async fn receive_until_done(
    can: &SharedCan,
    reader: &mut FrameReader,
    idle: Duration,
    stats: &EngineStats,
) -> Result<Received, SessionError> {
    let mut received = Received::default();
    loop {
        match next_frame(reader, idle).await? {
            None => {
                return Err(SessionError::Protocol(
                    "peer finished its stream without DONE".into(),
                ))
            }
            Some((FrameType::Done, _)) => {
                reader.expect_end().await?;
                return Ok(received);
            }
            Some((FrameType::AssetBundle, payload)) => {
                let bundle: pb::AssetBundle = decode("AssetBundle", &payload)?;
                let bundle = Bundle::from_pb(bundle)?;
                let hash = bundle.hash.to_hex();
                let size = bundle.data.len() as u64;
                match can.push(bundle).await {
                    Ok(pushed) if pushed.already_existed => received.duplicates += 1,
                    Ok(_) => {
                        received.assets += 1;
                        received.bytes += size;
                        EngineStats::add(&stats.assets_received, 1);
                        EngineStats::add(&stats.bytes_received, size);
                    }
                    Err(err) => {
                        warn!(%hash, error = %err, "refused an asset from the peer");
                        received.rejected.push(Rejected {
                            hash,
                            reason: err.to_string(),
                        });
                    }
                }
            }
            Some((FrameType::MetaUpdate, payload)) => {
                let update: pb::MetaUpdate = decode("MetaUpdate", &payload)?;
                let update = MetaUpdate::from_pb(update)?;
                let hash = update.hash.to_hex();
                match can.apply_meta(update).await {
                    Ok(true) => received.meta_applied += 1,
                    Ok(false) => debug!(%hash, "metadata update lost LWW"),
                    Err(CanError::NotFound(_)) => {
                        debug!(%hash, "metadata update for an asset we do not hold")
                    }
                    Err(err) => received.rejected.push(Rejected {
                        hash,
                        reason: format!("metadata: {err}"),
                    }),
                }
            }
            Some((other, _)) => {
                return Err(SessionError::Protocol(format!(
                    "{other:?} is not a v1 frame after HASH_SET"
                )))
            }
        }
    }
}
