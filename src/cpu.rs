//! Where CPU-bound work on bytes runs: on the calling task when it is short,
//! on tokio's blocking pool when it is long.
//!
//! Hashing, compressing or decoding a buffer blocks the async worker that
//! does it, so large buffers go to the blocking pool. For a small one the
//! hand-off costs more than the work: a 4 KiB asset verifies in about 2 µs,
//! while `spawn_blocking` wakes a pool thread, switches to it and back, and
//! allocates a task. Profiles of 10,000 small assets put those switches at a
//! tenth of each agent's CPU, so the pipeline's per-asset steps call [`run`]
//! and only buffers above [`INLINE_BYTES`] leave the task.

/// The largest buffer worked on in the calling task: tens of microseconds
/// of hashing, verifying or fast compression at most, well inside what an
/// async task may hold its worker.
pub const INLINE_BYTES: usize = 64 * 1024;

/// Runs `work` costing about as much as a pass over `bytes` bytes: here
/// when `bytes` is at most [`INLINE_BYTES`], else on the blocking pool.
/// Callers whose work costs more per byte (a slow zstd level, input that
/// decodes slowly) say so in `bytes`. Work done here counts against the
/// task's cooperative budget, so a loop that always finds its next item
/// ready still lets the worker's other tasks run. `Err` only when the pool's
/// task failed (it panicked, or the runtime is shutting down).
pub async fn run<T: Send + 'static>(
    bytes: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if bytes <= INLINE_BYTES {
        let done = work();
        tokio::task::coop::consume_budget().await;
        Ok(done)
    } else {
        tokio::task::spawn_blocking(work).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small work stays on the calling thread; large work leaves it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn small_work_runs_here_and_large_work_on_the_pool() {
        let here = std::thread::current().id();
        let small = run(INLINE_BYTES, std::thread::current).await.unwrap();
        assert_eq!(small.id(), here);
        let large = run(INLINE_BYTES + 1, std::thread::current).await.unwrap();
        assert_ne!(large.id(), here);
    }
}
