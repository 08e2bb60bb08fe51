//! Retries of the harness's own CAN requests. The faulty scenario's servers fail
//! a share of every request, the harness's included; loading and checking must
//! get through anyway, so transient failures are retried (never counted against
//! the agents, whose requests are not retried here).

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use can_sync::can::CanError;

/// Attempts before a transient failure is reported.
const ATTEMPTS: u32 = 12;
/// First pause between attempts; doubles, capped at [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// Longest pause between attempts.
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// Runs `op` until it succeeds, fails with a non-transient error, or has
/// failed transiently [`ATTEMPTS`] times. `what` names it in the error.
pub async fn retry<T, F, Fut>(what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CanError>>,
{
    let mut pause = FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(err) if err.is_transient() && attempt < ATTEMPTS => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
                attempt += 1;
            }
            Err(err) => {
                return Err(err).with_context(|| format!("{what} (attempt {attempt})"));
            }
        }
    }
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
        .await;
        assert!(err.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
