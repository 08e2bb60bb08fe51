//! The argument groups more than one command takes, flattened into their
//! argument structs, and what each becomes: [`StoreArgs`] a store,
//! [`NetArgs`] a protocol and relay choice, [`EngineArgs`] an
//! [`EngineConfig`]. Declared once, so a flag means the same in every
//! command.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use can_sync::asset::stamp::{ClockBound, DEFAULT_MAX_SKEW_MS};
use can_sync::can::client::HttpCanOptions;
use can_sync::can::store::objects::ObjectsConfig;
use can_sync::can::{CanError, EmbeddedCan, HttpCan, SharedCan, StoreLimits};
use can_sync::engine::EngineConfig;
use can_sync::node::Congestion;
use can_sync::node::Protocol;
use clap::Args;

/// Where an embedded store keeps its bytes besides its folder:
/// `--blobs s3://BUCKET/PREFIX` puts large blobs and sealed pack segments in
/// an S3-compatible bucket, `--s3-endpoint URL` names a server other than
/// AWS. Credentials and region come from `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and `AWS_REGION`, never from a flag.
#[derive(Args, Clone)]
pub(crate) struct ObjectArgs {
    /// Keep large blobs (PREFIX/blobs/<hex[0..2]>/<hex>) and sealed pack
    /// segments (PREFIX/packs/…) in this S3 bucket; the index, the open
    /// segment and partial transfers stay in the store folder. Credentials
    /// from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    blobs: Option<ObjectsConfig>,
    /// URL of an S3-compatible server other than AWS (http://127.0.0.1:9000).
    #[arg(long, value_name = "URL", requires = "blobs")]
    s3_endpoint: Option<String>,
}

impl ObjectArgs {
    /// The object store these flags name, if any.
    pub(crate) fn config(&self) -> Option<ObjectsConfig> {
        self.blobs
            .clone()
            .map(|config| config.with_endpoint(self.s3_endpoint.clone()))
    }

    /// Opens the embedded store in `dir`, its bytes in object storage when
    /// these flags say so.
    pub(crate) fn open_store(
        &self,
        dir: &Path,
        limits: StoreLimits,
    ) -> Result<EmbeddedCan, CanError> {
        match self.config() {
            Some(objects) => EmbeddedCan::open_with_objects(dir, limits, &objects),
            None => EmbeddedCan::open(dir, limits),
        }
    }
}

/// Where the local store is: an HTTP CAN, or an embedded one in a folder.
#[derive(Args)]
pub(crate) struct StoreArgs {
    /// Base URL of a CAN service (e.g. http://127.0.0.1:8080).
    #[arg(long, conflicts_with = "store")]
    can: Option<String>,
    /// Bearer token for --can, when its server guards writes with one.
    #[arg(
        long,
        env = "CAN_SYNC_CAN_TOKEN",
        requires = "can",
        hide_env_values = true
    )]
    can_token: Option<String>,
    /// Folder of an embedded store.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Seconds a metadata change may be stamped ahead of this node's clock;
    /// one stamped further ahead is refused, so that no peer can freeze an
    /// asset's metadata with a far-future time (embedded stores; a CAN
    /// service applies its own).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_MAX_SKEW_MS as u64 / 1000)]
    max_clock_skew: u64,
    /// Most bytes of large assets received in part (kept so that a cut
    /// transfer resumes) and of transfers in flight, together; past it an
    /// idle partial asset is dropped, least recently written first
    /// (embedded stores).
    #[arg(long, value_name = "BYTES", default_value_t = StoreLimits::default().max_partial_bytes)]
    max_partial_bytes: u64,
    /// How long a large asset received in part is kept while no transfer
    /// continues it (90s, 30m, 12h, 7d; embedded stores).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = super::ticket::parse_duration)]
    partial_expiry: std::time::Duration,
    /// Bytes up to which a new asset is packed into a pack segment rather
    /// than a file of its own (embedded stores). Hidden: the default is
    /// measured; this is for measuring it again (PERFORMANCE.md).
    #[arg(
        long,
        value_name = "BYTES",
        env = "CAN_SYNC_PACKED_LIMIT",
        default_value_t = can_sync::can::store::INLINE_LIMIT,
        hide = true
    )]
    packed_limit: u64,
    #[command(flatten)]
    objects: ObjectArgs,
}

impl StoreArgs {
    /// The folder of the embedded store [`Self::open`] opens with
    /// `default_dir`; `None` for a CAN service.
    pub(crate) fn embedded_dir(&self, default_dir: Option<&Path>) -> Option<PathBuf> {
        if self.can.is_some() {
            return None;
        }
        self.store.clone().or(default_dir.map(Path::to_path_buf))
    }

    /// Opens the store: `--can`, else `--store`, else the embedded store in
    /// `default_dir` when the command has one. True when it is embedded
    /// (then the daemon can serve the CAN API itself).
    pub(crate) fn open(&self, default_dir: Option<&Path>) -> Result<(SharedCan, bool)> {
        self.open_with_cache(default_dir, StoreLimits::default().database_cache)
    }

    /// [`Self::open`], an embedded store with a database cache of
    /// `database_cache` bytes.
    fn open_with_cache(
        &self,
        default_dir: Option<&Path>,
        database_cache: usize,
    ) -> Result<(SharedCan, bool)> {
        match self.open_as(default_dir, database_cache, Access::Write)? {
            Opened::Service(can) => Ok((can, false)),
            Opened::Embedded(store) => Ok((store, true)),
        }
    }

    /// The store these flags name, an embedded one opened for `access`.
    fn open_as(
        &self,
        default_dir: Option<&Path>,
        database_cache: usize,
        access: Access,
    ) -> Result<Opened> {
        if let Some(url) = &self.can {
            if self.objects.config().is_some() {
                bail!("--blobs is where an embedded store keeps its bytes; a CAN service (--can) keeps its own");
            }
            let options = HttpCanOptions::default();
            let client = match &self.can_token {
                Some(token) => HttpCan::with_token(url, options, token)?,
                None => HttpCan::with_options(url, options)?,
            };
            return Ok(Opened::Service(Arc::new(client)));
        }
        let dir = match (&self.store, default_dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(default)) => default.to_path_buf(),
            (None, None) => bail!("no store given: pass --can URL or --store DIR"),
        };
        let limits = StoreLimits {
            clock: ClockBound {
                max_skew_ms: i64::try_from(self.max_clock_skew.saturating_mul(1000))
                    .unwrap_or(i64::MAX),
            },
            max_partial_bytes: self.max_partial_bytes,
            partial_expiry: self.partial_expiry,
            packed_limit: self.packed_limit,
            database_cache,
            ..StoreLimits::default()
        };
        let opened = match access {
            Access::Write => self.objects.open_store(&dir, limits),
            Access::Read => EmbeddedCan::open_to_read(&dir, limits, self.objects.config().as_ref()),
        };
        match opened {
            Ok(store) => Ok(Opened::Embedded(Arc::new(store))),
            Err(err @ CanError::InUse(_)) => bail!(
                "{err}: reach a running node's store through its CAN API instead, \
                 with --can http://ADDR (the daemon's --http address)"
            ),
            Err(err) => Err(err).with_context(|| format!("opening store in {}", dir.display())),
        }
    }
}

/// What a command opens an embedded store for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// To read and write; made when missing.
    Write,
    /// Only to read: it must exist, and nothing of it changes.
    Read,
}

/// A store as a command opened it.
pub(crate) enum Opened {
    /// A CAN service, through its HTTP API.
    Service(SharedCan),
    /// An embedded store.
    Embedded(Arc<EmbeddedCan>),
}

impl Opened {
    /// The store, whichever it is.
    pub(crate) fn can(&self) -> SharedCan {
        match self {
            Self::Service(can) => can.clone(),
            Self::Embedded(store) => store.clone(),
        }
    }
}

/// A node's store, as every command but the daemon names it: `--can URL`,
/// `--store DIR`, or `--data-dir DIR`, the folder a daemon runs in, whose
/// embedded store is `DIR/store`.
#[derive(Args)]
pub(crate) struct NodeStoreArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Folder of a node (what its daemon was given as --data-dir): its
    /// embedded store.
    #[arg(long, conflicts_with_all = ["can", "store"])]
    data_dir: Option<PathBuf>,
}

impl NodeStoreArgs {
    /// The node folder of `--data-dir`, when given.
    pub(crate) fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// Opens the store these flags name; see [`StoreArgs::open`].
    pub(crate) fn open(&self) -> Result<(SharedCan, bool)> {
        let default = self.data_dir.as_ref().map(|dir| node_store(dir));
        self.store.open(default.as_deref())
    }

    /// The store these flags name, for a command that only reads it
    /// (`fsck`, `export`): an embedded store is opened only to be read
    /// ([`EmbeddedCan::open_to_read`]), so a folder without a store's
    /// database is named as such instead of being made a new, empty store
    /// that would pass every check, and nothing of the store changes.
    pub(crate) fn open_to_read(&self) -> Result<Opened> {
        let default = self.data_dir.as_ref().map(|dir| node_store(dir));
        if let Some(dir) = self.store.embedded_dir(default.as_deref()) {
            match EmbeddedCan::require_existing(&dir) {
                Ok(()) => {}
                Err(CanError::Storage(why)) => bail!("{why}"),
                Err(err) => return Err(err.into()),
            }
        }
        self.store.open_as(
            default.as_deref(),
            StoreLimits::default().database_cache,
            Access::Read,
        )
    }

    /// [`Self::open`] for a bulk load: an embedded store gets a database
    /// cache of `database_cache` bytes (a load's is
    /// [`load_cache`](can_sync::can::store::load_cache)).
    /// The embedded store these flags name, opened to write: for `fsck
    /// --repair`, which changes the store itself (a CAN service is refused).
    pub(crate) fn open_embedded(&self) -> Result<Arc<EmbeddedCan>> {
        let default = self.data_dir.as_ref().map(|dir| node_store(dir));
        match self.store.open_as(
            default.as_deref(),
            StoreLimits::default().database_cache,
            Access::Write,
        )? {
            Opened::Embedded(store) => Ok(store),
            Opened::Service(_) => bail!("a CAN service (--can) is not an embedded store"),
        }
    }

    pub(crate) fn open_for_load(&self, database_cache: usize) -> Result<(SharedCan, bool)> {
        let default = self.data_dir.as_ref().map(|dir| node_store(dir));
        self.store
            .open_with_cache(default.as_deref(), database_cache)
    }
}

/// The embedded store of a node's data folder.
pub(crate) fn node_store(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}

#[derive(Args)]
pub(crate) struct NetArgs {
    /// No relays and no discovery: dial only the addresses in tickets.
    #[arg(long)]
    pub(crate) no_relay: bool,
    /// Protocol to speak when dialling: 2 (pipelined; falls back to 1 when the
    /// peer lacks it) or 1 (the original protocol, the baseline).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    protocol: u8,
    /// QUIC congestion controller: auto (the default: cubic on a path whose
    /// minimum RTT is under 4 ms, bbr on a longer one, spared the losses of a
    /// path that loses under 2%), cubic (loss-based, fastest on a LAN) or bbr
    /// (the QUIC stack's BBRv3 as it is: paces at the measured bottleneck
    /// rate; far faster than cubic on long paths with random loss, but now
    /// and then held to half of such a path). See PERFORMANCE.md.
    #[arg(long, default_value_t = Congestion::default())]
    pub(crate) congestion: Congestion,
}

impl NetArgs {
    /// The protocol `--protocol` names (clap has refused anything but 1 or 2).
    pub(crate) fn protocol(&self) -> Protocol {
        match self.protocol {
            1 => Protocol::V1,
            _ => Protocol::V2,
        }
    }
}

/// Knobs of the v2 engine ([`can_sync::engine`]); defaults are measured (PERFORMANCE.md).
#[derive(Args)]
pub(crate) struct EngineArgs {
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
    /// Send and take large assets whole, checked at their end, instead of
    /// by verified ranges (which resume a cut transfer): the baseline that
    /// measurements compare against.
    #[arg(long)]
    no_ranges: bool,
}

impl EngineArgs {
    /// The engine configuration these flags describe; knobs without a flag
    /// keep their defaults.
    pub(crate) fn config(&self) -> EngineConfig {
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
            ranges: !self.no_ranges,
            ..EngineConfig::default()
        }
    }
}

/// Refuses to serve the CAN API's writes beyond loopback without a token:
/// anyone who reaches the port could otherwise add and change assets.
/// `serves_can`: the server on `addr` serves the CAN API (a daemon's --http
/// serves only metrics and status over a CAN it does not hold); `flag` names
/// the token's flag in the error.
pub(crate) fn check_exposure(
    addr: std::net::SocketAddr,
    serves_can: bool,
    token: Option<&str>,
    flag: &str,
) -> Result<()> {
    if let Some(token) = token {
        anyhow::ensure!(!token.trim().is_empty(), "{flag} is empty");
        return Ok(());
    }
    if serves_can && !addr.ip().is_loopback() {
        bail!(
            "{addr} is not a loopback address, and the CAN API served there would take \
             writes from anyone who reaches it: give {flag} (or bind 127.0.0.1)"
        );
    }
    Ok(())
}
