//! The wall clock, read only at the edges.
//!
//! Stores stamp changes with it and the daemon stamps its peer records; the
//! pure modules (`asset`, `wire`, `recon`, the session state machines) never
//! read it: they take the time as an argument, so tests run them on a
//! simulated clock.

/// The current time in Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
