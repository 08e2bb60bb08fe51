//! The `can-sync` command line (DESIGN §7). Only argument handling and output
//! live here; everything else is in the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use can_sync::can::server::{self, Faults, ServerConfig};
use can_sync::can::{EmbeddedCan, HttpCan, SharedCan, StoreLimits};
use can_sync::engine::EngineConfig;
use can_sync::node::supervisor::{DialConfig, Supervisor};
use can_sync::node::{self, keys, EndpointOptions, LiveConfig, Node, Protocol, Ticket};
use can_sync::session::SessionReport;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing::{info, warn};

mod config_file;
mod demo;

/// Keeps content-addressed asset stores of many nodes in sync over iroh QUIC.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the reference CAN server (the HTTP API of DESIGN §3).
    ServeCan(ServeCanArgs),
    /// Run the sync agent: accept peers, dial --peer tickets, keep syncing.
    #[command(args_override_self = true)]
    Daemon(DaemonArgs),
    /// Run one session with a peer (both directions) and exit: 0 when in sync.
    Seed(SeedArgs),
    /// Print the ticket of the daemon that runs (or ran) in --data-dir.
    Ticket(DataDirArgs),
    /// Print this node's endpoint id (what --allow takes).
    Id(DataDirArgs),
    /// Two embedded nodes on loopback, a generated archive, a seed run, a summary.
    Demo(demo::DemoArgs),
}

#[derive(Args)]
struct ServeCanArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Store blobs and metadata durably in this folder.
    #[arg(long, conflicts_with = "memory", required_unless_present = "memory")]
    dir: Option<PathBuf>,
    /// Keep everything in memory (tests and load tests).
    #[arg(long)]
    memory: bool,
    /// Largest request body accepted, in bytes (413 above).
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    max_body_bytes: u64,
    /// Fault knob: milliseconds added to every request.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fault knob: fraction of requests answered 500 (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Fault knob: cap on response body bandwidth, bytes per second.
    #[arg(long)]
    bandwidth: Option<u64>,
}

/// Where the local store is: an HTTP CAN, or an embedded one in a folder.
#[derive(Args)]
struct StoreArgs {
    /// Base URL of a CAN service (e.g. http://127.0.0.1:8080).
    #[arg(long, conflicts_with = "store")]
    can: Option<String>,
    /// Folder of an embedded store.
    #[arg(long)]
    store: Option<PathBuf>,
}

#[derive(Args)]
struct NetArgs {
    /// No relays and no discovery: dial only the addresses in tickets.
    #[arg(long)]
    no_relay: bool,
    /// Protocol to speak when dialling: 2 (pipelined; falls back to 1 when the
    /// peer lacks it) or 1 (the original protocol, the baseline).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    protocol: u8,
}

/// Knobs of the v2 engine (DESIGN §5); defaults are measured (PERFORMANCE.md).
#[derive(Args)]
struct EngineArgs {
    /// Data uni-streams per session and direction.
    #[arg(long, default_value_t = EngineConfig::default().streams)]
    streams: u32,
    /// Concurrent CAN pulls when sending.
    #[arg(long, default_value_t = EngineConfig::default().pull_workers)]
    pull_workers: usize,
    /// Most assets per CAN pull.
    #[arg(long, default_value_t = EngineConfig::default().batch_assets)]
    batch_assets: usize,
    /// Most payload bytes per CAN pull.
    #[arg(long, default_value_t = EngineConfig::default().batch_bytes)]
    batch_bytes: u64,
    /// Concurrent encode (protobuf + zstd) jobs.
    #[arg(long, default_value_t = EngineConfig::default().encode_workers)]
    encode_workers: usize,
    /// Concurrent decode and BLAKE3 jobs.
    #[arg(long, default_value_t = EngineConfig::default().verify_workers)]
    verify_workers: usize,
    /// Concurrent CAN pushes when receiving.
    #[arg(long, default_value_t = EngineConfig::default().push_workers)]
    push_workers: usize,
    /// Depth of every queue between stages.
    #[arg(long, default_value_t = EngineConfig::default().queue_depth)]
    queue_depth: usize,
    /// zstd level for compressible assets.
    #[arg(long, default_value_t = EngineConfig::default().zstd_level)]
    zstd_level: i32,
    /// Assets above this many bytes stream in chunks.
    #[arg(long, default_value_t = EngineConfig::default().inline_limit)]
    inline_limit: u64,
    /// Bytes per chunk of a streamed asset.
    #[arg(long, default_value_t = EngineConfig::default().chunk_bytes)]
    chunk_bytes: usize,
    /// Seconds a peer may stay silent mid-transfer.
    #[arg(long, default_value_t = EngineConfig::default().idle_timeout.as_secs())]
    idle_timeout_secs: u64,
}

impl EngineArgs {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            streams: self.streams,
            pull_workers: self.pull_workers,
            batch_assets: self.batch_assets,
            batch_bytes: self.batch_bytes,
            encode_workers: self.encode_workers,
            verify_workers: self.verify_workers,
            push_workers: self.push_workers,
            queue_depth: self.queue_depth,
            zstd_level: self.zstd_level,
            inline_limit: self.inline_limit,
            chunk_bytes: self.chunk_bytes,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            ..EngineConfig::default()
        }
    }
}

#[derive(Args)]
struct DaemonArgs {
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
    /// Serve /status and, with an embedded store, the CAN API on this address.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// A peer to dial (its ticket); repeatable.
    #[arg(long = "peer")]
    peers: Vec<Ticket>,
    /// Endpoint id allowed to connect; repeatable; none: everyone.
    #[arg(long = "allow")]
    allow: Vec<iroh::EndpointId>,
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
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct SeedArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Ticket of the peer to sync with.
    #[arg(long)]
    from: Ticket,
    /// Print one JSON line with the result instead of a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct DataDirArgs {
    /// The node's data folder.
    #[arg(long)]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = parse_command_line()?;
    // The demo prints its own summary; the services log what they do.
    let default_filter = match cli.command {
        Command::Demo(_) => "warn",
        _ => "warn,can_sync=info",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .init();
    match cli.command {
        Command::ServeCan(args) => serve_can(args).await,
        Command::Daemon(args) => daemon(args).await,
        Command::Seed(args) => seed(args).await,
        Command::Ticket(args) => {
            let path = args.data_dir.join(TICKET_FILE);
            let ticket = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "no ticket in {}: start `can-sync daemon --data-dir` there first",
                    path.display()
                )
            })?;
            println!("{}", ticket.trim());
            Ok(())
        }
        Command::Id(args) => {
            println!("{}", keys::load_or_create(&args.data_dir)?.public());
            Ok(())
        }
        Command::Demo(args) => demo::run(args).await,
    }
}

/// Where a running daemon writes its ticket for `can-sync ticket`.
const TICKET_FILE: &str = "ticket";

async fn serve_can(args: ServeCanArgs) -> Result<()> {
    let can: SharedCan = match (&args.dir, args.memory) {
        (Some(dir), _) => Arc::new(
            EmbeddedCan::open(dir, StoreLimits::default())
                .with_context(|| format!("opening store in {}", dir.display()))?,
        ),
        (None, _) => Arc::new(EmbeddedCan::memory(StoreLimits::default())?),
    };
    if !(0.0..=1.0).contains(&args.error_rate) {
        bail!(
            "--error-rate must be between 0 and 1, got {}",
            args.error_rate
        );
    }
    let config = ServerConfig {
        max_body_bytes: args.max_body_bytes,
        faults: Faults {
            latency: Duration::from_millis(args.latency_ms),
            error_rate: args.error_rate,
            bandwidth_bytes_per_sec: args.bandwidth,
        },
        ..ServerConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("listening http://{addr}");
    std::io::stdout().flush()?;
    info!(%addr, "CAN server up");
    server::serve(listener, can, config, shutdown_signal()).await?;
    Ok(())
}

fn open_store(args: &StoreArgs, default_dir: Option<&Path>) -> Result<(SharedCan, bool)> {
    if let Some(url) = &args.can {
        return Ok((Arc::new(HttpCan::new(url)?), false));
    }
    let dir = match (&args.store, default_dir) {
        (Some(dir), _) => dir.clone(),
        (None, Some(default)) => default.to_path_buf(),
        (None, None) => bail!("no store given: pass --can URL or --store DIR"),
    };
    let store = EmbeddedCan::open(&dir, StoreLimits::default())
        .with_context(|| format!("opening store in {}", dir.display()))?;
    Ok((Arc::new(store), true))
}

fn protocol(net: &NetArgs) -> Result<Protocol> {
    match net.protocol {
        1 => Ok(Protocol::V1),
        _ => Ok(Protocol::V2),
    }
}

async fn daemon(args: DaemonArgs) -> Result<()> {
    let protocol = protocol(&args.net)?;
    let secret_key = keys::load_or_create(&args.data_dir)?;
    let (can, embedded) = open_store(&args.store, Some(&args.data_dir.join("store")))?;
    let endpoint = node::bind(&EndpointOptions {
        secret_key,
        listen: args.listen,
        relay: !args.net.no_relay,
        allow: args.allow.clone(),
    })
    .await?;
    let mut node = Node::new(endpoint, can.clone()).with_engine_config(args.engine.config());
    if protocol == Protocol::V2 {
        node = node.with_live(LiveConfig {
            check_interval: Duration::from_secs(args.live_check_secs.max(1)),
            linger: Duration::from_millis(args.live_linger_ms),
            max_batch: args.live_batch.max(1),
            offers_in_flight: args.live_offers.max(1),
        });
    }
    // Everything a caller may use once the ticket is printed is up first:
    // the signal handlers and the --http port.
    let stop = shutdown_signal();
    let ticket = node.ticket();
    if let Some(addr) = args.http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --http {addr}"))?;
        let router = node::status::router(&node);
        let router = if embedded {
            router.merge(server::router(can.clone(), ServerConfig::default()))
        } else {
            router
        };
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                warn!(error = %err, "http server stopped");
            }
        });
    }
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
    for peer in args.peers.clone() {
        supervisor.dial(peer);
    }
    supervisor.accept();
    stop.await;
    info!("shutting down: finishing what is in flight");
    supervisor.shutdown(SHUTDOWN_GRACE).await;
    node.endpoint().close().await;
    info!("stopped");
    Ok(())
}

/// How long a stopping daemon waits for in-flight pushes and offers.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

async fn seed(args: SeedArgs) -> Result<()> {
    let protocol = protocol(&args.net)?;
    let (can, _) = open_store(&args.store, None)?;
    let endpoint = node::bind(&EndpointOptions {
        secret_key: iroh::SecretKey::generate(),
        listen: None,
        relay: !args.net.no_relay,
        allow: Vec::new(),
    })
    .await?;
    let node = Node::new(endpoint, can).with_engine_config(args.engine.config());
    let bar = progress_bar(&node);
    let started = Instant::now();
    let result = node.sync_with(&args.from, protocol).await;
    bar.finish_and_clear();
    node.endpoint().close().await;
    let report = result.context("seed session failed")?;
    print_report(&report, started.elapsed(), args.json);
    if !report.rejected.is_empty() {
        bail!(
            "{} assets were rejected, first: {} ({})",
            report.rejected.len(),
            report.rejected[0].hash,
            report.rejected[0].reason
        );
    }
    Ok(())
}

/// A spinner on stderr fed by the node's live counters.
pub(crate) fn progress_bar(node: &Node) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .expect("static template"),
    );
    let progress = node.stats().clone();
    let ticker = bar.clone();
    tokio::spawn(async move {
        while !ticker.is_finished() {
            let (sent, received, bytes) = progress.snapshot();
            ticker.set_message(format!(
                "sent {sent}, received {received} assets, {:.1} MB",
                bytes as f64 / 1e6
            ));
            ticker.tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    bar
}

fn print_report(report: &SessionReport, elapsed: Duration, json: bool) {
    let secs = elapsed.as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "assets_received": report.assets_received,
                "assets_sent": report.assets_sent,
                "bytes": report.payload_bytes,
                "wire_bytes": report.wire_bytes,
                "secs": secs,
                "rejected": report.rejected.len(),
            })
        );
    } else {
        println!(
            "sent {} and received {} assets ({:.1} MB payload, {:.1} MB on the wire) in {:.2} s: {:.1} MB/s; {} metadata updates sent, {} applied; {} rejected",
            report.assets_sent,
            report.assets_received,
            report.payload_bytes as f64 / 1e6,
            report.wire_bytes as f64 / 1e6,
            secs,
            report.payload_bytes as f64 / 1e6 / secs.max(1e-9),
            report.meta_sent,
            report.meta_applied,
            report.rejected.len()
        );
    }
}

/// The command line, with the daemon's `--config` file expanded into flags.
fn parse_command_line() -> Result<Cli> {
    let mut command = Cli::command();
    let known: Vec<String> = command
        .find_subcommand("daemon")
        .map(|daemon| {
            daemon
                .get_arguments()
                .filter_map(|arg| arg.get_long().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let args = config_file::expand(std::env::args_os().collect(), &known)?;
    let matches = command
        .try_get_matches_from_mut(args)
        .unwrap_or_else(|err| err.exit());
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit()))
}

/// Resolves on SIGINT or SIGTERM.
///
/// The handlers are installed when this is called, not when it is first
/// awaited: a signal that arrives in between is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
