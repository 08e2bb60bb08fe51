//! `export` stays inside its folder and leaves the user's files alone: a
//! symbolic link inside the folder is never followed (for a folder or the
//! final file, with `--overwrite` or without), an existing file of other
//! bytes is replaced only with `--overwrite`, and a second export into the
//! same folder finds its own files already there. The binary runs as users
//! run it: `add --store` makes a store, `export --store` writes it out.
#![cfg(unix)]

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{ensure, Context, Result};
use common::process::BIN;
use common::TIMEOUT;
use tokio::process::Command;

/// A scratch folder with a store made by `add` of the files `files`
/// (relative name, contents), and a folder to export into.
struct Setup {
    work: tempfile::TempDir,
    store: PathBuf,
    out: PathBuf,
}

impl Setup {
    async fn with(files: &[(&str, &[u8])]) -> Result<Self> {
        let work = tempfile::tempdir()?;
        let source = work.path().join("source");
        for (name, data) in files {
            let path = source.join(name);
            std::fs::create_dir_all(path.parent().context("a parent")?)?;
            std::fs::write(path, data)?;
        }
        let store = work.path().join("store");
        let out = work.path().join("out");
        std::fs::create_dir_all(&out)?;
        let added = run(&[
            OsStr::new("add"),
            OsStr::new("--store"),
            store.as_os_str(),
            source.as_os_str(),
        ])
        .await?;
        ensure!(
            added.status.success(),
            "add failed: {}",
            String::from_utf8_lossy(&added.stderr)
        );
        Ok(Self { work, store, out })
    }

    /// A folder outside `out`, made empty.
    fn elsewhere(&self) -> Result<PathBuf> {
        let path = self.work.path().join("elsewhere");
        std::fs::create_dir_all(&path)?;
        Ok(path)
    }

    /// `export --store STORE --to OUT --json`, plus `extra`; the output and
    /// its JSON line.
    async fn export(&self, extra: &[&str]) -> Result<(Output, serde_json::Value)> {
        let mut args = vec![
            OsStr::new("export"),
            OsStr::new("--store"),
            self.store.as_os_str(),
            OsStr::new("--to"),
            self.out.as_os_str(),
            OsStr::new("--json"),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let output = run(&args).await?;
        let json = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "export printed no JSON; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        Ok((output, json))
    }
}

/// Runs the binary with `args`, bounded by [`TIMEOUT`].
async fn run(args: &[&OsStr]) -> Result<Output> {
    Ok(tokio::time::timeout(
        TIMEOUT,
        Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await??)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The names in `dir`.
fn names_in(dir: &Path) -> Result<Vec<String>> {
    let mut names = std::fs::read_dir(dir)?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_folder_inside_the_export_folder_is_not_followed() -> Result<()> {
    let setup = Setup::with(&[("docs/x.txt", b"secret plan"), ("other.txt", b"fine")]).await?;
    let elsewhere = setup.elsewhere()?;
    symlink(&elsewhere, setup.out.join("docs"))?;

    let (output, json) = setup.export(&[]).await?;
    assert!(
        !output.status.success(),
        "a skipped asset fails the command"
    );
    let stderr = stderr(&output);
    assert!(
        stderr.contains("docs/x.txt") && stderr.contains("symbolic link"),
        "{stderr}"
    );
    assert_eq!(json["skipped"], 1, "{json}");
    assert_eq!(
        json["written"], 1,
        "the other asset is still exported: {json}"
    );
    assert_eq!(names_in(&elsewhere)?, Vec::<String>::new());
    assert_eq!(std::fs::read(setup.out.join("other.txt"))?, b"fine");
    assert!(std::fs::symlink_metadata(setup.out.join("docs"))?.is_symlink());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_file_is_replaced_only_with_overwrite() -> Result<()> {
    let setup = Setup::with(&[("keep.txt", b"the asset's bytes")]).await?;
    std::fs::write(setup.out.join("keep.txt"), b"the user's own")?;

    let (output, json) = setup.export(&[]).await?;
    assert!(!output.status.success());
    let stderr = stderr(&output);
    assert!(
        stderr.contains("keep.txt") && stderr.contains("--overwrite"),
        "{stderr}"
    );
    assert_eq!(
        (json["skipped"].clone(), json["written"].clone()),
        (1.into(), 0.into())
    );
    assert_eq!(
        std::fs::read(setup.out.join("keep.txt"))?,
        b"the user's own"
    );
    assert_eq!(
        names_in(&setup.out)?,
        ["keep.txt"],
        "no temporary file left"
    );

    let (output, json) = setup.export(&["--overwrite"]).await?;
    assert!(output.status.success(), "{}", self::stderr(&output));
    assert_eq!(
        (json["skipped"].clone(), json["written"].clone()),
        (0.into(), 1.into())
    );
    assert_eq!(
        std::fs::read(setup.out.join("keep.txt"))?,
        b"the asset's bytes"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_at_the_final_name_is_not_followed_even_with_overwrite() -> Result<()> {
    let setup = Setup::with(&[("keep.txt", b"the asset's bytes"), ("new.txt", b"new")]).await?;
    let elsewhere = setup.elsewhere()?;
    let victim = elsewhere.join("victim.txt");
    std::fs::write(&victim, b"not yours")?;
    symlink(&victim, setup.out.join("keep.txt"))?;
    // A dangling link: following it would create a file outside.
    symlink(elsewhere.join("planted.txt"), setup.out.join("new.txt"))?;

    for extra in [&[][..], &["--overwrite"][..]] {
        let (output, json) = setup.export(extra).await?;
        assert!(!output.status.success(), "{extra:?}");
        let stderr = stderr(&output);
        assert!(
            stderr.contains("keep.txt") && stderr.contains("new.txt"),
            "{extra:?}: {stderr}"
        );
        assert_eq!(json["skipped"], 2, "{extra:?}: {json}");
        assert_eq!(std::fs::read(&victim)?, b"not yours", "{extra:?}");
        assert_eq!(names_in(&elsewhere)?, ["victim.txt"], "{extra:?}");
        for link in ["keep.txt", "new.txt"] {
            assert!(
                std::fs::symlink_metadata(setup.out.join(link))?.is_symlink(),
                "{extra:?}: {link} is still the user's link"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_export_into_the_same_folder_succeeds() -> Result<()> {
    let setup = Setup::with(&[
        ("docs/x.txt", b"x"),
        ("docs/deeper/y.txt", b"y"),
        ("keep.txt", b"k"),
    ])
    .await?;
    let (first, json) = setup.export(&[]).await?;
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(json["written"], 3, "{json}");

    let (second, json) = setup.export(&[]).await?;
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(
        (
            json["written"].clone(),
            json["already_present"].clone(),
            json["skipped"].clone()
        ),
        (0.into(), 3.into(), 0.into()),
        "{json}"
    );
    assert_eq!(names_in(&setup.out)?, ["docs", "keep.txt"]);
    assert_eq!(std::fs::read(setup.out.join("docs/deeper/y.txt"))?, b"y");
    Ok(())
}

/// A damaged record costs its own asset only: the others are exported, the
/// damaged one is named, and the command exits non-zero. The store is
/// opened only to be read: after two exports its database file holds the
/// same bytes, and the second export says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_costs_its_asset_only() -> Result<()> {
    let setup = Setup::with(&[("a.txt", b"a"), ("b.txt", b"b"), ("c.txt", b"c")]).await?;
    let damaged = can_sync::asset::AssetHash::of(b"b");
    {
        let assets: redb::TableDefinition<[u8; 32], &[u8]> = redb::TableDefinition::new("assets");
        let db = redb::Database::open(setup.store.join("meta.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(assets)?
            .insert(*damaged.as_bytes(), &b"not a record"[..])?;
        txn.commit()?;
    }
    let database = setup.store.join("meta.redb");
    let before = std::fs::read(&database)?;
    for _ in 0..2 {
        let (output, json) = setup.export(&["--overwrite"]).await?;
        assert!(!output.status.success(), "a damaged store fails: {json}");
        assert_eq!(json["failed"], 1, "{json}");
        assert!(
            stderr(&output).contains(&format!("not exported: {damaged}: its record is damaged")),
            "{}",
            stderr(&output)
        );
        assert_eq!(names_in(&setup.out)?, ["a.txt", "c.txt"]);
    }
    assert!(
        std::fs::read(&database)? == before,
        "export changed the database file"
    );
    Ok(())
}
