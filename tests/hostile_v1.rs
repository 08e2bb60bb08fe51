//! Hostile input on protocol v1: a peer that sends bad frames gets a typed
//! error, nothing bad is stored, and the node goes on serving others.
//!
//! The hostile peer is a raw iroh endpoint that speaks `can-sync/1` by hand; a
//! real node dials it with `sync_with`, so the error the node reports is what
//! the test asserts.

mod common;

use anyhow::Result;
use bytes::BytesMut;
use can_sync::asset::AssetHash;
use can_sync::engine::RejectReason;
use can_sync::node::{Protocol, SyncError};
use can_sync::session::SessionError;
use can_sync::wire::{encode_frame, FrameError, FrameType, Violation};
use common::{bundle, node, node_allowing, serve, store, Backend, TIMEOUT};
use iroh::endpoint::presets;
use iroh::Endpoint;
use prost::Message;

/// A raw endpoint that accepts one v1 connection, reads the dialer's
/// HASH_SET, then writes `script` and finishes its stream.
async fn hostile_peer(script: Vec<u8>) -> Result<(Endpoint, tokio::task::JoinHandle<Result<()>>)> {
    let endpoint = Endpoint::builder(presets::Minimal)
        .alpns(vec![can_sync::session::ALPN_V1.to_vec()])
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")?
        .bind()
        .await?;
    let accepting = endpoint.clone();
    let task = tokio::spawn(async move {
        let conn = accepting.accept().await.expect("one connection").await?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        let mut header = [0u8; 5];
        recv.read_exact(&mut header).await?;
        let len = u32::from_be_bytes(header[1..].try_into()?) as usize;
        let mut skip = vec![0u8; len];
        recv.read_exact(&mut skip).await?;
        send.write_all(&script).await?;
        send.finish()?;
        // Keep the connection until the node closes it.
        conn.closed().await;
        Ok(())
    });
    Ok((endpoint, task))
}

fn frame(frame_type: FrameType, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(frame_type, payload, &mut out).unwrap();
    out.to_vec()
}

fn empty_hash_set() -> Vec<u8> {
    frame(
        FrameType::HashSet,
        &can_sync::pb::PeerHashSet::default().encode_to_vec(),
    )
}

async fn dial(
    script: Vec<u8>,
) -> Result<(
    Result<can_sync::session::SessionReport, SyncError>,
    common::TestStore,
)> {
    let target = store(Backend::Embedded).await?;
    let victim = node(target.can.clone()).await?;
    let (peer, _task) = hostile_peer(script).await?;
    let ticket = can_sync::node::endpoint::ticket(&peer);
    let result = tokio::time::timeout(TIMEOUT, victim.sync_with(&ticket, Protocol::V1)).await?;
    Ok((result, target))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_hash_is_rejected_reported_and_not_stored() -> Result<()> {
    let mut forged = bundle(1, 3000, 10);
    let honest = bundle(2, 3000, 10);
    let mut corrupted = forged.data.to_vec();
    corrupted[0] ^= 0xff;
    forged.data = corrupted.into();
    let forged_hash: AssetHash = forged.hash;
    let mut script = empty_hash_set();
    script.extend(frame(
        FrameType::AssetBundle,
        &forged.clone().into_pb().encode_to_vec(),
    ));
    script.extend(frame(
        FrameType::AssetBundle,
        &honest.clone().into_pb().encode_to_vec(),
    ));
    script.extend(frame(FrameType::Done, &[]));
    let (result, target) = dial(script).await?;
    let report = result?;
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].hash, forged_hash);
    assert!(
        matches!(report.rejected[0].reason, RejectReason::HashMismatch { .. }),
        "{}",
        report.rejected[0].reason
    );
    assert_eq!(
        report.assets_received, 1,
        "the honest asset after it still lands"
    );
    assert!(
        target.can.meta(forged_hash).await?.is_none(),
        "nothing stored under the forged hash"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_is_refused_before_reading_it() -> Result<()> {
    let mut script = empty_hash_set();
    script.push(FrameType::AssetBundle as u8);
    script.extend_from_slice(&u32::MAX.to_be_bytes());
    let (result, _) = dial(script).await?;
    match result {
        Err(SyncError::Session(SessionError::Peer(Violation::Frame(FrameError::Oversized {
            len,
            ..
        })))) => {
            assert_eq!(len, u32::MAX)
        }
        other => panic!("expected an oversized-frame error, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_stream_is_an_error_not_a_short_success() -> Result<()> {
    let mut script = empty_hash_set();
    let whole = frame(
        FrameType::AssetBundle,
        &bundle(3, 500, 1).into_pb().encode_to_vec(),
    );
    script.extend_from_slice(&whole[..whole.len() / 2]);
    let (result, target) = dial(script).await?;
    assert!(
        matches!(
            result,
            Err(SyncError::Session(SessionError::Peer(Violation::Frame(
                FrameError::Truncated { .. }
            ))))
        ),
        "{result:?}"
    );
    assert_eq!(target.can.stats().await?.assets, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tag_malformed_protobuf_and_missing_done_are_typed_errors() -> Result<()> {
    let mut unknown = empty_hash_set();
    unknown.extend(frame(FrameType::Done, &[]));
    let done_at = unknown.len() - 5;
    unknown[done_at] = 0x7f;
    let (result, _) = dial(unknown).await?;
    assert!(
        matches!(
            result,
            Err(SyncError::Session(SessionError::Peer(Violation::Frame(
                FrameError::UnknownType(0x7f)
            ))))
        ),
        "{result:?}"
    );

    let mut garbage = empty_hash_set();
    garbage.extend(frame(FrameType::AssetBundle, &[0xff, 0xff, 0xff]));
    let (result, _) = dial(garbage).await?;
    assert!(
        matches!(
            result,
            Err(SyncError::Session(SessionError::Peer(Violation::Decode {
                message: "AssetBundle",
                ..
            })))
        ),
        "{result:?}"
    );

    let (result, _) = dial(empty_hash_set()).await?;
    assert!(
        matches!(
            result,
            Err(SyncError::Session(SessionError::Peer(
                Violation::EndedEarly {
                    missing: "DONE",
                    ..
                }
            )))
        ),
        "{result:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoint_is_refused_and_allowed_one_still_syncs() -> Result<()> {
    let (sa, sb, sc) = (
        store(Backend::Embedded).await?,
        store(Backend::Embedded).await?,
        store(Backend::Embedded).await?,
    );
    sa.can.push(bundle(1, 100, 1)).await?;
    sb.can.push(bundle(2, 100, 1)).await?;
    let friend = node(sc.can.clone()).await?;
    let guarded = node_allowing(sa.can.clone(), vec![friend.endpoint().id()]).await?;
    let stranger = node(sb.can.clone()).await?;
    let _accept = serve(&guarded);

    // Refused on both ALPNs, during the handshake, before any frame.
    for protocol in [Protocol::V1, Protocol::V2] {
        let refused =
            tokio::time::timeout(TIMEOUT, stranger.sync_with(&guarded.ticket(), protocol)).await?;
        // The access gate closes the connection right after the handshake
        // with NOT_ALLOWED; the stranger reads that as a refusal.
        let refused_by_code = matches!(&refused, Err(SyncError::Refused { .. }));
        assert!(
            refused_by_code,
            "a stranger must not get a {protocol:?} session: {refused:?}"
        );
    }
    assert_eq!(
        sa.can.stats().await?.assets,
        1,
        "nothing from the stranger was stored"
    );
    assert_eq!(
        sb.can.stats().await?.assets,
        1,
        "nothing was sent to the stranger"
    );

    let report =
        tokio::time::timeout(TIMEOUT, friend.sync_with(&guarded.ticket(), Protocol::V1)).await??;
    assert_eq!(report.assets_received, 1);
    Ok(())
}
