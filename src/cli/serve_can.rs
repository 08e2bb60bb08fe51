//! `can-sync serve-can`: the reference CAN server (its HTTP API is described
//! in `docs/openapi.json`) over a disk or memory store, with the fault knobs
//! load tests turn.
//! Prints `listening http://ADDR` once it accepts, then serves until SIGINT
//! or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use can_sync::can::server::{self, Faults, ServerConfig};
use can_sync::can::{EmbeddedCan, SharedCan, StoreLimits};
use clap::Args;
use tracing::info;

use super::signal::shutdown_signal;

#[derive(Args)]
pub(crate) struct ServeCanArgs {
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
    /// Fault knob: cap on the bandwidth of response bodies, bytes per
    /// second, shared by all the bodies the server sends at once.
    #[arg(long)]
    bandwidth: Option<u64>,
    /// Bearer token every write must carry (`Authorization: Bearer`);
    /// needed when --listen is not a loopback address. Clients give it with
    /// --can-token.
    #[arg(long, env = "CAN_SYNC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A host name (or IP address), without port, that requests may be
    /// addressed to besides loopback names; repeatable. Others are answered
    /// 421, so a web page cannot reach the API by DNS rebinding. A server
    /// reached beyond loopback (--listen 0.0.0.0 with --token) needs the
    /// name or address its clients use in their URL.
    #[arg(long = "allowed-host", value_name = "NAME", value_parser = server::parse_allowed_host)]
    allowed_hosts: Vec<String>,
    #[command(flatten)]
    objects: super::args::ObjectArgs,
}

pub(crate) async fn run(args: ServeCanArgs) -> Result<()> {
    if args.memory && args.objects.config().is_some() {
        bail!("--blobs keeps a store's bytes in object storage; --memory keeps them in memory");
    }
    let can: SharedCan = match (&args.dir, args.memory) {
        (Some(dir), _) => Arc::new(
            args.objects
                .open_store(dir, StoreLimits::default())
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
    super::args::check_exposure(args.listen, true, args.token.as_deref(), "--token")
        .context("--listen")?;
    let config = ServerConfig {
        write_token: args.token.clone(),
        allowed_hosts: args.allowed_hosts.clone(),
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
    // Flushed at once: scripts and tests wait for this line to know the port.
    println!("listening http://{addr}");
    std::io::stdout().flush()?;
    info!(%addr, "CAN server up");
    server::serve(listener, can, config, shutdown_signal()).await?;
    Ok(())
}
