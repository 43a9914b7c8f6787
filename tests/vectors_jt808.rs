//! Conformance replay for the `jt808` family.
//!
//! 1. Traccar's 116 JT/T 808 test frames (`protocols/conformance/traccar/jt808.json`, format in
//!    PROTOCOLS.md §9) through [`Jt808Framer`] and [`jt808::decode`]. Only the home-care
//!    expectations are judged — alarms (mapped to anxin events), positions, "no record", battery
//!    readings, satellites — and 100 % of them must pass. Vehicle and asset expectations (fuel,
//!    OBD, drivers, e-locks, …) and model-specific entries are counted by category. Every alarm
//!    anxin reports beyond Traccar's assertions is listed with the flag that carries it.
//! 2. The hand-made vectors in `protocols/jt808/vectors/*.json`: exact events and reply bytes.
//!
//! The summary is printed and written to `target/conformance-jt808.md`. The Traccar file is
//! read from `protocols/conformance/traccar/jt808.json`.

mod conformance;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};

use anxin::event::{Event, EventType};
use anxin::protocol::tcp::jt808;
use anxin::protocol::tcp::{FrameOutput, Protocol, RawFrame, Session};
use chrono::{DateTime, Utc};
use conformance::{
    NON_EMPTY_TEXT, Tally, bytes_of, ctx, finish, first_frame, json_close, no_record, received_at,
    schema_problems, short_source, split, traccar_entries, unhex, vectors,
};
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

/// When the Traccar entries are decoded (Traccar's harness runs at "now").
fn traccar_at() -> DateTime<Utc> {
    "2026-03-01T04:00:05Z".parse().unwrap()
}

/// How `e` breaks the event schema table, if it does, as this replay judges it.
fn schema_problem(e: &Event) -> Option<String> {
    let problems = schema_problems(std::slice::from_ref(e), NON_EMPTY_TEXT);
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// [`Tally::check`] of the entry or hand-made step `at`.
fn check(t: &mut Tally, kind: &str, ok: bool, at: &str, detail: impl FnOnce() -> String) {
    t.check(kind, ok, || format!("{at}: {}", detail()));
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
    // A battery reading of `field`, within `tolerance` of Traccar's (absent if Traccar's is).
    let mut judge_battery = |kind: &str, field: &str, tolerance: f64| {
        let got = out
            .events
            .iter()
            .filter(|e| e.event_type == EventType::Battery)
            .find_map(|e| e.number(field));
        let ok = match num(want) {
            Some(w) => got.is_some_and(|g| (g - w).abs() < tolerance),
            None => got.is_none(),
        };
        check(t, kind, ok, at, || format!("want {want}, got {got:?}"));
    };
    match name {
        "batteryLevel" => judge_battery("battery percent", "percent", 1e-6),
        // "*M00…": the battery of an e-lock, reported in its status string (TLV 0x33).
        "battery" if frame_hex.contains("2a4d3030") => {
            t.skip("e-lock status string (TLV 0x33 `*M00`)");
        }
        "battery" => judge_battery("battery voltage", "voltage_v", 1e-3),
        "sat" => {
            let got = out
                .events
                .iter()
                .find(|e| e.event_type == EventType::Position)
                .and_then(|e| e.number("satellites"));
            let ok = got == num(want);
            check(t, "satellites", ok, at, || {
                format!("want {want}, got {got:?}")
            });
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
            check(t, "alarm", ok, at, || {
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

/// Replays Traccar's entries into `t`; returns the notes on home-care alarms in model-specific
/// entries.
fn replay_traccar(t: &mut Tally) -> Vec<String> {
    let entries = traccar_entries("jt808");
    assert_eq!(entries.len(), 116, "the jt808 vector file changed");

    // Traccar's asserted alarms per distinct frame (several entries share one frame).
    let mut asserted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut anxin_alarms: BTreeMap<String, (usize, Vec<u8>, BTreeSet<String>)> = BTreeMap::new();
    let mut model_alarms = Vec::new();

    for (i, entry) in entries.iter().enumerate() {
        let source = short_source(entry);
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
                let Ok(frames) = catch_unwind(|| split(Protocol::Jt808, &frame, chunk)) else {
                    t.panics.push(format!("{at}: framer"));
                    continue;
                };
                // Traccar's splitter unescapes; anxin's leaves that to the decoder.
                let got = first_frame(&frames).map(|f| unescape(&f));
                check(t, "first frame", got.as_ref() == Some(&want), &at, || {
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
        let frames = split(Protocol::Jt808, &wire, wire.len());
        check(
            t,
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
            jt808::decode(&wire, &mut session, &ctx(traccar_at()))
        })) else {
            t.panics.push(format!("{at}: decode"));
            continue;
        };
        for e in &out.events {
            check(t, "event schema", schema_problem(e).is_none(), &at, || {
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
                        check(t, "alarm (model entry)", ok, &at, || {
                            format!("Traccar {name} → anxin {anxin}; anxin reported {labels:?}")
                        });
                        model_alarms.push(format!(
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
                    check(t, "position", ok, &at, || format!("want {want}"));
                }
                "has_position" | "list" if location_message => {
                    let ok = positions.iter().any(|p| p.device_time.is_some());
                    check(t, "has position", ok, &at, || {
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
                    check(t, "no record", no_record(&out.events), &at, || {
                        format!(
                            "events {:?}",
                            out.events.iter().map(label).collect::<Vec<_>>()
                        )
                    });
                }
                "not_null" | "has_attributes" if location_message => {
                    check(t, "some record", !out.events.is_empty(), &at, || {
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
            t.extra_alarms
                .push(format!("entry {i}: `{extra}` ← {}", carriers.join(", ")));
        }
    }
    model_alarms
}

fn replay_hand_made(t: &mut Tally) -> usize {
    let files = vectors("jt808", 1);

    for (name, v) in &files {
        let ctx = ctx(received_at(v));
        // One file is one connection.
        let mut session = Session::default();
        for (n, step) in v["steps"].as_array().unwrap().iter().enumerate() {
            let at = format!("{name} step {n}");
            let wire = unhex(step["frame_hex"].as_str().unwrap());
            let frames = split(Protocol::Jt808, &wire, 1);
            check(
                t,
                "hand-made: framed",
                frames == [RawFrame::Frame(wire.clone().into())],
                &at,
                || format!("{frames:?}"),
            );
            let out = jt808::decode(&wire, &mut session, &ctx);
            let want = &step["expect"];

            if let Some(id) = want["device_id"].as_str() {
                check(
                    t,
                    "hand-made: device id",
                    session.device_id.as_deref() == Some(id),
                    &at,
                    || format!("{:?}", session.device_id),
                );
            }
            let want_reply = want["reply_hex"].as_str().map(unhex);
            check(t, "hand-made: reply", out.reply == want_reply, &at, || {
                format!("got {:?}", out.reply.as_ref().map(hex::encode))
            });
            check(
                t,
                "hand-made: reply timing",
                out.reply_now == want["reply_now"].as_bool().unwrap_or(false),
                &at,
                || format!("reply_now {}", out.reply_now),
            );
            let reason = out.error.as_ref().map(|(r, _)| *r);
            check(
                t,
                "hand-made: error",
                reason == want["error"].as_str(),
                &at,
                || format!("got {:?}", out.error),
            );
            if let Some(levels) = want["active_levels"].as_u64() {
                check(
                    t,
                    "hand-made: levels",
                    session.active_levels == levels,
                    &at,
                    || format!("got {:#x}", session.active_levels),
                );
            }
            let events = want["events"].as_array().unwrap();
            check(
                t,
                "hand-made: event count",
                out.events.len() == events.len(),
                &at,
                || format!("got {:?}", out.events.iter().map(label).collect::<Vec<_>>()),
            );
            for (e, w) in out.events.iter().zip(events) {
                let fields = Value::Object(e.fields.clone());
                let ok = e.event_type.name() == w["type"]
                    && e.still_active == w["still_active"].as_bool().unwrap_or(false)
                    && json_close(&w["fields"], &fields, 1e-9)
                    && w["device_time"].as_str().is_none_or(|t| {
                        e.device_time
                            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                            == Some(t.to_owned())
                    })
                    && w["dedup_key"]
                        .as_str()
                        .is_none_or(|k| e.dedup_key.as_str() == k)
                    && conformance::flaws_match(e, &w["flaws"])
                    && schema_problem(e).is_none();
                check(t, "hand-made: event", ok, &at, || {
                    format!(
                        "want {w}, got {} still_active={} {fields} {:?} {} flaws {:?}",
                        e.event_type,
                        e.still_active,
                        e.device_time,
                        e.dedup_key.as_str(),
                        e.flaws
                    )
                });
            }
        }
    }
    files.len()
}

fn report(t: &Tally, model_alarms: &[String], hand_made_files: usize) -> String {
    let passed = t.passed();
    let skipped: usize = t.out_of_scope.values().sum();
    let mut s = String::new();
    let _ = writeln!(s, "## jt808 conformance\n");
    let _ = writeln!(
        s,
        "Traccar vectors: `protocols/conformance/traccar/jt808.json` (116 entries); hand-made: \
         `protocols/jt808/vectors/` ({hand_made_files} files).\n"
    );
    let _ = writeln!(
        s,
        "### In scope: {passed} passed, {} failed, {} panics\n",
        t.failed.len(),
        t.panics.len()
    );
    let _ = writeln!(s, "| check | passed |\n|---|---|");
    for (kind, (n, _)) in t.by_check.iter().filter(|(_, (n, _))| *n > 0) {
        let _ = writeln!(s, "| {kind} | {n} |");
    }
    for f in t.failed.iter().chain(&t.panics) {
        let _ = writeln!(s, "\nFAILED: {f}");
    }
    let _ = writeln!(s, "\n### Out of scope: {skipped} expectations\n");
    let _ = writeln!(s, "| category | count |\n|---|---|");
    for (category, n) in &t.out_of_scope {
        let _ = writeln!(s, "| {category} | {n} |");
    }
    let _ = writeln!(
        s,
        "\n### Home-care alarms in model-specific entries (checked anyway)\n"
    );
    for m in model_alarms {
        let _ = writeln!(s, "- {m}");
    }
    let _ = writeln!(
        s,
        "\n### Alarms anxin reports beyond Traccar's assertions ({})\n",
        t.extra_alarms.len()
    );
    for x in &t.extra_alarms {
        let _ = writeln!(s, "- {x}");
    }
    s
}

#[test]
fn jt808_conformance() {
    let mut t = Tally::default();
    let model_alarms = replay_traccar(&mut t);
    let hand_made = replay_hand_made(&mut t);

    let summary = report(&t, &model_alarms, hand_made);
    finish("jt808", &t, &summary, 101);
}
