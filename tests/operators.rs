//! Users, logins and roles over the operator API (CONTRACT.md "Care records"), against the
//! real binary on each store: the bootstrap admin creates users, users log in (bearer token
//! and session cookie), what they do on an alert carries their login, of several operators
//! claiming one alert one wins and the others are told who has it, roles refuse what they may
//! not do (403), and disabling a user or changing its password ends its logins.

mod common;

use common::{Backend, Engine, EngineOpts, TempDb, on_both_stores, poll};
use reqwest::Method;
use serde_json::{Value, json};

async fn start(backend: Backend) -> Option<(Engine, Option<TempDb>)> {
    let mut opts = EngineOpts::default();
    let db = backend.configure(&mut opts).await?;
    Some((Engine::start(opts).await, db))
}

/// Sends `body` as JSON with `token` (none: no credential).
async fn call(
    e: &Engine,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("http://{}{path}", e.http));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn create_user(e: &Engine, login: &str, role: &str) -> i64 {
    let (s, u) = call(
        e,
        Some(&e.token),
        Method::POST,
        "/api/users",
        Some(
            json!({"login": login, "name": format!("User {login}"), "role": role,
                    "regions": ["tianhe"], "password": format!("pw-of-{login}")}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{u}");
    assert_eq!(
        (u["login"].as_str(), u["role"].as_str()),
        (Some(login), Some(role))
    );
    u["id"].as_i64().unwrap()
}

async fn login(e: &Engine, login: &str, password: &str) -> (u16, Value, Option<String>) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/login", e.http))
        .json(&json!({"login": login, "password": password}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, resp.json().await.unwrap_or(Value::Null), cookie)
}

/// Puts resident `resident` in `region` with device `device` (as the bootstrap admin).
async fn place(e: &Engine, device: &str, resident: &str, region: &str, card: Value) {
    let (s, v) = call(
        e,
        Some(&e.token),
        Method::PUT,
        &format!("/api/residents/{resident}"),
        Some(json!({"name": format!("Resident {resident}"), "region": region, "card": card})),
    )
    .await;
    assert!(s == 200 || s == 201, "{v}");
    let (s, v) = call(
        e,
        Some(&e.token),
        Method::POST,
        "/api/devices",
        Some(json!([{"id": device, "type": "pendant", "resident_id": resident}])),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

async fn token_of(e: &Engine, user: &str) -> String {
    let (s, body, _) = login(e, user, &format!("pw-of-{user}")).await;
    assert_eq!(s, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn users_are_created_by_admins_and_refused_clearly(backend: Backend) {
    let Some((e, _db)) = start(backend).await else {
        return;
    };
    let li = create_user(&e, "op.li", "operator").await;
    let (s, err) = call(
        &e,
        Some(&e.token),
        Method::POST,
        "/api/users",
        Some(json!({"login": "op.li", "name": "Another Li", "role": "operator", "password": "longenough"})),
    )
    .await;
    assert_eq!(
        (s, err["error"].as_str()),
        (409, Some("login \"op.li\" is taken"))
    );
    for (body, names) in [
        (
            json!({"login": "x", "name": "X", "role": "root", "password": "longenough"}),
            "role",
        ),
        (
            json!({"login": "x", "name": "X", "role": "operator", "password": "short"}),
            "password",
        ),
        (
            json!({"login": "x", "name": "X", "role": "operator"}),
            "password",
        ),
        (
            json!({"login": "a b", "name": "X", "role": "operator", "password": "longenough"}),
            "login",
        ),
        (
            json!({"login": "x", "name": " ", "role": "operator", "password": "longenough"}),
            "name",
        ),
        (
            json!({"login": "x", "name": "X", "role": "operator", "password": "longenough", "admin": true}),
            "admin",
        ),
    ] {
        let (s, err) = call(
            &e,
            Some(&e.token),
            Method::POST,
            "/api/users",
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, 422, "{body} → {err}");
        assert!(
            err["error"].as_str().unwrap().contains(names),
            "{body} → {err}"
        );
    }

    // Only admins manage users; nobody sees a password or its hash.
    let op = token_of(&e, "op.li").await;
    let (s, _) = call(&e, Some(&op), Method::GET, "/api/users", None).await;
    assert_eq!(s, 403);
    let (s, err) = call(
        &e,
        Some(&op),
        Method::POST,
        "/api/users",
        Some(json!({"login": "mine", "name": "Me", "role": "admin", "password": "longenough"})),
    )
    .await;
    assert_eq!(s, 403, "{err}");
    assert!(err["error"].as_str().unwrap().contains("operator"), "{err}");
    let (s, err) = call(&e, Some(&op), Method::POST, "/api/config/reload", None).await;
    assert_eq!(s, 403, "{err}");
    let (s, list) = call(&e, Some(&e.token), Method::GET, "/api/users", None).await;
    assert_eq!(s, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(
        !list.to_string().contains("argon2") && !list.to_string().contains("pw-of"),
        "{list}"
    );
    let (s, _) = call(
        &e,
        Some(&e.token),
        Method::PUT,
        "/api/users/999999",
        Some(json!({"login": "ghost", "name": "Ghost", "role": "operator"})),
    )
    .await;
    assert_eq!(s, 404);

    // Logins: one answer for a wrong password and an unknown login; the metric counts both.
    let (s1, wrong_pw, _) = login(&e, "op.li", "not-her-password").await;
    let (s2, unknown, _) = login(&e, "nobody", "pw-of-nobody").await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(wrong_pw, unknown, "nothing tells which part was wrong");
    assert_eq!(e.metric("anxin_api_logins_refused_total").await, 2.0);
    let (s, body, cookie) = login(&e, "op.li", "pw-of-op.li").await;
    assert_eq!((s, body["user"]["id"].as_i64()), (200, Some(li)));
    let cookie = cookie.expect("a session cookie");
    assert!(
        cookie.starts_with("anxin_session=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // The cookie alone is a credential (the console), as the bearer token is (scripts).
    let session = cookie.split(';').next().unwrap().to_owned();
    let resp = reqwest::Client::new()
        .get(format!("http://{}/api/alerts", e.http))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (s, _) = call(&e, Some("not-a-token"), Method::GET, "/api/alerts", None).await;
    assert_eq!(s, 401);

    // Changing her password ends her logins; disabling a user ends its logins and its next.
    let (s, _) = call(
        &e,
        Some(&e.token),
        Method::PUT,
        &format!("/api/users/{li}"),
        Some(json!({"login": "op.li", "name": "Li Na", "role": "supervisor", "password": "a-new-secret"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(&e, Some(&op), Method::GET, "/api/alerts", None).await;
    assert_eq!(s, 401, "the token of the old password no longer works");
    let (s, _, _) = login(&e, "op.li", "pw-of-op.li").await;
    assert_eq!(s, 401);
    let (s, body, _) = login(&e, "op.li", "a-new-secret").await;
    assert_eq!(
        (s, body["user"]["role"].as_str()),
        (200, Some("supervisor"))
    );
    let fresh = body["token"].as_str().unwrap().to_owned();
    let (s, u) = call(
        &e,
        Some(&e.token),
        Method::PUT,
        &format!("/api/users/{li}"),
        Some(json!({"login": "op.li", "name": "Li Na", "role": "supervisor", "disabled": true})),
    )
    .await;
    assert_eq!((s, u["disabled"].as_bool()), (200, Some(true)));
    let (s, _) = call(&e, Some(&fresh), Method::GET, "/api/alerts", None).await;
    assert_eq!(s, 401);
    let (s, _, _) = login(&e, "op.li", "a-new-secret").await;
    assert_eq!(s, 401);
    let log = e.log();
    assert!(
        !log.contains("pw-of-") && !log.contains("a-new-secret"),
        "no password in the log"
    );
}
on_both_stores!(users_are_created_by_admins_and_refused_clearly);

async fn operators_act_on_alerts_under_their_own_names(backend: Backend) {
    let Some((e, _db)) = start(backend).await else {
        return;
    };
    let ops = ["op.a", "op.b", "op.c", "op.d", "op.e"];
    for op in ops {
        create_user(&e, op, "operator").await;
    }
    create_user(&e, "inst.zhao", "installer").await;
    let mut tokens = Vec::new();
    for op in ops {
        tokens.push((op, token_of(&e, op).await));
    }
    let installer = token_of(&e, "inst.zhao").await;
    place(&e, "pendant-7", "r-7", "tianhe", json!({})).await;

    e.publish("pendant-7", r#"{"type":"sos"}"#);
    let er = &e;
    let id = poll("the sos alert", || async move {
        er.alerts("device_id=pendant-7&kind=sos")
            .await
            .first()
            .and_then(|a| a["id"].as_i64())
    })
    .await;

    // An installer reads alerts but does not handle them.
    let (s, _) = call(
        &e,
        Some(&installer),
        Method::GET,
        &format!("/api/alerts/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    for (path, body) in [
        ("ack", json!({})),
        ("resolve", json!({"outcome": "other"})),
        ("calls", json!({"to": "resident", "outcome": "answered"})),
        ("notes", json!({"text": "hi"})),
    ] {
        let (s, err) = call(
            &e,
            Some(&installer),
            Method::POST,
            &format!("/api/alerts/{id}/{path}"),
            Some(body),
        )
        .await;
        assert_eq!(s, 403, "{path}: {err}");
    }

    // Five operators claim it at once: one wins; each other is told who has it.
    let claims: Vec<_> = tokens
        .iter()
        .map(|(op, t)| {
            let (http, t, op) = (e.http, t.clone(), op.to_string());
            tokio::spawn(async move {
                let resp = reqwest::Client::new()
                    .post(format!("http://{http}/api/alerts/{id}/ack"))
                    .bearer_auth(t)
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap();
                (
                    op,
                    resp.status().as_u16(),
                    resp.json::<Value>().await.unwrap(),
                )
            })
        })
        .collect();
    let mut results = Vec::new();
    for c in claims {
        results.push(c.await.unwrap());
    }
    let winners: Vec<_> = results.iter().filter(|r| r.1 == 200).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = winners[0].0.clone();
    assert_eq!(
        winners[0].2["acknowledged_by"].as_str(),
        Some(winner.as_str())
    );
    for (op, status, body) in results.iter().filter(|r| r.1 != 200) {
        assert_eq!(
            (*status, body["holder"].as_str()),
            (409, Some(winner.as_str())),
            "{op}: {body}"
        );
    }

    // The winner rings the resident, a colleague notes something; each under their name.
    let token = |op: &str| tokens.iter().find(|(o, _)| *o == op).unwrap().1.clone();
    let other = ops.iter().find(|o| **o != winner).unwrap().to_string();
    let (s, _) = call(
        &e,
        Some(&token(&winner)),
        Method::POST,
        &format!("/api/alerts/{id}/calls"),
        Some(json!({"to": "resident", "outcome": "answered", "note": "she pressed it by mistake"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = call(
        &e,
        Some(&token(&other)),
        Method::POST,
        &format!("/api/alerts/{id}/notes"),
        Some(json!({"text": "Pendant strap worn; replace at next visit."})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, a) = call(
        &e,
        Some(&token(&winner)),
        Method::POST,
        &format!("/api/alerts/{id}/resolve"),
        Some(json!({"outcome": "false_alarm"})),
    )
    .await;
    assert_eq!((s, a["resolved_by"].as_str()), (200, Some(winner.as_str())));

    let (_, full) = call(
        &e,
        Some(&e.token),
        Method::GET,
        &format!("/api/alerts/{id}"),
        None,
    )
    .await;
    let steps = common::operator_steps(&full);
    let want: Vec<(String, String)> = [
        (winner.as_str(), "acknowledged"),
        (winner.as_str(), "call"),
        (other.as_str(), "note"),
        (winner.as_str(), "resolved"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(steps, want, "{full}");
}
on_both_stores!(operators_act_on_alerts_under_their_own_names);

/// The issue's whole workflow through the API: an SOS over MQTT, claimed, two calls, a carer
/// dispatched, checked in and out with a rating, resolved — each step on the timeline with
/// its actor, and the service record readable by resident and month.
async fn an_sos_is_handled_from_claim_to_visit_to_resolution(backend: Backend) {
    let Some((e, _db)) = start(backend).await else {
        return;
    };
    create_user(&e, "op.chen", "operator").await;
    create_user(&e, "inst.zhao", "installer").await;
    let op = token_of(&e, "op.chen").await;
    let installer = token_of(&e, "inst.zhao").await;
    let admin = Some(e.token.as_str());
    let (s, v) = call(
        &e,
        admin,
        Method::PUT,
        "/api/residents/r-wang",
        Some(json!({"name": "Wang Fang", "region": "tianhe", "time_zone": "Asia/Shanghai",
                    "card": {"id_number": WANG_ID, "phones": [WANG_PHONE],
                             "residence_address": {"detail": "天河路1号302", "lat": 23.1291, "lon": 113.2644},
                             "contacts": [{"name": "Wang Jun", "relation": "son", "phone": SON_PHONE}]}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &e,
        admin,
        Method::POST,
        "/api/devices",
        Some(json!([{"id": "pendant-9", "type": "pendant", "resident_id": "r-wang"}])),
    )
    .await;
    assert!(s == 200 || s == 201, "{v}");

    e.publish("pendant-9", r#"{"type":"sos"}"#);
    let er = &e;
    let id = poll("the sos alert", || async move {
        er.alerts("device_id=pendant-9&kind=sos")
            .await
            .first()
            .and_then(|a| a["id"].as_i64())
    })
    .await;
    // Where she is and how her vitals were: on the alert's detail for the operator.
    e.publish(
        "pendant-9",
        r#"{"type":"position","lat":23.1291,"lon":113.2644,"source":"gps"}"#,
    );
    e.publish(
        "pendant-9",
        r#"{"type":"vitals","heart_rate":88,"spo2":97}"#,
    );
    let op = Some(op.as_str());
    let detail = poll(
        "the alert's detail with position and vitals",
        || async move {
            let (_, d) = call(er, op, Method::GET, &format!("/api/alerts/{id}"), None).await;
            (d["last_position"]["fields"]["lat"].is_number()
                && d["vitals_24h"].as_array().is_some_and(|v| !v.is_empty()))
            .then_some(d)
        },
    )
    .await;
    assert_eq!(
        detail["vitals_24h"][0]["fields"]["heart_rate"],
        json!(88),
        "{detail}"
    );
    assert_eq!(detail["devices"][0]["id"], json!("pendant-9"), "{detail}");
    assert_eq!(detail["resident"]["name"], json!("Wang Fang"), "{detail}");
    let post = |path: String, body: Value| {
        let e = &e;
        async move { call(e, op, Method::POST, &path, Some(body)).await }
    };

    let (s, _) = post(format!("/api/alerts/{id}/ack"), json!({})).await;
    assert_eq!(s, 200);
    for (to, outcome) in [("resident", "no_answer"), ("contact1", "answered")] {
        let (s, v) = post(
            format!("/api/alerts/{id}/calls"),
            json!({"to": to, "outcome": outcome}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = call(
        &e,
        Some(&installer),
        Method::POST,
        &format!("/api/alerts/{id}/dispatch"),
        Some(json!({"provider": "Tianhe Home Care", "worker": "Liu Yang"})),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = post(
        format!("/api/alerts/{id}/dispatch"),
        json!({"provider": "Tianhe Home Care", "worker": "Liu Yang"}),
    )
    .await;
    assert_eq!(
        (s, v["alert"]["status"].as_str()),
        (201, Some("dispatched")),
        "{v}"
    );
    let record = v["record_id"].as_i64().unwrap();
    let (s, v) = post(
        format!("/api/alerts/{id}/dispatch"),
        json!({"provider": "P", "worker": "W"}),
    )
    .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (409, Some("dispatched")),
        "one dispatch: {v}"
    );

    // Out before in, a rating of 6, half a position: refused, nothing changes.
    let (s, v) = post(
        format!("/api/records/{record}/check-out"),
        json!({"rating": 4}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("dispatched"), "{v}");
    let (s, v) = post(
        format!("/api/records/{record}/check-in"),
        json!({"lat": 23.1}),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = post(
        format!("/api/records/{record}/check-in"),
        json!({"lat": 23.1293, "lon": 113.2644}),
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("on_site")), "{v}");
    // At her door (about 22 m by GPS): not flagged.
    assert_eq!(v["check_in_far"], json!(false), "{v}");
    assert!(v["check_in_distance_m"].as_f64().unwrap() < 50.0, "{v}");
    let (s, v) = post(
        format!("/api/records/{record}/check-out"),
        json!({"rating": 6}),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("rating"), "{v}");
    let (s, v) = post(
        format!("/api/records/{record}/check-out"),
        json!({"items": ["safety check", "blood pressure"], "content": "Found her on the floor, unhurt; helped up.",
               "outcome": "resident well", "rating": 5, "lat": 23.1291, "lon": 113.2644}),
    )
    .await;
    assert_eq!(
        (s, v["status"].as_str(), v["rating"].as_i64()),
        (200, Some("done"), Some(5)),
        "{v}"
    );
    let (s, v) = post(format!("/api/records/{record}/check-in"), json!({})).await;
    assert_eq!(s, 409, "{v}");
    let (s, _) = post("/api/records/999999/check-in".into(), json!({})).await;
    assert_eq!(s, 404);

    // The follow-up call (回访): once, after the visit, with a result from the list.
    let (s, v) = post(
        format!("/api/records/{record}/follow-up"),
        json!({"result": "happy"}),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    let next = (chrono::Utc::now() + chrono::Duration::days(7)).to_rfc3339();
    let (s, v) = post(
        format!("/api/records/{record}/follow-up"),
        json!({"result": "satisfied", "note": "daughter thanked the carer", "next_visit_at": next}),
    )
    .await;
    assert_eq!(
        (s, v["follow_up"]["by"].as_str()),
        (200, Some("op.chen")),
        "{v}"
    );
    assert!(v["next_visit_at"].is_string(), "{v}");
    let (s, v) = post(
        format!("/api/records/{record}/follow-up"),
        json!({"result": "neutral"}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("followed up"), "{v}");

    let (s, v) = post(
        format!("/api/alerts/{id}/resolve"),
        json!({"outcome": "carer_visited"}),
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("resolved")), "{v}");

    let (_, full) = call(&e, op, Method::GET, &format!("/api/alerts/{id}"), None).await;
    let steps = common::operator_steps(&full);
    let want: Vec<(String, String)> = [
        "acknowledged",
        "call",
        "call",
        "dispatched",
        "check_in",
        "check_out",
        "follow_up",
        "resolved",
    ]
    .iter()
    .map(|a| ("op.chen".to_owned(), (*a).to_owned()))
    .collect();
    assert_eq!(steps, want, "{full}");

    // The record, by id and in the resident's month.
    let (s, r) = call(&e, op, Method::GET, &format!("/api/records/{record}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            r["alert_id"].as_i64(),
            r["resident_id"].as_str(),
            r["worker"].as_str(),
            r["opened_by"].as_str()
        ),
        (Some(id), Some("r-wang"), Some("Liu Yang"), Some("op.chen"))
    );
    assert_eq!(r["items"], json!(["safety check", "blood pressure"]));
    assert!(
        r["check_in_at"].is_string() && r["check_out"]["lat"].is_number(),
        "{r}"
    );
    // A planned visit, not tied to an alert, is a record of the same resident.
    let (s, v) = post(
        "/api/records".into(),
        json!({"resident_id": "nobody", "provider": "P", "worker": "W"}),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    let (s, planned) = post(
        "/api/records".into(),
        json!({"resident_id": "r-wang", "provider": "Tianhe Home Care", "worker": "Liu Yang", "planned_at": next}),
    )
    .await;
    assert_eq!(
        (s, planned["status"].as_str(), planned["alert_id"].as_i64()),
        (201, Some("dispatched"), None),
        "{planned}"
    );
    let (s, _) = post(
        format!("/api/records/{}/check-in", planned["id"]),
        json!({}),
    )
    .await;
    assert_eq!(s, 200);
    let month = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y-%m")
        .to_string();
    let (s, list) = call(
        &e,
        op,
        Method::GET,
        &format!("/api/records?resident_id=r-wang&month={month}"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list}");
    let (s, list) = call(
        &e,
        op,
        Method::GET,
        "/api/records?resident_id=r-wang&month=2020-01",
        None,
    )
    .await;
    assert_eq!((s, list["items"].as_array().map(Vec::len)), (200, Some(0)));
    let (s, _) = call(&e, op, Method::GET, "/api/records?month=2026-13", None).await;
    assert_eq!(s, 400);
    // The planned visit's carer clocked in from across town: flagged.
    let (_, far) = call(
        &e,
        op,
        Method::GET,
        &format!("/api/records/{}", planned["id"]),
        None,
    )
    .await;
    assert_eq!(far["check_in_far"], json!(null), "no position given: {far}");

    // The whole workflow left no ID-card or phone number in the log.
    let log = e.log();
    for secret in [WANG_ID, WANG_PHONE, SON_PHONE] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}
on_both_stores!(an_sos_is_handled_from_claim_to_visit_to_resolution);

/// Wang Fang's ID-card number (GB 11643-1999's own example, a woman born 1949-12-31), her
/// phone and her son's.
const WANG_ID: &str = "11010519491231002X";
const WANG_PHONE: &str = "13812345678";
const SON_PHONE: &str = "13900001111";
