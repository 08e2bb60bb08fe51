//! Retrying a CAN call that failed for a transient reason
//! ([`CanError::is_transient`]): the store was unreachable or answered 5xx.

use std::future::Future;

use super::CanError;
use crate::backoff::Backoff;

/// How often and how patiently to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Pauses between tries.
    pub backoff: Backoff,
}

/// Runs `call` up to `policy.attempts` times while it fails transiently,
/// pausing by the policy's backoff in between; `on_retry` hears of each retry
/// (its error and the number of the attempt that failed). The last error, or
/// the first permanent one, is returned.
pub async fn with_retry<T, F, Fut>(
    policy: &RetryPolicy,
    mut on_retry: impl FnMut(&CanError, u32),
    mut call: F,
) -> Result<T, CanError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CanError>>,
{
    let mut backoff = policy.backoff.clone();
    let mut attempt = 1;
    loop {
        match call().await {
            Err(err) if err.is_transient() && attempt < policy.attempts => {
                on_retry(&err, attempt);
                tokio::time::sleep(backoff.next_pause()).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
                .with_jitter(0.0),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_backoff_then_given_up() {
        let calls = AtomicU32::new(0);
        let mut retries = Vec::new();
        let started = tokio::time::Instant::now();
        let result: Result<(), CanError> = with_retry(
            &policy(3),
            |_, attempt| retries.push(attempt),
            || {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err(CanError::Unavailable("500".into())) }
            },
        )
        .await;
        assert!(matches!(result, Err(CanError::Unavailable(_))));
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        assert_eq!(retries, [1, 2]);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(300),
            "100 ms then 200 ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried_and_success_ends_it() {
        let calls = AtomicU32::new(0);
        let result: Result<(), CanError> = with_retry(
            &policy(5),
            |_, _| {},
            || {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err(CanError::Invalid("bad".into())) }
            },
        )
        .await;
        assert!(matches!(result, Err(CanError::Invalid(_))));
        assert_eq!(calls.load(Ordering::Relaxed), 1);

        let calls = AtomicU32::new(0);
        let value = with_retry(
            &policy(5),
            |_, _| {},
            || async {
                if calls.fetch_add(1, Ordering::Relaxed) < 2 {
                    Err(CanError::Unavailable("503".into()))
                } else {
                    Ok(7)
                }
            },
        )
        .await;
        assert_eq!(value.unwrap(), 7);
    }
}
