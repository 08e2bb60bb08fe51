//! Did a resource stay flat? The soak's verdict on each series it sampled,
//! pure: times and values in, a [`Trend`] out.
//!
//! The first [`WARMUP_SHARE`] of the run, and at least [`MIN_WARMUP_S`], is
//! warm-up: caches fill, the allocator finds its size, the dead links of
//! killed peers pile up to their steady count. The baseline is
//! the median of the next [`WINDOW_SHARE`] of the run, the end the median of
//! its last [`WINDOW_SHARE`]. Medians, not single samples or means, because
//! the series jump with the churn (a peer connecting brings its tasks and
//! buffers, one killed leaves them until the idle timeout): a leak moves
//! the whole distribution, a burst moves a few samples. A series grew when
//! its end median exceeds its baseline median by more than the limit.

use std::ops::Range;

use serde::Serialize;

/// The run's share that is warm-up, not judged.
pub(crate) const WARMUP_SHARE: f64 = 0.2;
/// The shortest warm-up, seconds: the first peers are killed up to 5 s in,
/// and the measured daemon holds each dead link for its 10 s idle timeout,
/// so their count is steady only after 15 s.
pub(crate) const MIN_WARMUP_S: f64 = 15.0;
/// The share of the run each compared window spans.
pub(crate) const WINDOW_SHARE: f64 = 0.2;

/// The two windows compared, in seconds from the start of the churn, both
/// ends included.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Windows {
    /// Right after the warm-up.
    pub(crate) baseline: Range<f64>,
    /// The end of the run.
    pub(crate) end: Range<f64>,
}

impl Windows {
    /// The windows of a run of `duration_s` (at least 40 s, so that the
    /// windows do not overlap).
    pub(crate) fn of(duration_s: f64) -> Self {
        let warmup = (duration_s * WARMUP_SHARE).max(MIN_WARMUP_S);
        let window = duration_s * WINDOW_SHARE;
        Self {
            baseline: warmup..warmup + window,
            end: duration_s - window..duration_s,
        }
    }
}

/// One series over the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Trend {
    /// What was sampled (`rss_bytes`, `open_fds`, `tasks`).
    pub(crate) name: &'static str,
    /// Median of the baseline window.
    pub(crate) baseline: f64,
    /// Median of the end window.
    pub(crate) end: f64,
    /// `end / baseline - 1`: 0.1 is 10% more at the end.
    pub(crate) growth: f64,
    /// The largest value sampled, warm-up included.
    pub(crate) peak: f64,
    /// Samples in the baseline and end windows.
    pub(crate) samples: (usize, usize),
    /// The most growth allowed; `None`: reported, not judged.
    pub(crate) limit: Option<f64>,
}

impl Trend {
    /// The series of `points` (seconds, value) judged over `windows`;
    /// `None` when a window holds no sample.
    pub(crate) fn of(
        name: &'static str,
        points: &[(f64, f64)],
        windows: &Windows,
        limit: Option<f64>,
    ) -> Option<Self> {
        let within = |range: &Range<f64>| -> Vec<f64> {
            points
                .iter()
                .filter(|(t, _)| (range.start..=range.end).contains(t))
                .map(|&(_, v)| v)
                .collect()
        };
        let (base, end) = (within(&windows.baseline), within(&windows.end));
        let samples = (base.len(), end.len());
        let (baseline, end) = (median(base)?, median(end)?);
        let growth = if baseline > 0.0 {
            end / baseline - 1.0
        } else if end > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        Some(Self {
            name,
            baseline,
            end,
            growth,
            peak: points.iter().map(|&(_, v)| v).fold(f64::NAN, f64::max),
            samples,
            limit,
        })
    }

    /// False when the series grew more than its limit.
    pub(crate) fn ok(&self) -> bool {
        // As a product, not `growth <= limit`: 110 against 100 is exactly
        // 10%, which the quotient would overshoot by a rounding.
        self.limit
            .is_none_or(|limit| self.end <= self.baseline * (1.0 + limit))
    }
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` for none.
pub(crate) fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One sample a second for `secs` seconds of `value(t)`.
    fn series(secs: u32, value: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (0..=secs).map(f64::from).map(|t| (t, value(t))).collect()
    }

    #[test]
    fn windows_follow_the_warmup_and_close_the_run() {
        let w = Windows::of(600.0);
        assert_eq!(w.baseline, 120.0..240.0);
        assert_eq!(w.end, 480.0..600.0);
        // A minute: the warm-up is longer than a fifth.
        let w = Windows::of(60.0);
        assert_eq!(w.baseline, 15.0..27.0);
        assert_eq!(w.end, 48.0..60.0);
    }

    #[test]
    fn a_flat_series_with_bursts_passes() {
        // 100 with a burst to 400 every 7 s: the medians ignore the bursts.
        let points = series(600, |t| {
            if (t as u32).is_multiple_of(7) {
                400.0
            } else {
                100.0
            }
        });
        let trend = Trend::of("tasks", &points, &Windows::of(600.0), Some(0.1)).unwrap();
        assert_eq!(
            (trend.baseline, trend.end, trend.growth),
            (100.0, 100.0, 0.0)
        );
        assert_eq!(trend.peak, 400.0);
        assert!(trend.ok());
    }

    #[test]
    fn a_steady_leak_fails_and_a_warmup_climb_does_not() {
        let windows = Windows::of(600.0);
        // One more every 10 s from 100: +30% from the baseline to the end.
        let leak = series(600, |t| 100.0 + t / 10.0);
        let trend = Trend::of("fds", &leak, &windows, Some(0.1)).unwrap();
        assert!(!trend.ok(), "{trend:?}");
        // Medians: 118 over 120–240 s, 154 over 480–600 s.
        assert!(
            (trend.growth - (154.0 / 118.0 - 1.0)).abs() < 1e-9,
            "{trend:?}"
        );

        // Doubling during the warm-up, flat after it.
        let warming = series(600, |t| if t < 100.0 { 50.0 + t / 2.0 } else { 100.0 });
        let trend = Trend::of("rss", &warming, &windows, Some(0.1)).unwrap();
        assert!(trend.ok(), "{trend:?}");

        // A shrinking series is fine; an unlimited one is never judged.
        let shrinking = series(600, |t| 200.0 - t / 10.0);
        assert!(Trend::of("rss", &shrinking, &windows, Some(0.1))
            .unwrap()
            .ok());
        assert!(Trend::of("threads", &leak, &windows, None).unwrap().ok());
    }

    #[test]
    fn growth_just_over_the_limit_fails() {
        let windows = Windows::of(100.0);
        let step = |end: f64| series(100, move |t| if t >= 80.0 { end } else { 100.0 });
        assert!(Trend::of("x", &step(110.0), &windows, Some(0.1))
            .unwrap()
            .ok());
        assert!(!Trend::of("x", &step(111.0), &windows, Some(0.1))
            .unwrap()
            .ok());
    }

    #[test]
    fn an_empty_window_gives_no_verdict() {
        let early = series(50, |_| 1.0);
        assert_eq!(Trend::of("x", &early, &Windows::of(100.0), Some(0.1)), None);
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), Some(2.5));
    }
}
