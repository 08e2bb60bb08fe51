//! The outboards a store keeps for its whole large blobs, in
//! `DIR/outboards/<hex[0..2]>/<hex>`: kept when a blob is written, computed
//! from the blob in the background when missing. A cache: never synced,
//! checked against the hash each time it is read.

use std::fs::File;
use std::io;
use std::sync::Arc;

use super::Partials;
use crate::asset::AssetHash;
use crate::can::store::ranges::{Outboard, OutboardHasher, GROUP_BYTES};

impl Partials {
    /// The kept outboard of a whole blob, if one is kept and checks out.
    /// Blocking.
    pub(in crate::can::store) fn kept_outboard(
        &self,
        hash: &AssetHash,
        size: u64,
    ) -> Option<Outboard> {
        let raw = std::fs::read(self.outboard_path(hash)).ok()?;
        Outboard::decode(*hash, size, &raw).ok()
    }

    /// Computes the outboard of the whole blob of `hash` on a thread of its
    /// own and keeps it, unless one is being computed already (or two
    /// others are): for blobs stored before outboards were kept, so that
    /// their next send can go by ranges without this one waiting.
    pub(in crate::can::store) fn compute_later(self: &Arc<Self>, hash: AssetHash) {
        {
            let mut computing = self.computing.lock().expect("computing lock");
            if computing.len() >= 2 || !computing.insert(hash) {
                return;
            }
        }
        let partials = self.clone();
        tokio::task::spawn_blocking(move || {
            let hex = hash.to_hex();
            let path = partials.store_dir.join("blobs").join(&hex[..2]).join(&hex);
            let computed = (|| -> io::Result<Option<Outboard>> {
                let mut file = File::open(&path)?;
                let mut hasher = OutboardHasher::default();
                let mut buffer = vec![0; GROUP_BYTES as usize];
                loop {
                    let read = io::Read::read(&mut file, &mut buffer)?;
                    if read == 0 {
                        break;
                    }
                    hasher.update(&buffer[..read]);
                }
                let (actual, outboard) = hasher.finalize();
                Ok((actual == hash).then_some(outboard))
            })();
            match computed {
                Ok(Some(outboard)) => partials.keep_outboard(&outboard),
                Ok(None) => tracing::warn!(%hash, "a blob does not hash to its name"),
                Err(err) => tracing::debug!(%hash, %err, "could not compute an outboard"),
            }
            partials
                .computing
                .lock()
                .expect("computing lock")
                .remove(&hash);
        });
    }

    /// Keeps the outboard of a whole blob (of more than one group). A cache:
    /// not synced, and a failure only costs computing it again. Blocking.
    pub(in crate::can::store) fn keep_outboard(&self, outboard: &Outboard) {
        if outboard.groups() < 2 {
            return;
        }
        let path = self.outboard_path(&outboard.hash());
        let kept = (|| -> io::Result<()> {
            let folder = path.parent().expect("sharded");
            match std::fs::create_dir(folder) {
                Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err),
                _ => {}
            }
            let fresh = path.with_extension("new");
            std::fs::write(&fresh, outboard.encoded_cvs())?;
            std::fs::rename(&fresh, &path)
        })();
        if let Err(err) = kept {
            tracing::debug!(hash = %outboard.hash(), %err, "could not keep an outboard");
        }
    }
}
