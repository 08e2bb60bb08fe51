//! `can-sync fsck [STORE]`: reads every asset of a store, its record and
//! all its bytes, and names each one whose record is damaged, or whose bytes
//! are missing, unreadable, or do not hash to its name or add up to its
//! recorded size. Exits non-zero when it named one. A bar shows the bytes
//! read (hidden when stderr is not a terminal); the result goes to stdout:
//! a line per damaged asset and a sentence, or, with `--json`, one line
//! that lists them.
//!
//! It goes through the store's own interface
//! ([`Can`](can_sync::can::Can): its listing, then a stream of each asset's
//! bytes), so it checks an embedded store and a CAN service alike, and it
//! checks what a peer or an export would be given.
//!
//! Bytes no record names are not damage, as they are never served, but
//! they are reported: pack segment bytes past the end the database
//! records, and blob files of assets no record names. A write cut short
//! before its commit leaves them, and so does a database put back from an
//! older copy, whose newer values they then are. An embedded store
//! is opened only to be read, so fsck commits nothing to what it checks,
//! and those bytes are still there to be saved.
//!
//! With `--repair`, once the check is over, it forgets each damaged asset
//! of an embedded store ([`EmbeddedCan::forget`]: its blob file, if any,
//! then its record), so that the next sync with a peer holding it brings
//! it back whole; it prints the metadata each one's record held first.
//! It opens the store to write for that, as any writing command does.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use can_sync::asset::{AssetHash, Summary};
use can_sync::can::store::Unrecorded;
use can_sync::can::{CanError, SharedCan};
use clap::Args;
use futures::StreamExt;

use super::args::{NodeStoreArgs, Opened};
use super::report::{bytes_bar, finish_progress};
use can_sync::can::listing::{Listed, Listing, Span};
use repair::{repair, Forgotten};

mod repair;

/// Summaries listed per page.
const LIST_PAGE: usize = 1024;
/// Assets read at once.
const IN_FLIGHT: usize = 8;

#[derive(Args)]
pub(crate) struct FsckArgs {
    #[command(flatten)]
    store: NodeStoreArgs,
    /// Print one JSON line with the result instead of a summary.
    #[arg(long)]
    json: bool,
    /// After the check, forget each damaged asset of the embedded store
    /// (its record, and its blob file when it has one), so that the next
    /// sync with a peer that holds it brings it back whole. Prints the
    /// metadata each one's record held. Opens the store to write: stop its
    /// daemon first; like any command that writes to the store, it cuts
    /// pack segment bytes no record names (run fsck without it first, and
    /// copy those aside if they may be wanted).
    #[arg(long)]
    repair: bool,
}

/// What is wrong with one asset.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Damage {
    /// Its record does not decode, so its bytes cannot be found.
    Record(String),
    /// Its record is there, its bytes are not.
    Missing,
    /// Reading its bytes failed.
    Unreadable(String),
    /// Its bytes do not add up to the size its record gives.
    Size { recorded: u64, read: u64 },
    /// Its bytes hash to something else.
    Hash(AssetHash),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Record(why) => write!(f, "its record is damaged: {why}"),
            Self::Missing => write!(f, "its bytes are missing"),
            Self::Unreadable(why) => write!(f, "its bytes cannot be read: {why}"),
            Self::Size { recorded, read } => {
                write!(f, "{read} bytes where its record says {recorded}")
            }
            Self::Hash(actual) => write!(f, "its bytes hash to {actual}"),
        }
    }
}

pub(crate) async fn run(args: FsckArgs) -> Result<()> {
    let opened = args.store.open_to_read()?;
    match &opened {
        Opened::Service(_) if args.repair => {
            bail!("--repair mends an embedded store (--store or --data-dir), not a CAN service")
        }
        // Forgetting an object's record leaves the object, which a push of
        // the asset would then take as whole.
        Opened::Embedded(store) if args.repair && store.object_stats().is_some() => {
            bail!("--repair does not mend a store that keeps its bytes in object storage (--blobs)")
        }
        _ => {}
    }
    let started = Instant::now();
    let findings = check_every_asset(&opened.can(), args.json).await?;
    let leftovers = Leftovers::of(&opened);
    let secs = started.elapsed().as_secs_f64();
    // The store opened to read holds its database file until dropped.
    drop(opened);
    // The result is said, in full, before a refusal to repair is.
    let repaired = match args.repair && findings.damaged_count > 0 {
        true => Some(repair(&args.store, &findings).await),
        false => None,
    };
    let done: &[Forgotten] = match &repaired {
        Some(Ok(done)) => done,
        _ => &[],
    };
    if args.json {
        let mut json = findings.json(&leftovers, secs);
        if repaired.is_some() {
            json["forgotten"] = done.iter().map(Forgotten::json).collect();
        }
        println!("{json}");
    } else {
        leftovers.print();
        findings.print_summary(secs);
        for forgotten in done {
            println!("{}", forgotten.line());
        }
    }
    let Findings {
        assets,
        damaged_count,
        unreadable_count,
        ..
    } = findings;
    match repaired {
        Some(Err(refused)) => return Err(refused),
        Some(Ok(done)) => {
            let forgotten = done.iter().filter(|f| f.was_forgotten()).count();
            bail!(
                "{forgotten} of the {damaged_count} damaged assets forgotten{}",
                match forgotten {
                    0 => String::new(),
                    _ => ": a sync with a peer that holds them brings them back".to_string(),
                }
            );
        }
        None => {}
    }
    if unreadable_count > 0 {
        bail!(
            "the store's index is damaged ({unreadable_count} span(s) of it could not be \
             listed), and {damaged_count} of the {assets} assets listed are damaged or missing"
        );
    }
    if damaged_count > 0 {
        bail!("{damaged_count} of {assets} assets are damaged or missing");
    }
    Ok(())
}

/// Lists every asset of `can` and checks each, saying what it finds as
/// it finds it (with `json`, keeping it for the one line at the end).
async fn check_every_asset(can: &SharedCan, json: bool) -> Result<Findings> {
    let total = can.stats().await?;
    let mut findings = Findings::new(json, bytes_bar(total.bytes, "checking"));
    let mut listing = Listing::new(LIST_PAGE);
    loop {
        let listed = listing
            .next(&**can)
            .await
            .with_context(|| format!("listing the store's records, {} checked", findings.assets))?;
        let page = match listed {
            Some(Listed::Page(page)) => page,
            Some(Listed::Damaged { hash, why }) => {
                findings.assets += 1;
                findings.damaged(hash, String::new(), Damage::Record(why));
                continue;
            }
            Some(Listed::Unreadable { after, upto, why }) => {
                findings.unreadable(Span { after, upto }, why);
                continue;
            }
            None => break,
        };
        let checks = futures::stream::iter(page)
            .map(|summary| {
                let can = can.clone();
                async move { (summary, check(&can, &summary).await) }
            })
            .buffer_unordered(IN_FLIGHT);
        let mut checks = std::pin::pin!(checks);
        while let Some((summary, found)) = checks.next().await {
            findings.assets += 1;
            findings.bytes += summary.size;
            findings.bar.inc(summary.size);
            if let Some(damage) = found {
                findings.damaged(summary.hash, name_of(can, summary.hash).await, damage);
            }
        }
    }
    finish_progress(&findings.bar);
    Ok(findings)
}

/// What the check of every asset found.
struct Findings {
    json: bool,
    bar: indicatif::ProgressBar,
    assets: u64,
    bytes: u64,
    damaged_count: u64,
    /// Each damaged asset, for `--repair`.
    forgettable: Vec<AssetHash>,
    /// With `--json`: each damaged asset.
    damaged: Vec<serde_json::Value>,
    /// Spans of the index whose records could not be listed.
    unreadable_count: u64,
    /// With `--json`: each such span.
    unreadable: Vec<serde_json::Value>,
}

impl Findings {
    fn new(json: bool, bar: indicatif::ProgressBar) -> Self {
        Self {
            json,
            bar,
            assets: 0,
            bytes: 0,
            damaged_count: 0,
            forgettable: Vec::new(),
            damaged: Vec::new(),
            unreadable_count: 0,
            unreadable: Vec::new(),
        }
    }

    /// A damaged asset, said now or kept.
    fn damaged(&mut self, hash: AssetHash, name: String, damage: Damage) {
        self.damaged_count += 1;
        self.forgettable.push(hash);
        if self.json {
            self.damaged.push(serde_json::json!({
                "hash": hash.to_hex(),
                "name": name,
                "damage": damage.to_string(),
            }));
        } else {
            let named = if name.is_empty() {
                String::new()
            } else {
                format!(" ({name})")
            };
            self.bar
                .suspend(|| println!("damaged {hash}{named}: {damage}"));
        }
    }

    /// A damaged page of the index, which hides the records on it: the
    /// span of keys they were in is named instead of each asset.
    fn unreadable(&mut self, span: Span, why: String) {
        self.unreadable_count += 1;
        if self.json {
            self.unreadable.push(serde_json::json!({
                "after": span.after.map(|hash| hash.to_hex()),
                "upto": span.upto.map(|hash| hash.to_hex()),
                "damage": why,
            }));
        } else {
            self.bar
                .suspend(|| println!("damaged index: {span} cannot be read: {why}"));
        }
    }

    /// The one line of `--json`.
    fn json(&self, leftovers: &Leftovers, secs: f64) -> serde_json::Value {
        let (unrecorded, unrecorded_error) = match &leftovers.segments {
            Ok(found) => (found.iter().map(unrecorded_json).collect(), None),
            Err(err) => (Vec::new(), Some(err.clone())),
        };
        let (unrecorded_blobs, unrecorded_blobs_error) = match &leftovers.blobs {
            Ok(found) => (
                found
                    .iter()
                    .map(|(hash, bytes)| serde_json::json!({"hash": hash.to_hex(), "bytes": bytes}))
                    .collect(),
                None,
            ),
            Err(err) => (Vec::new(), Some(err.clone())),
        };
        serde_json::json!({
            "assets": self.assets,
            "bytes": self.bytes,
            "damaged": self.damaged_count,
            "damaged_assets": self.damaged,
            "unreadable_index": self.unreadable,
            "unrecorded": unrecorded,
            "unrecorded_error": unrecorded_error,
            "unrecorded_blobs": unrecorded_blobs,
            "unrecorded_blobs_error": unrecorded_blobs_error,
            "secs": secs,
        })
    }

    /// The closing sentence.
    fn print_summary(&self, secs: f64) {
        println!(
            "checked {} assets ({:.1} MB) in {secs:.2} s: {}{}",
            self.assets,
            self.bytes as f64 / 1e6,
            match self.damaged_count {
                0 => "every one whole".to_string(),
                n => format!("{n} damaged or missing"),
            },
            match self.unreadable_count {
                0 => String::new(),
                1 => "; a damaged span of the index, whose assets could not be listed".into(),
                n => format!("; {n} damaged spans of the index, whose assets could not be listed"),
            }
        );
    }
}

/// Bytes of an embedded store that no record names: not a check of any
/// asset, so a file that cannot be measured (a FIFO put in `packs/`) is
/// said as a note, and the result still comes.
struct Leftovers {
    segments: Result<Vec<Unrecorded>, String>,
    blobs: Result<Vec<(AssetHash, u64)>, String>,
}

impl Leftovers {
    fn of(opened: &Opened) -> Self {
        match opened {
            Opened::Embedded(store) => Self {
                segments: store
                    .unrecorded_segment_bytes()
                    .map_err(|err| err.to_string()),
                blobs: store.unrecorded_blob_files().map_err(|err| err.to_string()),
            },
            Opened::Service(_) => Self {
                segments: Ok(Vec::new()),
                blobs: Ok(Vec::new()),
            },
        }
    }

    fn print(&self) {
        match &self.segments {
            Ok(found) => {
                for found in found {
                    println!("{}", unrecorded_line(found));
                }
                if !found.is_empty() {
                    println!("{UNRECORDED}");
                }
            }
            Err(err) => println!("could not measure the pack segment files: {err}"),
        }
        match &self.blobs {
            Ok(found) => {
                for (hash, bytes) in found {
                    let hex = hash.to_hex();
                    println!("unrecorded blobs/{}/{hex}: {bytes} bytes", &hex[..2]);
                }
                if !found.is_empty() {
                    println!("{UNRECORDED_BLOBS}");
                }
            }
            Err(err) => println!("could not list the blob files: {err}"),
        }
    }
}

/// What fsck says of pack segment bytes no record names, once. Not
/// damage: a write cut short before its commit leaves them, and the store
/// cuts them when it next opens to write. But a database put back from a
/// copy older than the segments leaves them too, and then they are the
/// values written since: the user is told before anything cuts them.
const UNRECORDED: &str = "No record names those bytes. A write cut short before its commit \
    leaves such bytes, and so does a meta.redb put back from an older copy (then they are \
    the values written since). The next command that writes to the store cuts them: copy \
    the store folder aside first if they may be wanted.";

/// What fsck says of blob files no record names, once: not damage, and
/// never served, but maybe wanted.
const UNRECORDED_BLOBS: &str = "No record names those blob files. A push cut short before its \
    commit leaves one (the next push of that asset takes it), and so does a meta.redb put back \
    from an older copy (then they are assets added since). They stay where they are.";

/// One segment's bytes that no record names, for `--json`.
fn unrecorded_json(found: &Unrecorded) -> serde_json::Value {
    serde_json::json!({
        "segment": found.segment,
        "bytes": found.bytes,
        "whole_file": found.whole_file,
    })
}

/// One segment's bytes that no record names.
fn unrecorded_line(found: &Unrecorded) -> String {
    let file = format!("packs/{:016x}", found.segment);
    if found.whole_file {
        format!("unrecorded {file}: the whole file, {} bytes", found.bytes)
    } else {
        format!(
            "unrecorded {file}: {} bytes past its recorded end",
            found.bytes
        )
    }
}

/// Reads all of one asset's bytes and checks them against its record.
async fn check(can: &SharedCan, summary: &Summary) -> Option<Damage> {
    let (_, mut body) = match can.read_blob(summary.hash, 0).await {
        Ok(opened) => opened,
        Err(CanError::NotFound(_)) => return Some(Damage::Missing),
        Err(err) => return Some(Damage::Unreadable(err.to_string())),
    };
    let mut hasher = blake3::Hasher::new();
    let mut read = 0u64;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                read += chunk.len() as u64;
                hasher.update(&chunk);
            }
            Err(err) => return Some(Damage::Unreadable(err.to_string())),
        }
    }
    let actual = AssetHash::from(hasher.finalize());
    if read != summary.size {
        return Some(Damage::Size {
            recorded: summary.size,
            read,
        });
    }
    (actual != summary.hash).then_some(Damage::Hash(actual))
}

/// The name an asset's record gives it, for the report; empty when it has
/// none or the record cannot be read.
async fn name_of(can: &SharedCan, hash: AssetHash) -> String {
    match can.meta(hash).await {
        Ok(Some((_, meta))) => meta.name,
        _ => String::new(),
    }
}
