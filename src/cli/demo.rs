//! `can-sync demo`: two embedded nodes on loopback, a generated archive, one
//! seed session, and a summary of what crossed and how fast.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Result};
use can_sync::asset::{AssetHash, Bundle};
use can_sync::can::{Can, EmbeddedCan, SharedCan, StoreLimits};
use can_sync::clock::now_ms;
use can_sync::node::{self, Access, Congestion, EndpointOptions, Node, Protocol, Right};
use can_sync::pb;
use clap::Args;
use rand::{Rng, RngExt};

/// Size of the generated archive.
#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Assets generated on the first node.
    #[arg(long, default_value_t = 2000)]
    assets: usize,
    /// Assets generated on the second node (they travel the other way).
    #[arg(long, default_value_t = 200)]
    assets_back: usize,
    /// Largest asset size in KiB (sizes are spread from 1 KiB up to this).
    #[arg(long, default_value_t = 512)]
    max_kib: usize,
}

pub(crate) async fn run(args: DemoArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    println!(
        "can-sync demo: two nodes with embedded stores in {}",
        dir.path().display()
    );
    let a: SharedCan = Arc::new(EmbeddedCan::open(
        &dir.path().join("a"),
        StoreLimits::default(),
    )?);
    let b: SharedCan = Arc::new(EmbeddedCan::open(
        &dir.path().join("b"),
        StoreLimits::default(),
    )?);

    let bar = indicatif::ProgressBar::new((args.assets + args.assets_back) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("generating {bar:40} {pos}/{len} assets {msg}")
            .expect("static template"),
    );
    let mut generated_bytes = 0u64;
    for (can, count, label) in [(&a, args.assets, "a"), (&b, args.assets_back, "b")] {
        for i in 0..count {
            generated_bytes += add_random_asset(can.as_ref(), label, i, args.max_kib).await? as u64;
            bar.inc(1);
        }
    }
    bar.finish_with_message(format!("{:.1} MB", generated_bytes as f64 / 1e6));

    // Access is closed by default: node a admits node b by its id, with the
    // right to write, as `daemon --allow ID` does; node b only dials.
    let (key_a, key_b) = (iroh::SecretKey::generate(), iroh::SecretKey::generate());
    let access_a = Arc::new(Access::closed().allow(key_b.public(), Right::Write));
    let options = |secret_key: iroh::SecretKey, access: Arc<Access>| EndpointOptions {
        secret_key,
        listen: Some("127.0.0.1:0".parse().expect("static address")),
        relay: false,
        access,
        congestion: Congestion::default(),
    };
    let server = Node::new(
        node::bind(&options(key_a, access_a.clone())).await?,
        a.clone(),
    )
    .with_access(access_a);
    let closed = Arc::new(Access::closed());
    let client = Node::new(node::bind(&options(key_b, closed)).await?, b.clone());
    let accept = tokio::spawn({
        let server = server.clone();
        async move { server.accept_loop().await }
    });

    println!(
        "node a: {}\nnode b: {}\nseeding b from a over can-sync/2 on loopback…",
        server.endpoint().id().fmt_short(),
        client.endpoint().id().fmt_short()
    );
    let bar = super::report::progress_bar(&client);
    let started = Instant::now();
    let report = client.sync_with(&server.ticket(), Protocol::V2).await;
    super::report::finish_progress(&bar);
    let report = report?;
    let secs = started.elapsed().as_secs_f64();

    let (stats_a, stats_b) = (a.stats().await?, b.stats().await?);
    println!(
        "b received {} assets and sent {} back: {:.1} MB in {:.2} s ({:.1} MB/s, {:.0} assets/s), {:.1} MB on the wire, {} rejected",
        report.assets_received,
        report.assets_sent,
        report.payload_bytes as f64 / 1e6,
        secs,
        report.payload_bytes as f64 / 1e6 / secs,
        (report.assets_received + report.assets_sent) as f64 / secs,
        report.wire_bytes as f64 / 1e6,
        report.rejected.len(),
    );
    println!(
        "a holds {} assets ({:.1} MB), b holds {} assets ({:.1} MB)",
        stats_a.assets,
        stats_a.bytes as f64 / 1e6,
        stats_b.assets,
        stats_b.bytes as f64 / 1e6
    );
    ensure!(stats_a == stats_b, "the stores did not converge");
    println!("in sync.");
    server.endpoint().close().await;
    client.endpoint().close().await;
    accept.abort();
    Ok(())
}

/// Adds one asset of a random size (log-uniform from 1 KiB to `max_kib`) with
/// partly compressible content; returns its size.
async fn add_random_asset(
    can: &dyn Can,
    node: &str,
    index: usize,
    max_kib: usize,
) -> Result<usize> {
    let mut rng = rand::rng();
    let max = (max_kib.max(1) * 1024) as f64;
    let size = (1024f64 * (max / 1024.0).powf(rng.random::<f64>())) as usize;
    let mut data = vec![0u8; size];
    rng.fill_bytes(&mut data[..size / 2]);
    let text = format!("{{\"node\":\"{node}\",\"index\":{index}}}");
    for (i, byte) in data[size / 2..].iter_mut().enumerate() {
        *byte = text.as_bytes()[i % text.len()];
    }
    let hash = AssetHash::of(&data);
    let now = now_ms();
    can.push(Bundle {
        hash,
        data: data.into(),
        meta: pb::AssetMeta {
            name: format!("{node}-{index}.bin"),
            mime_type: "application/octet-stream".into(),
            created_at_ms: now,
            meta_updated_at_ms: now,
            ..Default::default()
        },
    })
    .await?;
    Ok(size)
}
