//! The command line (README): its commands, how it is parsed, and one
//! module per command. `main.rs` parses with [`Cli::parse_expanding_config`]
//! and hands each command's arguments to its module's `run`; everything a
//! command drives lives in the library.
//!
//! - [`args`]: the argument groups several commands share (store, network,
//!   engine knobs) and what they become;
//! - [`serve_can`], [`daemon`], [`seed`], [`add`], [`export`], [`status`], [`ticket`]
//!   (`ticket` and `id`), [`demo`]: one command each;
//! - [`docs`]: shell completions and man pages from these definitions;
//! - [`config_file`]: the daemon's `--config` TOML, expanded into flags;
//! - [`report`]: the seed's progress spinner and its result line;
//! - [`signal`]: SIGINT and SIGTERM as a shutdown future;
//! - [`logs`]: where logs go and how much of them.
//!
//! The doc comments of the clap types are the help text: changing one
//! changes `--help`.

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub(crate) mod add;
pub(crate) mod args;
pub(crate) mod config_file;
pub(crate) mod daemon;
pub(crate) mod demo;
pub(crate) mod docs;
pub(crate) mod export;
pub(crate) mod fsck;
pub(crate) mod logs;
pub(crate) mod report;
pub(crate) mod seed;
pub(crate) mod serve_can;
pub(crate) mod signal;
pub(crate) mod status;
pub(crate) mod ticket;

/// Keeps content-addressed asset stores of many nodes in sync over iroh QUIC.
#[derive(Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// More log output: -v info, -vv debug (RUST_LOG, when set, decides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// Errors only on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the reference CAN server (its HTTP API: docs/openapi.json).
    ServeCan(serve_can::ServeCanArgs),
    /// Run the sync agent: accept peers, dial --peer tickets, keep syncing.
    #[command(args_override_self = true)]
    Daemon(Box<daemon::DaemonArgs>),
    /// Run one session with a peer (both directions) and exit: 0 when in sync.
    Seed(seed::SeedArgs),
    /// Add files and folders (recursively) to a node's store.
    Add(add::AddArgs),
    /// Write every asset of a node's store to a folder, under its name.
    Export(export::ExportArgs),
    /// Read every asset of a store and name each one damaged or missing;
    /// non-zero exit if there is one.
    Fsck(fsck::FsckArgs),
    /// Ask the running daemon what it is doing: its peers as a table.
    Status(status::StatusArgs),
    /// Print the ticket of the daemon that runs (or ran) in --data-dir; with
    /// --grant, one that admits its holder; --revoke and --list-grants.
    Ticket(ticket::TicketArgs),
    /// Print this node's endpoint id (what --allow takes).
    Id(ticket::DataDirArgs),
    /// Two embedded nodes on loopback, a generated archive, a seed run, a summary.
    Demo(demo::DemoArgs),
    /// Print the shell completion script for SHELL.
    Completions(docs::CompletionsArgs),
    /// Write the man pages into a folder.
    Man(docs::ManArgs),
}

impl Cli {
    /// The command line, with the daemon's `--config` file expanded into
    /// flags; exits with clap's message (and status 2) when it is not one.
    pub(crate) fn parse_expanding_config() -> Result<Self> {
        let mut command = Self::command();
        // The daemon's long flags are the settings a config file may hold.
        let known: Vec<String> = command
            .find_subcommand("daemon")
            .map(|daemon| {
                daemon
                    .get_arguments()
                    .filter_map(|arg| arg.get_long().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let args = config_file::expand(std::env::args_os().collect(), &known)?;
        let matches = command
            .try_get_matches_from_mut(args)
            .unwrap_or_else(|err| err.exit());
        Ok(Self::from_arg_matches(&matches).unwrap_or_else(|err| err.exit()))
    }
}
