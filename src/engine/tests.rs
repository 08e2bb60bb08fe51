//! The pipelines end to end over in-memory pipes: no sockets, real stores.

use std::sync::Arc;

use bytes::Bytes;

use super::send::SendPlan;
use super::*;
use crate::asset::{AssetHash, Bundle};
use crate::can::{EmbeddedCan, SharedCan, StoreLimits};
use crate::pb;
use crate::stream::pipe::{pipe, PipeReceiver, PipeSender};
use crate::stream::{FrameReader, FrameWriter, SendHalf};
use crate::wire::{FrameType, Violation};

fn memory() -> SharedCan {
    Arc::new(EmbeddedCan::memory(StoreLimits::default()).expect("a memory store"))
}

fn bundle(i: u64, len: usize) -> Bundle {
    let data: Vec<u8> = (0..len as u64)
        .map(|j| (j.wrapping_mul(31) ^ i.wrapping_mul(0x9E37)) as u8)
        .collect();
    Bundle {
        hash: AssetHash::of(&data),
        data: data.into(),
        meta: pb::AssetMeta {
            name: format!("a{i}"),
            created_at_ms: 1,
            meta_updated_at_ms: 1,
            ..Default::default()
        },
    }
}

fn small_config() -> Arc<EngineConfig> {
    Arc::new(EngineConfig {
        inline_limit: 16 * 1024,
        chunk_bytes: 4 * 1024,
        streams: 3,
        ..EngineConfig::default()
    })
}

/// `count` pipes of 64 KiB each.
fn pipes(count: usize) -> (Vec<FrameWriter<PipeSender>>, Vec<FrameReader<PipeReceiver>>) {
    let limit = small_config().max_frame_len();
    (0..count)
        .map(|_| {
            let (send, recv) = pipe(64 * 1024);
            (FrameWriter::new(send), FrameReader::new(recv, limit))
        })
        .unzip()
}

fn readers<R: crate::stream::RecvHalf>(
    readers: Vec<FrameReader<R>>,
) -> impl futures::Stream<Item = Result<FrameReader<R>, EngineError>> + Unpin {
    futures::stream::iter(readers.into_iter().map(Ok))
}

#[tokio::test]
async fn every_size_class_crosses_and_is_stored_once() {
    let (from, to) = (memory(), memory());
    let mut plan = SendPlan::default();
    for (i, len) in [0usize, 1, 4000, 16 * 1024, 16 * 1024 + 1, 100_000]
        .into_iter()
        .enumerate()
    {
        let bundle = bundle(i as u64, len);
        plan.assets.push((bundle.hash, len as u64));
        from.push(bundle).await.unwrap();
    }
    let stats = Arc::new(EngineStats::default());
    let (writers, pipe_readers) = pipes(3);
    let config = small_config();
    let (sent, received) = tokio::join!(
        send::run(
            writers,
            from.clone(),
            plan.clone(),
            config.clone(),
            stats.clone()
        ),
        receive::run(readers(pipe_readers), to.clone(), config, stats.clone()),
    );
    let (sent, received) = (sent.unwrap(), received.unwrap());
    assert_eq!(sent.assets, 6);
    assert_eq!(received.assets, 6);
    assert!(received.rejected.is_empty(), "{:?}", received.rejected);
    assert_eq!(sent.wire_bytes, received.wire_bytes);
    for (hash, len) in plan.assets {
        let pulled = to.pull(&[hash]).await.unwrap();
        assert_eq!(pulled.bundles[0].data.len() as u64, len);
        assert_eq!(AssetHash::of(&pulled.bundles[0].data), hash);
    }
    assert_eq!(EngineStats::get(&stats.assets_received), 6);
}

#[tokio::test]
async fn an_asset_gone_from_the_store_is_reported_and_the_rest_crosses() {
    let (from, to) = (memory(), memory());
    let kept = bundle(1, 100);
    from.push(kept.clone()).await.unwrap();
    let gone = AssetHash::of(b"never stored");
    let plan = SendPlan {
        assets: vec![(gone, 10), (kept.hash, 100)],
        ..SendPlan::default()
    };
    let stats = Arc::new(EngineStats::default());
    let (writers, pipe_readers) = pipes(1);
    let (sent, received) = tokio::join!(
        send::run(writers, from, plan, small_config(), stats.clone()),
        receive::run(readers(pipe_readers), to.clone(), small_config(), stats),
    );
    let sent = sent.unwrap();
    assert_eq!(
        sent.failed,
        vec![Rejection {
            hash: gone,
            reason: RejectReason::Vanished
        }]
    );
    assert_eq!(received.unwrap().assets, 1);
    assert!(to.meta(kept.hash).await.unwrap().is_some());
}

/// Runs the receive pipeline on one stream carrying `frames`.
async fn receive_script(
    frames: Vec<Bytes>,
) -> (Result<receive::ReceiveOutcome, EngineError>, SharedCan) {
    let to = memory();
    let (mut send, recv) = pipe(1 << 20);
    for frame in frames {
        send.write_bytes(frame).await.unwrap();
    }
    send.finish().await.unwrap();
    let reader = FrameReader::new(recv, small_config().max_frame_len());
    let stats = Arc::new(EngineStats::default());
    let result = receive::run(readers(vec![reader]), to.clone(), small_config(), stats).await;
    (result, to)
}

#[tokio::test]
async fn a_wrong_hash_is_rejected_and_the_rest_is_stored() {
    use crate::wire::data_stream::{encode_done, encode_inline};
    let mut forged = bundle(1, 500);
    forged.hash = AssetHash::of(b"claimed");
    let honest = bundle(2, 500);
    let (result, to) = receive_script(vec![
        encode_inline(forged, 3),
        encode_inline(honest.clone(), 3),
        encode_done(2, 1000),
    ])
    .await;
    let outcome = result.unwrap();
    assert_eq!(outcome.assets, 1);
    assert!(matches!(
        outcome.rejected.as_slice(),
        [Rejection {
            reason: RejectReason::HashMismatch { .. },
            ..
        }]
    ));
    assert!(to.meta(honest.hash).await.unwrap().is_some());
    assert!(to.meta(AssetHash::of(b"claimed")).await.unwrap().is_none());
}

#[tokio::test]
async fn hostile_streams_are_violations_and_store_nothing() {
    use crate::wire::data_stream::{frame, LargeHeader};
    let header = |size| {
        LargeHeader {
            hash: AssetHash::of(&[5u8; 9000]),
            size,
            meta: pb::AssetMeta::default(),
            zstd: false,
            ranges: None,
            outboard_omitted: false,
        }
        .encode()
    };
    let chunk = || frame(FrameType::AssetChunk, &[5u8; 4500]);
    type Case = (Vec<Bytes>, fn(&Violation) -> bool);
    let cases: Vec<Case> = vec![
        // Chunks past the declared size.
        (vec![header(8000), chunk(), chunk()], |v| {
            matches!(v, Violation::PastDeclaredSize { size: 8000, .. })
        }),
        // A stream that ends inside an asset.
        (vec![header(9000), chunk()], |v| {
            matches!(
                v,
                Violation::EndedEarly {
                    missing: "ASSET_END",
                    ..
                }
            )
        }),
        // A stream that ends without DONE.
        (vec![], |v| {
            matches!(
                v,
                Violation::EndedEarly {
                    missing: "DONE",
                    ..
                }
            )
        }),
        // A control frame on a data stream.
        (vec![frame(FrameType::Hello, &[])], |v| {
            matches!(
                v,
                Violation::Unexpected {
                    got: FrameType::Hello,
                    ..
                }
            )
        }),
        // A zstd bomb declared as an inline bundle.
        (
            vec![
                frame(
                    FrameType::BundleZstd,
                    &crate::wire::compress::compress(&vec![0u8; 8 << 20], 19),
                ),
                crate::wire::data_stream::encode_done(1, 0),
            ],
            |v| matches!(v, Violation::Compression(_)),
        ),
    ];
    for (frames, expected) in cases {
        let (result, to) = receive_script(frames).await;
        match result {
            Err(EngineError::Peer(violation)) => assert!(expected(&violation), "{violation:?}"),
            other => panic!("expected a violation, got {other:?}"),
        }
        assert_eq!(to.stats().await.unwrap().assets, 0);
    }
}

/// A peer that pulls names what we send: the assets it asks for by hash
/// cross, those we do not hold are reported as vanished, and however many
/// bogus hashes it names, the record of failures stays bounded.
#[tokio::test]
async fn wanted_assets_cross_and_unknown_ones_are_reported_within_a_bound() {
    let (from, to) = (memory(), memory());
    let kept = bundle(1, 100);
    from.push(kept.clone()).await.unwrap();
    let bogus =
        (0..send::MAX_RECORDED_FAILURES as u64 + 50).map(|i| AssetHash::of(&i.to_le_bytes()));
    let plan = SendPlan {
        wanted: std::iter::once(kept.hash).chain(bogus).collect(),
        ..SendPlan::default()
    };
    let stats = Arc::new(EngineStats::default());
    let (writers, pipe_readers) = pipes(3);
    let config = small_config();
    let (sent, received) = tokio::join!(
        send::run(writers, from.clone(), plan, config.clone(), stats.clone()),
        receive::run(readers(pipe_readers), to.clone(), config, stats.clone()),
    );
    let (sent, received) = (sent.unwrap(), received.unwrap());
    assert_eq!((sent.assets, received.assets), (1, 1));
    assert!(to.meta(kept.hash).await.unwrap().is_some());
    assert_eq!(sent.failed.len(), send::MAX_RECORDED_FAILURES);
    assert!(sent
        .failed
        .iter()
        .all(|f| matches!(f.reason, RejectReason::Vanished)));
}

/// A batch that is not full goes as soon as no plan waits behind it: a peer
/// that pulls asks for more only once what it asked for has come, so
/// holding a part batch for the next plan would stall both sides.
#[tokio::test]
async fn a_part_batch_goes_while_the_feed_is_still_open() {
    let (from, to) = (memory(), memory());
    let asset = bundle(7, 100);
    from.push(asset.clone()).await.unwrap();
    let (plans, feed) = futures::channel::mpsc::unbounded::<SendPlan>();
    plans
        .unbounded_send(SendPlan {
            wanted: vec![asset.hash],
            ..SendPlan::default()
        })
        .unwrap();
    let stats = Arc::new(EngineStats::default());
    let (writers, pipe_readers) = pipes(1);
    let config = small_config();
    let sending = tokio::spawn(send::run_fed(
        writers,
        from.clone(),
        feed,
        config.clone(),
        stats.clone(),
    ));
    let receiving = tokio::spawn(receive::run(
        readers(pipe_readers),
        to.clone(),
        config,
        stats,
    ));
    let mut events = to.subscribe(None).await.unwrap();
    let arrived = async {
        while to.meta(asset.hash).await.unwrap().is_none() {
            futures::StreamExt::next(&mut events).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), arrived)
        .await
        .expect("the asset crossed before the feed closed");
    drop(plans);
    assert_eq!(sending.await.unwrap().unwrap().assets, 1);
    assert_eq!(receiving.await.unwrap().unwrap().assets, 1);
}

/// A pulling delivery with nothing asked on its way hears nothing from its
/// peer until it asks again, however long it waits for another peer: the
/// silence is not a fault. With something asked and nothing coming, the
/// same silence fails it at the idle timeout.
#[tokio::test]
async fn silence_is_a_fault_only_while_something_asked_is_on_its_way() {
    let config = Arc::new(EngineConfig {
        idle_timeout: std::time::Duration::from_millis(100),
        ..(*small_config()).clone()
    });
    let claims = Arc::new(claims::Claims::default());
    for asked in [false, true] {
        let claimed = Arc::new(claims::Claimed::new(&claims));
        if asked {
            let hash = AssetHash::of(b"asked, never sent");
            claimed.hold([(claims.try_claim(hash).unwrap(), 10)]);
        }
        let (mut writers, pipe_readers) = pipes(1);
        let mut writer = writers.pop().unwrap();
        let to = memory();
        let receiving = tokio::spawn(receive::run_settling(
            readers(pipe_readers),
            to,
            config.clone(),
            Arc::new(EngineStats::default()),
            Some(claimed),
            None,
        ));
        // Silent for five idle timeouts, then the stream ends properly.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let done = crate::wire::data_stream::encode_done(0, 0);
        // Asked and silent, the receiver has stopped the stream by now: the
        // write may fail, and what the receive returned is what is checked.
        let _ = writer.send(done).await;
        let _ = writer.finish().await;
        let received = tokio::time::timeout(std::time::Duration::from_secs(10), receiving)
            .await
            .expect("the receive ends")
            .unwrap();
        match (asked, received) {
            (false, Ok(outcome)) => assert_eq!(outcome.assets, 0),
            (true, Err(EngineError::Peer(Violation::Silent { .. }))) => {}
            (asked, other) => panic!("asked {asked}: {other:?}"),
        }
    }
}

/// A lease answered in part (its source ended after 5 of its 16 groups)
/// gives back only the 11 groups the store did not take: the store holds
/// the first five, and the next lease of the asset starts where the
/// answer stopped instead of asking for them again.
#[tokio::test]
// Runs of groups: a list of one run is meant.
#[allow(clippy::single_range_in_vec_init)]
async fn a_lease_answered_in_part_is_leased_again_from_where_it_stopped() {
    use crate::can::store::ranges::{OutboardHasher, GROUP_BYTES};
    use crate::wire::data_stream::{encode_done, frame, LargeHeader};
    use split::Taken;
    let dir = tempfile::tempdir().unwrap();
    let to: SharedCan = Arc::new(EmbeddedCan::open(dir.path(), StoreLimits::default()).unwrap());
    let data: Vec<u8> = (0..20 * GROUP_BYTES).map(|i| (i % 251) as u8).collect();
    let mut hasher = OutboardHasher::default();
    hasher.update(&data);
    let (hash, outboard) = hasher.finalize();
    let claims = Arc::new(claims::Claims::default());
    claims.splits.start(
        claims.try_claim(hash).unwrap(),
        data.len() as u64,
        vec![0..20],
    );
    let lease_of = |session: u64| match claims.splits.take(hash, session, std::time::Instant::now())
    {
        (Taken::Lease(lease), _) => lease,
        (other, _) => panic!("no lease: {other:?}"),
    };
    let claimed = Arc::new(claims::Claimed::new(&claims));
    let cut = lease_of(claimed.session());
    assert_eq!(cut.groups(), 0..16);
    claimed.hold_lease(cut, 16 * GROUP_BYTES);
    // Another session's lease keeps the split going meanwhile.
    let other = lease_of(claimed.session() + 100);
    assert_eq!(other.groups(), 16..20);

    let (mut writers, pipe_readers) = pipes(1);
    let mut writer = writers.pop().unwrap();
    let receiving = tokio::spawn(receive::run_settling(
        readers(pipe_readers),
        to.clone(),
        small_config(),
        Arc::new(EngineStats::default()),
        Some(claimed.clone()),
        None,
    ));
    let header = LargeHeader {
        hash,
        size: data.len() as u64,
        meta: pb::AssetMeta::default(),
        zstd: false,
        ranges: Some(vec![0..16]),
        outboard_omitted: false,
    };
    writer.send(header.encode()).await.unwrap();
    writer
        .send(frame(FrameType::AssetOutboard, &outboard.encoded_cvs()))
        .await
        .unwrap();
    for group in data.chunks(GROUP_BYTES as usize).take(5) {
        writer
            .send(frame(FrameType::AssetChunk, group))
            .await
            .unwrap();
    }
    writer.send(frame(FrameType::AssetEnd, &[])).await.unwrap();
    writer.send(encode_done(1, 5 * GROUP_BYTES)).await.unwrap();
    writer.finish().await.unwrap();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(20), receiving)
        .await
        .expect("the receive ends")
        .unwrap()
        .unwrap();
    assert!(
        matches!(&outcome.rejected[..], [r] if matches!(r.reason, RejectReason::Short { .. })),
        "{:?}",
        outcome.rejected
    );
    assert_eq!(
        to.resume_points(&[hash]).await.unwrap(),
        vec![(hash, vec![5..20])]
    );
    let next = lease_of(claimed.session() + 200);
    assert_eq!(
        next.groups(),
        5..16,
        "the five written are not leased again"
    );
}
