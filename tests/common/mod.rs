//! Helpers shared by the integration tests: stores of every backend, nodes on
//! loopback with relays and discovery off, generated assets, snapshots.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use can_sync::asset::{AssetHash, Bundle, MetaUpdate, Summary};
use can_sync::can::server::{self, ServerConfig};
use can_sync::can::{Can, EmbeddedCan, HttpCan, SharedCan, StoreLimits};
use can_sync::node::{self, Access, EndpointOptions, Node, Right};
use can_sync::pb;
use futures::StreamExt;

pub(crate) mod browser;
pub(crate) mod process;
pub(crate) mod s3;

/// Every network test fails after this instead of hanging.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);

/// The CAN backends every sync test runs against.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Backend {
    /// The embedded store, on disk.
    Embedded,
    /// The reference HTTP server over a disk store, reached by `HttpCan`.
    Http,
}

pub(crate) const BACKENDS: [Backend; 2] = [Backend::Embedded, Backend::Http];

/// A store for a test, and what keeps it alive.
pub(crate) struct TestStore {
    pub(crate) can: SharedCan,
    /// The store the HTTP server serves, for direct inspection.
    pub(crate) inner: Arc<EmbeddedCan>,
    _dir: tempfile::TempDir,
    _server: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) async fn store(backend: Backend) -> Result<TestStore> {
    let dir = tempfile::tempdir()?;
    let inner = Arc::new(EmbeddedCan::open(dir.path(), StoreLimits::default())?);
    Ok(match backend {
        Backend::Embedded => TestStore {
            can: inner.clone(),
            inner,
            _dir: dir,
            _server: None,
        },
        Backend::Http => {
            let (can, server) = over_http(inner.clone()).await?;
            TestStore {
                can,
                inner,
                _dir: dir,
                _server: Some(server),
            }
        }
    })
}

/// `served` behind the reference HTTP server on a free loopback port, and
/// an `HttpCan` that reaches it (its events over SSE, its change log over
/// `GET /sync/changes`); the server runs until the handle is dropped or
/// aborted.
pub(crate) async fn over_http(
    served: SharedCan,
) -> Result<(SharedCan, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        server::serve(
            listener,
            served,
            ServerConfig::default(),
            std::future::pending(),
        )
        .await
        .expect("test CAN server failed");
    });
    Ok((Arc::new(HttpCan::new(&url)?), server))
}

/// `dialer` follows `peer` live in the background until shutdown.
pub(crate) fn follow(dialer: &Node, peer: node::Ticket) -> tokio::task::JoinHandle<Result<()>> {
    let dialer = dialer.clone();
    tokio::spawn(async move {
        dialer
            .sync_with(&peer, node::Protocol::V2)
            .await
            .context("live link")?;
        Ok(())
    })
}

/// A node on 127.0.0.1 with a fresh key, relays and discovery off, open to
/// every dialer with the right to write (a test rig, as `--open write`).
pub(crate) async fn node(can: SharedCan) -> Result<Node> {
    node_with_access(can, Access::open(Right::Write)).await
}

/// A node on 127.0.0.1 admitting only the ids of `allow`, with write.
pub(crate) async fn node_allowing(can: SharedCan, allow: Vec<iroh::EndpointId>) -> Result<Node> {
    node_with_access(can, Access::closed().allow_all(allow, Right::Write)).await
}

/// A node on 127.0.0.1 with a fresh key and `access`.
pub(crate) async fn node_with_access(can: SharedCan, access: Access) -> Result<Node> {
    node_with_key(can, iroh::SecretKey::generate(), access).await
}

/// A node on 127.0.0.1 with `secret_key` and `access`.
pub(crate) async fn node_with_key(
    can: SharedCan,
    secret_key: iroh::SecretKey,
    access: Access,
) -> Result<Node> {
    let access = Arc::new(access);
    let endpoint = node::bind(&EndpointOptions {
        secret_key,
        listen: Some("127.0.0.1:0".parse()?),
        relay: false,
        access: access.clone(),
        congestion: Default::default(),
    })
    .await?;
    Ok(Node::new(endpoint, can).with_access(access))
}

/// Starts a node's accept loop in the background.
pub(crate) fn serve(node: &Node) -> tokio::task::JoinHandle<()> {
    let node = node.clone();
    tokio::spawn(async move { node.accept_loop().await })
}

/// Deterministic asset number `i` of `len` bytes, with metadata stamped `at`.
pub(crate) fn bundle(i: u64, len: usize, at: i64) -> Bundle {
    let mut data = Vec::with_capacity(len);
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    Bundle {
        hash: AssetHash::of(&data),
        data: data.into(),
        meta: pb::AssetMeta {
            name: format!("asset-{i}"),
            mime_type: "application/octet-stream".into(),
            description: format!("asset {i}"),
            tags: vec!["test".into(), format!("n{}", i % 7)],
            created_at_ms: 1_000 + i as i64,
            meta_updated_at_ms: at,
            ..Default::default()
        },
    }
}

/// Everything a store holds: hash → (size, metadata).
pub(crate) async fn snapshot(can: &dyn Can) -> Result<BTreeMap<AssetHash, (u64, pb::AssetMeta)>> {
    let mut out = BTreeMap::new();
    for summary in can_sync::can::list_all(can).await? {
        let hash = summary.hash;
        let meta = can.meta(hash).await?.expect("listed asset has metadata");
        out.insert(hash, meta);
    }
    Ok(out)
}

/// Asserts both stores hold the same assets, metadata and bytes.
pub(crate) async fn assert_converged(a: &dyn Can, b: &dyn Can) -> Result<()> {
    let (left, right) = (snapshot(a).await?, snapshot(b).await?);
    assert_eq!(left.len(), right.len(), "asset counts differ");
    assert_eq!(left, right, "assets or metadata differ");
    let hashes: Vec<AssetHash> = left.keys().copied().collect();
    for chunk in hashes.chunks(50) {
        let pulled = b.pull(chunk).await?;
        assert!(pulled.missing.is_empty());
        for bundle in pulled.bundles {
            assert_eq!(AssetHash::of(&bundle.data), bundle.hash, "bytes differ");
        }
    }
    Ok(())
}

/// A store in memory, for tests that move hundreds of megabytes.
pub(crate) fn memory_store() -> Result<SharedCan> {
    Ok(Arc::new(EmbeddedCan::memory(StoreLimits::default())?))
}

/// Wraps a store and delays every push and pull: a deliberately slow CAN.
/// A receiving store can also hold every push until a [`Gate`] opens, and a
/// sending store can open a gate once it has handed out enough assets.
pub(crate) struct SlowCan {
    pub(crate) inner: SharedCan,
    pub(crate) push_delay: Duration,
    pub(crate) pull_delay: Duration,
    /// Pushes wait until this gate opens.
    pub(crate) push_gate: Option<Arc<Gate>>,
    /// Pulls count towards opening this gate.
    pub(crate) pull_opens: Option<Arc<Gate>>,
    /// Reads of a large asset's bytes count towards opening this gate.
    pub(crate) reads_open: Option<Arc<Gate>>,
    /// Ranged writes pass this many groups, then wait until the gate opens:
    /// a large asset held midway, as a slow source would leave it.
    pub(crate) ranges_gate: Option<(u64, Arc<Gate>)>,
    /// Listing calls (pages, coded probe and cells) wait at this meeting,
    /// as the party of this number, until every party arrived.
    pub(crate) meeting: Option<(Arc<Meeting>, usize)>,
}

/// Where several stores wait for each other: each [`SlowCan`] of a
/// meeting holds its first listing call until every one of them was asked
/// for one. Sessions with several sources then reconcile, and decide what
/// to claim, only once every session has begun, whatever the order their
/// connections came up in.
pub(crate) struct Meeting {
    arrived: std::sync::Mutex<HashSet<usize>>,
    parties: usize,
    open: tokio::sync::watch::Sender<bool>,
}

impl Meeting {
    /// A meeting of `parties` stores, numbered from 0.
    pub(crate) fn of(parties: usize) -> Arc<Self> {
        Arc::new(Self {
            arrived: Default::default(),
            parties,
            open: tokio::sync::watch::channel(false).0,
        })
    }

    async fn arrive(&self, party: usize) {
        let all = {
            let mut arrived = self.arrived.lock().expect("meeting lock");
            arrived.insert(party);
            arrived.len() >= self.parties
        };
        if all {
            self.open.send_replace(true);
        }
        let mut open = self.open.subscribe();
        // The sender lives as long as the meeting: waiting cannot fail.
        let _ = open.wait_for(|open| *open).await;
    }

    async fn wait(meeting: &Option<(Arc<Self>, usize)>) {
        if let Some((meeting, party)) = meeting {
            meeting.arrive(*party).await;
        }
    }
}

impl SlowCan {
    /// Delays only.
    pub(crate) fn delayed(inner: SharedCan, push_delay: Duration, pull_delay: Duration) -> Self {
        Self {
            inner,
            push_delay,
            pull_delay,
            push_gate: None,
            pull_opens: None,
            reads_open: None,
            ranges_gate: None,
            meeting: None,
        }
    }
}

/// A gate that opens once `after` assets were pulled through a [`SlowCan`]:
/// a receiver that reads nothing until the sender has sent a known amount.
pub(crate) struct Gate {
    open: tokio::sync::watch::Sender<bool>,
    after: u64,
    pulled: std::sync::atomic::AtomicU64,
}

impl Gate {
    /// A closed gate that opens after `after` pulled assets.
    pub(crate) fn after_pulls(after: u64) -> Arc<Self> {
        Arc::new(Self {
            open: tokio::sync::watch::channel(false).0,
            after,
            pulled: Default::default(),
        })
    }

    fn count(&self, assets: u64) {
        let before = self
            .pulled
            .fetch_add(assets, std::sync::atomic::Ordering::SeqCst);
        if before + assets >= self.after {
            self.open.send_replace(true);
        }
    }

    /// Opens it, whatever was counted.
    pub(crate) fn open(&self) {
        self.open.send_replace(true);
    }

    async fn pass(&self) {
        let mut open = self.open.subscribe();
        // The sender lives as long as the gate: waiting cannot fail.
        let _ = open.wait_for(|open| *open).await;
    }
}

#[async_trait::async_trait]
impl Can for SlowCan {
    async fn list_page(
        &self,
        after: Option<AssetHash>,
        limit: usize,
    ) -> Result<can_sync::can::Page<Summary, AssetHash>, can_sync::can::CanError> {
        Meeting::wait(&self.meeting).await;
        self.inner.list_page(after, limit).await
    }
    async fn list_since(
        &self,
        since: i64,
        after: Option<can_sync::can::SinceCursor>,
        limit: usize,
    ) -> Result<can_sync::can::Page<Summary, can_sync::can::SinceCursor>, can_sync::can::CanError>
    {
        self.inner.list_since(since, after, limit).await
    }
    async fn changes(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<can_sync::can::ChangePage, can_sync::can::CanError> {
        self.inner.changes(after, limit).await
    }
    async fn pull(
        &self,
        hashes: &[AssetHash],
    ) -> Result<can_sync::can::Pulled, can_sync::can::CanError> {
        tokio::time::sleep(self.pull_delay).await;
        let pulled = self.inner.pull(hashes).await?;
        if let Some(gate) = &self.pull_opens {
            gate.count(pulled.bundles.len() as u64);
        }
        Ok(pulled)
    }
    async fn push(&self, bundle: Bundle) -> Result<can_sync::can::Pushed, can_sync::can::CanError> {
        if let Some(gate) = &self.push_gate {
            gate.pass().await;
        }
        tokio::time::sleep(self.push_delay).await;
        self.inner.push(bundle).await
    }
    async fn apply_meta(&self, update: MetaUpdate) -> Result<bool, can_sync::can::CanError> {
        self.inner.apply_meta(update).await
    }
    async fn meta(
        &self,
        hash: AssetHash,
    ) -> Result<Option<(u64, pb::AssetMeta)>, can_sync::can::CanError> {
        self.inner.meta(hash).await
    }
    async fn stats(&self) -> Result<can_sync::can::StoreStats, can_sync::can::CanError> {
        self.inner.stats().await
    }
    async fn coded_cells(
        &self,
        start: usize,
        count: usize,
    ) -> Result<Option<Vec<can_sync::recon::riblt::Cell>>, can_sync::can::CanError> {
        Meeting::wait(&self.meeting).await;
        self.inner.coded_cells(start, count).await
    }
    async fn coded_probe(
        &self,
    ) -> Result<Option<can_sync::recon::riblt::estimate::Probe>, can_sync::can::CanError> {
        Meeting::wait(&self.meeting).await;
        self.inner.coded_probe().await
    }
    async fn subscribe(
        &self,
        after: Option<u64>,
    ) -> Result<can_sync::can::EventStream, can_sync::can::CanError> {
        self.inner.subscribe(after).await
    }
    async fn read_blob(
        &self,
        hash: AssetHash,
        offset: u64,
    ) -> Result<(u64, can_sync::can::ByteStream), can_sync::can::CanError> {
        tokio::time::sleep(self.pull_delay).await;
        if let Some(gate) = &self.reads_open {
            gate.count(1);
        }
        self.inner.read_blob(hash, offset).await
    }
    async fn outboard(
        &self,
        hash: AssetHash,
    ) -> Result<Option<can_sync::can::Outboard>, can_sync::can::CanError> {
        self.inner.outboard(hash).await
    }
    async fn keeps_outboards(&self) -> bool {
        self.inner.keeps_outboards().await
    }

    fn outboards_cost_a_request(&self) -> bool {
        self.inner.outboards_cost_a_request()
    }

    fn uploads_in_order(&self) -> bool {
        self.inner.uploads_in_order()
    }
    async fn write_blob(
        &self,
        hash: AssetHash,
        meta: pb::AssetMeta,
        body: can_sync::can::ByteStream,
    ) -> Result<can_sync::can::Pushed, can_sync::can::CanError> {
        tokio::time::sleep(self.push_delay).await;
        self.inner.write_blob(hash, meta, body).await
    }
    fn keeps_partials(&self) -> bool {
        self.inner.keeps_partials()
    }
    async fn resume_points(
        &self,
        hashes: &[AssetHash],
    ) -> Result<Vec<(AssetHash, Vec<std::ops::Range<u64>>)>, can_sync::can::CanError> {
        self.inner.resume_points(hashes).await
    }
    async fn write_ranges(
        &self,
        meta: pb::AssetMeta,
        outboard: can_sync::can::Outboard,
        groups: can_sync::can::GroupStream,
    ) -> Result<can_sync::can::RangesWritten, can_sync::can::CanError> {
        let groups = match &self.ranges_gate {
            Some((passing, gate)) => {
                let (passing, gate) = (*passing, gate.clone());
                groups
                    .enumerate()
                    .then(move |(n, group)| {
                        let gate = gate.clone();
                        async move {
                            if n as u64 >= passing {
                                gate.pass().await;
                            }
                            group
                        }
                    })
                    .boxed()
            }
            None => groups,
        };
        self.inner.write_ranges(meta, outboard, groups).await
    }
    async fn partial_stats(&self) -> Result<can_sync::can::PartialStats, can_sync::can::CanError> {
        self.inner.partial_stats().await
    }
    async fn partial_assets(
        &self,
        limit: usize,
    ) -> Result<Vec<can_sync::can::PartialAsset>, can_sync::can::CanError> {
        self.inner.partial_assets(limit).await
    }
}

/// Reads one frame a daemon sent on a raw QUIC stream, header and payload,
/// without the library's limits (trusted: the daemon is not under test where
/// this is used); its type byte and payload.
pub(crate) async fn read_frame(recv: &mut iroh::endpoint::RecvStream) -> Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    recv.read_exact(&mut header).await?;
    let mut payload = vec![0u8; u32::from_be_bytes(header[1..].try_into()?) as usize];
    recv.read_exact(&mut payload).await?;
    Ok((header[0], payload))
}

/// Waits until `conn` closes; the application error code it closed with, if
/// either side closed it on purpose.
pub(crate) async fn close_code(conn: &iroh::endpoint::Connection) -> Option<u64> {
    match conn.closed().await {
        iroh::endpoint::ConnectionError::ApplicationClosed(close) => {
            Some(close.error_code.into_inner())
        }
        _ => None,
    }
}

/// Waits until `can` holds every asset of `hashes`, watching its change events.
pub(crate) async fn await_assets(can: &dyn Can, hashes: &[AssetHash]) -> Result<()> {
    let mut events = can.subscribe(None).await?;
    let mut missing: HashSet<AssetHash> = HashSet::new();
    for hash in hashes {
        if can.meta(*hash).await?.is_none() {
            missing.insert(*hash);
        }
    }
    let waiting = async {
        while !missing.is_empty() {
            let event = events.next().await.context("event stream ended")??;
            missing.remove(&event.hash);
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(TIMEOUT, waiting)
        .await
        .with_context(|| format!("{} assets never arrived", missing.len()))?
}

/// Where a rotten [`FlakyCan`] flips a byte of a large asset: in its
/// fourth group of 1 MiB.
pub(crate) const ROTTEN_AT: u64 = 3 * 1024 * 1024 + 5;

/// Wraps a store whose writes and metadata lookups fail (503-like,
/// transient) while it is "sick"; it counts the failures and wakes
/// [`FlakyCan::first_failure`] at the first. While "rotten", the bytes it
/// gives out are wrong (one flipped: the first of a small asset's, the one
/// at [`ROTTEN_AT`] of a large one's), as a bad disk or a lying source's;
/// its outboards stay true. Once [`FlakyCan::cut_reads_at`] is set, a large
/// asset's reads fail at that offset, as a source whose disk fails midway.
pub(crate) struct FlakyCan {
    pub(crate) inner: SharedCan,
    sick: std::sync::atomic::AtomicBool,
    rotten: std::sync::atomic::AtomicBool,
    cut_at: std::sync::atomic::AtomicU64,
    failures: std::sync::atomic::AtomicU64,
    failed: tokio::sync::Notify,
}

impl FlakyCan {
    pub(crate) fn new(inner: SharedCan) -> Self {
        Self {
            inner,
            sick: Default::default(),
            rotten: Default::default(),
            cut_at: std::sync::atomic::AtomicU64::new(u64::MAX),
            failures: Default::default(),
            failed: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn set_sick(&self, sick: bool) {
        self.sick.store(sick, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn cut_reads_at(&self, offset: u64) {
        self.cut_at
            .store(offset, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn set_rotten(&self, rotten: bool) {
        self.rotten
            .store(rotten, std::sync::atomic::Ordering::SeqCst);
    }

    /// Resolves once a call has failed because the store was sick.
    pub(crate) async fn first_failure(&self) {
        let notified = self.failed.notified();
        if self.failures.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            notified.await;
        }
    }

    fn check(&self) -> Result<(), can_sync::can::CanError> {
        if self.sick.load(std::sync::atomic::Ordering::SeqCst) {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.failed.notify_waiters();
            return Err(can_sync::can::CanError::Unavailable("sick".into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Can for FlakyCan {
    async fn list_page(
        &self,
        after: Option<AssetHash>,
        limit: usize,
    ) -> Result<can_sync::can::Page<Summary, AssetHash>, can_sync::can::CanError> {
        self.inner.list_page(after, limit).await
    }
    async fn list_since(
        &self,
        since: i64,
        after: Option<can_sync::can::SinceCursor>,
        limit: usize,
    ) -> Result<can_sync::can::Page<Summary, can_sync::can::SinceCursor>, can_sync::can::CanError>
    {
        self.inner.list_since(since, after, limit).await
    }
    async fn changes(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<can_sync::can::ChangePage, can_sync::can::CanError> {
        self.inner.changes(after, limit).await
    }
    async fn pull(
        &self,
        hashes: &[AssetHash],
    ) -> Result<can_sync::can::Pulled, can_sync::can::CanError> {
        let mut pulled = self.inner.pull(hashes).await?;
        if self.rotten.load(std::sync::atomic::Ordering::SeqCst) {
            for bundle in &mut pulled.bundles {
                let mut data = bundle.data.to_vec();
                if let Some(first) = data.first_mut() {
                    *first ^= 0xff;
                }
                bundle.data = data.into();
            }
        }
        Ok(pulled)
    }
    async fn push(&self, bundle: Bundle) -> Result<can_sync::can::Pushed, can_sync::can::CanError> {
        self.check()?;
        self.inner.push(bundle).await
    }
    async fn apply_meta(&self, update: MetaUpdate) -> Result<bool, can_sync::can::CanError> {
        self.check()?;
        self.inner.apply_meta(update).await
    }
    async fn meta(
        &self,
        hash: AssetHash,
    ) -> Result<Option<(u64, pb::AssetMeta)>, can_sync::can::CanError> {
        self.check()?;
        self.inner.meta(hash).await
    }
    async fn stats(&self) -> Result<can_sync::can::StoreStats, can_sync::can::CanError> {
        self.inner.stats().await
    }
    async fn coded_cells(
        &self,
        start: usize,
        count: usize,
    ) -> Result<Option<Vec<can_sync::recon::riblt::Cell>>, can_sync::can::CanError> {
        self.inner.coded_cells(start, count).await
    }
    async fn coded_probe(
        &self,
    ) -> Result<Option<can_sync::recon::riblt::estimate::Probe>, can_sync::can::CanError> {
        self.inner.coded_probe().await
    }
    async fn subscribe(
        &self,
        after: Option<u64>,
    ) -> Result<can_sync::can::EventStream, can_sync::can::CanError> {
        self.inner.subscribe(after).await
    }
    async fn read_blob(
        &self,
        hash: AssetHash,
        offset: u64,
    ) -> Result<(u64, can_sync::can::ByteStream), can_sync::can::CanError> {
        use futures::StreamExt as _;
        let (size, body) = self.inner.read_blob(hash, offset).await?;
        let rotten = self.rotten.load(std::sync::atomic::Ordering::SeqCst);
        let cut_at = self.cut_at.load(std::sync::atomic::Ordering::SeqCst);
        let mut at = offset;
        let body = body
            .map(move |piece| {
                let piece = piece?;
                let (start, end) = (at, at + piece.len() as u64);
                at = end;
                if end > cut_at {
                    return Err(can_sync::can::CanError::Storage(format!(
                        "read failed at byte {cut_at}"
                    )));
                }
                if rotten && (start..end).contains(&ROTTEN_AT) {
                    let mut bytes = piece.to_vec();
                    bytes[(ROTTEN_AT - start) as usize] ^= 0xff;
                    return Ok(bytes.into());
                }
                Ok(piece)
            })
            .boxed();
        Ok((size, body))
    }
    async fn outboard(
        &self,
        hash: AssetHash,
    ) -> Result<Option<can_sync::can::Outboard>, can_sync::can::CanError> {
        self.inner.outboard(hash).await
    }
    async fn keeps_outboards(&self) -> bool {
        self.inner.keeps_outboards().await
    }

    fn outboards_cost_a_request(&self) -> bool {
        self.inner.outboards_cost_a_request()
    }

    fn uploads_in_order(&self) -> bool {
        self.inner.uploads_in_order()
    }
    async fn write_blob(
        &self,
        hash: AssetHash,
        meta: pb::AssetMeta,
        body: can_sync::can::ByteStream,
    ) -> Result<can_sync::can::Pushed, can_sync::can::CanError> {
        self.check()?;
        self.inner.write_blob(hash, meta, body).await
    }
}

/// Waits until `count` attackers have said on `armed` that they are in
/// place, within [`TIMEOUT`]; an attacker that ends first fails the wait
/// with its own error, at once.
pub(crate) async fn await_armed<T: 'static>(
    armed: &mut tokio::sync::mpsc::Receiver<()>,
    attackers: &mut tokio::task::JoinSet<Result<T>>,
    count: usize,
) -> Result<()> {
    let arming = async {
        let mut ready = 0;
        while ready < count {
            tokio::select! {
                Some(()) = armed.recv() => ready += 1,
                Some(ended) = attackers.join_next() => {
                    ended??;
                    anyhow::bail!("an attacker stopped before the good peer started");
                }
                else => anyhow::bail!("the attackers are gone"),
            }
        }
        Ok(())
    };
    tokio::time::timeout(TIMEOUT, arming)
        .await
        .context("the attackers never all got in place")?
}
