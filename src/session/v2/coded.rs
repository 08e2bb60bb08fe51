//! Coded reconciliation on the control stream: a v2 [`Session`] runs a
//! [`CodedRecon`] when both `HELLO`s carry [`coded::FEATURE`], turning its
//! steps into `RECON` frames and store requests, and falling back to the full
//! exchange whenever it says so or the peer sends a full list.
//!
//! A coded `RECON` has `coded` set and exactly one of: `probe`; `cells` (from
//! `cells_start`); `more_cells`; or the wants (`wants`: 8-byte hash prefixes
//! of the assets; `meta_wants`: whole hashes for metadata; when pulling,
//! `lacks`: whole hashes of what the responder lacks, and `lack_sizes`: their
//! sizes, varints, one each or none; any possibly empty).

use bytes::Bytes;
use prost::Message as _;
use tracing::info;

use super::{Request, Session};
use crate::asset::{AssetHash, HashPrefix};
use crate::engine::send::SendPlan;
use crate::pb;
use crate::recon::coded::{self, CodedRecon, Message, Outcome, Step, StoreNeed};
use crate::recon::riblt::estimate::Probe;
use crate::recon::riblt::{decode_cells, encode_cells};
use crate::session::live::parse_wants;
use crate::session::machine::Transmit;
use crate::wire::data_stream::frame;
use crate::wire::{FrameType, Violation};

impl Session {
    /// Carries out what the coded exchange asks until it waits.
    pub(super) fn pump_coded(&mut self, now: std::time::Instant) {
        while let Some(step) = self.coded.as_mut().and_then(CodedRecon::poll_step) {
            match step {
                Step::Send(message) => {
                    let pull = self.pull.is_some();
                    match &message {
                        Message::Wants { lacks, .. } => self.advertised += lacks.len() as u64,
                        // Our cells name at most this many of our assets.
                        Message::Cells { cells, .. } => self.advertised += cells.len() as u64,
                        _ => {}
                    }
                    self.transmit.push_back(coded_frame(&message, pull));
                }
                Step::Need(StoreNeed::Probe) => self.requests.push_back(Request::Probe),
                Step::Need(StoreNeed::Cells { start, count }) => {
                    self.requests.push_back(Request::Cells { start, count });
                }
                Step::Done(outcome) => {
                    self.coded = None;
                    self.plan_coded(outcome);
                }
                Step::Fallback(why) => {
                    info!(why, "coded reconciliation falls back to full lists");
                    self.fall_back(now);
                }
            }
        }
    }

    /// Leaves the coded exchange for the full one (once): paged when both
    /// sides page, else our whole list.
    pub(super) fn fall_back(&mut self, now: std::time::Instant) {
        self.coded = None;
        if self.listing {
            return;
        }
        self.listing = true;
        match self.limits {
            Some(limits) if limits.paged => self.start_paged(now, limits),
            _ => self.requests.push_back(Request::List),
        }
    }

    /// A coded `RECON` from the peer.
    pub(super) fn handle_coded(
        &mut self,
        now: std::time::Instant,
        round: pb::Recon,
    ) -> Result<(), Violation> {
        let Some(exchange) = self.coded.as_mut() else {
            // We fell back while this crossed our full list: the peer
            // switches when that arrives.
            return Ok(());
        };
        let message = parse(round, exchange.side())?;
        exchange.handle_message(message)?;
        self.pump_coded(now);
        Ok(())
    }

    /// Starts the engine on what the coded exchange concluded.
    fn plan_coded(&mut self, outcome: Outcome) {
        let Some(limits) = self.limits else {
            return;
        };
        info!(
            to_send = outcome.send_lookup.len(),
            meta_to_send = outcome.send_meta.len(),
            to_receive = outcome.expect,
            "v2 reconciled with coded cells"
        );
        let plan = SendPlan {
            lookup: outcome.send_lookup,
            meta: outcome.send_meta,
            ..SendPlan::default()
        };
        self.start_engine(limits);
        self.hand_plan(plan, true);
        self.lack(outcome.receive);
        self.lacked_all();
        self.enter_transfer();
    }
}

/// The `RECON` frame of a coded message; a session that `pull`s also names
/// what the responder lacks by whole hash, with their sizes (the prefixes
/// of what the initiator lacks still go: a responder that may not send
/// counts them as not taken).
fn coded_frame(message: &Message, pull: bool) -> Transmit {
    let mut round = pb::Recon {
        coded: true,
        ..Default::default()
    };
    match message {
        Message::Probe(probe) => round.probe = Bytes::from(probe.encode()),
        Message::Cells { start, cells } => {
            round.cells_start = *start as u64;
            round.cells = Bytes::from(encode_cells(cells));
        }
        Message::More(count) => round.more_cells = *count as u64,
        Message::Wants {
            assets,
            meta,
            lacks,
        } => {
            if pull {
                round.lacks = lacks.iter().flat_map(|(h, _)| *h.as_bytes()).collect();
                let mut sizes = Vec::with_capacity(lacks.len() * 4);
                for (_, size) in lacks {
                    prost::encoding::encode_varint(*size, &mut sizes);
                }
                round.lack_sizes = Bytes::from(sizes);
            }
            round.wants = assets.iter().flat_map(|p| p.0).collect();
            round.meta_wants = raw_hashes(meta);
            round.done = true;
        }
    }
    Transmit::Frame(frame(FrameType::Recon, &round.encode_to_vec()))
}

fn raw_hashes(hashes: &[crate::asset::AssetHash]) -> Bytes {
    hashes.iter().flat_map(|h| *h.as_bytes()).collect()
}

/// The coded message a `RECON` carries, checked against what `side` may
/// receive: an initiator gets cells, a responder the rest.
fn parse(round: pb::Recon, side: coded::Side) -> Result<Message, Violation> {
    let bad = |what: String| Violation::Recon(what);
    match side {
        coded::Side::Initiator => {
            let cells =
                decode_cells(&round.cells, coded::KEPT_CELLS).map_err(|e| bad(e.to_string()))?;
            let start = usize::try_from(round.cells_start)
                .ok()
                .filter(|start| *start < coded::KEPT_CELLS)
                .ok_or_else(|| bad(format!("cells from {}", round.cells_start)))?;
            Ok(Message::Cells { start, cells })
        }
        coded::Side::Responder if !round.probe.is_empty() => Ok(Message::Probe(
            Probe::decode(&round.probe).map_err(|e| bad(e.to_string()))?,
        )),
        coded::Side::Responder if round.more_cells > 0 => Ok(Message::More(
            usize::try_from(round.more_cells)
                .ok()
                .filter(|count| *count <= coded::KEPT_CELLS)
                .ok_or_else(|| bad(format!("{} more cells", round.more_cells)))?,
        )),
        // A difference never names more assets than the cells kept: refuse
        // a larger wants field before building anything from it.
        coded::Side::Responder
            if round.wants.len() / HashPrefix::LEN
                + (round.meta_wants.len() + round.lacks.len()) / 32
                > coded::KEPT_CELLS =>
        {
            Err(bad(format!(
                "wants of {} and {} bytes and lacks of {} exceed any difference the cells can carry",
                round.wants.len(),
                round.meta_wants.len(),
                round.lacks.len()
            )))
        }
        coded::Side::Responder => Ok(Message::Wants {
            assets: parse_prefixes(&round.wants)?,
            meta: parse_wants(&round.meta_wants)?,
            lacks: parse_lacks(&round.lacks, &round.lack_sizes)?,
        }),
    }
}

/// The hashes of a coded `lacks` field with their sizes (`lack_sizes`,
/// varints): one for each, or none at all (a peer that sends none: sizes
/// unknown, 0). The hashes are bounded before this is called, and no more
/// sizes are decoded than there are hashes.
fn parse_lacks(lacks: &[u8], mut sizes: &[u8]) -> Result<Vec<(AssetHash, u64)>, Violation> {
    let hashes = parse_wants(lacks)?;
    if sizes.is_empty() {
        return Ok(hashes.into_iter().map(|hash| (hash, 0)).collect());
    }
    let count = hashes.len();
    let mut sized = Vec::with_capacity(count);
    for hash in hashes {
        if sizes.is_empty() {
            break;
        }
        let size = prost::encoding::decode_varint(&mut sizes)
            .map_err(|err| Violation::Recon(format!("lack sizes: {err}")))?;
        sized.push((hash, size));
    }
    if sized.len() != count || !sizes.is_empty() {
        return Err(Violation::Recon(format!(
            "lack sizes do not give one size to each of {count} lacks"
        )));
    }
    Ok(sized)
}

/// The 8-byte hash prefixes of a coded `wants` field, each at most once.
fn parse_prefixes(wants: &[u8]) -> Result<Vec<HashPrefix>, Violation> {
    if !wants.len().is_multiple_of(HashPrefix::LEN) {
        return Err(Violation::Recon(format!(
            "wants of {} bytes are not 8-byte prefixes",
            wants.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    wants
        .chunks_exact(HashPrefix::LEN)
        .map(|raw| {
            let prefix = HashPrefix(raw.try_into().expect("8 bytes"));
            if !seen.insert(prefix) {
                return Err(Violation::Recon("a prefix wanted twice".into()));
            }
            Ok(prefix)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A responder takes the sizes of what it lacks from the initiator's
    /// last message: one for each hash, or none (a peer that sends none:
    /// unknown); any other count is a violation.
    #[test]
    fn lacks_come_with_a_size_each_or_none() {
        let (a, b) = (AssetHash::of(b"a"), AssetHash::of(b"b"));
        let wants = |sizes: Vec<u64>| pb::Recon {
            coded: true,
            done: true,
            lacks: [a, b].iter().flat_map(|h| *h.as_bytes()).collect(),
            lack_sizes: {
                let mut varints = Vec::new();
                for size in sizes {
                    prost::encoding::encode_varint(size, &mut varints);
                }
                Bytes::from(varints)
            },
            ..Default::default()
        };
        let lacks = |round| match parse(round, coded::Side::Responder) {
            Ok(Message::Wants { lacks, .. }) => Ok(lacks),
            Ok(other) => panic!("not wants: {other:?}"),
            Err(violation) => Err(violation),
        };
        assert_eq!(
            lacks(wants(vec![5, 1 << 30])).ok(),
            Some(vec![(a, 5), (b, 1 << 30)])
        );
        assert_eq!(lacks(wants(Vec::new())).ok(), Some(vec![(a, 0), (b, 0)]));
        assert!(matches!(lacks(wants(vec![5])), Err(Violation::Recon(_))));
        assert!(matches!(
            lacks(wants(vec![5, 6, 7])),
            Err(Violation::Recon(_))
        ));
        let sizes_alone = pb::Recon {
            lacks: Bytes::new(),
            ..wants(vec![5])
        };
        assert!(matches!(lacks(sizes_alone), Err(Violation::Recon(_))));
        let torn = pb::Recon {
            lack_sizes: Bytes::from_static(&[5, 0x80]),
            ..wants(Vec::new())
        };
        assert!(
            matches!(lacks(torn), Err(Violation::Recon(_))),
            "a varint cut short"
        );
        // What the initiator encodes is what the responder reads.
        let sent = Message::Wants {
            assets: Vec::new(),
            meta: Vec::new(),
            lacks: vec![(a, 7), (b, 9)],
        };
        let Transmit::Frame(frame) = coded_frame(&sent, true) else {
            panic!("a frame");
        };
        let mut encoded = bytes::BytesMut::from(&frame[..]);
        let decoded = crate::wire::FrameDecoder::new(1 << 20)
            .decode(&mut encoded)
            .unwrap()
            .expect("a whole frame");
        let round = pb::Recon::decode(decoded.payload).unwrap();
        assert_eq!(lacks(round).ok(), Some(vec![(a, 7), (b, 9)]));
    }

    #[test]
    fn wants_are_bounded_and_whole_before_anything_is_built() {
        let huge = pb::Recon {
            coded: true,
            wants: Bytes::from(vec![7u8; (coded::KEPT_CELLS + 1) * HashPrefix::LEN]),
            ..Default::default()
        };
        assert!(matches!(
            parse(huge, coded::Side::Responder),
            Err(Violation::Recon(_))
        ));
        let ragged = pb::Recon {
            coded: true,
            wants: Bytes::from(vec![7u8; 12]),
            ..Default::default()
        };
        assert!(matches!(
            parse(ragged, coded::Side::Responder),
            Err(Violation::Recon(_))
        ));
        let twice = pb::Recon {
            coded: true,
            wants: Bytes::from([[1u8; 8], [1u8; 8]].concat()),
            ..Default::default()
        };
        assert!(parse(twice, coded::Side::Responder).is_err());
    }
}
