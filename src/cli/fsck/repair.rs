//! `fsck --repair`: forgets each damaged asset the check found that
//! forgetting mends, so that the next sync with a peer holding it brings it
//! back whole, and says what each record held.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use can_sync::asset::AssetHash;
use can_sync::can::api::AssetInfo;
use can_sync::can::{Can, EmbeddedCan};

use super::Findings;
use crate::cli::args::NodeStoreArgs;

/// What `--repair` did with one damaged asset: forgot it, keeping the
/// metadata its record held (none for a damaged record), so that it is not
/// lost with the record; or found no record under its key.
pub(super) struct Forgotten {
    hash: AssetHash,
    info: Option<AssetInfo>,
    found: bool,
}

impl Forgotten {
    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::json!({ "hash": self.hash.to_hex(), "meta": self.info, "forgotten": self.found })
    }

    pub(super) fn line(&self) -> String {
        match (&self.info, self.found) {
            (_, false) => format!(
                "not forgotten {}: no record is found under that key (the order of the \
                 index's keys is damaged there)",
                self.hash
            ),
            (Some(info), true) => format!(
                "forgot {}; its metadata was {}",
                self.hash,
                serde_json::to_string(info).unwrap_or_default()
            ),
            (None, true) => format!("forgot {}; its record was damaged", self.hash),
        }
    }

    pub(super) fn was_forgotten(&self) -> bool {
        self.found
    }
}

/// Forgets each damaged asset `findings` names, in the embedded store
/// `store` names, opened to write now, keeping what its record said.
/// Refuses where forgetting could lose what is only out of reach: the
/// records a damaged index hides, or most of the store (its bytes may be
/// in object storage that the command line does not name).
pub(super) async fn repair(store: &NodeStoreArgs, findings: &Findings) -> Result<Vec<Forgotten>> {
    if findings.unreadable_count > 0 {
        bail!(
            "not repairing: the store's index is damaged, which forgetting assets does not \
             mend (and a write near the damage would fail); `can-sync export` takes out \
             every asset that can be read, into a new store"
        );
    }
    let damaged = &findings.forgettable;
    if damaged.len() as u64 * 2 > findings.assets {
        bail!(
            "not repairing: {} of the {} assets would be forgotten, more than half. If the \
             store keeps its bytes in object storage, give --blobs; a store this damaged is \
             better taken out whole where it can be (`can-sync export`) into a new one",
            damaged.len(),
            findings.assets
        );
    }
    let store: Arc<EmbeddedCan> = store
        .open_embedded()
        .context("opening the store to write, to repair it")?;
    let mut done = Vec::with_capacity(damaged.len());
    for &hash in damaged {
        let info = match store.meta(hash).await {
            Ok(Some((size, meta))) => Some(AssetInfo::new(&hash, size, meta)),
            _ => None,
        };
        let found = store
            .forget(hash)
            .await
            .with_context(|| format!("forgetting {hash}"))?;
        done.push(Forgotten { hash, info, found });
    }
    Ok(done)
}
