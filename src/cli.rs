//! Command line (CONTRACT.md): `anxin [run]`, `anxin check-config`, `anxin test-rules`,
//! `anxin decode`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// anxin: telemetry ingestion and alerting for home-care call centres.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Log lines on stderr: `text` (coloured only at a terminal) or `json` (one object per
    /// line). Verbosity: RUST_LOG (default `info`).
    #[arg(
        long,
        global = true,
        env = "ANXIN_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: crate::telemetry::LogFormat,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the engine.
    Run {
        /// Engine config file (default config/anxin.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the engine config and rules; print every problem with file and line.
    CheckConfig {
        /// Engine config file (default config/anxin.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run rule test files on a virtual clock (config/tests/README.md); print every failure
    /// with its file and line and `N passed, M failed`; exit 0 only when all pass.
    TestRules {
        /// Test files, or directories of them (default: every *.toml under config/tests/).
        files: Vec<PathBuf>,
        /// Engine config file whose device defaults apply (default config/anxin.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Decode one device frame (`--protocol`) or one vendor JSON payload (`--profile`) and
    /// print the events as JSON.
    Decode {
        /// Family: watch, gt06, jt808, trv.
        #[arg(long, required_unless_present = "profile", conflicts_with = "profile")]
        protocol: Option<String>,
        /// The frame as hex (spaces allowed).
        #[arg(long, conflicts_with_all = ["text", "json"])]
        hex: Option<String>,
        /// The frame as text.
        #[arg(long, conflicts_with = "json")]
        text: Option<String>,
        /// Device id to assume for families that name the device only at login.
        #[arg(long, default_value = "unknown")]
        device: String,
        /// A vendor profile by name (a `*.toml` in the profiles directory).
        #[arg(long, requires = "json")]
        profile: Option<String>,
        /// The MQTT payload for `--profile`.
        #[arg(long)]
        json: Option<String>,
        /// The MQTT topic the payload arrived on (gives the device id when the profile's
        /// topic pattern has `{device_id}`).
        #[arg(long, requires = "profile")]
        topic: Option<String>,
        /// Engine config file naming the profiles directory (default config/anxin.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}
