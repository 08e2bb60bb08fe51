//! A real S3 server for the tests of object storage: `s3s-fs` (crates.io,
//! installed by `.ci/run`) on a free loopback port over a temporary folder,
//! started and stopped by the test. A missing binary fails the test: object
//! storage is never tested against a mock.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use can_sync::asset::AssetHash;
use can_sync::can::store::objects::ObjectsConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::TIMEOUT;

/// The bucket every test store uses.
pub(crate) const BUCKET: &str = "archive";
const ACCESS_KEY: &str = "can-sync-test";
const SECRET_KEY: &str = "can-sync-test-secret";

/// The `s3s-fs` binary: `S3S_FS_BIN`, else on `PATH`, else cargo's bin
/// folder, where `cargo install` puts it.
pub(crate) fn binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("S3S_FS_BIN") {
        return Ok(bin.into());
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"))
        .find(|bin| bin.is_file());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let in_cargo = cargo_home
        .map(|home| home.join("bin").join("s3s-fs"))
        .filter(|bin| bin.is_file());
    on_path.or(in_cargo).context(
        "s3s-fs not found: install it with \
         `cargo install s3s-fs --version 0.14.1 --features binary --locked` (.ci/run does)",
    )
}

/// The credentials the server checks, in the environment every client of
/// the process reads them from (as a user would give them). The same
/// values every time, so tests running at once agree.
pub(crate) fn set_credentials() {
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    std::env::set_var("AWS_REGION", "us-east-1");
}

/// A running `s3s-fs`, killed when dropped.
pub(crate) struct S3Server {
    child: Option<Child>,
    /// Its data folder: `root/BUCKET/KEY` is each object's bytes.
    root: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub(crate) endpoint: String,
}

impl S3Server {
    /// A server on a free loopback port with an empty bucket.
    pub(crate) async fn start() -> Result<Self> {
        set_credentials();
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join(BUCKET))?;
        let (child, endpoint) = spawn(root.path(), 0).await?;
        Ok(Self {
            child: Some(child),
            root,
            endpoint,
        })
    }

    /// The store config of the prefix `prefix` of the bucket, retrying a
    /// failing request for `retry_for`.
    pub(crate) fn config(&self, prefix: &str, retry_for: std::time::Duration) -> ObjectsConfig {
        format!("s3://{BUCKET}/{prefix}")
            .parse::<ObjectsConfig>()
            .expect("a valid URL")
            .with_endpoint(Some(self.endpoint.clone()))
            .with_retry_for(retry_for)
    }

    /// Kills the server at once (SIGKILL): what it was doing is cut.
    pub(crate) async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and data folder.
    pub(crate) async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        let port: u16 = self
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .context("the endpoint's port")?;
        let (child, endpoint) = spawn(self.root.path(), port).await?;
        anyhow::ensure!(endpoint == self.endpoint, "came back on {endpoint}");
        self.child = Some(child);
        Ok(())
    }

    /// The folder of the bucket: each object is the file `KEY` in it.
    pub(crate) fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(BUCKET)
    }

    /// The file of the blob object of `hash` under `prefix`.
    pub(crate) fn blob_file(&self, prefix: &str, hash: &AssetHash) -> PathBuf {
        let hex = hash.to_hex();
        self.bucket_dir()
            .join(prefix)
            .join("blobs")
            .join(&hex[..2])
            .join(hex)
    }

    /// Every object file under `prefix/under` (`blobs`, `packs`).
    pub(crate) fn objects(&self, prefix: &str, under: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut folders = vec![self.bucket_dir().join(prefix).join(under)];
        while let Some(folder) = folders.pop() {
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    folders.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found.sort();
        found
    }
}

/// Starts `s3s-fs` over `root` on `port` (0: any free one); returns it and
/// its endpoint, read from the line it logs once it listens.
async fn spawn(root: &Path, port: u16) -> Result<(Child, String)> {
    let mut child = Command::new(binary()?)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            SECRET_KEY,
        ])
        .arg(root)
        .env("RUST_LOG", "s3s_fs=info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting s3s-fs")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let endpoint = tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some((_, rest)) = line.split_once("server is running at ") {
                return Ok(rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string());
            }
        }
        bail!("s3s-fs exited before it listened")
    })
    .await
    .context("s3s-fs did not listen in time")??;
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, endpoint))
}
