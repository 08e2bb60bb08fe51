//! The `can-sync` binary: parses the command line and runs the
//! command it names. Each command is a module under [`cli`]; what they
//! drive (stores, nodes, the daemon's supervisor) is the `can_sync` library.

use anyhow::Result;
use cli::{Cli, Command};

mod cli;

fn main() -> Result<()> {
    bound_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

/// Caps glibc's malloc at two arenas, before any thread exists.
///
/// glibc gives threads that contend for the heap arenas of their own, up to
/// eight per core, and memory freed in one arena is not reused by another.
/// The store's reads and writes hop between tokio's blocking threads, so a
/// daemon serving a bulk seed spread its pages over many arenas: at 1M
/// assets it peaked at 168 MiB of RSS for 86 MiB of heap (heaptrack), and at
/// 113 MiB with two arenas. The cost: about 15% of a 1 GiB transfer's rate,
/// which four arenas would keep, over the bound at shutdown (PERFORMANCE.md,
/// issue 10).
/// The one `unsafe` of the project: a C call with no pointers.
#[allow(unsafe_code)]
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable; it is called before any other
    // thread runs.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn run() -> Result<()> {
    let cli = Cli::parse_expanding_config()?;
    cli::logs::init(&cli.command, cli.verbose, cli.quiet);
    cli::logs::say_each_panic_once();
    match cli.command {
        Command::ServeCan(args) => cli::serve_can::run(args).await,
        Command::Daemon(args) => cli::daemon::run(*args).await,
        Command::Seed(args) => cli::seed::run(args).await,
        Command::Add(args) => cli::add::run(args).await,
        Command::Export(args) => cli::export::run(args).await,
        Command::Fsck(args) => cli::fsck::run(args).await,
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
