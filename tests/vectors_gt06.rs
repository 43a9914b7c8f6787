//! GT06 conformance: Traccar's test frames (`protocols/conformance/traccar/gt06.json`,
//! PROTOCOLS.md §9) and anxin's own vectors (`protocols/gt06/vectors/*.json`), each fed through
//! the real framer and decoder.
//!
//! Traccar's expectations are judged by what home care needs: alarms (Traccar's set must be a
//! subset of anxin's), positions, battery, steps, vital signs and "no record". Vehicle and
//! asset expectations, message types anxin does not decode, and model-specific entries are
//! counted as out of scope, by category. The summary goes to stderr and to
//! `target/conformance-gt06.md`.

mod conformance;

use std::panic::{AssertUnwindSafe, catch_unwind};

use anxin::event::{Event, EventType};
use anxin::protocol::tcp::gt06::{alarm_flags, decode};
use anxin::protocol::tcp::{FrameOutput, Protocol};
use chrono::{TimeZone, Utc};
use conformance::{
    Layout, REQUIRED_FIELDS, Scope, Tally, alarm_name, assert_vector, covers, ctx, finish,
    frames_only, home_care_alarm, home_care_attribute, judge_expectations, logged_in, received_at,
    schema_problems, split, summary, traccar_entries, unhex, vector_session, vectors,
};
use serde_json::Value;

/// Traccar's home-care names as the GT06 family reads them.
const SCOPE: Scope = Scope {
    alarm: map_alarm,
    other_alarms: "vehicle",
    attribute: map_attribute,
    tolerance: 1e-9,
    fields: "position fields (altitude of vehicle variants)",
};

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

/// `(extended header, type)` of a frame.
fn kind(frame: &[u8]) -> (bool, u8) {
    let long = frame.starts_with(&[0x79, 0x79]);
    let at = if long { 4 } else { 3 };
    (long, frame.get(at).copied().unwrap_or(0))
}

/// The frames the framer yields for `bytes` fed `chunk` bytes at a time.
fn split_all(bytes: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    frames_only(split(Protocol::Gt06, bytes, chunk))
}

/// Traccar's home-care alarm names → what anxin reports for them: the common ones, tampering,
/// power cut, and `general` (an alarm the device does not name), anxin's coded `alarm`.
fn map_alarm(name: &str) -> Option<&'static str> {
    match name {
        "tampering" => Some("tamper"),
        "powerCut" => Some("power lost"),
        "general" => Some("alarm"),
        _ => home_care_alarm(name),
    }
}

/// Traccar's attribute names → anxin's type and field: the common ones and the battery voltage
/// (PROTOCOLS.md §9).
fn map_attribute(name: &str) -> Option<(EventType, &'static str)> {
    match name {
        "battery" => Some((EventType::Battery, "voltage_v")),
        _ => home_care_attribute(name),
    }
}

fn check_frame_entry(t: &mut Tally, entry: &Value, source: &str) {
    let bytes = unhex(entry["frame"].as_str().unwrap());
    let want = unhex(entry["expect"]["first_frame"].as_str().unwrap());
    for chunk in [bytes.len(), 1] {
        let got = split_all(&bytes, chunk);
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
    for problem in schema_problems(events, REQUIRED_FIELDS) {
        t.fail(format!("schema at {source}: {problem}"));
    }
    if let Some(model) = entry.get("model").and_then(Value::as_str) {
        for _ in expect {
            t.skip(format!("model-specific entry ({model})"));
        }
        return;
    }
    let (long, ty) = kind(frame);
    let undecoded = (!DECODED.contains(&(long, ty))).then(|| {
        format!(
            "message type {}0x{ty:02X} not decoded into events",
            if long { "79 79 " } else { "" }
        )
    });
    let mapped = judge_expectations(t, &SCOPE, expect, events, source, undecoded.as_deref());
    record_extras(t, entry, frame, events, &mapped);
}

/// Alarms anxin reports that Traccar's expectation does not name, with what carried them.
fn record_extras(t: &mut Tally, entry: &Value, frame: &[u8], events: &[Event], traccar: &[String]) {
    let flags = alarm_flags(frame);
    for e in events {
        let Some(name) = alarm_name(e) else {
            continue;
        };
        if traccar.iter().any(|a| covers(a, &name)) {
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

#[test]
fn traccar_gt06_vectors_pass_every_home_care_expectation() {
    let entries = traccar_entries("gt06");
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
                Ok(local) => t.merge(local),
                Err(_) => t.panics.push(format!("framer: {source}")),
            }
            continue;
        }
        let frame = unhex(entry["frame"].as_str().unwrap());
        let result = catch_unwind(AssertUnwindSafe(|| {
            decode(&frame, &mut logged_in(), &ctx(at))
        }));
        match result {
            Ok(out) => check_decode_entry(&mut t, entry, &frame, &out, &source),
            Err(_) => t.panics.push(format!("decoder: {source}")),
        }
    }
    let report = summary(
        &t,
        "GT06 conformance against Traccar's test vectors",
        &format!(
            "Entries replayed: {} (frame-splitter entries through `Gt06Framer` whole and one \
             byte at a time; decode entries through `gt06::decode` with a logged-in session)",
            entries.len()
        ),
        Layout::Tables,
    );
    finish("gt06", &t, &report, 1);
}

/// Every Traccar frame, concatenated with junk between them, splits the same in any chunking
/// as each does on its own.
#[test]
fn traccar_frames_split_back_apart_from_one_stream_in_any_chunking() {
    let entries = traccar_entries("gt06");
    let mut stream = b"\x00junk\r\n".to_vec();
    let mut want = Vec::new();
    for e in &entries {
        let bytes = unhex(e["frame"].as_str().unwrap());
        want.extend(split_all(&bytes, bytes.len()));
        stream.extend_from_slice(&bytes);
        stream.extend_from_slice(b"\x01\x02");
    }
    for chunk in [1, 2, 3, 7, 64, 1500, stream.len()] {
        let got = split_all(&stream, chunk);
        assert_eq!(got.len(), want.len(), "chunk {chunk}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(hex::encode(g), hex::encode(w), "chunk {chunk}, frame {i}");
        }
    }
}

fn check_vector(name: &str, v: &Value) {
    let bytes = unhex(v["frame"].as_str().unwrap());
    // The vector goes through the framer too, whole and one byte at a time.
    for chunk in [bytes.len(), 1] {
        let frames = split_all(&bytes, chunk);
        assert_eq!(
            frames,
            vec![bytes.clone()],
            "{name}: framing, chunk {chunk}"
        );
    }
    let mut session = vector_session(v);
    let out = decode(&bytes, &mut session, &ctx(received_at(v)));
    assert_vector(
        name,
        v,
        &session,
        &out,
        out.reply.as_deref().map(hex::encode),
    );
    let events = v["expect"]["events"].as_array().unwrap();
    for (i, (got, want)) in out.events.iter().zip(events).enumerate() {
        assert_eq!(
            got.still_active,
            want["still_active"].as_bool().unwrap_or(false),
            "{name} event {i}: still_active"
        );
    }
}

#[test]
fn anxin_gt06_vectors_decode_to_their_expected_events_and_replies() {
    for (name, v) in vectors("gt06", 5) {
        check_vector(&name, &v);
    }
}
