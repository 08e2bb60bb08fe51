//! The raw scenario: the ceiling of this machine — payload bytes over raw iroh
//! QUIC streams between two processes, with the agents' transport config and no
//! CAN, no framing, no hashing.
//!
//! The harness runs itself twice: `loadtest raw-server` binds an endpoint on
//! 127.0.0.1 and prints `ticket <TICKET>`; `loadtest raw-client --ticket T
//! --bytes N --streams S` connects, opens a control bi-stream carrying
//! `[streams: u32 BE][bytes per stream: u64 BE]`, then writes the bytes over S
//! uni-streams at once (zero-copy chunks of one random buffer). The server
//! reads every stream to its end, counting, and answers the total as a u64 on
//! the control stream; the client prints one JSON line `{"streams", "bytes",
//! "secs"}` timed from the header to that answer. A fresh pair of processes per
//! stream count keeps each one's RSS and CPU its own.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use can_sync::node::Ticket;
use iroh::endpoint::{presets, Connection};
use iroh::{Endpoint, TransportAddr};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::procs::{Exit, Proc};
use crate::report::{Record, RAW_PROTOCOL};
use crate::scenarios::Ctx;

/// ALPN of the raw measurement; not a can-sync protocol.
const ALPN: &[u8] = b"can-sync-loadtest/raw";
/// Size of the chunks the client writes (one shared random buffer).
const CHUNK: usize = 1 << 20;
/// How long the two processes may take to connect and shut down.
const HANDSHAKE: Duration = Duration::from_secs(20);

/// What `raw-client` prints.
#[derive(Debug, Serialize, Deserialize)]
struct ClientReport {
    streams: u32,
    bytes: u64,
    secs: f64,
}

async fn bind() -> Result<Endpoint> {
    Endpoint::builder(presets::Minimal)
        .alpns(vec![ALPN.to_vec()])
        .transport_config(can_sync::node::endpoint::transport_config(
            Default::default(),
        ))
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")?
        .bind()
        .await
        .context("binding the raw endpoint")
}

/// `loadtest raw-server`: serves one connection, then exits.
pub(crate) async fn server() -> Result<()> {
    let endpoint = bind().await?;
    let ticket = Ticket {
        id: endpoint.id(),
        addrs: endpoint.bound_sockets(),
        capability: None,
    };
    println!("ticket {ticket}");
    let incoming = endpoint.accept().await.context("endpoint closed")?;
    let conn = incoming.await.context("accepting the raw connection")?;
    let result = serve(&conn).await;
    // The client closes once it has our answer; wait for that, bounded.
    let _ = tokio::time::timeout(HANDSHAKE, conn.closed()).await;
    endpoint.close().await;
    result
}

async fn serve(conn: &Connection) -> Result<()> {
    let (mut control_send, mut control_recv) = conn.accept_bi().await?;
    let mut header = [0u8; 12];
    control_recv.read_exact(&mut header).await?;
    let streams = u32::from_be_bytes(header[..4].try_into()?);
    let per_stream = u64::from_be_bytes(header[4..].try_into()?);
    // As a session does: no data streams until asked for.
    can_sync::node::endpoint::open_for_data(conn, streams);
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let mut recv = conn.accept_uni().await?;
        readers.spawn(async move {
            let mut n = 0u64;
            while let Some(chunk) = recv.read_chunk(usize::MAX).await? {
                n += chunk.len() as u64;
            }
            Ok::<_, anyhow::Error>(n)
        });
    }
    let mut total = 0;
    while let Some(joined) = readers.join_next().await {
        total += joined??;
    }
    ensure!(
        total == per_stream * u64::from(streams),
        "received {total} bytes, expected {}",
        per_stream * u64::from(streams)
    );
    control_send.write_all(&total.to_be_bytes()).await?;
    control_send.finish()?;
    Ok(())
}

/// `loadtest raw-client`: pushes `bytes` over `streams` uni-streams to `ticket`.
pub(crate) async fn client(ticket: &str, bytes: u64, streams: u32) -> Result<()> {
    ensure!(streams > 0, "--streams must be at least 1");
    let ticket: Ticket = ticket.parse().context("parsing the raw server's ticket")?;
    let endpoint = bind().await?;
    let addr = iroh::EndpointAddr::from_parts(
        ticket.id,
        ticket.addrs.iter().map(|a| TransportAddr::Ip(*a)),
    );
    let conn = endpoint
        .connect(addr, ALPN)
        .await
        .context("connecting to the raw server")?;
    let per_stream = bytes / u64::from(streams);

    let mut buffer = vec![0u8; CHUNK];
    rand::rngs::SmallRng::seed_from_u64(7).fill_bytes(&mut buffer);
    let buffer = Bytes::from(buffer);

    let started = Instant::now();
    let (mut control_send, mut control_recv) = conn.open_bi().await?;
    let mut header = [0u8; 12];
    header[..4].copy_from_slice(&streams.to_be_bytes());
    header[4..].copy_from_slice(&per_stream.to_be_bytes());
    control_send.write_all(&header).await?;
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let mut send = conn.open_uni().await?;
        let buffer = buffer.clone();
        writers.spawn(async move {
            let mut left = per_stream;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                send.write_chunk(buffer.slice(..n)).await?;
                left -= n as u64;
            }
            send.finish()?;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined??;
    }
    let mut answer = [0u8; 8];
    control_recv.read_exact(&mut answer).await?;
    let secs = started.elapsed().as_secs_f64();
    let received = u64::from_be_bytes(answer);
    conn.close(0u32.into(), b"done");
    endpoint.close().await;
    ensure!(
        received == per_stream * u64::from(streams),
        "server received {received} bytes"
    );
    let report = ClientReport {
        streams,
        bytes: received,
        secs,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Measures one and several streams; one record each.
pub(crate) async fn run(ctx: &Ctx, run: u32) -> Vec<Record> {
    let mut counts = vec![1, ctx.sizes.raw_streams];
    counts.dedup();
    let mut records = Vec::new();
    for streams in counts {
        ctx.progress
            .phase(&format!("raw QUIC, {streams} stream(s)"));
        let record = match measure(ctx, run, streams).await {
            Ok(record) => record,
            Err(err) => {
                let mut r = Record::failed("raw", RAW_PROTOCOL, run, &err);
                r.streams = Some(streams);
                r
            }
        };
        records.push(record);
    }
    records
}

async fn measure(ctx: &Ctx, run: u32, streams: u32) -> Result<Record> {
    let (_launcher, scratch) = ctx.launcher()?;
    let pass = transfer(
        scratch.path(),
        ctx.sizes.raw_bytes,
        streams,
        ctx.sizes.timeout,
        |proc| ctx.progress.track(proc),
    )
    .await?;
    let mut record = Record::new("raw", RAW_PROTOCOL, run);
    record.streams = Some(streams);
    record.assets = 0;
    record.bytes = pass.bytes;
    record.secs = pass.secs;
    record.agent("raw-client", &pass.client);
    record.agent("raw-server", &pass.server);
    Ok(record.finish(true, None))
}

/// One raw transfer between two processes, as the raw-client measured it.
pub(crate) struct Transfer {
    /// Bytes the server received.
    pub(crate) bytes: u64,
    /// Seconds from the client's header to the server's answer.
    pub(crate) secs: f64,
    /// How each process exited (its CPU time and peak RSS).
    pub(crate) client: Exit,
    pub(crate) server: Exit,
}

/// Runs `loadtest raw-server` and `loadtest raw-client` (logs in `dir`) for
/// `bytes` over `streams` streams, within `timeout`; `track` sees each
/// process as it starts.
pub(crate) async fn transfer(
    dir: &Path,
    bytes: u64,
    streams: u32,
    timeout: Duration,
    track: impl Fn(&Proc),
) -> Result<Transfer> {
    let exe = std::env::current_exe().context("locating the loadtest binary")?;
    let mut server = Proc::spawn(
        "raw-server",
        &exe,
        &["raw-server".into()],
        &dir.join("raw-server.log"),
    )?;
    track(&server);
    let line = server.first_line(HANDSHAKE).await?;
    let ticket = line
        .strip_prefix("ticket ")
        .with_context(|| format!("raw-server printed {line:?}"))?;
    let args = vec![
        "raw-client".into(),
        "--ticket".into(),
        ticket.to_string(),
        "--bytes".into(),
        bytes.to_string(),
        "--streams".into(),
        streams.to_string(),
    ];
    let mut client = Proc::spawn("raw-client", &exe, &args, &dir.join("raw-client.log"))?;
    track(&client);
    let report = client.first_line(timeout).await;
    let client_exit = client.wait(HANDSHAKE).await?;
    let server_exit = server.wait(HANDSHAKE).await?;
    let report: ClientReport = match report {
        Ok(line) => {
            serde_json::from_str(&line).with_context(|| format!("raw-client printed {line:?}"))?
        }
        Err(err) => bail!("{err:#}"),
    };
    for (proc, exit) in [(&client, &client_exit), (&server, &server_exit)] {
        if !exit.success() {
            bail!(
                "{} exited with {:?}{}",
                proc.name(),
                exit.code,
                proc.log_tail()
            );
        }
    }
    Ok(Transfer {
        bytes: report.bytes,
        secs: report.secs,
        client: client_exit,
        server: server_exit,
    })
}
