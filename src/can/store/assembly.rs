//! Several transfers writing one partial asset at once.
//!
//! When a large asset comes from several sources, each sends the groups it
//! was asked for (the engine leases disjoint runs of groups to each,
//! [`crate::engine::split`]) and each delivery calls
//! [`Can::write_ranges`](crate::can::Can::write_ranges). A partial asset has
//! one writer ([`super::resume`]), so the deliveries of one asset meet here:
//! the first starts an *assembly*, a thread that owns the asset's
//! [`Writing`], and the others join it as *feeders*. Every feeder's groups
//! go to that thread, which verifies and writes them in the order they come.
//!
//! Invariants:
//! - **a bad group is one feeder's fault**: it is refused to the feeder
//!   that sent it ([`CanError::BadRange`]), whose later groups are dropped;
//!   the other feeders go on;
//! - **the asset is committed once**: when a group makes it whole, the
//!   thread hands over the [`Completing`] asset and the first feeder to see
//!   the end commits it; the others answer that it was stored
//!   (`already_existed`), since their deliveries added nothing;
//! - **a feeder's answer covers its own groups**: it returns once the thread
//!   wrote (or refused) every group it fed, so its delivery settles while
//!   others go on;
//! - **an assembly ends with its last feeder**: the thread then saves the
//!   partial asset's state and puts it back as idle; a feeder arriving
//!   meanwhile waits for that end and starts the next assembly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::resume::{Completing, Writing};
use crate::asset::AssetHash;
use crate::can::{CanError, Pushed};

/// Groups that may wait for an assembly's thread.
const QUEUE: usize = 4;

/// The assemblies of one store, by asset.
#[derive(Default)]
pub(super) struct Assemblies {
    running: Mutex<HashMap<AssetHash, Arc<Assembly>>>,
    next_feeder: AtomicU64,
}

/// One asset being written by one thread, fed by several deliveries.
struct Assembly {
    /// The outboard's values and size: a delivery with others does not
    /// join (values alone do not prove a size).
    cvs: Bytes,
    size: u64,
    feeding: Mutex<Feeding>,
    ending: tokio::sync::Mutex<Ending>,
}

struct Feeding {
    /// `None` once the last feeder left: the thread is ending.
    feed: Option<mpsc::Sender<Fed>>,
    feeders: usize,
}

enum Fed {
    Group {
        feeder: u64,
        index: u64,
        data: Bytes,
    },
    /// Answered once every group the feeder sent before it is handled.
    Sync {
        feeder: u64,
        done: oneshot::Sender<Synced>,
    },
}

/// A feeder's groups are handled and the asset is not whole.
struct Synced {
    refused: Option<CanError>,
    held: u64,
    groups: u64,
}

/// What the thread left: the whole asset if it completed, and the groups
/// it refused of feeders that had not synced.
struct ThreadEnd {
    whole: Option<Completing>,
    refused: HashMap<u64, CanError>,
}

enum Ending {
    Running(JoinHandle<Result<ThreadEnd, CanError>>),
    /// A feeder is committing the whole asset (or the commit was dropped).
    Committing,
    Ended {
        stored: Result<Option<Pushed>, String>,
        refused: HashMap<u64, CanError>,
    },
}

/// How one delivery's groups ended, when none was refused.
#[derive(Debug)]
pub(super) enum FeederEnd {
    /// The asset is not whole yet: `held` of its `groups` groups.
    Partial { held: u64, groups: u64 },
    /// The asset is whole and stored (by this feeder's commit, or another's:
    /// then `already_existed`).
    Whole(Pushed),
}

/// One delivery's place in an assembly.
pub(super) struct Feeder {
    assemblies: Arc<Assemblies>,
    assembly: Arc<Assembly>,
    hash: AssetHash,
    id: u64,
    /// `None` once the thread is gone: the asset is whole, or failed.
    feed: Option<mpsc::Sender<Fed>>,
    /// Counted out of the assembly.
    left: bool,
}

impl Assemblies {
    /// Joins the assembly of `hash`, or starts one whose thread opens the
    /// partial asset with `begin`. `cvs` and `size` are the delivery's
    /// outboard's: a delivery whose outboard differs is refused.
    pub(super) async fn join(
        self: &Arc<Self>,
        hash: AssetHash,
        (cvs, size): (Bytes, u64),
        begin: impl FnOnce() -> Result<Writing, CanError> + Send + 'static,
    ) -> Result<Feeder, CanError> {
        let mut begin = Some(begin);
        loop {
            let ending = {
                let mut running = self.running.lock().expect("assemblies lock");
                let assembly = match running.get(&hash) {
                    Some(assembly) => assembly.clone(),
                    None => {
                        let begin = begin.take().expect("begin is used once");
                        let assembly = Assembly::start(cvs.clone(), size, begin);
                        running.insert(hash, assembly.clone());
                        assembly
                    }
                };
                let mut feeding = assembly.feeding.lock().expect("feeding lock");
                match &feeding.feed {
                    Some(_) if assembly.cvs != cvs || assembly.size != size => {
                        return Err(CanError::Invalid(format!(
                            "an outboard of {hash} unlike the one being written"
                        )))
                    }
                    Some(feed) => {
                        let feed = feed.clone();
                        feeding.feeders += 1;
                        drop(feeding);
                        return Ok(Feeder {
                            assemblies: self.clone(),
                            assembly,
                            hash,
                            id: self.next_feeder.fetch_add(1, Ordering::Relaxed),
                            feed: Some(feed),
                            left: false,
                        });
                    }
                    None => {
                        drop(feeding);
                        assembly
                    }
                }
            };
            // Its last feeder left and its thread is ending: the next
            // assembly opens the partial asset once that one let it go.
            self.wait_out(&hash, &ending).await;
        }
    }

    /// Waits for `assembly`'s thread to end, then forgets it.
    async fn wait_out(&self, hash: &AssetHash, assembly: &Arc<Assembly>) {
        let mut ending = assembly.ending.lock().await;
        if let Ending::Running(thread) = &mut *ending {
            let ended = thread.await;
            *ending = match ended {
                Ok(Ok(end)) => Ending::Ended {
                    // A whole asset nobody committed goes back as an idle
                    // partial asset that lacks nothing (`Completing`'s drop):
                    // the next transfer of it completes at once.
                    stored: Ok(None),
                    refused: end.refused,
                },
                Ok(Err(err)) => Ending::Ended {
                    stored: Err(err.to_string()),
                    refused: HashMap::new(),
                },
                Err(err) => Ending::Ended {
                    stored: Err(format!("range writer failed: {err}")),
                    refused: HashMap::new(),
                },
            };
        }
        drop(ending);
        let mut running = self.running.lock().expect("assemblies lock");
        if running
            .get(hash)
            .is_some_and(|current| Arc::ptr_eq(current, assembly))
        {
            running.remove(hash);
        }
    }
}

impl Assembly {
    fn start(
        cvs: Bytes,
        size: u64,
        begin: impl FnOnce() -> Result<Writing, CanError> + Send + 'static,
    ) -> Arc<Self> {
        let (feed, fed) = mpsc::channel(QUEUE);
        let thread = tokio::task::spawn_blocking(move || write_fed(begin, fed));
        Arc::new(Self {
            cvs,
            size,
            feeding: Mutex::new(Feeding {
                feed: Some(feed),
                feeders: 0,
            }),
            ending: tokio::sync::Mutex::new(Ending::Running(thread)),
        })
    }
}

/// The assembly's thread: writes what its feeders send until the asset is
/// whole or every feeder left.
fn write_fed(
    begin: impl FnOnce() -> Result<Writing, CanError>,
    mut fed: mpsc::Receiver<Fed>,
) -> Result<ThreadEnd, CanError> {
    let mut writing = begin()?;
    let mut refused: HashMap<u64, CanError> = HashMap::new();
    // A partial asset may lack nothing already (a process cut between its
    // last group and its commit).
    while !writing.is_whole() {
        let Some(next) = fed.blocking_recv() else {
            break;
        };
        match next {
            Fed::Group {
                feeder,
                index,
                data,
            } => {
                if refused.contains_key(&feeder) {
                    continue;
                }
                match writing.write_group(index, &data) {
                    Ok(()) => {}
                    Err(bad @ CanError::BadRange(_)) => {
                        refused.insert(feeder, bad);
                    }
                    Err(err) => return Err(err),
                }
            }
            Fed::Sync { feeder, done } => {
                let (held, groups) = writing.progress();
                // A feeder that left no longer waits for its answer.
                let _ = done.send(Synced {
                    refused: refused.remove(&feeder),
                    held,
                    groups,
                });
            }
        }
    }
    let whole = if writing.is_whole() {
        Some(writing.into_whole()?)
    } else {
        None
    };
    Ok(ThreadEnd { whole, refused })
}

impl Feeder {
    /// Sends group `index` to be verified and written. False when the
    /// assembly's thread is gone (the asset is whole, or it failed): feed no
    /// more, [`finish`](Self::finish) says which.
    pub(super) async fn feed(&mut self, index: u64, data: Bytes) -> bool {
        let Some(feed) = &self.feed else {
            return false;
        };
        let group = Fed::Group {
            feeder: self.id,
            index,
            data,
        };
        if feed.send(group).await.is_err() {
            self.feed = None;
            return false;
        }
        true
    }

    /// This delivery fed its last group: what became of them. The feeder
    /// that first sees the asset whole commits it with `commit`.
    pub(super) async fn finish<F, Fut>(mut self, commit: F) -> Result<FeederEnd, CanError>
    where
        F: FnOnce(Completing) -> Fut,
        Fut: std::future::Future<Output = Result<Pushed, CanError>>,
    {
        if let Some(feed) = self.feed.take() {
            let (done, synced) = oneshot::channel();
            let asked = feed
                .send(Fed::Sync {
                    feeder: self.id,
                    done,
                })
                .await;
            // The last feeder's sender must be gone for its thread to end.
            drop(feed);
            if asked.is_ok() {
                if let Ok(synced) = synced.await {
                    self.leave().await;
                    return match synced.refused {
                        Some(bad) => Err(bad),
                        None => Ok(FeederEnd::Partial {
                            held: synced.held,
                            groups: synced.groups,
                        }),
                    };
                }
            }
        }
        // The thread ended before this feeder's groups were all handled:
        // the asset is whole (or the thread failed). Commit it before
        // leaving, so that no next assembly finds it busy.
        let ended = self.ended(commit).await;
        self.leave().await;
        ended
    }

    async fn ended<F, Fut>(&self, commit: F) -> Result<FeederEnd, CanError>
    where
        F: FnOnce(Completing) -> Fut,
        Fut: std::future::Future<Output = Result<Pushed, CanError>>,
    {
        let mut ending = self.assembly.ending.lock().await;
        let mut committed_here = None;
        if matches!(*ending, Ending::Running(_)) {
            let Ending::Running(thread) = std::mem::replace(&mut *ending, Ending::Committing)
            else {
                unreachable!("matched above")
            };
            // Dropped midway, this leaves `Committing`: the others then
            // answer that the commit was interrupted.
            *ending = match thread.await {
                Ok(Ok(ThreadEnd {
                    whole: Some(completing),
                    refused,
                })) => {
                    let stored = commit(completing).await;
                    let shared = stored.as_ref().map(|pushed| Some(*pushed));
                    let shared = shared.map_err(|err| err.to_string());
                    committed_here = Some(stored);
                    Ending::Ended {
                        stored: shared,
                        refused,
                    }
                }
                Ok(Ok(ThreadEnd {
                    whole: None,
                    refused,
                })) => Ending::Ended {
                    stored: Ok(None),
                    refused,
                },
                Ok(Err(err)) => {
                    let message = err.to_string();
                    committed_here = Some(Err(err));
                    Ending::Ended {
                        stored: Err(message),
                        refused: HashMap::new(),
                    }
                }
                Err(err) => Ending::Ended {
                    stored: Err(format!("range writer failed: {err}")),
                    refused: HashMap::new(),
                },
            };
        }
        let Ending::Ended { stored, refused } = &mut *ending else {
            return Err(CanError::Unavailable(format!(
                "the commit of {} was interrupted",
                self.hash
            )));
        };
        if let Some(bad) = refused.remove(&self.id) {
            return Err(bad);
        }
        match (committed_here, stored) {
            (Some(result), _) => result.map(FeederEnd::Whole),
            (None, Ok(Some(pushed))) => Ok(FeederEnd::Whole(Pushed {
                hash: pushed.hash,
                already_existed: true,
                seq: None,
            })),
            (None, Ok(None)) => Err(CanError::Unavailable(format!(
                "the transfer writing {} ended before this one's groups",
                self.hash
            ))),
            (None, Err(message)) => Err(CanError::Storage(message.clone())),
        }
    }

    /// Leaves the assembly; the last feeder out waits for its thread to end.
    async fn leave(&mut self) {
        if self.depart() {
            self.assemblies.wait_out(&self.hash, &self.assembly).await;
        }
    }

    /// Counts this feeder out, once; true when it was the last (the thread
    /// then ends, its channel closed).
    fn depart(&mut self) -> bool {
        if self.left {
            return false;
        }
        self.left = true;
        self.feed = None;
        let mut feeding = self.assembly.feeding.lock().expect("feeding lock");
        feeding.feeders -= 1;
        if feeding.feeders == 0 {
            feeding.feed = None;
            return true;
        }
        false
    }
}

impl Drop for Feeder {
    /// A delivery cancelled midway: its groups so far stay written, and the
    /// thread ends if it was the last (the next joiner waits that out).
    fn drop(&mut self) {
        self.depart();
    }
}
