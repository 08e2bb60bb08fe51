//! The `can-sync` binary (DESIGN §7): parses the command line and runs the
//! command it names. Each command is a module under [`cli`]; what they
//! drive (stores, nodes, the daemon's supervisor) is the `can_sync` library.

use anyhow::Result;
use cli::{Cli, Command};

mod cli;

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse_expanding_config()?;
    cli::logs::init(&cli.command, cli.verbose, cli.quiet);
    match cli.command {
        Command::ServeCan(args) => cli::serve_can::run(args).await,
        Command::Daemon(args) => cli::daemon::run(args).await,
        Command::Seed(args) => cli::seed::run(args).await,
        Command::Add(args) => cli::add::run(args).await,
        Command::Export(args) => cli::export::run(args).await,
        Command::Status(args) => cli::status::run(args).await,
        Command::Ticket(args) => cli::ticket::ticket(args),
        Command::Id(args) => cli::ticket::id(args),
        Command::Demo(args) => cli::demo::run(args).await,
        Command::Completions(args) => {
            cli::docs::completions(args);
            Ok(())
        }
        Command::Man(args) => cli::docs::man(args),
    }
}
