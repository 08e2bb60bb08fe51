//! Time you can trust in metadata: how far ahead of the local
//! clock a `meta_updated_at_ms` may be, and how a user's edit is stamped.
//!
//! Metadata merges by last-writer-wins on its stamp, so whoever can write a
//! stamp can win every future merge. Without a bound, one peer that stamps
//! `i64::MAX` freezes an asset's metadata on every node: the owner's next edit
//! (then stamped `max(now, stored + 1)`) saturates at the same value and
//! loses the tie. Two rules close that:
//!
//! - [`check_stamp`]: a store keeps no stamp more than [`ClockBound::max_skew_ms`]
//!   ahead of its own clock. An update stamped further ahead is refused where
//!   it enters (a peer's session or live offer, the sync API, a push that
//!   carries metadata) and nothing of it is kept. An honest peer whose clock
//!   runs ahead is refused only until real time catches up with its stamp;
//!   the next session offers the update again.
//! - [`edit_stamp`]: a user's edit is stamped like a hybrid logical clock,
//!   `max(now, stored + 1)`, capped at the bound. Since no store holds a
//!   stamp beyond the bound, the edit is newer than what it replaces (unless
//!   that sits exactly at the bound), so it wins on this node and on every
//!   node that held the same value, and it never inherits a far-future stamp. A store applies an edit over what it
//!   holds whatever the stamps (a value stored before the bound existed may
//!   be further ahead): the user's word is the last.
//!
//! Pure: the clock is an argument.

/// The default of [`ClockBound::max_skew_ms`]: five minutes, well beyond
/// the drift of clocks kept by NTP, well short of a freeze.
pub const DEFAULT_MAX_SKEW_MS: i64 = 5 * 60 * 1000;

/// How far ahead of the local clock a metadata stamp may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockBound {
    /// Milliseconds a stamp may be ahead of the local clock; at least 0.
    pub max_skew_ms: i64,
}

impl Default for ClockBound {
    fn default() -> Self {
        Self {
            max_skew_ms: DEFAULT_MAX_SKEW_MS,
        }
    }
}

impl ClockBound {
    /// The latest stamp accepted at local time `now_ms`.
    pub fn latest_at(self, now_ms: i64) -> i64 {
        now_ms.saturating_add(self.max_skew_ms.max(0))
    }
}

/// A metadata stamp too far in the future; nothing of its update was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "metadata stamped {stamp_ms} ms is {ahead_ms} ms ahead of this node's clock \
     (at most {max_skew_ms} ms is accepted)"
)]
pub struct FutureStamp {
    /// The refused stamp (Unix ms).
    pub stamp_ms: i64,
    /// How far ahead of the local clock it was.
    pub ahead_ms: i64,
    /// The bound it broke.
    pub max_skew_ms: i64,
}

/// Accepts `stamp_ms` at local time `now_ms` when it is at most the bound
/// ahead; see the module docs.
pub fn check_stamp(stamp_ms: i64, now_ms: i64, bound: ClockBound) -> Result<(), FutureStamp> {
    if stamp_ms <= bound.latest_at(now_ms) {
        return Ok(());
    }
    Err(FutureStamp {
        stamp_ms,
        ahead_ms: stamp_ms.saturating_sub(now_ms),
        max_skew_ms: bound.max_skew_ms,
    })
}

/// The stamp of a user's edit at local time `now_ms` over a stored stamp:
/// `max(now, stored + 1)`, but never beyond the bound.
pub fn edit_stamp(stored_ms: i64, now_ms: i64, bound: ClockBound) -> i64 {
    now_ms
        .max(stored_ms.saturating_add(1))
        .min(bound.latest_at(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn stamps_up_to_the_skew_pass_and_beyond_it_are_refused() {
        let bound = ClockBound { max_skew_ms: 1000 };
        assert_eq!(check_stamp(NOW, NOW, bound), Ok(()));
        assert_eq!(check_stamp(NOW - 10_000_000, NOW, bound), Ok(()));
        assert_eq!(check_stamp(NOW + 1000, NOW, bound), Ok(()));
        assert_eq!(
            check_stamp(NOW + 1001, NOW, bound),
            Err(FutureStamp {
                stamp_ms: NOW + 1001,
                ahead_ms: 1001,
                max_skew_ms: 1000
            })
        );
        let frozen = check_stamp(i64::MAX, NOW, ClockBound::default()).unwrap_err();
        assert_eq!(frozen.ahead_ms, i64::MAX - NOW);
    }

    #[test]
    fn an_edit_is_newer_than_what_it_replaces_and_never_far_ahead() {
        let bound = ClockBound { max_skew_ms: 1000 };
        // An old stamp: the edit takes the clock.
        assert_eq!(edit_stamp(NOW - 5, NOW, bound), NOW);
        // A stamp slightly ahead (a peer's clock): one past it.
        assert_eq!(edit_stamp(NOW + 500, NOW, bound), NOW + 501);
        // At the bound it cannot go further: it stays within it.
        assert_eq!(edit_stamp(NOW + 1000, NOW, bound), NOW + 1000);
        // A frozen value from before the bound: the edit does not inherit it.
        assert_eq!(edit_stamp(i64::MAX, NOW, bound), NOW + 1000);
        assert_eq!(
            check_stamp(edit_stamp(i64::MAX, NOW, bound), NOW, bound),
            Ok(())
        );
    }

    #[test]
    fn a_negative_skew_means_none() {
        let bound = ClockBound { max_skew_ms: -5 };
        assert_eq!(bound.latest_at(NOW), NOW);
        assert!(check_stamp(NOW + 1, NOW, bound).is_err());
    }
}
