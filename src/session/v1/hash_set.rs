//! Decoding a v1 `HASH_SET`: entry by entry, its count checked before
//! anything is kept (see [`decode_hash_set`]).

use crate::asset::Summary;
use crate::pb;
use crate::recon::compact::SummaryError;
use crate::wire::Violation;

/// Most summaries taken from one v1 peer's `HASH_SET`. Each entry carries a
/// 64-character hex hash, so a frame within the default limit holds fewer
/// than 4M of them anyway; the count is checked before anything is kept.
pub const MAX_HASH_SET: u64 = 4_000_000;

/// The shortest encoding of a valid `AssetSummary` entry: its key and
/// length, then the hash field's key, length and 64 hex characters.
const MIN_SUMMARY_ENTRY: usize = 2 + 2 + 64;

/// Decodes a `PeerHashSet` one entry at a time, straight into [`Summary`]s.
///
/// prost would decode the whole message first: every entry an
/// `AssetSummary` of ~100 bytes with a heap `String`, even an empty 2-byte
/// one, so 256 MiB on the wire became 10–20 GB of heap before any check
/// (issue 19). Here the count is bounded before anything is kept (entries
/// can't be shorter than [`MIN_SUMMARY_ENTRY`]), each entry is parsed
/// alone and kept only as its 88-byte summary, and a malformed one fails
/// the session at once: what is kept is never more than the bytes that
/// arrived.
pub(super) fn decode_hash_set(payload: &[u8], max: u64) -> Result<Vec<Summary>, Violation> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    let decode_error = |source| Violation::Decode {
        message: "PeerHashSet",
        source,
    };
    let bound = (payload.len() / MIN_SUMMARY_ENTRY) as u64;
    let mut summaries = Vec::with_capacity(bound.min(max).min(64 * 1024) as usize);
    let mut rest = payload;
    while !rest.is_empty() {
        let (tag, wire_type) = decode_key(&mut rest).map_err(decode_error)?;
        if tag != 1 || wire_type != WireType::LengthDelimited {
            // A field this version does not know: skipped, as prost would.
            skip_field(wire_type, tag, &mut rest, DecodeContext::default())
                .map_err(decode_error)?;
            continue;
        }
        let len = decode_varint(&mut rest).map_err(decode_error)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= rest.len())
            .ok_or(SummaryError::Malformed {
                index: summaries.len() as u64,
                reason: "the entry runs past the end of the frame",
            })?;
        let (entry, after) = rest.split_at(len);
        rest = after;
        if summaries.len() as u64 >= max {
            return Err(SummaryError::TooMany {
                count: summaries.len() as u64 + 1,
                limit: max,
            }
            .into());
        }
        let summary: pb::AssetSummary = Violation::decode("AssetSummary", entry)?;
        summaries.push(Summary::from_pb(&summary)?);
    }
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::asset::{AssetHash, MetaVersion};

    fn summary(i: u8) -> Summary {
        Summary {
            hash: AssetHash::of(&[i]),
            created_at_ms: i64::from(i),
            size: u64::from(i) * 10,
            version: MetaVersion::announced(7, &[i; 32]),
        }
    }

    fn encoded(summaries: &[Summary]) -> Vec<u8> {
        pb::PeerHashSet {
            assets: summaries.iter().map(Summary::to_pb).collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn decodes_what_prost_encodes() {
        let summaries: Vec<Summary> = (0..50).map(summary).collect();
        assert_eq!(
            decode_hash_set(&encoded(&summaries), MAX_HASH_SET).unwrap(),
            summaries
        );
        assert!(decode_hash_set(&[], MAX_HASH_SET).unwrap().is_empty());
    }

    #[test]
    fn an_empty_entry_is_a_malformed_hash_not_a_summary() {
        // 2 bytes on the wire that prost would turn into a whole
        // `AssetSummary`: the amplification of issue 19.
        let empties = [0x0a, 0x00].repeat(1000);
        assert!(matches!(
            decode_hash_set(&empties, MAX_HASH_SET),
            Err(Violation::MalformedHash(_))
        ));
    }

    #[test]
    fn the_count_is_checked_before_more_is_kept() {
        let summaries: Vec<Summary> = (0..5).map(summary).collect();
        assert!(matches!(
            decode_hash_set(&encoded(&summaries), 4),
            Err(Violation::Summaries(SummaryError::TooMany {
                count: 5,
                limit: 4
            }))
        ));
    }

    #[test]
    fn a_cut_entry_and_unknown_fields() {
        let mut bytes = encoded(&[summary(1)]);
        bytes.truncate(bytes.len() - 1);
        assert!(matches!(
            decode_hash_set(&bytes, MAX_HASH_SET),
            Err(Violation::Summaries(SummaryError::Malformed {
                index: 0,
                ..
            }))
        ));
        // Field 2 (varint 5) is skipped, as a newer sender's field would be.
        let mut with_unknown = vec![0x10, 0x05];
        with_unknown.extend(encoded(&[summary(2)]));
        assert_eq!(
            decode_hash_set(&with_unknown, MAX_HASH_SET).unwrap(),
            vec![summary(2)]
        );
    }
}
