//! Tests of the coding, the wire form and the decoder. Sets are random but
//! seeded, so every failure replays.

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::wire::zigzag;
use super::*;
use prost::encoding::encode_varint;

/// A realistic random summary's element: a random hash and digest, times
/// around 2023 and sizes below a terabyte (so its cells stay narrow).
pub(super) fn random_element(rng: &mut SmallRng) -> Element {
    let mut words: [u64; ELEMENT_WORDS] = rng.random();
    words[4] = 1_700_000_000_000 + rng.random_range(0..1u64 << 36);
    words[5] = words[4] + rng.random_range(0..1u64 << 30);
    words[6] = rng.random_range(0..1u64 << 40);
    Element(words)
}

/// The same asset with other metadata: same hash, creation time and size.
pub(super) fn edited(element: &Element, rng: &mut SmallRng) -> Element {
    let mut words = element.0;
    words[5] += 1 + rng.random_range(0..1u64 << 20);
    words[7..].fill_with(|| rng.random());
    Element(words)
}

/// Two sets of a known difference.
pub(super) struct Pair {
    /// Our set.
    pub(super) ours: Vec<Element>,
    /// Their set.
    pub(super) theirs: Vec<Element>,
    /// Elements only in ours, sorted.
    pub(super) only_ours: Vec<Element>,
    /// Elements only in theirs, sorted.
    pub(super) only_theirs: Vec<Element>,
}

impl Pair {
    /// `common` shared assets, `a` and `b` assets on one side only, and
    /// `edits` shared assets whose metadata differs (one element each side).
    pub(super) fn random(seed: u64, common: usize, a: usize, b: usize, edits: usize) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut ours = Vec::with_capacity(common + a + edits);
        let mut theirs = Vec::with_capacity(common + b + edits);
        let mut only_ours = Vec::new();
        let mut only_theirs = Vec::new();
        for _ in 0..common {
            let e = random_element(&mut rng);
            ours.push(e);
            theirs.push(e);
        }
        for _ in 0..a {
            only_ours.push(random_element(&mut rng));
        }
        for _ in 0..b {
            only_theirs.push(random_element(&mut rng));
        }
        for _ in 0..edits {
            let e = random_element(&mut rng);
            only_ours.push(e);
            only_theirs.push(edited(&e, &mut rng));
        }
        ours.extend_from_slice(&only_ours);
        theirs.extend_from_slice(&only_theirs);
        only_ours.sort();
        only_theirs.sort();
        Self {
            ours,
            theirs,
            only_ours,
            only_theirs,
        }
    }

    /// The difference size.
    pub(super) fn d(&self) -> usize {
        self.only_ours.len() + self.only_theirs.len()
    }
}

/// The first `m` cells of a set.
pub(super) fn coded(set: &[Element], m: usize) -> CodedCells {
    let mut cells = CodedCells::new(m);
    for e in set {
        cells.insert(e);
    }
    cells
}

fn sorted(mut d: Decoded) -> Decoded {
    d.only_ours.sort();
    d.only_theirs.sort();
    d
}

/// Feeds their cells in chunks of the given sizes (cycled) until decoded:
/// the difference and how many cells it took.
fn decode_in_chunks(ours: &CodedCells, theirs: &CodedCells, chunks: &[usize]) -> (Decoded, usize) {
    let mut decoder = Decoder::new();
    let mut at = 0;
    for &size in chunks.iter().cycle() {
        assert!(at < ours.len(), "not decoded within {} cells", ours.len());
        let end = (at + size).min(ours.len());
        let progress = decoder
            .add(ours.cells(at..end), theirs.cells(at..end))
            .expect("honest cells are consistent");
        at = end;
        if let Progress::Decoded(d) = progress {
            return (sorted(d), at);
        }
    }
    unreachable!("the cycle only ends by returning")
}

fn summary_strategy() -> impl Strategy<Value = Summary> {
    (
        any::<[u8; 32]>(),
        any::<i64>(),
        any::<i64>(),
        any::<u64>(),
        any::<[u8; 32]>(),
    )
        .prop_map(|(hash, created, updated, size, digest)| Summary {
            hash: AssetHash::from_bytes(hash),
            created_at_ms: created,
            size,
            version: MetaVersion {
                updated_at_ms: updated,
                digest,
            },
        })
}

fn cell_strategy() -> impl Strategy<Value = Cell> {
    (
        any::<[u64; ELEMENT_WORDS]>(),
        any::<u64>(),
        any::<i64>(),
        0..4u8,
    )
        .prop_map(|(mut words, checksum, count, shape)| {
            // Mostly realistic (narrow) sums; a quarter left as drawn (wide).
            if shape > 0 {
                for w in &mut words[4..7] {
                    *w = ((((*w) << 16) as i64) >> 16) as u64;
                }
            }
            Cell {
                sum: Element(words),
                checksum,
                count,
            }
        })
}

/// Two values of one asset's metadata at the same time whose digests share
/// their first eight bytes (what protocol version 2 carried, and what about
/// 2^32 tries make) are two elements, and a reconciliation finds both.
#[test]
fn metadata_whose_digests_share_a_prefix_are_told_apart() {
    let summary = |digest: [u8; 32]| Summary {
        hash: AssetHash::from_bytes([9; 32]),
        created_at_ms: 1_700_000_000_000,
        size: 4096,
        version: MetaVersion::announced(1_700_000_000_123, &digest),
    };
    let mut twin = [0xab; 32];
    twin[31] ^= 1;
    let (ours, theirs) = (summary([0xab; 32]), summary(twin));
    assert_ne!(Element::of(&ours), Element::of(&theirs));
    assert_eq!(
        Element::of(&theirs).summary(),
        theirs,
        "the whole digest comes back"
    );

    let (m, ours_e, theirs_e) = (16, Element::of(&ours), Element::of(&theirs));
    let mut decoder = Decoder::new();
    let progress = decoder
        .add(
            coded(&[ours_e], m).cells(0..m),
            coded(&[theirs_e], m).cells(0..m),
        )
        .unwrap();
    let Progress::Decoded(found) = progress else {
        panic!("one difference each way decodes from sixteen cells");
    };
    assert_eq!(
        (found.only_ours, found.only_theirs),
        (vec![ours_e], vec![theirs_e])
    );
}

// --- The mapping and the checksum: pinned, a change is a protocol change. ---

#[test]
fn checksum_of_a_fixed_element_is_pinned() {
    let element = Element::of(&Summary {
        hash: AssetHash::from_bytes(std::array::from_fn(|i| i as u8)),
        created_at_ms: 1_700_000_000_000,
        size: 4096,
        version: MetaVersion::announced(1_700_000_000_123, &[0xab; 32]),
    });
    assert_eq!(element.checksum(), PINNED_CHECKSUM);
    assert_eq!(Element::default().checksum(), PINNED_ZERO_CHECKSUM);
}

#[test]
fn first_indices_of_a_fixed_checksum_are_pinned() {
    let first: Vec<usize> = indices(0x0123_4567_89ab_cdef, usize::MAX)
        .take(16)
        .collect();
    assert_eq!(first, PINNED_INDICES);
    let other: Vec<usize> = indices(0, usize::MAX).take(16).collect();
    assert_eq!(other, PINNED_INDICES_ZERO);
}

/// The checksum of the fixed element above.
const PINNED_CHECKSUM: u64 = 0xff71_1d18_cdb2_6ba4;
/// The checksum of the all-zero element.
const PINNED_ZERO_CHECKSUM: u64 = 0x4820_7ea4_c0b2_e080;
/// The first cells of checksum `0x0123_4567_89ab_cdef`.
const PINNED_INDICES: [usize; 16] = [
    0, 4, 5, 14, 18, 278, 981, 1155, 1579, 1600, 4129, 4607, 7146, 9571, 12423, 26550,
];
/// The first cells of checksum 0.
const PINNED_INDICES_ZERO: [usize; 16] = [
    0, 1, 3, 27, 28, 89, 157, 379, 432, 874, 896, 1424, 1633, 2257, 3030, 3601,
];

/// The next index from `l` for the draw `u`, by the definition: the
/// smallest `j > l` with `(j+1)(j+2)·u ≥ (l+1)(l+2)·2^53`, scanning up to
/// `cap`.
fn next_by_scan(l: u64, u: u64, cap: u64) -> Option<u64> {
    let target = (u128::from(l + 1) * u128::from(l + 2)) << 53;
    (l + 1..=cap).find(|&j| u128::from(j + 1) * u128::from(j + 2) * u128::from(u) >= target)
}

#[test]
fn the_mapping_settles_each_step_exactly() {
    const CAP: u64 = 200_000;
    let mut rng = SmallRng::seed_from_u64(1);
    for _ in 0..200 {
        let checksum: u64 = rng.random();
        let mut mapping = Mapping::new(checksum);
        let mut state = checksum;
        while mapping.index < 5_000 {
            let l = mapping.index;
            state = state.wrapping_add(GOLDEN);
            let u = (mix(state) >> 11) + 1;
            mapping.advance();
            match next_by_scan(l, u, CAP) {
                Some(j) => assert_eq!(mapping.index, j, "checksum {checksum:#x} from {l}"),
                None => assert!(mapping.index > CAP),
            }
        }
    }
}

#[test]
fn each_cell_holds_an_element_with_probability_two_over_i_plus_two() {
    const SAMPLES: usize = 20_000;
    let probed = [1usize, 2, 10, 100, 1000];
    let mut hits = [0usize; 5];
    let mut rng = SmallRng::seed_from_u64(2);
    for _ in 0..SAMPLES {
        for i in indices(rng.random(), 1001) {
            if let Some(k) = probed.iter().position(|&p| p == i) {
                hits[k] += 1;
            }
        }
    }
    for (&i, &hit) in probed.iter().zip(&hits) {
        let p = 2.0 / (i as f64 + 2.0);
        let mean = p * SAMPLES as f64;
        let sigma = (mean * (1.0 - p)).sqrt();
        assert!(
            (hit as f64 - mean).abs() < 4.0 * sigma,
            "cell {i}: {hit} of {SAMPLES}, expected {mean:.0}"
        );
    }
}

#[test]
fn mappings_increase_and_end_below_the_index_limit() {
    let mut rng = SmallRng::seed_from_u64(3);
    for _ in 0..50 {
        let all: Vec<usize> = indices(rng.random(), usize::MAX).collect();
        assert_eq!(all[0], 0);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert!((*all.last().unwrap() as u64) < INDEX_LIMIT);
        // About 2 ln(2^31) + 1 ≈ 44 cells below 2^32.
        assert!((15..120).contains(&all.len()), "{} cells", all.len());
    }
}

proptest! {
    #[test]
    fn an_element_gives_back_its_truncated_summary(summary in summary_strategy()) {
        prop_assert_eq!(Element::of(&summary).summary(), summary.truncated(DIGEST_PREFIX));
        prop_assert_eq!(Element::of(&summary).hash(), summary.hash);
    }
}

// --- Coded cells. ---

proptest! {
    #[test]
    fn inserting_then_removing_restores_the_cells(
        seed in any::<u64>(), n in 0usize..100, m in 1usize..300,
    ) {
        let pair = Pair::random(seed, n, 1, 0, 0);
        let before = coded(&pair.theirs, m);
        let mut cells = before.clone();
        let extra = pair.only_ours[0];
        cells.insert(&extra);
        prop_assert_ne!(&cells, &before);
        cells.remove(&extra);
        prop_assert_eq!(&cells, &before);
        // And the other way round: removing a non-member, then adding it.
        cells.remove(&extra);
        cells.insert(&extra);
        prop_assert_eq!(&cells, &before);
    }

    #[test]
    fn cells_do_not_depend_on_insertion_order(
        seed in any::<u64>(), n in 0usize..150, m in 1usize..300, rotate in any::<usize>(),
    ) {
        let pair = Pair::random(seed, n, 0, 0, 0);
        let mut shuffled = pair.ours.clone();
        shuffled.reverse();
        if !shuffled.is_empty() {
            let k = rotate % shuffled.len();
            shuffled.rotate_left(k);
        }
        let mut sorted = pair.ours.clone();
        sorted.sort();
        prop_assert_eq!(coded(&pair.ours, m), coded(&shuffled, m));
        prop_assert_eq!(coded(&pair.ours, m), coded(&sorted, m));
    }

    #[test]
    fn a_difference_of_cells_is_the_cells_of_the_difference(
        seed in any::<u64>(), n in 0usize..100, a in 0usize..20, b in 0usize..20,
    ) {
        let pair = Pair::random(seed, n, a, b, 3);
        let (ours, theirs) = (coded(&pair.ours, 128), coded(&pair.theirs, 128));
        let (plus, minus) = (coded(&pair.only_ours, 128), coded(&pair.only_theirs, 128));
        for i in 0..128 {
            let mut left = *ours.cell(i).unwrap();
            left.subtract(theirs.cell(i).unwrap());
            let mut right = *plus.cell(i).unwrap();
            right.subtract(minus.cell(i).unwrap());
            prop_assert_eq!(left, right, "cell {}", i);
        }
    }
}

#[test]
fn a_shorter_table_is_a_prefix_of_a_longer_one() {
    let pair = Pair::random(4, 300, 0, 0, 0);
    let (short, long) = (coded(&pair.ours, 100), coded(&pair.ours, 1000));
    assert_eq!(short.cells(0..100), long.cells(0..100));
    assert_eq!(short.cell(0).unwrap().count, 300);
    assert_eq!(
        short.cells(90..200).len(),
        10,
        "ranges are cut to the cells kept"
    );
    assert!(short.cells(150..200).is_empty());
    assert!(short.cell(100).is_none());
    assert!(CodedCells::new(0).is_empty());
}

// --- The wire form. ---

/// Bytes `v` takes as a varint.
fn varint_len(v: u64) -> usize {
    prost::encoding::encoded_len_varint(v)
}

proptest! {
    #[test]
    fn cells_round_trip(cells in proptest::collection::vec(cell_strategy(), 0..40)) {
        let bytes = encode_cells(&cells);
        prop_assert_eq!(decode_cells(&bytes, cells.len()).unwrap(), cells.clone());
        for cell in &cells {
            prop_assert!(encode_cells(std::slice::from_ref(cell)).len() <= 2 + CELL_WIRE_MAX);
        }
    }

    #[test]
    fn any_payload_decodes_or_errs(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(cells) = decode_cells(&bytes, 16) {
            prop_assert!(cells.len() <= 16);
        }
    }

    #[test]
    fn every_strict_prefix_is_refused(cells in proptest::collection::vec(cell_strategy(), 1..6)) {
        let bytes = encode_cells(&cells);
        for end in 0..bytes.len() {
            prop_assert!(decode_cells(&bytes[..end], cells.len()).is_err(), "prefix of {}", end);
        }
    }
}

#[test]
fn a_real_sets_cells_are_narrow() {
    let mut pair = Pair::random(5, 2000, 0, 0, 0);
    // Negative times and the largest size stay narrow: they sign-extend.
    pair.ours[0].0[4] = (-5i64) as u64;
    pair.ours[1].0[5] = (-1_000_000_000_000i64) as u64;
    pair.ours[2].0[6] = u64::MAX;
    let cells = coded(&pair.ours, 300);
    let bytes = encode_cells(cells.cells(0..300));
    let expected = varint_len(300)
        + 300 / 8
        + 1
        + cells
            .cells(0..300)
            .iter()
            .map(|c| varint_len(zigzag(c.count)) + CELL_WIRE_MIN - 1)
            .sum::<usize>();
    assert_eq!(bytes.len(), expected, "no cell is wide");
    assert_eq!(decode_cells(&bytes, 300).unwrap(), cells.cells(0..300));
}

#[test]
fn huge_values_go_wide_and_come_back_exactly() {
    for (word, value) in [(4, i64::MIN as u64), (5, 1u64 << 47), (6, 1u64 << 60)] {
        let mut e = Element::default();
        e.0[word] = value;
        let mut cells = CodedCells::new(8);
        cells.insert(&e);
        let bytes = encode_cells(cells.cells(0..1));
        assert_eq!(bytes[1], 1, "cell 0 is flagged wide");
        assert_eq!(bytes.len(), 1 + 1 + 1 + 8 + WIDE_SUM_LEN);
        let back = decode_cells(&bytes, 1).unwrap();
        assert_eq!(back[0].sum, e);
        assert_eq!(back[0].sum.summary(), e.summary());
    }
    // The longest cell: a wide sum and a 10-byte count.
    let mut cell = Cell::ZERO;
    cell.count = i64::MIN;
    cell.sum.0[6] = 1 << 62;
    assert_eq!(encode_cells(&[cell]).len(), 2 + CELL_WIRE_MAX);
}

#[test]
fn more_cells_than_the_limit_are_refused() {
    let cells = vec![Cell::ZERO; 10];
    let bytes = encode_cells(&cells);
    assert_eq!(
        decode_cells(&bytes, 9),
        Err(RibltError::TooManyCells {
            count: 10,
            limit: 9
        })
    );
    assert_eq!(decode_cells(&bytes, 10).unwrap(), cells);
}

#[test]
fn a_huge_declared_count_is_refused_before_allocating() {
    // Allocating for 2^40 or 2^64 cells would abort the test process.
    for count in [1u64 << 40, u64::MAX] {
        let mut bytes = Vec::new();
        encode_varint(count, &mut bytes);
        bytes.extend_from_slice(&[0; 100]);
        assert!(matches!(
            decode_cells(&bytes, usize::MAX),
            Err(RibltError::Truncated { .. })
        ));
        assert!(matches!(
            decode_cells(&bytes, MAX_CELLS),
            Err(RibltError::TooManyCells { .. })
        ));
    }
}

#[test]
fn a_truncated_wide_cell_is_refused() {
    // The up-front check counts narrow cells; a wide one is checked as read.
    let mut cell = Cell::ZERO;
    cell.sum.0[6] = 1 << 62;
    let bytes = encode_cells(&[cell, Cell::ZERO]);
    let cut = &bytes[..bytes.len() - 1];
    assert!(matches!(
        decode_cells(cut, 2),
        Err(RibltError::Truncated { .. })
    ));
    let narrow = encode_cells(&[Cell::ZERO, Cell::ZERO]);
    assert!(matches!(
        decode_cells(&narrow[..narrow.len() - 1], 2),
        Err(RibltError::Truncated { .. })
    ));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode_cells(&[Cell::ZERO; 3]);
    bytes.push(0);
    assert!(matches!(
        decode_cells(&bytes, 3),
        Err(RibltError::Malformed(_))
    ));
}

#[test]
fn wide_flags_past_the_last_cell_are_refused() {
    let mut bytes = encode_cells(&[Cell::ZERO; 3]);
    assert_eq!(bytes[1], 0);
    bytes[1] = 1 << 3;
    assert!(matches!(
        decode_cells(&bytes, 3),
        Err(RibltError::Malformed(_))
    ));
    // A full last byte has no bit past the end.
    let eight = encode_cells(&[Cell::ZERO; 8]);
    assert_eq!(decode_cells(&eight, 8).unwrap().len(), 8);
}

// --- The decoder. ---

#[test]
fn identical_sets_decode_at_one_cell() {
    for (seed, n) in [(6, 0), (7, 1), (8, 1000)] {
        let pair = Pair::random(seed, n, 0, 0, 0);
        let (ours, theirs) = (coded(&pair.ours, 64), coded(&pair.theirs, 64));
        let (decoded, used) = decode_in_chunks(&ours, &theirs, &[1]);
        assert_eq!(used, 1);
        assert_eq!(decoded, Decoded::default());
    }
}

#[test]
fn no_cell_is_never_decoded() {
    let mut decoder = Decoder::new();
    assert_eq!(decoder.add(&[], &[]), Ok(Progress::NeedMore));
    assert_eq!(decoder.received(), 0);
    assert_eq!(
        decoder.add(&[Cell::ZERO], &[Cell::ZERO]),
        Ok(Progress::Decoded(Decoded::default()))
    );
    assert_eq!(decoder.received(), 1);
    assert_eq!(
        decoder.add(&[], &[]),
        Ok(Progress::Decoded(Decoded::default())),
        "an empty chunk after a decoded prefix changes nothing"
    );
}

#[test]
fn chunks_of_different_lengths_are_refused() {
    assert_eq!(
        Decoder::new().add(&[Cell::ZERO; 2], &[Cell::ZERO]),
        Err(PeelError::LengthMismatch { ours: 2, theirs: 1 })
    );
}

/// Decodes a pair cell by cell and checks the difference and its size.
fn check_pair(pair: &Pair, m: usize) -> usize {
    let (ours, theirs) = (coded(&pair.ours, m), coded(&pair.theirs, m));
    let (decoded, used) = decode_in_chunks(&ours, &theirs, &[1]);
    assert_eq!(decoded.only_ours, pair.only_ours);
    assert_eq!(decoded.only_theirs, pair.only_theirs);
    used
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn empty_against_a_set_of_n(seed in any::<u64>(), n in 1usize..200) {
        let pair = Pair::random(seed, 0, 0, n, 0);
        check_pair(&pair, 16 * n + 64);
        let swapped = Pair::random(seed, 0, n, 0, 0);
        check_pair(&swapped, 16 * n + 64);
    }

    #[test]
    fn disjoint_sets(seed in any::<u64>(), a in 1usize..100, b in 1usize..100) {
        check_pair(&Pair::random(seed, 0, a, b, 0), 8 * (a + b) + 64);
    }

    #[test]
    fn metadata_edits_are_one_element_each_side(
        seed in any::<u64>(), common in 0usize..300, edits in 1usize..50,
    ) {
        let pair = Pair::random(seed, common, 0, 0, edits);
        check_pair(&pair, 16 * edits + 64);
        let ours: Vec<_> = pair.only_ours.iter().map(Element::hash).collect();
        let mut theirs: Vec<_> = pair.only_theirs.iter().map(Element::hash).collect();
        theirs.sort();
        let mut ours_sorted = ours.clone();
        ours_sorted.sort();
        prop_assert_eq!(ours_sorted, theirs, "the same assets on both sides");
    }

    #[test]
    fn one_side_a_subset(seed in any::<u64>(), common in 0usize..300, extra in 1usize..60) {
        check_pair(&Pair::random(seed, common, extra, 0, 0), 16 * extra + 64);
        check_pair(&Pair::random(seed, common, 0, extra, 0), 16 * extra + 64);
    }

    #[test]
    fn random_sets(
        seed in any::<u64>(), common in 0usize..400,
        a in 0usize..60, b in 0usize..60, edits in 0usize..20,
    ) {
        let pair = Pair::random(seed, common, a, b, edits);
        let used = check_pair(&pair, 8 * pair.d() + 64);
        prop_assert!(used >= 1);
    }

    #[test]
    fn chunk_sizes_do_not_change_the_result(
        seed in any::<u64>(), d in 1usize..80,
        chunks in proptest::collection::vec(1usize..50, 1..8),
    ) {
        let pair = Pair::random(seed, 200, d / 2, d - d / 2, 0);
        let m = 8 * d + 64;
        let (ours, theirs) = (coded(&pair.ours, m), coded(&pair.theirs, m));
        let (one_by_one, shortest) = decode_in_chunks(&ours, &theirs, &[1]);
        let (chunked, used) = decode_in_chunks(&ours, &theirs, &chunks);
        prop_assert_eq!(&chunked, &one_by_one);
        // A longer prefix decodes too, so the first chunk to reach the
        // shortest decodable prefix is the one that reports it.
        let mut ends = chunks.iter().cycle().scan(0, |at, &c| {
            *at += c;
            Some(*at)
        });
        let first_end = ends.find(|&end| end >= shortest).unwrap().min(m);
        prop_assert_eq!(used, first_end);
        // Everything at once as well.
        let mut decoder = Decoder::new();
        match decoder.add(ours.cells(0..m), theirs.cells(0..m)).unwrap() {
            Progress::Decoded(all) => prop_assert_eq!(sorted(all), chunked),
            Progress::NeedMore => prop_assert!(false, "a longer prefix did not decode"),
        }
    }

    #[test]
    fn corrupt_cells_never_decode(
        seed in any::<u64>(), d in 0usize..60, victim in any::<usize>(),
        word in 0usize..ELEMENT_WORDS + 2, flip in 1u64..,
        chunks in proptest::collection::vec(1usize..40, 1..5),
    ) {
        let pair = Pair::random(seed, 100, d / 2, d - d / 2, 0);
        let m = 8 * d + 64;
        let ours = coded(&pair.ours, m);
        let mut theirs = coded(&pair.theirs, m);
        let (_, shortest) = decode_in_chunks(&ours, &theirs, &[1]);
        let cell = &mut theirs.cells[victim % shortest];
        match word {
            0..ELEMENT_WORDS => cell.sum.0[word] ^= flip,
            ELEMENT_WORDS => cell.checksum ^= flip,
            _ => cell.count = cell.count.wrapping_add(flip as i64 | 1),
        }
        let mut decoder = Decoder::new();
        let mut at = 0;
        for &size in chunks.iter().cycle() {
            if at >= m {
                break;
            }
            let end = (at + size).min(m);
            match decoder.add(ours.cells(at..end), theirs.cells(at..end)) {
                Ok(Progress::NeedMore) => {}
                Err(PeelError::Inconsistent) => break,
                other => prop_assert!(false, "corrupt cells gave {:?}", other),
            }
            at = end;
        }
    }

    #[test]
    fn garbage_cells_never_panic(
        cells in proptest::collection::vec(cell_strategy(), 0..200),
        chunks in proptest::collection::vec(1usize..40, 1..5),
    ) {
        let zero = vec![Cell::ZERO; cells.len()];
        let mut decoder = Decoder::new();
        let mut at = 0;
        for &size in chunks.iter().cycle() {
            if at >= cells.len() {
                break;
            }
            let end = (at + size).min(cells.len());
            if decoder.add(&zero[at..end], &cells[at..end]).is_err() {
                break;
            }
            at = end;
        }
        prop_assert!(decoder.peeled.len() <= decoder.received());
    }
}

#[test]
fn an_element_that_comes_out_twice_is_inconsistent() {
    let mut rng = SmallRng::seed_from_u64(9);
    let e = random_element(&mut rng);
    let checksum = e.checksum();
    let mut cells = CodedCells::new(64);
    cells.insert(&e);
    // A second copy in one later cell it maps to: the copies cancel there
    // (count 2, zero sum) until the first peel leaves one copy, pure again.
    let j = indices(checksum, 64).nth(1).unwrap();
    cells.cells[j].toggle(&e, checksum, 1);
    let zero = CodedCells::new(64);
    assert_eq!(
        Decoder::new().add(cells.cells(0..64), zero.cells(0..64)),
        Err(PeelError::Inconsistent)
    );
}

#[test]
fn a_pure_looking_cell_where_its_element_does_not_map_is_left_alone() {
    let mut rng = SmallRng::seed_from_u64(10);
    let e = random_element(&mut rng);
    let mapped: Vec<usize> = indices(e.checksum(), 64).collect();
    let k = (1..64).find(|i| !mapped.contains(i)).unwrap();
    let mut theirs = vec![Cell::ZERO; 64];
    theirs[k].toggle(&e, e.checksum(), 1);
    let mut decoder = Decoder::new();
    assert_eq!(
        decoder.add(&[Cell::ZERO; 64], &theirs),
        Ok(Progress::NeedMore)
    );
    assert!(decoder.peeled.is_empty());
}

#[test]
fn decoding_takes_about_one_and_a_half_cells_per_difference() {
    // The paper's overhead, measured on 20 seeded pairs of d = 200.
    let used: usize = (0..20)
        .map(|seed| check_pair(&Pair::random(100 + seed, 100, 100, 100, 0), 2000))
        .sum();
    let per_element = used as f64 / (20.0 * 200.0);
    assert!(
        (1.2..2.0).contains(&per_element),
        "{per_element:.2} cells per element"
    );
}
