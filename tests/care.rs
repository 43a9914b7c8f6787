//! Regions, scoping, masking, the audit log and the monthly report over the operator API
//! (CONTRACT.md "Care records"), against the real binary on each store: an operator of one
//! district gets 404 for every read and write of another district's resident, device, alert,
//! record and report and never sees its alerts on the live feed; a supervisor of the city
//! above sees both; ID-card and phone numbers reach operators masked; every write is in the
//! append-only audit log with who, what, when and from where.

mod common;

use std::pin::Pin;
use std::time::Duration;

use anxin::domain::card::id_check_char;
use common::{Backend, Engine, EngineOpts, TempDb, on_both_stores, poll};
use futures_util::{Stream, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};

async fn start(backend: Backend) -> Option<(Engine, Option<TempDb>)> {
    let mut opts = EngineOpts::default();
    let db = backend.configure(&mut opts).await?;
    Some((Engine::start(opts).await, db))
}

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
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A valid GB 11643 number for someone born on `birth` (`YYYYMMDD`), male when `seq` is odd.
fn id_number(area: &str, birth: &str, seq: &str) -> String {
    let first17 = format!("{area}{birth}{seq}");
    format!("{first17}{}", id_check_char(&first17).unwrap())
}

async fn user(e: &Engine, login: &str, role: &str, regions: &[&str]) -> String {
    let password = format!("pw-of-{login}");
    let (s, v) = call(
        e,
        &e.token,
        Method::POST,
        "/api/users",
        Some(
            json!({"login": login, "name": login, "role": role, "regions": regions,
                    "password": password}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/login", e.http))
        .json(&json!({"login": login, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// Puts `resident` (the body's other fields: `extra`) in `region` with pendant `device`, as
/// the bootstrap admin; answers the resident as written.
async fn place(e: &Engine, resident: &str, region: &str, device: &str, extra: Value) -> Value {
    let mut body = json!({"name": resident, "region": region});
    if let Value::Object(m) = extra {
        body.as_object_mut().unwrap().extend(m);
    }
    let (s, v) = call(
        e,
        &e.token,
        Method::PUT,
        &format!("/api/residents/{resident}"),
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, d) = call(
        e,
        &e.token,
        Method::POST,
        "/api/devices",
        Some(json!([{"id": device, "type": "pendant", "resident_id": resident}])),
    )
    .await;
    assert_eq!(s, 201, "{d}");
    v
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// The `alert` events of a live-feed connection, as (alert id, device id).
struct Feed {
    body: Body,
    buf: String,
}

impl Feed {
    async fn open(e: &Engine, token: &str) -> Feed {
        let resp = reqwest::Client::new()
            .get(format!("http://{}/api/stream", e.http))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        Feed {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    async fn next_alert(&mut self) -> (i64, String) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if block.lines().any(|l| l.trim() == "event: alert") {
                    let data = block
                        .lines()
                        .find_map(|l| l.strip_prefix("data:"))
                        .unwrap()
                        .trim();
                    let v: Value = serde_json::from_str(data).unwrap();
                    return (
                        v["alert_id"].as_i64().unwrap(),
                        v["device_id"].as_str().unwrap().to_owned(),
                    );
                }
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(30), self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                other => panic!("the stream ended or stalled: {other:?}"),
            }
        }
    }
}

async fn an_operator_sees_only_the_regions_below_theirs(backend: Backend) {
    let Some((e, _db)) = start(backend).await else {
        return;
    };
    let admin = e.token.clone();
    // Guangdong → Guangzhou → Tianhe and Yuexiu.
    for (id, name, parent) in [
        ("gd", "广东省", None),
        ("gz", "广州市", Some("gd")),
        ("tianhe", "天河区", Some("gz")),
        ("yuexiu", "越秀区", Some("gz")),
    ] {
        let (s, v) = call(
            &e,
            &admin,
            Method::PUT,
            &format!("/api/regions/{id}"),
            Some(json!({"name": name, "parent": parent})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = call(
        &e,
        &admin,
        Method::PUT,
        "/api/regions/gd",
        Some(json!({"name": "广东省", "parent": "tianhe"})),
    )
    .await;
    assert_eq!(s, 422, "a region below itself: {v}");

    let id_a = id_number("440106", "19450315", "123");
    let id_b = id_number("440104", "19500101", "224");
    for (resident, region, id_no, phone, device) in [
        ("r-a", "tianhe", &id_a, "13812345678", "pend-a"),
        ("r-b", "yuexiu", &id_b, "13987654321", "pend-b"),
    ] {
        let v = place(
            &e,
            resident,
            region,
            device,
            json!({"card": {
                "id_number": id_no, "phones": [phone], "living_situation": "alone",
                "contacts": [{"name": "女儿", "relation": "daughter", "phone": "13700001111"}]}}),
        )
        .await;
        assert_eq!(v["labels"]["lives_alone"], json!("true"), "{v}");
    }
    // One person, one record: the same ID number for a resident of another region.
    let (s, v) = call(
        &e,
        &admin,
        Method::PUT,
        "/api/residents/r-c",
        Some(json!({"name": "r-c", "region": "yuexiu", "card": {"id_number": id_a}})),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(!v.to_string().contains(&id_a), "{v}");

    let op = user(&e, "op.tianhe", "operator", &["tianhe"]).await;
    let sup = user(&e, "sup.gz", "supervisor", &["gz"]).await;
    let installer = user(&e, "inst.tianhe", "installer", &["tianhe"]).await;

    // The live feed of Tianhe's operator: Yuexiu's SOS, then Tianhe's; only Tianhe's arrives.
    let mut feed = Feed::open(&e, &op).await;
    e.publish("pend-b", r#"{"type":"sos"}"#);
    let er = &e;
    let alert_b = poll("yuexiu's alert", || async move {
        er.alerts("device_id=pend-b").await.first()?["id"].as_i64()
    })
    .await;
    e.publish("pend-a", r#"{"type":"sos"}"#);
    let (first, device) = feed.next_alert().await;
    assert_eq!(
        device, "pend-a",
        "alert {first} of {device} reached the wrong region"
    );
    let alert_a = first;

    // Another region's service record.
    let (s, v) = call(
        &e,
        &admin,
        Method::POST,
        &format!("/api/alerts/{alert_b}/dispatch"),
        Some(json!({"provider": "越秀居家", "worker": "Liu"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let record_b = v["record_id"].as_i64().unwrap();

    // Every read and write of Yuexiu's things: 404, as if they did not exist.
    let missing: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/api/residents/r-b".into(), None),
        (
            Method::PUT,
            "/api/residents/r-b".into(),
            Some(json!({"name": "x", "region": "yuexiu"})),
        ),
        (Method::DELETE, "/api/residents/r-b".into(), None),
        (
            Method::PUT,
            "/api/residents/r-new".into(),
            Some(json!({"name": "x", "region": "yuexiu"})),
        ),
        (Method::GET, "/api/devices/pend-b".into(), None),
        (
            Method::PUT,
            "/api/devices/pend-b".into(),
            Some(json!({"id": "pend-b", "type": "pendant", "resident_id": "r-a"})),
        ),
        (Method::DELETE, "/api/devices/pend-b".into(), None),
        (Method::GET, "/api/devices/pend-b/frames".into(), None),
        (Method::GET, format!("/api/alerts/{alert_b}"), None),
        (
            Method::POST,
            format!("/api/alerts/{alert_b}/ack"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/alerts/{alert_b}/resolve"),
            Some(json!({"outcome": "other"})),
        ),
        (
            Method::POST,
            format!("/api/alerts/{alert_b}/calls"),
            Some(json!({"to": "resident", "outcome": "answered"})),
        ),
        (
            Method::POST,
            format!("/api/alerts/{alert_b}/notes"),
            Some(json!({"text": "x"})),
        ),
        (
            Method::POST,
            format!("/api/alerts/{alert_b}/dispatch"),
            Some(json!({"provider": "p", "worker": "w"})),
        ),
        (Method::GET, format!("/api/records/{record_b}"), None),
        (
            Method::POST,
            format!("/api/records/{record_b}/check-in"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/records/{record_b}/check-out"),
            Some(json!({"items": ["meals"], "rating": 5})),
        ),
        (
            Method::POST,
            format!("/api/records/{record_b}/follow-up"),
            Some(json!({"result": "satisfied"})),
        ),
        (
            Method::GET,
            "/api/reports/monthly?month=2026-12&region=yuexiu".into(),
            None,
        ),
        (
            Method::GET,
            "/api/reports/monthly?month=2026-12&region=gz".into(),
            None,
        ),
    ];
    for (method, path, body) in missing {
        let (s, v) = call(&e, &op, method.clone(), &path, body).await;
        assert_eq!(s, 404, "{method} {path}: {v}");
    }
    // Writes naming another region's resident in the body: as for a resident that is not.
    for (path, body) in [
        (
            "/api/records",
            json!({"resident_id": "r-b", "provider": "p", "worker": "w"}),
        ),
        (
            "/api/suppressions",
            json!({"resident_id": "r-b", "reason": "x", "until": "2099-01-01T00:00:00Z"}),
        ),
        (
            "/api/devices",
            json!([{"id": "pend-new", "type": "pendant", "resident_id": "r-b"}]),
        ),
    ] {
        let (s, v) = call(&e, &op, Method::POST, path, Some(body)).await;
        assert_eq!(s, 422, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains("r-b"), "{v}");
    }
    // Lists hold Tianhe's only.
    let ids = |v: &Value, key: &str| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i[key].to_string().trim_matches('"').to_owned())
            .collect()
    };
    let (_, v) = call(&e, &op, Method::GET, "/api/alerts", None).await;
    assert_eq!(ids(&v, "id"), vec![alert_a.to_string()]);
    let (_, v) = call(&e, &op, Method::GET, "/api/residents", None).await;
    assert_eq!(ids(&v, "id"), vec!["r-a"]);
    let (_, v) = call(&e, &op, Method::GET, "/api/devices", None).await;
    assert_eq!(ids(&v, "id"), vec!["pend-a"]);
    let (_, v) = call(&e, &op, Method::GET, "/api/records", None).await;
    assert!(ids(&v, "id").is_empty(), "{v}");
    let (_, v) = call(&e, &op, Method::GET, "/api/regions", None).await;
    assert_eq!(ids(&v, "id"), vec!["tianhe"]);
    // The supervisor of the city sees both districts.
    let (_, v) = call(&e, &sup, Method::GET, "/api/alerts", None).await;
    assert_eq!(ids(&v, "id").len(), 2, "{v}");
    let (s, _) = call(&e, &sup, Method::GET, "/api/residents/r-b", None).await;
    assert_eq!(s, 200);

    // Masking: the operator reads numbers masked, the supervisor in full.
    let (s, card_op) = call(&e, &op, Method::GET, "/api/residents/r-a", None).await;
    assert_eq!(s, 200);
    let masked_id = format!("{}********{}", &id_a[..6], &id_a[14..]);
    assert_eq!(card_op["card"]["id_number"], json!(masked_id), "{card_op}");
    assert_eq!(card_op["card"]["phones"], json!(["138****5678"]));
    assert_eq!(
        card_op["card"]["contacts"][0]["phone"],
        json!("137****1111")
    );
    assert!(!card_op.to_string().contains(&id_a));
    let (_, detail) = call(
        &e,
        &op,
        Method::GET,
        &format!("/api/alerts/{alert_a}"),
        None,
    )
    .await;
    assert_eq!(detail["resident"]["card"]["id_number"], json!(masked_id));
    assert!(!detail.to_string().contains("13812345678"), "{detail}");
    let (_, card_sup) = call(&e, &sup, Method::GET, "/api/residents/r-a", None).await;
    assert_eq!(card_sup["card"]["id_number"], json!(id_a));
    assert_eq!(card_sup["card"]["phones"], json!(["13812345678"]));

    // Roles: the installer of Tianhe may not resolve Tianhe's alert.
    let (s, v) = call(
        &e,
        &installer,
        Method::POST,
        &format!("/api/alerts/{alert_a}/resolve"),
        Some(json!({"outcome": "other"})),
    )
    .await;
    assert_eq!(s, 403, "{v}");

    // Nothing of Yuexiu changed.
    let (_, b) = call(
        &e,
        &admin,
        Method::GET,
        &format!("/api/alerts/{alert_b}"),
        None,
    )
    .await;
    assert_eq!(b["status"], json!("dispatched"), "{b}");
    let (s, _) = call(&e, &admin, Method::GET, "/api/residents/r-b", None).await;
    assert_eq!(s, 200);

    // The report of the operator's own district answers; the operator's report without a
    // region covers only it.
    let (s, v) = call(
        &e,
        &op,
        Method::GET,
        "/api/reports/monthly?month=2026-12&region=tianhe",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, csv) = call(
        &e,
        &sup,
        Method::GET,
        "/api/reports/monthly?month=2026-12&region=gz&format=csv",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        csv.as_str()
            .unwrap()
            .starts_with("section,provider,key,value"),
        "{csv}"
    );

    // The audit log: the refused writes and the successful ones, with who and from where.
    let (s, log) = call(&e, &admin, Method::GET, "/api/audit?actor=op.tianhe", None).await;
    assert_eq!(s, 200, "{log}");
    let entries = log["items"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|x| x["path"] == json!(format!("/api/alerts/{alert_b}/ack"))
                && x["status"] == json!(404)
                && x["remote"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("127.0.0.1:"))),
        "{log}"
    );
    assert!(
        entries
            .iter()
            .all(|x| x["actor"] == json!("op.tianhe") && x["role"] == json!("operator")),
        "{log}"
    );
    let (_, all) = call(&e, &admin, Method::GET, "/api/audit?limit=1000", None).await;
    assert!(
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["path"] == json!("/api/login") && x["actor"] == json!("sup.gz")),
        "{all}"
    );
    let (s, _) = call(&e, &op, Method::GET, "/api/audit", None).await;
    assert_eq!(s, 403);

    // No ID-card or phone number in the engine's log.
    let log = e.log();
    for secret in [
        id_a.as_str(),
        id_b.as_str(),
        "13812345678",
        "13987654321",
        "13700001111",
    ] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}
on_both_stores!(an_operator_sees_only_the_regions_below_theirs);

/// One template row: header → value, every required column filled with a sound value.
fn template_row(name: &str, id_no: &str, gender: &str, birth: &str) -> Vec<(&'static str, String)> {
    [
        ("姓名*", name),
        ("性别*", gender),
        ("身份证号*", id_no),
        ("出生日期", birth),
        ("民族*", "汉"),
        ("联系手机*", "13812345678"),
        ("户籍省份*", "广东省"),
        ("户籍地市*", "广州市"),
        ("户籍区(县)*", "天河区"),
        ("户籍街道*", "石牌街道"),
        ("户籍详细地址*", "天河路1号"),
        ("常住省份*", "广东省"),
        ("常住地市*", "广州市"),
        ("常住街道*", "石牌街道"),
        ("常住详细地址*", "天河路1号302"),
        ("居住情况*", "2"),
        ("婚姻状况*", "2"),
        ("身体状况*", "1"),
        ("文化程度*", "4"),
        ("经济来源*", "1"),
        ("参加工作时间(年)", "1968"),
        ("第一紧急联系人姓名", "陈二"),
        ("第一紧急联系人电话", "13900001111"),
        ("希望提供服务*", "1、4"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

fn set(row: &mut Vec<(&'static str, String)>, column: &'static str, value: &str) {
    row.retain(|(c, _)| *c != column);
    row.push((column, value.to_owned()));
}

fn template_csv(rows: &[Vec<(&'static str, String)>]) -> String {
    let columns = anxin::domain::import::COLUMNS;
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(columns).unwrap();
    for r in rows {
        w.write_record(columns.iter().map(|c| {
            r.iter()
                .find(|(k, _)| k == c)
                .map_or("", |(_, v)| v.as_str())
        }))
        .unwrap();
    }
    String::from_utf8(w.into_inner().unwrap()).unwrap()
}

async fn import(
    e: &Engine,
    token: &str,
    query: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/residents/import?{query}", e.http))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn the_template_imports_its_sound_rows_and_names_every_rejected_one(backend: Backend) {
    let Some((e, _db)) = start(backend).await else {
        return;
    };
    let admin = e.token.clone();
    let wang = id_number("440106", "19450315", "123");
    let li = id_number("440106", "19480720", "246");
    let zhang = id_number("440106", "19400101", "111");
    let mut rows = vec![
        // 1, 2: sound.
        template_row("王一", &wang, "男", "1945/03/15"),
        template_row("李二", &li, "女", "1948/07/20"),
    ];
    // 3: a wrong check character.
    let mut bad_check = id_number("440106", "19500505", "135");
    let last = if bad_check.ends_with('1') { "2" } else { "1" };
    bad_check.replace_range(17.., last);
    rows.push(template_row("赵三", &bad_check, "男", "1950/05/05"));
    // 4: a birth date the ID number does not carry.
    rows.push(template_row(
        "钱四",
        &id_number("440106", "19520202", "357"),
        "男",
        "1952/02/03",
    ));
    // 5: a working life that began in 1905.
    let mut r = template_row(
        "孙五",
        &id_number("440106", "19530303", "579"),
        "男",
        "1953/03/03",
    );
    set(&mut r, "参加工作时间(年)", "1905");
    rows.push(r);
    // 6: row 1's ID number again.
    rows.push(template_row("王一", &wang, "男", "1945/03/15"));
    // 7: a code out of range.
    let mut r = template_row(
        "周七",
        &id_number("440106", "19440404", "791"),
        "男",
        "1944/04/04",
    );
    set(&mut r, "婚姻状况*", "7");
    rows.push(r);
    // 8: a required field missing.
    let mut r = template_row(
        "吴八",
        &id_number("440106", "19460606", "913"),
        "男",
        "1946/06/06",
    );
    set(&mut r, "民族*", "");
    rows.push(r);
    // 9: sound, living alone with dementia.
    let mut r = template_row("张九", &zhang, "男", "1940/01/01");
    set(&mut r, "居住情况*", "1");
    set(&mut r, "病例(史)", "6");
    rows.push(r);
    // 10: the template's own example row.
    rows.push(template_row(
        "陈一",
        "440111196012236789",
        "男",
        "1960/12/23",
    ));
    let text = template_csv(&rows);
    let (gb, _, unmappable) = encoding_rs::GB18030.encode(&text);
    assert!(!unmappable);

    // Operators do not import; nobody imports into a region they do not work in.
    let op = user(&e, "op.tianhe", "operator", &["tianhe"]).await;
    let sup_yx = user(&e, "sup.yuexiu", "supervisor", &["yuexiu"]).await;
    let (s, _) = import(&e, &op, "region=tianhe", "text/csv", gb.to_vec()).await;
    assert_eq!(s, 403);
    let (s, _) = import(&e, &sup_yx, "region=tianhe", "text/csv", gb.to_vec()).await;
    assert_eq!(s, 404);

    // A dry run reports and writes nothing.
    let (s, dry) = import(
        &e,
        &admin,
        "region=tianhe&dry_run=true",
        "text/csv",
        gb.to_vec(),
    )
    .await;
    assert_eq!(s, 200, "{dry}");
    assert_eq!(
        (dry["imported"].as_i64(), dry["dry_run"].as_bool()),
        (Some(3), Some(true))
    );
    let (_, v) = call(&e, &admin, Method::GET, "/api/residents", None).await;
    assert_eq!(v["items"], json!([]), "a dry run wrote: {v}");

    // GB18030, as Chinese spreadsheets save it.
    let (s, report) = import(&e, &admin, "region=tianhe", "text/csv", gb.to_vec()).await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(
        (
            report["imported"].as_i64(),
            report["updated"].as_i64(),
            report["unchanged"].as_i64()
        ),
        (Some(3), Some(0), Some(0)),
        "{report}"
    );
    let rejected: Vec<(i64, String)> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["row"].as_i64().unwrap(),
                r["column"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (row, column) in [
        (3, "身份证号*"),
        (4, "出生日期"),
        (5, "参加工作时间(年)"),
        (6, "身份证号*"),
        (7, "婚姻状况*"),
        (8, "民族*"),
        (10, "身份证号*"),
        (10, "性别*"),
    ] {
        assert!(
            rejected.contains(&(row, column.to_owned())),
            "row {row} column {column} not rejected: {report}"
        );
    }
    assert!(
        rejected.iter().all(|(r, _)| ![1, 2, 9].contains(r)),
        "{report}"
    );
    for r in report["rejected"].as_array().unwrap() {
        assert!(!r["reason"].as_str().unwrap().is_empty(), "{r}");
    }
    assert!(
        !report.to_string().contains(&wang),
        "an ID number in the report: {report}"
    );

    // The rows are residents of the region, with labels from their card.
    let (_, v) = call(&e, &admin, Method::GET, "/api/residents", None).await;
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{v}");
    let zhang_card = items.iter().find(|r| r["name"] == json!("张九")).unwrap();
    assert_eq!(zhang_card["region"], json!("tianhe"));
    assert_eq!(
        zhang_card["labels"]["lives_alone"],
        json!("true"),
        "{zhang_card}"
    );
    assert_eq!(
        zhang_card["labels"]["dementia"],
        json!("true"),
        "{zhang_card}"
    );
    assert_eq!(zhang_card["card"]["id_number"], json!(zhang));
    assert_eq!(zhang_card["card"]["gender"], json!("male"));

    // The same file again: nothing changes. As UTF-8 this time.
    let (_, again) = import(
        &e,
        &admin,
        "region=tianhe",
        "text/csv",
        text.clone().into_bytes(),
    )
    .await;
    assert_eq!(
        (
            again["imported"].as_i64(),
            again["updated"].as_i64(),
            again["unchanged"].as_i64()
        ),
        (Some(0), Some(0), Some(3)),
        "{again}"
    );
    // A changed phone is an update; the same people into another region are refused.
    let mut changed = rows[..2].to_vec();
    set(&mut changed[0], "联系手机*", "13811112222");
    let (_, upd) = import(
        &e,
        &admin,
        "region=tianhe",
        "text/csv",
        template_csv(&changed).into_bytes(),
    )
    .await;
    assert_eq!(
        (upd["updated"].as_i64(), upd["unchanged"].as_i64()),
        (Some(1), Some(1)),
        "{upd}"
    );
    let (_, other) = import(
        &e,
        &admin,
        "region=yuexiu",
        "text/csv",
        template_csv(&changed).into_bytes(),
    )
    .await;
    assert_eq!(other["imported"].as_i64(), Some(0), "{other}");
    assert_eq!(other["rejected"].as_array().unwrap().len(), 2, "{other}");
    assert!(
        other["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("another region"),
        "{other}"
    );

    // The spreadsheet itself: an ID typed as text, a phone as a number, a date cell.
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    let liu = id_number("440106", "19470808", "135");
    let mut r = template_row("刘十", &liu, "男", "");
    r.retain(|(k, _)| *k != "联系手机*" && *k != "出生日期");
    for (c, name) in anxin::domain::import::COLUMNS.iter().enumerate() {
        let c = c as u16;
        sheet.write_string(0, c, *name).unwrap();
        match *name {
            "联系手机*" => {
                sheet.write_number(1, c, 13812345678.0).unwrap();
            }
            "出生日期" => {
                let d = rust_xlsxwriter::ExcelDateTime::from_ymd(1947, 8, 8).unwrap();
                let f = rust_xlsxwriter::Format::new().set_num_format("yyyy/mm/dd");
                sheet.write_datetime_with_format(1, c, &d, &f).unwrap();
            }
            _ => {
                if let Some((_, v)) = r.iter().find(|(k, _)| k == name) {
                    sheet.write_string(1, c, v).unwrap();
                }
            }
        }
    }
    let xlsx = book.save_to_buffer().unwrap();
    let (s, v) = import(
        &e,
        &admin,
        "region=tianhe",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        xlsx,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["imported"].as_i64(), Some(1), "{v}");

    // Not a template at all: 400 or 422 with a reason, nothing written.
    let (s, v) = import(
        &e,
        &admin,
        "region=tianhe",
        "text/csv",
        b"name,phone\nx,y\n".to_vec(),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("姓名"), "{v}");
    let (_, v) = call(&e, &admin, Method::GET, "/api/residents", None).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 4);
    let log = e.log();
    for n in [&wang, &li, &zhang, &liu] {
        assert!(!log.contains(n.as_str()), "an ID number in the log");
    }
}
on_both_stores!(the_template_imports_its_sound_rows_and_names_every_rejected_one);

async fn providers_and_workers_are_region_records_and_far_check_ins_are_flagged(backend: Backend) {
    let Some((e, _db)) = start(backend).await else {
        return;
    };
    let admin = e.token.clone();
    for (id, region) in [("p-th", "tianhe"), ("p-yx", "yuexiu")] {
        let (s, v) = call(
            &e,
            &admin,
            Method::PUT,
            &format!("/api/providers/{id}"),
            Some(json!({"name": format!("{region} 居家服务"), "region": region, "phone": "020-12345678"})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    for (id, provider) in [("w-th", "p-th"), ("w-yx", "p-yx")] {
        let (s, v) = call(
            &e,
            &admin,
            Method::PUT,
            &format!("/api/workers/{id}"),
            Some(json!({"provider_id": provider, "name": format!("carer {id}")})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = call(
        &e,
        &admin,
        Method::PUT,
        "/api/workers/w-x",
        Some(json!({"provider_id": "nobody", "name": "x"})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    // Her home in Tianhe.
    place(
        &e,
        "r-a",
        "tianhe",
        "pend-a",
        json!({"card": {"residence_address": {"lat": 23.1246, "lon": 113.3612}}}),
    )
    .await;
    let sup = user(&e, "sup.tianhe", "supervisor", &["tianhe"]).await;

    // Tianhe's supervisor sees Tianhe's provider only, and may not name Yuexiu's.
    let (_, v) = call(&e, &sup, Method::GET, "/api/providers", None).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["items"][0]["id"], json!("p-th"));
    let (s, _) = call(&e, &sup, Method::GET, "/api/providers/p-yx", None).await;
    assert_eq!(s, 404);
    let (s, _) = call(
        &e,
        &sup,
        Method::PUT,
        "/api/providers/p-yx",
        Some(json!({"name": "mine now", "region": "tianhe"})),
    )
    .await;
    assert_eq!(s, 404);
    let (_, v) = call(&e, &sup, Method::GET, "/api/workers", None).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    let (s, v) = call(&e, &sup, Method::GET, "/api/providers/p-th", None).await;
    assert_eq!(
        (s, v["workers"][0]["id"].as_str()),
        (200, Some("w-th")),
        "{v}"
    );

    e.publish("pend-a", r#"{"type":"sos"}"#);
    let er = &e;
    let alert = poll("the sos", || async move {
        er.alerts("device_id=pend-a").await.first()?["id"].as_i64()
    })
    .await;
    for (provider, worker) in [("p-yx", "w-yx"), ("p-th", "w-yx")] {
        let (s, v) = call(
            &e,
            &sup,
            Method::POST,
            &format!("/api/alerts/{alert}/dispatch"),
            Some(json!({"provider": provider, "worker": worker})),
        )
        .await;
        assert_eq!(s, 422, "{provider}/{worker}: {v}");
    }
    let (s, v) = call(
        &e,
        &sup,
        Method::POST,
        &format!("/api/alerts/{alert}/dispatch"),
        Some(json!({"provider": "p-th", "worker": "w-th"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let record = v["record_id"].as_i64().unwrap();
    // Clocked in from Yuexiu, about 10 km away.
    let (s, r) = call(
        &e,
        &sup,
        Method::POST,
        &format!("/api/records/{record}/check-in"),
        Some(json!({"lat": 23.1291, "lon": 113.2644})),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (
            r["provider"].as_str(),
            r["provider_id"].as_str(),
            r["worker"].as_str(),
            r["worker_id"].as_str()
        ),
        (
            Some("tianhe 居家服务"),
            Some("p-th"),
            Some("carer w-th"),
            Some("w-th")
        ),
        "{r}"
    );
    assert_eq!(r["check_in_far"], json!(true), "{r}");
    let d = r["check_in_distance_m"].as_f64().unwrap();
    assert!((9_000.0..11_000.0).contains(&d), "{d}");
}
on_both_stores!(providers_and_workers_are_region_records_and_far_check_ins_are_flagged);

/// Pages through the export feed from the start, `limit` at a time: every item, in order.
async fn export_all(e: &Engine, token: &str, limit: usize) -> (Vec<Value>, Option<String>) {
    let mut cursor: Option<String> = None;
    let mut out = Vec::new();
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/export?limit={limit}&cursor={c}"),
            None => format!("/api/export?limit={limit}"),
        };
        let (s, page) = call(e, token, Method::GET, &path, None).await;
        assert_eq!(s, 200, "{page}");
        assert_eq!(
            (page["format"].as_str(), page["version"].as_i64()),
            (Some("anxin.export"), Some(1))
        );
        let items = page["items"].as_array().unwrap().clone();
        let n = items.len();
        out.extend(items);
        if let Some(next) = page["next"].as_str() {
            cursor = Some(next.to_owned());
        }
        if n < limit {
            return (out, cursor);
        }
    }
}

async fn the_export_feed_pages_the_callers_alerts_and_records_in_change_order(backend: Backend) {
    let Some((e, _db)) = start(backend).await else {
        return;
    };
    let admin = e.token.clone();
    for (r, region, device) in [("r-a", "tianhe", "pend-a"), ("r-b", "yuexiu", "pend-b")] {
        place(&e, r, region, device, json!({})).await;
    }
    let sup = user(&e, "sup.tianhe", "supervisor", &["tianhe"]).await;
    let op = user(&e, "op.tianhe", "operator", &["tianhe"]).await;
    let (s, _) = call(&e, &op, Method::GET, "/api/export", None).await;
    assert_eq!(s, 403, "operators do not export");
    let (s, _) = call(&e, &sup, Method::GET, "/api/export?cursor=yesterday", None).await;
    assert_eq!(s, 400);

    e.publish("pend-b", r#"{"type":"sos"}"#);
    e.publish("pend-a", r#"{"type":"sos"}"#);
    let er = &e;
    let alert_a = poll("tianhe's alert", || async move {
        er.alerts("device_id=pend-a").await.first()?["id"].as_i64()
    })
    .await;
    let (s, v) = call(
        &e,
        &sup,
        Method::POST,
        &format!("/api/alerts/{alert_a}/dispatch"),
        Some(json!({"provider": "P", "worker": "W"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let record = v["record_id"].as_i64().unwrap();

    // The feed settles for 5 s; then Tianhe's alert and record are there, page by page, in
    // change order, and Yuexiu's alert is not.
    let sup_ref = sup.as_str();
    let (items, cursor) = poll("both items in the feed", || async move {
        let (items, cursor) = export_all(er, sup_ref, 1).await;
        (items.len() >= 2).then_some((items, cursor))
    })
    .await;
    let kinds: Vec<(String, i64)> = items
        .iter()
        .map(|i| {
            (
                i["type"].as_str().unwrap().to_owned(),
                i["data"]["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("alert".to_owned(), alert_a),
            ("service_record".to_owned(), record)
        ],
        "{items:?}"
    );
    assert_eq!(items[0]["data"]["status"], json!("dispatched"));
    let cursors: Vec<&str> = items
        .iter()
        .map(|i| i["cursor"].as_str().unwrap())
        .collect();
    assert_eq!(cursor.as_deref(), cursors.last().copied());
    // Up to date: from the last cursor, nothing until something changes.
    let (s, page) = call(
        &e,
        &sup,
        Method::GET,
        &format!("/api/export?cursor={}", cursor.unwrap()),
        None,
    )
    .await;
    assert_eq!(
        (s, page["items"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{page}"
    );
    // The admin sees both regions' alerts.
    let (all, _) = export_all(&e, &admin, 500).await;
    assert_eq!(
        all.iter().filter(|i| i["type"] == json!("alert")).count(),
        2,
        "{all:?}"
    );
}
on_both_stores!(the_export_feed_pages_the_callers_alerts_and_records_in_change_order);
