//! The drivers: the IO around the session machines.
//!
//! A driver owns a connection's streams and no protocol logic: it feeds a
//! [`Machine`] the frames, ends, timer expiries and answers it waits for, and
//! carries out what the machine asks (frames to write, a finish, requests to
//! the store or the engine). `drive` is that loop for a machine that owns
//! one bi-stream for its whole life (v1, the v2 control stream); the live
//! offer and answer hand their stream to the engine midway and have their
//! own short drivers (`crate::node::live`).
//!
//! - [`v1`]: runs a v1 session on a connection.
//! - [`v2`]: runs a v2 session: the control stream here, data streams through
//!   the engine.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::machine::{Machine, Transmit};
use super::SessionError;
use crate::stream::{FrameReader, FrameWriter, RecvHalf, SendHalf, StreamError};
use crate::wire::Violation;

mod pull;
pub mod v1;
pub mod v2;

/// The node-wide budget of work that grows with the whole store: a v1
/// session's listing, and the whole list a v2 peer that does not page its
/// lists gets (0.9–1.3 GiB at 1M assets, PERFORMANCE.md, before the budget).
///
/// The budget counts the memory such sessions hold at once, node-wide, at
/// [`WHOLE_LIST_BYTES_PER_SUMMARY`] a summary of the store (measured: a
/// whole-list session of a 1M store took a daemon 342 MiB beyond idle). A
/// listing takes its store's share (the whole budget when the store is
/// larger) and keeps it until the session that asked ends, since the
/// session keeps the list and what it made of it. So a small store's
/// listings run side by side, a large one's take turns, and the work is
/// never multiplied by the connection slots.
///
/// A session waits for its share at most [`WHOLE_STORE_WAIT`], and no longer
/// than its connection lives: a peer that queues whole-store work and hangs
/// up leaves none behind.
#[derive(Debug, Clone)]
pub struct WholeStoreBudget {
    /// One permit per KiB.
    kib: Arc<Semaphore>,
    total_kib: u32,
}

/// The default budget: 128 MiB of whole-store lists at once.
pub const WHOLE_STORE_BYTES: u64 = 128 << 20;

/// What one summary of the store costs a whole-list session, measured (see
/// [`WholeStoreBudget`]): the summary, its encodings, the diff and the plan.
pub const WHOLE_LIST_BYTES_PER_SUMMARY: u64 = 360;

/// The longest a session waits for its share of the whole-store budget.
pub const WHOLE_STORE_WAIT: Duration = Duration::from_secs(60);

impl WholeStoreBudget {
    /// A budget of `bytes` held by whole-store lists at once.
    pub fn new(bytes: u64) -> Self {
        let total_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        Self {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Lists the whole of `can` under the budget for the session on `conn`,
    /// its share kept in `held` until that session ends.
    async fn list_all(
        &self,
        conn: &Connection,
        can: &dyn crate::can::Can,
        held: &Mutex<Option<OwnedSemaphorePermit>>,
    ) -> Result<Vec<crate::asset::Summary>, crate::can::CanError> {
        use crate::can::CanError;
        let assets = can.stats().await?.assets;
        // One more than the store holds, for what lands while it lists.
        let bytes = assets
            .saturating_add(1)
            .saturating_mul(WHOLE_LIST_BYTES_PER_SUMMARY);
        let share = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.total_kib);
        let work = async {
            let permit =
                tokio::time::timeout(WHOLE_STORE_WAIT, self.kib.clone().acquire_many_owned(share))
                    .await
                    .map_err(|_| {
                        CanError::Unavailable(format!(
                            "busy: no room in the node's whole-store budget within {} s",
                            WHOLE_STORE_WAIT.as_secs()
                        ))
                    })?
                    .expect("the budget's semaphore is never closed");
            let listed = crate::can::list_all(can).await;
            *held.lock().expect("budget lock") = Some(permit);
            listed
        };
        tokio::select! {
            listed = work => listed,
            _ = conn.closed() => Err(CanError::Unavailable(
                "the peer left while its session waited for the whole-store budget".into(),
            )),
        }
    }
}

impl Default for WholeStoreBudget {
    fn default() -> Self {
        Self::new(WHOLE_STORE_BYTES)
    }
}

impl From<iroh::endpoint::ConnectionError> for SessionError {
    fn from(err: iroh::endpoint::ConnectionError) -> Self {
        Self::Stream(err.into())
    }
}

/// The time as the machines take it: tokio's clock, so tests that pause it
/// move the machines' deadlines too.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The bi-stream a responder's session runs on: the first one the peer
/// opens, which must come (with its first bytes: QUIC shows a stream only
/// once data arrives on it) within `idle`. Without the deadline a peer that
/// connects and says nothing would hold its connection slot for as long as
/// keep-alives keep the connection up: the machine's own deadlines start
/// only once it has a stream.
pub(crate) async fn accept_session_stream(
    conn: &Connection,
    idle: Duration,
) -> Result<(SendStream, RecvStream), SessionError> {
    match tokio::time::timeout(idle, conn.accept_bi()).await {
        Ok(accepted) => Ok(accepted?),
        Err(_) => Err(Violation::Silent {
            waited: idle,
            during: "waiting for the session's stream",
        }
        .into()),
    }
}

/// What a driven machine ended with, and the bytes its stream carried.
pub(crate) struct Driven<O> {
    /// The machine's outcome, or why the session failed.
    pub(crate) outcome: Result<O, SessionError>,
    /// Frame bytes written on the stream.
    pub(crate) written: u64,
    /// Frame bytes read from the stream.
    pub(crate) read: u64,
}

/// Runs `machine` on one bi-stream until it has an outcome, serving its
/// requests with `serve` (concurrently with reading and writing).
///
/// Writing runs on its own task, fed one frame at a time, so a peer that
/// reads slowly holds back what the machine may queue, while reading goes on.
pub(crate) async fn drive<'a, M, R, W>(
    machine: &mut M,
    mut reader: FrameReader<R>,
    writer: FrameWriter<W>,
    mut serve: impl FnMut(M::Request) -> BoxFuture<'a, M::Answer>,
) -> Driven<M::Outcome>
where
    M: Machine,
    R: RecvHalf,
    W: SendHalf,
{
    let (transmit_tx, transmit_rx) = mpsc::channel::<Transmit>(1);
    let (written_tx, mut written_rx) = mpsc::channel::<Result<(), StreamError>>(2);
    let writing = tokio::spawn(write_task(writer, transmit_rx, written_tx));
    let mut serving = FuturesUnordered::new();
    let mut staged: Option<Transmit> = None;
    // The reader's own limit: the most any phase may take.
    let most = reader.max_len();
    let outcome = loop {
        if let Some(outcome) = machine.poll_outcome() {
            break outcome;
        }
        while let Some(request) = machine.poll_request() {
            serving.push(serve(request));
        }
        if staged.is_none() {
            staged = machine.poll_transmit();
        }
        let deadline = machine.poll_timeout();
        let wants_frames = machine.wants_frames();
        let limit = machine.frame_limit().map_or(most, |limit| limit.min(most));
        if reader.max_len() != limit {
            reader.set_max_len(limit);
        }
        tokio::select! {
            permit = transmit_tx.reserve(), if staged.is_some() => match permit {
                Ok(permit) => permit.send(staged.take().expect("staged")),
                Err(_) => break Err(crate::fault::Fault::Bug("the stream writer stopped".into()).into()),
            },
            read = reader.next(), if wants_frames => match read {
                Ok(Some(frame)) => machine.handle_frame(now(), frame),
                Ok(None) => machine.handle_end(now()),
                Err(err) => break Err(err.into()),
            },
            Some(answer) = serving.next(), if !serving.is_empty() => {
                machine.handle_answer(now(), answer)
            }
            written = written_rx.recv() => match written {
                Some(Ok(())) => machine.handle_finished(now()),
                Some(Err(err)) => break Err(err.into()),
                None => break Err(crate::fault::Fault::Bug("the stream writer stopped".into()).into()),
            },
            () = sleep_until(deadline), if deadline.is_some() => machine.handle_timeout(now()),
        }
    };
    drop(transmit_tx);
    let written = if outcome.is_ok() {
        writing.await.map(|w| w.bytes_written()).unwrap_or(0)
    } else {
        // The writer may be stuck on a peer that stopped reading.
        writing.abort();
        0
    };
    Driven {
        outcome,
        written,
        read: reader.bytes_read(),
    }
}

/// Sleeps until `deadline`; never returns without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Writes what the machine transmits, in order; reports each finished stream
/// (and the first failure) back. Returns the writer for its byte count.
async fn write_task<W: SendHalf>(
    mut writer: FrameWriter<W>,
    mut transmits: mpsc::Receiver<Transmit>,
    written: mpsc::Sender<Result<(), StreamError>>,
) -> FrameWriter<W> {
    while let Some(transmit) = transmits.recv().await {
        let result = match transmit {
            Transmit::Frame(frame) => match writer.send(frame).await {
                Ok(()) => continue,
                Err(err) => Err(err),
            },
            Transmit::Finish => writer.finish().await,
        };
        let failed = result.is_err();
        if written.send(result).await.is_err() || failed {
            break;
        }
    }
    writer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::endpoint::ConnectedPair;
    use crate::session::ALPN_V2;

    /// A peer that connects and opens no stream fails as silent at the
    /// deadline instead of holding its slot; once it opens its stream and
    /// writes, the stream is the session's.
    #[tokio::test]
    async fn a_peer_that_never_opens_its_stream_is_silent_not_waited_for() {
        let test = async {
            let pair = ConnectedPair::new(ALPN_V2).await;
            let (conn, dialed) = (&pair.accepted, &pair.dialed);

            let idle = Duration::from_millis(200);
            match accept_session_stream(conn, idle).await {
                Err(SessionError::Peer(Violation::Silent { waited, .. })) => {
                    assert_eq!(waited, idle)
                }
                other => panic!("expected silence, got {other:?}"),
            }
            let (mut send, _recv) = dialed.open_bi().await.expect("a stream");
            send.write_all(b"x").await.expect("written");
            accept_session_stream(conn, Duration::from_secs(10))
                .await
                .expect("the stream");
        };
        tokio::time::timeout(Duration::from_secs(30), test)
            .await
            .expect("no hang");
    }

    /// A listing that would take the budget past its size waits while the
    /// first session holds its share, and goes on once that session ends;
    /// one whose peer leaves while it waits ends then, with nothing listed.
    #[tokio::test]
    async fn whole_store_listings_take_turns_and_end_with_their_peer() {
        use futures::FutureExt;

        use crate::can::{Can, EmbeddedCan, StoreLimits};
        use crate::node::endpoint::ConnectedPair;

        let test = async {
            let can = EmbeddedCan::memory(StoreLimits::default()).unwrap();
            can.push(crate::asset::Bundle {
                hash: crate::asset::AssetHash::of(b"one"),
                data: bytes::Bytes::from_static(b"one"),
                meta: crate::pb::AssetMeta::default(),
            })
            .await
            .unwrap();
            let pair = ConnectedPair::new(crate::session::ALPN_V2).await;
            let conn = &pair.accepted;
            // Room for one listing of this store (two summaries) at a time.
            let budget = WholeStoreBudget::new(2 * WHOLE_LIST_BYTES_PER_SUMMARY);
            let (first, second) = (Mutex::new(None), Mutex::new(None));
            assert_eq!(budget.list_all(conn, &can, &first).await.unwrap().len(), 1);
            let mut waiting = Box::pin(budget.list_all(conn, &can, &second));
            assert!(
                (&mut waiting).now_or_never().is_none(),
                "a second listing while the first session holds the budget"
            );
            first.lock().unwrap().take();
            assert_eq!(
                waiting.await.unwrap().len(),
                1,
                "its turn once the first ended"
            );
            assert!(
                second.lock().unwrap().is_some(),
                "held until its session ends"
            );

            let third = Mutex::new(None);
            let mut queued = Box::pin(budget.list_all(conn, &can, &third));
            assert!((&mut queued).now_or_never().is_none());
            pair.dialed.close(0u32.into(), b"gone");
            assert!(
                matches!(queued.await, Err(crate::can::CanError::Unavailable(_))),
                "a session whose peer left lists nothing"
            );
            assert!(third.lock().unwrap().is_none());
        };
        tokio::time::timeout(Duration::from_secs(30), test)
            .await
            .expect("no hang");
    }
}
