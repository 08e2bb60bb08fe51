//! Where logs go: stderr, through `tracing`, filtered by `RUST_LOG` when it
//! is set, else by `-v`/`-q` and the command. Results go to stdout, so logs
//! never mix into what a script reads; while a progress bar is drawn, each
//! log line is printed above it, so logs never tear it.

use std::io::Write;
use std::sync::Mutex;

use super::Command;

/// The progress bar on screen, if any: log lines go above it.
static BAR: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// Installs the process's log subscriber. Without `RUST_LOG`, the services
/// log what they do (`info` from this crate), while interactive commands,
/// which print their own progress and result, log only warnings; `-v` adds
/// info, `-vv` debug, `-q` leaves errors only.
pub(crate) fn init(command: &Command, verbose: u8, quiet: bool) {
    let interactive = matches!(
        command,
        Command::Demo(_)
            | Command::Seed(_)
            | Command::Add(_)
            | Command::Export(_)
            | Command::Status(_)
            | Command::Completions(_)
            | Command::Man(_)
    );
    let default_filter = match (quiet, verbose, interactive) {
        (true, _, _) => "error",
        (false, 0, true) => "warn",
        (false, 0, false) | (false, 1, _) => "warn,can_sync=info",
        (false, _, _) => "info,can_sync=debug",
    };
    tracing_subscriber::fmt()
        .with_writer(|| AboveTheBar)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .init();
}

/// Prints log lines above `bar` until [`bar_done`].
pub(crate) fn print_above(bar: &indicatif::ProgressBar) {
    *BAR.lock().expect("bar lock") = Some(bar.clone());
}

/// The bar is gone: log lines go straight to stderr again.
pub(crate) fn bar_done() {
    *BAR.lock().expect("bar lock") = None;
}

/// stderr, with the bar (if any) cleared for each write and drawn again
/// after it.
struct AboveTheBar;

impl Write for AboveTheBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = BAR.lock().expect("bar lock").clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
