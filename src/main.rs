//! The `anxin` binary: parse the command line, load the config, run.

use std::process::ExitCode;
use std::sync::Arc;

use anxin::cli::{Cli, Command};
use anxin::clock::SystemClock;
use anxin::config;
use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    anxin::telemetry::init_tracing();
    match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::CheckConfig { config: path } => {
            match config::load(path.as_deref(), &config::process_env) {
                Ok(l) => {
                    println!(
                        "config OK: {} rule(s), store {}, mqtt {:?}",
                        l.rules.rules.len(),
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
        Command::Decode {
            protocol,
            hex,
            text,
            device,
        } => match anxin::protocol::tcp::decode_cli(
            &protocol,
            hex.as_deref(),
            text.as_deref(),
            &device,
        ) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("anxin decode: {e}");
                ExitCode::FAILURE
            }
        },
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
                    eprintln!("anxin: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
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
