//! GT06 conformance: Traccar's test frames (`shared/conformance/traccar/gt06.json`,
//! PROTOCOLS.md §9) and anxin's own vectors (`protocols/gt06/vectors/*.json`), each fed through
//! the real framer and decoder.
//!
//! Traccar's expectations are judged by what home care needs: alarms (Traccar's set must be a
//! subset of anxin's), positions, battery, steps, vital signs and "no record". Vehicle and
//! asset expectations, message types anxin does not decode, and model-specific entries are
//! counted as out of scope, by category. The summary goes to stderr and to
//! `target/conformance-gt06.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use anxin::event::{Event, EventType, FieldKind};
use anxin::protocol::tcp::gt06::{Gt06Framer, alarm_flags, decode};
use anxin::protocol::tcp::{Ctx, FrameOutput, Framer, RawFrame, Session};
use bytes::BytesMut;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

/// The session Traccar's harness supplies: every frame decodes as from a known device.
const DEVICE: &str = "123456789012345";

/// Message types anxin decodes into events (protocols/gt06/README.md, "Message types");
/// `(extended header, type)`. Other types are acked or ignored per PROTOCOLS.md §3 and their
/// Traccar expectations other than "no record" are out of scope.
const DECODED: &[(bool, u8)] = &[
    (false, 0x01),
    (false, 0x10),
    (false, 0x11),
    (false, 0x12),
    (false, 0x13),
    (false, 0x16),
    (false, 0x17),
    (false, 0x18),
    (false, 0x19),
    (false, 0x1A),
    (false, 0x1E),
    (false, 0x22),
    (false, 0x23),
    (false, 0x24),
    (false, 0x26),
    (false, 0x27),
    (false, 0x28),
    (false, 0x2C),
    (false, 0x2D),
    (false, 0x2E),
    (false, 0x31),
    (false, 0x36),
    (false, 0x37),
    (false, 0x38),
    (true, 0x38),
    (false, 0x69),
    (true, 0x70),
    (false, 0x95),
    (false, 0xA0),
    (false, 0xA1),
    (false, 0xA2),
    (false, 0xA4),
    (false, 0xA5),
    (false, 0xA9),
    (false, 0xF3),
];

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ctx(at: DateTime<Utc>) -> Ctx {
    Ctx {
        received_at: at,
        peer: "198.51.100.7:40000".into(),
    }
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex {s}: {e}"))
}

/// `(extended header, type)` of a frame.
fn kind(frame: &[u8]) -> (bool, u8) {
    let long = frame.starts_with(&[0x79, 0x79]);
    let at = if long { 4 } else { 3 };
    (long, frame.get(at).copied().unwrap_or(0))
}

/// Everything the framer yields for `bytes` fed `chunk` bytes at a time.
fn split_all(bytes: &[u8], chunk: usize) -> Vec<RawFrame> {
    let mut framer = Gt06Framer::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(f) = framer.next_frame(&mut buf) {
            got.push(f);
        }
    }
    got
}

fn frames_only(raw: Vec<RawFrame>) -> Vec<Vec<u8>> {
    raw.into_iter()
        .filter_map(|f| match f {
            RawFrame::Frame(b) => Some(b.to_vec()),
            RawFrame::Skipped { .. } => None,
        })
        .collect()
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
fn alarm_name(ty: EventType, fields: &serde_json::Map<String, Value>) -> Option<String> {
    let text = |k: &str| fields.get(k).and_then(Value::as_str).unwrap_or_default();
    match ty {
        EventType::Sos | EventType::Fall | EventType::Tamper => Some(ty.to_string()),
        EventType::Battery if text("level") == "low" => Some("battery level low".into()),
        EventType::Removal if text("state") == "removed" => Some("removal removed".into()),
        EventType::Power if text("state") == "lost" => Some("power lost".into()),
        EventType::Fault | EventType::Alarm => Some(format!("{ty} {}", text("code"))),
        _ => None,
    }
}

fn alarms(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| alarm_name(e.event_type, &e.fields))
        .collect()
}

/// Traccar's home-care alarm names → what anxin reports for them. `general` (an alarm the
/// device does not name) is anxin's coded `alarm`.
fn map_alarm(name: &str) -> Option<&'static str> {
    Some(match name {
        "sos" => "sos",
        "fallDown" => "fall",
        "lowBattery" => "battery level low",
        "removing" => "removal removed",
        "tampering" => "tamper",
        "powerCut" => "power lost",
        "general" => "alarm",
        _ => return None,
    })
}

/// Traccar's attribute names → anxin's type and field (PROTOCOLS.md §9).
fn map_attribute(name: &str) -> Option<(EventType, &'static str)> {
    Some(match name {
        "heartRate" => (EventType::Vitals, "heart_rate"),
        "pressureSystolic" | "pressureHigh" => (EventType::Vitals, "systolic"),
        "pressureDiastolic" | "pressureLow" => (EventType::Vitals, "diastolic"),
        "spo2" | "spO2" | "bloodOxygen" => (EventType::Vitals, "spo2"),
        "batteryLevel" => (EventType::Battery, "percent"),
        "battery" => (EventType::Battery, "voltage_v"),
        "steps" => (EventType::Vitals, "steps"),
        _ => return None,
    })
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

fn check_frame_entry(t: &mut Tally, entry: &Value, source: &str) {
    let bytes = unhex(entry["frame"].as_str().unwrap());
    let want = unhex(entry["expect"]["first_frame"].as_str().unwrap());
    for chunk in [bytes.len(), 1] {
        let got = frames_only(split_all(&bytes, chunk));
        t.check("first_frame", got.first() == Some(&want), || {
            format!(
                "{source} (chunk {chunk}): got {:?}",
                got.first().map(hex::encode)
            )
        });
    }
}

fn check_decode_entry(t: &mut Tally, entry: &Value, frame: &[u8], out: &FrameOutput, source: &str) {
    let events = &out.events;
    let expect = entry["expect"].as_object().expect("expect is an object");
    for problem in schema_problems(events) {
        t.failed.push(format!("schema at {source}: {problem}"));
    }
    if let Some(model) = entry.get("model").and_then(Value::as_str) {
        for _ in expect {
            t.skip(format!("model-specific entry ({model})"));
        }
        return;
    }
    let (long, ty) = kind(frame);
    let decoded = DECODED.contains(&(long, ty));
    let not_decoded = || {
        format!(
            "message type {}0x{ty:02X} not decoded into events",
            if long { "79 79 " } else { "" }
        )
    };
    let positions: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_type == EventType::Position)
        .collect();
    for (key, want) in expect {
        match key.as_str() {
            // Login, keep-alive and the like: a heartbeat or battery reading is not a record.
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
            "not_null" | "list" | "has_attributes" | "has_position" if !decoded => {
                t.skip(not_decoded());
            }
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
                || format!("{source}: no position with coordinates and a time: {positions:?}"),
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
                            let ok = if a == "alarm" {
                                have.iter().any(|h| h.starts_with("alarm "))
                            } else {
                                have.iter().any(|h| h == a)
                            };
                            t.check("alarm", ok, || {
                                format!("{source}: Traccar {name}, anxin {have:?}")
                            });
                        }
                        None => t.skip(format!("alarm `{name}` (vehicle)")),
                    }
                }
                record_extras(t, entry, frame, events, &mapped);
            }
            "attributes" => {
                for (name, value) in want.as_object().unwrap() {
                    let Some((ty, field)) = map_attribute(name) else {
                        t.skip(format!(
                            "attribute `{name}` (vehicle/asset/device-internal)"
                        ));
                        continue;
                    };
                    if !decoded {
                        t.skip(not_decoded());
                        continue;
                    }
                    let found: Vec<&Value> = events
                        .iter()
                        .filter(|e| e.event_type == ty)
                        .filter_map(|e| e.fields.get(field))
                        .collect();
                    let ok = match value.as_f64() {
                        None => found.is_empty(),
                        Some(v) => found
                            .iter()
                            .any(|f| f.as_f64().is_some_and(|x| (x - v).abs() < 1e-9)),
                    };
                    t.check("attribute", ok, || {
                        format!("{source}: {name} = {value} → {ty}.{field}, found {found:?}")
                    });
                }
            }
            "fields" => t.skip("position fields (altitude of vehicle variants)"),
            other => t.skip(format!("expectation `{other}`")),
        }
    }
    if !expect.contains_key("alarm") {
        record_extras(t, entry, frame, events, &[]);
    }
}

/// Alarms anxin reports that Traccar's expectation does not name, with what carried them.
fn record_extras(t: &mut Tally, entry: &Value, frame: &[u8], events: &[Event], traccar: &[String]) {
    let flags = alarm_flags(frame);
    for e in events {
        let Some(name) = alarm_name(e.event_type, &e.fields) else {
            continue;
        };
        let covered = traccar
            .iter()
            .any(|a| *a == name || (a == "alarm" && name.starts_with("alarm ")));
        if covered {
            continue;
        }
        let origins: Vec<&str> = flags
            .iter()
            .filter(|f| f.event_type == e.event_type && f.fields == e.fields)
            .map(|f| f.origin.as_str())
            .collect();
        t.extra_alarms.push(format!(
            "`{name}` from {} (type 0x{:02X}, {})",
            origins.join(" and "),
            kind(frame).1,
            entry["source"].as_str().unwrap_or_default()
        ));
    }
}

fn summary(t: &Tally, entries: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# GT06 conformance against Traccar's test vectors\n");
    let _ = writeln!(
        s,
        "Entries replayed: {entries} (frame-splitter entries through `Gt06Framer` whole and one \
         byte at a time; decode entries through `gt06::decode` with a logged-in session); \
         panics: {}\n",
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
    let _ = writeln!(s, "\nOut of scope: {total}\n");
    let _ = writeln!(s, "| category | expectations |\n|---|---|");
    for (cat, n) in &t.out_of_scope {
        let _ = writeln!(s, "| {cat} | {n} |");
    }
    let _ = writeln!(
        s,
        "\nExtra alarms anxin reports beyond Traccar's: {}\n",
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

fn traccar_entries() -> Vec<Value> {
    let path = manifest().join("../shared/conformance/traccar/gt06.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn traccar_gt06_vectors_pass_every_home_care_expectation() {
    let entries = traccar_entries();
    assert_eq!(
        entries.len(),
        196,
        "PROTOCOLS.md §10 counts 196 gt06 entries"
    );
    let at = Utc.with_ymd_and_hms(2026, 3, 5, 8, 15, 0).unwrap();
    let mut t = Tally::default();
    for entry in &entries {
        let source = entry["source"].as_str().unwrap_or_default().to_owned();
        if entry["kind"] == "frame" {
            let r = catch_unwind(AssertUnwindSafe(|| {
                let mut local = Tally::default();
                check_frame_entry(&mut local, entry, &source);
                local
            }));
            match r {
                Ok(local) => {
                    t.passed += local.passed;
                    t.failed.extend(local.failed);
                    for (k, (p, f)) in local.by_check {
                        let slot = t.by_check.entry(k).or_default();
                        slot.0 += p;
                        slot.1 += f;
                    }
                }
                Err(_) => t.panics.push(format!("framer: {source}")),
            }
            continue;
        }
        let frame = unhex(entry["frame"].as_str().unwrap());
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut session = Session {
                device_id: Some(DEVICE.into()),
                ..Default::default()
            };
            decode(&frame, &mut session, &ctx(at))
        }));
        match result {
            Ok(out) => check_decode_entry(&mut t, entry, &frame, &out, &source),
            Err(_) => t.panics.push(format!("decoder: {source}")),
        }
    }
    let report = summary(&t, entries.len());
    eprintln!("{report}");
    let target = manifest().join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("conformance-gt06.md"), &report).unwrap();
    assert!(t.panics.is_empty(), "panics: {:?}", t.panics);
    assert!(t.failed.is_empty(), "{report}");
    assert!(t.passed > 0);
}

/// Every Traccar frame, concatenated with junk between them, splits the same in any chunking
/// as each does on its own.
#[test]
fn traccar_frames_split_back_apart_from_one_stream_in_any_chunking() {
    let entries = traccar_entries();
    let mut stream = b"\x00junk\r\n".to_vec();
    let mut want = Vec::new();
    for e in &entries {
        let bytes = unhex(e["frame"].as_str().unwrap());
        want.extend(frames_only(split_all(&bytes, bytes.len())));
        stream.extend_from_slice(&bytes);
        stream.extend_from_slice(b"\x01\x02");
    }
    for chunk in [1, 2, 3, 7, 64, 1500, stream.len()] {
        let got = frames_only(split_all(&stream, chunk));
        assert_eq!(got.len(), want.len(), "chunk {chunk}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(hex::encode(g), hex::encode(w), "chunk {chunk}, frame {i}");
        }
    }
}

/// Compares JSON with numbers equal to 1e-6 (coordinates are written to 6+ decimals).
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
    let bytes = unhex(v["frame"].as_str().unwrap());
    // The vector goes through the framer too, whole and one byte at a time.
    for chunk in [bytes.len(), 1] {
        let frames = frames_only(split_all(&bytes, chunk));
        assert_eq!(
            frames,
            vec![bytes.clone()],
            "{name}: framing, chunk {chunk}"
        );
    }
    let mut session = Session {
        device_id: v["logged_in_as"].as_str().map(str::to_owned),
        ..Default::default()
    };
    let out = decode(&bytes, &mut session, &ctx(at));
    let want = &v["expect"];
    assert_eq!(
        session.device_id.as_deref(),
        want["device_id"].as_str(),
        "{name}: session device"
    );
    assert_eq!(
        out.reply.as_deref().map(hex::encode).as_deref(),
        want["reply"].as_str(),
        "{name}: reply"
    );
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
    let want_device = want["device_id"].as_str().unwrap_or_default().to_owned();
    let events = want["events"].as_array().unwrap();
    assert_eq!(
        out.events.len(),
        events.len(),
        "{name}: {:?}",
        out.events
            .iter()
            .map(|e| (e.event_type, &e.fields))
            .collect::<Vec<_>>()
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
        assert_eq!(
            got.still_active,
            want["still_active"].as_bool().unwrap_or(false),
            "{name} event {i}: still_active"
        );
        assert_eq!(got.received_at, at, "{name} event {i}: receive time");
        assert_eq!(got.device_id, want_device, "{name} event {i}: device");
    }
}

#[test]
fn anxin_gt06_vectors_decode_to_their_expected_events_and_replies() {
    let dir = manifest().join("protocols/gt06/vectors");
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
