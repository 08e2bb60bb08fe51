//! What a v2 [`Session`](super::Session) asks of its driver ([`Request`]:
//! its store, its engine) and the answers it takes back ([`Answer`]). The
//! machine never does IO: the driver (`session::driver::v2`) serves these
//! against a real store and engine, the simulator (`session::sim`) against
//! simulated ones.

use std::sync::Arc;

use crate::asset::{AssetHash, Summary};
use crate::can::{CanError, Page};
use crate::engine::receive::ReceiveOutcome;
use crate::engine::send::{SendOutcome, SendPlan};
use crate::engine::{EngineConfig, EngineError};
use crate::recon::riblt::estimate::Probe;
use crate::recon::riblt::Cell;

use super::paged;

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
    },
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
}
