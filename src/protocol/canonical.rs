//! The canonical anxin JSON format over MQTT (CONTRACT.md): topic
//! `{root}/devices/{device_id}/events`, payload one object or an array of objects.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{RejectReason, Rejection, kept_raw};
use crate::event::{DedupKey, Event, EventType, FieldKind, Flaw, Source, valid_device_id};

/// CONTRACT.md: canonical payloads are at most 64 KiB.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// The outcome of decoding one MQTT message: events and rejections in payload order.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The device named by the topic, when the topic was valid.
    pub device_id: Option<String>,
    /// One entry per object (or one rejection for the whole message).
    pub items: Vec<Result<Event, Rejection>>,
}

/// Extracts the device id from `{root}/devices/{device_id}/events`.
pub fn device_from_topic<'t>(root: &str, topic: &'t str) -> Result<&'t str, Rejection> {
    let bad = |detail: String| Rejection {
        device_id: None,
        reason: RejectReason::BadTopic,
        detail,
        raw: Vec::new(),
    };
    let rest = topic
        .strip_prefix(root)
        .and_then(|r| r.strip_prefix("/devices/"))
        .ok_or_else(|| bad(format!("topic {topic:?} is not under {root}/devices/")))?;
    let id = rest
        .strip_suffix("/events")
        .ok_or_else(|| bad(format!("topic {topic:?} does not end in /events")))?;
    if !valid_device_id(id) {
        return Err(Rejection {
            device_id: None,
            reason: RejectReason::BadDeviceId,
            detail: format!("device id {id:?} in topic breaks [A-Za-z0-9_.:-]{{1,64}}"),
            raw: Vec::new(),
        });
    }
    Ok(id)
}

/// Checks a payload's size against [`MAX_PAYLOAD_BYTES`] and parses it as JSON; `Err` is the
/// rejection reason and detail. Shared by the canonical format and the vendor profiles.
pub fn parse_payload(payload: &[u8]) -> Result<Value, (RejectReason, String)> {
    // Some vendors' JSON writers start with a UTF-8 byte-order mark; it carries no meaning
    // (RFC 8259 §8.1 lets a parser ignore it) and must not cost an alarm.
    let payload = payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(payload);
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err((
            RejectReason::PayloadTooLarge,
            format!(
                "payload is {} bytes, the maximum is {MAX_PAYLOAD_BYTES}",
                payload.len()
            ),
        ));
    }
    serde_json::from_slice(payload).map_err(|e| {
        (
            RejectReason::MalformedJson,
            format!("payload is not JSON: {e}"),
        )
    })
}

/// Decodes one message. Never fails as a whole: every problem becomes a [`Rejection`] so it
/// can be stored and acked, since a malformed message can never succeed on redelivery.
pub fn decode(root: &str, topic: &str, payload: &[u8], received_at: DateTime<Utc>) -> Decoded {
    let whole = |device_id: Option<String>, reason, detail: String| Decoded {
        device_id: device_id.clone(),
        items: vec![Err(Rejection {
            device_id,
            reason,
            detail,
            raw: kept_raw(reason, payload),
        })],
    };
    let device_id = match device_from_topic(root, topic) {
        Ok(id) => id.to_owned(),
        Err(mut r) => {
            r.raw = kept_raw(r.reason, payload);
            return Decoded {
                device_id: None,
                items: vec![Err(r)],
            };
        }
    };
    let value = match parse_payload(payload) {
        Ok(v) => v,
        Err((reason, detail)) => return whole(Some(device_id), reason, detail),
    };
    let source = Source {
        transport: "mqtt",
        protocol: "canonical".into(),
        origin: topic.to_owned(),
    };
    // Identical-payload redelivery detection hashes the message once; array elements add
    // their index so two equal objects in one array stay two events.
    let digest = hex::encode(&Sha256::digest(payload)[..12]);
    let mut out = Decoded {
        device_id: Some(device_id.clone()),
        items: Vec::new(),
    };
    match value {
        Value::Object(obj) => out.items.push(decode_object(
            &device_id,
            obj,
            &source,
            received_at,
            &digest,
            0,
        )),
        Value::Array(items) if items.is_empty() => {
            return whole(
                Some(device_id),
                RejectReason::EmptyArray,
                "payload is an empty array".into(),
            );
        }
        Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                out.items.push(match item {
                    Value::Object(obj) => {
                        decode_object(&device_id, obj, &source, received_at, &digest, i)
                    }
                    other => Err(Rejection {
                        device_id: Some(device_id.clone()),
                        reason: RejectReason::NotAnObject,
                        detail: format!("array element {i} is {}, not an object", kind_of(&other)),
                        raw: other.to_string().into_bytes(),
                    }),
                });
            }
        }
        other => {
            return whole(
                Some(device_id),
                RejectReason::NotAnObject,
                format!(
                    "payload is {}, not an object or array of objects",
                    kind_of(&other)
                ),
            );
        }
    }
    out
}

/// How a value is described in messages ("a string", "an array").
pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn decode_object(
    device_id: &str,
    obj: Map<String, Value>,
    source: &Source,
    received_at: DateTime<Utc>,
    digest: &str,
    index: usize,
) -> Result<Event, Rejection> {
    let raw = |o: &Map<String, Value>| Value::Object(o.clone()).to_string().into_bytes();
    let reject = |reason, detail: String, o: &Map<String, Value>| Rejection {
        device_id: Some(device_id.to_owned()),
        reason,
        detail,
        raw: raw(o),
    };
    let event_type = match obj.get("type") {
        None => {
            return Err(reject(
                RejectReason::MissingType,
                "object has no \"type\"".into(),
                &obj,
            ));
        }
        Some(Value::String(s)) => match EventType::parse_loose(s) {
            Some(t) => t,
            None => {
                return Err(reject(
                    RejectReason::UnknownType,
                    format!("unknown type {s:?}"),
                    &obj,
                ));
            }
        },
        Some(other) => {
            return Err(reject(
                RejectReason::UnknownType,
                format!("\"type\" is {}, not a string", kind_of(other)),
                &obj,
            ));
        }
    };
    // An alarm is never refused for anything it carries besides its type (DESIGN.md
    // guarantee 5): what cannot be used is kept as a flaw and the alarm stands without it.
    // Other types are refused whole, so a sender learns its payload is wrong.
    let alarm = event_type.is_life_safety();
    let mut flaws = Vec::new();
    let mut problem = |field: &str, value: &Value, why: String| -> Result<(), Rejection> {
        if alarm {
            flaws.push(Flaw::new(field, value_text(value), why));
            Ok(())
        } else {
            Err(reject(RejectReason::BadField, why, &obj))
        }
    };
    let device_time = match obj.get("ts") {
        None | Some(Value::Null) => None,
        Some(v) => match parse_ts(v) {
            Ok(t) => Some(t),
            Err(why) => {
                problem("ts", v, format!("\"ts\" {why}; receive time used"))?;
                None
            }
        },
    };
    let seq = match obj.get("seq") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Some(n),
            _ => {
                problem(
                    "seq",
                    v,
                    format!("\"seq\" is {v}, not a non-negative integer; ignored"),
                )?;
                None
            }
        },
    };
    // DESIGN.md: the device id in the topic must match the one in the payload, when given.
    if let Some(v) = obj.get("device_id")
        && v.as_str() != Some(device_id)
    {
        let why = format!(
            "the payload names device {} but the topic names {device_id:?}",
            value_text(v)
        );
        if alarm {
            flaws.push(Flaw::new(
                "device_id",
                value_text(v),
                format!("{why}; raised for the topic's device"),
            ));
        } else {
            return Err(reject(RejectReason::DeviceMismatch, why, &obj));
        }
    }
    let mut fields = Map::new();
    for spec in event_type.fields() {
        let value = obj.get(spec.name).filter(|v| !v.is_null());
        let why = match value {
            None if spec.required => format!("{event_type} needs \"{}\"", spec.name),
            None => continue,
            Some(v) => match check_field(spec.kind, v) {
                Ok(()) => {
                    fields.insert(spec.name.to_owned(), v.clone());
                    continue;
                }
                Err(why) => format!("{event_type} field \"{}\" {why}", spec.name),
            },
        };
        if !alarm {
            return Err(reject(RejectReason::BadField, why, &obj));
        }
        // A smoke or gas report whose state cannot be read is taken as an alarm: a false
        // alarm costs a phone call, a missed one a life.
        let stand_in = spec
            .required
            .then(|| alarm_stand_in(event_type, spec.name))
            .flatten();
        let why = match &stand_in {
            Some(v) => format!("{why}; taken as {v}"),
            None => format!("{why}; ignored"),
        };
        flaws.push(Flaw::new(
            spec.name,
            value.map(value_text).unwrap_or_else(|| "(missing)".into()),
            why,
        ));
        if let Some(v) = stand_in {
            fields.insert(spec.name.to_owned(), v);
        }
    }
    if let Err(why) = event_type.check_fields(&fields) {
        return Err(reject(RejectReason::BadField, why, &obj));
    }
    let dedup_key = if seq.is_some() || device_time.is_some() {
        DedupKey::Device(DedupKey::device_part(seq, device_time))
    } else {
        DedupKey::Payload(format!("h{digest}:{index}"))
    };
    Ok(Event {
        device_id: device_id.to_owned(),
        event_type,
        fields,
        device_time,
        seq,
        received_at,
        source: source.clone(),
        dedup_key,
        still_active: false,
        resident_id: None,
        redelivered: false,
        retained: false,
        flaws,
    })
}

/// The value a required field of an alarm takes when the device's own cannot be read.
pub(crate) fn alarm_stand_in(t: EventType, field: &str) -> Option<Value> {
    match (t, field) {
        (EventType::Smoke | EventType::Gas, "state") => Some(Value::from("alarm")),
        _ => None,
    }
}

/// `ts`: RFC 3339 text.
fn parse_ts(v: &Value) -> Result<DateTime<Utc>, String> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("{s:?} is not RFC 3339 ({e})")),
        other => Err(format!("is {}, not an RFC 3339 string", kind_of(other))),
    }
}

/// A JSON value as text for a [`Flaw`]: strings without their quotes.
pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Checks a value against a field's kind; `Err` completes "field X …".
pub(crate) fn check_field(kind: FieldKind, v: &Value) -> Result<(), String> {
    match kind {
        FieldKind::Enum(allowed) => match v.as_str() {
            Some(s) if allowed.contains(&s) => Ok(()),
            _ => Err(format!("is {v}, expected one of {}", allowed.join(", "))),
        },
        FieldKind::Number { min, max } => match v.as_f64() {
            Some(n) if (min..=max).contains(&n) => Ok(()),
            Some(n) => Err(format!("is {n}, outside {min}..={max}")),
            None => Err(format!("is {v}, not a number")),
        },
        FieldKind::Integer { min, max } => match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(()),
            Some(n) => Err(format!("is {n}, outside {min}..={max}")),
            None => Err(format!("is {v}, not a whole number")),
        },
        FieldKind::Bool => match v {
            Value::Bool(_) => Ok(()),
            _ => Err(format!("is {v}, not true or false")),
        },
        FieldKind::List { max_items } => match v.as_array() {
            Some(a) if a.len() <= max_items => Ok(()),
            Some(a) => Err(format!("has {} items, at most {max_items}", a.len())),
            None => Err(format!("is {v}, not an array")),
        },
        FieldKind::Text { max_len } => match v.as_str() {
            Some(s) if !s.is_empty() && s.len() <= max_len => Ok(()),
            Some(_) => Err(format!("must be 1..={max_len} bytes")),
            None => Err(format!("is {v}, not a string")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn dec(payload: &str) -> Decoded {
        decode(
            "anxin/v1",
            "anxin/v1/devices/d1/events",
            payload.as_bytes(),
            at(),
        )
    }

    #[test]
    fn a_bare_sos_becomes_one_event_with_a_payload_key() {
        let d = dec(r#"{"type":"sos"}"#);
        assert_eq!(d.device_id.as_deref(), Some("d1"));
        let e = d.items[0].as_ref().unwrap();
        assert_eq!(e.event_type, EventType::Sos);
        assert!(matches!(e.dedup_key, DedupKey::Payload(_)));
    }

    #[test]
    fn seq_and_ts_make_a_device_key() {
        let d = dec(r#"{"type":"sos","seq":7,"ts":"2026-11-23T10:00:00.250+08:00"}"#);
        let e = d.items[0].as_ref().unwrap();
        assert_eq!(e.seq, Some(7));
        assert_eq!(
            e.dedup_key,
            DedupKey::Device(format!(
                "s7|t{}",
                DateTime::parse_from_rfc3339("2026-11-23T02:00:00.250Z")
                    .unwrap()
                    .timestamp_millis()
            ))
        );
    }

    #[test]
    fn malformed_json_is_one_rejection_with_the_raw_bytes() {
        let d = dec("{not json");
        let r = d.items[0].as_ref().unwrap_err();
        assert_eq!(r.reason, RejectReason::MalformedJson);
        assert_eq!(r.raw, b"{not json");
    }

    #[test]
    fn unknown_type_is_named_in_the_detail() {
        let d = dec(r#"{"type":"teleport"}"#);
        let r = d.items[0].as_ref().unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownType);
        assert!(r.detail.contains("teleport"));
    }

    #[test]
    fn a_mixed_array_keeps_the_valid_objects() {
        let d = dec(
            r#"[{"type":"heartbeat"},{"type":"nope"},3,{"type":"smoke","state":"alarm"},{"type":"water","state":"flood"}]"#,
        );
        let kinds: Vec<_> = d
            .items
            .iter()
            .map(|i| match i {
                Ok(e) => e.event_type.name().to_owned(),
                Err(r) => r.reason.as_str().to_owned(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "heartbeat",
                "unknown_type",
                "not_an_object",
                "smoke",
                "bad_field"
            ]
        );
    }

    /// The payloads an adversarial test found refused as a whole: each must raise its alarm,
    /// with the bad value kept as a flaw.
    #[test]
    fn an_alarm_is_never_refused_for_what_it_carries_besides_its_type() {
        let cases: [(&str, EventType, &[&str]); 9] = [
            (r#"{"type":"sos","seq":"7"}"#, EventType::Sos, &["seq"]),
            (
                r#"{"type":"sos","ts":"2026-12-07 03:00:00"}"#,
                EventType::Sos,
                &["ts"],
            ),
            (r#"{"type":"sos","ts":1733466600}"#, EventType::Sos, &["ts"]),
            (r#"{"type":"fall","seq":-1}"#, EventType::Fall, &["seq"]),
            ("\u{feff}{\"type\":\"sos\"}", EventType::Sos, &[]),
            (r#"{"type":"SOS"}"#, EventType::Sos, &[]),
            (r#"{"type":"smoke"}"#, EventType::Smoke, &["state"]),
            (
                r#"{"type":"gas","state":"boom","gas":"ether"}"#,
                EventType::Gas,
                &["state", "gas"],
            ),
            (
                r#"{"type":"sos","device_id":"d2"}"#,
                EventType::Sos,
                &["device_id"],
            ),
        ];
        for (payload, t, flawed) in cases {
            let d = dec(payload);
            let e = d.items[0]
                .as_ref()
                .unwrap_or_else(|r| panic!("{payload} refused: {}", r.detail));
            assert_eq!(e.event_type, t, "{payload}");
            let fields: Vec<&str> = e.flaws.iter().map(|f| f.field.as_str()).collect();
            assert_eq!(fields, flawed, "{payload}");
            assert!(e.device_time.is_none() && e.seq.is_none(), "{payload}");
        }
        let smoke = dec(r#"{"type":"smoke"}"#);
        let smoke = smoke.items[0].as_ref().unwrap();
        assert_eq!(
            smoke.text("state"),
            Some("alarm"),
            "an unreadable state is an alarm"
        );
        let bad_ts = dec(r#"{"type":"sos","ts":"2026-12-07 03:00:00"}"#);
        let f = &bad_ts.items[0].as_ref().unwrap().flaws[0];
        assert_eq!(f.value, "2026-12-07 03:00:00");
        assert!(f.problem.contains("receive time"), "{}", f.problem);
    }

    #[test]
    fn other_types_keep_the_strict_contract() {
        for (payload, reason) in [
            (r#"{"type":"heartbeat","seq":"7"}"#, RejectReason::BadField),
            (
                r#"{"type":"vitals","heart_rate":70,"ts":"yesterday"}"#,
                RejectReason::BadField,
            ),
            (r#"{"type":"door","state":"ajar"}"#, RejectReason::BadField),
            (
                r#"{"type":"heartbeat","device_id":"d2"}"#,
                RejectReason::DeviceMismatch,
            ),
        ] {
            let d = dec(payload);
            assert_eq!(d.items[0].as_ref().unwrap_err().reason, reason, "{payload}");
        }
        let same = dec(r#"{"type":"heartbeat","device_id":"d1"}"#);
        assert!(same.items[0].is_ok(), "the topic's own id is fine");
        let bom = dec("\u{feff}{\"type\":\"heartbeat\"}");
        assert!(
            bom.items[0].is_ok(),
            "a byte-order mark is skipped for every type"
        );
    }

    #[test]
    fn an_oversized_payload_keeps_only_a_prefix() {
        let big = format!(r#"{{"type":"sos","pad":"{}"}}"#, "x".repeat(1 << 20));
        let d = dec(&big);
        let r = d.items[0].as_ref().unwrap_err();
        assert_eq!(r.reason, RejectReason::PayloadTooLarge);
        assert_eq!(r.raw.len(), crate::protocol::OVERSIZE_KEPT_BYTES);
        assert!(r.raw.starts_with(br#"{"type":"sos""#));
    }

    #[test]
    fn equal_objects_in_one_array_get_distinct_payload_keys() {
        let d = dec(r#"[{"type":"motion"},{"type":"motion"}]"#);
        let a = d.items[0].as_ref().unwrap();
        let b = d.items[1].as_ref().unwrap();
        assert_ne!(a.dedup_key, b.dedup_key);
    }

    #[test]
    fn fields_are_range_checked() {
        let bad = dec(r#"{"type":"vitals","heart_rate":900}"#);
        assert!(
            bad.items[0]
                .as_ref()
                .unwrap_err()
                .detail
                .contains("heart_rate")
        );
        let empty = dec(r#"{"type":"vitals"}"#);
        assert!(empty.items[0].is_err());
        let ok = dec(r#"{"type":"vitals","heart_rate":130,"spo2":97}"#);
        assert_eq!(
            ok.items[0].as_ref().unwrap().number("heart_rate"),
            Some(130.0)
        );
    }

    #[test]
    fn topics_outside_the_root_or_with_bad_ids_are_refused() {
        let d = decode("anxin/v1", "other/devices/d1/events", b"{}", at());
        assert_eq!(
            d.items[0].as_ref().unwrap_err().reason,
            RejectReason::BadTopic
        );
        let d = decode("anxin/v1", "anxin/v1/devices/a b/events", b"{}", at());
        assert_eq!(
            d.items[0].as_ref().unwrap_err().reason,
            RejectReason::BadDeviceId
        );
    }

    #[test]
    fn oversized_payloads_are_refused_before_parsing() {
        let big = format!(
            r#"{{"type":"fault","code":"{}"}}"#,
            "x".repeat(MAX_PAYLOAD_BYTES)
        );
        let d = dec(&big);
        assert_eq!(
            d.items[0].as_ref().unwrap_err().reason,
            RejectReason::PayloadTooLarge
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)),
                prop_oneof![
                    Just("sos".to_owned()),
                    Just("vitals".to_owned()),
                    Just("smoke".to_owned()),
                    Just("alarm".to_owned()),
                    Just("2026-11-23T10:00:00Z".to_owned()),
                    ".{0,12}"
                ]
                .prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::btree_map(
                        prop_oneof![
                            Just("type".to_owned()),
                            Just("seq".to_owned()),
                            Just("ts".to_owned()),
                            Just("state".to_owned()),
                            Just("heart_rate".to_owned()),
                            "[a-z]{1,8}"
                        ],
                        inner,
                        0..6
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic_and_every_refusal_keeps_raw_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let d = decode("anxin/v1", "anxin/v1/devices/d1/events", &bytes, at());
                prop_assert!(!d.items.is_empty());
                for item in d.items {
                    if let Err(r) = item {
                        prop_assert!(!r.detail.is_empty());
                    }
                }
            }

            /// Guarantee 5: whatever else an object carries, `"type":"sos"` is an SOS.
            #[test]
            fn any_object_typed_sos_yields_an_sos_event(v in json_value(), t in prop_oneof![Just("sos"), Just("SOS"), Just(" Sos ")]) {
                let mut obj = match v {
                    Value::Object(o) => o,
                    other => {
                        let mut o = Map::new();
                        o.insert("extra".into(), other);
                        o
                    }
                };
                obj.insert("type".into(), Value::from(t));
                let bytes = Value::Object(obj).to_string().into_bytes();
                let d = decode("anxin/v1", "anxin/v1/devices/d1/events", &bytes, at());
                prop_assert_eq!(d.items.len(), 1);
                let e = d.items[0].as_ref().map_err(|r| TestCaseError::fail(r.detail.clone()))?;
                prop_assert_eq!(e.event_type, EventType::Sos);
                prop_assert_eq!(e.device_id.as_str(), "d1");
            }

            #[test]
            fn arbitrary_json_yields_one_result_per_array_element(v in json_value()) {
                let bytes = v.to_string().into_bytes();
                let d = decode("anxin/v1", "anxin/v1/devices/d1/events", &bytes, at());
                let expected = match &v {
                    Value::Array(a) if !a.is_empty() => a.len(),
                    _ => 1,
                };
                prop_assert_eq!(d.items.len(), expected);
                for e in d.items.iter().flatten() {
                    for k in e.fields.keys() {
                        prop_assert!(e.event_type.field(k).is_some(), "field {} kept for {}", k, e.event_type);
                    }
                }
            }
        }
    }
}
