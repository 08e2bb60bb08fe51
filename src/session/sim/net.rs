//! The simulated network: ordered byte streams over a lossy, jittery path.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// Bytes per simulated packet.
const PACKET: usize = 1200;

/// Which stream.
pub(crate) type StreamId = usize;

/// How the simulated path behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Path {
    /// One-way delay.
    pub(crate) latency: Duration,
    /// Up to this much more, at random, per packet.
    pub(crate) jitter: Duration,
    /// Share of packets lost (and retransmitted after `rto`).
    pub(crate) loss: f64,
    /// How long a lost packet takes to be sent again.
    pub(crate) rto: Duration,
}

impl Path {
    /// A clean path with a little delay.
    pub(crate) fn clean() -> Self {
        Self {
            latency: Duration::from_millis(5),
            jitter: Duration::ZERO,
            loss: 0.0,
            rto: Duration::from_millis(200),
        }
    }

    /// A WAN-like path: 25 ms each way, jitter, 2% loss.
    pub(crate) fn lossy() -> Self {
        Self {
            latency: Duration::from_millis(25),
            jitter: Duration::from_millis(20),
            loss: 0.02,
            rto: Duration::from_millis(150),
        }
    }
}

/// One direction of one stream.
#[derive(Debug, Default)]
struct Stream {
    /// Packets in flight: when each becomes readable (in order), its bytes.
    in_flight: VecDeque<(Instant, Bytes)>,
    /// When the last packet sent becomes readable: nothing behind it can
    /// become readable earlier (in-order delivery).
    last_ready: Option<Instant>,
    /// When the sender's finish becomes visible to the reader.
    fin_at: Option<Instant>,
    /// Bytes written, for the tests' accounting.
    written: u64,
}

/// Every stream of a simulated connection, and the clock.
pub(crate) struct Net {
    path: Path,
    rng: SmallRng,
    streams: Vec<Stream>,
    /// The simulated time.
    pub(crate) now: Instant,
    /// Where the clock started.
    pub(crate) start: Instant,
}

impl Net {
    /// A network over `path`, its randomness from `seed`.
    pub(crate) fn new(path: Path, seed: u64) -> Self {
        let start = Instant::now();
        Self {
            path,
            rng: SmallRng::seed_from_u64(seed),
            streams: Vec::new(),
            now: start,
            start,
        }
    }

    /// A new stream.
    pub(crate) fn open(&mut self) -> StreamId {
        self.streams.push(Stream::default());
        self.streams.len() - 1
    }

    /// How long one packet sent now takes to arrive.
    fn flight(&mut self) -> Duration {
        let mut delay = self.path.latency;
        if !self.path.jitter.is_zero() {
            delay += self.path.jitter.mul_f64(self.rng.random_range(0.0..1.0));
        }
        while self.path.loss > 0.0 && self.rng.random_range(0.0..1.0) < self.path.loss {
            delay += self.path.rto;
        }
        delay
    }

    /// Sends `bytes` on `id` at `now`.
    pub(crate) fn send(&mut self, id: StreamId, now: Instant, bytes: &[u8]) {
        for packet in bytes.chunks(PACKET) {
            let arrives = now + self.flight();
            let stream = &mut self.streams[id];
            let ready = stream.last_ready.map_or(arrives, |last| last.max(arrives));
            stream.last_ready = Some(ready);
            stream
                .in_flight
                .push_back((ready, Bytes::copy_from_slice(packet)));
            stream.written += packet.len() as u64;
        }
    }

    /// Finishes `id` at `now`; returns when the sender learns the peer has
    /// everything (a round trip after the last byte lands).
    pub(crate) fn finish(&mut self, id: StreamId, now: Instant) -> Instant {
        let arrives = now + self.flight();
        let stream = &mut self.streams[id];
        let fin = stream.last_ready.map_or(arrives, |last| last.max(arrives));
        stream.fin_at = Some(fin);
        fin + self.path.latency
    }

    /// The bytes of `id` readable at `now`, removed from flight.
    pub(crate) fn take_ready(&mut self, id: StreamId, now: Instant) -> Vec<u8> {
        let stream = &mut self.streams[id];
        let mut out = Vec::new();
        while stream.in_flight.front().is_some_and(|(at, _)| *at <= now) {
            let (_, packet) = stream.in_flight.pop_front().expect("checked");
            out.extend_from_slice(&packet);
        }
        out
    }

    /// True when every byte of `id` is readable and its finish too.
    pub(crate) fn fin_ready(&self, id: StreamId, now: Instant) -> bool {
        let stream = &self.streams[id];
        stream.in_flight.is_empty() && stream.fin_at.is_some_and(|at| at <= now)
    }

    /// The next moment something on the network becomes readable.
    pub(crate) fn next_event(&self) -> Option<Instant> {
        self.streams
            .iter()
            .flat_map(|s| {
                s.in_flight
                    .front()
                    .map(|(at, _)| *at)
                    .into_iter()
                    .chain(s.fin_at)
            })
            .filter(|at| *at > self.now)
            .min()
    }

    /// Frame bytes written on `id` so far.
    pub(crate) fn written(&self, id: StreamId) -> u64 {
        self.streams[id].written
    }

    /// Time since the start of the simulation.
    pub(crate) fn elapsed(&self) -> Duration {
        self.now - self.start
    }
}
