//! `can-sync daemon`: the sync agent, wired from its flags.
//!
//! It opens the store, binds the endpoint with the node's persistent key,
//! serves `--http` ([`status`](can_sync::node::status), and the CAN API when
//! the store is embedded), prints `ticket <TICKET>` as its first stdout line
//! (and writes it to the data folder for `can-sync ticket`), then hands the
//! peers to a [`Supervisor`] until SIGINT or SIGTERM, when it stops
//! gracefully: sessions, live offers and HTTP requests under way finish
//! within `--shutdown-grace` ([`SHUTDOWN_GRACE`] by default). It exits 0
//! only when nothing was cut short; otherwise it names what was and exits
//! non-zero.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use can_sync::can::server::{self, ServerConfig};
use can_sync::node::access::GrantBook;
use can_sync::node::supervisor::{DialConfig, Supervisor};
use can_sync::node::{
    self, keys, Access, ConnectionLimits, EndpointOptions, LiveConfig, Node, Protocol, Right,
    Ticket,
};
use clap::Args;
use tracing::{info, warn};

use super::args::{EngineArgs, NetArgs, StoreArgs};
use super::signal::shutdown_signal;
use super::ticket::TICKET_FILE;

#[derive(Args)]
pub(crate) struct DaemonArgs {
    /// Settings in TOML: any of these flags without dashes (`peer = [..]`,
    /// `no-relay = true`); flags on the command line win over the file.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    /// Folder of the node's key, ticket and (by default) its embedded store.
    #[arg(long)]
    data_dir: PathBuf,
    /// UDP address of the iroh endpoint.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve a page to look at (/), /status, /metrics and, with an embedded
    /// store, the CAN API on this address.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Bearer token the CAN API's write routes require on --http
    /// (`Authorization: Bearer <token>`); needed when --http is not a
    /// loopback address.
    #[arg(long)]
    http_token: Option<String>,
    /// A host name (or IP address), without port, that requests to --http
    /// may be addressed to besides loopback names; repeatable (an array in
    /// --config). Others are answered 421, so a web page cannot reach the
    /// API by DNS rebinding. An --http beyond loopback needs the name or
    /// address its clients (and Prometheus) use in their URL.
    #[arg(long = "allowed-host", value_name = "NAME", value_parser = server::parse_allowed_host)]
    allowed_hosts: Vec<String>,
    /// A peer to dial (its ticket); repeatable.
    #[arg(long = "peer")]
    peers: Vec<Ticket>,
    /// Endpoint id allowed to connect and write (push assets and
    /// metadata); repeatable. Access is closed by default: besides these,
    /// only the --peer tickets' endpoints and --allow-read ids connect.
    #[arg(long = "allow", value_name = "ID")]
    allow: Vec<iroh::EndpointId>,
    /// Endpoint id allowed to connect and read only (pull what this node
    /// has; nothing it sends is taken); repeatable.
    #[arg(long = "allow-read", value_name = "ID")]
    allow_read: Vec<iroh::EndpointId>,
    /// Admit anyone who learns the ticket, with this right (read or write):
    /// for public mirrors and test rigs. Logged at start.
    #[arg(long, value_name = "RIGHT")]
    open: Option<Right>,
    /// Incoming connections served at once; one more is refused.
    #[arg(long, default_value_t = ConnectionLimits::default().max_connections)]
    max_connections: usize,
    /// Incoming connections served at once from one peer; one more is
    /// closed as busy.
    #[arg(long, default_value_t = ConnectionLimits::default().per_peer)]
    max_per_peer: usize,
    /// Incoming handshakes in progress at once; one more is refused. A
    /// handshake proves who dials only once it completes, so these are
    /// counted apart from the connections of admitted peers.
    #[arg(long, default_value_t = ConnectionLimits::default().max_handshakes)]
    max_handshakes: usize,
    /// Incoming handshakes in progress at once from one source address, so
    /// one stalling stranger cannot hold them all.
    #[arg(long, default_value_t = ConnectionLimits::default().max_handshakes_per_source)]
    max_handshakes_per_source: usize,
    /// Seconds between sessions with each dialled v1 peer (v2 peers are
    /// followed live on one connection).
    #[arg(long, default_value_t = 30)]
    resync_secs: u64,
    /// Seconds between the live link's checks for changes it may have missed.
    #[arg(long, default_value_t = LiveConfig::default().check_interval.as_secs())]
    live_check_secs: u64,
    /// Milliseconds local changes gather into one live offer.
    #[arg(long, default_value_t = LiveConfig::default().linger.as_millis() as u64)]
    live_linger_ms: u64,
    /// Most assets in one live offer.
    #[arg(long, default_value_t = LiveConfig::default().max_batch)]
    live_batch: usize,
    /// Live offers in flight per peer, each way.
    #[arg(long, default_value_t = LiveConfig::default().offers_in_flight)]
    live_offers: usize,
    /// Most changes each live link remembers on their way to its peer, and
    /// most assets it remembers the peer holds; past it the link reads the
    /// store's change log as it catches up.
    #[arg(long, default_value_t = LiveConfig::default().backlog)]
    live_backlog: usize,
    /// Seconds a stopping daemon (SIGINT, SIGTERM) waits for its sessions,
    /// live offers and HTTP requests in flight to finish. What is still
    /// under way then is cut short, named, and the exit code is non-zero.
    #[arg(long, value_name = "SECS", default_value_t = SHUTDOWN_GRACE.as_secs())]
    shutdown_grace: u64,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Who may connect: the --peer tickets' endpoints and --allow
/// ids write, --allow-read ids read, everyone else only with --open.
fn access_of(args: &DaemonArgs) -> Access {
    let mut access = match args.open {
        Some(right) => {
            warn!(
                %right,
                "access is open: anyone who learns this node's ticket may connect and {right}"
            );
            Access::open(right)
        }
        None => Access::closed(),
    };
    access = access
        .allow_all(args.peers.iter().map(|ticket| ticket.id), Right::Write)
        .allow_all(args.allow.iter().copied(), Right::Write)
        .allow_all(args.allow_read.iter().copied(), Right::Read);
    if access.admits_nobody() {
        info!(
            "access is closed: no peer may connect until allowed (--allow ID, --allow-read ID, \
             a ticket from `can-sync ticket --grant`, or --open read|write)"
        );
    }
    access
}

/// How long a stopping daemon waits, by default, for in-flight pushes and
/// offers.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

pub(crate) async fn run(args: DaemonArgs) -> Result<()> {
    let protocol = args.net.protocol();
    let secret_key = keys::load_or_create(&args.data_dir)?;
    let (can, embedded) = args
        .store
        .open(Some(&super::args::node_store(&args.data_dir)))?;
    let access = Arc::new(access_of(&args).with_grants(GrantBook::at(&args.data_dir)));
    let endpoint = node::bind(&EndpointOptions {
        secret_key,
        listen: args.listen,
        relay: !args.net.no_relay,
        access: access.clone(),
        congestion: args.net.congestion,
    })
    .await?;
    let mut node = Node::new(endpoint, can.clone())
        .with_access(access)
        .with_engine_config(args.engine.config())
        .with_connection_limits(ConnectionLimits {
            max_connections: args.max_connections.max(1),
            per_peer: args.max_per_peer.max(1),
            max_handshakes: args.max_handshakes.max(1),
            max_handshakes_per_source: args.max_handshakes_per_source.max(1),
        });
    // Live sync is a v2 feature; `--protocol 1` keeps the baseline pure.
    if protocol == Protocol::V2 {
        node = node.with_live(LiveConfig {
            check_interval: Duration::from_secs(args.live_check_secs.max(1)),
            linger: Duration::from_millis(args.live_linger_ms),
            max_batch: args.live_batch.max(1),
            offers_in_flight: args.live_offers.max(1),
            backlog: args.live_backlog.max(1),
            peer_view_limit: args.live_backlog.max(1),
        });
    }
    // Everything a caller may use once the ticket is printed is up first:
    // the signal handlers and the --http port.
    let stop = shutdown_signal();
    let ticket = node.ticket();
    let http = match args.http {
        Some(addr) => {
            // For the page's chart; ends with the node.
            node.sample_throughput();
            let served = embedded.then(|| can.clone());
            super::args::check_exposure(
                addr,
                served.is_some(),
                args.http_token.as_deref(),
                "--http-token",
            )
            .context("--http")?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --http {addr}"))?;
            // For `can-sync status --data-dir`.
            std::fs::write(
                args.data_dir.join(super::status::HTTP_FILE),
                listener.local_addr()?.to_string(),
            )?;
            let config = ServerConfig {
                write_token: args.http_token.clone(),
                allowed_hosts: args.allowed_hosts.clone(),
                ..ServerConfig::default()
            };
            let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
            let serving = tokio::spawn(server::serve_with(
                listener,
                served,
                config,
                node::status::router(
                    &node,
                    args.store
                        .embedded_dir(Some(&super::args::node_store(&args.data_dir))),
                ),
                async move {
                    let _ = stopped.await;
                },
            ));
            Some((stop_http, serving))
        }
        None => None,
    };
    std::fs::write(args.data_dir.join(TICKET_FILE), ticket.to_string())?;
    println!("ticket {ticket}");
    std::io::stdout().flush()?;

    let mut supervisor = Supervisor::new(
        node.clone(),
        DialConfig {
            protocol,
            resync: Duration::from_secs(args.resync_secs),
            ..DialConfig::default()
        },
    );
    for peer in args.peers {
        supervisor.dial(peer);
    }
    supervisor.accept();
    stop.await;
    let grace = Duration::from_secs(args.shutdown_grace);
    info!(?grace, "shutting down: finishing what is in flight");
    // The peers' work and the HTTP requests wind down together, within one
    // grace period.
    let http = async {
        let (stop_http, serving) = http?;
        // Ends event streams, lets requests in flight finish.
        let _ = stop_http.send(());
        match tokio::time::timeout(grace, serving).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(err))) => {
                warn!(error = %err, "http server failed");
                None
            }
            Ok(Err(err)) => {
                warn!(error = %err, "http server task failed");
                None
            }
            Err(_) => Some("requests to the HTTP API".to_string()),
        }
    };
    let (peers_cut, http_cut) = tokio::join!(supervisor.shutdown(grace), http);
    let cut: Vec<String> = peers_cut
        .cut
        .iter()
        .map(ToString::to_string)
        .chain(http_cut)
        .collect();
    node.endpoint().close().await;
    if !cut.is_empty() {
        anyhow::bail!(
            "stopped, but the {} s grace period ran out before {} finished: {}",
            grace.as_secs(),
            if cut.len() == 1 { "this" } else { "these" },
            cut.join("; ")
        );
    }
    info!("stopped with nothing cut short");
    Ok(())
}
