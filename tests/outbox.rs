//! The notifications outbox end to end (README "Notifications"): the real binary on each
//! store, a short-escalation rules file, and a webhook receiver in this test process that
//! can fail, hang, be down, and checks every signature. It dedupes nothing: it counts the 2xx
//! answers it gave per `X-Anxin-Delivery`, so "exactly once" below means exactly one
//! successful delivery per notification and endpoint, however many failed attempts came
//! before (those are retries, expected).
//!
//! Time is the real clock with small backoffs (50 ms doubling to at most 200 ms–1 s), so an
//! outage of seconds here spans as many retry periods as an outage of hours does with the
//! shipped backoffs (1 s doubling to 5 min).
//!
//! Each scenario runs once per store (`NAME::sqlite`, `NAME::postgres`).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{Backend, Engine, EngineOpts, TempDb, on_both_stores, poll};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;

const ONCALL_SECRET: &str = "oncall-secret-0123456789";
const SMS_SECRET: &str = "sms-secret-9876543210";
const PHONES: [&str; 2] = ["+8613800138000", "13900139000"];

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 200 to everything.
    Accept,
    /// 500 to everything.
    Refuse,
    /// Per delivery: 500 first, then no answer within the engine's timeout, then 200.
    Flaky,
}

/// A request the receiver answered 2xx.
#[derive(Debug, Clone)]
struct Got {
    endpoint: String,
    delivery: String,
    notification: String,
    body: Value,
}

#[derive(Debug, Default)]
struct Log {
    /// Requests seen per (endpoint, delivery id).
    attempts: HashMap<(String, String), u32>,
    /// Every 2xx answer given.
    ok: Vec<Got>,
    /// Requests whose signature did not verify, or that lacked a header.
    bad: Vec<String>,
}

struct Shared {
    mode: Mutex<Mode>,
    log: Mutex<Log>,
}

/// The webhook receiver: `/oncall` (JSON) and `/sms` on one port it can take down and bring
/// back.
struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// On a free port, not yet listening.
    fn new(mode: Mode) -> Receiver {
        Receiver {
            addr: SocketAddr::from(([127, 0, 0, 1], common::free_port())),
            shared: Arc::new(Shared {
                mode: Mutex::new(mode),
                log: Mutex::default(),
            }),
            server: None,
        }
    }

    /// Listens (again) on its port.
    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let app = axum::Router::new()
            .route("/{endpoint}", axum::routing::post(hook))
            .with_state(self.shared.clone());
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// Stops listening: connections are refused.
    fn down(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }

    fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// The 2xx answers given so far to `endpoint`.
    fn ok(&self, endpoint: &str) -> Vec<Got> {
        let log = self.shared.log.lock().unwrap();
        log.ok
            .iter()
            .filter(|g| g.endpoint == endpoint)
            .cloned()
            .collect()
    }

    fn attempts(&self, endpoint: &str, delivery: &str) -> u32 {
        let log = self.shared.log.lock().unwrap();
        log.attempts
            .get(&(endpoint.to_owned(), delivery.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn bad(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().bad.clone()
    }

    fn url(&self, endpoint: &str) -> String {
        format!("http://{}/{endpoint}", self.addr)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

/// What a receiver does to verify a request (README "Notifications").
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| format!("no {k}"))
    };
    let ts = h("x-anxin-timestamp")?;
    let sig = h("x-anxin-signature")?;
    // Export pages (docs/EXPORT.md) are no notification: they carry a delivery id only.
    if h("x-anxin-delivery")?.starts_with("export-") {
    } else {
        h("x-anxin-notification")?;
    }
    let age = chrono::Utc::now().timestamp() - ts.parse::<i64>().map_err(|e| e.to_string())?;
    if !(-60..=300).contains(&age) {
        return Err(format!("timestamp {ts} is {age} s old"));
    }
    let hex = sig.strip_prefix("sha256=").ok_or("no sha256= prefix")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&hex::decode(hex).map_err(|e| e.to_string())?)
        .map_err(|_| "signature does not verify".to_owned())
}

async fn hook(
    State(s): State<Arc<Shared>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let secret = if endpoint == "sms" {
        SMS_SECRET
    } else {
        ONCALL_SECRET
    };
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let delivery = header("x-anxin-delivery");
    let mode = *s.mode.lock().unwrap();
    let n = {
        let mut log = s.log.lock().unwrap();
        if let Err(e) = verify(secret, &headers, &body) {
            log.bad.push(format!("{endpoint} {delivery}: {e}"));
            return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
        }
        let n = log
            .attempts
            .entry((endpoint.clone(), delivery.clone()))
            .or_default();
        *n += 1;
        *n
    };
    match (mode, n) {
        (Mode::Refuse, _) | (Mode::Flaky, 1) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "receiver broken").into_response();
        }
        (Mode::Flaky, 2) => {
            // Longer than the engine waits: it gives up on this attempt; never a 2xx.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            return (StatusCode::GATEWAY_TIMEOUT, "too late").into_response();
        }
        _ => {}
    }
    s.log.lock().unwrap().ok.push(Got {
        endpoint,
        delivery,
        notification: header("x-anxin-notification"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    (StatusCode::OK, "thanks").into_response()
}

/// SOS escalates after 1 s and 2 s unacknowledged; a water leak is high and never escalates
/// (it notifies nobody).
const RULES: &str = r#"
[[rule]]
name = "sos"
event = "sos"
severity = "critical"
title = "SOS button pressed"
escalate = ["1s", "2s"]

[[rule]]
name = "water_leak"
event = "water"
severity = "high"
title = "Water leak"
when = [{ field = "state", op = "==", value = "leak" }]
"#;

/// The engine with the two webhooks of `rx` (`max_attempts`, backoff up to `backoff_max_ms`).
struct World {
    e: Engine,
    _cfg: tempfile::TempDir,
    _db: Option<TempDb>,
}

impl World {
    async fn start(
        backend: Backend,
        rx: &Receiver,
        max_attempts: u32,
        backoff_max_ms: u64,
        env: &[(&str, &str)],
    ) -> Option<World> {
        let cfg = tempfile::tempdir().unwrap();
        std::fs::create_dir(cfg.path().join("profiles")).unwrap();
        std::fs::write(cfg.path().join("rules.toml"), RULES).unwrap();
        let toml = format!(
            r#"rules_file = "rules.toml"
[profiles]
dir = "profiles"
[notify]
poll_ms = 200

[[notify.webhook]]
name = "oncall"
url = "{oncall}"
secret = "{ONCALL_SECRET}"
timeout_ms = 1000
max_attempts = {max_attempts}
backoff_initial_ms = 50
backoff_max_ms = {backoff_max_ms}

[[notify.webhook]]
name = "sms"
url = "{sms}"
secret_env = "TEST_SMS_SECRET"
format = "sms"
to = ["{p0}", "{p1}"]
triggers = ["escalated"]
timeout_ms = 1000
max_attempts = {max_attempts}
backoff_initial_ms = 50
backoff_max_ms = {backoff_max_ms}

[[notify.webhook]]
name = "export"
url = "{export}"
secret = "{ONCALL_SECRET}"
format = "export"
timeout_ms = 1000
backoff_initial_ms = 50
backoff_max_ms = {backoff_max_ms}
"#,
            oncall = rx.url("oncall"),
            sms = rx.url("sms"),
            export = rx.url("export"),
            p0 = PHONES[0],
            p1 = PHONES[1],
        );
        std::fs::write(cfg.path().join("anxin.toml"), toml).unwrap();
        let mut opts = EngineOpts {
            config: Some(cfg.path().join("anxin.toml")),
            ..Default::default()
        };
        opts.env
            .push(("TEST_SMS_SECRET".to_owned(), SMS_SECRET.to_owned()));
        for (k, v) in env {
            opts.env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let db = backend.configure(&mut opts).await?;
        let e = Engine::start(opts).await;
        Some(World {
            e,
            _cfg: cfg,
            _db: db,
        })
    }
}

/// Sends `body` as JSON with `token`.
async fn call(
    e: &Engine,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{}{path}", e.http))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The ids of the open SOS alerts, once there are `n`.
async fn sos_alerts(e: &Engine, n: usize) -> BTreeSet<i64> {
    poll(&format!("{n} SOS alerts"), || async move {
        let ids: BTreeSet<i64> = e
            .alerts("status=open&kind=sos")
            .await
            .iter()
            .filter_map(|a| a["id"].as_i64())
            .collect();
        (ids.len() == n).then_some(ids)
    })
    .await
}

/// Waits until `endpoint` got `n` successful deliveries, and checks that each delivery id and
/// each notification got exactly one.
async fn exactly_once(rx: &Receiver, endpoint: &str, n: usize) -> Vec<Got> {
    let got = poll(&format!("{n} deliveries to {endpoint}"), || async move {
        let ok = rx.ok(endpoint);
        (ok.len() >= n).then_some(ok)
    })
    .await;
    assert_eq!(got.len(), n, "{endpoint}: {got:#?}");
    let deliveries: BTreeSet<&str> = got.iter().map(|g| g.delivery.as_str()).collect();
    let notifications: BTreeSet<&str> = got.iter().map(|g| g.notification.as_str()).collect();
    assert_eq!(deliveries.len(), n, "one 2xx per delivery: {got:#?}");
    assert_eq!(notifications.len(), n, "one 2xx per notification: {got:#?}");
    got
}

/// The deliveries the store shows delivered (`filter`: more of the query string), once there
/// are `n` (a 2xx reaches the store a moment after the receiver gave it).
async fn recorded(e: &Engine, filter: &str, n: usize) -> Vec<Value> {
    let items = poll(
        &format!("{n} deliveries recorded as delivered"),
        || async move {
            let (s, v) = e
                .get(&format!("/api/outbox?status=delivered&limit=1000{filter}"))
                .await;
            assert_eq!(s, 200, "{v}");
            let items = v["items"].as_array().cloned().unwrap_or_default();
            (items.len() >= n).then_some(items)
        },
    )
    .await;
    assert_eq!(items.len(), n, "{items:#?}");
    items
}

/// (alert id, cause, level) of each JSON notification.
fn triples(got: &[Got]) -> BTreeSet<(i64, String, i64)> {
    got.iter()
        .map(|g| {
            (
                g.body["alert"]["id"].as_i64().unwrap(),
                g.body["cause"].as_str().unwrap().to_owned(),
                g.body["level"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The triples three escalation-free-then-escalated SOS alerts must produce.
fn expected(alerts: &BTreeSet<i64>, causes: &[(&str, i64)]) -> BTreeSet<(i64, String, i64)> {
    alerts
        .iter()
        .flat_map(|a| causes.iter().map(move |(c, l)| (*a, (*c).to_owned(), *l)))
        .collect()
}

const ALL_CAUSES: [(&str, i64); 3] = [("opened", 0), ("escalated", 1), ("escalated", 2)];
const ESCALATIONS: [(&str, i64); 2] = [("escalated", 1), ("escalated", 2)];

/// A receiver that fails the first two attempts of every delivery (a 500, then no answer in
/// time) gets each notification exactly once; SMS-shaped bodies go to the SMS endpoint; a
/// high alert notifies nobody.
async fn each_notification_arrives_exactly_once_after_failed_attempts(backend: Backend) {
    let mut rx = Receiver::new(Mode::Flaky);
    rx.up().await;
    let Some(w) = World::start(backend, &rx, 10, 200, &[]).await else {
        return;
    };
    let e = &w.e;
    for d in ["p1", "p2", "p3"] {
        e.publish(d, r#"{"type":"sos"}"#);
    }
    e.publish("leak1", r#"{"type":"water","state":"leak"}"#);
    let alerts = sos_alerts(e, 3).await;

    let oncall = exactly_once(&rx, "oncall", 9).await;
    assert_eq!(triples(&oncall), expected(&alerts, &ALL_CAUSES));
    for g in &oncall {
        assert_eq!(
            rx.attempts("oncall", &g.delivery),
            3,
            "500, timeout, 200: {g:?}"
        );
        let a = &g.body["alert"];
        assert_eq!(
            (a["kind"].as_str(), a["severity"].as_str()),
            (Some("sos"), Some("critical"))
        );
        assert_eq!(a["title"], "SOS button pressed");
        assert!(a["device_id"].as_str().unwrap().starts_with('p'), "{g:?}");
    }
    let sms = exactly_once(&rx, "sms", 6).await;
    for g in &sms {
        assert_eq!(g.body["to"], json!(PHONES), "{g:?}");
        let text = g.body["text"].as_str().unwrap();
        assert!(
            text.starts_with("[anxin] ESCALATED to level ") && text.contains("critical sos"),
            "{text}"
        );
        assert_eq!(
            g.body.as_object().unwrap().len(),
            2,
            "an SMS gateway's shape: {g:?}"
        );
    }
    assert!(rx.bad().is_empty(), "{:?}", rx.bad());

    // The outbox agrees: all delivered, none pending or dead; the water leak made none.
    let items = recorded(e, "", 15).await;
    assert!(items.iter().all(|d| d["attempts"] == 3
        && d["status"] == "delivered"
        && alerts.contains(&d["alert_id"].as_i64().unwrap())));
    for status in ["pending", "dead"] {
        let (_, v) = e.get(&format!("/api/outbox?status={status}")).await;
        assert_eq!(v["items"], json!([]), "{status}: {v}");
    }
    let m = |endpoint: &str, result: &str| {
        format!("anxin_outbox_deliveries_total{{endpoint=\"{endpoint}\",result=\"{result}\"}}")
    };
    // Counted just after the store has it.
    e.wait_metric(&m("oncall", "delivered"), 9.0).await;
    e.wait_metric(&m("sms", "delivered"), 6.0).await;
    assert_eq!(e.metric(&m("oncall", "delivered")).await, 9.0);
    assert_eq!(e.metric(&m("sms", "delivered")).await, 6.0);
    assert_eq!(e.metric(&m("oncall", "failed")).await, 18.0);
    assert_eq!(e.metric(&m("oncall", "dead")).await, 0.0);
    assert_eq!(
        e.metric("anxin_outbox_delivery_latency_seconds_count{endpoint=\"oncall\"}")
            .await,
        9.0
    );
    // Nothing more can come: nothing is pending (above) and every escalation step is spent.
    for id in &alerts {
        let (_, a) = e.get(&format!("/api/alerts/{id}")).await;
        assert_eq!(a["escalation_level"], 2, "{a}");
    }
    assert_eq!(rx.ok("oncall").len(), 9);
    assert_eq!(rx.ok("sms").len(), 6);
}
on_both_stores!(each_notification_arrives_exactly_once_after_failed_attempts);

/// With the receiver down (connections refused) while alerts open and escalate, every
/// attempt fails and is retried with backoff; the outbox shows them pending, with their
/// error, and its age grows. The receiver stays down until every delivery has failed seven
/// times — what a minute down costs with the shipped backoff (1 s doubling) — and the oldest
/// notification has waited a full minute of wall time (here retried every second, 50 ms
/// doubling to at most 1 s). When it comes back, each notification arrives exactly once and
/// the outbox is empty again.
async fn nothing_is_lost_while_the_receiver_is_down(backend: Backend) {
    let mut rx = Receiver::new(Mode::Accept);
    let Some(w) = World::start(backend, &rx, 1000, 1000, &[]).await else {
        return;
    };
    let e = &w.e;
    for d in ["p1", "p2", "p3"] {
        e.publish(d, r#"{"type":"sos"}"#);
    }
    let alerts = sos_alerts(e, 3).await;
    // Down for long enough that every notification (escalations included) has failed many
    // times: 15 deliveries, each retried until the receiver is back.
    let down = poll("every delivery failing more than once", || async move {
        let (_, v) = e.get("/api/outbox?status=pending&limit=1000").await;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 15 && items.iter().all(|d| d["attempts"].as_i64() > Some(2)))
            .then_some(items)
    })
    .await;
    for d in &down {
        let err = d["last_error"].as_str().unwrap_or_default().to_lowercase();
        assert!(err.contains("connect"), "{d}");
        assert!(d["next_attempt_at"].is_string(), "{d}");
    }
    // The gauges are refreshed from the store at least twice a second.
    poll("the gauges to show what waits", || async move {
        let pending = e.metric("anxin_outbox_pending_deliveries").await;
        let age = e.metric("anxin_outbox_oldest_pending_age_seconds").await;
        (pending == 15.0 && age > 0.0).then_some(())
    })
    .await;
    // Still down until every delivery has failed as often as a minute's outage makes it fail
    // with the shipped backoff (attempts at 0, 1, 3, 7, 15, 31 and 63 s: seven).
    poll("seven failed attempts at every delivery", || async move {
        let (_, v) = e.get("/api/outbox?status=pending&limit=1000").await;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 15 && items.iter().all(|d| d["attempts"].as_i64() >= Some(7))).then_some(())
    })
    .await;
    // And down for a whole minute of wall time, as the engine itself measures the oldest
    // pending notification's age (a poll with a deadline of its own, longer than the shared one).
    let start = std::time::Instant::now();
    while e.metric("anxin_outbox_oldest_pending_age_seconds").await < 60.0 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the outbox age never reached 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(rx.ok("oncall").is_empty() && rx.ok("sms").is_empty());

    rx.up().await;
    let oncall = exactly_once(&rx, "oncall", 9).await;
    assert_eq!(triples(&oncall), expected(&alerts, &ALL_CAUSES));
    exactly_once(&rx, "sms", 6).await;
    assert!(rx.bad().is_empty(), "{:?}", rx.bad());
    poll("the outbox to empty", || async move {
        let pending = e.metric("anxin_outbox_pending_deliveries").await;
        let age = e.metric("anxin_outbox_oldest_pending_age_seconds").await;
        (pending == 0.0 && age == 0.0).then_some(())
    })
    .await;
    assert_eq!(e.metric("anxin_outbox_dead_letters").await, 0.0);
    recorded(e, "", 15).await;
}
on_both_stores!(nothing_is_lost_while_the_receiver_is_down);

/// Killed (SIGKILL) after the alert and its notifications were committed and before the
/// dispatcher fanned out or sent anything: the next start delivers each of them, once.
async fn a_sigkill_between_commit_and_delivery_still_delivers(backend: Backend) {
    let mut rx = Receiver::new(Mode::Accept);
    rx.up().await;
    let marker = tempfile::tempdir().unwrap();
    let hold = marker.path().join("holding");
    let hold_s = hold.display().to_string();
    let Some(mut w) = World::start(
        backend,
        &rx,
        10,
        200,
        &[("ANXIN_TEST_HOLD_OUTBOX", hold_s.as_str())],
    )
    .await
    else {
        return;
    };
    poll("the outbox hook to hold", || async {
        hold.exists().then_some(())
    })
    .await;
    w.e.publish("p1", r#"{"type":"sos"}"#);
    let alerts = sos_alerts(&w.e, 1).await;
    let alert = *alerts.first().unwrap();
    // Committed, escalated twice (all three notifications written), nothing sent.
    poll("two escalations", || async {
        let (_, a) = w.e.get(&format!("/api/alerts/{alert}")).await;
        (a["escalation_level"] == 2).then_some(())
    })
    .await;
    assert!(rx.ok("oncall").is_empty() && rx.ok("sms").is_empty());
    w.e.kill();

    w.e.remove_env("ANXIN_TEST_HOLD_OUTBOX");
    w.e.spawn(&[]);
    w.e.wait_ready().await;
    let oncall = exactly_once(&rx, "oncall", 3).await;
    assert_eq!(triples(&oncall), expected(&alerts, &ALL_CAUSES));
    let sms = exactly_once(&rx, "sms", 2).await;
    assert_eq!(sms.len(), ESCALATIONS.len());
    for g in oncall.iter().chain(&sms) {
        assert_eq!(rx.attempts(&g.endpoint, &g.delivery), 1, "{g:?}");
    }
    // What the receiver learns from the body matches the store.
    let levels: BTreeMap<String, i64> = oncall
        .iter()
        .map(|g| {
            (
                format!("{}{}", g.body["cause"], g.body["level"]),
                g.body["alert"]["escalation_level"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        levels,
        BTreeMap::from([
            ("\"escalated\"1".to_owned(), 1),
            ("\"escalated\"2".to_owned(), 2),
            ("\"opened\"0".to_owned(), 0),
        ]),
        "each payload is the alert as its notification's commit saw it"
    );
}
on_both_stores!(a_sigkill_between_commit_and_delivery_still_delivers);

/// Killed (SIGKILL) while the receiver refuses every attempt: the deliveries, failed and
/// waiting for their next attempt, are made after the restart, once the receiver accepts.
async fn a_sigkill_while_the_receiver_refuses_still_delivers(backend: Backend) {
    let mut rx = Receiver::new(Mode::Refuse);
    rx.up().await;
    let Some(mut w) = World::start(backend, &rx, 1000, 1000, &[]).await else {
        return;
    };
    w.e.publish("p1", r#"{"type":"sos"}"#);
    let alerts = sos_alerts(&w.e, 1).await;
    poll("every delivery refused at least once", || async {
        let (_, v) = w.e.get("/api/outbox?status=pending").await;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 5
            && items.iter().all(|d| {
                d["attempts"].as_i64() >= Some(1)
                    && d["last_error"].as_str().is_some_and(|e| e.contains("500"))
            }))
        .then_some(())
    })
    .await;
    w.e.kill();
    rx.set_mode(Mode::Accept);
    w.e.spawn(&[]);
    w.e.wait_ready().await;
    let oncall = exactly_once(&rx, "oncall", 3).await;
    assert_eq!(triples(&oncall), expected(&alerts, &ALL_CAUSES));
    exactly_once(&rx, "sms", 2).await;
    recorded(&w.e, "", 5).await;
}
on_both_stores!(a_sigkill_while_the_receiver_refuses_still_delivers);

/// A delivery that fails `max_attempts` times is a dead letter: listed with its attempts and
/// last error, counted in /metrics, re-driven by a supervisor or admin (operators and
/// installers are refused), then delivered.
async fn dead_letters_are_listed_and_redriven(backend: Backend) {
    let mut rx = Receiver::new(Mode::Refuse);
    rx.up().await;
    let Some(w) = World::start(backend, &rx, 2, 200, &[]).await else {
        return;
    };
    let e = &w.e;
    let mut tokens = HashMap::new();
    for role in ["operator", "supervisor", "installer"] {
        let login = format!("{role}.wang");
        let (s, u) = call(
            e,
            &e.token,
            Method::POST,
            "/api/users",
            Some(
                json!({"login": login, "name": format!("Wang {role}"), "role": role,
                        "regions": ["tianhe"], "password": "a-long-password"}),
            ),
        )
        .await;
        assert_eq!(s, 201, "{u}");
        let resp = reqwest::Client::new()
            .post(format!("http://{}/api/login", e.http))
            .json(&json!({"login": login, "password": "a-long-password"}))
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        tokens.insert(role, body["token"].as_str().unwrap().to_owned());
    }
    // The pendant of a resident of the supervisor's region: another region's deliveries
    // would not be theirs to see.
    let (s, v) = e
        .put(
            "/api/residents/r-p1",
            json!({"name": "Li", "region": "tianhe"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = e
        .post(
            "/api/devices",
            json!([{"id": "p1", "type": "pendant", "resident_id": "r-p1"}]),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    e.publish("p1", r#"{"type":"sos"}"#);
    sos_alerts(e, 1).await;
    // One opened + two escalations to oncall, two escalations to sms: five dead letters.
    let dead = poll("five dead letters", || async {
        let (s, v) = call(
            e,
            &tokens["supervisor"],
            Method::GET,
            "/api/outbox?status=dead",
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let items = v["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 5).then_some(items)
    })
    .await;
    for d in &dead {
        assert_eq!(d["attempts"], 2, "{d}");
        assert_eq!(d["status"], "dead", "{d}");
        assert!(d["next_attempt_at"].is_null(), "{d}");
        let err = d["last_error"].as_str().unwrap();
        assert!(
            err.contains("500") && err.contains("receiver broken"),
            "{err}"
        );
    }
    assert!(rx.ok("oncall").is_empty());
    e.wait_metric("anxin_outbox_dead_letters", 5.0).await;
    assert_eq!(
        e.metric("anxin_outbox_deliveries_total{endpoint=\"oncall\",result=\"dead\"}")
            .await,
        3.0
    );

    // Who may look and re-drive; what is refused and why.
    let first = dead[0]["id"].as_i64().unwrap();
    for role in ["operator", "installer"] {
        let (s, v) = call(e, &tokens[role], Method::GET, "/api/outbox", None).await;
        assert_eq!(s, 403, "{role}: {v}");
        let (s, v) = call(
            e,
            &tokens[role],
            Method::POST,
            &format!("/api/outbox/{first}/redrive"),
            None,
        )
        .await;
        assert_eq!(s, 403, "{role}: {v}");
    }
    let (s, v) = e.get("/api/outbox?status=lost").await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("status"), "{v}");
    let (s, v) = e.get("/api/outbox?colour=red").await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = e.post("/api/outbox/999999/redrive", json!({})).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = e.post("/api/outbox/abc/redrive", json!({})).await;
    assert_eq!(s, 400, "{v}");
    // The dead-letter list pages.
    let (_, page) = e.get("/api/outbox?status=dead&limit=2").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let next = page["next"].as_i64().unwrap();
    let (_, rest) = e
        .get(&format!("/api/outbox?status=dead&limit=10&cursor={next}"))
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 3, "{rest}");

    // Fixed receiver: a supervisor re-drives one, an admin the rest; each arrives once.
    rx.set_mode(Mode::Accept);
    let (s, v) = call(
        e,
        &tokens["supervisor"],
        Method::POST,
        &format!("/api/outbox/{first}/redrive"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["attempts"].as_i64()),
        (Some("pending"), Some(0)),
        "{v}"
    );
    // The rest in one go per endpoint; an endpoint that is not configured is refused.
    let (s, v) = e
        .post("/api/outbox/redrive", json!({"endpoint": "pager"}))
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("pager"), "{v}");
    let (s, v) = e.post("/api/outbox/redrive", json!({})).await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = call(
        e,
        &tokens["operator"],
        Method::POST,
        "/api/outbox/redrive",
        Some(json!({"endpoint": "sms"})),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    for (endpoint, n) in [("oncall", 2), ("sms", 2)] {
        let (s, v) = e
            .post("/api/outbox/redrive", json!({"endpoint": endpoint}))
            .await;
        assert_eq!((s, &v["redriven"]), (200, &json!(n)), "{endpoint}: {v}");
    }
    exactly_once(&rx, "oncall", 3).await;
    exactly_once(&rx, "sms", 2).await;
    poll("no dead letters", || async {
        (e.metric("anxin_outbox_dead_letters").await == 0.0).then_some(())
    })
    .await;
    let (s, v) = e
        .post(&format!("/api/outbox/{first}/redrive"), json!({}))
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("delivered"), "{v}");
    recorded(e, "&endpoint=sms", 2).await;
}
on_both_stores!(dead_letters_are_listed_and_redriven);

/// The export webhook (`format = "export"`): the feed pushed page by page, each page sent
/// again until the endpoint answers 2xx (here: 500, then too late, then 200, for every page),
/// in feed order; the latest version of every alert arrives; after a SIGKILL the push goes
/// on from the last acknowledged page, not from the start.
async fn the_export_feed_is_pushed_in_order_and_resumes_after_a_restart(backend: Backend) {
    let mut rx = Receiver::new(Mode::Flaky);
    rx.up().await;
    let Some(mut w) = World::start(backend, &rx, 1000, 200, &[]).await else {
        return;
    };
    w.e.publish("p1", r#"{"type":"sos"}"#);
    w.e.publish("p2", r#"{"type":"water","state":"leak"}"#);
    let sos = *sos_alerts(&w.e, 1).await.iter().next().unwrap();
    let (s, v) = w.e.post(&format!("/api/alerts/{sos}/ack"), json!({})).await;
    assert_eq!(s, 200, "{v}");
    // The newest version of each item pushed so far, and the cursors in the order pushed.
    let pushed = |rx: &Receiver| {
        let mut latest: HashMap<(String, i64), Value> = HashMap::new();
        let mut cursors: Vec<String> = Vec::new();
        for g in rx.ok("export") {
            assert_eq!(g.body["format"], json!("anxin.export"), "{:?}", g.body);
            for item in g.body["items"].as_array().unwrap() {
                let key = (
                    item["type"].as_str().unwrap().to_owned(),
                    item["data"]["id"].as_i64().unwrap(),
                );
                latest.insert(key, item["data"].clone());
                cursors.push(item["cursor"].as_str().unwrap().to_owned());
            }
        }
        (latest, cursors)
    };
    let rxr = &rx;
    let latest = poll("both alerts pushed, the SOS acknowledged", || async move {
        let (latest, _) = pushed(rxr);
        let sos_now = latest.get(&("alert".to_owned(), sos))?;
        (latest.len() >= 2 && sos_now["status"] == json!("acknowledged")).then_some(latest)
    })
    .await;
    assert!(
        latest.values().any(|a| a["kind"] == json!("water")),
        "{latest:?}"
    );
    let key = |c: &str| -> (i64, u8, i64) {
        let p: Vec<&str> = c.split('.').collect();
        (
            p[0].parse().unwrap(),
            p[1].parse().unwrap(),
            p[2].parse().unwrap(),
        )
    };
    let (_, cursors) = pushed(&rx);
    assert!(
        cursors.windows(2).all(|w| key(&w[0]) < key(&w[1])),
        "pages out of feed order: {cursors:?}"
    );
    // Each page was refused twice before its 2xx, and the same page came each time.
    for g in rx.ok("export") {
        assert_eq!(rx.attempts("export", &g.delivery), 3, "{}", g.delivery);
    }
    assert!(rx.bad().is_empty(), "{:?}", rx.bad());

    // Killed and started again: the push resumes after the last acknowledged page.
    let before = rx.ok("export").len();
    let last = key(cursors.last().unwrap());
    w.e.kill();
    rx.set_mode(Mode::Accept);
    w.e.spawn(&[]);
    w.e.wait_ready().await;
    w.e.publish("p3", r#"{"type":"sos"}"#);
    let rxr = &rx;
    let after = poll("the new SOS pushed after the restart", || async move {
        let got = rxr.ok("export");
        let new: Vec<Got> = got[before..].to_vec();
        new.iter()
            .any(|g| {
                g.body["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i["data"]["device_id"] == json!("p3"))
            })
            .then_some(new)
    })
    .await;
    for g in &after {
        for item in g.body["items"].as_array().unwrap() {
            let c = key(item["cursor"].as_str().unwrap());
            assert!(
                c > last,
                "{c:?} was pushed before the restart (last {last:?})"
            );
        }
    }
}
on_both_stores!(the_export_feed_is_pushed_in_order_and_resumes_after_a_restart);
