//! The bracket "watch" protocol (`[3G*…]`, `[SG*…]`, `[CS*…]`, `[ZJ*…]`): the dominant
//! protocol of Chinese elderly and children's smart watches (PROTOCOLS.md §2).
//!
//! Frame: `[MM*ID*[IDX*]LLLL*TYPE,field,…]`. No checksum; the length field is unreliable
//! (15 of 50 real frames disagree with it), so frames are found by bracket depth, never by
//! LLLL. Acks: `LK` and `AL*` are answered with the same word; `TKQ`, `INIT`, `JXTK` have
//! their own replies; everything else gets none (PROTOCOLS.md §2, "What the server must
//! answer"). The `AL` ack is sent only after the alarm is committed.

use bytes::BytesMut;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Ctx, FrameOutput, Framer, RawFrame, Session};
use crate::event::{Event, EventType, Flaw, valid_device_id};

const FAMILY: &str = "watch";

/// Largest frame accepted. Voice (`TK`) and image uploads are the big ones: a few seconds of
/// AMR is well under 64 KiB; 128 KiB leaves room without letting a peer pin memory.
pub const MAX_FRAME: usize = 128 * 1024;

/// The vendor codes of PROTOCOLS.md §2, "Framing".
const VENDORS: [&[u8; 2]; 4] = [b"3G", b"SG", b"CS", b"ZJ"];

/// Status-word bits (PROTOCOLS.md §2, "Alarm bits in the status word").
mod bit {
    pub const LOW_BATTERY: u32 = 0;
    pub const POWER_CUT: u32 = 14;
    pub const SOS: u32 = 16;
    pub const LOW_BATTERY_2: u32 = 17;
    pub const REMOVAL: u32 = 20;
    pub const FALL: u32 = 21;
    pub const FALL_2: u32 = 22;
}

/// Splits the stream on balanced brackets.
#[derive(Debug, Default)]
pub struct WatchFramer {
    /// Where the scan of an unfinished frame stopped, to avoid rescanning on every read.
    scanned: usize,
    /// Bracket depth at `scanned`.
    depth: usize,
}

fn is_frame_start(b: &[u8]) -> bool {
    b.len() >= 4 && b[0] == b'[' && VENDORS.iter().any(|v| &b[1..3] == *v) && b[3] == b'*'
}

impl Framer for WatchFramer {
    fn next_frame(&mut self, buf: &mut BytesMut) -> Option<RawFrame> {
        if buf.is_empty() {
            return None;
        }
        // Junk before the first '[' (or before a plausible frame start).
        if buf[0] != b'[' {
            let skip = buf.iter().position(|&b| b == b'[').unwrap_or(buf.len());
            let _ = buf.split_to(skip);
            self.reset();
            return Some(RawFrame::Skipped {
                bytes: skip,
                reason: "junk",
            });
        }
        if self.scanned == 0 {
            // Judge the header first: a stray '[' then costs one look, not a scan of the
            // whole buffer (which made a run of '[' quadratic — found by fuzzing).
            if buf.len() < 4 {
                return None;
            }
            if !is_frame_start(buf) {
                return Some(self.skip_to_next_start(buf, "junk"));
            }
            self.scanned = 1;
            self.depth = 1;
        }
        let mut i = self.scanned;
        while i < buf.len() {
            match buf[i] {
                b'[' => {
                    // Wait until four bytes tell whether a new header starts here — unless that
                    // would hold more than a frame's worth: then what came before is oversized
                    // and goes, and this '[' is judged on the next call.
                    if buf.len() < i + 4 {
                        if i + 4 <= MAX_FRAME {
                            break;
                        }
                        let _ = buf.split_to(i);
                        self.reset();
                        return Some(RawFrame::Skipped {
                            bytes: i,
                            reason: "oversized",
                        });
                    }
                    // A new frame header inside an unfinished frame: the earlier frame was
                    // cut short (a device reconnecting mid-frame). Drop it, keep the new one.
                    if is_frame_start(&buf[i..]) {
                        let _ = buf.split_to(i);
                        self.reset();
                        return Some(RawFrame::Skipped {
                            bytes: i,
                            reason: "truncated",
                        });
                    }
                    self.depth += 1;
                }
                b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let frame = buf.split_to(i + 1).freeze();
                        self.reset();
                        return Some(RawFrame::Frame(frame));
                    }
                }
                _ => {}
            }
            i += 1;
            if i > MAX_FRAME {
                // No end within the limit. Every '[' scanned was checked for a header, so
                // nothing in these bytes can start a frame: all of them go at once.
                let _ = buf.split_to(i);
                self.reset();
                return Some(RawFrame::Skipped {
                    bytes: i,
                    reason: "oversized",
                });
            }
        }
        self.scanned = i;
        None
    }
}

impl WatchFramer {
    /// Drops the bytes before the next `[` after the current one.
    fn skip_to_next_start(&mut self, buf: &mut BytesMut, reason: &'static str) -> RawFrame {
        let next = buf[1..]
            .iter()
            .position(|&b| b == b'[')
            .map(|p| p + 1)
            .unwrap_or(buf.len());
        let _ = buf.split_to(next);
        self.reset();
        RawFrame::Skipped {
            bytes: next,
            reason,
        }
    }

    fn reset(&mut self) {
        self.scanned = 0;
        self.depth = 0;
    }
}

/// Undoes the escaping of binary payloads: `}` followed by 0x01–0x05 stands for `}`, `[`,
/// `]`, `,`, `*` (PROTOCOLS.md §2, "Escaping").
pub fn unescape(frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len());
    let mut i = 0;
    while i < frame.len() {
        if frame[i] == b'}'
            && let Some(&n) = frame.get(i + 1)
            && (1..=5).contains(&n)
        {
            out.push(b"}[],*"[usize::from(n - 1)]);
            i += 2;
            continue;
        }
        out.push(frame[i]);
        i += 1;
    }
    out
}

/// A parsed frame header.
struct Header<'a> {
    vendor: &'a str,
    id: &'a str,
    index: Option<&'a str>,
    content: &'a [u8],
    /// The length field, when it is not LLLL: only an alarm message is still decoded.
    bad_length: Option<String>,
}

fn is_hex4(s: &[u8]) -> bool {
    s.len() == 4 && s.iter().all(u8::is_ascii_hexdigit)
}

/// Why a frame's header is unusable: `(metric reason, detail)`.
type HeaderError = (&'static str, String);

fn parse_header(frame: &[u8]) -> Result<Header<'_>, HeaderError> {
    let bad = |d: &str| ("bad_header", d.to_owned());
    let inner = frame
        .strip_prefix(b"[")
        .and_then(|f| f.strip_suffix(b"]"))
        .ok_or_else(|| bad("frame is not [ … ]"))?;
    let mut parts = inner.splitn(4, |&b| b == b'*');
    let vendor = parts.next().ok_or_else(|| bad("no vendor code"))?;
    let id = parts.next().ok_or_else(|| bad("no device id"))?;
    let third = parts.next().ok_or_else(|| bad("no length field"))?;
    let rest = parts.next().ok_or_else(|| bad("no content"))?;
    let vendor = std::str::from_utf8(vendor).map_err(|_| bad("vendor code is not text"))?;
    let id = std::str::from_utf8(id).map_err(|_| bad("device id is not text"))?;
    // ZJ-style index: IDX*LLLL*content, recognised by a second 4-hex field (PROTOCOLS.md §2).
    let (index, length, content) = match rest.iter().position(|&b| b == b'*') {
        Some(p) if is_hex4(third) && is_hex4(&rest[..p]) => (
            Some(std::str::from_utf8(third).map_err(|_| bad("bad index"))?),
            &rest[..p],
            &rest[p + 1..],
        ),
        _ => (None, third, rest),
    };
    // LLLL is 4 hex digits (PROTOCOLS.md §2, Framing). Its value is unreliable and never
    // used, but a field that is not LLLL at all (`FFFFFFFF`, empty, text) means this is not
    // a watch frame: it gets no events and no ack — unless it is an alarm message (`AL`),
    // which is never refused for anything besides its type (DESIGN.md guarantee 5).
    let bad_length = (!is_hex4(length))
        .then(|| String::from_utf8_lossy(&length[..length.len().min(16)]).into_owned());
    if let Some(l) = &bad_length
        && !content
            .get(..2)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"AL"))
    {
        return Err((
            "bad_length",
            format!("length field {l:?} is not 4 hex digits"),
        ));
    }
    Ok(Header {
        vendor,
        id,
        index,
        content,
        bad_length,
    })
}

fn reply(h: &Header<'_>, word: &str) -> Vec<u8> {
    match h.index {
        Some(idx) => format!("[{}*{}*{idx}*{:04x}*{word}]", h.vendor, h.id, word.len()),
        None => format!("[{}*{}*{:04x}*{word}]", h.vendor, h.id, word.len()),
    }
    .into_bytes()
}

/// Decodes one frame.
pub fn decode(frame: &[u8], session: &mut Session, ctx: &Ctx) -> FrameOutput {
    let mut out = FrameOutput::default();
    let h = match parse_header(frame) {
        Ok(h) => h,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    if !valid_device_id(h.id) {
        out.error = Some((
            "bad_device_id",
            format!("device id {:?} breaks the id pattern", h.id),
        ));
        return out;
    }
    session.device_id = Some(h.id.to_owned());
    let (word, body) = match h.content.iter().position(|&b| b == b',') {
        Some(p) => (&h.content[..p], &h.content[p + 1..]),
        None => (h.content, &h.content[h.content.len()..]),
    };
    let word = String::from_utf8_lossy(word).into_owned();
    let upper = word.to_ascii_uppercase();
    // Binary payloads (voice, images) carry no home-care data; only text bodies are parsed.
    let text = std::str::from_utf8(body).ok();
    let fields: Vec<&str> = text.map(|t| t.split(',').collect()).unwrap_or_default();
    let hash = hex::encode(&Sha256::digest(frame)[..8]);
    let mut b = Builder {
        ctx,
        id: h.id,
        key: String::new(),
        n: 0,
        out: &mut out,
    };
    match upper.as_str() {
        "LK" => {
            b.key = format!("t{}|h{hash}", ctx.received_at.timestamp_millis());
            b.push(EventType::Heartbeat, &[]);
            // LK,steps,rolls,battery% — a bare LK or LK,x,y carries no battery.
            if let Some(steps) = fields.first().and_then(|s| s.trim().parse::<i64>().ok())
                && steps > 0
            {
                b.push(EventType::Vitals, &[("steps", json!(steps))]);
            }
            if let Some(pct) = fields.get(2).and_then(|s| s.trim().parse::<f64>().ok())
                && (0.0..=100.0).contains(&pct)
            {
                b.push(EventType::Battery, &[("percent", json!(pct))]);
            }
            out.reply = Some(reply(&h, "LK"));
            out.reply_now = true;
        }
        w if is_report(w) || w.starts_with("AL") => {
            let alarm_message = w.starts_with("AL");
            let report = parse_report(&fields, session);
            b.key = format!(
                "t{}|h{hash}",
                report.time.map(|t| t.timestamp_millis()).unwrap_or(0)
            );
            b.report(&report);
            let bits = report.status;
            let was = session.active_levels as u32;
            let mut alarms = 0;
            for (mask, ty, extra) in alarm_bits(bits) {
                alarms += 1;
                // AL is an explicit alarm message: always a new event. In periodic reports the
                // status word is a level: only a bit that was clear before is new.
                let still = !alarm_message && was & mask != 0;
                b.push_alarm(ty, extra, report.time, still, &report.flaws);
            }
            session.active_levels = u64::from(bits);
            if alarm_message {
                if alarms == 0 {
                    // An alarm message that names no alarm bit: never dropped.
                    b.push_alarm(
                        EventType::Alarm,
                        &[("code", json!(format!("watch:{word}")))],
                        report.time,
                        false,
                        &report.flaws,
                    );
                }
                out.reply = Some(reply(&h, "AL"));
            }
        }
        "HEART" | "PULSE" => {
            b.key = format!("t{}|h{hash}", ctx.received_at.timestamp_millis());
            if let Some(bpm) = num(fields.first()).filter(|v| *v > 0.0) {
                b.push(EventType::Vitals, &[("heart_rate", json!(bpm))]);
            }
        }
        "BPHRT" | "BLOOD" => {
            b.key = format!("t{}|h{hash}", ctx.received_at.timestamp_millis());
            let mut v = Vec::new();
            if let Some(s) = num(fields.first()).filter(|v| *v > 0.0) {
                v.push(("systolic", json!(s)));
            }
            if let Some(d) = num(fields.get(1)).filter(|v| *v > 0.0) {
                v.push(("diastolic", json!(d)));
            }
            if let Some(bpm) = num(fields.get(2)).filter(|v| *v > 0.0) {
                v.push(("heart_rate", json!(bpm)));
            }
            if !v.is_empty() {
                b.push(EventType::Vitals, &v);
            }
        }
        "TEMP" => {
            b.key = format!("t{}|h{hash}", ctx.received_at.timestamp_millis());
            if let Some(t) = num(fields.first()).filter(|t| (25.0..=45.0).contains(t)) {
                b.push(EventType::Vitals, &[("temperature", json!(t))]);
            }
        }
        "BTEMP2" => {
            b.key = format!("t{}|h{hash}", ctx.received_at.timestamp_millis());
            if num(fields.first()).is_some_and(|f| f > 0.0)
                && let Some(t) = num(fields.get(1)).filter(|t| (25.0..=45.0).contains(t))
            {
                b.push(EventType::Vitals, &[("temperature", json!(t))]);
            }
        }
        "OXYGEN" => {
            b.key = format!("t{}|h{hash}", ctx.received_at.timestamp_millis());
            if let Some(s) = num(fields.get(1)).filter(|s| *s > 0.0 && *s <= 100.0) {
                b.push(EventType::Vitals, &[("spo2", json!(s))]);
            }
        }
        "TKQ" | "TKQ2" => {
            out.reply = Some(reply(&h, &word));
            out.reply_now = true;
        }
        "INIT" => {
            out.reply = Some(reply(&h, "INIT,1"));
            out.reply_now = true;
        }
        "JXTK" => {
            out.reply = Some(reply(&h, "JXTKR,1"));
            out.reply_now = true;
        }
        _ => {}
    }
    if let Some(l) = &h.bad_length {
        for e in &mut out.events {
            e.flaws.push(Flaw::new(
                "length",
                l,
                "the length field is not 4 hex digits; the alarm is decoded all the same",
            ));
        }
    }
    out
}

fn is_report(w: &str) -> bool {
    matches!(w, "UD" | "UD2" | "UD3" | "UD_LTE" | "UD_WCDMA" | "WT")
}

fn num(s: Option<&&str>) -> Option<f64> {
    s.and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

/// The alarm bits of a status word, each with the event it means. All of them, in bit order:
/// SOS is never masked by a lower-priority bit (PROTOCOLS.md, "Every alarm, not one").
/// One alarm of a status word: the bits that carry it, the event, its fields.
type AlarmBit = (u32, EventType, &'static [(&'static str, &'static str)]);

fn alarm_bits(status: u32) -> Vec<AlarmBit> {
    let mut out = Vec::new();
    let has = |b: u32| status & (1 << b) != 0;
    if has(bit::SOS) {
        out.push((1 << bit::SOS, EventType::Sos, &[][..]));
    }
    if has(bit::FALL) || has(bit::FALL_2) {
        out.push((
            (1 << bit::FALL) | (1 << bit::FALL_2),
            EventType::Fall,
            &[][..],
        ));
    }
    if has(bit::REMOVAL) {
        out.push((
            1 << bit::REMOVAL,
            EventType::Removal,
            &[("state", "removed")][..],
        ));
    }
    if has(bit::POWER_CUT) {
        out.push((
            1 << bit::POWER_CUT,
            EventType::Power,
            &[("state", "lost")][..],
        ));
    }
    if has(bit::LOW_BATTERY) || has(bit::LOW_BATTERY_2) {
        out.push((
            (1 << bit::LOW_BATTERY) | (1 << bit::LOW_BATTERY_2),
            EventType::Battery,
            &[("level", "low")][..],
        ));
    }
    out
}

/// The shared body of UD/UD2/UD3/UD_LTE/UD_WCDMA/WT/AL (PROTOCOLS.md §2, "Positions").
#[derive(Debug, Default)]
struct Report {
    time: Option<DateTime<Utc>>,
    valid: bool,
    lat: Option<f64>,
    lon: Option<f64>,
    speed: Option<f64>,
    course: Option<f64>,
    altitude: Option<f64>,
    satellites: Option<i64>,
    battery: Option<f64>,
    steps: Option<i64>,
    status: u32,
    cells: Vec<Value>,
    wifi: Vec<Value>,
    /// Values that were sent but could not be used, kept on the frame's alarms.
    flaws: Vec<Flaw>,
}

fn parse_report(f: &[&str], session: &Session) -> Report {
    let mut r = Report::default();
    let get = |i: usize| f.get(i).map(|s| s.trim());
    r.time = (|| {
        let d = get(0)?;
        let t = get(1)?;
        if d.len() != 6 || t.len() != 6 {
            return None;
        }
        let n = |s: &str, a: usize| s.get(a..a + 2)?.parse::<u32>().ok();
        let date = NaiveDate::from_ymd_opt(2000 + n(d, 4)? as i32, n(d, 2)?, n(d, 0)?)?;
        let naive = date.and_hms_opt(n(t, 0)?, n(t, 2)?, n(t, 4)?)?;
        Some(match session.tz {
            Some(tz) => tz.from_local_datetime(&naive).single()?.with_timezone(&Utc),
            None => Utc.from_utc_datetime(&naive),
        })
    })();
    // A field that was sent but could not be used (an absent or empty one is no flaw).
    let sent = |i: usize| get(i).is_some_and(|v| !v.is_empty());
    if r.time.is_none() && (sent(0) || sent(1)) {
        let (d, t) = (get(0).unwrap_or(""), get(1).unwrap_or(""));
        r.flaws.push(Flaw::new(
            "time",
            format!("{d},{t}"),
            "not a date and time (ddmmyy,hhmmss); the receive time stands in",
        ));
    }
    r.valid = get(2) == Some("A");
    let coord = |v: Option<&str>, hemi: Option<&str>, neg: &str| -> Option<f64> {
        let mut x = v?.parse::<f64>().ok().filter(|x| x.is_finite())?;
        if hemi == Some(neg) && x > 0.0 {
            x = -x;
        }
        Some(x)
    };
    r.lat = coord(get(3), get(4), "S").filter(|x| (-90.0..=90.0).contains(x));
    r.lon = coord(get(5), get(6), "W").filter(|x| (-180.0..=180.0).contains(x));
    if (sent(3) && r.lat.is_none()) || (sent(5) && r.lon.is_none()) {
        let raw = (3..=6).map(|i| get(i).unwrap_or("")).collect::<Vec<_>>();
        r.flaws.push(Flaw::new(
            "position",
            raw.join(","),
            "latitude or longitude unreadable or out of range; the position is left out",
        ));
        r.lat = None;
        r.lon = None;
    }
    if r.lat == Some(0.0) && r.lon == Some(0.0) {
        // 0,0 is "no fix", not a point in the Gulf of Guinea.
        r.lat = None;
        r.lon = None;
    }
    let n = |i: usize| {
        get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|x| x.is_finite())
    };
    r.speed = n(7).filter(|x| (0.0..=2000.0).contains(x));
    r.course = n(8).filter(|x| (0.0..=360.0).contains(x));
    r.altitude = n(9).filter(|x| (-1000.0..=20000.0).contains(x));
    r.satellites = n(10).map(|x| x as i64).filter(|x| (0..=255).contains(x));
    r.battery = n(12).filter(|x| (0.0..=100.0).contains(x));
    r.steps = n(13)
        .map(|x| x as i64)
        .filter(|x| *x > 0 && *x <= 10_000_000);
    r.status = match get(15) {
        Some(s) if !s.is_empty() => u32::from_str_radix(s, 16).unwrap_or_else(|_| {
            r.flaws.push(Flaw::new(
                "status",
                s,
                "not a hex status word; no status alarm could be read from it",
            ));
            0
        }),
        _ => 0,
    };
    // Cells: count, TA, MCC, MNC, then LAC,CID,RSSI per cell; then Wi-Fi: count, then
    // SSID,MAC,RSSI per access point. Kept raw for a later location lookup.
    let mut i = 16;
    let cells = n(i).map(|x| x as usize).unwrap_or(0).min(64);
    if cells > 0 {
        let (mcc, mnc) = (get(i + 2).unwrap_or(""), get(i + 3).unwrap_or(""));
        let mut j = i + 4;
        for _ in 0..cells {
            if let (Some(lac), Some(cid)) = (get(j), get(j + 1)) {
                r.cells.push(json!({"mcc": mcc, "mnc": mnc, "lac": lac, "cid": cid, "rssi": get(j + 2).unwrap_or("")}));
            }
            j += 3;
        }
        i = j;
    } else {
        i += 2;
    }
    let aps = n(i).map(|x| x as usize).unwrap_or(0).min(64);
    let mut j = i + 1;
    for _ in 0..aps {
        if let (Some(ssid), Some(mac)) = (get(j), get(j + 1)) {
            r.wifi
                .push(json!({"ssid": ssid, "mac": mac, "rssi": get(j + 2).unwrap_or("")}));
        }
        j += 3;
    }
    r
}

struct Builder<'a> {
    ctx: &'a Ctx,
    id: &'a str,
    key: String,
    n: usize,
    out: &'a mut FrameOutput,
}

impl Builder<'_> {
    fn event(&mut self, ty: EventType) -> Event {
        let e = self.ctx.event(FAMILY, self.id, ty, &self.key, self.n);
        self.n += 1;
        e
    }

    fn push(&mut self, ty: EventType, fields: &[(&str, Value)]) {
        let mut e = self.event(ty);
        for (k, v) in fields {
            e = e.with(k, v.clone());
        }
        self.out.events.push(e);
    }

    fn push_alarm(
        &mut self,
        ty: EventType,
        fields: &[(&str, impl Into<Value> + Clone)],
        time: Option<DateTime<Utc>>,
        still: bool,
        flaws: &[Flaw],
    ) {
        let mut e = self.event(ty);
        for (k, v) in fields {
            e = e.with(k, v.clone());
        }
        e.device_time = time;
        e.still_active = still;
        // DESIGN.md guarantee 5: the alarm stands; what could not be used stays on it.
        e.flaws.extend(flaws.iter().cloned());
        self.out.events.push(e);
    }

    fn report(&mut self, r: &Report) {
        let source = if r.lat.is_some() {
            "gps"
        } else if !r.wifi.is_empty() {
            "wifi"
        } else {
            "lbs"
        };
        let mut e = self
            .event(EventType::Position)
            .with("source", source)
            .with("valid", r.valid && r.lat.is_some());
        if let (Some(lat), Some(lon)) = (r.lat, r.lon) {
            e = e.with("lat", lat).with("lon", lon);
        }
        if let Some(v) = r.speed {
            e = e.with("speed_kmh", v);
        }
        if let Some(v) = r.course {
            e = e.with("course_deg", v);
        }
        if let Some(v) = r.altitude {
            e = e.with("altitude_m", v);
        }
        if let Some(v) = r.satellites {
            e = e.with("satellites", v);
        }
        if !r.cells.is_empty() {
            e = e.with("cells", Value::Array(r.cells.clone()));
        }
        if !r.wifi.is_empty() {
            e = e.with("wifi", Value::Array(r.wifi.clone()));
        }
        e.device_time = r.time;
        self.out.events.push(e);
        if let Some(p) = r.battery {
            self.push(EventType::Battery, &[("percent", json!(p))]);
        }
        if let Some(s) = r.steps {
            self.push(EventType::Vitals, &[("steps", json!(s))]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx {
            received_at: DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
            peer: "127.0.0.1:9".into(),
        }
    }

    fn frames(input: &[&[u8]]) -> Vec<RawFrame> {
        let mut f = WatchFramer::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in input {
            buf.extend_from_slice(chunk);
            while let Some(r) = f.next_frame(&mut buf) {
                out.push(r);
            }
        }
        out
    }

    fn types(o: &FrameOutput) -> Vec<(&'static str, bool)> {
        o.events
            .iter()
            .map(|e| (e.event_type.name(), e.still_active))
            .collect()
    }

    #[test]
    fn lk_gets_an_immediate_lk_reply_and_a_heartbeat() {
        let mut s = Session::default();
        let o = decode(b"[3G*4700186508*000B*LK,0,10,100]", &mut s, &ctx());
        assert_eq!(o.reply.as_deref(), Some(&b"[3G*4700186508*0002*LK]"[..]));
        assert!(o.reply_now);
        assert_eq!(types(&o), [("heartbeat", false), ("battery", false)]);
        assert_eq!(s.device_id.as_deref(), Some("4700186508"));
    }

    #[test]
    fn a_length_field_that_is_not_4_hex_digits_is_no_frame_and_gets_no_ack() {
        for f in [
            &b"[3G*4700186508*FFFFFFFF*LK]"[..],
            b"[3G*4700186508**LK]",
            b"[3G*4700186508*00G2*LK]",
        ] {
            let mut s = Session::default();
            let o = decode(f, &mut s, &ctx());
            let frame = String::from_utf8_lossy(f);
            assert_eq!(o.reply, None, "{frame}");
            assert!(o.events.is_empty(), "{frame}");
            assert_eq!(o.error.as_ref().map(|e| e.0), Some("bad_length"), "{frame}");
            assert_eq!(s.device_id, None, "{frame} identifies no device");
        }
    }

    #[test]
    fn an_alarm_with_a_bad_length_field_is_decoded_and_acked_with_a_flaw() {
        let mut s = Session::default();
        let o = decode(
            b"[3G*4700186508*002*AL,231126,101500,A,0,N,0,E,0,0,0,0,0,0,0,0,00010000]",
            &mut s,
            &ctx(),
        );
        assert!(o.reply.is_some(), "the alarm is acked");
        let sos = o
            .events
            .iter()
            .find(|e| e.event_type == EventType::Sos)
            .expect("the SOS bit is decoded");
        assert_eq!(sos.flaws[0].field, "length");
        assert_eq!(sos.flaws[0].value, "002");
        assert_eq!(s.device_id.as_deref(), Some("4700186508"));
    }

    #[test]
    fn the_zj_index_is_echoed_in_the_reply() {
        let o = decode(
            b"[ZJ*5678901234*0001*0002*LK]",
            &mut Session::default(),
            &ctx(),
        );
        assert_eq!(
            o.reply.as_deref(),
            Some(&b"[ZJ*5678901234*0001*0002*LK]"[..])
        );
    }

    #[test]
    fn an_al_with_sos_and_low_battery_yields_both_and_acks_after_commit() {
        // status 00010001: bit 16 SOS and bit 0 low battery.
        let o = decode(
            b"[3G*6907919734*003e*AL,170525,214118,A,22.5,N,113.9,E,0,0,0,5,80,40,0,0,00010001,0,0,0]",
            &mut Session::default(),
            &ctx(),
        );
        let t = types(&o);
        assert!(t.contains(&("sos", false)), "{t:?}");
        assert!(t.contains(&("battery", false)));
        let low = o.events.iter().find(|e| e.text("level") == Some("low"));
        assert!(
            low.is_some(),
            "a low-battery event besides the battery level"
        );
        assert_eq!(o.reply.as_deref(), Some(&b"[3G*6907919734*0002*AL]"[..]));
        assert!(!o.reply_now, "the AL ack waits for the commit");
    }

    #[test]
    fn a_status_level_in_periodic_reports_raises_once_then_is_still_active() {
        let mut s = Session::default();
        let ud = |st: &str| {
            format!(
                "[SG*9051000884*0060*UD,030117,161129,A,52.7,N,0.3,E,0,0,0,5,70,80,0,0,{st},0,0,0]"
            )
        };
        let o = decode(ud("00100000").as_bytes(), &mut s, &ctx());
        assert!(types(&o).contains(&("removal", false)));
        let o = decode(ud("00100000").as_bytes(), &mut s, &ctx());
        assert!(
            types(&o).contains(&("removal", true)),
            "repeat is still active"
        );
        let o = decode(ud("00000000").as_bytes(), &mut s, &ctx());
        assert!(!types(&o).iter().any(|(t, _)| *t == "removal"));
        let o = decode(ud("00100000").as_bytes(), &mut s, &ctx());
        assert!(types(&o).contains(&("removal", false)), "a new rising edge");
    }

    #[test]
    fn an_al_without_alarm_bits_is_an_unexplained_alarm_not_dropped() {
        let o = decode(b"[SG*9051004074*0058*AL,120117,145602,V,40.05,N,76.33,W,11.5,188,99,00,01,80,0,50,00000000,0,1,0,0,,10]", &mut Session::default(), &ctx());
        assert!(
            o.events
                .iter()
                .any(|e| e.event_type == EventType::Alarm && e.text("code") == Some("watch:AL"))
        );
        let pos = o
            .events
            .iter()
            .find(|e| e.event_type == EventType::Position)
            .unwrap();
        assert_eq!(pos.number("lon"), Some(-76.33));
    }

    #[test]
    fn vitals_messages_decode_and_zero_means_no_reading() {
        let mut s = Session::default();
        let o = decode(b"[3G*4700609403*0013*bphrt,120,79,73,,,,]", &mut s, &ctx());
        let v = &o.events[0];
        assert_eq!(
            (
                v.number("systolic"),
                v.number("diastolic"),
                v.number("heart_rate")
            ),
            (Some(120.0), Some(79.0), Some(73.0))
        );
        assert!(
            decode(b"[3G*6005412902*0007*heart,0]", &mut s, &ctx())
                .events
                .is_empty()
        );
        let o = decode(b"[3G*9705141740*000B*oxygen,0,98]", &mut s, &ctx());
        assert_eq!(o.events[0].number("spo2"), Some(98.0));
        let o = decode(b"[3G*2104326058*000E*btemp2,1,35.29]", &mut s, &ctx());
        assert_eq!(o.events[0].number("temperature"), Some(35.29));
        assert!(o.reply.is_none());
    }

    #[test]
    fn frames_split_on_balanced_brackets_even_with_brackets_in_an_ssid() {
        let f = frames(&[b"[3G*1*0002*LK][3G*880900242*0010*UD,1,2,[LG A/C]e7,3]"]);
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[1],
            RawFrame::Frame(bytes::Bytes::from_static(
                b"[3G*880900242*0010*UD,1,2,[LG A/C]e7,3]"
            ))
        );
    }

    #[test]
    fn one_byte_at_a_time_and_ten_frames_at_once_both_work() {
        let one = b"[SG*8800000015*0002*LK]";
        let chunks: Vec<&[u8]> = one.chunks(1).collect();
        assert_eq!(
            frames(&chunks),
            [RawFrame::Frame(bytes::Bytes::from_static(one))]
        );
        let ten = one.repeat(10);
        assert_eq!(frames(&[&ten]).len(), 10);
    }

    #[test]
    fn junk_truncated_and_oversized_input_is_skipped_and_counted() {
        let f = frames(&[b"xx\r\n[3G*1*0002*LK"]);
        assert_eq!(
            f,
            [RawFrame::Skipped {
                bytes: 4,
                reason: "junk"
            }]
        );
        let f = frames(&[b"[3G*1*0002*L[3G*1*0002*LK]"]);
        assert_eq!(
            f[0],
            RawFrame::Skipped {
                bytes: 12,
                reason: "truncated"
            }
        );
        assert!(matches!(f[1], RawFrame::Frame(_)));
        let mut big = b"[3G*1*ffff*TK,".to_vec();
        big.resize(MAX_FRAME + 10, b'a');
        let f = frames(&[&big, b"[3G*1*0002*LK]"]);
        assert_eq!(
            f[0],
            RawFrame::Skipped {
                bytes: MAX_FRAME + 1,
                reason: "oversized"
            }
        );
        assert_eq!(
            f[1],
            RawFrame::Skipped {
                bytes: 9,
                reason: "junk"
            }
        );
        assert!(matches!(f[2], RawFrame::Frame(_)));
    }

    #[test]
    fn a_long_run_of_brackets_is_skipped_in_linear_time() {
        // Found by fuzzing: a frame start followed by MAX_FRAME '[' used to be rescanned
        // once per skipped byte.
        let mut input = b"[3G*1*0002*UD,".to_vec();
        input.resize(MAX_FRAME + 200, b'[');
        input.extend_from_slice(b"[3G*1*0002*LK]");
        let f = frames(&input.chunks(52).collect::<Vec<_>>());
        assert!(
            matches!(f.last(), Some(RawFrame::Frame(_))),
            "{:?}",
            f.last()
        );
    }

    #[test]
    fn a_bracket_at_the_size_limit_never_makes_the_buffer_outgrow_a_frame() {
        // Found by fuzzing: waiting on a '[' in the last bytes before the limit held one byte
        // more than a frame's worth.
        let mut input = b"[3G*1*0002*UD,".to_vec();
        input.resize(MAX_FRAME - 1, b'x');
        input.extend_from_slice(b"[3G*1*0002*LK]");
        let mut f = WatchFramer::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for c in input.chunks(64) {
            buf.extend_from_slice(c);
            assert!(buf.len() <= MAX_FRAME + 64, "{}", buf.len());
            while let Some(r) = f.next_frame(&mut buf) {
                out.push(r);
            }
        }
        assert!(matches!(out.last(), Some(RawFrame::Frame(_))), "{out:?}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_bytes_in_any_chunks_never_panic_or_grow_unbounded(
                data in prop::collection::vec(any::<u8>(), 0..2048),
                chunk in 1usize..64,
            ) {
                let mut f = WatchFramer::default();
                let mut buf = BytesMut::new();
                for c in data.chunks(chunk) {
                    buf.extend_from_slice(c);
                    while let Some(r) = f.next_frame(&mut buf) {
                        if let RawFrame::Frame(fr) = r {
                            let _ = decode(&fr, &mut Session::default(), &ctx());
                        }
                    }
                    prop_assert!(buf.len() <= MAX_FRAME + chunk);
                }
            }
        }
    }
}
