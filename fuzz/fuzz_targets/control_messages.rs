//! The v2 (and v1, and live) control messages, through the entry points the
//! sessions use.
//!
//! Three modes, picked by the first input byte:
//! - **messages**: the rest decoded as every protobuf message a session or
//!   data stream accepts, with [`Violation::decode`]: a value that re-encodes
//!   and decodes to itself, or `Violation::Decode` naming the message; then
//!   what the sessions make of the value (hashes, `negotiate`, `parse_wants`);
//! - **data stream**: a [`DataStreamParser`] fed a sequence of frames (raw or
//!   well-formed), checked against a model of the grammar; every inline item
//!   through [`decode_inline`] and every zstd payload through
//!   [`compress::decompress_bounded`], which never yields more than its bound;
//! - **session**: one of the public session state machines (v2 control
//!   stream, either role, coded or not, live or not; v1; a live offer and a
//!   live answer) driven as its driver would (frames only while it
//!   `wants_frames`, timeouts only once due, a finish only after it asked for
//!   one) with peer frames, raw or well-formed (including coded probes, cells
//!   and wants built from a real peer set), and honest store answers. Every
//!   frame it sends must decode as one whole frame, and its outcome comes
//!   once.

#![no_main]

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use can_sync::asset::{AssetHash, Bundle, MetaUpdate, Summary};
use can_sync::can::{CanError, Pulled, Pushed};
use can_sync::engine::receive::ReceiveOutcome;
use can_sync::engine::send::SendOutcome;
use can_sync::engine::EngineConfig;
use can_sync::pb;
use can_sync::recon::compact;
use can_sync::recon::riblt::estimate::Probe;
use can_sync::recon::riblt::{encode_cells, CodedCells, Element};
use can_sync::session::live::{
    parse_wants, Answering, AnsweringAnswer, AnsweringRequest, Offering, OfferingAnswer,
    OfferingRequest,
};
use can_sync::session::machine::{Machine, Transmit};
use can_sync::session::{v1, v2, Role, SessionError};
use can_sync::wire::compress;
use can_sync::wire::data_stream::{
    decode_inline, DataItem, DataStreamParser, CODEC_RAW, CODEC_ZSTD,
};
use can_sync::wire::{encode_frame, Frame, FrameDecoder, FrameType, Violation};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    match mode % 3 {
        0 => messages(rest),
        1 => {
            if let Ok(script) = DataScript::arbitrary_take_rest(Unstructured::new(rest)) {
                data_stream(script);
            }
        }
        _ => {
            if let Ok(script) = SessionScript::arbitrary_take_rest(Unstructured::new(rest)) {
                session(script);
            }
        }
    }
});

// ---------------------------------------------------------------------------
// Mode 0: every message.

/// Decodes `bytes` as `M` the way the sessions do, and checks the contract:
/// a value that survives a re-encoding, or a decode violation naming `name`.
fn decode_as<M: Message + Default + PartialEq + std::fmt::Debug>(
    name: &'static str,
    bytes: &[u8],
) -> Option<M> {
    match Violation::decode::<M>(name, bytes) {
        Ok(message) => {
            let again: M = Violation::decode(name, &message.encode_to_vec())
                .unwrap_or_else(|e| panic!("{name} re-encoded does not decode: {e}"));
            assert_eq!(again, message, "{name} does not survive a re-encoding");
            Some(message)
        }
        Err(Violation::Decode { message, .. }) => {
            assert_eq!(message, name);
            None
        }
        Err(other) => panic!("decoding {name} failed with {other:?}"),
    }
}

fn messages(bytes: &[u8]) {
    if let Some(hello) = decode_as::<pb::Hello>("Hello", bytes) {
        for live in [false, true] {
            let ours = v2::hello(&EngineConfig::default(), live);
            if let Ok(limits) = v2::negotiate(&ours, &hello) {
                assert!(limits.streams >= 1 && limits.streams <= ours.max_streams);
                assert!(limits.inline_limit >= 1 && limits.inline_limit <= ours.inline_limit);
                assert!(limits.live <= live);
            }
        }
    }
    if let Some(recon) = decode_as::<pb::Recon>("Recon", bytes) {
        for wants in [&recon.wants, &recon.meta_wants] {
            check_parse_wants(wants);
        }
        let _ = compact::decode(&recon.packed_summaries, 1000);
        let _ = Probe::decode(&recon.probe);
    }
    let _ = decode_as::<pb::StreamDone>("StreamDone", bytes);
    if let Some(summary) = decode_as::<pb::SessionSummary>("SessionSummary", bytes) {
        for rejection in &summary.rejected {
            assert_eq!(
                AssetHash::from_slice(&rejection.hash).is_ok(),
                rejection.hash.len() == 32
            );
        }
    }
    if let Some(header) = decode_as::<pb::AssetHeader>("AssetHeader", bytes) {
        let _ = AssetHash::from_slice(&header.hash);
    }
    if let Some(update) = decode_as::<pb::MetaUpdate>("MetaUpdate", bytes) {
        check_meta_update(update);
    }
    if let Some(bundle) = decode_as::<pb::AssetBundle>("AssetBundle", bytes) {
        if let Ok(parsed) = Bundle::from_pb(bundle.clone()) {
            assert_eq!(parsed.hash.to_hex(), bundle.hash.to_ascii_lowercase());
        }
    }
    if let Some(set) = decode_as::<pb::PeerHashSet>("PeerHashSet", bytes) {
        for summary in &set.assets {
            if let Ok(parsed) = Summary::from_pb(summary) {
                assert_eq!(parsed.size, summary.size);
            }
        }
    }
    // The same bytes as a data stream's frames.
    for frame_type in FrameType::ALL {
        let mut parser = DataStreamParser::default();
        let _ = parser.handle_frame(Frame::new(frame_type, Bytes::copy_from_slice(bytes)));
    }
}

/// `parse_wants`: whole, distinct 32-byte hashes, or a violation saying why.
fn check_parse_wants(wants: &[u8]) {
    let distinct = wants.chunks(32).collect::<HashSet<_>>().len() == wants.len().div_ceil(32);
    match parse_wants(wants) {
        Ok(hashes) => {
            assert!(wants.len() % 32 == 0 && distinct);
            assert_eq!(hashes.len(), wants.len() / 32);
            for (hash, raw) in hashes.iter().zip(wants.chunks(32)) {
                assert_eq!(hash.as_bytes(), raw);
            }
        }
        Err(Violation::WantsNotWhole(n)) => assert!(n == wants.len() && n % 32 != 0),
        Err(Violation::WantsTwice(_)) => assert!(!distinct),
        Err(other) => panic!("parse_wants failed with {other:?}"),
    }
}

/// A metadata update: its hash parses iff it is 64 hex digits, and it
/// survives the round trip through its protobuf form.
fn check_meta_update(update: pb::MetaUpdate) {
    let hex = update.hash.len() == 64 && update.hash.bytes().all(|b| b.is_ascii_hexdigit());
    match MetaUpdate::from_pb(update.clone()) {
        Ok(parsed) => {
            assert!(hex, "{:?} parsed as a hash", update.hash);
            let again = MetaUpdate::from_pb(parsed.to_pb()).expect("its own hash parses");
            assert_eq!(again, parsed);
        }
        Err(_) => assert!(!hex, "{:?} refused as a hash", update.hash),
    }
}

// ---------------------------------------------------------------------------
// Mode 1: a data stream.

#[derive(Arbitrary, Debug)]
struct DataScript {
    /// The inline decode bound (as the engine's frame limit would be).
    limit: u16,
    frames: Vec<DataFrame>,
}

#[derive(Arbitrary, Debug)]
struct MetaSpec {
    name: String,
    description: String,
    tags: Vec<String>,
    is_trashed: bool,
    created_at_ms: i64,
    meta_updated_at_ms: i64,
}

impl MetaSpec {
    fn to_pb(&self) -> pb::AssetMeta {
        pb::AssetMeta {
            name: self.name.clone(),
            mime_type: String::new(),
            description: self.description.clone(),
            tags: self.tags.clone(),
            is_trashed: self.is_trashed,
            created_at_ms: self.created_at_ms,
            meta_updated_at_ms: self.meta_updated_at_ms,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum DataFrame {
    /// Any type, any payload.
    Raw {
        tag: u8,
        payload: Vec<u8>,
    },
    /// A bundle, compressed or not, whose hash is right or not.
    Bundle {
        data: Vec<u8>,
        meta: Option<MetaSpec>,
        right_hash: bool,
        zstd: bool,
        level: u8,
    },
    /// Arbitrary bytes as a zstd-compressed bundle payload.
    ZstdOf(Vec<u8>),
    Meta {
        hash: [u8; 32],
        hex: bool,
        meta: MetaSpec,
    },
    Begin {
        hash: Vec<u8>,
        size: u64,
        meta: Option<MetaSpec>,
        codec: u8,
    },
    Chunk(Vec<u8>),
    End,
    Done {
        assets: u64,
        bytes: u64,
    },
}

impl DataFrame {
    fn frame(&self) -> Frame {
        match self {
            Self::Raw { tag, payload } => Frame::new(
                FrameType::ALL[*tag as usize % FrameType::ALL.len()],
                payload.clone(),
            ),
            Self::Bundle {
                data,
                meta,
                right_hash,
                zstd,
                level,
            } => {
                let hash = if *right_hash {
                    AssetHash::of(data).to_hex()
                } else {
                    AssetHash::of(b"another").to_hex()
                };
                let encoded = pb::AssetBundle {
                    hash,
                    data: Bytes::copy_from_slice(data),
                    meta: meta.as_ref().map(MetaSpec::to_pb),
                }
                .encode_to_vec();
                if *zstd {
                    let level = i32::from(*level % 8);
                    Frame::new(FrameType::BundleZstd, compress::compress(&encoded, level))
                } else {
                    Frame::new(FrameType::AssetBundle, encoded)
                }
            }
            Self::ZstdOf(raw) => Frame::new(FrameType::BundleZstd, compress::compress(raw, 1)),
            Self::Meta { hash, hex, meta } => {
                let meta = meta.to_pb();
                let update = pb::MetaUpdate {
                    hash: if *hex {
                        AssetHash::from_bytes(*hash).to_hex()
                    } else {
                        meta.name.clone()
                    },
                    description: meta.description,
                    tags: meta.tags,
                    is_trashed: meta.is_trashed,
                    meta_updated_at_ms: meta.meta_updated_at_ms,
                    created_at_ms: meta.created_at_ms,
                };
                Frame::new(FrameType::MetaUpdate, update.encode_to_vec())
            }
            Self::Begin {
                hash,
                size,
                meta,
                codec,
            } => {
                let header = pb::AssetHeader {
                    hash: Bytes::copy_from_slice(hash),
                    size: *size,
                    meta: meta.as_ref().map(MetaSpec::to_pb),
                    codec: match codec % 4 {
                        0 => CODEC_ZSTD.into(),
                        1 => CODEC_RAW.into(),
                        2 => String::new(),
                        _ => "lz4".into(),
                    },
                };
                Frame::new(FrameType::AssetBegin, header.encode_to_vec())
            }
            Self::Chunk(bytes) => Frame::new(FrameType::AssetChunk, bytes.clone()),
            Self::End => Frame::new(FrameType::AssetEnd, Bytes::new()),
            Self::Done { assets, bytes } => Frame::new(
                FrameType::Done,
                pb::StreamDone {
                    assets: *assets,
                    bytes: *bytes,
                }
                .encode_to_vec(),
            ),
        }
    }
}

/// The grammar, as the module docs of `data_stream.rs` state it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Model {
    Items,
    InAsset,
    Done,
}

fn data_stream(script: DataScript) {
    let limit = usize::from(script.limit);
    let mut parser = DataStreamParser::default();
    let mut model = Model::Items;
    for spec in script.frames.iter().take(64) {
        let frame = spec.frame();
        let frame_type = frame.frame_type;
        let payload = frame.payload.clone();
        let got = parser.handle_frame(frame);
        match (model, &got) {
            (Model::Done, Err(Violation::AfterDone(t))) => {
                assert_eq!(*t, frame_type);
                return;
            }
            (Model::Done, other) => panic!("{frame_type} after DONE gave {other:?}"),
            (Model::InAsset, Ok(DataItem::Chunk(bytes))) => {
                assert_eq!(frame_type, FrameType::AssetChunk);
                assert_eq!(bytes, &payload);
            }
            (Model::InAsset, Ok(DataItem::End)) => {
                assert_eq!(frame_type, FrameType::AssetEnd);
                model = Model::Items;
            }
            (Model::InAsset, Err(Violation::Unexpected { got, .. })) => {
                assert_eq!(*got, frame_type);
                assert!(!matches!(
                    frame_type,
                    FrameType::AssetChunk | FrameType::AssetEnd
                ));
                return;
            }
            (Model::InAsset, other) => panic!("{frame_type} inside an asset gave {other:?}"),
            (Model::Items, Ok(DataItem::Inline { zstd, payload: p })) => {
                assert_eq!(*zstd, frame_type == FrameType::BundleZstd);
                assert!(*zstd || frame_type == FrameType::AssetBundle);
                assert_eq!(p, &payload);
                check_inline(*zstd, p.clone(), limit);
            }
            (Model::Items, Ok(DataItem::Meta(update))) => {
                assert_eq!(frame_type, FrameType::MetaUpdate);
                check_meta_update(update.to_pb());
            }
            (Model::Items, Ok(DataItem::Begin(header))) => {
                assert_eq!(frame_type, FrameType::AssetBegin);
                let again = header.encode();
                let mut buf = BytesMut::from(&again[..]);
                let frame = FrameDecoder::default()
                    .decode_eof(&mut buf)
                    .expect("its own frame decodes")
                    .expect("one frame");
                let mut fresh = DataStreamParser::default();
                match fresh.handle_frame(frame) {
                    Ok(DataItem::Begin(again)) => assert_eq!(&again, header),
                    other => panic!("a re-encoded header gave {other:?}"),
                }
                model = Model::InAsset;
            }
            (Model::Items, Ok(DataItem::Done(_))) => {
                assert_eq!(frame_type, FrameType::Done);
                model = Model::Done;
            }
            (Model::Items, Ok(other)) => panic!("{frame_type} between items gave {other:?}"),
            (Model::Items, Err(Violation::Unexpected { got, .. })) => {
                assert_eq!(*got, frame_type);
                assert!(matches!(
                    frame_type,
                    FrameType::HashSet
                        | FrameType::Hello
                        | FrameType::Recon
                        | FrameType::AssetChunk
                        | FrameType::AssetEnd
                        | FrameType::Summary
                ));
                return;
            }
            (Model::Items, Err(err)) => {
                assert!(
                    matches!(
                        err,
                        Violation::Decode { .. }
                            | Violation::MalformedHash(_)
                            | Violation::UnknownCodec(_)
                    ),
                    "{frame_type} gave {err:?}"
                );
                return;
            }
        }
    }
    assert_eq!(parser.handle_end().is_ok(), model == Model::Done);
}

/// An inline payload: a bundle, or a violation; a zstd payload never
/// inflates past the bound.
fn check_inline(zstd: bool, payload: Bytes, limit: usize) {
    if zstd {
        if let Ok(raw) = compress::decompress_bounded(&payload, limit) {
            assert!(
                raw.len() <= limit,
                "{} bytes inflated past {limit}",
                raw.len()
            );
        }
    }
    match decode_inline(zstd, payload, limit) {
        Ok(bundle) => {
            let encoded = bundle.clone().into_pb().encode_to_vec();
            let again = decode_inline(false, Bytes::from(encoded), limit).expect("re-decodes");
            assert_eq!(again, bundle);
        }
        Err(err) => assert!(
            matches!(
                err,
                Violation::Compression(_) | Violation::Decode { .. } | Violation::MalformedHash(_)
            ),
            "decode_inline gave {err:?}"
        ),
    }
}

// ---------------------------------------------------------------------------
// Mode 2: a session state machine.

/// One asset of a set: its bytes are `len` copies of `seed`.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct AssetSpec {
    seed: u8,
    len: u8,
    created: i8,
    updated: i8,
    digest: u8,
}

impl AssetSpec {
    fn data(&self) -> Vec<u8> {
        vec![self.seed; usize::from(self.len % 4) + 1]
    }
    fn hash(&self) -> AssetHash {
        AssetHash::of(&self.data())
    }
    fn meta(&self) -> pb::AssetMeta {
        pb::AssetMeta {
            name: format!("a{}", self.seed),
            created_at_ms: i64::from(self.created),
            meta_updated_at_ms: i64::from(self.updated),
            description: format!("d{}", self.digest),
            ..Default::default()
        }
    }
    /// The summary as a store lists it.
    fn summary(&self) -> Summary {
        Summary::of(self.hash(), self.data().len() as u64, &self.meta())
    }
}

/// A set of assets, each hash once.
fn set_of(specs: &[AssetSpec]) -> Vec<AssetSpec> {
    let mut seen = HashSet::new();
    specs
        .iter()
        .take(12)
        .filter(|s| seen.insert(s.hash()))
        .copied()
        .collect()
}

/// The cells a store keeps in this harness (the real stores keep
/// `KEPT_CELLS`; fewer keeps an execution cheap, and a store keeping fewer
/// than a peer asks for is a case the exchange handles).
const CELLS: usize = 2048;

fn cells_of(set: &[AssetSpec]) -> CodedCells {
    let mut cells = CodedCells::new(CELLS);
    for spec in set {
        cells.insert(&Element::of(
            &spec.summary().truncated(compact::DIGEST_PREFIX),
        ));
    }
    cells
}

#[derive(Arbitrary, Debug)]
enum Kind {
    V2 {
        initiator: bool,
        coded: bool,
        live: bool,
    },
    V1 {
        initiator: bool,
        pull_batch: u8,
    },
    Offering,
    Answering,
}

#[derive(Arbitrary, Debug)]
struct SessionScript {
    kind: Kind,
    ours: Vec<AssetSpec>,
    theirs: Vec<AssetSpec>,
    events: Vec<Event>,
}

#[derive(Arbitrary, Debug)]
enum Event {
    Peer(PeerFrame),
    /// The peer finished its stream.
    End,
    /// Time passes: to the machine's deadline if it has one.
    Wait,
    /// Serve the oldest request.
    Serve,
    /// Fail the oldest request (a store or engine error).
    FailRequest,
    /// Everything up to our finish reached the peer.
    Finished,
}

#[derive(Arbitrary, Debug)]
enum PeerFrame {
    Raw {
        tag: u8,
        payload: Vec<u8>,
    },
    Hello {
        version: u8,
        max_streams: u8,
        inline_limit: u32,
        max_frame_len: u32,
        live: bool,
        coded: bool,
        codecs: Vec<String>,
    },
    /// A full list: some of the peer's set, or of ours, or junk.
    List {
        pick: Vec<u8>,
        from_ours: bool,
        done: bool,
        wants: Wants,
        junk: Option<Vec<u8>>,
    },
    Probe {
        junk: Option<Vec<u8>>,
        cells: u8,
    },
    Cells {
        start: u16,
        count: u16,
        junk: Option<Vec<u8>>,
    },
    More(u32),
    CodedWants {
        prefixes: Vec<u8>,
        meta: Vec<u8>,
        junk: Option<(Vec<u8>, Vec<u8>)>,
    },
    Summary {
        received: u64,
        rejected: Vec<(Vec<u8>, String)>,
    },
    Done {
        assets: u64,
        bytes: u64,
        empty: bool,
    },
    /// v1's list.
    HashSet {
        pick: Vec<u8>,
        bad_hash: Option<String>,
    },
    /// v1's asset.
    Bundle {
        pick: u8,
        tamper: bool,
    },
    /// v1's metadata.
    Meta {
        pick: u8,
        updated: i64,
    },
}

/// Wanted hashes in a live reply: offered ones (by index), or junk.
#[derive(Arbitrary, Debug)]
enum Wants {
    Offered(Vec<u8>),
    Junk(Vec<u8>),
}

/// Everything a peer message may be built from.
struct World {
    ours: Vec<AssetSpec>,
    theirs: Vec<AssetSpec>,
    their_cells: CodedCells,
}

fn pick(set: &[AssetSpec], indices: &[u8]) -> Vec<AssetSpec> {
    if set.is_empty() {
        return Vec::new();
    }
    indices
        .iter()
        .take(16)
        .map(|i| set[*i as usize % set.len()])
        .collect()
}

fn raw_hashes(specs: &[AssetSpec]) -> Vec<u8> {
    specs.iter().flat_map(|s| *s.hash().as_bytes()).collect()
}

impl PeerFrame {
    fn frame(&self, world: &World) -> Frame {
        let recon = |round: pb::Recon| Frame::new(FrameType::Recon, round.encode_to_vec());
        match self {
            Self::Raw { tag, payload } => Frame::new(
                FrameType::ALL[*tag as usize % FrameType::ALL.len()],
                payload.clone(),
            ),
            Self::Hello {
                version,
                max_streams,
                inline_limit,
                max_frame_len,
                live,
                coded,
                codecs,
            } => {
                let mut hello = v2::hello(&EngineConfig::default(), *live);
                hello.version = u32::from(*version % 4);
                hello.max_streams = u32::from(*max_streams % 8);
                hello.inline_limit = u64::from(*inline_limit);
                hello.max_frame_len = *max_frame_len;
                if !*coded {
                    hello
                        .features
                        .retain(|f| f != can_sync::recon::coded::FEATURE);
                }
                hello.codecs.extend(codecs.iter().take(4).cloned());
                Frame::new(FrameType::Hello, hello.encode_to_vec())
            }
            Self::List {
                pick: indices,
                from_ours,
                done,
                wants,
                junk,
            } => {
                let set = if *from_ours {
                    &world.ours
                } else {
                    &world.theirs
                };
                let summaries: Vec<Summary> = pick(set, indices)
                    .iter()
                    .map(|s| s.summary().truncated(compact::DIGEST_PREFIX))
                    .collect();
                let wants = match wants {
                    Wants::Offered(i) => raw_hashes(&pick(&world.ours, i)),
                    Wants::Junk(bytes) => bytes.clone(),
                };
                recon(pb::Recon {
                    packed_summaries: match junk {
                        Some(junk) => Bytes::copy_from_slice(junk),
                        None => Bytes::from(compact::encode(&summaries, 1)),
                    },
                    wants: Bytes::from(wants),
                    done: *done,
                    ..Default::default()
                })
            }
            Self::Probe { junk, cells } => {
                let probe = match junk {
                    Some(junk) => junk.clone(),
                    None => {
                        let mut probe = Probe::of(&world.their_cells);
                        probe.cells.truncate(usize::from(*cells % 33).max(1));
                        probe.encode()
                    }
                };
                recon(pb::Recon {
                    coded: true,
                    probe: Bytes::from(probe),
                    ..Default::default()
                })
            }
            Self::Cells { start, count, junk } => {
                let start = usize::from(*start);
                let cells = match junk {
                    Some(junk) => junk.clone(),
                    None => encode_cells(
                        world
                            .their_cells
                            .cells(start..start + usize::from(*count % 512)),
                    ),
                };
                recon(pb::Recon {
                    coded: true,
                    cells: Bytes::from(cells),
                    cells_start: start as u64,
                    ..Default::default()
                })
            }
            Self::More(n) => recon(pb::Recon {
                coded: true,
                more_cells: u64::from(*n),
                ..Default::default()
            }),
            Self::CodedWants {
                prefixes,
                meta,
                junk,
            } => {
                let (wants, meta_wants) = match junk {
                    Some((a, b)) => (a.clone(), b.clone()),
                    None => (
                        pick(&world.ours, prefixes)
                            .iter()
                            .flat_map(|s| s.hash().prefix().0)
                            .collect(),
                        raw_hashes(&pick(&world.ours, meta)),
                    ),
                };
                recon(pb::Recon {
                    coded: true,
                    done: true,
                    wants: Bytes::from(wants),
                    meta_wants: Bytes::from(meta_wants),
                    ..Default::default()
                })
            }
            Self::Summary { received, rejected } => Frame::new(
                FrameType::Summary,
                pb::SessionSummary {
                    received: *received,
                    rejected: rejected
                        .iter()
                        .take(8)
                        .map(|(hash, reason)| pb::Rejection {
                            hash: Bytes::copy_from_slice(hash),
                            reason: reason.clone(),
                        })
                        .collect(),
                }
                .encode_to_vec(),
            ),
            Self::Done {
                assets,
                bytes,
                empty,
            } => Frame::new(
                FrameType::Done,
                if *empty {
                    Vec::new()
                } else {
                    pb::StreamDone {
                        assets: *assets,
                        bytes: *bytes,
                    }
                    .encode_to_vec()
                },
            ),
            Self::HashSet {
                pick: indices,
                bad_hash,
            } => {
                let mut assets: Vec<pb::AssetSummary> = pick(&world.theirs, indices)
                    .iter()
                    .map(|s| s.summary().to_pb())
                    .collect();
                if let Some(bad) = bad_hash {
                    assets.push(pb::AssetSummary {
                        hash: bad.clone(),
                        ..Default::default()
                    });
                }
                Frame::new(
                    FrameType::HashSet,
                    pb::PeerHashSet { assets }.encode_to_vec(),
                )
            }
            Self::Bundle { pick: i, tamper } => {
                let Some(spec) = pick(&world.theirs, &[*i]).pop() else {
                    return Frame::new(FrameType::AssetBundle, Bytes::new());
                };
                let mut data = spec.data();
                if *tamper {
                    data[0] ^= 1;
                }
                let bundle = pb::AssetBundle {
                    hash: spec.hash().to_hex(),
                    data: Bytes::from(data),
                    meta: Some(spec.meta()),
                };
                Frame::new(FrameType::AssetBundle, bundle.encode_to_vec())
            }
            Self::Meta { pick: i, updated } => {
                let spec = pick(&world.theirs, &[*i])
                    .pop()
                    .or_else(|| pick(&world.ours, &[*i]).pop());
                let Some(spec) = spec else {
                    return Frame::new(FrameType::MetaUpdate, Bytes::new());
                };
                let mut meta = spec.meta();
                meta.meta_updated_at_ms = *updated;
                let update = MetaUpdate::of(spec.hash(), &meta);
                Frame::new(FrameType::MetaUpdate, update.to_pb().encode_to_vec())
            }
        }
    }
}

/// This side's store: what it holds, answering as a store would.
struct Store {
    assets: Vec<AssetSpec>,
    cells: CodedCells,
}

impl Store {
    fn summaries(&self) -> Vec<Summary> {
        self.assets.iter().map(AssetSpec::summary).collect()
    }
    fn find(&self, hash: &AssetHash) -> Option<&AssetSpec> {
        self.assets.iter().find(|s| &s.hash() == hash)
    }
    fn bundle(&self, spec: &AssetSpec) -> Bundle {
        Bundle {
            hash: spec.hash(),
            data: Bytes::from(spec.data()),
            meta: spec.meta(),
        }
    }
}

fn store_error() -> CanError {
    CanError::Unavailable("fuzz: the store is down".into())
}

/// Every frame a machine sends is one whole frame of a known type.
fn check_transmit(transmit: &Transmit, finish_asked: &mut bool) {
    match transmit {
        Transmit::Frame(bytes) => {
            let mut buf = BytesMut::from(&bytes[..]);
            let frame = FrameDecoder::new(u32::MAX)
                .decode(&mut buf)
                .expect("a frame we send decodes")
                .expect("a frame we send is whole");
            assert!(buf.is_empty(), "one frame per transmit");
            let mut again = BytesMut::new();
            encode_frame(frame.frame_type, &frame.payload, &mut again).unwrap();
            assert_eq!(&again[..], &bytes[..]);
        }
        Transmit::Finish => *finish_asked = true,
    }
}

/// Whether to print what happens (`FUZZ_TRACE=1`, replaying one input):
/// the events delivered and every frame in hex, to turn a crash into a test.
fn tracing() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Drives `machine` through `events` as its driver would. `serve` answers a
/// request (`ok` false: with an error).
fn drive<M: Machine>(
    mut machine: M,
    events: &[Event],
    world: &World,
    mut serve: impl FnMut(M::Request, bool) -> Option<M::Answer>,
) where
    M::Request: std::fmt::Debug,
{
    let start = Instant::now();
    let mut now = start;
    let mut pending: VecDeque<M::Request> = VecDeque::new();
    let mut finish_asked = false;
    let mut finished = false;
    let mut ended = false;
    let mut outcome_seen = false;
    for event in events.iter().take(48) {
        // The driver's loop: outcome, requests, transmits, then one event.
        if let Some(outcome) = machine.poll_outcome() {
            assert!(!outcome_seen, "an outcome handed out twice");
            outcome_seen = true;
            if let Err(SessionError::Peer(v)) = &outcome {
                let _ = (v.close_code(), v.to_string());
            }
            break;
        }
        while let Some(request) = machine.poll_request() {
            if tracing() {
                eprintln!("request {request:?}");
            }
            pending.push_back(request);
        }
        while let Some(transmit) = machine.poll_transmit() {
            if tracing() {
                match &transmit {
                    Transmit::Frame(bytes) => eprintln!("we send {}", hex(bytes)),
                    Transmit::Finish => eprintln!("we finish"),
                }
            }
            check_transmit(&transmit, &mut finish_asked);
        }
        match event {
            Event::Peer(spec) => {
                if machine.wants_frames() && !ended {
                    let frame = spec.frame(world);
                    if tracing() {
                        eprintln!(
                            "peer frame {} payload {}",
                            frame.frame_type,
                            hex(&frame.payload)
                        );
                    }
                    machine.handle_frame(now, frame);
                }
            }
            Event::End => {
                if machine.wants_frames() && !ended {
                    ended = true;
                    machine.handle_end(now);
                }
            }
            Event::Wait => {
                if let Some(at) = machine.poll_timeout() {
                    assert!(at <= start + Duration::from_secs(3600 * 24));
                    now = now.max(at);
                    machine.handle_timeout(now);
                }
            }
            Event::Serve | Event::FailRequest => {
                if let Some(request) = pending.pop_front() {
                    if let Some(answer) = serve(request, matches!(event, Event::Serve)) {
                        machine.handle_answer(now, answer);
                    }
                }
            }
            Event::Finished => {
                if finish_asked && !finished {
                    finished = true;
                    machine.handle_finished(now);
                }
            }
        }
    }
    if !outcome_seen {
        if machine.poll_outcome().is_some() {
            assert!(
                machine.poll_outcome().is_none(),
                "an outcome handed out twice"
            );
        }
    }
}

fn session(script: SessionScript) {
    let ours = set_of(&script.ours);
    let theirs = set_of(&script.theirs);
    let world = World {
        their_cells: cells_of(&theirs),
        ours: ours.clone(),
        theirs,
    };
    let store = Store {
        cells: cells_of(&ours),
        assets: ours,
    };
    let now = Instant::now();
    let idle = Duration::from_secs(30);
    if tracing() {
        eprintln!("{:?}", script.kind);
    }
    match script.kind {
        Kind::V2 {
            initiator,
            coded,
            live,
        } => {
            let config = EngineConfig {
                coded_recon: coded,
                ..EngineConfig::default()
            };
            let role = if initiator {
                Role::Initiator
            } else {
                Role::Responder
            };
            let machine = v2::Session::new(role, config, live, now);
            drive(machine, &script.events, &world, |request, ok| {
                use v2::{Answer, Request};
                Some(match request {
                    Request::List if ok => Answer::Listed(Ok(store.summaries())),
                    Request::List => Answer::Listed(Err(store_error())),
                    Request::Probe => Answer::Probe(Ok(ok.then(|| Probe::of(&store.cells)))),
                    Request::Cells { start, count } => Answer::Cells(Ok(ok.then(|| {
                        store
                            .cells
                            .cells(start..start.saturating_add(count))
                            .to_vec()
                    }))),
                    Request::Send { plan, config } => {
                        assert!(config.streams >= 1);
                        for (hash, size) in &plan.assets {
                            let spec = store.find(hash).expect("we send only what we hold");
                            assert_eq!(*size, spec.data().len() as u64);
                        }
                        Answer::Sent(Ok(SendOutcome {
                            assets: plan.assets.len() as u64,
                            meta: plan.meta.len() as u64,
                            ..SendOutcome::default()
                        }))
                    }
                    Request::Receive { config } => {
                        assert!(config.streams >= 1);
                        Answer::Received(Ok(ReceiveOutcome::default()))
                    }
                })
            });
        }
        Kind::V1 {
            initiator,
            pull_batch,
        } => {
            let config = v1::V1Config {
                pull_batch: usize::from(pull_batch % 4),
                ..v1::V1Config::default()
            };
            let role = if initiator {
                Role::Initiator
            } else {
                Role::Responder
            };
            let machine = v1::Session::new(role, config, now);
            drive(machine, &script.events, &world, |request, ok| {
                use v1::{Answer, Request};
                Some(match request {
                    Request::List if ok => Answer::Listed(Ok(store.summaries())),
                    Request::List => Answer::Listed(Err(store_error())),
                    Request::Pull(hashes) => {
                        assert!(!hashes.is_empty());
                        let mut pulled = Pulled::default();
                        for hash in hashes {
                            match store.find(&hash) {
                                Some(spec) => pulled.bundles.push(store.bundle(spec)),
                                None => pulled.missing.push(hash),
                            }
                        }
                        Answer::Pulled(Ok(pulled))
                    }
                    Request::Meta(hash) => {
                        let found = store.find(&hash).map(|s| (s.data().len() as u64, s.meta()));
                        Answer::Meta(hash, Ok(found))
                    }
                    Request::Push(bundle) => {
                        let size = bundle.data.len() as u64;
                        let hash = bundle.hash;
                        let answer = match bundle.verify() {
                            Ok(_) if ok => Ok(Pushed {
                                hash,
                                already_existed: store.find(&hash).is_some(),
                                seq: None,
                            }),
                            Ok(_) => Err(store_error()),
                            Err(mismatch) => Err(CanError::from(mismatch)),
                        };
                        Answer::Pushed(hash, size, answer)
                    }
                    Request::ApplyMeta(update) => {
                        let hash = update.hash;
                        let answer = match store.find(&hash) {
                            None => Err(CanError::NotFound(hash)),
                            Some(_) if ok => Ok(true),
                            Some(_) => Err(store_error()),
                        };
                        Answer::MetaApplied(hash, answer)
                    }
                })
            });
        }
        Kind::Offering => {
            let batch: Vec<Summary> = store
                .summaries()
                .into_iter()
                .map(|s| s.truncated(compact::DIGEST_PREFIX))
                .collect();
            let offered: HashSet<AssetHash> = batch.iter().map(|s| s.hash).collect();
            let machine = Offering::new(batch, 1, idle, now);
            drive(machine, &script.events, &world, |request, _ok| {
                let OfferingRequest::Send(plan) = request;
                for (hash, _) in &plan.assets {
                    assert!(offered.contains(hash), "sends only what it offered");
                }
                Some(OfferingAnswer::Sent(Ok(SendOutcome::default())))
            });
        }
        Kind::Answering => {
            let machine = Answering::new(1, idle, now);
            drive(machine, &script.events, &world, |request, _ok| {
                Some(match request {
                    AnsweringRequest::Claim(offered) => {
                        let (held, wants): (Vec<Summary>, Vec<Summary>) = offered
                            .into_iter()
                            .partition(|s| store.find(&s.hash).is_some());
                        AnsweringAnswer::Claimed {
                            held: held
                                .iter()
                                .filter_map(|s| store.find(&s.hash))
                                .map(|s| s.summary().truncated(compact::DIGEST_PREFIX))
                                .collect(),
                            wants: wants.iter().map(|s| s.hash).collect(),
                        }
                    }
                    AnsweringRequest::Receive => {
                        AnsweringAnswer::Received(Ok(ReceiveOutcome::default()))
                    }
                })
            });
        }
    }
}
