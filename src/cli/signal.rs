//! How the long-running commands (`daemon`, `serve-can`) learn to stop:
//! SIGINT or SIGTERM (Ctrl-C off Unix), as a future.

/// Resolves on SIGINT or SIGTERM.
///
/// The handlers are installed when this is called, not when it is first
/// awaited: a signal that arrives in between is not lost.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
