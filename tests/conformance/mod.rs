//! Machinery shared by the conformance replays (`tests/vectors_{watch,gt06,jt808,trv}.rs`):
//! reading Traccar's test frames and anxin's own vectors, framing, the tally of in-scope and
//! out-of-scope expectations, the event-schema check, the home-care reading of Traccar's alarm
//! and attribute names, and the markdown summary written to `target/conformance-<family>.md`
//! (concatenated into `protocols/CONFORMANCE.md`).
//!
//! What differs between families — which further Traccar names are home care, which message
//! types are decoded, model-specific entries, where an extra alarm came from — stays in each
//! family's test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anxin::event::{Event, EventType, FieldKind};
use anxin::protocol::tcp::{Ctx, FrameOutput, Protocol, RawFrame, Session};
use bytes::BytesMut;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// The device Traccar's harness is logged in as: every frame decodes as from a known device.
pub const DEVICE: &str = "123456789012345";

pub fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Traccar's test frames of `family` (format in `protocols/conformance/PROTOCOLS.md` §9),
/// kept in the repository as data: `protocols/conformance/traccar/<family>.json`.
pub fn traccar_file(family: &str) -> PathBuf {
    manifest().join(format!("protocols/conformance/traccar/{family}.json"))
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Traccar's entries for `family`.
pub fn traccar_entries(family: &str) -> Vec<Value> {
    let path = traccar_file(family);
    match read_json(&path) {
        Value::Array(entries) => entries,
        other => panic!("{}: not an array of vectors: {other}", path.display()),
    }
}

/// anxin's own vectors of `family` (`protocols/<family>/vectors/*.json`) by file name, sorted;
/// there must be at least `at_least`.
pub fn vectors(family: &str, at_least: usize) -> Vec<(String, Value)> {
    let dir = manifest().join(format!("protocols/{family}/vectors"));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= at_least,
        "too few vectors in {}: {}, expected at least {at_least}",
        dir.display(),
        paths.len()
    );
    paths
        .iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                read_json(p),
            )
        })
        .collect()
}

/// The file name of an entry's `source` (`…/Gt06ProtocolDecoderTest.java:54` → the last part).
pub fn short_source(entry: &Value) -> &str {
    let source = entry["source"].as_str().unwrap_or("?");
    source.rsplit('/').next().unwrap_or(source)
}

pub fn ctx(at: DateTime<Utc>) -> Ctx {
    Ctx {
        received_at: at,
        peer: "198.51.100.7:40000".into(),
    }
}

/// The session Traccar's harness supplies: logged in as [`DEVICE`].
pub fn logged_in() -> Session {
    Session {
        device_id: Some(DEVICE.into()),
        ..Default::default()
    }
}

/// Hex, spaces allowed.
pub fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap_or_else(|e| panic!("bad hex {s}: {e}"))
}

/// The bytes of a vector field in its declared encoding: `hex`, else text.
pub fn bytes_of(value: &str, encoding: &str) -> Vec<u8> {
    match encoding {
        "hex" => unhex(value),
        _ => value.as_bytes().to_vec(),
    }
}

/// Everything `protocol`'s framer yields for `bytes` fed `chunk` bytes at a time.
pub fn split(protocol: Protocol, bytes: &[u8], chunk: usize) -> Vec<RawFrame> {
    let mut framer = protocol.framer();
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

/// The frames among what a framer yielded, without the skips.
pub fn frames_only(raw: Vec<RawFrame>) -> Vec<Vec<u8>> {
    raw.into_iter()
        .filter_map(|f| match f {
            RawFrame::Frame(b) => Some(b.to_vec()),
            RawFrame::Skipped { .. } => None,
        })
        .collect()
}

/// The first frame among what a framer yielded.
pub fn first_frame(raw: &[RawFrame]) -> Option<Vec<u8>> {
    raw.iter().find_map(|f| match f {
        RawFrame::Frame(b) => Some(b.to_vec()),
        RawFrame::Skipped { .. } => None,
    })
}

/// Counts of a replay.
#[derive(Default)]
pub struct Tally {
    /// In-scope checks by name: (passed, failed).
    pub by_check: BTreeMap<String, (usize, usize)>,
    /// In-scope failures, described.
    pub failed: Vec<String>,
    /// Out-of-scope expectations, by category.
    pub out_of_scope: BTreeMap<String, usize>,
    /// Alarms anxin reports beyond Traccar's expectations, with what carried them.
    pub extra_alarms: Vec<String>,
    /// Framings or decodes that panicked.
    pub panics: Vec<String>,
}

impl Tally {
    /// One in-scope check named `name`; `what` describes a failure.
    pub fn check(&mut self, name: &str, ok: bool, what: impl FnOnce() -> String) {
        let slot = self.by_check.entry(name.to_owned()).or_default();
        if ok {
            slot.0 += 1;
        } else {
            slot.1 += 1;
            self.failed.push(format!("{name}: {}", what()));
        }
    }

    /// A failure outside the named checks (an event breaking its schema).
    pub fn fail(&mut self, what: String) {
        self.failed.push(what);
    }

    /// One out-of-scope expectation.
    pub fn skip(&mut self, category: impl Into<String>) {
        *self.out_of_scope.entry(category.into()).or_default() += 1;
    }

    pub fn passed(&self) -> usize {
        self.by_check.values().map(|(p, _)| p).sum()
    }

    pub fn merge(&mut self, other: Tally) {
        for (name, (p, f)) in other.by_check {
            let slot = self.by_check.entry(name).or_default();
            slot.0 += p;
            slot.1 += f;
        }
        self.failed.extend(other.failed);
        for (category, n) in other.out_of_scope {
            *self.out_of_scope.entry(category).or_default() += n;
        }
        self.extra_alarms.extend(other.extra_alarms);
        self.panics.extend(other.panics);
    }
}

/// What [`schema_problems`] asks beyond every field being one its type defines, of its kind and
/// in its range (event.rs), and [`EventType::check_fields`]. The replays were written with
/// different strictness and keep it.
#[derive(Clone, Copy)]
pub struct Schema {
    /// Every field the type requires is present.
    pub required_fields: bool,
    /// Text fields are not empty (as the canonical ingest demands).
    pub non_empty_text: bool,
}

/// Required fields checked, empty text allowed (the GT06 and TRV replays).
pub const REQUIRED_FIELDS: Schema = Schema {
    required_fields: true,
    non_empty_text: false,
};

/// Text must not be empty, required fields not checked (the JT/T 808 replay).
pub const NON_EMPTY_TEXT: Schema = Schema {
    required_fields: false,
    non_empty_text: true,
};

/// How `events` break the event schema table (event.rs); empty if they do not.
pub fn schema_problems(events: &[Event], schema: Schema) -> Vec<String> {
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
                FieldKind::Text { max_len } => v.as_str().is_some_and(|s| {
                    s.len() <= max_len && !(schema.non_empty_text && s.is_empty())
                }),
                FieldKind::Bool => v.is_boolean(),
                FieldKind::List { max_items } => v.as_array().is_some_and(|a| a.len() <= max_items),
            };
            if !ok {
                out.push(format!("{}.{k} = {v} breaks its schema", e.event_type));
            }
        }
        if schema.required_fields {
            for spec in e.event_type.fields().iter().filter(|s| s.required) {
                if !e.fields.contains_key(spec.name) {
                    out.push(format!("{} lacks {}", e.event_type, spec.name));
                }
            }
        }
        if let Err(why) = e.event_type.check_fields(&e.fields) {
            out.push(why);
        }
    }
    out
}

/// The alarm-like fact an event reports, named as in the conformance summaries.
pub fn alarm_name(e: &Event) -> Option<String> {
    let ty = e.event_type;
    match ty {
        EventType::Sos | EventType::Fall | EventType::Tamper => Some(ty.to_string()),
        EventType::Battery if e.text("level") == Some("low") => Some("battery level low".into()),
        EventType::Removal if e.text("state") == Some("removed") => Some("removal removed".into()),
        EventType::Power if e.text("state") == Some("lost") => Some("power lost".into()),
        EventType::Fault | EventType::Alarm => {
            Some(format!("{ty} {}", e.text("code").unwrap_or_default()))
        }
        _ => None,
    }
}

/// The alarm-like facts anxin reported.
pub fn alarms(events: &[Event]) -> Vec<String> {
    events.iter().filter_map(alarm_name).collect()
}

/// Traccar's alarm names that are home care in every family → the [`alarm_name`] anxin
/// reports for them. Families add their own.
pub fn home_care_alarm(name: &str) -> Option<&'static str> {
    Some(match name {
        "sos" => "sos",
        "fallDown" => "fall",
        "lowBattery" => "battery level low",
        "removing" => "removal removed",
        _ => return None,
    })
}

/// Whether anxin's reported alarm `have` is the mapped Traccar alarm `want`; `alarm` (what a
/// family maps Traccar's unnamed `general` to) is any coded alarm.
pub fn covers(want: &str, have: &str) -> bool {
    have == want || (want == "alarm" && have.starts_with("alarm "))
}

/// Traccar's attribute names that are home care in every family → anxin's type and field
/// (PROTOCOLS.md §9: blood pressure and SpO2 have several names). Families add their own.
pub fn home_care_attribute(name: &str) -> Option<(EventType, &'static str)> {
    Some(match name {
        "heartRate" => (EventType::Vitals, "heart_rate"),
        "pressureSystolic" | "pressureHigh" => (EventType::Vitals, "systolic"),
        "pressureDiastolic" | "pressureLow" => (EventType::Vitals, "diastolic"),
        "spo2" | "spO2" | "bloodOxygen" => (EventType::Vitals, "spo2"),
        "batteryLevel" => (EventType::Battery, "percent"),
        "steps" => (EventType::Vitals, "steps"),
        _ => return None,
    })
}

/// Traccar's "no record" (login, keep-alive and the like): a heartbeat or battery reading is
/// not a record.
pub fn no_record(events: &[Event]) -> bool {
    events
        .iter()
        .all(|e| matches!(e.event_type, EventType::Heartbeat | EventType::Battery))
}

/// How one family judges Traccar's decode expectations with [`judge_expectations`].
pub struct Scope {
    /// Traccar's alarm name → the [`alarm_name`] anxin reports; `None`: out of scope.
    pub alarm: fn(&str) -> Option<&'static str>,
    /// The category out-of-scope alarms are counted under: "alarm `<name>` (<this>)".
    pub other_alarms: &'static str,
    /// Traccar's attribute name → anxin's type and field; `None`: out of scope.
    pub attribute: fn(&str) -> Option<(EventType, &'static str)>,
    /// How far an attribute's number may be from Traccar's (`0.0`: exactly equal).
    pub tolerance: f64,
    /// The category of Traccar's `fields` expectations (altitude and the like).
    pub fields: &'static str,
}

/// Judges one decode entry's `expect` object against anxin's `events`. `undecoded` is the
/// category to count `not_null`, `list`, `has_*` and attribute expectations under when the
/// frame is of a message type anxin does not decode into events. Returns the anxin names of
/// Traccar's in-scope alarms, for the extra-alarm report.
pub fn judge_expectations(
    t: &mut Tally,
    scope: &Scope,
    expect: &Map<String, Value>,
    events: &[Event],
    source: &str,
    undecoded: Option<&str>,
) -> Vec<String> {
    let positions: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_type == EventType::Position)
        .collect();
    let mut mapped = Vec::new();
    for (key, want) in expect {
        if let Some(category) = undecoded
            && matches!(
                key.as_str(),
                "not_null" | "list" | "has_attributes" | "has_position"
            )
        {
            t.skip(category);
            continue;
        }
        match key.as_str() {
            "null" => t.check("null", no_record(events), || {
                format!(
                    "{source}: expected no record, got {:?}",
                    events.iter().map(|e| e.event_type).collect::<Vec<_>>()
                )
            }),
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
                for name in want.as_str().unwrap().split(',').map(str::trim) {
                    match (scope.alarm)(name) {
                        Some(a) => {
                            mapped.push(a.to_owned());
                            t.check("alarm", have.iter().any(|h| covers(a, h)), || {
                                format!("{source}: Traccar {name}, anxin {have:?}")
                            });
                        }
                        None => t.skip(format!("alarm `{name}` ({})", scope.other_alarms)),
                    }
                }
            }
            "attributes" => {
                for (name, value) in want.as_object().unwrap() {
                    let Some((ty, field)) = (scope.attribute)(name) else {
                        t.skip(format!(
                            "attribute `{name}` (vehicle/asset/device-internal)"
                        ));
                        continue;
                    };
                    if let Some(category) = undecoded {
                        t.skip(category);
                        continue;
                    }
                    let found: Vec<&Value> = events
                        .iter()
                        .filter(|e| e.event_type == ty)
                        .filter_map(|e| e.fields.get(field))
                        .collect();
                    let ok = match value.as_f64() {
                        None => found.is_empty(),
                        Some(v) => found.iter().any(|f| {
                            f.as_f64()
                                .is_some_and(|x| x == v || (x - v).abs() < scope.tolerance)
                        }),
                    };
                    t.check("attribute", ok, || {
                        format!("{source}: {name} = {value} → {ty}.{field}, found {found:?}")
                    });
                }
            }
            "fields" => t.skip(scope.fields),
            other => t.skip(format!("expectation `{other}`")),
        }
    }
    mapped
}

/// JSON equal but for numbers, which may differ by less than `tolerance`.
pub fn json_close(a: &Value, b: &Value, tolerance: f64) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < tolerance
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y, tolerance))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w, tolerance)))
        }
        _ => a == b,
    }
}

/// When an anxin vector's frame arrived.
pub fn received_at(vector: &Value) -> DateTime<Utc> {
    vector["received_at"].as_str().unwrap().parse().unwrap()
}

/// The session an anxin vector starts from: logged in as its `logged_in_as`, if any.
pub fn vector_session(vector: &Value) -> Session {
    Session {
        device_id: vector["logged_in_as"].as_str().map(str::to_owned),
        ..Default::default()
    }
}

/// Asserts what an anxin vector (`name`) expects of one decode: the session's device, the
/// reply (`reply`, rendered as the vector writes it), its timing, the error, and the events —
/// type, fields (coordinates to 1e-6), device time, receive time and device. The events must
/// obey [`REQUIRED_FIELDS`].
pub fn assert_vector(
    name: &str,
    vector: &Value,
    session: &Session,
    out: &FrameOutput,
    reply: Option<String>,
) {
    let want = &vector["expect"];
    assert_eq!(
        session.device_id.as_deref(),
        want["device_id"].as_str(),
        "{name}: session device"
    );
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
    let problems = schema_problems(&out.events, REQUIRED_FIELDS);
    assert!(problems.is_empty(), "{name}: {problems:?}");
    let at = received_at(vector);
    let want_device = want["device_id"].as_str().unwrap_or_default();
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
            json_close(&fields, &want["fields"], 1e-6),
            "{name} event {i}: got {fields}, want {}",
            want["fields"]
        );
        let time = want["device_time"]
            .as_str()
            .map(|t| t.parse::<DateTime<Utc>>().unwrap());
        assert_eq!(got.device_time, time, "{name} event {i}: device time");
        assert_eq!(got.received_at, at, "{name} event {i}: receive time");
        assert_eq!(got.device_id, want_device, "{name} event {i}: device");
        assert!(
            flaws_match(got, &want["flaws"]),
            "{name} event {i}: flaws {:?}, want {}",
            got.flaws,
            want["flaws"]
        );
    }
}

/// Whether `event`'s flaws are `want`'s: a list of `{"field", "value"}` (and `"problem"` when
/// given), in order; an absent `want` means none.
pub fn flaws_match(event: &anxin::event::Event, want: &Value) -> bool {
    let want = want.as_array().map(Vec::as_slice).unwrap_or_default();
    event.flaws.len() == want.len()
        && event.flaws.iter().zip(want).all(|(f, w)| {
            w["field"] == f.field.as_str()
                && w["value"] == f.value.as_str()
                && w["problem"].as_str().is_none_or(|p| p == f.problem)
        })
}

/// How [`summary`] lays out its lists: as tables (GT06) or as bullet lists (TRV).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Tables,
    Lists,
}

/// The markdown summary of a replay: `## <title>`, then `<replayed>; panics: N`, the in-scope
/// counts by check, the out-of-scope categories, the extra alarms, failures and panics.
pub fn summary(t: &Tally, title: &str, replayed: &str, layout: Layout) -> String {
    let tables = layout == Layout::Tables;
    let mut s = String::new();
    let _ = writeln!(s, "## {title}\n");
    let _ = writeln!(s, "{replayed}; panics: {}\n", t.panics.len());
    let _ = writeln!(
        s,
        "In-scope expectations: **{} passed, {} failed**\n",
        t.passed(),
        t.failed.len()
    );
    let _ = writeln!(s, "| check | passed | failed |\n|---|---|---|");
    for (name, (p, f)) in &t.by_check {
        let _ = writeln!(s, "| {name} | {p} | {f} |");
    }
    let total: usize = t.out_of_scope.values().sum();
    if tables {
        let _ = writeln!(s, "\nOut of scope: {total}\n");
        let _ = writeln!(s, "| category | expectations |\n|---|---|");
        for (cat, n) in &t.out_of_scope {
            let _ = writeln!(s, "| {cat} | {n} |");
        }
    } else {
        let _ = writeln!(s, "\nOut of scope: {total}");
        for (cat, n) in &t.out_of_scope {
            let _ = writeln!(s, "- {cat}: {n}");
        }
    }
    let _ = writeln!(
        s,
        "\nExtra alarms anxin reports beyond Traccar's: {}{}",
        t.extra_alarms.len(),
        if tables { "\n" } else { "" }
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

/// Writes `report` (see [`write_report`]) and asserts the replay: no panic, no in-scope
/// failure, and at least `min_passed` in-scope checks passed.
pub fn finish(family: &str, t: &Tally, report: &str, min_passed: usize) {
    write_report(family, report);
    assert!(t.panics.is_empty(), "panics: {:?}", t.panics);
    assert!(
        t.failed.is_empty(),
        "{} in-scope failures:\n{report}",
        t.failed.len()
    );
    assert!(
        t.passed() >= min_passed,
        "{} in-scope checks passed, fewer than {min_passed}:\n{report}",
        t.passed()
    );
}

/// Prints `report`, writes it to `conformance-<family>.md` in the target directory
/// (`$CARGO_TARGET_DIR`, by default `target/`), and checks that the family's section of
/// `protocols/CONFORMANCE.md` (between `<!-- begin FAMILY -->` and `<!-- end FAMILY -->`) is
/// this report, so the published figures cannot go stale. With `ANXIN_UPDATE_CONFORMANCE=1`
/// the section is rewritten instead (run the four replays one after another, e.g. with
/// `cargo test`, not in parallel: they edit the same file).
pub fn write_report(family: &str, report: &str) {
    eprintln!("{report}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest().join("target"));
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join(format!("conformance-{family}.md")), report).unwrap();

    let path = manifest().join("protocols/CONFORMANCE.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (begin, end) = (
        format!("<!-- begin {family} -->\n"),
        format!("<!-- end {family} -->"),
    );
    let start = doc
        .find(&begin)
        .unwrap_or_else(|| panic!("{}: no {begin:?} marker", path.display()))
        + begin.len();
    let stop = start
        + doc[start..]
            .find(&end)
            .unwrap_or_else(|| panic!("{}: no {end:?} marker", path.display()));
    let want = format!("{}\n", report.trim_end());
    if doc[start..stop] == want {
        return;
    }
    if std::env::var("ANXIN_UPDATE_CONFORMANCE").as_deref() == Ok("1") {
        std::fs::write(&path, format!("{}{want}{}", &doc[..start], &doc[stop..])).unwrap();
        return;
    }
    panic!(
        "protocols/CONFORMANCE.md's {family} section differs from this replay's report; refresh it with \
         `ANXIN_UPDATE_CONFORMANCE=1 cargo test --test vectors_{family}` and review the diff.\n\
         The report:\n{want}"
    );
}
