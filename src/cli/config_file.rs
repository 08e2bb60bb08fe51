//! `daemon --config FILE`: the daemon's settings in TOML.
//!
//! A setting is a daemon flag without its dashes, so the file and the command
//! line can never drift apart:
//!
//! ```toml
//! data-dir = "/var/lib/can-sync"
//! can = "http://127.0.0.1:8080"
//! listen = "0.0.0.0:7001"
//! http = "127.0.0.1:9090"
//! no-relay = true
//! peer = ["<ticket>", "<ticket>"]   # repeatable flags take arrays
//! allow = ["<endpoint id>"]          # may write; access is closed by default
//! allow-read = ["<endpoint id>"]     # may only read
//! push-workers = 32
//! ```
//!
//! The file is expanded into flags placed before the command line's own, and
//! the daemon command lets a later flag override an earlier one: a flag given
//! on the command line wins over the file; repeatable flags (`peer`, `allow`,
//! `allow-read`) add up.
//!
//! [`Cli::parse_expanding_config`](super::Cli::parse_expanding_config) expands
//! it before clap sees the arguments, with the daemon's flags as the settings
//! a file may hold.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// `args` with the settings of the daemon's `--config FILE` inserted right
/// after the `daemon` subcommand; other commands pass through unchanged.
/// `known` lists the daemon's long flag names, to refuse unknown settings with
/// the file's name in the message.
pub(crate) fn expand(args: Vec<OsString>, known: &[String]) -> Result<Vec<OsString>> {
    let Some(daemon_at) = args
        .iter()
        .skip(1)
        .position(|a| a == "daemon")
        .map(|i| i + 1)
    else {
        return Ok(args);
    };
    let mut path = None;
    for (i, arg) in args.iter().enumerate().skip(daemon_at + 1) {
        let arg = arg.to_string_lossy();
        if let Some(value) = arg.strip_prefix("--config=") {
            path = Some(value.to_string());
        } else if arg == "--config" {
            path = args.get(i + 1).map(|v| v.to_string_lossy().into_owned());
        }
    }
    let Some(path) = path else {
        return Ok(args);
    };
    let flags = flags_of(Path::new(&path), known)?;
    let mut out = args;
    out.splice(daemon_at + 1..daemon_at + 1, flags);
    Ok(out)
}

/// The flags a config file stands for.
fn flags_of(path: &Path, known: &[String]) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing the config file {}", path.display()))?;
    let mut flags = Vec::new();
    for (key, value) in table {
        if key == "config" || !known.contains(&key) {
            bail!(
                "config file {}: unknown setting `{key}` (settings are the daemon's flags \
                 without their dashes: see `can-sync daemon --help`)",
                path.display()
            );
        }
        let values = match value {
            toml::Value::Array(items) => items,
            single => vec![single],
        };
        for value in values {
            let flag = format!("--{key}");
            match value {
                toml::Value::Boolean(true) => flags.push(flag.into()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => flags.extend([flag.into(), s.into()]),
                toml::Value::Integer(n) => flags.extend([flag.into(), n.to_string().into()]),
                toml::Value::Float(x) => flags.extend([flag.into(), x.to_string().into()]),
                other => bail!(
                    "config file {}: `{key}` must be a string, number, boolean or array of them, \
                     not {}",
                    path.display(),
                    other.type_str()
                ),
            }
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn known() -> Vec<String> {
        [
            "data-dir",
            "peer",
            "no-relay",
            "push-workers",
            "listen",
            "config",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn settings_become_flags_before_the_command_lines_own() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("daemon.toml");
        std::fs::write(
            &file,
            "data-dir = \"/d\"\nno-relay = true\npeer = [\"t1\", \"t2\"]\npush-workers = 32\n",
        )?;
        let file = file.to_str().unwrap();
        let expanded = expand(
            os(&[
                "can-sync",
                "daemon",
                "--config",
                file,
                "--push-workers",
                "8",
            ]),
            &known(),
        )?;
        let expected = os(&[
            "can-sync",
            "daemon",
            "--data-dir",
            "/d",
            "--no-relay",
            "--peer",
            "t1",
            "--peer",
            "t2",
            "--push-workers",
            "32",
            "--config",
            file,
            "--push-workers",
            "8",
        ]);
        assert_eq!(expanded, expected);
        Ok(())
    }

    #[test]
    fn other_commands_and_no_config_pass_through() -> Result<()> {
        let args = os(&["can-sync", "seed", "--config", "x"]);
        assert_eq!(expand(args.clone(), &known())?, args);
        let args = os(&["can-sync", "daemon", "--data-dir", "/d"]);
        assert_eq!(expand(args.clone(), &known())?, args);
        Ok(())
    }

    #[test]
    fn unknown_settings_and_bad_files_are_clear_errors() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("daemon.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:1\"\npeers = [\"t\"]\n")?;
        let err = expand(
            os(&["can-sync", "daemon", "--config", file.to_str().unwrap()]),
            &known(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown setting `peers`"), "{err}");

        std::fs::write(&file, "listen = [")?;
        let err = expand(
            os(&[
                "can-sync",
                "daemon",
                &format!("--config={}", file.display()),
            ]),
            &known(),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("parsing the config file"),
            "{err:#}"
        );

        let missing = dir.path().join("missing.toml");
        let err = expand(
            os(&["can-sync", "daemon", "--config", missing.to_str().unwrap()]),
            &known(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("reading the config file"), "{err}");
        Ok(())
    }
}
