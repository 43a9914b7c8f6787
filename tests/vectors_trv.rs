//! Trv ("IW") conformance: Traccar's test frames (`protocols/conformance/traccar/trv.json`,
//! PROTOCOLS.md §9) and anxin's own vectors (`protocols/trv/vectors/*.json`), each fed through
//! the real framer and decoder.
//!
//! Traccar's expectations are judged by what home care needs: alarms (Traccar's set must be a
//! subset of anxin's), positions, vital signs, battery, steps, and "no record". Anything
//! vehicle-like or model-specific is counted as out of scope, by category. The summary goes to
//! stderr and to `target/conformance-trv.md`.

mod conformance;

use std::panic::{AssertUnwindSafe, catch_unwind};

use anxin::event::EventType;
use anxin::protocol::tcp::trv::{TrvFramer, decode};
use anxin::protocol::tcp::{FrameOutput, Framer, Protocol, RawFrame};
use bytes::BytesMut;
use chrono::{TimeZone, Utc};
use conformance::{
    Layout, REQUIRED_FIELDS, Scope, Tally, alarms, assert_vector, ctx, finish, frames_only,
    home_care_alarm, home_care_attribute, judge_expectations, logged_in, received_at,
    schema_problems, split, summary, traccar_entries, vector_session, vectors,
};
use serde_json::Value;

/// Traccar's home-care names as the TRV family reads them.
const SCOPE: Scope = Scope {
    alarm: home_care_alarm,
    other_alarms: "vehicle/asset",
    attribute: map_attribute,
    tolerance: 0.0,
    fields: "position fields (altitude, …)",
};

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

/// Traccar's attribute names → anxin's type and field: the common ones and body temperature
/// (PROTOCOLS.md §9).
fn map_attribute(name: &str) -> Option<(EventType, &'static str)> {
    match name {
        "temperature" => Some((EventType::Vitals, "temperature")),
        _ => home_care_attribute(name),
    }
}

/// The AP10 alarm-code field of a frame (PROTOCOLS.md §5), for the extra-alarm report.
fn alarm_code_field(frame: &str) -> String {
    match frame.split(',').nth(5) {
        Some(code) if frame.contains("AP10") => format!("AP10 code {code}"),
        _ => frame.chars().take(12).collect(),
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
    for problem in schema_problems(events, REQUIRED_FIELDS) {
        t.fail(format!("schema at {source}: {problem}"));
    }
    let mapped = judge_expectations(t, &SCOPE, expect, events, source, None);
    record_extras(t, entry, &alarms(events), &mapped);
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

#[test]
fn traccar_trv_vectors_pass_every_home_care_expectation() {
    let entries = traccar_entries("trv");
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
            decode(&framed(frame_text), &mut logged_in(), &ctx(at))
        }));
        match result {
            Ok(out) => check_entry(&mut t, entry, &out, &source),
            Err(_) => t.panics.push(format!("{source}: {frame_text}")),
        }
    }
    let report = summary(
        &t,
        "Trv conformance against Traccar's test vectors",
        &format!(
            "Frames replayed: {} (through `TrvFramer`, then `trv::decode`)",
            entries.len()
        ),
        Layout::Lists,
    );
    finish("trv", &t, &report, 1);
}

#[test]
fn traccar_frames_split_back_apart_from_one_stream_in_any_chunking() {
    let sent: Vec<String> = traccar_entries("trv")
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
        let got: Vec<String> = frames_only(split(Protocol::Trv, stream.as_bytes(), chunk))
            .into_iter()
            .map(|f| String::from_utf8(f).unwrap())
            .collect();
        assert_eq!(got, sent, "chunk {chunk}");
    }
}

fn check_vector(name: &str, v: &Value) {
    let frame = framed(v["frame"].as_str().unwrap());
    let mut session = vector_session(v);
    let out = decode(&frame, &mut session, &ctx(received_at(v)));
    let reply = out
        .reply
        .as_deref()
        .map(|r| String::from_utf8_lossy(r).into_owned());
    assert_vector(name, v, &session, &out, reply);
}

#[test]
fn anxin_trv_vectors_decode_to_their_expected_events_and_replies() {
    for (name, v) in vectors("trv", 5) {
        check_vector(&name, &v);
    }
}
