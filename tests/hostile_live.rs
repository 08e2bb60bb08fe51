//! Hostile input on the live phase of protocol v2: a peer that completes an
//! honest session, then breaks the live-offer exchange. Each case gets a
//! typed error, the connection is closed with PROTOCOL_ERROR, and nothing the
//! peer sent is stored.
//!
//! The hostile peer runs the library's own v2 session (so the live phase is
//! reached exactly as with a real node), then speaks raw frames.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::BytesMut;
use can_sync::asset::AssetHash;
use can_sync::can::Can;
use can_sync::engine::{EngineConfig, EngineStats};
use can_sync::node::{LiveConfig, Protocol, SyncError};
use can_sync::pb;
use can_sync::recon::compact;
use can_sync::session::{Role, SessionError, ALPN_V2, CLOSE_PROTOCOL_ERROR};
use can_sync::wire::{encode_frame, FrameError, FrameType, Violation};
use common::{bundle, memory_store, node, TIMEOUT};
use iroh::endpoint::{presets, Connection};
use iroh::Endpoint;
use prost::Message;

fn frame(frame_type: FrameType, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(frame_type, payload, &mut out).unwrap();
    out.to_vec()
}

type Script =
    Box<dyn FnOnce(Connection) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send>;

/// A peer that completes an honest live-enabled v2 session, then runs
/// `script` on the connection. Yields the code the victim closed it with.
async fn hostile_peer(
    script: Script,
) -> Result<(Endpoint, tokio::sync::oneshot::Receiver<Option<u64>>)> {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let endpoint = Endpoint::builder(presets::Minimal)
        .alpns(vec![ALPN_V2.to_vec()])
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")?
        .bind()
        .await?;
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        let run = async {
            let conn = accepting.accept().await.context("a connection")?.await?;
            let can = memory_store()?;
            let stats = Arc::new(EngineStats::default());
            let report = can_sync::session::driver::v2::run(
                &conn,
                &can,
                Role::Responder,
                &EngineConfig::default(),
                &stats,
                true,
            )
            .await?;
            anyhow::ensure!(
                report.live.is_some(),
                "the victim did not ask for live sync"
            );
            script(conn.clone()).await?;
            let code = common::close_code(&conn).await;
            let _ = closed_tx.send(code);
            anyhow::Ok(())
        };
        if let Err(err) = run.await {
            eprintln!("hostile peer: {err:#}");
        }
    });
    Ok((endpoint, closed_rx))
}

/// Dials the hostile peer from a live node; returns the victim's error, the
/// close code the peer saw, and the victim's store.
async fn attack(script: Script) -> Result<(SyncError, Option<u64>, Arc<dyn Can>)> {
    let (hostile, closed) = hostile_peer(script).await?;
    let can = memory_store()?;
    can.push(bundle(1, 1000, 10)).await?;
    // Quick gap checks: a change that lands during the session is offered
    // by the first check, well within the test's time.
    let victim = node(can.clone()).await?.with_live(LiveConfig {
        check_interval: std::time::Duration::from_millis(200),
        ..LiveConfig::default()
    });
    let ticket = can_sync::node::endpoint::ticket(&hostile);
    let dialled = victim.sync_with(&ticket, Protocol::V2);
    // A local change the victim offers once live (subscribed before the
    // session, so it is offered whenever it lands), for scripts that answer
    // offers.
    let writer = {
        let can = can.clone();
        async move { can.push(bundle(2, 1000, 10)).await }
    };
    let (result, written) = tokio::time::timeout(TIMEOUT, async { tokio::join!(dialled, writer) })
        .await
        .context("the victim never ended the link")?;
    written?;
    let err = result
        .err()
        .context("the victim accepted a hostile live peer")?;
    let code = tokio::time::timeout(TIMEOUT, closed).await??;
    Ok((err, code, can))
}

/// Opens a live offer stream and writes `bytes` on it.
fn send_on_new_stream(bytes: Vec<u8>) -> Script {
    Box::new(move |conn: Connection| {
        Box::pin(async move {
            let (mut send, _recv) = conn.open_bi().await?;
            send.write_all(&bytes).await?;
            send.finish()?;
            conn.closed().await;
            Ok(())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_offer_closes_the_connection_with_protocol_error() -> Result<()> {
    let garbage = frame(FrameType::Recon, b"\xff\xff\xff not protobuf");
    let (err, code, can) = attack(send_on_new_stream(garbage)).await?;
    assert!(
        matches!(
            err,
            SyncError::Session(SessionError::Peer(Violation::Decode {
                message: "Recon",
                ..
            }))
        ),
        "{err:?}"
    );
    assert_eq!(code, Some(CLOSE_PROTOCOL_ERROR.into()));
    assert_eq!(
        can.stats().await?.assets,
        2,
        "nothing of the peer's was stored"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_offer_frame_is_refused_before_it_is_read() -> Result<()> {
    // A header announcing 1 GiB on an offer stream, then nothing.
    let mut header = vec![FrameType::Recon as u8];
    header.extend_from_slice(&(1u32 << 30).to_be_bytes());
    let (err, code, _) = attack(send_on_new_stream(header)).await?;
    assert!(
        matches!(
            err,
            SyncError::Session(SessionError::Peer(Violation::Frame(
                FrameError::Oversized { .. }
            )))
        ),
        "{err:?}"
    );
    assert_eq!(code, Some(CLOSE_PROTOCOL_ERROR.into()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wanting_a_hash_that_was_not_offered_is_a_protocol_error() -> Result<()> {
    // Answer the victim's first offer with a want for something else.
    let script: Script = Box::new(|conn: Connection| {
        Box::pin(async move {
            let (mut send, mut recv) = conn.accept_bi().await?;
            let mut header = [0u8; 5];
            recv.read_exact(&mut header).await?;
            let mut payload = vec![0u8; u32::from_be_bytes(header[1..].try_into()?) as usize];
            recv.read_exact(&mut payload).await?;
            let stranger = AssetHash::of(b"never offered");
            let reply = pb::Recon {
                packed_summaries: compact::encode(&[], 3).into(),
                wants: stranger.as_bytes().to_vec().into(),
                done: true,
                ..Default::default()
            };
            send.write_all(&frame(FrameType::Recon, &reply.encode_to_vec()))
                .await?;
            conn.closed().await;
            Ok(())
        })
    });
    let (err, code, _) = attack(script).await?;
    let stranger = AssetHash::of(b"never offered");
    match &err {
        SyncError::Session(SessionError::Peer(Violation::WantsNotOffered(hash))) => {
            assert_eq!(*hash, stranger)
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert_eq!(code, Some(CLOSE_PROTOCOL_ERROR.into()));
    Ok(())
}
