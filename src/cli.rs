//! Command line (CONTRACT.md): `anxin [run]`, `anxin check-config`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// anxin: telemetry ingestion and alerting for home-care call centres.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
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
    /// Decode one device frame and print `{"events": [...], "reply_hex": "..."}`.
    Decode {
        /// Family: watch, gt06, jt808, trv.
        #[arg(long)]
        protocol: String,
        /// The frame as hex (spaces allowed).
        #[arg(long, conflicts_with = "text", required_unless_present = "text")]
        hex: Option<String>,
        /// The frame as text.
        #[arg(long)]
        text: Option<String>,
        /// Device id to assume for families that name the device only at login.
        #[arg(long, default_value = "unknown")]
        device: String,
    },
}
