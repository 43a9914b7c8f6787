//! Conformance replay for the `jt808` family.
//!
//! 1. Traccar's 116 JT/T 808 test frames (`shared/conformance/traccar/jt808.json`, format in
//!    PROTOCOLS.md §9) through [`Jt808Framer`] and [`jt808::decode`]. Only the home-care
//!    expectations are judged — alarms (mapped to anxin events), positions, "no record", battery
//!    readings, satellites — and 100 % of them must pass. Vehicle and asset expectations (fuel,
//!    OBD, drivers, e-locks, …) and model-specific entries are counted by category. Every alarm
//!    anxin reports beyond Traccar's assertions is listed with the flag that carries it.
//! 2. The hand-made vectors in `protocols/jt808/vectors/*.json`: exact events and reply bytes.
//!
//! The summary is printed and written to `target/conformance-jt808.md`. The Traccar file is
//! read from `$ANXIN_CONFORMANCE_DIR/traccar/jt808.json`, by default the `shared/conformance`
//! directory next to this repository.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use anxin::event::{Event, EventType, FieldKind};
use anxin::protocol::tcp::jt808::{self, Jt808Framer};
use anxin::protocol::tcp::{Ctx, FrameOutput, Framer, RawFrame, Session};
use bytes::BytesMut;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Traccar's alarm names that are home-care events, and how anxin reports them.
const HOME_CARE_ALARMS: &[(&str, &str)] = &[
    ("sos", "sos"),
    ("fallDown", "fall"),
    ("lowBattery", "battery low"),
    ("removing", "removal removed"),
    ("tampering", "tamper"),
    ("powerCut", "power lost"),
    ("powerOff", "power lost"),
];

/// Traccar attributes outside home care, by category (anything unlisted is "other").
const OUT_OF_SCOPE_ATTRIBUTES: &[(&str, &[&str])] = &[
    ("external power voltage", &["power"]),
    ("charging flag", &["charge"]),
    (
        "vehicle / OBD",
        &[
            "rpm",
            "fuel1",
            "fuel2",
            "fuelUsed",
            "dtcs",
            "tire1Pressure",
            "odometer",
        ],
    ),
    (
        "driver identification",
        &["driverUniqueId", "driver", "cardCode"],
    ),
    (
        "e-lock / asset tag",
        &[
            "lock1Locked",
            "lock2Battery",
            "unlockResult",
            "tilt",
            "tag1Mac",
        ],
    ),
    (
        "sensor temperature (not body)",
        &["temp1", "temp3", "deviceTemp"],
    ),
    ("video / ADAS", &["videoAlarm", "alarmLabel"]),
    ("motion / event code", &["motion", "event"]),
    (
        "device information",
        &["iccid", "imei", "timezone", "result", "steps"],
    ),
];

/// Message ids whose positions are home-care data (location report, query response, batches).
const LOCATION_MESSAGES: &[u16] = &[0x0200, 0x0201, 0x0704, 0x0210];

fn ctx() -> Ctx {
    Ctx {
        received_at: DateTime::parse_from_rfc3339("2026-03-01T04:00:05Z")
            .unwrap()
            .with_timezone(&Utc),
        peer: "192.0.2.1:40000".into(),
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn traccar_file() -> PathBuf {
    std::env::var_os("ANXIN_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../shared/conformance"))
        .join("traccar/jt808.json")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (set ANXIN_CONFORMANCE_DIR to the shared/conformance directory)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

/// The bytes of a vector field in its declared encoding.
fn bytes_of(value: &str, encoding: &str) -> Vec<u8> {
    match encoding {
        "hex" => unhex(value),
        _ => value.as_bytes().to_vec(),
    }
}

/// JT/T 808 escaping, written here independently of the decoder under test.
fn escape(inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(inner.len() + 8);
    for &b in inner {
        match b {
            0x7e => out.extend([0x7d, 0x02]),
            0x7d => out.extend([0x7d, 0x01]),
            _ => out.push(b),
        }
    }
    out
}

fn unescape(escaped: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut it = escaped.iter().copied();
    while let Some(b) = it.next() {
        if b == 0x7d {
            match it.next() {
                Some(0x01) => out.push(0x7d),
                Some(0x02) => out.push(0x7e),
                Some(other) => out.extend([b, other]),
                None => out.push(b),
            }
        } else {
            out.push(b);
        }
    }
    out
}

/// A decode vector as it travels on the wire: the inner bytes re-escaped (PROTOCOLS.md §9:
/// Traccar's decode frames are already unescaped) between two `7E`. ASCII sentences as is.
fn to_wire(frame: &[u8]) -> Vec<u8> {
    if frame.first() == Some(&b'(') {
        return frame.to_vec();
    }
    let inner = frame.strip_prefix(&[0x7e]).unwrap_or(frame);
    let inner = inner.strip_suffix(&[0x7e]).unwrap_or(inner);
    let mut wire = vec![0x7e];
    wire.extend(escape(inner));
    wire.push(0x7e);
    wire
}

/// Everything the framer returns for `input` fed in chunks of `chunk` bytes.
fn split(input: &[u8], chunk: usize) -> Vec<RawFrame> {
    let mut framer = Jt808Framer::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(f) = framer.next_frame(&mut buf) {
            out.push(f);
        }
    }
    out
}

fn first_frame(frames: &[RawFrame]) -> Option<Vec<u8>> {
    frames.iter().find_map(|f| match f {
        RawFrame::Frame(b) => Some(b.to_vec()),
        RawFrame::Skipped { .. } => None,
    })
}

/// An event's short name: its type plus the field that tells alarms of one type apart.
fn label(e: &Event) -> String {
    let detail = ["level", "state", "code"]
        .iter()
        .find_map(|k| e.text(k))
        .filter(|_| !matches!(e.event_type, EventType::Battery) || e.text("level") == Some("low"));
    match detail {
        Some(d) => format!("{} {d}", e.event_type),
        None => e.event_type.to_string(),
    }
}

/// Whether the event is an alarm (as opposed to a reading or a position).
fn is_alarm(e: &Event) -> bool {
    match e.event_type {
        EventType::Position | EventType::Heartbeat | EventType::Vitals => false,
        EventType::Battery => e.text("level") == Some("low"),
        _ => true,
    }
}

/// The problem with `e`'s fields, if it breaks the event schema table.
fn schema_problem(e: &Event) -> Option<String> {
    for (name, value) in &e.fields {
        let Some(spec) = e.event_type.field(name) else {
            return Some(format!("{} has no field {name}", e.event_type));
        };
        let ok = match spec.kind {
            FieldKind::Enum(allowed) => value.as_str().is_some_and(|s| allowed.contains(&s)),
            FieldKind::Number { min, max } => {
                value.as_f64().is_some_and(|n| (min..=max).contains(&n))
            }
            FieldKind::Integer { min, max } => {
                value.as_i64().is_some_and(|n| (min..=max).contains(&n))
            }
            FieldKind::Text { max_len } => value
                .as_str()
                .is_some_and(|s| !s.is_empty() && s.len() <= max_len),
            FieldKind::Bool => value.is_boolean(),
            FieldKind::List { max_items } => value.as_array().is_some_and(|a| a.len() <= max_items),
        };
        if !ok {
            return Some(format!("{} field {name} = {value}", e.event_type));
        }
    }
    e.event_type.check_fields(&e.fields).err()
}

/// Counts of the replay.
#[derive(Default)]
struct Tally {
    /// In-scope checks passed, by kind.
    passed: BTreeMap<String, usize>,
    /// In-scope checks failed: "entry N (source): check: detail".
    failed: Vec<String>,
    /// Out-of-scope expectations, by category.
    out_of_scope: BTreeMap<String, usize>,
    /// Decodes or framings that panicked.
    panics: Vec<String>,
    /// Alarms anxin reports beyond Traccar's assertions: "entry N: event — source".
    extras: Vec<String>,
    /// Home-care alarms asserted in model-specific entries, checked anyway.
    model_alarms: Vec<String>,
}

impl Tally {
    fn check(&mut self, kind: &str, ok: bool, at: &str, detail: impl FnOnce() -> String) {
        if ok {
            *self.passed.entry(kind.to_owned()).or_default() += 1;
        } else {
            self.failed.push(format!("{at}: {kind}: {}", detail()));
        }
    }

    fn skip(&mut self, category: impl Into<String>) {
        *self.out_of_scope.entry(category.into()).or_default() += 1;
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// The message id of a binary frame (after the leading `7E`).
fn message_id(frame: &[u8]) -> Option<u16> {
    let inner = frame.strip_prefix(&[0x7e])?;
    Some(u16::from_be_bytes([*inner.first()?, *inner.get(1)?]))
}

fn judge_attribute(
    t: &mut Tally,
    at: &str,
    frame_hex: &str,
    name: &str,
    want: &Value,
    out: &FrameOutput,
) {
    let battery = |field: &str| {
        out.events
            .iter()
            .filter(|e| e.event_type == EventType::Battery)
            .find_map(|e| e.number(field))
    };
    match name {
        "batteryLevel" => {
            let got = battery("percent");
            let ok = match num(want) {
                Some(w) => got.is_some_and(|g| (g - w).abs() < 1e-6),
                None => got.is_none(),
            };
            t.check("battery percent", ok, at, || {
                format!("want {want}, got {got:?}")
            });
        }
        // "*M00…": the battery of an e-lock, reported in its status string (TLV 0x33).
        "battery" if frame_hex.contains("2a4d3030") => {
            t.skip("e-lock status string (TLV 0x33 `*M00`)");
        }
        "battery" => {
            let got = battery("voltage_v");
            let ok = match num(want) {
                Some(w) => got.is_some_and(|g| (g - w).abs() < 1e-3),
                None => got.is_none(),
            };
            t.check("battery voltage", ok, at, || {
                format!("want {want}, got {got:?}")
            });
        }
        "sat" => {
            let got = out
                .events
                .iter()
                .find(|e| e.event_type == EventType::Position)
                .and_then(|e| e.number("satellites"));
            let ok = got == num(want);
            t.check("satellites", ok, at, || format!("want {want}, got {got:?}"));
        }
        _ => {
            let category = OUT_OF_SCOPE_ATTRIBUTES
                .iter()
                .find(|(_, names)| names.contains(&name))
                .map_or("other attribute", |(c, _)| c);
            t.skip(format!("attribute: {category}"));
        }
    }
}

/// Checks one Traccar alarm name against anxin's events; `false` if it is not home care.
fn judge_alarm(t: &mut Tally, at: &str, name: &str, labels: &BTreeSet<String>) -> bool {
    match HOME_CARE_ALARMS.iter().find(|(n, _)| *n == name) {
        Some((_, anxin)) => {
            let ok = labels.contains(*anxin);
            t.check("alarm", ok, at, || {
                format!("Traccar {name} → anxin {anxin}; anxin reported {labels:?}")
            });
            true
        }
        None => {
            t.skip(format!("vehicle alarm: {name}"));
            false
        }
    }
}

fn replay_traccar(t: &mut Tally) {
    let entries = read_json(&traccar_file());
    let entries = entries.as_array().expect("an array of vectors");
    assert_eq!(entries.len(), 116, "the jt808 vector file changed");

    // Traccar's asserted alarms per distinct frame (several entries share one frame).
    let mut asserted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut anxin_alarms: BTreeMap<String, (usize, Vec<u8>, BTreeSet<String>)> = BTreeMap::new();

    for (i, entry) in entries.iter().enumerate() {
        let source = entry["source"].as_str().unwrap_or("?");
        let source = source.rsplit('/').next().unwrap_or(source);
        let at = format!("entry {i} ({source})");
        let frame_text = entry["frame"].as_str().unwrap();
        let encoding = entry["encoding"].as_str().unwrap_or("hex");
        let frame = bytes_of(frame_text, encoding);
        let expect = &entry["expect"];

        if entry["kind"] == "frame" {
            let want = bytes_of(
                expect["first_frame"].as_str().unwrap(),
                expect["first_frame_encoding"].as_str().unwrap_or("hex"),
            );
            for chunk in [frame.len(), 1] {
                let Ok(frames) = catch_unwind(|| split(&frame, chunk)) else {
                    t.panics.push(format!("{at}: framer"));
                    continue;
                };
                // Traccar's splitter unescapes; anxin's leaves that to the decoder.
                let got = first_frame(&frames).map(|f| unescape(&f));
                t.check("first frame", got.as_ref() == Some(&want), &at, || {
                    format!(
                        "chunk {chunk}: want {}, got {:?}",
                        hex::encode(&want),
                        got.map(hex::encode)
                    )
                });
            }
            continue;
        }

        // Decode entries travel escaped on the wire: the framer must give them back whole.
        let wire = to_wire(&frame);
        let frames = split(&wire, wire.len());
        t.check(
            "reframed whole",
            frames == [RawFrame::Frame(wire.clone().into())],
            &at,
            || format!("{frames:?}"),
        );

        let mut session = Session {
            device_id: None,
            ..Default::default()
        };
        let Ok(out) = catch_unwind(AssertUnwindSafe(|| {
            jt808::decode(&wire, &mut session, &ctx())
        })) else {
            t.panics.push(format!("{at}: decode"));
            continue;
        };
        for e in &out.events {
            t.check("event schema", schema_problem(e).is_none(), &at, || {
                schema_problem(e).unwrap_or_default()
            });
        }
        let labels: BTreeSet<String> = out
            .events
            .iter()
            .filter(|e| is_alarm(e))
            .map(label)
            .collect();
        anxin_alarms
            .entry(frame_text.to_owned())
            .or_insert_with(|| (i, wire.clone(), labels.clone()));
        let asserted_here = asserted.entry(frame_text.to_owned()).or_default();

        if let Some(model) = entry["model"].as_str() {
            // Model-specific decoding is out of scope, but a home-care alarm is checked anyway.
            let keys: Vec<&str> = expect
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            t.skip(format!("model {model}: {}", keys.join(", ")));
            if let Some(alarms) = expect["alarm"].as_str() {
                for name in alarms.split(',') {
                    if let Some((_, anxin)) = HOME_CARE_ALARMS.iter().find(|(n, _)| *n == name) {
                        let ok = labels.contains(*anxin);
                        t.check("alarm (model entry)", ok, &at, || {
                            format!("Traccar {name} → anxin {anxin}; anxin reported {labels:?}")
                        });
                        t.model_alarms.push(format!(
                            "{at}, model {model}: Traccar `{name}` → anxin `{anxin}`: {}",
                            if ok { "reported" } else { "MISSING" }
                        ));
                        asserted_here.insert((*anxin).to_owned());
                    }
                }
            }
            continue;
        }

        let id = message_id(&frame);
        let location_message = id.is_some_and(|id| LOCATION_MESSAGES.contains(&id));
        let positions: Vec<&Event> = out
            .events
            .iter()
            .filter(|e| e.event_type == EventType::Position && e.fields.contains_key("lat"))
            .collect();
        for (key, want) in expect.as_object().unwrap() {
            match key.as_str() {
                "alarm" => {
                    for name in want.as_str().unwrap().split(',') {
                        if judge_alarm(t, &at, name, &labels)
                            && let Some((_, anxin)) =
                                HOME_CARE_ALARMS.iter().find(|(n, _)| *n == name)
                        {
                            asserted_here.insert((*anxin).to_owned());
                        }
                    }
                }
                "position" => {
                    let time = want["time"]
                        .as_str()
                        .and_then(|s| DateTime::parse_from_rfc3339(s).ok());
                    let ok = positions.iter().any(|p| {
                        let close = |field: &str| {
                            p.number(field)
                                .zip(num(&want[field]))
                                .is_some_and(|(g, w)| (g - w).abs() <= 1e-5)
                        };
                        close("lat")
                            && close("lon")
                            && p.device_time.map(|d| d.fixed_offset()) == time
                    });
                    t.check("position", ok, &at, || format!("want {want}"));
                }
                "has_position" | "list" if location_message => {
                    let ok = positions.iter().any(|p| p.device_time.is_some());
                    t.check("has position", ok, &at, || {
                        format!(
                            "no timed position among {:?}",
                            out.events.iter().map(label).collect::<Vec<_>>()
                        )
                    });
                }
                "has_position" | "list" => t.skip(format!(
                    "position in message {:04x} ({})",
                    id.unwrap_or(0),
                    match id {
                        Some(0x5501 | 0x5502) => "e-lock report",
                        Some(0x0900) => "vehicle transparent data",
                        _ => "other",
                    }
                )),
                "null" => {
                    let ok = out
                        .events
                        .iter()
                        .all(|e| matches!(e.event_type, EventType::Heartbeat | EventType::Battery));
                    t.check("no record", ok, &at, || {
                        format!(
                            "events {:?}",
                            out.events.iter().map(label).collect::<Vec<_>>()
                        )
                    });
                }
                "not_null" | "has_attributes" if location_message => {
                    t.check("some record", !out.events.is_empty(), &at, || {
                        "no events".into()
                    });
                }
                "not_null" | "has_attributes" => {
                    t.skip(format!(
                        "record from message {:04x} (vehicle data)",
                        id.unwrap_or(0)
                    ));
                }
                "attributes" => {
                    for (name, value) in want.as_object().unwrap() {
                        judge_attribute(t, &at, frame_text, name, value, &out);
                    }
                }
                other => t.skip(format!("expectation `{other}`")),
            }
        }
    }

    // Alarms anxin reports beyond what Traccar's tests assert, with the flags that carry them.
    let mut by_entry: Vec<_> = anxin_alarms.iter().collect();
    by_entry.sort_by_key(|(_, (i, _, _))| *i);
    for (frame_text, (i, wire, labels)) in by_entry {
        let traccar = asserted.get(frame_text).cloned().unwrap_or_default();
        let sources = jt808::alarm_sources(wire);
        for extra in labels.difference(&traccar) {
            let carriers: Vec<&str> = sources
                .iter()
                .filter_map(|s| s.strip_prefix(&format!("{extra}: ")))
                .collect();
            t.extras
                .push(format!("entry {i}: `{extra}` ← {}", carriers.join(", ")));
        }
    }
}

/// A number or string field compared with tolerance for floats.
fn same(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Number(w), Value::Number(g)) => {
            (w.as_f64().unwrap_or(f64::NAN) - g.as_f64().unwrap_or(f64::NAN)).abs() < 1e-9
        }
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| same(a, b))
        }
        (Value::Object(w), Value::Object(g)) => {
            w.len() == g.len() && w.iter().all(|(k, v)| g.get(k).is_some_and(|x| same(v, x)))
        }
        _ => want == got,
    }
}

fn replay_hand_made(t: &mut Tally) -> usize {
    let dir = manifest_dir().join("protocols/jt808/vectors");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no vectors in {}", dir.display());

    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let v = read_json(path);
        let ctx = Ctx {
            received_at: DateTime::parse_from_rfc3339(v["received_at"].as_str().unwrap())
                .unwrap()
                .with_timezone(&Utc),
            peer: "192.0.2.1:40000".into(),
        };
        // One file is one connection.
        let mut session = Session::default();
        for (n, step) in v["steps"].as_array().unwrap().iter().enumerate() {
            let at = format!("{name} step {n}");
            let wire = unhex(step["frame_hex"].as_str().unwrap());
            let frames = split(&wire, 1);
            t.check(
                "hand-made: framed",
                frames == [RawFrame::Frame(wire.clone().into())],
                &at,
                || format!("{frames:?}"),
            );
            let out = jt808::decode(&wire, &mut session, &ctx);
            let want = &step["expect"];

            if let Some(id) = want["device_id"].as_str() {
                t.check(
                    "hand-made: device id",
                    session.device_id.as_deref() == Some(id),
                    &at,
                    || format!("{:?}", session.device_id),
                );
            }
            let want_reply = want["reply_hex"].as_str().map(unhex);
            t.check("hand-made: reply", out.reply == want_reply, &at, || {
                format!("got {:?}", out.reply.as_ref().map(hex::encode))
            });
            t.check(
                "hand-made: reply timing",
                out.reply_now == want["reply_now"].as_bool().unwrap_or(false),
                &at,
                || format!("reply_now {}", out.reply_now),
            );
            let reason = out.error.as_ref().map(|(r, _)| *r);
            t.check(
                "hand-made: error",
                reason == want["error"].as_str(),
                &at,
                || format!("got {:?}", out.error),
            );
            if let Some(levels) = want["active_levels"].as_u64() {
                t.check(
                    "hand-made: levels",
                    session.active_levels == levels,
                    &at,
                    || format!("got {:#x}", session.active_levels),
                );
            }
            let events = want["events"].as_array().unwrap();
            t.check(
                "hand-made: event count",
                out.events.len() == events.len(),
                &at,
                || format!("got {:?}", out.events.iter().map(label).collect::<Vec<_>>()),
            );
            for (e, w) in out.events.iter().zip(events) {
                let fields = Value::Object(e.fields.clone());
                let ok = e.event_type.name() == w["type"]
                    && e.still_active == w["still_active"].as_bool().unwrap_or(false)
                    && same(&w["fields"], &fields)
                    && w["device_time"].as_str().is_none_or(|t| {
                        e.device_time
                            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                            == Some(t.to_owned())
                    })
                    && w["dedup_key"]
                        .as_str()
                        .is_none_or(|k| e.dedup_key.as_str() == k)
                    && schema_problem(e).is_none();
                t.check("hand-made: event", ok, &at, || {
                    format!(
                        "want {w}, got {} still_active={} {fields} {:?} {}",
                        e.event_type,
                        e.still_active,
                        e.device_time,
                        e.dedup_key.as_str()
                    )
                });
            }
        }
    }
    files.len()
}

fn report(t: &Tally, hand_made_files: usize) -> String {
    let passed: usize = t.passed.values().sum();
    let skipped: usize = t.out_of_scope.values().sum();
    let mut s = String::new();
    let _ = writeln!(s, "# jt808 conformance\n");
    let _ = writeln!(
        s,
        "Traccar vectors: `shared/conformance/traccar/jt808.json` (116 entries); hand-made: \
         `protocols/jt808/vectors/` ({hand_made_files} files).\n"
    );
    let _ = writeln!(
        s,
        "## In scope: {passed} passed, {} failed, {} panics\n",
        t.failed.len(),
        t.panics.len()
    );
    let _ = writeln!(s, "| check | passed |\n|---|---|");
    for (kind, n) in &t.passed {
        let _ = writeln!(s, "| {kind} | {n} |");
    }
    for f in t.failed.iter().chain(&t.panics) {
        let _ = writeln!(s, "\nFAILED: {f}");
    }
    let _ = writeln!(s, "\n## Out of scope: {skipped} expectations\n");
    let _ = writeln!(s, "| category | count |\n|---|---|");
    for (category, n) in &t.out_of_scope {
        let _ = writeln!(s, "| {category} | {n} |");
    }
    let _ = writeln!(
        s,
        "\n## Home-care alarms in model-specific entries (checked anyway)\n"
    );
    for m in &t.model_alarms {
        let _ = writeln!(s, "- {m}");
    }
    let _ = writeln!(
        s,
        "\n## Alarms anxin reports beyond Traccar's assertions ({})\n",
        t.extras.len()
    );
    for x in &t.extras {
        let _ = writeln!(s, "- {x}");
    }
    s
}

#[test]
fn jt808_conformance() {
    let mut t = Tally::default();
    replay_traccar(&mut t);
    let hand_made = replay_hand_made(&mut t);

    let summary = report(&t, hand_made);
    eprintln!("{summary}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target"));
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("conformance-jt808.md"), &summary).unwrap();

    assert!(t.panics.is_empty(), "panics: {:?}", t.panics);
    assert!(
        t.failed.is_empty(),
        "{} in-scope failures:\n{}",
        t.failed.len(),
        t.failed.join("\n")
    );
    assert!(
        t.passed.values().sum::<usize>() > 100,
        "too few in-scope checks ran"
    );
}
