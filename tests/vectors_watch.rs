//! Conformance of the watch family against Traccar's test frames
//! (`../shared/conformance/traccar/watch.json`): every frame is replayed; the home-care
//! expectations must all hold; the rest is counted by category. Writes the summary to
//! `target/conformance-watch.md` for `protocols/CONFORMANCE.md`.

use std::collections::BTreeMap;

use anxin::event::EventType;
use anxin::protocol::tcp::{Ctx, Protocol, RawFrame, Session, watch};
use bytes::BytesMut;
use serde_json::Value;

fn frame_bytes(e: &Value, key: &str, enc: &str) -> Vec<u8> {
    let s = e[key].as_str().unwrap();
    if e[enc].as_str() == Some("hex") {
        hex::decode(s).unwrap()
    } else {
        s.as_bytes().to_vec()
    }
}

#[test]
fn watch_frames_meet_every_home_care_expectation() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/conformance/traccar/watch.json"
    );
    let entries: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("shared/ beside the repo"))
            .unwrap();
    let ctx = Ctx {
        received_at: chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
        peer: "vectors".into(),
    };
    let (mut passed, mut failed) = (Vec::new(), Vec::new());
    let mut out_of_scope: BTreeMap<&str, usize> = BTreeMap::new();
    let mut extras = Vec::new();
    for e in &entries {
        let src = e["source"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        let bytes = frame_bytes(e, "frame", "encoding");
        if e["kind"] == "frame" {
            let mut f = Protocol::Watch.framer();
            let mut buf = BytesMut::from(&bytes[..]);
            let first = std::iter::from_fn(|| f.next_frame(&mut buf)).find_map(|r| match r {
                RawFrame::Frame(b) => Some(b),
                RawFrame::Skipped { .. } => None,
            });
            let want = frame_bytes(&e["expect"], "first_frame", "first_frame_encoding");
            let got = first.map(|b| watch::unescape(&b));
            (if got.as_deref() == Some(&want[..]) {
                &mut passed
            } else {
                &mut failed
            })
            .push(format!("{src}: first frame"));
            continue;
        }
        let mut session = Session::default();
        let out = Protocol::Watch.decode(&bytes, &mut session, &ctx);
        let ex = &e["expect"];
        let types: Vec<EventType> = out.events.iter().map(|e| e.event_type).collect();
        let mut check = |what: String, ok: bool| {
            (if ok { &mut passed } else { &mut failed }).push(format!("{src}: {what}"))
        };
        if let Some(alarm) = ex["alarm"].as_str() {
            for a in alarm.split(',') {
                let ok = match a {
                    "sos" => types.contains(&EventType::Sos),
                    "removing" => out.events.iter().any(|e| {
                        e.event_type == EventType::Removal && e.text("state") == Some("removed")
                    }),
                    "fallDown" => types.contains(&EventType::Fall),
                    "lowBattery" => out.events.iter().any(|e| e.text("level") == Some("low")),
                    other => {
                        *out_of_scope.entry("alarm (not home care)").or_default() += 1;
                        let _ = other;
                        continue;
                    }
                };
                check(format!("alarm {a}"), ok);
            }
            for ev in &out.events {
                let traccar = |n: &str| alarm.split(',').any(|a| a == n);
                let extra = match ev.event_type {
                    EventType::Battery
                        if ev.text("level") == Some("low") && !traccar("lowBattery") =>
                    {
                        Some("low battery")
                    }
                    EventType::Fall if !traccar("fallDown") => Some("fall"),
                    EventType::Sos if !traccar("sos") => Some("sos"),
                    _ => None,
                };
                if let Some(x) = extra {
                    extras.push(format!("{src}: {x}"));
                }
            }
        }
        if ex["has_position"] == true {
            check("has position".into(), types.contains(&EventType::Position));
        }
        if let Some(p) = ex.get("position") {
            let pos = out
                .events
                .iter()
                .find(|e| e.event_type == EventType::Position);
            let ok = pos.is_some_and(|pos| {
                let near = |k: &str| {
                    (pos.number(k).unwrap_or(f64::NAN) - p[k].as_f64().unwrap()).abs() < 1e-5
                };
                near("lat")
                    && near("lon")
                    && pos
                        .device_time
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                        .as_deref()
                        == p["time"].as_str()
            });
            check("position".into(), ok);
        }
        if ex["null"] == true {
            let ok = out
                .events
                .iter()
                .all(|e| matches!(e.event_type, EventType::Heartbeat | EventType::Battery));
            check("no event".into(), ok);
        }
        if let Some(attrs) = ex["attributes"].as_object() {
            for (k, v) in attrs {
                let field = match k.as_str() {
                    "bloodOxygen" => "spo2",
                    "temp1" => "temperature",
                    "heartRate" => "heart_rate",
                    "batteryLevel" => "percent",
                    "steps" => "steps",
                    _ => {
                        *out_of_scope.entry("media (voice upload)").or_default() += 1;
                        continue;
                    }
                };
                let ok = out.events.iter().any(|e| e.number(field) == v.as_f64());
                check(format!("{k} = {v}"), ok);
            }
        }
        if ex["has_attributes"] == true {
            // Traccar's "heart,0" yields heartRate 0; anxin treats 0 bpm as "no reading" so it
            // cannot raise the low-heart-rate rule. Counted apart, not as a pass.
            if bytes
                .windows(8)
                .any(|w| w.eq_ignore_ascii_case(b"*heart,0"))
            {
                *out_of_scope
                    .entry("deliberate: 0 bpm is no reading")
                    .or_default() += 1;
            } else {
                check(
                    "has attributes".into(),
                    out.events
                        .iter()
                        .any(|e| !e.fields.is_empty() && e.event_type != EventType::Position),
                );
            }
        }
    }
    // Our own expectation (PROTOCOLS.md §2, "A fall example"): status 00200010 is a fall.
    let fall = "[3G*8308373902*0080*AL,230817,095346,A,47.083950,N,15.4821850,E,7.60,273.8,0.0,4,15,44,0,0,00200010,2,255,232,1,7605,42530,118,7605,58036,119,0,65.8]";
    let out = Protocol::Watch.decode(fall.as_bytes(), &mut Session::default(), &ctx);
    (if out.events.iter().any(|e| e.event_type == EventType::Fall) {
        &mut passed
    } else {
        &mut failed
    })
    .push("WatchProtocolDecoderTest.java:88: fall (anxin's own expectation, status bit 21)".into());

    let mut md = format!(
        "### watch\n\nIn-scope home-care expectations: **{} passed, {} failed** (of {} Traccar entries).\n\n",
        passed.len(),
        failed.len(),
        entries.len()
    );
    for (k, n) in &out_of_scope {
        md.push_str(&format!("- out of scope — {k}: {n}\n"));
    }
    for x in &extras {
        md.push_str(&format!("- extra alarm reported beyond Traccar: {x}\n"));
    }
    for f in &failed {
        md.push_str(&format!("- FAILED: {f}\n"));
    }
    let _ = std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/target"));
    let _ = std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/conformance-watch.md"),
        &md,
    );
    eprintln!("{md}");
    assert!(failed.is_empty(), "{md}");
    assert!(passed.len() >= 50, "{md}");
}
