//! The iroh endpoint of a node: bound where asked, tuned for bulk transfer, and
//! guarded by its [`Access`] before any stream is read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::{presets, Connection, ControllerFactory, QuicTransportConfig, VarInt};
use iroh::{Endpoint, SecretKey};

use super::access::{Access, Gate};
use super::ticket::Ticket;
use crate::session::{ALPN_V1, ALPN_V2};
use crate::stream::COALESCE_MIN;

/// How a node's endpoint is set up.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// The node's identity.
    pub secret_key: SecretKey,
    /// Where to bind the UDP socket; `None`: every interface, a free port.
    pub listen: Option<SocketAddr>,
    /// Use n0's relays and discovery. Off (`--no-relay`) for loopback, LAN and
    /// every test: then only direct addresses from tickets are dialled.
    pub relay: bool,
    /// Who may connect, and with which right ([`Access::closed`]: nobody,
    /// the endpoint only dials).
    pub access: Arc<Access>,
    /// The congestion controller of its connections.
    pub congestion: Congestion,
}

/// The congestion controller of every connection of an endpoint,
/// measured through the load test's impairment proxy and on loopback
/// (PERFORMANCE.md, "WAN and outages" and "Defaults for real paths"): neither
/// of the stack's controllers wins everywhere, so the default chooses per path
/// and `--congestion` can pin one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Congestion {
    /// The default: CUBIC on a path whose minimum RTT is under 4 ms (LAN,
    /// loopback), BBRv3 on a longer one, both fed every event but the
    /// losses BBR is spared while the path loses under 2%
    /// ([`super::congestion::Auto`], [`super::congestion::loss_gate`]).
    /// Through 50 ms and 0.5% loss it used 85–88% of a 100 Mbit/s path in
    /// fourteen runs (bbr 44–86% in the same rounds, cubic 4% before); on
    /// loopback 256 MiB took 0.95–1.17 s against cubic's 0.83–1.30 s (bbr
    /// 1.8–2.5 s).
    #[default]
    Auto,
    /// CUBIC (RFC 9438), the QUIC stack's default: loss-based. On loopback
    /// it moved 256 MiB in 0.7–1.1 s where BBR took 1.8–2.0 s; at 0.5%
    /// random loss and 50 ms RTT it held a 100 Mbit/s path to 4% of its
    /// rate, since it reads every loss as congestion.
    Cubic,
    /// The QUIC stack's BBRv3 as it is, every loss heard: paces at the
    /// bottleneck rate it measures and mostly does not read random loss as
    /// congestion: 79–86% of that lossy 100 Mbit/s path, but now and then
    /// (1 run in 14, 3 in 21) at half of it or less (`auto` spares it that
    /// loss), for a
    /// longer tail of live latency (p99 0.4–1.1 s against cubic's 0.16 s)
    /// and half cubic's rate on loopback, where it paces at a delivery rate
    /// that the hosts' scheduling sets, not the path.
    Bbr,
}

impl Congestion {
    /// The name `--congestion` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cubic => "cubic",
            Self::Bbr => "bbr",
        }
    }
}

impl std::fmt::Display for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Congestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cubic" => Ok(Self::Cubic),
            "bbr" => Ok(Self::Bbr),
            other => Err(format!(
                "unknown congestion controller {other:?}: auto, cubic or bbr"
            )),
        }
    }
}

/// Why the endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The listen address was refused.
    #[error("invalid listen address: {0}")]
    Address(String),
    /// Binding the socket failed (port in use, no such interface).
    #[error("binding the endpoint: {0}")]
    Bind(String),
}

/// Per-stream receive window.
///
/// Bounded by noq's reassembly buffer (see [`crate::engine`]): while a reader lags, the
/// stack keeps each packet's piece of a stream as its own buffer, merges only
/// the poorly filled ones, and fails the whole connection ("too many gaps in
/// stream buffer") once more than [`ASSEMBLER_MAX_PIECES`] remain: even with
/// no loss and no gap. Our writers send in writes of at least
/// [`COALESCE_MIN`] bytes (or a flush after the queue ran dry), so a full
/// window holds at most one piece per packet plus one partial packet per
/// write; the assertion below keeps that under the limit at the smallest
/// packet QUIC allows. Throughput comes from several streams sharing the
/// larger connection window instead.
pub const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;

/// The pieces noq-proto 1.4 keeps per stream before it fails the connection
/// (`MAX_CHUNKS` in its assembler; quinn fixed the same trap in quinn-proto
/// 0.11.18, issue 2809).
pub const ASSEMBLER_MAX_PIECES: usize = 1024;

/// Stream bytes a full packet carries at the least: QUIC's minimum datagram
/// of 1,200 bytes less headers, AEAD tag and the STREAM frame's own header.
const MIN_FULL_PACKET_DATA: usize = 1_100;

const _: () = assert!(
    STREAM_RECEIVE_WINDOW as usize / MIN_FULL_PACKET_DATA
        + STREAM_RECEIVE_WINDOW as usize / COALESCE_MIN
        < ASSEMBLER_MAX_PIECES,
    "a full stream window could exceed the receiver's reassembly pieces"
);

/// Connection-level receive window until a session asks for data: the
/// control stream's own window. Limits are per phase ([`crate::wire`]), at the
/// transport too: a peer that has not been asked for data cannot park more
/// than this in streams nobody reads (it was 32 MiB over 256 uni-streams:
/// five such peers took a daemon to 395 MiB, `tests/hostile.rs`).
pub const HANDSHAKE_RECEIVE_WINDOW: u32 = STREAM_RECEIVE_WINDOW;

/// Opens `conn` to the peer's data streams once a session receives on
/// `streams` of them: as many uni-streams (none before), and a connection
/// window of their stream windows plus the control stream's, which is all
/// they can use.
pub fn open_for_data(conn: &Connection, streams: u32) {
    let window = u64::from(streams.saturating_add(1)) * u64::from(STREAM_RECEIVE_WINDOW);
    conn.set_max_concurrent_uni_streams(VarInt::from_u32(streams));
    conn.set_receive_window(VarInt::from_u64(window).unwrap_or(VarInt::MAX));
}

/// QUIC settings for bulk transfer: iroh's defaults suit many small
/// connections; these give one connection room to fill a fast path once a
/// session asks for data ([`open_for_data`]), and none before, with
/// `congestion` as its controller.
pub fn transport_config(congestion: Congestion) -> QuicTransportConfig {
    let controller: Arc<dyn ControllerFactory + Send + Sync> = match congestion {
        Congestion::Auto => Arc::new(super::congestion::AutoConfig::default()),
        Congestion::Cubic => Arc::new(noq_proto::congestion::CubicConfig::default()),
        Congestion::Bbr => Arc::new(noq_proto::congestion::Bbr3Config::default()),
    };
    QuicTransportConfig::builder()
        .congestion_controller_factory(controller)
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(HANDSHAKE_RECEIVE_WINDOW))
        .send_window(32 * 1024 * 1024)
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(Duration::from_secs(2))
        .max_idle_timeout(Some(
            Duration::from_secs(10)
                .try_into()
                .expect("10 s is a valid idle timeout"),
        ))
        .build()
}

/// Binds a node's endpoint, accepting every protocol version this build speaks.
pub async fn bind(options: &EndpointOptions) -> Result<Endpoint, EndpointError> {
    let mut builder = if options.relay {
        Endpoint::builder(presets::N0)
    } else {
        Endpoint::builder(presets::Minimal)
    };
    builder = builder
        .secret_key(options.secret_key.clone())
        .alpns(vec![ALPN_V2.to_vec(), ALPN_V1.to_vec()])
        .transport_config(transport_config(options.congestion));
    if let Some(listen) = options.listen {
        builder = builder
            .clear_ip_transports()
            .bind_addr(listen)
            .map_err(|err| EndpointError::Address(err.to_string()))?;
    }
    builder = builder.hooks(Gate(options.access.clone()));
    builder
        .bind()
        .await
        .map_err(|err| EndpointError::Bind(err.to_string()))
}

/// This endpoint's ticket: its id and the addresses it is bound to (for an
/// unspecified bind address, the interface addresses iroh found).
pub fn ticket(endpoint: &Endpoint) -> Ticket {
    let bound: Vec<SocketAddr> = endpoint
        .bound_sockets()
        .into_iter()
        .filter(|a| !a.ip().is_unspecified())
        .collect();
    let addrs = if bound.is_empty() {
        endpoint.addr().ip_addrs().copied().collect()
    } else {
        bound
    };
    Ticket {
        id: endpoint.id(),
        addrs,
        capability: None,
    }
}

/// Two loopback endpoints (no relay, no discovery) and one connection
/// between them, for tests of what happens on a connection.
#[cfg(test)]
pub(crate) struct ConnectedPair {
    /// The accepting side's connection.
    pub(crate) accepted: Connection,
    /// The dialing side's connection.
    pub(crate) dialed: Connection,
    /// Kept: an endpoint dropped closes its connections.
    _endpoints: (Endpoint, Endpoint),
}

#[cfg(test)]
impl ConnectedPair {
    /// Connects two fresh loopback endpoints with `alpn`.
    pub(crate) async fn new(alpn: &'static [u8]) -> Self {
        use super::access::Right;
        let loopback = || EndpointOptions {
            secret_key: SecretKey::generate(),
            listen: Some("127.0.0.1:0".parse().expect("an address")),
            relay: false,
            access: Arc::new(Access::open(Right::Write)),
            congestion: Default::default(),
        };
        let server = bind(&loopback()).await.expect("a loopback endpoint");
        let client = bind(&loopback()).await.expect("a loopback endpoint");
        let addr = ticket(&server).endpoint_addr();
        let dialer = client.clone();
        let dialing = tokio::spawn(async move { dialer.connect(addr, alpn).await });
        let accepted = server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("conn");
        let dialed = dialing.await.expect("joined").expect("dialed");
        Self {
            accepted,
            dialed,
            _endpoints: (server, client),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--congestion` takes every controller by the name it prints, and
    /// the default is the per-path choice.
    #[test]
    fn congestion_names_round_trip() {
        assert_eq!(Congestion::default(), Congestion::Auto);
        for c in [Congestion::Auto, Congestion::Cubic, Congestion::Bbr] {
            assert_eq!(c.to_string().parse::<Congestion>(), Ok(c));
        }
        assert!("reno".parse::<Congestion>().is_err());
    }

    /// Before a session asks for data the peer cannot open a data stream
    /// (so it cannot park bytes in one); once asked, it can.
    #[tokio::test]
    async fn data_streams_open_only_when_asked_for() {
        let test = async {
            let pair = ConnectedPair::new(ALPN_V2).await;
            let (conn, dialed) = (&pair.accepted, &pair.dialed);

            let early = tokio::time::timeout(Duration::from_millis(300), dialed.open_uni()).await;
            assert!(
                early.is_err(),
                "a data stream opened before it was asked for"
            );
            open_for_data(conn, 2);
            let mut data = dialed
                .open_uni()
                .await
                .expect("a data stream once asked for");
            data.write_all(&[1; 1000]).await.expect("written");
            let mut accepted = conn.accept_uni().await.expect("accepted");
            let mut got = [0; 1000];
            accepted.read_exact(&mut got).await.expect("read");
        };
        tokio::time::timeout(Duration::from_secs(30), test)
            .await
            .expect("no hang");
    }
}
