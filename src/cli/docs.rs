//! `can-sync completions SHELL` and `can-sync man --out DIR`: shell
//! completions and man pages generated from the clap definitions, so they
//! can never disagree with `--help`.
//!
//! ```sh
//! can-sync completions bash > /etc/bash_completion.d/can-sync
//! can-sync man --out /usr/local/share/man/man1
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

#[derive(Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    shell: Shell,
}

#[derive(Args)]
pub(crate) struct ManArgs {
    /// Folder to write can-sync.1 and one page per command into.
    #[arg(long)]
    out: PathBuf,
}

/// Prints the completion script of `shell` on stdout.
pub(crate) fn completions(args: CompletionsArgs) {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "can-sync", &mut std::io::stdout());
}

/// Writes `can-sync.1` and `can-sync-COMMAND.1` for each command.
pub(crate) fn man(args: ManArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let command = Cli::command().name("can-sync");
    clap_mangen::generate_to(command, &args.out)
        .with_context(|| format!("writing man pages into {}", args.out.display()))?;
    Ok(())
}
