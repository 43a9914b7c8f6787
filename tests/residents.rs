//! Residents and suppressions over the operator API (CONTRACT.md "Residents and suppressions
//! (HTTP)"), against the real binary: validation with a reason naming the field, created vs
//! replaced, paging, devices bound by `resident_id`, suppressions put on, listed and ended,
//! and the in-memory copies reloaded at start-up.

mod common;

use chrono::{Duration, SecondsFormat, Utc};
use common::{Engine, EngineOpts, poll};
use reqwest::Method;
use serde_json::{Value, json};

/// Sends `body` (JSON unless `content_type` says otherwise) with the token.
async fn send(
    e: &Engine,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{}{path}", e.http))
        .bearer_auth(&e.token)
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn put(e: &Engine, path: &str, body: Value) -> (u16, Value) {
    send(
        e,
        Method::PUT,
        path,
        Some("application/json"),
        body.to_string(),
    )
    .await
}

async fn delete(e: &Engine, path: &str) -> (u16, Value) {
    send(e, Method::DELETE, path, None, "").await
}

/// Asserts a 422 whose error mentions `needle`.
fn refused(what: &str, (status, body): (u16, Value), needle: &str) {
    assert_eq!(status, 422, "{what}: {body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(needle),
        "{what}: {needle:?} not in {error:?}"
    );
}

fn hours_from_now(h: i64) -> String {
    (Utc::now() + Duration::hours(h)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn li_hua() -> Value {
    json!({
        "name": "Li Hua",
        "region": "xuhui",
        "time_zone": "Asia/Shanghai",
        "labels": {"lives_alone": "true"},
        "thresholds": {"hr_high": 110, "spo2_low": 88.5}
    })
}

#[tokio::test]
async fn a_resident_is_created_replaced_read_and_deleted_and_bad_input_is_named() {
    let e = Engine::start(EngineOpts::default()).await;
    let (s, v) = put(&e, "/api/residents/r-1", li_hua()).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (
            v["id"].as_str(),
            v["name"].as_str(),
            v["thresholds"]["spo2_low"].as_f64()
        ),
        (Some("r-1"), Some("Li Hua"), Some(88.5))
    );
    assert_eq!(v["devices"], json!([]));
    let created_at = v["created_at"].clone();

    let mut changed = li_hua();
    changed["id"] = json!("r-1");
    changed["name"] = json!("Li Hua (Mrs)");
    changed.as_object_mut().unwrap().remove("time_zone");
    let (s, v) = put(&e, "/api/residents/r-1", changed).await;
    assert_eq!(s, 200, "replacing answers 200: {v}");
    let (s, got) = e.get("/api/residents/r-1").await;
    assert_eq!(s, 200);
    assert_eq!(got["name"], "Li Hua (Mrs)");
    assert_eq!(got["time_zone"], "Asia/Shanghai", "the default time zone");
    assert_eq!(got["labels"], json!({"lives_alone": "true"}));
    assert_eq!(got["created_at"], created_at);

    // 422 with the field named.
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = li_hua();
        f(&mut b);
        b
    };
    refused(
        "unknown time zone",
        put(
            &e,
            "/api/residents/r-2",
            with(&|b| b["time_zone"] = json!("Asia/Atlantis")),
        )
        .await,
        "unknown time zone \"Asia/Atlantis\"",
    );
    refused(
        "an id off the pattern",
        put(&e, "/api/residents/r%202", li_hua()).await,
        "id \"r 2\"",
    );
    refused(
        "empty name",
        put(&e, "/api/residents/r-2", with(&|b| b["name"] = json!("  "))).await,
        "name must not be empty",
    );
    refused(
        "no region",
        put(
            &e,
            "/api/residents/r-2",
            with(&|b| {
                b.as_object_mut().unwrap().remove("region");
            }),
        )
        .await,
        "region is required",
    );
    refused(
        "body id differs",
        put(&e, "/api/residents/r-2", with(&|b| b["id"] = json!("r-3"))).await,
        "differs",
    );
    refused(
        "a threshold that is not a number",
        put(
            &e,
            "/api/residents/r-2",
            with(&|b| b["thresholds"]["hr_high"] = json!("high")),
        )
        .await,
        "hr_high",
    );
    refused(
        "an unknown field",
        put(
            &e,
            "/api/residents/r-2",
            with(&|b| b["colour"] = json!("red")),
        )
        .await,
        "colour",
    );
    let (s, v) = send(
        &e,
        Method::PUT,
        "/api/residents/r-2",
        Some("application/json"),
        "{\"name\": ",
    )
    .await;
    assert_eq!(s, 400, "malformed JSON: {v}");
    let (s, v) = send(
        &e,
        Method::PUT,
        "/api/residents/r-2",
        Some("text/plain"),
        li_hua().to_string(),
    )
    .await;
    assert_eq!(s, 415, "{v}");
    let (s, v) = e.get("/api/residents?colour=red").await;
    assert_eq!(s, 400, "unknown query parameter: {v}");
    assert_eq!(
        e.get("/api/residents/r-2").await.0,
        404,
        "nothing refused was stored"
    );

    assert_eq!(delete(&e, "/api/residents/r-1").await.0, 204);
    let (s, v) = e.get("/api/residents/r-1").await;
    assert_eq!((s, v["error"].is_string()), (404, true), "{v}");
    assert_eq!(delete(&e, "/api/residents/r-1").await.0, 404);
}

#[tokio::test]
async fn residents_page_by_id_and_every_one_is_seen_once() {
    let e = Engine::start(EngineOpts::default()).await;
    let ids = ["a1", "a2", "b1", "b2", "c1"];
    for id in ids.iter().rev() {
        let (s, v) = put(&e, &format!("/api/residents/{id}"), li_hua()).await;
        assert_eq!(s, 201, "{v}");
    }
    let mut seen = Vec::new();
    let mut path = "/api/residents?limit=2".to_owned();
    loop {
        let (s, page) = e.get(&path).await;
        assert_eq!(s, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => path = format!("/api/residents?limit=2&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let (_, all) = e.get("/api/residents").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    assert_eq!(all["next"], Value::Null);
}

#[tokio::test]
async fn devices_point_at_their_resident_who_is_kept_across_a_restart() {
    let mut e = Engine::start(EngineOpts::default()).await;
    assert_eq!(put(&e, "/api/residents/r-7", li_hua()).await.0, 201);
    let (s, v) = e
        .post(
            "/api/devices",
            json!([
                {"id": "w-7", "type": "watch", "resident_id": "r-7", "report_interval": "600s"},
                {"id": "s-7", "type": "smoke", "resident_id": "r-7"},
                {"id": "x-9", "resident_id": "r-9"}
            ]),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = e
        .post(
            "/api/devices",
            json!({"id": "w-8", "report_interval": "10 minutes"}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["problems"][0]["field"], "report_interval", "{v}");
    let csv = "id,type,resident_id,report_interval\nwater-7,water,r-7,25h\n";
    let (s, v) = send(&e, Method::POST, "/api/devices", Some("text/csv"), csv).await;
    assert_eq!(s, 201, "{v}");

    let devices = |r: &Value| -> Vec<(String, Value)> {
        r["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap().to_owned(),
                    d["report_interval"].clone(),
                )
            })
            .collect()
    };
    let expected = vec![
        ("s-7".to_owned(), Value::Null),
        ("w-7".to_owned(), json!("10m")),
        ("water-7".to_owned(), json!("25h")),
    ];
    let (_, r7) = e.get("/api/residents/r-7").await;
    assert_eq!(devices(&r7), expected);

    // Alerts name their resident in full.
    e.publish("w-7", r#"{"type":"sos","seq":1}"#);
    let id = poll("the SOS alert", || async {
        e.alerts("device_id=w-7")
            .await
            .first()
            .map(|a| a["id"].as_i64().unwrap())
    })
    .await;
    let (_, alert) = e.get(&format!("/api/alerts/{id}")).await;
    assert_eq!(alert["resident_id"], "r-7");
    assert_eq!(alert["resident"]["name"], "Li Hua", "{alert}");

    // While devices point at the resident, it stays.
    let (s, v) = delete(&e, "/api/residents/r-7").await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("s-7, w-7, water-7"),
        "{v}"
    );

    // After a restart the residents and active suppressions come back from the store.
    let (s, v) = e
        .post(
            "/api/suppressions",
            json!({"resident_id": "r-7", "reason": "in hospital", "until": hours_from_now(48)}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(e.terminate(), Some(0), "log:\n{}", e.log());
    e.spawn(&[]);
    e.wait_ready().await;
    let (_, r7) = e.get("/api/residents/r-7").await;
    assert_eq!(
        devices(&r7),
        expected,
        "devices come from the reloaded registry"
    );
    let (s, v) = e
        .post(
            "/api/suppressions",
            json!({"device_id": "w-7", "kinds": ["offline"], "reason": "on charge", "until": hours_from_now(2)}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = e
        .post(
            "/api/suppressions",
            json!({"resident_id": "r-7", "reason": "away", "until": hours_from_now(2)}),
        )
        .await;
    assert_eq!(s, 201, "the reloaded registry knows the resident: {v}");
    let (_, list) = e.get("/api/suppressions").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3, "{list}");
}

#[tokio::test]
async fn suppressions_are_validated_put_on_listed_and_ended_early() {
    let e = Engine::start(EngineOpts::default()).await;
    assert_eq!(put(&e, "/api/residents/r-1", li_hua()).await.0, 201);
    let (s, _) = e
        .post(
            "/api/devices",
            json!({"id": "door-1", "type": "door", "resident_id": "r-1"}),
        )
        .await;
    assert_eq!(s, 201);
    let until = hours_from_now(24);
    let ok = json!({"resident_id": "r-1", "kinds": ["door", "inactivity"], "reason": "in hospital", "until": until});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = ok.clone();
        f(&mut b);
        b
    };
    let unset = |key: &'static str| {
        with(&move |b: &mut Value| {
            b.as_object_mut().unwrap().remove(key);
        })
    };
    for (what, body, needle) in [
        (
            "no scope",
            unset("resident_id"),
            "exactly one of resident_id and device_id",
        ),
        (
            "both scopes",
            with(&|b| b["device_id"] = json!("door-1")),
            "exactly one of resident_id and device_id",
        ),
        (
            "unknown resident",
            with(&|b| b["resident_id"] = json!("r-404")),
            "resident_id \"r-404\": no such resident",
        ),
        (
            "unregistered device",
            with(&|b| {
                b.as_object_mut().unwrap().remove("resident_id");
                b["device_id"] = json!("stranger");
            }),
            "device_id \"stranger\": no such registered device",
        ),
        ("no until", unset("until"), "until is mandatory"),
        (
            "until not RFC 3339",
            with(&|b| b["until"] = json!("tomorrow")),
            "until \"tomorrow\" is not an RFC 3339 time",
        ),
        (
            "until in the past",
            with(&|b| b["until"] = json!(hours_from_now(-1))),
            "not in the future",
        ),
        (
            "sos named",
            with(&|b| b["kinds"] = json!(["door", "sos"])),
            "kinds names \"sos\"",
        ),
        (
            "fall named",
            with(&|b| b["kinds"] = json!(["fall"])),
            "kinds names \"fall\"",
        ),
        (
            "smoke named",
            with(&|b| b["kinds"] = json!(["smoke"])),
            "kinds names \"smoke\"",
        ),
        (
            "gas named",
            with(&|b| b["kinds"] = json!(["gas"])),
            "kinds names \"gas\"",
        ),
        (
            "empty kinds",
            with(&|b| b["kinds"] = json!([])),
            "kinds is empty",
        ),
        (
            "empty reason",
            with(&|b| b["reason"] = json!(" ")),
            "reason must not be empty",
        ),
        ("no reason", unset("reason"), "reason must not be empty"),
        (
            "unknown field",
            with(&|b| b["colour"] = json!("red")),
            "colour",
        ),
    ] {
        refused(what, e.post("/api/suppressions", body).await, needle);
    }
    let (_, list) = e.get("/api/suppressions").await;
    assert_eq!(list["items"], json!([]), "nothing refused was stored");

    let (s, a) = e.post("/api/suppressions", ok.clone()).await;
    assert_eq!(s, 201, "{a}");
    let a_id = a["id"].as_i64().unwrap();
    assert_eq!(
        (
            a["author"].as_str(),
            a["reason"].as_str(),
            a["kinds"].clone(),
            a["suppressed_count"].as_i64()
        ),
        (
            Some("admin"),
            Some("in hospital"),
            json!(["door", "inactivity"]),
            Some(0)
        )
    );
    let (s, b) = e
        .post(
            "/api/suppressions",
            json!({"device_id": "door-1", "reason": "installer test", "until": hours_from_now(1)}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let b_id = b["id"].as_i64().unwrap();

    let (s, list) = e.get("/api/suppressions").await;
    assert_eq!(s, 200);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    assert_eq!(items[0]["id"].as_i64(), Some(a_id));
    assert_eq!(
        items[0]["until"].as_str().map(|u| u[..19].to_owned()),
        Some(until[..19].to_owned())
    );
    for key in [
        "resident_id",
        "device_id",
        "kinds",
        "reason",
        "author",
        "created_at",
        "until",
        "suppressed_count",
    ] {
        assert!(
            items[1].get(key).is_some(),
            "{key} missing from {}",
            items[1]
        );
    }
    assert_eq!(
        items[1]["kinds"],
        Value::Null,
        "no kinds: all but the four alarms"
    );
    assert_eq!(items[1]["author"], "admin");

    assert_eq!(
        delete(&e, &format!("/api/suppressions/{a_id}")).await.0,
        204
    );
    let (s, v) = delete(&e, &format!("/api/suppressions/{a_id}")).await;
    assert_eq!(
        (s, v["error"].is_string()),
        (404, true),
        "ended already: {v}"
    );
    assert_eq!(delete(&e, "/api/suppressions/999999").await.0, 404);
    assert_eq!(delete(&e, "/api/suppressions/first").await.0, 400);
    let (_, list) = e.get("/api/suppressions").await;
    let left: Vec<i64> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect();
    assert_eq!(left, [b_id]);
}
