//! Trv ("IW") conformance: Traccar's test frames (`shared/conformance/traccar/trv.json`,
//! PROTOCOLS.md §9) and anxin's own vectors (`protocols/trv/vectors/*.json`), each fed through
//! the real framer and decoder.
//!
//! Traccar's expectations are judged by what home care needs: alarms (Traccar's set must be a
//! subset of anxin's), positions, vital signs, battery, steps, and "no record". Anything
//! vehicle-like or model-specific is counted as out of scope, by category. The summary goes to
//! stderr and to `target/conformance-trv.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use anxin::event::{Event, EventType, FieldKind};
use anxin::protocol::tcp::trv::{TrvFramer, decode};
use anxin::protocol::tcp::{Ctx, FrameOutput, Framer, RawFrame, Session};
use bytes::BytesMut;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

/// The session Traccar's harness supplies: every frame decodes as from a known device.
const DEVICE: &str = "123456789012345";

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ctx(at: DateTime<Utc>) -> Ctx {
    Ctx {
        received_at: at,
        peer: "198.51.100.7:40000".into(),
    }
}

/// Feeds `text` (with `#` appended when missing: PROTOCOLS.md §9, replay notes) through a
/// fresh framer and returns the one frame it yields.
fn framed(text: &str) -> Vec<u8> {
    let mut s = text.to_owned();
    if !s.ends_with('#') {
        s.push('#');
    }
    let mut buf = BytesMut::from(s.as_bytes());
    let mut framer = TrvFramer::default();
    match framer.next_frame(&mut buf) {
        Some(RawFrame::Frame(f)) => {
            assert!(buf.is_empty(), "bytes left after {text}: {buf:?}");
            f.to_vec()
        }
        other => panic!("the framer did not return {text} as one frame: {other:?}"),
    }
}

/// Every field is one its type defines, of its kind and in its range (event.rs).
fn schema_problems(events: &[Event]) -> Vec<String> {
    let mut out = Vec::new();
    for e in events {
        for (k, v) in &e.fields {
            let Some(spec) = e.event_type.field(k) else {
                out.push(format!("{} has no field {k}", e.event_type));
                continue;
            };
            let ok = match spec.kind {
                FieldKind::Enum(set) => v.as_str().is_some_and(|s| set.contains(&s)),
                FieldKind::Number { min, max } => {
                    v.as_f64().is_some_and(|n| (min..=max).contains(&n))
                }
                FieldKind::Integer { min, max } => {
                    v.as_i64().is_some_and(|n| (min..=max).contains(&n))
                }
                FieldKind::Text { max_len } => v.as_str().is_some_and(|s| s.len() <= max_len),
                FieldKind::Bool => v.is_boolean(),
                FieldKind::List { max_items } => v.as_array().is_some_and(|a| a.len() <= max_items),
            };
            if !ok {
                out.push(format!("{}.{k} = {v} breaks its schema", e.event_type));
            }
        }
        for spec in e.event_type.fields().iter().filter(|s| s.required) {
            if !e.fields.contains_key(spec.name) {
                out.push(format!("{} lacks {}", e.event_type, spec.name));
            }
        }
        if let Err(why) = e.event_type.check_fields(&e.fields) {
            out.push(why);
        }
    }
    out
}

/// The alarm-like facts anxin reported, named as in the conformance summary.
fn alarms(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e.event_type {
            EventType::Sos | EventType::Fall | EventType::Tamper => Some(e.event_type.to_string()),
            EventType::Battery if e.text("level") == Some("low") => {
                Some("battery level low".into())
            }
            EventType::Removal if e.text("state") == Some("removed") => {
                Some("removal removed".into())
            }
            EventType::Power if e.text("state") == Some("lost") => Some("power lost".into()),
            EventType::Fault | EventType::Alarm => Some(format!(
                "{} {}",
                e.event_type,
                e.text("code").unwrap_or_default()
            )),
            _ => None,
        })
        .collect()
}

/// Traccar's alarm names → what anxin reports for them.
fn map_alarm(name: &str) -> Option<&'static str> {
    Some(match name {
        "sos" => "sos",
        "fallDown" => "fall",
        "lowBattery" => "battery level low",
        "removing" => "removal removed",
        _ => return None,
    })
}

/// Traccar's attribute names → anxin's type and field (PROTOCOLS.md §9: SpO2 and temperature
/// have several names).
fn map_attribute(name: &str) -> Option<(EventType, &'static str)> {
    Some(match name {
        "heartRate" => (EventType::Vitals, "heart_rate"),
        "pressureSystolic" | "pressureHigh" => (EventType::Vitals, "systolic"),
        "pressureDiastolic" | "pressureLow" => (EventType::Vitals, "diastolic"),
        "spo2" | "spO2" | "bloodOxygen" => (EventType::Vitals, "spo2"),
        "temperature" => (EventType::Vitals, "temperature"),
        "batteryLevel" => (EventType::Battery, "percent"),
        "steps" => (EventType::Vitals, "steps"),
        _ => return None,
    })
}

/// The AP10 alarm-code field of a frame (PROTOCOLS.md §5), for the extra-alarm report.
fn alarm_code_field(frame: &str) -> String {
    match frame.split(',').nth(5) {
        Some(code) if frame.contains("AP10") => format!("AP10 code {code}"),
        _ => frame.chars().take(12).collect(),
    }
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: Vec<String>,
    /// category → count.
    out_of_scope: BTreeMap<String, usize>,
    extra_alarms: Vec<String>,
    panics: Vec<String>,
    by_check: BTreeMap<&'static str, (usize, usize)>,
}

impl Tally {
    fn check(&mut self, name: &'static str, ok: bool, what: impl FnOnce() -> String) {
        let slot = self.by_check.entry(name).or_default();
        if ok {
            self.passed += 1;
            slot.0 += 1;
        } else {
            slot.1 += 1;
            self.failed.push(format!("{name}: {}", what()));
        }
    }

    fn skip(&mut self, category: impl Into<String>) {
        *self.out_of_scope.entry(category.into()).or_default() += 1;
    }
}

fn check_entry(t: &mut Tally, entry: &Value, out: &FrameOutput, source: &str) {
    let events = &out.events;
    let expect = entry["expect"].as_object().expect("expect is an object");
    if entry.get("model").is_some() {
        for _ in expect {
            t.skip("model-specific");
        }
        return;
    }
    for problem in schema_problems(events) {
        t.failed.push(format!("schema at {source}: {problem}"));
    }
    let positions: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_type == EventType::Position)
        .collect();
    for (key, want) in expect {
        match key.as_str() {
            "null" => t.check(
                "null",
                events
                    .iter()
                    .all(|e| matches!(e.event_type, EventType::Heartbeat | EventType::Battery)),
                || {
                    format!(
                        "{source}: expected no record, got {:?}",
                        events.iter().map(|e| e.event_type).collect::<Vec<_>>()
                    )
                },
            ),
            "not_null" | "list" => t.check("not_null", !events.is_empty(), || {
                format!("{source}: no events")
            }),
            "has_attributes" => t.check(
                "has_attributes",
                events.iter().any(|e| !e.fields.is_empty()),
                || format!("{source}: no event carries a field"),
            ),
            "has_position" => t.check(
                "has_position",
                positions.iter().any(|p| {
                    p.number("lat").is_some()
                        && p.number("lon").is_some()
                        && p.device_time.is_some()
                }),
                || format!("{source}: no position with coordinates and a time"),
            ),
            "position" => {
                let lat = want["lat"].as_f64().unwrap();
                let lon = want["lon"].as_f64().unwrap();
                let time: DateTime<Utc> = want["time"].as_str().unwrap().parse().unwrap();
                let valid = want["valid"].as_bool();
                let ok = positions.iter().any(|p| {
                    p.number("lat").is_some_and(|v| (v - lat).abs() < 1e-5)
                        && p.number("lon").is_some_and(|v| (v - lon).abs() < 1e-5)
                        && p.device_time == Some(time)
                        && valid.is_none_or(|v| p.fields.get("valid") == Some(&Value::Bool(v)))
                });
                t.check("position", ok, || {
                    format!("{source}: want {want}, got {positions:?}")
                });
            }
            "alarm" => {
                let have = alarms(events);
                let mut mapped = Vec::new();
                for name in want.as_str().unwrap().split(',').map(str::trim) {
                    match map_alarm(name) {
                        Some(a) => {
                            mapped.push(a.to_owned());
                            t.check("alarm", have.iter().any(|h| h == a), || {
                                format!("{source}: Traccar {name}, anxin {have:?}")
                            });
                        }
                        None => t.skip(format!("alarm `{name}` (vehicle/asset)")),
                    }
                }
                record_extras(t, entry, &have, &mapped);
            }
            "attributes" => {
                for (name, value) in want.as_object().unwrap() {
                    let Some((ty, field)) = map_attribute(name) else {
                        t.skip(format!(
                            "attribute `{name}` (vehicle/asset/device-internal)"
                        ));
                        continue;
                    };
                    let found: Vec<&Value> = events
                        .iter()
                        .filter(|e| e.event_type == ty)
                        .filter_map(|e| e.fields.get(field))
                        .collect();
                    let ok = match value.as_f64() {
                        None => found.is_empty(),
                        Some(v) => found.iter().any(|f| f.as_f64() == Some(v)),
                    };
                    t.check("attribute", ok, || {
                        format!("{source}: {name} = {value} → {ty}.{field}, found {found:?}")
                    });
                }
            }
            "fields" => t.skip("position fields (altitude, …)"),
            other => t.skip(format!("expectation `{other}`")),
        }
    }
    if !expect.contains_key("alarm") {
        record_extras(t, entry, &alarms(events), &[]);
    }
}

/// Alarms anxin reports that Traccar's expectation does not name.
fn record_extras(t: &mut Tally, entry: &Value, have: &[String], traccar: &[String]) {
    let frame = entry["frame"].as_str().unwrap_or_default();
    for a in have.iter().filter(|a| !traccar.contains(a)) {
        t.extra_alarms.push(format!(
            "`{a}` from {} ({})",
            alarm_code_field(frame),
            entry["source"].as_str().unwrap_or_default()
        ));
    }
}

fn summary(t: &Tally, entries: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Trv conformance against Traccar's test vectors\n");
    let _ = writeln!(
        s,
        "Frames replayed: {entries} (through `TrvFramer`, then `trv::decode`); panics: {}\n",
        t.panics.len()
    );
    let _ = writeln!(
        s,
        "In-scope expectations: **{} passed, {} failed**\n",
        t.passed,
        t.failed.len()
    );
    let _ = writeln!(s, "| check | passed | failed |\n|---|---|---|");
    for (name, (p, f)) in &t.by_check {
        let _ = writeln!(s, "| {name} | {p} | {f} |");
    }
    let total: usize = t.out_of_scope.values().sum();
    let _ = writeln!(s, "\nOut of scope: {total}");
    for (cat, n) in &t.out_of_scope {
        let _ = writeln!(s, "- {cat}: {n}");
    }
    let _ = writeln!(
        s,
        "\nExtra alarms anxin reports beyond Traccar's: {}",
        t.extra_alarms.len()
    );
    for x in &t.extra_alarms {
        let _ = writeln!(s, "- {x}");
    }
    if !t.failed.is_empty() {
        let _ = writeln!(s, "\nFailures:");
        for f in &t.failed {
            let _ = writeln!(s, "- {f}");
        }
    }
    for p in &t.panics {
        let _ = writeln!(s, "- PANIC: {p}");
    }
    s
}

#[test]
fn traccar_trv_vectors_pass_every_home_care_expectation() {
    let path = manifest().join("../shared/conformance/traccar/trv.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let entries: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(entries.len(), 30, "PROTOCOLS.md §10 counts 30 trv entries");
    let at = Utc.with_ymd_and_hms(2026, 3, 5, 8, 15, 0).unwrap();
    let mut t = Tally::default();
    for entry in &entries {
        let source = entry["source"].as_str().unwrap_or_default().to_owned();
        if entry["kind"] != "decode" || entry["encoding"] != "text" {
            for _ in entry["expect"].as_object().into_iter().flatten() {
                t.skip("frame-splitter or binary entry");
            }
            continue;
        }
        let frame_text = entry["frame"].as_str().unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let frame = framed(frame_text);
            let mut session = Session {
                device_id: Some(DEVICE.into()),
                ..Default::default()
            };
            decode(&frame, &mut session, &ctx(at))
        }));
        match result {
            Ok(out) => check_entry(&mut t, entry, &out, &source),
            Err(_) => t.panics.push(format!("{source}: {frame_text}")),
        }
    }
    let report = summary(&t, entries.len());
    eprintln!("{report}");
    let target = manifest().join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("conformance-trv.md"), &report).unwrap();
    assert!(t.panics.is_empty(), "panics: {:?}", t.panics);
    assert!(t.failed.is_empty(), "{report}");
    assert!(t.passed > 0);
}

#[test]
fn traccar_frames_split_back_apart_from_one_stream_in_any_chunking() {
    let path = manifest().join("../shared/conformance/traccar/trv.json");
    let entries: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let sent: Vec<String> = entries
        .iter()
        .map(|e| {
            let f = e["frame"].as_str().unwrap();
            if f.ends_with('#') {
                f.to_owned()
            } else {
                format!("{f}#")
            }
        })
        .collect();
    let stream = format!("\r\n{}\r\n", sent.join("\r\n"));
    for chunk in [1, 2, 7, 64, 1500, stream.len()] {
        let mut framer = TrvFramer::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in stream.as_bytes().chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(f) = framer.next_frame(&mut buf) {
                if let RawFrame::Frame(f) = f {
                    got.push(String::from_utf8(f.to_vec()).unwrap());
                }
            }
        }
        assert_eq!(got, sent, "chunk {chunk}");
    }
}

/// Compares JSON with numbers equal to 1e-6 (coordinates are written to 9 decimals).
fn json_close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-6
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w)))
        }
        _ => a == b,
    }
}

fn check_vector(path: &Path) {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let at: DateTime<Utc> = v["received_at"].as_str().unwrap().parse().unwrap();
    let frame = framed(v["frame"].as_str().unwrap());
    let mut session = Session {
        device_id: v["logged_in_as"].as_str().map(str::to_owned),
        ..Default::default()
    };
    let out = decode(&frame, &mut session, &ctx(at));
    let want = &v["expect"];
    assert_eq!(
        session.device_id.as_deref(),
        want["device_id"].as_str(),
        "{name}: session device"
    );
    let reply = out
        .reply
        .as_deref()
        .map(|r| String::from_utf8_lossy(r).into_owned());
    assert_eq!(reply.as_deref(), want["reply"].as_str(), "{name}: reply");
    assert_eq!(
        out.reply_now,
        want["reply_now"].as_bool().unwrap(),
        "{name}: reply_now"
    );
    assert_eq!(
        out.error.as_ref().map(|e| e.0),
        want["error"].as_str(),
        "{name}: error {:?}",
        out.error
    );
    let problems = schema_problems(&out.events);
    assert!(problems.is_empty(), "{name}: {problems:?}");
    let events = want["events"].as_array().unwrap();
    assert_eq!(
        out.events.len(),
        events.len(),
        "{name}: {:?}",
        out.events.iter().map(|e| e.event_type).collect::<Vec<_>>()
    );
    for (i, (got, want)) in out.events.iter().zip(events).enumerate() {
        assert_eq!(got.event_type.name(), want["type"], "{name} event {i}");
        let fields = Value::Object(got.fields.clone());
        assert!(
            json_close(&fields, &want["fields"]),
            "{name} event {i}: got {fields}, want {}",
            want["fields"]
        );
        let time = want["device_time"]
            .as_str()
            .map(|t| t.parse::<DateTime<Utc>>().unwrap());
        assert_eq!(got.device_time, time, "{name} event {i}: device time");
        assert_eq!(got.received_at, at, "{name} event {i}: receive time");
        assert_eq!(got.device_id, want_device(&v), "{name} event {i}: device");
    }
}

fn want_device(v: &Value) -> String {
    v["expect"]["device_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn anxin_trv_vectors_decode_to_their_expected_events_and_replies() {
    let dir = manifest().join("protocols/trv/vectors");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 5, "too few vectors in {}", dir.display());
    for p in &paths {
        check_vector(p);
    }
}
