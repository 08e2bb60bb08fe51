//! The node's throughput over the last fifteen minutes: what the daemon's
//! page charts, served as `GET /status/throughput`.
//!
//! A sampler task reads the engine's payload counters every
//! [`SAMPLE_PERIOD`] and keeps the last [`WINDOW`] of them in a ring; a
//! reader gets the rate of each interval between two samples, each way.
//! Sampling counters (rather than recording each transfer) keeps the
//! transfer paths free of it and the ring bounded whatever the traffic.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::engine::EngineStats;

/// How often the sampler reads the counters.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(5);

/// How far back the chart reaches.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// Samples kept: one more than the intervals in [`WINDOW`].
const SAMPLES: usize = (WINDOW.as_secs() / SAMPLE_PERIOD.as_secs()) as usize + 1;

/// The payload counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    /// Wall time, for the chart's axis.
    at_ms: i64,
    /// Monotonic time (tokio's, so tests can pause it), for the length of
    /// an interval: a wall clock stepped back or forth must not make a rate
    /// of it.
    at: Instant,
    bytes_sent: u64,
    bytes_received: u64,
}

/// The rate of one interval, in bytes per second each way, as `GET
/// /status/throughput` lists it: `[end_ms, sent, received]`.
pub type Point = (i64, u64, u64);

/// What `GET /status/throughput` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// Milliseconds between samples.
    pub period_ms: u64,
    /// Milliseconds the chart reaches back.
    pub window_ms: u64,
    /// The node's clock now (Unix ms): where the chart ends, whatever the
    /// clock of the machine that draws it says.
    pub now_ms: i64,
    /// One point per interval, oldest first: when it ended (Unix ms), then
    /// payload bytes per second sent and received over it.
    pub points: Vec<Point>,
}

/// The ring of samples; see the module docs.
#[derive(Debug, Default)]
pub struct Throughput {
    samples: Mutex<VecDeque<Sample>>,
}

impl Throughput {
    /// Records the counters' values at `at_ms`.
    fn record(&self, sample: Sample) {
        let mut samples = self.samples.lock().expect("throughput lock");
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Records `stats` as they are now.
    pub fn sample(&self, stats: &EngineStats) {
        self.record(Sample {
            at_ms: now_ms(),
            at: Instant::now(),
            bytes_sent: EngineStats::get(&stats.bytes_sent),
            bytes_received: EngineStats::get(&stats.bytes_received),
        });
    }

    /// The rate of each interval between two kept samples, oldest first.
    pub fn series(&self) -> Series {
        let samples = self.samples.lock().expect("throughput lock");
        let points = samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(before, after)| {
                let ms = (after.at - before.at).as_millis().max(1) as u64;
                let rate = |from: u64, to: u64| to.saturating_sub(from) * 1000 / ms;
                (
                    after.at_ms,
                    rate(before.bytes_sent, after.bytes_sent),
                    rate(before.bytes_received, after.bytes_received),
                )
            })
            .collect();
        Series {
            period_ms: SAMPLE_PERIOD.as_millis() as u64,
            window_ms: WINDOW.as_millis() as u64,
            now_ms: now_ms(),
            points,
        }
    }

    /// Samples `stats` into `self` every [`SAMPLE_PERIOD`] until `stop` is
    /// cancelled; the first sample is taken at once, so the first interval
    /// ends one period after start.
    pub async fn run(self: Arc<Self>, stats: Arc<EngineStats>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(SAMPLE_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.sample(&stats),
                () = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample `at_ms` after `start` on both clocks.
    fn at(start: Instant, at_ms: i64, bytes_sent: u64, bytes_received: u64) -> Sample {
        Sample {
            at_ms,
            at: start + Duration::from_millis(at_ms as u64),
            bytes_sent,
            bytes_received,
        }
    }

    #[test]
    fn each_interval_is_a_rate_each_way() {
        let (throughput, start) = (Throughput::default(), Instant::now());
        throughput.record(at(start, 10_000, 0, 0));
        throughput.record(at(start, 15_000, 5_000_000, 0));
        throughput.record(at(start, 20_000, 5_000_000, 1_000));
        let series = throughput.series();
        assert_eq!(
            series.points,
            vec![(15_000, 1_000_000, 0), (20_000, 0, 200)]
        );
        assert_eq!(series.period_ms, 5_000);
        assert_eq!(series.window_ms, 900_000);
    }

    #[test]
    fn the_ring_keeps_fifteen_minutes() {
        let (throughput, start) = (Throughput::default(), Instant::now());
        for n in 0..SAMPLES as i64 + 10 {
            throughput.record(at(start, n * 5_000, n as u64, 0));
        }
        let points = throughput.series().points;
        assert_eq!(points.len(), SAMPLES - 1);
        let span = points.last().unwrap().0 - points[0].0;
        assert_eq!(span, WINDOW.as_millis() as i64 - 5_000);
    }

    #[test]
    fn a_wall_clock_stepped_back_makes_no_rate_of_it() {
        let (throughput, start) = (Throughput::default(), Instant::now());
        throughput.record(at(start, 10_000, 0, 0));
        let mut stepped = at(start, 15_000, 5_000_000, 0);
        stepped.at_ms = 9_000;
        throughput.record(stepped);
        assert_eq!(throughput.series().points, vec![(9_000, 1_000_000, 0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sampler_reads_the_counters_until_stopped() {
        let (throughput, stats) = (
            Arc::new(Throughput::default()),
            Arc::new(EngineStats::default()),
        );
        let stop = CancellationToken::new();
        let sampler = tokio::spawn(throughput.clone().run(stats.clone(), stop.clone()));
        tokio::time::sleep(SAMPLE_PERIOD / 2).await;
        EngineStats::add(&stats.bytes_received, 4096);
        tokio::time::sleep(SAMPLE_PERIOD).await;
        stop.cancel();
        sampler.await.unwrap();
        let points = throughput.series().points;
        assert_eq!(points.len(), 1, "{points:?}");
        // 4,096 bytes over one period (tokio's clock, paused, is exact).
        assert_eq!(points[0].2, 4096 * 1000 / SAMPLE_PERIOD.as_millis() as u64);
        assert_eq!(points[0].1, 0);
    }
}
