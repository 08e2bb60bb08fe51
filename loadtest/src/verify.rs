//! Did a run converge? Every run ends here, and a run that did not converge is
//! reported `ok: false` whatever its speed.
//!
//! The check, against what the harness loaded:
//! 1. every node's full hash set (`GET /sync/hashes`) equals the expected set,
//!    with the expected sizes;
//! 2. every node's summary of every asset (creation time, metadata time and the
//!    BLAKE3 digest of its metadata) equals the first node's, so all metadata
//!    converged, not only the bytes;
//! 3. a sample of assets spread over the set is pulled from every node: the
//!    bytes hash to their name and have the right length, and the metadata is
//!    exactly what was loaded.

use std::collections::HashMap;

use anyhow::Result;
use can_sync::asset::AssetHash;
use can_sync::can::{Can, HttpCan};

use crate::data::Loaded;
use crate::retry::retry;

/// Assets sampled for the byte and metadata comparison.
pub(crate) const SAMPLE: usize = 24;
/// Bound on the bytes sampled per node, so large scenarios check quickly.
const SAMPLE_BYTES: u64 = 256 << 20;
/// Problems listed in full before the rest are only counted.
const MAX_LISTED: usize = 6;

/// The outcome of a check.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// What is wrong; empty when every node converged.
    pub(crate) problems: Vec<String>,
}

impl Verdict {
    /// True when every node holds exactly the expected assets and metadata.
    pub(crate) fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems in one line, for reports.
    pub(crate) fn summary(&self) -> String {
        let mut shown: Vec<&str> = self
            .problems
            .iter()
            .take(MAX_LISTED)
            .map(|s| s.as_str())
            .collect();
        let more = self.problems.len().saturating_sub(MAX_LISTED);
        let more = format!("and {more} more");
        if self.problems.len() > MAX_LISTED {
            shown.push(&more);
        }
        shown.join("; ")
    }
}

/// Checks that every node in `nodes` (name, client) holds exactly `expected`.
pub(crate) async fn check(nodes: &[(&str, &HttpCan)], expected: &[Loaded]) -> Result<Verdict> {
    let mut verdict = Verdict::default();
    let want: HashMap<AssetHash, &Loaded> = expected.iter().map(|l| (l.hash, l)).collect();

    let mut listings = Vec::new();
    for (name, can) in nodes {
        let list = retry(&format!("listing {name}"), || {
            can_sync::can::list_all(*can as &dyn can_sync::can::Can)
        })
        .await?;
        let mut by_hash = HashMap::with_capacity(list.len());
        for summary in list {
            by_hash.insert(summary.hash, summary);
        }
        let missing = want.keys().filter(|h| !by_hash.contains_key(h)).count();
        let extra = by_hash.keys().filter(|h| !want.contains_key(h)).count();
        let wrong_size = by_hash
            .iter()
            .filter(|(h, s)| want.get(h).is_some_and(|l| l.size != s.size))
            .count();
        if missing + extra + wrong_size > 0 {
            verdict.problems.push(format!(
                "{name}: {missing} of {} assets missing, {extra} unexpected, {wrong_size} of the wrong size",
                want.len()
            ));
        }
        listings.push((*name, by_hash));
    }

    if let Some(((first, reference), others)) = listings.split_first() {
        for (name, listing) in others {
            let differ = reference
                .iter()
                .filter(|(hash, a)| listing.get(hash).is_some_and(|b| *a != b))
                .count();
            if differ > 0 {
                verdict.problems.push(format!(
                    "{name}: metadata of {differ} assets differs from {first}'s"
                ));
            }
        }
    }

    for loaded in sample(expected) {
        for (name, can) in nodes {
            let what = format!("pulling {} from {name}", loaded.hash.short());
            let hashes = [loaded.hash];
            let pulled = retry(&what, || can.pull(&hashes)).await?;
            let Some(bundle) = pulled.bundles.into_iter().next() else {
                verdict.problems.push(format!(
                    "{name}: sampled asset {} is missing",
                    loaded.hash.short()
                ));
                continue;
            };
            if bundle.data.len() as u64 != loaded.size || AssetHash::of(&bundle.data) != loaded.hash
            {
                verdict.problems.push(format!(
                    "{name}: bytes of {} are wrong ({} bytes)",
                    loaded.hash.short(),
                    bundle.data.len()
                ));
            }
            if bundle.meta != loaded.meta {
                verdict.problems.push(format!(
                    "{name}: metadata of {} is {:?}, loaded {:?}",
                    loaded.hash.short(),
                    bundle.meta,
                    loaded.meta
                ));
            }
        }
    }
    Ok(verdict)
}

/// Up to [`SAMPLE`] assets spread evenly over `expected` (by hash order, so the
/// pick does not follow load order), at most [`SAMPLE_BYTES`] in all; always
/// the first and the largest asset.
fn sample(expected: &[Loaded]) -> Vec<&Loaded> {
    let mut sorted: Vec<&Loaded> = expected.iter().collect();
    sorted.sort_by_key(|l| l.hash);
    let step = sorted.len().div_ceil(SAMPLE).max(1);
    let mut picked: Vec<&Loaded> = Vec::new();
    if let Some(largest) = sorted.iter().max_by_key(|l| l.size) {
        picked.push(largest);
    }
    let mut bytes = picked.iter().map(|l| l.size).sum::<u64>();
    for l in sorted.iter().step_by(step) {
        if picked.len() >= SAMPLE || bytes + l.size > SAMPLE_BYTES {
            break;
        }
        if picked.iter().all(|p| p.hash != l.hash) {
            bytes += l.size;
            picked.push(l);
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(i: u64, size: u64) -> Loaded {
        Loaded {
            hash: AssetHash::of(&i.to_le_bytes()),
            size,
            meta: can_sync::pb::AssetMeta::default(),
        }
    }

    #[test]
    fn the_sample_is_bounded_and_includes_the_largest() {
        let many: Vec<Loaded> = (0..1000).map(|i| loaded(i, 4096)).collect();
        assert_eq!(sample(&many).len(), SAMPLE);

        let mut big: Vec<Loaded> = (0..40).map(|i| loaded(i, 32 << 20)).collect();
        big.push(loaded(99, 64 << 20));
        let picked = sample(&big);
        assert_eq!(picked[0].size, 64 << 20);
        assert!(picked.iter().map(|l| l.size).sum::<u64>() <= SAMPLE_BYTES);
        assert!(sample(&[]).is_empty());
    }
}
