//! Why BBR is slower than CUBIC on loopback: one connection between two
//! loopback endpoints (no relay, no discovery, no store), one uni-stream of
//! `BYTES` (the stream window can-sync uses, 1 MiB), the sender's controller sampled every 20 ms.
//!
//! `cargo run --release --example congestion_probe -- VARIANT [MiB]`, VARIANT:
//! - `cubic`, `bbr`, `auto`: the controllers `--congestion` names;
//! - `bbr-nopace`: BBR's window, no pacing rate (the stack paces from the
//!   window as it does for CUBIC): isolates BBR's pacing;
//! - `bbr-bigwin`: BBR's pacing, its window floored at 32 MiB: isolates
//!   BBR's window.
//!
//! It prints the time, MB/s, and per sample the sender's RTT estimate, the
//! window, the pacing rate and bandwidth estimate, and the smallest RTT
//! sample (from an [`Auto`] wrapped around the controller).

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use can_sync::node::congestion::Auto;
use iroh::endpoint::{
    presets, Controller, ControllerFactory, ControllerMetrics, PathId, QuicTransportConfig, VarInt,
};
use iroh::{Endpoint, SecretKey};
use noq_proto::congestion::{Bbr3Config, CubicConfig};
use noq_proto::RttEstimator;

const ALPN: &[u8] = b"congestion-probe";

/// BBR with its pacing or its window taken out of the picture.
#[derive(Debug)]
struct Tweak {
    inner: Box<dyn Controller>,
    no_pacing: bool,
    window_floor: u64,
}

impl Controller for Tweak {
    fn on_sent(&mut self, now: Instant, bytes: u64, pn: u64) {
        self.inner.on_sent(now, bytes, pn)
    }
    fn on_packet_sent(&mut self, now: Instant, bytes: u16, pn: u64) {
        self.inner.on_packet_sent(now, bytes, pn)
    }
    fn on_cwnd_limited(&mut self) {
        self.inner.on_cwnd_limited()
    }
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        b: u64,
        pn: u64,
        al: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, b, pn, al, rtt)
    }
    fn on_end_acks(&mut self, now: Instant, in_flight: u64, al: bool, largest: Option<u64>) {
        self.inner.on_end_acks(now, in_flight, al, largest)
    }
    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        p: bool,
        e: bool,
        l: u64,
        pn: u64,
    ) {
        self.inner.on_congestion_event(now, sent, p, e, l, pn)
    }
    fn on_packet_lost(&mut self, l: u16, pn: u64, now: Instant) {
        self.inner.on_packet_lost(l, pn, now)
    }
    fn on_spurious_congestion_event(&mut self) {
        self.inner.on_spurious_congestion_event()
    }
    fn on_mtu_update(&mut self, mtu: u16) {
        self.inner.on_mtu_update(mtu)
    }
    fn on_ack_frequency_update(&mut self, t: u64, d: Duration) {
        self.inner.on_ack_frequency_update(t, d)
    }
    fn window(&self) -> u64 {
        self.inner.window().max(self.window_floor)
    }
    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.inner.metrics();
        m.congestion_window = self.window();
        if self.no_pacing {
            m.pacing_rate = None;
            m.send_quantum = None;
        }
        m
    }
    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            inner: self.inner.clone_box(),
            ..*self
        })
    }
    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds the variant, wrapped in an [`Auto`] whose two sides are the same
/// controller, so its smallest RTT sample can be read.
struct Factory(&'static str);

impl ControllerFactory for Factory {
    fn build(self: Arc<Self>, now: Instant, mtu: u16) -> Box<dyn Controller> {
        let one = || -> Box<dyn Controller> {
            let bbr = || Arc::new(Bbr3Config::default()).build(now, mtu);
            match self.0 {
                "cubic" => Arc::new(CubicConfig::default()).build(now, mtu),
                "bbr" => bbr(),
                "bbr-nopace" => Box::new(Tweak {
                    inner: bbr(),
                    no_pacing: true,
                    window_floor: 0,
                }),
                "bbr-bigwin" => Box::new(Tweak {
                    inner: bbr(),
                    no_pacing: false,
                    window_floor: 32 << 20,
                }),
                "auto" => {
                    Arc::new(can_sync::node::congestion::AutoConfig::default()).build(now, mtu)
                }
                other => panic!("unknown variant {other}"),
            }
        };
        Box::new(Auto::new(one(), one(), Duration::ZERO))
    }
}

fn config(variant: &'static str) -> QuicTransportConfig {
    QuicTransportConfig::builder()
        .congestion_controller_factory(Arc::new(Factory(variant)))
        .stream_receive_window(VarInt::from_u32(1 << 20))
        .receive_window(VarInt::from_u32(32 << 20))
        .send_window(32 << 20)
        .build()
}

async fn endpoint(variant: &'static str) -> Endpoint {
    Endpoint::builder(presets::Minimal)
        .secret_key(SecretKey::generate())
        .alpns(vec![ALPN.to_vec()])
        .transport_config(config(variant))
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .unwrap()
        .bind()
        .await
        .unwrap()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let variant: &'static str = args.next().unwrap_or_else(|| "bbr".into()).leak();
    let mib: usize = args.next().map_or(256, |s| s.parse().unwrap());
    let bytes = mib << 20;

    let server = endpoint(variant).await;
    let client = endpoint(variant).await;
    let addr = can_sync::node::endpoint::ticket(&server).endpoint_addr();
    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let mut recv = conn.accept_uni().await.unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        while let Some(n) = recv.read(&mut buf).await.unwrap() {
            got += n;
        }
        conn.close(0u32.into(), b"done");
        server.close().await;
        got
    });
    let conn = client.connect(addr, ALPN).await.unwrap();
    let sampler = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut lines = Vec::new();
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let Some(c) = conn.congestion_state(PathId::ZERO) else {
                    break;
                };
                let rtt = conn.rtt(PathId::ZERO).unwrap_or_default();
                let auto = c.into_any().downcast::<Auto>().unwrap();
                let m = auto.metrics();
                lines.push(format!(
                    "{:6.0} ms  srtt {:7.3} ms  min {:7.3} ms  cwnd {:9}  pacing {:>9}  bw {:>9}  sent {:6.1} MB",
                    start.elapsed().as_secs_f64() * 1e3,
                    rtt.as_secs_f64() * 1e3,
                    auto.min_rtt().unwrap_or_default().as_secs_f64() * 1e3,
                    m.congestion_window,
                    m.pacing_rate.map_or("-".into(), |r| format!("{:.1}MB/s", r as f64 / 1e6)),
                    m.bandwidth_estimate.map_or("-".into(), |b| format!("{:.1}MB/s", b as f64 / 8e6)),
                    conn.stats().udp_tx.bytes as f64 / 1e6,
                ));
                if conn.close_reason().is_some() {
                    break;
                }
            }
            lines
        })
    };
    let started = Instant::now();
    let mut send = conn.open_uni().await.unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..mib {
        send.write_all(&chunk).await.unwrap();
    }
    send.finish().unwrap();
    let got = receiver.await.unwrap();
    let took = started.elapsed();
    assert_eq!(got, bytes);
    let stats = conn.stats();
    conn.close(0u32.into(), b"done");
    let lines = sampler.await.unwrap();
    for l in lines.iter().step_by((lines.len() / 25).max(1)) {
        println!("{l}");
    }
    println!(
        "{variant}: {mib} MiB in {:.3} s, {:.0} MB/s; lost packets {}",
        took.as_secs_f64(),
        bytes as f64 / took.as_secs_f64() / 1e6,
        stats.lost_packets,
    );
    client.close().await;
}
