//! The `jt808` family: JT/T 808 terminals (2013 and 2019 headers), `7E`-framed binary over TCP.
//!
//! Wire format: `protocols/conformance/PROTOCOLS.md` §4; anxin's rules on top of it (every alarm
//! flag, levels vs events, device clocks): PROTOCOLS.md §1; the family notes with byte
//! examples: `protocols/jt808/README.md`.
//!
//! - [`Jt808Framer`] cuts the stream at `7E` delimiters, escapes left in place, and passes
//!   Traccar's ASCII `( … )` sentences through as frames of their own.
//! - [`decode`] unescapes one frame, checks the XOR, reads the header, turns the body into
//!   events and builds the reply the terminal waits for (0x8001, 0x8100 or 0x8109).
//!
//! The alarm word of a location report is a *level*: terminals repeat it in every 0x0200 until
//! the platform confirms. An alarm raises an event on its rising edge relative to
//! [`Session::active_levels`]; while it holds, each report yields the same event with
//! `still_active = true`, so a held SOS is one press, never a new one per report.

use bytes::{Buf, BytesMut};
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, Offset, TimeZone, Timelike, Utc};
use serde_json::{Value, json};

use super::{Addressing, Ctx, FrameOutput, Framer, RawFrame, Session};
use crate::event::{Event, EventType, Flaw};

/// The family name (CONTRACT.md listeners), also the prefix of every dedup key.
const FAMILY: &str = "jt808";

// ---------------------------------------------------------------------------------------------
// Framing (PROTOCOLS.md §4 "Framing"; JT/T 808-2013 §4.4.1)
// ---------------------------------------------------------------------------------------------

/// Frame delimiter, at both ends of every message.
const FLAG: u8 = 0x7E;
/// Escape byte: inside a frame `7D 02` stands for `7E` and `7D 01` for `7D`.
const ESCAPE: u8 = 0x7D;
/// Second byte of an escaped `7D`.
const ESCAPED_ESCAPE: u8 = 0x01;
/// Second byte of an escaped `7E`.
const ESCAPED_FLAG: u8 = 0x02;
/// Opens Traccar's ASCII sentence variant `( … )` (PROTOCOLS.md §4, "Variants Traccar also
/// accepts"); e-lock devices send `(id,1,001,BASE,2,TIME)` time requests on the same port.
const SENTENCE_OPEN: u8 = b'(';
/// Closes an ASCII sentence.
const SENTENCE_CLOSE: u8 = b')';

/// Longest frame the framer buffers, delimiters and escapes included. The body length is a
/// 10-bit field, so at most 1023 bytes (PROTOCOLS.md §4, attribute bits 0–9). The largest
/// header is the 2019 one with packet fields: 2 id + 2 attributes + 1 version + 10 phone +
/// 2 serial + 4 packet = 21 bytes. With the checksum that is 1045 bytes, at most doubled by
/// escaping (2090), plus two delimiters: 2092, rounded up.
pub const MAX_FRAME_LEN: usize = 2100;

/// Longest ASCII sentence; Traccar's are about 35 bytes. A `(` not closed within this many
/// printable bytes is junk, not a sentence.
const MAX_SENTENCE_LEN: usize = 256;

/// Splits a `jt808` byte stream into frames.
///
/// A frame is `7E … 7E` with its escapes still in place; the decoder unescapes. Anything before
/// a `7E` (or a `(` sentence) is skipped as `junk`. A `7E 7E` pair is the end of one frame and
/// the start of the next: when it is seen at the front of the buffer, the first `7E` closed a
/// frame whose start was lost (after junk or a skip), so it is dropped. The framer holds at
/// most [`MAX_FRAME_LEN`] bytes: an open frame longer than that is skipped as `oversized`.
/// Total: any input gives frames, skips or "need more", never a panic. One framer serves one
/// connection's buffer (it remembers how far the open frame has been searched).
#[derive(Debug, Default)]
pub struct Jt808Framer {
    /// How far past its opening `7E` the frame at the front of the buffer has already been
    /// searched for its closing one, so a frame that arrives byte by byte is scanned once,
    /// not once per byte. Zero whenever the front of the buffer is not an open frame.
    scanned: usize,
}

impl Framer for Jt808Framer {
    fn next_frame(&mut self, buf: &mut BytesMut) -> Option<RawFrame> {
        let found = match *buf.first()? {
            FLAG => self.binary_frame(buf),
            SENTENCE_OPEN => sentence_frame(buf),
            _ => {
                // Junk up to the next byte that can start a frame, or all of it: junk never
                // becomes a frame, so holding it would only grow the buffer.
                let end = buf
                    .iter()
                    .position(|&b| b == FLAG || b == SENTENCE_OPEN)
                    .unwrap_or(buf.len());
                skip(buf, end, "junk")
            }
        };
        if found.is_some() {
            self.scanned = 0;
        }
        found
    }
}

impl Jt808Framer {
    /// `buf` starts with `7E`.
    fn binary_frame(&mut self, buf: &mut BytesMut) -> Option<RawFrame> {
        let from = self.scanned.clamp(1, buf.len());
        let close = buf[from..]
            .iter()
            .position(|&b| b == FLAG)
            .map(|i| from + i);
        match close {
            // `7E 7E`: the first one closed a frame we never saw open.
            Some(1) => skip(buf, 1, "junk"),
            // Closed, but longer than any valid frame. The closing `7E` stays: if the opening
            // one was a stray byte, it is really the start of the next frame.
            Some(end) if end + 1 > MAX_FRAME_LEN => skip(buf, end, "oversized"),
            Some(end) => Some(RawFrame::Frame(buf.split_to(end + 1).freeze())),
            // No `7E` after the first one in the whole buffer: none of it can be kept.
            None if buf.len() > MAX_FRAME_LEN => skip(buf, buf.len(), "oversized"),
            None => {
                self.scanned = buf.len();
                None
            }
        }
    }
}

/// Drops `n` (≥ 1) bytes from the front of `buf`.
fn skip(buf: &mut BytesMut, n: usize, reason: &'static str) -> Option<RawFrame> {
    buf.advance(n);
    Some(RawFrame::Skipped { bytes: n, reason })
}

/// `buf` starts with `(`.
fn sentence_frame(buf: &mut BytesMut) -> Option<RawFrame> {
    for (i, &b) in buf.iter().enumerate().skip(1).take(MAX_SENTENCE_LEN - 1) {
        if b == SENTENCE_CLOSE {
            return Some(RawFrame::Frame(buf.split_to(i + 1).freeze()));
        }
        // Sentences are printable ASCII; `7E` (`~`) is excluded because it starts a frame.
        if !(0x20..FLAG).contains(&b) {
            return skip(buf, i, "junk");
        }
    }
    if buf.len() >= MAX_SENTENCE_LEN {
        return skip(buf, MAX_SENTENCE_LEN, "oversized");
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Header (PROTOCOLS.md §4 "Layout after unescaping"; JT/T 808-2013 §4.4.3, 2019 §4.4.3)
// ---------------------------------------------------------------------------------------------

/// Attribute bits 0–9: body length.
const ATTR_BODY_LEN: u16 = 0x03FF;
/// Attribute bit 10: the body is RSA-encrypted (bits 11–12 are reserved and ignored).
const ATTR_RSA: u16 = 1 << 10;
/// Attribute bit 13: one packet of a split message; packet total and index follow the serial.
const ATTR_MULTI_PACKET: u16 = 1 << 13;
/// Attribute bit 14: 2019 header, with a protocol-version byte and a 10-byte phone number.
const ATTR_VERSION_2019: u16 = 1 << 14;
/// BCD terminal phone number length in a 2013 header.
const PHONE_LEN_2013: usize = 6;
/// BCD terminal phone number length in a 2019 header.
const PHONE_LEN_2019: usize = 10;
/// Length of a binary IMEI that some terminals put in the phone field (PROTOCOLS.md §4,
/// "Device ID"): u16 high part + u32 low part, with the Luhn digit left off.
const BINARY_IMEI_LEN: usize = 6;
/// Device times are Beijing time unless the device is configured otherwise (PROTOCOLS.md §4).
const BEIJING_OFFSET_SECS: i32 = 8 * 3600;

/// Message ids (PROTOCOLS.md §4 tables; JT/T 808-2013 §8).
mod msg {
    /// Terminal general response (to a platform command).
    pub const TERMINAL_ACK: u16 = 0x0001;
    /// Heartbeat; some terminals append battery %, RSSI and a status byte.
    pub const HEARTBEAT: u16 = 0x0002;
    /// Terminal logout.
    pub const LOGOUT: u16 = 0x0003;
    /// Terminal registration.
    pub const REGISTER: u16 = 0x0100;
    /// Terminal authentication with the code from 0x8100.
    pub const AUTH: u16 = 0x0102;
    /// Parameter query response (to 0x8104).
    pub const PARAMETERS: u16 = 0x0104;
    /// Terminal attributes (model, ICCID).
    pub const ATTRIBUTES: u16 = 0x0107;
    /// Vendor time-sync request, answered by 0x8109.
    pub const TIME_SYNC: u16 = 0x0109;
    /// Location report: the main message and the alarm carrier.
    pub const LOCATION: u16 = 0x0200;
    /// Location query response (to 0x8201): a serial, then a location body.
    pub const LOCATION_QUERY_RESPONSE: u16 = 0x0201;
    /// Vendor battery / location batch.
    pub const VENDOR_BATCH: u16 = 0x0210;
    /// Heartbeat variant.
    pub const HEARTBEAT_2: u16 = 0x0506;
    /// Command result text.
    pub const COMMAND_RESULT: u16 = 0x0701;
    /// Driver identity (vehicle).
    pub const DRIVER_IDENTITY: u16 = 0x0702;
    /// Location batch / blind-area upload.
    pub const BATCH: u16 = 0x0704;
    /// Transparent data (vendor payloads).
    pub const TRANSPARENT: u16 = 0x0900;
    /// Vendor time-zone sync.
    pub const TIMEZONE_SYNC: u16 = 0x1007;
    /// Text reply.
    pub const TEXT_REPLY: u16 = 0x1300;
    /// Accelerometer samples (vehicle).
    pub const ACCELERATION: u16 = 0x2070;
    /// E-lock location report with a 1-byte serial (out of scope).
    pub const ELOCK_LOCATION: u16 = 0x5501;
    /// E-lock blind-area report with a 1-byte serial (out of scope).
    pub const ELOCK_BLIND: u16 = 0x5502;
    /// Vendor text report.
    pub const TEXT_REPORT: u16 = 0x6006;
    /// Platform general response: request serial (2), request id (2), result (1).
    pub const GENERAL_RESPONSE: u16 = 0x8001;
    /// Registration response: request serial (2), result (1), auth code.
    pub const REGISTER_RESPONSE: u16 = 0x8100;
    /// Time-sync response: UTC year (2), month, day, hour, minute, second, result (1).
    pub const TIME_SYNC_RESPONSE: u16 = 0x8109;
    /// Manual alarm confirmation: alarm serial (2, 0 = every alarm of the types), alarm types
    /// (4, the alarm-word bits) (JT/T 808-2013 §8.49; PROTOCOLS.md §4 "SOS handling").
    pub const ALARM_CONFIRM: u16 = 0x8203;
}

/// 0x8203 alarm serial 0: confirm every pending alarm of the given types, not one message
/// (JT/T 808-2013 §8.49).
const CONFIRM_ALL_SERIALS: u16 = 0;
/// Alarm word / 0x8203 type bit 0: emergency (SOS) (JT/T 808-2013 table 24).
const ALARM_EMERGENCY: u32 = 1;

/// Result byte of 0x8001 / 0x8100 / 0x8109: success (JT/T 808-2013 §8.1, §8.6).
const RESULT_OK: u8 = 0;
/// 0x0704 location type: 1 = blind-area (stored while offline) upload (JT/T 808-2013 §8.52).
const BATCH_BLIND_AREA: u8 = 1;
/// 0x0210 with a 7-byte body is battery % + BCD time, not a batch (PROTOCOLS.md §4 table).
const VENDOR_BATTERY_BODY_LEN: usize = 7;

/// The unescaped header fields a decoder and a reply need.
struct Header<'a> {
    id: u16,
    attributes: u16,
    version: Option<u8>,
    phone: &'a [u8],
    serial: u16,
    /// (total, index) when attribute bit 13 is set.
    packet: Option<(u16, u16)>,
}

/// Reads a header; `None` if the bytes end first. Returns the header and its length.
fn read_header(bytes: &[u8]) -> Option<(Header<'_>, usize)> {
    let mut r = Reader::new(bytes);
    let id = r.u16()?;
    let attributes = r.u16()?;
    let version = if attributes & ATTR_VERSION_2019 != 0 {
        Some(r.u8()?)
    } else {
        None
    };
    let phone = r.take(if version.is_some() {
        PHONE_LEN_2019
    } else {
        PHONE_LEN_2013
    })?;
    // The e-lock reports carry a 1-byte serial (PROTOCOLS.md §4 table).
    let serial = if matches!(id, msg::ELOCK_LOCATION | msg::ELOCK_BLIND) {
        u16::from(r.u8()?)
    } else {
        r.u16()?
    };
    let packet = if attributes & ATTR_MULTI_PACKET != 0 {
        Some((r.u16()?, r.u16()?))
    } else {
        None
    };
    Some((
        Header {
            id,
            attributes,
            version,
            phone,
            serial,
            packet,
        },
        r.pos,
    ))
}

/// The device id: the phone number as decimal digits without leading zeros (CONTRACT.md,
/// Devices). A field that is not BCD holds a binary IMEI (PROTOCOLS.md §4, "Device ID"): its
/// 14 digits plus the Luhn check digit, as Traccar computes it; anything else stays hex.
fn device_id(phone: &[u8]) -> String {
    let digits = hex::encode(phone);
    if digits.bytes().all(|b| b.is_ascii_digit()) {
        let stripped = digits.trim_start_matches('0');
        return if stripped.is_empty() { "0" } else { stripped }.to_owned();
    }
    let split = phone.len().saturating_sub(BINARY_IMEI_LEN);
    let (pad, imei) = phone.split_at(split);
    if imei.len() == BINARY_IMEI_LEN && pad.iter().all(|&b| b == 0) {
        let value = imei.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        return format!("{value}{}", luhn_digit(value));
    }
    digits
}

/// The Luhn check digit of `payload` (the digit that would be appended).
fn luhn_digit(mut payload: u64) -> u64 {
    let mut sum = 0;
    let mut double = true;
    while payload > 0 {
        let mut d = payload % 10;
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
        payload /= 10;
    }
    (10 - sum % 10) % 10
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decodes one `jt808` frame (as returned by [`Jt808Framer`]; bare bytes without the `7E`
/// delimiters are accepted too, for `anxin decode`).
///
/// Problems are reported in [`FrameOutput::error`] while everything readable is still
/// decoded: a bad escape (`escape`), an XOR mismatch (`xor`), a body length that disagrees with
/// the header (`length`), a cut-short body (`short`) or additional item (`tlv`). Only a frame
/// too short for its header, or with a body longer than the 10-bit length field can state
/// (`bad_length`), yields nothing at all — no events and no ack.
pub fn decode(frame: &[u8], session: &mut Session, ctx: &Ctx) -> FrameOutput {
    let inner = strip_flags(frame);
    if inner.first() == Some(&SENTENCE_OPEN) {
        return decode_sentence(inner, session, ctx);
    }
    let mut problems = Problems::default();
    let bytes = unescape(inner, &mut problems);
    let Some(msg) = Message::parse(&bytes, &mut problems) else {
        return problems.finish(FrameOutput::default());
    };
    let device = device_id(msg.header.phone);
    session.device_id = Some(device.clone());
    if session
        .addressing
        .as_ref()
        .is_none_or(|a| a.phone != msg.header.phone || a.version != msg.header.version)
    {
        session.addressing = Some(Addressing {
            phone: msg.header.phone.to_vec(),
            version: msg.header.version,
        });
    }
    let out = decode_message(&msg, &device, session, ctx, &mut problems);
    problems.finish(out)
}

/// The alarm flags set in a location-bearing frame, each as `"<event>: <where it came from>"`
/// (for example `"sos: alarm word bit 0 (emergency)"`), whether or not they are new. For
/// inspection (`anxin decode`, conformance reports); decoding does not need it.
pub fn alarm_sources(frame: &[u8]) -> Vec<String> {
    let mut problems = Problems::default();
    let bytes = unescape(strip_flags(frame), &mut problems);
    let Some(msg) = Message::parse(&bytes, &mut problems) else {
        return Vec::new();
    };
    let Some((reports, _)) = location_reports(&msg, beijing(), &mut problems) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for report in &reports {
        for &(bit, source) in LEVEL_SOURCES {
            if report.levels & level(bit) != 0 {
                out.push(format!(
                    "{}: {source}",
                    alarm_name(|a| a.levels & level(bit) != 0)
                ));
            }
        }
        for &(pulse, source) in PULSE_SOURCES {
            if report.pulses & pulse != 0 {
                out.push(format!(
                    "{}: {source}",
                    alarm_name(|a| a.pulses & pulse != 0)
                ));
            }
        }
    }
    out
}

/// The event name (and distinguishing field) of the first alarm matching `pred`.
fn alarm_name(pred: impl Fn(&Alarm) -> bool) -> String {
    ALARMS
        .iter()
        .find(|a| pred(a))
        .map(|a| match a.field {
            Some((_, value)) => format!("{} {value}", a.event),
            None => a.event.to_string(),
        })
        .unwrap_or_default()
}

/// The frame without its delimiters (either may be missing).
fn strip_flags(frame: &[u8]) -> &[u8] {
    let frame = frame.strip_prefix(&[FLAG]).unwrap_or(frame);
    frame.strip_suffix(&[FLAG]).unwrap_or(frame)
}

/// Undoes the `7D 01` / `7D 02` escapes. A `7D` followed by anything else is reported and kept
/// as sent: the likeliest cause is a terminal that did not escape a literal `7D`.
fn unescape(inner: &[u8], problems: &mut Problems) -> Vec<u8> {
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while let Some(&b) = inner.get(i) {
        i += 1;
        if b == ESCAPE {
            match inner.get(i) {
                Some(&ESCAPED_ESCAPE) => {
                    out.push(ESCAPE);
                    i += 1;
                    continue;
                }
                Some(&ESCAPED_FLAG) => {
                    out.push(FLAG);
                    i += 1;
                    continue;
                }
                next => problems.add(
                    "escape",
                    format!(
                        "7d followed by {} at offset {}",
                        next.map_or("the end".to_owned(), |n| format!("{n:02x}")),
                        i - 1
                    ),
                ),
            }
        }
        out.push(b);
    }
    out
}

/// Escapes `bytes` into `out` (the inverse of [`unescape`]).
fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        match b {
            FLAG => out.extend([ESCAPE, ESCAPED_FLAG]),
            ESCAPE => out.extend([ESCAPE, ESCAPED_ESCAPE]),
            _ => out.push(b),
        }
    }
}

/// XOR of `bytes`: the JT/T 808 check code (JT/T 808-2013 §4.4.2).
fn xor(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |acc, &b| acc ^ b)
}

/// An unescaped message split into header and body, checksum verified.
struct Message<'a> {
    header: Header<'a>,
    body: &'a [u8],
}

impl<'a> Message<'a> {
    /// `None` when the bytes cannot hold a header and a checksum.
    fn parse(bytes: &'a [u8], problems: &mut Problems) -> Option<Message<'a>> {
        let Some((header, header_len)) = read_header(bytes).filter(|(_, n)| *n < bytes.len())
        else {
            problems.add(
                "short",
                format!("{} bytes cannot hold a header and a checksum", bytes.len()),
            );
            return None;
        };
        let (content, check) = bytes.split_at(bytes.len() - 1);
        let computed = xor(content);
        if computed != check[0] {
            problems.add(
                "xor",
                format!("check code {:02x}, computed {computed:02x}", check[0]),
            );
        }
        let body = &content[header_len..];
        if body.len() > usize::from(ATTR_BODY_LEN) {
            // No length field can describe it (10 bits, JT/T 808-2013 §4.4.3): not a message
            // of this protocol, so nothing is decoded or acked.
            problems.add(
                "bad_length",
                format!(
                    "{} body bytes, more than the {} a message can have",
                    body.len(),
                    ATTR_BODY_LEN
                ),
            );
            return None;
        }
        let declared = usize::from(header.attributes & ATTR_BODY_LEN);
        if declared != body.len() {
            // Real terminals get this wrong (PROTOCOLS.md §9 replay notes): decode what came.
            problems.add(
                "length",
                format!(
                    "header says {declared} body bytes, frame has {}",
                    body.len()
                ),
            );
        }
        Some(Message { header, body })
    }
}

/// The problems found in one frame; the first names the metric reason.
#[derive(Default)]
struct Problems(Vec<(&'static str, String)>);

impl Problems {
    fn add(&mut self, reason: &'static str, detail: String) {
        self.0.push((reason, detail));
    }

    fn finish(self, mut out: FrameOutput) -> FrameOutput {
        if let Some(&(reason, _)) = self.0.first() {
            let detail = self
                .0
                .iter()
                .map(|(r, d)| format!("{r}: {d}"))
                .collect::<Vec<_>>()
                .join("; ");
            out.error = Some((reason, detail));
        }
        out
    }
}

/// Answers and decodes one message.
fn decode_message(
    msg: &Message<'_>,
    device: &str,
    session: &mut Session,
    ctx: &Ctx,
    problems: &mut Problems,
) -> FrameOutput {
    let h = &msg.header;
    let mut out = FrameOutput::default();
    if matches!(h.id, msg::ELOCK_LOCATION | msg::ELOCK_BLIND) {
        problems.add(
            "unsupported",
            format!("message {:04x} (e-lock report) is not decoded", h.id),
        );
        return out;
    }
    if h.attributes & ATTR_RSA != 0 {
        // Nothing readable, and an ack would tell the terminal it was stored.
        problems.add(
            "encrypted",
            format!("message {:04x} has an RSA-encrypted body", h.id),
        );
        return out;
    }
    if let Some((total, index)) = h.packet.filter(|&(total, _)| total > 1) {
        // Acked so the terminal moves on; the packet itself is counted, not decoded.
        problems.add(
            "multipacket",
            format!(
                "packet {index} of {total} of message {:04x}: reassembly is not supported",
                h.id
            ),
        );
        out.reply = Some(general_response(session, h));
        return out;
    }

    let no_time_key = || format!("s{}|r{}", h.serial, ctx.received_at.timestamp_millis());
    match h.id {
        msg::REGISTER => {
            let mut body = h.serial.to_be_bytes().to_vec();
            body.push(RESULT_OK);
            body.extend(device.as_bytes());
            out.reply = Some(reply(session, h, msg::REGISTER_RESPONSE, &body));
            out.reply_now = true;
        }
        msg::AUTH | msg::LOGOUT | msg::TIMEZONE_SYNC => {
            out.reply = Some(general_response(session, h));
            out.reply_now = true;
        }
        msg::HEARTBEAT | msg::HEARTBEAT_2 => {
            let mut em = Emitter::new(ctx, device, no_time_key(), h.serial);
            let e = em.event(EventType::Heartbeat, None);
            em.push(e);
            // Appended status: battery %, RSSI, status byte (PROTOCOLS.md §4 table).
            if h.id == msg::HEARTBEAT
                && msg.body.len() >= 3
                && let Some(p) = percent(f64::from(msg.body[0]))
            {
                let e = em.event(EventType::Battery, None).with("percent", p);
                em.push(e);
            }
            out.events = em.events;
            out.reply = Some(general_response(session, h));
            out.reply_now = true;
        }
        msg::TIME_SYNC => {
            let t = ctx.received_at;
            let mut body = u16::try_from(t.year()).unwrap_or(0).to_be_bytes().to_vec();
            for part in [t.month(), t.day(), t.hour(), t.minute(), t.second()] {
                body.push(u8::try_from(part).unwrap_or(0));
            }
            body.push(RESULT_OK);
            out.reply = Some(reply(session, h, msg::TIME_SYNC_RESPONSE, &body));
            out.reply_now = true;
        }
        msg::VENDOR_BATCH if msg.body.len() == VENDOR_BATTERY_BODY_LEN => {
            let time = bcd_time(&msg.body[1..], zone(session));
            let key = time.map_or_else(no_time_key, |t| frame_key(h.serial, t));
            let mut em = Emitter::new(ctx, device, key, h.serial);
            if let Some(p) = percent(f64::from(msg.body[0])) {
                let e = em.event(EventType::Battery, time).with("percent", p);
                em.push(e);
            }
            out.events = em.events;
            out.reply = Some(general_response(session, h));
        }
        msg::LOCATION | msg::LOCATION_QUERY_RESPONSE | msg::BATCH | msg::VENDOR_BATCH => {
            if let Some((reports, persist)) = location_reports(msg, zone(session), problems) {
                let key = reports
                    .iter()
                    .find_map(|r| r.time)
                    .map_or_else(no_time_key, |t| frame_key(h.serial, t));
                let mut em = Emitter::new(ctx, device, key, h.serial);
                let mut levels = if persist { session.active_levels } else { 0 };
                for report in &reports {
                    levels = emit_report(&mut em, report, levels);
                }
                if persist {
                    session.active_levels = levels;
                }
                out.events = em.events;
            }
            // 0x0201 answers a platform query: the terminal expects no ack.
            if h.id != msg::LOCATION_QUERY_RESPONSE {
                out.reply = Some(general_response(session, h));
            }
        }
        msg::TRANSPARENT | msg::TEXT_REPORT | msg::ATTRIBUTES => {
            // Vendor/vehicle payloads with nothing for home care; acked so they are not resent.
            out.reply = Some(general_response(session, h));
        }
        msg::TERMINAL_ACK
        | msg::PARAMETERS
        | msg::COMMAND_RESULT
        | msg::DRIVER_IDENTITY
        | msg::TEXT_REPLY
        | msg::ACCELERATION => {
            // Answers to platform commands or vehicle data: no reply expected, no events.
        }
        other => problems.add("unsupported", format!("message {other:04x} is not decoded")),
    }
    out
}

/// The device's clock offset: the session's, else Beijing time.
fn zone(session: &Session) -> FixedOffset {
    session.tz.unwrap_or_else(beijing)
}

/// UTC+8, the JT/T 808 default.
fn beijing() -> FixedOffset {
    FixedOffset::east_opt(BEIJING_OFFSET_SECS).unwrap_or_else(|| Utc.fix())
}

/// The dedup key of a frame with a device time: serial + device time. A restarted terminal
/// reuses serials, so the serial alone would merge a new SOS into an old report.
fn frame_key(serial: u16, device_time: DateTime<Utc>) -> String {
    format!("s{serial}|t{}", device_time.timestamp_millis())
}

/// Builds an escaped, checksummed reply in the request's header version, numbered with the
/// session's outgoing serial.
fn reply(session: &mut Session, request: &Header<'_>, id: u16, body: &[u8]) -> Vec<u8> {
    platform_message(session, request.phone, request.version, id, body)
}

/// 0x8203 confirming the emergency alarm, addressed as the device's last frame was.
pub fn confirm_alarm(session: &mut Session) -> Option<Vec<u8>> {
    let a = session.addressing.clone()?;
    let mut body = CONFIRM_ALL_SERIALS.to_be_bytes().to_vec();
    body.extend(ALARM_EMERGENCY.to_be_bytes());
    Some(platform_message(
        session,
        &a.phone,
        a.version,
        msg::ALARM_CONFIRM,
        &body,
    ))
}

/// A platform message to the terminal `phone` in the header version of `version`, numbered
/// with the session's outgoing serial, checksummed and escaped.
fn platform_message(
    session: &mut Session,
    phone: &[u8],
    version: Option<u8>,
    id: u16,
    body: &[u8],
) -> Vec<u8> {
    let mut raw = Vec::with_capacity(body.len() + 24);
    raw.extend(id.to_be_bytes());
    // Bodies built here are a few dozen bytes, far below the 10-bit limit.
    let len = u16::try_from(body.len()).unwrap_or(ATTR_BODY_LEN) & ATTR_BODY_LEN;
    let attributes = if version.is_some() {
        len | ATTR_VERSION_2019
    } else {
        len
    };
    raw.extend(attributes.to_be_bytes());
    if let Some(version) = version {
        raw.push(version);
    }
    raw.extend(phone);
    raw.extend(session.out_serial.to_be_bytes());
    session.out_serial = session.out_serial.wrapping_add(1);
    raw.extend(body);
    raw.push(xor(&raw));

    let mut framed = Vec::with_capacity(raw.len() * 2 + 2);
    framed.push(FLAG);
    escape_into(&mut framed, &raw);
    framed.push(FLAG);
    framed
}

/// 0x8001 for `request`: its serial, its id, result 0.
fn general_response(session: &mut Session, request: &Header<'_>) -> Vec<u8> {
    let mut body = request.serial.to_be_bytes().to_vec();
    body.extend(request.id.to_be_bytes());
    body.push(RESULT_OK);
    reply(session, request, msg::GENERAL_RESPONSE, &body)
}

/// Traccar's ASCII sentence variant: `BASE,2,TIME` asks for the time and is echoed with the
/// UTC time in place of `TIME`; other sentences (e-lock command results) carry nothing for
/// home care.
fn decode_sentence(inner: &[u8], session: &mut Session, ctx: &Ctx) -> FrameOutput {
    let text = String::from_utf8_lossy(inner);
    let id = text
        .trim_start_matches('(')
        .split([',', ')'])
        .next()
        .unwrap_or_default();
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        let stripped = id.trim_start_matches('0');
        session.device_id = Some(if stripped.is_empty() { "0" } else { stripped }.to_owned());
    }
    let mut out = FrameOutput::default();
    if text.contains("BASE,2") && text.contains("TIME") {
        let now = ctx.received_at.format("%Y%m%d%H%M%S").to_string();
        out.reply = Some(text.replace("TIME", &now).into_bytes());
        out.reply_now = true;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Location reports: alarms as levels, position, battery
// ---------------------------------------------------------------------------------------------

/// Status word bit 1: the position is a GNSS fix (PROTOCOLS.md §4; JT/T 808-2013 table 25).
const STATUS_FIXED: u32 = 1 << 1;
/// Status word bit 2: south latitude.
const STATUS_SOUTH: u32 = 1 << 2;
/// Status word bit 3: west longitude.
const STATUS_WEST: u32 = 1 << 3;
/// Fixed part of a location body: alarm 4, status 4, lat 4, lon 4, altitude 2, speed 2,
/// course 2, BCD time 6 (PROTOCOLS.md §4, "The 0x0200 location body").
const LOCATION_FIXED_LEN: usize = 28;
/// Most Wi-Fi access points or cells kept on one position (the event schema's list limit).
const MAX_LIST: usize = 64;

/// A bit of [`Session::active_levels`].
const fn level(bit: u32) -> u64 {
    1 << bit
}

// Bits 0–31 of `active_levels` are the alarm word's own bits; the bits above hold the level
// flags that vendors put in additional items.
/// TLV 0xEB sub-record 0x0089, bit 12 clear: the wearable is off the wrist (PROTOCOLS.md §4).
const L_REMOVED: u32 = 32;
/// TLV 0xEB sub-record 0x00C6 = 3 or 4: battery alarm (PROTOCOLS.md §4; Traccar reads it).
const L_BATTERY_ALARM: u32 = 33;
/// TLV 0xE7 (8 bytes), bits 1–3 of its first word: SOS (PROTOCOLS.md §4).
const L_E7_SOS: u32 = 34;
/// TLV 0xFE with mark 0x7C, item 0x01, bit 4: tamper (Traccar's reading).
const L_FE_TAMPER: u32 = 35;

/// Vendor alarm-type items (0xE8/0xEE sub-types, PROTOCOLS.md §4) name the alarm that made the
/// terminal send this report: events, not levels, so each one is new.
const P_SOS: u8 = 1 << 0;
/// 0x0C0F: low battery.
const P_BATTERY: u8 = 1 << 1;
/// 0x0C10: power off.
const P_POWER: u8 = 1 << 2;
/// 0x0C12: tamper.
const P_TAMPER: u8 = 1 << 3;

/// One anxin event an alarm flag raises, and the flags that raise it. Several flags for the
/// same thing (alarm word bit 0 and TLV 0xE7 both saying SOS) make one event per report.
struct Alarm {
    event: EventType,
    field: Option<(&'static str, &'static str)>,
    /// Level bits of [`Session::active_levels`].
    levels: u64,
    /// One-shot vendor alarm types (`P_*`).
    pulses: u8,
}

/// The alarm mapping, in emission order (SOS first). Alarm word bits per PROTOCOLS.md §4 and
/// JT/T 808-2013 table 24; the vehicle bits left out are listed in the README.
const ALARMS: &[Alarm] = &[
    // Bit 0: emergency (the SOS button).
    Alarm {
        event: EventType::Sos,
        field: None,
        levels: level(0) | level(L_E7_SOS),
        pulses: P_SOS,
    },
    Alarm {
        event: EventType::Removal,
        field: Some(("state", "removed")),
        levels: level(L_REMOVED),
        pulses: 0,
    },
    // Bits 16, 17: vendor tamper (reserved in the standard).
    Alarm {
        event: EventType::Tamper,
        field: None,
        levels: level(16) | level(17) | level(L_FE_TAMPER),
        pulses: P_TAMPER,
    },
    // Bit 8: terminal main power off.
    Alarm {
        event: EventType::Power,
        field: Some(("state", "lost")),
        levels: level(8),
        pulses: P_POWER,
    },
    // Bit 7: main power under-voltage; bit 18: vendor low battery (the standard's "daily
    // driving time exceeded", meaningless on a pendant).
    Alarm {
        event: EventType::Battery,
        field: Some(("level", "low")),
        levels: level(7) | level(18) | level(L_BATTERY_ALARM),
        pulses: P_BATTERY,
    },
    // Bits 29, 30: collision / rollover warning. On a wearable an impact may be a fall, so an
    // operator should look; kept as a generic alarm, not guessed to be a fall.
    Alarm {
        event: EventType::Alarm,
        field: Some(("code", "jt808:bit29")),
        levels: level(29),
        pulses: 0,
    },
    Alarm {
        event: EventType::Alarm,
        field: Some(("code", "jt808:bit30")),
        levels: level(30),
        pulses: 0,
    },
    // Bits 4–6: GNSS module fault, antenna cut, antenna short: the pendant cannot locate the
    // wearer during an SOS.
    Alarm {
        event: EventType::Fault,
        field: Some(("code", "jt808:bit4")),
        levels: level(4),
        pulses: 0,
    },
    Alarm {
        event: EventType::Fault,
        field: Some(("code", "jt808:bit5")),
        levels: level(5),
        pulses: 0,
    },
    Alarm {
        event: EventType::Fault,
        field: Some(("code", "jt808:bit6")),
        levels: level(6),
        pulses: 0,
    },
];

/// The alarm word bits anxin maps (the rest are vehicle alarms, out of scope).
const ALARM_WORD_MAPPED: u32 = (1 << 0)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 16)
    | (1 << 17)
    | (1 << 18)
    | (1 << 29)
    | (1 << 30);

/// Where each level bit comes from, for [`alarm_sources`].
const LEVEL_SOURCES: &[(u32, &str)] = &[
    (0, "alarm word bit 0 (emergency)"),
    (L_E7_SOS, "TLV 0xE7 bits 1-3 (SOS)"),
    (L_REMOVED, "TLV 0xEB/0x0089 bit 12 clear (removed)"),
    (16, "alarm word bit 16 (tamper)"),
    (17, "alarm word bit 17 (tamper)"),
    (L_FE_TAMPER, "TLV 0xFE/0x7C item 1 bit 4 (tamper)"),
    (8, "alarm word bit 8 (main power off)"),
    (7, "alarm word bit 7 (main power under-voltage)"),
    (18, "alarm word bit 18 (vendor low battery)"),
    (L_BATTERY_ALARM, "TLV 0xEB/0x00C6 = 3|4 (battery alarm)"),
    (29, "alarm word bit 29 (collision warning)"),
    (30, "alarm word bit 30 (rollover warning)"),
    (4, "alarm word bit 4 (GNSS module fault)"),
    (5, "alarm word bit 5 (GNSS antenna cut)"),
    (6, "alarm word bit 6 (GNSS antenna short)"),
];

/// Where each pulse comes from, for [`alarm_sources`].
const PULSE_SOURCES: &[(u8, &str)] = &[
    (P_SOS, "TLV 0xE8/0xEE sub-type 0x0C01 (SOS)"),
    (P_TAMPER, "TLV 0xE8/0xEE sub-type 0x0C12 (tamper)"),
    (P_POWER, "TLV 0xE8/0xEE sub-type 0x0C10 (power off)"),
    (P_BATTERY, "TLV 0xE8/0xEE sub-type 0x0C0F (low battery)"),
];

/// One location record (a 0x0200 body, or one item of a batch), as far as it could be read.
#[derive(Default)]
struct Report {
    fix: Option<Fix>,
    time: Option<DateTime<Utc>>,
    satellites: Option<u8>,
    battery_percent: Option<f64>,
    battery_voltage: Option<f64>,
    wifi: Vec<Value>,
    cells: Vec<Value>,
    /// Level bits set in this record.
    levels: u64,
    /// Level bits this record reports on, set or clear. A bit whose item is absent keeps its
    /// previous state: a report without the 0xEB item says nothing about removal.
    observed: u64,
    /// One-shot alarm types (`P_*`).
    pulses: u8,
    /// Values sent but unusable (a time that is no date, a position out of range), kept on
    /// the record's alarms.
    flaws: Vec<Flaw>,
}

/// The GNSS part of a location record.
struct Fix {
    lat: f64,
    lon: f64,
    valid: bool,
    altitude_m: i16,
    speed_kmh: f64,
    course_deg: u16,
}

/// The location records of a location-bearing message, and whether their alarm levels belong
/// to the live state (`false` for a blind-area upload of records stored while offline: their
/// edges are judged among themselves, and the live levels are left alone).
fn location_reports(
    msg: &Message<'_>,
    zone: FixedOffset,
    problems: &mut Problems,
) -> Option<(Vec<Report>, bool)> {
    let body = msg.body;
    match msg.header.id {
        msg::LOCATION => Some((vec![read_report(body, zone, problems)], true)),
        msg::LOCATION_QUERY_RESPONSE => {
            let record = body.get(2..).unwrap_or_default();
            Some((vec![read_report(record, zone, problems)], true))
        }
        // count (2), location type (1), then items of length (2) + body (JT/T 808-2013 §8.52).
        msg::BATCH => {
            let mut r = Reader::new(body);
            let (Some(_count), Some(kind)) = (r.u16(), r.u8()) else {
                problems.add("short", format!("batch body of {} bytes", body.len()));
                return Some((Vec::new(), true));
            };
            let mut reports = Vec::new();
            while r.remaining() > 0 {
                let Some(record) = r.u16().and_then(|n| r.take(usize::from(n))) else {
                    problems.add("short", "batch item cut short".to_owned());
                    break;
                };
                reports.push(read_report(record, zone, problems));
            }
            Some((reports, kind != BATCH_BLIND_AREA))
        }
        // Items of length (1) + body (PROTOCOLS.md §4 table; Traccar's reading).
        msg::VENDOR_BATCH => {
            let mut r = Reader::new(body);
            let mut reports = Vec::new();
            while r.remaining() > 0 {
                let Some(record) = r.u8().and_then(|n| r.take(usize::from(n))) else {
                    problems.add("short", "batch item cut short".to_owned());
                    break;
                };
                reports.push(read_report(record, zone, problems));
            }
            Some((reports, true))
        }
        _ => None,
    }
}

/// Reads one location record; whatever is cut short is reported and the rest kept. The alarm
/// word comes first, so even a truncated record still yields its alarms.
fn read_report(body: &[u8], zone: FixedOffset, problems: &mut Problems) -> Report {
    let mut report = Report::default();
    let mut r = Reader::new(body);
    if read_fixed(&mut r, &mut report, zone, problems).is_none() {
        problems.add(
            "short",
            format!(
                "location record of {} bytes, {LOCATION_FIXED_LEN} needed",
                body.len()
            ),
        );
        return report;
    }
    read_items(r.rest(), &mut report, problems);
    report
}

/// The fixed 28 bytes; `None` where they end early (the alarm word is kept if it was read).
fn read_fixed(
    r: &mut Reader<'_>,
    report: &mut Report,
    zone: FixedOffset,
    problems: &mut Problems,
) -> Option<()> {
    let alarm = r.u32()?;
    report.levels |= u64::from(alarm & ALARM_WORD_MAPPED);
    report.observed |= u64::from(ALARM_WORD_MAPPED);
    let (status, lat, lon) = (r.u32()?, r.u32()?, r.u32()?);
    let (altitude_m, speed, course_deg) = (r.i16()?, r.u16()?, r.u16()?);
    let time = r.take(6)?;
    // Unsigned millionths of a degree; the hemisphere is in the status word.
    let (lat, lon) = (f64::from(lat) / 1e6, f64::from(lon) / 1e6);
    if lat <= 90.0 && lon <= 180.0 {
        report.fix = Some(Fix {
            lat: if status & STATUS_SOUTH != 0 {
                -lat
            } else {
                lat
            },
            lon: if status & STATUS_WEST != 0 { -lon } else { lon },
            valid: status & STATUS_FIXED != 0,
            altitude_m,
            // 1/10 km/h.
            speed_kmh: f64::from(speed) / 10.0,
            course_deg,
        });
    } else {
        problems.add("range", format!("position {lat}, {lon} out of range"));
        report.flaws.push(Flaw::new(
            "position",
            format!("{lat},{lon}"),
            "latitude or longitude out of range; the position is left out",
        ));
    }
    report.time = bcd_time(time, zone);
    if report.time.is_none() {
        report.flaws.push(Flaw::new(
            "time",
            hex::encode(time),
            "not a date (BCD YYMMDDhhmmss); the receive time stands in",
        ));
    }
    Some(())
}

/// The additional items: id (1), length (1), value (JT/T 808-2013 §8.18 table 27).
fn read_items(mut items: &[u8], report: &mut Report, problems: &mut Problems) {
    while let [id, len, rest @ ..] = items {
        let len = usize::from(*len);
        let Some(value) = rest.get(..len) else {
            problems.add(
                "tlv",
                format!("item {id:02x} claims {len} bytes, {} left", rest.len()),
            );
            return;
        };
        read_item(*id, value, report);
        items = &rest[len..];
    }
}

/// One additional item. Vendors disagree on many ids (PROTOCOLS.md §4), so each is read only
/// in the length that has one meaning; anything else is skipped.
fn read_item(id: u8, v: &[u8], report: &mut Report) {
    match (id, v.len()) {
        // Satellites in view.
        (0x31, 1) => report.satellites = Some(v[0]),
        // One-byte battery %; 0xFF on 0xD4/0xE1/0xE9 means "charging", not a level.
        (0x06 | 0xD4 | 0xE1 | 0xE9 | 0xFE, 1) => report.set_percent(f64::from(v[0])),
        // Battery in tens of percent, then a reserved byte.
        (0x56, 2) => report.set_percent(f64::from(v[0]) * 10.0),
        // Reserved, battery %, voltage in 10 mV. The same id carries text or a vehicle battery
        // on other terminals: trusted only when the voltage is a single Li-ion cell's.
        (0xE3, 6) => {
            let volts = f64::from(be16(&v[2..4])) / 100.0;
            if (2.5..=5.0).contains(&volts) {
                report.set_percent(f64::from(v[1]));
                report.set_voltage(volts);
            }
        }
        // Charging state, battery %.
        (0xE4, 2) => report.set_percent(f64::from(v[1])),
        // Battery voltage in 10 mV.
        (0x69, 2) => report.set_voltage(f64::from(be16(v)) / 100.0),
        // Battery voltage in mV (4), charging state (1), battery % (1).
        (0xF7, n) if n >= 4 => {
            report.set_voltage(f64::from(be32(v)) / 1000.0);
            if let Some(&p) = v.get(5) {
                report.set_percent(f64::from(p));
            }
        }
        // Cells: MCC (2), MNC (2), then LAC (3), CID (4), RSSI (1) each.
        (0xE1, n) if n >= 12 && (n - 4).is_multiple_of(8) => {
            let (mcc, mnc) = (be16(&v[0..2]), be16(&v[2..4]));
            for c in v[4..].chunks_exact(8) {
                let lac = (u32::from(c[0]) << 16) | u32::from(be16(&c[1..3]));
                report.add_cell(mcc, mnc, lac, be32(&c[3..7]), c[7]);
            }
        }
        // 4G cells: MCC (2), MNC (2), CID (4), LAC (4), RSSI (1) each.
        (0xF0, n) if n > 0 && n.is_multiple_of(13) => {
            for c in v.chunks_exact(13) {
                report.add_cell(
                    be16(&c[0..2]),
                    be16(&c[2..4]),
                    be32(&c[8..12]),
                    be32(&c[4..8]),
                    c[12],
                );
            }
        }
        // Wi-Fi: MAC (6), signed RSSI (1) each.
        (0xEC | 0xF4, n) if n > 0 && n.is_multiple_of(7) => {
            for ap in v.chunks_exact(7) {
                let mac = ap[..6]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                report.add_wifi(mac, i64::from(i8::from_be_bytes([ap[6]])));
            }
        }
        (0xEB, _) => read_eb(v, report),
        // Alarm bits (2), then 6 more bytes; bits 1–3 mean SOS. Other lengths are other
        // vendors' items whose bits mean something else.
        (0xE7, 8) => {
            report.observed |= level(L_E7_SOS);
            if be16(&v[0..2]) & 0b1110 != 0 {
                report.levels |= level(L_E7_SOS);
            }
        }
        // 0xEE of 6 bytes is RSSI / power / battery / satellites, not an alarm type.
        (0xE8, n) | (0xEE, n) if n >= 2 && !(id == 0xEE && n == 6) => {
            report.pulses |= match be16(&v[0..2]) {
                0x0C01 => P_SOS,
                0x0C0F => P_BATTERY,
                0x0C10 => P_POWER,
                0x0C12 => P_TAMPER,
                _ => 0,
            };
        }
        // Mark 0x7C, then sub-items id (1), length (1); item 0x01 is an alarm word.
        (0xFE, n) if n >= 2 && v[0] == 0x7C => {
            let mut rest = &v[1..];
            while let [sub, len, tail @ ..] = rest {
                let Some(value) = tail.get(..usize::from(*len)) else {
                    break;
                };
                if *sub == 0x01 && value.len() >= 4 {
                    report.observed |= level(L_FE_TAMPER);
                    if be32(value) & (1 << 4) != 0 {
                        report.levels |= level(L_FE_TAMPER);
                    }
                }
                rest = &tail[value.len()..];
            }
        }
        _ => {}
    }
}

/// Item 0xEB: cells (MCC > 200 and 3 + 5n bytes), a printable time-zone text, or sub-records
/// of length (2, counting the id) + id (2) + data (PROTOCOLS.md §4).
fn read_eb(v: &[u8], report: &mut Report) {
    if v.len() >= 8 && be16(&v[0..2]) > 200 && (v.len() - 3).is_multiple_of(5) {
        let (mcc, mnc) = (be16(&v[0..2]), u16::from(v[2]));
        for c in v[3..].chunks_exact(5) {
            report.add_cell(
                mcc,
                mnc,
                u32::from(be16(&c[0..2])),
                u32::from(be16(&c[2..4])),
                c[4],
            );
        }
        return;
    }
    // "UTC+08:00": the terminal's zone. Device times follow the configured zone instead.
    if v.iter().all(|b| (0x20..0x7F).contains(b)) {
        return;
    }
    let mut rest = v;
    while rest.len() >= 4 {
        let len = usize::from(be16(&rest[0..2]));
        let Some(record) = rest.get(2..2 + len).filter(|_| len >= 2) else {
            return;
        };
        let (id, data) = (be16(&record[0..2]), &record[2..]);
        match (id, data.len()) {
            // Status word: bit 12 set = worn. (Bit 0 is not read: terminals with 11.7 V
            // external power report it clear, so it cannot mean "power off".)
            (0x0089, 4) => {
                report.observed |= level(L_REMOVED);
                if be32(data) & (1 << 12) == 0 {
                    report.levels |= level(L_REMOVED);
                }
            }
            // Battery alarm code: 3 or 4 = low.
            (0x00C6, 1..) => {
                report.observed |= level(L_BATTERY_ALARM);
                if matches!(data[0], 3 | 4) {
                    report.levels |= level(L_BATTERY_ALARM);
                }
            }
            // Battery %.
            (0x00A8 | 0x00E1, 1) => report.set_percent(f64::from(data[0])),
            // Battery voltage in mV (a 4-byte value is the external supply instead).
            (0x002D, 2) => report.set_voltage(f64::from(be16(data)) / 1000.0),
            // Wi-Fi: count (1), then ASCII "mac,rssi,mac,rssi…".
            (0x00B9, 1..) => {
                let text = String::from_utf8_lossy(&data[1..]);
                let parts: Vec<&str> = text.split(',').map(str::trim).collect();
                for pair in parts.chunks_exact(2) {
                    if let Ok(rssi) = pair[1].parse::<i64>() {
                        report.add_wifi(pair[0].to_ascii_lowercase(), rssi);
                    }
                }
            }
            // One cell: MCC (2), MNC (1), LAC (2), CID (4).
            (0x00D8, 9..) => report.add_cell(
                be16(&data[0..2]),
                u16::from(data[2]),
                u32::from(be16(&data[3..5])),
                be32(&data[5..9]),
                0,
            ),
            _ => {}
        }
        rest = &rest[2 + len..];
    }
}

impl Report {
    /// The first plausible battery percentage wins.
    fn set_percent(&mut self, p: f64) {
        if self.battery_percent.is_none() {
            self.battery_percent = percent(p);
        }
    }

    /// The first plausible battery voltage wins.
    fn set_voltage(&mut self, volts: f64) {
        if self.battery_voltage.is_none() && volts > 0.0 && volts <= 100.0 {
            self.battery_voltage = Some(volts);
        }
    }

    fn add_cell(&mut self, mcc: u16, mnc: u16, lac: u32, cid: u32, rssi: u8) {
        // Zero entries are empty slots of a fixed-size table, not cells.
        if self.cells.len() < MAX_LIST && mcc != 0 && (lac != 0 || cid != 0) {
            self.cells
                .push(json!({"mcc": mcc, "mnc": mnc, "lac": lac, "cid": cid, "rssi": rssi}));
        }
    }

    fn add_wifi(&mut self, mac: String, rssi: i64) {
        if self.wifi.len() < MAX_LIST {
            self.wifi.push(json!({"mac": mac, "rssi": rssi}));
        }
    }
}

/// A battery percentage, if it is one (0xFF and other codes are not).
fn percent(p: f64) -> Option<f64> {
    (0.0..=100.0).contains(&p).then_some(p)
}

/// Emits one record's events: its alarms (SOS first), its position, its battery reading.
/// Returns the alarm levels after it.
fn emit_report(em: &mut Emitter<'_>, report: &Report, before: u64) -> u64 {
    let t = report.time;
    for alarm in ALARMS {
        let active = report.levels & alarm.levels;
        let pulsed = report.pulses & alarm.pulses != 0;
        if active == 0 && !pulsed {
            continue;
        }
        let mut e = em.event(alarm.event, t);
        if let Some((name, value)) = alarm.field {
            e = e.with(name, value);
        }
        // New if any of its flags was clear before, or a vendor item names it as this
        // report's cause; otherwise the terminal is repeating a level it already reported.
        e.still_active = !pulsed && active & !before == 0;
        // DESIGN.md guarantee 5: the alarm stands; what could not be used stays on it.
        e.flaws.extend(report.flaws.iter().cloned());
        em.push(e);
    }

    if let Some(e) = position_event(em, report) {
        em.push(e);
    }

    if report.battery_percent.is_some() || report.battery_voltage.is_some() {
        let mut e = em.event(EventType::Battery, t);
        if let Some(p) = report.battery_percent {
            e = e.with("percent", p);
        }
        if let Some(v) = report.battery_voltage {
            e = e.with("voltage_v", v);
        }
        em.push(e);
    }

    (before & !report.observed) | report.levels
}

/// The position: a GNSS fix (even stale, flagged `valid: false`), else the raw Wi-Fi or cells
/// for a later lookup. A (0, 0) position without a fix is "no position", not the Gulf of Guinea.
fn position_event(em: &Emitter<'_>, report: &Report) -> Option<Event> {
    let fix = report
        .fix
        .as_ref()
        .filter(|f| f.valid || f.lat != 0.0 || f.lon != 0.0);
    let source = match fix {
        Some(_) => "gps",
        None if !report.wifi.is_empty() => "wifi",
        None if !report.cells.is_empty() => "lbs",
        None => return None,
    };
    let mut e = em
        .event(EventType::Position, report.time)
        .with("source", source);
    if let Some(f) = fix {
        e = e
            .with("lat", f.lat)
            .with("lon", f.lon)
            .with("valid", f.valid);
        // Out-of-range values are decoding or unit errors upstream: left out, not clamped.
        if (-1000..=20000).contains(&f.altitude_m) {
            e = e.with("altitude_m", f.altitude_m);
        }
        if f.speed_kmh <= 2000.0 {
            e = e.with("speed_kmh", f.speed_kmh);
        }
        if f.course_deg <= 360 {
            e = e.with("course_deg", f.course_deg);
        }
        if let Some(n) = report.satellites {
            e = e.with("satellites", n);
        }
    }
    if !report.wifi.is_empty() {
        e = e.with("wifi", report.wifi.clone());
    }
    if !report.cells.is_empty() {
        e = e.with("cells", report.cells.clone());
    }
    Some(e)
}

/// Builds a frame's events with one dedup key and consecutive indexes.
struct Emitter<'a> {
    ctx: &'a Ctx,
    device: &'a str,
    key: String,
    serial: u16,
    events: Vec<Event>,
}

impl<'a> Emitter<'a> {
    fn new(ctx: &'a Ctx, device: &'a str, key: String, serial: u16) -> Emitter<'a> {
        Emitter {
            ctx,
            device,
            key,
            serial,
            events: Vec::new(),
        }
    }

    /// The next event (push it before making another: its index is its position).
    fn event(&self, event_type: EventType, device_time: Option<DateTime<Utc>>) -> Event {
        let mut e = self.ctx.event(
            FAMILY,
            self.device,
            event_type,
            &self.key,
            self.events.len(),
        );
        e.device_time = device_time;
        e.seq = Some(i64::from(self.serial));
        e
    }

    fn push(&mut self, e: Event) {
        self.events.push(e);
    }
}

/// `YYMMDDhhmmss` in BCD, local to `zone`; `None` for non-BCD digits or an impossible date
/// (terminals without a clock send zeros).
fn bcd_time(raw: &[u8], zone: FixedOffset) -> Option<DateTime<Utc>> {
    let mut v = [0u8; 6];
    if raw.len() < v.len() {
        return None;
    }
    for (slot, &b) in v.iter_mut().zip(raw) {
        let (hi, lo) = (b >> 4, b & 0x0F);
        if hi > 9 || lo > 9 {
            return None;
        }
        *slot = hi * 10 + lo;
    }
    let date = NaiveDate::from_ymd_opt(2000 + i32::from(v[0]), u32::from(v[1]), u32::from(v[2]))?;
    let local = date.and_hms_opt(u32::from(v[3]), u32::from(v[4]), u32::from(v[5]))?;
    zone.from_local_datetime(&local)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// Big-endian u16 of the first two bytes (callers check the length).
fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Big-endian u32 of the first four bytes (callers check the length).
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A bounds-checked cursor: every read is `None` past the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(be16)
    }

    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(be32)
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FieldKind;
    use bytes::Bytes;
    use proptest::prelude::*;

    /// 2026-03-01 04:00:05 UTC, i.e. 12:00:05 in Beijing.
    fn ctx() -> Ctx {
        Ctx {
            received_at: DateTime::parse_from_rfc3339("2026-03-01T04:00:05Z")
                .unwrap()
                .with_timezone(&Utc),
            peer: "192.0.2.1:40000".into(),
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    fn fresh() -> Session {
        Session::default()
    }

    fn run(frame: &str, session: &mut Session) -> FrameOutput {
        let out = decode(&hex(frame), session, &ctx());
        for e in &out.events {
            assert_schema(e);
        }
        out
    }

    fn types(out: &FrameOutput) -> Vec<(&'static str, bool)> {
        out.events
            .iter()
            .map(|e| (e.event_type.name(), e.still_active))
            .collect()
    }

    /// Every field is one the event type defines, of the right kind and range.
    fn assert_schema(e: &Event) {
        for (name, value) in &e.fields {
            let spec = e
                .event_type
                .field(name)
                .unwrap_or_else(|| panic!("{} has no field {name}", e.event_type));
            let ok = match spec.kind {
                FieldKind::Enum(allowed) => value.as_str().is_some_and(|s| allowed.contains(&s)),
                FieldKind::Number { min, max } => {
                    value.as_f64().is_some_and(|n| (min..=max).contains(&n))
                }
                FieldKind::Integer { min, max } => {
                    value.as_i64().is_some_and(|n| (min..=max).contains(&n))
                }
                FieldKind::Text { max_len } => value
                    .as_str()
                    .is_some_and(|s| !s.is_empty() && s.len() <= max_len),
                FieldKind::Bool => value.is_boolean(),
                FieldKind::List { max_items } => {
                    value.as_array().is_some_and(|a| a.len() <= max_items)
                }
            };
            assert!(ok, "{} field {name} = {value}", e.event_type);
        }
        for spec in e.event_type.fields() {
            assert!(
                !spec.required || e.fields.contains_key(spec.name),
                "{} needs {}",
                e.event_type,
                spec.name
            );
        }
        e.event_type.check_fields(&e.fields).unwrap();
    }

    /// A synthetic 2013 frame (for inputs whose exact bytes are not what the test is about).
    fn build(id: u16, phone: &str, serial: u16, body: &[u8]) -> Vec<u8> {
        let mut raw = id.to_be_bytes().to_vec();
        raw.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
        raw.extend(hex(phone));
        raw.extend(serial.to_be_bytes());
        raw.extend(body);
        raw.push(xor(&raw));
        let mut framed = vec![FLAG];
        escape_into(&mut framed, &raw);
        framed.push(FLAG);
        framed
    }

    /// A location body: alarm word, status, lat/lon in 1e-6°, then the 12 bytes of altitude,
    /// speed, course and time 2026-03-01 12:00:ss (Beijing), then `items`.
    fn location(alarm: u32, second: u8, items: &[u8]) -> Vec<u8> {
        let mut b = alarm.to_be_bytes().to_vec();
        b.extend(3u32.to_be_bytes()); // ACC on, fixed
        b.extend(22_543_210u32.to_be_bytes());
        b.extend(114_057_868u32.to_be_bytes());
        b.extend([0, 16, 0, 50, 0, 90]); // 16 m, 5.0 km/h, 90°
        b.extend([
            0x26,
            0x03,
            0x01,
            0x12,
            0x00,
            (second / 10) << 4 | (second % 10),
        ]);
        b.extend(items);
        b
    }

    // --- Replies -------------------------------------------------------------------------

    #[test]
    fn the_sos_is_confirmed_with_0x8203_in_the_devices_header_version() {
        let mut s = fresh();
        assert_eq!(
            confirm_alarm(&mut s),
            None,
            "nothing to address before a frame"
        );
        let sos = build(
            msg::LOCATION,
            "013800138000",
            0x10,
            &location(ALARM_EMERGENCY, 5, &[]),
        );
        let out = decode(&sos, &mut s, &ctx());
        assert_eq!(types(&out)[0], ("sos", false));
        // 7e | 8203 | 0006 body length, 2013 header | 013800138000 terminal | 0001 our next
        // serial (0000 went to the 0x8001) | 0000 every pending alarm | 00000001 emergency |
        // 2d xor | 7e
        assert_eq!(
            confirm_alarm(&mut s).unwrap(),
            hex("7e 8203 0006 013800138000 0001 0000 00000001 2d 7e")
        );
        assert_eq!(s.out_serial, 2);

        // A 2019 terminal gets the 2019 header: attribute bit 14, version byte, 10-byte number.
        let mut s = fresh();
        s.addressing = Some(Addressing {
            phone: hex("00000000013800138000"),
            version: Some(1),
        });
        s.out_serial = 1;
        assert_eq!(
            confirm_alarm(&mut s).unwrap(),
            hex("7e 8203 4006 01 00000000013800138000 0001 0000 00000001 6c 7e")
        );
    }

    #[test]
    fn heartbeat_gets_the_worked_example_reply_at_once() {
        let mut s = fresh();
        // 7e | 0002 heartbeat | 0000 attributes: 2013, empty body | 043048325465 phone |
        // 00b7 serial | ca xor | 7e
        let out = run("7e 0002 0000 043048325465 00b7 ca 7e", &mut s);
        // 7e | 8001 | 0005 | same phone | 0000 our first serial | 00b7 their serial |
        // 0002 their id | 00 ok | 4e xor | 7e  (PROTOCOLS.md §4 worked example)
        assert_eq!(
            out.reply.clone().unwrap(),
            hex("7e 8001 0005 043048325465 0000 00b7 0002 00 4e 7e")
        );
        assert!(out.reply_now);
        assert_eq!(types(&out), [("heartbeat", false)]);
        assert_eq!(s.device_id.as_deref(), Some("43048325465"));
        assert_eq!(s.out_serial, 1);
        assert_eq!(out.error, None);
    }

    #[test]
    fn a_heartbeat_with_appended_status_also_reports_the_battery() {
        let mut s = fresh();
        // Body: 4b battery 75 % | 14 RSSI | 00 status.
        let frame = build(msg::HEARTBEAT, "013800138000", 5, &[0x4b, 0x14, 0x00]);
        let out = decode(&frame, &mut s, &ctx());
        assert_eq!(types(&out), [("heartbeat", false), ("battery", false)]);
        assert_eq!(out.events[1].number("percent"), Some(75.0));
    }

    #[test]
    fn register_gets_8100_with_the_device_id_as_auth_code() {
        let mut s = fresh();
        // Traccar test frame: 0100 register | 002d 45-byte body | 013511221122 | 0005 serial |
        // province, city, maker, model, terminal id, plate colour, plate | 7e xor... 7e
        let out = run(
            "7e0100002d013511221122000500000000373031303748422d52303347424400000000000000000000\
             003233363631303402cbd5424136383630387e",
            &mut s,
        );
        // 8100 | 000e 14-byte body | phone | 0000 | 0005 their serial | 00 ok |
        // "13511221122" auth code | 89 xor
        assert_eq!(
            out.reply.unwrap(),
            hex("7e 8100 000e 013511221122 0000 0005 00 3133353131323231313232 89 7e")
        );
        assert!(out.reply_now);
        assert!(out.events.is_empty());
    }

    #[test]
    fn a_2019_request_gets_a_2019_reply() {
        let mut s = fresh();
        // 0002 | 4000 attributes: bit 14 = 2019, empty body | 01 version |
        // 00000000000012345678 10-byte phone | 0007 serial | 4c xor
        let out = run("7e 0002 4000 01 00000000000012345678 0007 4c 7e", &mut s);
        // 8001 | 4005 2019 + 5-byte body | 01 | same phone | 0000 | 0007 | 0002 | 00 | c8
        assert_eq!(
            out.reply.unwrap(),
            hex("7e 8001 4005 01 00000000000012345678 0000 0007 0002 00 c8 7e")
        );
        assert_eq!(s.device_id.as_deref(), Some("12345678"));
    }

    #[test]
    fn time_sync_answers_with_the_receive_time_in_utc() {
        let mut s = fresh();
        // 0109 time sync | 0000 | 013800138000 | 0021 serial | 83 xor
        let out = run("7e 0109 0000 013800138000 0021 83 7e", &mut s);
        // 8109 | 0008 | phone | 0000 | 07ea 2026 | 03 01 04 00 05 (UTC) | 00 ok | c4
        assert_eq!(
            out.reply.unwrap(),
            hex("7e 8109 0008 013800138000 0000 07ea 03 01 04 00 05 00 c4 7e")
        );
        assert!(out.reply_now);
    }

    #[test]
    fn outgoing_serial_increments_per_reply_and_wraps() {
        let mut s = Session {
            out_serial: u16::MAX,
            ..fresh()
        };
        let first = run("7e 0002 0000 043048325465 00b7 ca 7e", &mut s)
            .reply
            .unwrap();
        assert_eq!(&first[11..13], &[0xff, 0xff]);
        let second = run("7e 0002 0000 043048325465 00b7 ca 7e", &mut s)
            .reply
            .unwrap();
        assert_eq!(&second[11..13], &[0x00, 0x00]);
        assert_eq!(s.out_serial, 1);
    }

    // --- Alarms as levels ----------------------------------------------------------------

    /// 0200 | 0023 35-byte body | 013800138000 | 0010 serial | 00000001 alarm: bit 0 SOS |
    /// 00000003 status: ACC, fixed | 0157fb6a 22.543210 | 06cc628c 114.057868 | 0010 16 m |
    /// 0032 5.0 km/h | 005a 90° | 260301120000 | 31 01 09: 9 satellites |
    /// e4 02 00 55: battery 85 % | be xor
    const SOS: &str = "7e0200002301380013800000100000000100000003\
                       0157fb6a06cc628c00100032005a260301120000310109e4020055be7e";
    /// The same report 30 s later (serial 0011), SOS bit still set.
    const SOS_AGAIN: &str = "7e0200002301380013800000110000000100000003\
                             0157fb6a06cc628c00100032005a260301120030310109e40200558f7e";
    /// Serial 0012, alarm word 00000081: SOS and low battery together.
    const SOS_LOW_BATTERY: &str = "7e0200002301380013800000120000008100000003\
                                   0157fb6a06cc628c00100032005a260301120100310109e40200553d7e";
    /// Serial 0013, alarm word 00000000: the platform confirmed, the bit is clear.
    const CLEAR: &str = "7e0200002301380013800000130000000000000003\
                         0157fb6a06cc628c00100032005a260301120130310109e40200558d7e";

    #[test]
    fn an_sos_bit_raises_sos_and_the_ack_waits_for_commit() {
        let mut s = fresh();
        let out = run(SOS, &mut s);
        assert_eq!(
            types(&out),
            [("sos", false), ("position", false), ("battery", false)]
        );
        let sos = &out.events[0];
        assert_eq!(sos.device_id, "13800138000");
        assert_eq!(sos.seq, Some(0x10));
        // 12:00:00 Beijing.
        assert_eq!(
            sos.device_time.unwrap().to_rfc3339(),
            "2026-03-01T04:00:00+00:00"
        );
        assert_eq!(sos.dedup_key.as_str(), "jt808:s16|t1772337600000#0");
        let pos = &out.events[1];
        assert_eq!(pos.text("source"), Some("gps"));
        assert_eq!(pos.number("lat"), Some(22.54321));
        assert_eq!(pos.number("lon"), Some(114.057868));
        assert_eq!(pos.fields["valid"], json!(true));
        assert_eq!(pos.number("altitude_m"), Some(16.0));
        assert_eq!(pos.number("speed_kmh"), Some(5.0));
        assert_eq!(pos.number("course_deg"), Some(90.0));
        assert_eq!(pos.number("satellites"), Some(9.0));
        assert_eq!(out.events[2].number("percent"), Some(85.0));
        // 8001 | 0005 | phone | 0000 | 0010 their serial | 0200 | 00 | 3c — after commit.
        assert_eq!(
            out.reply.unwrap(),
            hex("7e 8001 0005 013800138000 0000 0010 0200 00 3c 7e")
        );
        assert!(!out.reply_now);
        assert_eq!(s.active_levels, 1);
    }

    #[test]
    fn the_same_sos_bit_in_the_next_report_is_still_active_not_a_new_press() {
        let mut s = fresh();
        run(SOS, &mut s);
        let out = run(SOS_AGAIN, &mut s);
        assert_eq!(out.events[0].event_type, EventType::Sos);
        assert!(out.events[0].still_active);
        // A new report, so a new key: it is recorded, not dropped as a duplicate.
        assert_eq!(
            out.events[0].dedup_key.as_str(),
            "jt808:s17|t1772337630000#0"
        );
    }

    #[test]
    fn a_retransmitted_report_keeps_its_dedup_keys() {
        let mut first = fresh();
        let mut retry = fresh();
        run(SOS, &mut retry);
        let a = run(SOS, &mut first);
        let b = run(SOS, &mut retry);
        let keys = |o: &FrameOutput| {
            o.events
                .iter()
                .map(|e| e.dedup_key.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&a), keys(&b));
    }

    #[test]
    fn sos_and_low_battery_bits_together_give_both_events() {
        let mut s = fresh();
        let out = run(SOS_LOW_BATTERY, &mut s);
        assert_eq!(
            types(&out),
            [
                ("sos", false),
                ("battery", false),
                ("position", false),
                ("battery", false)
            ]
        );
        assert_eq!(out.events[1].text("level"), Some("low"));
        assert_eq!(out.events[3].number("percent"), Some(85.0));
    }

    #[test]
    fn low_battery_rising_while_sos_is_held_is_new_and_sos_still_active() {
        let mut s = fresh();
        run(SOS, &mut s);
        let out = run(SOS_LOW_BATTERY, &mut s);
        assert_eq!(types(&out)[..2], [("sos", true), ("battery", false)]);
    }

    #[test]
    fn a_cleared_then_set_sos_bit_is_a_new_press() {
        let mut s = fresh();
        run(SOS, &mut s);
        let cleared = run(CLEAR, &mut s);
        assert_eq!(types(&cleared), [("position", false), ("battery", false)]);
        assert_eq!(s.active_levels, 0);
        let again = run(SOS, &mut s);
        assert_eq!(types(&again)[0], ("sos", false));
    }

    #[test]
    fn a_vendor_sos_item_is_an_event_every_time() {
        let mut s = fresh();
        // e8 03 | 0c01 SOS sub-type | 00: the alarm that made the terminal report.
        let body = location(0, 0, &[0xe8, 0x03, 0x0c, 0x01, 0x00]);
        for serial in [1, 2] {
            let out = decode(
                &build(0x0200, "013800138000", serial, &body),
                &mut s,
                &ctx(),
            );
            assert_eq!(types(&out)[0], ("sos", false));
        }
    }

    #[test]
    fn a_truncated_location_still_yields_its_alarm() {
        let mut s = fresh();
        // Only the alarm word survived: 00000001 SOS.
        let out = decode(
            &build(0x0200, "013800138000", 9, &[0, 0, 0, 1]),
            &mut s,
            &ctx(),
        );
        assert_eq!(types(&out), [("sos", false)]);
        assert_eq!(out.events[0].device_time, None);
        // No device time: keyed by the receive time so it never merges into an old report.
        assert_eq!(
            out.events[0].dedup_key.as_str(),
            "jt808:s9|r1772337605000#0"
        );
        assert_eq!(out.error.as_ref().unwrap().0, "short");
        assert!(out.reply.is_some());
    }

    #[test]
    fn removal_from_the_eb_item_and_a_wifi_only_position() {
        let mut s = fresh();
        // 0200 | 0036 | phone | 0030 | alarm 0 | status 0: no fix | lat/lon 0 | 0 0 0 |
        // 260301120000 | eb 08: 0006 0089 ffffefff (bit 12 clear = removed) |
        // ec 0e: 30de4bf67368 ce (-50 dBm), c65bbec0fac6 b8 (-72 dBm) | e7 xor
        let out = run(
            "7e020000360138001380000030000000000000000000000000000000000000000000002603011200\
             00eb0800060089ffffefffec0e30de4bf67368cec65bbec0fac6b8e77e",
            &mut s,
        );
        assert_eq!(types(&out), [("removal", false), ("position", false)]);
        assert_eq!(out.events[0].text("state"), Some("removed"));
        let pos = &out.events[1];
        assert_eq!(pos.text("source"), Some("wifi"));
        assert!(!pos.fields.contains_key("lat"));
        assert_eq!(
            pos.fields["wifi"],
            json!([
                {"mac": "30:de:4b:f6:73:68", "rssi": -50},
                {"mac": "c6:5b:be:c0:fa:c6", "rssi": -72}
            ])
        );
        assert_eq!(s.active_levels, level(L_REMOVED));
        // A report without the 0xEB item says nothing about removal: the level holds.
        run(CLEAR, &mut s);
        assert_eq!(s.active_levels, level(L_REMOVED));
    }

    #[test]
    fn a_blind_area_batch_leaves_the_live_levels_alone() {
        let mut s = fresh();
        let record = location(1, 0, &[]);
        // count 0001 | type 01 blind area | length | record
        let mut body = vec![0, 1, BATCH_BLIND_AREA];
        body.extend(u16::try_from(record.len()).unwrap().to_be_bytes());
        body.extend(&record);
        let out = decode(&build(0x0704, "013800138000", 3, &body), &mut s, &ctx());
        assert_eq!(types(&out), [("sos", false), ("position", false)]);
        assert_eq!(s.active_levels, 0);
        assert!(!out.reply_now);
    }

    #[test]
    fn a_live_batch_judges_each_record_against_the_one_before() {
        let mut s = fresh();
        let mut body = vec![0, 2, 0];
        for second in [0, 30] {
            let record = location(1, second, &[]);
            body.extend(u16::try_from(record.len()).unwrap().to_be_bytes());
            body.extend(&record);
        }
        let out = decode(&build(0x0704, "013800138000", 4, &body), &mut s, &ctx());
        assert_eq!(
            types(&out),
            [
                ("sos", false),
                ("position", false),
                ("sos", true),
                ("position", false)
            ]
        );
        assert_eq!(s.active_levels, 1);
    }

    #[test]
    fn alarm_sources_name_the_bit() {
        assert_eq!(
            alarm_sources(&hex(SOS_LOW_BATTERY)),
            [
                "sos: alarm word bit 0 (emergency)",
                "battery low: alarm word bit 7 (main power under-voltage)"
            ]
        );
    }

    // --- Times and ids -------------------------------------------------------------------

    #[test]
    fn device_time_is_beijing_unless_the_session_says_otherwise() {
        let mut s = Session {
            tz: FixedOffset::east_opt(0),
            ..fresh()
        };
        let out = run(SOS, &mut s);
        assert_eq!(
            out.events[0].device_time.unwrap().to_rfc3339(),
            "2026-03-01T12:00:00+00:00"
        );
    }

    #[test]
    fn device_ids_drop_leading_zeros_and_read_binary_imeis() {
        assert_eq!(device_id(&hex("013511221122")), "13511221122");
        assert_eq!(device_id(&hex("00000000000012345678")), "12345678");
        assert_eq!(device_id(&hex("000000000000")), "0");
        // Not BCD: 0x4eb6fb4afd9e = 86547807010206, Luhn digit 8.
        assert_eq!(device_id(&hex("4eb6fb4afd9e")), "865478070102068");
        assert_eq!(
            device_id(&hex("ab0000000000000000ff")),
            "ab0000000000000000ff"
        );
    }

    // --- Escaping, checksum, broken frames -----------------------------------------------

    #[test]
    fn escaping_round_trips() {
        let raw = [0x30, 0x7e, 0x08, 0x7d, 0x55, 0x7d, 0x7e];
        let mut escaped = Vec::new();
        escape_into(&mut escaped, &raw);
        assert_eq!(escaped, hex("30 7d02 08 7d01 55 7d01 7d02"));
        let mut problems = Problems::default();
        assert_eq!(unescape(&escaped, &mut problems), raw);
        assert!(problems.0.is_empty());
    }

    #[test]
    fn escaped_bytes_in_header_and_body_decode_and_replies_are_escaped() {
        let mut s = fresh();
        // Serial 7e7d sent as 7d02 7d01; latitude 01577e7d sent as 0157 7d02 7d01.
        let out = run(
            "7e0200001c0138001380007d027d01000000000000000301577d027d0106cc628c00100032005a26\
             03011200008b7e",
            &mut s,
        );
        assert_eq!(out.error, None);
        assert_eq!(out.events[0].number("lat"), Some(22.511229));
        assert_eq!(out.events[0].seq, Some(0x7e7d));
        // The reply's body holds 7e7d too: escaped again.
        assert_eq!(
            out.reply.unwrap(),
            hex("7e 8001 0005 013800138000 0000 7d027d01 0200 00 2f 7e")
        );
    }

    #[test]
    fn a_bad_checksum_is_reported_but_the_frame_still_decodes() {
        let mut s = fresh();
        let out = run(&SOS.replace("be7e", "bf7e"), &mut s);
        let (reason, detail) = out.error.unwrap();
        assert_eq!(reason, "xor");
        assert!(detail.contains("check code bf, computed be"), "{detail}");
        assert_eq!(out.events[0].event_type, EventType::Sos);
        assert!(out.reply.is_some());
    }

    #[test]
    fn a_bad_escape_is_reported_and_kept() {
        let mut problems = Problems::default();
        assert_eq!(
            unescape(&hex("01 7d 03 02 7d"), &mut problems),
            hex("01 7d 03 02 7d")
        );
        assert_eq!(problems.0.len(), 2);
        assert_eq!(problems.0[0].0, "escape");
    }

    #[test]
    fn a_frame_too_short_for_its_header_yields_only_an_error() {
        let mut s = fresh();
        let out = run("7e 0200 0000 0138 7e", &mut s);
        assert_eq!(out.error.unwrap().0, "short");
        assert!(out.events.is_empty() && out.reply.is_none());
        assert_eq!(s.device_id, None);
    }

    #[test]
    fn a_body_length_that_disagrees_is_reported_and_the_body_used() {
        let mut s = fresh();
        // Attributes say 0x24 body bytes, 0x23 came; xor adjusted for the changed byte.
        let out = run(
            &SOS.replace("7e02000023", "7e02000024")
                .replace("be7e", "b97e"),
            &mut s,
        );
        assert_eq!(out.error.unwrap().0, "length");
        assert_eq!(out.events[0].event_type, EventType::Sos);
    }

    #[test]
    fn unknown_messages_are_reported_and_not_answered() {
        let mut s = fresh();
        let out = decode(&build(0x0f0f, "013800138000", 1, &[1, 2]), &mut s, &ctx());
        assert_eq!(out.error.unwrap().0, "unsupported");
        assert!(out.reply.is_none() && out.events.is_empty());
    }

    #[test]
    fn base_time_sentence_is_echoed_with_the_utc_time() {
        let mut s = fresh();
        let out = decode(b"(794104004140,1,001,BASE,2,TIME)", &mut s, &ctx());
        assert_eq!(
            out.reply.unwrap(),
            b"(794104004140,1,001,BASE,2,20260301040005)"
        );
        assert!(out.reply_now && out.events.is_empty());
        assert_eq!(s.device_id.as_deref(), Some("794104004140"));
    }

    // --- Framer --------------------------------------------------------------------------

    /// Feeds `input` in chunks of `chunk` bytes; returns frames and skips in order.
    fn split(input: &[u8], chunk: usize) -> Vec<RawFrame> {
        let mut framer = Jt808Framer::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(f) = framer.next_frame(&mut buf) {
                out.push(f);
            }
        }
        out
    }

    fn frame(s: &str) -> RawFrame {
        RawFrame::Frame(Bytes::from(hex(s)))
    }

    const HEARTBEAT: &str = "7e0002000004304832546500b7ca7e";

    #[test]
    fn junk_before_a_frame_is_skipped() {
        // "$$" then the Traccar splitter test frame (escapes in place).
        assert_eq!(
            split(&hex("2424 7e307d02087d01557e"), 64),
            [
                RawFrame::Skipped {
                    bytes: 2,
                    reason: "junk"
                },
                frame("7e307d02087d01557e")
            ]
        );
    }

    #[test]
    fn one_byte_at_a_time() {
        let input = hex(&format!("{HEARTBEAT}{SOS}"));
        assert_eq!(split(&input, 1), [frame(HEARTBEAT), frame(SOS)]);
    }

    #[test]
    fn ten_frames_in_one_buffer() {
        let input = hex(&HEARTBEAT.repeat(10));
        assert_eq!(split(&input, input.len()), vec![frame(HEARTBEAT); 10]);
    }

    #[test]
    fn adjacent_delimiters_resynchronise() {
        // The tail of a frame we joined mid-way, its closing 7e, then a whole frame.
        let input = hex(&format!("0102037e{HEARTBEAT}"));
        assert_eq!(
            split(&input, 64),
            [
                RawFrame::Skipped {
                    bytes: 3,
                    reason: "junk"
                },
                RawFrame::Skipped {
                    bytes: 1,
                    reason: "junk"
                },
                frame(HEARTBEAT)
            ]
        );
    }

    #[test]
    fn an_oversized_frame_is_skipped_and_the_next_one_kept() {
        let mut input = vec![FLAG];
        input.extend(std::iter::repeat_n(0x11, MAX_FRAME_LEN + 10));
        input.push(FLAG);
        input.extend(hex(HEARTBEAT));
        // Streamed: skipped as soon as it outgrows the limit, its tail is junk.
        let streamed = split(&input, 100);
        assert!(streamed.iter().any(|f| matches!(
            f,
            RawFrame::Skipped { bytes, reason: "oversized" } if *bytes > MAX_FRAME_LEN
        )));
        assert_eq!(streamed.last(), Some(&frame(HEARTBEAT)));
        // In one read: skipped up to its closing 7e.
        let whole = split(&input, input.len());
        assert_eq!(whole.last(), Some(&frame(HEARTBEAT)));
        assert_eq!(
            whole[0],
            RawFrame::Skipped {
                bytes: MAX_FRAME_LEN + 11,
                reason: "oversized"
            }
        );
    }

    #[test]
    fn a_truncated_frame_waits_for_more() {
        let mut framer = Jt808Framer::default();
        let mut buf = BytesMut::from(&hex(HEARTBEAT)[..10]);
        assert_eq!(framer.next_frame(&mut buf), None);
        assert_eq!(buf.len(), 10);
        assert_eq!(framer.next_frame(&mut BytesMut::new()), None);
    }

    #[test]
    fn ascii_sentences_are_frames_and_unclosed_ones_junk() {
        let sentence = b"(740190311185,1,001,ELOCK,3,529439)";
        let mut input = b"(abc\x01".to_vec();
        input.extend(sentence);
        input.extend(hex(HEARTBEAT));
        assert_eq!(
            split(&input, 7),
            [
                RawFrame::Skipped {
                    bytes: 4,
                    reason: "junk"
                },
                RawFrame::Skipped {
                    bytes: 1,
                    reason: "junk"
                },
                RawFrame::Frame(Bytes::from_static(sentence)),
                frame(HEARTBEAT)
            ]
        );
    }

    proptest! {
        #[test]
        fn the_framer_never_panics_and_stays_bounded(
            // Arbitrary bytes in which delimiters, escapes and parentheses are common (short
            // frames, sentences, broken escapes) or rare (oversized frames).
            input in (
                prop_oneof![Just(16u16), Just(4096u16)],
                proptest::collection::vec(any::<u16>(), 0..6000),
            )
                .prop_map(|(density, v)| {
                    v.into_iter()
                        .map(|x| match x % density {
                            0 => FLAG,
                            1 => ESCAPE,
                            2 => SENTENCE_OPEN,
                            3 => SENTENCE_CLOSE,
                            _ => x.to_be_bytes()[1],
                        })
                        .collect::<Vec<u8>>()
                }),
            chunk in 1usize..700,
        ) {
            let mut framer = Jt808Framer::default();
            let mut buf = BytesMut::new();
            let mut seen = 0;
            let mut frames = Vec::new();
            let mut oversized = false;
            for piece in input.chunks(chunk) {
                buf.extend_from_slice(piece);
                prop_assert!(buf.len() <= MAX_FRAME_LEN + chunk);
                while let Some(f) = framer.next_frame(&mut buf) {
                    seen += match f {
                        RawFrame::Frame(b) => {
                            let n = b.len();
                            frames.push(b);
                            n
                        }
                        RawFrame::Skipped { bytes, reason } => {
                            prop_assert!(bytes > 0);
                            oversized |= reason == "oversized";
                            bytes
                        }
                    };
                }
                prop_assert!(buf.len() <= MAX_FRAME_LEN);
            }
            // Every byte is accounted for, exactly once.
            prop_assert_eq!(seen + buf.len(), input.len());
            // The frames do not depend on how the stream was cut (an oversized frame is cut
            // where the buffer outgrew the limit, so only then may they differ).
            let whole: Vec<Bytes> = split(&input, input.len().max(1))
                .into_iter()
                .filter_map(|f| match f {
                    RawFrame::Frame(b) => Some(b),
                    RawFrame::Skipped { .. } => None,
                })
                .collect();
            if !oversized {
                prop_assert_eq!(whole, frames);
            }
        }

        #[test]
        fn the_decoder_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut s = Session::default();
            let out = decode(&frame, &mut s, &ctx());
            for e in &out.events {
                assert_schema(e);
            }
            let _ = alarm_sources(&frame);
        }

        #[test]
        fn location_reports_never_panic(
            alarm in any::<u32>(),
            items in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut s = Session::default();
            let frame = build(0x0200, "013800138000", 1, &location(alarm, 0, &items));
            let out = decode(&frame, &mut s, &ctx());
            for e in &out.events {
                assert_schema(e);
            }
            prop_assert!(out.reply.is_some());
            if alarm & 1 != 0 {
                prop_assert_eq!(out.events[0].event_type, EventType::Sos);
            }
        }
    }

    #[test]
    fn schema_helper_rejects_unknown_fields() {
        let e = ctx()
            .event(FAMILY, "d", EventType::Sos, "k", 0)
            .with("nope", 1);
        assert!(std::panic::catch_unwind(|| assert_schema(&e)).is_err());
    }
}
