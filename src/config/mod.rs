//! Engine configuration: `config/anxin.toml`, environment overrides (CONTRACT.md), defaults in
//! one place ([`Config::default`]). Loading collects every problem with file, line and key.

pub mod broker;
pub mod live;
pub mod notify;
pub mod profiles;
pub mod reader;
pub mod rules;

pub use broker::{Credentials, MqttTarget, MqttTls, Secret};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use reader::{Ctx, Problem, Section};

use crate::protocol::tcp::Protocol;
use crate::registry::UnknownPolicy;

use crate::protocol::profile::ProfileSet;
use crate::rules::RuleSet;

/// The default engine config path, relative to the working directory.
pub const DEFAULT_CONFIG: &str = "config/anxin.toml";

/// The profiles directory used when the config names none, relative to the working directory.
pub const DEFAULT_PROFILES_DIR: &str = "protocols";

/// `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://…`; `None` means `sqlite://{data_dir}/anxin.db`.
    pub url: Option<String>,
    /// PostgreSQL pool size (SQLite always writes through one connection).
    pub max_connections: u32,
    /// PostgreSQL: connections of the operator API's own pool.
    pub api_max_connections: u32,
    /// PostgreSQL: how long an API request waits for a connection before answering 503.
    pub api_acquire_timeout_ms: u64,
}

/// `[mqtt]`.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker target.
    pub target: MqttTarget,
    /// Prefix of the canonical topics.
    pub topic_root: String,
    /// Persistent-session client id; `None` means `anxin-<hostname>`.
    pub client_id: Option<String>,
    /// MQTT protocol version towards an external broker: 5 (default) or 4 (3.1.1). The
    /// embedded broker is always reached over 3.1.1, the protocol of its port.
    pub protocol: u8,
    /// MQTT 5 Receive Maximum: how many unacked messages the broker may have in flight to us.
    /// Acks wait for commit, so this, not the commit latency alone, bounds throughput.
    pub receive_maximum: u16,
    /// MQTT 5 session expiry. Without one the broker drops the queue on disconnect.
    pub session_expiry_secs: u32,
    /// Keep-alive interval.
    pub keep_alive_secs: u64,
    /// Longest pause between reconnect attempts.
    pub reconnect_max_backoff_ms: u64,
    /// TLS files for an `mqtts://` broker.
    pub tls: MqttTls,
}

/// `[pipeline]`.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Number of shards; a device always maps to the same one (order per device).
    pub shards: usize,
    /// A batch closes at this many messages.
    pub max_batch_messages: usize,
    /// After the first message of a batch, wait at most this long for more (0 = commit what
    /// has arrived; messages arriving during a commit form the next batch anyway).
    pub max_batch_delay_ms: u64,
    /// How long `(device, seq, ts)` keys are remembered.
    pub dedup_window_secs: u64,
    /// How long a 4G frame without a device time, resent byte for byte (serial included), is
    /// recognised as a retransmission.
    pub redelivery_window_secs: u64,
    /// A device time further than this from the receive time is not shown: receive time
    /// stands in and the event is flagged (device clocks drift, reset, or run on local time).
    pub device_clock_tolerance_secs: u64,
    /// A device time further than this is no time at all: an MQTT JSON event other than an
    /// alarm is refused for it; alarms and 4G frames are kept, flagged.
    pub device_clock_limit_secs: u64,
    /// Longest pause between retries of a failed commit.
    pub commit_retry_max_backoff_ms: u64,
    /// A commit that has not finished after this long is abandoned and retried (the database
    /// host dropped off the network; TCP alone would wait many minutes).
    pub commit_timeout_secs: u64,
    /// SIGTERM: how long to wait for the in-flight batches and owed acks.
    pub shutdown_grace_secs: u64,
    /// An absence (inactivity, device offline) that came due while the engine was down waits
    /// this long after start-up: the broker may still hold the messages that end it.
    pub absence_startup_grace_secs: u64,
}

/// `[tcp]`: the 4G device listeners.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Listen address per family; `None` = off.
    pub listen: Vec<(Protocol, Option<SocketAddr>)>,
    /// Close a device connection that sent nothing for this long. Watches send a keep-alive
    /// every 5–10 minutes, so the default leaves room for two missed ones.
    pub idle_timeout_secs: u64,
    /// Open connections allowed per listener.
    pub max_connections: usize,
    /// Frames per second one connection may send before its reads are paused.
    pub max_frames_per_sec: u32,
    /// Close a connection that has not identified its device (a login, or any valid frame for
    /// families without one) this long after it opened.
    pub login_timeout_secs: u64,
    /// Close a connection that sent more than this many bytes the framer had to skip (or
    /// frames that decoded to nothing) without a usable frame in between.
    pub max_junk_bytes: usize,
    /// Open device connections allowed from one IP address, over all listeners.
    pub max_connections_per_address: usize,
}

/// Parses `watch=127.0.0.1:5093,gt06=off` (CONTRACT.md `ANXIN_TCP_LISTEN`); families not
/// named keep their setting.
pub fn parse_tcp_listen(
    s: &str,
    listen: &mut [(Protocol, Option<SocketAddr>)],
) -> Result<(), String> {
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected FAMILY=HOST:PORT or FAMILY=off"))?;
        let proto = Protocol::parse(name.trim())
            .ok_or_else(|| format!("{name:?} is not a family (watch, gt06, jt808, trv)"))?;
        let addr = match addr.trim() {
            "off" => None,
            a => Some(
                a.parse()
                    .map_err(|_| format!("{a:?} is not an IP:port address"))?,
            ),
        };
        for (p, slot) in listen.iter_mut() {
            if *p == proto {
                *slot = addr;
            }
        }
    }
    Ok(())
}

/// `[http]`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Listen address of the operator API.
    pub addr: SocketAddr,
    /// Alert changes kept for live-feed clients that reconnect with `Last-Event-ID`.
    pub stream_replay_changes: usize,
}

/// The whole engine configuration, after defaults and environment overrides.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file, if one was read.
    pub file: Option<PathBuf>,
    /// Where the default SQLite file and generated secrets live.
    pub data_dir: PathBuf,
    /// The rules file.
    pub rules_file: PathBuf,
    /// The vendor profiles directory (`[profiles] dir`); `None`: `protocols` in the working
    /// directory when it exists, else no profiles.
    pub profiles_dir: Option<PathBuf>,
    /// Store settings.
    pub store: StoreConfig,
    /// MQTT settings.
    pub mqtt: MqttConfig,
    /// Pipeline settings.
    pub pipeline: PipelineConfig,
    /// HTTP settings.
    pub http: HttpConfig,
    /// 4G TCP listeners.
    pub tcp: TcpConfig,
    /// What happens to messages from unregistered devices.
    pub unknown_devices: UnknownPolicy,
    /// `[devices] report_interval`: how often a device of each type reports at least once,
    /// for devices whose registration sets no `report_interval` of its own.
    pub report_intervals: HashMap<String, chrono::Duration>,
    /// Bootstrap admin token from `ANXIN_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// `[notify]`: the notifications outbox's webhook endpoints.
    pub notify: notify::NotifyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            file: None,
            data_dir: PathBuf::from("data"),
            rules_file: PathBuf::from("config/rules.toml"),
            profiles_dir: None,
            store: StoreConfig {
                url: None,
                max_connections: 8,
                api_max_connections: 4,
                // An operator waiting longer than this for a page learns nothing more; the
                // console shows the outage and retries.
                api_acquire_timeout_ms: 1_000,
            },
            mqtt: MqttConfig {
                target: MqttTarget::Embedded(SocketAddr::from(([127, 0, 0, 1], 1883))),
                topic_root: "anxin/v1".into(),
                client_id: None,
                protocol: 5,
                // PITFALLS 10: 500–1000 lifts the 20-message 3.1.1 default that would cap
                // ack-after-commit at a few thousand msg/s.
                receive_maximum: 1000,
                // Seven days: long enough to ride out any outage we plan for.
                session_expiry_secs: 7 * 24 * 3600,
                keep_alive_secs: 30,
                reconnect_max_backoff_ms: 5_000,
                tls: MqttTls::default(),
            },
            pipeline: PipelineConfig {
                shards: 4,
                max_batch_messages: 1000,
                max_batch_delay_ms: 0,
                dedup_window_secs: 24 * 3600,
                redelivery_window_secs: 60,
                device_clock_tolerance_secs: 24 * 3600,
                // Ten years: a clock this far off has no time at all (year 1, year 9999).
                device_clock_limit_secs: 10 * 365 * 24 * 3600,
                commit_retry_max_backoff_ms: 5_000,
                commit_timeout_secs: 30,
                shutdown_grace_secs: 10,
                absence_startup_grace_secs: 60,
            },
            http: HttpConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
                stream_replay_changes: crate::feed::DEFAULT_REPLAY,
            },
            tcp: TcpConfig {
                // Devices connect over the mobile network, so the listeners face outwards.
                listen: Protocol::ALL
                    .into_iter()
                    .map(|p| (p, Some(SocketAddr::from(([0, 0, 0, 0], p.default_port())))))
                    .collect(),
                idle_timeout_secs: 900,
                max_connections: 20_000,
                max_frames_per_sec: 20,
                // A device logs in within seconds of connecting; 30 s covers a slow 2G
                // fallback and retransmits.
                login_timeout_secs: 30,
                // Four of the largest frame of any family (the watch's 128 KiB voice upload).
                max_junk_bytes: 4 * crate::protocol::tcp::watch::MAX_FRAME,
                // Carrier-grade NAT puts many subscribers behind one public address.
                max_connections_per_address: 1000,
            },
            unknown_devices: UnknownPolicy::Quarantine,
            report_intervals: default_report_intervals(),
            admin_token: None,
            notify: notify::NotifyConfig::default(),
        }
    }
}

/// The reporting interval of each device type when `[devices] report_interval` does not name
/// it, from telecare practice (DESIGN.md "Defaults"): a watch sends a keep-alive every 5–10
/// minutes; a 4G pendant a heartbeat within half an hour; mains-powered sensors and hub-linked
/// battery sensors check in about hourly; battery leak sensors report once a day, so a day and
/// an hour.
pub fn default_report_intervals() -> HashMap<String, chrono::Duration> {
    let (m, h) = (chrono::Duration::minutes, chrono::Duration::hours);
    [
        ("watch", m(10)),
        ("pendant", m(30)),
        ("smoke", h(1)),
        ("gas", h(1)),
        ("door", h(1)),
        ("pir", h(1)),
        ("water", h(25)),
    ]
    .into_iter()
    .map(|(t, d)| (t.to_owned(), d))
    .collect()
}

impl Config {
    /// The store URL in force.
    pub fn store_url(&self) -> String {
        self.store
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("anxin.db").display()))
    }

    /// The client id in force.
    pub fn client_id(&self) -> String {
        self.mqtt.client_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into());
            format!("anxin-{host}")
        })
    }
}

/// A loaded, validated configuration and rule set.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Engine configuration.
    pub config: Config,
    /// Compiled rules.
    pub rules: RuleSet,
    /// Vendor JSON profiles.
    pub profiles: ProfileSet,
}

/// Reads the engine config (`path`, or [`DEFAULT_CONFIG`] when it exists), applies the
/// environment, reads the rules. Returns every problem found, not just the first.
pub fn load(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, Vec<Problem>> {
    let (config, mut problems) = engine_settings(path, env);
    problems.extend(check_mqtt_tls(&config, config.file.as_deref(), env));
    let rules = match std::fs::read_to_string(&config.rules_file) {
        Ok(src) => match RuleSet::parse(&config.rules_file, &src) {
            Ok(r) => Some(r),
            Err(p) => {
                problems.extend(p);
                None
            }
        },
        Err(e) => {
            problems.push(Problem {
                file: config.rules_file.clone(),
                line: 0,
                key: "-".into(),
                message: format!("cannot read the rules file: {e}"),
            });
            None
        }
    };
    let profiles = match config.profiles_dir.clone() {
        Some(dir) => profiles::load_dir(&dir, &config.mqtt.topic_root),
        None if Path::new(DEFAULT_PROFILES_DIR).is_dir() => {
            profiles::load_dir(Path::new(DEFAULT_PROFILES_DIR), &config.mqtt.topic_root)
        }
        None => Ok(ProfileSet::default()),
    };
    let profiles = match profiles {
        Ok(p) => Some(p),
        Err(p) => {
            problems.extend(p);
            None
        }
    };
    match (rules, profiles) {
        (Some(rules), Some(profiles)) if problems.is_empty() => Ok(Loaded {
            config,
            rules,
            profiles,
        }),
        _ => Err(problems),
    }
}

/// Reads only the engine settings (`path`, or [`DEFAULT_CONFIG`] when it exists, and the
/// environment), not the rules or profiles they name: `anxin test-rules` takes the rules
/// under test from each test file and needs only the engine's device defaults.
pub fn load_engine(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<Problem>> {
    let (config, problems) = engine_settings(path, env);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

fn engine_settings(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Config, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut config = Config::default();
    let file = match path {
        Some(p) => Some(p.to_owned()),
        None if Path::new(DEFAULT_CONFIG).exists() => Some(PathBuf::from(DEFAULT_CONFIG)),
        None => None,
    };
    if let Some(file) = &file {
        match std::fs::read_to_string(file) {
            Ok(src) => problems.extend(read_engine(file, &src, &mut config)),
            Err(e) => problems.push(Problem {
                file: file.clone(),
                line: 0,
                key: "-".into(),
                message: format!("cannot read: {e}"),
            }),
        }
        config.file = Some(file.clone());
    }
    problems.extend(apply_env(&mut config, env));
    if let Some(file) = &config.file {
        let file = file.clone();
        problems.extend(notify::resolve_secrets(&mut config.notify, &file, env));
    }
    (config, problems)
}

/// Reads the process environment.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn read_engine(file: &Path, src: &str, config: &mut Config) -> Vec<Problem> {
    let doc = match toml_edit::Document::parse(src) {
        Ok(d) => d,
        Err(e) => {
            let ctx = Ctx::new(file, src);
            ctx.problem(
                ctx.line_of(e.span()),
                "-",
                format!("not valid TOML: {}", e.message()),
            );
            return ctx.into_problems();
        }
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let ctx = Ctx::new(file, src);
    let mut root = Section::new(&ctx, doc.as_table(), String::new(), 1);
    // Paths inside a config file are relative to that file's directory (CONTRACT.md).
    config.rules_file = base.join("rules.toml");
    if let Some((p, _)) = root.string("data_dir") {
        config.data_dir = base.join(p);
    }
    if let Some((p, _)) = root.string("rules_file") {
        config.rules_file = base.join(p);
    }
    if let Some(mut s) = root.table("store") {
        if let Some((url, line)) = s.string("url") {
            match check_store_url(&url) {
                Ok(()) => config.store.url = Some(relative_sqlite(&url, base)),
                Err(m) => s.problem(line, "url", m),
            }
        }
        if let Some(n) = s.int("max_connections", 1..=256) {
            config.store.max_connections = n as u32;
        }
        if let Some(n) = s.int("api_max_connections", 1..=256) {
            config.store.api_max_connections = n as u32;
        }
        if let Some(n) = s.int("api_acquire_timeout_ms", 50..=60_000) {
            config.store.api_acquire_timeout_ms = n as u64;
        }
        s.finish();
    }
    if let Some(mut s) = root.table("mqtt") {
        let m = &mut config.mqtt;
        if let Some((url, line)) = s.string("url") {
            match MqttTarget::parse(&url) {
                Ok(t) => m.target = t,
                Err(e) => s.problem(line, "url", e),
            }
        }
        if let Some((root_, line)) = s.string("topic_root") {
            match check_topic_root(&root_) {
                Ok(()) => m.topic_root = root_,
                Err(e) => s.problem(line, "topic_root", e),
            }
        }
        if let Some((id, line)) = s.string("client_id") {
            if id.is_empty() || id.len() > 64 {
                s.problem(line, "client_id", "must be 1..=64 characters");
            } else {
                m.client_id = Some(id);
            }
        }
        if let Some(v) = s.int("protocol", 4..=5) {
            m.protocol = v as u8;
        }
        if let Some(v) = s.int("receive_maximum", 1..=65_535) {
            m.receive_maximum = v as u16;
        }
        if let Some(v) = s.int("session_expiry_secs", 60..=u32::MAX as i64) {
            m.session_expiry_secs = v as u32;
        }
        if let Some(v) = s.int("keep_alive_secs", 5..=3600) {
            m.keep_alive_secs = v as u64;
        }
        if let Some(v) = s.int("reconnect_max_backoff_ms", 10..=600_000) {
            m.reconnect_max_backoff_ms = v as u64;
        }
        if let Some((p, _)) = s.string("ca_file") {
            m.tls.ca_file = Some(base.join(p));
        }
        if let Some((p, _)) = s.string("client_cert_file") {
            m.tls.client_cert_file = Some(base.join(p));
        }
        if let Some((p, _)) = s.string("client_key_file") {
            m.tls.client_key_file = Some(base.join(p));
        }
        s.finish();
    }
    if let Some(mut s) = root.table("pipeline") {
        let p = &mut config.pipeline;
        if let Some(v) = s.int("shards", 1..=256) {
            p.shards = v as usize;
        }
        if let Some(v) = s.int("max_batch_messages", 1..=100_000) {
            p.max_batch_messages = v as usize;
        }
        if let Some(v) = s.int("max_batch_delay_ms", 0..=10_000) {
            p.max_batch_delay_ms = v as u64;
        }
        if let Some(v) = s.int("dedup_window_secs", 60..=30 * 24 * 3600) {
            p.dedup_window_secs = v as u64;
        }
        if let Some(v) = s.int("device_clock_tolerance_secs", 60..=100 * 365 * 24 * 3600) {
            p.device_clock_tolerance_secs = v as u64;
        }
        if let Some(v) = s.int("device_clock_limit_secs", 60..=100 * 365 * 24 * 3600) {
            p.device_clock_limit_secs = v as u64;
        }
        if p.device_clock_limit_secs < p.device_clock_tolerance_secs {
            s.problem_here("device_clock_limit_secs must not be below device_clock_tolerance_secs");
        }
        if let Some(v) = s.int("redelivery_window_secs", 1..=3600) {
            p.redelivery_window_secs = v as u64;
        }
        if let Some(v) = s.int("commit_retry_max_backoff_ms", 10..=600_000) {
            p.commit_retry_max_backoff_ms = v as u64;
        }
        if let Some(v) = s.int("commit_timeout_secs", 1..=3600) {
            p.commit_timeout_secs = v as u64;
        }
        if let Some(v) = s.int("shutdown_grace_secs", 1..=600) {
            p.shutdown_grace_secs = v as u64;
        }
        if let Some(v) = s.int("absence_startup_grace_secs", 0..=3600) {
            p.absence_startup_grace_secs = v as u64;
        }
        s.finish();
    }
    if let Some(mut s) = root.table("tcp") {
        let t = &mut config.tcp;
        if let Some(v) = s.int("idle_timeout_secs", 1..=86_400) {
            t.idle_timeout_secs = v as u64;
        }
        if let Some(v) = s.int("max_connections", 1..=1_000_000) {
            t.max_connections = v as usize;
        }
        if let Some(v) = s.int("max_frames_per_sec", 1..=100_000) {
            t.max_frames_per_sec = v as u32;
        }
        if let Some(v) = s.int("login_timeout_secs", 1..=3600) {
            t.login_timeout_secs = v as u64;
        }
        if let Some(v) = s.int("max_junk_bytes", 1024..=1 << 30) {
            t.max_junk_bytes = v as usize;
        }
        if let Some(v) = s.int("max_connections_per_address", 1..=1_000_000) {
            t.max_connections_per_address = v as usize;
        }
        if let Some(mut l) = s.table("listen") {
            for p in Protocol::ALL {
                if let Some((addr, line)) = l.string(p.name()) {
                    match parse_tcp_listen(&format!("{}={addr}", p.name()), &mut t.listen) {
                        Ok(()) => {}
                        Err(e) => l.problem(line, p.name(), e),
                    }
                }
            }
            l.finish();
        }
        s.finish();
    }
    if let Some(mut s) = root.table("devices") {
        if let Some(v) = s.choice("unknown", &["reject", "quarantine", "accept"]) {
            config.unknown_devices = UnknownPolicy::parse(&v).expect("choice checked");
        }
        // Per type, over the defaults: a type named here replaces its default, "off" removes
        // it (devices of that type are not supervised unless their registration says).
        for e in s.entries("report_interval").unwrap_or_default() {
            match e.item.as_str() {
                Some("off") => {
                    config.report_intervals.remove(&e.key);
                }
                Some(text) => match crate::domain::duration::parse(text) {
                    Ok(d) => {
                        config.report_intervals.insert(e.key.clone(), d);
                    }
                    Err(m) => ctx.problem(e.line, e.path.clone(), m),
                },
                None => ctx.problem(
                    e.line,
                    e.path.clone(),
                    "expected a duration such as \"10m\" or \"25h\", or \"off\"",
                ),
            }
        }
        s.finish();
    }
    if let Some(mut s) = root.table("profiles") {
        if let Some((p, _)) = s.string("dir") {
            config.profiles_dir = Some(base.join(p));
        }
        s.finish();
    }
    if let Some(mut s) = root.table("http") {
        if let Some((addr, line)) = s.string("addr") {
            match addr.parse() {
                Ok(a) => config.http.addr = a,
                Err(_) => s.problem(line, "addr", format!("{addr:?} is not an IP:port address")),
            }
        }
        if let Some(n) = s.int("stream_replay_changes", 1..=1_000_000) {
            config.http.stream_replay_changes = n as usize;
        }
        s.finish();
    }
    if let Some(s) = root.table("notify") {
        notify::read(s, &mut config.notify);
    }
    root.finish();
    drop(doc);
    ctx.into_problems()
}

fn check_store_url(url: &str) -> Result<(), String> {
    if url.starts_with("sqlite://")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
    {
        Ok(())
    } else {
        Err(format!("{url:?}: expected sqlite://PATH or postgres://…"))
    }
}

fn relative_sqlite(url: &str, base: &Path) -> String {
    match url.strip_prefix("sqlite://") {
        Some(path) if !path.starts_with('/') && !path.starts_with(':') => {
            format!("sqlite://{}", base.join(path).display())
        }
        _ => url.to_owned(),
    }
}

fn check_topic_root(root: &str) -> Result<(), String> {
    if root.is_empty() || root.starts_with('/') || root.ends_with('/') || root.contains(['+', '#'])
    {
        Err(format!(
            "{root:?}: a topic prefix without wildcards or leading/trailing '/'"
        ))
    } else {
        Ok(())
    }
}

fn apply_env(config: &mut Config, env: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut bad = |key: &str, message: String| {
        problems.push(Problem {
            file: PathBuf::from("(environment)"),
            line: 0,
            key: key.into(),
            message,
        })
    };
    if let Some(v) = env("ANXIN_DATA_DIR") {
        config.data_dir = PathBuf::from(v);
    }
    if let Some(v) = env("ANXIN_STORE_URL") {
        match check_store_url(&v) {
            Ok(()) => config.store.url = Some(v),
            Err(m) => bad("ANXIN_STORE_URL", m),
        }
    }
    if let Some(v) = env("ANXIN_MQTT_URL") {
        match MqttTarget::parse(&v) {
            Ok(t) => config.mqtt.target = t,
            Err(m) => bad("ANXIN_MQTT_URL", m),
        }
    }
    if let Some(v) = env("ANXIN_MQTT_TOPIC_ROOT") {
        match check_topic_root(&v) {
            Ok(()) => config.mqtt.topic_root = v,
            Err(m) => bad("ANXIN_MQTT_TOPIC_ROOT", m),
        }
    }
    if let Some(v) = env("ANXIN_MQTT_CLIENT_ID") {
        config.mqtt.client_id = Some(v);
    }
    if let Some(v) = env("ANXIN_HTTP_ADDR") {
        match v.parse() {
            Ok(a) => config.http.addr = a,
            Err(_) => bad(
                "ANXIN_HTTP_ADDR",
                format!("{v:?} is not an IP:port address"),
            ),
        }
    }
    if let Some(v) = env("ANXIN_UNKNOWN_DEVICES") {
        match UnknownPolicy::parse(&v) {
            Some(p) => config.unknown_devices = p,
            None => bad(
                "ANXIN_UNKNOWN_DEVICES",
                format!("{v:?} is not one of reject, quarantine, accept"),
            ),
        }
    }
    if let Some(v) = env("ANXIN_TCP_LISTEN")
        && let Err(m) = parse_tcp_listen(&v, &mut config.tcp.listen)
    {
        bad("ANXIN_TCP_LISTEN", m);
    }
    if let Some(v) = env("ANXIN_ADMIN_TOKEN") {
        if v.len() < 16 {
            bad("ANXIN_ADMIN_TOKEN", "must be at least 16 characters".into());
        } else {
            config.admin_token = Some(v);
        }
    }
    let tls = &mut config.mqtt.tls;
    for (key, slot) in [
        ("ANXIN_MQTT_CA_FILE", &mut tls.ca_file),
        ("ANXIN_MQTT_CLIENT_CERT_FILE", &mut tls.client_cert_file),
        ("ANXIN_MQTT_CLIENT_KEY_FILE", &mut tls.client_key_file),
    ] {
        if let Some(v) = env(key) {
            *slot = Some(PathBuf::from(v));
        }
    }
    problems
}

/// Checks the `[mqtt]` TLS settings against the target and loads the PEM files once, so an
/// unreadable or invalid file is a configuration problem (`check-config`, start-up), not a
/// reconnect loop.
fn check_mqtt_tls(
    config: &Config,
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<Problem> {
    let origin = |env_key: &str, key: &str| -> (PathBuf, String) {
        if env(env_key).is_some() {
            (PathBuf::from("(environment)"), env_key.to_owned())
        } else {
            (
                file.map(Path::to_owned)
                    .unwrap_or_else(|| "(defaults)".into()),
                format!("mqtt.{key}"),
            )
        }
    };
    let problem = |(file, key): (PathBuf, String), message: String| Problem {
        file,
        line: 0,
        key,
        message,
    };
    let tls = &config.mqtt.tls;
    let is_tls = matches!(config.mqtt.target, MqttTarget::External { tls: true, .. });
    if !is_tls {
        if tls.any() {
            return vec![problem(
                origin("ANXIN_MQTT_URL", "url"),
                format!(
                    "TLS files are set (ca_file / client_cert_file / client_key_file) but the broker URL {} is not mqtts://; the connection would be plain TCP",
                    config.mqtt.target
                ),
            )];
        }
        return Vec::new();
    }
    match crate::ingest::tls::client_config(tls) {
        Ok(_) => Vec::new(),
        Err(e) => {
            let (env_key, key) = e.setting();
            vec![problem(origin(env_key, key), e.to_string())]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn every_problem_is_reported_with_line_and_key() {
        let src = "data_dir = 3\n[mqtt]\nurl = \"ftp://x\"\nreceive_maximum = 0\ncolour = \"red\"\n[pipeline]\nshards = \"four\"\n[nope]\n";
        let mut c = Config::default();
        let p = read_engine(Path::new("x/anxin.toml"), src, &mut c);
        let got: Vec<_> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            got,
            [
                (1, "data_dir"),
                (3, "mqtt.url"),
                (4, "mqtt.receive_maximum"),
                (5, "mqtt.colour"),
                (7, "pipeline.shards"),
                (8, "nope"),
            ]
        );
    }

    #[test]
    fn paths_are_relative_to_the_config_file() {
        let src =
            "data_dir = \"../var\"\nrules_file = \"r.toml\"\n[store]\nurl = \"sqlite://db/a.db\"\n";
        let mut c = Config::default();
        assert!(read_engine(Path::new("etc/anxin.toml"), src, &mut c).is_empty());
        assert_eq!(c.data_dir, Path::new("etc/../var"));
        assert_eq!(c.rules_file, Path::new("etc/r.toml"));
        assert_eq!(c.store_url(), "sqlite://etc/db/a.db");
    }

    #[test]
    fn the_environment_wins_and_is_checked() {
        let mut c = Config::default();
        let env = |k: &str| match k {
            "ANXIN_MQTT_URL" => Some("mqtt://broker:1884".to_owned()),
            "ANXIN_HTTP_ADDR" => Some("nope".to_owned()),
            _ => None,
        };
        let p = apply_env(&mut c, &env);
        assert_eq!(
            c.mqtt.target,
            MqttTarget::parse("mqtt://broker:1884").unwrap()
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "ANXIN_HTTP_ADDR");
        assert!(apply_env(&mut Config::default(), &no_env).is_empty());
    }

    #[test]
    fn the_tcp_limits_are_read_and_checked() {
        let mut c = Config::default();
        assert_eq!(c.tcp.login_timeout_secs, 30);
        let src =
            "[tcp]\nlogin_timeout_secs = 0\nmax_junk_bytes = 10\nmax_connections_per_address = 5\n";
        let p = read_engine(Path::new("anxin.toml"), src, &mut c);
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["tcp.login_timeout_secs", "tcp.max_junk_bytes"]);
        assert_eq!(c.tcp.max_connections_per_address, 5);
        assert_eq!(
            c.tcp.max_junk_bytes,
            4 * 128 * 1024,
            "a refused value keeps the default"
        );
    }

    #[test]
    fn device_report_intervals_override_the_defaults_per_type_and_bad_ones_are_located() {
        let mut c = Config::default();
        assert_eq!(c.report_intervals["watch"], chrono::Duration::minutes(10));
        let src = "[devices]\nunknown = \"accept\"\nreport_interval = { watch = \"5m\", water = \"off\", kettle = \"2h\" }\n";
        assert!(read_engine(Path::new("anxin.toml"), src, &mut c).is_empty());
        assert_eq!(c.report_intervals["watch"], chrono::Duration::minutes(5));
        assert_eq!(c.report_intervals["kettle"], chrono::Duration::hours(2));
        assert_eq!(c.report_intervals["pendant"], chrono::Duration::minutes(30));
        assert!(!c.report_intervals.contains_key("water"));

        let src = "[devices]\n\n[devices.report_interval]\nwatch = \"10 minutes\"\ngas = 60\n";
        let p = read_engine(Path::new("anxin.toml"), src, &mut Config::default());
        let got: Vec<_> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            got,
            [
                (4, "devices.report_interval.watch"),
                (5, "devices.report_interval.gas")
            ]
        );
        assert!(p[0].message.contains("10 minutes"), "{}", p[0].message);
    }

    #[test]
    fn notify_webhooks_are_read_strictly_and_secrets_come_from_the_environment() {
        use notify::{Cause, WebhookFormat};
        let src = "[notify]\nbatch = 10\n[[notify.webhook]]\nname = \"oncall\"\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"0123456789abcdef\"\nmax_attempts = 3\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n[[notify.webhook]]\nname = \"sms\"\nurl = \"https://sms.example/send\"\nsecret_env = \"SMS_SECRET\"\nformat = \"sms\"\nto = [\"+8613800138000\"]\ntriggers = [\"escalated\"]\nmin_severity = \"critical\"\n";
        let mut c = Config::default();
        assert!(read_engine(Path::new("anxin.toml"), src, &mut c).is_empty());
        let env = |k: &str| (k == "SMS_SECRET").then(|| "fedcba9876543210".to_owned());
        assert!(notify::resolve_secrets(&mut c.notify, Path::new("anxin.toml"), &env).is_empty());
        let n = &c.notify;
        assert_eq!(n.batch, 10);
        assert_eq!(n.webhooks.len(), 2);
        assert_eq!(n.webhooks[0].max_attempts, 3);
        assert_eq!(n.webhooks[0].causes, Cause::ALL);
        assert_eq!(n.webhooks[1].format, WebhookFormat::Sms);
        assert_eq!(n.webhooks[1].secret.expose(), "fedcba9876543210");
        assert!(n.webhooks[1].wants(
            Cause::Escalated,
            "sos",
            crate::domain::alert::Severity::Critical
        ));
        assert!(!n.webhooks[1].wants(
            Cause::Opened,
            "sos",
            crate::domain::alert::Severity::Critical
        ));
        assert!(!n.webhooks[1].wants(
            Cause::Escalated,
            "water",
            crate::domain::alert::Severity::High
        ));
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "secrets never print"
        );

        let bad = "[notify]\n[[notify.webhook]]\nname = \"a b\"\nurl = \"ftp://x\"\nsecret = \"short\"\nformat = \"sms\"\ncolour = 1\n[[notify.webhook]]\nname = \"x\"\nurl = \"http://x\"\nsecret_env = \"MISSING\"\ntriggers = [\"closed\"]\nbackoff_initial_ms = 500\nbackoff_max_ms = 100\n[[notify.webhook]]\nname = \"x\"\nurl = \"http://y\"\n";
        let mut c = Config::default();
        let mut p = read_engine(Path::new("anxin.toml"), bad, &mut c);
        p.extend(notify::resolve_secrets(
            &mut c.notify,
            Path::new("anxin.toml"),
            &no_env,
        ));
        let got: Vec<_> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            got,
            [
                (3, "notify.webhook[0].name"),
                (4, "notify.webhook[0].url"),
                (5, "notify.webhook[0].secret"),
                (2, "notify.webhook[0]"),
                (7, "notify.webhook[0].colour"),
                (12, "notify.webhook[1].triggers"),
                (8, "notify.webhook[1]"),
                (16, "notify.webhook[2].name"),
                (15, "notify.webhook[2]"),
                (11, "notify.webhook[1].secret_env"),
            ],
            "{p:#?}"
        );
    }

    #[test]
    fn mqtt_targets_parse() {
        assert_eq!(
            MqttTarget::parse("embedded://127.0.0.1:1999"),
            Ok(MqttTarget::Embedded("127.0.0.1:1999".parse().unwrap()))
        );
        assert!(MqttTarget::parse("mqtts://x:8883").is_ok());
        assert!(MqttTarget::parse("http://x").is_err());
    }

    #[test]
    fn mqtt_tls_files_are_relative_to_the_config_file_and_need_mqtts() {
        let src = "[mqtt]\nurl = \"mqtt://b\"\nca_file = \"ca.pem\"\nclient_cert_file = \"c.pem\"\nclient_key_file = \"/k.pem\"\n";
        let mut c = Config::default();
        assert!(read_engine(Path::new("etc/anxin.toml"), src, &mut c).is_empty());
        assert_eq!(c.mqtt.tls.ca_file.as_deref(), Some(Path::new("etc/ca.pem")));
        assert_eq!(
            c.mqtt.tls.client_cert_file.as_deref(),
            Some(Path::new("etc/c.pem"))
        );
        assert_eq!(
            c.mqtt.tls.client_key_file.as_deref(),
            Some(Path::new("/k.pem"))
        );
        let p = check_mqtt_tls(&c, Some(Path::new("etc/anxin.toml")), &no_env);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "mqtt.url");
        assert!(p[0].message.contains("not mqtts://"), "{}", p[0].message);

        // The environment wins and is named in the problem.
        let env = |k: &str| match k {
            "ANXIN_MQTT_URL" => Some("mqtts://u:hunter2@b".to_owned()),
            "ANXIN_MQTT_CA_FILE" => Some("/nonexistent/ca.pem".to_owned()),
            _ => None,
        };
        assert!(apply_env(&mut c, &env).is_empty());
        assert_eq!(
            c.mqtt.tls.ca_file.as_deref(),
            Some(Path::new("/nonexistent/ca.pem"))
        );
        let p = check_mqtt_tls(&c, Some(Path::new("etc/anxin.toml")), &env);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].file, Path::new("(environment)"));
        assert_eq!(p[0].key, "ANXIN_MQTT_CA_FILE");
        assert!(
            p[0].message.contains("/nonexistent/ca.pem: cannot read"),
            "{}",
            p[0].message
        );
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
