//! The default congestion controller: CUBIC or BBRv3, chosen per path by the
//! path's minimum round-trip time.
//!
//! Neither of the QUIC stack's controllers wins everywhere (PERFORMANCE.md,
//! "Defaults for real paths"). CUBIC reads every random loss as congestion and
//! holds a lossy 50 ms path to a few percent of its rate; BBRv3 does not, but
//! on loopback it moves half as much as CUBIC. Its pacing is the cause, not
//! its window: BBR sends no faster than the delivery rate it measured, and
//! on loopback that rate is set by how the two processes are scheduled, so
//! every scheduling hiccup lowers the estimate and with it the next pacing
//! rate (170–270 MB/s paced where CUBIC moved 250–400 MB/s); BBR's own window
//! without its pacing rate was as fast as CUBIC, its pacing with a 32 MiB window
//! was not (`examples/congestion_probe.rs`). noq-proto 1.4's `Bbr3Config` sets
//! only the initial window, so BBR cannot be tuned out of it from here.
//!
//! [`Auto`] runs both on the same events and lets the one that suits the path
//! drive: BBR once the path's minimum RTT is at least [`AutoConfig::bbr_min_rtt`]
//! (a WAN, where host delays are small against the path's), CUBIC below it (a
//! LAN or loopback, where the host delays dominate and losses are few). Both
//! see every packet sent, acknowledged and lost, so the one not followed keeps
//! an up-to-date model and a switch needs no warm-up. The minimum RTT only
//! falls, so a path switches at most once, from BBR to CUBIC; once a sample
//! under the threshold has settled a path on CUBIC, BBR, which can no longer
//! drive it, is no longer fed (its per-packet model costs CPU).
//!
//! BBR hears a packet loss only when the path's recent loss rate passes
//! BBRv3's own threshold ([`loss_gate`]): the stack's BBRv3 lets random
//! loss pull it down for good, which its draft does not. `--congestion bbr`
//! is the stack's BBRv3 as it is, every loss heard.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use noq_proto::congestion::{
    Bbr3Config, Controller, ControllerFactory, ControllerMetrics, CubicConfig,
};
use noq_proto::RttEstimator;

pub mod loss_gate;

use loss_gate::LossGate;

/// Builds an [`Auto`] controller per path.
#[derive(Debug, Clone)]
pub struct AutoConfig {
    cubic: Arc<CubicConfig>,
    bbr: Arc<Bbr3Config>,
    bbr_min_rtt: Duration,
}

impl AutoConfig {
    /// The path's minimum RTT from which BBR drives by default: above a few
    /// host scheduling delays (loopback's smoothed RTT under load reached
    /// 2 ms with BBR, PERFORMANCE.md), so that a host's own hiccups are small
    /// against the path's delay; well below any WAN path's (the load test's
    /// is 50 ms).
    pub const DEFAULT_BBR_MIN_RTT: Duration = Duration::from_millis(4);

    /// The minimum RTT from which BBR drives; CUBIC below it.
    pub fn bbr_min_rtt(&self) -> Duration {
        self.bbr_min_rtt
    }

    /// Sets the minimum RTT from which BBR drives.
    pub fn with_bbr_min_rtt(mut self, rtt: Duration) -> Self {
        self.bbr_min_rtt = rtt;
        self
    }
}

impl Default for AutoConfig {
    fn default() -> Self {
        Self {
            cubic: Arc::new(CubicConfig::default()),
            bbr: Arc::new(Bbr3Config::default()),
            bbr_min_rtt: Self::DEFAULT_BBR_MIN_RTT,
        }
    }
}

impl ControllerFactory for AutoConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Auto::new(
            self.cubic.clone().build(now, current_mtu),
            self.bbr.clone().build(now, current_mtu),
            self.bbr_min_rtt,
        ))
    }
}

/// Which inner controller drives a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Loss-based: a LAN or loopback, or no RTT sample yet.
    Cubic,
    /// Model-based: a path whose minimum RTT is long.
    Bbr,
}

/// The choice, apart from the controllers: the minimum RTT seen on the path
/// and the threshold it is held against.
#[derive(Debug, Clone, Copy)]
pub struct Chooser {
    min_rtt: Option<Duration>,
    bbr_min_rtt: Duration,
}

impl Chooser {
    /// No sample yet: CUBIC drives (both start from the same window, and
    /// CUBIC needs no rate estimate to pace the first flight).
    pub fn new(bbr_min_rtt: Duration) -> Self {
        Self {
            min_rtt: None,
            bbr_min_rtt,
        }
    }

    /// Takes one RTT sample: the time from a packet's sending to its ACK.
    pub fn on_rtt_sample(&mut self, rtt: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |min| min.min(rtt)));
    }

    /// The smallest sample so far.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// The controller that drives now.
    pub fn driver(&self) -> Driver {
        match self.min_rtt {
            Some(rtt) if rtt >= self.bbr_min_rtt => Driver::Bbr,
            _ => Driver::Cubic,
        }
    }
}

/// CUBIC and BBRv3 on the same events (but for the losses [`LossGate`]
/// keeps from BBR); the window and pacing of the one the [`Chooser`] picks.
#[derive(Debug)]
pub struct Auto {
    /// CUBIC at [`CUBIC`], BBR at [`BBR`].
    inner: [Box<dyn Controller>; 2],
    chooser: Chooser,
    gate: LossGate,
    /// Losses kept from BBR while it was fed.
    kept_from_bbr: u64,
    /// Whether BBR heard a loss of the batch being reported.
    batch_heard: bool,
    /// Whether BBR heard a loss of the last congestion event: only then is
    /// a spurious one its to undo (it keeps its undo state from the losses
    /// it heard, and would otherwise restore an older one).
    event_heard: bool,
}

const CUBIC: usize = 0;
const BBR: usize = 1;

impl Auto {
    /// Wraps two controllers (CUBIC and BBR in [`AutoConfig`]; any two in
    /// tests), following `bbr` once the minimum RTT reaches `bbr_min_rtt`.
    pub fn new(
        cubic: Box<dyn Controller>,
        bbr: Box<dyn Controller>,
        bbr_min_rtt: Duration,
    ) -> Self {
        Self {
            inner: [cubic, bbr],
            chooser: Chooser::new(bbr_min_rtt),
            gate: LossGate::default(),
            kept_from_bbr: 0,
            batch_heard: false,
            event_heard: false,
        }
    }

    /// Packet losses BBR did not hear, taken for random loss.
    pub fn losses_kept_from_bbr(&self) -> u64 {
        self.kept_from_bbr
    }

    /// The controller that drives now.
    pub fn driver(&self) -> Driver {
        self.chooser.driver()
    }

    /// The smallest RTT sample so far, ACK delay included.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.chooser.min_rtt()
    }

    fn driving(&self) -> &dyn Controller {
        match self.driver() {
            Driver::Cubic => &*self.inner[CUBIC],
            Driver::Bbr => &*self.inner[BBR],
        }
    }

    /// The controllers events go to: both, until a sample under the
    /// threshold settles the path on CUBIC for good (the minimum only
    /// falls); then CUBIC alone, since BBR's per-packet model costs CPU
    /// (15–25% of the rate on an in-memory loopback transfer) and would never
    /// drive again.
    fn both(&mut self) -> &mut [Box<dyn Controller>] {
        if self.chooser.min_rtt().is_some() && self.driver() == Driver::Cubic {
            &mut self.inner[..=CUBIC]
        } else {
            &mut self.inner[..]
        }
    }
}

impl Controller for Auto {
    fn on_sent(&mut self, now: Instant, bytes: u64, largest_pn: u64) {
        self.gate.on_sent(now, bytes);
        for c in self.both().iter_mut() {
            c.on_sent(now, bytes, largest_pn);
        }
    }

    fn on_packet_sent(&mut self, now: Instant, bytes: u16, pn: u64) {
        for c in self.both().iter_mut() {
            c.on_packet_sent(now, bytes, pn);
        }
    }

    fn on_cwnd_limited(&mut self) {
        for c in self.both().iter_mut() {
            c.on_cwnd_limited();
        }
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        pn: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        // Each acknowledged packet's own round trip, ACK delay included: the
        // smallest of them is the path's minimum, as the estimator keeps it.
        self.chooser
            .on_rtt_sample(now.saturating_duration_since(sent));
        self.gate.on_rtt(rtt.get());
        for c in self.both().iter_mut() {
            c.on_ack(now, sent, bytes, pn, app_limited, rtt);
        }
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        for c in self.both().iter_mut() {
            c.on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        }
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        is_ecn: bool,
        lost_bytes: u64,
        largest_lost_pn: u64,
    ) {
        // The stack reports a batch's lost packets, then its event.
        self.event_heard = std::mem::take(&mut self.batch_heard);
        for c in self.both().iter_mut() {
            c.on_congestion_event(
                now,
                sent,
                is_persistent_congestion,
                is_ecn,
                lost_bytes,
                largest_lost_pn,
            );
        }
    }

    fn on_packet_lost(&mut self, lost_bytes: u16, pn: u64, now: Instant) {
        let heard = self.gate.passes(now, u64::from(lost_bytes));
        self.batch_heard |= heard;
        let fed = self.both();
        let bbr_fed = fed.len() > BBR;
        let fed = if heard { fed } else { &mut fed[..=CUBIC] };
        for c in fed.iter_mut() {
            c.on_packet_lost(lost_bytes, pn, now);
        }
        self.kept_from_bbr += u64::from(bbr_fed && !heard);
    }

    fn on_spurious_congestion_event(&mut self) {
        let heard = std::mem::take(&mut self.event_heard);
        let fed = self.both();
        let fed = if heard { fed } else { &mut fed[..=CUBIC] };
        for c in fed.iter_mut() {
            c.on_spurious_congestion_event();
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        for c in self.both().iter_mut() {
            c.on_mtu_update(new_mtu);
        }
    }

    fn on_ack_frequency_update(
        &mut self,
        ack_eliciting_threshold: u64,
        requested_max_ack_delay: Duration,
    ) {
        for c in self.both().iter_mut() {
            c.on_ack_frequency_update(ack_eliciting_threshold, requested_max_ack_delay);
        }
    }

    fn window(&self) -> u64 {
        self.driving().window()
    }

    /// The driver's metrics whole: BBR's pacing rate and send quantum when it
    /// drives, none (the stack paces from the window) when CUBIC does.
    fn metrics(&self) -> ControllerMetrics {
        self.driving().metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            inner: [self.inner[CUBIC].clone_box(), self.inner[BBR].clone_box()],
            chooser: self.chooser,
            gate: self.gate.clone(),
            kept_from_bbr: self.kept_from_bbr,
            batch_heard: self.batch_heard,
            event_heard: self.event_heard,
        })
    }

    fn initial_window(&self) -> u64 {
        self.driving().initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1200;

    fn auto(bbr_min_rtt: Duration) -> Auto {
        let now = Instant::now();
        Auto::new(
            Arc::new(CubicConfig::default()).build(now, MTU),
            Arc::new(Bbr3Config::default()).build(now, MTU),
            bbr_min_rtt,
        )
    }

    #[test]
    fn cubic_drives_until_a_sample_and_below_the_threshold() {
        let mut chooser = Chooser::new(Duration::from_millis(4));
        assert_eq!(chooser.driver(), Driver::Cubic);
        chooser.on_rtt_sample(Duration::from_micros(80));
        assert_eq!(chooser.driver(), Driver::Cubic);
        // A later, longer sample does not lift the minimum.
        chooser.on_rtt_sample(Duration::from_millis(30));
        assert_eq!(chooser.min_rtt(), Some(Duration::from_micros(80)));
        assert_eq!(chooser.driver(), Driver::Cubic);
    }

    #[test]
    fn bbr_drives_a_long_path_until_a_short_sample() {
        let mut chooser = Chooser::new(Duration::from_millis(4));
        chooser.on_rtt_sample(Duration::from_millis(50));
        chooser.on_rtt_sample(Duration::from_millis(62));
        assert_eq!(chooser.driver(), Driver::Bbr);
        chooser.on_rtt_sample(Duration::from_millis(4));
        assert_eq!(chooser.driver(), Driver::Bbr, "the threshold is inclusive");
        chooser.on_rtt_sample(Duration::from_millis(1));
        assert_eq!(chooser.driver(), Driver::Cubic);
    }

    /// Both inner controllers see every event: after a loss, the window
    /// reported is the driver's, and switching driver reports the other's.
    #[test]
    fn forwards_events_to_both_and_answers_from_the_driver() {
        let start = Instant::now();
        let mut a = auto(Duration::from_millis(4));
        let initial = a.window();
        assert_eq!(a.driver(), Driver::Cubic);

        // Ten packets sent, then a loss of the first: CUBIC shrinks its
        // window at once (multiplicative decrease).
        for pn in 0..10 {
            a.on_packet_sent(start, MTU, pn);
        }
        a.on_sent(start, 10 * u64::from(MTU), 9);
        let later = start + Duration::from_millis(100);
        a.on_packet_lost(MTU, 0, later);
        a.on_congestion_event(later, start, false, false, u64::from(MTU), 0);
        assert!(a.window() < initial, "CUBIC's window after a loss");
        assert_eq!(a.window(), a.inner[CUBIC].window());
        assert_eq!(a.metrics().pacing_rate, None, "CUBIC paces from its window");

        // A path with a long minimum RTT hands the window and pacing to BBR,
        // which saw the same packets.
        a.chooser.on_rtt_sample(Duration::from_millis(50));
        assert_eq!(a.driver(), Driver::Bbr);
        assert_eq!(a.window(), a.inner[BBR].window());
        assert!(a.metrics().pacing_rate.is_some(), "BBR paces at its rate");
        assert_eq!(a.metrics().pacing_rate, a.inner[BBR].metrics().pacing_rate);
    }

    /// Counts the losses it hears, and the spurious events (by the
    /// thousand).
    #[derive(Debug, Clone, Default)]
    struct Hearing(Arc<std::sync::atomic::AtomicU64>);

    impl Controller for Hearing {
        fn on_packet_lost(&mut self, _: u16, _: u64, _: Instant) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn on_spurious_congestion_event(&mut self) {
            self.0.fetch_add(1000, std::sync::atomic::Ordering::Relaxed);
        }
        fn on_congestion_event(
            &mut self,
            _: Instant,
            _: Instant,
            _: bool,
            _: bool,
            _: u64,
            _: u64,
        ) {
        }
        fn on_mtu_update(&mut self, _: u16) {}
        fn window(&self) -> u64 {
            u64::from(MTU) * 10
        }
        fn clone_box(&self) -> Box<dyn Controller> {
            Box::new(self.clone())
        }
        fn initial_window(&self) -> u64 {
            self.window()
        }
        fn into_any(self: Box<Self>) -> Box<dyn Any> {
            self
        }
    }

    /// On a long path with 0.5% random loss BBR hears none of it, CUBIC
    /// all of it; a burst past 2% reaches BBR too.
    #[test]
    fn bbr_hears_loss_only_past_the_gate() {
        let start = Instant::now();
        let (cubic, bbr) = (Hearing::default(), Hearing::default());
        let mut a = Auto::new(
            Box::new(cubic.clone()),
            Box::new(bbr.clone()),
            Duration::from_millis(4),
        );
        // What an ACK's sample would tell both (the stack's RttEstimator
        // cannot be made outside it).
        let rtt = Duration::from_millis(50);
        a.chooser.on_rtt_sample(rtt);
        a.gate.on_rtt(rtt);
        let mut pn = 0;
        for round in 0..20u32 {
            let at = start + rtt * round;
            for i in 0..400u32 {
                a.on_sent(at + rtt * i / 400, u64::from(MTU), pn);
                pn += 1;
            }
            let found = at + rtt * 99 / 100;
            a.on_packet_lost(MTU, pn - 10, found);
            a.on_packet_lost(MTU, pn - 20, found);
            a.on_congestion_event(found, at, false, false, 2 * u64::from(MTU), pn - 10);
        }
        assert_eq!(a.driver(), Driver::Bbr);
        let heard = |c: &Hearing| c.0.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((heard(&cubic), heard(&bbr)), (40, 0));
        assert_eq!(a.losses_kept_from_bbr(), 40);
        // Those losses were reordering after all: BBR, which never heard
        // them, has nothing to undo.
        a.on_spurious_congestion_event();
        assert_eq!((heard(&cubic), heard(&bbr)), (1040, 0));
        // A queue overflows: 30 of the last round's packets lost at once.
        // With 400 sent and 2 lost in the last two rounds, the sixth of
        // them makes 2%: it and the 24 after it reach BBR.
        let found = start + rtt * 20;
        for lost in 0..30 {
            a.on_packet_lost(MTU, pn - 100 + lost, found);
        }
        a.on_congestion_event(
            found,
            found - rtt,
            false,
            false,
            30 * u64::from(MTU),
            pn - 71,
        );
        assert_eq!((heard(&cubic), heard(&bbr)), (1070, 25));
        a.on_spurious_congestion_event();
        assert_eq!(heard(&bbr), 1025, "BBR heard that event: its undo");
    }

    /// Settled on CUBIC by a short sample, the path stops feeding BBR.
    #[test]
    fn a_short_path_stops_feeding_bbr() {
        let start = Instant::now();
        let mut a = auto(Duration::from_millis(4));
        a.chooser.on_rtt_sample(Duration::from_micros(100));
        let bbr_window = a.inner[BBR].window();
        for pn in 0..10 {
            a.on_packet_sent(start, MTU, pn);
        }
        let later = start + Duration::from_millis(1);
        a.on_packet_lost(MTU, 0, later);
        a.on_congestion_event(later, start, true, false, u64::from(MTU), 0);
        assert!(a.window() < a.initial_window(), "CUBIC took the loss");
        assert_eq!(a.inner[BBR].window(), bbr_window, "BBR was not fed");
    }

    #[test]
    fn a_clone_keeps_the_choice_and_both_states() {
        let mut a = auto(Duration::from_millis(4));
        a.chooser.on_rtt_sample(Duration::from_millis(50));
        a.on_mtu_update(1400);
        let b = a.clone_box();
        let b = b.into_any().downcast::<Auto>().expect("an Auto");
        assert_eq!(b.driver(), Driver::Bbr);
        assert_eq!(b.window(), a.window());
        assert_eq!(b.inner[CUBIC].window(), a.inner[CUBIC].window());
    }

    #[test]
    fn the_factory_builds_a_cubic_driven_controller() {
        let config = Arc::new(AutoConfig::default().with_bbr_min_rtt(Duration::from_millis(2)));
        assert_eq!(config.bbr_min_rtt(), Duration::from_millis(2));
        let c = config.build(Instant::now(), MTU);
        let c = c.into_any().downcast::<Auto>().expect("an Auto");
        assert_eq!(c.driver(), Driver::Cubic);
        assert_eq!(c.window(), c.inner[CUBIC].initial_window());
    }

    /// On loopback the default controller ends up driven by CUBIC: every
    /// round trip there is far under the threshold.
    #[tokio::test]
    async fn loopback_is_driven_by_cubic() {
        use super::super::endpoint::{open_for_data, ConnectedPair};
        use crate::session::ALPN_V2;
        use iroh::endpoint::PathId;

        let test = async {
            let pair = ConnectedPair::new(ALPN_V2).await;
            open_for_data(&pair.accepted, 1);
            let mut data = pair.dialed.open_uni().await.expect("a data stream");
            data.write_all(&[1; 100_000]).await.expect("written");
            data.finish().expect("finished");
            let mut accepted = pair.accepted.accept_uni().await.expect("accepted");
            let got = accepted.read_to_end(1 << 20).await.expect("read");
            assert_eq!(got.len(), 100_000);
            // The sender's controller, after its data was acknowledged.
            data.stopped().await.expect("acknowledged");
            let state = pair.dialed.congestion_state(PathId::ZERO).expect("a path");
            let auto = state
                .into_any()
                .downcast::<Auto>()
                .expect("the default is Auto");
            let min_rtt = auto.min_rtt().expect("RTT samples");
            assert!(
                min_rtt < AutoConfig::DEFAULT_BBR_MIN_RTT,
                "loopback RTT {min_rtt:?}"
            );
            assert_eq!(auto.driver(), Driver::Cubic);
        };
        tokio::time::timeout(Duration::from_secs(30), test)
            .await
            .expect("no hang");
    }
}
