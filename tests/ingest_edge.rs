//! The ingest edge against what an adversarial buyer tried (issue 8): alarms carrying bad
//! optional fields, byte-order marks and shouting type names; identical presses without
//! `seq`; payloads over the size limit; retained alarms replayed at every restart; unknown
//! devices by the thousand; device clocks years off. Through the real binary and a real
//! broker — a private Mosquitto from the shipped config, the machine's own Mosquitto where a
//! broker that lets large payloads through is needed, or the embedded one.

mod common;

use common::{Engine, EngineOpts, Mosquitto, poll, service_url};
use serde_json::{Value, json};

/// The alerts of `device` once there is at least one.
async fn alerts_of(e: &Engine, device: &str) -> Vec<Value> {
    let q = format!("device_id={device}");
    poll(&format!("an alert for {device}"), || {
        let q = q.clone();
        async move {
            let a = e.alerts(&q).await;
            (!a.is_empty()).then_some(a)
        }
    })
    .await
}

async fn detail(e: &Engine, alert: &Value) -> Value {
    let (status, body) = e.get(&format!("/api/alerts/{}", alert["id"])).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Shows that everything `device` sent before was processed: a later heartbeat of the same
/// device (order per device) is stored.
async fn flush(e: &Engine, device: &str) {
    let before = e.metric("anxin_ingest_events_accepted_total").await;
    e.publish(device, r#"{"type":"heartbeat"}"#);
    e.wait_metric("anxin_ingest_events_accepted_total", before + 1.0)
        .await;
}

async fn rejected(e: &Engine, reason: &str) -> f64 {
    e.metric(&format!(
        "anxin_ingest_rejected_total{{reason=\"{reason}\"}}"
    ))
    .await
}

/// `mosquitto_pub` with extra arguments; returns whether it succeeded.
fn mosquitto_pub(port: u16, topic: &str, args: &[&str]) -> bool {
    common::mosquitto_pub(port, topic, args).status.success()
}

#[tokio::test]
async fn each_alarm_with_a_bad_optional_field_raises_one_critical_alert_through_mosquitto() {
    let mq = Mosquitto::start().await;
    let e = Engine::start(EngineOpts {
        mqtt_url: Some(mq.url()),
        ..Default::default()
    })
    .await;
    // (device, payload, the flawed field and the value kept, or none)
    type Case<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>);
    let cases: [Case; 7] = [
        (
            "seq-text",
            r#"{"type":"sos","seq":"7"}"#,
            Some(("seq", "7")),
        ),
        (
            "ts-local",
            r#"{"type":"sos","ts":"2026-12-07 03:00:00"}"#,
            Some(("ts", "2026-12-07 03:00:00")),
        ),
        (
            "ts-epoch",
            r#"{"type":"sos","ts":1733466600}"#,
            Some(("ts", "1733466600")),
        ),
        (
            "seq-neg",
            r#"{"type":"fall","seq":-1}"#,
            Some(("seq", "-1")),
        ),
        ("bom", "\u{feff}{\"type\":\"sos\"}", None),
        ("shout", r#"{"type":"SOS"}"#, None),
        (
            "other-id",
            r#"{"type":"sos","device_id":"someone-else"}"#,
            Some(("device_id", "someone-else")),
        ),
    ];
    for (device, payload, _) in &cases {
        e.publish(device, payload);
    }
    // A vendor profile's record whose time reads "" (the shipped cat1-smoke-gas profile).
    common::publish(
        mq.port,
        &format!("{}/cat1/866123456789012/report", e.root),
        r#"{"imei":"866123456789012","devType":"smoke","msgType":"alarm","alarmType":1,"msgId":7,"ts":""}"#,
    );
    for (device, payload, flaw) in cases {
        let alerts = alerts_of(&e, device).await;
        assert_eq!(alerts.len(), 1, "{payload}: {alerts:?}");
        assert_eq!(alerts[0]["severity"], "critical", "{payload}");
        assert_eq!(alerts[0]["count"], 1, "{payload}");
        let d = detail(&e, &alerts[0]).await;
        let flaws = &d["timeline"][0]["detail"]["flaws"];
        match flaw {
            Some((field, value)) => {
                assert_eq!(flaws[0]["field"], field, "{payload}: {d}");
                assert_eq!(flaws[0]["value"], value, "{payload}: {d}");
                assert!(
                    flaws[0]["problem"].as_str().is_some_and(|p| !p.is_empty()),
                    "{d}"
                );
            }
            None => assert!(flaws.is_null(), "{payload}: {d}"),
        }
    }
    let smoke = alerts_of(&e, "866123456789012").await;
    assert_eq!(smoke[0]["kind"], "smoke");
    assert_eq!(smoke[0]["severity"], "critical");
    let d = detail(&e, &smoke[0]).await;
    assert_eq!(d["timeline"][0]["detail"]["flaws"][0]["value"], "", "{d}");
    // Six alarms carried a value that could not be used: each counted as its own reason.
    assert_eq!(rejected(&e, "ignored_field").await, 6.0);
    let log = e.log();
    assert!(
        log.contains("seq-text") && log.contains("ts-local"),
        "{log}"
    );
}

#[tokio::test]
async fn a_payload_over_the_limit_is_refused_with_a_trace_and_the_shipped_broker_refuses_it_first()
{
    let big = format!(r#"{{"type":"sos","pad":"{}"}}"#, "x".repeat(1 << 20));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.json");
    std::fs::write(&file, &big).unwrap();
    let file = file.display().to_string();

    // The shipped broker config refuses it at the door: the device's publish fails.
    let mq = Mosquitto::start().await;
    assert!(
        !mosquitto_pub(mq.port, "anxin/v1/devices/big-1/events", &["-f", &file]),
        "the shipped Mosquitto config accepted a 1 MB payload"
    );

    // A broker that lets it through (the machine's Mosquitto keeps its 256 MB default): the
    // engine takes it, refuses it, keeps its first bytes and counts it; nothing vanishes.
    let Some(url) = service_url("ANXIN_TEST_MQTT_URL") else {
        return;
    };
    let dir_cfg = tempfile::tempdir().unwrap();
    let config = dir_cfg.path().join("anxin.toml");
    std::fs::write(
        &config,
        format!(
            "rules_file = \"{}/config/rules.toml\"\n[mqtt]\n# The shared broker should not keep test sessions for days.\nsession_expiry_secs = 60\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let e = Engine::start(EngineOpts {
        mqtt_url: Some(url),
        config: Some(config),
        ..Default::default()
    })
    .await;
    let port = e.mqtt_port();
    assert!(mosquitto_pub(port, &e.topic("big-2"), &["-f", &file]));
    e.wait_metric(
        r#"anxin_ingest_rejected_total{reason="payload_too_large"}"#,
        1.0,
    )
    .await;
    flush(&e, "big-2").await;
    assert!(e.alerts("device_id=big-2").await.is_empty());
    let store =
        anxin::store::Store::connect(&format!("sqlite://{}/anxin.db", e.dir.path().display()), 1)
            .await
            .unwrap();
    let rows = store.rejected(10).await.unwrap();
    let (reason, detail, raw) = rows
        .iter()
        .find(|r| r.0 == "payload_too_large")
        .expect("a refusal row");
    assert_eq!(reason, "payload_too_large");
    assert!(detail.contains(&big.len().to_string()), "{detail}");
    assert_eq!(raw.len(), anxin::protocol::OVERSIZE_KEPT_BYTES);
    assert!(raw.starts_with(br#"{"type":"sos""#));
    assert!(e.log().contains("payload_too_large"));
}

/// nats-server 2.9 puts no size limit on MQTT messages: the engine must take an oversized one
/// and refuse it with a trace, not drop its connection on every redelivery.
#[tokio::test]
async fn through_nats_an_oversized_payload_is_refused_once_without_connection_churn() {
    let nats = common::Nats::start().await;
    let e = Engine::start(EngineOpts {
        mqtt_url: Some(nats.url()),
        ..Default::default()
    })
    .await;
    let big = format!(r#"{{"type":"sos","pad":"{}"}}"#, "x".repeat(1 << 20));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.json");
    std::fs::write(&file, &big).unwrap();
    let errors_before = e.metric("anxin_mqtt_connection_errors_total").await;
    assert!(mosquitto_pub(
        nats.port,
        &e.topic("big-n"),
        &["-f", &file.display().to_string()]
    ));
    e.wait_metric(
        r#"anxin_ingest_rejected_total{reason="payload_too_large"}"#,
        1.0,
    )
    .await;
    flush(&e, "big-n").await;
    assert_eq!(
        e.metric("anxin_mqtt_connection_errors_total").await,
        errors_before,
        "the connection to the broker dropped over the oversized message"
    );
    assert_eq!(
        e.metric(r#"anxin_ingest_rejected_total{reason="payload_too_large"}"#)
            .await,
        1.0,
        "refused once: acknowledged, not redelivered"
    );
}

#[tokio::test]
async fn a_retained_sos_counts_once_across_two_restarts() {
    let mq = Mosquitto::start().await;
    let mut e = Engine::start(EngineOpts {
        mqtt_url: Some(mq.url()),
        ..Default::default()
    })
    .await;
    assert!(mosquitto_pub(
        mq.port,
        &e.topic("ret-1"),
        &["-r", "-m", r#"{"type":"sos"}"#]
    ));
    let first = alerts_of(&e, "ret-1").await;
    assert_eq!(first[0]["count"], 1);
    // A retained cancel (delivered live, it cancels nothing: no alert yet), then an SOS: the
    // replays of the cancel at each restart must not mark the SOS cancelled on the device.
    assert!(mosquitto_pub(
        mq.port,
        &e.topic("ret-2"),
        &["-r", "-m", r#"{"type":"cancel"}"#]
    ));
    flush(&e, "ret-2").await;
    e.publish("ret-2", r#"{"type":"sos","seq":1}"#);
    let sos2 = alerts_of(&e, "ret-2").await;
    for restart in 1..=2 {
        assert_eq!(e.terminate(), Some(0), "log:\n{}", e.log());
        e.spawn(&[]);
        e.wait_ready().await;
        // On every subscribe the broker replays the retained SOS, before this heartbeat.
        e.wait_metric("anxin_mqtt_retained_total", 1.0).await;
        flush(&e, "ret-1").await;
        let alerts = e.alerts("device_id=ret-1").await;
        assert_eq!(alerts.len(), 1, "restart {restart}: {alerts:?}");
        assert_eq!(alerts[0]["count"], 1, "restart {restart}: counted again");
        flush(&e, "ret-2").await;
        let d = detail(&e, &sos2[0]).await;
        let actions: Vec<&str> = d["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["action"].as_str())
            .collect();
        assert_eq!(actions, ["opened"], "restart {restart}: {d}");
    }
}

#[tokio::test]
async fn unregistered_devices_get_one_alert_each_and_registration_resolves_it() {
    let mut e = Engine::start(EngineOpts {
        env: vec![("ANXIN_UNKNOWN_DEVICES".into(), "quarantine".into())],
        ..Default::default()
    })
    .await;
    let msgs: Vec<(String, String)> = (0..1000)
        .map(|i| {
            (
                e.topic(&format!("stranger-{}", i % 10)),
                format!(r#"{{"type":"heartbeat","seq":{}}}"#, i / 10 + 1),
            )
        })
        .collect();
    common::publish_many(e.mqtt_port(), msgs).await;
    e.wait_metric("anxin_ingest_events_accepted_total", 1000.0)
        .await;
    let alerts = e.alerts("kind=unregistered_device").await;
    assert_eq!(alerts.len(), 10, "{alerts:?}");
    assert!(
        alerts
            .iter()
            .all(|a| a["count"] == 1 && a["severity"] == "low")
    );

    let (status, body) = e
        .post(
            "/api/devices",
            json!({"id": "stranger-3", "family": "mqtt", "type": "pendant"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let resolved = e
        .alerts("kind=unregistered_device&device_id=stranger-3")
        .await;
    assert_eq!(resolved[0]["status"], "resolved", "{resolved:?}");
    assert_eq!(
        e.alerts("kind=unregistered_device&status=open").await.len(),
        9
    );
    let (_, view) = e.get("/api/devices?registered=false").await;
    let listed = view["items"].as_array().unwrap();
    assert_eq!(listed.len(), 9, "{view}");
    assert!(
        listed.iter().all(|d| d["quarantine_alert"].is_i64()),
        "{view}"
    );

    // Across a restart the engine still knows who has an alert: no second one.
    assert_eq!(e.terminate(), Some(0));
    e.spawn(&[]);
    e.wait_ready().await;
    for i in 0..10 {
        e.publish(
            &format!("stranger-{i}"),
            r#"{"type":"heartbeat","seq":500}"#,
        );
    }
    e.wait_metric("anxin_ingest_events_accepted_total", 10.0)
        .await;
    assert_eq!(e.alerts("kind=unregistered_device").await.len(), 10);
}

#[tokio::test]
async fn device_clocks_years_off_are_flagged_or_refused_never_stored_as_given() {
    let e = Engine::start(EngineOpts::default()).await;
    let three_days_ago = (chrono::Utc::now() - chrono::Duration::days(3)).to_rfc3339();
    e.publish("clk", r#"{"type":"heartbeat","ts":"9999-01-01T00:00:00Z"}"#);
    e.publish("clk", r#"{"type":"sos","ts":"0001-01-01T00:00:00Z"}"#);
    e.publish(
        "clk",
        &format!(r#"{{"type":"vitals","heart_rate":70,"ts":"{three_days_ago}"}}"#),
    );
    flush(&e, "clk").await;
    assert_eq!(rejected(&e, "bad_field").await, 1.0, "year 9999 heartbeat");
    assert_eq!(rejected(&e, "implausible_time").await, 2.0);
    let sos = alerts_of(&e, "clk").await;
    let d = detail(&e, &sos[0]).await;
    let entry = &d["timeline"][0]["detail"];
    assert!(entry["device_time"].is_null(), "{d}");
    assert_eq!(entry["flaws"][0]["field"], "ts", "{d}");
    assert!(
        entry["flaws"][0]["value"]
            .as_str()
            .is_some_and(|v| v.starts_with("0001-01-01")),
        "{d}"
    );
    let store =
        anxin::store::Store::connect(&format!("sqlite://{}/anxin.db", e.dir.path().display()), 1)
            .await
            .unwrap();
    for t in store.event_timings().await.unwrap() {
        assert!(
            t.device_ts.is_none(),
            "a device time stored as given: {t:?}"
        );
    }
}
