//! Rules v2 end to end (CONTRACT.md "Rules file", "Residents and suppressions"): the real
//! binary on the system clock with a short-duration rules file of the test's own, through a
//! real broker (embedded with SQLite, the machine's Mosquitto with PostgreSQL) into a real
//! store. Every `for`, absence, escalation and correlation here fires by itself at its
//! deadline; the tests poll for it. To show something did not happen they let its deadline
//! pass and then flush the device's shard with a later message (deadlines due before a
//! message fire before it, in the same commit), or look at the commit that would have held it.
//!
//! Each scenario runs once per store (`NAME::sqlite`, `NAME::postgres`).

mod common;

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use common::{Backend, DEADLINE, Engine, EngineOpts, TempDb, on_both_stores, poll};
use reqwest::Method;
use serde_json::{Value, json};

/// An engine running a rules file of the test's own, in a config directory the test can
/// rewrite and reload.
struct World {
    e: Engine,
    cfg: tempfile::TempDir,
    _db: Option<TempDb>,
}

impl World {
    /// Starts the engine on `backend` with `rules`; `None` (skipped) when the backend's
    /// services are not configured.
    async fn start(backend: Backend, rules: &str) -> Option<World> {
        let cfg = tempfile::tempdir().unwrap();
        std::fs::create_dir(cfg.path().join("profiles")).unwrap();
        std::fs::write(cfg.path().join("rules.toml"), rules).unwrap();
        std::fs::write(
            cfg.path().join("anxin.toml"),
            // A short start-up grace: an absence due while the engine was down still waits
            // for the broker's backlog, but not the shipped minute.
            "rules_file = \"rules.toml\"\n[profiles]\ndir = \"profiles\"\n[pipeline]\nabsence_startup_grace_secs = 1\n",
        )
        .unwrap();
        let mut opts = EngineOpts {
            config: Some(cfg.path().join("anxin.toml")),
            ..Default::default()
        };
        let db = backend.configure(&mut opts).await?;
        let e = Engine::start(opts).await;
        Some(World { e, cfg, _db: db })
    }

    /// Replaces the rules file (the engine reads it at the next reload or start).
    fn write_rules(&self, rules: &str) {
        std::fs::write(self.cfg.path().join("rules.toml"), rules).unwrap();
    }
}

/// Sends `body` as JSON with the token.
async fn send(e: &Engine, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{}{path}", e.http))
        .bearer_auth(&e.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Creates a resident with `labels` and `thresholds`.
async fn put_resident(e: &Engine, id: &str, labels: Value, thresholds: Value) {
    let body = json!({
        "name": format!("Resident {id}"),
        "region": "tianhe",
        "time_zone": "Asia/Shanghai",
        "labels": labels,
        "thresholds": thresholds,
    });
    let (s, v) = send(e, Method::PUT, &format!("/api/residents/{id}"), Some(body)).await;
    assert_eq!(s, 201, "resident {id}: {v}");
}

/// Registers devices (a JSON array of registrations).
async fn register(e: &Engine, devices: Value) {
    let (s, v) = e.post("/api/devices", devices).await;
    assert_eq!(s, 201, "registering devices: {v}");
}

/// A suppression for `resident` of every kind until `until`; returns its id.
async fn suppress(e: &Engine, resident: &str, until: DateTime<Utc>) -> i64 {
    let (s, v) = e
        .post(
            "/api/suppressions",
            json!({"resident_id": resident, "reason": "visiting family", "until": rfc3339(until)}),
        )
        .await;
    assert_eq!(s, 201, "suppression: {v}");
    v["id"].as_i64().unwrap()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A time the API gave.
fn ts(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap_or_else(|e| panic!("not RFC 3339: {v}: {e}"))
        .with_timezone(&Utc)
}

/// Every alert, most urgent first.
async fn all_alerts(e: &Engine) -> Vec<Value> {
    e.alerts("limit=5000").await
}

/// The alerts of `rule` that `pick` selects.
async fn alerts_of(e: &Engine, rule: &str, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
    all_alerts(e)
        .await
        .into_iter()
        .filter(|a| a["rule"] == rule && pick(a))
        .collect()
}

/// Waits for an alert of `rule` that `pick` selects.
async fn wait_alert(e: &Engine, rule: &str, pick: impl Fn(&Value) -> bool) -> Value {
    let pick = &pick;
    poll(&format!("a {rule} alert"), || async move {
        alerts_of(e, rule, pick).await.into_iter().next()
    })
    .await
}

/// One alert with its timeline (`GET /api/alerts/{id}`).
async fn alert(e: &Engine, id: &Value) -> Value {
    let (s, v) = e.get(&format!("/api/alerts/{id}")).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Waits until alert `id` satisfies `ok`; returns it with its timeline.
async fn wait_alert_state(
    e: &Engine,
    id: &Value,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let ok = &ok;
    poll(what, || async move {
        let a = alert(e, id).await;
        ok(&a).then_some(a)
    })
    .await
}

/// The details of an alert's timeline entries of `action`, in order.
fn entries(alert: &Value, action: &str) -> Vec<Value> {
    alert["timeline"]
        .as_array()
        .unwrap_or_else(|| panic!("no timeline: {alert}"))
        .iter()
        .filter(|t| t["action"] == action)
        .map(|t| match &t["detail"] {
            Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
            d => d.clone(),
        })
        .collect()
}

/// The single `opened` entry's detail of a deadline-opened alert.
fn opened(alert: &Value) -> Value {
    let o = entries(alert, "opened");
    assert_eq!(o.len(), 1, "one opened entry: {alert}");
    o[0].clone()
}

/// Publishes a heartbeat from `device` and waits until it is stored: every deadline of its
/// shard due before it has fired by then (the shard fires them ahead of the message, in
/// the same commit).
async fn flush(e: &Engine, device: &str) {
    let before = e.metric("anxin_ingest_events_accepted_total").await;
    e.publish(device, r#"{"type":"heartbeat"}"#);
    e.wait_metric("anxin_ingest_events_accepted_total", before + 1.0)
        .await;
}

/// Publishes `payload` from `device` and waits until it is stored.
async fn publish_stored(e: &Engine, device: &str, payload: &str) {
    let before = e.metric("anxin_ingest_events_accepted_total").await;
    e.publish(device, payload);
    e.wait_metric("anxin_ingest_events_accepted_total", before + 1.0)
        .await;
}

/// Lets time pass until `t`, checking all along that `still` holds (what must not happen
/// has not happened).
async fn hold_until(what: &str, t: DateTime<Utc>, still: impl AsyncFn() -> bool) {
    let started = std::time::Instant::now();
    while Utc::now() < t {
        assert!(still().await, "{what}");
        assert!(started.elapsed() < DEADLINE, "{t} is too far ahead");
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    assert!(still().await, "{what}");
}

fn ms(d: Duration) -> i64 {
    d.num_milliseconds()
}

fn heart_rate(bpm: u32) -> String {
    format!(r#"{{"type":"vitals","heart_rate":{bpm}}}"#)
}

const MOTION: &str = r#"{"type":"motion"}"#;

/// `HH:MM` in Asia/Shanghai (UTC+8 all year) at `t`.
fn shanghai_hhmm(t: DateTime<Utc>) -> String {
    (t + Duration::hours(8)).format("%H:%M").to_string()
}

/// A rules file using every rule key of the contract, on a scale of seconds. `now` places
/// one `active` window around the present and one away from it.
fn every_key_rules(now: DateTime<Utc>) -> String {
    let covering = format!(
        "{}-{}",
        shanghai_hhmm(now - Duration::hours(1)),
        shanghai_hhmm(now + Duration::hours(2))
    );
    let excluding = format!(
        "{}-{}",
        shanghai_hhmm(now + Duration::hours(3)),
        shanghai_hhmm(now + Duration::hours(4))
    );
    format!(
        r#"
# The table is what the SOS rule's own `escalate` overrides and what the fault rule uses.
[escalation]
critical = ["60s", "180s"]
low = ["2s", "4s"]

[[rule]]
name = "sos"
event = "sos"
severity = "critical"
escalate = ["2s", "4s"]

[[rule]]
name = "fall"
event = "fall"
severity = "critical"

[[rule]]
name = "fall_then_still"
follows = ["fall"]
absent = ["motion", "door"]
after = "5s"
severity = "critical"

[[rule]]
name = "hr_high"
event = "vitals"
kind = "vitals"
severity = "high"
when = [{{ field = "heart_rate", op = ">", value = 120, override = "hr_high" }}]
for = "2s"
clear = [{{ field = "heart_rate", op = "<=", value = 90 }}]

[[rule]]
name = "inactivity"
absent = ["motion", "door"]
after = "3s"
per = "resident"
residents = {{ lives_alone = "true" }}
devices = {{ room = "!bedroom" }}
severity = "high"
kind = "inactivity"

[[rule]]
name = "hub_offline"
absent = ["any"]
per = "device"
after = "report_interval"
grace = "1s"
devices = {{ type = "hub" }}
severity = "medium"
kind = "offline"

[[rule]]
name = "door_now"
event = "door"
kind = "door_now"
when = [{{ field = "state", op = "==", value = "open" }}]
active = "{covering}"
severity = "medium"

[[rule]]
name = "door_later"
event = "door"
kind = "door_later"
when = [{{ field = "state", op = "==", value = "open" }}]
active = "{excluding}"
severity = "medium"

[[rule]]
name = "device_fault"
event = "fault"
severity = "low"
"#
    )
}

async fn every_rule_key_of_the_contract_works_on_the_real_clock(b: Backend) {
    let Some(w) = World::start(b, &every_key_rules(Utc::now())).await else {
        return;
    };
    let e = &w.e;
    put_resident(
        e,
        "r1",
        json!({"lives_alone": "true"}),
        json!({"hr_high": 100}),
    )
    .await;
    put_resident(e, "r2", json!({"lives_alone": "false"}), json!({})).await;
    put_resident(e, "r3", json!({}), json!({})).await;
    put_resident(e, "r4", json!({}), json!({})).await;
    register(
        e,
        json!([
            {"id": "w1", "type": "watch", "resident_id": "r1"},
            {"id": "pir-hall", "type": "pir", "room": "hall", "resident_id": "r1"},
            {"id": "pir-bed", "type": "pir", "room": "bedroom", "resident_id": "r1"},
            {"id": "pir-2", "type": "pir", "room": "hall", "resident_id": "r2"},
            {"id": "p3", "type": "pendant", "resident_id": "r3"},
            {"id": "pir-3", "type": "pir", "room": "hall", "resident_id": "r3"},
            {"id": "p4", "type": "pendant", "resident_id": "r4"},
            {"id": "pir-4", "type": "pir", "room": "hall", "resident_id": "r4"},
            {"id": "hub-1", "type": "hub", "report_interval": "2s"},
        ]),
    )
    .await;

    // Started first, checked last: they take a few seconds by themselves.
    e.publish("s1", r#"{"type":"sos"}"#);
    e.publish("f1", r#"{"type":"fault","code":"E7"}"#);
    e.publish("p3", r#"{"type":"fall"}"#);
    // follows: a fall, then movement in the household well within `after`: no raise.
    e.publish("p4", r#"{"type":"fall"}"#);
    let fall4 = wait_alert(e, "fall", |a| a["device_id"] == "p4").await;
    publish_stored(e, "pir-4", MOTION).await;
    let moved_after = Utc::now() - ts(&fall4["opened_at"]);
    assert!(
        moved_after < Duration::seconds(4),
        "the box is too slow for this test: the motion was stored {moved_after} after the fall alert opened (after = 5s)"
    );

    // absent + after, per resident, with both selectors: r1's hall PIR counts, its bedroom
    // PIR does not (`room = "!bedroom"`); r2 does not live alone and is not watched.
    // (An absence that came due while setting up is cleared by the hall motion: look at
    // the unresolved one.)
    publish_stored(e, "pir-hall", MOTION).await;
    let bedroom_at = Utc::now();
    publish_stored(e, "pir-bed", MOTION).await;
    let ina = wait_alert(e, "inactivity", |a| {
        a["resident_id"] == "r1" && a["status"] != "resolved"
    })
    .await;
    assert_eq!(
        (
            ina["kind"].as_str(),
            ina["severity"].as_str(),
            ina["device_id"].as_str()
        ),
        (Some("inactivity"), Some("high"), Some("pir-hall")),
        "{ina}"
    );
    let ina = alert(e, &ina["id"]).await;
    let o = opened(&ina);
    let since = ts(&o["since"]);
    assert!(
        since < bedroom_at,
        "the bedroom motion must not count: since {since}, bedroom motion at {bedroom_at}: {ina}"
    );
    assert_eq!(ms(ts(&o["due_at"]) - since), 3000, "after = 3s: {o}");
    assert_eq!(o["late"], false, "{o}");
    flush(e, "pir-2").await;
    assert!(
        alerts_of(e, "inactivity", |a| a["resident_id"] == "r2")
            .await
            .is_empty(),
        "r2 does not live alone"
    );

    // per = "device", after = "report_interval": the hub's registered 2s plus a 1s grace;
    // only the hub is selected (`devices = { type = "hub" }`). Its next message clears it.
    let hub = wait_alert(e, "hub_offline", |a| a["device_id"] == "hub-1").await;
    assert_eq!(hub["kind"], "offline");
    let hub_id = hub["id"].clone();
    let o = opened(&alert(e, &hub_id).await);
    assert_eq!(
        ms(ts(&o["due_at"]) - ts(&o["since"])),
        3000,
        "2s interval + 1s grace: {o}"
    );
    e.publish("hub-1", r#"{"type":"heartbeat"}"#);
    let hub = wait_alert_state(e, &hub_id, "the hub alert cleared", |a| {
        a["status"] == "resolved"
    })
    .await;
    assert_eq!(hub["outcome"], "cleared", "{hub}");
    assert_eq!(entries(&hub, "cleared").len(), 1, "{hub}");
    assert!(
        alerts_of(e, "hub_offline", |a| a["device_id"] != "hub-1")
            .await
            .is_empty(),
        "only the hub is supervised"
    );

    // for + override: r1's threshold is 100, so 105 bpm starts the `for`; the alert opens
    // 2s later by itself. clear: 85 bpm resolves it (high, open, unacknowledged).
    let w1_at = Utc::now();
    e.publish("w1", &heart_rate(105));
    let hr = wait_alert(e, "hr_high", |a| a["device_id"] == "w1").await;
    let hr_id = hr["id"].clone();
    let o = opened(&alert(e, &hr_id).await);
    let since = ts(&o["since"]);
    let due = ts(&o["due_at"]);
    assert!(since >= w1_at, "{o}");
    assert_eq!(ms(due - since), 2000, "for = 2s: {o}");
    assert!(ts(&hr["opened_at"]) >= due, "opened at the deadline: {hr}");
    assert_eq!(o["late"], false);
    e.publish("w1", &heart_rate(85));
    let hr = wait_alert_state(e, &hr_id, "the heart-rate alert cleared", |a| {
        a["status"] == "resolved"
    })
    .await;
    assert_eq!(hr["outcome"], "cleared", "{hr}");
    let actions: Vec<&str> = hr["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["opened", "cleared", "resolved"], "{hr}");

    // for cancelled: w2 has no resident (threshold 120); a reading of 80 cancels the
    // pending 130, so nothing opens at its deadline ...
    let a_at = Utc::now();
    e.publish("w2", &heart_rate(130));
    e.publish("w2", &heart_rate(80));
    hold_until(
        "a cancelled `for` opened an alert",
        a_at + Duration::milliseconds(3500),
        async || {
            alerts_of(e, "hr_high", |a| a["device_id"] == "w2")
                .await
                .is_empty()
        },
    )
    .await;
    flush(e, "w2").await;
    assert!(
        alerts_of(e, "hr_high", |a| a["device_id"] == "w2")
            .await
            .is_empty()
    );
    // ... and the next 130 starts a fresh one, counted from itself.
    let c_at = Utc::now();
    e.publish("w2", &heart_rate(130));
    let hr2 = wait_alert(e, "hr_high", |a| a["device_id"] == "w2").await;
    let o = opened(&alert(e, &hr2["id"]).await);
    assert!(
        ts(&o["since"]) >= c_at,
        "counted from the second reading: {o}"
    );
    assert_eq!(ms(ts(&o["due_at"]) - ts(&o["since"])), 2000, "{o}");

    // active: the same door event opens the rule whose window covers now, not the other
    // (both are decided in the one commit).
    e.publish("door-x", r#"{"type":"door","state":"open"}"#);
    wait_alert(e, "door_now", |a| a["device_id"] == "door-x").await;
    assert!(
        alerts_of(e, "door_later", |_| true).await.is_empty(),
        "the window excluding now opened an alert"
    );

    // escalate: the SOS rule's own steps (2s, 4s) win over the table's 60s; the fault rule
    // (low) takes the table's. Level 1 then 2 on the same alert.
    for (rule, device) in [("sos", "s1"), ("device_fault", "f1")] {
        let a = wait_alert(e, rule, |a| a["device_id"] == device).await;
        let a = wait_alert_state(e, &a["id"], &format!("{rule} at level 2"), |a| {
            a["escalation_level"] == 2
        })
        .await;
        let opened_at = ts(&a["opened_at"]);
        let esc = entries(&a, "escalated");
        assert_eq!(esc.len(), 2, "{a}");
        for (i, step) in esc.iter().enumerate() {
            assert_eq!(step["level"], i as i64 + 1, "{a}");
            assert_eq!(step["reason"], "unacknowledged", "{a}");
            assert_eq!(step["late"], false, "{a}");
            assert_eq!(
                ms(ts(&step["due_at"]) - opened_at),
                2000 * (i as i64 + 1),
                "{rule} steps: {a}"
            );
        }
        assert_eq!(
            alerts_of(e, rule, |a| a["device_id"] == device).await.len(),
            1,
            "escalation raises the alert, it opens no other"
        );
    }

    // follows: r3's fall with no movement for 5s raises the fall alert by one level ...
    let fall3 = wait_alert(e, "fall", |a| a["device_id"] == "p3").await;
    let fall3 = wait_alert_state(e, &fall3["id"], "the fall raised by correlation", |a| {
        a["escalation_level"] == 1
    })
    .await;
    let esc = entries(&fall3, "escalated");
    assert_eq!(esc.len(), 1, "{fall3}");
    assert_eq!(
        (
            esc[0]["reason"].as_str(),
            esc[0]["rule"].as_str(),
            esc[0]["level"].as_i64()
        ),
        (Some("correlation"), Some("fall_then_still"), Some(1)),
        "{fall3}"
    );
    assert_eq!(
        ms(ts(&esc[0]["due_at"]) - ts(&fall3["opened_at"])),
        5000,
        "{fall3}"
    );
    assert!(
        all_alerts(e)
            .await
            .iter()
            .all(|a| a["rule"] != "fall_then_still"),
        "a correlation opens no alert of its own"
    );
    // ... while r4, who moved, stays at level 0 past the deadline.
    let fall4_due = ts(&fall4["opened_at"]) + Duration::seconds(5);
    let fall4_id = fall4["id"].clone();
    hold_until(
        "r4 moved, yet the fall was raised",
        fall4_due + Duration::milliseconds(500),
        async || alert(e, &fall4_id).await["escalation_level"] == 0,
    )
    .await;
    flush(e, "p4").await;
    let fall4 = alert(e, &fall4_id).await;
    assert_eq!(fall4["escalation_level"], 0, "{fall4}");
    assert!(entries(&fall4, "escalated").is_empty(), "{fall4}");
}
on_both_stores!(every_rule_key_of_the_contract_works_on_the_real_clock);

const SUPPRESSION_RULES: &str = r#"
[[rule]]
name = "sos"
event = "sos"
severity = "critical"

[[rule]]
name = "inactivity"
absent = ["motion", "door"]
after = "2s"
residents = { lives_alone = "true" }
severity = "high"
kind = "inactivity"
"#;

async fn a_suppression_holds_an_absence_back_but_never_an_sos(b: Backend) {
    let Some(w) = World::start(b, SUPPRESSION_RULES).await else {
        return;
    };
    let e = &w.e;
    put_resident(e, "rs", json!({"lives_alone": "true"}), json!({})).await;
    put_resident(e, "rc", json!({"lives_alone": "true"}), json!({})).await;

    let until = Utc::now() + Duration::hours(1);
    let ok = json!({"resident_id": "rs", "reason": "in hospital", "until": rfc3339(until)});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = ok.clone();
        f(&mut b);
        b
    };
    for (what, body, needle) in [
        (
            "no until",
            with(&|b| {
                b.as_object_mut().unwrap().remove("until");
            }),
            "until is mandatory",
        ),
        (
            "until in the past",
            with(&|b| b["until"] = json!(rfc3339(Utc::now() - Duration::minutes(5)))),
            "not in the future",
        ),
        (
            "unknown resident",
            with(&|b| b["resident_id"] = json!("nobody")),
            "resident_id \"nobody\": no such resident",
        ),
        (
            "kinds naming sos",
            with(&|b| b["kinds"] = json!(["inactivity", "sos"])),
            "kinds names \"sos\"",
        ),
    ] {
        let (s, v) = e.post("/api/suppressions", body).await;
        assert_eq!(s, 422, "{what}: {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(needle),
            "{what}: {needle:?} not in {error:?}"
        );
    }
    let (_, list) = e.get("/api/suppressions").await;
    assert_eq!(list["items"], json!([]), "nothing refused was stored");

    let (s, sup) = e.post("/api/suppressions", ok.clone()).await;
    assert_eq!(s, 201, "{sup}");
    assert_eq!(sup["kinds"], Value::Null, "every kind but the four: {sup}");
    let sup_id = sup["id"].clone();

    // Both households are counted from now; rc's absence opens, rs's is held back.
    register(
        e,
        json!([
            {"id": "ps", "type": "pendant", "resident_id": "rs"},
            {"id": "pir-s", "type": "pir", "room": "hall", "resident_id": "rs"},
            {"id": "pir-c", "type": "pir", "room": "hall", "resident_id": "rc"},
        ]),
    )
    .await;
    wait_alert(e, "inactivity", |a| a["resident_id"] == "rc").await;
    let counted = poll("the suppression to count the held absence", || async {
        let (_, list) = e.get("/api/suppressions").await;
        list["items"]
            .as_array()?
            .iter()
            .find(|s| s["id"] == sup_id && s["suppressed_count"].as_i64() > Some(0))
            .cloned()
    })
    .await;
    assert_eq!(counted["resident_id"], "rs", "{counted}");
    flush(e, "pir-s").await;
    assert!(
        alerts_of(e, "inactivity", |a| a["resident_id"] == "rs")
            .await
            .is_empty(),
        "a suppressed absence opened an alert"
    );

    // An SOS is never suppressed.
    e.publish("ps", r#"{"type":"sos"}"#);
    let sos = wait_alert(e, "sos", |a| a["device_id"] == "ps").await;
    assert_eq!(
        (sos["resident_id"].as_str(), sos["severity"].as_str()),
        (Some("rs"), Some("critical")),
        "{sos}"
    );

    // Ending it early: gone from the list, a second DELETE finds nothing, and the absence
    // it held back is looked at again: rs has still not moved.
    let path = format!("/api/suppressions/{sup_id}");
    assert_eq!(send(e, Method::DELETE, &path, None).await.0, 204);
    let (_, list) = e.get("/api/suppressions").await;
    assert_eq!(list["items"], json!([]), "{list}");
    assert_eq!(send(e, Method::DELETE, &path, None).await.0, 404);
    let ina = wait_alert(e, "inactivity", |a| a["resident_id"] == "rs").await;
    assert_eq!(ina["status"], "open", "{ina}");
}
on_both_stores!(a_suppression_holds_an_absence_back_but_never_an_sos);

const DURABLE_RULES: &str = r#"
[[rule]]
name = "sos"
event = "sos"
severity = "critical"
escalate = ["8s", "10s"]

[[rule]]
name = "hr_high"
event = "vitals"
kind = "vitals"
severity = "high"
when = [{ field = "heart_rate", op = ">", value = 120 }]
for = "8s"

[[rule]]
name = "inactivity"
absent = ["motion"]
after = "8s"
residents = { watch = "slow" }
severity = "high"
kind = "inactivity"

[[rule]]
name = "inactivity_fast"
absent = ["motion"]
after = "1s"
residents = { watch = "fast" }
severity = "high"
kind = "inactivity_fast"
"#;

/// Lets the clock pass `t` (nothing to poll: the engine is down).
async fn wait_past(t: DateTime<Utc>) {
    assert!(
        t - Utc::now() < Duration::seconds(30),
        "{t} is too far ahead"
    );
    while Utc::now() <= t {
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
}

/// The one alert of `rule` for `device`, with its timeline.
async fn only_alert(e: &Engine, rule: &str, device: &str) -> Value {
    let all = alerts_of(e, rule, |a| a["device_id"] == device).await;
    assert_eq!(
        all.len(),
        1,
        "exactly one {rule} alert for {device}: {all:?}"
    );
    alert(e, &all[0]["id"]).await
}

/// What the durability scenario expects of the alerts after a restart: each deadline fired
/// once, late.
async fn fired_once_and_late(e: &Engine) {
    let hr = only_alert(e, "hr_high", "hr-1").await;
    let o = opened(&hr);
    assert_eq!(o["late"], true, "{hr}");
    assert_eq!(ms(ts(&o["due_at"]) - ts(&o["since"])), 8000, "{hr}");

    let ina = only_alert(e, "inactivity", "pir-d").await;
    let o = opened(&ina);
    assert_eq!(o["late"], true, "{ina}");
    assert_eq!(ms(ts(&o["due_at"]) - ts(&o["since"])), 8000, "{ina}");

    let held = only_alert(e, "inactivity_fast", "pir-s").await;
    assert_eq!(opened(&held)["late"], true, "{held}");

    let sos = only_alert(e, "sos", "s-1").await;
    assert_eq!(sos["escalation_level"], 2, "{sos}");
    let esc = entries(&sos, "escalated");
    let levels: Vec<i64> = esc.iter().map(|d| d["level"].as_i64().unwrap()).collect();
    assert_eq!(levels, [1, 2], "one entry per level: {sos}");
    assert!(esc.iter().all(|d| d["late"] == true), "{sos}");
}

async fn deadlines_pending_at_a_sigkill_fire_once_late_at_restart(b: Backend) {
    let Some(mut w) = World::start(b, DURABLE_RULES).await else {
        return;
    };
    let e = &mut w.e;
    put_resident(e, "rd", json!({"watch": "slow"}), json!({})).await;
    put_resident(e, "rs", json!({"watch": "fast"}), json!({})).await;
    let sup_at = Utc::now();
    let until = sup_at + Duration::seconds(7);
    let sup_id = suppress(e, "rs", until).await;
    register(
        e,
        json!([
            {"id": "pir-d", "type": "pir", "room": "hall", "resident_id": "rd"},
            {"id": "pir-s", "type": "pir", "room": "hall", "resident_id": "rs"},
        ]),
    )
    .await;
    // A pending absence (rd, 8s), a pending `for` (8s), a pending escalation (8s, 10s) and
    // rs's absence (1s) held back by the suppression until `until`.
    publish_stored(e, "pir-d", MOTION).await;
    publish_stored(e, "pir-s", MOTION).await;
    publish_stored(e, "hr-1", &heart_rate(130)).await;
    e.publish("s-1", r#"{"type":"sos"}"#);
    let sos = wait_alert(e, "sos", |a| a["device_id"] == "s-1").await;
    poll("the suppression to hold rs's absence back", || async {
        let (_, list) = e.get("/api/suppressions").await;
        list["items"]
            .as_array()?
            .iter()
            .any(|s| s["id"] == sup_id && s["suppressed_count"].as_i64() > Some(0))
            .then_some(())
    })
    .await;
    // Every deadline but the held absence's lies after `until` (8s from events sent after
    // the suppression was made).
    let killed_at = Utc::now();
    e.kill();
    assert!(
        killed_at < until - Duration::milliseconds(500),
        "the box is too slow for this test: setting up took until {killed_at}, the suppression ends at {until}"
    );

    // Down until every one of them is past due.
    let last_due = (ts(&sos["opened_at"]) + Duration::seconds(10))
        .max(killed_at + Duration::seconds(8))
        .max(until);
    wait_past(last_due + Duration::milliseconds(500)).await;
    e.spawn(&[]);
    e.wait_ready().await;
    wait_alert(e, "hr_high", |a| a["device_id"] == "hr-1").await;
    wait_alert(e, "inactivity", |a| a["device_id"] == "pir-d").await;
    wait_alert(e, "inactivity_fast", |a| a["device_id"] == "pir-s").await;
    wait_alert_state(e, &sos["id"], "the SOS at level 2", |a| {
        a["escalation_level"] == 2
    })
    .await;
    for d in ["pir-d", "pir-s", "hr-1", "s-1"] {
        flush(e, d).await;
    }
    fired_once_and_late(e).await;

    // Once means once: another start fires none of them again.
    e.kill();
    e.spawn(&[]);
    e.wait_ready().await;
    for d in ["pir-d", "pir-s", "hr-1", "s-1"] {
        flush(e, d).await;
    }
    fired_once_and_late(e).await;
}
on_both_stores!(deadlines_pending_at_a_sigkill_fire_once_late_at_restart);

/// Rules with one `for` and one immediate fault rule of severity `fault_severity`.
fn reload_rules(fault_severity: &str) -> String {
    format!(
        r#"
[[rule]]
name = "sos"
event = "sos"
severity = "critical"

[[rule]]
name = "hr_high"
event = "vitals"
kind = "vitals"
severity = "high"
when = [{{ field = "heart_rate", op = ">", value = 120 }}]
for = "3s"

[[rule]]
name = "device_fault"
event = "fault"
severity = "{fault_severity}"
"#
    )
}

async fn a_reload_keeps_the_pending_deadlines_of_unchanged_rules(b: Backend) {
    let Some(w) = World::start(b, &reload_rules("low")).await else {
        return;
    };
    let e = &w.e;
    publish_stored(e, "hr-1", &heart_rate(130)).await;
    // One rule changes; the pending `for` of the other must survive the reload.
    w.write_rules(&reload_rules("medium"));
    let (s, v) = e.post("/api/config/reload", Value::Null).await;
    assert_eq!(s, 200, "{v}");
    let hr = wait_alert(e, "hr_high", |a| a["device_id"] == "hr-1").await;
    let o = opened(&alert(e, &hr["id"]).await);
    let due = ts(&o["due_at"]);
    assert_eq!(ms(due - ts(&o["since"])), 3000, "{o}");
    assert_eq!(o["late"], false, "{o}");
    let lag = ts(&hr["opened_at"]) - due;
    assert!(
        lag >= Duration::zero() && lag < Duration::seconds(2),
        "on time: opened {lag} after its deadline: {hr}"
    );
    // The changed rule is in force.
    e.publish("f-1", r#"{"type":"fault","code":"E1"}"#);
    let fault = wait_alert(e, "device_fault", |a| a["device_id"] == "f-1").await;
    assert_eq!(fault["severity"], "medium", "{fault}");
}
on_both_stores!(a_reload_keeps_the_pending_deadlines_of_unchanged_rules);

async fn a_broken_rules_file_is_refused_and_the_rules_in_force_keep_running(b: Backend) {
    let Some(w) = World::start(b, &reload_rules("low")).await else {
        return;
    };
    let e = &w.e;
    // Valid TOML, invalid rules: every problem comes back located.
    let mut broken = reload_rules("low");
    broken.push_str(
        "\n[[rule]]\nname = \"still\"\nabsent = [\"motion\"]\nafter = \"5x\"\nseverity = \"high\"\n",
    );
    let after_line = broken
        .lines()
        .position(|l| l.starts_with("after = \"5x\""))
        .unwrap()
        + 1;
    w.write_rules(&broken);
    let (s, v) = e.post("/api/config/reload", Value::Null).await;
    assert_eq!(s, 422, "{v}");
    let problems = v["problems"].to_string();
    assert!(
        problems.contains(&format!("rules.toml:{after_line}")) && problems.contains("5x"),
        "{problems}"
    );
    // Not TOML at all.
    w.write_rules("[[rule]\nname = \"sos\"\n");
    let (s, v) = e.post("/api/config/reload", Value::Null).await;
    assert_eq!(s, 422, "{v}");
    let problems = v["problems"].to_string();
    assert!(
        problems.contains("rules.toml:1") && problems.contains("not valid TOML"),
        "{problems}"
    );
    // The old rules still run.
    e.publish("s-1", r#"{"type":"sos"}"#);
    let sos = wait_alert(e, "sos", |a| a["device_id"] == "s-1").await;
    assert_eq!(sos["severity"], "critical");
    assert!(
        all_alerts(e).await.iter().all(|a| a["rule"] != "still"),
        "a refused rule is not in force"
    );
}
on_both_stores!(a_broken_rules_file_is_refused_and_the_rules_in_force_keep_running);

/// A rules file with one v2 mistake per rule; each line below names the line of the file a
/// problem must be reported at and a piece of its message.
const BAD_RULES: &str = r#"[[rule]]
name = "sos"
event = "sos"
severity = "high"

[[rule]]
name = "mixed"
event = "motion"
absent = ["motion"]
after = "1h"
severity = "low"

[[rule]]
name = "interval_per_resident"
absent = ["any"]
after = "report_interval"
per = "resident"
severity = "low"

[[rule]]
name = "bad_duration"
event = "vitals"
when = [{ field = "heart_rate", op = ">", value = 120 }]
for = "5x"
severity = "high"

[[rule]]
name = "empty_window"
event = "door"
active = "06:00-06:00"
severity = "high"

[[rule]]
name = "clear_is_when"
event = "water"
when = [{ field = "state", op = "==", value = "leak" }]
clear = [{ field = "state", op = "==", value = "leak" }]
severity = "high"

[[rule]]
name = "text_override"
event = "fault"
when = [{ field = "code", op = "==", value = "E1", override = "code_x" }]
severity = "low"

[[rule]]
name = "follows_nothing"
follows = ["nosuch"]
absent = ["motion"]
after = "2m"
severity = "critical"
"#;

#[test]
fn check_config_names_every_v2_problem_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("profiles")).unwrap();
    std::fs::write(dir.path().join("rules.toml"), BAD_RULES).unwrap();
    let conf = dir.path().join("anxin.toml");
    std::fs::write(
        &conf,
        "rules_file = \"rules.toml\"\n[profiles]\ndir = \"profiles\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anxin"))
        .arg("check-config")
        .arg("--config")
        .arg(&conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line_of = |needle: &str| {
        BAD_RULES
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in the file"))
            + 1
    };
    let file = dir.path().join("rules.toml").display().to_string();
    for (line, message) in [
        // Whole-rule problems are reported at the rule's [[rule]] line.
        (line_of("name = \"sos\"") - 1, "severity high"),
        (line_of("name = \"mixed\"") - 1, "not both"),
        (line_of("per = \"resident\"") - 1, "needs per = \"device\""),
        (line_of("\"5x\""), "\"5x\""),
        (line_of("06:00-06:00"), "is empty"),
        (
            line_of("name = \"clear_is_when\"") - 1,
            "identical to `when`",
        ),
        (line_of("code_x"), "code is not a number"),
        (
            line_of("name = \"follows_nothing\"") - 1,
            "no rule is named \"nosuch\"",
        ),
    ] {
        let at = format!("{file}:{line}:");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&at) && l.contains(message)),
            "{message:?} at {at} missing from:\n{err}"
        );
    }
    assert!(err.contains("8 problem(s)"), "{err}");
}
