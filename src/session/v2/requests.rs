//! What a v2 [`Session`](super::Session) asks of its driver ([`Request`]:
//! its store, its engine) and the answers it takes back ([`Answer`]). The
//! machine never does IO: the driver (`session::driver::v2`) serves these
//! against a real store and engine, the simulator (`session::sim`) against
//! simulated ones.

use std::sync::Arc;

use crate::asset::{AssetHash, Summary};
use crate::can::{CanError, Page};
use crate::engine::receive::ReceiveOutcome;
use crate::engine::send::{RangesAsked, SendOutcome, SendPlan};
use crate::engine::{EngineConfig, EngineError};
use crate::recon::riblt::estimate::Probe;
use crate::recon::riblt::Cell;

use super::paged;
use crate::session::SessionError;
use crate::wire::Frame;

/// What a v2 session asks of its driver.
#[derive(Debug)]
pub enum Request {
    /// Our store's summaries, all of them (the full exchange with a peer
    /// that does not page).
    List,
    /// A page of our store's summaries in hash order, after `after` (from the
    /// first when `None`), for one of the paged exchange's two listings.
    Page {
        /// Which listing asks.
        listing: paged::Listing,
        /// Where the page starts (exclusive).
        after: Option<AssetHash>,
        /// Most summaries in the page.
        limit: usize,
    },
    /// Our store's probe of its coded cells.
    Probe,
    /// `count` of our store's coded cells from `start`.
    Cells {
        /// The first index.
        start: usize,
        /// How many.
        count: usize,
    },
    /// Start sending over `config.streams` new streams what the
    /// [`Request::Plan`]s that follow name; the streams end after the last.
    Send {
        /// The settings to send with.
        config: Arc<EngineConfig>,
        /// The session pulls: open our want stream after the data streams.
        pull: bool,
    },
    /// Hand `plan` to the engine started by [`Request::Send`]; answered when
    /// the engine has taken it (so a machine that waits for the answer never
    /// holds more than one plan ahead of the transfer).
    Plan {
        /// What the peer lacks, or a part of it.
        plan: SendPlan,
        /// Nothing follows: the engine ends the streams once this is sent.
        last: bool,
    },
    /// Receive the peer's `config.streams` streams.
    Receive {
        /// The settings to receive with.
        config: Arc<EngineConfig>,
        /// The session pulls: the peer's next stream is its want stream, and
        /// each asset received settles our claim on it.
        pull: bool,
    },
    /// Claim these assets we lack node-wide ([`pull`](super::pull)), once
    /// fewer than a window of what we asked for is still on its way.
    Claim {
        /// The assets, as the exchange named them, with the peer's sizes (0
        /// when unknown).
        assets: Vec<(AssetHash, u64)>,
        /// With `split`, the inline limit: larger assets of more than a
        /// lease of groups may be split among sessions
        /// ([`crate::engine::split`]).
        split_above: Option<u64>,
    },
    /// Wait until no delivery holds a claim on any of these.
    AwaitFree {
        /// The assets another delivery held.
        hashes: Vec<AssetHash>,
    },
    /// Write a `WANT` on our want stream.
    Want {
        /// The assets we ask for.
        hashes: Vec<AssetHash>,
        /// Verified ranges are on (HELLO feature `ranges`): name the groups
        /// we lack of those we hold in part.
        resume: bool,
    },
    /// End our want stream: `DONE{assets: asked}`, then its end.
    EndWants {
        /// Assets our `WANT`s named in all.
        asked: u64,
    },
    /// Read the next frame of the peer's want stream.
    ReadWant,
    /// Hand the engine what the peer asked for; answered when it took it.
    PlanWanted {
        /// The assets the peer asked for.
        hashes: Vec<AssetHash>,
        /// Of those, the ones it holds in part, and the groups it lacks.
        resume: Vec<RangesAsked>,
    },
}

/// What claiming found ([`Request::Claim`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Claiming {
    /// Claimed here and still lacking: ask the peer for them.
    pub ask: Vec<AssetHash>,
    /// Another delivery holds them: wait for it.
    pub busy: Vec<AssetHash>,
    /// Beyond our window of what is asked and not yet received: claim them
    /// later, first.
    pub later: Vec<(AssetHash, u64)>,
}

/// The answer to a [`Request`].
#[derive(Debug)]
pub enum Answer {
    /// Answer to [`Request::List`].
    Listed(Result<Vec<Summary>, CanError>),
    /// Answer to [`Request::Page`].
    Page {
        /// Which listing asked.
        listing: paged::Listing,
        /// The page, with where the next one starts (`None`: the last).
        page: Result<Page<Summary, AssetHash>, CanError>,
    },
    /// Answer to [`Request::Plan`]: the engine took the plan.
    Planned,
    /// Answer to [`Request::Probe`] (`None`: the store keeps no cells).
    Probe(Result<Option<Probe>, CanError>),
    /// Answer to [`Request::Cells`] (`None`: the store keeps no cells).
    Cells(Result<Option<Vec<Cell>>, CanError>),
    /// Answer to [`Request::Send`].
    Sent(Result<SendOutcome, EngineError>),
    /// Answer to [`Request::Receive`].
    Received(Result<ReceiveOutcome, EngineError>),
    /// Answer to [`Request::Claim`].
    Claimed(Result<Claiming, CanError>),
    /// Answer to [`Request::AwaitFree`]: the assets, free now.
    Freed(Vec<AssetHash>),
    /// Answer to [`Request::Want`] and [`Request::EndWants`]: written.
    Wanted(Result<(), SessionError>),
    /// Answer to [`Request::ReadWant`] (`None`: the stream ended).
    PeerWant(Result<Option<Frame>, SessionError>),
    /// Answer to [`Request::PlanWanted`].
    PlannedWanted,
}
