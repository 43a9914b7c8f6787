//! The GT06 / Concox-Jimi binary family (`78 78` / `79 79`): SOS pendants and personal
//! trackers (PROTOCOLS.md §3; family notes, ack bytes and the alarm table in
//! `protocols/gt06/README.md`).
//!
//! Frame: `78 78 LEN PROTO content SERIAL(2) CRC(2) 0D 0A`, or `79 79 LEN(2) …` for the
//! extended form. LEN counts PROTO through CRC; the CRC is CRC-16/X-25 over LEN through
//! SERIAL. Real devices get both wrong (33 of Traccar's 196 frames fail the CRC), so the
//! framer trusts LEN only when it lands on `0D 0A` and the decoder reports a CRC mismatch but
//! still decodes the frame: an SOS with a bad checksum is still an SOS.
//!
//! Alarms come from two places in one frame, and both are reported (PROTOCOLS.md §1, "Every
//! alarm, not one"): the terminal-info byte (bits 3–5) and the alarm byte. In explicit alarm
//! packets (0x16, 0x26, 0x27, 0x19, 0xA4, 0xA5, 0x95, 0xA9, 0x70) they are events; in periodic
//! status reports (0x13, 0x23, 0x36, status-carrying positions) they are levels, raised on the
//! rising edge and then reported `still_active` (`Session::active_levels`).
//!
//! A connection must log in (0x01, BCD IMEI) first: the other frames do not name the device.
//! A frame before login yields no events and no ack, so the device sends it again once it has
//! logged in, instead of an alarm being acked and attributed to nobody.

use bytes::{Buf, BytesMut};
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{Ctx, FrameOutput, Framer, RawFrame, Session};
use crate::event::{DedupKey, EventType, Flaw};

/// The family name (CONTRACT.md, 4G TCP listeners).
const FAMILY: &str = "gt06";

/// Largest frame accepted, markers and `0D 0A` included.
///
/// A `78 78` frame whose LEN is right is at most 2 + 1 + 255 + 2 = 260 bytes, and the largest
/// frame among Traccar's 196 GT06 vectors is 291 bytes (a `79 79` frame). The only legitimate
/// larger frames are Wi-Fi reports with more than ~130 access points (0x17/0x69, where LEN
/// counts access points, PROTOCOLS.md §3) and X1 photo chunks (out of scope). 1 KiB keeps
/// every home-care frame with room to spare while bounding what one connection can make the
/// server buffer.
pub const MAX_FRAME: usize = 1024;

/// Start of a frame with a 1-byte LEN (PROTOCOLS.md §3, Framing).
const SHORT_START: [u8; 2] = [0x78, 0x78];
/// Start of an extended frame with a 2-byte LEN (PROTOCOLS.md §3, Framing).
const LONG_START: [u8; 2] = [0x79, 0x79];
/// End of every frame (PROTOCOLS.md §3, Framing).
const STOP: [u8; 2] = [0x0D, 0x0A];
/// The smallest LEN of a frame: PROTO, SERIAL and CRC, which LEN counts (PROTOCOLS.md §3,
/// Framing). Devices send a LEN that is off (Traccar's vectors), but never one below this; a
/// frame that claims it is no frame and gets no ack. Not for the Wi-Fi types, whose LEN
/// counts access points.
const MIN_LEN: usize = 1 + 2 + 2;

/// CRC-16/X-25, "CRC-ITU": reflected 0x1021, init and xor-out 0xFFFF (PROTOCOLS.md §3). The
/// catalogue names it `CRC_16_IBM_SDLC`.
const X25: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_SDLC);

/// Coordinates are in units of 1/30000 minute (PROTOCOLS.md §3, GPS block).
const UNITS_PER_DEGREE: f64 = 30_000.0 * 60.0;

/// At most this many list entries go into a position (`event.rs`, `wifi`/`cells` max_items).
const MAX_LIST: usize = 64;

/// Protocol numbers (PROTOCOLS.md §3; names follow Traccar's `Gt06ProtocolDecoder`).
mod msg {
    pub const LOGIN: u8 = 0x01;
    pub const GPS: u8 = 0x10;
    /// GPS + LBS with a 2-byte MNC and 4-byte cell id.
    pub const GPS_LBS_6: u8 = 0x11;
    pub const GPS_LBS_1: u8 = 0x12;
    pub const STATUS: u8 = 0x13;
    pub const STRING: u8 = 0x15;
    pub const GPS_LBS_STATUS_1: u8 = 0x16;
    /// Wi-Fi (LEN counts access points), or GPS + LBS + RFID when LEN is a length.
    pub const WIFI: u8 = 0x17;
    pub const LBS_EXTEND: u8 = 0x18;
    pub const LBS_STATUS: u8 = 0x19;
    pub const GPS_PHONE: u8 = 0x1A;
    pub const GPS_LBS_EXTEND: u8 = 0x1E;
    pub const STRING_INFO: u8 = 0x21;
    pub const GPS_LBS_2: u8 = 0x22;
    pub const HEARTBEAT: u8 = 0x23;
    pub const LBS_MULTIPLE_3: u8 = 0x24;
    pub const GPS_LBS_STATUS_2: u8 = 0x26;
    pub const GPS_LBS_STATUS_3: u8 = 0x27;
    pub const LBS_MULTIPLE_1: u8 = 0x28;
    pub const ADDRESS_REQUEST: u8 = 0x2A;
    pub const LBS_WIFI: u8 = 0x2C;
    pub const GPS_LBS_4: u8 = 0x2D;
    pub const LBS_MULTIPLE_2: u8 = 0x2E;
    pub const GPS_LBS_5: u8 = 0x31;
    pub const AZ735_GPS: u8 = 0x32;
    pub const AZ735_ALARM: u8 = 0x33;
    /// Jimi 4G status: the 0x13 layout followed by type-length-value modules.
    pub const STATUS_2: u8 = 0x36;
    pub const GPS_LBS_3: u8 = 0x37;
    pub const GPS_LBS_8: u8 = 0x38;
    pub const MULTIMEDIA: u8 = 0x41;
    pub const WIFI_2: u8 = 0x69;
    pub const GPS_MODULAR: u8 = 0x70;
    pub const COMMAND_0: u8 = 0x80;
    pub const COMMAND_2: u8 = 0x82;
    pub const TIME_REQUEST: u8 = 0x8A;
    pub const INFO: u8 = 0x94;
    pub const ALARM: u8 = 0x95;
    pub const ADDRESS_RESPONSE: u8 = 0x97;
    pub const GPS_2: u8 = 0xA0;
    pub const LBS_2: u8 = 0xA1;
    pub const WIFI_3: u8 = 0xA2;
    pub const FENCE_MULTI: u8 = 0xA4;
    pub const LBS_ALARM: u8 = 0xA5;
    pub const WIFI_ALARM: u8 = 0xA9;
    pub const WIFI_4: u8 = 0xF3;
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

/// Splits a GT06 byte stream into frames (PROTOCOLS.md §3, Framing).
///
/// A frame ends where LEN says when that lands on `0D 0A` (for the Wi-Fi types 0x17/0x69,
/// where LEN counts access points, where their fixed layout says); otherwise at the next
/// `0D 0A`. Bytes before a start marker are skipped as `junk`; a start marker with no end
/// within [`MAX_FRAME`] bytes is skipped as `oversized`; a frame cut short by the start of a
/// complete, checksummed frame is skipped as `bad_length`, so the frame after it (perhaps an
/// SOS) is not swallowed.
///
/// Pure, total and bounded: any input yields frames, skips or "need more", never a panic, and
/// after a call that returns `None` the buffer holds fewer than [`MAX_FRAME`] bytes.
#[derive(Debug, Default)]
pub struct Gt06Framer {
    _stateless: (),
}

impl Framer for Gt06Framer {
    fn next_frame(&mut self, buf: &mut BytesMut) -> Option<RawFrame> {
        match scan(buf) {
            Step::Frame(n) => Some(RawFrame::Frame(buf.split_to(n).freeze())),
            Step::Skip(n, reason) => {
                buf.advance(n);
                Some(RawFrame::Skipped { bytes: n, reason })
            }
            Step::NeedMore => None,
        }
    }
}

/// What the front of the buffer holds.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// A frame of this many bytes.
    Frame(usize),
    /// This many bytes to drop, and why.
    Skip(usize, &'static str),
    /// Not enough bytes yet.
    NeedMore,
}

/// How many candidate frame starts one call examines inside a frame whose LEN is wrong: each
/// costs a CRC, and junk full of `78 78` must not make the framer quadratic.
const MAX_INNER_STARTS: usize = 8;

fn is_start(b: &[u8], i: usize) -> bool {
    matches!(b.get(i..i + 2), Some(s) if s == SHORT_START || s == LONG_START)
}

fn find_start(b: &[u8], from: usize) -> Option<usize> {
    (from..b.len().saturating_sub(1)).find(|&i| is_start(b, i))
}

fn scan(b: &[u8]) -> Step {
    match find_start(b, 0) {
        Some(0) => {}
        Some(n) => return Step::Skip(n, "junk"),
        None => {
            // Keep a trailing 0x78/0x79: the second byte of a start marker may be in flight.
            let keep = usize::from(matches!(b.last(), Some(0x78 | 0x79)));
            let n = b.len() - keep;
            return if n == 0 {
                Step::NeedMore
            } else {
                Step::Skip(n, "junk")
            };
        }
    }
    let (ends, pending) = match known_ends(b) {
        Known::NeedMore => return Step::NeedMore,
        Known::Ends(ends, pending) => (ends, pending),
    };
    if let Some(&e) = ends
        .iter()
        .flatten()
        .find(|&&e| e <= b.len() && ends_at(b, e))
    {
        return Step::Frame(e);
    }
    // LEN (or the Wi-Fi layout) is wrong or not yet complete: look for the next `0D 0A`.
    let hdr = header_len(b);
    let limit = b.len().min(MAX_FRAME);
    let mut inner_starts = 0;
    for i in hdr + 1..limit.saturating_sub(1) {
        if is_start(b, i) && inner_starts < MAX_INNER_STARTS {
            inner_starts += 1;
            if complete_frame_at(&b[i..]) {
                // The frame here is cut short by a whole, checksummed frame: drop the stub.
                return Step::Skip(i, "bad_length");
            }
        }
        if b[i..i + 2] == STOP {
            let e = i + 2;
            // While LEN may still be right (its end is not here yet), an early `0D 0A` may sit
            // inside the content: take it only if it checks out, is followed by the next
            // frame, or ends what has arrived (a device whose LEN is too long, like Traccar's
            // short login vector, would otherwise wait for its next frame to be answered) —
            // except in the types that carry text, where a `\r\n` inside is expected.
            let at_end = e == b.len() && !carries_text(b[hdr]);
            if !pending || at_end || crc_ok(&b[..e]) || matches!(b.get(e), Some(0x78 | 0x79)) {
                return Step::Frame(e);
            }
        }
    }
    if b.len() >= MAX_FRAME {
        let n = find_start(b, 1)
            .unwrap_or(b.len() - usize::from(matches!(b.last(), Some(0x78 | 0x79))));
        return Step::Skip(n.max(1), "oversized");
    }
    Step::NeedMore
}

/// Types whose content is text that may hold `\r\n` (PROTOCOLS.md §3: command answers 0x15 and
/// 0x21, information 0x94; Traccar's vectors: serial data 0x9B, OBD 0x8C, 0x65, 0x66).
fn carries_text(proto: u8) -> bool {
    matches!(
        proto,
        msg::STRING | msg::STRING_INFO | msg::INFO | 0x9B | 0x8C | 0x65 | 0x66
    )
}

/// Candidate frame ends for the frame at the front of `b`.
enum Known {
    /// The header is not complete yet.
    NeedMore,
    /// Candidate ends in order of preference, and whether one of them lies beyond what has
    /// arrived (so an early `0D 0A` may be content).
    Ends([Option<usize>; 2], bool),
}

fn header_len(b: &[u8]) -> usize {
    if b.first() == Some(&LONG_START[0]) {
        4
    } else {
        3
    }
}

fn known_ends(b: &[u8]) -> Known {
    let long = b.first() == Some(&LONG_START[0]);
    let hdr = header_len(b);
    let Some(&proto) = b.get(hdr) else {
        return Known::NeedMore;
    };
    let declared = if long {
        usize::from(u16::from_be_bytes([b[2], b[3]])) + 6
    } else {
        usize::from(b[2]) + 5
    };
    let mut pending = false;
    let mut ends = [None, None];
    if !long && matches!(proto, msg::WIFI | msg::WIFI_2) {
        match wifi_len(b) {
            Layout::Len(e) if e <= MAX_FRAME => {
                pending |= e > b.len();
                ends[0] = Some(e);
            }
            Layout::Incomplete => pending = true,
            Layout::Len(_) | Layout::Impossible => {}
        }
    }
    // The shortest real frame has PROTO and the stop bytes after the header.
    if (hdr + 3..=MAX_FRAME).contains(&declared) {
        pending |= declared > b.len();
        ends[1] = Some(declared);
    }
    Known::Ends(ends, pending)
}

/// What the fixed Wi-Fi layout says about a frame's length.
enum Layout {
    /// The frame is this long.
    Len(usize),
    /// The bytes that decide it have not arrived.
    Incomplete,
    /// It cannot be this layout within [`MAX_FRAME`].
    Impossible,
}

/// Length of a 0x17/0x69 Wi-Fi frame from its layout (PROTOCOLS.md §3, "WiFi and LBS types"):
/// header, PROTO, 6 time bytes, LEN × (MAC 6 + RSSI 1), cell count N, MCC 2, MNC 1,
/// N × (LAC 2 + CI 2 + RSSI 1), `0D 0A`. No serial, no CRC.
fn wifi_len(b: &[u8]) -> Layout {
    let aps = usize::from(b[2]);
    let count_at = 4 + 6 + aps * 7;
    if count_at + 4 + 2 > MAX_FRAME {
        return Layout::Impossible;
    }
    match b.get(count_at) {
        Some(&cells) => Layout::Len(count_at + 1 + 3 + usize::from(cells) * 5 + 2),
        None => Layout::Incomplete,
    }
}

fn ends_at(b: &[u8], e: usize) -> bool {
    e >= 2 && b.get(e - 2..e) == Some(&STOP[..])
}

/// Whether `b` starts with a whole frame that proves itself: its end lands on `0D 0A` and its
/// CRC checks (or, for Wi-Fi, its layout fits exactly).
fn complete_frame_at(b: &[u8]) -> bool {
    let Known::Ends(ends, _) = known_ends(b) else {
        return false;
    };
    match ends {
        [Some(e), _] if e <= b.len() && ends_at(b, e) => true,
        [_, Some(e)] if e <= b.len() && ends_at(b, e) => crc_ok(&b[..e]),
        _ => false,
    }
}

/// Whether a frame (`0D 0A` included) carries the CRC of its LEN..SERIAL bytes.
fn crc_ok(frame: &[u8]) -> bool {
    frame.len() >= 2 + 1 + 1 + 4 + 2 && {
        let end = frame.len() - 2;
        X25.checksum(&frame[2..end - 2]).to_be_bytes() == frame[end - 2..end]
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// One frame cut into its parts.
struct Split<'a> {
    long: bool,
    /// The LEN field as sent.
    len_field: usize,
    proto: u8,
    /// Everything after PROTO, up to the stop bytes.
    body: &'a [u8],
    /// `body` without serial and CRC (the last 4 bytes, counted from the frame's end as
    /// Traccar does, because LEN is not always right).
    content: &'a [u8],
    serial: Option<u16>,
    /// `(sent, computed)` when the CRC does not match.
    crc_mismatch: Option<(u16, u16)>,
    /// The whole frame, for the dedup hash.
    raw: &'a [u8],
    /// A 0x17/0x69 Wi-Fi layout, whose LEN counts access points.
    wifi: bool,
}

fn split(frame: &[u8]) -> Option<Split<'_>> {
    let long = frame.starts_with(&LONG_START);
    if !long && !frame.starts_with(&SHORT_START) {
        return None;
    }
    let hdr = if long { 4 } else { 3 };
    let end = if frame.ends_with(&STOP) && frame.len() > hdr + 2 {
        frame.len() - 2
    } else {
        frame.len()
    };
    let proto = *frame.get(hdr)?;
    let len_field = if long {
        usize::from(u16::from_be_bytes([frame[2], frame[3]]))
    } else {
        usize::from(frame[2])
    };
    let body = &frame[hdr + 1..end];
    let wifi = !long && is_wifi_layout(frame, proto);
    let (content, serial, crc_mismatch) = if wifi || body.len() < 4 {
        (body, None, None)
    } else {
        let n = body.len();
        let serial = u16::from_be_bytes([body[n - 4], body[n - 3]]);
        let sent = u16::from_be_bytes([body[n - 2], body[n - 1]]);
        let computed = X25.checksum(&frame[2..end - 2]);
        let mismatch = (sent != computed).then_some((sent, computed));
        (&body[..n - 4], Some(serial), mismatch)
    };
    Some(Split {
        long,
        len_field,
        proto,
        body,
        content,
        serial,
        crc_mismatch,
        raw: frame,
        wifi,
    })
}

/// A 0x69 frame is always Wi-Fi; a 0x17 one is Wi-Fi unless LEN is a real length (Traccar's
/// GPS + LBS + RFID variant).
fn is_wifi_layout(frame: &[u8], proto: u8) -> bool {
    match proto {
        msg::WIFI_2 => true,
        msg::WIFI => match wifi_len(frame) {
            Layout::Len(e) if e == frame.len() => true,
            _ => usize::from(frame[2]) + 5 != frame.len(),
        },
        _ => false,
    }
}

/// A bounds-checked big-endian reader: every read past the end is `None`, so no input can
/// make the decoder panic.
struct Rd<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Rd<'a> {
    fn new(b: &'a [u8]) -> Self {
        Rd { b, at: 0 }
    }

    fn left(&self) -> usize {
        self.b.len().saturating_sub(self.at)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn uint(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0, |acc, &x| acc << 8 | u64::from(x)),
        )
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.uint(2).and_then(|v| u16::try_from(v).ok())
    }

    fn u32(&mut self) -> Option<u32> {
        self.uint(4).and_then(|v| u32::try_from(v).ok())
    }
}

/// Where an alarm flag was carried: named in the README's alarm table and in
/// [`AlarmFlag::origin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Terminal-info byte, bits 3–5, with this value.
    Info(u8),
    /// The alarm byte (first byte of the alarm/language word), with this code.
    Byte(u8),
    /// The event code of a 0x95 JC-series alarm.
    Jc(u8),
    /// Event module 0x2B of a 0x70 modular report.
    Modular(u8),
    /// A 0xA9 Wi-Fi alarm, whose layout is unknown.
    WifiAlarm,
    /// An alarm packet of this type that ends before its status or event code.
    Unreadable(u8),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Info(v) => write!(f, "terminal-info bits 3-5 = {v:03b}"),
            Origin::Byte(c) => write!(f, "alarm byte 0x{c:02X}"),
            Origin::Jc(c) => write!(f, "0x95 event 0x{c:02X}"),
            Origin::Modular(c) => write!(f, "0x70 module 0x2B event 0x{c:02X}"),
            Origin::WifiAlarm => f.write_str("0xA9 Wi-Fi alarm frame (layout unknown)"),
            Origin::Unreadable(t) => {
                write!(f, "0x{t:02X} alarm packet cut short before its status")
            }
        }
    }
}

/// One alarm flag of a frame.
struct Flag {
    ty: EventType,
    fields: Map<String, Value>,
    origin: Origin,
}

/// One alarm flag of a frame and where it was carried (for explanations and the conformance
/// report; [`decode`] turns the same flags into events).
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmFlag {
    /// The anxin event type the flag maps to.
    pub event_type: EventType,
    /// Its fields (`state`, `level` or `code`).
    pub fields: Map<String, Value>,
    /// The byte or bits that carried it, e.g. `alarm byte 0x01`.
    pub origin: String,
}

/// The alarm flags in `frame`, with where each was carried; no session, no levels.
pub fn alarm_flags(frame: &[u8]) -> Vec<AlarmFlag> {
    let Some(f) = split(frame) else {
        return Vec::new();
    };
    parse(&f, None)
        .flags
        .into_iter()
        .map(|fl| AlarmFlag {
            event_type: fl.ty,
            fields: fl.fields,
            origin: fl.origin.to_string(),
        })
        .collect()
}

/// The answer a frame needs (PROTOCOLS.md §3, "What the server must answer").
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// No answer.
    #[default]
    None,
    /// `78 78 05 <type> <serial> <crc> 0D 0A`, always with the short header.
    Echo(u8),
    /// The same with the `79 79` header (AZ735 0x32/0x33, multimedia 0x41).
    EchoLong(u8),
    /// `78 78 00 <type> <6 time bytes> 0D 0A` (Wi-Fi 0x17/0x69).
    Wifi(u8, [u8; 6]),
    /// 0x8A with the receive time in UTC.
    Time,
    /// Extended 0x97 with `NA&&NA&&0##` (address request 0x2A).
    Address,
}

/// A GPS block (PROTOCOLS.md §3, GPS block).
#[derive(Debug, Clone, Copy)]
struct Gps {
    time: Option<DateTime<Utc>>,
    /// The time bytes as sent, when they are no date.
    bad_time: Option<[u8; 6]>,
    lat: f64,
    lon: f64,
    valid: bool,
    speed_kmh: Option<u16>,
    course: u16,
    satellites: Option<u8>,
    altitude: Option<i16>,
}

impl Gps {
    /// A fix worth reporting: in range, and not the all-zero block of a device without a fix.
    fn usable(&self) -> bool {
        self.lat.abs() <= 90.0
            && self.lon.abs() <= 180.0
            && !(self.lat == 0.0 && self.lon == 0.0 && !self.valid)
    }
}

/// What a frame says, before session state (levels) and event construction.
#[derive(Default)]
struct Parsed {
    time: Option<DateTime<Utc>>,
    /// Time bytes outside a GPS block that are no date, as sent.
    bad_time: Option<Vec<u8>>,
    gps: Option<Gps>,
    cells: Vec<Value>,
    wifi: Vec<Value>,
    percent: Option<u32>,
    voltage: Option<f64>,
    /// Emit a `heartbeat` (keep-alive frames).
    heartbeat: bool,
    /// Status alarms here are levels (periodic reports), not events (alarm packets).
    periodic: bool,
    /// Terminal-info bits 3–5, when the frame has a terminal-info byte.
    info: Option<u8>,
    /// The alarm byte, when the frame has one.
    alarm_byte: Option<u8>,
    flags: Vec<Flag>,
    reply: Reply,
    reply_now: bool,
    problem: Option<(&'static str, String)>,
}

impl Parsed {
    fn fail(&mut self, reason: &'static str, detail: impl Into<String>) {
        self.problem.get_or_insert((reason, detail.into()));
    }

    /// `time`, read from `raw`; bytes that are no date are kept for the flaw.
    fn note_time(&mut self, raw: &[u8], time: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        if time.is_none() {
            self.bad_time = Some(raw.to_vec());
        }
        time
    }

    fn truncated(&mut self, what: &str) {
        self.fail("truncated", format!("frame ends inside the {what}"));
    }

    fn flag(&mut self, origin: Origin, mapped: Option<(EventType, Map<String, Value>)>) {
        if let Some((ty, fields)) = mapped {
            self.flags.push(Flag { ty, fields, origin });
        }
    }

    /// The terminal-info byte (PROTOCOLS.md §3, Heartbeat and status). `vxt01`: the
    /// vehicle layout where value 7 means overspeed, not removal (Traccar's VXT01 variant).
    fn info_byte(&mut self, byte: u8, vxt01: bool) {
        let value = (byte >> 3) & 0b111;
        self.info = Some(value);
        self.flag(Origin::Info(value), info_alarm(value, vxt01));
    }

    fn alarm_code(&mut self, code: u8) {
        self.alarm_byte = Some(code);
        self.flag(Origin::Byte(code), byte_alarm(code));
    }

    fn level_percent(&mut self, level: u8) {
        self.percent = level_percent(level);
    }
}

fn fields<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn state(ty: EventType, key: &str, value: &str) -> Option<(EventType, Map<String, Value>)> {
    Some((ty, fields([(key, json!(value))])))
}

fn code(text: String) -> Option<(EventType, Map<String, Value>)> {
    Some((EventType::Alarm, fields([("code", json!(text))])))
}

/// Terminal-info bits 3–5 (PROTOCOLS.md §3): 010 power cut, 011 low battery, 100 SOS,
/// 111 removal; the rest (vibration, geofence, undefined values) are kept as coded alarms.
fn info_alarm(value: u8, vxt01: bool) -> Option<(EventType, Map<String, Value>)> {
    match value {
        0 => None,
        2 => state(EventType::Power, "state", "lost"),
        3 => state(EventType::Battery, "level", "low"),
        4 => Some((EventType::Sos, Map::new())),
        7 if !vxt01 => state(EventType::Removal, "state", "removed"),
        v => code(format!("gt06:info:{v}")),
    }
}

/// The alarm byte (PROTOCOLS.md §3 table, plus the codes newer Traccar maps: 0x0C/0x25
/// tampering, 0x18 removing). Codes anxin has no type for are kept as coded alarms.
fn byte_alarm(c: u8) -> Option<(EventType, Map<String, Value>)> {
    match c {
        0x00 => None,
        0x01 => Some((EventType::Sos, Map::new())),
        0x02 | 0x11 => state(EventType::Power, "state", "lost"),
        0x0E | 0x0F | 0x19 => state(EventType::Battery, "level", "low"),
        0x0C | 0x13 | 0x25 => Some((EventType::Tamper, Map::new())),
        0x18 => state(EventType::Removal, "state", "removed"),
        0x23 => Some((EventType::Fall, Map::new())),
        c => code(format!("gt06:0x{c:02x}")),
    }
}

/// 0x95 event codes (Traccar's JC100/JC400 table): 0x01 is SOS when the packet has a GPS
/// block and Traccar's "general" alarm otherwise.
fn jc_alarm(c: u8, with_gps: bool) -> Option<(EventType, Map<String, Value>)> {
    match c {
        0x00 => None,
        0x01 if with_gps => Some((EventType::Sos, Map::new())),
        0x0E => state(EventType::Battery, "level", "low"),
        0x88 => state(EventType::Power, "state", "lost"),
        c => code(format!("gt06:95:0x{c:02x}")),
    }
}

/// Module 0x2B of a 0x70 report is the report's reason; only these reasons are alarms
/// (Traccar: 0x11 low battery, 0x12 low power, 0x13 power cut, 0x14 removal).
fn modular_alarm(c: u8) -> Option<(EventType, Map<String, Value>)> {
    match c {
        0x11 | 0x12 => state(EventType::Battery, "level", "low"),
        0x13 => state(EventType::Power, "state", "lost"),
        0x14 => state(EventType::Removal, "state", "removed"),
        _ => None,
    }
}

/// Voltage level 0–6 → percent ×100/6; 7–100 is a percent already (PROTOCOLS.md §3).
fn level_percent(level: u8) -> Option<u32> {
    match level {
        0..=6 => Some(u32::from(level) * 100 / 6),
        7..=100 => Some(u32::from(level)),
        _ => None,
    }
}

/// A device clock reading: local time in `tz` when the session has one, else UTC. An
/// impossible date gives `None`: the frame is still decoded (PROTOCOLS.md §1, device clocks).
fn to_utc(parts: [u8; 6], tz: Option<FixedOffset>) -> Option<DateTime<Utc>> {
    let [y, mo, d, h, mi, s] = parts.map(u32::from);
    let naive =
        NaiveDate::from_ymd_opt(2000 + i32::try_from(y).ok()?, mo, d)?.and_hms_opt(h, mi, s)?;
    local_to_utc(naive, tz)
}

fn local_to_utc(naive: NaiveDateTime, tz: Option<FixedOffset>) -> Option<DateTime<Utc>> {
    match tz {
        Some(off) => off
            .from_local_datetime(&naive)
            .single()
            .map(|t| t.with_timezone(&Utc)),
        None => Some(Utc.from_utc_datetime(&naive)),
    }
}

fn binary_time(b: &[u8], tz: Option<FixedOffset>) -> Option<DateTime<Utc>> {
    to_utc(b.try_into().ok()?, tz)
}

/// The Wi-Fi types' time is BCD (`16 04 13` = 2016-04-13).
fn bcd_time(b: &[u8], tz: Option<FixedOffset>) -> Option<DateTime<Utc>> {
    let mut parts = [0u8; 6];
    for (p, &x) in parts.iter_mut().zip(b.get(..6)?) {
        if x >> 4 > 9 || x & 0x0F > 9 {
            return None;
        }
        *p = (x >> 4) * 10 + (x & 0x0F);
    }
    to_utc(parts, tz)
}

/// How a GPS block is laid out.
#[derive(Clone, Copy)]
struct GpsFmt {
    satellites: bool,
    speed: Speed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Speed {
    None,
    U8,
    /// JC400: course/status word first, then a 2-byte speed.
    U16AfterFlags,
}

const GPS_STD: GpsFmt = GpsFmt {
    satellites: true,
    speed: Speed::U8,
};

/// The GPS block (PROTOCOLS.md §3): time, GPS-info/satellites, lat, lon, speed, course/status
/// (bits 0–9 course, 10 north, 11 west, 12 fixed).
fn read_gps(r: &mut Rd, tz: Option<FixedOffset>, fmt: GpsFmt) -> Option<Gps> {
    let raw = r.take(6)?;
    let time = binary_time(raw, tz);
    let satellites = if fmt.satellites {
        Some(r.u8()? & 0x0F)
    } else {
        None
    };
    let lat = f64::from(r.u32()?) / UNITS_PER_DEGREE;
    let lon = f64::from(r.u32()?) / UNITS_PER_DEGREE;
    let (speed_kmh, flags) = match fmt.speed {
        Speed::None => (None, r.u16()?),
        Speed::U8 => (Some(u16::from(r.u8()?)), r.u16()?),
        Speed::U16AfterFlags => {
            let flags = r.u16()?;
            (Some(r.u16()?), flags)
        }
    };
    let mut g = gps_from(time, lat, lon, flags, speed_kmh, satellites, None);
    if time.is_none() {
        g.bad_time = raw.try_into().ok();
    }
    Some(g)
}

fn gps_from(
    time: Option<DateTime<Utc>>,
    lat: f64,
    lon: f64,
    flags: u16,
    speed_kmh: Option<u16>,
    satellites: Option<u8>,
    altitude: Option<i16>,
) -> Gps {
    Gps {
        time,
        bad_time: None,
        lat: if flags & 0x0400 != 0 { lat } else { -lat },
        lon: if flags & 0x0800 != 0 { -lon } else { lon },
        valid: flags & 0x1000 != 0,
        speed_kmh,
        course: flags & 0x03FF,
        satellites,
        altitude,
    }
}

/// Cell id and LAC widths of an LBS block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CellFmt {
    /// LAC 2, CI 3 (2G/3G).
    Gsm,
    /// LAC 2, CI 4 (0x11, and 0x16 with LEN 0x26: Traccar's SEEWORLD).
    Ci32,
    /// LAC 4, CI 8 (the 4G types, PROTOCOLS.md §3, LBS block).
    Lte,
}

impl CellFmt {
    fn widths(self) -> (usize, usize) {
        match self {
            CellFmt::Gsm => (2, 3),
            CellFmt::Ci32 => (2, 4),
            CellFmt::Lte => (4, 8),
        }
    }
}

fn cell(mcc: u16, mnc: u64, lac: u64, cid: u64) -> Option<Value> {
    (cid != 0).then(|| json!({"mcc": mcc & 0x7FFF, "mnc": mnc, "lac": lac, "cid": cid}))
}

/// MCC, MNC (2 bytes when MCC bit 15 is set or `wide_mnc`), LAC, CI.
fn read_cell(r: &mut Rd, fmt: CellFmt, wide_mnc: bool) -> Option<Option<Value>> {
    let mcc = r.u16()?;
    let mnc = r.uint(if mcc & 0x8000 != 0 || wide_mnc { 2 } else { 1 })?;
    let (lac_w, cid_w) = fmt.widths();
    let lac = r.uint(lac_w)?;
    let cid = r.uint(cid_w)?;
    Some(cell(mcc, mnc, lac, cid))
}

/// An LBS block led by a length byte that counts itself (the status/alarm types, PROTOCOLS.md
/// §3). A block of 16 bytes or more is the 4G layout. Length 0 means no LBS, except that
/// Traccar skips 45 bytes when the 36 after the first 9 are all zero (a zero-filled block).
fn read_sized_lbs(p: &mut Parsed, r: &mut Rd, fmt: CellFmt) -> Option<()> {
    let start = r.at;
    let len = usize::from(r.u8()?);
    if len == 0 {
        let zeroed = r.b[(start + 1 + 9).min(r.b.len())..(start + 1 + 45).min(r.b.len())]
            .iter()
            .all(|&x| x == 0);
        if zeroed {
            r.at = (start + 1 + 45).min(r.b.len());
        }
        return Some(());
    }
    let fmt = if len >= 16 { CellFmt::Lte } else { fmt };
    if let Some(c) = read_cell(r, fmt, false)? {
        p.cells.push(c);
    }
    r.at = r.at.max(start + len);
    (r.at <= r.b.len()).then_some(())
}

/// Terminal info, voltage level, GSM signal, alarm byte, language (PROTOCOLS.md §3).
fn read_status(p: &mut Parsed, r: &mut Rd, vxt01: bool) -> Option<()> {
    p.info_byte(r.u8()?, vxt01);
    let level = r.u8()?;
    let _gsm = r.u8()?;
    if vxt01 {
        // Traccar's VXT01 layout ends with an "alarm extension" it does not decode, and its
        // second byte is not a battery level.
        return Some(());
    }
    p.level_percent(level);
    p.alarm_code(r.u8()?);
    Some(())
}

fn wifi_entry(mac: &[u8], rssi: Option<u8>) -> Value {
    let mac = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    match rssi {
        Some(rssi) => json!({"mac": mac, "rssi": rssi}),
        None => json!({"mac": mac}),
    }
}

/// Parses a frame (after the login check) into what it says.
fn parse(f: &Split, tz: Option<FixedOffset>) -> Parsed {
    let mut p = Parsed::default();
    let c = f.content;
    let mut r = Rd::new(c);
    let echo = Reply::Echo(f.proto);
    match (f.long, f.proto) {
        (false, msg::STATUS) => {
            status_13(&mut p, c);
            heartbeat_reply(&mut p, f.proto);
        }
        (false, msg::HEARTBEAT) => {
            heartbeat_23(&mut p, c);
            heartbeat_reply(&mut p, f.proto);
        }
        (false, msg::STATUS_2) => {
            if status_36(&mut p, c) {
                heartbeat_reply(&mut p, f.proto);
            } else {
                p.fail("unsupported", "0x36 without the Jimi 4G module layout");
                p.reply = echo;
            }
        }
        (
            false,
            msg::GPS
            | msg::GPS_LBS_6
            | msg::GPS_LBS_1
            | msg::GPS_PHONE
            | msg::GPS_LBS_EXTEND
            | msg::GPS_LBS_2
            | msg::GPS_LBS_4
            | msg::GPS_LBS_5
            | msg::GPS_LBS_3
            | msg::GPS_2,
        ) => {
            gps_position(&mut p, f, tz);
            p.reply = echo;
        }
        (_, msg::GPS_LBS_8) => {
            // PROTOCOLS.md §3: a position type that gets no answer.
            p.periodic = true;
            match read_gps(&mut Rd::new(f.body), tz, GPS_STD) {
                Some(g) => p.gps = Some(g),
                None => p.truncated("GPS block"),
            }
        }
        (false, msg::WIFI) if f.serial.is_some() => {
            // LEN is a real length: Traccar's GPS + LBS + RFID variant.
            gps_position(&mut p, f, tz);
            p.reply = echo;
        }
        (false, msg::WIFI | msg::WIFI_2) => wifi(&mut p, f, tz),
        (false, msg::GPS_LBS_STATUS_1 | msg::GPS_LBS_STATUS_2 | msg::GPS_LBS_STATUS_3)
        | (false, msg::FENCE_MULTI) => {
            gps_status(&mut p, f, tz);
            p.reply = echo;
        }
        (false, msg::LBS_STATUS) => {
            lbs_status(&mut p, f, &mut r);
            p.reply = echo;
        }
        (false, msg::LBS_ALARM) => {
            if read_cell(&mut r, CellFmt::Lte, false)
                .map(|c| p.cells.extend(c))
                .and_then(|()| read_status(&mut p, &mut r, false))
                .is_none()
            {
                p.truncated("LBS alarm");
            }
            p.reply = echo;
        }
        (false, msg::ALARM) => {
            jc_alarm_packet(&mut p, c, tz);
            p.reply = echo;
        }
        (false, msg::WIFI_ALARM) => {
            wifi_alarm(&mut p, c, tz);
            p.reply = echo;
        }
        (false, msg::LBS_MULTIPLE_1 | msg::LBS_MULTIPLE_2 | msg::LBS_EXTEND) => {
            lbs_multi(&mut p, &mut r, tz, MultiFmt::GSM);
            p.reply = echo;
        }
        (false, msg::LBS_MULTIPLE_3) => {
            lbs_24(&mut p, f, tz);
            p.reply = echo;
        }
        (false, msg::LBS_WIFI) => {
            lbs_multi(
                &mut p,
                &mut r,
                tz,
                MultiFmt {
                    wifi: true,
                    ..MultiFmt::GSM
                },
            );
            p.reply = echo;
        }
        (false, msg::LBS_2) => {
            lbs_multi(&mut p, &mut r, tz, MultiFmt::LTE);
            p.reply = echo;
        }
        (false, msg::WIFI_3) if f.len_field == 0x40 => {
            lw4g_status(&mut p, f, tz);
            p.reply = echo;
        }
        (false, msg::WIFI_3) => {
            lbs_multi(
                &mut p,
                &mut r,
                tz,
                MultiFmt {
                    wifi: true,
                    ..MultiFmt::LTE
                },
            );
            p.reply = echo;
        }
        (false, msg::WIFI_4) => wifi_4(&mut p, c),
        (true, msg::GPS_MODULAR) => {
            modular(&mut p, c);
            // Traccar answers with the short header.
            p.reply = echo;
        }
        (_, msg::TIME_REQUEST) => {
            p.reply = Reply::Time;
            p.reply_now = true;
        }
        (_, msg::ADDRESS_REQUEST) => p.reply = Reply::Address,
        (false, msg::STRING) => p.reply = echo,
        (_, msg::INFO | msg::STRING_INFO) => {}
        (false, msg::COMMAND_0..=msg::COMMAND_2) => {}
        (true, msg::AZ735_GPS | msg::AZ735_ALARM | msg::MULTIMEDIA) => {
            p.fail("unsupported", format!("extended type 0x{:02x}", f.proto));
            p.reply = Reply::EchoLong(f.proto);
        }
        (false, other) => {
            // PROTOCOLS.md §3: any unrecognised short-header type is acked.
            p.fail("unsupported", format!("type 0x{other:02x}"));
            p.reply = echo;
        }
        (true, other) => p.fail("unsupported", format!("extended type 0x{other:02x}")),
    }
    if p.time.is_none() {
        p.time = p.gps.and_then(|g| g.time);
    }
    p
}

fn heartbeat_reply(p: &mut Parsed, proto: u8) {
    p.heartbeat = true;
    p.periodic = true;
    p.reply = Reply::Echo(proto);
    p.reply_now = true;
}

/// 0x13: terminal info, voltage level, GSM, alarm byte, language (PROTOCOLS.md §3). Two
/// longer layouts Traccar recognises by length put a battery percent at offset 5: 14 bytes
/// (its OBD6) and 16 bytes (with satellites and temperature); the alarm byte is at offset 3 in
/// all three.
fn status_13(p: &mut Parsed, c: &[u8]) {
    let Some(&info) = c.first() else {
        p.truncated("status");
        return;
    };
    p.info_byte(info, false);
    match c.len() {
        14 | 16 => p.percent = c.get(5).copied().filter(|&v| v <= 100).map(u32::from),
        _ => {
            if let Some(&level) = c.get(1) {
                p.level_percent(level);
            }
        }
    }
    match c.get(3) {
        Some(&alarm) => p.alarm_code(alarm),
        None => p.truncated("status"),
    }
}

/// 0x23: terminal info, battery volts ×100 (2 bytes), GSM, language (PROTOCOLS.md §3).
fn heartbeat_23(p: &mut Parsed, c: &[u8]) {
    let mut r = Rd::new(c);
    let Some(info) = r.u8() else {
        p.truncated("heartbeat");
        return;
    };
    p.info_byte(info, false);
    if let Some(v) = r.u16() {
        p.voltage = Some(f64::from(v) / 100.0);
    }
}

/// 0x36 (Jimi 4G status): the 0x13 layout, language, then modules `type(2) len(1) value`;
/// 0x0018 battery volts ×100, 0x006A battery percent. Only taken when the modules fill the
/// content exactly: other devices use 0x36 for something else.
fn status_36(p: &mut Parsed, c: &[u8]) -> bool {
    let mut r = Rd::new(c);
    let Some(head) = r.take(5) else {
        return false;
    };
    let mut modules = Vec::new();
    while r.left() > 0 {
        let (Some(ty), Some(len)) = (r.u16(), r.u8()) else {
            return false;
        };
        let Some(value) = r.take(usize::from(len)) else {
            return false;
        };
        modules.push((ty, value));
    }
    p.info_byte(head[0], false);
    p.level_percent(head[1]);
    p.alarm_code(head[3]);
    for (ty, value) in modules {
        match (ty, value) {
            (0x0018, [hi, lo, ..]) => {
                p.voltage = Some(f64::from(u16::from_be_bytes([*hi, *lo])) / 100.0);
            }
            (0x006A, [pct, ..]) if *pct <= 100 => p.percent = Some(u32::from(*pct)),
            _ => {}
        }
    }
    true
}

/// GPS positions: the GPS block, then (except 0x10, 0x1A, 0x1E) an LBS block without a length
/// byte. 0x12 with LEN 0x24 or 0x2B (Traccar's VXT01 and S5) adds a status tail, read as
/// levels: these are periodic reports.
fn gps_position(p: &mut Parsed, f: &Split, tz: Option<FixedOffset>) {
    // Traccar reads the GPS block without bounds; one real 0x11 frame's block runs into the
    // serial, so the block may use the whole body. What follows it may not.
    let mut r = Rd::new(f.body);
    match read_gps(&mut r, tz, GPS_STD) {
        Some(g) => p.gps = Some(g),
        None => {
            p.truncated("GPS block");
            return;
        }
    }
    let (fmt, wide_mnc) = match f.proto {
        msg::GPS | msg::GPS_PHONE | msg::GPS_LBS_EXTEND => return,
        msg::GPS_LBS_6 => (CellFmt::Ci32, true),
        msg::GPS_2 => (CellFmt::Lte, false),
        msg::GPS_LBS_5 if f.len_field == 0x2A => (CellFmt::Lte, true),
        _ => (CellFmt::Gsm, false),
    };
    let mut r = Rd {
        b: f.content,
        at: r.at,
    };
    if r.left() == 0 {
        return;
    }
    match read_cell(&mut r, fmt, wide_mnc) {
        Some(c) => p.cells.extend(c),
        None => return,
    }
    if f.proto == msg::GPS_LBS_1 && matches!(f.len_field, 0x24 | 0x2B) {
        p.periodic = true;
        let vxt01 = f.len_field == 0x24;
        let Some(info) = r.u8() else { return };
        p.info_byte(info, vxt01);
        // power (2 bytes), GSM signal, then the S5 alarm byte.
        if !vxt01
            && r.take(3).is_some()
            && let Some(alarm) = r.u8()
        {
            p.alarm_code(alarm);
        }
    }
}

/// 0x16, 0x26, 0x27, 0xA4: GPS block, sized LBS block, status (PROTOCOLS.md §3). 0x16 with
/// LEN 0x24 has no LBS length byte (Traccar's VXT01); with LEN 0x26 its cell id has 4 bytes
/// (SEEWORLD).
fn gps_status(p: &mut Parsed, f: &Split, tz: Option<FixedOffset>) {
    let mut r = Rd::new(f.content);
    let vxt01 = f.proto == msg::GPS_LBS_STATUS_1 && f.len_field == 0x24;
    let fmt = if f.proto == msg::GPS_LBS_STATUS_1 && f.len_field == 0x26 {
        CellFmt::Ci32
    } else {
        CellFmt::Gsm
    };
    match read_gps(&mut r, tz, GPS_STD) {
        Some(g) => p.gps = Some(g),
        None => return p.truncated("GPS block"),
    }
    let lbs = if vxt01 {
        read_cell(&mut r, fmt, false).map(|c| p.cells.extend(c))
    } else {
        read_sized_lbs(p, &mut r, fmt)
    };
    if lbs.is_none() || read_status(p, &mut r, vxt01).is_none() {
        p.truncated("status");
    }
}

/// 0x19: LBS block without length byte, then status. With LEN 0x17 or more it is Traccar's
/// SPACE10X multi-cell report, which carries no status: nothing is decoded from it.
fn lbs_status(p: &mut Parsed, f: &Split, r: &mut Rd) {
    if f.len_field >= 0x17 {
        p.fail("unsupported", "0x19 multi-cell layout (LEN >= 0x17)");
        return;
    }
    if read_cell(r, CellFmt::Gsm, false)
        .map(|c| p.cells.extend(c))
        .and_then(|()| read_status(p, r, false))
        .is_none()
    {
        p.truncated("LBS status");
    }
}

/// 0xA2 with LEN 0x40 (Traccar's LW4G): GPS, 4G cell, network type, status, external power
/// (2 bytes), battery level, GSM, alarm byte. A periodic report: levels.
fn lw4g_status(p: &mut Parsed, f: &Split, tz: Option<FixedOffset>) {
    let mut r = Rd::new(f.content);
    p.periodic = true;
    let ok = (|| {
        p.gps = Some(read_gps(&mut r, tz, GPS_STD)?);
        p.cells.extend(read_cell(&mut r, CellFmt::Lte, false)?);
        let _network = r.u8()?;
        p.info_byte(r.u8()?, false);
        let _power = r.u16()?;
        p.level_percent(r.u8()?);
        let _gsm = r.u8()?;
        p.alarm_code(r.u8()?);
        Some(())
    })();
    if ok.is_none() {
        p.truncated("LW4G status");
    }
}

/// 0x95 (JC-series alarm): time and event code, or with a GPS block (content over 7 bytes);
/// JC400 frames start `FF FF <version>` and use satellites and a 2-byte speed, then external
/// power (2 bytes) before the event.
fn jc_alarm_packet(p: &mut Parsed, c: &[u8], tz: Option<FixedOffset>) {
    let mut r = Rd::new(c);
    let with_gps = c.len() > 7;
    let ok = (|| {
        if !with_gps {
            let raw = r.take(6)?;
            p.time = p.note_time(raw, binary_time(raw, tz));
        } else if c.starts_with(&[0xFF, 0xFF]) {
            r.take(3)?;
            let fmt = GpsFmt {
                satellites: true,
                speed: Speed::U16AfterFlags,
            };
            p.gps = Some(read_gps(&mut r, tz, fmt)?);
            let _power = r.u16()?;
        } else {
            let fmt = GpsFmt {
                satellites: false,
                speed: Speed::None,
            };
            p.gps = Some(read_gps(&mut r, tz, fmt)?);
        }
        let event = r.u8()?;
        p.flag(Origin::Jc(event), jc_alarm(event, with_gps));
        Some(())
    })();
    if ok.is_none() {
        p.truncated("0x95 alarm");
    }
}

/// 0xA9 (Wi-Fi alarm): PROTOCOLS.md names it but gives no layout, and Traccar has no test
/// frame. Guessing where its alarm byte sits could turn a language byte (0x01 = Chinese) into
/// an SOS, so the frame is reported as what it certainly is: an alarm, coded `gt06:0xa9`, for
/// an operator to look at **[verify per vendor]**. The leading 6 bytes are read as its time
/// when they form a date.
fn wifi_alarm(p: &mut Parsed, c: &[u8], tz: Option<FixedOffset>) {
    if let Some(raw) = c.get(..6) {
        p.time = p.note_time(raw, binary_time(raw, tz));
    }
    p.flag(Origin::WifiAlarm, code("gt06:0xa9".into()));
}

/// 0x17/0x69 Wi-Fi: BCD time, LEN × (MAC, RSSI), cell count, MCC, MNC, cells (LAC 2, CI 2,
/// RSSI). Answered with `78 78 00 <type> <time> 0D 0A`.
fn wifi(p: &mut Parsed, f: &Split, tz: Option<FixedOffset>) {
    let mut r = Rd::new(f.body);
    let Some(time) = r.take(6) else {
        p.truncated("Wi-Fi time");
        return;
    };
    p.time = p.note_time(time, bcd_time(time, tz));
    let mut t = [0u8; 6];
    t.copy_from_slice(time);
    p.reply = Reply::Wifi(f.proto, t);
    let ok = (|| {
        for _ in 0..f.len_field {
            let mac = r.take(6)?;
            let rssi = r.u8()?;
            p.wifi.push(wifi_entry(mac, Some(rssi)));
        }
        let cells = r.u8()?;
        let mcc = r.u16()?;
        let mnc = r.u8()?;
        for _ in 0..cells {
            let lac = r.u16()?;
            let cid = r.u16()?;
            let _rssi = r.u8()?;
            p.cells
                .extend(cell(mcc, u64::from(mnc), u64::from(lac), u64::from(cid)));
        }
        Some(())
    })();
    if ok.is_none() {
        p.truncated("Wi-Fi list");
    }
}

/// 0xF3 (Wi-Fi, no answer): time, count, count × (2 bytes, MAC).
fn wifi_4(p: &mut Parsed, c: &[u8]) {
    let mut r = Rd::new(c);
    let ok = (|| {
        // The one real frame has a binary time (month 0x0C), unlike 0x17/0x69.
        let raw = r.take(6)?;
        p.time = p.note_time(raw, binary_time(raw, None));
        for _ in 0..r.u8()? {
            r.take(2)?;
            p.wifi.push(wifi_entry(r.take(6)?, None));
        }
        Some(())
    })();
    if ok.is_none() {
        p.truncated("Wi-Fi list");
    }
}

/// Layout of the multi-cell LBS reports.
#[derive(Clone, Copy)]
struct MultiFmt {
    cells: CellFmt,
    /// A timing-advance byte before MCC and a cell count (Traccar's WANWAY_S20), instead of
    /// seven cells and the timing advance after them.
    wanway: bool,
    wifi: bool,
}

impl MultiFmt {
    const GSM: MultiFmt = MultiFmt {
        cells: CellFmt::Gsm,
        wanway: false,
        wifi: false,
    };
    const LTE: MultiFmt = MultiFmt {
        cells: CellFmt::Lte,
        wanway: false,
        wifi: false,
    };
}

/// 0x28, 0x2E, 0x18, 0x24 (multiple cells), 0x2C (+ Wi-Fi), 0xA1 (4G), 0xA2 (4G + Wi-Fi):
/// time, MCC, MNC, 7 × (LAC, CI, RSSI), timing advance, [Wi-Fi count, Wi-Fi].
fn lbs_multi(p: &mut Parsed, r: &mut Rd, tz: Option<FixedOffset>, fmt: MultiFmt) {
    let ok = (|| {
        let raw = r.take(6)?;
        p.time = p.note_time(raw, binary_time(raw, tz));
        if fmt.wanway {
            let _ta = r.u8()?;
        }
        let mcc = r.u16()?;
        let mnc = r.uint(if mcc & 0x8000 != 0 { 2 } else { 1 })?;
        let count = if fmt.wanway { r.u8()? } else { 7 };
        let (lac_w, cid_w) = fmt.cells.widths();
        for _ in 0..count {
            let lac = r.uint(lac_w)?;
            let cid = r.uint(cid_w)?;
            let _rssi = r.u8()?;
            if lac != 0 {
                p.cells.extend(cell(mcc, mnc, lac, cid));
            }
        }
        if fmt.wifi {
            let _ta = r.u8()?;
            for _ in 0..r.u8()? {
                let mac = r.take(6)?;
                p.wifi.push(wifi_entry(mac, Some(r.u8()?)));
            }
        }
        Some(())
    })();
    if ok.is_none() {
        p.truncated("cell list");
    }
}

/// 0x24: LEN 0x2E is a GPS report (Traccar's SR411_MINI), LEN 0x31 the WANWAY_S20 cell
/// layout, anything else the standard multi-cell layout.
fn lbs_24(p: &mut Parsed, f: &Split, tz: Option<FixedOffset>) {
    let mut r = Rd::new(f.content);
    match f.len_field {
        0x2E => {
            p.gps = read_gps(&mut r, tz, GPS_STD);
            if let Some(c) = p.gps.and_then(|_| read_cell(&mut r, CellFmt::Gsm, false)) {
                p.cells.extend(c);
            }
        }
        0x31 => lbs_multi(
            p,
            &mut r,
            tz,
            MultiFmt {
                wanway: true,
                ..MultiFmt::GSM
            },
        ),
        _ => lbs_multi(p, &mut r, tz, MultiFmt::GSM),
    }
}

/// 0x70 (modular report, extended header): modules `type(2) len(2) value`. 0x33 GPS (Unix
/// time, satellites, altitude, lat, lon, speed, course/status), 0x11 cell, 0x18 battery volts
/// ×100, 0x2B report reason (some reasons are alarms). A report with nothing anxin models is
/// still a sign of life: it becomes a heartbeat.
fn modular(p: &mut Parsed, c: &[u8]) {
    let mut r = Rd::new(c);
    while r.left() > 0 {
        let (Some(ty), Some(len)) = (r.u16(), r.u16()) else {
            p.truncated("module header");
            break;
        };
        let Some(value) = r.take(usize::from(len)) else {
            p.truncated("module");
            break;
        };
        let mut v = Rd::new(value);
        match ty {
            0x33 => {
                let g = (|| {
                    let secs = v.u32()?;
                    let satellites = v.u8()?;
                    let altitude = i16::from_be_bytes(v.take(2)?.try_into().ok()?);
                    let lat = f64::from(v.u32()?) / UNITS_PER_DEGREE;
                    let lon = f64::from(v.u32()?) / UNITS_PER_DEGREE;
                    let speed = v.u8()?;
                    let flags = v.u16()?;
                    let time = (secs != 0)
                        .then(|| DateTime::<Utc>::from_timestamp(i64::from(secs), 0))
                        .flatten();
                    Some(gps_from(
                        time,
                        lat,
                        lon,
                        flags,
                        Some(u16::from(speed)),
                        Some(satellites),
                        Some(altitude),
                    ))
                })();
                p.gps = g;
            }
            0x11 => {
                let c = (|| {
                    let mcc = v.u16()?;
                    let mnc = v.uint(2)?;
                    let lac = v.uint(2)?;
                    let cid = v.uint(3)?;
                    cell(mcc, mnc, lac, cid)
                })();
                p.cells.extend(c);
            }
            0x18 => {
                if let Some(volts) = v.u16() {
                    p.voltage = Some(f64::from(volts) / 100.0);
                }
            }
            0x2B => {
                if let Some(reason) = v.u8() {
                    p.flag(Origin::Modular(reason), modular_alarm(reason));
                }
            }
            _ => {}
        }
    }
    let usable_gps = p.gps.is_some_and(|g| g.usable());
    if p.flags.is_empty() && !usable_gps && p.cells.is_empty() && p.voltage.is_none() {
        p.heartbeat = true;
    }
}

/// The position fields: a GPS fix when there is a usable one (with the raw cells and Wi-Fi
/// alongside), else the raw Wi-Fi access points and cells for a later lookup.
fn position_fields(p: &Parsed) -> Option<Map<String, Value>> {
    let mut m = Map::new();
    match p.gps.filter(Gps::usable) {
        Some(g) => {
            m.insert("lat".into(), json!(g.lat));
            m.insert("lon".into(), json!(g.lon));
            m.insert("source".into(), json!("gps"));
            m.insert("valid".into(), json!(g.valid));
            if let Some(s) = g.speed_kmh {
                m.insert("speed_kmh".into(), json!(s));
            }
            if g.course <= 360 {
                m.insert("course_deg".into(), json!(g.course));
            }
            if let Some(s) = g.satellites {
                m.insert("satellites".into(), json!(s));
            }
            if let Some(a) = g.altitude.filter(|a| (-1000..=20000).contains(a)) {
                m.insert("altitude_m".into(), json!(a));
            }
        }
        None if !p.wifi.is_empty() => {
            m.insert("source".into(), json!("wifi"));
        }
        None if !p.cells.is_empty() => {
            m.insert("source".into(), json!("lbs"));
        }
        None => return None,
    }
    if !p.wifi.is_empty() {
        m.insert(
            "wifi".into(),
            Value::Array(p.wifi.iter().take(MAX_LIST).cloned().collect()),
        );
    }
    if !p.cells.is_empty() {
        m.insert(
            "cells".into(),
            Value::Array(p.cells.iter().take(MAX_LIST).cloned().collect()),
        );
    }
    Some(m)
}

/// A whole reply frame: header, LEN, PROTO, content, serial, CRC-16/X-25 over LEN..serial,
/// `0D 0A` (PROTOCOLS.md §3).
fn packet(long: bool, proto: u8, content: &[u8], serial: u16) -> Vec<u8> {
    let len = 1 + content.len() + 2 + 2;
    let mut v = Vec::with_capacity(len + 6);
    if long {
        v.extend_from_slice(&LONG_START);
        v.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    } else {
        v.extend_from_slice(&SHORT_START);
        v.push(u8::try_from(len).unwrap_or(u8::MAX));
    }
    v.push(proto);
    v.extend_from_slice(content);
    v.extend_from_slice(&serial.to_be_bytes());
    let crc = X25.checksum(&v[2..]);
    v.extend_from_slice(&crc.to_be_bytes());
    v.extend_from_slice(&STOP);
    v
}

fn reply_bytes(reply: Reply, serial: Option<u16>, now: DateTime<Utc>) -> Option<Vec<u8>> {
    match reply {
        Reply::None => None,
        Reply::Echo(proto) => Some(packet(false, proto, &[], serial?)),
        Reply::EchoLong(proto) => Some(packet(true, proto, &[], serial?)),
        Reply::Wifi(proto, time) => {
            let mut v = Vec::with_capacity(12);
            v.extend_from_slice(&SHORT_START);
            v.push(0);
            v.push(proto);
            v.extend_from_slice(&time);
            v.extend_from_slice(&STOP);
            Some(v)
        }
        Reply::Time => {
            // Traccar answers with serial 0.
            let t = [
                u8::try_from(now.year() - 2000).unwrap_or(0),
                now.month() as u8,
                now.day() as u8,
                now.hour() as u8,
                now.minute() as u8,
                now.second() as u8,
            ];
            Some(packet(false, msg::TIME_REQUEST, &t, 0))
        }
        Reply::Address => {
            let text = b"NA&&NA&&0##";
            let mut content = Vec::with_capacity(5 + text.len());
            content.push(text.len() as u8);
            content.extend_from_slice(&[0, 0, 0, 0]);
            content.extend_from_slice(text);
            Some(packet(true, msg::ADDRESS_RESPONSE, &content, 0))
        }
    }
}

fn failed(reason: &'static str, detail: String) -> FrameOutput {
    FrameOutput {
        error: Some((reason, detail)),
        ..Default::default()
    }
}

fn crc_error(f: &Split) -> Option<(&'static str, String)> {
    f.crc_mismatch
        .map(|(sent, computed)| ("crc", format!("CRC {sent:04X}, computed {computed:04X}")))
}

/// Login (0x01): 8-byte BCD IMEI (first nibble 0), type code, and on 4G firmware a time-zone
/// word: top 12 bits the offset ×100 (800 = UTC+8), bit 3 set for west (PROTOCOLS.md §3).
/// Answered at once with the short echo.
fn login(f: &Split, session: &mut Session) -> FrameOutput {
    let Some(bcd) = f.body.get(..8) else {
        return failed("truncated", "login shorter than its IMEI".into());
    };
    let digits: String = bcd.iter().map(|b| format!("{b:02x}")).collect();
    if !digits.bytes().all(|d| d.is_ascii_digit()) {
        return failed("bad_imei", format!("IMEI bytes {digits} are not BCD"));
    }
    // A 16th digit is kept if the device sends one: only a leading 0 nibble is padding.
    let imei = digits.strip_prefix('0').unwrap_or(&digits).to_owned();
    if session.device_id.as_deref() != Some(imei.as_str()) {
        session.active_levels = 0;
    }
    session.device_id = Some(imei);
    // A time zone configured for the device wins over the one it announces.
    if session.tz.is_none() {
        session.tz = f.content.get(10..12).and_then(|w| {
            let word = u16::from_be_bytes([w[0], w[1]]);
            let hm = i32::from(word >> 4);
            let (h, m) = (hm / 100, hm % 100);
            let secs = (h * 60 + m) * 60;
            let secs = if word & 0x08 != 0 { -secs } else { secs };
            (m < 60).then(|| FixedOffset::east_opt(secs)).flatten()
        });
    }
    FrameOutput {
        events: Vec::new(),
        reply: reply_bytes(
            Reply::Echo(msg::LOGIN),
            f.serial,
            DateTime::<Utc>::UNIX_EPOCH,
        ),
        reply_now: true,
        error: crc_error(f),
    }
}

/// Bits of `Session::active_levels` this family uses: bits 0–7 hold the terminal-info alarm
/// value one-hot (bit `v` for value `v`), bits 8–15 the last alarm byte.
const INFO_LEVELS: u64 = 0xFF;
const BYTE_LEVEL_SHIFT: u32 = 8;

/// Decodes one GT06 frame (as returned by [`Gt06Framer`]).
///
/// Alarms become events with `still_active` set for a level repeated in a periodic report;
/// the position, battery and keep-alive follow. A CRC mismatch is reported as `("crc", …)` but
/// the frame is decoded all the same. Before a login nothing is decoded or answered
/// (`no_login`).
pub fn decode(frame: &[u8], session: &mut Session, ctx: &Ctx) -> FrameOutput {
    let Some(f) = split(frame) else {
        return failed("bad_frame", "no 78 78 / 79 79 frame".into());
    };
    if !f.wifi && f.len_field < MIN_LEN {
        return failed(
            "bad_length",
            format!(
                "LEN {} is less than the {MIN_LEN} bytes of type, serial and CRC it counts",
                f.len_field
            ),
        );
    }
    if f.proto == msg::LOGIN && !f.long {
        return login(&f, session);
    }
    let Some(device) = session.device_id.clone() else {
        return failed(
            "no_login",
            format!(
                "type 0x{:02x} before login; not acked so the device resends it",
                f.proto
            ),
        );
    };
    let mut p = parse(&f, session.tz);
    let flaws = unreadable_alarm(&mut p, &f);

    // Levels: compare with the previous report, then remember this one's.
    let prev_info = session.active_levels & INFO_LEVELS;
    let prev_byte = (session.active_levels >> BYTE_LEVEL_SHIFT) & 0xFF;
    let mut alarms: Vec<(EventType, Map<String, Value>, bool)> = Vec::new();
    for fl in &p.flags {
        let still = p.periodic
            && match fl.origin {
                Origin::Info(v) => prev_info & (1 << v) != 0,
                Origin::Byte(c) => prev_byte == u64::from(c),
                _ => false,
            };
        // The same fact from the info bits and the alarm byte is one event, new if either is.
        match alarms
            .iter_mut()
            .find(|(ty, fields, _)| *ty == fl.ty && *fields == fl.fields)
        {
            Some(existing) => existing.2 &= still,
            None => alarms.push((fl.ty, fl.fields.clone(), still)),
        }
    }
    if let Some(v) = p.info {
        let bit = if v == 0 { 0 } else { 1 << v };
        session.active_levels = (session.active_levels & !INFO_LEVELS) | bit;
    }
    if let Some(c) = p.alarm_byte {
        session.active_levels = (session.active_levels & !(0xFF << BYTE_LEVEL_SHIFT))
            | (u64::from(c) << BYTE_LEVEL_SHIFT);
    }

    let mut events = Emitter::new(ctx, &device, &f, p.time);
    for (ty, fields, still) in alarms {
        events.push(ty, fields, still);
        // DESIGN.md guarantee 5: the alarm stands; what could not be used stays on it.
        if let Some(e) = events.events.last_mut() {
            e.flaws.extend(flaws.iter().cloned());
        }
    }
    if let Some(m) = position_fields(&p) {
        events.push(EventType::Position, m, false);
    }
    let mut battery = Map::new();
    if let Some(pct) = p.percent {
        battery.insert("percent".into(), json!(pct));
    }
    if let Some(v) = p.voltage.filter(|v| (0.0..=100.0).contains(v)) {
        battery.insert("voltage_v".into(), json!(v));
    }
    if !battery.is_empty() {
        events.push(EventType::Battery, battery, false);
    }
    if p.heartbeat {
        events.push(EventType::Heartbeat, Map::new(), false);
    }

    let error = match (crc_error(&f), p.problem) {
        (Some((r, d)), Some((_, more))) => Some((r, format!("{d}; {more}"))),
        (crc, problem) => crc.or(problem),
    };
    FrameOutput {
        events: events.events,
        reply: reply_bytes(p.reply, f.serial, ctx.received_at),
        reply_now: p.reply_now,
        error,
    }
}

/// Explicit alarm packets (PROTOCOLS.md §3): their ack tells the device the alarm was stored.
fn is_alarm_packet(f: &Split) -> bool {
    !f.long
        && matches!(
            f.proto,
            msg::GPS_LBS_STATUS_1
                | msg::GPS_LBS_STATUS_2
                | msg::GPS_LBS_STATUS_3
                | msg::FENCE_MULTI
                | msg::LBS_STATUS
                | msg::LBS_ALARM
                | msg::ALARM
        )
}

/// The values of a frame that could not be used, for its alarms: a time that is no date, a
/// position out of range. An alarm packet cut short before its status still raises an alarm
/// (coded with its type, for an operator to look at): it is acked, so the device will not
/// send it again, and which alarm it carried is unknown — it may have been the SOS.
fn unreadable_alarm(p: &mut Parsed, f: &Split) -> Vec<Flaw> {
    let mut flaws = Vec::new();
    if p.time.is_none()
        && let Some(raw) = p
            .bad_time
            .clone()
            .or_else(|| p.gps.and_then(|g| g.bad_time).map(|t| t.to_vec()))
    {
        flaws.push(Flaw::new(
            "time",
            hex::encode(raw),
            "not a date (YY MM DD hh mm ss); the receive time stands in",
        ));
    }
    if let Some(g) = p.gps
        && (g.lat.abs() > 90.0 || g.lon.abs() > 180.0)
    {
        flaws.push(Flaw::new(
            "position",
            format!("{:.6},{:.6}", g.lat, g.lon),
            "latitude or longitude out of range; the position is left out",
        ));
    }
    let nothing_read = p.flags.is_empty() && p.info.is_none() && p.alarm_byte.is_none();
    let cut_short = p.problem.as_ref().is_some_and(|(r, _)| *r == "truncated");
    if is_alarm_packet(f) && nothing_read && cut_short {
        flaws.push(Flaw::new(
            "status",
            hex::encode(f.content),
            "the alarm packet ends before its status; which alarm it carried is unknown",
        ));
        p.flag(
            Origin::Unreadable(f.proto),
            code(format!("gt06:0x{:02x}", f.proto)),
        );
    }
    flaws
}

/// Builds a frame's events with their dedup keys.
struct Emitter<'a> {
    ctx: &'a Ctx,
    device: &'a str,
    serial: Option<u16>,
    time: Option<DateTime<Utc>>,
    raw: &'a [u8],
    events: Vec<crate::event::Event>,
}

impl<'a> Emitter<'a> {
    fn new(ctx: &'a Ctx, device: &'a str, f: &Split<'a>, time: Option<DateTime<Utc>>) -> Self {
        Emitter {
            ctx,
            device,
            serial: f.serial,
            time,
            raw: f.raw,
            events: Vec::new(),
        }
    }

    /// With a device time the key is `s{serial}|t{ms}`, kept for the whole dedup window: a
    /// resent alarm has the same serial and time, while a device that restarted its serial
    /// sends a new time. Without one (heartbeats, 0x19) it is a hash of the frame (serial
    /// included), a frame key kept only for the redelivery window: the serial alone would merge
    /// a new alarm with an old one after the serial wraps or restarts.
    fn push(&mut self, ty: EventType, fields: Map<String, Value>, still_active: bool) {
        let index = self.events.len();
        let serial = self
            .serial
            .map_or_else(|| "-".to_owned(), |s| s.to_string());
        let mut e = match self.time {
            Some(t) => {
                let key = format!("s{serial}|t{}", t.timestamp_millis());
                self.ctx.event(FAMILY, self.device, ty, &key, index)
            }
            None => {
                let hash = Sha256::digest(self.raw);
                let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
                let mut e = self.ctx.event(FAMILY, self.device, ty, "", index);
                e.dedup_key = DedupKey::Frame(format!("{FAMILY}:h{hex}#{index}"));
                e
            }
        };
        e.fields = fields;
        e.device_time = self.time;
        e.seq = self.serial.map(i64::from);
        e.still_active = still_active;
        self.events.push(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use proptest::prelude::*;

    /// Traccar's login frame (PROTOCOLS.md §3 worked example).
    const LOGIN: [u8; 18] = [
        0x78, 0x78, // start
        0x0D, // LEN: PROTO + 8 IMEI bytes + serial + CRC
        0x01, // login
        0x08, 0x64, 0x71, 0x70, 0x03, 0x28, 0x35, 0x81, // BCD IMEI 0864717003283581
        0x00, 0x09, // serial
        0x3F, 0x04, // CRC-16/X-25 of 0D..09
        0x0D, 0x0A, // stop
    ];

    /// Status 0x13 from Traccar's tests.
    const HEARTBEAT: [u8; 15] = [
        0x78, 0x78, 0x0A, 0x13, // start, LEN, status
        0x44, // terminal info: GPS on, charging; bits 3–5 = 000
        0x06, // voltage level 6 → 100 %
        0x04, // GSM signal
        0x00, 0x02, // alarm byte none, language English
        0x01, 0xBA, // serial
        0xAF, 0x54, // CRC
        0x0D, 0x0A,
    ];

    /// Alarm packet 0x16: SOS by the alarm byte.
    const SOS: [u8; 42] = [
        0x78, 0x78, 0x25, 0x16, // start, LEN 37, GPS + LBS + status
        0x1A, 0x03, 0x05, 0x08, 0x0E, 0x3A, // 2026-03-05 08:14:58 (UTC)
        0xC9, // GPS info length 12, 9 satellites
        0x02, 0x6B, 0x2A, 0x2C, // latitude 40577580 / 1800000 = 22.5431
        0x0C, 0x3C, 0xB1, 0x9C, // longitude 205304220 / 1800000 = 114.0579
        0x03, // speed 3 km/h
        0x14, 0x5A, // course/status: fixed (bit 12), north (bit 10), course 90
        0x09, 0x01, 0xCC, 0x00, 0x26, 0x6A, 0x00, 0x1E, 0x17, // LBS: len 9, 460/0, LAC, CI
        0x04, // terminal info: charging, bits 3–5 = 000
        0x05, // voltage level 5 → 83 %
        0x04, // GSM
        0x01, 0x02, // alarm byte 0x01 = SOS, language
        0x00, 0x21, // serial
        0x1E, 0xF2, // CRC
        0x0D, 0x0A,
    ];

    /// The same packet with SOS in the alarm byte and low battery in the terminal-info bits.
    const SOS_LOW_BATTERY: [u8; 42] = [
        0x78, 0x78, 0x25, 0x16, //
        0x1A, 0x03, 0x05, 0x08, 0x0E, 0x3A, 0xC9, 0x02, 0x6B, 0x2A, 0x2C, 0x0C, 0x3C, 0xB1, 0x9C,
        0x03, 0x14, 0x5A, // GPS block as in SOS
        0x09, 0x01, 0xCC, 0x00, 0x26, 0x6A, 0x00, 0x1E, 0x17, // LBS
        0x1C, // terminal info: charging, bits 3–5 = 011 = low battery
        0x01, 0x03, // voltage level 1 → 16 %, GSM
        0x01, 0x02, // alarm byte SOS, language
        0x00, 0x22, 0x67, 0x3C, // serial, CRC
        0x0D, 0x0A,
    ];

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 5, 8, 15, 0).unwrap()
    }

    fn ctx() -> Ctx {
        Ctx {
            received_at: at(),
            peer: "203.0.113.5:50000".into(),
        }
    }

    fn logged_in() -> Session {
        Session {
            device_id: Some("864717003283581".into()),
            ..Default::default()
        }
    }

    fn types(out: &FrameOutput) -> Vec<EventType> {
        out.events.iter().map(|e| e.event_type).collect()
    }

    /// A frame with a correct CRC, for the tests that are about something else.
    fn packet_of(proto: u8, content: &[u8], serial: u16) -> Vec<u8> {
        packet(false, proto, content, serial)
    }

    fn status_13(info: u8, alarm: u8, serial: u16) -> Vec<u8> {
        packet_of(msg::STATUS, &[info, 0x04, 0x04, alarm, 0x02], serial)
    }

    #[test]
    fn crc_is_x25_as_checked_in_protocols_md() {
        assert_eq!(X25.checksum(&[0x05, 0x01, 0x00, 0x01]), 0xD9DC);
    }

    #[test]
    fn login_binds_the_imei_and_is_answered_at_once_with_the_worked_example() {
        let mut session = Session::default();
        let out = decode(&LOGIN, &mut session, &ctx());
        assert_eq!(session.device_id.as_deref(), Some("864717003283581"));
        assert!(out.events.is_empty());
        assert_eq!(
            out.reply.as_deref(),
            Some(&[0x78, 0x78, 0x05, 0x01, 0x00, 0x09, 0x55, 0x94, 0x0D, 0x0A][..])
        );
        assert!(out.reply_now);
        assert_eq!(out.error, None);
    }

    #[test]
    fn login_time_zone_word_sets_the_session_clock_unless_one_is_configured() {
        let east: [u8; 22] = [
            0x78, 0x78, 0x11, 0x01, // start, LEN 17, login
            0x08, 0x64, 0x71, 0x70, 0x03, 0x28, 0x35, 0x81, // IMEI
            0x36, 0x01, // type identification code
            0x32, 0x00, // 0x320 = 800 → UTC+8:00, bit 3 clear = east
            0x00, 0x01, 0x7A, 0x72, 0x0D, 0x0A, // serial, CRC, stop
        ];
        let west: [u8; 22] = [
            0x78, 0x78, 0x11, 0x01, 0x08, 0x64, 0x71, 0x70, 0x03, 0x28, 0x35, 0x81, 0x36, 0x01,
            0x19, 0x0A, // 0x190 = 400 → 4:00, bit 3 set = west → UTC-4:00
            0x00, 0x01, 0x46, 0x4E, 0x0D, 0x0A,
        ];
        let mut s = Session::default();
        decode(&east, &mut s, &ctx());
        assert_eq!(s.tz, FixedOffset::east_opt(8 * 3600));
        let mut s = Session::default();
        decode(&west, &mut s, &ctx());
        assert_eq!(s.tz, FixedOffset::west_opt(4 * 3600));
        // A per-device setting wins over what the firmware announces.
        let mut s = Session {
            tz: FixedOffset::east_opt(3600),
            ..Default::default()
        };
        decode(&east, &mut s, &ctx());
        assert_eq!(s.tz, FixedOffset::east_opt(3600));
    }

    #[test]
    fn device_times_are_local_to_the_session_time_zone() {
        let mut s = logged_in();
        s.tz = FixedOffset::east_opt(8 * 3600);
        let out = decode(&SOS, &mut s, &ctx());
        let utc = Utc.with_ymd_and_hms(2026, 3, 5, 8, 14, 58).unwrap();
        assert_eq!(out.events[0].device_time, Some(utc - Duration::hours(8)));
    }

    #[test]
    fn a_login_that_is_not_bcd_is_refused_without_reply() {
        let mut bad = LOGIN;
        bad[4] = 0xAB;
        let mut s = Session::default();
        let out = decode(&bad, &mut s, &ctx());
        assert_eq!(out.error.as_ref().map(|e| e.0), Some("bad_imei"));
        assert_eq!(out.reply, None);
        assert_eq!(s.device_id, None);
    }

    #[test]
    fn heartbeat_gives_battery_and_keep_alive_and_is_answered_at_once() {
        let out = decode(&HEARTBEAT, &mut logged_in(), &ctx());
        assert_eq!(types(&out), [EventType::Battery, EventType::Heartbeat]);
        assert_eq!(out.events[0].number("percent"), Some(100.0));
        assert_eq!(
            out.reply.as_deref(),
            Some(&[0x78, 0x78, 0x05, 0x13, 0x01, 0xBA, 0xFB, 0x71, 0x0D, 0x0A][..])
        );
        assert!(out.reply_now);
        // No device time: the key is a frame hash, kept only for the redelivery window.
        assert!(matches!(out.events[0].dedup_key, DedupKey::Frame(_)));
    }

    #[test]
    fn heartbeat_alarm_bits_are_levels_raised_once_then_still_active() {
        let mut s = logged_in();
        // Terminal info 0x20: bits 3–5 = 100, SOS.
        let first = decode(&status_13(0x20, 0, 0x30), &mut s, &ctx());
        let again = decode(&status_13(0x20, 0, 0x31), &mut s, &ctx());
        let cleared = decode(&status_13(0x00, 0, 0x32), &mut s, &ctx());
        let pressed = decode(&status_13(0x20, 0, 0x33), &mut s, &ctx());
        let sos = |o: &FrameOutput| {
            o.events
                .iter()
                .filter(|e| e.event_type == EventType::Sos)
                .map(|e| e.still_active)
                .collect::<Vec<_>>()
        };
        assert_eq!(sos(&first), [false], "rising edge");
        assert_eq!(sos(&again), [true], "held: recorded, not a new press");
        assert_eq!(sos(&cleared), Vec::<bool>::new());
        assert_eq!(
            sos(&pressed),
            [false],
            "a new press after the level cleared"
        );
    }

    #[test]
    fn an_alarm_packet_is_an_event_and_a_following_heartbeat_holds_its_level() {
        let mut s = logged_in();
        // The SOS packet's info bits are 000, but its alarm byte is 0x01: a heartbeat that
        // then repeats alarm byte 0x01 is the same alarm still standing.
        let out = decode(&SOS, &mut s, &ctx());
        assert!(!out.events[0].still_active);
        let hb = decode(&status_13(0x00, 0x01, 0x40), &mut s, &ctx());
        assert_eq!(hb.events[0].event_type, EventType::Sos);
        assert!(hb.events[0].still_active);
        // An alarm packet is never "still active", even repeated.
        let again = decode(&SOS, &mut s, &ctx());
        assert!(!again.events[0].still_active);
    }

    #[test]
    fn sos_alarm_packet_gives_sos_and_position_and_is_acked_after_commit() {
        let out = decode(&SOS, &mut logged_in(), &ctx());
        assert_eq!(
            types(&out),
            [EventType::Sos, EventType::Position, EventType::Battery]
        );
        let pos = &out.events[1];
        assert!((pos.number("lat").unwrap() - 22.5431).abs() < 1e-6);
        assert!((pos.number("lon").unwrap() - 114.0579).abs() < 1e-6);
        assert_eq!(pos.text("source"), Some("gps"));
        assert_eq!(pos.fields["valid"], json!(true));
        assert_eq!(pos.number("speed_kmh"), Some(3.0));
        assert_eq!(pos.number("course_deg"), Some(90.0));
        assert_eq!(pos.number("satellites"), Some(9.0));
        assert_eq!(
            pos.fields["cells"],
            json!([{"mcc": 460, "mnc": 0, "lac": 0x266A, "cid": 0x1E17}])
        );
        let t = Utc.with_ymd_and_hms(2026, 3, 5, 8, 14, 58).unwrap();
        assert!(out.events.iter().all(|e| e.device_time == Some(t)));
        assert_eq!(
            out.reply.as_deref(),
            Some(&[0x78, 0x78, 0x05, 0x16, 0x00, 0x21, 0xF1, 0x4E, 0x0D, 0x0A][..])
        );
        assert!(!out.reply_now, "an alarm is acked only once stored");
        assert_eq!(
            out.events[0].dedup_key,
            DedupKey::Device(format!("gt06:s33|t{}#0", t.timestamp_millis()))
        );
    }

    #[test]
    fn a_resent_alarm_packet_has_the_same_dedup_keys() {
        let a = decode(&SOS, &mut logged_in(), &ctx());
        let mut later = ctx();
        later.received_at += Duration::seconds(20);
        let b = decode(&SOS, &mut logged_in(), &later);
        let keys = |o: &FrameOutput| {
            o.events
                .iter()
                .map(|e| e.dedup_key.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&a), keys(&b));
    }

    #[test]
    fn sos_and_low_battery_in_one_packet_are_both_reported() {
        let out = decode(&SOS_LOW_BATTERY, &mut logged_in(), &ctx());
        assert_eq!(
            types(&out),
            [
                EventType::Battery,
                EventType::Sos,
                EventType::Position,
                EventType::Battery
            ]
        );
        assert_eq!(out.events[0].text("level"), Some("low"));
        assert_eq!(out.events[3].number("percent"), Some(16.0));
        let flags = alarm_flags(&SOS_LOW_BATTERY);
        let origins: Vec<&str> = flags.iter().map(|f| f.origin.as_str()).collect();
        assert_eq!(origins, ["terminal-info bits 3-5 = 011", "alarm byte 0x01"]);
    }

    #[test]
    fn the_same_alarm_in_the_bits_and_the_byte_is_one_event() {
        // Terminal info bits 100 (SOS) and alarm byte 0x01 (SOS) in one 0x19 packet.
        let f = packet_of(
            msg::LBS_STATUS,
            &[
                0x01, 0xCC, 0x00, 0x26, 0x6A, 0x00, 0x1E, 0x17, 0x20, 0x04, 0x04, 0x01, 0x02,
            ],
            7,
        );
        let out = decode(&f, &mut logged_in(), &ctx());
        assert_eq!(
            types(&out),
            [EventType::Sos, EventType::Position, EventType::Battery]
        );
    }

    #[test]
    fn fall_removal_tamper_power_and_unknown_codes_are_all_reported() {
        let with_alarm = |info: u8, code: u8| {
            let mut f = SOS[4..SOS.len() - 6].to_vec();
            let n = f.len();
            f[n - 5] = info;
            f[n - 2] = code;
            decode(&packet_of(0x16, &f, 9), &mut logged_in(), &ctx())
        };
        let first = |o: FrameOutput| (o.events[0].event_type, o.events[0].fields.clone());
        assert_eq!(first(with_alarm(0, 0x23)).0, EventType::Fall);
        assert_eq!(first(with_alarm(0, 0x13)).0, EventType::Tamper);
        assert_eq!(
            first(with_alarm(0, 0x02)),
            (EventType::Power, fields([("state", json!("lost"))]))
        );
        assert_eq!(
            first(with_alarm(0x38, 0)),
            (EventType::Removal, fields([("state", json!("removed"))]))
        );
        assert_eq!(
            first(with_alarm(0, 0x77)),
            (EventType::Alarm, fields([("code", json!("gt06:0x77"))]))
        );
    }

    #[test]
    fn frames_before_login_yield_nothing_and_no_ack_so_the_device_resends() {
        let out = decode(&SOS, &mut Session::default(), &ctx());
        assert!(out.events.is_empty());
        assert_eq!(out.reply, None);
        assert_eq!(out.error.as_ref().map(|e| e.0), Some("no_login"));
    }

    #[test]
    fn a_crc_mismatch_is_reported_but_the_frame_is_still_decoded_and_acked() {
        let mut bad = SOS;
        bad[38] ^= 0xFF;
        let out = decode(&bad, &mut logged_in(), &ctx());
        assert_eq!(out.error.as_ref().map(|e| e.0), Some("crc"));
        assert_eq!(out.events[0].event_type, EventType::Sos);
        assert!(out.reply.is_some());
    }

    #[test]
    fn time_and_address_requests_get_their_special_answers() {
        let time = decode(
            &[0x78, 0x78, 0x05, 0x8A, 0x00, 0x06, 0x88, 0x29, 0x0D, 0x0A],
            &mut logged_in(),
            &ctx(),
        );
        assert_eq!(
            time.reply.as_deref(),
            Some(
                &[
                    0x78, 0x78, 0x0B, 0x8A, // start, LEN 11, time
                    0x1A, 0x03, 0x05, 0x08, 0x0F, 0x00, // 2026-03-05 08:15:00 UTC
                    0x00, 0x00, 0x77, 0x44, 0x0D, 0x0A, // serial 0 (as Traccar), CRC
                ][..]
            )
        );
        assert!(time.reply_now);
        let addr = decode(
            &packet_of(msg::ADDRESS_REQUEST, &[0; 20], 7),
            &mut logged_in(),
            &ctx(),
        );
        let mut want = vec![0x79, 0x79, 0x00, 0x15, 0x97, 0x0B, 0, 0, 0, 0];
        want.extend_from_slice(b"NA&&NA&&0##");
        want.extend_from_slice(&[0x00, 0x00, 0xE6, 0x1E, 0x0D, 0x0A]);
        assert_eq!(addr.reply, Some(want));
    }

    #[test]
    fn information_and_command_types_get_no_answer_and_unknown_ones_the_echo() {
        for proto in [msg::INFO, msg::STRING_INFO, 0x80, 0x81, 0x82, msg::WIFI_4] {
            let out = decode(&packet_of(proto, &[0; 8], 1), &mut logged_in(), &ctx());
            assert_eq!(out.reply, None, "type 0x{proto:02x}");
        }
        let out = decode(&packet_of(0x5F, &[1, 2, 3], 4), &mut logged_in(), &ctx());
        assert_eq!(out.reply, Some(packet(false, 0x5F, &[], 4)));
        assert_eq!(out.error.as_ref().map(|e| e.0), Some("unsupported"));
    }

    fn drain(buf: &mut BytesMut) -> Vec<RawFrame> {
        let mut framer = Gt06Framer::default();
        let mut got = Vec::new();
        while let Some(f) = framer.next_frame(buf) {
            got.push(f);
        }
        got
    }

    fn frame(b: &[u8]) -> RawFrame {
        RawFrame::Frame(bytes::Bytes::copy_from_slice(b))
    }

    #[test]
    fn junk_before_a_frame_is_skipped_and_counted() {
        let mut buf = BytesMut::from(&[0x00, 0x78, 0x0D, 0x0A, 0x79][..]);
        buf.extend_from_slice(&LOGIN);
        assert_eq!(
            drain(&mut buf),
            [
                RawFrame::Skipped {
                    bytes: 5,
                    reason: "junk"
                },
                frame(&LOGIN)
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn a_frame_fed_one_byte_at_a_time_comes_out_once_whole() {
        let mut framer = Gt06Framer::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in &SOS {
            buf.extend_from_slice(&[b]);
            while let Some(f) = framer.next_frame(&mut buf) {
                got.push(f);
            }
        }
        assert_eq!(got, [frame(&SOS)]);
    }

    #[test]
    fn ten_frames_in_one_buffer_come_out_in_order() {
        let mut buf = BytesMut::new();
        let frames: Vec<Vec<u8>> = (0..10u16)
            .map(|i| match i % 3 {
                0 => SOS.to_vec(),
                1 => HEARTBEAT.to_vec(),
                _ => status_13(0x20, 0, i),
            })
            .collect();
        for f in &frames {
            buf.extend_from_slice(f);
        }
        let got = drain(&mut buf);
        assert_eq!(got, frames.iter().map(|f| frame(f)).collect::<Vec<_>>());
    }

    #[test]
    fn an_oversized_length_without_an_end_is_skipped_after_max_frame_bytes() {
        // 79 79 FF FF: LEN 65535, far over the limit, and no 0D 0A anywhere.
        let mut buf = BytesMut::from(&[0x79, 0x79, 0xFF, 0xFF, 0x70][..]);
        assert_eq!(drain(&mut buf), []);
        buf.extend_from_slice(&[0x55; MAX_FRAME]);
        let got = drain(&mut buf);
        assert_eq!(
            got[0],
            RawFrame::Skipped {
                bytes: 5 + MAX_FRAME,
                reason: "oversized"
            }
        );
        assert!(buf.len() < MAX_FRAME);
        // The stream resynchronises on the next frame.
        buf.extend_from_slice(&LOGIN);
        assert_eq!(drain(&mut buf).last(), Some(&frame(&LOGIN)));
    }

    #[test]
    fn a_truncated_frame_waits_for_more_then_gives_way_to_the_next_whole_frame() {
        let mut buf = BytesMut::from(&SOS[..20]);
        assert_eq!(drain(&mut buf), [], "a partial frame needs more bytes");
        assert_eq!(buf.len(), 20);
        // The rest never comes: the device sends the next frame (an SOS) instead.
        buf.extend_from_slice(&SOS_LOW_BATTERY);
        assert_eq!(
            drain(&mut buf),
            [
                RawFrame::Skipped {
                    bytes: 20,
                    reason: "bad_length"
                },
                frame(&SOS_LOW_BATTERY)
            ]
        );
    }

    #[test]
    fn a_frame_whose_length_is_too_long_ends_at_its_stop_bytes() {
        // Traccar's frame test: LEN 0x0D but only 15 bytes; answered without waiting.
        let short = [
            0x78, 0x78, 0x0D, 0x01, 0x03, 0x56, 0x31, 0x40, 0x41, 0x41, 0x98, 0x58, 0x3C, 0x0D,
            0x0A,
        ];
        let mut buf = BytesMut::from(&short[..]);
        assert_eq!(drain(&mut buf), [frame(&short)]);
    }

    #[test]
    fn a_stop_pair_inside_content_is_not_an_end_while_the_length_is_pending() {
        // A 0x9B-like text frame with "\r\n" inside, cut right after it: wait for LEN.
        let whole = packet(true, 0x9B, b"\x03AB\r\nCD", 5);
        let cut = whole.iter().position(|&b| b == 0x0A).unwrap() + 1;
        let mut buf = BytesMut::from(&whole[..cut]);
        assert_eq!(drain(&mut buf), []);
        buf.extend_from_slice(&whole[cut..]);
        assert_eq!(drain(&mut buf), [frame(&whole)]);
    }

    proptest! {
        // Each case feeds up to 4 KiB, often one byte at a time: fewer cases keep it quick.
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn any_bytes_in_any_chunks_never_panic_or_overgrow_the_buffer(
            data in proptest::collection::vec(
                prop_oneof![Just(0x78u8), Just(0x79), Just(0x0D), Just(0x0A), any::<u8>()],
                0..4096,
            ),
            chunk in 1usize..300,
        ) {
            let mut framer = Gt06Framer::default();
            let mut buf = BytesMut::new();
            let mut consumed = 0;
            for piece in data.chunks(chunk) {
                buf.extend_from_slice(piece);
                prop_assert!(buf.len() <= MAX_FRAME + chunk);
                while let Some(f) = framer.next_frame(&mut buf) {
                    match f {
                        RawFrame::Frame(b) => {
                            prop_assert!(!b.is_empty() && b.len() <= MAX_FRAME);
                            consumed += b.len();
                            let _ = decode(&b, &mut logged_in(), &ctx());
                        }
                        RawFrame::Skipped { bytes, .. } => {
                            prop_assert!(bytes > 0);
                            consumed += bytes;
                        }
                    }
                }
                prop_assert!(buf.len() < MAX_FRAME);
            }
            prop_assert_eq!(consumed + buf.len(), data.len());
        }

        #[test]
        fn decode_is_total_on_any_bytes(
            head in prop_oneof![Just(vec![0x78u8, 0x78]), Just(vec![0x79, 0x79]), Just(vec![])],
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut frame = head;
            frame.extend_from_slice(&body);
            let _ = decode(&frame, &mut logged_in(), &ctx());
            let _ = decode(&frame, &mut Session::default(), &ctx());
            let _ = alarm_flags(&frame);
        }

        #[test]
        fn every_known_type_with_random_content_decodes_without_panic(
            proto in prop_oneof![
                Just(0x01u8), Just(0x10), Just(0x11), Just(0x12), Just(0x13), Just(0x16),
                Just(0x17), Just(0x19), Just(0x22), Just(0x23), Just(0x24), Just(0x26),
                Just(0x27), Just(0x28), Just(0x2C), Just(0x36), Just(0x69), Just(0x95),
                Just(0xA0), Just(0xA1), Just(0xA2), Just(0xA4), Just(0xA5), Just(0xA9),
                Just(0xF3), any::<u8>(),
            ],
            content in proptest::collection::vec(any::<u8>(), 0..200),
            long in any::<bool>(),
        ) {
            let f = packet(long, proto, &content, 1);
            let out = decode(&f, &mut logged_in(), &ctx());
            for e in &out.events {
                prop_assert!(e.event_type.check_fields(&e.fields).is_ok());
            }
        }
    }
}
