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

use std::time::Instant;

use anyhow::{bail, Context, Result};
use can_sync::asset::{AssetHash, Summary};
use can_sync::can::store::Unrecorded;
use can_sync::can::{CanError, SharedCan};
use clap::Args;
use futures::StreamExt;

use super::args::{NodeStoreArgs, Opened};
use super::listing::{say_each_panic_once, Listed, Listing, Span};
use super::report::{bytes_bar, finish_progress};

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
    say_each_panic_once();
    let opened = args.store.open_to_read()?;
    let can = opened.can();
    let started = Instant::now();
    let total = can.stats().await?;
    let bar = bytes_bar(total.bytes, "checking");
    let (mut assets, mut bytes) = (0u64, 0u64);
    // Each damaged asset: printed as it is found, or with `--json` kept
    // for the one line at the end.
    let mut damaged = Vec::new();
    let mut damaged_count = 0u64;
    let mut found_damage = |hash: AssetHash, name: String, damage: Damage| {
        damaged_count += 1;
        if args.json {
            damaged.push(serde_json::json!({
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
            bar.suspend(|| println!("damaged {hash}{named}: {damage}"));
        }
    };
    // A damaged page of the index hides the records on it: the span of
    // keys they were in is named instead of each asset.
    let mut unreadable = Vec::new();
    let mut unreadable_count = 0u64;
    let mut found_unreadable = |after: Option<AssetHash>, upto: Option<AssetHash>, why: String| {
        unreadable_count += 1;
        let span = Span { after, upto };
        if args.json {
            unreadable.push(serde_json::json!({
                "after": after.map(|hash| hash.to_hex()),
                "upto": upto.map(|hash| hash.to_hex()),
                "damage": why,
            }));
        } else {
            bar.suspend(|| println!("damaged index: {span} cannot be read: {why}"));
        }
    };
    let mut listing = Listing::new(LIST_PAGE);
    loop {
        let listed = listing
            .next(&*can)
            .await
            .with_context(|| format!("listing the store's records, {assets} checked"))?;
        let page = match listed {
            Some(Listed::Page(page)) => page,
            Some(Listed::Damaged { hash, why }) => {
                assets += 1;
                found_damage(hash, String::new(), Damage::Record(why));
                continue;
            }
            Some(Listed::Unreadable { after, upto, why }) => {
                found_unreadable(after, upto, why);
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
            assets += 1;
            bytes += summary.size;
            bar.inc(summary.size);
            if let Some(damage) = found {
                found_damage(summary.hash, name_of(&can, summary.hash).await, damage);
            }
        }
    }
    finish_progress(&bar);
    // Not a check of any asset: a file in `packs/` that cannot be measured
    // (a FIFO put there) is said, and the result still comes.
    let unrecorded = match &opened {
        Opened::Embedded(store) => store
            .unrecorded_segment_bytes()
            .map_err(|err| err.to_string()),
        Opened::Service(_) => Ok(Vec::new()),
    };
    let stray_blobs = match &opened {
        Opened::Embedded(store) => store.unrecorded_blob_files().map_err(|err| err.to_string()),
        Opened::Service(_) => Ok(Vec::new()),
    };
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        let (unrecorded, unrecorded_error) = match &unrecorded {
            Ok(found) => (found.iter().map(unrecorded_json).collect(), None),
            Err(err) => (Vec::new(), Some(err.clone())),
        };
        println!(
            "{}",
            serde_json::json!({
                "assets": assets,
                "bytes": bytes,
                "damaged": damaged_count,
                "damaged_assets": damaged,
                "unreadable_index": unreadable,
                "unrecorded": unrecorded,
                "unrecorded_error": unrecorded_error,
                "unrecorded_blobs": stray_blobs.as_ref().map_or(Vec::new(), |found| {
                    found
                        .iter()
                        .map(|(hash, bytes)| serde_json::json!({"hash": hash.to_hex(), "bytes": bytes}))
                        .collect()
                }),
                "unrecorded_blobs_error": stray_blobs.as_ref().err(),
                "secs": secs,
            })
        );
    } else {
        match &unrecorded {
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
        match &stray_blobs {
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
        println!(
            "checked {assets} assets ({:.1} MB) in {secs:.2} s: {}{}",
            bytes as f64 / 1e6,
            match damaged_count {
                0 => "every one whole".to_string(),
                n => format!("{n} damaged or missing"),
            },
            match unreadable_count {
                0 => String::new(),
                1 => "; a damaged span of the index, whose assets could not be listed".into(),
                n => format!("; {n} damaged spans of the index, whose assets could not be listed"),
            }
        );
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
