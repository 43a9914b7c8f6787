//! `anxin-sim` command line.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use anxin_sim::drain::{self, DrainArgs};
use anxin_sim::load::{self, LoadArgs, Mix};
use anxin_sim::mqtt::{BrokerAddr, Endpoint, Protocol};
use anxin_sim::payload::{MAX_PAYLOAD_BYTES, valid_device_id};
use anxin_sim::scenario::{self, Scenario};
use anxin_sim::tcp::Family;
use anxin_sim::tcp::scenario::{self as tcp_scenario, ScenarioArgs, TcpScenario};
use anxin_sim::tcp::soak::{self, SoakArgs};

/// Device simulator for anxin: publishes the canonical anxin JSON format over MQTT, and plays
/// the 4G TCP device families (watch, gt06, jt808, trv) against the engine's TCP listeners.
#[derive(Debug, Parser)]
#[command(name = "anxin-sim", version)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Connection (any subcommand)")]
struct ConnectionArgs {
    /// MQTT broker, as mqtt://host:port [default: the engine's ANXIN_MQTT_URL when set
    /// (`embedded://HOST:PORT` means mqtt://HOST:PORT), else mqtt://127.0.0.1:1883].
    #[arg(long, global = true, env = "ANXIN_SIM_MQTT_URL")]
    url: Option<BrokerAddr>,
    /// Topic root; devices publish on {root}/devices/{device_id}/events [default: the
    /// engine's ANXIN_MQTT_TOPIC_ROOT when set].
    #[arg(
        long,
        global = true,
        env = "ANXIN_MQTT_TOPIC_ROOT",
        default_value = "anxin/v1",
        value_parser = parse_topic_root
    )]
    topic_root: String,
    /// MQTT protocol version: 4 (3.1.1) or 5.
    #[arg(long, global = true, value_enum, default_value = "4")]
    protocol: Protocol,
    /// MQTT client id [default: anxin-sim-<pid>].
    #[arg(long, global = true, value_parser = parse_client_id)]
    client_id: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a scripted scenario from one device, printing each message once acked.
    Scenario {
        /// Which script to play.
        #[arg(value_enum)]
        name: Scenario,
        /// Device id to publish as.
        #[arg(long, value_parser = parse_device_id)]
        device: String,
        /// Sequence number of the first message.
        #[arg(long, default_value_t = 1)]
        seq_start: u64,
    },
    /// Publish COUNT messages round-robin from DEVICES devices at RATE msg/s.
    Load(LoadCli),
    /// Subscribe to all devices' events with a persistent session and count them (baseline).
    Drain(DrainCli),
    /// Play a 4G TCP device family against the engine's TCP listener (MQTT options unused).
    Tcp(TcpCli),
}

#[derive(Debug, Args)]
struct TcpCli {
    /// Device family.
    #[arg(long, value_enum)]
    family: Family,
    /// Engine listener as host:port [default: 127.0.0.1 on the family's port: watch 5093,
    /// gt06 5023, jt808 5015, trv 5010].
    #[arg(long)]
    addr: Option<String>,
    #[command(subcommand)]
    mode: TcpMode,
}

#[derive(Debug, Subcommand)]
enum TcpMode {
    /// Connect, log in and play a script, printing every frame sent and received; exits 1
    /// unless every frame that expects an ack was acked.
    Scenario {
        /// Which script to play.
        #[arg(value_enum)]
        name: TcpScenario,
        /// Device id: IMEI (gt06, trv), 10-digit code (watch), terminal number (jt808).
        #[arg(long)]
        device: String,
        /// Seconds to wait for an ack before retransmitting the frame unchanged.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        retry_secs: u64,
        /// Retransmissions after the first transmission.
        #[arg(long, default_value_t = 5)]
        retries: u32,
    },
    /// Hold N connections open, each a distinct device sending keep-alives, and count acks,
    /// missing acks and disconnects; exits 1 if any ack was missing or a connection dropped.
    Soak {
        /// Connections (devices) to open.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        connections: u32,
        /// Seconds between one connection's keep-alives.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        interval_secs: u64,
        /// Seconds to keep sending keep-alives, from the start of the run.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        duration_secs: u64,
        /// New connections per second while ramping up.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
        ramp_per_sec: u32,
        /// Number of the first device, so that parallel soaks use distinct device ids.
        #[arg(long, default_value_t = 0)]
        id_start: u64,
        /// Seconds after which an unanswered login or keep-alive counts as missing.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        ack_timeout_secs: u64,
    },
}

#[derive(Debug, Args)]
struct LoadCli {
    /// Number of devices, named sim-00000, sim-00001, ...
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    devices: u32,
    /// Overall messages per second; 0 publishes as fast as the broker acks.
    #[arg(long, value_parser = parse_rate)]
    rate: f64,
    /// Total messages to publish.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Which events to send.
    #[arg(long, value_enum, default_value = "mixed")]
    mix: Mix,
    /// Spaces appended to every payload, to test larger messages.
    #[arg(long, default_value_t = 0, value_parser = parse_pad)]
    payload_size_pad: usize,
    /// Seconds to wait for outstanding PUBACKs after the last publish.
    #[arg(long, default_value_t = 120)]
    ack_timeout_secs: u64,
    /// Seed of the event mix; the same seed sends the same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds between progress lines on stderr (sent, acked, rate); 0 turns them off.
    #[arg(long, default_value_t = 5)]
    progress_secs: u64,
}

#[derive(Debug, Args)]
struct DrainCli {
    /// Messages to receive before stopping.
    #[arg(long, required_unless_present = "subscribe_only")]
    count: Option<u64>,
    /// MQTT 5 Receive Maximum (MQTT 3.1.1 has none; the broker's own limit applies).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    receive_maximum: u16,
    /// Give up when no message has arrived for this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Only create the persistent session and subscription, print `subscribed` and exit, so
    /// that a later drain with the same --client-id receives what was published meanwhile.
    #[arg(long)]
    subscribe_only: bool,
}

fn parse_device_id(s: &str) -> Result<String, String> {
    if valid_device_id(s) {
        Ok(s.to_owned())
    } else {
        Err("expected 1 to 64 of A-Z a-z 0-9 _ . : -".into())
    }
}

fn parse_topic_root(s: &str) -> Result<String, String> {
    if s.is_empty() || s.starts_with('/') || s.ends_with('/') || s.contains(['+', '#']) {
        Err("expected topic levels without wildcards or leading/trailing `/`".into())
    } else {
        Ok(s.to_owned())
    }
}

fn parse_client_id(s: &str) -> Result<String, String> {
    // rumqttc panics on a persistent session with an empty client id.
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_owned())
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err("expected a number of messages per second, 0 or more".into()),
    }
}

fn parse_pad(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(pad) if pad < MAX_PAYLOAD_BYTES => Ok(pad),
        _ => Err(format!("expected bytes below {MAX_PAYLOAD_BYTES}")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            // `{:#}` prints the context chain on one line; a broker that is down is an
            // expected outcome, not a reason for a backtrace.
            eprintln!("anxin-sim: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The broker to use and where that choice came from: `--url` (or `ANXIN_SIM_MQTT_URL`), the
/// engine's own `ANXIN_MQTT_URL`, or the default.
fn broker(url: Option<BrokerAddr>) -> Result<(BrokerAddr, &'static str)> {
    if let Some(url) = url {
        return Ok((url, "--url or ANXIN_SIM_MQTT_URL"));
    }
    match std::env::var("ANXIN_MQTT_URL") {
        Ok(engine) if !engine.trim().is_empty() => BrokerAddr::from_engine_url(&engine)
            .map(|b| (b, "ANXIN_MQTT_URL"))
            .map_err(|e| anyhow::anyhow!(e)),
        _ => Ok((
            BrokerAddr {
                host: "127.0.0.1".into(),
                port: 1883,
            },
            "default",
        )),
    }
}

/// Runs the chosen subcommand; `Ok(false)` when it ran but fell short of its goal.
async fn run(cli: Cli) -> Result<bool> {
    let conn = cli.connection;
    let root = conn.topic_root.as_str();
    match cli.command {
        Command::Scenario {
            name,
            device,
            seq_start,
        } => {
            scenario::run(&endpoint(&conn)?, root, name, &device, seq_start).await?;
            Ok(true)
        }
        Command::Load(args) => {
            let args = LoadArgs {
                devices: args.devices as usize,
                rate: args.rate,
                count: args.count,
                mix: args.mix,
                pad_bytes: args.payload_size_pad,
                ack_timeout: Duration::from_secs(args.ack_timeout_secs),
                seed: args.seed,
                progress_every: (args.progress_secs > 0)
                    .then(|| Duration::from_secs(args.progress_secs)),
            };
            load::run(&endpoint(&conn)?, root, &args).await
        }
        Command::Drain(args) => {
            let endpoint = endpoint(&conn)?;
            if args.subscribe_only && conn.client_id.is_none() {
                eprintln!(
                    "note: no --client-id given; drain later with --client-id {}",
                    endpoint.client_id
                );
            }
            let args = DrainArgs {
                // clap insists on --count unless --subscribe-only, which ignores it.
                count: args.count.unwrap_or_default(),
                receive_maximum: args.receive_maximum,
                idle_timeout: Duration::from_secs(args.timeout_secs),
                subscribe_only: args.subscribe_only,
            };
            drain::run(&endpoint, root, &args).await
        }
        Command::Tcp(tcp) => run_tcp(tcp).await,
    }
}

/// The MQTT endpoint of the MQTT subcommands; says on stderr which broker and topics it uses
/// (stdout carries the lines scripts parse).
fn endpoint(conn: &ConnectionArgs) -> Result<Endpoint> {
    let (broker, source) = broker(conn.url.clone())?;
    eprintln!(
        "anxin-sim: MQTT broker {broker} ({source}), topics under {}/devices/",
        conn.topic_root
    );
    Ok(Endpoint {
        broker,
        client_id: conn
            .client_id
            .clone()
            .unwrap_or_else(|| format!("anxin-sim-{}", std::process::id())),
        protocol: conn.protocol,
    })
}

/// Runs a `tcp` subcommand.
async fn run_tcp(tcp: TcpCli) -> Result<bool> {
    let addr = tcp
        .addr
        .unwrap_or_else(|| format!("127.0.0.1:{}", tcp.family.default_port()));
    match tcp.mode {
        TcpMode::Scenario {
            name,
            device,
            retry_secs,
            retries,
        } => {
            let args = ScenarioArgs {
                family: tcp.family,
                addr,
                device,
                retry_every: Duration::from_secs(retry_secs),
                retries,
            };
            tcp_scenario::run(name, &args).await
        }
        TcpMode::Soak {
            connections,
            interval_secs,
            duration_secs,
            ramp_per_sec,
            id_start,
            ack_timeout_secs,
        } => {
            let resolved = tokio::net::lookup_host(&addr)
                .await
                .with_context(|| format!("resolving {addr}"))?
                .next()
                .with_context(|| format!("{addr} resolves to no address"))?;
            let args = SoakArgs {
                family: tcp.family,
                addr: resolved,
                connections,
                interval: Duration::from_secs(interval_secs),
                duration: Duration::from_secs(duration_secs),
                ramp_per_sec,
                id_start,
                ack_timeout: Duration::from_secs(ack_timeout_secs),
            };
            Ok(soak::run(args).await?.passed())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn connection_options_are_accepted_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "anxin-sim",
            "scenario",
            "sos",
            "--device",
            "d1",
            "--url",
            "mqtt://broker:1884",
            "--topic-root",
            "t/v1",
            "--protocol",
            "5",
            "--client-id",
            "me",
        ])
        .unwrap();
        assert_eq!(cli.connection.url.map(|u| u.port), Some(1884));
        assert_eq!(cli.connection.topic_root, "t/v1");
        assert_eq!(cli.connection.protocol, Protocol::V5);
        assert_eq!(cli.connection.client_id.as_deref(), Some("me"));
    }

    #[test]
    fn drain_needs_a_count_unless_only_subscribing() {
        assert!(Cli::try_parse_from(["anxin-sim", "drain"]).is_err());
        assert!(Cli::try_parse_from(["anxin-sim", "drain", "--subscribe-only"]).is_ok());
    }

    #[test]
    fn tcp_subcommands_parse() {
        let cli = Cli::try_parse_from([
            "anxin-sim",
            "tcp",
            "--family",
            "gt06",
            "--addr",
            "127.0.0.1:5023",
            "scenario",
            "sos",
            "--device",
            "123456789012345",
            "--retry-secs",
            "2",
        ])
        .unwrap();
        let Command::Tcp(tcp) = cli.command else {
            panic!("not tcp")
        };
        assert_eq!(tcp.family, Family::Gt06);
        assert!(matches!(
            tcp.mode,
            TcpMode::Scenario {
                name: TcpScenario::Sos,
                retry_secs: 2,
                retries: 5,
                ..
            }
        ));
        let cli = Cli::try_parse_from([
            "anxin-sim",
            "tcp",
            "--family",
            "watch",
            "soak",
            "--connections",
            "10",
            "--interval-secs",
            "5",
            "--duration-secs",
            "30",
        ])
        .unwrap();
        let Command::Tcp(tcp) = cli.command else {
            panic!("not tcp")
        };
        assert!(matches!(
            tcp.mode,
            TcpMode::Soak {
                connections: 10,
                ramp_per_sec: 500,
                ack_timeout_secs: 30,
                ..
            }
        ));
        assert!(
            Cli::try_parse_from(["anxin-sim", "tcp", "--family", "nokia", "scenario", "sos"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "anxin-sim",
                "tcp",
                "--family",
                "trv",
                "soak",
                "--connections",
                "0",
                "--interval-secs",
                "1",
                "--duration-secs",
                "1"
            ])
            .is_err()
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let load = |rate: &str| {
            Cli::try_parse_from([
                "anxin-sim",
                "load",
                "--devices",
                "1",
                "--rate",
                rate,
                "--count",
                "1",
            ])
        };
        assert!(load("0").is_ok());
        assert!(load("-1").is_err());
        assert!(load("NaN").is_err());
        let scenario = |device: &str| {
            Cli::try_parse_from(["anxin-sim", "scenario", "sos", "--device", device])
        };
        assert!(scenario("a/b").is_err());
        assert!(scenario("+").is_err());
    }
}
