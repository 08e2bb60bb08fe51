//! Data the benches share: deterministic incompressible bytes and the bundle
//! that carries them. Each bench uses a part of it.
#![allow(dead_code)]

use can_sync::asset::{AssetHash, Bundle};
use can_sync::pb;

/// Deterministic pseudo-random bytes (xorshift64), incompressible.
pub(crate) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Asset number `i` holding `data`, with plausible metadata.
pub(crate) fn bundle_of(data: Vec<u8>, i: u64) -> Bundle {
    Bundle {
        hash: AssetHash::of(&data),
        data: data.into(),
        meta: pb::AssetMeta {
            name: format!("asset-{i}"),
            mime_type: "application/octet-stream".into(),
            description: format!("benchmark asset {i}"),
            tags: vec!["bench".into()],
            created_at_ms: 1_700_000_000_000 + i as i64,
            meta_updated_at_ms: 1_700_000_000_000 + i as i64,
            ..Default::default()
        },
    }
}
