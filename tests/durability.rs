//! The guarantees that need real, external parts: each production broker started from its
//! shipped config (Mosquitto and nats-server with JetStream, private to each test, on a free
//! port), PostgreSQL (a database per test, reached through a proxy the test can cut), SIGKILL
//! and SIGTERM of the real binary and of the broker.
//!
//! The data-path tests run once per broker (`NAME::mosquitto`, `NAME::nats`); the `nats_*` ones
//! check what only nats-server promises (a broker kill -9 loses nothing) or does (redelivery
//! every `ack_wait`); `alarms_flow_through_the_shared_mosquitto_…` uses the machine's own Mosquitto.

mod common;

use anxin::store::{Store, Table};
use common::{
    Broker, BrokerKind, Engine, EngineOpts, Proxy, TempDb, pg_upstream, poll, service_url,
};
use serde_json::Value;

/// Runs the `async fn NAME(kind: BrokerKind)` above it as `NAME::mosquitto` and `NAME::nats`.
macro_rules! on_both_brokers {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn mosquitto() {
                super::$name(super::BrokerKind::Mosquitto).await
            }

            #[tokio::test]
            async fn nats() {
                super::$name(super::BrokerKind::Nats).await
            }
        }
    };
}

async fn sos_alerts(e: &Engine, device: &str) -> Vec<Value> {
    e.alerts(&format!("device_id={device}&kind=sos")).await
}

/// Shows nothing more is coming: a later event of the same device, once processed, means
/// everything before it was too (order per device).
async fn flush_device(e: &Engine, device: &str, seq: u32) {
    let before = e.metric("anxin_ingest_events_accepted_total").await;
    e.publish(
        device,
        &format!(r#"{{"type":"heartbeat","seq":{seq},"ts":"2026-11-23T12:00:00Z"}}"#),
    );
    e.wait_metric("anxin_ingest_events_accepted_total", before + 1.0)
        .await;
}

async fn an_sos_during_a_database_outage_survives_sigkill_and_raises_exactly_one_alert(
    kind: BrokerKind,
) {
    let Some(admin) = service_url("ANXIN_TEST_POSTGRES_URL") else {
        return;
    };
    let mq = Broker::start(kind).await;
    let db = TempDb::create(&admin).await;
    let proxy = Proxy::start(pg_upstream(&admin)).await;
    let mut e = Engine::start(EngineOpts {
        mqtt_url: Some(mq.url()),
        store_url: Some(db.url_via(proxy.port)),
        ..Default::default()
    })
    .await;

    proxy.cut();
    e.publish(
        "p1",
        r#"{"type":"sos","seq":1,"ts":"2026-11-23T10:00:00Z"}"#,
    );
    e.wait_metric("anxin_mqtt_messages_received_total", 1.0)
        .await;
    e.wait_metric("anxin_store_commit_errors_total", 1.0).await;
    assert_eq!(
        e.metric("anxin_mqtt_messages_acked_total").await,
        0.0,
        "nothing acked before commit"
    );
    e.kill();

    proxy.restore();
    e.spawn(&[]);
    e.wait_ready().await;
    poll("the SOS after restart", || async {
        sos_alerts(&e, "p1").await.into_iter().next()
    })
    .await;
    flush_device(&e, "p1", 2).await;
    let alerts = sos_alerts(&e, "p1").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["count"], 1);
}
on_both_brokers!(an_sos_during_a_database_outage_survives_sigkill_and_raises_exactly_one_alert);

#[cfg(feature = "test-hooks")]
async fn sigkill_between_receipt_and_commit_loses_nothing_and_duplicates_nothing(kind: BrokerKind) {
    let mq = Broker::start(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("holding");
    let mut e = Engine::start(EngineOpts {
        mqtt_url: Some(mq.url()),
        env: vec![(
            "ANXIN_TEST_HOLD_COMMIT".into(),
            marker.display().to_string(),
        )],
        ..Default::default()
    })
    .await;
    e.publish("k1", r#"{"type":"sos"}"#);
    let m = marker.clone();
    poll("the engine to hold the commit", || {
        let m = m.clone();
        async move { m.exists().then_some(()) }
    })
    .await;
    e.kill();

    e.remove_env("ANXIN_TEST_HOLD_COMMIT");
    e.spawn(&[]);
    e.wait_ready().await;
    poll("the SOS after restart", || async {
        sos_alerts(&e, "k1").await.into_iter().next()
    })
    .await;
    flush_device(&e, "k1", 2).await;
    let alerts = sos_alerts(&e, "k1").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["count"], 1);
}
#[cfg(feature = "test-hooks")]
on_both_brokers!(sigkill_between_receipt_and_commit_loses_nothing_and_duplicates_nothing);

async fn sigterm_commits_what_was_received_and_sends_the_owed_acks(kind: BrokerKind) {
    let mq = Broker::start(kind).await;
    let mut e = Engine::start(EngineOpts {
        mqtt_url: Some(mq.url()),
        ..Default::default()
    })
    .await;
    let n = 500;
    let msgs = (1..=n)
        .map(|i| {
            (
                e.topic(&format!("s{}", i % 7)),
                format!(r#"{{"type":"motion","seq":{i},"ts":"2026-11-23T10:00:00Z"}}"#),
            )
        })
        .collect();
    common::publish_many(mq.port(), msgs).await;
    e.wait_metric("anxin_mqtt_messages_received_total", 1.0)
        .await;
    assert_eq!(e.terminate(), Some(0), "log:\n{}", e.log());

    e.spawn(&[]);
    e.wait_ready().await;
    // Whatever the first run had not received is delivered now; whatever it committed was
    // acked and so must not come back as a duplicate.
    let store = Store::connect(&format!("sqlite://{}/anxin.db", e.dir.path().display()), 1)
        .await
        .unwrap();
    flush_device(&e, "s-marker", 1).await;
    poll("all events stored", || async {
        (store.count(Table::Events).await.unwrap() == n + 1).then_some(())
    })
    .await;
    assert_eq!(
        e.metric("anxin_ingest_duplicates_total").await,
        0.0,
        "an owed ack was not sent"
    );
}
on_both_brokers!(sigterm_commits_what_was_received_and_sends_the_owed_acks);

async fn mixed_load_through_the_broker_into_postgres_keeps_every_event_in_device_order(
    kind: BrokerKind,
) {
    let Some(admin) = service_url("ANXIN_TEST_POSTGRES_URL") else {
        return;
    };
    let mq = Broker::start(kind).await;
    let db = TempDb::create(&admin).await;
    let e = Engine::start(EngineOpts {
        mqtt_url: Some(mq.url()),
        store_url: Some(db.url.clone()),
        ..Default::default()
    })
    .await;
    let devices = 50;
    let n: i64 = 10_000;
    let kinds = [
        r#""type":"heartbeat""#,
        r#""type":"vitals","heart_rate":72,"spo2":97"#,
        r#""type":"position","lat":31.2,"lon":121.5,"source":"gps""#,
        r#""type":"battery","percent":80"#,
        r#""type":"door","state":"open""#,
    ];
    let msgs = (0..n)
        .map(|i| {
            let dev = i % devices;
            let seq = i / devices + 1;
            (
                e.topic(&format!("m{dev}")),
                format!(
                    r#"{{{},"seq":{seq},"ts":"2026-11-23T10:00:00Z"}}"#,
                    kinds[(i % 5) as usize]
                ),
            )
        })
        .collect();
    common::publish_many(mq.port(), msgs).await;
    let store = Store::connect(&db.url, 2).await.unwrap();
    poll("every event stored", || async {
        (store.count(Table::Events).await.unwrap() >= n).then_some(())
    })
    .await;
    assert_eq!(store.count(Table::Events).await.unwrap(), n);
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    for t in store.event_timings().await.unwrap() {
        let seq = t.seq.unwrap();
        let prev = last.insert(t.device_id.clone(), seq).unwrap_or(0);
        assert_eq!(seq, prev + 1, "device {} out of order", t.device_id);
    }
    assert_eq!(last.len() as i64, devices);
    store.close().await;
}
on_both_brokers!(mixed_load_through_the_broker_into_postgres_keeps_every_event_in_device_order);

/// The machine's own Mosquitto (`ANXIN_TEST_MQTT_URL`), over MQTT 5 and over 3.1.1, into
/// PostgreSQL: the production shape of the data path.
#[tokio::test]
async fn alarms_flow_through_the_shared_mosquitto_into_postgres_over_both_protocol_versions() {
    let (Some(mqtt), Some(admin)) = (
        service_url("ANXIN_TEST_MQTT_URL"),
        service_url("ANXIN_TEST_POSTGRES_URL"),
    ) else {
        return;
    };
    for protocol in [5, 4] {
        let db = TempDb::create(&admin).await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("anxin.toml");
        std::fs::write(
            &config,
            format!(
                "rules_file = \"{}/config/rules.toml\"\n[mqtt]\nprotocol = {protocol}\n# A short session: the shared broker should not keep test sessions for days.\nsession_expiry_secs = 60\n",
                env!("CARGO_MANIFEST_DIR")
            ),
        )
        .unwrap();
        let mut e = Engine::start(EngineOpts {
            mqtt_url: Some(mqtt.clone()),
            store_url: Some(db.url.clone()),
            config: Some(config),
            ..Default::default()
        })
        .await;
        e.publish("x1", r#"{"type":"smoke","state":"alarm","seq":1}"#);
        e.publish("x1", r#"{"type":"smoke","state":"test","seq":2}"#);
        let a = poll("smoke alert", || async {
            e.alerts("kind=smoke").await.into_iter().next()
        })
        .await;
        assert_eq!(a["severity"], "critical", "protocol {protocol}");
        flush_device(&e, "x1", 3).await;
        assert_eq!(
            e.alerts("").await.len(),
            1,
            "a smoke test press is recorded, never alerted"
        );
        assert_eq!(e.terminate(), Some(0));
    }
}

/// The measurement of BENCHMARKS.md "Broker crash", as a test for the broker that must pass
/// it: 5 000 SOS from 250 devices, published and acknowledged while the engine is stopped,
/// then nats-server is SIGKILLed and restarted: every one reaches the store, none twice.
#[tokio::test]
async fn nats_kill_9_with_a_backlog_loses_no_acknowledged_sos() {
    let mut broker = Broker::start(BrokerKind::Nats).await;
    let mut e = Engine::start(EngineOpts {
        mqtt_url: Some(broker.url()),
        ..Default::default()
    })
    .await;
    // The engine's persistent session and subscriptions now exist; from here the broker alone
    // holds what devices send.
    assert_eq!(e.terminate(), Some(0), "log:\n{}", e.log());
    let (devices, n) = (250, 5_000);
    let msgs = (0..n)
        .map(|i| {
            (
                e.topic(&format!("c{}", i % devices)),
                format!(r#"{{"type":"sos","seq":{}}}"#, i / devices + 1),
            )
        })
        .collect();
    common::publish_many(broker.port(), msgs).await;
    broker.kill_and_restart().await;

    e.spawn(&[]);
    e.wait_ready().await;
    let store = Store::connect(&format!("sqlite://{}/anxin.db", e.dir.path().display()), 1)
        .await
        .unwrap();
    poll("every acknowledged SOS stored", || async {
        (store.count(Table::Events).await.unwrap() >= n).then_some(())
    })
    .await;
    for d in [0, devices - 1] {
        flush_device(&e, &format!("c{d}"), (n / devices + 1) as u32).await;
    }
    assert_eq!(store.count(Table::Events).await.unwrap(), n + 2);
    assert_eq!(store.count(Table::Alerts).await.unwrap(), devices);
    assert_eq!(e.metric("anxin_ingest_duplicates_total").await, 0.0);
}

/// nats-server speaks MQTT 3.1.1 only. With the shipped engine config (MQTT 5) the engine
/// falls back by itself, says so once, and stays on 3.1.1 across a broker restart.
#[tokio::test]
async fn a_broker_that_refuses_mqtt_5_gets_3_1_1_by_itself_logged_once() {
    const FALLBACK: &str = "The broker refused MQTT 5; reconnecting with MQTT 3.1.1";
    let mut broker = Broker::start(BrokerKind::Nats).await;
    let e = Engine::start(EngineOpts {
        mqtt_url: Some(broker.url()),
        ..Default::default()
    })
    .await;
    assert_eq!(e.log().matches(FALLBACK).count(), 1, "log:\n{}", e.log());
    e.publish("f1", r#"{"type":"sos","seq":1}"#);
    poll("the SOS over 3.1.1", || async {
        sos_alerts(&e, "f1").await.into_iter().next()
    })
    .await;

    broker.kill_and_restart().await;
    e.wait_metric("anxin_mqtt_connects_total", 2.0).await;
    e.wait_ready().await;
    e.publish("f2", r#"{"type":"sos","seq":1}"#);
    poll("the SOS after the broker restart", || async {
        sos_alerts(&e, "f2").await.into_iter().next()
    })
    .await;
    assert_eq!(e.log().matches(FALLBACK).count(), 1, "log:\n{}", e.log());
}

/// nats-server sends a held message again every `ack_wait` (10 s in the shipped config) on
/// the same connection. During a database outage the engine holds every ack, so it receives
/// copies; once the database is back each press is stored and counted once.
#[tokio::test]
async fn nats_copies_of_held_messages_during_a_database_outage_are_counted_once() {
    let Some(admin) = service_url("ANXIN_TEST_POSTGRES_URL") else {
        return;
    };
    let broker = Broker::start(BrokerKind::Nats).await;
    let db = TempDb::create(&admin).await;
    let proxy = Proxy::start(pg_upstream(&admin)).await;
    let e = Engine::start(EngineOpts {
        mqtt_url: Some(broker.url()),
        store_url: Some(db.url_via(proxy.port)),
        ..Default::default()
    })
    .await;
    proxy.cut();
    let (devices, n) = (30, 300);
    let mut msgs: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                e.topic(&format!("o{}", i % devices)),
                format!(r#"{{"type":"sos","seq":{}}}"#, i / devices + 1),
            )
        })
        .collect();
    // And presses without seq: identical payloads, told apart only by the transport (their
    // copies carry DUP and the first copy's packet id).
    let bare = 5;
    msgs.extend((0..bare).map(|_| (e.topic("o-bare"), r#"{"type":"sos"}"#.to_owned())));
    let n = n + bare;
    common::publish_many(broker.port(), msgs).await;
    // Every message once, then again after ack_wait: the copies are on the wire.
    e.wait_metric("anxin_mqtt_messages_received_total", (2 * n) as f64)
        .await;
    assert_eq!(e.metric("anxin_mqtt_messages_acked_total").await, 0.0);

    proxy.restore();
    let store = Store::connect(&db.url, 1).await.unwrap();
    poll("every press stored", || async {
        (store.count(Table::Events).await.unwrap() >= n).then_some(())
    })
    .await;
    flush_device(&e, "o0", (n / devices + 1) as u32).await;
    flush_device(&e, "o-bare", 1).await;
    assert_eq!(store.count(Table::Events).await.unwrap(), n + 2);
    let alerts = e.alerts("kind=sos&limit=100").await;
    assert_eq!(alerts.len(), devices as usize + 1);
    let presses: i64 = alerts.iter().map(|a| a["count"].as_i64().unwrap()).sum();
    assert_eq!(presses, n, "a copy was counted as a press");
    store.close().await;
}
