//! [`Backoff`]: the one pause schedule of every retry loop (CAN calls, the
//! event subscription, live resubscription, the daemon's dialling, the load
//! test's own requests).
//!
//! Exponential, capped and jittered: each pause doubles up to a cap, and a
//! random share is added so that many clients failing together (a restarted
//! CAN, a peer back from an outage) do not retry in lockstep. Pure: it says
//! how long to wait, the caller sleeps.

use std::time::Duration;

/// An exponential, capped, jittered pause schedule.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The first pause, and where [`reset`](Self::reset) goes back to.
    first: Duration,
    /// No base pause is longer.
    cap: Duration,
    /// The base of the next pause, before jitter.
    next: Duration,
    /// The most jitter added, as a share of the base pause.
    jitter: f64,
}

impl Backoff {
    /// Pauses from `first`, doubling up to `cap`, each plus up to half again
    /// at random.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self {
            first,
            cap: cap.max(first),
            next: first,
            jitter: 0.5,
        }
    }

    /// The same schedule with at most `share` × the base pause of jitter
    /// (0 for none, as tests on a paused clock want).
    pub fn with_jitter(mut self, share: f64) -> Self {
        self.jitter = share.clamp(0.0, 1.0);
        self
    }

    /// The pause before the next attempt; the one after is twice as long (up
    /// to the cap).
    pub fn next_pause(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        if self.jitter == 0.0 {
            return base;
        }
        base + base.mul_f64(self.jitter * rand::random::<f64>())
    }

    /// Back to the first pause, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The largest pause this schedule can return.
    pub fn max_pause(&self) -> Duration {
        self.cap + self.cap.mul_f64(self.jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_reset() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(500)).with_jitter(0.0);
        let pauses: Vec<_> = (0..5).map(|_| backoff.next_pause()).collect();
        assert_eq!(pauses, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), ms(100));
        assert_eq!(backoff.max_pause(), ms(500));
    }

    #[test]
    fn jitter_stays_within_its_share() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(400));
        for base in [100, 200, 400, 400, 400] {
            let pause = backoff.next_pause();
            assert!(pause >= ms(base) && pause <= ms(base * 3 / 2), "{pause:?}");
        }
        assert_eq!(backoff.max_pause(), ms(600));
    }

    #[test]
    fn a_cap_below_the_first_pause_is_the_first_pause() {
        let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(
            backoff.with_jitter(0.0).next_pause(),
            Duration::from_secs(2)
        );
    }
}
