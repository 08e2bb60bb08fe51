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

/// An asset `--repair` forgot, and the metadata its record held (none for
/// a damaged record): said, so that it is not lost with the record.
pub(super) struct Forgotten {
    hash: AssetHash,
    info: Option<AssetInfo>,
}

impl Forgotten {
    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::json!({ "hash": self.hash.to_hex(), "meta": self.info })
    }

    pub(super) fn line(&self) -> String {
        match &self.info {
            Some(info) => format!(
                "forgot {}; its metadata was {}",
                self.hash,
                serde_json::to_string(info).unwrap_or_default()
            ),
            None => format!("forgot {}; its record was damaged", self.hash),
        }
    }
}

/// Forgets each damaged asset `findings` names that forgetting mends, in
/// the embedded store `store` names, opened to write now, keeping what its
/// record said. Refuses where forgetting could lose what is only out of
/// reach: a damaged index (its hidden records), bytes that could not be
/// read (the failure may pass), most of the store (its bytes may be in
/// object storage that the command line does not name).
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
            "not repairing: {} of the {} assets would be forgotten; a store whose bytes are \
             in object storage needs --blobs to find them",
            damaged.len(),
            findings.assets
        );
    }
    if findings.damaged_count > damaged.len() as u64 {
        eprintln!(
            "not forgetting the {} assets whose bytes could not be read: that may pass",
            findings.damaged_count - damaged.len() as u64
        );
    }
    let store: Arc<EmbeddedCan> = store
        .open_embedded()
        .context("opening the store to write, to repair it")?;
    let mut forgotten = Vec::with_capacity(damaged.len());
    for &hash in damaged {
        let info = match store.meta(hash).await {
            Ok(Some((size, meta))) => Some(AssetInfo::new(&hash, size, meta)),
            _ => None,
        };
        if store
            .forget(hash)
            .await
            .with_context(|| format!("forgetting {hash}"))?
        {
            forgotten.push(Forgotten { hash, info });
        }
    }
    Ok(forgotten)
}
