//! The event model: one [`Event`] per fact a device reported, whatever transport carried it.
//!
//! Fields are kept as a validated JSON map rather than one Rust struct per type: the schema
//! table ([`EventType::fields`]) is the single source of truth for the canonical MQTT format,
//! for rule validation (`check-config` rejects a rule on a field a type does not have) and for
//! the HTTP output.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// A device id: `[A-Za-z0-9_.:-]{1,64}` (CONTRACT.md, Devices).
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// What a device reported. The names are the canonical `type` values of CONTRACT.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The wearer pressed the SOS button.
    Sos,
    /// A fall was detected.
    Fall,
    /// Smoke detector state.
    Smoke,
    /// Combustible-gas / CO detector state.
    Gas,
    /// Water-leak sensor state.
    Water,
    /// Door contact state.
    Door,
    /// PIR motion.
    Motion,
    /// Vital-sign measurements.
    Vitals,
    /// A position fix.
    Position,
    /// Battery level.
    Battery,
    /// Wearable taken off or put on.
    Removal,
    /// Enclosure tamper.
    Tamper,
    /// Mains power lost or restored.
    Power,
    /// Device self-reported fault.
    Fault,
    /// The wearer cancelled an alarm on the device (timeline only; never resolves an alert).
    Cancel,
    /// Keep-alive.
    Heartbeat,
    /// An alarm the device raised without saying which (or a vendor-specific one), with its
    /// code: never dropped, so an operator can look.
    Alarm,
}

/// The value constraint of one field of an event type.
#[derive(Debug, Clone, Copy)]
pub enum FieldKind {
    /// One of a fixed set of strings.
    Enum(&'static [&'static str]),
    /// A number within an inclusive range, in the unit the field name documents.
    Number {
        /// Smallest accepted value.
        min: f64,
        /// Largest accepted value.
        max: f64,
    },
    /// A whole number within an inclusive range.
    Integer {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// Free text up to a length.
    Text {
        /// Longest accepted text, in bytes.
        max_len: usize,
    },
    /// `true` or `false`.
    Bool,
    /// A JSON array kept as reported (raw Wi-Fi access points, cell towers), up to a size.
    List {
        /// Most elements accepted.
        max_items: usize,
    },
}

/// One field of an event type's schema.
#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    /// The JSON key.
    pub name: &'static str,
    /// What values it takes.
    pub kind: FieldKind,
    /// Whether the object is rejected without it.
    pub required: bool,
}

const fn req(name: &'static str, kind: FieldKind) -> FieldSpec {
    FieldSpec {
        name,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, kind: FieldKind) -> FieldSpec {
    FieldSpec {
        name,
        kind,
        required: false,
    }
}

const fn num(min: f64, max: f64) -> FieldKind {
    FieldKind::Number { min, max }
}

// Ranges are physiological or physical plausibility bounds: a value outside them is a decoding
// or unit error upstream, not a reading, and must not silently drive a threshold rule.
const VITALS: &[FieldSpec] = &[
    opt("heart_rate", num(0.0, 300.0)),
    opt("systolic", num(0.0, 300.0)),
    opt("diastolic", num(0.0, 300.0)),
    opt("spo2", num(0.0, 100.0)),
    opt("temperature", num(25.0, 45.0)),
    opt("blood_glucose", num(0.0, 50.0)),
    opt(
        "steps",
        FieldKind::Integer {
            min: 0,
            max: 10_000_000,
        },
    ),
];

const SMOKE: &[FieldSpec] = &[req("state", FieldKind::Enum(&["alarm", "clear", "test"]))];
const GAS: &[FieldSpec] = &[
    req("state", FieldKind::Enum(&["alarm", "clear"])),
    opt("gas", FieldKind::Enum(&["methane", "co", "lpg"])),
];
const WATER: &[FieldSpec] = &[req("state", FieldKind::Enum(&["leak", "dry"]))];
const DOOR: &[FieldSpec] = &[req("state", FieldKind::Enum(&["open", "closed"]))];
const MOTION: &[FieldSpec] = &[opt("room", FieldKind::Text { max_len: 64 })];
// `lat`/`lon` come together; a `gps` fix must have them, a Wi-Fi or cell report may carry
// only the raw access points or towers for later lookup (checked by the decoder).
const POSITION: &[FieldSpec] = &[
    opt("lat", num(-90.0, 90.0)),
    opt("lon", num(-180.0, 180.0)),
    opt("accuracy_m", num(0.0, 1_000_000.0)),
    req("source", FieldKind::Enum(&["gps", "wifi", "lbs"])),
    opt("valid", FieldKind::Bool),
    opt("speed_kmh", num(0.0, 2000.0)),
    opt("course_deg", num(0.0, 360.0)),
    opt("altitude_m", num(-1000.0, 20000.0)),
    opt("satellites", FieldKind::Integer { min: 0, max: 255 }),
    opt("wifi", FieldKind::List { max_items: 64 }),
    opt("cells", FieldKind::List { max_items: 64 }),
];
// At least one of these (checked by the decoder): a level in percent, the device's own
// low-battery flag, or a voltage.
const BATTERY: &[FieldSpec] = &[
    opt("percent", num(0.0, 100.0)),
    opt("level", FieldKind::Enum(&["low", "normal"])),
    opt("voltage_v", num(0.0, 100.0)),
];
const ALARM: &[FieldSpec] = &[req("code", FieldKind::Text { max_len: 64 })];
const REMOVAL: &[FieldSpec] = &[req("state", FieldKind::Enum(&["removed", "worn"]))];
const POWER: &[FieldSpec] = &[req("state", FieldKind::Enum(&["lost", "restored"]))];
const FAULT: &[FieldSpec] = &[req("code", FieldKind::Text { max_len: 128 })];

impl EventType {
    /// Every type, in CONTRACT.md order.
    pub const ALL: [EventType; 17] = [
        EventType::Sos,
        EventType::Fall,
        EventType::Smoke,
        EventType::Gas,
        EventType::Water,
        EventType::Door,
        EventType::Motion,
        EventType::Vitals,
        EventType::Position,
        EventType::Battery,
        EventType::Removal,
        EventType::Tamper,
        EventType::Power,
        EventType::Fault,
        EventType::Cancel,
        EventType::Heartbeat,
        EventType::Alarm,
    ];

    /// The canonical `type` string.
    pub fn name(self) -> &'static str {
        match self {
            EventType::Sos => "sos",
            EventType::Fall => "fall",
            EventType::Smoke => "smoke",
            EventType::Gas => "gas",
            EventType::Water => "water",
            EventType::Door => "door",
            EventType::Motion => "motion",
            EventType::Vitals => "vitals",
            EventType::Position => "position",
            EventType::Battery => "battery",
            EventType::Removal => "removal",
            EventType::Tamper => "tamper",
            EventType::Power => "power",
            EventType::Fault => "fault",
            EventType::Cancel => "cancel",
            EventType::Heartbeat => "heartbeat",
            EventType::Alarm => "alarm",
        }
    }

    /// Parses a canonical `type` string.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Parses a `type` as devices send it: any case, surrounding blanks ignored (`"SOS"` is
    /// an SOS; refusing it would lose the alarm over spelling).
    pub fn parse_loose(s: &str) -> Option<EventType> {
        let s = s.trim();
        EventType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// The fields this type carries (CONTRACT.md, "the canonical anxin JSON format").
    pub fn fields(self) -> &'static [FieldSpec] {
        match self {
            EventType::Sos
            | EventType::Fall
            | EventType::Tamper
            | EventType::Cancel
            | EventType::Heartbeat => &[],
            EventType::Smoke => SMOKE,
            EventType::Gas => GAS,
            EventType::Water => WATER,
            EventType::Door => DOOR,
            EventType::Motion => MOTION,
            EventType::Vitals => VITALS,
            EventType::Position => POSITION,
            EventType::Battery => BATTERY,
            EventType::Removal => REMOVAL,
            EventType::Power => POWER,
            EventType::Fault => FAULT,
            EventType::Alarm => ALARM,
        }
    }

    /// The field spec named `name`, if this type has it.
    pub fn field(self, name: &str) -> Option<&'static FieldSpec> {
        self.fields().iter().find(|f| f.name == name)
    }

    /// Alarm types that are never refused or suppressed, whatever policy applies (DESIGN.md).
    pub fn is_life_safety(self) -> bool {
        matches!(
            self,
            EventType::Sos | EventType::Fall | EventType::Smoke | EventType::Gas
        )
    }

    /// Checks the rules across fields that the per-field table cannot express; `Err` names
    /// the problem.
    pub fn check_fields(self, fields: &Map<String, Value>) -> Result<(), String> {
        match self {
            EventType::Vitals if fields.is_empty() => Err(
                "vitals carries none of heart_rate, systolic, diastolic, spo2, temperature, blood_glucose, steps".into(),
            ),
            EventType::Battery if fields.is_empty() => {
                Err("battery carries none of percent, level, voltage_v".into())
            }
            EventType::Position => {
                match (fields.contains_key("lat"), fields.contains_key("lon")) {
                    (true, false) | (false, true) => Err("position needs both lat and lon".into()),
                    (false, false) if fields.get("source").and_then(Value::as_str) == Some("gps") => {
                        Err("a gps position needs lat and lon".into())
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where an event came from, kept with it for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// `mqtt` or `tcp`.
    pub transport: &'static str,
    /// `canonical` for the anxin JSON format, else the protocol family or profile.
    pub protocol: String,
    /// The MQTT topic or the peer address.
    pub origin: String,
}

/// One fact reported by one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The reporting device.
    pub device_id: String,
    /// What happened.
    pub event_type: EventType,
    /// Validated fields, per [`EventType::fields`].
    pub fields: Map<String, Value>,
    /// The device's own clock, when it sent one. Display and duplicate detection only.
    pub device_time: Option<DateTime<Utc>>,
    /// The device's message counter, when it sent one. Duplicate detection only.
    pub seq: Option<i64>,
    /// When anxin received the message carrying it. Timers use this; device clocks drift.
    pub received_at: DateTime<Utc>,
    /// Transport and protocol.
    pub source: Source,
    /// Identifies a redelivered copy of this event (see ARCHITECTURE.md, "Duplicates").
    pub dedup_key: DedupKey,
    /// A status level the device keeps repeating (a watch status bit, a JT/T 808 alarm word)
    /// that was already active in its previous report: recorded as "still active", never a
    /// new press.
    pub still_active: bool,
    /// The resident of the device, from the registry (enrichment; not part of the payload).
    pub resident_id: Option<String>,
    /// The transport says it sent this message before (MQTT DUP). Not proof of a duplicate —
    /// the first copy may never have been committed — but it lets a payload key (hash and
    /// packet id) match its first copy, for the whole dedup window.
    pub redelivered: bool,
    /// A retained message the broker replayed on subscribe: recorded as what the device last
    /// said, never counted as a press nor acted on (a retained `cancel` cancels nothing).
    pub retained: bool,
    /// Values the device sent with this event that could not be used (a bad `ts`, a field out
    /// of range, …). An alarm is never refused for them (DESIGN.md guarantee 5): it is kept,
    /// and so are they, for the timeline and for inspection.
    pub flaws: Vec<Flaw>,
}

/// A value that came with an event but could not be used; the event stands without it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Flaw {
    /// The field at fault: `ts`, `seq`, `state`, `device_id`, a vendor field, …
    pub field: String,
    /// What the device sent, as text, cut to [`Flaw::MAX_VALUE_BYTES`].
    pub value: String,
    /// What was wrong and what stood in for it.
    pub problem: String,
}

impl Flaw {
    /// Longest kept value, in bytes: enough to read any field, bounded for memory and logs.
    pub const MAX_VALUE_BYTES: usize = 128;

    /// A flaw of `field`, keeping at most [`Flaw::MAX_VALUE_BYTES`] of `value` (cut on a
    /// character boundary).
    pub fn new(
        field: impl Into<String>,
        value: impl AsRef<str>,
        problem: impl Into<String>,
    ) -> Flaw {
        let value = value.as_ref();
        let mut end = value.len().min(Flaw::MAX_VALUE_BYTES);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        Flaw {
            field: field.into(),
            value: value[..end].to_owned(),
            problem: problem.into(),
        }
    }
}

/// How a redelivered copy of an event is recognised (DESIGN.md guarantee 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupKey {
    /// The device sent `seq` and/or `ts` (or a 4G frame's serial and time): the pair
    /// identifies the event for the dedup window.
    Device(String),
    /// MQTT, neither was sent: a hash of the payload with the MQTT packet id. Content alone
    /// never makes a duplicate (two identical SOS payloads are two presses); only a copy the
    /// broker flags as redelivered (DUP), which carries the same packet id, is matched.
    Payload(String),
    /// A 4G frame without a device time: a hash of its bytes, serial number included. A
    /// device resends an unacknowledged frame unchanged within seconds, so the same bytes
    /// within the redelivery window are a retransmission; a new press has a new serial.
    Frame(String),
}

impl DedupKey {
    /// The `s{seq}|t{device time in ms}` part of a key from what the device sent (either may
    /// be empty), shared by the MQTT formats so their keys read the same.
    pub fn device_part(seq: Option<i64>, device_time: Option<DateTime<Utc>>) -> String {
        format!(
            "s{}|t{}",
            seq.map(|s| s.to_string()).unwrap_or_default(),
            device_time
                .map(|t| t.timestamp_millis().to_string())
                .unwrap_or_default()
        )
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        match self {
            DedupKey::Device(s) | DedupKey::Payload(s) | DedupKey::Frame(s) => s,
        }
    }
}

impl Event {
    /// An event with no fields yet, keyed by `dedup_key`; add fields with [`Event::with`].
    pub fn new(
        device_id: impl Into<String>,
        event_type: EventType,
        received_at: DateTime<Utc>,
        source: Source,
        dedup_key: DedupKey,
    ) -> Event {
        Event {
            device_id: device_id.into(),
            event_type,
            fields: Map::new(),
            device_time: None,
            seq: None,
            received_at,
            source,
            dedup_key,
            still_active: false,
            resident_id: None,
            redelivered: false,
            retained: false,
            flaws: Vec::new(),
        }
    }

    /// Records a value that could not be used (see [`Flaw`]).
    pub fn flawed(mut self, flaw: Flaw) -> Event {
        self.flaws.push(flaw);
        self
    }

    /// Sets a field (decoders are trusted to follow [`EventType::fields`]; tests check them).
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Event {
        self.fields.insert(name.to_owned(), value.into());
        self
    }

    /// The event as JSON, for `anxin decode` and the frame log.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "device_id": self.device_id,
            "type": self.event_type.name(),
            "fields": self.fields,
            "device_time": self.device_time,
            "seq": self.seq,
            "still_active": self.still_active,
            "flaws": self.flaws,
        })
    }

    /// A field as a number, for rule conditions.
    pub fn number(&self, name: &str) -> Option<f64> {
        self.fields.get(name).and_then(Value::as_f64)
    }

    /// A field as text, for rule conditions.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_follow_the_contract_pattern() {
        assert!(valid_device_id("d1"));
        assert!(valid_device_id("860000000000001"));
        assert!(valid_device_id("a.b:c-d_e"));
        assert!(!valid_device_id(""));
        assert!(!valid_device_id("has space"));
        assert!(!valid_device_id("slash/inside"));
        assert!(!valid_device_id(&"x".repeat(65)));
    }

    #[test]
    fn a_flaw_keeps_a_bounded_prefix_cut_on_a_character_boundary() {
        let f = Flaw::new("ts", "时".repeat(100), "not a time");
        assert!(f.value.len() <= Flaw::MAX_VALUE_BYTES);
        assert!(f.value.chars().all(|c| c == '时'));
        assert_eq!(Flaw::new("seq", "7", "x").value, "7");
    }

    #[test]
    fn every_type_name_round_trips() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.name()), Some(t));
        }
        assert_eq!(EventType::parse("SOS"), None);
        assert_eq!(EventType::parse_loose(" SOS "), Some(EventType::Sos));
        assert_eq!(EventType::parse_loose("Smoke"), Some(EventType::Smoke));
        assert_eq!(EventType::parse_loose("so s"), None);
    }
}
