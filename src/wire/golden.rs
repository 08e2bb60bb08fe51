//! Golden vectors: the exact bytes of every message of `proto/cansync.proto`.
//!
//! Each vector is a realistic value with every field set, next to its encoding
//! written out as an annotated hex literal, and a test checks both ways: the
//! value encodes to exactly those bytes and those bytes decode to exactly the
//! value. They pin the wire format: a change to the `.proto` that alters the
//! bytes of any message fails here, and a field added without a vector fails
//! `tests::every_message_has_a_vector_with_every_field_set`. The frame
//! golden tests in `frame.rs` carry these bytes as their payloads.
//!
//! # Reading a literal
//!
//! [`hex`] skips whitespace and `#` comments. Each line is one field:
//!
//! - the tag byte, `field number << 3 | wire type` (`0` varint, `2` length
//!   delimited): `0a` is field 1 with a length, `28` is field 5, a varint;
//! - for a length-delimited field, its length as a varint (`0a 9001` is 144
//!   bytes), then the value; long values continue on indented lines, 16 bytes
//!   each, and a nested message's fields are indented under it;
//! - the comment: field number, field name, and the value.
//!
//! # The story
//!
//! The values describe one exchange, so they are consistent with each other
//! (a test checks it): `hello.txt` holds the 11 bytes `hello world`; the empty
//! asset has no bytes; `zeros.bin` is 8 MiB of zeros, above the inline limit,
//! so protocol v2 streams it in chunks. v1 and HTTP carry hashes as 64
//! lowercase hex characters, v2 as 32 raw bytes.

use std::collections::BTreeSet;
use std::fmt::Debug;

use bytes::Bytes;
use prost::Message;

use crate::pb;

/// Bytes from an annotated hex literal: `#` starts a comment that runs to the
/// end of its line, whitespace separates fields, everything else must be hex
/// digits, an even number of them.
pub(super) fn hex(annotated: &str) -> Vec<u8> {
    let digits: Vec<u8> = annotated
        .lines()
        .flat_map(|line| line.split('#').next().unwrap_or_default().bytes())
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    assert!(
        digits.iter().all(u8::is_ascii_hexdigit),
        "not a hex literal: {annotated:?}"
    );
    assert_eq!(
        digits.len() % 2,
        0,
        "odd number of hex digits in {annotated:?}"
    );
    digits
        .chunks(2)
        .map(|pair| {
            let nibble = |digit: u8| char::from(digit).to_digit(16).expect("a hex digit") as u8;
            (nibble(pair[0]) << 4) | nibble(pair[1])
        })
        .collect()
}

/// BLAKE3 of `hello world`, the bytes of `hello.txt`.
const HELLO_HASH: &str = "d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24";
/// BLAKE3 of the empty asset.
const EMPTY_HASH: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
/// BLAKE3 of `zeros.bin`, 8 MiB of zero bytes.
const ZEROS_HASH: &str = "27ddc0a1d824fa6befe0596ddc0136fc4a1dc060d526800851f87498768b755c";

/// The raw 32 bytes of a hash, as v2 carries it.
fn raw(hash: &str) -> Bytes {
    Bytes::from(hex(hash))
}

// ---- the store's messages (HTTP and v1) ----------------------------------------

/// The metadata of `hello.txt`, every field set.
fn asset_meta() -> pb::AssetMeta {
    pb::AssetMeta {
        name: "hello.txt".into(),
        mime_type: "text/plain".into(),
        description: "a greeting".into(),
        tags: vec!["demo".into(), "text".into()],
        is_trashed: true,
        created_at_ms: 1_700_000_000_000,
        meta_updated_at_ms: 1_700_000_060_000,
    }
}

/// [`asset_meta`], 63 bytes.
const ASSET_META: &str = r#"
    0a 09 68656c6c6f2e747874    # 1 name, 9 bytes: "hello.txt"
    12 0a 746578742f706c61696e  # 2 mime_type, 10 bytes: "text/plain"
    1a 0a 61206772656574696e67  # 3 description, 10 bytes: "a greeting"
    22 04 64656d6f              # 4 tags[0], 4 bytes: "demo"
    22 04 74657874              # 4 tags[1], 4 bytes: "text"
    28 01                       # 5 is_trashed: true
    30 80d095ffbc31             # 6 created_at_ms: 1700000000000
    38 e0a499ffbc31             # 7 meta_updated_at_ms: 1700000060000
"#;

/// The summary of `hello.txt`; its digest is BLAKE3 of the mutable fields of
/// [`asset_meta`] (what `MetaVersion::of` digests).
fn asset_summary() -> pb::AssetSummary {
    pb::AssetSummary {
        hash: HELLO_HASH.into(),
        timestamp: 1_700_000_000_000,
        meta_updated_at_ms: 1_700_000_060_000,
        size: 11,
        meta_digest: raw("dfc461e53a823b3c30a59ac0e5b634d5b9691d5db27af8f6acdd05e7cde782b3"),
    }
}

/// [`asset_summary`], 116 bytes.
const ASSET_SUMMARY: &str = r#"
    0a 40                                # 1 hash, 64 bytes: BLAKE3("hello world") as hex text
       64373439383165666137306130633838  # "d74981efa70a0c88"
       30623864386331393835643037356462  # "0b8d8c1985d075db"
       63626636373962393961356639393134  # "cbf679b99a5f9914"
       65356161663936623833316139653234  # "e5aaf96b831a9e24"
    10 80d095ffbc31                      # 2 timestamp: 1700000000000
    18 e0a499ffbc31                      # 3 meta_updated_at_ms: 1700000060000
    20 0b                                # 4 size: 11
    2a 20                                # 5 meta_digest, 32 bytes: BLAKE3 of its mutable fields
       dfc461e53a823b3c30a59ac0e5b634d5
       b9691d5db27af8f6acdd05e7cde782b3
"#;

/// The summary of the empty asset as a peer that predates `meta_digest` sends
/// it: a size of 0 and no digest are absent from the bytes, not zeros.
fn empty_summary() -> pb::AssetSummary {
    pb::AssetSummary {
        hash: EMPTY_HASH.into(),
        timestamp: 1_700_000_120_000,
        meta_updated_at_ms: 1_700_000_120_000,
        size: 0,
        meta_digest: Bytes::new(),
    }
}

/// A v1 `HASH_SET`: `hello.txt` and the empty asset.
fn peer_hash_set() -> pb::PeerHashSet {
    pb::PeerHashSet {
        assets: vec![asset_summary(), empty_summary()],
    }
}

/// [`peer_hash_set`], 200 bytes.
pub(super) const PEER_HASH_SET: &str = r#"
    0a 74                                   # 1 assets[0], 116 bytes: the AssetSummary vector
       0a 40                                # 1 hash, 64 bytes: BLAKE3("hello world") as hex text
          64373439383165666137306130633838  # "d74981efa70a0c88"
          30623864386331393835643037356462  # "0b8d8c1985d075db"
          63626636373962393961356639393134  # "cbf679b99a5f9914"
          65356161663936623833316139653234  # "e5aaf96b831a9e24"
       10 80d095ffbc31                      # 2 timestamp: 1700000000000
       18 e0a499ffbc31                      # 3 meta_updated_at_ms: 1700000060000
       20 0b                                # 4 size: 11
       2a 20                                # 5 meta_digest, 32 bytes: BLAKE3 of its mutable fields
          dfc461e53a823b3c30a59ac0e5b634d5
          b9691d5db27af8f6acdd05e7cde782b3
    0a 50                                   # 1 assets[1], 80 bytes: the empty asset, no size, no digest
       0a 40                                # 1 hash, 64 bytes: BLAKE3("") as hex text
          61663133343962396635663961316136  # "af1349b9f5f9a1a6"
          61303430346465613336646363393439  # "a0404dea36dcc949"
          39626362323563396164633131326237  # "9bcb25c9adc112b7"
          63633961393363616534316633323632  # "cc9a93cae41f3262"
       10 c0f99cffbc31                      # 2 timestamp: 1700000120000
       18 c0f99cffbc31                      # 3 meta_updated_at_ms: 1700000120000
"#;

/// A page of `GET /sync/hashes` listing the same two assets, and the cursor
/// of the next page: the last hash listed (`hello.txt`'s, as hex).
fn hash_list() -> pb::HashList {
    pb::HashList {
        assets: peer_hash_set().assets,
        next: HELLO_HASH.into(),
    }
}

/// [`hash_list`], 270 bytes: field 1 as in `PeerHashSet`, then the cursor.
static HASH_LIST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{PEER_HASH_SET}{}",
        r#"
    12 40                                   # 2 next, 64 bytes: the cursor, a hash as hex text
       64373439383165666137306130633838     # "d74981efa70a0c88"
       30623864386331393835643037356462     # "0b8d8c1985d075db"
       63626636373962393961356639393134     # "cbf679b99a5f9914"
       65356161663936623833316139653234     # "e5aaf96b831a9e24"
"#
    )
});

/// The latest change of `hello.txt`: its metadata changed (kind 2) at seq 7.
fn change() -> pb::Change {
    pb::Change {
        seq: 7,
        kind: 2,
        summary: Some(asset_summary()),
    }
}

/// [`change`], 122 bytes.
static CHANGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{}{ASSET_SUMMARY}",
        r#"
    08 07                                # 1 seq: 7
    10 02                                # 2 kind: 2 (metadata)
    1a 74                                # 3 summary, 116 bytes: the AssetSummary vector
"#
    )
});

/// A page of `GET /sync/changes` with that one change, from store 0x12345678.
fn change_page() -> pb::ChangePage {
    pb::ChangePage {
        changes: vec![change()],
        next_after: 7,
        store_id: 0x1234_5678,
    }
}

/// [`change_page`], 133 bytes.
static CHANGE_PAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{}{}{}",
        r#"
    0a 7a                                # 1 changes[0], 122 bytes: the Change vector
"#,
        *CHANGE,
        r#"
    10 07                                # 2 next_after: 7
    18 f8acd19101                        # 3 store_id: 0x12345678
"#
    )
});

/// `hello.txt` inline: its hash, bytes and metadata.
fn asset_bundle() -> pb::AssetBundle {
    pb::AssetBundle {
        hash: HELLO_HASH.into(),
        data: Bytes::from_static(b"hello world"),
        meta: Some(asset_meta()),
    }
}

/// [`asset_bundle`], 144 bytes.
pub(super) const ASSET_BUNDLE: &str = r#"
    0a 40                                # 1 hash, 64 bytes: BLAKE3("hello world") as hex text
       64373439383165666137306130633838  # "d74981efa70a0c88"
       30623864386331393835643037356462  # "0b8d8c1985d075db"
       63626636373962393961356639393134  # "cbf679b99a5f9914"
       65356161663936623833316139653234  # "e5aaf96b831a9e24"
    12 0b 68656c6c6f20776f726c64         # 2 data, 11 bytes: "hello world"
    1a 3f                                # 3 meta, 63 bytes: the AssetMeta vector
       0a 09 68656c6c6f2e747874          # 1 name, 9 bytes: "hello.txt"
       12 0a 746578742f706c61696e        # 2 mime_type, 10 bytes: "text/plain"
       1a 0a 61206772656574696e67        # 3 description, 10 bytes: "a greeting"
       22 04 64656d6f                    # 4 tags[0], 4 bytes: "demo"
       22 04 74657874                    # 4 tags[1], 4 bytes: "text"
       28 01                             # 5 is_trashed: true
       30 80d095ffbc31                   # 6 created_at_ms: 1700000000000
       38 e0a499ffbc31                   # 7 meta_updated_at_ms: 1700000060000
"#;

/// `POST /sync/pull` of `hello.txt` and the empty asset.
fn pull_request() -> pb::PullRequest {
    pb::PullRequest {
        hashes: vec![HELLO_HASH.into(), EMPTY_HASH.into()],
    }
}

/// [`pull_request`], 132 bytes.
const PULL_REQUEST: &str = r#"
    0a 40                                # 1 hashes[0], 64 bytes: BLAKE3("hello world") as hex text
       64373439383165666137306130633838  # "d74981efa70a0c88"
       30623864386331393835643037356462  # "0b8d8c1985d075db"
       63626636373962393961356639393134  # "cbf679b99a5f9914"
       65356161663936623833316139653234  # "e5aaf96b831a9e24"
    0a 40                                # 1 hashes[1], 64 bytes: BLAKE3("") as hex text
       61663133343962396635663961316136  # "af1349b9f5f9a1a6"
       61303430346465613336646363393439  # "a0404dea36dcc949"
       39626362323563396164633131326237  # "9bcb25c9adc112b7"
       63633961393363616534316633323632  # "cc9a93cae41f3262"
"#;

/// The answer to [`pull_request`] from a store that lacks the empty asset.
fn pull_response() -> pb::PullResponse {
    pb::PullResponse {
        bundles: vec![asset_bundle()],
        missing: vec![EMPTY_HASH.into()],
    }
}

/// [`pull_response`], 213 bytes.
const PULL_RESPONSE: &str = r#"
    0a 9001                                 # 1 bundles[0], 144 bytes: the AssetBundle vector
       0a 40                                # 1 hash, 64 bytes: BLAKE3("hello world") as hex text
          64373439383165666137306130633838  # "d74981efa70a0c88"
          30623864386331393835643037356462  # "0b8d8c1985d075db"
          63626636373962393961356639393134  # "cbf679b99a5f9914"
          65356161663936623833316139653234  # "e5aaf96b831a9e24"
       12 0b 68656c6c6f20776f726c64         # 2 data, 11 bytes: "hello world"
       1a 3f                                # 3 meta, 63 bytes: the AssetMeta vector
          0a 09 68656c6c6f2e747874          # 1 name, 9 bytes: "hello.txt"
          12 0a 746578742f706c61696e        # 2 mime_type, 10 bytes: "text/plain"
          1a 0a 61206772656574696e67        # 3 description, 10 bytes: "a greeting"
          22 04 64656d6f                    # 4 tags[0], 4 bytes: "demo"
          22 04 74657874                    # 4 tags[1], 4 bytes: "text"
          28 01                             # 5 is_trashed: true
          30 80d095ffbc31                   # 6 created_at_ms: 1700000000000
          38 e0a499ffbc31                   # 7 meta_updated_at_ms: 1700000060000
    12 40                                   # 2 missing[0], 64 bytes: BLAKE3("") as hex text
       61663133343962396635663961316136     # "af1349b9f5f9a1a6"
       61303430346465613336646363393439     # "a0404dea36dcc949"
       39626362323563396164633131326237     # "9bcb25c9adc112b7"
       63633961393363616534316633323632     # "cc9a93cae41f3262"
"#;

/// The answer of `POST /sync/push` of `hello.txt` to a store that had it.
fn push_response() -> pb::PushResponse {
    pb::PushResponse {
        hash: HELLO_HASH.into(),
        already_existed: true,
        seq: 42,
    }
}

/// [`push_response`], 70 bytes.
const PUSH_RESPONSE: &str = r#"
    0a 40                                # 1 hash, 64 bytes: BLAKE3("hello world") as hex text
       64373439383165666137306130633838  # "d74981efa70a0c88"
       30623864386331393835643037356462  # "0b8d8c1985d075db"
       63626636373962393961356639393134  # "cbf679b99a5f9914"
       65356161663936623833316139653234  # "e5aaf96b831a9e24"
    10 01                                # 2 already_existed: true
    18 2a                                # 3 seq: 42
"#;

/// `POST /sync/push-batch` of `hello.txt` alone.
fn push_batch() -> pb::PushBatch {
    pb::PushBatch {
        bundles: vec![asset_bundle()],
    }
}

/// [`push_batch`], 147 bytes.
const PUSH_BATCH: &str = r#"
    0a 9001                                 # 1 bundles[0], 144 bytes: the AssetBundle vector
       0a 40                                # 1 hash, 64 bytes: BLAKE3("hello world") as hex text
          64373439383165666137306130633838  # "d74981efa70a0c88"
          30623864386331393835643037356462  # "0b8d8c1985d075db"
          63626636373962393961356639393134  # "cbf679b99a5f9914"
          65356161663936623833316139653234  # "e5aaf96b831a9e24"
       12 0b 68656c6c6f20776f726c64         # 2 data, 11 bytes: "hello world"
       1a 3f                                # 3 meta, 63 bytes: the AssetMeta vector
          0a 09 68656c6c6f2e747874          # 1 name, 9 bytes: "hello.txt"
          12 0a 746578742f706c61696e        # 2 mime_type, 10 bytes: "text/plain"
          1a 0a 61206772656574696e67        # 3 description, 10 bytes: "a greeting"
          22 04 64656d6f                    # 4 tags[0], 4 bytes: "demo"
          22 04 74657874                    # 4 tags[1], 4 bytes: "text"
          28 01                             # 5 is_trashed: true
          30 80d095ffbc31                   # 6 created_at_ms: 1700000000000
          38 e0a499ffbc31                   # 7 meta_updated_at_ms: 1700000060000
"#;

/// The slot of `hello.txt` in a batch's answer, from a store that had it.
fn push_result_stored() -> pb::PushResult {
    pb::PushResult {
        hash: HELLO_HASH.into(),
        already_existed: true,
        seq: 42,
        ..Default::default()
    }
}

/// [`push_result_stored`], 70 bytes.
const PUSH_RESULT_STORED: &str = r#"
    0a 40                                # 1 hash, 64 bytes: BLAKE3("hello world") as hex text
       64373439383165666137306130633838  # "d74981efa70a0c88"
       30623864386331393835643037356462  # "0b8d8c1985d075db"
       63626636373962393961356639393134  # "cbf679b99a5f9914"
       65356161663936623833316139653234  # "e5aaf96b831a9e24"
    10 01                                # 2 already_existed: true
    20 2a                                # 4 seq: 42
"#;

/// The slot of a bundle that claimed `hello.txt` but carried no bytes.
fn push_result_wrong_hash() -> pb::PushResult {
    pb::PushResult {
        hash: HELLO_HASH.into(),
        error: "hash mismatch".into(),
        status: 422,
        actual: EMPTY_HASH.into(),
        ..Default::default()
    }
}

/// [`push_result_wrong_hash`], 150 bytes.
const PUSH_RESULT_WRONG_HASH: &str = r#"
    0a 40                                # 1 hash, 64 bytes: BLAKE3("hello world") as hex text
       64373439383165666137306130633838  # "d74981efa70a0c88"
       30623864386331393835643037356462  # "0b8d8c1985d075db"
       63626636373962393961356639393134  # "cbf679b99a5f9914"
       65356161663936623833316139653234  # "e5aaf96b831a9e24"
    1a 0d 68617368206d69736d61746368     # 3 error, 13 bytes: "hash mismatch"
    28 a603                              # 5 status: 422
    32 40                                # 6 actual, 64 bytes: BLAKE3("") as hex text
       61663133343962396635663961316136  # "af1349b9f5f9a1a6"
       61303430346465613336646363393439  # "a0404dea36dcc949"
       39626362323563396164633131326237  # "9bcb25c9adc112b7"
       63633961393363616534316633323632  # "cc9a93cae41f3262"
"#;

/// The slot of `hello.txt` pushed to a store that takes at most 4 bytes.
fn push_result_too_large() -> pb::PushResult {
    pb::PushResult {
        hash: HELLO_HASH.into(),
        error: "too large".into(),
        status: 413,
        limit: 4,
        ..Default::default()
    }
}

/// [`push_result_too_large`], 82 bytes.
const PUSH_RESULT_TOO_LARGE: &str = r#"
    0a 40                                # 1 hash, 64 bytes: BLAKE3("hello world") as hex text
       64373439383165666137306130633838  # "d74981efa70a0c88"
       30623864386331393835643037356462  # "0b8d8c1985d075db"
       63626636373962393961356639393134  # "cbf679b99a5f9914"
       65356161663936623833316139653234  # "e5aaf96b831a9e24"
    1a 09 746f6f206c61726765             # 3 error, 9 bytes: "too large"
    28 9d03                              # 5 status: 413
    38 04                                # 7 limit: 4
"#;

/// The answer to [`push_batch`].
fn push_batch_response() -> pb::PushBatchResponse {
    pb::PushBatchResponse {
        results: vec![push_result_stored()],
    }
}

/// [`push_batch_response`], 72 bytes.
const PUSH_BATCH_RESPONSE: &str = r#"
    0a 46                                   # 1 results[0], 70 bytes: the stored PushResult vector
       0a 40                                # 1 hash, 64 bytes: BLAKE3("hello world") as hex text
          64373439383165666137306130633838  # "d74981efa70a0c88"
          30623864386331393835643037356462  # "0b8d8c1985d075db"
          63626636373962393961356639393134  # "cbf679b99a5f9914"
          65356161663936623833316139653234  # "e5aaf96b831a9e24"
       10 01                                # 2 already_existed: true
       20 2a                                # 4 seq: 42
"#;

/// The mutable fields and creation time of [`asset_meta`] as a metadata
/// change of `hello.txt`.
fn meta_update() -> pb::MetaUpdate {
    pb::MetaUpdate {
        hash: HELLO_HASH.into(),
        description: "a greeting".into(),
        tags: vec!["demo".into(), "text".into()],
        is_trashed: true,
        meta_updated_at_ms: 1_700_000_060_000,
        created_at_ms: 1_700_000_000_000,
    }
}

/// [`meta_update`], 106 bytes.
pub(super) const META_UPDATE: &str = r#"
    0a 40                                # 1 hash, 64 bytes: BLAKE3("hello world") as hex text
       64373439383165666137306130633838  # "d74981efa70a0c88"
       30623864386331393835643037356462  # "0b8d8c1985d075db"
       63626636373962393961356639393134  # "cbf679b99a5f9914"
       65356161663936623833316139653234  # "e5aaf96b831a9e24"
    12 0a 61206772656574696e67           # 2 description, 10 bytes: "a greeting"
    1a 04 64656d6f                       # 3 tags[0], 4 bytes: "demo"
    1a 04 74657874                       # 3 tags[1], 4 bytes: "text"
    20 01                                # 4 is_trashed: true
    28 e0a499ffbc31                      # 5 meta_updated_at_ms: 1700000060000
    30 80d095ffbc31                      # 6 created_at_ms: 1700000000000
"#;

// ---- protocol v2 -----------------------------------------------------------------

/// The `HELLO` of a node with 4 streams, a 1 MiB inline limit and 1 MiB
/// chunks (frames of at most 1 MiB + 256 KiB), asking for live sync.
fn hello() -> pb::Hello {
    pb::Hello {
        version: 3,
        max_streams: 4,
        codecs: vec!["zstd".into(), "raw".into()],
        inline_limit: 1 << 20,
        features: vec!["live".into()],
        max_frame_len: (1 << 20) + (256 << 10),
        capability: Default::default(),
    }
}

/// [`hello`], 29 bytes.
pub(super) const HELLO: &str = r#"
    08 03           # 1 version: 3
    10 04           # 2 max_streams: 4
    1a 04 7a737464  # 3 codecs[0], 4 bytes: "zstd"
    1a 03 726177    # 3 codecs[1], 3 bytes: "raw"
    20 808040       # 4 inline_limit: 1048576 (1 MiB)
    2a 04 6c697665  # 5 features[0], 4 bytes: "live"
    30 808050       # 6 max_frame_len: 1310720 (1.25 MiB)
"#;

/// The `HELLO` of a dialer presenting the capability of a granted ticket
/// (32 bytes, here 0x00..0x1f), otherwise [`hello`] without live sync: only
/// a dialer unknown by id sends one.
fn granted_hello() -> pb::Hello {
    pb::Hello {
        features: vec![],
        capability: (0u8..32).collect::<Vec<u8>>().into(),
        ..hello()
    }
}

/// [`granted_hello`], 57 bytes.
const GRANTED_HELLO: &str = r#"
    08 03           # 1 version: 3
    10 04           # 2 max_streams: 4
    1a 04 7a737464  # 3 codecs[0], 4 bytes: "zstd"
    1a 03 726177    # 3 codecs[1], 3 bytes: "raw"
    20 808040       # 4 inline_limit: 1048576 (1 MiB)
    30 808050       # 6 max_frame_len: 1310720 (1.25 MiB)
    3a 20           # 7 capability, 32 bytes:
       000102030405060708090a0b0c0d0e0f
       101112131415161718191a1b1c1d1e1f
"#;

/// The compact summary of `hello.txt` (the encoding of `recon::compact`) as
/// one zstd frame made of a single raw block, so its bytes do not depend on
/// the zstd version.
const PACKED_HELLO_TXT: &str = "
    28b52ffd 20 4e 710200  # zstd frame, 78 bytes of content in one raw block
    01                     # one entry: hash, times, size, digest
    d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24
    80a0abfef962 c0c9b2fef962 0b
    dfc461e53a823b3c30a59ac0e5b634d5b9691d5db27af8f6acdd05e7cde782b3
";

/// A live-sync reply: the summary of `hello.txt`, which the replier holds, and
/// a want for `zeros.bin`, which it lacks.
fn recon() -> pb::Recon {
    pb::Recon {
        packed_summaries: Bytes::from(hex(PACKED_HELLO_TXT)),
        wants: raw(ZEROS_HASH),
        done: true,
        ..Default::default()
    }
}

/// [`recon`], 125 bytes.
pub(super) const RECON: &str = r#"
    0a 57                                   # 1 packed_summaries, 87 bytes: one zstd frame
       28b52ffd                             # zstd magic
       20                                   # frame header: single segment, no checksum
       4e                                   # content size: 78
       710200                               # block header: last, raw, 78 bytes
          01                                # entry count: 1
          d74981efa70a0c880b8d8c1985d075db  # hash: BLAKE3("hello world"), raw
          cbf679b99a5f9914e5aaf96b831a9e24
          80a0abfef962                      # created_at_ms: 1700000000000 (zigzag)
          c0c9b2fef962                      # meta_updated_at_ms: 1700000060000 (zigzag)
          0b                                # size: 11
          dfc461e53a823b3c30a59ac0e5b634d5  # meta digest: 32 bytes
          b9691d5db27af8f6acdd05e7cde782b3
    12 20                                   # 2 wants, 32 bytes: BLAKE3 of zeros.bin, raw
       27ddc0a1d824fa6befe0596ddc0136fc
       4a1dc060d526800851f87498768b755c
    18 01                                   # 3 done: true
"#;

/// Every field of a coded `RECON` at once (a real one carries one of probe,
/// cells, more or wants; see `recon::coded`). Probe and cell bytes are opaque
/// here: `recon::riblt` pins their encodings in its own tests.
fn coded_recon() -> pb::Recon {
    pb::Recon {
        wants: raw(ZEROS_HASH).slice(..8),
        done: true,
        coded: true,
        probe: Bytes::from_static(&[0x01, 0x02]),
        cells: Bytes::from_static(&[0x00]),
        cells_start: 32,
        more_cells: 300,
        meta_wants: raw(ZEROS_HASH),
        lacks: raw(ZEROS_HASH),
        lack_sizes: Bytes::from_static(&[0x80, 0x80, 0x80, 0x04]),
        packed_summaries: Bytes::new(),
    }
}

/// [`coded_recon`], 100 bytes.
pub(super) const CODED_RECON: &str = r#"
    12 08 27ddc0a1d824fa6b                  # 2 wants, 8 bytes: the prefix of zeros.bin's hash
    18 01                                   # 3 done: true
    20 01                                   # 4 coded: true
    2a 02 0102                              # 5 probe, 2 bytes (opaque here)
    32 01 00                                # 6 cells, 1 byte (opaque here)
    38 20                                   # 7 cells_start: 32
    40 ac02                                 # 8 more_cells: 300
    4a 20                                   # 9 meta_wants, 32 bytes: BLAKE3 of zeros.bin, raw
       27ddc0a1d824fa6befe0596ddc0136fc
       4a1dc060d526800851f87498768b755c
    52 20                                   # 10 lacks, 32 bytes: BLAKE3 of zeros.bin, raw
       27ddc0a1d824fa6befe0596ddc0136fc
       4a1dc060d526800851f87498768b755c
    5a 04 80808004                          # 11 lack_sizes, 4 bytes of varints: 8,388,608 (zeros.bin)
"#;

/// `zeros.bin` held in part: groups 4 to 7 of its 8 are lacking.
fn resume() -> pb::Resume {
    pb::Resume {
        hash: raw(ZEROS_HASH),
        missing: vec![4, 8],
        outboard_held: false,
    }
}

/// [`resume`], 38 bytes.
pub(super) const RESUME: &str = r#"
    0a 20                                   # 1 hash, 32 bytes: BLAKE3 of zeros.bin, raw
       27ddc0a1d824fa6befe0596ddc0136fc
       4a1dc060d526800851f87498768b755c
    12 02 04 08                             # 2 missing, packed, 2 bytes: groups [4, 8)
"#;

/// A lease of `zeros.bin` (feature `split`) asked for by a side that an
/// earlier lease brought its outboard: groups 4 to 7, without it.
fn leased_resume() -> pb::Resume {
    pb::Resume {
        outboard_held: true,
        ..resume()
    }
}

/// [`leased_resume`], 40 bytes: [`RESUME`] and one field.
pub(super) const LEASED_RESUME: &str = r#"
    0a 20                                   # 1 hash, 32 bytes: BLAKE3 of zeros.bin, raw
       27ddc0a1d824fa6befe0596ddc0136fc
       4a1dc060d526800851f87498768b755c
    12 02 04 08                             # 2 missing, packed, 2 bytes: groups [4, 8)
    18 01                                   # 3 outboard_held: true
"#;

/// The `WANT` of a side that holds the first half of `zeros.bin` (feature
/// `ranges`).
fn resumed_want() -> pb::Want {
    pb::Want {
        resume: vec![resume()],
        ..want()
    }
}

/// [`resumed_want`], 74 bytes.
pub(super) const RESUMED_WANT: &str = r#"
    0a 20                                   # 1 hashes, 32 bytes: BLAKE3 of zeros.bin, raw
       27ddc0a1d824fa6befe0596ddc0136fc
       4a1dc060d526800851f87498768b755c
    12 26                                   # 2 resume, 38 bytes: a Resume
       0a 20                                #   1 hash, 32 bytes
          27ddc0a1d824fa6befe0596ddc0136fc
          4a1dc060d526800851f87498768b755c
       12 02 04 08                          #   2 missing: groups [4, 8)
"#;

/// The `WANT` of a side that pulls and asks for `zeros.bin`.
fn want() -> pb::Want {
    pb::Want {
        hashes: raw(ZEROS_HASH),
        resume: Vec::new(),
    }
}

/// [`want`], 34 bytes.
pub(super) const WANT: &str = r#"
    0a 20                                   # 1 hashes, 32 bytes: BLAKE3 of zeros.bin, raw
       27ddc0a1d824fa6befe0596ddc0136fc
       4a1dc060d526800851f87498768b755c
"#;

/// The v2 `DONE` of a data stream that carried `hello.txt` and `zeros.bin`.
fn stream_done() -> pb::StreamDone {
    pb::StreamDone {
        assets: 2,
        bytes: 11 + (8 << 20),
    }
}

/// [`stream_done`], 7 bytes.
pub(super) const STREAM_DONE: &str = r#"
    08 02        # 1 assets: 2
    10 8b808004  # 2 bytes: 8388619 (11 + 8 MiB)
"#;

/// The `ASSET_BEGIN` of `zeros.bin`, sent in zstd chunks.
fn asset_header() -> pb::AssetHeader {
    pb::AssetHeader {
        hash: raw(ZEROS_HASH),
        size: 8 << 20,
        meta: Some(pb::AssetMeta {
            name: "zeros.bin".into(),
            mime_type: "application/octet-stream".into(),
            created_at_ms: 1_700_000_180_000,
            meta_updated_at_ms: 1_700_000_180_000,
            ..Default::default()
        }),
        codec: "zstd".into(),
        ..Default::default()
    }
}

/// `zeros.bin` by verified ranges (feature `ranges`): groups 2 to 7 of its 8.
fn ranged_asset_header() -> pb::AssetHeader {
    pb::AssetHeader {
        ranged: true,
        ranges: vec![2, 8],
        ..asset_header()
    }
}

/// [`ranged_asset_header`], 104 bytes: [`ASSET_HEADER`] and two fields.
pub(super) const RANGED_ASSET_HEADER: &str = r#"
    0a 20                                   # 1 hash, 32 bytes: BLAKE3 of 8 MiB of zeros, raw
       27ddc0a1d824fa6befe0596ddc0136fc
       4a1dc060d526800851f87498768b755c
    10 80808004                             # 2 size: 8388608 (8 MiB)
    1a 33                                   # 3 meta, 51 bytes: AssetMeta of zeros.bin
       0a 09 7a65726f732e62696e             # 1 name, 9 bytes: "zeros.bin"
       12 18                                # 2 mime_type, 24 bytes:
          6170706c69636174696f6e2f6f637465  # "application/octe"
          742d73747265616d                  # "t-stream"
       30 a0cea0ffbc31                      # 6 created_at_ms: 1700000180000
       38 a0cea0ffbc31                      # 7 meta_updated_at_ms: 1700000180000
    22 04 7a737464                          # 4 codec, 4 bytes: "zstd"
    28 01                                   # 5 ranged: true
    32 02 02 08                             # 6 ranges, packed, 2 bytes: groups [2, 8)
"#;

/// [`ranged_asset_header`] answering a [`leased_resume`]: no
/// `ASSET_OUTBOARD` follows.
fn ranged_asset_header_without_outboard() -> pb::AssetHeader {
    pb::AssetHeader {
        outboard_omitted: true,
        ..ranged_asset_header()
    }
}

/// [`ranged_asset_header_without_outboard`], 106 bytes:
/// [`RANGED_ASSET_HEADER`] and one field.
pub(super) const RANGED_ASSET_HEADER_WITHOUT_OUTBOARD: &str = r#"
    0a 20                                   # 1 hash, 32 bytes: BLAKE3 of 8 MiB of zeros, raw
       27ddc0a1d824fa6befe0596ddc0136fc
       4a1dc060d526800851f87498768b755c
    10 80808004                             # 2 size: 8388608 (8 MiB)
    1a 33                                   # 3 meta, 51 bytes: AssetMeta of zeros.bin
       0a 09 7a65726f732e62696e             # 1 name, 9 bytes: "zeros.bin"
       12 18                                # 2 mime_type, 24 bytes:
          6170706c69636174696f6e2f6f637465  # "application/octe"
          742d73747265616d                  # "t-stream"
       30 a0cea0ffbc31                      # 6 created_at_ms: 1700000180000
       38 a0cea0ffbc31                      # 7 meta_updated_at_ms: 1700000180000
    22 04 7a737464                          # 4 codec, 4 bytes: "zstd"
    28 01                                   # 5 ranged: true
    32 02 02 08                             # 6 ranges, packed, 2 bytes: groups [2, 8)
    38 01                                   # 7 outboard_omitted: true
"#;

/// [`asset_header`], 98 bytes.
pub(super) const ASSET_HEADER: &str = r#"
    0a 20                                   # 1 hash, 32 bytes: BLAKE3 of 8 MiB of zeros, raw
       27ddc0a1d824fa6befe0596ddc0136fc
       4a1dc060d526800851f87498768b755c
    10 80808004                             # 2 size: 8388608 (8 MiB)
    1a 33                                   # 3 meta, 51 bytes: AssetMeta of zeros.bin
       0a 09 7a65726f732e62696e             # 1 name, 9 bytes: "zeros.bin"
       12 18                                # 2 mime_type, 24 bytes:
          6170706c69636174696f6e2f6f637465  # "application/octe"
          742d73747265616d                  # "t-stream"
       30 a0cea0ffbc31                      # 6 created_at_ms: 1700000180000
       38 a0cea0ffbc31                      # 7 meta_updated_at_ms: 1700000180000
    22 04 7a737464                          # 4 codec, 4 bytes: "zstd"
"#;

/// `zeros.bin` refused: its stream ended halfway.
fn rejection() -> pb::Rejection {
    pb::Rejection {
        hash: raw(ZEROS_HASH),
        reason: "asset ended after 4194304 of 8388608 bytes".into(),
    }
}

/// [`rejection`], 78 bytes.
const REJECTION: &str = r#"
    0a 20                                # 1 hash, 32 bytes: BLAKE3 of zeros.bin, raw
       27ddc0a1d824fa6befe0596ddc0136fc
       4a1dc060d526800851f87498768b755c
    12 2a                                # 2 reason, 42 bytes:
       617373657420656e6465642061667465  # "asset ended afte"
       722034313934333034206f6620383338  # "r 4194304 of 838"
       38363038206279746573              # "8608 bytes"
"#;

/// The `SUMMARY` of a receiver that stored `hello.txt` and refused `zeros.bin`.
fn session_summary() -> pb::SessionSummary {
    pb::SessionSummary {
        received: 1,
        rejected: vec![rejection()],
    }
}

/// [`session_summary`], 82 bytes.
pub(super) const SESSION_SUMMARY: &str = r#"
    08 01                                   # 1 received: 1
    12 4e                                   # 2 rejected[0], 78 bytes: the Rejection vector
       0a 20                                # 1 hash, 32 bytes: BLAKE3 of zeros.bin, raw
          27ddc0a1d824fa6befe0596ddc0136fc
          4a1dc060d526800851f87498768b755c
       12 2a                                # 2 reason, 42 bytes:
          617373657420656e6465642061667465  # "asset ended afte"
          722034313934333034206f6620383338  # "r 4194304 of 838"
          38363038206279746573              # "8608 bytes"
"#;

mod tests {
    use prost::encoding::decode_varint;

    use super::*;
    use crate::asset::{AssetHash, Bundle, MetaUpdate, Summary};
    use crate::recon::compact::{self, DIGEST_PREFIX};

    /// Checks that `value` encodes to exactly the bytes of `golden` and that
    /// those bytes decode to exactly `value`.
    fn assert_golden<M: Message + Default + PartialEq + Debug>(value: &M, golden: &str) {
        let bytes = hex(golden);
        assert_eq!(
            ::hex::encode(value.encode_to_vec()),
            ::hex::encode(&bytes),
            "encoding of {value:?}"
        );
        assert_eq!(value.encoded_len(), bytes.len());
        assert_eq!(&M::decode(&bytes[..]).expect("golden bytes decode"), value);
    }

    #[test]
    fn asset_meta_golden() {
        assert_golden(&asset_meta(), ASSET_META);
    }

    #[test]
    fn asset_summary_golden() {
        assert_golden(&asset_summary(), ASSET_SUMMARY);
    }

    #[test]
    fn hash_list_golden() {
        assert_golden(&hash_list(), &HASH_LIST);
    }

    #[test]
    fn change_golden() {
        assert_golden(&change(), &CHANGE);
    }

    #[test]
    fn change_page_golden() {
        assert_golden(&change_page(), &CHANGE_PAGE);
    }

    #[test]
    fn peer_hash_set_golden() {
        assert_golden(&peer_hash_set(), PEER_HASH_SET);
    }

    #[test]
    fn asset_bundle_golden() {
        assert_golden(&asset_bundle(), ASSET_BUNDLE);
    }

    #[test]
    fn pull_request_golden() {
        assert_golden(&pull_request(), PULL_REQUEST);
    }

    #[test]
    fn pull_response_golden() {
        assert_golden(&pull_response(), PULL_RESPONSE);
    }

    #[test]
    fn push_response_golden() {
        assert_golden(&push_response(), PUSH_RESPONSE);
    }

    #[test]
    fn push_batch_goldens() {
        assert_golden(&push_batch(), PUSH_BATCH);
        assert_golden(&push_result_stored(), PUSH_RESULT_STORED);
        assert_golden(&push_result_wrong_hash(), PUSH_RESULT_WRONG_HASH);
        assert_golden(&push_result_too_large(), PUSH_RESULT_TOO_LARGE);
        assert_golden(&push_batch_response(), PUSH_BATCH_RESPONSE);
    }

    #[test]
    fn meta_update_golden() {
        assert_golden(&meta_update(), META_UPDATE);
    }

    #[test]
    fn hello_golden() {
        assert_golden(&hello(), HELLO);
        assert_golden(&granted_hello(), GRANTED_HELLO);
    }

    #[test]
    fn recon_golden() {
        assert_golden(&recon(), RECON);
        assert_golden(&coded_recon(), CODED_RECON);
    }

    #[test]
    fn want_golden() {
        assert_golden(&want(), WANT);
        assert_golden(&resume(), RESUME);
        assert_golden(&leased_resume(), LEASED_RESUME);
        assert_golden(&resumed_want(), RESUMED_WANT);
    }

    #[test]
    fn stream_done_golden() {
        assert_golden(&stream_done(), STREAM_DONE);
    }

    #[test]
    fn asset_header_golden() {
        assert_golden(&asset_header(), ASSET_HEADER);
        assert_golden(&ranged_asset_header(), RANGED_ASSET_HEADER);
        assert_golden(
            &ranged_asset_header_without_outboard(),
            RANGED_ASSET_HEADER_WITHOUT_OUTBOARD,
        );
    }

    #[test]
    fn rejection_golden() {
        assert_golden(&rejection(), REJECTION);
    }

    #[test]
    fn session_summary_golden() {
        assert_golden(&session_summary(), SESSION_SUMMARY);
    }

    /// proto3 writes no field that holds its default: every default message
    /// is zero bytes, and zero bytes decode to it. This is why an empty v1
    /// `DONE` payload reads as a v2 `StreamDone{assets: 0, bytes: 0}`.
    #[test]
    fn default_values_encode_to_nothing() {
        assert_golden(&pb::AssetMeta::default(), "");
        assert_golden(&pb::AssetSummary::default(), "");
        assert_golden(&pb::HashList::default(), "");
        assert_golden(&pb::PeerHashSet::default(), "");
        assert_golden(&pb::AssetBundle::default(), "");
        assert_golden(&pb::PullRequest::default(), "");
        assert_golden(&pb::PullResponse::default(), "");
        assert_golden(&pb::PushResponse::default(), "");
        assert_golden(&pb::PushBatch::default(), "");
        assert_golden(&pb::PushResult::default(), "");
        assert_golden(&pb::PushBatchResponse::default(), "");
        assert_golden(&pb::MetaUpdate::default(), "");
        assert_golden(&pb::Hello::default(), "");
        assert_golden(&pb::Recon::default(), "");
        assert_golden(&pb::StreamDone::default(), "");
        assert_golden(&pb::AssetHeader::default(), "");
        assert_golden(&pb::Rejection::default(), "");
        assert_golden(&pb::SessionSummary::default(), "");
    }

    /// A message field is written when it is present, even empty: a bundle
    /// with default metadata differs on the wire from one without any.
    #[test]
    fn present_empty_meta_is_written() {
        let empty_meta = pb::AssetBundle {
            meta: Some(pb::AssetMeta::default()),
            ..Default::default()
        };
        assert_golden(&empty_meta, "1a 00  # 3 meta, 0 bytes");
        let empty_meta = pb::AssetHeader {
            meta: Some(pb::AssetMeta::default()),
            ..Default::default()
        };
        assert_golden(&empty_meta, "1a 00  # 3 meta, 0 bytes");
    }

    /// The `.proto` the vectors pin.
    const PROTO: &str = include_str!("../../proto/cansync.proto");

    /// The field numbers `PROTO` declares for `message`.
    fn declared_fields(message: &str) -> BTreeSet<u64> {
        let start = PROTO
            .find(&format!("message {message} {{"))
            .unwrap_or_else(|| panic!("no message {message} in cansync.proto"));
        let body = &PROTO[start..];
        let body = &body[..body.find('}').expect("a closing brace")];
        body.lines()
            .filter_map(|line| {
                let line = line.split("//").next()?.trim();
                let (_, number) = line.strip_suffix(';')?.rsplit_once('=')?;
                number.trim().parse().ok()
            })
            .collect()
    }

    /// The field numbers at the top level of an encoded message.
    fn present_fields(mut bytes: &[u8]) -> BTreeSet<u64> {
        let mut fields = BTreeSet::new();
        while !bytes.is_empty() {
            let key = decode_varint(&mut bytes).expect("a field key");
            match key & 7 {
                0 => {
                    decode_varint(&mut bytes).expect("a varint");
                }
                2 => {
                    let len = decode_varint(&mut bytes).expect("a length");
                    bytes = &bytes[usize::try_from(len).expect("a length")..];
                }
                other => panic!("wire type {other} is not used by cansync.proto"),
            }
            fields.insert(key >> 3);
        }
        fields
    }

    #[test]
    fn every_message_has_a_vector_with_every_field_set() {
        let vectors = [
            ("AssetMeta", ASSET_META),
            ("AssetSummary", ASSET_SUMMARY),
            ("HashList", HASH_LIST.as_str()),
            ("Change", CHANGE.as_str()),
            ("ChangePage", CHANGE_PAGE.as_str()),
            ("PeerHashSet", PEER_HASH_SET),
            ("AssetBundle", ASSET_BUNDLE),
            ("PullRequest", PULL_REQUEST),
            ("PullResponse", PULL_RESPONSE),
            ("PushResponse", PUSH_RESPONSE),
            ("PushBatch", PUSH_BATCH),
            ("PushResult", PUSH_RESULT_STORED),
            ("PushResult", PUSH_RESULT_WRONG_HASH),
            ("PushResult", PUSH_RESULT_TOO_LARGE),
            ("PushBatchResponse", PUSH_BATCH_RESPONSE),
            ("MetaUpdate", META_UPDATE),
            ("Hello", HELLO),
            ("Hello", GRANTED_HELLO),
            ("Recon", RECON),
            ("Recon", CODED_RECON),
            ("Want", WANT),
            ("Want", RESUMED_WANT),
            ("Resume", RESUME),
            ("Resume", LEASED_RESUME),
            ("StreamDone", STREAM_DONE),
            ("AssetHeader", ASSET_HEADER),
            ("AssetHeader", RANGED_ASSET_HEADER),
            ("AssetHeader", RANGED_ASSET_HEADER_WITHOUT_OUTBOARD),
            ("Rejection", REJECTION),
            ("SessionSummary", SESSION_SUMMARY),
        ];
        let messages: BTreeSet<&str> = PROTO
            .lines()
            .filter_map(|line| line.strip_prefix("message "))
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        let with_vectors: BTreeSet<&str> = vectors.iter().map(|(name, _)| *name).collect();
        assert_eq!(with_vectors, messages, "a vector for every message");
        for name in with_vectors {
            let present: BTreeSet<u64> = vectors
                .iter()
                .filter(|(of, _)| *of == name)
                .flat_map(|(_, golden)| present_fields(&hex(golden)))
                .collect();
            assert_eq!(
                present,
                declared_fields(name),
                "fields set in the {name} vectors"
            );
        }
    }

    /// The vectors tell one consistent story, and their values are what the
    /// code builds from it.
    #[test]
    fn vectors_are_consistent_with_the_code() {
        let hello_txt = AssetHash::of(b"hello world");
        assert_eq!(hello_txt.to_hex(), HELLO_HASH);
        assert_eq!(AssetHash::of(b"").to_hex(), EMPTY_HASH);
        assert_eq!(AssetHash::of(&vec![0; 8 << 20]).to_hex(), ZEROS_HASH);

        let summary = Summary::of(hello_txt, 11, &asset_meta());
        assert_eq!(summary.to_pb(), asset_summary());
        assert_eq!(
            MetaUpdate::of(hello_txt, &asset_meta()).to_pb(),
            meta_update()
        );
        let bundle = Bundle {
            hash: hello_txt,
            data: Bytes::from_static(b"hello world"),
            meta: asset_meta(),
        };
        assert_eq!(bundle.into_pb(), asset_bundle());
        assert_eq!(
            compact::decode(&recon().packed_summaries, 1).expect("compact summaries"),
            [summary.truncated(DIGEST_PREFIX)]
        );
    }

    #[test]
    fn hex_skips_whitespace_and_comments() {
        assert_eq!(hex(""), Vec::<u8>::new());
        assert_eq!(hex("# only a comment"), Vec::<u8>::new());
        assert_eq!(
            hex("0a 02   # a field\n  CAfe # its value, # more comment\n"),
            [0x0a, 0x02, 0xca, 0xfe]
        );
    }

    #[test]
    #[should_panic(expected = "odd number of hex digits")]
    fn hex_refuses_an_odd_digit() {
        hex("0a 0");
    }

    #[test]
    #[should_panic(expected = "not a hex literal")]
    fn hex_refuses_what_is_not_hex() {
        hex("0x0a");
    }
}
