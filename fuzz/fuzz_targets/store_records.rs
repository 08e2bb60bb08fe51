//! The embedded store's record codecs (`src/can/store/schema.rs`:
//! `Record::decode`, `decode_change`, the schema 1 migration) are private;
//! the public path that reaches them is opening a store whose database holds
//! damaged records: [`EmbeddedCan::open`] (which reads every record to build
//! its coded cells, and migrates a store without a schema counter), then the
//! [`Can`] reads (listings, the change log, pulls, metadata, blobs, events).
//!
//! The harness writes a `meta.redb` with arbitrary rows in the store's
//! tables, then opens it. Contract: the open and every read succeed or fail
//! with a typed [`CanError`]; nothing panics; what a listing returns is
//! within its limit and in order.
//!
//! The table definitions below mirror `schema.rs` (names and key/value
//! types); a change there must be mirrored here, or the store refuses the
//! tables (a typed error, so the target then tests nothing useful). A public
//! decode hook for the records would make this target cheap and exact.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use can_sync::asset::AssetHash;
use can_sync::can::{Can, CanError, EmbeddedCan, StoreLimits};
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use redb::{Database, TableDefinition};

const ASSETS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("assets");
const INLINE_BLOBS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("inline_blobs");
const BY_CHANGE: TableDefinition<(i64, [u8; 32]), ()> = TableDefinition::new("by_change");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

#[derive(Arbitrary, Debug)]
struct Rows {
    /// The `schema` counter (`None`: a schema 1 store, migrated at open).
    schema: Option<u8>,
    assets: Vec<AssetRow>,
    changes: Vec<(u8, Vec<u8>)>,
    inline: Vec<(u8, Vec<u8>)>,
    by_change: Vec<(i64, u8)>,
}

#[derive(Arbitrary, Debug)]
struct AssetRow {
    /// Index into a few hashes (so rows of the tables name the same assets).
    hash: u8,
    /// A well-formed record header, or raw bytes.
    header: Option<(u64, i64, u64)>,
    rest: Vec<u8>,
}

fn hash(i: u8) -> [u8; 32] {
    *AssetHash::of(&[i % 8]).as_bytes()
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fn write_rows(path: &Path, rows: &Rows) -> Result<(), redb::Error> {
    let db = Database::create(path)?;
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::None)?;
    {
        let mut assets = txn.open_table(ASSETS)?;
        for row in rows.assets.iter().take(16) {
            let mut value = Vec::new();
            if let Some((size, changed, seq)) = row.header {
                value.extend_from_slice(&size.to_be_bytes());
                value.extend_from_slice(&changed.to_be_bytes());
                value.extend_from_slice(&seq.to_be_bytes());
            }
            value.extend_from_slice(&row.rest);
            assets.insert(hash(row.hash), value.as_slice())?;
        }
        let mut changes = txn.open_table(CHANGES)?;
        for (seq, value) in rows.changes.iter().take(16) {
            changes.insert(u64::from(*seq), value.as_slice())?;
        }
        let mut inline = txn.open_table(INLINE_BLOBS)?;
        for (i, data) in rows.inline.iter().take(8) {
            inline.insert(hash(*i), data.as_slice())?;
        }
        let mut by_change = txn.open_table(BY_CHANGE)?;
        for (at, i) in rows.by_change.iter().take(16) {
            by_change.insert((*at, hash(*i)), ())?;
        }
        let mut counters = txn.open_table(COUNTERS)?;
        if let Some(schema) = rows.schema {
            counters.insert("schema", u64::from(schema % 5))?;
        }
    }
    txn.commit()?;
    Ok(())
}

fn typed(result: Result<impl Sized, CanError>) {
    // Any variant is a typed answer; formatting it must not panic either.
    if let Err(err) = result {
        let _ = err.to_string();
    }
}

fn shm_dir() -> tempfile::TempDir {
    let base = Path::new("/dev/shm");
    if base.is_dir() {
        tempfile::tempdir_in(base).expect("a temporary directory")
    } else {
        tempfile::tempdir().expect("a temporary directory")
    }
}

fuzz_target!(|input: &[u8]| {
    let Ok(rows) = Rows::arbitrary_take_rest(Unstructured::new(input)) else {
        return;
    };
    let dir = shm_dir();
    if write_rows(&dir.path().join("meta.redb"), &rows).is_err() {
        return;
    }
    let can = match EmbeddedCan::open(dir.path(), StoreLimits::default()) {
        Ok(can) => can,
        Err(err) => return typed(Err::<(), _>(err)),
    };
    runtime().block_on(async {
        match can.list_page(None, 5).await {
            Ok(page) => {
                assert!(page.items.len() <= 5);
                assert!(page.items.windows(2).all(|w| w[0].hash < w[1].hash));
            }
            Err(err) => typed(Err::<(), _>(err)),
        }
        match can.list_since(i64::MIN, None, 5).await {
            Ok(page) => assert!(page.items.len() <= 5),
            Err(err) => typed(Err::<(), _>(err)),
        }
        match can.changes(0, 5).await {
            Ok(page) => {
                assert!(page.changes.len() <= 5);
                assert!(page.changes.windows(2).all(|w| w[0].seq < w[1].seq));
            }
            Err(err) => typed(Err::<(), _>(err)),
        }
        let hashes: Vec<AssetHash> = (0..8).map(|i| AssetHash::from_bytes(hash(i))).collect();
        typed(can.pull(&hashes).await);
        for h in &hashes[..3] {
            typed(can.meta(*h).await);
            if let Ok((_, mut body)) = can.read_blob(*h, 0).await {
                while let Some(chunk) = body.next().await {
                    if chunk.is_err() {
                        break;
                    }
                }
            }
        }
        typed(can.stats().await);
        typed(can.coded_cells(0, 4).await);
        typed(can.coded_probe().await);
        if let Ok(mut events) = can.subscribe(Some(0)).await {
            // The replay of the change log, without waiting for live ones.
            for _ in 0..4 {
                match tokio::time::timeout(std::time::Duration::from_millis(1), events.next()).await
                {
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
        }
    });
    drop(can);
});
