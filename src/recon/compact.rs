//! The compact summary encoding of protocol v2's `RECON` round.
//!
//! One entry per asset, in the order the sender lists them (its store's change
//! order; nothing here depends on the order):
//!
//! ```text
//! [hash: 32 raw bytes][created_at_ms: zigzag varint][meta_updated_at_ms: zigzag varint]
//! [size: varint][meta digest: 32 bytes]
//! ```
//!
//! The run of entries is one zstd frame (the times and sizes compress; the
//! hashes and digests do not). A v2 peer compares metadata versions by (time,
//! digest), exactly as the merge orders them, so two different values are
//! always told apart. Protocol version 2 carried an 8-byte digest prefix: a
//! writer who made two values share one (about 2^32 tries) kept two nodes
//! apart forever; version 3 carries the whole digest.
//!
//! Decoding is bounded: the declared entry count is checked against the
//! receiver's limit before anything is allocated for it.

use bytes::{Buf, BufMut};
use prost::encoding::{decode_varint, encode_varint};

use crate::asset::{AssetHash, MetaVersion, Summary};
use crate::wire::compress::{self, CodecError};

/// Bytes of the metadata digest a v2 summary carries: all of it.
pub const DIGEST_PREFIX: usize = 32;

/// The most bytes one encoded entry can take (32 + 3 × 10 varint + 32).
pub const MAX_ENTRY_LEN: usize = 32 + 30 + DIGEST_PREFIX;

/// Fewest bytes of one entry: a hash, three one-byte varints, a digest.
const MIN_ENTRY_LEN: usize = 32 + 3 + DIGEST_PREFIX;

/// The most a list may inflate over its compressed size. Every entry holds
/// a 32-byte BLAKE3 hash, which zstd cannot shrink, in at most
/// [`MAX_ENTRY_LEN`] = 94 bytes, so no honest list inflates more than 94/32
/// ≈ 2.9× (real ones about 1.1–1.7×); a payload that claims more is a bomb,
/// refused before it is inflated: memory follows the bytes the peer sent.
///
/// It was 16: a peer could then send 2.7 MB that inflated to a million
/// well-formed (all-zero) entries, 43 MB of list and 88 MB of decoded
/// summaries held for the session, about 50× what it sent
/// (`tests/hostile.rs`, `InflatedList`).
pub const MAX_INFLATION: usize = 4;

/// Why a peer's summary payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    /// More entries than this receiver accepts in one session.
    #[error("peer announced {count} summaries; the limit is {limit}")]
    TooMany {
        /// Entries announced.
        count: u64,
        /// The receiver's limit.
        limit: u64,
    },
    /// The zstd layer was refused.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The entries do not parse.
    #[error("malformed summary entry {index}: {reason}")]
    Malformed {
        /// Which entry.
        index: u64,
        /// What was wrong.
        reason: &'static str,
    },
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes summaries: an entry count varint, then entries, all zstd-compressed.
/// Each digest travels whole.
pub fn encode(summaries: &[Summary], level: i32) -> Vec<u8> {
    let mut raw = Vec::with_capacity(10 + summaries.len() * 48);
    encode_varint(summaries.len() as u64, &mut raw);
    for summary in summaries {
        raw.put_slice(summary.hash.as_bytes());
        encode_varint(zigzag(summary.created_at_ms), &mut raw);
        encode_varint(zigzag(summary.version.updated_at_ms), &mut raw);
        encode_varint(summary.size, &mut raw);
        raw.put_slice(&summary.version.digest[..DIGEST_PREFIX]);
    }
    compress::compress(&raw, level)
}

/// Decodes what [`encode`] produced, accepting at most `max_entries`.
pub fn decode(payload: &[u8], max_entries: u64) -> Result<Vec<Summary>, SummaryError> {
    let bound = (10 + max_entries as usize * MAX_ENTRY_LEN)
        .min(payload.len().saturating_mul(MAX_INFLATION) + 4096);
    let raw = compress::decompress_bounded(payload, bound)?;
    let mut buf = raw.as_slice();
    let count = decode_varint(&mut buf).map_err(|_| SummaryError::Malformed {
        index: 0,
        reason: "bad entry count",
    })?;
    if count > max_entries {
        return Err(SummaryError::TooMany {
            count,
            limit: max_entries,
        });
    }
    // Room for what the bytes can hold, not for what the count claims.
    let mut out = Vec::with_capacity((count as usize).min(buf.remaining() / MIN_ENTRY_LEN));
    for index in 0..count {
        let malformed = |reason| SummaryError::Malformed { index, reason };
        if buf.remaining() < 32 {
            return Err(malformed("truncated hash"));
        }
        let mut hash = [0u8; 32];
        buf.copy_to_slice(&mut hash);
        let created = decode_varint(&mut buf).map_err(|_| malformed("bad created time"))?;
        let updated = decode_varint(&mut buf).map_err(|_| malformed("bad metadata time"))?;
        let size = decode_varint(&mut buf).map_err(|_| malformed("bad size"))?;
        if buf.remaining() < DIGEST_PREFIX {
            return Err(malformed("truncated digest"));
        }
        let mut digest = [0u8; DIGEST_PREFIX];
        buf.copy_to_slice(&mut digest);
        out.push(Summary {
            hash: AssetHash::from_bytes(hash),
            created_at_ms: unzigzag(created),
            size,
            version: MetaVersion::announced(unzigzag(updated), &digest),
        });
    }
    if buf.has_remaining() {
        return Err(SummaryError::Malformed {
            index: count,
            reason: "trailing bytes",
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A tiny payload that would inflate to 64 MiB is refused without being
    /// inflated; a count the bytes cannot hold reserves nothing for it.
    #[test]
    fn bombs_and_inflated_counts_cost_only_the_bytes_sent() {
        let bomb = compress::compress(&vec![0u8; 64 << 20], 3);
        assert!(bomb.len() < 64 * 1024);
        assert!(matches!(
            decode(&bomb, 50_000_000),
            Err(SummaryError::Codec(_))
        ));
        let mut raw = Vec::new();
        encode_varint(40_000_000, &mut raw);
        raw.extend_from_slice(&[7u8; 150]);
        let claims = compress::compress(&raw, 3);
        assert!(matches!(
            decode(&claims, 50_000_000),
            Err(SummaryError::Malformed { index: 2, .. })
        ));
    }

    fn arb_summary() -> impl Strategy<Value = Summary> {
        (
            any::<[u8; 32]>(),
            any::<i64>(),
            any::<i64>(),
            any::<u64>(),
            any::<[u8; 8]>(),
        )
            .prop_map(|(hash, created, updated, size, digest)| Summary {
                hash: AssetHash::from_bytes(hash),
                created_at_ms: created,
                size,
                version: MetaVersion::announced(updated, &digest),
            })
    }

    proptest! {
        #[test]
        fn round_trips(summaries in proptest::collection::vec(arb_summary(), 0..200)) {
            let packed = encode(&summaries, 3);
            prop_assert_eq!(decode(&packed, 200).unwrap(), summaries);
        }

        #[test]
        fn any_payload_decodes_or_errs(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, 100);
            // Valid zstd around arbitrary entries too:
            let _ = decode(&compress::compress(&bytes, 1), 100);
        }
    }

    /// The least compressible honest list cannot shrink its hashes: at
    /// worst (longest varints, one shared digest) it inflates about 2.2×,
    /// within the bound. A list of well-formed entries that inflates 16×
    /// (zeros, padded with a skippable zstd frame to look its size) is
    /// refused before it is inflated.
    #[test]
    fn honest_lists_fit_the_inflation_bound_and_inflated_ones_do_not() {
        let honest: Vec<_> = (0..20_000u32)
            .map(|i| Summary {
                hash: AssetHash::of(&i.to_le_bytes()),
                created_at_ms: i64::MIN,
                size: u64::MAX,
                version: MetaVersion::announced(i64::MIN, &[7; DIGEST_PREFIX]),
            })
            .collect();
        let packed = encode(&honest, 19);
        let ratio = (20_000 * MAX_ENTRY_LEN) as f64 / packed.len() as f64;
        assert!(ratio > 2.0 && ratio < MAX_INFLATION as f64, "{ratio}");
        assert!(decode(&packed, 20_000).unwrap() == honest);

        let entries = 100_000;
        let mut raw = Vec::new();
        encode_varint(entries, &mut raw);
        raw.resize(raw.len() + entries as usize * MIN_ENTRY_LEN, 0);
        let mut inflated = compress::compress(&raw, 3);
        let pad = raw.len() / 16 - inflated.len();
        inflated.extend_from_slice(&[0x50, 0x2A, 0x4D, 0x18]); // skippable frame
        inflated.extend_from_slice(&(pad as u32).to_le_bytes());
        inflated.resize(inflated.len() + pad, 0);
        assert!(matches!(
            decode(&inflated, 50_000_000),
            Err(SummaryError::Codec(CodecError::Inflate { .. }))
        ));
    }

    #[test]
    fn too_many_entries_are_refused_before_parsing() {
        let summaries: Vec<_> = (0..10u8)
            .map(|i| Summary {
                hash: AssetHash::of(&[i]),
                created_at_ms: 0,
                size: 0,
                version: MetaVersion::announced(0, &[]),
            })
            .collect();
        let packed = encode(&summaries, 3);
        assert!(matches!(
            decode(&packed, 5),
            Err(SummaryError::Codec(_)) | Err(SummaryError::TooMany { .. })
        ));
        assert_eq!(decode(&packed, 10).unwrap().len(), 10);
    }

    #[test]
    fn compact_beats_the_v1_hash_set_by_half() {
        use prost::Message;
        let summaries: Vec<_> = (0..1000u32)
            .map(|i| Summary {
                hash: AssetHash::of(&i.to_le_bytes()),
                created_at_ms: 1_700_000_000_000 + i as i64,
                size: 4096,
                version: MetaVersion::announced(1_700_000_000_000 + i as i64, &[7; 32]),
            })
            .collect();
        let v1 = crate::pb::PeerHashSet {
            assets: summaries.iter().map(Summary::to_pb).collect(),
        }
        .encoded_len();
        let v2 = encode(&summaries, 3).len();
        assert!(v2 * 2 < v1, "v2 {v2} bytes vs v1 {v1} bytes");
    }
}
