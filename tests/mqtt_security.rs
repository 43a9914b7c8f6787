//! MQTT security and broker session loss, through the real binary and a private Mosquitto
//! started from the shipped `config/mosquitto.conf` with a few lines changed per test: TLS with
//! a throw-away CA (rcgen), credentials from the URL against a password file, the shipped ACL
//! example (`config/mosquitto.acl`), and broker restarts with and without persistence.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::{Engine, EngineOpts, TempDb, free_port, poll, publish, unique};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::TcpStream;

/// A private Mosquitto whose configuration is the shipped one with `overrides` replacing the
/// shipped line of the same key and `append` added at the end (e.g. a TLS listener block).
/// Restarts keep its port and its persistence directory.
struct Broker {
    child: Option<Child>,
    port: u16,
    bind: &'static str,
    /// Ports of listeners added in `append`, waited for at start.
    more_ports: Vec<u16>,
    dir: tempfile::TempDir,
    conf: PathBuf,
    starts: u32,
}

impl Broker {
    async fn start(
        bind: &'static str,
        overrides: &[(&str, String)],
        append: &[String],
        more_ports: Vec<u16>,
    ) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = common::mosquitto_conf(port, bind, dir.path(), overrides, append);
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let mut b = Broker {
            child: None,
            port,
            bind,
            more_ports,
            dir,
            conf: path,
            starts: 0,
        };
        b.spawn().await;
        b
    }

    /// Starts the process (again) and waits until every listener accepts connections.
    async fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("mosquitto-{}.log", self.starts)),
        )
        .unwrap();
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mosquitto");
        self.child = Some(
            Command::new(bin)
                .arg("-c")
                .arg(&self.conf)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("mosquitto is installed"),
        );
        let host = self.bind;
        for port in std::iter::once(self.port).chain(self.more_ports.clone()) {
            poll("mosquitto to listen", || async move {
                TcpStream::connect((host, port)).await.ok().map(|_| ())
            })
            .await;
        }
    }

    /// SIGTERM: Mosquitto saves its persistence database on the way out.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p.display().to_string()
}

/// `/readyz` status and body, once the engine's HTTP listener answers.
async fn readyz(e: &Engine) -> (u16, Value) {
    let url = format!("http://{}/readyz", e.http);
    poll("/readyz to answer", || {
        let url = url.clone();
        async move {
            let r = reqwest::get(&url).await.ok()?;
            let status = r.status().as_u16();
            Some((status, r.json().await.ok()?))
        }
    })
    .await
}

/// Publishes each (topic, payload) at QoS 1 over one connection, logged in as `user`, in
/// order, and returns once the broker acked them all.
async fn publish_as(host: &str, port: u16, login: Option<(&str, &str)>, messages: &[(&str, &str)]) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut o = MqttOptions::new(format!("pub-{}", unique()), host, port);
    if let Some((user, password)) = login {
        o.set_credentials(user, password);
    }
    let (client, mut el) = AsyncClient::new(o, 16);
    for (t, p) in messages {
        client
            .publish(*t, QoS::AtLeastOnce, false, p.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < messages.len() {
        match tokio::time::timeout(common::DEADLINE, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher {login:?} failed: {e}"),
            Err(_) => panic!("publisher {login:?} stalled at {acked} acks"),
        }
    }
    let _ = client.disconnect().await;
}

/// A CA and what it signs.
struct Pki {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("anxin test CA {}", unique()),
        );
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            ca_pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for these names (DNS names or IP addresses).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

#[tokio::test]
async fn mqtts_with_a_private_ca_and_a_client_certificate_raises_the_sos_and_a_wrong_ca_is_not_ready()
 {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (server_cert, server_key) = pki.leaf(&["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = pki.leaf(&["anxin"]);
    let ca = write(d, "ca.pem", &pki.ca_pem);
    let tls_port = free_port();
    // A plain listener for the test's publisher, and a TLS one that requires a client
    // certificate for the engine.
    let broker = Broker::start(
        "127.0.0.1",
        &[],
        &[
            format!("listener {tls_port} 127.0.0.1"),
            format!("cafile {ca}"),
            format!("certfile {}", write(d, "server.pem", &server_cert)),
            format!("keyfile {}", write(d, "server.key", &server_key)),
            "require_certificate true".into(),
        ],
        vec![tls_port],
    )
    .await;
    let client_cert = write(d, "client.pem", &client_cert);
    let client_key = write(d, "client.key", &client_key);
    let mut e = Engine::start(EngineOpts {
        mqtt_url: Some(format!("mqtts://localhost:{tls_port}")),
        env: vec![
            ("ANXIN_MQTT_CA_FILE".into(), ca.clone()),
            ("ANXIN_MQTT_CLIENT_CERT_FILE".into(), client_cert.clone()),
            ("ANXIN_MQTT_CLIENT_KEY_FILE".into(), client_key.clone()),
        ],
        ..Default::default()
    })
    .await;
    publish(
        broker.port,
        &e.topic("tls-1"),
        r#"{"type":"sos","seq":1,"ts":"2026-11-23T10:00:00Z"}"#,
    );
    let alert = poll("the SOS over TLS", || async {
        e.alerts("device_id=tls-1&kind=sos")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(alert["severity"], "critical");

    // The broker's certificate does not chain to this CA: never ready, and the log says why.
    let other = write(d, "other-ca.pem", &Pki::new().ca_pem);
    e.kill();
    e.spawn(&[("ANXIN_MQTT_CA_FILE", &other)]);
    poll("the certificate error in the log", || async {
        e.log().contains("invalid peer certificate").then_some(())
    })
    .await;
    let (status, body) = readyz(&e).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ingest"], false);
    assert!(e.log().contains("UnknownIssuer"), "{}", e.log());

    // Without the client certificate the broker refuses the engine.
    e.kill();
    e.remove_env("ANXIN_MQTT_CLIENT_CERT_FILE");
    e.remove_env("ANXIN_MQTT_CLIENT_KEY_FILE");
    e.spawn(&[]);
    poll("the refused handshake in the log", || async {
        e.log()
            .contains("MQTT connection error; reconnecting")
            .then_some(())
    })
    .await;
    assert_eq!(readyz(&e).await.0, 503);
    e.kill();
    drop(broker);

    // Unreadable or invalid PEM files stop start-up with the setting and file named.
    let garbage = write(d, "garbage.pem", "not a certificate\n");
    let missing = "/nonexistent/client.key";
    /// A start-up that must fail: command, environment, and what the error names.
    struct BadPem<'a> {
        command: &'a str,
        env: Vec<(&'a str, &'a str)>,
        key: &'a str,
        path: &'a str,
        problem: &'a str,
    }
    let cases = [
        BadPem {
            command: "check-config",
            env: vec![("ANXIN_MQTT_CA_FILE", &garbage)],
            key: "ANXIN_MQTT_CA_FILE",
            path: &garbage,
            problem: "no certificate in it",
        },
        BadPem {
            command: "run",
            env: vec![("ANXIN_MQTT_CA_FILE", &garbage)],
            key: "ANXIN_MQTT_CA_FILE",
            path: &garbage,
            problem: "no certificate in it",
        },
        BadPem {
            command: "check-config",
            env: vec![
                ("ANXIN_MQTT_CA_FILE", &ca),
                ("ANXIN_MQTT_CLIENT_CERT_FILE", &client_cert),
                ("ANXIN_MQTT_CLIENT_KEY_FILE", missing),
            ],
            key: "ANXIN_MQTT_CLIENT_KEY_FILE",
            path: missing,
            problem: "cannot read",
        },
    ];
    for BadPem {
        command,
        env,
        key,
        path,
        problem,
    } in cases
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_anxin"));
        cmd.arg(command)
            .arg("--config")
            .arg(repo("config/anxin.toml"))
            .env("ANXIN_DATA_DIR", d)
            .env("ANXIN_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("ANXIN_TCP_LISTEN", "watch=off,gt06=off,jt808=off,trv=off")
            .env("ANXIN_MQTT_URL", format!("mqtts://localhost:{tls_port}"));
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert!(
            err.contains(&format!("(environment): {key}: "))
                && err.contains(path)
                && err.contains(problem),
            "{command}: {err}"
        );
    }
}

#[tokio::test]
async fn url_credentials_and_the_acl_example_let_a_device_publish_only_to_its_own_topic() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    // Every character the URL has to percent-encode.
    let engine_password = "p@ss:w/rd%?# x";
    for (i, (user, pass)) in [("anxin", engine_password), ("dev-a", "device-a-secret")]
        .into_iter()
        .enumerate()
    {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let out = cmd
            .arg("-b")
            .arg(&passwd)
            .arg(user)
            .arg(pass)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let broker = Broker::start(
        "127.0.0.1",
        &[("allow_anonymous", "false".into())],
        &[
            format!("password_file {}", passwd.display()),
            format!("acl_file {}", repo("config/mosquitto.acl").display()),
        ],
        vec![],
    )
    .await;
    let url = format!(
        "mqtt://anxin:p%40ss%3Aw%2Frd%25%3F%23%20x@127.0.0.1:{}",
        broker.port
    );
    // The shipped ACL is written for the default topic root.
    let mut e = Engine::start(EngineOpts {
        mqtt_url: Some(url.clone()),
        env: vec![("ANXIN_MQTT_TOPIC_ROOT".into(), "anxin/v1".into())],
        ..Default::default()
    })
    .await;

    // dev-a tries another device's topic, then its own, on one connection, in that order.
    publish_as(
        "127.0.0.1",
        broker.port,
        Some(("dev-a", "device-a-secret")),
        &[
            (
                "anxin/v1/devices/dev-b/events",
                r#"{"type":"sos","seq":1,"ts":"2026-11-23T10:00:00Z"}"#,
            ),
            (
                "anxin/v1/devices/dev-a/events",
                r#"{"type":"sos","seq":1,"ts":"2026-11-23T10:00:01Z"}"#,
            ),
        ],
    )
    .await;
    poll("dev-a's own SOS", || async {
        e.alerts("device_id=dev-a&kind=sos")
            .await
            .into_iter()
            .next()
    })
    .await;
    // The engine counts publishes in arrival order, and the broker delivers one connection's
    // publishes in order: had dev-b's copy passed the ACL it would have been counted first.
    assert_eq!(e.metric("anxin_mqtt_messages_received_total").await, 1.0);
    assert!(e.alerts("device_id=dev-b").await.is_empty());

    // The password is never printed: not at start-up, not by check-config.
    let out = Command::new(env!("CARGO_BIN_EXE_anxin"))
        .arg("check-config")
        .arg("--config")
        .arg(repo("config/anxin.toml"))
        .env("ANXIN_MQTT_URL", &url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains(&format!("mqtt://anxin:***@127.0.0.1:{}", broker.port)),
        "{stdout}"
    );

    // A wrong password: not ready, the refusal logged, neither password anywhere.
    e.kill();
    e.spawn(&[(
        "ANXIN_MQTT_URL",
        &format!("mqtt://anxin:wrong-s3cret@127.0.0.1:{}", broker.port),
    )]);
    poll("the refusal in the log", || async {
        e.log()
            .contains("MQTT connection error; reconnecting")
            .then_some(())
    })
    .await;
    assert_eq!(readyz(&e).await.0, 503);
    e.kill();
    let logs: String = (1..=2)
        .map(|i| std::fs::read_to_string(e.dir.path().join(format!("engine-{i}.log"))).unwrap())
        .collect();
    assert!(logs.contains("Connected to MQTT broker"), "{logs}");
    for secret in [engine_password, "p%40ss", "wrong-s3cret"] {
        assert!(!logs.contains(secret), "{secret} leaked:\n{logs}");
        assert!(!stdout.contains(secret), "{secret} leaked:\n{stdout}");
    }
}

#[tokio::test]
async fn ipv6_broker_urls_work() {
    let broker = Broker::start("::1", &[], &[], vec![]).await;
    let e = Engine::start(EngineOpts {
        mqtt_url: Some(format!("mqtt://[::1]:{}", broker.port)),
        env: vec![("ANXIN_MQTT_TOPIC_ROOT".into(), "anxin/v1".into())],
        ..Default::default()
    })
    .await;
    publish_as(
        "::1",
        broker.port,
        None,
        &[("anxin/v1/devices/v6-1/events", r#"{"type":"sos"}"#)],
    )
    .await;
    poll("the SOS over IPv6", || async {
        e.alerts("device_id=v6-1&kind=sos").await.into_iter().next()
    })
    .await;

    // The embedded broker on an IPv6 address.
    let port = free_port();
    let e = Engine::start(EngineOpts {
        mqtt_url: Some(format!("embedded://[::1]:{port}")),
        env: vec![("ANXIN_MQTT_TOPIC_ROOT".into(), "anxin/v1".into())],
        ..Default::default()
    })
    .await;
    publish_as(
        "::1",
        port,
        None,
        &[("anxin/v1/devices/v6-2/events", r#"{"type":"sos"}"#)],
    )
    .await;
    poll("the SOS through the embedded broker over IPv6", || async {
        e.alerts("device_id=v6-2&kind=sos").await.into_iter().next()
    })
    .await;
}

/// Collects the live feed (`GET /api/stream`) into a string.
fn live_feed(e: &Engine) -> Arc<Mutex<String>> {
    let seen = Arc::new(Mutex::new(String::new()));
    let (url, token, sink) = (
        format!("http://{}/api/stream", e.http),
        e.token.clone(),
        seen.clone(),
    );
    tokio::spawn(async move {
        let r = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let mut body = r.bytes_stream();
        while let Some(Ok(chunk)) = body.next().await {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk));
        }
    });
    seen
}

async fn system_alert(e: &Engine, count: i64) -> Value {
    poll(
        &format!("the session-loss alert with count {count}"),
        || async {
            e.alerts("kind=system")
                .await
                .into_iter()
                .find(|a| a["rule"] == "broker_session_lost" && a["count"] == count)
        },
    )
    .await
}

async fn wait_session(e: &Engine, connects: u64, session: &str) -> Value {
    poll(
        &format!("connect {connects} with session {session}"),
        || async {
            let (status, body) = readyz(e).await;
            (status == 200
                && body["mqtt"]["connects"] == connects
                && body["mqtt"]["session"] == session)
                .then_some(body)
        },
    )
    .await
}

#[tokio::test]
async fn a_broker_restart_without_persistence_raises_the_session_loss_alert() {
    // PostgreSQL when available (production's store), else SQLite.
    let db = match std::env::var("ANXIN_TEST_POSTGRES_URL") {
        Ok(admin) if !admin.is_empty() => Some(TempDb::create(&admin).await),
        _ => None,
    };
    let mut broker =
        Broker::start("127.0.0.1", &[("persistence", "false".into())], &[], vec![]).await;
    let mut e = Engine::start(EngineOpts {
        mqtt_url: Some(format!("mqtt://127.0.0.1:{}", broker.port)),
        store_url: db.as_ref().map(|d| d.url.clone()),
        ..Default::default()
    })
    .await;
    // The first connection of a client id expects no session.
    let body = wait_session(&e, 1, "new").await;
    assert_eq!(body["mqtt"]["lost_at"], Value::Null);
    assert_eq!(e.metric("anxin_mqtt_session_lost_total").await, 0.0);
    let feed = live_feed(&e);

    // The broker restarts and remembers nothing.
    broker.stop();
    broker.spawn().await;
    let alert = system_alert(&e, 1).await;
    assert_eq!(alert["device_id"], "system");
    assert_eq!(alert["severity"], "high");
    assert_eq!(alert["status"], "open");
    assert!(
        alert["title"]
            .as_str()
            .unwrap()
            .contains("Check the broker"),
        "{alert}"
    );
    let (status, one) = e.get(&format!("/api/alerts/{}", alert["id"])).await;
    assert_eq!(status, 200, "{one}");
    let entry = &one["timeline"][0];
    assert_eq!(entry["action"], "opened");
    assert_eq!(
        entry["detail"]["broker"],
        format!("127.0.0.1:{}", broker.port)
    );
    assert_eq!(entry["detail"]["detected"], "on reconnect");
    assert!(
        entry["detail"]["previous_session_at"].is_string(),
        "{entry}"
    );
    assert_eq!(e.metric("anxin_mqtt_session_lost_total").await, 1.0);
    let (status, body) = readyz(&e).await;
    assert_eq!(
        status, 200,
        "a lost session does not make the engine unready: {body}"
    );
    assert_eq!(body["mqtt"]["session"], "lost");
    assert!(body["mqtt"]["lost_at"].is_string(), "{body}");
    assert!(e.log().contains("MQTT broker session lost"), "{}", e.log());
    poll("the alert on the live feed", || async {
        let f = feed.lock().unwrap().clone();
        (f.contains(&format!(r#""alert_id":{}"#, alert["id"])) && f.contains(r#""kind":"system""#))
            .then_some(())
    })
    .await;

    // The subscription was renewed: an SOS still gets through.
    e.publish("after-loss", r#"{"type":"sos"}"#);
    poll("an SOS after the loss", || async {
        e.alerts("device_id=after-loss&kind=sos")
            .await
            .into_iter()
            .next()
    })
    .await;

    // A second loss while the alert is open counts on it.
    broker.stop();
    broker.spawn().await;
    let again = system_alert(&e, 2).await;
    assert_eq!(again["id"], alert["id"]);
    assert_eq!(e.metric("anxin_mqtt_session_lost_total").await, 2.0);

    // Across an engine restart: the stored record says we had a session on this broker.
    assert_eq!(e.terminate(), Some(0));
    broker.stop();
    broker.spawn().await;
    e.spawn(&[]);
    e.wait_ready().await;
    let third = system_alert(&e, 3).await;
    assert_eq!(third["id"], alert["id"]);
    let (_, one) = e.get(&format!("/api/alerts/{}", alert["id"])).await;
    let timeline = one["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 3, "{one}");
    assert_eq!(timeline[2]["action"], "event");
    assert_eq!(
        timeline[2]["detail"]["detected"],
        "at start-up, from the stored session record"
    );
    assert_eq!(readyz(&e).await.1["mqtt"]["session"], "lost");
}

#[tokio::test]
async fn a_broker_restart_that_keeps_the_session_raises_nothing() {
    // The shipped config: persistence on, saved at SIGTERM.
    let mut broker = Broker::start("127.0.0.1", &[], &[], vec![]).await;
    let mut e = Engine::start(EngineOpts {
        mqtt_url: Some(format!("mqtt://127.0.0.1:{}", broker.port)),
        ..Default::default()
    })
    .await;
    wait_session(&e, 1, "new").await;

    broker.stop();
    broker.spawn().await;
    wait_session(&e, 2, "resumed").await;

    // The engine away: an SOS waits in the session the broker kept.
    assert_eq!(e.terminate(), Some(0));
    e.publish("kept-1", r#"{"type":"sos","seq":1}"#);
    e.spawn(&[]);
    e.wait_ready().await;
    let body = wait_session(&e, 1, "resumed").await;
    assert_eq!(body["mqtt"]["lost_at"], Value::Null);
    poll("the SOS queued in the kept session", || async {
        e.alerts("device_id=kept-1&kind=sos")
            .await
            .into_iter()
            .next()
    })
    .await;
    // Both decisions were made (readyz above) and neither was a loss.
    assert_eq!(e.metric("anxin_mqtt_session_lost_total").await, 0.0);
    assert!(e.alerts("kind=system").await.is_empty());
}

/// The store side on both backends: the session record, and a `system` alert that counts
/// while open and opens anew once resolved.
#[tokio::test]
async fn session_records_and_system_alerts_on_both_backends() {
    use anxin::domain::alert::Severity;
    use anxin::store::{Store, SystemAlert};
    use chrono::{DateTime, Utc};

    let dir = tempfile::tempdir().unwrap();
    let pg = match std::env::var("ANXIN_TEST_POSTGRES_URL") {
        Ok(admin) if !admin.is_empty() => Some(TempDb::create(&admin).await),
        _ => None,
    };
    let mut urls = vec![format!(
        "sqlite://{}",
        dir.path().join("anxin.db").display()
    )];
    urls.extend(pg.as_ref().map(|d| d.url.clone()));
    let t = |s: i64| DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).unwrap();
    for url in urls {
        let store = Store::connect(&url, 2).await.unwrap();
        let b = store.backend();
        assert_eq!(store.mqtt_session("anxin-1", "h:1883").await.unwrap(), None);
        store
            .record_mqtt_session("anxin-1", "h:1883", t(0))
            .await
            .unwrap();
        store
            .record_mqtt_session("anxin-1", "h:1883", t(5))
            .await
            .unwrap();
        let r = store
            .mqtt_session("anxin-1", "h:1883")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.first_at, r.last_at), (t(0), t(5)), "{b}");
        assert_eq!(
            store.mqtt_session("anxin-1", "other:1883").await.unwrap(),
            None
        );
        assert_eq!(store.mqtt_session("anxin-2", "h:1883").await.unwrap(), None);

        let a = SystemAlert {
            rule: "broker_session_lost",
            severity: Severity::High,
            title: "t",
            detail: serde_json::json!({ "n": 1 }),
        };
        let first = store.raise_system_alert(&a, t(10)).await.unwrap();
        assert_eq!(
            (
                first.action.as_str(),
                first.kind.as_str(),
                first.device_id.as_str()
            ),
            ("opened", "system", "system"),
            "{b}"
        );
        let second = store.raise_system_alert(&a, t(20)).await.unwrap();
        assert_eq!(
            (second.alert_id, second.action.as_str()),
            (first.alert_id, "counted")
        );
        let (alert, timeline) = store.get_alert(first.alert_id).await.unwrap();
        assert_eq!((alert.count, alert.severity.as_str()), (2, "high"), "{b}");
        assert_eq!(
            timeline
                .iter()
                .map(|e| e.action.as_str())
                .collect::<Vec<_>>(),
            ["opened", "event"],
            "{b}"
        );
        assert_eq!(timeline[0].detail["n"], 1);
        store
            .resolve(first.alert_id, "admin", t(30), "other", None)
            .await
            .unwrap();
        let third = store.raise_system_alert(&a, t(40)).await.unwrap();
        assert_eq!(third.action, "opened", "{b}");
        assert_ne!(third.alert_id, first.alert_id);
        store.close().await;
    }
}

/// A loss seen while the store is unreachable is counted and shown at once, and the alert is
/// written once the store answers again: never dropped.
#[tokio::test]
async fn a_session_loss_during_a_database_outage_is_alerted_when_the_store_returns() {
    let Some(admin) = common::service_url("ANXIN_TEST_POSTGRES_URL") else {
        return;
    };
    let db = TempDb::create(&admin).await;
    let upstream = common::pg_upstream(&admin);
    let proxy = common::Proxy::start(upstream).await;
    let mut broker =
        Broker::start("127.0.0.1", &[("persistence", "false".into())], &[], vec![]).await;
    let e = Engine::start(EngineOpts {
        mqtt_url: Some(format!("mqtt://127.0.0.1:{}", broker.port)),
        store_url: Some(db.url_via(proxy.port)),
        ..Default::default()
    })
    .await;
    wait_session(&e, 1, "new").await;

    proxy.cut();
    broker.stop();
    broker.spawn().await;
    poll("the loss shown while the store is away", || async {
        (readyz(&e).await.1["mqtt"]["session"] == "lost").then_some(())
    })
    .await;
    assert_eq!(e.metric("anxin_mqtt_session_lost_total").await, 1.0);
    poll(
        "the alert write to fail while the store is away",
        || async {
            e.log()
                .contains("Cannot record the broker session loss alert; retrying")
                .then_some(())
        },
    )
    .await;
    proxy.restore();
    let alert = system_alert(&e, 1).await;
    assert_eq!(alert["rule"], "broker_session_lost");
}

/// The embedded broker keeps nothing across restarts by design: an engine restart finds no
/// session there, and that is no alarm.
#[tokio::test]
async fn an_engine_restart_on_the_embedded_broker_is_no_alarm() {
    let mut e = Engine::start(EngineOpts::default()).await;
    wait_session(&e, 1, "new").await;
    assert_eq!(e.terminate(), Some(0));
    e.spawn(&[]);
    e.wait_ready().await;
    wait_session(&e, 1, "new").await;
    assert_eq!(e.metric("anxin_mqtt_session_lost_total").await, 0.0);
    assert!(e.alerts("kind=system").await.is_empty());
}
