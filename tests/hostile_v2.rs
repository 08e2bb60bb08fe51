//! Hostile input on protocol v2: each gets a typed error, nothing bad is
//! stored, and the node goes on serving other peers.
//!
//! The hostile peer is a raw iroh endpoint speaking `can-sync/2` by hand: it
//! answers HELLO and RECON honestly, then sends `script` on its one data
//! stream. A real node dials it; what `sync_with` returns is what each test
//! asserts.

mod common;

use std::time::Duration;

use anyhow::Result;
use bytes::BytesMut;
use can_sync::asset::AssetHash;
use can_sync::engine::EngineConfig;
use can_sync::engine::RejectReason;
use can_sync::node::{Node, Protocol, SyncError};
use can_sync::pb;
use can_sync::recon::compact;
use can_sync::session::{
    SessionError, SessionReport, ALPN_V2, CLOSE_DONE, CLOSE_IDLE, CLOSE_PROTOCOL_ERROR,
};
use can_sync::wire::compress::CodecError;
use can_sync::wire::{compress, encode_frame, FrameError, FrameType, Violation};
use common::{bundle, node, read_frame, serve, store, Backend, TestStore, TIMEOUT};
use iroh::endpoint::presets;
use iroh::Endpoint;
use prost::Message;

const INLINE_LIMIT: u64 = 64 * 1024;

fn config() -> EngineConfig {
    EngineConfig {
        inline_limit: INLINE_LIMIT,
        chunk_bytes: 16 * 1024,
        idle_timeout: Duration::from_secs(2),
        ..EngineConfig::default()
    }
}

fn frame(frame_type: FrameType, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(frame_type, payload, &mut out).unwrap();
    out.to_vec()
}

/// How the hostile data stream ends.
#[derive(Clone, Copy, PartialEq)]
enum Ending {
    /// Finish the stream and complete the session (SUMMARY, DONE).
    Finish,
    /// Leave the stream open and say nothing more.
    Stall,
}

/// Starts the hostile peer; the receiver yields the application error code the
/// victim closed the connection with.
async fn hostile_peer(
    script: Vec<u8>,
    ending: Ending,
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
            let conn = accepting.accept().await.expect("a connection").await?;
            // The victim may close the connection before the script is all
            // written (it refuses what it read so far): the close code is
            // reported whatever the writes met.
            if let Err(err) = play(&conn, &script, ending).await {
                eprintln!("hostile peer, writing: {err:#}");
            }
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

/// The hostile side of a session on `conn`: `HELLO`, an empty `RECON`,
/// then `script` on one data stream, ended as `ending` says.
async fn play(conn: &iroh::endpoint::Connection, script: &[u8], ending: Ending) -> Result<()> {
    let (mut control, mut control_in) = conn.accept_bi().await?;
    read_frame(&mut control_in).await?; // HELLO
    let hello = pb::Hello {
        version: can_sync::session::v2::VERSION,
        max_streams: 1,
        codecs: vec!["zstd".into()],
        inline_limit: INLINE_LIMIT,
        // Ranged assets may come: their chunks are groups of 1 MiB.
        features: vec![can_sync::session::v2::FEATURE_RANGES.into()],
        max_frame_len: 2 << 20,
        capability: Default::default(),
    };
    control
        .write_all(&frame(FrameType::Hello, &hello.encode_to_vec()))
        .await?;
    read_frame(&mut control_in).await?; // RECON
    let recon = pb::Recon {
        packed_summaries: compact::encode(&[], 3).into(),
        done: true,
        ..Default::default()
    };
    control
        .write_all(&frame(FrameType::Recon, &recon.encode_to_vec()))
        .await?;
    // Drain the victim's data stream so its writer can finish.
    let drain = conn.clone();
    tokio::spawn(async move {
        if let Ok(mut uni) = drain.accept_uni().await {
            let _ = uni.read_to_end(1 << 20).await;
        }
    });
    let mut data = conn.open_uni().await?;
    data.write_all(script).await?;
    if ending == Ending::Finish {
        data.finish()?;
        let summary = pb::SessionSummary::default();
        control
            .write_all(&frame(FrameType::Summary, &summary.encode_to_vec()))
            .await?;
        control.write_all(&frame(FrameType::Done, &[])).await?;
        control.finish()?;
    }
    // The streams stay open (a stalled one unfinished, ours to read not
    // stopped) until the victim closes the connection.
    conn.closed().await;
    Ok(())
}

struct Victim {
    store: TestStore,
    node: Node,
}

async fn victim() -> Result<Victim> {
    let store = store(Backend::Embedded).await?;
    let node = node(store.can.clone()).await?.with_engine_config(config());
    Ok(Victim { store, node })
}

/// Runs one session against a hostile peer. When the session fails, also
/// checks the victim closed the connection with the protocol-error code.
async fn dial(
    victim: &Victim,
    script: Vec<u8>,
    ending: Ending,
) -> Result<Result<SessionReport, SyncError>> {
    let (peer, closed) = hostile_peer(script, ending).await?;
    let ticket = can_sync::node::endpoint::ticket(&peer);
    let result =
        tokio::time::timeout(TIMEOUT, victim.node.sync_with(&ticket, Protocol::V2)).await?;
    let code = tokio::time::timeout(TIMEOUT, closed).await??;
    let expected = match &result {
        Ok(_) => CLOSE_DONE,
        Err(SyncError::Session(SessionError::Peer(Violation::Silent { .. }))) => CLOSE_IDLE,
        Err(_) => CLOSE_PROTOCOL_ERROR,
    };
    assert_eq!(code, Some(u64::from(expected)), "close code for {result:?}");
    Ok(result)
}

/// After any hostile session the victim still serves an honest peer.
async fn still_serves(victim: &Victim) -> Result<()> {
    let _accept = serve(&victim.node);
    let honest = store(Backend::Embedded).await?;
    honest.can.push(bundle(999, 1000, 1)).await?;
    let peer = node(honest.can.clone()).await?;
    let report = tokio::time::timeout(TIMEOUT, peer.sync_with(&victim.node.ticket(), Protocol::V2))
        .await??;
    assert_eq!(report.assets_sent, 1);
    Ok(())
}

/// Asserts the session failed with a violation `expected` accepts.
fn expect_violation(result: Result<SessionReport, SyncError>, expected: fn(&Violation) -> bool) {
    match result {
        Err(SyncError::Session(SessionError::Peer(violation))) => {
            assert!(expected(&violation), "unexpected violation {violation:?}")
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_hash_is_rejected_and_reported_the_rest_lands() -> Result<()> {
    let v = victim().await?;
    let mut forged = bundle(1, 3000, 1);
    let mut corrupted = forged.data.to_vec();
    corrupted[10] ^= 1;
    forged.data = corrupted.into();
    let honest = bundle(2, 3000, 1);
    let mut script = frame(
        FrameType::AssetBundle,
        &forged.clone().into_pb().encode_to_vec(),
    );
    script.extend(frame(
        FrameType::BundleZstd,
        &compress::compress(&honest.clone().into_pb().encode_to_vec(), 3),
    ));
    script.extend(frame(
        FrameType::Done,
        &pb::StreamDone::default().encode_to_vec(),
    ));
    let report = dial(&v, script, Ending::Finish).await??;
    assert_eq!(report.rejected.len(), 1, "{:?}", report.rejected);
    assert!(matches!(
        report.rejected[0].reason,
        RejectReason::HashMismatch { .. }
    ));
    assert_eq!(report.assets_received, 1);
    assert!(v.store.can.meta(forged.hash).await?.is_none());
    still_serves(&v).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_bomb_fails_the_session_and_stores_nothing() -> Result<()> {
    let v = victim().await?;
    // 64 MiB of zeros in one small frame, declared as an inline bundle.
    let bomb = compress::compress(&vec![0u8; 64 * 1024 * 1024], 19);
    let mut script = frame(FrameType::BundleZstd, &bomb);
    script.extend(frame(
        FrameType::Done,
        &pb::StreamDone::default().encode_to_vec(),
    ));
    expect_violation(dial(&v, script, Ending::Finish).await?, |v| {
        matches!(v, Violation::Compression(CodecError::Inflate { .. }))
    });
    assert_eq!(v.store.can.stats().await?.assets, 0);
    still_serves(&v).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_zstd_window_is_refused() -> Result<()> {
    let v = victim().await?;
    let mut frame_2g_window = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 0xA8];
    frame_2g_window.extend_from_slice(&[0x01, 0x00, 0x00]);
    let mut script = frame(FrameType::BundleZstd, &frame_2g_window);
    script.extend(frame(
        FrameType::Done,
        &pb::StreamDone::default().encode_to_vec(),
    ));
    expect_violation(dial(&v, script, Ending::Finish).await?, |v| {
        matches!(v, Violation::Compression(CodecError::Window { .. }))
    });
    still_serves(&v).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_truncated_and_unknown_frames_are_typed_errors() -> Result<()> {
    let v = victim().await?;
    let mut oversized = vec![FrameType::AssetBundle as u8];
    oversized.extend_from_slice(&(64u32 << 20).to_be_bytes());
    match dial(&v, oversized, Ending::Finish).await? {
        Err(SyncError::Session(SessionError::Peer(Violation::Frame(FrameError::Oversized {
            ..
        })))) => {}
        other => panic!("expected Oversized, got {other:?}"),
    }
    let whole = frame(
        FrameType::AssetBundle,
        &bundle(3, 800, 1).into_pb().encode_to_vec(),
    );
    match dial(&v, whole[..whole.len() - 100].to_vec(), Ending::Finish).await? {
        Err(SyncError::Session(SessionError::Peer(Violation::Frame(FrameError::Truncated {
            ..
        })))) => {}
        other => panic!("expected Truncated, got {other:?}"),
    }
    match dial(&v, vec![0x7f, 0, 0, 0, 0], Ending::Finish).await? {
        Err(SyncError::Session(SessionError::Peer(Violation::Frame(FrameError::UnknownType(
            0x7f,
        ))))) => {}
        other => panic!("expected UnknownType, got {other:?}"),
    }
    assert_eq!(v.store.can.stats().await?.assets, 0);
    still_serves(&v).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_past_the_declared_size_are_refused() -> Result<()> {
    let v = victim().await?;
    let data = vec![5u8; 100_000];
    let header = pb::AssetHeader {
        hash: AssetHash::of(&data).as_bytes().to_vec().into(),
        size: 90_000, // less than what follows
        meta: None,
        codec: "raw".into(),
        ..Default::default()
    };
    let mut script = frame(FrameType::AssetBegin, &header.encode_to_vec());
    for chunk in data.chunks(16 * 1024) {
        script.extend(frame(FrameType::AssetChunk, chunk));
    }
    script.extend(frame(FrameType::AssetEnd, &[]));
    expect_violation(dial(&v, script, Ending::Finish).await?, |v| {
        matches!(v, Violation::PastDeclaredSize { size: 90_000, .. })
    });
    assert_eq!(v.store.can.stats().await?.assets, 0);
    still_serves(&v).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_asset_with_a_wrong_hash_is_not_committed() -> Result<()> {
    let v = victim().await?;
    let data = vec![9u8; 200_000];
    let claimed = AssetHash::of(b"something else");
    let header = pb::AssetHeader {
        hash: claimed.as_bytes().to_vec().into(),
        size: data.len() as u64,
        meta: None,
        codec: "raw".into(),
        ..Default::default()
    };
    let mut script = frame(FrameType::AssetBegin, &header.encode_to_vec());
    for chunk in data.chunks(16 * 1024) {
        script.extend(frame(FrameType::AssetChunk, chunk));
    }
    script.extend(frame(FrameType::AssetEnd, &[]));
    script.extend(frame(
        FrameType::Done,
        &pb::StreamDone::default().encode_to_vec(),
    ));
    let report = dial(&v, script, Ending::Finish).await??;
    assert_eq!(report.rejected.len(), 1);
    assert!(
        matches!(report.rejected[0].reason, RejectReason::HashMismatch { .. }),
        "{:?}",
        report.rejected
    );
    assert!(v.store.can.meta(claimed).await?.is_none());
    assert_eq!(v.store.can.stats().await?.assets, 0);
    still_serves(&v).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_without_done_times_out() -> Result<()> {
    let v = victim().await?;
    let script = frame(
        FrameType::AssetBundle,
        &bundle(4, 500, 1).into_pb().encode_to_vec(),
    );
    match dial(&v, script, Ending::Stall).await? {
        Err(SyncError::Session(SessionError::Peer(Violation::Silent { waited, .. }))) => {
            assert_eq!(waited, config().idle_timeout)
        }
        other => panic!("expected an idle timeout, got {other:?}"),
    }
    still_serves(&v).await
}

/// The frames of a ranged asset (HELLO feature `ranges`) of `data`, whose
/// header claims `hash`, with `outboard` as its outboard bytes and `groups`
/// as its chunks, and the stream's `DONE`. `Omitted`: the header says the
/// outboard is left out (which only the receiver's `WANT` may ask for).
fn ranged_script(hash: AssetHash, size: u64, outboard: Outboard<'_>, groups: &[&[u8]]) -> Vec<u8> {
    let (outboard, outboard_omitted) = match outboard {
        Outboard::Sent(bytes) => (bytes, false),
        Outboard::Omitted => (&[][..], true),
    };
    let header = pb::AssetHeader {
        hash: hash.as_bytes().to_vec().into(),
        size,
        meta: None,
        codec: "raw".into(),
        ranged: true,
        ranges: Vec::new(),
        outboard_omitted,
    };
    let mut script = frame(FrameType::AssetBegin, &header.encode_to_vec());
    if !outboard.is_empty() {
        script.extend(frame(FrameType::AssetOutboard, outboard));
    }
    for group in groups {
        script.extend(frame(FrameType::AssetChunk, group));
    }
    script.extend(frame(FrameType::AssetEnd, &[]));
    script.extend(frame(
        FrameType::Done,
        &pb::StreamDone::default().encode_to_vec(),
    ));
    script
}

/// The outboard of a [`ranged_script`].
enum Outboard<'a> {
    Sent(&'a [u8]),
    Omitted,
}

/// A ranged asset whose outboard does not match its hash is refused by
/// name before any of its groups is kept; one whose group does not match
/// the outboard is refused at that group; one sent without its outboard,
/// unasked, is refused for that. Nothing of any is listed, and the session
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranged_asset_with_a_forged_outboard_or_group_is_refused() -> Result<()> {
    use can_sync::can::store::ranges::{OutboardHasher, GROUP_BYTES};
    let data: Vec<u8> = (0..2 * GROUP_BYTES + 10).map(|i| (i % 253) as u8).collect();
    let mut hasher = OutboardHasher::default();
    hasher.update(&data);
    let (hash, outboard) = hasher.finalize();
    let cvs = outboard.encoded_cvs();
    let groups: Vec<&[u8]> = data.chunks(GROUP_BYTES as usize).collect();

    let mut forged_outboard = cvs.clone();
    forged_outboard[0] ^= 1;
    let mut bad_group = groups[1].to_vec();
    bad_group[9] ^= 1;
    for (script, expected) in [
        (
            ranged_script(
                hash,
                data.len() as u64,
                Outboard::Sent(&forged_outboard),
                &groups,
            ),
            "does not match its hash",
        ),
        (
            ranged_script(
                hash,
                data.len() as u64,
                Outboard::Sent(&cvs),
                &[groups[0], &bad_group, groups[2]],
            ),
            "group 1",
        ),
        (
            ranged_script(hash, data.len() as u64, Outboard::Omitted, &groups),
            "sent without its outboard",
        ),
    ] {
        let v = victim().await?;
        let report = dial(&v, script, Ending::Finish).await??;
        assert!(
            matches!(&report.rejected[..], [r] if matches!(&r.reason, RejectReason::BadRange(why) if why.contains(expected))),
            "{expected}: {:?}",
            report.rejected
        );
        assert!(v.store.can.meta(hash).await?.is_none());
        still_serves(&v).await?;
    }
    Ok(())
}

/// A ranged asset that breaks the grammar fails the session: an outboard
/// of the wrong size, a group of the wrong length, more groups than its
/// header named, or ranges outside the asset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranged_asset_that_breaks_the_grammar_is_a_violation() -> Result<()> {
    use can_sync::can::store::ranges::{OutboardHasher, GROUP_BYTES};
    let size = 2 * GROUP_BYTES;
    let group = vec![1u8; GROUP_BYTES as usize];
    let short = vec![1u8; 100];
    let mut hasher = OutboardHasher::default();
    hasher.update(&group);
    hasher.update(&group);
    let (hash, outboard) = hasher.finalize();
    let cvs = outboard.encoded_cvs();
    let bad_ranges = {
        let header = pb::AssetHeader {
            hash: hash.as_bytes().to_vec().into(),
            size,
            codec: "raw".into(),
            ranged: true,
            ranges: vec![1, 5],
            ..Default::default()
        };
        frame(FrameType::AssetBegin, &header.encode_to_vec())
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            ranged_script(hash, size, Outboard::Sent(&[0u8; 96]), &[]),
            "ASSET_OUTBOARD of 96 bytes",
        ),
        (
            ranged_script(hash, size, Outboard::Sent(&cvs), &[&group, &short]),
            "is 100 bytes",
        ),
        (
            ranged_script(hash, size, Outboard::Sent(&cvs), &[&group, &group, &group]),
            "more groups",
        ),
        (bad_ranges, "in an asset of 2 groups"),
        (
            // An outboard of petabytes, never buffered.
            ranged_script(hash, u64::MAX, Outboard::Sent(&[]), &[]),
            "more than 65536 groups",
        ),
    ];
    for (script, expected) in cases {
        let v = victim().await?;
        match dial(&v, script, Ending::Finish).await? {
            Err(SyncError::Session(SessionError::Peer(Violation::Ranges(why)))) => {
                assert!(why.contains(expected), "{expected}: {why}")
            }
            other => panic!("{expected}: {other:?}"),
        }
        assert_eq!(v.store.can.stats().await?.assets, 0);
    }
    Ok(())
}
