//! The `can-sync` processes a run starts, as users run them: `serve-can
//! --memory` CAN servers, `daemon`s and one-shot `seed`s, all on 127.0.0.1 with
//! relays off. Each is a [`Proc`], so it is measured while it runs.
//!
//! A daemon is either the agent of a CAN server ([`Launcher::daemon`], access
//! open for writes) or a whole node on its own embedded store
//! ([`Launcher::node`]): access closed but for the ids it is told, its CAN
//! API served on its `--http` port beside `/status` and `/metrics`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use can_sync::can::HttpCan;
use serde::Deserialize;

use crate::procs::{Exit, Proc};
use crate::progress::Progress;

/// How long a process may take to print its first line.
const STARTUP: Duration = Duration::from_secs(30);
/// How long a daemon or server may take to exit after SIGTERM.
const GRACE: Duration = Duration::from_secs(15);

/// The `can-sync` binary and the folder a run keeps its logs and data in.
#[derive(Clone)]
pub(crate) struct Launcher {
    /// Path of the `can-sync` binary.
    pub(crate) bin: PathBuf,
    /// The run's scratch folder: logs, daemon data folders.
    pub(crate) dir: PathBuf,
    /// Agents started are shown on it.
    pub(crate) progress: Progress,
    /// Flags every daemon gets besides the harness's own (e.g.
    /// `--congestion cubic`); empty: the agent's defaults.
    pub(crate) daemon_args: Vec<String>,
}

/// Fault knobs of a CAN server (`serve-can` flags).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    /// `--latency-ms`.
    pub(crate) latency_ms: u64,
    /// `--error-rate`.
    pub(crate) error_rate: f64,
    /// `--max-body-bytes`; 0: the server's default (256 MiB).
    pub(crate) max_body_bytes: u64,
}

/// A running `can-sync serve-can --memory`.
pub(crate) struct CanServer {
    /// The process.
    pub(crate) proc: Proc,
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub(crate) url: String,
    /// A client of it.
    pub(crate) can: Arc<HttpCan>,
}

/// A running `can-sync daemon`.
pub(crate) struct Daemon {
    /// The process.
    pub(crate) proc: Proc,
    /// The ticket it printed.
    pub(crate) ticket: String,
    /// Where its `/status` is served.
    pub(crate) status_url: String,
}

/// A running `can-sync daemon` on its embedded store.
pub(crate) struct Node {
    /// The daemon.
    pub(crate) daemon: Daemon,
    /// A client of the CAN API on its `--http` port.
    pub(crate) can: Arc<HttpCan>,
}

/// What `can-sync seed --json` printed (the fields the harness uses).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SeedReport {
    /// Assets it stored.
    pub(crate) assets_received: u64,
    /// Frame bytes on the session's streams, both ways.
    pub(crate) wire_bytes: u64,
}

/// One finished `seed` run.
pub(crate) struct SeedRun {
    /// Exit code, rusage, wall time.
    pub(crate) exit: Exit,
    /// Its JSON line, when it printed one.
    pub(crate) report: Option<SeedReport>,
    /// Why it failed, when it did.
    pub(crate) error: Option<String>,
}

/// What a daemon's `/status` says (fields this build may not have are optional).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct DaemonStatus {
    /// Frame bytes of its sessions, both ways, when the daemon reports them.
    #[serde(default)]
    pub(crate) wire_bytes: Option<u64>,
}

impl Launcher {
    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Starts a memory-backed CAN server on a free loopback port.
    pub(crate) async fn can_server(&self, name: &str, faults: Faults) -> Result<CanServer> {
        let mut args = strings(&["serve-can", "--listen", "127.0.0.1:0", "--memory"]);
        if faults.latency_ms > 0 {
            args.extend(strings(&["--latency-ms", &faults.latency_ms.to_string()]));
        }
        if faults.error_rate > 0.0 {
            args.extend(strings(&["--error-rate", &faults.error_rate.to_string()]));
        }
        if faults.max_body_bytes > 0 {
            args.extend(strings(&[
                "--max-body-bytes",
                &faults.max_body_bytes.to_string(),
            ]));
        }
        let mut proc = Proc::spawn(name, &self.bin, &args, &self.log(name))?;
        let line = proc.first_line(STARTUP).await?;
        let url = line
            .strip_prefix("listening ")
            .with_context(|| format!("{name} printed {line:?}, not `listening URL`"))?
            .to_string();
        if !url.starts_with("http://127.0.0.1:") {
            bail!("{name} listens on {url}, not on loopback");
        }
        let can = Arc::new(HttpCan::new(&url).context("CAN client")?);
        Ok(CanServer { proc, url, can })
    }

    /// Starts a daemon on `can_url` that dials `peers` every `resync_secs`.
    pub(crate) async fn daemon(
        &self,
        name: &str,
        can_url: &str,
        peers: &[&str],
        protocol: u8,
        resync_secs: u64,
    ) -> Result<Daemon> {
        self.daemon_on(name, can_url, peers, protocol, resync_secs, "127.0.0.1:0")
            .await
    }

    /// [`Self::daemon`], its endpoint bound to `listen` (a loopback address).
    pub(crate) async fn daemon_on(
        &self,
        name: &str,
        can_url: &str,
        peers: &[&str],
        protocol: u8,
        resync_secs: u64,
        listen: &str,
    ) -> Result<Daemon> {
        let data_dir = self.dir.join(name);
        std::fs::create_dir_all(&data_dir)?;
        let http = free_port()?;
        let mut args = strings(&[
            "daemon",
            "--can",
            can_url,
            "--data-dir",
            path_str(&data_dir)?,
            "--listen",
            listen,
            "--http",
            &http.to_string(),
            "--no-relay",
            "--open",
            "write",
            "--protocol",
            &protocol.to_string(),
            "--resync-secs",
            &resync_secs.to_string(),
        ]);
        for peer in peers {
            args.extend(strings(&["--peer", peer]));
        }
        args.extend(self.daemon_args.iter().cloned());
        let mut proc = Proc::spawn(name, &self.bin, &args, &self.log(name))?;
        self.progress.track(&proc);
        let line = proc.first_line(STARTUP).await?;
        let ticket = line
            .strip_prefix("ticket ")
            .with_context(|| format!("{name} printed {line:?}, not `ticket T`"))?
            .to_string();
        Ok(Daemon {
            proc,
            ticket,
            status_url: format!("http://{http}/status"),
        })
    }

    /// Starts `can-sync daemon` on the embedded store in [`node_store`] of
    /// `data_dir` (the folder of its key and ticket), dialling `peers` (tickets) and admitting, as
    /// writers, only them and `allow` (endpoint ids); its `--http` port, a
    /// free loopback one, serves the CAN API, `/status` and `/metrics`.
    /// `name` names its log.
    pub(crate) async fn node(
        &self,
        name: &str,
        data_dir: &Path,
        peers: &[&str],
        allow: &[String],
    ) -> Result<Node> {
        self.node_on(name, data_dir, "127.0.0.1:0", peers, allow)
            .await
    }

    /// [`Self::node`], its endpoint bound to `listen` (a loopback address):
    /// a node started again on the same address keeps its ticket, so the
    /// peers that dial it find it again.
    pub(crate) async fn node_on(
        &self,
        name: &str,
        data_dir: &Path,
        listen: &str,
        peers: &[&str],
        allow: &[String],
    ) -> Result<Node> {
        std::fs::create_dir_all(data_dir)?;
        let http = free_port()?;
        let mut args = strings(&[
            "daemon",
            "--data-dir",
            path_str(data_dir)?,
            "--store",
            path_str(&node_store(data_dir))?,
            "--listen",
            listen,
            "--http",
            &http.to_string(),
            "--no-relay",
        ]);
        for peer in peers {
            args.extend(strings(&["--peer", peer]));
        }
        for id in allow {
            args.extend(strings(&["--allow", id]));
        }
        args.extend(self.daemon_args.iter().cloned());
        let mut proc = Proc::spawn(name, &self.bin, &args, &self.log(name))?;
        let line = proc.first_line(STARTUP).await?;
        let ticket = line
            .strip_prefix("ticket ")
            .with_context(|| format!("{name} printed {line:?}, not `ticket T`"))?
            .to_string();
        let can = Arc::new(HttpCan::new(&format!("http://{http}")).context("CAN client")?);
        let daemon = Daemon {
            proc,
            ticket,
            status_url: format!("http://{http}/status"),
        };
        Ok(Node { daemon, can })
    }

    /// The endpoint id of the node whose data folder is `data_dir` (`can-sync
    /// id`, which makes its key if there is none yet): what another node's
    /// `--allow` takes.
    pub(crate) async fn endpoint_id(&self, name: &str, data_dir: &Path) -> Result<String> {
        std::fs::create_dir_all(data_dir)?;
        let args = strings(&["id", "--data-dir", path_str(data_dir)?]);
        let mut proc = Proc::spawn(name, &self.bin, &args, &self.log(name))?;
        let id = proc.first_line(STARTUP).await?;
        let exit = proc.wait(STARTUP).await?;
        if !exit.success() {
            bail!("{name} exited with {:?}{}", exit.code, proc.log_tail());
        }
        Ok(id.trim().to_string())
    }

    /// Runs `seed` on `can_url` against `ticket` and waits for it, at most `timeout`.
    pub(crate) async fn seed(
        &self,
        name: &str,
        can_url: &str,
        ticket: &str,
        protocol: u8,
        timeout: Duration,
    ) -> Result<SeedRun> {
        let args = strings(&[
            "seed",
            "--can",
            can_url,
            "--from",
            ticket,
            "--json",
            "--no-relay",
            "--protocol",
            &protocol.to_string(),
        ]);
        let started = Instant::now();
        let mut proc = Proc::spawn(name, &self.bin, &args, &self.log(name))?;
        self.progress.track(&proc);
        // seed prints its one line when it is done, so this is most of the wait.
        let line = proc.first_line(timeout).await.ok();
        let left = timeout.saturating_sub(started.elapsed());
        let exit = proc.wait(left.max(Duration::from_secs(1))).await?;
        let report = line.as_deref().and_then(|l| serde_json::from_str(l).ok());
        let error = if !exit.success() {
            Some(format!(
                "seed exited with {:?}{}",
                exit.code,
                proc.log_tail()
            ))
        } else if report.is_none() {
            Some(format!("seed printed {line:?}, not its JSON report"))
        } else {
            None
        };
        Ok(SeedRun {
            exit,
            report,
            error,
        })
    }
}

impl Daemon {
    /// The daemon's `/status`, `None` when it does not answer.
    pub(crate) async fn status(&self, http: &reqwest::Client) -> Option<DaemonStatus> {
        let response = http
            .get(&self.status_url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let body = response.bytes().await.ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// The daemon's `/status` as JSON, `None` when it does not answer.
    pub(crate) async fn status_json(&self, http: &reqwest::Client) -> Option<serde_json::Value> {
        let response = http
            .get(&self.status_url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        serde_json::from_slice(&response.bytes().await.ok()?).ok()
    }

    /// The value of the series `name` (no labels) of the daemon's
    /// `/metrics`, `None` when it does not answer or lacks it.
    pub(crate) async fn metric(&self, http: &reqwest::Client, name: &str) -> Option<u64> {
        series(&self.metrics(http).await?, name)
    }

    /// The daemon's `/metrics` text, `None` when it does not answer.
    pub(crate) async fn metrics(&self, http: &reqwest::Client) -> Option<String> {
        let url = self.status_url.replace("/status", "/metrics");
        let response = http
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        response.text().await.ok()
    }

    /// SIGKILL, as a crash or a power cut would end it.
    pub(crate) async fn kill(mut self) -> Result<Exit> {
        self.proc.kill(GRACE).await
    }

    /// SIGTERM, then the final measurement.
    pub(crate) async fn stop(mut self) -> Result<Exit> {
        let exit = self.proc.terminate(GRACE).await?;
        if !exit.success() {
            bail!(
                "{} exited with {:?} after SIGTERM{}",
                self.proc.name(),
                exit.code,
                self.proc.log_tail()
            );
        }
        Ok(exit)
    }
}

impl CanServer {
    /// SIGTERM; the CAN's exit status does not matter to a run.
    pub(crate) async fn stop(mut self) {
        let _ = self.proc.terminate(GRACE).await;
    }
}

/// Wire bytes of all sessions, from the daemons' `/status` (each byte is
/// counted by both ends, so the sum is halved); `None` unless every daemon
/// reports them.
pub(crate) async fn wire_bytes(http: &reqwest::Client, daemons: &[(&str, Daemon)]) -> Option<u64> {
    let mut sum = 0;
    for (_, daemon) in daemons {
        sum += daemon.status(http).await?.wire_bytes?;
    }
    Some(sum / 2)
}

/// Where [`Launcher::node`] keeps a node's embedded store: `store` in its
/// data folder.
pub(crate) fn node_store(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}

/// The value of the series `name` (no labels) in a `/metrics` text.
pub(crate) fn series(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

/// An HTTP client for daemons' `/status` (built as the CAN client is: this
/// workspace's reqwest has no default TLS provider).
pub(crate) fn status_client() -> Result<reqwest::Client> {
    Ok(can_sync::can::client::http_client_builder()?.build()?)
}

/// A loopback TCP port free a moment ago (the daemon's `--http` takes no port 0
/// it would tell us about).
fn free_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A loopback UDP address free a moment ago: where a node that is started
/// again must listen, since its peers dial the address in its ticket.
pub(crate) fn free_udp_addr() -> Result<SocketAddr> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(socket.local_addr()?)
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}
