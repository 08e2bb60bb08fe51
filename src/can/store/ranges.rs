//! Verified ranges of one large asset, without IO: its *outboard* (the
//! BLAKE3 hash tree down to groups of [`GROUP_BYTES`]), the check of one
//! group against it, and the set of groups a partial asset holds.
//!
//! BLAKE3 hashes its input as a binary tree of 1 KiB chunks whose left
//! subtrees are always the largest power of two of chunks. A group of
//! [`GROUP_BYTES`] (a power of two of chunks) is therefore a whole subtree,
//! and its chaining value (the non-root hash of that subtree) can be
//! computed from the group's bytes and its offset alone
//! ([`blake3::hazmat`]). The outboard is the list of those values, 32 bytes
//! per MiB: 64 KiB for a 2 GiB asset. Merged up the same tree they give the
//! asset's hash, so:
//!
//! - an outboard is verified once, against the hash, by [`Outboard::new`];
//! - each group is then verified on its own, whoever sent it and in any
//!   order, by [`Outboard::verify_group`].
//!
//! An asset of one group has no outboard: its only group is checked
//! against the hash itself.
//!
//! Why this and not `bao-tree` (iroh-blobs' choice): the blake3 crate we
//! already build has the tree API, a group is checked at the same speed as
//! plain hashing (the same SIMD code over 1 MiB), and a flat list of group
//! values is all a transfer that sends whole groups needs. `bao-tree`'s
//! finer proofs serve ranges smaller than a group, which nothing here
//! asks for. Measured in PERFORMANCE.md ("Verified ranges").
//!
//! Where this is used: the store keeps outboards and partial assets
//! (`resume/`), the wire carries them (`ASSET_OUTBOARD`, the ranges of
//! `ASSET_BEGIN` and `WANT`), and the engine feeds received groups to the
//! store, which verifies each before it writes it.

use std::ops::Range;

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};

use crate::asset::AssetHash;

/// Bytes of one group: the unit a large asset is verified, sent, resumed
/// and split between sources in. A power of two of BLAKE3 chunks, and the
/// engine's default chunk, so a chunk frame carries one group.
pub const GROUP_BYTES: u64 = 1 << 20;

/// Bytes of one chaining value in an outboard.
pub const CV_BYTES: usize = 32;

/// Most groups of an asset that travels by ranges (64 GiB): its outboard,
/// which a receiver holds while it checks it, stays within 2 MiB. A larger
/// asset travels whole.
pub const MAX_RANGED_GROUPS: u64 = 1 << 16;

/// Most ranges a receiver may name for one asset: what a partial asset
/// holds is a few runs, not a scatter (a longer list is a violation).
pub const MAX_RANGES: usize = 1024;

/// Runs of groups, `[start, end)` each, ascending and disjoint.
pub type GroupRanges = Vec<Range<u64>>;

/// Every group of an asset of `size` bytes, as one run.
pub fn all_groups(size: u64) -> GroupRanges {
    std::iter::once(0..group_count(size)).collect()
}

/// How many groups an asset of `size` bytes has (one for an empty asset).
pub fn group_count(size: u64) -> u64 {
    size.div_ceil(GROUP_BYTES).max(1)
}

/// How many chaining values the outboard of an asset of `size` bytes has:
/// none for an asset of one group.
pub fn outboard_len(size: u64) -> u64 {
    match group_count(size) {
        1 => 0,
        groups => groups,
    }
}

/// The bytes of group `index` of an asset of `size` bytes.
pub fn group_range(size: u64, index: u64) -> Range<u64> {
    let start = (index * GROUP_BYTES).min(size);
    start..(start + GROUP_BYTES).min(size)
}

/// Why a range of an asset was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The outboard does not merge to the asset's hash.
    #[error("the outboard of {hash} does not match its hash")]
    Outboard {
        /// The asset.
        hash: AssetHash,
    },
    /// An outboard of the wrong number of values for the asset's size.
    #[error("an outboard of {got} values for an asset of {size} bytes (it has {expected})")]
    OutboardLength {
        /// Values given.
        got: u64,
        /// Values the size calls for.
        expected: u64,
        /// The asset's size.
        size: u64,
    },
    /// A group whose bytes do not hash to its value in the outboard.
    #[error("group {index} of {hash} does not match its hash")]
    Group {
        /// The asset.
        hash: AssetHash,
        /// The group.
        index: u64,
    },
    /// A group of the wrong length, or past the asset's end.
    #[error("group {index} of an asset of {size} bytes cannot hold {len} bytes")]
    GroupLength {
        /// The group.
        index: u64,
        /// Bytes given.
        len: u64,
        /// The asset's size.
        size: u64,
    },
    /// Ranges of groups that are not ascending, disjoint, non-empty and
    /// within the asset.
    #[error("malformed ranges: {0}")]
    Ranges(String),
}

/// The verified outboard of one asset: its size, hash and group values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outboard {
    hash: AssetHash,
    size: u64,
    /// One value per group, or none for an asset of one group.
    cvs: Vec<[u8; CV_BYTES]>,
}

impl Outboard {
    /// The outboard of an asset from its group values, checked against its
    /// hash: what a receiver does before it trusts any of them.
    pub fn new(hash: AssetHash, size: u64, cvs: Vec<[u8; CV_BYTES]>) -> Result<Self, RangeError> {
        let expected = outboard_len(size);
        if cvs.len() as u64 != expected {
            return Err(RangeError::OutboardLength {
                got: cvs.len() as u64,
                expected,
                size,
            });
        }
        let outboard = Self { hash, size, cvs };
        if outboard.cvs.is_empty() {
            return Ok(outboard);
        }
        let root = outboard.merge(0, size);
        if AssetHash::from(blake3::Hash::from(root)) != hash {
            return Err(RangeError::Outboard { hash });
        }
        Ok(outboard)
    }

    /// The outboard from its encoded values ([`encoded_cvs`](Self::encoded_cvs)).
    pub fn decode(hash: AssetHash, size: u64, raw: &[u8]) -> Result<Self, RangeError> {
        if !raw.len().is_multiple_of(CV_BYTES) {
            return Err(RangeError::OutboardLength {
                got: raw.len() as u64 / CV_BYTES as u64,
                expected: outboard_len(size),
                size,
            });
        }
        let cvs = raw
            .chunks_exact(CV_BYTES)
            .map(|cv| cv.try_into().expect("exact chunks"))
            .collect();
        Self::new(hash, size, cvs)
    }

    /// The asset's hash.
    pub fn hash(&self) -> AssetHash {
        self.hash
    }

    /// The asset's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Its number of groups.
    pub fn groups(&self) -> u64 {
        group_count(self.size)
    }

    /// The group values, concatenated: what `ASSET_OUTBOARD` frames and the
    /// store's outboard files carry.
    pub fn encoded_cvs(&self) -> Vec<u8> {
        self.cvs.iter().flatten().copied().collect()
    }

    /// Checks that `data` is group `index` of the asset.
    pub fn verify_group(&self, index: u64, data: &[u8]) -> Result<(), RangeError> {
        let range = group_range(self.size, index);
        if index >= self.groups() || data.len() as u64 != range.end - range.start {
            return Err(RangeError::GroupLength {
                index,
                len: data.len() as u64,
                size: self.size,
            });
        }
        let matches = if self.cvs.is_empty() {
            AssetHash::of(data) == self.hash
        } else {
            group_cv(index, data) == self.cvs[index as usize]
        };
        if matches {
            Ok(())
        } else {
            Err(RangeError::Group {
                hash: self.hash,
                index,
            })
        }
    }

    /// The chaining value of the subtree of `len` bytes at `start` (a
    /// subtree boundary of the asset's tree), the root when it is the whole.
    fn merge(&self, start: u64, len: u64) -> [u8; CV_BYTES] {
        if len <= GROUP_BYTES {
            return self.cvs[(start / GROUP_BYTES) as usize];
        }
        let left = blake3::hazmat::left_subtree_len(len);
        let (l, r) = (
            self.merge(start, left),
            self.merge(start + left, len - left),
        );
        if start == 0 && len == self.size {
            *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
        } else {
            merge_subtrees_non_root(&l, &r, Mode::Hash)
        }
    }
}

/// The chaining value of group `index`, from its bytes: the non-root hash
/// of its subtree. Valid for an asset of more than one group.
fn group_cv(index: u64, data: &[u8]) -> [u8; CV_BYTES] {
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(index * GROUP_BYTES);
    hasher.update(data);
    hasher.finalize_non_root()
}

/// Hashes an asset as it streams by and keeps its outboard on the way, at
/// the cost of hashing it: what a store does while it writes a blob.
#[derive(Default)]
pub struct OutboardHasher {
    /// The group being hashed and its bytes so far.
    current: blake3::Hasher,
    current_len: u64,
    /// Values of the groups before it.
    cvs: Vec<[u8; CV_BYTES]>,
    size: u64,
}

impl OutboardHasher {
    /// Takes the next bytes of the asset.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.current_len == GROUP_BYTES {
                // A full group with more to come: it is not the root.
                self.cvs.push(self.current.finalize_non_root());
                self.current = blake3::Hasher::new();
                self.current
                    .set_input_offset(self.cvs.len() as u64 * GROUP_BYTES);
                self.current_len = 0;
            }
            let take = data.len().min((GROUP_BYTES - self.current_len) as usize);
            self.current.update(&data[..take]);
            self.current_len += take as u64;
            self.size += take as u64;
            data = &data[take..];
        }
    }

    /// Bytes taken so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The asset's hash and its outboard.
    pub fn finalize(mut self) -> (AssetHash, Outboard) {
        if self.cvs.is_empty() {
            let hash = AssetHash::from(self.current.finalize());
            let outboard = Outboard {
                hash,
                size: self.size,
                cvs: Vec::new(),
            };
            return (hash, outboard);
        }
        self.cvs.push(self.current.finalize_non_root());
        let mut outboard = Outboard {
            hash: AssetHash::of(b""),
            size: self.size,
            cvs: self.cvs,
        };
        let hash = AssetHash::from(blake3::Hash::from(outboard.merge(0, outboard.size)));
        outboard.hash = hash;
        (hash, outboard)
    }
}

/// The groups a partial asset holds, as a bit per group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSet {
    groups: u64,
    bits: Vec<u64>,
    held: u64,
}

impl GroupSet {
    /// No group of `groups`.
    pub fn empty(groups: u64) -> Self {
        Self {
            groups,
            bits: vec![0; groups.div_ceil(64) as usize],
            held: 0,
        }
    }

    /// The set of its encoding ([`encode`](Self::encode)); `None` when the
    /// bytes are not a set of `groups`.
    pub fn decode(groups: u64, raw: &[u8]) -> Option<Self> {
        let words = groups.div_ceil(64) as usize;
        if raw.len() != words * 8 {
            return None;
        }
        let bits: Vec<u64> = raw
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("exact chunks")))
            .collect();
        let mut set = Self {
            groups,
            bits,
            held: 0,
        };
        if !groups.is_multiple_of(64) && set.bits[words - 1] >> (groups % 64) != 0 {
            return None;
        }
        set.held = set.bits.iter().map(|w| u64::from(w.count_ones())).sum();
        Some(set)
    }

    /// Little-endian words of bits.
    pub fn encode(&self) -> Vec<u8> {
        self.bits.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Marks group `index` held.
    pub fn insert(&mut self, index: u64) {
        let (word, bit) = ((index / 64) as usize, index % 64);
        if self.bits[word] & (1 << bit) == 0 {
            self.bits[word] |= 1 << bit;
            self.held += 1;
        }
    }

    /// Marks group `index` lacking.
    pub fn remove(&mut self, index: u64) {
        let (word, bit) = ((index / 64) as usize, index % 64);
        if self.bits[word] & (1 << bit) != 0 {
            self.bits[word] &= !(1 << bit);
            self.held -= 1;
        }
    }

    /// Whether group `index` is held.
    pub fn contains(&self, index: u64) -> bool {
        index < self.groups && self.bits[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Groups held.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Groups in all.
    pub fn groups(&self) -> u64 {
        self.groups
    }

    /// Every group is held.
    pub fn is_full(&self) -> bool {
        self.held == self.groups
    }

    /// The held groups, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.groups).filter(|&index| self.contains(index))
    }

    /// The runs of groups not held, ascending, at most [`MAX_RANGES`] (the
    /// last run then reaches the end, holes and all: asking for a group
    /// again costs bytes, never correctness).
    pub fn missing(&self) -> Vec<Range<u64>> {
        let mut runs: Vec<Range<u64>> = Vec::new();
        for index in (0..self.groups).filter(|&index| !self.contains(index)) {
            let full = runs.len() == MAX_RANGES;
            match runs.last_mut() {
                Some(run) if run.end == index => run.end += 1,
                Some(run) if full => {
                    run.end = self.groups;
                    break;
                }
                _ => runs.push(index..index + 1),
            }
        }
        runs
    }
}

/// Ranges of groups as they travel: `[start, end)` pairs, flattened.
pub fn flatten_ranges(ranges: &[Range<u64>]) -> Vec<u64> {
    ranges.iter().flat_map(|r| [r.start, r.end]).collect()
}

/// Parses flattened ranges of an asset of `groups` groups: pairs, each
/// non-empty, ascending and disjoint, within the asset, at most
/// [`MAX_RANGES`].
pub fn parse_ranges(flat: &[u64], groups: u64) -> Result<Vec<Range<u64>>, RangeError> {
    if !flat.len().is_multiple_of(2) {
        return Err(RangeError::Ranges("an odd number of bounds".into()));
    }
    if flat.len() / 2 > MAX_RANGES {
        return Err(RangeError::Ranges(format!(
            "{} ranges, more than {MAX_RANGES}",
            flat.len() / 2
        )));
    }
    let mut at = 0;
    let mut ranges = Vec::with_capacity(flat.len() / 2);
    for pair in flat.chunks_exact(2) {
        let (start, end) = (pair[0], pair[1]);
        if start < at || start >= end || end > groups {
            return Err(RangeError::Ranges(format!(
                "{start}..{end} after {at}, in an asset of {groups} groups"
            )));
        }
        at = end;
        ranges.push(start..end);
    }
    Ok(ranges)
}

#[cfg(test)]
// Runs of groups are ranges: a list of one is a list of one run.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn data(len: u64) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn outboard_of(bytes: &[u8]) -> (AssetHash, Outboard) {
        let mut hasher = OutboardHasher::default();
        // Odd pieces: group boundaries fall inside them.
        for piece in bytes.chunks(333_333) {
            hasher.update(piece);
        }
        hasher.finalize()
    }

    const SIZES: [u64; 9] = [
        0,
        1,
        GROUP_BYTES - 1,
        GROUP_BYTES,
        GROUP_BYTES + 1,
        2 * GROUP_BYTES,
        3 * GROUP_BYTES + 5,
        4 * GROUP_BYTES,
        7 * GROUP_BYTES + 1024,
    ];

    /// The outboard's tree is BLAKE3's: it merges to the plain hash for
    /// sizes on and off group boundaries, and checks itself.
    #[test]
    fn the_outboard_merges_to_the_plain_hash() {
        for size in SIZES {
            let bytes = data(size);
            let (hash, outboard) = outboard_of(&bytes);
            assert_eq!(hash, AssetHash::of(&bytes), "size {size}");
            assert_eq!(outboard.encoded_cvs().len() as u64, 32 * outboard_len(size));
            let again = Outboard::decode(hash, size, &outboard.encoded_cvs()).unwrap();
            assert_eq!(again, outboard);
            for index in 0..group_count(size) {
                let range = group_range(size, index);
                outboard
                    .verify_group(index, &bytes[range.start as usize..range.end as usize])
                    .unwrap();
            }
        }
    }

    #[test]
    fn a_changed_group_or_outboard_is_refused() {
        let size = 3 * GROUP_BYTES + 5;
        let mut bytes = data(size);
        let (hash, outboard) = outboard_of(&bytes);
        bytes[(GROUP_BYTES + 10) as usize] ^= 1;
        let group = &bytes[GROUP_BYTES as usize..2 * GROUP_BYTES as usize];
        assert_eq!(
            outboard.verify_group(1, group),
            Err(RangeError::Group { hash, index: 1 })
        );
        // A group checked at another index fails too: offsets are in the tree.
        let first = &bytes[..GROUP_BYTES as usize];
        outboard.verify_group(0, first).unwrap();
        assert!(outboard.verify_group(2, first).is_err());
        assert!(matches!(
            outboard.verify_group(3, first),
            Err(RangeError::GroupLength { .. })
        ));

        let mut cvs = outboard.encoded_cvs();
        cvs[40] ^= 1;
        assert_eq!(
            Outboard::decode(hash, size, &cvs),
            Err(RangeError::Outboard { hash })
        );
        assert!(matches!(
            Outboard::decode(hash, size, &cvs[..64]),
            Err(RangeError::OutboardLength { .. })
        ));
        // One group: checked against the hash itself.
        let small = data(100);
        let (hash, outboard) = outboard_of(&small);
        assert!(outboard.verify_group(0, &small[1..]).is_err());
        assert!(Outboard::new(hash, 100, vec![]).is_ok());
    }

    #[test]
    fn a_group_set_names_its_missing_runs() {
        let mut set = GroupSet::empty(130);
        assert_eq!(set.missing(), vec![0..130]);
        for index in [0, 1, 2, 64, 65, 129] {
            set.insert(index);
        }
        set.insert(1);
        assert_eq!(set.held(), 6);
        assert_eq!(set.missing(), vec![3..64, 66..129]);
        let again = GroupSet::decode(130, &set.encode()).unwrap();
        assert_eq!(again, set);
        assert!(GroupSet::decode(200, &set.encode()).is_none());
        let mut junk = set.encode();
        junk[16 + 7] = 0xff;
        assert!(GroupSet::decode(130, &junk).is_none(), "bits past the end");
        set.remove(64);
        assert_eq!(set.missing(), vec![3..65, 66..129]);
        assert_eq!(GroupSet::empty(0).missing(), vec![]);
    }

    #[test]
    fn a_scattered_set_asks_again_rather_than_name_every_hole() {
        let groups = 4 * MAX_RANGES as u64;
        let mut set = GroupSet::empty(groups);
        for index in (0..groups).step_by(2) {
            set.insert(index);
        }
        let missing = set.missing();
        assert_eq!(missing.len(), MAX_RANGES);
        assert_eq!(missing.last().unwrap().end, groups);
        parse_ranges(&flatten_ranges(&missing), groups).unwrap();
    }

    #[test]
    fn ranges_parse_only_when_ascending_disjoint_and_within() {
        assert_eq!(parse_ranges(&[0, 2, 5, 7], 7).unwrap(), vec![0..2, 5..7]);
        for bad in [&[0, 2, 1, 3][..], &[2, 2], &[0, 8], &[3], &[4, 5, 0, 1]] {
            assert!(parse_ranges(bad, 7).is_err(), "{bad:?}");
        }
        let many: Vec<u64> = (0..=MAX_RANGES as u64)
            .flat_map(|i| [2 * i, 2 * i + 1])
            .collect();
        assert!(parse_ranges(&many, u64::MAX).is_err());
    }
}
