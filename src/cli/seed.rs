//! `can-sync seed`: one session with the peer of `--from`, both directions,
//! from a throwaway identity; a spinner while it runs, then the result
//! ([`report`](super::report)). Exits 0 when in sync, non-zero with the
//! reason when the session failed or an asset was rejected.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use can_sync::node::{self, EndpointOptions, Node, Ticket};
use clap::Args;

use super::args::{EngineArgs, NetArgs, NodeStoreArgs};
use super::report::{finish_progress, print_report, progress_bar};

#[derive(Args)]
pub(crate) struct SeedArgs {
    #[command(flatten)]
    store: NodeStoreArgs,
    /// Ticket of the peer to sync with.
    #[arg(long)]
    from: Ticket,
    /// Print one JSON line with the result instead of a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

pub(crate) async fn run(args: SeedArgs) -> Result<()> {
    let protocol = args.net.protocol();
    let (can, _) = args.store.open()?;
    // A fresh key each run: a seed is a one-off visitor, not a node with an
    // identity to keep.
    let endpoint = node::bind(&EndpointOptions {
        secret_key: iroh::SecretKey::generate(),
        listen: None,
        relay: !args.net.no_relay,
        allow: Vec::new(),
        congestion: args.net.congestion,
    })
    .await?;
    let node = Node::new(endpoint, can).with_engine_config(args.engine.config());
    let bar = progress_bar(&node);
    let started = Instant::now();
    let result = node.sync_with(&args.from, protocol).await;
    finish_progress(&bar);
    node.endpoint().close().await;
    let report = result.context("seed session failed")?;
    print_report(&report, started.elapsed(), args.json);
    if !report.rejected.is_empty() {
        bail!(
            "{} assets were rejected, first: {} ({})",
            report.rejected.len(),
            report.rejected[0].hash,
            report.rejected[0].reason
        );
    }
    Ok(())
}
