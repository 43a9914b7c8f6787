//! The device registry and the unknown-device policy (CONTRACT.md, "Devices"), over MQTT and
//! TCP alike.

mod common;

use common::{Engine, EngineOpts, free_port, poll};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn with_policy(policy: &str, watch_port: Option<u16>) -> EngineOpts {
    let mut env = vec![("ANXIN_UNKNOWN_DEVICES".to_owned(), policy.to_owned())];
    if let Some(p) = watch_port {
        env.push((
            "ANXIN_TCP_LISTEN".into(),
            format!("watch=127.0.0.1:{p},gt06=off,jt808=off,trv=off"),
        ));
    }
    EngineOpts {
        env,
        ..Default::default()
    }
}

#[tokio::test]
async fn devices_register_one_by_one_in_bulk_and_from_csv_and_every_problem_is_listed() {
    let e = Engine::start(EngineOpts::default()).await;
    let (s, _) = e
        .post("/api/devices", json!({"id": "p1", "family": "gt06", "type": "pendant", "room": "bedroom", "labels": {"lives_alone": "yes"}, "resident_id": "r1", "tz": "+08:00"}))
        .await;
    assert_eq!(s, 201);
    let (s, v) = e
        .post(
            "/api/devices",
            json!([{"id": "p2"}, {"id": "bad id"}, {"id": "p3", "family": "fax"}]),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    let rows: Vec<(u64, String)> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["row"].as_u64().unwrap(),
                p["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(rows, [(2, "id".to_owned()), (3, "family".to_owned())]);
    let (s, _) = e.get("/api/devices/p2").await;
    assert_eq!(s, 404, "nothing of a refused batch is registered");

    let csv = "id,family,type,room,labels,resident_id,tz\ns1,mqtt,smoke,kitchen,region=xh,r1,\ns2,mqtt,water,bathroom,,r1,\n";
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/devices", e.http))
        .bearer_auth(&e.token)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (_, list) = e.get("/api/devices?registered=true").await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p1", "s1", "s2"]);
    let (_, p1) = e.get("/api/devices/p1").await;
    assert_eq!(
        (
            p1["room"].as_str(),
            p1["tz"].as_str(),
            p1["registered"].as_bool()
        ),
        (Some("bedroom"), Some("+08:00"), Some(true))
    );

    let r = reqwest::Client::new()
        .put(format!("http://{}/api/devices/p1", e.http))
        .bearer_auth(&e.token)
        .json(&json!({"id": "p1", "room": "hall"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(e.get("/api/devices/p1").await.1["room"], "hall");
    let r = reqwest::Client::new()
        .delete(format!("http://{}/api/devices/p1", e.http))
        .bearer_auth(&e.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(e.get("/api/devices/p1").await.0, 404);
}

#[tokio::test]
async fn quarantine_processes_unknown_devices_and_raises_one_low_alert_each() {
    let e = Engine::start(with_policy("quarantine", None)).await;
    e.post(
        "/api/devices",
        json!({"id": "known-1", "resident_id": "r9"}),
    )
    .await;
    e.publish("stranger", r#"{"type":"heartbeat","seq":1}"#);
    e.publish("stranger", r#"{"type":"heartbeat","seq":2}"#);
    e.publish("known-1", r#"{"type":"sos","seq":1}"#);
    let sos = poll("sos", || async {
        e.alerts("kind=sos").await.into_iter().next()
    })
    .await;
    assert_eq!(
        sos["resident_id"], "r9",
        "alerts carry the registered resident"
    );
    let q = poll("quarantine alert", || async {
        e.alerts("kind=unregistered_device")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        (
            q["severity"].as_str(),
            q["count"].as_i64(),
            q["device_id"].as_str()
        ),
        (Some("low"), Some(1), Some("stranger"))
    );
    e.wait_metric("anxin_ingest_events_accepted_total", 3.0)
        .await;
    assert_eq!(
        e.alerts("kind=unregistered_device").await.len(),
        1,
        "one per device, not per message"
    );
}

#[tokio::test]
async fn reject_refuses_unknown_devices_except_their_alarms_over_mqtt_and_tcp() {
    let port = free_port();
    let e = Engine::start(with_policy("reject", Some(port))).await;
    e.publish("stranger", r#"{"type":"heartbeat"}"#);
    e.publish("stranger", r#"{"type":"sos"}"#);
    poll("stranger's sos", || async {
        e.alerts("kind=sos&device_id=stranger")
            .await
            .into_iter()
            .next()
    })
    .await;
    e.wait_metric(
        "anxin_ingest_rejected_total{reason=\"unknown_device\"}",
        1.0,
    )
    .await;

    // TCP: an unknown watch gets no LK reply, but its alarm is committed and acked.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"[3G*5550000001*0002*LK]").await.unwrap();
    s.write_all(
        b"[3G*5550000001*0060*AL,231126,101500,A,31.2,N,121.4,E,0,0,0,7,80,60,0,0,00010000,0,0,0]",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; b"[3G*5550000001*0002*AL]".len()];
    tokio::time::timeout(common::DEADLINE, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        buf, b"[3G*5550000001*0002*AL]",
        "the first reply is the alarm's: the LK got none"
    );
    assert_eq!(e.alerts("kind=sos&device_id=5550000001").await.len(), 1);
    let (_, frames) = e.get("/api/devices/5550000001/frames").await;
    assert_eq!(
        frames["items"].as_array().unwrap().len(),
        2,
        "installers see both frames"
    );
    assert_eq!(frames["items"][1]["events"][0], "position");
}
