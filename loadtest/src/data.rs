//! Test data: what assets a scenario holds ([`Plan`]), their bytes and
//! metadata ([`Gen::make`]), and loading them into a CAN ([`load`]) or
//! straight into embedded stores no daemon has open yet ([`into_stores`]).
//!
//! Every asset is a pure function of (salt, index), so the harness keeps only
//! hashes and metadata in memory, and two nodes that must share an asset get
//! the same bytes. Random bytes are incompressible; text is JSON-like records
//! from a small vocabulary, which compress several times.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use can_sync::asset::{AssetHash, Bundle};
use can_sync::can::{Can, EmbeddedCan, HttpCan, StoreLimits};
use can_sync::pb;
use futures::{StreamExt, TryStreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};

use crate::retry::retry;

/// Pushes in flight while loading.
const LOAD_CONCURRENCY: usize = 8;
/// Assets per commit when loading a store directly ([`into_stores`]).
const STORE_BATCH: usize = 1024;
/// Smallest asset of the log-normal plans.
const MIN_ASSET: u64 = 1024;
/// Median of the log-normal plans' sizes.
const LOGNORMAL_MEDIAN: f64 = 64.0 * 1024.0;
/// Spread (sigma of ln size) of the log-normal plans.
const LOGNORMAL_SIGMA: f64 = 2.0;

/// What an asset's bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Content {
    /// Uniform random bytes: incompressible.
    Random,
    /// JSON-like text: compressible.
    Text,
}

/// One asset to create.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Position in the scenario; with the salt, determines the bytes.
    pub(crate) index: u64,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Kind of bytes.
    pub(crate) content: Content,
}

/// An asset as it was loaded: what every node must end up holding.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    /// BLAKE3 of the bytes.
    pub(crate) hash: AssetHash,
    /// Size in bytes.
    pub(crate) size: u64,
    /// The metadata pushed with it.
    pub(crate) meta: pb::AssetMeta,
}

/// `count` assets of `size` bytes.
pub(crate) fn fixed(count: u64, size: u64, content: Content) -> Vec<Plan> {
    (0..count)
        .map(|index| Plan {
            index,
            size,
            content,
        })
        .collect()
}

/// Assets of `size` bytes adding up to `total` (at least one).
pub(crate) fn total_of(total: u64, size: u64, content: Content) -> Vec<Plan> {
    fixed((total / size).max(1), size, content)
}

/// Log-normal sizes (median 64 KiB) between 1 KiB and `max`, adding up to
/// `total`; every other asset, picked at random, is text.
pub(crate) fn lognormal(total: u64, max: u64, seed: u64) -> Vec<Plan> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut plans = Vec::new();
    let mut sum = 0;
    while sum < total {
        // Box-Muller: one standard normal from two uniforms.
        let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let size = (LOGNORMAL_MEDIAN * (LOGNORMAL_SIGMA * z).exp()) as u64;
        let size = size.clamp(MIN_ASSET, max).min((total - sum).max(MIN_ASSET));
        let content = if rng.random_bool(0.5) {
            Content::Text
        } else {
            Content::Random
        };
        plans.push(Plan {
            index: plans.len() as u64,
            size,
            content,
        });
        sum += size;
    }
    plans
}

/// Makes the assets of one run: same (salt, index), same bytes and metadata.
#[derive(Debug, Clone)]
pub(crate) struct Gen {
    /// Names the scenario in the metadata.
    pub(crate) tag: Arc<str>,
    /// Makes runs differ.
    pub(crate) salt: u64,
    /// Creation time of asset 0 (Unix ms); asset i was created i ms later, so
    /// an asset loaded into two nodes carries the same metadata on both. A
    /// day back, so that the stamps of tens of millions of assets stay in the
    /// past: stores refuse metadata stamped far ahead of their clock.
    pub(crate) base_ms: i64,
}

impl Gen {
    /// A generator for `tag` with a fresh time base.
    pub(crate) fn new(tag: &str, salt: u64) -> Self {
        Self {
            tag: tag.into(),
            salt,
            base_ms: can_sync::clock::now_ms() - 24 * 3600 * 1000,
        }
    }

    /// The bundle (bytes and metadata) of `plan`.
    pub(crate) fn make(&self, plan: Plan) -> Bundle {
        let mut rng = SmallRng::seed_from_u64(self.salt.rotate_left(32) ^ plan.index);
        let size = plan.size as usize;
        let (data, mime, ext) = match plan.content {
            Content::Random => {
                let mut data = vec![0u8; size];
                rng.fill_bytes(&mut data);
                (data, "application/octet-stream", "bin")
            }
            Content::Text => (
                text(&mut rng, size, self.salt, plan.index),
                "application/json",
                "jsonl",
            ),
        };
        let hash = AssetHash::of(&data);
        let tag = &self.tag;
        let at = self.base_ms + plan.index as i64;
        let meta = pb::AssetMeta {
            name: format!("{tag}-{:06}.{ext}", plan.index),
            mime_type: mime.into(),
            description: format!("loadtest {tag} asset {} of {} bytes", plan.index, plan.size),
            tags: vec![
                "loadtest".into(),
                tag.to_string(),
                format!("n{}", plan.index % 7),
            ],
            // A few trashed ones, so trash travels too.
            is_trashed: plan.index % 50 == 49,
            created_at_ms: at,
            meta_updated_at_ms: at,
        };
        Bundle {
            hash,
            data: data.into(),
            meta,
        }
    }
}

/// `size` bytes of newline-separated JSON records, unique per (salt, index).
fn text(rng: &mut SmallRng, size: usize, salt: u64, index: u64) -> Vec<u8> {
    const USERS: [&str; 8] = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ];
    const EVENTS: [&str; 6] = ["view", "click", "purchase", "login", "logout", "search"];
    const PATHS: [&str; 6] = [
        "/",
        "/docs",
        "/docs/sync",
        "/pricing",
        "/blog/iroh",
        "/account",
    ];
    const TAGS: [&str; 6] = ["red", "green", "blue", "fast", "slow", "new"];
    let mut out = String::with_capacity(size + 256);
    let _ = writeln!(out, "{{\"salt\":{salt},\"asset\":{index}}}");
    let mut id = 0u64;
    while out.len() < size {
        let _ = writeln!(
            out,
            "{{\"id\":{id},\"user\":\"{}\",\"event\":\"{}\",\"path\":\"{}\",\"ts\":{},\"tags\":[\"{}\",\"{}\"],\"score\":{:.3}}}",
            USERS[rng.random_range(0..USERS.len())],
            EVENTS[rng.random_range(0..EVENTS.len())],
            PATHS[rng.random_range(0..PATHS.len())],
            1_700_000_000_000u64 + rng.random_range(0..10_000_000u64),
            TAGS[rng.random_range(0..TAGS.len())],
            TAGS[rng.random_range(0..TAGS.len())],
            rng.random::<f64>(),
        );
        id += 1;
    }
    let mut bytes = out.into_bytes();
    bytes.truncate(size);
    bytes
}

/// Creates and pushes every planned asset into `can`, [`LOAD_CONCURRENCY`] at
/// a time; `done` counts finished assets for the progress line.
pub(crate) async fn load(
    can: &HttpCan,
    plans: &[Plan],
    gen: &Gen,
    done: &Arc<AtomicU64>,
) -> Result<Vec<Loaded>> {
    futures::stream::iter(plans.iter().copied())
        .map(|plan| {
            let gen = gen.clone();
            async move {
                let bundle = tokio::task::spawn_blocking(move || gen.make(plan))
                    .await
                    .context("generator task")?;
                let loaded = push(can, bundle).await?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, anyhow::Error>(loaded)
            }
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .try_collect()
        .await
}

/// Pushes one bundle (retrying transient failures) and returns what was loaded.
pub(crate) async fn push(can: &HttpCan, bundle: Bundle) -> Result<Loaded> {
    let hash = bundle.hash;
    let size = bundle.data.len() as u64;
    let meta = bundle.meta.clone();
    retry(&format!("pushing {}", hash.short()), || {
        can.push(bundle.clone())
    })
    .await?;
    Ok(Loaded { hash, size, meta })
}

/// `count` assets of `size` bytes from index `first` on, every other one
/// text: the archives of the runs that load stores directly.
pub(crate) fn alternating(first: u64, count: u64, size: u64) -> Vec<Plan> {
    (0..count)
        .map(|i| Plan {
            index: first + i,
            size,
            content: if i.is_multiple_of(2) {
                Content::Random
            } else {
                Content::Text
            },
        })
        .collect()
}

/// Puts every planned asset into the embedded store in each of `stores`,
/// through the store API, [`STORE_BATCH`] to a commit, before any daemon
/// opens them: nodes that share an archive from the start, as nodes do
/// that have synced before, with no session to seed them. What every
/// store now holds.
pub(crate) async fn into_stores(
    stores: &[PathBuf],
    gen: &Gen,
    plans: &[Plan],
) -> Result<Vec<Loaded>> {
    let bundles: Vec<Bundle> = plans.iter().map(|plan| gen.make(*plan)).collect();
    for dir in stores {
        let store = EmbeddedCan::open(dir, StoreLimits::default())
            .with_context(|| format!("opening {}", dir.display()))?;
        for chunk in bundles.chunks(STORE_BATCH) {
            let batch = chunk
                .iter()
                .cloned()
                .map(Bundle::verify)
                .collect::<Result<Vec<_>, _>>()?;
            for answer in store.push_batch(batch).await? {
                answer?;
            }
        }
        // Closing waits for the store's writer to end (and save its coded
        // cells), so the daemon finds the folder free.
        tokio::task::spawn_blocking(move || drop(store)).await?;
    }
    Ok(bundles
        .into_iter()
        .map(|b| Loaded {
            hash: b.hash,
            size: b.data.len() as u64,
            meta: b.meta,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_deterministic_and_distinct() {
        let plan = Plan {
            index: 3,
            size: 10_000,
            content: Content::Text,
        };
        let (one, two) = (Gen::new("t", 1), Gen::new("t", 2));
        let a = one.make(plan);
        assert_eq!(a.data.len(), 10_000);
        assert_eq!(a, one.clone().make(plan));
        assert_ne!(a.hash, two.make(plan).hash);
        assert_ne!(a.hash, one.make(Plan { index: 4, ..plan }).hash);
        assert_eq!(a.hash, AssetHash::of(&a.data));
    }

    #[test]
    fn text_compresses_and_random_does_not() {
        let size = 256 * 1024;
        let gen = Gen::new("t", 9);
        let text = gen
            .make(Plan {
                index: 0,
                size,
                content: Content::Text,
            })
            .data;
        let random = gen
            .make(Plan {
                index: 0,
                size,
                content: Content::Random,
            })
            .data;
        let ratio = |d: &[u8]| d.len() as f64 / zstd::encode_all(d, 3).unwrap().len() as f64;
        assert!(ratio(&text) > 3.0, "text ratio {}", ratio(&text));
        assert!(ratio(&random) < 1.01);
    }

    #[test]
    fn lognormal_plans_add_up_and_stay_in_bounds() {
        let plans = lognormal(64 << 20, 8 << 20, 5);
        let total: u64 = plans.iter().map(|p| p.size).sum();
        assert!((64 << 20..(64 << 20) + MIN_ASSET).contains(&total));
        assert!(plans
            .iter()
            .all(|p| (MIN_ASSET..=8 << 20).contains(&p.size)));
        assert!(plans.iter().any(|p| p.content == Content::Text));
        assert!(plans.iter().any(|p| p.content == Content::Random));
        assert!(plans.len() > 20);
    }
}
