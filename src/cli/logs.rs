//! Where logs go: stderr, through `tracing`, filtered by `RUST_LOG` when it
//! is set. Results go to stdout, so logs never mix into what a script reads.

use super::Command;

/// Installs the process's log subscriber. Without `RUST_LOG`, the services
/// log what they do (`info` from this crate), while the demo, which prints
/// its own summary, logs only warnings.
pub(crate) fn init(command: &Command) {
    let default_filter = match command {
        // Interactive commands: their own output says what happened.
        Command::Demo(_)
        | Command::Add(_)
        | Command::Export(_)
        | Command::Status(_)
        | Command::Completions(_)
        | Command::Man(_) => "warn",
        _ => "warn,can_sync=info",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .init();
}
