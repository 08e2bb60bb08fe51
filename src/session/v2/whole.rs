//! The full exchange in one list each: what a v2 [`Session`] does when the
//! lists must be exchanged and a side does not page (see `paged.rs` in this
//! module for the paged one). Each side sends its whole list as one `RECON`
//! (compact encoding, `done` set); once both lists are in, [`recon::diff`]
//! says what to send, and, when both sides pull, what to ask for.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use prost::Message as _;
use tracing::info;

use super::{Session, MAX_SUMMARIES};
use crate::asset::{AssetHash, Summary};
use crate::engine::send::SendPlan;
use crate::pb;
use crate::recon::{self, compact};
use crate::session::machine::Transmit;
use crate::wire::data_stream::frame;
use crate::wire::{FrameType, Violation};

impl Session {
    /// The peer's whole list.
    pub(super) fn handle_their_list(&mut self, round: pb::Recon) -> Result<(), Violation> {
        if self.theirs.is_some() {
            return Err(self.unexpected("SUMMARY", FrameType::Recon));
        }
        self.theirs = Some(compact::decode(&round.packed_summaries, MAX_SUMMARIES)?);
        self.plan_whole();
        Ok(())
    }

    /// Our whole list: it goes to the peer and waits for theirs.
    pub(super) fn handle_listed(&mut self, now: Instant, ours: Vec<Summary>) {
        // Listing a large store takes time; the peer's list is due
        // from now on.
        self.deadline = Some(now + self.config.idle_timeout);
        let ours: Vec<Summary> = ours
            .into_iter()
            .map(|s| s.truncated(compact::DIGEST_PREFIX))
            .collect();
        self.advertised += ours.len() as u64;
        let round = pb::Recon {
            packed_summaries: Bytes::from(compact::encode(&ours, self.config.zstd_level)),
            wants: Bytes::new(),
            done: true,
            ..Default::default()
        };
        self.transmit.push_back(Transmit::Frame(frame(
            FrameType::Recon,
            &round.encode_to_vec(),
        )));
        self.ours = Some(ours);
        self.plan_whole();
    }

    /// Once both summary lists are in: what to send, and the engine started.
    fn plan_whole(&mut self) {
        let (Some(ours), Some(theirs), Some(limits)) = (&self.ours, &self.theirs, &self.limits)
        else {
            return;
        };
        let diff = recon::diff(ours, theirs);
        let sizes: HashMap<AssetHash, u64> = ours.iter().map(|s| (s.hash, s.size)).collect();
        let plan = SendPlan {
            assets: diff
                .assets_to_send
                .iter()
                .map(|hash| (*hash, sizes[hash]))
                .collect(),
            meta: diff.meta_to_send,
            ..SendPlan::default()
        };
        info!(
            ours = ours.len(),
            theirs = theirs.len(),
            to_send = plan.assets.len(),
            to_receive = diff.assets_to_receive.len(),
            streams = limits.streams,
            "v2 reconciled"
        );
        let limits = *limits;
        let sizes: HashMap<AssetHash, u64> = theirs.iter().map(|s| (s.hash, s.size)).collect();
        let lacking: Vec<(AssetHash, u64)> = diff
            .assets_to_receive
            .iter()
            .map(|hash| (*hash, sizes[hash]))
            .collect();
        self.start_engine(limits);
        self.hand_plan(plan, true);
        self.lack(lacking);
        self.lacked_all();
        self.enter_transfer();
    }
}
