//! The `anxin` binary: parse the command line, load the config, run.

use std::process::ExitCode;
use std::sync::Arc;

use anxin::cli::{Cli, Command};
use anxin::clock::SystemClock;
use anxin::config;
use anxin::telemetry::LogFormat;
use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::TestRules { .. })) {
        anxin::telemetry::init_tracing_with(cli.log_format, anxin::telemetry::QUIET_FILTER);
    } else {
        anxin::telemetry::init_tracing(cli.log_format);
    }
    match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::CheckConfig { config: path } => {
            match config::load(path.as_deref(), &config::process_env) {
                Ok(l) => {
                    let names = l.profiles.names();
                    println!(
                        "config OK: {} rule(s), {} profile(s) [{}], store {}, mqtt {:?}",
                        l.rules.rules.len(),
                        names.len(),
                        names.join(", "),
                        l.config.store_url(),
                        l.config.mqtt.target
                    );
                    ExitCode::SUCCESS
                }
                Err(problems) => {
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    eprintln!("{} problem(s) found", problems.len());
                    ExitCode::FAILURE
                }
            }
        }
        Command::TestRules {
            files,
            config: path,
        } => test_rules(&files, path.as_deref()),
        Command::Decode {
            protocol,
            hex,
            text,
            device,
            profile,
            json,
            topic,
            config: path,
        } => {
            let out = match (protocol, profile) {
                (Some(protocol), _) => anxin::protocol::tcp::decode_cli(
                    &protocol,
                    hex.as_deref(),
                    text.as_deref(),
                    &device,
                ),
                (None, Some(profile)) => decode_profile(
                    path.as_deref(),
                    &profile,
                    json.as_deref().unwrap_or_default(),
                    topic.as_deref(),
                ),
                (None, None) => Err("give --protocol or --profile".into()),
            };
            match out {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("anxin decode: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config: path } => {
            let loaded = match config::load(path.as_deref(), &config::process_env) {
                Ok(l) => l,
                Err(problems) => {
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    eprintln!(
                        "not starting: {} config problem(s); `anxin check-config` lists them",
                        problems.len()
                    );
                    return ExitCode::FAILURE;
                }
            };
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(loaded)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    // Also said plainly, in case RUST_LOG hides errors; a JSON log stays
                    // one object per line.
                    if cli.log_format == LogFormat::Text {
                        eprintln!("anxin: {e:#}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `anxin test-rules`: runs each test file's cases, each in a fresh engine world, prints the
/// failures and per-file tallies, then `N passed, M failed`.
fn test_rules(files: &[std::path::PathBuf], path: Option<&std::path::Path>) -> ExitCode {
    use anxin::ruletest::runner::{self, Summary};
    let engine = match config::load_engine(path, &config::process_env) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "not testing: {} problem(s) in the engine config",
                problems.len()
            );
            return ExitCode::FAILURE;
        }
    };
    let files = match runner::test_files(files) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("anxin test-rules: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut summary = Summary::default();
    for file in &files {
        let report =
            rt.block_on(runner::run_file(file, |spec| {
                let engine = &engine;
                async move {
                    anxin::ruletest::harness::real_world(&spec.rules, engine, spec.start).await
                }
            }));
        println!("{report}");
        summary.add(&report);
    }
    println!("{summary}");
    if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `anxin decode --profile`: loads the configuration (for the profiles directory and the
/// topic root), maps one payload and prints `{"events": [...], "rejections": [...]}`.
fn decode_profile(
    path: Option<&std::path::Path>,
    name: &str,
    payload: &str,
    topic: Option<&str>,
) -> Result<String, String> {
    let loaded = config::load(path, &config::process_env).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        format!("the configuration has problems:\n{}", list.join("\n"))
    })?;
    let known = loaded.profiles.names();
    let profile = loaded.profiles.get(name).ok_or_else(|| {
        format!(
            "no profile {name:?}; loaded: {}",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )
    })?;
    let device = match topic {
        Some(t) => profile.topic.matches(t).ok_or_else(|| {
            format!(
                "topic {t:?} does not match profile {name}'s pattern {}",
                profile.topic.text
            )
        })?,
        None if profile.topic.has_device() && profile.device_id.is_none() => {
            return Err(format!(
                "profile {name} takes the device id from the topic ({}); pass --topic",
                profile.topic.text
            ));
        }
        None => None,
    };
    let decoded = profile.decode(
        topic.unwrap_or(&profile.topic.text),
        device,
        payload.as_bytes(),
        chrono::Utc::now(),
    );
    let mut events = Vec::new();
    let mut rejections = Vec::new();
    for item in decoded.items {
        match item {
            Ok(e) => events.push(e.to_json()),
            Err(r) => rejections.push(serde_json::json!({
                "reason": r.reason.as_str(),
                "detail": r.detail,
                "device_id": r.device_id,
            })),
        }
    }
    Ok(serde_json::json!({ "events": events, "rejections": rejections }).to_string())
}

/// Raises the open-files limit to its hard maximum: every device connection is a descriptor,
/// and the usual soft default of 1024 would stop a listener near 1000 devices.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!(
                    "Could not raise the open-files limit; device connections are capped by it"
                );
            }
        }
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            tracing::info!(open_files = lim.rlim_cur, "Open-files limit");
        }
    }
}

async fn run(loaded: config::Loaded) -> anyhow::Result<()> {
    use anyhow::Context;
    raise_fd_limit();
    let addr = loaded.config.http.addr;
    let http = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding the operator API on {addr} (set ANXIN_HTTP_ADDR to move it)")
    })?;
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        signals.cancel();
    });
    anxin::app::run(loaded, Arc::new(SystemClock), http, shutdown).await
}
