//! Vendor JSON profiles end to end: a format the code has never seen is onboarded by writing a
//! profile file and reloading (SIGHUP), over the shared Mosquitto; a broken profile is refused
//! by the reload API without disturbing the one in force; the shipped profiles work through the
//! embedded broker; the CLI decodes and validates profiles.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Engine, EngineOpts, poll, publish, service_url};
use serde_json::Value;

/// A pendant vendor's payload shape that nothing in anxin knows: serial number inside, event
/// kind nested, battery in millivolts, skin temperature in °F, time in epoch seconds.
const ACME_PROFILE: &str = r#"
description = "ACME pendant (test vendor)"
topic = "{root}/acme/{device_id}/evt"
device_id = "/sn"
time = { pointer = "/evt/at", format = "epoch_s" }

[[event]]
type = "sos"
when = { pointer = "/evt/kind", equals = "PANIC" }

[[event]]
type = "battery"
fields.voltage_v = { pointer = "/bat_mv", unit = "mV" }

[[event]]
type = "vitals"
fields.temperature = { pointer = "/temp_f", unit = "F" }
"#;

/// A config directory with the shipped rules (a copy, so a test may extend them) and an empty
/// profiles directory.
fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rules.toml"),
        dir.path().join("rules.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("anxin.toml"),
        "rules_file = \"rules.toml\"\n\n[profiles]\ndir = \"profiles\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("profiles")).unwrap();
    dir
}

async fn wait_subscribed(e: &Engine, profile: &str) {
    poll(&format!("profile {profile} subscribed"), || async move {
        let (_, body) = e.get("/api/profiles").await;
        body["items"]
            .as_array()?
            .iter()
            .any(|p| p["name"] == profile && p["subscribed"] == true)
            .then_some(())
    })
    .await
}

async fn alert(e: &Engine, device: &str, rule: &str) -> Value {
    let query = format!("device_id={device}");
    poll(&format!("{rule} alert for {device}"), || {
        let q = query.clone();
        async move { e.alerts(&q).await.into_iter().find(|a| a["rule"] == rule) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_vendor_format_is_onboarded_with_a_profile_file_and_a_reload() {
    let Some(mqtt) = service_url("ANXIN_TEST_MQTT_URL") else {
        return;
    };
    let cfg = config_dir();
    let e = Engine::start(EngineOpts {
        mqtt_url: Some(mqtt),
        config: Some(cfg.path().join("anxin.toml")),
        ..Default::default()
    })
    .await;
    let (_, body) = e.get("/api/profiles").await;
    assert_eq!(body["items"].as_array().map(Vec::len), Some(0), "{body}");

    // Onboard: a file and a SIGHUP, no code; a rule for the vendor's battery voltage reloads
    // with it.
    std::fs::write(cfg.path().join("profiles/acme-pendant.toml"), ACME_PROFILE).unwrap();
    let mut rules = std::fs::read_to_string(cfg.path().join("rules.toml")).unwrap();
    rules.push_str(
        "\n[[rule]]\nname = \"pendant_battery_weak\"\nevent = \"battery\"\nseverity = \"medium\"\nkind = \"low_battery\"\ntitle = \"Pendant battery below 3.3 V\"\nwhen = [{ field = \"voltage_v\", op = \"<\", value = 3.3 }]\n",
    );
    std::fs::write(cfg.path().join("rules.toml"), rules).unwrap();
    e.signal(libc::SIGHUP);
    wait_subscribed(&e, "acme-pendant").await;

    let port = e.mqtt_port();
    let topic = |dev: &str| format!("{}/acme/{dev}/evt", e.root);
    publish(
        port,
        &topic("AC-1001"),
        r#"{"sn":"AC-1001","evt":{"kind":"PANIC","at":1796538600},"bat_mv":3650}"#,
    );
    let sos = alert(&e, "AC-1001", "sos").await;
    assert_eq!(sos["severity"], "critical");
    assert_eq!(sos["kind"], "sos");
    // 104 °F is 40 °C: the fever rule (>= 38.5 °C) fires on the converted value.
    publish(
        port,
        &topic("AC-1001"),
        r#"{"sn":"AC-1001","evt":{"kind":"REPORT","at":1796538660},"temp_f":104}"#,
    );
    alert(&e, "AC-1001", "fever").await;
    // 3 200 mV is 3.2 V: the rule reloaded with the profile fires on the converted value.
    publish(
        port,
        &topic("AC-1001"),
        r#"{"sn":"AC-1001","evt":{"kind":"REPORT","at":1796538670},"bat_mv":3200}"#,
    );
    alert(&e, "AC-1001", "pendant_battery_weak").await;
    let (_, detail) = e.get(&format!("/api/alerts/{}", sos["id"])).await;
    assert!(detail.to_string().contains("AC-1001"), "{detail}");

    // The payload names another device than the topic: a report is refused and counted, by
    // profile; a PANIC is raised all the same, for the topic's device, naming both.
    publish(
        port,
        &topic("AC-1002"),
        r#"{"sn":"AC-1001","evt":{"kind":"REPORT","at":1796538700},"temp_f":98}"#,
    );
    e.wait_metric(
        r#"anxin_profile_rejected_total{profile="acme-pendant",reason="device_mismatch"}"#,
        1.0,
    )
    .await;
    e.wait_metric(
        r#"anxin_ingest_rejected_total{reason="device_mismatch"}"#,
        1.0,
    )
    .await;
    // A payload the profile cannot map is refused as unmapped, not dropped unseen.
    publish(port, &topic("AC-1004"), r#"{"sn":"AC-1004","rssi":-80}"#);
    e.wait_metric(
        r#"anxin_profile_rejected_total{profile="acme-pendant",reason="unmapped"}"#,
        1.0,
    )
    .await;

    // A broken profile: the reload is refused with the file and line, nothing changes.
    std::fs::write(
        cfg.path().join("profiles/broken.toml"),
        "topic = \"{root}/broken/{device_id}\"\n[[event]]\ntype = \"smok\"\n",
    )
    .unwrap();
    let (status, body) = e.post("/api/config/reload", Value::Null).await;
    assert_eq!(status, 422, "{body}");
    let problems = body["problems"].to_string();
    assert!(problems.contains("broken.toml:3"), "{problems}");
    assert!(problems.contains("smok"), "{problems}");
    let (_, listed) = e.get("/api/profiles").await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    // ... and the profile in force still works. The mismatched report above raised nothing:
    // AC-1002 has no alert while this later PANIC of AC-1003 has one.
    publish(
        port,
        &topic("AC-1003"),
        r#"{"sn":"AC-1003","evt":{"kind":"PANIC","at":1796538800}}"#,
    );
    alert(&e, "AC-1003", "sos").await;
    assert!(e.alerts("device_id=AC-1002").await.is_empty());
    publish(
        port,
        &topic("AC-1002"),
        r#"{"sn":"AC-1001","evt":{"kind":"PANIC","at":1796538810}}"#,
    );
    let mismatched = alert(&e, "AC-1002", "sos").await;
    let (_, detail) = e.get(&format!("/api/alerts/{}", mismatched["id"])).await;
    let flaws = detail["timeline"][0]["detail"]["flaws"].to_string();
    assert!(
        flaws.contains("AC-1001") && flaws.contains("AC-1002"),
        "{detail}"
    );
    assert!(
        e.alerts("device_id=AC-1001")
            .await
            .iter()
            .all(|a| a["rule"] != "unregistered_device")
    );

    // Fixing the file and reloading through the API puts both in force.
    std::fs::write(
        cfg.path().join("profiles/broken.toml"),
        "topic = \"{root}/broken/{device_id}\"\n[[event]]\ntype = \"smoke\"\nfields.state = { value = \"alarm\" }\n",
    )
    .unwrap();
    let (status, body) = e.post("/api/config/reload", Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["profiles"],
        serde_json::json!(["acme-pendant", "broken"])
    );
    wait_subscribed(&e, "broken").await;
    publish(port, &format!("{}/broken/B-1", e.root), "{}");
    alert(&e, "B-1", "smoke_alarm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_profiles_raise_alerts_through_the_embedded_broker() {
    let e = Engine::start(EngineOpts::default()).await;
    wait_subscribed(&e, "cat1-smoke-gas").await;
    wait_subscribed(&e, "watch-health-json").await;
    wait_subscribed(&e, "senml").await;
    let port = e.mqtt_port();
    publish(
        port,
        &format!("{}/cat1/866123456789012/report", e.root),
        r#"{"imei":"866123456789012","devType":"gas","msgType":"alarm","alarmType":1,"battery":90,"msgId":5,"ts":1796538600000}"#,
    );
    let gas = alert(&e, "866123456789012", "gas_alarm").await;
    assert_eq!(gas["severity"], "critical");
    publish(
        port,
        &format!("{}/watch-json/869000000000001/up", e.root),
        r#"{"imei":"869000000000001","cmd":"alarm","alarmType":"FALL","time":"2026-12-06 14:30:00","data":{}}"#,
    );
    alert(&e, "869000000000001", "fall").await;
    // A body temperature in kelvin: converted, and a fever is alerted on one reading (the
    // other vital signs wait out their `for`).
    publish(
        port,
        &format!("{}/senml/861234567890123", e.root),
        r#"[{"bn":"urn:dev:imei:861234567890123:","bt":1796538600,"n":"body_temp","u":"K","v":312.15}]"#,
    );
    alert(&e, "861234567890123", "fever").await;
}

fn anxin(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_anxin"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn decode_prints_a_profiles_events_and_check_config_locates_profile_problems() {
    let (ok, out, err) = anxin(&[
        "decode",
        "--profile",
        "cat1-smoke-gas",
        "--json",
        r#"{"imei":"866123456789012","devType":"smoke","alarmType":1,"battery":85}"#,
        "--topic",
        "anxin/v1/cat1/866123456789012/report",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["events"][0]["type"], "smoke");
    assert_eq!(v["events"][0]["fields"]["state"], "alarm");
    assert_eq!(v["events"][1]["fields"]["percent"], 85);
    assert_eq!(v["rejections"], serde_json::json!([]));

    let (ok, _, err) = anxin(&["decode", "--profile", "nope", "--json", "{}"]);
    assert!(!ok);
    assert!(err.contains("no profile \"nope\""), "{err}");

    let cfg = config_dir();
    std::fs::write(
        cfg.path().join("profiles/vendor.toml"),
        "topic = \"v/{device_id}\"\ncolour = 1\n[[event]]\ntype = \"vitals\"\nfields.heart_rate = { pointer = \"/hr\", unit = \"F\" }\nfields.temperature = \"hr\"\n",
    )
    .unwrap();
    let conf = cfg.path().join("anxin.toml");
    let (ok, _, err) = anxin(&["check-config", "--config", conf.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("vendor.toml:2: colour: unknown key"), "{err}");
    assert!(
        err.contains("vendor.toml:5: event[0].fields.heart_rate.unit"),
        "{err}"
    );
    assert!(
        err.contains("vendor.toml:6: event[0].fields.temperature"),
        "{err}"
    );
    assert!(err.contains("3 problem(s)"), "{err}");
}
