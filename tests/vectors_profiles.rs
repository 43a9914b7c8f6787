//! Every shipped vendor profile decodes its vectors (`protocols/<profile>/vectors/*.json`)
//! to the expected events and rejections, in order.

use std::path::Path;

use anxin::config::profiles::load_dir;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Numbers compare by value (a conversion yields 37.0 where a vector writes 37).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-9
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        _ => a == b,
    }
}

#[test]
fn shipped_profiles_decode_their_vectors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols");
    let set = load_dir(&root, "anxin/v1").unwrap_or_else(|p| {
        panic!(
            "shipped profiles have problems:\n{}",
            p.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(
        set.profiles.len() >= 3,
        "expected the three shipped profiles"
    );
    let mut checked = 0;
    let mut failures = Vec::new();
    for profile in &set.profiles {
        let dir = root.join(&profile.name).join("vectors");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        assert!(files.len() >= 5, "{}: too few vectors", profile.name);
        for file in files {
            let name = file.display().to_string();
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let topic = v["topic"].as_str().expect("topic");
            let payload = match (&v["payload"], &v["payload_text"]) {
                (Value::Null, Value::String(s)) => s.clone().into_bytes(),
                (p, _) => p.to_string().into_bytes(),
            };
            let at: DateTime<Utc> = v["received_at"]
                .as_str()
                .unwrap_or("2026-12-06T06:30:05Z")
                .parse()
                .unwrap();
            let (p, device) = set
                .route(topic)
                .unwrap_or_else(|| panic!("{name}: no profile reads {topic}"));
            assert_eq!(p.name, profile.name, "{name}: routed to another profile");
            let decoded = p.decode(topic, device, &payload, at);
            let mut events = Vec::new();
            let mut rejections = Vec::new();
            for item in decoded.items {
                match item {
                    Ok(e) => events.push(e.to_json()),
                    Err(r) => rejections.push(r),
                }
            }
            let want_events = v["events"].as_array().expect("events");
            let mut problem = None;
            if events.len() != want_events.len() {
                problem = Some(format!(
                    "{} events, expected {}",
                    events.len(),
                    want_events.len()
                ));
            }
            for (got, want) in events.iter().zip(want_events) {
                for key in ["type", "device_id", "fields", "device_time", "seq"] {
                    if want.get(key).is_some() && !same(&got[key], &want[key]) {
                        problem.get_or_insert(format!(
                            "{key}: got {}, expected {}",
                            got[key], want[key]
                        ));
                    }
                }
                // The fields of the values kept but not used, in order (none when omitted).
                let got_flaws: Vec<Value> = got["flaws"]
                    .as_array()
                    .map(|fs| fs.iter().map(|f| f["field"].clone()).collect())
                    .unwrap_or_default();
                let want_flaws = want["flaws"].as_array().cloned().unwrap_or_default();
                if got_flaws != want_flaws {
                    problem.get_or_insert(format!(
                        "flaws: got {got_flaws:?}, expected {want_flaws:?}"
                    ));
                }
            }
            let want_rej = v["rejections"].as_array().expect("rejections");
            if rejections.len() != want_rej.len() {
                problem.get_or_insert(format!(
                    "{} rejections ({:?}), expected {}",
                    rejections.len(),
                    rejections.iter().map(|r| &r.detail).collect::<Vec<_>>(),
                    want_rej.len()
                ));
            }
            for (got, want) in rejections.iter().zip(want_rej) {
                if got.reason.as_str() != want["reason"] {
                    problem.get_or_insert(format!(
                        "rejection {} ({}), expected {}",
                        got.reason, got.detail, want["reason"]
                    ));
                }
                if let Some(part) = want["detail_contains"].as_str()
                    && !got.detail.contains(part)
                {
                    problem
                        .get_or_insert(format!("rejection detail {:?} lacks {part:?}", got.detail));
                }
                if got.raw.is_empty() {
                    problem.get_or_insert("a rejection kept no raw bytes".into());
                }
            }
            if let Some(p) = problem {
                failures.push(format!("{name}: {p}\n  got events: {events:?}"));
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 30, "only {checked} vectors");
}
