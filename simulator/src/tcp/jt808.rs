//! JT/T 808-2013 messages, written from PROTOCOLS.md §4: `7E | escaped(header body XOR) | 7E`,
//! header = message id (2), attributes (2: body length in bits 0–9), BCD terminal number (6),
//! serial (2); XOR of everything from the id to the end of the body; inside the delimiters
//! `7E` is sent as `7D 02` and `7D` as `7D 01`.
//!
//! The platform answers register (0x0100) with 0x8100 (request serial, result, auth code)
//! and everything else with 0x8001 (request serial, request id, result).

use chrono::{DateTime, Datelike, FixedOffset, Timelike, Utc};

use super::{Expect, Reply, bcd_digits};

/// Terminal heartbeat, empty body.
pub const HEARTBEAT: u16 = 0x0002;
/// Terminal registration.
pub const REGISTER: u16 = 0x0100;
/// Terminal authentication with the code from 0x8100.
pub const AUTH: u16 = 0x0102;
/// Location report, which also carries the alarm word.
pub const LOCATION: u16 = 0x0200;
/// Platform general response.
pub const GENERAL_RESPONSE: u16 = 0x8001;
/// Platform registration response.
pub const REGISTER_RESPONSE: u16 = 0x8100;

/// Alarm-word bit 0: emergency (SOS).
pub const ALARM_SOS: u32 = 1 << 0;

/// Frames longer than this (escaped) are junk to a client reading platform replies.
const MAX_FRAME: usize = 2048;

/// XOR of `bytes`.
pub fn xor(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |acc, b| acc ^ b)
}

/// Escapes `7E` → `7D 02` and `7D` → `7D 01`.
pub fn escape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 4);
    for &b in raw {
        match b {
            0x7E => out.extend_from_slice(&[0x7D, 0x02]),
            0x7D => out.extend_from_slice(&[0x7D, 0x01]),
            _ => out.push(b),
        }
    }
    out
}

/// Undoes [`escape`]; `None` for a `7D` not followed by 01 or 02.
pub fn unescape(escaped: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut bytes = escaped.iter();
    while let Some(&b) = bytes.next() {
        if b == 0x7D {
            match bytes.next() {
                Some(0x01) => out.push(0x7D),
                Some(0x02) => out.push(0x7E),
                _ => return None,
            }
        } else {
            out.push(b);
        }
    }
    Some(out)
}

/// The 6 BCD bytes of a 2013 terminal number (left-padded with zeros to 12 digits).
pub fn phone_bcd(phone: &str) -> [u8; 6] {
    let mut out = [0; 6];
    out.copy_from_slice(&bcd_digits(phone, 6));
    out
}

/// A whole frame: header, body, XOR, escaped and delimited.
///
/// # Panics
/// When `body` exceeds the 10-bit length field (1023 bytes).
pub fn frame(id: u16, phone: &str, serial: u16, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len())
        .ok()
        .filter(|&l| l < 1 << 10)
        .expect("JT/T 808 body longer than 1023 bytes");
    let mut raw = Vec::with_capacity(12 + body.len() + 1);
    raw.extend_from_slice(&id.to_be_bytes());
    raw.extend_from_slice(&len.to_be_bytes());
    raw.extend_from_slice(&phone_bcd(phone));
    raw.extend_from_slice(&serial.to_be_bytes());
    raw.extend_from_slice(body);
    raw.push(xor(&raw));
    let mut out = Vec::with_capacity(raw.len() + 6);
    out.push(0x7E);
    out.extend_from_slice(&escape(&raw));
    out.push(0x7E);
    out
}

/// Heartbeat (0x0002).
pub fn heartbeat(phone: &str, serial: u16) -> Vec<u8> {
    frame(HEARTBEAT, phone, serial, &[])
}

/// The body of a 2013 registration (0x0100).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    /// Province id (GB/T 2260).
    pub province: u16,
    /// City / county id.
    pub city: u16,
    /// Manufacturer id, 5 bytes.
    pub manufacturer: [u8; 5],
    /// Terminal model, 20 bytes, zero-padded.
    pub model: [u8; 20],
    /// Terminal id, 7 bytes.
    pub terminal_id: [u8; 7],
    /// Plate colour; 0 = no plate (the "plate" is then a free identifier).
    pub plate_color: u8,
    /// Plate (GBK) or identifier.
    pub plate: Vec<u8>,
}

impl Register {
    /// A personal device of the simulator: Shanghai (31/0), manufacturer `ANXIN`, model
    /// `ANXIN-SIM`, terminal id = the last 7 digits of the number, no plate, the number as
    /// identifier.
    pub fn simulator(phone: &str) -> Register {
        let digits = format!("{phone:0>12}");
        let mut model = [0; 20];
        model[..9].copy_from_slice(b"ANXIN-SIM");
        let mut terminal_id = [0; 7];
        terminal_id.copy_from_slice(&digits.as_bytes()[digits.len() - 7..]);
        Register {
            province: 31,
            city: 0,
            manufacturer: *b"ANXIN",
            model,
            terminal_id,
            plate_color: 0,
            plate: digits.into_bytes(),
        }
    }

    fn body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(37 + self.plate.len());
        body.extend_from_slice(&self.province.to_be_bytes());
        body.extend_from_slice(&self.city.to_be_bytes());
        body.extend_from_slice(&self.manufacturer);
        body.extend_from_slice(&self.model);
        body.extend_from_slice(&self.terminal_id);
        body.push(self.plate_color);
        body.extend_from_slice(&self.plate);
        body
    }
}

/// Registration (0x0100).
pub fn register(phone: &str, serial: u16, reg: &Register) -> Vec<u8> {
    frame(REGISTER, phone, serial, &reg.body())
}

/// Authentication (0x0102) with the code from 0x8100 (2013: the code is the whole body).
pub fn auth(phone: &str, serial: u16, code: &[u8]) -> Vec<u8> {
    frame(AUTH, phone, serial, code)
}

/// The body of a location report (0x0200), as wire values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Alarm word (bit 0 SOS).
    pub alarm: u32,
    /// Status word (bit 0 ACC, bit 1 fixed, bit 2 south, bit 3 west).
    pub status: u32,
    /// Latitude, degrees × 10⁶.
    pub lat: u32,
    /// Longitude, degrees × 10⁶.
    pub lon: u32,
    /// Metres.
    pub altitude: u16,
    /// 0.1 km/h.
    pub speed: u16,
    /// Degrees.
    pub course: u16,
    /// BCD `YYMMDDhhmmss`, Beijing time.
    pub time: [u8; 6],
    /// Additional-information items `(id, value)`.
    pub extra: Vec<(u8, Vec<u8>)>,
}

impl Location {
    /// A fixed position at `lat`/`lon` degrees, 10 m up, standing still, at `time` (sent in
    /// Beijing time, the JT/T 808 default), with mileage 0, RSSI 27 and 8 satellites.
    pub fn at(time: DateTime<Utc>, lat: f64, lon: f64, alarm: u32) -> Location {
        let beijing = time.with_timezone(&FixedOffset::east_opt(8 * 3600).expect("UTC+8"));
        let bcd = |v: u32| ((v / 10 % 10) << 4 | (v % 10)) as u8;
        let mut status = 1 << 1; // positioned
        if lat < 0.0 {
            status |= 1 << 2;
        }
        if lon < 0.0 {
            status |= 1 << 3;
        }
        Location {
            alarm,
            status,
            lat: (lat.abs() * 1e6).round() as u32,
            lon: (lon.abs() * 1e6).round() as u32,
            altitude: 10,
            speed: 0,
            course: 0,
            time: [
                bcd(beijing.year().unsigned_abs()),
                bcd(beijing.month()),
                bcd(beijing.day()),
                bcd(beijing.hour()),
                bcd(beijing.minute()),
                bcd(beijing.second()),
            ],
            extra: vec![(0x01, vec![0; 4]), (0x30, vec![27]), (0x31, vec![8])],
        }
    }

    fn body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(28 + 16);
        body.extend_from_slice(&self.alarm.to_be_bytes());
        body.extend_from_slice(&self.status.to_be_bytes());
        body.extend_from_slice(&self.lat.to_be_bytes());
        body.extend_from_slice(&self.lon.to_be_bytes());
        body.extend_from_slice(&self.altitude.to_be_bytes());
        body.extend_from_slice(&self.speed.to_be_bytes());
        body.extend_from_slice(&self.course.to_be_bytes());
        body.extend_from_slice(&self.time);
        for (id, value) in &self.extra {
            body.push(*id);
            body.push(u8::try_from(value.len()).expect("additional item over 255 bytes"));
            body.extend_from_slice(value);
        }
        body
    }
}

/// Location report (0x0200).
pub fn location(phone: &str, serial: u16, loc: &Location) -> Vec<u8> {
    frame(LOCATION, phone, serial, &loc.body())
}

/// The reply that acks message `id` numbered `serial`: 0x8100 for a registration, else 0x8001.
pub fn expect(id: u16, serial: u16) -> Expect {
    if id == REGISTER {
        Expect::Jt808Register { serial }
    } else {
        Expect::Jt808General { serial, id }
    }
}

/// Takes the next `7E … 7E` frame (or leading junk) off the front of `buf`; `None` means more
/// bytes are needed. An empty `7E 7E` drops the first delimiter.
pub fn split(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    match buf.iter().position(|&b| b == 0x7E) {
        Some(0) => {}
        Some(n) => return Some(buf.drain(..n).collect()),
        None if buf.is_empty() => return None,
        None => return Some(std::mem::take(buf)),
    }
    match buf[1..].iter().position(|&b| b == 0x7E) {
        Some(0) => Some(buf.drain(..1).collect()),
        Some(n) => Some(buf.drain(..n + 2).collect()),
        None if buf.len() > MAX_FRAME => Some(std::mem::take(buf)),
        None => None,
    }
}

/// Parses one platform frame.
pub fn parse(frame: &[u8]) -> Reply {
    if frame.len() < 2 || frame[0] != 0x7E || frame[frame.len() - 1] != 0x7E {
        return Reply::Malformed("not a 7E-delimited frame".into());
    }
    let Some(raw) = unescape(&frame[1..frame.len() - 1]) else {
        return Reply::Malformed("bad 7D escape".into());
    };
    if raw.len() < 13 {
        return Reply::Malformed(format!("JT/T 808 frame of {} bytes", raw.len()));
    }
    let id = u16::from_be_bytes([raw[0], raw[1]]);
    let attr = u16::from_be_bytes([raw[2], raw[3]]);
    let (phone_at, phone_len) = if attr & (1 << 14) != 0 {
        (5, 10)
    } else {
        (4, 6)
    };
    let serial_at = phone_at + phone_len;
    let mut body_at = serial_at + 2;
    if attr & (1 << 13) != 0 {
        body_at += 4;
    }
    if raw.len() < body_at + 1 {
        return Reply::Malformed(format!("JT/T 808 header of {} bytes", raw.len()));
    }
    let phone: String = raw[phone_at..serial_at]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let serial = u16::from_be_bytes([raw[serial_at], raw[serial_at + 1]]);
    let body = raw[body_at..raw.len() - 1].to_vec();
    let mut problems = Vec::new();
    let computed = xor(&raw[..raw.len() - 1]);
    if computed != raw[raw.len() - 1] {
        problems.push(format!(
            "bad XOR {:02x}, expected {computed:02x}",
            raw[raw.len() - 1]
        ));
    }
    if usize::from(attr & 0x3FF) != body.len() {
        problems.push(format!(
            "body length {} but {} bytes",
            attr & 0x3FF,
            body.len()
        ));
    }
    Reply::Jt808 {
        id,
        phone,
        serial,
        body,
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::Match;

    fn hex(s: &str) -> Vec<u8> {
        super::super::from_hex(s).unwrap()
    }

    #[test]
    fn heartbeat_matches_traccar_vector() {
        assert_eq!(
            heartbeat("043048325465", 0x00b7),
            hex("7e0002000004304832546500b7ca7e")
        );
    }

    #[test]
    fn register_and_auth_match_traccar_vectors() {
        let mut model = [0; 20];
        model[..9].copy_from_slice(b"HB-R03GBD");
        let reg = Register {
            province: 0,
            city: 0,
            manufacturer: *b"70107",
            model,
            terminal_id: *b"2366104",
            plate_color: 2,
            plate: hex("cbd5424136383630"),
        };
        assert_eq!(
            register("013511221122", 5, &reg),
            hex(
                "7e0100002d013511221122000500000000373031303748422d52303347424400000000000000000000003233363631303402cbd5424136383630387e"
            )
        );
        assert_eq!(
            auth("013511221122", 6, b"authentication"),
            hex("7e0102000e013511221122000661757468656e7469636174696f6e3f7e")
        );
    }

    #[test]
    fn location_matches_traccar_vector() {
        let loc = Location {
            alarm: 0,
            status: 0x0004_0001,
            lat: 0x005de1f7,
            lon: 0x065c6cef,
            altitude: 0,
            speed: 0,
            course: 0,
            time: [0x17, 0x01, 0x17, 0x10, 0x04, 0x42],
            extra: vec![
                (0x01, hex("0000a900")),
                (0x2a, hex("0000")),
                (0x30, hex("1b")),
                (0x31, hex("03")),
            ],
        };
        assert_eq!(
            location("001601285614", 2, &loc),
            hex(
                "7e0200002c00160128561400020000000000040001005de1f7065c6cef00000000000017011710044201040000a9002a02000030011b3101030c7e"
            )
        );
    }

    #[test]
    fn sos_location_is_beijing_time_with_bit_0() {
        let t = DateTime::parse_from_rfc3339("2026-03-05T20:15:30Z")
            .unwrap()
            .with_timezone(&Utc);
        let loc = Location::at(t, 31.230416, 121.473701, ALARM_SOS);
        assert_eq!(loc.time, [0x26, 0x03, 0x06, 0x04, 0x15, 0x30]);
        assert_eq!((loc.lat, loc.lon, loc.status), (31_230_416, 121_473_701, 2));
        let f = location("013800000001", 9, &loc);
        let Reply::Jt808 {
            id,
            phone,
            serial,
            body,
            problem,
        } = parse(&f)
        else {
            panic!("own frame does not parse");
        };
        assert_eq!(
            (id, phone.as_str(), serial, problem),
            (LOCATION, "013800000001", 9, None)
        );
        assert_eq!(&body[..4], &[0, 0, 0, 1]);
    }

    #[test]
    fn escaping_matches_traccar_frame_vector() {
        // jt808.json frame test: `7e307d02087d01557e` holds `30 7e 08 7d 55`.
        assert_eq!(escape(&hex("307e087d55")), hex("307d02087d0155"));
        assert_eq!(unescape(&hex("307d02087d0155")), Some(hex("307e087d55")));
        assert_eq!(unescape(&hex("307d03")), None);
        // A frame whose serial and checksum need escaping round-trips.
        let f = frame(HEARTBEAT, "000000000000", 0x7e7d, &[]);
        let inner = &f[1..f.len() - 1];
        assert!(!inner.contains(&0x7e));
        let Reply::Jt808 {
            serial, problem, ..
        } = parse(&f)
        else {
            panic!()
        };
        assert_eq!((serial, problem), (0x7e7d, None));
    }

    #[test]
    fn general_response_acks_the_heartbeat() {
        // PROTOCOLS.md §4 worked example.
        let reply = parse(&hex("7e80010005043048325465000000b70002004e7e"));
        assert_eq!(
            expect(HEARTBEAT, 0xb7).check(&reply, "043048325465"),
            Match::Acked
        );
        assert_eq!(
            expect(HEARTBEAT, 0xb8).check(&reply, "043048325465"),
            Match::No
        );
        assert_eq!(
            expect(LOCATION, 0xb7).check(&reply, "043048325465"),
            Match::No
        );
        // Addressed to another terminal: not ours.
        assert_eq!(
            expect(HEARTBEAT, 0xb7).check(&reply, "043048325466"),
            Match::No
        );
        // Result 1 (failure) is a refusal.
        let failed = frame(GENERAL_RESPONSE, "043048325465", 0, &hex("00b7000201"));
        assert!(matches!(
            expect(HEARTBEAT, 0xb7).check(&parse(&failed), "043048325465"),
            Match::Refused(_)
        ));
        // Result 4 (alarm confirmed) acks an alarm.
        let confirmed = frame(GENERAL_RESPONSE, "043048325465", 0, &hex("00b7020004"));
        assert_eq!(
            expect(LOCATION, 0xb7).check(&parse(&confirmed), "043048325465"),
            Match::Acked
        );
    }

    #[test]
    fn register_response_carries_the_code() {
        let reply = frame(REGISTER_RESPONSE, "013511221122", 0, b"\x00\x05\x00abc123");
        let reply = parse(&reply);
        assert_eq!(
            expect(REGISTER, 5).check(&reply, "13511221122"),
            Match::Acked
        );
        let Reply::Jt808 { body, .. } = &reply else {
            panic!()
        };
        assert_eq!(&body[3..], b"abc123");
        let refused = parse(&frame(
            REGISTER_RESPONSE,
            "013511221122",
            0,
            b"\x00\x05\x02",
        ));
        assert!(matches!(
            expect(REGISTER, 5).check(&refused, "013511221122"),
            Match::Refused(_)
        ));
    }

    #[test]
    fn split_handles_junk_and_back_to_back_delimiters() {
        let mut buf = hex("24247e307d02087d01557e7e0002");
        assert_eq!(split(&mut buf), Some(hex("2424")));
        assert_eq!(split(&mut buf), Some(hex("7e307d02087d01557e")));
        assert_eq!(split(&mut buf), None);
        let mut buf = hex("7e7e0002000004304832546500b7ca7e");
        assert_eq!(split(&mut buf), Some(hex("7e")));
        assert_eq!(split(&mut buf), Some(hex("7e0002000004304832546500b7ca7e")));
    }

    #[test]
    fn traccar_frames_with_7e_inside_survive_escaping() {
        // The decode vectors are unescaped; any whose bytes contain 7E/7D must come back
        // intact through frame-escape-parse.
        // The package directory of this run (cargo sets it for tests), not the one compiled
        // in: a test binary reused from another checkout still reads this checkout's corpus.
        let dir = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
        let text =
            std::fs::read_to_string(format!("{dir}/../protocols/conformance/traccar/jt808.json"))
                .expect("the conformance corpus is part of the repository");
        let entries: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut checked = 0;
        for e in entries.as_array().unwrap() {
            if e["encoding"] != "hex" || e["kind"] != "decode" {
                continue;
            }
            let b = hex(e["frame"].as_str().unwrap());
            if b.len() < 15 || b[0] != 0x7e || b[b.len() - 1] != 0x7e {
                continue;
            }
            let inner = &b[1..b.len() - 1];
            if !inner.iter().any(|&x| x == 0x7e || x == 0x7d) {
                continue;
            }
            let mut wire = vec![0x7e];
            wire.extend_from_slice(&escape(inner));
            wire.push(0x7e);
            let mut buf = wire.clone();
            assert_eq!(split(&mut buf), Some(wire.clone()));
            assert_eq!(unescape(&wire[1..wire.len() - 1]).unwrap(), inner);
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} frames with 7E/7D inside");
    }
}
