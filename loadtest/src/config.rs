//! What to run and how big: the scenario list, the three presets (full, `--quick`,
//! `--smoke`) and the per-scenario size knobs that override them.
//!
//! Sizes are parsed from plain numbers or with a binary suffix (`4KiB`, `32MiB`,
//! `1GiB`; `K`, `M`, `G` mean the same). Throughput figures elsewhere use decimal
//! MB (10^6 bytes).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

/// One load-test scenario (issue #3, item 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scenario {
    /// Many 4 KiB random assets: per-asset overhead.
    Small,
    /// Incompressible 32 MiB assets: bulk bandwidth.
    Large,
    /// Compressible JSON-like assets: what compression could win.
    Text,
    /// Log-normal sizes from 1 KiB to 64 MiB, half random, half text.
    Mixed,
    /// A connected pair of daemons; new assets at a fixed rate; propagation latency.
    Live,
    /// Three daemons, data spread across them, all converge.
    Mesh,
    /// The mixed scenario against CAN servers that add latency and fail requests.
    Faulty,
    /// The ceiling: payload bytes over raw iroh streams, no CAN.
    Raw,
}

impl Scenario {
    /// Every scenario, in the order they run and are reported.
    pub(crate) const ALL: [Self; 8] = [
        Self::Small,
        Self::Large,
        Self::Text,
        Self::Mixed,
        Self::Live,
        Self::Mesh,
        Self::Faulty,
        Self::Raw,
    ];

    /// The name used on the command line and in reports.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Large => "large",
            Self::Text => "text",
            Self::Mixed => "mixed",
            Self::Live => "live",
            Self::Mesh => "mesh",
            Self::Faulty => "faulty",
            Self::Raw => "raw",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .with_context(|| {
                let names: Vec<_> = Self::ALL.iter().map(|sc| sc.name()).collect();
                format!("unknown scenario {s:?}; known: {}", names.join(", "))
            })
    }
}

/// A byte count given on the command line: `1048576`, `1MiB`, `1M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub(crate) u64);

impl FromStr for ByteSize {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, suffix) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .with_context(|| format!("{s:?} is not a byte count"))?;
        let unit = match suffix.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            other => bail!("unknown size suffix {other:?} in {s:?} (use KiB, MiB or GiB)"),
        };
        n.checked_mul(unit)
            .map(Self)
            .with_context(|| format!("{s:?} is too large"))
    }
}

/// Size knobs given on the command line; each overrides the preset's value.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct Knobs {
    /// small: number of assets.
    #[arg(long)]
    pub(crate) small_assets: Option<u64>,
    /// small: bytes per asset.
    #[arg(long)]
    pub(crate) small_asset_size: Option<ByteSize>,
    /// large: total bytes.
    #[arg(long)]
    pub(crate) large_bytes: Option<ByteSize>,
    /// large: bytes per asset.
    #[arg(long)]
    pub(crate) large_asset_size: Option<ByteSize>,
    /// text: total bytes.
    #[arg(long)]
    pub(crate) text_bytes: Option<ByteSize>,
    /// text: bytes per asset.
    #[arg(long)]
    pub(crate) text_asset_size: Option<ByteSize>,
    /// mixed: total bytes.
    #[arg(long)]
    pub(crate) mixed_bytes: Option<ByteSize>,
    /// mixed, mesh, faulty: largest asset (sizes are log-normal from 1 KiB up to this).
    #[arg(long)]
    pub(crate) max_asset_size: Option<ByteSize>,
    /// live: new assets per second on the first node.
    #[arg(long)]
    pub(crate) live_rate: Option<f64>,
    /// live: seconds of writing.
    #[arg(long)]
    pub(crate) live_secs: Option<f64>,
    /// live: bytes per asset.
    #[arg(long)]
    pub(crate) live_asset_size: Option<ByteSize>,
    /// live, mesh: seconds between a daemon's sessions with each peer (v1 has no
    /// live sync: it re-syncs periodically).
    #[arg(long)]
    pub(crate) resync_secs: Option<u64>,
    /// mesh: total bytes spread over the three nodes.
    #[arg(long)]
    pub(crate) mesh_bytes: Option<ByteSize>,
    /// faulty: total bytes.
    #[arg(long)]
    pub(crate) faulty_bytes: Option<ByteSize>,
    /// faulty: milliseconds the CAN servers add to every request.
    #[arg(long)]
    pub(crate) faulty_latency_ms: Option<u64>,
    /// faulty: fraction of CAN requests answered 500.
    #[arg(long)]
    pub(crate) faulty_error_rate: Option<f64>,
    /// raw: payload bytes per measurement.
    #[arg(long)]
    pub(crate) raw_bytes: Option<ByteSize>,
    /// raw: the "several streams" count (the other measurement uses one).
    #[arg(long)]
    pub(crate) raw_streams: Option<u32>,
    /// Seconds any one run may take before it is killed and reported failed.
    #[arg(long)]
    pub(crate) timeout_secs: Option<u64>,
}

/// The resolved sizes of every scenario.
#[derive(Debug, Clone)]
pub(crate) struct Sizes {
    /// small: number of assets.
    pub(crate) small_assets: u64,
    /// small: bytes per asset.
    pub(crate) small_asset_size: u64,
    /// large: total bytes.
    pub(crate) large_bytes: u64,
    /// large: bytes per asset.
    pub(crate) large_asset_size: u64,
    /// text: total bytes.
    pub(crate) text_bytes: u64,
    /// text: bytes per asset.
    pub(crate) text_asset_size: u64,
    /// mixed: total bytes.
    pub(crate) mixed_bytes: u64,
    /// mixed, mesh, faulty: upper clamp of the log-normal sizes.
    pub(crate) max_asset_size: u64,
    /// live: assets per second.
    pub(crate) live_rate: f64,
    /// live: seconds of writing.
    pub(crate) live_secs: f64,
    /// live: bytes per asset.
    pub(crate) live_asset_size: u64,
    /// live, mesh: the daemons' `--resync-secs`.
    pub(crate) resync_secs: u64,
    /// mesh: total bytes over the three nodes.
    pub(crate) mesh_bytes: u64,
    /// faulty: total bytes.
    pub(crate) faulty_bytes: u64,
    /// faulty: added latency per CAN request.
    pub(crate) faulty_latency_ms: u64,
    /// faulty: fraction of CAN requests that fail.
    pub(crate) faulty_error_rate: f64,
    /// raw: payload bytes per measurement.
    pub(crate) raw_bytes: u64,
    /// raw: the "several streams" count.
    pub(crate) raw_streams: u32,
    /// Bound on one run.
    pub(crate) timeout: Duration,
}

/// Which preset the knobs start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preset {
    /// The sizes of the issue.
    Full,
    /// Every scenario in under five minutes on two cores.
    Quick,
    /// Seconds, for CI: convergence only.
    Smoke,
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

impl Sizes {
    /// The sizes of a preset.
    pub(crate) fn preset(preset: Preset) -> Self {
        let full = Self {
            small_assets: 20_000,
            small_asset_size: 4 * KIB,
            large_bytes: GIB,
            large_asset_size: 32 * MIB,
            text_bytes: 256 * MIB,
            text_asset_size: 256 * KIB,
            mixed_bytes: 512 * MIB,
            max_asset_size: 64 * MIB,
            live_rate: 20.0,
            live_secs: 60.0,
            live_asset_size: 16 * KIB,
            resync_secs: 1,
            mesh_bytes: 384 * MIB,
            faulty_bytes: 256 * MIB,
            faulty_latency_ms: 5,
            faulty_error_rate: 0.02,
            raw_bytes: 4 * GIB,
            raw_streams: 4,
            timeout: Duration::from_secs(1800),
        };
        match preset {
            Preset::Full => full,
            Preset::Quick => Self {
                small_assets: 5_000,
                large_bytes: 256 * MIB,
                text_bytes: 64 * MIB,
                mixed_bytes: 128 * MIB,
                live_secs: 15.0,
                mesh_bytes: 96 * MIB,
                faulty_bytes: 64 * MIB,
                raw_bytes: GIB,
                timeout: Duration::from_secs(300),
                ..full
            },
            Preset::Smoke => Self {
                small_assets: 200,
                large_bytes: 4 * MIB,
                large_asset_size: MIB,
                text_bytes: 2 * MIB,
                text_asset_size: 64 * KIB,
                mixed_bytes: 4 * MIB,
                max_asset_size: MIB,
                live_rate: 10.0,
                live_secs: 2.0,
                live_asset_size: 4 * KIB,
                mesh_bytes: 3 * MIB,
                faulty_bytes: 2 * MIB,
                raw_bytes: 16 * MIB,
                timeout: Duration::from_secs(60),
                ..full
            },
        }
    }

    /// The preset's sizes with every knob given on the command line applied.
    pub(crate) fn resolve(preset: Preset, knobs: &Knobs) -> Result<Self> {
        let mut s = Self::preset(preset);
        let bytes = |k: Option<ByteSize>, v: &mut u64| {
            if let Some(k) = k {
                *v = k.0;
            }
        };
        if let Some(n) = knobs.small_assets {
            s.small_assets = n;
        }
        bytes(knobs.small_asset_size, &mut s.small_asset_size);
        bytes(knobs.large_bytes, &mut s.large_bytes);
        bytes(knobs.large_asset_size, &mut s.large_asset_size);
        bytes(knobs.text_bytes, &mut s.text_bytes);
        bytes(knobs.text_asset_size, &mut s.text_asset_size);
        bytes(knobs.mixed_bytes, &mut s.mixed_bytes);
        bytes(knobs.max_asset_size, &mut s.max_asset_size);
        bytes(knobs.live_asset_size, &mut s.live_asset_size);
        bytes(knobs.mesh_bytes, &mut s.mesh_bytes);
        bytes(knobs.faulty_bytes, &mut s.faulty_bytes);
        bytes(knobs.raw_bytes, &mut s.raw_bytes);
        s.live_rate = knobs.live_rate.unwrap_or(s.live_rate);
        s.live_secs = knobs.live_secs.unwrap_or(s.live_secs);
        s.resync_secs = knobs.resync_secs.unwrap_or(s.resync_secs);
        s.faulty_latency_ms = knobs.faulty_latency_ms.unwrap_or(s.faulty_latency_ms);
        s.faulty_error_rate = knobs.faulty_error_rate.unwrap_or(s.faulty_error_rate);
        s.raw_streams = knobs.raw_streams.unwrap_or(s.raw_streams);
        if let Some(secs) = knobs.timeout_secs {
            s.timeout = Duration::from_secs(secs);
        }
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<()> {
        if self.small_asset_size == 0 || self.large_asset_size == 0 || self.text_asset_size == 0 {
            bail!("asset sizes must be at least one byte");
        }
        if self.max_asset_size < KIB {
            bail!("--max-asset-size must be at least 1 KiB");
        }
        // `contains` also refuses NaN, which a plain `<=` pair would let through.
        if self.live_rate <= 0.0 || !(0.0..=10_000.0).contains(&self.live_rate) {
            bail!("--live-rate must be between 0 and 10000 assets per second");
        }
        if self.live_secs.is_nan() || self.live_secs <= 0.0 {
            bail!("--live-secs must be positive");
        }
        if !(0.0..1.0).contains(&self.faulty_error_rate) {
            bail!("--faulty-error-rate must be in [0, 1)");
        }
        if self.raw_streams == 0 {
            bail!("--raw-streams must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_and_without_suffix() {
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert_eq!("4KiB".parse::<ByteSize>().unwrap().0, 4096);
        assert_eq!("32M".parse::<ByteSize>().unwrap().0, 32 << 20);
        assert_eq!("1 GiB".parse::<ByteSize>().unwrap().0, 1 << 30);
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn scenario_names_round_trip() {
        for sc in Scenario::ALL {
            assert_eq!(sc.name().parse::<Scenario>().unwrap(), sc);
        }
        assert!("huge".parse::<Scenario>().is_err());
    }

    #[test]
    fn knobs_override_the_preset() {
        let knobs = Knobs {
            small_assets: Some(7),
            raw_streams: Some(8),
            ..Knobs::default()
        };
        let s = Sizes::resolve(Preset::Quick, &knobs).unwrap();
        assert_eq!(s.small_assets, 7);
        assert_eq!(s.raw_streams, 8);
        assert_eq!(s.large_asset_size, 32 * MIB);
    }
}
