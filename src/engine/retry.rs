//! CAN calls made by the engine's stages: retried with the session's policy,
//! each retry counted in the node's stats.

use std::future::Future;

use super::{EngineConfig, EngineStats};
use crate::can::retry::with_retry;
use crate::can::CanError;

/// Runs a CAN call with `config`'s retries, counting each in `stats`.
pub(crate) async fn retried<T, F, Fut>(
    config: &EngineConfig,
    stats: &EngineStats,
    call: F,
) -> Result<T, CanError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CanError>>,
{
    with_retry(
        &config.retry_policy(),
        |err, attempt| {
            EngineStats::add(&stats.retries, 1);
            tracing::debug!(error = %err, attempt, "CAN call failed, retrying");
        },
        call,
    )
    .await
}
