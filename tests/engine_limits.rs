//! The engine under pressure: both directions at once against a slow CAN (no
//! flow-control deadlock), a throttled receiver (the sender's memory stays
//! bounded by its queue depths), and a stalled receiver of tiny assets (the
//! QUIC stack's reassembly buffer never overflows).

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use can_sync::can::SharedCan;
use can_sync::engine::{EngineConfig, EngineStats};
use can_sync::node::Protocol;
use common::{assert_converged, bundle, memory_store, node, serve, Gate, SlowCan};

/// A generous timeout: 300 MB cross in debug builds on two cores.
const LONG: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_sending_150_mb_to_a_slow_can_completes() -> Result<()> {
    let (a_store, b_store) = (memory_store()?, memory_store()?);
    // 140 inline assets of 1 MiB and 2 streamed ones of 5 MiB each way.
    for (store, offset) in [(&a_store, 0u64), (&b_store, 10_000)] {
        for i in 0..140 {
            store.push(bundle(offset + i, 1024 * 1024, 1)).await?;
        }
        for i in 0..2 {
            store
                .push(bundle(offset + 500 + i, 5 * 1024 * 1024, 1))
                .await?;
        }
    }
    let slow = |inner: &SharedCan| -> SharedCan {
        Arc::new(SlowCan::delayed(
            inner.clone(),
            Duration::from_millis(5),
            Duration::from_millis(5),
        ))
    };
    let a = node(slow(&a_store)).await?;
    let b = node(slow(&b_store)).await?;
    let _accept = serve(&a);
    let report = tokio::time::timeout(LONG, b.sync_with(&a.ticket(), Protocol::V2)).await??;
    assert_eq!((report.assets_sent, report.assets_received), (142, 142));
    assert!(report.rejected.is_empty());
    assert_converged(a_store.as_ref(), b_store.as_ref()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_receiver_bounds_what_the_sender_holds() -> Result<()> {
    let asset = 64 * 1024u64;
    let count = 400u64; // 25 MiB in all
    let sender_store = memory_store()?;
    for i in 0..count {
        sender_store.push(bundle(i, asset as usize, 1)).await?;
    }
    let config = EngineConfig {
        queue_depth: 4,
        pull_workers: 2,
        batch_assets: 4,
        encode_workers: 2,
        streams: 2,
        ..EngineConfig::default()
    };
    // What the pipeline may hold at once: two queues, a batch per pull
    // worker, a bundle per encode worker, a frame per writer.
    let bound = (2 * config.queue_depth as u64
        + config.pull_workers as u64 * config.batch_assets as u64
        + config.encode_workers as u64
        + u64::from(config.streams)
        + 2)
        * asset;
    let receiver_store: SharedCan = Arc::new(SlowCan::delayed(
        memory_store()?,
        Duration::from_millis(10),
        Duration::ZERO,
    ));
    let receiver = node(receiver_store.clone()).await?;
    let sender = node(sender_store.clone()).await?.with_engine_config(config);
    let _accept = serve(&receiver);
    let report =
        tokio::time::timeout(LONG, sender.sync_with(&receiver.ticket(), Protocol::V2)).await??;
    assert_eq!(report.assets_sent, count);
    let peak = EngineStats::get(&sender.stats().send_bytes_queued_peak);
    assert!(peak <= bound, "sender held {peak} bytes, bound {bound}");
    assert!(
        peak < count * asset / 4,
        "the bound must be far below the archive"
    );
    assert_eq!(EngineStats::get(&sender.stats().send_bytes_queued), 0);
    assert_converged(sender_store.as_ref(), receiver_store.as_ref()).await?;
    Ok(())
}

/// The assembler trap: the QUIC stack keeps each received packet's
/// share of a stream as its own buffer while the application does not read,
/// and fails the whole connection ("too many gaps in stream buffer") past
/// 1,024 of them. A sender that writes every tiny asset as its own packet to
/// a receiver that has stopped reading hits that after about a thousand
/// assets. Here the sender trickles (one asset per pull, one pull at a time,
/// each a millisecond), so nothing but the writer can gather frames into
/// packets, and the receiving store takes nothing until the sender has pulled
/// 3,000 tiny assets (about 700 KB, inside the stream window) for its one
/// stream: the session must still complete. Before writers gathered frames,
/// this failed with "too many gaps in stream buffer".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_assets_to_a_stalled_receiver_keep_the_connection() -> Result<()> {
    let count = 4_000u64;
    let sender_store = memory_store()?;
    for i in 0..count {
        sender_store.push(bundle(i, 64, 1)).await?;
    }
    let gate = Gate::after_pulls(3_000);
    let sending: SharedCan = Arc::new(SlowCan {
        pull_opens: Some(gate.clone()),
        ..SlowCan::delayed(
            sender_store.clone(),
            Duration::ZERO,
            Duration::from_millis(1),
        )
    });
    let receiver_store = memory_store()?;
    let receiving: SharedCan = Arc::new(SlowCan {
        push_gate: Some(gate),
        ..SlowCan::delayed(receiver_store.clone(), Duration::ZERO, Duration::ZERO)
    });
    let config = EngineConfig {
        streams: 1,
        batch_assets: 1,
        pull_workers: 1,
        ..EngineConfig::default()
    };
    let receiver = node(receiving).await?;
    let sender = node(sending).await?.with_engine_config(config);
    let _accept = serve(&receiver);
    let report =
        tokio::time::timeout(LONG, sender.sync_with(&receiver.ticket(), Protocol::V2)).await??;
    assert_eq!(report.assets_sent, count);
    assert!(report.rejected.is_empty());
    assert_converged(sender_store.as_ref(), receiver_store.as_ref()).await?;
    Ok(())
}
