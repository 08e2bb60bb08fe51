//! Where logs go: stderr, through `tracing`, filtered by `RUST_LOG` when it
//! is set, else by `-v`/`-q` and the command. Results go to stdout, so logs
//! never mix into what a script reads; while a progress bar is drawn, each
//! log line is printed above it, so logs never tear it. A panic is said
//! once for each place in the code it comes from ([`say_each_panic_once`]).

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

/// Says each panic once per place in the code it comes from, through the
/// default hook (so with a backtrace when `RUST_BACKTRACE` asks). redb
/// panics on a page of its file that does not parse, and the store turns
/// each such panic into an error that names the damage: looking past a
/// damaged page (fsck, export, a node's listings) meets the same panic
/// many times over, and a daemon meets it again in each session.
pub(crate) fn say_each_panic_once() {
    let default = std::panic::take_hook();
    let said = Mutex::new(std::collections::HashSet::new());
    std::panic::set_hook(Box::new(move |info| {
        let place = info
            .location()
            .map(|at| (at.file().to_string(), at.line(), at.column()));
        if said.lock().map_or(true, |mut said| said.insert(place)) {
            default(info);
        }
    }));
}
