//! `can-sync seed`: one session with the peer of `--from`, both directions;
//! a spinner while it runs, then the result ([`report`](super::report)).
//! Exits 0 when in sync (with read rights only: once it holds everything the
//! peer has), non-zero with the reason when the session failed, the peer
//! refused us, or an asset was rejected.
//!
//! With `--data-dir` it dials with that node's persistent key, so the peer
//! can admit it by id (`daemon --allow $(can-sync id --data-dir DIR)`);
//! otherwise with a fresh key each run. Its endpoint admits nobody: a seed
//! only dials.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use can_sync::node::{self, keys, Access, EndpointOptions, Node, SyncError, Ticket};
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
    let secret_key = match args.store.data_dir() {
        Some(dir) => keys::load_or_create(dir)?,
        None => iroh::SecretKey::generate(),
    };
    let our_id = secret_key.public();
    let access = Arc::new(Access::closed());
    let endpoint = node::bind(&EndpointOptions {
        secret_key,
        listen: None,
        relay: !args.net.no_relay,
        access: access.clone(),
        congestion: args.net.congestion,
    })
    .await?;
    let node = Node::new(endpoint, can)
        .with_access(access)
        .with_engine_config(args.engine.config());
    let bar = progress_bar(&node);
    let started = Instant::now();
    let result = node.sync_with(&args.from, protocol).await;
    finish_progress(&bar);
    node.endpoint().close().await;
    let report = match result {
        Err(SyncError::Refused { peer, .. }) => bail!(
            "{peer} refused this node, whose endpoint id is {our_id}: ask its owner to admit \
             it with `--allow {our_id}` (or `--allow-read {our_id}`){}",
            match args.store.data_dir() {
                Some(_) => "",
                None => ", and seed with --data-dir so that the id stays the same",
            }
        ),
        other => other.context("seed session failed")?,
    };
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
