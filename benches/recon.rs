//! Reconciliation at store scale: what two nodes of `N` assets each send one
//! another to learn their difference, how many flights it takes, and the CPU.
//!
//! The stores share all but 500 assets on each side, and 100 shared assets
//! have different metadata (same hash, other time and digest): `d = 1200`
//! elements for RIBLT. `N` is `RECON_N` (default 1,000,000). Three schemes:
//!
//! - **full list**: each side sends its sorted list of 32-byte hashes with 16
//!   bytes of metadata (time and digest prefix) per asset, and merges;
//! - **RIBLT** ([`can_sync::recon::riblt`]): A sends its probe, B answers with
//!   the number of cells it wants, A sends them, B decodes and sends A the
//!   hashes it wants from A (the A-only assets and the edits A wins);
//! - **range fingerprints**, a negentropy-style simulation written here: the
//!   initiator splits its sorted hashes into 16 ranges and sends each range's
//!   fingerprint (the wrapping sum of 128-bit item hashes and the count, 16
//!   bytes); the receiver splits a differing range into 16 of its own, or
//!   sends its items (hash and metadata) once it holds at most 32 there; the
//!   receiver of a list answers with a bitmap of the items it wants.
//!
//! A *flight* is one message (or batch of messages) that must arrive before
//! the next can be written: round trips after HELLO are flights / 2. Bounds of
//! ranges cost their shortest distinguishing prefix plus a length byte, as in
//! negentropy; skipped ranges between two sent ones cost a bound and a byte.
//!
//! The table is printed once; criterion then times the RIBLT steps (decode,
//! probe comparison, one update) and a whole range-fingerprint session. A
//! sweep over `d` measures how often the first RIBLT answer decodes
//! (`RECON_TRIALS` trials per `d`, default 100): the data behind
//! [`cells_for`].
//!
//! Run with `RECON_N=1000000 cargo bench --bench recon`.

use std::hint::black_box;
use std::ops::Range;
use std::time::{Duration, Instant};

use criterion::Criterion;
use prost::encoding::{encode_varint, encoded_len_varint};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use can_sync::asset::{AssetHash, MetaVersion, Summary};
use can_sync::recon::news;
use can_sync::recon::riblt::estimate::{cells_for, Comparison, Probe, PROBE_CELLS, PROBE_SPAN};
use can_sync::recon::riblt::{decode_cells, encode_cells, CodedCells, Decoder, Element, Progress};

/// Assets only one side holds, per side.
const ONLY: usize = 500;

/// Shared assets whose metadata differs.
const EDITS: usize = 100;

/// Bytes of metadata per asset in the list and range schemes: the metadata
/// time and the digest prefix.
const META_LEN: usize = 16;

/// Bytes of one item of the list and range schemes.
const ITEM_LEN: usize = 32 + META_LEN;

/// Cells a store keeps: as many as a probe reads.
const KEPT_CELLS: usize = PROBE_SPAN;

/// Ranges a differing range splits into.
const BRANCHING: usize = 16;

/// A range with at most this many items is sent as a list.
const LEAF_ITEMS: usize = 32;

/// Bytes of a range fingerprint.
const FINGERPRINT_LEN: usize = 16;

/// Bytes of a wanted hash in RIBLT's last message.
const WANT_LEN: usize = 32;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------- the stores

/// A random summary: random hash and digest, times around 2023, sizes below
/// a terabyte.
fn random_summary(rng: &mut SmallRng) -> Summary {
    let created = 1_700_000_000_000 + rng.random_range(0..1i64 << 36);
    Summary {
        hash: AssetHash::from_bytes(rng.random()),
        created_at_ms: created,
        size: rng.random_range(0..1u64 << 40),
        version: MetaVersion::announced(
            created + rng.random_range(0..1i64 << 30),
            &rng.random::<[u8; 8]>(),
        ),
    }
}

/// Two stores of `n` assets each.
struct Stores {
    /// Assets both hold alike.
    common: Vec<Summary>,
    /// A's assets that B lacks, then A's version of the edited ones.
    only_a: Vec<Summary>,
    /// B's assets that A lacks, then B's version of the edited ones.
    only_b: Vec<Summary>,
}

impl Stores {
    fn new(n: usize, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let common = (0..n - ONLY - EDITS)
            .map(|_| random_summary(&mut rng))
            .collect();
        let mut only_a: Vec<_> = (0..ONLY).map(|_| random_summary(&mut rng)).collect();
        let mut only_b: Vec<_> = (0..ONLY).map(|_| random_summary(&mut rng)).collect();
        for _ in 0..EDITS {
            let a = random_summary(&mut rng);
            let mut b = a;
            b.version = MetaVersion::announced(
                a.version.updated_at_ms + rng.random_range(-1_000_000..1_000_000),
                &rng.random::<[u8; 8]>(),
            );
            only_a.push(a);
            only_b.push(b);
        }
        Self {
            common,
            only_a,
            only_b,
        }
    }

    fn side(&self, a: bool) -> impl Iterator<Item = &Summary> {
        let only = if a { &self.only_a } else { &self.only_b };
        self.common.iter().chain(only)
    }

    /// The hashes A should send B: its own assets and the edits it wins.
    fn a_should_send(&self) -> usize {
        ONLY + self.only_a[ONLY..]
            .iter()
            .zip(&self.only_b[ONLY..])
            .filter(|(a, b)| news((a.version, a.created_at_ms), (b.version, b.created_at_ms)))
            .count()
    }
}

// ------------------------------------------------------ list and range items

/// One asset as the list and range schemes send it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Item {
    /// The hash: the sort key.
    key: [u8; 32],
    /// Metadata time and digest prefix.
    meta: [u8; META_LEN],
}

impl Item {
    fn of(s: &Summary) -> Self {
        let mut meta = [0u8; META_LEN];
        meta[..8].copy_from_slice(&s.version.updated_at_ms.to_le_bytes());
        meta[8..].copy_from_slice(&s.version.digest[..8]);
        Self {
            key: *s.hash.as_bytes(),
            meta,
        }
    }

    /// A 128-bit hash of the item (splitmix64 rounds over its words).
    fn fingerprint(&self) -> u128 {
        let mut h = 0x6e65_6765_6e74_726fu64;
        let words = self.key.chunks_exact(8).chain(self.meta.chunks_exact(8));
        let mut lo = 0;
        for chunk in words {
            h = mix(h ^ u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
            lo ^= h.rotate_left(17);
        }
        (u128::from(h) << 64) | u128::from(mix(lo))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.meta);
    }
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One side's sorted items and the prefix sums of their fingerprints (what a
/// negentropy store keeps in a tree).
struct Sorted {
    items: Vec<Item>,
    /// `prefix[i]`: wrapping sum of the fingerprints of `items[..i]`.
    prefix: Vec<u128>,
}

impl Sorted {
    fn new(stores: &Stores, a: bool) -> Self {
        let mut items: Vec<Item> = stores.side(a).map(Item::of).collect();
        items.sort_unstable();
        let mut prefix = Vec::with_capacity(items.len() + 1);
        prefix.push(0u128);
        let mut sum = 0u128;
        for item in &items {
            sum = sum.wrapping_add(item.fingerprint());
            prefix.push(sum);
        }
        Self { items, prefix }
    }

    /// Our items with `lower ≤ key < upper` (`None`: no upper bound).
    fn span(&self, lower: &[u8; 32], upper: &Option<[u8; 32]>) -> Range<usize> {
        let start = self.items.partition_point(|i| i.key < *lower);
        let end = match upper {
            Some(u) => self.items.partition_point(|i| i.key < *u),
            None => self.items.len(),
        };
        start..end.max(start)
    }

    /// The fingerprint of a span: its sum and its count, folded.
    fn fingerprint(&self, r: &Range<usize>) -> u128 {
        let sum = self.prefix[r.end].wrapping_sub(self.prefix[r.start]);
        sum ^ u128::from(mix(r.len() as u64))
    }
}

// ------------------------------------------------------------ the full list

struct Outcome {
    /// Bytes A sent.
    a_bytes: usize,
    /// Bytes B sent.
    b_bytes: usize,
    /// Flights after HELLO.
    flights: usize,
    /// Session CPU of A and of B.
    cpu: [Duration; 2],
}

/// Each side serialises its sorted list; each merges the other's.
fn full_list(a: &Sorted, b: &Sorted) -> Outcome {
    let mut cpu = [Duration::ZERO; 2];
    let mut sent = [0usize; 2];
    let mut lists = Vec::new();
    for (k, side) in [a, b].into_iter().enumerate() {
        let t = Instant::now();
        let mut out = Vec::with_capacity(side.items.len() * ITEM_LEN);
        for item in &side.items {
            item.encode(&mut out);
        }
        cpu[k] += t.elapsed();
        sent[k] = out.len();
        lists.push(out);
    }
    for (k, (ours, theirs)) in [(a, &lists[1]), (b, &lists[0])].into_iter().enumerate() {
        let t = Instant::now();
        let (mut only_ours, mut only_theirs) = (0usize, 0usize);
        let mut peer = theirs.chunks_exact(ITEM_LEN).map(|c| Item {
            key: c[..32].try_into().expect("32 bytes"),
            meta: c[32..].try_into().expect("16 bytes"),
        });
        let mut next = peer.next();
        for item in &ours.items {
            while next.is_some_and(|p| p.key < item.key) {
                only_theirs += 1;
                next = peer.next();
            }
            match next {
                Some(p) if p.key == item.key => {
                    if p.meta != item.meta {
                        only_ours += 1;
                        only_theirs += 1;
                    }
                    next = peer.next();
                }
                _ => only_ours += 1,
            }
        }
        only_theirs += next.into_iter().chain(peer).count();
        cpu[k] += t.elapsed();
        assert_eq!(only_ours + only_theirs, 2 * (ONLY + EDITS));
    }
    Outcome {
        a_bytes: sent[0],
        b_bytes: sent[1],
        flights: 1,
        cpu,
    }
}

// -------------------------------------------------------------------- RIBLT

fn coded<'a>(summaries: impl Iterator<Item = &'a Summary>) -> CodedCells {
    let mut cells = CodedCells::new(KEPT_CELLS);
    for s in summaries {
        cells.insert(&Element::of(s));
    }
    cells
}

/// One RIBLT session, A probing B. Besides the outcome: the cells sent, the
/// estimate, and B's decode time.
struct RibltRun {
    outcome: Outcome,
    /// Bytes of the probe, the request(s), the cells and the want list.
    parts: [usize; 4],
    /// Cells sent after the probe's own.
    cells: usize,
    /// B's estimate of `d`.
    estimate: f64,
    /// B's time to parse the cells and peel.
    decode: Duration,
}

fn riblt_session(stores: &Stores, a: &CodedCells, b: &CodedCells) -> RibltRun {
    let mut cpu = [Duration::ZERO; 2];
    let mut flights = 0;
    let mut parts = [0usize; 4];

    // A → B: the probe.
    let t = Instant::now();
    let probe_bytes = Probe::of(a).encode();
    cpu[0] += t.elapsed();
    parts[0] = probe_bytes.len();
    flights += 1;

    // B: compare, and ask for cells.
    let t = Instant::now();
    let probe = Probe::decode(&probe_bytes).expect("probe parses");
    let estimate = match probe.compare(b).expect("honest probe") {
        Comparison::Estimated(e) => e,
        Comparison::Decoded(_) => panic!("d = 1200 does not decode from the probe"),
    };
    let mut decoder = Decoder::new();
    let first = PROBE_CELLS.min(probe.cells.len());
    decoder
        .add(b.cells(0..first), &probe.cells[..first])
        .expect("honest probe cells");
    cpu[1] += t.elapsed();

    let mut have = first;
    let mut want = estimate.cells.min(KEPT_CELLS);
    let mut decode = Duration::ZERO;
    let decoded = loop {
        // B → A: the request; A → B: the cells.
        let mut request = Vec::new();
        encode_varint(want as u64, &mut request);
        parts[1] += request.len();
        let t = Instant::now();
        let payload = encode_cells(a.cells(have..want));
        cpu[0] += t.elapsed();
        parts[2] += payload.len();
        flights += 2;

        let t = Instant::now();
        let theirs = decode_cells(&payload, KEPT_CELLS).expect("cells parse");
        let progress = decoder
            .add(b.cells(have..want), &theirs)
            .expect("honest cells");
        let spent = t.elapsed();
        cpu[1] += spent;
        decode += spent;
        have = want;
        match progress {
            Progress::Decoded(d) => break d,
            // Rateless: half as many again.
            Progress::NeedMore if want < KEPT_CELLS => want = (want + want / 2).min(KEPT_CELLS),
            Progress::NeedMore => panic!("not decoded within {KEPT_CELLS} cells"),
        }
    };

    // B → A: the hashes B wants from A (A's only, and edits A wins).
    let t = Instant::now();
    let mut wants = Vec::new();
    let mine: std::collections::HashMap<AssetHash, Summary> = decoded
        .only_ours
        .iter()
        .map(|e| (e.hash(), e.summary()))
        .collect();
    for theirs in decoded.only_theirs.iter().map(Element::summary) {
        let wanted = match mine.get(&theirs.hash) {
            None => true,
            Some(ours) => news(
                (theirs.version, theirs.created_at_ms),
                (ours.version, ours.created_at_ms),
            ),
        };
        if wanted {
            wants.extend_from_slice(theirs.hash.as_bytes());
        }
    }
    cpu[1] += t.elapsed();
    parts[3] = wants.len();
    flights += 1;

    assert_eq!(decoded.only_ours.len(), ONLY + EDITS);
    assert_eq!(decoded.only_theirs.len(), ONLY + EDITS);
    assert_eq!(wants.len(), WANT_LEN * stores.a_should_send());
    RibltRun {
        outcome: Outcome {
            a_bytes: parts[0] + parts[2],
            b_bytes: parts[1] + parts[3],
            flights,
            cpu,
        },
        parts,
        cells: have - first,
        estimate: estimate.difference,
        decode,
    }
}

// ------------------------------------------------------- range fingerprints

/// What one range of a message carries.
enum Payload {
    /// The sender's fingerprint of the range.
    Fingerprint(u128),
    /// The sender's items in the range.
    Items(Vec<Item>),
    /// Which of the receiver's listed items the sender wants: one bit each.
    Wanted(usize),
}

/// One range of a message: `lower ≤ key < upper`.
struct Entry {
    lower: [u8; 32],
    upper: Option<[u8; 32]>,
    /// Bytes of the upper bound on the wire.
    upper_len: usize,
    payload: Payload,
}

/// Bytes of a bound: a length byte and the shortest prefix of `key` that is
/// greater than `below`, zero-padded, which is the bound both sides use.
fn bound(key: &[u8; 32], below: &[u8; 32]) -> ([u8; 32], usize) {
    let common = key.iter().zip(below).take_while(|(a, b)| a == b).count();
    let len = (common + 1).min(32);
    let mut padded = [0u8; 32];
    padded[..len].copy_from_slice(&key[..len]);
    (padded, 1 + len)
}

/// Splits our items in `lower..upper` into [`BRANCHING`] ranges with their
/// fingerprints (fewer when we hold fewer items).
fn split(
    side: &Sorted,
    lower: [u8; 32],
    upper: Option<[u8; 32]>,
    upper_len: usize,
    out: &mut Vec<Entry>,
) {
    let r = side.span(&lower, &upper);
    let mut from = lower;
    let mut start = r.start;
    for k in 1..BRANCHING {
        let at = r.start + k * r.len() / BRANCHING;
        if at <= start {
            continue;
        }
        let (to, len) = bound(&side.items[at].key, &side.items[at - 1].key);
        let span = side.span(&from, &Some(to));
        out.push(Entry {
            lower: from,
            upper: Some(to),
            upper_len: len,
            payload: Payload::Fingerprint(side.fingerprint(&span)),
        });
        from = to;
        start = at;
    }
    let span = side.span(&from, &upper);
    out.push(Entry {
        lower: from,
        upper,
        upper_len,
        payload: Payload::Fingerprint(side.fingerprint(&span)),
    });
}

/// Bytes of a message: each entry's bound, mode byte and payload, plus a
/// skip entry wherever consecutive entries leave a gap.
fn message_len(entries: &[Entry]) -> usize {
    let mut len = 0;
    let mut covered = Some([0u8; 32]);
    for e in entries {
        if covered != Some(e.lower) {
            len += 1 + 32.min(e.lower.iter().rposition(|&b| b != 0).map_or(1, |p| p + 1)) + 1;
        }
        len += e.upper_len + 1;
        len += match &e.payload {
            Payload::Fingerprint(_) => FINGERPRINT_LEN,
            Payload::Items(items) => {
                encoded_len_varint(items.len() as u64) + items.len() * ITEM_LEN
            }
            Payload::Wanted(n) => encoded_len_varint(*n as u64) + n.div_ceil(8),
        };
        covered = e.upper;
    }
    len
}

/// A range-fingerprint session, A first: the outcome and the bytes of each
/// flight.
fn ranges_session(a: &Sorted, b: &Sorted) -> (Outcome, Vec<usize>) {
    let sides = [a, b];
    let mut cpu = [Duration::ZERO; 2];
    let mut sent = [0usize; 2];
    let mut flight_bytes = Vec::new();
    let mut learned = [0usize; 2];

    let t = Instant::now();
    let mut message = Vec::new();
    split(a, [0; 32], None, 1, &mut message);
    cpu[0] += t.elapsed();
    let mut from = 0;
    while !message.is_empty() {
        let len = message_len(&message);
        sent[from] += len;
        flight_bytes.push(len);
        let to = 1 - from;
        let side = sides[to];
        let t = Instant::now();
        let mut reply = Vec::new();
        for entry in message {
            let span = side.span(&entry.lower, &entry.upper);
            match entry.payload {
                Payload::Fingerprint(fp) => {
                    if side.fingerprint(&span) == fp {
                        continue;
                    }
                    if span.len() <= LEAF_ITEMS {
                        reply.push(Entry {
                            payload: Payload::Items(side.items[span].to_vec()),
                            ..entry
                        });
                    } else {
                        split(side, entry.lower, entry.upper, entry.upper_len, &mut reply);
                    }
                }
                Payload::Items(theirs) => {
                    let ours = &side.items[span];
                    // Their items we lack or hold in another version: wanted
                    // or compared; ours they lack: we send them.
                    let differing = theirs.iter().filter(|t| !ours.contains(t)).count();
                    learned[to] += differing + ours.iter().filter(|o| !theirs.contains(o)).count();
                    reply.push(Entry {
                        payload: Payload::Wanted(theirs.len()),
                        ..entry
                    });
                }
                Payload::Wanted(_) => {}
            }
        }
        cpu[to] += t.elapsed();
        message = reply;
        from = to;
    }
    assert_eq!(
        learned[0] + learned[1],
        2 * (ONLY + EDITS),
        "every difference found"
    );
    let outcome = Outcome {
        a_bytes: sent[0],
        b_bytes: sent[1],
        flights: flight_bytes.len(),
        cpu,
    };
    (outcome, flight_bytes)
}

// ------------------------------------------------------ first-answer sweep

/// For each `d`, how often the first answer (`cells_for` of the estimate)
/// decodes, and the cells sent and needed per differing element.
fn sweep(trials: usize) -> Vec<(usize, usize, f64, f64)> {
    let mut rows = Vec::new();
    for d in [10usize, 100, 1000, 10_000] {
        let (mut ok, mut sent, mut needed) = (0, 0usize, 0usize);
        for trial in 0..trials {
            let mut rng = SmallRng::seed_from_u64(((d as u64) << 32) | trial as u64);
            let common: Vec<Summary> = (0..1000).map(|_| random_summary(&mut rng)).collect();
            let a: Vec<Summary> = (0..d / 2).map(|_| random_summary(&mut rng)).collect();
            let b: Vec<Summary> = (0..d - d / 2).map(|_| random_summary(&mut rng)).collect();
            let ours = coded(common.iter().chain(&a));
            let theirs = coded(common.iter().chain(&b));
            let cells = match Probe::of(&theirs).compare(&ours).expect("honest probe") {
                Comparison::Decoded(_) => PROBE_CELLS,
                Comparison::Estimated(e) => e.cells.min(KEPT_CELLS),
            };
            let mut decoder = Decoder::new();
            let mut n = 0;
            while n < KEPT_CELLS {
                let progress = decoder
                    .add(ours.cells(n..n + 1), theirs.cells(n..n + 1))
                    .expect("honest cells");
                n += 1;
                if let Progress::Decoded(_) = progress {
                    break;
                }
            }
            ok += usize::from(n <= cells);
            sent += cells;
            needed += n;
        }
        let per = |cells: usize| cells as f64 / (trials * d) as f64;
        rows.push((d, ok, per(sent), per(needed)));
    }
    rows
}

// --------------------------------------------------------------- the report

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn row(name: &str, o: &Outcome) {
    println!(
        "{name:<22} {:>12} {:>12} {:>12} {:>7} {:>5.1} {:>10} {:>10}",
        o.a_bytes,
        o.b_bytes,
        o.a_bytes + o.b_bytes,
        o.flights,
        o.flights as f64 / 2.0,
        ms(o.cpu[0]),
        ms(o.cpu[1]),
    );
}

fn main() {
    let n = env_usize("RECON_N", 1_000_000).max(2 * (ONLY + EDITS));
    let trials = env_usize("RECON_TRIALS", 100).max(1);

    let t = Instant::now();
    let stores = Stores::new(n, 1);
    let generated = t.elapsed();

    // One-off work at store open.
    let t = Instant::now();
    let cells_a = coded(stores.side(true));
    let build = t.elapsed();
    let cells_b = coded(stores.side(false));
    let t = Instant::now();
    let sorted_a = Sorted::new(&stores, true);
    let sort = t.elapsed();
    let sorted_b = Sorted::new(&stores, false);

    // Per update: the old element out, the new one in.
    let updates: Vec<Element> = stores
        .common
        .iter()
        .take(100_000)
        .map(Element::of)
        .collect();
    let mut scratch = cells_a.clone();
    let t = Instant::now();
    for e in &updates {
        scratch.remove(e);
        scratch.insert(e);
    }
    let per_update = t.elapsed() / updates.len() as u32;
    assert_eq!(scratch, cells_a);
    drop(scratch);

    // Sessions: the best of five, as the machine is shared.
    let best = |mut runs: Vec<Outcome>| {
        let cpu = [0, 1].map(|k| runs.iter().map(|r| r.cpu[k]).min().expect("runs"));
        let mut o = runs.swap_remove(0);
        o.cpu = cpu;
        o
    };
    let list = best((0..5).map(|_| full_list(&sorted_a, &sorted_b)).collect());
    let riblt_runs: Vec<RibltRun> = (0..5)
        .map(|_| riblt_session(&stores, &cells_a, &cells_b))
        .collect();
    let decode = riblt_runs.iter().map(|r| r.decode).min().expect("runs");
    let (parts, cells, estimate) = (
        riblt_runs[0].parts,
        riblt_runs[0].cells,
        riblt_runs[0].estimate,
    );
    let riblt = best(riblt_runs.into_iter().map(|r| r.outcome).collect());
    let range_runs: Vec<_> = (0..5)
        .map(|_| ranges_session(&sorted_a, &sorted_b))
        .collect();
    let flight_bytes = range_runs[0].1.clone();
    let ranges = best(range_runs.into_iter().map(|r| r.0).collect());

    println!();
    println!(
        "recon: N = {n} per side, {ONLY} assets only on each side, {EDITS} metadata edits \
         (RIBLT d = {} elements); stores generated in {}",
        2 * (ONLY + EDITS),
        ms(generated)
    );
    println!();
    println!(
        "{:<22} {:>12} {:>12} {:>12} {:>7} {:>5} {:>10} {:>10}",
        "scheme", "A→B bytes", "B→A bytes", "total", "flights", "RTT", "CPU A", "CPU B"
    );
    row("full sorted list", &list);
    row("RIBLT", &riblt);
    row("range fingerprints", &ranges);
    println!();
    println!(
        "full list: {ITEM_LEN} B per asset each way; one-off sort of {n} items {}",
        ms(sort)
    );
    println!(
        "RIBLT: probe {} B (A→B), request {} B (B→A), {cells} cells {} B (A→B, {:.1} B/cell), \
         want list {} B (B→A, {} × {WANT_LEN} B)",
        parts[0],
        parts[1],
        parts[2],
        parts[2] as f64 / cells.max(1) as f64,
        parts[3],
        parts[3] / WANT_LEN,
    );
    println!(
        "RIBLT: estimate d = {estimate:.0} (true {}), cells_for = {} cells in all; \
         flights: probe → request → cells → wants",
        2 * (ONLY + EDITS),
        cells_for(estimate)
    );
    println!(
        "RIBLT: one-off build of {KEPT_CELLS} cells ({} MB) from {n} assets {}; \
         per update (remove + insert) {:.2} µs; decode (parse + peel) {}",
        KEPT_CELLS * std::mem::size_of::<can_sync::recon::riblt::Cell>() / 1_000_000,
        ms(build),
        per_update.as_secs_f64() * 1e6,
        ms(decode)
    );
    println!(
        "range fingerprints: bytes per flight {flight_bytes:?}; \
         one-off fingerprint sums: with the sort above"
    );
    println!();
    println!(
        "RIBLT first answer over {trials} trials per d (1000 shared assets, M = {KEPT_CELLS}):"
    );
    println!(
        "{:>7} {:>9} {:>12} {:>14}",
        "d", "decoded", "sent cells/d", "needed cells/d"
    );
    for (d, ok, sent, needed) in sweep(trials) {
        println!(
            "{d:>7} {:>8.0}% {sent:>12.2} {needed:>14.2}",
            100.0 * ok as f64 / trials as f64
        );
    }
    println!();

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let probe = Probe::of(&cells_a);
    let probe_bytes = probe.encode();
    let k = cells_for(estimate);
    let payload = encode_cells(cells_a.cells(PROBE_CELLS..k));
    let mut group = c.benchmark_group("recon");
    group.bench_function("riblt/decode", |bench| {
        bench.iter(|| {
            let mut decoder = Decoder::new();
            decoder
                .add(cells_b.cells(0..PROBE_CELLS), &probe.cells)
                .expect("honest");
            let theirs = decode_cells(black_box(&payload), KEPT_CELLS).expect("parses");
            decoder
                .add(cells_b.cells(PROBE_CELLS..k), &theirs)
                .expect("honest")
        })
    });
    group.bench_function("riblt/probe_compare", |bench| {
        bench.iter(|| {
            Probe::decode(black_box(&probe_bytes))
                .expect("parses")
                .compare(&cells_b)
                .expect("honest")
        })
    });
    let mut scratch = cells_a.clone();
    let element = updates[0];
    group.bench_function("riblt/update", |bench| {
        bench.iter(|| {
            scratch.remove(black_box(&element));
            scratch.insert(black_box(&element));
        })
    });
    group.bench_function("ranges/session", |bench| {
        bench.iter(|| ranges_session(&sorted_a, &sorted_b).0.flights)
    });
    group.finish();
    c.final_summary();
}
