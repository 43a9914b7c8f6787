//! GT06 (Concox/Jimi) binary packets, written from PROTOCOLS.md §3:
//! `78 78 | LEN | PROTO | content | SERIAL(2) | CRC(2) | 0D 0A`, where LEN counts PROTO
//! through CRC and the CRC-16/X-25 covers LEN through SERIAL. All integers are big-endian.
//!
//! The server acks login (0x01), status (0x13) and alarms (0x16) with the short echo
//! `78 78 05 <proto> <serial> <crc> 0D 0A`.

use chrono::{DateTime, Datelike, Timelike, Utc};
use crc::{CRC_16_IBM_SDLC, Crc};

use super::{Expect, Reply, bcd_digits};

/// CRC-16/X-25 (also called CRC-ITU or IBM-SDLC): reflected 0x1021, init and xorout 0xFFFF.
const X25: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_SDLC);

/// Login: 8-byte BCD IMEI.
pub const LOGIN: u8 = 0x01;
/// Status / heartbeat: terminal info, voltage level, GSM signal, alarm, language.
pub const STATUS: u8 = 0x13;
/// Alarm: GPS block, LBS block, status.
pub const ALARM: u8 = 0x16;

/// Alarm byte for SOS (PROTOCOLS.md §3, alarm byte table).
pub const ALARM_SOS: u8 = 0x01;

/// Packets larger than this are junk to a client reading server replies.
const MAX_PACKET: usize = 1024;

/// CRC-16/X-25 of `bytes`.
pub fn crc16(bytes: &[u8]) -> u16 {
    X25.checksum(bytes)
}

/// A short-header packet `78 78 LEN PROTO content SERIAL CRC 0D 0A`.
///
/// # Panics
/// When `content` is too long for the one-byte LEN (over 250 bytes); the simulator only
/// builds short fixed-layout packets.
pub fn packet(proto: u8, content: &[u8], serial: u16) -> Vec<u8> {
    let len = u8::try_from(1 + content.len() + 2 + 2).expect("GT06 short packet too long");
    let mut out = Vec::with_capacity(usize::from(len) + 5);
    out.extend_from_slice(&[0x78, 0x78, len, proto]);
    out.extend_from_slice(content);
    out.extend_from_slice(&serial.to_be_bytes());
    let crc = crc16(&out[2..]);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&[0x0D, 0x0A]);
    out
}

/// Login (0x01) with the IMEI as 8 BCD bytes (left-padded with zeros to 16 digits, so a
/// 15-digit IMEI gets the leading 0 nibble), without the optional type or time-zone words.
pub fn login(imei: &str, serial: u16) -> Vec<u8> {
    packet(LOGIN, &bcd_digits(imei, 8), serial)
}

/// The status fields shared by 0x13 and the alarm packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Terminal-info bits: 0 armed, 1 ACC, 2 charging, 3–5 alarm, 6 GPS tracking, 7 oil cut.
    pub terminal_info: u8,
    /// Voltage level 0–6.
    pub voltage: u8,
    /// GSM signal 0–4.
    pub gsm: u8,
    /// Alarm byte (0x01 SOS, 0x23 fall, …).
    pub alarm: u8,
    /// Language byte (0x01 Chinese, 0x02 English).
    pub language: u8,
}

impl Status {
    /// A quiet device: GPS tracking on, good battery and signal, no alarm, English.
    pub const QUIET: Status = Status {
        terminal_info: 0x40,
        voltage: 5,
        gsm: 4,
        alarm: 0,
        language: 0x02,
    };

    fn bytes(self) -> [u8; 5] {
        [
            self.terminal_info,
            self.voltage,
            self.gsm,
            self.alarm,
            self.language,
        ]
    }
}

/// Status / heartbeat (0x13).
pub fn heartbeat(status: Status, serial: u16) -> Vec<u8> {
    packet(STATUS, &status.bytes(), serial)
}

/// The GPS and LBS blocks of an alarm packet, as raw wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fix {
    /// `YY MM DD hh mm ss`, UTC.
    pub time: [u8; 6],
    /// GPS-info byte: length nibble (12) and satellite count nibble.
    pub gps_info: u8,
    /// Latitude in minutes × 30000 (degrees × 1 800 000).
    pub lat: u32,
    /// Longitude in minutes × 30000.
    pub lon: u32,
    /// km/h.
    pub speed: u8,
    /// Course 0–1023 plus flags: bit 10 north, bit 11 west, bit 12 GPS fixed, 14/15 ACC.
    pub course_status: u16,
    /// Mobile country code.
    pub mcc: u16,
    /// Mobile network code.
    pub mnc: u8,
    /// Location area code.
    pub lac: u16,
    /// Cell id (24 bits used).
    pub cid: u32,
}

impl Fix {
    /// A fixed position at `lat`/`lon` degrees with 9 satellites, at `time`, on China Mobile.
    pub fn at(time: DateTime<Utc>, lat: f64, lon: f64) -> Fix {
        let mut course_status = 1 << 12; // GPS fixed
        if lat >= 0.0 {
            course_status |= 1 << 10;
        }
        if lon < 0.0 {
            course_status |= 1 << 11;
        }
        Fix {
            time: [
                (time.year() % 100) as u8,
                time.month() as u8,
                time.day() as u8,
                time.hour() as u8,
                time.minute() as u8,
                time.second() as u8,
            ],
            gps_info: 0xC9,
            lat: (lat.abs() * 1_800_000.0).round() as u32,
            lon: (lon.abs() * 1_800_000.0).round() as u32,
            speed: 0,
            course_status,
            mcc: 460,
            mnc: 0,
            lac: 9365,
            cid: 4003,
        }
    }
}

/// Alarm packet (0x16): GPS block, LBS block with its self-counting length byte (9), status.
pub fn alarm(fix: &Fix, status: Status, serial: u16) -> Vec<u8> {
    let mut content = Vec::with_capacity(32);
    content.extend_from_slice(&fix.time);
    content.push(fix.gps_info);
    content.extend_from_slice(&fix.lat.to_be_bytes());
    content.extend_from_slice(&fix.lon.to_be_bytes());
    content.push(fix.speed);
    content.extend_from_slice(&fix.course_status.to_be_bytes());
    content.push(9);
    content.extend_from_slice(&fix.mcc.to_be_bytes());
    content.push(fix.mnc);
    content.extend_from_slice(&fix.lac.to_be_bytes());
    content.extend_from_slice(&fix.cid.to_be_bytes()[1..]);
    content.extend_from_slice(&status.bytes());
    packet(ALARM, &content, serial)
}

/// The reply that acks a packet of type `proto` numbered `serial`.
pub fn expect(proto: u8, serial: u16) -> Expect {
    Expect::Gt06 { proto, serial }
}

/// Takes the next packet (or leading junk) off the front of `buf`; `None` means more bytes
/// are needed. Packets are found by LEN when it lands on `0D 0A`, else at the next `0D 0A`.
pub fn split(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let start = buf
        .windows(2)
        .position(|w| w == [0x78, 0x78] || w == [0x79, 0x79]);
    match start {
        Some(0) => {}
        Some(n) => return Some(buf.drain(..n).collect()),
        None if buf.len() > 1 => {
            // Keep a trailing 0x78/0x79 that may begin the next header.
            let keep = usize::from(matches!(buf.last(), Some(0x78 | 0x79)));
            let n = buf.len() - keep;
            return Some(buf.drain(..n).collect());
        }
        None => return None,
    }
    let extended = buf[0] == 0x79;
    let header = if extended { 4 } else { 3 };
    if buf.len() < header {
        return None;
    }
    let len = if extended {
        usize::from(u16::from_be_bytes([buf[2], buf[3]]))
    } else {
        usize::from(buf[2])
    };
    let total = header + len + 2;
    if buf.len() >= total && buf[total - 2..total] == [0x0D, 0x0A] {
        return Some(buf.drain(..total).collect());
    }
    if buf.len() >= total || buf.len() > MAX_PACKET {
        // LEN does not land on the terminator: fall back to the next 0D 0A.
        if let Some(end) = buf[header..].windows(2).position(|w| w == [0x0D, 0x0A]) {
            return Some(buf.drain(..header + end + 2).collect());
        }
        if buf.len() > MAX_PACKET {
            return Some(std::mem::take(buf));
        }
    }
    None
}

/// Parses one packet from the server.
pub fn parse(frame: &[u8]) -> Reply {
    let extended = frame.starts_with(&[0x79, 0x79]);
    if !(frame.starts_with(&[0x78, 0x78]) || extended) {
        return Reply::Malformed("not a 78 78 / 79 79 packet".into());
    }
    let header = if extended { 4 } else { 3 };
    if frame.len() < header + 5 + 2 || !frame.ends_with(&[0x0D, 0x0A]) {
        return Reply::Malformed("GT06 packet too short or without 0D 0A".into());
    }
    let len = if extended {
        usize::from(u16::from_be_bytes([frame[2], frame[3]]))
    } else {
        usize::from(frame[2])
    };
    // PROTO .. CRC as found (LEN may lie, as in the WiFi acks).
    let body = &frame[header..frame.len() - 2];
    let n = body.len();
    let serial = u16::from_be_bytes([body[n - 4], body[n - 3]]);
    let crc = u16::from_be_bytes([body[n - 2], body[n - 1]]);
    let computed = crc16(&frame[2..frame.len() - 4]);
    let mut problems = Vec::new();
    if len != n {
        problems.push(format!("LEN {len} but {n} bytes from PROTO to CRC"));
    }
    if crc != computed {
        problems.push(format!("bad CRC {crc:04x}, expected {computed:04x}"));
    }
    Reply::Gt06 {
        proto: body[0],
        serial,
        content: body[1..n - 4].to_vec(),
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::{Expect, Match};

    fn hex(s: &str) -> Vec<u8> {
        super::super::from_hex(s).unwrap()
    }

    #[test]
    fn crc_is_x25() {
        // PROTOCOLS.md §3: "for 05 01 00 01 it gives D9 DC".
        assert_eq!(crc16(&[0x05, 0x01, 0x00, 0x01]), 0xD9DC);
        // The standard check value of CRC-16/X-25.
        assert_eq!(crc16(b"123456789"), 0x906E);
    }

    #[test]
    fn login_matches_traccar_vector() {
        // gt06.json, Gt06ProtocolDecoderTest: login of IMEI 123456789012345, serial 1.
        assert_eq!(
            login("123456789012345", 1),
            hex("78780d01012345678901234500018cdd0d0a")
        );
        assert_eq!(
            login("353419036066061", 3),
            hex("78780d0103534190360660610003c3df0d0a")
        );
    }

    #[test]
    fn heartbeat_matches_traccar_vector() {
        // gt06.json: `78780a13440604000201baaf540d0a`.
        let status = Status {
            terminal_info: 0x44,
            voltage: 6,
            gsm: 4,
            alarm: 0,
            language: 2,
        };
        assert_eq!(
            heartbeat(status, 0x01ba),
            hex("78780a13440604000201baaf540d0a")
        );
    }

    #[test]
    fn alarm_matches_traccar_vector() {
        // gt06.json: a 0x16 alarm with alarm byte 0x02, serial 0x0067.
        let fix = Fix {
            time: [0x10, 0x05, 0x1b, 0x0f, 0x1c, 0x34],
            gps_info: 0xc5,
            lat: 0x022515d5,
            lon: 0x04b5dcd2,
            speed: 0x07,
            course_status: 0x3808,
            mcc: 0x02d4,
            mnc: 0x02,
            lac: 0x2bdf,
            cid: 0x009cba,
        };
        let status = Status {
            terminal_info: 0x50,
            voltage: 0x06,
            gsm: 0x64,
            alarm: 0x02,
            language: 0x01,
        };
        assert_eq!(
            alarm(&fix, status, 0x0067),
            hex(
                "7878251610051b0f1c34c5022515d504b5dcd20738080902d4022bdf009cba5006640201006759680d0a"
            )
        );
    }

    #[test]
    fn sos_fix_encodes_position_and_flags() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-03-05T08:15:30Z")
            .unwrap()
            .with_timezone(&Utc);
        let fix = Fix::at(t, 31.230416, 121.473701);
        assert_eq!(fix.time, [26, 3, 5, 8, 15, 30]);
        assert_eq!(fix.lat, 56_214_749);
        assert_eq!(fix.lon, 218_652_662);
        assert_eq!(fix.course_status, 0x1400);
        let frame = alarm(
            &fix,
            Status {
                alarm: ALARM_SOS,
                ..Status::QUIET
            },
            7,
        );
        assert_eq!(frame.len(), 42);
        assert_eq!(frame[2], 0x25);
        assert_eq!(frame[3], ALARM);
        assert_eq!(frame[3 + 1 + 18], 9, "LBS length byte");
        assert_eq!(frame[3 + 1 + 27 + 3], ALARM_SOS);
        let Reply::Gt06 {
            proto,
            serial,
            problem,
            ..
        } = parse(&frame)
        else {
            panic!("own frame does not parse");
        };
        assert_eq!((proto, serial, problem), (ALARM, 7, None));
    }

    #[test]
    fn short_echo_is_an_ack() {
        // PROTOCOLS.md §3: the login with serial 9 is answered `78 78 05 01 00 09 55 94 0D 0A`.
        let reply = parse(&hex("78780501000955940d0a"));
        assert_eq!(expect(LOGIN, 9).check(&reply, "x"), Match::Acked);
        assert_eq!(expect(LOGIN, 8).check(&reply, "x"), Match::No);
        assert_eq!(expect(STATUS, 9).check(&reply, "x"), Match::No);
        // One bit off in the CRC: not an ack.
        let bad = parse(&hex("78780501000955950d0a"));
        assert!(matches!(
            bad,
            Reply::Gt06 {
                problem: Some(_),
                ..
            }
        ));
        assert_eq!(expect(LOGIN, 9).check(&bad, "x"), Match::No);
        assert!(matches!(
            Expect::Gt06 {
                proto: 1,
                serial: 9
            },
            Expect::Gt06 { .. }
        ));
    }

    #[test]
    fn split_finds_packets_in_a_stream() {
        let mut buf = hex("ff78780501000955940d0a78780513000a");
        assert_eq!(split(&mut buf), Some(vec![0xff]));
        assert_eq!(split(&mut buf), Some(hex("78780501000955940d0a")));
        assert_eq!(split(&mut buf), None);
        buf.extend_from_slice(&hex("11220d0a"));
        assert_eq!(split(&mut buf), Some(hex("78780513000a11220d0a")));
        assert!(buf.is_empty());
        // A WiFi ack whose LEN is 0: found by its terminator.
        let mut buf = hex("7878001726030508151e0d0a");
        assert_eq!(split(&mut buf), Some(hex("7878001726030508151e0d0a")));
    }
}
