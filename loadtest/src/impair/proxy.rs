//! The IO edge of the impairment: a UDP proxy on 127.0.0.1 between one
//! client and one upstream address, one task per direction, each feeding its
//! [`Link`] and delivering what survives from a delay queue.
//!
//! The client sends to [`Proxy::addr`] (on 127.0.0.1); the proxy forwards
//! from a socket of its own (on the loopback address of the upstream's
//! family: 127.0.0.1 or ::1) to the upstream, and sends the upstream's answers back to the
//! client's latest source address (a new client process simply takes over).
//! So the upstream sees every packet come from the proxy, which QUIC
//! accepts like any NAT. Only loopback is ever spoken to: the sockets bind
//! loopback addresses, the upstream must be loopback, and packets from
//! anywhere else are ignored.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::link::{Fate, Impairment, Link};
use super::rng::SplitMix64;

/// Kernel buffer asked for on each socket, so bursts at the shaped rate are
/// not dropped by the kernel before the proxy reads them (Linux caps it at
/// `net.core.rmem_max`; drops the proxy did not decide would blur the loss
/// figure).
const SOCKET_BUFFER: usize = 4 << 20;
/// Largest UDP payload read in one go.
const MAX_DATAGRAM: usize = 65_535;

/// What one direction did, counted as it happens.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    packets: AtomicU64,
    bytes: AtomicU64,
    delivered: AtomicU64,
    delivered_bytes: AtomicU64,
    lost: AtomicU64,
    queue_full: AtomicU64,
    blackholed: AtomicU64,
    overtaking: AtomicU64,
    send_errors: AtomicU64,
    /// Woken after every packet read, for whoever waits on the counts.
    changed: tokio::sync::Notify,
}

/// A snapshot of a [`Tally`].
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Packets received from the sending side.
    pub(crate) packets: u64,
    /// Their bytes (UDP payload).
    pub(crate) bytes: u64,
    /// Packets sent on to the other side.
    pub(crate) delivered: u64,
    /// Their bytes.
    pub(crate) delivered_bytes: u64,
    /// Dropped by random loss.
    pub(crate) lost: u64,
    /// Dropped at the tail of the full bottleneck queue.
    pub(crate) queue_full: u64,
    /// Dropped inside a blackhole window.
    pub(crate) blackholed: u64,
    /// Delivered ahead of a packet received before them.
    pub(crate) overtaking: u64,
    /// Deliveries the kernel refused (the other side had gone).
    pub(crate) send_errors: u64,
}

impl Tally {
    fn snapshot(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            delivered: get(&self.delivered),
            delivered_bytes: get(&self.delivered_bytes),
            lost: get(&self.lost),
            queue_full: get(&self.queue_full),
            blackholed: get(&self.blackholed),
            overtaking: get(&self.overtaking),
            send_errors: get(&self.send_errors),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A running proxy; its tasks stop when it is dropped.
pub(crate) struct Proxy {
    addr: SocketAddr,
    started: Instant,
    /// Client → upstream, then upstream → client.
    tallies: [Arc<Tally>; 2],
    tasks: JoinSet<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (a loopback address): packets from the
    /// client are impaired as `up`, the answers as `down`, every draw from
    /// `seed`. Blackhole windows count from now.
    pub(crate) async fn start(
        upstream: SocketAddr,
        up: Impairment,
        down: Impairment,
        seed: u64,
    ) -> Result<Self> {
        ensure!(
            upstream.ip().is_loopback(),
            "the impairment proxy only forwards to loopback, not to {upstream}"
        );
        let front = Arc::new(loopback_socket(false)?);
        let back = Arc::new(loopback_socket(upstream.is_ipv6())?);
        let addr = front.local_addr()?;
        let started = Instant::now();
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let tallies = [Arc::new(Tally::default()), Arc::new(Tally::default())];
        let mut tasks = JoinSet::new();
        tasks.spawn(pump(Pump {
            from: front.clone(),
            to: back.clone(),
            route: Route::Upstream {
                upstream,
                client: client.clone(),
            },
            link: Link::new(up, SplitMix64::derive(seed, 1)),
            started,
            tally: tallies[0].clone(),
        }));
        tasks.spawn(pump(Pump {
            from: back,
            to: front,
            route: Route::Client { upstream, client },
            link: Link::new(down, SplitMix64::derive(seed, 2)),
            started,
            tally: tallies[1].clone(),
        }));
        Ok(Self {
            addr,
            started,
            tallies,
            tasks,
        })
    }

    /// Where clients send: the upstream's stand-in.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// When the proxy started: the origin of the blackhole windows.
    pub(crate) fn started(&self) -> std::time::Instant {
        self.started.into_std()
    }

    /// What the client → upstream direction did so far.
    pub(crate) fn up(&self) -> Counts {
        self.tallies[0].snapshot()
    }

    /// What the upstream → client direction did so far.
    pub(crate) fn down(&self) -> Counts {
        self.tallies[1].snapshot()
    }

    /// Waits until `done` holds of the (client → upstream, upstream →
    /// client) counts, checked after every packet; false after `timeout`.
    #[cfg(test)]
    pub(crate) async fn wait_for(
        &self,
        done: impl Fn(Counts, Counts) -> bool,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // Registered before the check, so no packet slips between.
            let up = self.tallies[0].changed.notified();
            let down = self.tallies[1].changed.notified();
            if done(self.up(), self.down()) {
                return true;
            }
            let either = async {
                tokio::select! {
                    () = up => {}
                    () = down => {}
                }
            };
            if tokio::time::timeout_at(deadline, either).await.is_err() {
                return false;
            }
        }
    }

    /// Stops forwarding.
    pub(crate) fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Where a direction's packets come from and go to.
enum Route {
    /// Client → upstream: remember who the client is.
    Upstream {
        upstream: SocketAddr,
        client: Arc<Mutex<Option<SocketAddr>>>,
    },
    /// Upstream → client: accept only the upstream's packets.
    Client {
        upstream: SocketAddr,
        client: Arc<Mutex<Option<SocketAddr>>>,
    },
}

impl Route {
    /// Whether a packet from `src` belongs to this direction.
    fn accept(&self, src: SocketAddr) -> bool {
        match self {
            Self::Upstream { client, .. } => {
                if !src.ip().is_loopback() {
                    return false;
                }
                *client.lock().expect("client address") = Some(src);
                true
            }
            Self::Client { upstream, .. } => src == *upstream,
        }
    }

    /// Where to deliver now.
    fn destination(&self) -> Option<SocketAddr> {
        match self {
            Self::Upstream { upstream, .. } => Some(*upstream),
            Self::Client { client, .. } => *client.lock().expect("client address"),
        }
    }
}

/// One direction: its sockets, route, impairment and counters.
struct Pump {
    from: Arc<UdpSocket>,
    to: Arc<UdpSocket>,
    route: Route,
    link: Link,
    started: Instant,
    tally: Arc<Tally>,
}

/// A packet waiting in the delay queue, ordered by delivery time, then by
/// arrival (so equal times keep their order).
type Queued = Reverse<(Duration, u64, Vec<u8>)>;

/// Reads packets, decides their fate, and delivers the survivors when due.
/// Runs until aborted; a read error ends the direction.
async fn pump(mut p: Pump) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut queue: BinaryHeap<Queued> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let due = queue.peek().map(|Reverse((at, _, _))| p.started + *at);
        tokio::select! {
            // Deliveries first: a busy sender must not starve the queue.
            biased;
            () = sleep_until_some(due) => {
                let now = p.started.elapsed();
                while queue.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
                    let Some(Reverse((_, _, packet))) = queue.pop() else { break };
                    deliver(&p, &packet).await;
                }
            }
            read = p.from.recv_from(&mut buf) => {
                let Ok((n, src)) = read else { return };
                if !p.route.accept(src) {
                    continue;
                }
                Tally::add(&p.tally.packets, 1);
                Tally::add(&p.tally.bytes, n as u64);
                match p.link.offer(p.started.elapsed(), n) {
                    Fate::Deliver { at, overtakes } => {
                        if overtakes {
                            Tally::add(&p.tally.overtaking, 1);
                        }
                        seq += 1;
                        queue.push(Reverse((at, seq, buf[..n].to_vec())));
                    }
                    Fate::Lost => Tally::add(&p.tally.lost, 1),
                    Fate::QueueFull => Tally::add(&p.tally.queue_full, 1),
                    Fate::Blackholed => Tally::add(&p.tally.blackholed, 1),
                }
                p.tally.changed.notify_waiters();
            }
        }
    }
}

/// Sends one packet on; a refusal (the other side is gone) is counted, not
/// fatal, since the side may come back (a new seed process).
async fn deliver(p: &Pump, packet: &[u8]) {
    let sent = match p.route.destination() {
        Some(dest) => p.to.send_to(packet, dest).await.is_ok(),
        None => false,
    };
    if sent {
        Tally::add(&p.tally.delivered, 1);
        Tally::add(&p.tally.delivered_bytes, packet.len() as u64);
    } else {
        Tally::add(&p.tally.send_errors, 1);
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A UDP socket on 127.0.0.1 (or ::1 for `v6`), a free port, with
/// [`SOCKET_BUFFER`] asked for.
fn loopback_socket(v6: bool) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};

    let (domain, addr) = if v6 {
        (Domain::IPV6, SocketAddr::from((Ipv6Addr::LOCALHOST, 0)))
    } else {
        (Domain::IPV4, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer still works, with more kernel drops.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding the proxy on {}", addr.ip()))?;
    Ok(UdpSocket::from_std(socket.into())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::impair::link::Window;

    const WAIT: Duration = Duration::from_secs(5);

    /// An echo server on loopback: answers every datagram with itself.
    async fn echo() -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, src)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], src).await;
            }
        });
        Ok((addr, task))
    }

    #[tokio::test]
    async fn packets_make_the_round_trip_through_the_proxy_with_its_delay() -> Result<()> {
        let (upstream, server) = echo().await?;
        let delay = Impairment {
            delay: Duration::from_millis(20),
            ..Impairment::default()
        };
        let proxy = Proxy::start(upstream, delay.clone(), delay, 1).await?;
        let client = UdpSocket::bind("127.0.0.1:0").await?;
        let mut buf = [0u8; 16];
        let sent = Instant::now();
        client.send_to(b"ping", proxy.addr()).await?;
        let (n, from) = tokio::time::timeout(WAIT, client.recv_from(&mut buf)).await??;
        assert_eq!((&buf[..n], from), (&b"ping"[..], proxy.addr()));
        assert!(sent.elapsed() >= Duration::from_millis(40));
        assert_eq!(proxy.up().delivered, 1);
        assert_eq!(proxy.down().delivered, 1);
        server.abort();
        Ok(())
    }

    #[tokio::test]
    async fn a_blackhole_swallows_what_arrives_inside_it() -> Result<()> {
        let (upstream, server) = echo().await?;
        let hole = Impairment {
            blackholes: vec![Window {
                start: Duration::ZERO,
                end: Duration::from_secs(3600),
            }],
            ..Impairment::default()
        };
        let proxy = Proxy::start(upstream, hole, Impairment::default(), 1).await?;
        let client = UdpSocket::bind("127.0.0.1:0").await?;
        for _ in 0..10 {
            client.send_to(b"lost", proxy.addr()).await?;
        }
        assert!(proxy.wait_for(|up, _| up.blackholed == 10, WAIT).await);
        assert_eq!(proxy.up().delivered, 0);
        server.abort();
        Ok(())
    }
}
