//! The impairment of one direction as a pure function: a packet's arrival
//! time and size in, its fate out (delivered at a time, or dropped and why).
//! No sockets and no clock, so every decision is unit-tested on virtual time
//! (quinn's style: pure core, IO at the edge in [`super::proxy`]).
//!
//! A packet meets, in order:
//! 1. the **blackhole windows**: arriving inside one, it is dropped;
//! 2. the **bottleneck**: a token bucket of `rate` (bits/s) with `burst`
//!    bytes of credit in front of a FIFO queue of at most `queue` of waiting
//!    time; a packet that would wait longer is dropped at the tail, as a
//!    router's full queue drops. A packet leaves once it has been serialised;
//! 3. **loss**: after the bottleneck (a lost packet used its share of the
//!    link, as on a lossy last hop), with probability `loss`;
//! 4. **delay**: `delay` plus a uniform jitter in ±`jitter` (clamped at
//!    zero), and with probability `reorder` an extra `reorder_delay`, so
//!    later packets overtake it.
//!
//! Every packet consumes the same three draws from the generator whatever
//! its fate, so the n-th packet of a direction meets the same luck in every
//! run with the same seed: a replay differs only by the real arrival times.

use std::time::Duration;

use super::rng::SplitMix64;

/// How one direction is impaired.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Impairment {
    /// One-way delay of every delivered packet (half the added RTT).
    pub(crate) delay: Duration,
    /// Each packet's delay varies uniformly by up to this much either way;
    /// wider than the gap between packets, it reorders them.
    pub(crate) jitter: Duration,
    /// Probability that a packet is lost (Bernoulli, independent).
    pub(crate) loss: f64,
    /// Probability that a packet is held back by `reorder_delay`.
    pub(crate) reorder: f64,
    /// How long a reordered packet is held back.
    pub(crate) reorder_delay: Duration,
    /// Bottleneck rate in bits per second; `None`: no cap.
    pub(crate) rate_bps: Option<u64>,
    /// Bytes the bucket lets through at once after an idle spell.
    pub(crate) burst_bytes: u64,
    /// Longest a packet may wait in the bottleneck's queue before the queue
    /// counts as full (its size in time, as routers are sized by BDP).
    pub(crate) queue: Duration,
    /// Windows, from the proxy's start, in which every packet is dropped.
    pub(crate) blackholes: Vec<Window>,
}

impl Default for Impairment {
    /// A perfect link: no delay, no loss, no cap.
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(5),
            rate_bps: None,
            burst_bytes: 3_000,
            queue: Duration::from_millis(50),
            blackholes: Vec::new(),
        }
    }
}

/// A time window `[start, end)` from the proxy's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// First instant inside.
    pub(crate) start: Duration,
    /// First instant outside again.
    pub(crate) end: Duration,
}

impl Window {
    /// True when `t` is inside.
    pub(crate) fn contains(&self, t: Duration) -> bool {
        self.start <= t && t < self.end
    }
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Delivered at `at` (from the proxy's start).
    Deliver {
        /// When it reaches the other side.
        at: Duration,
        /// It arrives before a packet that was offered earlier.
        overtakes: bool,
    },
    /// Dropped inside a blackhole window.
    Blackholed,
    /// Dropped at the tail of a full bottleneck queue.
    QueueFull,
    /// Lost on the link.
    Lost,
}

/// One direction's impairment with its state: the generator and the
/// bottleneck's clock. Feed it packets in arrival order.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    cfg: Impairment,
    rng: SplitMix64,
    /// When the bottleneck has serialised everything accepted so far (the
    /// GCRA's theoretical arrival time).
    busy_until: Duration,
    /// Latest delivery time handed out, to tell reordering.
    latest: Duration,
}

impl Link {
    /// A link impaired as `cfg`, its luck drawn from `seed`.
    pub(crate) fn new(cfg: Impairment, seed: u64) -> Self {
        Self {
            cfg,
            rng: SplitMix64::new(seed),
            busy_until: Duration::ZERO,
            latest: Duration::ZERO,
        }
    }

    /// The fate of a packet of `size` bytes arriving at `now` (from the
    /// proxy's start; never earlier than the packet before).
    pub(crate) fn offer(&mut self, now: Duration, size: usize) -> Fate {
        // Drawn first and always, so packet n's luck does not depend on
        // what happened to packets before it.
        let (lose, jitter, reorder) = (self.rng.unit(), self.rng.unit(), self.rng.unit());
        if self.cfg.blackholes.iter().any(|w| w.contains(now)) {
            return Fate::Blackholed;
        }
        let departs = match self.cfg.rate_bps {
            None => now,
            Some(rate) => {
                let bytes_per_s = rate as f64 / 8.0;
                let serialise = Duration::from_secs_f64(size as f64 / bytes_per_s);
                let credit = Duration::from_secs_f64(self.cfg.burst_bytes as f64 / bytes_per_s);
                let done = self.busy_until.max(now) + serialise;
                let departs = done.saturating_sub(credit).max(now);
                if departs - now > self.cfg.queue {
                    return Fate::QueueFull;
                }
                self.busy_until = done;
                departs
            }
        };
        if lose < self.cfg.loss {
            return Fate::Lost;
        }
        // Uniform in [delay - jitter, delay + jitter], never negative.
        let swing = self.cfg.jitter.as_secs_f64() * (2.0 * jitter - 1.0);
        let mut delay = (self.cfg.delay.as_secs_f64() + swing).max(0.0);
        if reorder < self.cfg.reorder {
            delay += self.cfg.reorder_delay.as_secs_f64();
        }
        let at = departs + Duration::from_secs_f64(delay);
        let overtakes = at < self.latest;
        self.latest = self.latest.max(at);
        Fate::Deliver { at, overtakes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// `n` packets of `size` bytes, one every `gap`, through `link`.
    fn run(link: &mut Link, n: u32, size: usize, gap: Duration) -> Vec<(Duration, Fate)> {
        (0..n)
            .map(|i| {
                let now = gap * i;
                (now, link.offer(now, size))
            })
            .collect()
    }

    fn lossy() -> Impairment {
        Impairment {
            delay: 25 * MS,
            jitter: 2 * MS,
            loss: 0.05,
            reorder: 0.01,
            rate_bps: Some(100_000_000),
            ..Impairment::default()
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_fates_and_another_seed_does_not() {
        let gap = Duration::from_micros(100);
        let a = run(&mut Link::new(lossy(), 7), 10_000, 1200, gap);
        let b = run(&mut Link::new(lossy(), 7), 10_000, 1200, gap);
        let c = run(&mut Link::new(lossy(), 8), 10_000, 1200, gap);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn loss_over_100k_packets_is_within_bounds_of_its_rate() {
        for loss in [0.005, 0.05, 0.3] {
            let cfg = Impairment {
                loss,
                ..Impairment::default()
            };
            let fates = run(&mut Link::new(cfg, 1), 100_000, 1200, MS);
            let lost = fates.iter().filter(|(_, f)| *f == Fate::Lost).count() as f64;
            let rate = lost / 100_000.0;
            // Five standard deviations of a binomial proportion.
            let bound = 5.0 * (loss * (1.0 - loss) / 100_000.0).sqrt();
            assert!((rate - loss).abs() < bound, "loss {loss}: measured {rate}");
        }
    }

    #[test]
    fn the_rate_cap_holds_delivered_bytes_at_the_cap_and_drops_at_the_tail() {
        // 10 Mbit/s offered at twice the cap for 10 s of virtual time.
        let rate = 10_000_000u64;
        let cfg = Impairment {
            rate_bps: Some(rate),
            queue: 20 * MS,
            ..Impairment::default()
        };
        let size = 1250; // 10,000 bits: 1 ms at the cap, offered every 0.5 ms
        let fates = run(
            &mut Link::new(cfg, 3),
            20_000,
            size,
            Duration::from_micros(500),
        );
        let delivered: Vec<Duration> = fates
            .iter()
            .filter_map(|(_, f)| match f {
                Fate::Deliver { at, .. } => Some(*at),
                _ => None,
            })
            .collect();
        let full = fates.iter().filter(|(_, f)| *f == Fate::QueueFull).count();
        assert!(full > 9_000, "only {full} tail drops at twice the cap");
        let last = *delivered.iter().max().unwrap();
        let bits = delivered.len() as f64 * size as f64 * 8.0;
        let measured = bits / last.as_secs_f64();
        let error = (measured / rate as f64 - 1.0).abs();
        assert!(
            error < 0.01,
            "delivered {measured} bit/s through a {rate} cap"
        );
        // No packet waited longer than the queue allows (plus its own
        // serialisation).
        for (now, fate) in &fates {
            if let Fate::Deliver { at, .. } = fate {
                assert!(*at - *now <= 21 * MS, "waited {:?}", *at - *now);
            }
        }
    }

    #[test]
    fn under_the_cap_nothing_waits_beyond_its_serialisation() {
        let cfg = Impairment {
            rate_bps: Some(100_000_000),
            delay: 10 * MS,
            ..Impairment::default()
        };
        // 1,250 bytes every millisecond: 10 Mbit/s through a 100 Mbit/s cap.
        for (now, fate) in run(&mut Link::new(cfg, 4), 5_000, 1250, MS) {
            let Fate::Deliver { at, overtakes } = fate else {
                panic!("dropped {fate:?} under the cap");
            };
            assert!(!overtakes);
            assert!(at - now <= 10 * MS + Duration::from_micros(100));
        }
    }

    #[test]
    fn a_blackhole_drops_exactly_its_window() {
        let window = Window {
            start: 1000 * MS,
            end: 3000 * MS,
        };
        let cfg = Impairment {
            blackholes: vec![window],
            delay: 5 * MS,
            ..Impairment::default()
        };
        for (now, fate) in run(&mut Link::new(cfg, 5), 5_000, 1200, MS) {
            if window.contains(now) {
                assert_eq!(fate, Fate::Blackholed, "at {now:?}");
            } else {
                assert_eq!(
                    fate,
                    Fate::Deliver {
                        at: now + 5 * MS,
                        overtakes: false
                    }
                );
            }
        }
    }

    #[test]
    fn jitter_and_explicit_reordering_let_packets_overtake() {
        // Packets 0.1 ms apart, jitter ±1 ms: many overtake.
        let cfg = Impairment {
            delay: 10 * MS,
            jitter: MS,
            ..Impairment::default()
        };
        let gap = Duration::from_micros(100);
        let fates = run(&mut Link::new(cfg, 6), 10_000, 1200, gap);
        let overtaking = |fates: &[(Duration, Fate)]| {
            fates
                .iter()
                .filter(|(_, f)| {
                    matches!(
                        f,
                        Fate::Deliver {
                            overtakes: true,
                            ..
                        }
                    )
                })
                .count()
        };
        assert!(overtaking(&fates) > 1_000);
        for (now, fate) in &fates {
            let Fate::Deliver { at, .. } = fate else {
                panic!("dropped")
            };
            assert!(*at >= *now + 9 * MS && *at <= *now + 11 * MS);
        }

        // No jitter, 2% held back 5 ms: each held packet is overtaken by
        // the ~50 behind it; about 2% of packets arrive out of order.
        let cfg = Impairment {
            delay: 10 * MS,
            reorder: 0.02,
            ..Impairment::default()
        };
        let fates = run(&mut Link::new(cfg, 6), 100_000, 1200, gap);
        let held = fates
            .iter()
            .filter(|(now, f)| matches!(f, Fate::Deliver { at, .. } if *at > *now + 10 * MS))
            .count() as f64;
        assert!((held / 100_000.0 - 0.02).abs() < 0.003, "held {held}");
        assert!(overtaking(&fates) > 0);
    }
}
