//! Shared harness for the black-box tests: the real `anxin` binary, a private Mosquitto started
//! from the shipped config, per-test PostgreSQL databases, a TCP proxy that can cut the
//! database away, and polling helpers (never a bare sleep to wait for a result).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The value of a service URL variable. With `CI=true` a missing one fails the test; elsewhere
/// the test is skipped with a note.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{var} is not set; CI must provide it (.ci/run sets it)")
        }
        _ => {
            eprintln!("skipping: {var} is not set");
            None
        }
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding port 0")
}

/// A short random hex id for names that must not collide between parallel runs.
pub fn unique() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Polls `f` until it returns `Some`, failing after [`DEADLINE`].
pub async fn poll<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Publishes one QoS 1 message with `mosquitto_pub` (it returns after the broker's PUBACK).
pub fn publish(port: u16, topic: &str, payload: &str) {
    let out = mosquitto_pub(port, topic, &["-m", payload]);
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `mosquitto_pub` at QoS 1 on `topic` with extra arguments (`-m`, `-f`, `-r`, …).
pub fn mosquitto_pub(port: u16, topic: &str, args: &[&str]) -> std::process::Output {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
        ])
        .args(args)
        .output()
        .expect("mosquitto_pub is installed (Debian package mosquitto-clients)")
}

/// `ANXIN_TCP_LISTEN` with only `family` on, at 127.0.0.1:`port`.
pub fn only_listener(family: &str, port: u16) -> String {
    ["watch", "gt06", "jt808", "trv"]
        .iter()
        .map(|f| {
            if *f == family {
                format!("{f}=127.0.0.1:{port}")
            } else {
                format!("{f}=off")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A Mosquitto private to the test, started from the shipped `config/mosquitto.conf` with only
/// the port, the persistence directory and the user changed.
pub struct Mosquitto {
    child: Child,
    /// Its port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts it and waits until it accepts connections.
    pub async fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = mosquitto_conf(port, "127.0.0.1", dir.path(), &[], &[]);
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let child = spawn_mosquitto(&path, dir.path());
        wait_listening("mosquitto to listen", port).await;
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGKILL (no chance to save its in-memory state), then a start from the same config
    /// and persistence directory, on the same port.
    pub async fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_mosquitto(&self._dir.path().join("mosquitto.conf"), self._dir.path());
        wait_listening("mosquitto to listen again", self.port).await;
    }
}

/// The shipped `config/mosquitto.conf` for a private broker: its listener on `bind`:`port`,
/// persistence in `dir`, the keys in `overrides` replaced, the lines in `append` added.
pub fn mosquitto_conf(
    port: u16,
    bind: &str,
    dir: &Path,
    overrides: &[(&str, String)],
    append: &[String],
) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mosquitto.conf"),
    )
    .unwrap();
    let mut conf = String::new();
    for line in shipped.lines() {
        let key = line.split_whitespace().next().unwrap_or("");
        if let Some((k, v)) = overrides.iter().find(|(k, _)| *k == key) {
            conf.push_str(&format!("{k} {v}\n"));
        } else if key == "listener" {
            conf.push_str(&format!("listener {port} {bind}\n"));
        } else if key == "persistence_location" {
            conf.push_str(&format!("persistence_location {}/\n", dir.display()));
        } else {
            conf.push_str(line);
            conf.push('\n');
        }
    }
    // Running as root, Mosquitto would drop to its own user, which cannot write the test's
    // temporary directory.
    if unsafe { libc::geteuid() } == 0 {
        conf.push_str("user root\n");
    }
    for line in append {
        conf.push_str(line);
        conf.push('\n');
    }
    conf
}

/// The address behind a PostgreSQL URL, for a [`Proxy`] in front of it.
pub fn pg_upstream(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let hostport = host.split(['/', '?']).next().unwrap();
    let (h, p) = hostport.rsplit_once(':').unwrap_or((hostport, "5432"));
    let h = if h == "localhost" { "127.0.0.1" } else { h };
    format!("{h}:{p}").parse().unwrap()
}

fn spawn_mosquitto(conf: &Path, dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("mosquitto.log"))
        .unwrap();
    Command::new(mosquitto_bin())
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("mosquitto is installed")
}

/// Waits until something accepts TCP connections on loopback `port`.
async fn wait_listening(what: &str, port: u16) {
    poll(what, || async move {
        TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("mosquitto")
}

/// A PostgreSQL database private to one test, dropped at the end.
pub struct TempDb {
    admin: String,
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl TempDb {
    /// Creates `anxin_test_<random>` through the admin URL.
    pub async fn create(admin: &str) -> TempDb {
        let name = format!("anxin_test_{}", unique());
        let pool = sqlx::PgPool::connect(admin)
            .await
            .expect("admin connection");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let url = match admin.rfind('/') {
            Some(i) if admin[..i].contains("://") && !admin[i..].contains('@') => {
                let (base, rest) = admin.split_at(i);
                let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
                format!("{base}/{name}{query}")
            }
            _ => format!("{}/{name}", admin.trim_end_matches('/')),
        };
        TempDb {
            admin: admin.to_owned(),
            name,
            url,
        }
    }

    /// The URL with host and port replaced, e.g. to go through a [`Proxy`].
    pub fn url_via(&self, port: u16) -> String {
        let (scheme, rest) = self.url.split_once("://").unwrap();
        let (auth, tail) = match rest.rsplit_once('@') {
            Some((a, t)) => (format!("{a}@"), t),
            None => (String::new(), rest),
        };
        let path = &tail[tail.find('/').unwrap_or(tail.len())..];
        format!("{scheme}://{auth}127.0.0.1:{port}{path}")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(pool) = sqlx::PgPool::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&pool)
                    .await;
                    pool.close().await;
                }
            })
        })
        .join();
    }
}

/// A TCP proxy to `upstream` that the test can cut (close every connection and refuse new
/// ones) and restore: the database "goes away" without touching the shared server.
pub struct Proxy {
    /// Local port to connect to.
    pub port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    /// Starts proxying 127.0.0.1:<port> → `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (c, cs) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                cs.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            port,
            cut,
            conns,
            accept,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The real engine binary, in its own data directory, on free ports.
pub struct Engine {
    child: Option<Child>,
    /// Operator API address.
    pub http: SocketAddr,
    /// Admin bearer token.
    pub token: String,
    /// Topic root used by this engine.
    pub root: String,
    env: Vec<(String, String)>,
    config: PathBuf,
    /// Data directory (kept across restarts).
    pub dir: Arc<tempfile::TempDir>,
    client: reqwest::Client,
    starts: u32,
    open_files_limit: Option<u64>,
}

/// How to start an [`Engine`].
#[derive(Clone, Default)]
pub struct EngineOpts {
    /// `ANXIN_MQTT_URL`; default: embedded on a free port.
    pub mqtt_url: Option<String>,
    /// `ANXIN_STORE_URL`; default: SQLite in the data directory.
    pub store_url: Option<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Engine config file; default: the shipped `config/anxin.toml`.
    pub config: Option<PathBuf>,
    /// Open-files limit (RLIMIT_NOFILE, soft and hard) for the engine process; default: the
    /// test process's own.
    pub open_files_limit: Option<u64>,
}

impl Engine {
    /// Starts the engine and waits for `/readyz`.
    pub async fn start(opts: EngineOpts) -> Engine {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        // A port the harness chose (not the test) may be taken by a parallel test between
        // free_port() and the engine's bind: then the start is tried again on new ports.
        let chosen_port = opts.mqtt_url.is_none();
        let mqtt_url = opts
            .mqtt_url
            .unwrap_or_else(|| format!("embedded://127.0.0.1:{}", free_port()));
        let root = format!("t{}/v1", unique());
        let token = format!("test-token-{}", unique());
        let mut env = vec![
            (
                "ANXIN_DATA_DIR".to_owned(),
                dir.path().display().to_string(),
            ),
            ("ANXIN_MQTT_URL".to_owned(), mqtt_url),
            ("ANXIN_MQTT_TOPIC_ROOT".to_owned(), root.clone()),
            (
                "ANXIN_MQTT_CLIENT_ID".to_owned(),
                format!("anxin-test-{}", unique()),
            ),
            ("ANXIN_ADMIN_TOKEN".to_owned(), token.clone()),
            // Parallel tests must not fight over the default device ports.
            (
                "ANXIN_TCP_LISTEN".to_owned(),
                "watch=off,gt06=off,jt808=off,trv=off".to_owned(),
            ),
            // Most tests are about one behaviour; the unknown-device policy has its own tests.
            ("ANXIN_UNKNOWN_DEVICES".to_owned(), "accept".to_owned()),
        ];
        if let Some(s) = opts.store_url {
            env.push(("ANXIN_STORE_URL".to_owned(), s));
        }
        env.extend(opts.env);
        let mut e = Engine {
            child: None,
            http: "127.0.0.1:0".parse().unwrap(),
            token,
            root,
            env,
            config: opts
                .config
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("config/anxin.toml")),
            dir,
            client: reqwest::Client::new(),
            starts: 0,
            open_files_limit: opts.open_files_limit,
        };
        for attempt in 1.. {
            e.spawn(&[]);
            match e.ready_or_exited().await {
                Ok(()) => break,
                Err(log) if attempt < 3 && log.contains("Address already in use") => {
                    if chosen_port
                        && let Some(url) = e.env.iter_mut().find(|(k, _)| k == "ANXIN_MQTT_URL")
                    {
                        url.1 = format!("embedded://127.0.0.1:{}", free_port());
                    }
                }
                Err(log) => panic!("engine not ready; log:\n{log}"),
            }
        }
        e
    }

    /// Waits for `/readyz` 200, or gives the log if the process exited (or never got ready).
    async fn ready_or_exited(&mut self) -> Result<(), String> {
        let url = format!("http://{}/readyz", self.http);
        let start = Instant::now();
        loop {
            if let Ok(r) = self.client.get(&url).send().await
                && r.status() == 200
            {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || start.elapsed() >= DEADLINE {
                return Err(self.log());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The embedded or external broker port from `ANXIN_MQTT_URL`.
    pub fn mqtt_port(&self) -> u16 {
        let url = &self
            .env
            .iter()
            .find(|(k, _)| k == "ANXIN_MQTT_URL")
            .unwrap()
            .1;
        url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// `{root}/devices/{device}/events`.
    pub fn topic(&self, device: &str) -> String {
        format!("{}/devices/{device}/events", self.root)
    }

    /// Publishes to this engine's broker.
    pub fn publish(&self, device: &str, payload: &str) {
        publish(self.mqtt_port(), &self.topic(device), payload);
    }

    /// (Re)starts the process with the same data, broker session and database, plus `extra` env.
    pub fn spawn(&mut self, extra: &[(&str, &str)]) {
        self.http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.path().join(format!("engine-{}.log", self.starts)))
                .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_anxin"));
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("ANXIN_HTTP_ADDR", self.http.to_string())
            .env("RUST_LOG", "info,rumqttd=warn")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        if let Some(n) = self.open_files_limit {
            limit_open_files(&mut cmd, n);
        }
        self.child = Some(cmd.spawn().expect("spawning anxin"));
    }

    /// The engine's log of its current run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("engine-{}.log", self.starts)))
            .unwrap_or_default()
    }

    /// Waits for `/readyz` 200.
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.http);
        let client = self.client.clone();
        let log = self.dir.path().join(format!("engine-{}.log", self.starts));
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "engine not ready; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// GET an API path with the token.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("http://{}{path}", self.http))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST an API path with the token and a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("http://{}{path}", self.http))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// PUT an API path with the token and a JSON body.
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .put(format!("http://{}{path}", self.http))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `GET /api/alerts?{query}` items.
    pub async fn alerts(&self, query: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/api/alerts?{query}")).await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().cloned().unwrap_or_default()
    }

    /// Sum of a metric's samples whose line starts with `prefix` (name plus optional labels).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let text = self
            .client
            .get(format!("http://{}/metrics", self.http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until the metric reaches `at_least`.
    pub async fn wait_metric(&self, prefix: &str, at_least: f64) {
        poll(&format!("{prefix} >= {at_least}"), || async move {
            (self.metric(prefix).await >= at_least).then_some(())
        })
        .await
    }

    /// Sends a signal to the running engine (e.g. `libc::SIGHUP` to reload).
    pub fn signal(&self, sig: i32) {
        let c = self.child.as_ref().expect("engine running");
        unsafe {
            libc::kill(c.id() as i32, sig);
        }
    }

    /// SIGKILL: no chance to commit or ack anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            if start.elapsed() > DEADLINE {
                let _ = c.kill();
                panic!("engine did not exit after SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Publishes every (topic, payload) at QoS 1 through one rumqttc connection and returns once
/// the broker acked them all.
pub async fn publish_many(port: u16, messages: Vec<(String, String)>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    let mut o = MqttOptions::new(format!("anxin-test-pub-{}", unique()), "127.0.0.1", port);
    o.set_max_packet_size(70 * 1024, 70 * 1024)
        .set_inflight(200);
    let (client, mut el) = AsyncClient::new(o, 1000);
    let total = messages.len();
    let sender = tokio::spawn(async move {
        for (t, p) in messages {
            client.publish(t, QoS::AtLeastOnce, false, p).await.unwrap();
        }
        client
    });
    let mut acked = 0;
    let start = Instant::now();
    while acked < total {
        assert!(
            start.elapsed() < DEADLINE * 4,
            "publisher got {acked}/{total} acks"
        );
        match tokio::time::timeout(DEADLINE, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher connection failed: {e}"),
            Err(_) => panic!("publisher stalled at {acked}/{total}"),
        }
    }
    let client = sender.await.unwrap();
    let _ = client.disconnect().await;
}

impl Engine {
    /// Removes a variable from the environment of later (re)starts.
    pub fn remove_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }
}

/// A nats-server private to the test, started from the shipped `config/nats-server.conf` with
/// only its ports (MQTT on a free port, the NATS client port picked by the server) and the
/// JetStream store directory changed.
pub struct Nats {
    child: Child,
    /// Its MQTT port.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nats {
    /// Starts it and waits until its MQTT listener accepts connections.
    pub async fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nats-server.conf"),
        )
        .unwrap();
        let conf = nats_conf(&shipped, port, &dir.path().join("store"));
        std::fs::write(dir.path().join("nats-server.conf"), conf).unwrap();
        let child = spawn_nats(dir.path());
        wait_listening("nats-server's MQTT listener", port).await;
        Nats { child, port, dir }
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then a start from the same config and store directory, on the same port.
    pub async fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_nats(self.dir.path());
        wait_listening("nats-server's MQTT listener again", self.port).await;
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped config with the MQTT port, the client port and the store directory replaced.
/// Each must be replaced exactly once: a reshaped config file fails here, not in a mysterious
/// way later.
fn nats_conf(shipped: &str, mqtt_port: u16, store: &Path) -> String {
    let mut block: Vec<String> = Vec::new();
    let mut replaced = [0; 3];
    let mut conf = String::new();
    for line in shipped.lines() {
        let t = line.trim();
        let key = t.split([':', ' ', '=']).next().unwrap_or("");
        let out = match (block.last().map(String::as_str), key) {
            // -1: the server picks a free client port; the tests speak MQTT only.
            (None, "listen") => {
                replaced[0] += 1;
                "listen: 127.0.0.1:-1".to_owned()
            }
            (Some("mqtt"), "listen") => {
                replaced[1] += 1;
                format!("listen: 127.0.0.1:{mqtt_port}")
            }
            (Some("jetstream"), "store_dir") => {
                replaced[2] += 1;
                format!("store_dir: {:?}", store.display().to_string())
            }
            _ => line.to_owned(),
        };
        if t.starts_with('#') {
            // A comment never opens or closes a block.
        } else if let Some(name) = t.strip_suffix('{') {
            block.push(name.trim().to_owned());
        } else if t == "}" {
            block.pop();
        }
        conf.push_str(&out);
        conf.push('\n');
    }
    assert_eq!(
        replaced,
        [1, 1, 1],
        "config/nats-server.conf must have one top-level `listen`, one `listen` in `mqtt {{}}` and one `store_dir` in `jetstream {{}}`"
    );
    conf
}

fn spawn_nats(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("nats-server.log"))
        .unwrap();
    let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nats-server");
    Command::new(bin)
        .arg("-c")
        .arg(dir.join("nats-server.conf"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("nats-server is installed (Debian package nats-server)")
}

/// Which external broker a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Mosquitto from `config/mosquitto.conf`.
    Mosquitto,
    /// nats-server with JetStream from `config/nats-server.conf` (MQTT 3.1.1 only).
    Nats,
}

/// A private broker of either kind.
pub enum Broker {
    /// Mosquitto.
    Mosquitto(Mosquitto),
    /// nats-server.
    Nats(Nats),
}

impl Broker {
    /// Starts a private broker of `kind`.
    pub async fn start(kind: BrokerKind) -> Broker {
        match kind {
            BrokerKind::Mosquitto => Broker::Mosquitto(Mosquitto::start().await),
            BrokerKind::Nats => Broker::Nats(Nats::start().await),
        }
    }

    /// Its MQTT port.
    pub fn port(&self) -> u16 {
        match self {
            Broker::Mosquitto(m) => m.port,
            Broker::Nats(n) => n.port,
        }
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port())
    }

    /// SIGKILL, then a restart from the same config and store, on the same port.
    pub async fn kill_and_restart(&mut self) {
        match self {
            Broker::Mosquitto(m) => m.kill_and_restart().await,
            Broker::Nats(n) => n.kill_and_restart().await,
        }
    }
}

/// Sets the child's RLIMIT_NOFILE, soft and hard, to `n` before it runs.
fn limit_open_files(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the forked child before exec and only calls setrlimit, which
    // is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Raises this process's open-files soft limit to its hard limit and returns it, for tests
/// that hold thousands of sockets.
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_cur
}

/// (actor, action) of the people's entries on an alert's timeline (`GET /api/alerts/{id}`),
/// in order: the engine's own (`engine`, `anxin`) left out.
pub fn operator_steps(alert: &Value) -> Vec<(String, String)> {
    alert["timeline"]
        .as_array()
        .map(|t| t.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|t| t["actor"] != "engine" && t["actor"] != "anxin")
        .map(|t| {
            (
                t["actor"].as_str().unwrap_or_default().to_owned(),
                t["action"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Which store (and broker) a scenario runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    /// SQLite in the data directory, the embedded broker.
    Sqlite,
    /// A PostgreSQL database of its own, the machine's Mosquitto.
    Postgres,
}

impl Backend {
    /// Points `opts` at this backend's store and broker; the database it made, if any, lives
    /// as long as the returned value. `None` when the backend's services are not configured
    /// (skipped; with `CI=true`, a failure).
    pub async fn configure(self, opts: &mut EngineOpts) -> Option<Option<TempDb>> {
        match self {
            Backend::Sqlite => Some(None),
            Backend::Postgres => {
                let admin = service_url("ANXIN_TEST_POSTGRES_URL")?;
                let mqtt = service_url("ANXIN_TEST_MQTT_URL")?;
                let db = TempDb::create(&admin).await;
                opts.store_url = Some(db.url.clone());
                opts.mqtt_url = Some(mqtt);
                Some(Some(db))
            }
        }
    }
}

/// Runs the `async fn NAME(b: Backend)` above it as `NAME::sqlite` and `NAME::postgres`.
#[allow(unused_macros)]
macro_rules! on_both_stores {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_stores;
