//! Retries of the harness's own CAN requests. The faulty scenario's servers fail
//! a share of every request, the harness's included; loading and checking must
//! get through anyway, so transient failures are retried (never counted against
//! the agents, whose requests are not retried here).
//!
//! The loop is the crate's own, [`with_retry`], pausing by the crate's one
//! [`Backoff`] (so with its jitter); only the policy is the harness's.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use can_sync::backoff::Backoff;
use can_sync::can::retry::{with_retry, RetryPolicy};
use can_sync::can::CanError;

/// Attempts before a transient failure is reported.
const ATTEMPTS: u32 = 12;
/// First pause between attempts; doubles, capped at [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// Longest pause between attempts, before jitter.
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// How the harness retries: [`ATTEMPTS`] tries, pausing from [`FIRST_PAUSE`]
/// doubling to [`MAX_PAUSE`].
fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts: ATTEMPTS,
        backoff: Backoff::new(FIRST_PAUSE, MAX_PAUSE),
    }
}

/// Runs `op` until it succeeds, fails with a non-transient error, or has
/// failed transiently [`ATTEMPTS`] times. `what` names it in the error, with
/// the attempt that failed last.
pub(crate) async fn retry<T, F, Fut>(what: &str, op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CanError>>,
{
    let mut attempt = 1;
    let result = with_retry(&policy(), |_, failed| attempt = failed + 1, op).await;
    result.with_context(|| format!("{what} (attempt {attempt})"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_others_are_not() {
        let calls = AtomicU32::new(0);
        let value = retry("flaky", || async {
            if calls.fetch_add(1, Ordering::Relaxed) < 3 {
                Err(CanError::Unavailable("500".into()))
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!((value, calls.load(Ordering::Relaxed)), (7, 4));

        let calls = AtomicU32::new(0);
        let err = retry("bad", || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(CanError::Invalid("no".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(err.to_string(), "bad (attempt 1)");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lasting_failure_is_given_up_after_every_attempt() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let err = retry("down", || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(CanError::Unavailable("503".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), ATTEMPTS);
        assert_eq!(err.to_string(), "down (attempt 12)");
        assert!(matches!(
            err.downcast_ref::<CanError>(),
            Some(CanError::Unavailable(_))
        ));
        // 20 + 40 + 80 + 160 + 320 ms, then 500 ms six times; jitter adds up
        // to half again.
        let waited = started.elapsed();
        let base = Duration::from_millis(3620);
        assert!(waited >= base && waited <= base * 3 / 2, "{waited:?}");
    }
}
