//! `can-sync ticket` and `can-sync id`: what a node's peers dial and what
//! their `--allow` takes, read from its `--data-dir`. The ticket is the one
//! the daemon wrote there when it started ([`TICKET_FILE`]); the id comes
//! from the node's key, created on first use.

use std::path::PathBuf;

use anyhow::{Context, Result};
use can_sync::node::keys;
use clap::Args;

/// Where a running daemon writes its ticket for `can-sync ticket`.
pub(crate) const TICKET_FILE: &str = "ticket";

#[derive(Args)]
pub(crate) struct DataDirArgs {
    /// The node's data folder.
    #[arg(long)]
    data_dir: PathBuf,
}

/// Prints the ticket the daemon in `--data-dir` wrote when it started.
pub(crate) fn ticket(args: DataDirArgs) -> Result<()> {
    let path = args.data_dir.join(TICKET_FILE);
    let ticket = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no ticket in {}: start `can-sync daemon --data-dir` there first",
            path.display()
        )
    })?;
    println!("{}", ticket.trim());
    Ok(())
}

/// Prints the endpoint id of the node whose key is in `--data-dir`.
pub(crate) fn id(args: DataDirArgs) -> Result<()> {
    println!("{}", keys::load_or_create(&args.data_dir)?.public());
    Ok(())
}
