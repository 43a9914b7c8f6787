//! The engine end to end on its zero-config parts: the embedded broker and SQLite, driven the
//! way an installer would, with `mosquitto_pub`, and read back through the operator API.

mod common;

use common::{Engine, EngineOpts, poll};
use serde_json::{Value, json};

async fn alert_of(e: &Engine, device: &str, kind: &str) -> Value {
    poll(&format!("{kind} alert of {device}"), || async move {
        e.alerts(&format!("device_id={device}&kind={kind}"))
            .await
            .into_iter()
            .next()
    })
    .await
}

/// Waits until the engine has stored `n` events in total (accepted + duplicate counters).
async fn wait_processed(e: &Engine, n: f64) {
    poll("events processed", || async move {
        let done = e.metric("anxin_ingest_events_accepted_total").await
            + e.metric("anxin_ingest_duplicates_total").await
            + e.metric("anxin_ingest_rejected_total").await;
        (done >= n).then_some(())
    })
    .await
}

#[tokio::test]
async fn a_published_sos_becomes_one_open_critical_alert() {
    let e = Engine::start(EngineOpts::default()).await;
    let sent = std::time::Instant::now();
    e.publish("d1", r#"{"type":"sos"}"#);
    let a = alert_of(&e, "d1", "sos").await;
    eprintln!("SOS visible in the API after {:?}", sent.elapsed());
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["status"], "open");
    assert_eq!(a["count"], 1);
    assert_eq!(a["rule"], "sos");
    assert_eq!(a["resident_id"], Value::Null);
    assert_eq!(e.alerts("status=open").await.len(), 1);
}

#[tokio::test]
async fn duplicates_count_once_new_presses_and_restarts_count_again() {
    let e = Engine::start(EngineOpts::default()).await;
    let press = |seq: u32, ts: &str| format!(r#"{{"type":"sos","seq":{seq},"ts":"{ts}"}}"#);
    e.publish("d1", &press(1, "2026-11-23T08:00:00Z"));
    e.publish("d1", &press(1, "2026-11-23T08:00:00Z"));
    wait_processed(&e, 2.0).await;
    let a = alert_of(&e, "d1", "sos").await;
    assert_eq!(a["count"], 1, "the same press delivered twice counts once");
    assert_eq!(e.metric("anxin_ingest_duplicates_total").await, 1.0);

    e.publish("d1", &press(2, "2026-11-23T08:00:05Z"));
    wait_processed(&e, 3.0).await;
    assert_eq!(
        alert_of(&e, "d1", "sos").await["count"],
        2,
        "a new press counts"
    );

    // The device rebooted: its counter starts again at 1, with a new time.
    e.publish("d1", &press(1, "2026-11-23T09:30:00Z"));
    wait_processed(&e, 4.0).await;
    let a = alert_of(&e, "d1", "sos").await;
    assert_eq!(a["count"], 3, "a restarted device's SOS still counts");
    assert_eq!(e.alerts("kind=sos").await.len(), 1, "still one alert");

    let (_, full) = e.get(&format!("/api/alerts/{}", a["id"])).await;
    let actions: Vec<&str> = full["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["opened", "duplicate", "event", "event"]);
    assert_eq!(full["device"]["id"], "d1");
}

/// Without seq or ts only the transport can call a message a redelivery: two identical falls
/// a second apart are two falls, and the README's own `{"type":"sos"}` pressed again after the
/// operator resolved the first opens a new alert.
#[tokio::test]
async fn identical_payloads_without_seq_or_ts_are_each_a_press() {
    let e = Engine::start(EngineOpts::default()).await;
    e.publish("d2", r#"{"type":"fall"}"#);
    e.publish("d2", r#"{"type":"fall"}"#);
    wait_processed(&e, 2.0).await;
    let a = alert_of(&e, "d2", "fall").await;
    assert_eq!(a["count"], 2, "two falls count twice");
    assert_eq!(e.metric("anxin_ingest_duplicates_total").await, 0.0);

    e.publish("d2", r#"{"type":"sos"}"#);
    wait_processed(&e, 3.0).await;
    let first = alert_of(&e, "d2", "sos").await;
    let (status, _) = e
        .post(
            &format!("/api/alerts/{}/resolve", first["id"]),
            serde_json::json!({"outcome": "false_alarm"}),
        )
        .await;
    assert_eq!(status, 200);
    e.publish("d2", r#"{"type":"sos"}"#);
    wait_processed(&e, 4.0).await;
    let open = e.alerts("status=open&kind=sos&device_id=d2").await;
    assert_eq!(
        open.len(),
        1,
        "the second press opened a new alert: {open:?}"
    );
    assert_ne!(open[0]["id"], first["id"]);
}

#[tokio::test]
async fn bad_input_is_counted_stored_and_never_stops_the_engine() {
    let e = Engine::start(EngineOpts::default()).await;
    e.publish("d3", "{not json");
    e.publish("d3", r#"{"type":"teleport"}"#);
    e.publish(
        "d3",
        r#"[{"type":"heartbeat"},{"type":"door","state":"ajar"},7,{"type":"water","state":"leak"}]"#,
    );
    publish_raw(
        &e,
        &format!("{}/devices/bad id/events", e.root),
        r#"{"type":"sos"}"#,
    );
    // A later valid event of the same device shows the engine kept going.
    e.publish("d3", r#"{"type":"gas","state":"alarm","gas":"co"}"#);
    alert_of(&e, "d3", "gas").await;
    alert_of(&e, "d3", "water").await;
    let e = &e;
    let m = |r: &'static str| async move {
        e.metric(&format!("anxin_ingest_rejected_total{{reason=\"{r}\"}}"))
            .await
    };
    assert_eq!(m("malformed_json").await, 1.0);
    assert_eq!(m("unknown_type").await, 1.0);
    assert_eq!(m("bad_field").await, 1.0);
    assert_eq!(m("not_an_object").await, 1.0);
    assert_eq!(m("bad_topic").await + m("bad_device_id").await, 1.0);
    assert_eq!(e.metric("anxin_ingest_events_accepted_total").await, 3.0);
    let log = e.log();
    assert!(
        log.contains("unknown type \\\"teleport\\\"") || log.contains("unknown type \"teleport\""),
        "log names the reason:\n{log}"
    );
    assert!(log.contains("d3"), "log names the device");
}

fn publish_raw(e: &Engine, topic: &str, payload: &str) {
    common::publish(e.mqtt_port(), topic, payload);
}

#[tokio::test]
async fn operators_ack_and_resolve_conditionally() {
    let e = Engine::start(EngineOpts::default()).await;
    e.publish("d4", r#"{"type":"water","state":"leak"}"#);
    let id = alert_of(&e, "d4", "water").await["id"].as_i64().unwrap();

    let unauth = reqwest::get(format!("http://{}/api/alerts", e.http))
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);

    let (s, a) = e.post(&format!("/api/alerts/{id}/ack"), json!({})).await;
    assert_eq!((s, a["status"].as_str()), (200, Some("acknowledged")));
    let (s, _) = e.post(&format!("/api/alerts/{id}/ack"), json!({})).await;
    assert_eq!(s, 409, "a second operator cannot take it");
    let (s, _) = e
        .post(
            &format!("/api/alerts/{id}/resolve"),
            json!({"outcome": "teleported"}),
        )
        .await;
    assert_eq!(s, 422);
    let (s, a) = e
        .post(
            &format!("/api/alerts/{id}/resolve"),
            json!({"outcome": "carer_visited", "note": "pipe fixed"}),
        )
        .await;
    assert_eq!((s, a["status"].as_str()), (200, Some("resolved")));
    let (s, _) = e
        .post(
            &format!("/api/alerts/{id}/resolve"),
            json!({"outcome": "other"}),
        )
        .await;
    assert_eq!(s, 409);
    let (s, _) = e.post("/api/alerts/999999/ack", json!({})).await;
    assert_eq!(s, 404);
    assert!(e.alerts("status=open").await.is_empty());
    assert_eq!(e.alerts("status=resolved").await.len(), 1);
}

#[tokio::test]
async fn operators_record_calls_and_notes_and_a_refused_claim_names_the_holder() {
    let e = Engine::start(EngineOpts::default()).await;
    e.publish("d5", r#"{"type":"sos"}"#);
    let id = alert_of(&e, "d5", "sos").await["id"].as_i64().unwrap();

    let (s, a) = e
        .post(
            &format!("/api/alerts/{id}/calls"),
            json!({"to": "resident", "outcome": "no_answer"}),
        )
        .await;
    assert_eq!((s, a["status"].as_str()), (201, Some("open")), "{a}");
    for (body, names) in [
        (json!({"to": "cousin", "outcome": "answered"}), "cousin"),
        (json!({"to": "120", "outcome": "hung_up"}), "hung_up"),
        (
            json!({"to": "120", "outcome": "answered", "when": "now"}),
            "when",
        ),
        (json!({"to": "120"}), "outcome"),
    ] {
        let (s, err) = e.post(&format!("/api/alerts/{id}/calls"), body).await;
        assert_eq!(s, 422, "{err}");
        assert!(err["error"].as_str().unwrap().contains(names), "{err}");
    }
    let (s, _) = e
        .post(
            "/api/alerts/999999/calls",
            json!({"to": "120", "outcome": "answered"}),
        )
        .await;
    assert_eq!(s, 404);

    let (s, a) = e.post(&format!("/api/alerts/{id}/ack"), json!({})).await;
    assert_eq!((s, a["status"].as_str()), (200, Some("acknowledged")));
    let (s, err) = e.post(&format!("/api/alerts/{id}/ack"), json!({})).await;
    assert_eq!((s, err["holder"].as_str()), (409, Some("admin")), "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("acknowledged by admin"),
        "{err}"
    );

    let (s, _) = e
        .post(
            &format!("/api/alerts/{id}/calls"),
            json!({"to": "120", "outcome": "answered", "note": "ambulance on its way"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = e
        .post(
            &format!("/api/alerts/{id}/notes"),
            json!({"text": "Door code 4711 given to crew."}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, err) = e
        .post(&format!("/api/alerts/{id}/notes"), json!({"text": ""}))
        .await;
    assert_eq!(s, 422, "{err}");

    let alert = alert_of(&e, "d5", "sos").await;
    let (s, full) = e.get(&format!("/api/alerts/{}", alert["id"])).await;
    assert_eq!(s, 200);
    let steps = common::operator_steps(&full);
    let want: Vec<(String, String)> = [
        ("admin", "call"),
        ("admin", "acknowledged"),
        ("admin", "call"),
        ("admin", "note"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(steps, want, "{full}");
}

#[tokio::test]
async fn the_live_feed_announces_new_alerts() {
    use futures_util::StreamExt;
    let e = Engine::start(EngineOpts::default()).await;
    let resp = reqwest::Client::new()
        .get(format!("http://{}/api/stream", e.http))
        .bearer_auth(&e.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    e.publish("d5", r#"{"type":"sos"}"#);
    let mut seen = String::new();
    let got = tokio::time::timeout(common::DEADLINE, async {
        while let Some(Ok(chunk)) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: alert") && seen.contains("\"opened\"") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "stream so far: {seen}");
    assert!(seen.contains("\"device_id\":\"d5\""));
}

#[tokio::test]
async fn alerts_list_most_urgent_first_and_pages_with_a_cursor() {
    let e = Engine::start(EngineOpts::default()).await;
    e.publish("p1", r#"{"type":"battery","percent":5}"#);
    e.publish("p2", r#"{"type":"water","state":"leak"}"#);
    e.publish("p3", r#"{"type":"sos"}"#);
    poll("three alerts", || async {
        (e.alerts("").await.len() == 3).then_some(())
    })
    .await;
    let kinds: Vec<String> = e
        .alerts("")
        .await
        .iter()
        .map(|a| a["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["sos", "water", "low_battery"]);
    let mut cursor = String::new();
    let mut walked = Vec::new();
    loop {
        let (_, page) = e.get(&format!("/api/alerts?limit=1{cursor}")).await;
        walked.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["kind"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(walked, kinds);
    let (s, _) = e.get("/api/alerts?status=bogus").await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn the_embedded_broker_refuses_a_taken_port_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anxin"))
        .env("ANXIN_MQTT_URL", format!("embedded://127.0.0.1:{port}"))
        .env("ANXIN_DATA_DIR", dir.path())
        .env(
            "ANXIN_HTTP_ADDR",
            format!("127.0.0.1:{}", common::free_port()),
        )
        .env("ANXIN_ADMIN_TOKEN", "test-token-0123456789")
        .env("ANXIN_TCP_LISTEN", "watch=off,gt06=off,jt808=off,trv=off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot start the embedded MQTT broker"),
        "{err}"
    );
    assert!(
        err.contains("ANXIN_MQTT_URL=mqtt://"),
        "says how to use that broker: {err}"
    );
}

#[tokio::test]
async fn check_config_reports_every_problem_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("anxin.toml"),
        "[mqtt]\nurl = \"ftp://x\"\nrecieve_maximum = 10\n[pipeline]\nshards = 0\n[devices]\nreport_interval = { watch = \"10\" }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[rule]]\nname = \"x\"\nevent = \"sos\"\nseverity = \"urgent\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anxin"))
        .arg("check-config")
        .arg("--config")
        .arg(dir.path().join("anxin.toml"))
        .env_remove("ANXIN_MQTT_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "anxin.toml:2: mqtt.url",
        "anxin.toml:3: mqtt.recieve_maximum: unknown key",
        "anxin.toml:5: pipeline.shards",
        "anxin.toml:7: devices.report_interval.watch: duration \"10\" needs a unit",
        "rules.toml:4: rule[0].severity",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_anxin"))
        .arg("check-config")
        .arg("--config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/anxin.toml"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
