//! Reads vendor profiles (`protocols/*.toml`) strictly: every problem is reported with its
//! file, line and key (unknown keys, bad pointers, unknown event types or fields, values a
//! field cannot take, unit conversions that do not apply, overlapping topics).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::FixedOffset;
use serde_json::Value;

use super::reader::{Ctx, Entry, Problem, Section, scalar_text, to_json};
use crate::event::{EventType, FieldKind};
use crate::protocol::canonical::check_field;
use crate::protocol::profile::{
    Condition, DeviceIdSpec, FieldMap, Mapping, Pointer, Profile, ProfileSet, Test, TimeFormat,
    TimeSpec, TopicPattern, UnitSpec, ValueSource, units,
};
use crate::protocol::tcp::Protocol;

/// Reads every `*.toml` in `dir` (name order). `topic_root` expands `{root}`.
pub fn load_dir(dir: &Path, topic_root: &str) -> Result<ProfileSet, Vec<Problem>> {
    let mut problems = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            return Err(vec![Problem {
                file: dir.to_owned(),
                line: 0,
                key: "-".into(),
                message: format!("cannot read the profiles directory: {e}"),
            }]);
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut profiles: Vec<(Profile, usize)> = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(src) => match parse(&file, &src, topic_root) {
                Ok(p) => profiles.push(p),
                Err(p) => problems.extend(p),
            },
            Err(e) => problems.push(Problem {
                file: file.clone(),
                line: 0,
                key: "-".into(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    let canonical = TopicPattern::parse("{root}/devices/+/events", topic_root)
        .expect("the canonical pattern is valid");
    for (i, (p, line)) in profiles.iter().enumerate() {
        let mut clash = |message: String| {
            problems.push(Problem {
                file: p.file.clone(),
                line: *line,
                key: "topic".into(),
                message,
            })
        };
        if p.topic.overlaps(&canonical) {
            clash(format!(
                "{} overlaps the canonical topics {}; a message can only be read one way",
                p.topic.text, canonical.text
            ));
        }
        for (q, _) in &profiles[..i] {
            if p.topic.overlaps(&q.topic) {
                clash(format!(
                    "{} overlaps profile {}'s topic {} ({}); a message can only be read one way",
                    p.topic.text,
                    q.name,
                    q.topic.text,
                    q.file.display()
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(ProfileSet {
            profiles: profiles.into_iter().map(|(p, _)| Arc::new(p)).collect(),
        })
    } else {
        Err(problems)
    }
}

/// Parses one profile; the name is the file stem. Returns the profile and its topic's line.
pub fn parse(file: &Path, src: &str, topic_root: &str) -> Result<(Profile, usize), Vec<Problem>> {
    let ctx = Ctx::new(file, src);
    let doc = match toml_edit::Document::parse(src) {
        Ok(d) => d,
        Err(e) => {
            ctx.problem(
                ctx.line_of(e.span()),
                "-",
                format!("not valid TOML: {}", e.message()),
            );
            return Err(ctx.into_problems());
        }
    };
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let reserved = name == "canonical" || Protocol::ALL.iter().any(|p| p.name() == name);
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        ctx.problem(
            0,
            "-",
            format!("profile name {name:?} (the file name) must be 1..=64 of [A-Za-z0-9_.-]"),
        );
    } else if reserved {
        ctx.problem(
            0,
            "-",
            format!("profile name {name:?} is taken by a built-in protocol; rename the file"),
        );
    }
    let mut root = Section::new(&ctx, doc.as_table(), String::new(), 1);
    let description = root
        .string("description")
        .map(|(s, _)| s)
        .unwrap_or_default();
    let mut topic_line = 0;
    let topic = match root.string("topic") {
        Some((t, line)) => {
            topic_line = line;
            match TopicPattern::parse(&t, topic_root) {
                Ok(p) => Some(p),
                Err(e) => {
                    root.problem(line, "topic", e);
                    None
                }
            }
        }
        None => {
            ctx.problem(1, "topic", "missing: the MQTT topic pattern this profile reads, e.g. \"{root}/vendor/{device_id}/up\"");
            None
        }
    };
    let device_id = device_id(&mut root);
    if let (Some(t), None) = (&topic, &device_id)
        && !t.has_device()
        && !ctx.has_problem_at("device_id")
    {
        root.problem(
            topic_line,
            "topic",
            "no device id: put {device_id} in the topic or set device_id = \"/pointer\"",
        );
    }
    let records = root
        .string("records")
        .and_then(|(s, line)| pointer(&root, line, "records", &s));
    let senml = match root.choice("format", &["json", "senml"]) {
        Some(f) => f == "senml",
        None => false,
    };
    let mut time = root.table("time").and_then(|mut t| {
        let p = t
            .string("pointer")
            .and_then(|(s, line)| pointer(&t, line, "pointer", &s));
        let tz = t.string("tz");
        let format = t.string("format");
        let line = t.line();
        let out = match (p, format) {
            (Some(p), Some((f, fline))) => time_format(&t, &f, fline, tz).map(|format| TimeSpec {
                pointer: p,
                format,
            }),
            (_, None) => {
                t.problem(
                    line,
                    "format",
                    "missing: epoch_s, epoch_ms, rfc3339 or a strftime pattern such as \"%Y-%m-%d %H:%M:%S\"",
                );
                None
            }
            (None, _) => {
                if !ctx_has_key(&t, "pointer") {
                    t.problem(line, "pointer", "missing: where the device time is");
                }
                None
            }
        };
        t.finish();
        out
    });
    if senml && time.is_none() && !ctx.has_problem_at("time") {
        // A resolved SenML record carries its absolute time in seconds (RFC 8428 §4.6).
        time = Some(TimeSpec {
            pointer: Pointer::parse("/t").expect("valid"),
            format: TimeFormat::EpochSeconds,
        });
    }
    let seq = root
        .string("seq")
        .and_then(|(s, line)| pointer(&root, line, "seq", &s));
    let mut mappings = Vec::new();
    let events = root.tables("event");
    if events.is_empty() && !ctx.has_problem_at("event") {
        ctx.problem(
            0,
            "event",
            "no [[event]] mappings: the profile would refuse every message",
        );
    }
    for (i, mut ev) in events.into_iter().enumerate() {
        if let Some(m) = mapping(&mut ev, i) {
            mappings.push(m);
        }
        ev.finish();
    }
    root.finish();
    drop(doc);
    let problems = ctx.into_problems();
    match topic {
        Some(topic) if problems.is_empty() => Ok((
            Profile {
                name,
                file: file.to_owned(),
                description,
                topic,
                device_id,
                records,
                senml,
                time,
                seq,
                mappings,
            },
            topic_line,
        )),
        _ => Err(problems),
    }
}

fn ctx_has_key(s: &Section<'_, '_>, key: &str) -> bool {
    s.ctx().has_problem_at(&s.key_path(key))
}

fn pointer(s: &Section<'_, '_>, line: usize, key: &str, text: &str) -> Option<Pointer> {
    match Pointer::parse(text) {
        Ok(p) => Some(p),
        Err(e) => {
            s.problem(line, key, e);
            None
        }
    }
}

fn device_id(root: &mut Section<'_, '_>) -> Option<DeviceIdSpec> {
    let item = root.peek("device_id")?;
    if item.is_str() {
        let (s, line) = root.string("device_id")?;
        return pointer(root, line, "device_id", &s).map(|p| DeviceIdSpec {
            pointer: p,
            pattern: None,
        });
    }
    let mut t = root.table("device_id")?;
    let line = t.line();
    let p = match t.string("pointer") {
        Some((s, l)) => pointer(&t, l, "pointer", &s),
        None => {
            t.problem(line, "pointer", "missing: where the device id is");
            None
        }
    };
    let pattern = t
        .string("pattern")
        .and_then(|(s, l)| match regex::Regex::new(&s) {
            Ok(r) => Some(r),
            Err(e) => {
                t.problem(l, "pattern", format!("not a valid regular expression: {e}"));
                None
            }
        });
    t.finish();
    p.map(|pointer| DeviceIdSpec { pointer, pattern })
}

fn time_format(
    t: &Section<'_, '_>,
    f: &str,
    line: usize,
    tz: Option<(String, usize)>,
) -> Option<TimeFormat> {
    let fixed = match f {
        "epoch_s" => Some(TimeFormat::EpochSeconds),
        "epoch_ms" => Some(TimeFormat::EpochMillis),
        "rfc3339" => Some(TimeFormat::Rfc3339),
        _ => None,
    };
    if let Some(fixed) = fixed {
        if let Some((_, l)) = tz {
            t.problem(
                l,
                "tz",
                format!("{f} times carry their own zone; tz applies to strftime patterns only"),
            );
            return None;
        }
        return Some(fixed);
    }
    if !f.contains('%') {
        t.problem(
            line,
            "format",
            format!(
                "{f:?} is not epoch_s, epoch_ms, rfc3339 or a strftime pattern (with %Y, %m, …)"
            ),
        );
        return None;
    }
    {
        use std::fmt::Write;
        let mut probe = String::new();
        let sample = chrono::DateTime::from_timestamp(0, 0)
            .expect("epoch")
            .naive_utc();
        if write!(probe, "{}", sample.format(f)).is_err() {
            t.problem(
                line,
                "format",
                format!("{f:?} is not a valid strftime pattern"),
            );
            return None;
        }
    }
    let Some((tz, tzline)) = tz else {
        t.problem(
            line,
            "tz",
            "missing: the UTC offset the device's local time is in, e.g. \"+08:00\"",
        );
        return None;
    };
    let offset = if tz == "UTC" || tz == "Z" {
        Some(FixedOffset::east_opt(0).expect("zero"))
    } else {
        tz.parse::<FixedOffset>().ok()
    };
    match offset {
        Some(offset) => Some(TimeFormat::Local {
            pattern: f.to_owned(),
            offset,
        }),
        None => {
            t.problem(
                tzline,
                "tz",
                format!("{tz:?} is not a UTC offset such as \"+08:00\""),
            );
            None
        }
    }
}

fn mapping(ev: &mut Section<'_, '_>, i: usize) -> Option<Mapping> {
    let line = ev.line();
    let event_type = match ev.string("type") {
        Some((t, l)) => match EventType::parse(&t) {
            Some(t) => Some(t),
            None => {
                ev.problem(
                    l,
                    "type",
                    format!(
                        "unknown event type {t:?}; the types are {}",
                        EventType::ALL.map(|t| t.name()).join(", ")
                    ),
                );
                None
            }
        },
        None => {
            ev.problem(
                line,
                "type",
                "missing: the canonical event type this mapping produces",
            );
            None
        }
    };
    let mut when = Vec::new();
    for mut c in ev.table_or_tables("when") {
        if let Some(cond) = condition(&mut c) {
            when.push(cond);
        }
        c.finish();
    }
    let entries = ev.entries("fields").unwrap_or_default();
    let event_type = event_type?;
    let mut fields = Vec::new();
    for e in &entries {
        if let Some(f) = field(ev, event_type, e) {
            fields.push(f);
        }
    }
    for spec in event_type.fields() {
        if spec.required && !entries.iter().any(|e| e.key == spec.name) {
            ev.problem(
                line,
                "fields",
                format!(
                    "{event_type} needs {}: add fields.{} (a pointer or {{ value = … }})",
                    spec.name, spec.name
                ),
            );
        }
    }
    Some(Mapping {
        event_type,
        when,
        fields,
        label: format!("event[{i}] ({event_type})"),
    })
}

fn condition(c: &mut Section<'_, '_>) -> Option<Condition> {
    let line = c.line();
    let p = match c.string("pointer") {
        Some((s, l)) => pointer(c, l, "pointer", &s),
        None => {
            c.problem(line, "pointer", "missing: the value the condition tests");
            None
        }
    };
    let mut tests = Vec::new();
    if let Some((v, _)) = c.value("equals")
        && let Some(t) = text_of(c, "equals", v)
    {
        tests.push(Test::Equals(t));
    }
    if let Some((l, _)) = c.text_list("in") {
        tests.push(Test::In(l));
    }
    if let Some((l, _)) = c.text_list("not_in") {
        tests.push(Test::NotIn(l));
    }
    if let Some(b) = c.bool("exists") {
        tests.push(Test::Exists(b));
    }
    if let Some((s, _)) = c.string("starts_with") {
        tests.push(Test::StartsWith(s));
    }
    if let Some((s, _)) = c.string("ends_with") {
        tests.push(Test::EndsWith(s));
    }
    if tests.len() != 1 {
        c.problem_here(
            "a condition needs exactly one of equals, in, not_in, exists, starts_with, ends_with",
        );
        return None;
    }
    Some(Condition {
        pointer: p?,
        test: tests.pop().expect("one"),
    })
}

fn text_of(c: &Section<'_, '_>, key: &str, v: &toml_edit::Value) -> Option<String> {
    let t = scalar_text(v);
    if t.is_none() {
        c.problem(
            c.line(),
            key,
            format!("expected a string or number, found {}", v.type_name()),
        );
    }
    t
}

/// Checks a final field value (a constant, default or map result) against the field.
fn check_value(kind: FieldKind, v: &Value) -> Result<(), String> {
    let v = match (kind, v) {
        // Integral numbers for integer fields; numbers as text for text fields.
        (FieldKind::Enum(_) | FieldKind::Text { .. }, Value::Number(n)) => {
            Value::String(n.to_string())
        }
        _ => v.clone(),
    };
    check_field(kind, &v)
}

fn field(ev: &Section<'_, '_>, t: EventType, e: &Entry<'_>) -> Option<FieldMap> {
    let Some(spec) = t.field(&e.key) else {
        let names: Vec<&str> = t.fields().iter().map(|f| f.name).collect();
        ev.ctx().problem(
            e.line,
            e.path.clone(),
            if names.is_empty() {
                format!("{t} has no fields")
            } else {
                format!(
                    "{t} has no field {:?}; its fields are {}",
                    e.key,
                    names.join(", ")
                )
            },
        );
        return None;
    };
    let ctx = ev.ctx();
    if let Some(s) = e.item.as_str() {
        return match Pointer::parse(s) {
            Ok(p) => Some(FieldMap {
                spec,
                source: ValueSource::Pointer(p),
                default: None,
                map: None,
                scale: 1.0,
                offset: 0.0,
                unit: UnitSpec::Canonical,
            }),
            Err(m) => {
                ctx.problem(e.line, e.path.clone(), m);
                None
            }
        };
    }
    let Some(mut s) = e.section(ctx) else {
        ctx.problem(
            e.line,
            e.path.clone(),
            "expected a pointer string or a table ({ pointer = \"/x\", … } or { value = … })",
        );
        return None;
    };
    let bad = |s: &Section<'_, '_>, key: &str, m: String| {
        s.problem(s.line(), key, m);
    };
    let ptr = s
        .string("pointer")
        .and_then(|(p, l)| pointer(&s, l, "pointer", &p));
    let constant = s.value("value").map(|(v, l)| (to_json(v), l));
    let default = s.value("default").map(|(v, l)| (to_json(v), l));
    let map = s.entries("map");
    let scale = s.number("scale");
    let offset = s.number("offset");
    let unit = s.string("unit");
    let unit_from = s
        .string("unit_from")
        .and_then(|(p, l)| pointer(&s, l, "unit_from", &p));
    let mut ok = true;
    let source = match (ptr, constant) {
        (Some(p), None) => Some(ValueSource::Pointer(p)),
        (None, Some((v, l))) => {
            if let Err(m) = check_value(spec.kind, &v) {
                s.problem(l, "value", format!("{} {m}", spec.name));
                ok = false;
            }
            Some(ValueSource::Const(v))
        }
        (Some(_), Some((_, l))) => {
            s.problem(l, "value", "set pointer or value, not both");
            None
        }
        (None, None) => {
            if !ctx_has_key(&s, "pointer") {
                bad(
                    &s,
                    "pointer",
                    "missing: set pointer (read from the payload) or value (a constant)".into(),
                );
            }
            None
        }
    };
    let is_const = matches!(source, Some(ValueSource::Const(_)));
    let default = match default {
        Some((v, l)) => {
            if is_const {
                s.problem(l, "default", "a constant needs no default");
                ok = false;
            } else if let Err(m) = check_value(spec.kind, &v) {
                s.problem(l, "default", format!("{} {m}", spec.name));
                ok = false;
            }
            Some(v)
        }
        None => None,
    };
    let map = match map {
        Some(entries) => {
            let mut m = HashMap::new();
            for me in entries {
                let v = match me.item.as_value() {
                    Some(v) => to_json(v),
                    None => {
                        ctx.problem(me.line, me.path.clone(), "expected a value");
                        ok = false;
                        continue;
                    }
                };
                // A map feeding a conversion yields numbers; the conversion's result is checked
                // at run time.
                let numeric =
                    scale.is_some() || offset.is_some() || unit.is_some() || unit_from.is_some();
                if !numeric && let Err(msg) = check_value(spec.kind, &v) {
                    ctx.problem(me.line, me.path.clone(), format!("{} {msg}", spec.name));
                    ok = false;
                }
                m.insert(me.key.clone(), v);
            }
            if is_const {
                s.problem(s.line(), "map", "a constant needs no map");
                ok = false;
            }
            Some(m)
        }
        None => None,
    };
    let numeric_kind = matches!(
        spec.kind,
        FieldKind::Number { .. } | FieldKind::Integer { .. }
    );
    for (key, present) in [
        ("scale", scale.is_some()),
        ("offset", offset.is_some()),
        ("unit", unit.is_some()),
        ("unit_from", unit_from.is_some()),
    ] {
        if present && (!numeric_kind || is_const) {
            bad(
                &s,
                key,
                if is_const {
                    format!("{key} does not apply to a constant")
                } else {
                    format!(
                        "{key} does not apply to {}, which is not a number",
                        spec.name
                    )
                },
            );
            ok = false;
        }
    }
    if scale.is_some_and(|(v, _)| v == 0.0) {
        bad(&s, "scale", "a scale of 0 would erase every value".into());
        ok = false;
    }
    let unit = match (unit, unit_from) {
        (Some(_), Some(_)) => {
            bad(&s, "unit_from", "set unit or unit_from, not both".into());
            ok = false;
            UnitSpec::Canonical
        }
        (Some((u, l)), None) => match units::conversion(spec.name, &u) {
            Ok(c) => UnitSpec::Fixed(c),
            Err(m) => {
                s.problem(l, "unit", m);
                ok = false;
                UnitSpec::Canonical
            }
        },
        (None, Some(p)) => {
            if !units::is_measured(spec.name) {
                bad(
                    &s,
                    "unit_from",
                    format!(
                        "{} has no unit, so no unit conversion applies to it",
                        spec.name
                    ),
                );
                ok = false;
            }
            UnitSpec::From(p)
        }
        (None, None) => UnitSpec::Canonical,
    };
    s.finish();
    let source = source?;
    ok.then_some(FieldMap {
        spec,
        source,
        default,
        map,
        scale: scale.map(|(v, _)| v).unwrap_or(1.0),
        offset: offset.map(|(v, _)| v).unwrap_or(0.0),
        unit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, src: &str) {
        std::fs::write(dir.join(name), src).unwrap();
    }

    #[test]
    fn overlapping_topics_are_refused_with_both_names() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.toml",
            "topic = \"v/{device_id}/up\"\n[[event]]\ntype = \"sos\"\n",
        );
        write(
            dir.path(),
            "b.toml",
            "topic = \"v/+/up\"\ndevice_id = \"/id\"\n[[event]]\ntype = \"fall\"\n",
        );
        write(
            dir.path(),
            "c.toml",
            "topic = \"{root}/devices/{device_id}/events\"\n[[event]]\ntype = \"fall\"\n",
        );
        write(dir.path(), "notes.md", "not a profile");
        let problems = load_dir(dir.path(), "anxin/v1").unwrap_err();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].contains("b.toml:1: topic") && text[0].contains("profile a"),
            "{text:?}"
        );
        assert!(
            text[1].contains("c.toml:1: topic") && text[1].contains("canonical"),
            "{text:?}"
        );
    }

    #[test]
    fn a_valid_directory_loads_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "zeta.toml",
            "topic = \"z/{device_id}\"\n[[event]]\ntype = \"sos\"\n",
        );
        write(
            dir.path(),
            "alpha.toml",
            "topic = \"a/{device_id}\"\n[[event]]\ntype = \"sos\"\n",
        );
        let set = load_dir(dir.path(), "anxin/v1").unwrap();
        let names: Vec<&str> = set.profiles.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["alpha", "zeta"]);
        assert_eq!(set.filters(), ["a/+", "z/+"]);
        assert_eq!(
            set.route("z/d1").map(|(p, d)| (p.name.as_str(), d)),
            Some(("zeta", Some("d1")))
        );
        assert!(set.route("q/d1").is_none());
    }
}
