//! The canonical anxin JSON format (CONTRACT.md, "MQTT: the canonical anxin JSON format").
//!
//! Events are a tagged enum so that a payload with a missing required field or a misspelled
//! state cannot be built; serde writes the `type` tag, and [`encode`] adds `ts` and `seq`.

use anyhow::{Result, ensure};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// Largest payload the canonical format accepts (CONTRACT.md: at most 64 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// One fact a device reports, with the fields its `type` carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// The wearer pressed the SOS button.
    Sos,
    /// A fall was detected.
    Fall,
    /// Smoke detector state.
    Smoke {
        /// Alarm, clear or self-test.
        state: SmokeState,
    },
    /// Combustible-gas / CO detector state.
    Gas {
        /// Alarm or clear.
        state: GasState,
        /// Which gas, when the detector says.
        #[serde(skip_serializing_if = "Option::is_none")]
        gas: Option<GasKind>,
    },
    /// Water-leak sensor state.
    Water {
        /// Leak or dry.
        state: WaterState,
    },
    /// Door contact state.
    Door {
        /// Open or closed.
        state: DoorState,
    },
    /// PIR motion.
    Motion {
        /// The room the sensor is in, when configured.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
    },
    /// Vital-sign measurements.
    Vitals(Vitals),
    /// A position fix.
    Position {
        /// Latitude, degrees.
        lat: f64,
        /// Longitude, degrees.
        lon: f64,
        /// Radius of uncertainty, metres.
        #[serde(skip_serializing_if = "Option::is_none")]
        accuracy_m: Option<f64>,
        /// How the fix was obtained.
        source: PositionSource,
    },
    /// Battery level.
    Battery {
        /// Charge, 0–100.
        percent: u8,
    },
    /// Wearable taken off or put on.
    Removal {
        /// Removed or worn.
        state: RemovalState,
    },
    /// Enclosure tamper.
    Tamper,
    /// Mains power lost or restored.
    Power {
        /// Lost or restored.
        state: PowerState,
    },
    /// Device self-reported fault.
    Fault {
        /// Vendor fault code.
        code: String,
    },
    /// The wearer cancelled an alarm on the device.
    Cancel,
    /// Keep-alive.
    Heartbeat,
}

/// Vital-sign readings; the contract accepts any subset, so every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Vitals {
    /// Beats per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heart_rate: Option<u16>,
    /// Systolic blood pressure, mmHg.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub systolic: Option<u16>,
    /// Diastolic blood pressure, mmHg.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diastolic: Option<u16>,
    /// Oxygen saturation, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spo2: Option<u8>,
    /// Body temperature, °C.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Blood glucose, mmol/L.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blood_glucose: Option<f64>,
    /// Step counter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
}

/// `smoke.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmokeState {
    /// Smoke detected.
    Alarm,
    /// Back to normal.
    Clear,
    /// Self-test button pressed; recorded, never alerted.
    Test,
}

/// `gas.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GasState {
    /// Gas detected.
    Alarm,
    /// Back to normal.
    Clear,
}

/// `gas.gas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GasKind {
    /// Natural gas.
    Methane,
    /// Carbon monoxide.
    Co,
    /// Liquefied petroleum gas.
    Lpg,
}

/// `water.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WaterState {
    /// Water detected.
    Leak,
    /// Back to dry.
    Dry,
}

/// `door.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DoorState {
    /// Contact open.
    Open,
    /// Contact closed.
    Closed,
}

/// `position.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionSource {
    /// Satellite fix.
    Gps,
    /// Wi-Fi access-point lookup.
    Wifi,
    /// Cell-tower (location-based service) lookup.
    Lbs,
}

/// `removal.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemovalState {
    /// Taken off.
    Removed,
    /// Put back on.
    Worn,
}

/// `power.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    /// Mains lost.
    Lost,
    /// Mains back.
    Restored,
}

/// An event as it goes on the wire: the event's own fields followed by the stamps.
#[derive(Serialize)]
struct Stamped<'a> {
    #[serde(flatten)]
    event: &'a Event,
    ts: String,
    seq: u64,
}

/// Serialises `event` as one canonical JSON object stamped with `ts` and `seq`.
///
/// `pad_bytes` appends that many spaces after the object. Trailing whitespace is legal JSON,
/// so a large payload can be simulated without inventing fields the engine might reject.
pub fn encode(event: &Event, ts: DateTime<Utc>, seq: u64, pad_bytes: usize) -> Result<Vec<u8>> {
    let stamped = Stamped {
        event,
        ts: format_ts(ts),
        seq,
    };
    let mut bytes = serde_json::to_vec(&stamped)?;
    bytes.resize(bytes.len() + pad_bytes, b' ');
    ensure!(
        bytes.len() <= MAX_PAYLOAD_BYTES,
        "payload of {} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit of the canonical format",
        bytes.len()
    );
    Ok(bytes)
}

/// RFC 3339 in UTC with milliseconds, the form the contract's examples use.
pub fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The topic a device publishes its events on.
pub fn events_topic(root: &str, device_id: &str) -> String {
    format!("{root}/devices/{device_id}/events")
}

/// Whether `id` is a device id the contract accepts: `[A-Za-z0-9_.:-]{1,64}`.
///
/// The id becomes a topic level, so anything else could also turn into a wildcard or an extra
/// level and publish somewhere the engine does not listen.
pub fn valid_device_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::{Map, Value, json};

    fn fixed_ts() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 4, 5, 6, 7).unwrap() + chrono::Duration::milliseconds(89)
    }

    /// Encodes with fixed stamps and returns the object without them, checking the stamps.
    fn fields_of(event: &Event) -> Map<String, Value> {
        let bytes = encode(event, fixed_ts(), 42, 0).unwrap();
        let Value::Object(mut object) = serde_json::from_slice(&bytes).unwrap() else {
            panic!("payload is not a JSON object");
        };
        assert_eq!(object.remove("ts"), Some(json!("2025-03-04T05:06:07.089Z")));
        assert_eq!(object.remove("seq"), Some(json!(42)));
        object
    }

    fn expect(event: Event, expected: Value) {
        assert_eq!(Value::Object(fields_of(&event)), expected, "{event:?}");
    }

    #[test]
    fn field_less_types_carry_only_their_type() {
        expect(Event::Sos, json!({"type": "sos"}));
        expect(Event::Fall, json!({"type": "fall"}));
        expect(Event::Tamper, json!({"type": "tamper"}));
        expect(Event::Cancel, json!({"type": "cancel"}));
        expect(Event::Heartbeat, json!({"type": "heartbeat"}));
    }

    #[test]
    fn state_types_carry_their_state() {
        expect(
            Event::Smoke {
                state: SmokeState::Alarm,
            },
            json!({"type": "smoke", "state": "alarm"}),
        );
        expect(
            Event::Smoke {
                state: SmokeState::Test,
            },
            json!({"type": "smoke", "state": "test"}),
        );
        expect(
            Event::Water {
                state: WaterState::Leak,
            },
            json!({"type": "water", "state": "leak"}),
        );
        expect(
            Event::Door {
                state: DoorState::Closed,
            },
            json!({"type": "door", "state": "closed"}),
        );
        expect(
            Event::Removal {
                state: RemovalState::Removed,
            },
            json!({"type": "removal", "state": "removed"}),
        );
        expect(
            Event::Power {
                state: PowerState::Restored,
            },
            json!({"type": "power", "state": "restored"}),
        );
    }

    #[test]
    fn gas_kind_is_optional() {
        expect(
            Event::Gas {
                state: GasState::Alarm,
                gas: Some(GasKind::Co),
            },
            json!({"type": "gas", "state": "alarm", "gas": "co"}),
        );
        expect(
            Event::Gas {
                state: GasState::Clear,
                gas: None,
            },
            json!({"type": "gas", "state": "clear"}),
        );
    }

    #[test]
    fn motion_room_is_optional() {
        expect(
            Event::Motion {
                room: Some("kitchen".into()),
            },
            json!({"type": "motion", "room": "kitchen"}),
        );
        expect(Event::Motion { room: None }, json!({"type": "motion"}));
    }

    #[test]
    fn vitals_carry_exactly_the_readings_given() {
        expect(
            Event::Vitals(Vitals {
                heart_rate: Some(130),
                ..Vitals::default()
            }),
            json!({"type": "vitals", "heart_rate": 130}),
        );
        expect(
            Event::Vitals(Vitals {
                heart_rate: Some(72),
                systolic: Some(120),
                diastolic: Some(80),
                spo2: Some(97),
                temperature: Some(36.6),
                blood_glucose: Some(5.4),
                steps: Some(1234),
            }),
            json!({
                "type": "vitals", "heart_rate": 72, "systolic": 120, "diastolic": 80,
                "spo2": 97, "temperature": 36.6, "blood_glucose": 5.4, "steps": 1234
            }),
        );
    }

    #[test]
    fn position_battery_and_fault_carry_their_values() {
        expect(
            Event::Position {
                lat: 31.2304,
                lon: 121.4737,
                accuracy_m: Some(12.5),
                source: PositionSource::Gps,
            },
            json!({
                "type": "position", "lat": 31.2304, "lon": 121.4737,
                "accuracy_m": 12.5, "source": "gps"
            }),
        );
        expect(
            Event::Position {
                lat: -1.0,
                lon: 2.0,
                accuracy_m: None,
                source: PositionSource::Lbs,
            },
            json!({"type": "position", "lat": -1.0, "lon": 2.0, "source": "lbs"}),
        );
        expect(
            Event::Battery { percent: 80 },
            json!({"type": "battery", "percent": 80}),
        );
        expect(
            Event::Fault { code: "E42".into() },
            json!({"type": "fault", "code": "E42"}),
        );
    }

    #[test]
    fn type_comes_first_and_stamps_last() {
        let bytes = encode(&Event::Battery { percent: 5 }, fixed_ts(), 1, 0).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"type":"battery","percent":5,"ts":"2025-03-04T05:06:07.089Z","seq":1}"#
        );
    }

    #[test]
    fn padding_is_trailing_whitespace_that_still_parses() {
        let plain = encode(&Event::Heartbeat, fixed_ts(), 7, 0).unwrap();
        let padded = encode(&Event::Heartbeat, fixed_ts(), 7, 1000).unwrap();
        assert_eq!(padded.len(), plain.len() + 1000);
        let a: Value = serde_json::from_slice(&plain).unwrap();
        let b: Value = serde_json::from_slice(&padded).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn payloads_over_the_contract_limit_are_refused() {
        assert!(encode(&Event::Heartbeat, fixed_ts(), 1, MAX_PAYLOAD_BYTES).is_err());
    }

    #[test]
    fn device_ids_follow_the_contract_pattern() {
        assert!(valid_device_id("sim-00001"));
        assert!(valid_device_id("a.b:c_d-9"));
        assert!(!valid_device_id(""));
        assert!(!valid_device_id("a/b"));
        assert!(!valid_device_id("+"));
        assert!(!valid_device_id(&"x".repeat(65)));
    }

    #[test]
    fn topic_has_the_contract_shape() {
        assert_eq!(events_topic("anxin/v1", "d1"), "anxin/v1/devices/d1/events");
    }
}
