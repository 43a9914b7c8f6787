//! The four 4G TCP device families (`watch`, `gt06`, `jt808`, `trv`), played against the
//! engine's TCP listeners.
//!
//! Every encoder here is written from `protocols/conformance/PROTOCOLS.md` and checked against
//! Traccar's frames, never borrowed from the engine: the simulator is an independent truth,
//! so a mistake made the same way in an encoder and a decoder cannot hide. Replies from the
//! engine are parsed just as strictly (CRC, XOR, length fields) and only a well-formed reply
//! to the right device, frame type and serial counts as an ack.

pub mod gt06;
pub mod jt808;
pub mod scenario;
pub mod soak;
pub mod trv;
pub mod watch;

use chrono::{DateTime, Utc};

/// Where simulated devices say they are: People's Square, Shanghai.
pub const HOME: (f64, f64) = (31.230416, 121.473701);

/// A device family, by its CONTRACT.md name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    /// `[3G*ID*LLLL*CONTENT]` text watches.
    Watch,
    /// Concox/Jimi `78 78` binary, CRC-16/X-25.
    Gt06,
    /// JT/T 808-2013, `7E`-framed, XOR checksum.
    Jt808,
    /// IW text protocol, `IWAPxx…#`.
    Trv,
}

impl Family {
    /// The CONTRACT.md name.
    pub fn name(self) -> &'static str {
        match self {
            Family::Watch => "watch",
            Family::Gt06 => "gt06",
            Family::Jt808 => "jt808",
            Family::Trv => "trv",
        }
    }

    /// The engine's default listener port for the family (CONTRACT.md).
    pub fn default_port(self) -> u16 {
        match self {
            Family::Watch => 5093,
            Family::Gt06 => 5023,
            Family::Jt808 => 5015,
            Family::Trv => 5010,
        }
    }

    /// Whether frames are text (printed as is) rather than binary (printed as hex).
    pub fn is_text(self) -> bool {
        matches!(self, Family::Watch | Family::Trv)
    }

    /// A frame as printed: text for the text families (control characters escaped), else
    /// lowercase hex.
    pub fn show(self, bytes: &[u8]) -> String {
        match std::str::from_utf8(bytes) {
            Ok(text) if self.is_text() => text.escape_debug().to_string(),
            _ => to_hex(bytes),
        }
    }

    /// Takes the next server frame (or junk to report) off the front of `buf`; `None` means
    /// more bytes are needed.
    pub fn split(self, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        match self {
            Family::Watch => watch::split(buf),
            Family::Gt06 => gt06::split(buf),
            Family::Jt808 => jt808::split(buf),
            Family::Trv => trv::split(buf),
        }
    }

    /// Parses one frame returned by [`Family::split`].
    pub fn parse(self, frame: &[u8]) -> Reply {
        match self {
            Family::Watch => watch::parse(frame),
            Family::Gt06 => gt06::parse(frame),
            Family::Jt808 => jt808::parse(frame),
            Family::Trv => trv::parse(frame),
        }
    }

    /// Checks that `id` can be sent by this family: digits that fit the BCD fields of gt06
    /// (16) and jt808 (12); letters and digits for the text families.
    pub fn check_device_id(self, id: &str) -> Result<(), String> {
        let digits = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
        let alnum = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
        match self {
            Family::Gt06 if digits && id.len() <= 16 => Ok(()),
            Family::Gt06 => Err("gt06 ids are IMEIs: 1 to 16 digits (15 usual)".into()),
            Family::Jt808 if digits && id.len() <= 12 => Ok(()),
            Family::Jt808 => Err("jt808 ids are terminal numbers: 1 to 12 digits".into()),
            Family::Watch | Family::Trv if alnum && id.len() <= 20 => Ok(()),
            Family::Watch => Err("watch ids are 1 to 20 letters or digits (10 usual)".into()),
            Family::Trv => Err("trv ids are 1 to 20 letters or digits (an IMEI)".into()),
        }
    }

    /// The id of soak device number `index`: a 15-digit IMEI with a valid Luhn digit (gt06,
    /// trv), a 10-digit registration code (watch) or a 12-digit terminal number (jt808).
    pub fn soak_device_id(self, index: u64) -> String {
        match self {
            Family::Watch => format!("{}", 8_000_000_000 + index % 1_000_000_000),
            Family::Jt808 => format!("0199{:08}", index % 100_000_000),
            Family::Gt06 | Family::Trv => {
                let body = format!("8699000{:07}", index % 10_000_000);
                let check = luhn_check_digit(&body);
                format!("{body}{check}")
            }
        }
    }
}

/// The Luhn check digit that completes `digits` (as the 15th digit of an IMEI).
pub fn luhn_check_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let d2 = d * 2;
                d2 / 10 + d2 % 10
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// `digits` as `bytes` BCD bytes, left-padded with zeros; non-digits count as 0.
///
/// # Panics
/// When `digits` has more than `2 * bytes` characters (ids are checked before this).
pub fn bcd_digits(digits: &str, bytes: usize) -> Vec<u8> {
    assert!(
        digits.len() <= bytes * 2,
        "{digits:?} does not fit {bytes} BCD bytes"
    );
    let padded = format!("{digits:0>width$}", width = bytes * 2);
    padded
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            let d = |b: u8| if b.is_ascii_digit() { b - b'0' } else { 0 };
            d(pair[0]) << 4 | d(pair[1])
        })
        .collect()
}

/// Lowercase hex without separators.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Parses hex, ignoring whitespace; `None` if it is not an even number of hex digits.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !clean.len().is_multiple_of(2) {
        return None;
    }
    clean
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// A frame received from the engine, parsed (not yet matched to anything sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `[MM*ID*LLLL*CONTENT]`.
    Watch {
        /// Vendor code (`3G`, `SG`, …).
        vendor: String,
        /// Device id the reply names.
        id: String,
        /// Content, e.g. `LK`.
        content: String,
        /// What is wrong with the frame (a length field that disagrees), if anything.
        problem: Option<String>,
    },
    /// `78 78 LEN PROTO … SERIAL CRC 0D 0A`.
    Gt06 {
        /// Protocol number.
        proto: u8,
        /// Serial (the echoed serial in an ack).
        serial: u16,
        /// Bytes between PROTO and SERIAL.
        content: Vec<u8>,
        /// What is wrong with the packet (bad CRC, LEN), if anything; such a packet is
        /// never taken as an ack.
        problem: Option<String>,
    },
    /// An unescaped JT/T 808 message.
    Jt808 {
        /// Message id (0x8001, 0x8100, …).
        id: u16,
        /// Terminal number, as the hex of its BCD bytes.
        phone: String,
        /// The platform's own serial.
        serial: u16,
        /// Message body.
        body: Vec<u8>,
        /// What is wrong with the frame (bad XOR, length), if anything; such a frame is
        /// never taken as an ack.
        problem: Option<String>,
    },
    /// An IW sentence without its `#`.
    Trv {
        /// The sentence, e.g. `IWBP00,20260305081500,0`.
        text: String,
    },
    /// Bytes that are not a frame of the family.
    Malformed(String),
}

impl Reply {
    /// What is wrong with the frame, if anything.
    pub fn problem(&self) -> Option<&str> {
        match self {
            Reply::Watch { problem, .. }
            | Reply::Gt06 { problem, .. }
            | Reply::Jt808 { problem, .. } => problem.as_deref(),
            Reply::Trv { .. } => None,
            Reply::Malformed(why) => Some(why),
        }
    }
}

/// Which reply acknowledges a frame the device sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A watch frame naming the device whose content is exactly `word` (or `word,…`).
    Watch {
        /// `LK` or `AL`.
        word: &'static str,
    },
    /// The GT06 short echo of `proto` with `serial`, correct CRC.
    Gt06 {
        /// Protocol number of the packet sent.
        proto: u8,
        /// Its serial.
        serial: u16,
    },
    /// 0x8100 to this terminal for the registration numbered `serial`.
    Jt808Register {
        /// Serial of the 0x0100 sent.
        serial: u16,
    },
    /// 0x8001 to this terminal naming `serial` and `id`.
    Jt808General {
        /// Serial of the message sent.
        serial: u16,
        /// Its message id.
        id: u16,
    },
    /// `IW` + `ty` (`BP00`, `BP10`, …), alone or followed by `,`.
    Trv {
        /// The ack type, e.g. `*b"BP10"`.
        ty: [u8; 4],
    },
}

/// How a reply relates to an [`Expect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// Not the awaited reply.
    No,
    /// The ack.
    Acked,
    /// The awaited reply, saying no (a JT/T 808 result other than success).
    Refused(String),
}

impl Expect {
    /// Whether `reply` acknowledges the frame for `device`.
    pub fn check(&self, reply: &Reply, device: &str) -> Match {
        match (self, reply) {
            (Expect::Watch { word }, Reply::Watch { id, content, .. }) => {
                let first = content.split(',').next().unwrap_or_default();
                if id == device && first == *word {
                    Match::Acked
                } else {
                    Match::No
                }
            }
            (
                Expect::Gt06 { proto, serial },
                Reply::Gt06 {
                    proto: p,
                    serial: s,
                    problem: None,
                    ..
                },
            ) if proto == p && serial == s => Match::Acked,
            (
                Expect::Jt808Register { serial },
                Reply::Jt808 {
                    id: jt808::REGISTER_RESPONSE,
                    phone,
                    body,
                    problem: None,
                    ..
                },
            ) if same_terminal(phone, device)
                && body.len() >= 3
                && body[..2] == serial.to_be_bytes() =>
            {
                match body[2] {
                    0 => Match::Acked,
                    r => Match::Refused(format!(
                        "registration result {r} ({})",
                        match r {
                            1 => "vehicle already registered",
                            2 => "no such vehicle",
                            3 => "terminal already registered",
                            4 => "no such terminal",
                            _ => "unknown",
                        }
                    )),
                }
            }
            (
                Expect::Jt808General { serial, id },
                Reply::Jt808 {
                    id: jt808::GENERAL_RESPONSE,
                    phone,
                    body,
                    problem: None,
                    ..
                },
            ) if same_terminal(phone, device)
                && body.len() >= 5
                && body[..2] == serial.to_be_bytes()
                && body[2..4] == id.to_be_bytes() =>
            {
                match body[4] {
                    // 4 = alarm handling confirmed, an ack of an alarm report.
                    0 | 4 => Match::Acked,
                    r => Match::Refused(format!(
                        "general response result {r} ({})",
                        match r {
                            1 => "failure",
                            2 => "wrong message",
                            3 => "not supported",
                            _ => "unknown",
                        }
                    )),
                }
            }
            (Expect::Trv { ty }, Reply::Trv { text }) => {
                let head = text.strip_prefix("IW").unwrap_or_default().as_bytes();
                if head.len() >= 4
                    && head[..4] == ty[..]
                    && matches!(head.get(4), None | Some(b','))
                {
                    Match::Acked
                } else {
                    Match::No
                }
            }
            _ => Match::No,
        }
    }
}

/// Whether the BCD hex `phone` of a reply is the terminal number `device`.
fn same_terminal(phone: &str, device: &str) -> bool {
    phone.len() >= device.len() && phone == format!("{device:0>width$}", width = phone.len())
}

/// A frame for the device to send and the reply that acknowledges it, if one is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The bytes on the wire; a retransmission sends them again unchanged.
    pub bytes: Vec<u8>,
    /// The ack to wait for; `None` for messages the protocol does not ack.
    pub expect: Option<Expect>,
    /// What the frame is, for messages: `login`, `sos`, …
    pub what: &'static str,
}

impl Outgoing {
    fn acked(bytes: impl Into<Vec<u8>>, expect: Expect, what: &'static str) -> Outgoing {
        Outgoing {
            bytes: bytes.into(),
            expect: Some(expect),
            what,
        }
    }

    fn text(s: String, what: &'static str) -> Outgoing {
        Outgoing {
            bytes: s.into_bytes(),
            expect: None,
            what,
        }
    }
}

/// One simulated device: its family, id and outgoing serial counter.
#[derive(Debug, Clone)]
pub struct Device {
    family: Family,
    id: String,
    serial: u16,
}

impl Device {
    /// A device of `family` with id `id` (see [`Family::check_device_id`]); serials start at 1.
    pub fn new(family: Family, id: impl Into<String>) -> Device {
        Device {
            family,
            id: id.into(),
            serial: 1,
        }
    }

    /// The device id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The family.
    pub fn family(&self) -> Family {
        self.family
    }

    fn next_serial(&mut self) -> u16 {
        let serial = self.serial;
        self.serial = self.serial.wrapping_add(1);
        serial
    }

    /// The first frame of the login: watch `LK`, gt06 0x01, jt808 0x0100, trv `IWAP00`.
    pub fn login(&mut self) -> Outgoing {
        match self.family {
            Family::Watch => Outgoing::acked(
                watch::keepalive(&self.id, 0, 0, 90),
                watch::expect("LK"),
                "login",
            ),
            Family::Gt06 => {
                let serial = self.next_serial();
                Outgoing::acked(
                    gt06::login(&self.id, serial),
                    gt06::expect(gt06::LOGIN, serial),
                    "login",
                )
            }
            Family::Jt808 => {
                let serial = self.next_serial();
                let reg = jt808::Register::simulator(&self.id);
                Outgoing::acked(
                    jt808::register(&self.id, serial, &reg),
                    jt808::expect(jt808::REGISTER, serial),
                    "register",
                )
            }
            Family::Trv => {
                let s = trv::login(&self.id);
                let expect = trv::expect_for(&s).expect("an IWAP sentence");
                Outgoing::acked(s, expect, "login")
            }
        }
    }

    /// The next login step once `sent` was acked by `reply`: the JT/T 808 authentication
    /// with the code from 0x8100; `None` when logged in.
    pub fn after_ack(&mut self, sent: &Outgoing, reply: &Reply) -> Option<Outgoing> {
        match (sent.expect, reply) {
            (Some(Expect::Jt808Register { .. }), Reply::Jt808 { body, .. }) => {
                let serial = self.next_serial();
                Some(Outgoing::acked(
                    jt808::auth(&self.id, serial, &body[3..]),
                    jt808::expect(jt808::AUTH, serial),
                    "auth",
                ))
            }
            _ => None,
        }
    }

    /// The keep-alive: watch `LK`, gt06 0x13, jt808 0x0002, trv `IWAP03`.
    pub fn keepalive(&mut self) -> Outgoing {
        match self.family {
            Family::Watch => Outgoing::acked(
                watch::keepalive(&self.id, 0, 0, 90),
                watch::expect("LK"),
                "keepalive",
            ),
            Family::Gt06 => {
                let serial = self.next_serial();
                Outgoing::acked(
                    gt06::heartbeat(gt06::Status::QUIET, serial),
                    gt06::expect(gt06::STATUS, serial),
                    "keepalive",
                )
            }
            Family::Jt808 => {
                let serial = self.next_serial();
                Outgoing::acked(
                    jt808::heartbeat(&self.id, serial),
                    jt808::expect(jt808::HEARTBEAT, serial),
                    "keepalive",
                )
            }
            Family::Trv => {
                let s = trv::heartbeat(trv::Radio::GOOD, 0, 0);
                let expect = trv::expect_for(&s).expect("an IWAP sentence");
                Outgoing::acked(s, expect, "keepalive")
            }
        }
    }

    /// One SOS alarm at `now`, at [`HOME`]: watch `AL` with status bit 16, gt06 0x16 with
    /// alarm byte 0x01, jt808 0x0200 with alarm bit 0, trv `IWAP10` with alarm code 01.
    pub fn sos(&mut self, now: DateTime<Utc>) -> Outgoing {
        let (lat, lon) = HOME;
        match self.family {
            Family::Watch => Outgoing::acked(
                watch::alarm(
                    &self.id,
                    &watch::Report::at(now, lat, lon, watch::STATUS_SOS),
                ),
                watch::expect("AL"),
                "sos",
            ),
            Family::Gt06 => {
                let serial = self.next_serial();
                let status = gt06::Status {
                    alarm: gt06::ALARM_SOS,
                    ..gt06::Status::QUIET
                };
                Outgoing::acked(
                    gt06::alarm(&gt06::Fix::at(now, lat, lon), status, serial),
                    gt06::expect(gt06::ALARM, serial),
                    "sos",
                )
            }
            Family::Jt808 => {
                let serial = self.next_serial();
                let loc = jt808::Location::at(now, lat, lon, jt808::ALARM_SOS);
                Outgoing::acked(
                    jt808::location(&self.id, serial, &loc),
                    jt808::expect(jt808::LOCATION, serial),
                    "sos",
                )
            }
            Family::Trv => {
                let s = trv::alarm(&trv::Fix::at(now, lat, lon), trv::ALARM_SOS, "zh-cn", None);
                let expect = trv::expect_for(&s).expect("an IWAP sentence");
                Outgoing::acked(s, expect, "sos")
            }
        }
    }

    /// Vital-sign readings: watch `heart,75` and `bphrt,120,80,75` (not acked by the
    /// protocol), trv `AP49`, `APHT`, `APHP` and `AP50` (each acked); gt06 and jt808 carry
    /// no vital signs, so a heartbeat.
    pub fn vitals(&mut self) -> Vec<Outgoing> {
        match self.family {
            Family::Watch => vec![
                Outgoing::text(watch::heart(&self.id, 75), "heart"),
                Outgoing::text(watch::bphrt(&self.id, 120, 80, 75), "bphrt"),
            ],
            Family::Trv => [
                (trv::heart_rate(75), "heart rate"),
                (trv::blood_pressure(75, 120, 80), "blood pressure"),
                (trv::health(75, 120, 80, 97, 90, 36.6), "health"),
                (trv::temperature(36.6, 90), "temperature"),
            ]
            .into_iter()
            .map(|(s, what)| {
                let expect = trv::expect_for(&s).expect("an IWAP sentence");
                Outgoing::acked(s, expect, what)
            })
            .collect(),
            Family::Gt06 | Family::Jt808 => vec![self.keepalive()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcd_pads_on_the_left() {
        assert_eq!(
            bcd_digits("123456789012345", 8),
            from_hex("0123456789012345").unwrap()
        );
        assert_eq!(
            bcd_digits("13511221122", 6),
            from_hex("013511221122").unwrap()
        );
    }

    #[test]
    fn soak_ids_have_the_family_shape() {
        for i in [0, 1, 9_999, 1_234_567] {
            let imei = Family::Gt06.soak_device_id(i);
            assert_eq!(imei.len(), 15);
            let check = luhn_check_digit(&imei[..14]);
            assert_eq!(imei.as_bytes()[14] - b'0', check as u8);
            assert_eq!(Family::Watch.soak_device_id(i).len(), 10);
            assert_eq!(Family::Jt808.soak_device_id(i).len(), 12);
            for f in [Family::Watch, Family::Gt06, Family::Jt808, Family::Trv] {
                f.check_device_id(&f.soak_device_id(i)).unwrap();
            }
        }
        assert_ne!(Family::Trv.soak_device_id(1), Family::Trv.soak_device_id(2));
        // A known IMEI: 49015420323751 → check digit 8.
        assert_eq!(luhn_check_digit("49015420323751"), 8);
    }

    #[test]
    fn device_ids_are_checked_per_family() {
        assert!(Family::Gt06.check_device_id("1234567890123456").is_ok());
        assert!(Family::Gt06.check_device_id("12345678901234567").is_err());
        assert!(Family::Gt06.check_device_id("12a").is_err());
        assert!(Family::Jt808.check_device_id("1234567890123").is_err());
        assert!(Family::Watch.check_device_id("abc*1").is_err());
        assert!(Family::Trv.check_device_id("").is_err());
    }

    #[test]
    fn jt808_login_is_register_then_auth_with_the_code() {
        let mut dev = Device::new(Family::Jt808, "13800000001");
        let reg = dev.login();
        assert_eq!(reg.expect, Some(Expect::Jt808Register { serial: 1 }));
        let reply = jt808::parse(&jt808::frame(
            jt808::REGISTER_RESPONSE,
            "013800000001",
            0,
            b"\x00\x01\x00code42",
        ));
        assert_eq!(reg.expect.unwrap().check(&reply, dev.id()), Match::Acked);
        let auth = dev.after_ack(&reg, &reply).unwrap();
        assert_eq!(auth.bytes, jt808::auth("13800000001", 2, b"code42"));
        let ok = jt808::parse(&jt808::frame(
            jt808::GENERAL_RESPONSE,
            "013800000001",
            1,
            b"\x00\x02\x01\x02\x00",
        ));
        assert_eq!(auth.expect.unwrap().check(&ok, dev.id()), Match::Acked);
        assert_eq!(dev.after_ack(&auth, &ok), None);
    }

    #[test]
    fn every_family_builds_every_message() {
        let now = Utc::now();
        for family in [Family::Watch, Family::Gt06, Family::Jt808, Family::Trv] {
            let mut dev = Device::new(family, family.soak_device_id(7));
            let frames = [dev.login(), dev.keepalive(), dev.sos(now)];
            for f in &frames {
                assert!(f.expect.is_some(), "{family:?} {}", f.what);
                // Each frame is one whole frame to the family's own splitter.
                let mut buf = f.bytes.clone();
                assert_eq!(family.split(&mut buf).as_ref(), Some(&f.bytes));
                assert!(buf.is_empty());
            }
            assert!(!dev.vitals().is_empty());
        }
    }
}
