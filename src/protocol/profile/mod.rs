//! Vendor JSON profiles: a vendor's MQTT payload format described as data (`protocols/*.toml`,
//! read by `config::profiles`), mapped to canonical events by this pure mapper. The format is
//! documented for vendors in `protocols/README.md`.
//!
//! A payload is split into elements (the object itself, each object of a top-level array, the
//! items of the array at `records`, or the resolved records of a SenML pack); every element
//! yields its events, or rejections that say which profile, mapping, field and value failed.
//! An element no mapping applies to is refused as `unmapped`: nothing is dropped unseen.

pub mod senml;
pub mod topic;
pub mod units;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use topic::TopicPattern;

use super::canonical::{Decoded, alarm_stand_in, check_field, kind_of, parse_payload, value_text};
use super::{RejectReason, Rejection, kept_raw};
use crate::event::{
    DedupKey, Event, EventType, FieldKind, FieldSpec, Flaw, Source, valid_device_id,
};

/// A JSON pointer (RFC 6901) into the current element, or with a leading `$` into the whole
/// payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// `$/…`: resolved against the payload rather than the element.
    pub from_root: bool,
    /// The RFC 6901 pointer.
    pub path: String,
}

impl Pointer {
    /// Parses `""`, `/a/b`, `$` or `$/a/b`.
    pub fn parse(s: &str) -> Result<Pointer, String> {
        let (from_root, path) = match s.strip_prefix('$') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if !path.is_empty() && !path.starts_with('/') {
            return Err(format!(
                "{s:?} is not a JSON pointer: write \"/key/0/key\" (RFC 6901), or \"$/key\" for the whole payload"
            ));
        }
        let b = path.as_bytes();
        for (i, c) in b.iter().enumerate() {
            // RFC 6901 §3: "~" appears only as "~0" ("~") or "~1" ("/").
            if *c == b'~' && !matches!(b.get(i + 1), Some(b'0' | b'1')) {
                return Err(format!(
                    "{s:?}: \"~\" must be followed by 0 or 1 (RFC 6901 §3: ~0 is \"~\", ~1 is \"/\")"
                ));
            }
        }
        Ok(Pointer {
            from_root,
            path: path.to_owned(),
        })
    }

    /// The value it points at; JSON `null` counts as absent.
    pub fn get<'v>(&self, element: &'v Value, root: &'v Value) -> Option<&'v Value> {
        let base = if self.from_root { root } else { element };
        base.pointer(&self.path).filter(|v| !v.is_null())
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.from_root {
            write!(f, "${}", self.path)
        } else if self.path.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str(&self.path)
        }
    }
}

/// Where the device id is read from in the payload.
#[derive(Debug, Clone)]
pub struct DeviceIdSpec {
    /// The value (string or integer).
    pub pointer: Pointer,
    /// Optional regex: the first capture group (or the whole match) is the id.
    pub pattern: Option<regex::Regex>,
}

/// How a device time is written.
#[derive(Debug, Clone, PartialEq)]
pub enum TimeFormat {
    /// Seconds since 1970 (number or numeric string, fractions allowed).
    EpochSeconds,
    /// Milliseconds since 1970.
    EpochMillis,
    /// RFC 3339 text.
    Rfc3339,
    /// A chrono `strftime` pattern of local time, at a fixed UTC offset.
    Local {
        /// The pattern, e.g. `%Y-%m-%d %H:%M:%S`.
        pattern: String,
        /// The device's UTC offset.
        offset: FixedOffset,
    },
}

/// The device time of an element.
#[derive(Debug, Clone)]
pub struct TimeSpec {
    /// Where it is.
    pub pointer: Pointer,
    /// How it is written.
    pub format: TimeFormat,
}

/// A test a mapping's `when` makes on a value. Values are compared as text, so `1` and
/// `"1"` are equal.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// Equal to.
    Equals(String),
    /// One of.
    In(Vec<String>),
    /// Absent, or none of.
    NotIn(Vec<String>),
    /// Present (`true`) or absent (`false`).
    Exists(bool),
    /// Text starting with.
    StartsWith(String),
    /// Text ending with.
    EndsWith(String),
}

/// One condition of a mapping's `when`.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The value tested.
    pub pointer: Pointer,
    /// The test.
    pub test: Test,
}

impl Condition {
    fn holds(&self, element: &Value, root: &Value) -> bool {
        let v = self.pointer.get(element, root);
        match &self.test {
            Test::Exists(want) => v.is_some() == *want,
            Test::NotIn(xs) => match v.and_then(key_text) {
                None => true,
                Some(t) => !xs.iter().any(|x| *x == *t),
            },
            test => {
                let Some(t) = v.and_then(key_text) else {
                    return false;
                };
                match test {
                    Test::Equals(x) => *t == **x,
                    Test::In(xs) => xs.iter().any(|x| *x == *t),
                    Test::StartsWith(x) => t.starts_with(x.as_str()),
                    Test::EndsWith(x) => t.ends_with(x.as_str()),
                    Test::Exists(_) | Test::NotIn(_) => unreachable!("handled above"),
                }
            }
        }
    }
}

/// Where a field's value comes from.
#[derive(Debug, Clone)]
pub enum ValueSource {
    /// Read from the payload.
    Pointer(Pointer),
    /// A constant.
    Const(Value),
}

/// The unit a field's value arrives in.
#[derive(Debug, Clone)]
pub enum UnitSpec {
    /// Already the canonical unit.
    Canonical,
    /// A fixed unit, checked when the profile is loaded.
    Fixed(units::Conversion),
    /// Named by the payload (SenML `u`); an unknown unit refuses the value. Absent: canonical.
    From(Pointer),
}

/// How one canonical field is filled.
#[derive(Debug, Clone)]
pub struct FieldMap {
    /// The canonical field.
    pub spec: &'static FieldSpec,
    /// Its source.
    pub source: ValueSource,
    /// The field's value when the pointer finds nothing (used as is: no map or conversion).
    pub default: Option<Value>,
    /// Value map, keyed by the payload value as text.
    pub map: Option<HashMap<String, Value>>,
    /// Multiplier (e.g. 0.1 for tenths), applied before the unit conversion.
    pub scale: f64,
    /// Added after scaling.
    pub offset: f64,
    /// Unit conversion.
    pub unit: UnitSpec,
}

impl FieldMap {
    fn numeric(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0 || !matches!(self.unit, UnitSpec::Canonical)
    }
}

/// One `[[event]]` of a profile.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The canonical event type produced.
    pub event_type: EventType,
    /// All must hold for the mapping to apply.
    pub when: Vec<Condition>,
    /// Fields.
    pub fields: Vec<FieldMap>,
    /// `event[2] (smoke)`, for messages.
    pub label: String,
}

/// A vendor profile, compiled.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The file stem; the `protocol` of its events.
    pub name: String,
    /// Where it was read from.
    pub file: PathBuf,
    /// What it is for.
    pub description: String,
    /// The topics it handles.
    pub topic: TopicPattern,
    /// The device id inside the payload; when the topic names one too, both must agree.
    pub device_id: Option<DeviceIdSpec>,
    /// The array whose items are the elements (`None`: the payload, or each object of a
    /// top-level array).
    pub records: Option<Pointer>,
    /// Elements are a SenML pack, resolved first (RFC 8428 §4.6).
    pub senml: bool,
    /// Device time of an element.
    pub time: Option<TimeSpec>,
    /// Device message counter of an element.
    pub seq: Option<Pointer>,
    /// The mappings, in file order.
    pub mappings: Vec<Mapping>,
}

/// The loaded profiles, in name order.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    /// Profiles.
    pub profiles: Vec<Arc<Profile>>,
}

impl ProfileSet {
    /// The profile handling `topic` and the topic's device id, if its pattern names one.
    pub fn route<'t>(&self, topic: &'t str) -> Option<(&Arc<Profile>, Option<&'t str>)> {
        self.profiles
            .iter()
            .find_map(|p| p.topic.matches(topic).map(|d| (p, d)))
    }

    /// A profile by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Profile>> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// The profile names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.profiles.iter().map(|p| p.name.as_str()).collect()
    }

    /// The subscription filters, one per profile.
    pub fn filters(&self) -> Vec<String> {
        self.profiles.iter().map(|p| p.topic.filter()).collect()
    }
}

/// A JSON scalar as the text maps and conditions compare.
fn key_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// Keys of an element, to tell an integrator what an unmapped element carried.
fn keys_of(v: &Value) -> String {
    match v.as_object() {
        Some(o) if !o.is_empty() => o.keys().take(12).cloned().collect::<Vec<_>>().join(", "),
        Some(_) => "no keys".into(),
        None => kind_of(v).into(),
    }
}

impl Profile {
    /// Decodes one message on `topic`, whose `{device_id}` level (if the pattern has one) is
    /// `topic_device`. Never fails as a whole: every problem becomes a [`Rejection`].
    pub fn decode(
        &self,
        topic: &str,
        topic_device: Option<&str>,
        payload: &[u8],
        received_at: DateTime<Utc>,
    ) -> Decoded {
        let whole = |reason, detail: String| Decoded {
            device_id: topic_device.map(str::to_owned),
            items: vec![Err(Rejection {
                device_id: topic_device.map(str::to_owned),
                reason,
                detail: format!("profile {}: {detail}", self.name),
                raw: kept_raw(reason, payload),
            })],
        };
        if let Some(d) = topic_device
            && !valid_device_id(d)
        {
            return Decoded {
                device_id: None,
                items: vec![Err(Rejection {
                    device_id: None,
                    reason: RejectReason::BadDeviceId,
                    detail: format!(
                        "profile {}: device id {d:?} in topic breaks [A-Za-z0-9_.:-]{{1,64}}",
                        self.name
                    ),
                    raw: kept_raw(RejectReason::BadDeviceId, payload),
                })],
            };
        }
        let root = match parse_payload(payload) {
            Ok(v) => v,
            Err((reason, detail)) => return whole(reason, detail),
        };
        // The elements, each with its position (part of its duplicate key).
        let list: &[Value] = match (&self.records, &root) {
            (Some(p), _) => match p.get(&root, &root) {
                Some(Value::Array(a)) => a,
                Some(other) => {
                    return whole(
                        RejectReason::BadField,
                        format!("records {p} is {}, not an array", kind_of(other)),
                    );
                }
                None => {
                    return whole(
                        RejectReason::BadField,
                        format!("records {p} is missing from the payload"),
                    );
                }
            },
            (None, Value::Array(a)) => a,
            (None, Value::Object(_)) => std::slice::from_ref(&root),
            (None, other) => {
                return whole(
                    RejectReason::NotAnObject,
                    format!(
                        "payload is {}, not an object or array of objects",
                        kind_of(other)
                    ),
                );
            }
        };
        if list.is_empty() {
            return whole(RejectReason::EmptyArray, "no elements to map".into());
        }
        let elements: Vec<(usize, Result<Cow<'_, Value>, String>)> = if self.senml {
            senml::resolve(list, received_at)
                .into_iter()
                .map(|(i, r)| (i, r.map(Cow::Owned)))
                .collect()
        } else {
            list.iter()
                .enumerate()
                .map(|(i, v)| (i, Ok(Cow::Borrowed(v))))
                .collect()
        };
        if elements.is_empty() {
            // A SenML pack of base fields only: nothing to map, and a message must never
            // vanish without a trace.
            return whole(
                RejectReason::EmptyArray,
                "the SenML pack has no record with a name and a value".into(),
            );
        }
        let digest = hex::encode(&Sha256::digest(payload)[..12]);
        let source = Source {
            transport: "mqtt",
            protocol: self.name.clone(),
            origin: topic.to_owned(),
        };
        let mut out = Decoded {
            device_id: topic_device.map(str::to_owned),
            items: Vec::new(),
        };
        for (index, element) in elements {
            let element = match element {
                Ok(e) => e,
                Err(detail) => {
                    out.items.push(Err(Rejection {
                        device_id: topic_device.map(str::to_owned),
                        reason: RejectReason::BadField,
                        detail: format!("profile {}: {detail}", self.name),
                        raw: list
                            .get(index)
                            .map(|v| v.to_string())
                            .unwrap_or_default()
                            .into_bytes(),
                    }));
                    continue;
                }
            };
            let el = Element {
                profile: self,
                value: &element,
                root: &root,
                index,
                topic_device,
                received_at,
                source: &source,
                digest: &digest,
            };
            el.decode(&mut out.items);
        }
        out
    }
}

/// A mapping's fields, and the (field, value, why) of each that could not be read.
type MappedFields = (Map<String, Value>, Vec<(&'static str, String, String)>);

/// One element being mapped.
struct Element<'a> {
    profile: &'a Profile,
    value: &'a Value,
    root: &'a Value,
    index: usize,
    topic_device: Option<&'a str>,
    received_at: DateTime<Utc>,
    source: &'a Source,
    digest: &'a str,
}

impl Element<'_> {
    fn reject(&self, device: Option<&str>, reason: RejectReason, detail: String) -> Rejection {
        Rejection {
            device_id: device.or(self.topic_device).map(str::to_owned),
            reason,
            detail: format!("profile {}: {detail}", self.profile.name),
            raw: self.value.to_string().into_bytes(),
        }
    }

    fn decode(&self, items: &mut Vec<Result<Event, Rejection>>) {
        if !self.value.is_object() {
            items.push(Err(self.reject(
                None,
                RejectReason::NotAnObject,
                format!(
                    "element {} is {}, not an object",
                    self.index,
                    kind_of(self.value)
                ),
            )));
            return;
        }
        // An alarm is never refused for anything it carries besides its type (DESIGN.md
        // guarantee 5): a device id that disagrees with the topic's, a bad time or counter, a
        // bad field — each is kept as a flaw on the alarm, which stands without it. Other
        // events of the element are refused as before.
        let (device, mismatch) = match self.device_id() {
            Ok(d) => (d, None),
            Err((RejectReason::DeviceMismatch, detail)) if self.topic_device.is_some() => {
                let topic = self.topic_device.unwrap_or_default().to_owned();
                (topic, Some(detail))
            }
            Err((reason, detail)) => {
                items.push(Err(self.reject(None, reason, detail)));
                return;
            }
        };
        let (device_time, time_problem) = match self.time() {
            Ok(t) => (t, None),
            Err(e) => (None, Some(e)),
        };
        let (seq, seq_problem) = match self.seq() {
            Ok(s) => (s, None),
            Err(e) => (None, Some(e)),
        };
        let mut element_flaws = Vec::new();
        if let Some(detail) = &mismatch {
            element_flaws.push(Flaw::new(
                "device_id",
                self.payload_device_text(),
                format!("{detail}; raised for the topic's device"),
            ));
        }
        if let Some((field, value, detail)) = &time_problem {
            element_flaws.push(Flaw::new(
                field.as_str(),
                value,
                format!("{detail}; receive time used"),
            ));
        }
        if let Some((field, value, detail)) = &seq_problem {
            element_flaws.push(Flaw::new(
                field.as_str(),
                value,
                format!("{detail}; ignored"),
            ));
        }
        // Why the element's other events are refused, if they are: the first problem.
        let refusal = match (&mismatch, &time_problem, &seq_problem) {
            (Some(d), _, _) => Some((RejectReason::DeviceMismatch, d.clone())),
            (None, Some((_, _, d)), _) | (None, None, Some((_, _, d))) => {
                Some((RejectReason::BadField, d.clone()))
            }
            (None, None, None) => None,
        };
        let before = items.len();
        let mut refused = false;
        for (m_index, mapping) in self.profile.mappings.iter().enumerate() {
            if !mapping.when.iter().all(|c| c.holds(self.value, self.root)) {
                continue;
            }
            let Some((mut fields, problems)) = self.map(mapping) else {
                continue;
            };
            let alarm = mapping.event_type.is_life_safety();
            if !alarm {
                if refusal.is_some() {
                    refused = true;
                    continue;
                }
                if let Some((_, _, detail)) = problems.first() {
                    items.push(Err(self.reject(
                        Some(&device),
                        RejectReason::BadField,
                        format!("{}: {detail}", mapping.label),
                    )));
                    continue;
                }
                if let Err(why) = mapping.event_type.check_fields(&fields) {
                    items.push(Err(self.reject(
                        Some(&device),
                        RejectReason::BadField,
                        format!("{}: {why}", mapping.label),
                    )));
                    continue;
                }
            }
            let mut flaws = element_flaws.clone();
            for (name, value, detail) in problems {
                flaws.push(Flaw::new(
                    name,
                    value,
                    format!("{}: {detail}; ignored", mapping.label),
                ));
            }
            if alarm {
                // A smoke or gas report whose state cannot be read is taken as an alarm.
                for spec in mapping.event_type.fields().iter().filter(|f| f.required) {
                    if !fields.contains_key(spec.name)
                        && let Some(v) = alarm_stand_in(mapping.event_type, spec.name)
                    {
                        flaws.push(Flaw::new(
                            spec.name,
                            "(missing or unreadable)",
                            format!("{}: taken as {v}", mapping.label),
                        ));
                        fields.insert(spec.name.to_owned(), v);
                    }
                }
            }
            let key_tail = format!("{}:{}.{m_index}", self.profile.name, self.index);
            let dedup_key = if seq.is_some() || device_time.is_some() {
                DedupKey::Device(format!(
                    "{key_tail}|{}",
                    DedupKey::device_part(seq, device_time)
                ))
            } else {
                DedupKey::Payload(format!("h{}:{key_tail}", self.digest))
            };
            let mut e = Event::new(
                device.clone(),
                mapping.event_type,
                self.received_at,
                self.source.clone(),
                dedup_key,
            );
            e.fields = fields;
            e.device_time = device_time;
            e.seq = seq;
            e.flaws = flaws;
            items.push(Ok(e));
        }
        if refused || (items.len() == before && refusal.is_some()) {
            let (reason, detail) = refusal.unwrap_or((RejectReason::BadField, String::new()));
            items.push(Err(self.reject(Some(&device), reason, detail)));
        } else if items.len() == before {
            items.push(Err(self.reject(
                Some(&device),
                RejectReason::Unmapped,
                format!(
                    "no mapping applies to element {} (it has: {})",
                    self.index,
                    keys_of(self.value)
                ),
            )));
        }
    }

    /// The payload's device id as text, for a flaw.
    fn payload_device_text(&self) -> String {
        self.profile
            .device_id
            .as_ref()
            .and_then(|spec| spec.pointer.get(self.value, self.root))
            .map(value_text)
            .unwrap_or_default()
    }

    fn device_id(&self) -> Result<String, (RejectReason, String)> {
        let from_payload = match &self.profile.device_id {
            None => None,
            Some(spec) => match spec.pointer.get(self.value, self.root) {
                None if self.topic_device.is_some() => None,
                None => {
                    return Err((
                        RejectReason::BadDeviceId,
                        format!("no device id: {} is missing", spec.pointer),
                    ));
                }
                Some(v) => {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
                        other => {
                            return Err((
                                RejectReason::BadDeviceId,
                                format!(
                                    "device id at {} is {}, not a string or whole number",
                                    spec.pointer,
                                    kind_of(other)
                                ),
                            ));
                        }
                    };
                    match &spec.pattern {
                        None => Some(text),
                        Some(re) => match re.captures(&text) {
                            Some(c) => Some(
                                c.get(1)
                                    .or_else(|| c.get(0))
                                    .map(|m| m.as_str().to_owned())
                                    .unwrap_or_default(),
                            ),
                            None => {
                                return Err((
                                    RejectReason::BadDeviceId,
                                    format!(
                                        "device id {text:?} at {} does not match the pattern {}",
                                        spec.pointer,
                                        re.as_str()
                                    ),
                                ));
                            }
                        },
                    }
                }
            },
        };
        let id = match (self.topic_device, from_payload) {
            (Some(t), Some(p)) if t != p => {
                return Err((
                    RejectReason::DeviceMismatch,
                    format!("the topic names device {t:?} but the payload names {p:?}"),
                ));
            }
            (Some(t), _) => t.to_owned(),
            (None, Some(p)) => p,
            (None, None) => {
                return Err((
                    RejectReason::BadDeviceId,
                    "no device id: the topic pattern has no {device_id} and the profile no device_id pointer".into(),
                ));
            }
        };
        if !valid_device_id(&id) {
            return Err((
                RejectReason::BadDeviceId,
                format!("device id {id:?} breaks [A-Za-z0-9_.:-]{{1,64}}"),
            ));
        }
        Ok(id)
    }

    /// The element's device time; `Err` is (field, value, why) of a time that cannot be read.
    fn time(&self) -> Result<Option<DateTime<Utc>>, (String, String, String)> {
        let Some(spec) = &self.profile.time else {
            return Ok(None);
        };
        let Some(v) = spec.pointer.get(self.value, self.root) else {
            return Ok(None);
        };
        let bad = |why: &str| {
            (
                spec.pointer.to_string(),
                value_text(v),
                format!("time {v} at {} {why}", spec.pointer),
            )
        };
        let number = || match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        let t = match &spec.format {
            TimeFormat::EpochSeconds => number()
                .filter(|n| n.is_finite())
                .and_then(|n| DateTime::from_timestamp_millis((n * 1000.0).round() as i64))
                .ok_or_else(|| bad("is not epoch seconds"))?,
            TimeFormat::EpochMillis => number()
                .filter(|n| n.is_finite())
                .and_then(|n| DateTime::from_timestamp_millis(n.round() as i64))
                .ok_or_else(|| bad("is not epoch milliseconds"))?,
            TimeFormat::Rfc3339 => v
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
                .ok_or_else(|| bad("is not RFC 3339"))?,
            TimeFormat::Local { pattern, offset } => v
                .as_str()
                .and_then(|s| NaiveDateTime::parse_from_str(s, pattern).ok())
                .and_then(|n| offset.from_local_datetime(&n).single())
                .map(|t| t.with_timezone(&Utc))
                .ok_or_else(|| bad(&format!("does not match {pattern:?}")))?,
        };
        Ok(Some(t))
    }

    /// The element's counter; `Err` is (field, value, why) of one that cannot be read.
    fn seq(&self) -> Result<Option<i64>, (String, String, String)> {
        let Some(p) = &self.profile.seq else {
            return Ok(None);
        };
        let Some(v) = p.get(self.value, self.root) else {
            return Ok(None);
        };
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n >= 0 => Ok(Some(n)),
            _ => Err((
                p.to_string(),
                value_text(v),
                format!("seq {v} at {p} is not a non-negative integer"),
            )),
        }
    }

    /// `None` when the mapping does not apply: all its fields are read from the payload, none
    /// has a default, and none is present. (A mapping with a constant or a default applies
    /// whenever its `when` holds, so a gated alarm is never skipped for a missing detail.)
    /// Else the fields that could be read, and for each that could not: (field, the value as
    /// sent, why).
    fn map(&self, m: &Mapping) -> Option<MappedFields> {
        let mut fields = Map::new();
        let mut optional = true;
        let mut found = false;
        let mut problems = Vec::new();
        for f in &m.fields {
            let raw = match &f.source {
                ValueSource::Const(v) => {
                    optional = false;
                    fields.insert(f.spec.name.to_owned(), v.clone());
                    continue;
                }
                ValueSource::Pointer(p) => {
                    if f.default.is_some() {
                        optional = false;
                    }
                    p.get(self.value, self.root).map(|v| (p, v))
                }
            };
            let Some((p, raw)) = raw else {
                if let Some(d) = &f.default {
                    fields.insert(f.spec.name.to_owned(), d.clone());
                }
                continue;
            };
            found = true;
            match self.transform(f, raw) {
                Ok(v) => {
                    fields.insert(f.spec.name.to_owned(), v);
                }
                Err(why) => problems.push((
                    f.spec.name,
                    value_text(raw),
                    format!("field {}: value {raw} at {p} {why}", f.spec.name),
                )),
            }
        }
        if optional && !found && !m.fields.is_empty() {
            return None;
        }
        Some((fields, problems))
    }

    fn transform(&self, f: &FieldMap, raw: &Value) -> Result<Value, String> {
        let mut v = match &f.map {
            Some(map) => {
                let key = key_text(raw).ok_or("is not a scalar the map can look up")?;
                map.get(key.as_ref())
                    .cloned()
                    .ok_or_else(|| "has no entry in the value map".to_owned())?
            }
            None => raw.clone(),
        };
        if f.numeric() {
            let n = as_number(&v).ok_or("is not a number")?;
            let mut n = n * f.scale + f.offset;
            match &f.unit {
                UnitSpec::Canonical => {}
                UnitSpec::Fixed(c) => n = c.apply(n),
                UnitSpec::From(p) => {
                    if let Some(u) = p.get(self.value, self.root) {
                        let u = u
                            .as_str()
                            .ok_or_else(|| format!("has unit {u}, not text"))?;
                        n = units::conversion(f.spec.name, u)?.apply(n);
                    }
                }
            }
            // Conversions leave binary noise (98.6 °F is 36.99999… °C); nine decimals keep
            // every real precision.
            v = number((n * 1e9).round() / 1e9);
        }
        let v = coerce(f.spec.kind, v)?;
        check_field(f.spec.kind, &v)?;
        Ok(v)
    }
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    }
}

fn number(n: f64) -> Value {
    serde_json::Number::from_f64(n)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Brings a vendor's spelling of a value to the field's JSON kind: numeric strings to
/// numbers, integral floats to integers, numbers to text for text fields.
fn coerce(kind: FieldKind, v: Value) -> Result<Value, String> {
    Ok(match kind {
        FieldKind::Number { .. } => match &v {
            Value::Number(_) => v,
            Value::String(_) => number(as_number(&v).ok_or("is not a number")?),
            _ => return Err("is not a number".into()),
        },
        FieldKind::Integer { .. } => {
            let n = as_number(&v).ok_or("is not a number")?;
            if n.fract() != 0.0 || n.abs() > 9.0e15 {
                return Err("is not a whole number".into());
            }
            Value::from(n as i64)
        }
        FieldKind::Enum(_) | FieldKind::Text { .. } => match v {
            Value::Number(n) => Value::String(n.to_string()),
            Value::Bool(b) => Value::String(b.to_string()),
            other => other,
        },
        FieldKind::Bool => match &v {
            Value::String(s) if s == "true" || s == "1" => Value::Bool(true),
            Value::String(s) if s == "false" || s == "0" => Value::Bool(false),
            Value::Number(n) if n.as_f64() == Some(1.0) => Value::Bool(true),
            Value::Number(n) if n.as_f64() == Some(0.0) => Value::Bool(false),
            _ => v,
        },
        FieldKind::List { .. } => v,
    })
}
