//! `can-sync seed`: one session with the peer of each `--from`, both
//! directions, all at once; a spinner while they run, then the result
//! ([`report`](super::report)), summed over the sessions. Exits 0 when in
//! sync (with read rights only: once it holds everything the peers have),
//! non-zero with the reason when a session failed, a peer refused us, or an
//! asset was rejected and no other source delivered it. A source that
//! cannot be reached, refuses us or fails midway does not hold up the
//! others: their sessions complete and are reported, then every failed
//! source is named.
//!
//! Several sources split the work: the sessions pull, and each asset is
//! claimed by one of them before it is asked for
//! ([`can_sync::session::v2::pull`]), so each comes once, from whichever
//! source's session claims it first; a faster source is asked for more,
//! since a session claims again only as what it asked for arrives. An asset
//! a source sends bad is rejected from it and, if another source holds it,
//! asked for there.
//!
//! With `--data-dir` it dials with that node's persistent key, so the peer
//! can admit it by id (`daemon --allow $(can-sync id --data-dir DIR)`);
//! otherwise with a fresh key each run. Its endpoint admits nobody: a seed
//! only dials.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use can_sync::node::{self, keys, Access, EndpointOptions, Node, SyncError, Ticket};
use can_sync::session::SessionReport;
use clap::Args;

use super::args::{EngineArgs, NetArgs, NodeStoreArgs};
use super::report::{finish_progress, print_report, progress_bar};

#[derive(Args)]
pub(crate) struct SeedArgs {
    #[command(flatten)]
    store: NodeStoreArgs,
    /// Ticket of the peer to sync with; repeat it to pull from several
    /// peers at once, each asset from one of them.
    #[arg(long, required = true)]
    from: Vec<Ticket>,
    /// Print one JSON line with the result instead of a summary.
    #[arg(long)]
    json: bool,
    /// Bind to this address only (e.g. 127.0.0.1:0); by default every
    /// address of both families, on a free port.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
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
        listen: args.listen,
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
    let sessions = args.from.iter().map(|peer| node.sync_with(peer, protocol));
    let results = futures::future::join_all(sessions).await;
    finish_progress(&bar);
    node.endpoint().close().await;
    // Every source's failure is named, and what the others brought is
    // still reported: a source that is down or dies midway leaves the rest
    // to the others, whose sessions complete.
    let mut reports = Vec::with_capacity(results.len());
    let mut failures = Vec::new();
    for (ticket, result) in args.from.iter().zip(results) {
        match result {
            Ok(report) => reports.push(report),
            Err(SyncError::Refused { peer, .. }) => failures.push(format!(
                "{peer} refused this node, whose endpoint id is {our_id}: ask its owner to \
                 admit it with `--allow {our_id}` (or `--allow-read {our_id}`){}",
                match args.store.data_dir() {
                    Some(_) => "",
                    None => ", and seed with --data-dir so that the id stays the same",
                }
            )),
            Err(err @ SyncError::Connect { .. }) => failures.push(err.to_string()),
            Err(err) => failures.push(format!(
                "the session with {} failed: {:#}",
                ticket.id.fmt_short(),
                anyhow::Error::from(err)
            )),
        }
    }
    if reports.is_empty() {
        bail!("{}", failures.join("; "));
    }
    let mut total = sum(reports);
    // An asset one source sent bad may have come whole from another.
    let mut recovered = 0;
    let mut rejected = Vec::new();
    for rejection in std::mem::take(&mut total.rejected) {
        if args.from.len() > 1 && node.can().meta(rejection.hash).await?.is_some() {
            recovered += 1;
        } else {
            rejected.push(rejection);
        }
    }
    total.rejected = rejected;
    print_report(&total, started.elapsed(), args.json);
    if recovered > 0 && !args.json {
        println!("{recovered} assets rejected from one source came whole from another");
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} sources failed (the report above is the others'): {}",
            failures.len(),
            args.from.len(),
            failures.join("; ")
        );
    }
    if !total.rejected.is_empty() {
        bail!(
            "{} assets were rejected, first: {} ({})",
            total.rejected.len(),
            total.rejected[0].hash,
            total.rejected[0].reason
        );
    }
    Ok(())
}

/// The sessions of one seed as one report: counts summed, rejections of all.
fn sum(reports: Vec<SessionReport>) -> SessionReport {
    let mut total = SessionReport::default();
    for report in reports {
        total.assets_sent += report.assets_sent;
        total.assets_received += report.assets_received;
        total.duplicates_received += report.duplicates_received;
        total.payload_bytes += report.payload_bytes;
        total.bytes_sent += report.bytes_sent;
        total.wire_bytes += report.wire_bytes;
        total.meta_sent += report.meta_sent;
        total.meta_applied += report.meta_applied;
        total.not_taken += report.not_taken;
        total.rejected.extend(report.rejected);
        total.elapsed = total.elapsed.max(report.elapsed);
    }
    total
}
