//! The Trv / "IW" protocol (`IWAPxx…#`, `TRVAPxx…#`): a common 4G health-watch protocol that
//! carries SOS, fall, heart rate, blood pressure, SpO2 and body temperature
//! (PROTOCOLS.md §5; family notes in `protocols/trv/README.md`).
//!
//! Frame: `<prefix><type><body>#` with prefix `IW` or `TRV`, a 4-character type (`AP00`,
//! `AP10`, `APHT`, `YP14`, `CP01`, …) and comma-separated fields. No checksum, no length field:
//! frames end at the first `#`. Acks: the type with its first letter incremented (`AP`→`BP`,
//! `YP`→`ZP`, `CP`→`DP`) and the prefix echoed, e.g. `IWBP10#`; the `IW` login gets the
//! server time. Answers to server commands get no ack.
//!
//! A connection must log in (`AP00<IMEI>`) before anything else: the other frames do not name
//! the device, so a frame before login is refused without a reply (the device retransmits it
//! after logging in) rather than guessed at.

use bytes::{Buf, BytesMut};
use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{Ctx, FrameOutput, Framer, RawFrame, Session};
use crate::event::{DedupKey, Event, EventType, Flaw, valid_device_id};

/// The family name (CONTRACT.md, 4G TCP listeners).
const FAMILY: &str = "trv";

/// Largest frame accepted, `#` included.
///
/// Traccar's splitter stops at 1024 bytes (PROTOCOLS.md §5 reads `TrvProtocol.java`), but an
/// `AP10` alarm may carry a Wi-Fi list, and anxin keeps up to 64 access points
/// (`event.rs`, `position.wifi`): 64 × (32-byte SSID + MAC + RSSI + separators) ≈ 3.7 KB. A
/// limit that cut such an alarm would lose an SOS, so the limit is 4 KiB; it still bounds what
/// one connection can make the server buffer.
pub const MAX_FRAME: usize = 4096;

/// Frame terminator (PROTOCOLS.md §5, Framing).
const TERMINATOR: u8 = b'#';

/// Start markers (PROTOCOLS.md §5, Framing; §1 "the first bytes identify the protocol").
/// A frame starts with one of them followed by the first two characters of a device type,
/// `[A-Z]P` (`AP`, `YP`, `CP`): the framer requires those too, so an `IW` in junk (`KIWI`)
/// cannot swallow the real frame that follows it.
const MARKERS: [&[u8]; 2] = [b"IW", b"TRV"];

/// Types that are the device's answers to server commands: Traccar sends no ack for them
/// (PROTOCOLS.md §5, "What the server must answer"). `AP14` is the exception for non-`IW`
/// prefixes, handled in [`ack`].
const NO_ACK_TYPES: [&str; 11] = [
    "AP12", "AP14", "AP33", "AP34", "AP40", "AP76", "AP77", "AP84", "AP85", "AP86", "AP87",
];

/// Splits a Trv byte stream into frames at `#`, resynchronising on the `IW` / `TRV` markers.
///
/// Pure, total and bounded: any input yields frames, skips or "need more"; after a call that
/// returns `None` the buffer holds less than [`MAX_FRAME`] bytes.
#[derive(Debug, Default)]
pub struct TrvFramer {
    /// Inside the tail of an oversized frame: the bytes dropped up to the next start marker
    /// belong to that frame, so they are counted as `oversized`, not `junk`.
    discarding: bool,
}

impl Framer for TrvFramer {
    fn next_frame(&mut self, buf: &mut BytesMut) -> Option<RawFrame> {
        if buf.is_empty() {
            return None;
        }
        let reason = if self.discarding { "oversized" } else { "junk" };
        let drop = match find_start(buf, 0) {
            Start::At(n) => {
                self.discarding = false;
                n
            }
            // A start still arriving (`I`, `TR`, `IWA`, …): wait for it.
            Start::Partial(0) => return None,
            Start::Partial(n) => n,
            Start::None => buf.len(),
        };
        if drop > 0 {
            buf.advance(drop);
            return Some(RawFrame::Skipped {
                bytes: drop,
                reason,
            });
        }
        let window = &buf[..buf.len().min(MAX_FRAME)];
        if let Some(end) = window.iter().position(|&b| b == TERMINATOR) {
            return Some(RawFrame::Frame(buf.split_to(end + 1).freeze()));
        }
        if buf.len() < MAX_FRAME {
            return None;
        }
        // No `#` within the limit: drop this frame up to the next start (which may be a
        // start-like run inside it; the decoder refuses what that yields). The bytes after it
        // that are no start belong to the oversized frame too.
        let drop = match find_start(buf, 1) {
            Start::At(n) => n,
            Start::Partial(n) => {
                self.discarding = true;
                n
            }
            Start::None => {
                self.discarding = true;
                buf.len()
            }
        };
        buf.advance(drop);
        Some(RawFrame::Skipped {
            bytes: drop,
            reason: "oversized",
        })
    }
}

/// Where the next frame starts.
#[derive(Debug, PartialEq)]
enum Start {
    /// A whole start (`IW`/`TRV`, a capital letter, `P`) at this offset.
    At(usize),
    /// From this offset to the end, the bytes are the beginning of a start.
    Partial(usize),
    /// No start, not even a partial one at the end.
    None,
}

/// The first start at or after `from`. Scanning in order, the first offset that is a whole or
/// a partial start decides: a partial one runs to the end, so no whole one can follow it.
fn find_start(buf: &[u8], from: usize) -> Start {
    for i in from..buf.len() {
        let mut partial = false;
        for marker in MARKERS {
            // The marker, then `[A-Z]`, then `P`.
            let len = marker.len() + 2;
            let matches = |j: usize, b: u8| match j {
                j if j < marker.len() => b == marker[j],
                j if j == marker.len() => b.is_ascii_uppercase(),
                _ => b == b'P',
            };
            let avail = &buf[i..buf.len().min(i + len)];
            if avail.iter().enumerate().all(|(j, &b)| matches(j, b)) {
                if avail.len() == len {
                    return Start::At(i);
                }
                partial = true;
            }
        }
        if partial {
            return Start::Partial(i);
        }
    }
    Start::None
}

/// Decodes one Trv frame (as returned by [`TrvFramer`], with or without its `#`).
///
/// Login (`AP00`) binds `session.device_id` and is answered at once. Any other frame on a
/// connection that has not logged in yields no events, no reply and the error `no_login`.
pub fn decode(frame: &[u8], session: &mut Session, ctx: &Ctx) -> FrameOutput {
    let body = frame.strip_suffix(&[TERMINATOR]).unwrap_or(frame);
    let text = String::from_utf8_lossy(body);
    let Some((prefix, ty, rest)) = split_header(&text) else {
        return failed("bad_frame", format!("no IW/TRV header: {}", excerpt(&text)));
    };
    if ty == "AP00" {
        return login(prefix, rest, session, ctx);
    }
    let Some(device) = session.device_id.clone() else {
        return failed(
            "no_login",
            format!("{prefix}{ty} before login (AP00); not acked so the device resends it"),
        );
    };
    let reply = ack(prefix, ty, rest);
    let hash = hex::encode(&Sha256::digest(body)[..8]);
    let mut out = Decoded::new(ctx, &device, hash);
    match ty {
        "AP01" | "AP10" | "YP03" | "YP14" => gps_report(&mut out, ty, rest, session.tz),
        "AP02" => lbs_report(&mut out, rest),
        "AP03" => heartbeat(&mut out, rest, true),
        "CP01" => heartbeat(&mut out, rest, false),
        "AP49" | "APHT" | "APHP" | "AP50" => vitals(&mut out, ty, rest),
        _ if NO_ACK_TYPES.contains(&ty) || is_journal_only(rest) => {}
        _ => out.fail("unsupported", format!("{prefix}{ty}")),
    }
    // Keep-alives are answered at once, as the device drops the link without them; everything
    // else is acked only after its events are committed (the ack means "stored").
    let reply_now = reply.is_some() && matches!(ty, "AP03" | "CP01");
    FrameOutput {
        events: out.events,
        reply: reply.map(String::into_bytes),
        reply_now,
        error: out.error,
    }
}

/// A frame that produced nothing: no events, no reply.
fn failed(reason: &'static str, detail: String) -> FrameOutput {
    FrameOutput {
        error: Some((reason, detail)),
        ..FrameOutput::default()
    }
}

/// At most 80 characters of a frame, for error details.
fn excerpt(text: &str) -> String {
    text.chars().take(80).collect()
}

/// `(prefix, type, rest)`: the prefix `TRV` or `IW`, the 4-character type, everything after.
fn split_header(text: &str) -> Option<(&'static str, &str, &str)> {
    let prefix = if text.starts_with("TRV") {
        "TRV"
    } else if text.starts_with("IW") {
        "IW"
    } else {
        return None;
    };
    let after = &text[prefix.len()..];
    let ty = after.get(..4)?;
    // `[A-Z]P` and two more: the device types of PROTOCOLS.md §5 (APnn, YPnn, CPnn, APHT…).
    let t = ty.as_bytes();
    if !(t[0].is_ascii_uppercase() && t[1] == b'P' && t[2..].iter().all(u8::is_ascii_alphanumeric))
    {
        return None;
    }
    Some((prefix, ty, &after[4..]))
}

/// The generic ack (PROTOCOLS.md §5, "What the server must answer"): the prefix echoed and the
/// type's first letter incremented; none for answers to server commands; `…BP14,0.000,0.000#`
/// for a non-`IW` `AP14`.
fn ack(prefix: &str, ty: &str, rest: &str) -> Option<String> {
    let first = ty.as_bytes()[0];
    // `ZP` + 1 is no letter: not a device type this protocol defines.
    if !(b'A'..=b'Y').contains(&first) {
        return None;
    }
    let reply_ty = format!("{}{}", char::from(first + 1), &ty[1..]);
    if ty == "AP14" && prefix != "IW" {
        return Some(format!("{prefix}{reply_ty},0.000,0.000#"));
    }
    if NO_ACK_TYPES.contains(&ty) || is_journal_only(rest) {
        return None;
    }
    Some(format!("{prefix}{reply_ty}#"))
}

/// Whether the rest of a sentence is only a 6-digit journal number (`IWAPXL,080835`): the
/// device confirming a server command, which Traccar does not ack (PROTOCOLS.md §5).
fn is_journal_only(rest: &str) -> bool {
    rest.strip_prefix(',')
        .is_some_and(|j| j.len() == 6 && j.bytes().all(|b| b.is_ascii_digit()))
}

/// `AP00<IMEI>[,…]`: binds the connection to the IMEI (CONTRACT.md, Devices) and answers at
/// once: `IWBP00,<yyyyMMddHHmmss>,0#` (server time in UTC, time zone 0) or `TRVBP00#`
/// (PROTOCOLS.md §5, Login).
fn login(prefix: &str, rest: &str, session: &mut Session, ctx: &Ctx) -> FrameOutput {
    let imei = rest.split(',').next().unwrap_or_default().trim();
    // Any decimal id is taken, not only 15 digits: refusing an odd-length id would lock a
    // working watch out, and CONTRACT.md says check digits are never enforced.
    if imei.is_empty() || !imei.bytes().all(|b| b.is_ascii_digit()) || !valid_device_id(imei) {
        return failed(
            "bad_login",
            format!("AP00 without a decimal IMEI: {}", excerpt(rest)),
        );
    }
    session.device_id = Some(imei.to_owned());
    let reply = if prefix == "IW" {
        format!("IWBP00,{},0#", ctx.received_at.format("%Y%m%d%H%M%S"))
    } else {
        format!("{prefix}BP00#")
    };
    FrameOutput {
        events: Vec::new(),
        reply: Some(reply.into_bytes()),
        reply_now: true,
        error: None,
    }
}

/// Events of one frame under construction, with the frame's dedup identity.
struct Decoded<'a> {
    ctx: &'a Ctx,
    device: &'a str,
    /// First 8 bytes of the SHA-256 of the frame (without `#`), in hex.
    hash: String,
    /// The device's clock for this frame, when the frame carries one.
    device_time: Option<DateTime<Utc>>,
    /// Values of the frame that could not be used, kept on its alarm.
    flaws: Vec<Flaw>,
    events: Vec<Event>,
    error: Option<(&'static str, String)>,
}

impl<'a> Decoded<'a> {
    fn new(ctx: &'a Ctx, device: &'a str, hash: String) -> Self {
        Decoded {
            ctx,
            device,
            hash,
            device_time: None,
            flaws: Vec::new(),
            events: Vec::new(),
            error: None,
        }
    }

    /// Adds an event. With a device time the key is `t{ms}|h{hash}`, valid for the whole dedup
    /// window (a resent alarm carries the same time and bytes). Without one (heartbeats,
    /// vitals) the key is the frame hash alone, a frame key valid for the redelivery window
    /// only: two identical readings an hour apart are two readings, not a duplicate.
    fn push(&mut self, ty: EventType, fields: Map<String, Value>) {
        let index = self.events.len();
        let mut event = match self.device_time {
            Some(t) => {
                let key = format!("t{}|h{}", t.timestamp_millis(), self.hash);
                self.ctx.event(FAMILY, self.device, ty, &key, index)
            }
            None => {
                let mut e = self.ctx.event(FAMILY, self.device, ty, "", index);
                e.dedup_key = DedupKey::Frame(format!("{FAMILY}:h{}#{index}", self.hash));
                e
            }
        };
        event.fields = fields;
        event.device_time = self.device_time;
        self.events.push(event);
    }

    /// Records why the frame was not fully decoded; the first problem wins.
    fn fail(&mut self, reason: &'static str, detail: String) {
        self.error.get_or_insert((reason, detail));
    }
}

/// One field map.
fn fields<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A battery level in percent, from the 3-digit battery field (PROTOCOLS.md §5, AP03).
fn battery_percent(out: &mut Decoded, digits: Option<&str>) {
    match digits.and_then(|d| d.parse::<u32>().ok()) {
        Some(p) if p <= 100 => out.push(EventType::Battery, fields([("percent", json!(p))])),
        Some(p) => out.fail("bad_value", format!("battery {p} % is out of range")),
        None => {}
    }
}

/// The GPS fix block that opens `AP01`, `AP10`, `YP03` and `YP14` (PROTOCOLS.md §5, AP01):
/// `YYMMDD A|V DDMM.MMMM N|S DDDMM.MMMM E|W ddd.d hhmmss course(6) gsm(3) sat(3) battery(3)
/// acc(1) arm(2) mode(2)`, then vendor digits up to the first comma.
#[derive(Debug, Clone, PartialEq)]
struct Fix {
    /// Device date and time, still in the device's clock (`None` when out of range).
    time: Option<chrono::NaiveDateTime>,
    /// The date and time digits as sent (`YYMMDD,hhmmss`), for a flaw when they are no date.
    time_text: String,
    /// `A`: a current fix; `V`: the coordinates are the last fix, not a new one.
    valid: bool,
    lat: f64,
    lon: f64,
    speed_kmh: f64,
    course_deg: f64,
    satellites: u32,
    /// The battery field as sent (`None` when not digits).
    battery: Option<String>,
}

/// A forward-only reader over the fix block.
struct Cursor<'a> {
    s: &'a str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a str, String> {
        let t = self
            .s
            .get(..n)
            .ok_or_else(|| format!("{what}: too short"))?;
        self.s = &self.s[n..];
        Ok(t)
    }

    fn digits(&mut self, n: usize, what: &str) -> Result<u32, String> {
        let t = self.take(n, what)?;
        if !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{what}: {t:?} is not {n} digits"));
        }
        t.parse().map_err(|_| format!("{what}: {t:?}"))
    }

    /// A coordinate: `deg_digits` degree digits, `mm.mmmm` minutes, then one of `hemis`.
    fn coordinate(
        &mut self,
        deg_digits: usize,
        hemis: [char; 2],
        what: &str,
    ) -> Result<f64, String> {
        let deg = f64::from(self.digits(deg_digits, what)?);
        let len = self
            .s
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let minutes: f64 = self
            .take(len, what)?
            .parse()
            .map_err(|_| format!("{what}: bad minutes"))?;
        let hemi = self.take(1, what)?;
        if !(0.0..60.0).contains(&minutes) {
            return Err(format!("{what}: minutes {minutes} out of range"));
        }
        let value = deg + minutes / 60.0;
        match hemi.chars().next() {
            Some(c) if c == hemis[0] => Ok(value),
            Some(c) if c == hemis[1] => Ok(-value),
            _ => Err(format!("{what}: hemisphere {hemi:?}")),
        }
    }
}

fn parse_fix(blob: &str) -> Result<Fix, String> {
    let mut c = Cursor { s: blob };
    let (yy, mo, dd) = (
        c.digits(2, "date")?,
        c.digits(2, "date")?,
        c.digits(2, "date")?,
    );
    let valid = match c.take(1, "validity")? {
        "A" => true,
        "V" => false,
        v => return Err(format!("validity {v:?}")),
    };
    let lat = c.coordinate(2, ['N', 'S'], "latitude")?;
    let lon = c.coordinate(3, ['E', 'W'], "longitude")?;
    if lat.abs() > 90.0 || lon.abs() > 180.0 {
        return Err(format!("coordinates {lat},{lon} out of range"));
    }
    let speed = c.take(5, "speed")?;
    let speed_kmh: f64 = speed.parse().map_err(|_| format!("speed {speed:?}"))?;
    let (hh, mi, ss) = (
        c.digits(2, "time")?,
        c.digits(2, "time")?,
        c.digits(2, "time")?,
    );
    let course = c.take(6, "course")?;
    let course_deg: f64 = course.parse().map_err(|_| format!("course {course:?}"))?;
    let _gsm = c.take(3, "gsm")?;
    let satellites = c.digits(3, "satellites")?;
    // The status digits after this (battery, acc, arm, mode) do not stop the position.
    let battery = c.take(3, "battery").ok().map(str::to_owned);
    let time =
        NaiveDate::from_ymd_opt(2000 + yy as i32, mo, dd).and_then(|d| d.and_hms_opt(hh, mi, ss));
    Ok(Fix {
        time,
        time_text: format!("{yy:02}{mo:02}{dd:02},{hh:02}{mi:02}{ss:02}"),
        valid,
        lat,
        lon,
        speed_kmh,
        course_deg,
        satellites,
        battery,
    })
}

/// A device clock reading in UTC: Traccar reads Trv times as UTC; a per-device offset in
/// `session.tz` (PROTOCOLS.md §1, Device clocks) takes precedence.
fn to_utc(t: chrono::NaiveDateTime, tz: Option<FixedOffset>) -> Option<DateTime<Utc>> {
    match tz {
        Some(off) => off
            .from_local_datetime(&t)
            .single()
            .map(|t| t.with_timezone(&Utc)),
        None => Some(Utc.from_utc_datetime(&t)),
    }
}

/// `mcc,mnc,lac,cid` as one cell, when all four are numbers.
fn cell(mcc: &str, mnc: &str, lac: &str, cid: &str) -> Option<Value> {
    let n = |s: &str| s.trim().parse::<u64>().ok();
    Some(json!({"mcc": n(mcc)?, "mnc": n(mnc)?, "lac": n(lac)?, "cid": n(cid)?}))
}

/// A Wi-Fi list `name|MAC|rssi&name|MAC|rssi…` (PROTOCOLS.md §5, Framing: dashes in the
/// MACs). MACs are normalised to `aa:bb:cc:dd:ee:ff`; an entry without a readable MAC is
/// dropped, as it cannot be looked up. At most 64 entries (`event.rs`, `position.wifi`).
fn wifi_list(text: &str) -> Vec<Value> {
    text.split('&')
        .filter_map(|entry| {
            // From the right, so an SSID containing `|` stays whole.
            let mut parts = entry.trim().rsplitn(3, '|');
            let rssi = parts.next()?.trim();
            let mac = normalise_mac(parts.next()?)?;
            let ssid = parts.next().unwrap_or_default().trim();
            let mut ap = json!({"ssid": ssid, "mac": mac});
            if let Ok(r) = rssi.parse::<i64>() {
                ap["rssi"] = json!(r);
            }
            Some(ap)
        })
        .take(64)
        .collect()
}

fn normalise_mac(mac: &str) -> Option<String> {
    let octets: Vec<&str> = mac.trim().split(['-', ':']).collect();
    let ok = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| octets.join(":").to_ascii_lowercase())
}

/// The position event of a GPS fix with its raw Wi-Fi and cells, or `None` when there is
/// nothing to place the device with.
fn position_fields(
    fix: Option<&Fix>,
    wifi: Vec<Value>,
    cells: Vec<Value>,
) -> Option<Map<String, Value>> {
    let mut f = Map::new();
    match fix {
        // A `V` fix repeats the last coordinates the watch had; (0,0) means it never had one.
        // Kept with `valid: false` and source `gps` (that is where they came from), so an
        // indoor SOS still shows the last known place, and the raw Wi-Fi/cells ride along
        // for a lookup.
        Some(fix) if fix.valid || fix.lat != 0.0 || fix.lon != 0.0 => {
            f.insert("lat".into(), json!(fix.lat));
            f.insert("lon".into(), json!(fix.lon));
            f.insert("source".into(), json!("gps"));
            f.insert("valid".into(), json!(fix.valid));
            if (0.0..=2000.0).contains(&fix.speed_kmh) {
                f.insert("speed_kmh".into(), json!(fix.speed_kmh));
            }
            if (0.0..=360.0).contains(&fix.course_deg) {
                f.insert("course_deg".into(), json!(fix.course_deg));
            }
            if fix.satellites <= 255 {
                f.insert("satellites".into(), json!(fix.satellites));
            }
        }
        _ if !wifi.is_empty() => {
            f.insert("source".into(), json!("wifi"));
        }
        _ if !cells.is_empty() => {
            f.insert("source".into(), json!("lbs"));
        }
        _ => return None,
    }
    if fix.is_some_and(|fix| !fix.valid) && !f.contains_key("valid") {
        f.insert("valid".into(), json!(false));
    }
    if !wifi.is_empty() {
        f.insert("wifi".into(), Value::Array(wifi));
    }
    if !cells.is_empty() {
        f.insert("cells".into(), Value::Array(cells));
    }
    Some(f)
}

/// `AP01`/`YP03`/`YP14` positions and `AP10` alarms (PROTOCOLS.md §5, Messages):
/// `<fix>,MCC,MNC,LAC,CID[,…]`; `AP10` continues `,<alarm code>,<language>,<flag>,<Wi-Fi>`,
/// the others `,<Wi-Fi>`.
///
/// The alarm is read from its comma position, independently of the fix: an `AP10` whose
/// position cannot be read still raises its alarm.
fn gps_report(out: &mut Decoded, ty: &str, rest: &str, tz: Option<FixedOffset>) {
    let parts: Vec<&str> = rest.split(',').collect();
    let fix = match parse_fix(parts[0]) {
        Ok(fix) => Some(fix),
        Err(why) => {
            out.fail("bad_position", format!("{ty}: {why}"));
            out.flaws.push(Flaw::new(
                "position",
                parts[0],
                format!("{why}; the fix block (time and position) is left out"),
            ));
            None
        }
    };
    out.device_time = fix
        .as_ref()
        .and_then(|f| f.time)
        .and_then(|t| to_utc(t, tz));
    if let Some(f) = &fix
        && out.device_time.is_none()
    {
        out.flaws.push(Flaw::new(
            "time",
            &f.time_text,
            "not a date and time (YYMMDD,hhmmss); the receive time stands in",
        ));
    }
    let cells: Vec<Value> = match parts.get(1..5) {
        Some([mcc, mnc, lac, cid]) => cell(mcc, mnc, lac, cid).into_iter().collect(),
        _ => Vec::new(),
    };
    let is_alarm = ty == "AP10";
    // The Wi-Fi list is the rest of the sentence from its first `name|MAC|rssi` field.
    let wifi_from = if is_alarm { 6 } else { 5 };
    let wifi = parts
        .iter()
        .skip(wifi_from)
        .position(|p| p.contains('|'))
        .map(|i| wifi_list(&parts[wifi_from + i..].join(",")))
        .unwrap_or_default();
    if let Some(f) = position_fields(fix.as_ref(), wifi, cells) {
        out.push(EventType::Position, f);
    }
    if let Some(fix) = &fix {
        battery_percent(out, fix.battery.as_deref());
    }
    if is_alarm {
        alarm(out, parts.get(5).map(|c| c.trim()));
    }
}

/// The `AP10` alarm code (PROTOCOLS.md §5: Traccar maps 01 to SOS, 05 and 06 to fall).
///
/// - `00`: no alarm. `AP10` doubles as the watch's address request (hence the language field
///   after the code); Traccar decodes `00` with no alarm and open-source IW servers label it
///   "no alarm" — only the position counts **[verify per vendor]**.
/// - `02` low battery and `03` watch taken off are not in Traccar: `03` is labelled "not
///   wearing" by an open-source IW server, `02` is the commonly cited code, unconfirmed
///   **[verify per vendor]**.
/// - Anything else, or no code at all, is still an alarm: `alarm` with the code as sent, so an
///   operator can look. An `AP10` is never silently dropped.
fn alarm(out: &mut Decoded, code: Option<&str>) {
    let (ty, f) = match code {
        Some("00") => return,
        Some("01") => (EventType::Sos, Map::new()),
        Some("02") => (EventType::Battery, fields([("level", json!("low"))])),
        Some("03") => (EventType::Removal, fields([("state", json!("removed"))])),
        Some("05" | "06") => (EventType::Fall, Map::new()),
        Some(c) if !c.is_empty() => {
            let c: String = c.chars().take(32).collect();
            (
                EventType::Alarm,
                fields([("code", json!(format!("{FAMILY}:{c}")))]),
            )
        }
        _ => (
            EventType::Alarm,
            fields([("code", json!(format!("{FAMILY}:none")))]),
        ),
    };
    out.push(ty, f);
    // DESIGN.md guarantee 5: the alarm stands; what could not be used stays on it.
    let flaws = out.flaws.clone();
    if let Some(e) = out.events.last_mut() {
        e.flaws.extend(flaws);
    }
}

/// `AP02,<lang>,<reply>,<n cells>,MCC,MNC,LAC|CID|RSSI,…,<n APs>,<Wi-Fi>` (PROTOCOLS.md §5,
/// AP02): a position with only raw cells and access points, for a later lookup.
///
/// Cells are taken while fields look like `LAC|CID|RSSI` rather than trusting the count, so
/// a miscounted list still yields what is there.
fn lbs_report(out: &mut Decoded, rest: &str) {
    let parts: Vec<&str> = rest.split(',').collect();
    let (mcc, mnc) = (parts.get(4).copied(), parts.get(5).copied());
    let mut cells = Vec::new();
    let mut i = 6;
    while let Some(p) = parts.get(i) {
        let c: Vec<&str> = p.split('|').collect();
        let [lac, cid, rssi] = c[..] else { break };
        let (Some(mcc), Some(mnc)) = (mcc, mnc) else {
            break;
        };
        let Some(mut cell) = cell(mcc, mnc, lac, cid) else {
            break;
        };
        if let Ok(r) = rssi.trim().parse::<i64>() {
            cell["rssi"] = json!(r);
        }
        cells.push(cell);
        i += 1;
    }
    // Then the access-point count, then the list itself.
    let wifi = parts
        .get(i + 1..)
        .map(|w| wifi_list(&w.join(",")))
        .unwrap_or_default();
    cells.truncate(64);
    match position_fields(None, wifi, cells) {
        Some(f) => out.push(EventType::Position, f),
        None => out.fail("bad_position", "AP02 with neither cells nor Wi-Fi".into()),
    }
}

/// `AP03,<gsm3><sat3><battery3>…,<steps>,<rolls>` (PROTOCOLS.md §5) and the TRV status
/// `CP01,<gsm3><gps3><battery3>…`: a heartbeat, the battery level, and the step count.
fn heartbeat(out: &mut Decoded, rest: &str, with_steps: bool) {
    let parts: Vec<&str> = rest.trim_start_matches(',').split(',').collect();
    out.push(EventType::Heartbeat, Map::new());
    let status = parts[0].trim();
    if let Some(battery) = status.get(6..9) {
        battery_percent(out, Some(battery));
    }
    if with_steps && let Some(steps) = parts.get(1).and_then(|s| s.trim().parse::<i64>().ok()) {
        if (0..=10_000_000).contains(&steps) {
            out.push(EventType::Vitals, fields([("steps", json!(steps))]));
        } else {
            out.fail("bad_value", format!("steps {steps} out of range"));
        }
    }
}

/// The vital-sign messages (PROTOCOLS.md §5): `AP49,<hr>`; `APHT,<hr>,<sys>,<dia>`;
/// `APHP,<hr>,<sys>,<dia>,<spo2>,<blood sugar>,<temperature>,…`; `AP50,<temperature>,<battery>`.
///
/// An empty or `0` value means "not measured" (an optical sensor that could not read reports 0)
/// and is left out rather than reported as a heart rate of 0, which would open a "heart rate
/// below 45" alert **[verify per vendor]**. A value outside the schema range is a
/// unit or decoding problem and is left out with a `bad_value` error. Blood sugar is not
/// mapped: its unit is undocumented (Traccar's test sends 90, which reads as mg/dL, while
/// anxin's `blood_glucose` is mmol/L).
fn vitals(out: &mut Decoded, ty: &str, rest: &str) {
    let parts: Vec<&str> = rest.trim_start_matches(',').split(',').collect();
    let layout: &[(usize, &str)] = match ty {
        "AP49" => &[(0, "heart_rate")],
        "APHT" => &[(0, "heart_rate"), (1, "systolic"), (2, "diastolic")],
        "APHP" => &[
            (0, "heart_rate"),
            (1, "systolic"),
            (2, "diastolic"),
            (3, "spo2"),
            (5, "temperature"),
        ],
        _ => &[(0, "temperature")],
    };
    let mut f = Map::new();
    for &(i, name) in layout {
        let Some(text) = parts.get(i).map(|t| t.trim()).filter(|t| !t.is_empty()) else {
            continue;
        };
        match number(text) {
            Some((0.0, _)) => {}
            Some((v, json)) if in_range(EventType::Vitals, name, v) => {
                f.insert(name.to_owned(), json);
            }
            _ => out.fail("bad_value", format!("{ty} {name} {text:?} out of range")),
        }
    }
    if !f.is_empty() {
        out.push(EventType::Vitals, f);
    }
    if ty == "AP50" {
        battery_percent(out, parts.get(1).map(|b| b.trim()));
    }
}

/// A decimal number as sent, kept an integer in JSON when it is one.
fn number(text: &str) -> Option<(f64, Value)> {
    if let Ok(i) = text.parse::<i64>() {
        return Some((i as f64, json!(i)));
    }
    let f: f64 = text.parse().ok()?;
    f.is_finite().then(|| (f, json!(f)))
}

/// Whether `v` fits the schema range of `ty.name` (`event.rs`).
fn in_range(ty: EventType, name: &str, v: f64) -> bool {
    match ty.field(name).map(|s| s.kind) {
        Some(crate::event::FieldKind::Number { min, max }) => (min..=max).contains(&v),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FieldKind;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 5, 8, 15, 0).unwrap()
    }

    fn ctx() -> Ctx {
        Ctx {
            received_at: at(),
            peer: "10.0.0.7:40000".into(),
        }
    }

    fn logged_in() -> Session {
        Session {
            device_id: Some("353456789012345".into()),
            ..Session::default()
        }
    }

    fn run(frame: &str) -> FrameOutput {
        let out = decode(frame.as_bytes(), &mut logged_in(), &ctx());
        assert_schema(&out.events);
        out
    }

    fn reply(out: &FrameOutput) -> Option<&str> {
        out.reply
            .as_deref()
            .map(|r| std::str::from_utf8(r).unwrap())
    }

    fn types(out: &FrameOutput) -> Vec<EventType> {
        out.events.iter().map(|e| e.event_type).collect()
    }

    fn one(out: &FrameOutput, ty: EventType) -> &Event {
        let found: Vec<_> = out.events.iter().filter(|e| e.event_type == ty).collect();
        assert_eq!(found.len(), 1, "one {ty} in {:?}", types(out));
        found[0]
    }

    /// Every field is one the type defines, of its kind and in its range (event.rs).
    fn assert_schema(events: &[Event]) {
        for e in events {
            for (k, v) in &e.fields {
                let spec = e
                    .event_type
                    .field(k)
                    .unwrap_or_else(|| panic!("{} has no field {k}", e.event_type));
                let ok = match spec.kind {
                    FieldKind::Enum(set) => v.as_str().is_some_and(|s| set.contains(&s)),
                    FieldKind::Number { min, max } => {
                        v.as_f64().is_some_and(|n| (min..=max).contains(&n))
                    }
                    FieldKind::Integer { min, max } => {
                        v.as_i64().is_some_and(|n| (min..=max).contains(&n))
                    }
                    FieldKind::Text { max_len } => v.as_str().is_some_and(|s| s.len() <= max_len),
                    FieldKind::Bool => v.is_boolean(),
                    FieldKind::List { max_items } => {
                        v.as_array().is_some_and(|a| a.len() <= max_items)
                    }
                };
                assert!(ok, "{}.{k} = {v} breaks its schema", e.event_type);
            }
            for spec in e.event_type.fields().iter().filter(|s| s.required) {
                assert!(
                    e.fields.contains_key(spec.name),
                    "{} lacks {}",
                    e.event_type,
                    spec.name
                );
            }
            e.event_type.check_fields(&e.fields).unwrap();
            assert_eq!(e.device_id, "353456789012345");
            assert_eq!(e.source.protocol, "trv");
        }
    }

    const SOS: &str = "IWAP10080524A2232.9806N11404.9355E000.1061830323.8706000908000502,460,0,9520,3671,01,zhcn,00,HOME|74-DE-2B-44-88-8C|97&HOME1|74-DE-2B-44-88-8D|-60#";

    // ---- decoder ----

    #[test]
    fn login_binds_the_imei_and_answers_at_once_with_the_server_time_in_utc() {
        let mut s = Session::default();
        let out = decode(
            b"IWAP00353456789012345,8901240204123656505f#",
            &mut s,
            &ctx(),
        );
        assert_eq!(s.device_id.as_deref(), Some("353456789012345"));
        assert_eq!(reply(&out), Some("IWBP00,20260305081500,0#"));
        assert!(out.reply_now);
        assert!(out.events.is_empty());
        assert_eq!(out.error, None);
    }

    #[test]
    fn trv_login_gets_the_short_reply() {
        let mut s = Session::default();
        let out = decode(b"TRVAP00352121088015548#", &mut s, &ctx());
        assert_eq!(s.device_id.as_deref(), Some("352121088015548"));
        assert_eq!(reply(&out), Some("TRVBP00#"));
        assert!(out.reply_now);
    }

    #[test]
    fn a_login_without_a_decimal_imei_is_refused_without_reply() {
        for frame in ["IWAP00#", "IWAP00,123#", "IWAP0035345678901234X#"] {
            let mut s = Session::default();
            let out = decode(frame.as_bytes(), &mut s, &ctx());
            assert_eq!(s.device_id, None, "{frame}");
            assert_eq!(out.reply, None, "{frame}");
            assert_eq!(
                out.error.as_ref().map(|e| e.0),
                Some("bad_login"),
                "{frame}"
            );
        }
    }

    #[test]
    fn frames_before_login_yield_nothing_and_no_ack_so_the_device_resends() {
        let mut s = Session::default();
        let out = decode(SOS.as_bytes(), &mut s, &ctx());
        assert!(out.events.is_empty());
        assert_eq!(out.reply, None);
        assert_eq!(out.error.as_ref().map(|e| e.0), Some("no_login"));
        // After the login the same frame is decoded.
        decode(b"IWAP00353456789012345#", &mut s, &ctx());
        let out = decode(SOS.as_bytes(), &mut s, &ctx());
        assert!(types(&out).contains(&EventType::Sos));
    }

    #[test]
    fn heartbeat_reports_battery_and_steps_and_is_answered_at_once() {
        let out = run("IWAP03,06000908000102,5555,30#");
        assert_eq!(
            types(&out),
            [EventType::Heartbeat, EventType::Battery, EventType::Vitals]
        );
        assert_eq!(one(&out, EventType::Battery).fields["percent"], json!(80));
        assert_eq!(one(&out, EventType::Vitals).fields["steps"], json!(5555));
        assert_eq!(reply(&out), Some("IWBP03#"));
        assert!(out.reply_now);
        assert_eq!(out.error, None);
    }

    #[test]
    fn trv_status_is_a_heartbeat_with_battery() {
        let out = run("TRVCP01,07800010010000602001206001120124#");
        assert_eq!(types(&out), [EventType::Heartbeat, EventType::Battery]);
        assert_eq!(one(&out, EventType::Battery).fields["percent"], json!(100));
        assert_eq!(reply(&out), Some("TRVDP01#"));
        assert!(out.reply_now);
    }

    #[test]
    fn sos_alarm_yields_position_battery_and_sos_and_is_acked_after_commit() {
        let out = run(SOS);
        assert_eq!(
            types(&out),
            [EventType::Position, EventType::Battery, EventType::Sos]
        );
        assert_eq!(reply(&out), Some("IWBP10#"));
        assert!(!out.reply_now, "an alarm is acked only once stored");
        let p = one(&out, EventType::Position);
        assert!((p.number("lat").unwrap() - 22.54968).abs() < 1e-5);
        assert!((p.number("lon").unwrap() - 114.08226).abs() < 1e-5);
        assert_eq!(p.text("source"), Some("gps"));
        assert_eq!(p.fields["valid"], json!(true));
        assert_eq!(p.fields["speed_kmh"], json!(0.1));
        assert_eq!(p.fields["course_deg"], json!(323.87));
        assert_eq!(p.fields["satellites"], json!(9));
        assert_eq!(
            p.fields["cells"],
            json!([{"mcc": 460, "mnc": 0, "lac": 9520, "cid": 3671}])
        );
        assert_eq!(
            p.fields["wifi"],
            json!([
                {"ssid": "HOME", "mac": "74:de:2b:44:88:8c", "rssi": 97},
                {"ssid": "HOME1", "mac": "74:de:2b:44:88:8d", "rssi": -60}
            ])
        );
        let t = Utc.with_ymd_and_hms(2008, 5, 24, 6, 18, 30).unwrap();
        for e in &out.events {
            assert_eq!(e.device_time, Some(t));
            assert!(matches!(e.dedup_key, DedupKey::Device(_)));
        }
        assert_eq!(one(&out, EventType::Battery).fields["percent"], json!(80));
    }

    #[test]
    fn dedup_keys_are_device_time_and_frame_hash_and_ignore_the_terminator() {
        let a = run(SOS);
        let b = run(SOS.trim_end_matches('#'));
        let key = a.events[2].dedup_key.as_str().to_owned();
        assert_eq!(key, b.events[2].dedup_key.as_str());
        let hash = hex::encode(&Sha256::digest(SOS.trim_end_matches('#').as_bytes())[..8]);
        assert_eq!(key, format!("trv:t1211609910000|h{hash}#2"));
        // Frames without a device time get a frame key: identical readings later are new.
        let hr = run("IWAP49,68#");
        assert!(matches!(hr.events[0].dedup_key, DedupKey::Frame(_)));
    }

    #[test]
    fn fall_codes_05_and_06_are_falls() {
        for code in ["05", "06"] {
            let out = run(&SOS.replace(",01,zhcn", &format!(",{code},zhcn")));
            assert!(types(&out).contains(&EventType::Fall), "{code}");
            assert!(!types(&out).contains(&EventType::Sos), "{code}");
        }
    }

    #[test]
    fn low_battery_removal_and_unknown_codes_are_all_reported() {
        let low = run(&SOS.replace(",01,zhcn", ",02,zhcn"));
        let flags: Vec<_> = low
            .events
            .iter()
            .filter(|e| e.text("level") == Some("low"))
            .collect();
        assert_eq!(flags.len(), 1);
        let off = run(&SOS.replace(",01,zhcn", ",03,zhcn"));
        assert_eq!(one(&off, EventType::Removal).text("state"), Some("removed"));
        let odd = run(&SOS.replace(",01,zhcn", ",09,zhcn"));
        assert_eq!(one(&odd, EventType::Alarm).text("code"), Some("trv:09"));
        let none = run(
            "IWAP10080524A2232.9806N11404.9355E000.1061830323.8706000908000502,460,0,9520,3671#",
        );
        assert_eq!(one(&none, EventType::Alarm).text("code"), Some("trv:none"));
        // 00: the address request, no alarm.
        let addr = run(&SOS.replace(",01,zhcn", ",00,zhcn"));
        assert_eq!(types(&addr), [EventType::Position, EventType::Battery]);
    }

    #[test]
    fn an_alarm_whose_position_cannot_be_read_is_still_raised() {
        let out = run("IWAP10garbled,460,0,9520,3671,01,zh-cn,00#");
        assert!(types(&out).contains(&EventType::Sos));
        assert_eq!(out.error.as_ref().map(|e| e.0), Some("bad_position"));
        assert_eq!(reply(&out), Some("IWBP10#"));
    }

    #[test]
    fn a_stale_fix_is_kept_flagged_invalid_and_a_fixless_one_falls_back_to_the_raw_lists() {
        let stale = run(&SOS.replace("080524A", "080524V"));
        let p = one(&stale, EventType::Position);
        assert_eq!(p.fields["valid"], json!(false));
        assert_eq!(p.text("source"), Some("gps"));
        let none = run(
            "IWAP01080524V0000.0000N00000.0000E000.0061830000.0006000908000102,460,0,9520,3671,a|74-DE-2B-44-88-8C|97#",
        );
        let p = one(&none, EventType::Position);
        assert_eq!(p.text("source"), Some("wifi"));
        assert!(!p.fields.contains_key("lat"));
        assert_eq!(p.fields["valid"], json!(false));
    }

    #[test]
    fn lbs_and_wifi_report_is_a_raw_position() {
        let out = run(
            "IWAP02,zh_cn,0,7,460,0,9520|3671|13,9520|3672|12,4,1|D8-24-BD-79-FA-1F|59&2|3C-46-D8-6D-CE-01|81#",
        );
        let p = one(&out, EventType::Position);
        assert_eq!(p.text("source"), Some("wifi"));
        assert_eq!(p.fields["cells"].as_array().unwrap().len(), 2);
        assert_eq!(
            p.fields["cells"][1],
            json!({"mcc": 460, "mnc": 0, "lac": 9520, "cid": 3672, "rssi": 12})
        );
        assert_eq!(p.fields["wifi"][0]["mac"], json!("d8:24:bd:79:fa:1f"));
        assert_eq!(reply(&out), Some("IWBP02#"));
    }

    #[test]
    fn heart_rate_frame_gives_vitals() {
        let out = run("IWAP49,68#");
        assert_eq!(types(&out), [EventType::Vitals]);
        assert_eq!(out.events[0].fields, fields([("heart_rate", json!(68))]));
        assert_eq!(reply(&out), Some("IWBP49#"));
        assert!(!out.reply_now);
    }

    #[test]
    fn blood_pressure_frame_gives_heart_rate_and_pressure() {
        let out = run("IWAPHT,60,130,85#");
        assert_eq!(
            out.events[0].fields,
            fields([
                ("heart_rate", json!(60)),
                ("systolic", json!(130)),
                ("diastolic", json!(85))
            ])
        );
        assert_eq!(reply(&out), Some("IWBPHT#"));
    }

    #[test]
    fn full_health_frame_gives_spo2_and_temperature_but_not_the_unitless_sugar() {
        let out = run("IWAPHP,60,130,85,95,90,36.5,,,,,,,#");
        assert_eq!(
            out.events[0].fields,
            fields([
                ("heart_rate", json!(60)),
                ("systolic", json!(130)),
                ("diastolic", json!(85)),
                ("spo2", json!(95)),
                ("temperature", json!(36.5))
            ])
        );
        assert_eq!(reply(&out), Some("IWBPHP#"));
        assert_eq!(out.error, None);
    }

    #[test]
    fn temperature_frame_gives_temperature_and_battery() {
        let out = run("IWAP50,36.7,90#");
        assert_eq!(types(&out), [EventType::Vitals, EventType::Battery]);
        assert_eq!(out.events[0].fields["temperature"], json!(36.7));
        assert_eq!(out.events[1].fields["percent"], json!(90));
        assert_eq!(reply(&out), Some("IWBP50#"));
    }

    #[test]
    fn unmeasured_zeros_are_left_out_and_impossible_values_flagged() {
        let out = run("IWAPHP,0,0,0,97,0,0#");
        assert_eq!(out.events[0].fields, fields([("spo2", json!(97))]));
        let out = run("IWAP50,98.6,90#");
        assert_eq!(
            types(&out),
            [EventType::Battery],
            "a Fahrenheit reading is not a fever"
        );
        assert_eq!(out.error.as_ref().map(|e| e.0), Some("bad_value"));
    }

    #[test]
    fn command_answers_and_journal_confirmations_get_no_ack() {
        for frame in [
            "IWAPXL,080835#",
            "IWAP12,080835,+491773329827,+491773329826#",
            "IWAP14,080835,004e0069|+4952032960728,,,#",
        ] {
            let out = run(frame);
            assert!(out.events.is_empty(), "{frame}");
            assert_eq!(out.reply, None, "{frame}");
            assert_eq!(out.error, None, "{frame}");
        }
        assert_eq!(reply(&run("TRVAP14,1#")), Some("TRVBP14,0.000,0.000#"));
    }

    #[test]
    fn unknown_types_are_acked_and_counted_as_unsupported() {
        let out = run("IWAPWT,zh_cn#");
        assert_eq!(reply(&out), Some("IWBPWT#"));
        assert_eq!(out.error.as_ref().map(|e| e.0), Some("unsupported"));
        let out = run(
            "TRVYP03190805A1828.9242N07353.9423E000.0150716029.0010000810020201112,404,27,184,10229#",
        );
        assert_eq!(reply(&out), Some("TRVZP03#"));
        assert!(types(&out).contains(&EventType::Position));
    }

    #[test]
    fn frames_that_are_no_trv_sentence_are_refused() {
        for frame in [
            "#",
            "IW#",
            "IWA#",
            "XXAP03#",
            "IW\u{e9}AP03#",
            "IWIWAP03#",
            "IWap03#",
        ] {
            let out = run(frame);
            assert!(out.events.is_empty(), "{frame}");
            assert_eq!(out.reply, None, "{frame}");
            assert_eq!(
                out.error.as_ref().map(|e| e.0),
                Some("bad_frame"),
                "{frame}"
            );
        }
    }

    #[test]
    fn a_per_device_time_zone_shifts_device_times_to_utc() {
        let mut s = logged_in();
        s.tz = FixedOffset::east_opt(8 * 3600);
        let out = decode(SOS.as_bytes(), &mut s, &ctx());
        let t = Utc.with_ymd_and_hms(2008, 5, 23, 22, 18, 30).unwrap();
        assert_eq!(out.events[0].device_time, Some(t));
    }

    // ---- framer ----

    fn drain(framer: &mut TrvFramer, buf: &mut BytesMut, got: &mut Vec<RawFrame>) {
        while let Some(f) = framer.next_frame(buf) {
            got.push(f);
        }
    }

    fn frames(got: &[RawFrame]) -> Vec<String> {
        got.iter()
            .filter_map(|f| match f {
                RawFrame::Frame(b) => Some(String::from_utf8_lossy(b).into_owned()),
                RawFrame::Skipped { .. } => None,
            })
            .collect()
    }

    fn skipped(got: &[RawFrame], why: &str) -> usize {
        got.iter()
            .map(|f| match f {
                RawFrame::Skipped { bytes, reason } if *reason == why => *bytes,
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn junk_before_a_frame_is_skipped_as_junk() {
        let mut f = TrvFramer::default();
        let mut buf = BytesMut::from(&b"\r\n\x00garbage#IWAP03,06000908000102,5555,30#"[..]);
        let mut got = Vec::new();
        drain(&mut f, &mut buf, &mut got);
        assert_eq!(frames(&got), ["IWAP03,06000908000102,5555,30#"]);
        assert_eq!(skipped(&got, "junk"), 11);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_marker_in_junk_does_not_swallow_the_frame_after_it() {
        let mut f = TrvFramer::default();
        let mut buf = BytesMut::from(&b"KIWIIWTRVIW\x00IWAP49,68#"[..]);
        let mut got = Vec::new();
        drain(&mut f, &mut buf, &mut got);
        assert_eq!(frames(&got), ["IWAP49,68#"]);
        assert_eq!(skipped(&got, "junk"), 12);
    }

    #[test]
    fn a_frame_fed_one_byte_at_a_time_comes_out_whole_once() {
        let mut f = TrvFramer::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in SOS.bytes() {
            buf.extend_from_slice(&[b]);
            drain(&mut f, &mut buf, &mut got);
        }
        assert_eq!(frames(&got), [SOS]);
        assert_eq!(got.len(), 1, "no skips: {got:?}");
    }

    #[test]
    fn ten_frames_in_one_buffer_come_out_in_order() {
        let sent: Vec<String> = (0..10)
            .map(|i| {
                if i % 2 == 0 {
                    format!("IWAP49,{}#", 60 + i)
                } else {
                    format!("TRVAP03,06000908000102,{i},30#")
                }
            })
            .collect();
        let mut buf = BytesMut::from(sent.concat().as_bytes());
        let mut f = TrvFramer::default();
        let mut got = Vec::new();
        drain(&mut f, &mut buf, &mut got);
        assert_eq!(frames(&got), sent);
        assert_eq!(got.len(), 10);
    }

    #[test]
    fn an_oversized_frame_is_skipped_and_the_framer_resyncs_at_the_next_marker() {
        let mut f = TrvFramer::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let long = format!("IWAP01{}", "9".repeat(MAX_FRAME * 2));
        for chunk in long.as_bytes().chunks(1000) {
            buf.extend_from_slice(chunk);
            drain(&mut f, &mut buf, &mut got);
            assert!(buf.len() < MAX_FRAME);
        }
        buf.extend_from_slice(b"999#IWAP49,70#");
        drain(&mut f, &mut buf, &mut got);
        assert_eq!(frames(&got), ["IWAP49,70#"]);
        assert_eq!(skipped(&got, "oversized"), long.len() + 4);
        assert_eq!(skipped(&got, "junk"), 0);
        // A frame of exactly the maximum still passes.
        let exact = format!("IWAP49,{}#", "7".repeat(MAX_FRAME - 8));
        assert_eq!(exact.len(), MAX_FRAME);
        let mut buf = BytesMut::from(exact.as_bytes());
        got.clear();
        drain(&mut f, &mut buf, &mut got);
        assert_eq!(frames(&got), [exact]);
    }

    #[test]
    fn a_truncated_frame_waits_for_more_and_a_split_marker_is_kept() {
        let mut f = TrvFramer::default();
        let mut buf = BytesMut::from(&b"IWAP10080524A2232.98"[..]);
        assert_eq!(f.next_frame(&mut buf), None);
        assert_eq!(buf.len(), 20, "a partial frame is kept whole");
        let mut buf = BytesMut::from(&b"xxTR"[..]);
        assert_eq!(
            f.next_frame(&mut buf),
            Some(RawFrame::Skipped {
                bytes: 2,
                reason: "junk"
            })
        );
        assert_eq!(f.next_frame(&mut buf), None);
        buf.extend_from_slice(b"VA");
        assert_eq!(f.next_frame(&mut buf), None);
        assert_eq!(&buf[..], b"TRVA");
        buf.extend_from_slice(b"P00352121088015548#");
        assert_eq!(
            f.next_frame(&mut buf),
            Some(RawFrame::Frame("TRVAP00352121088015548#".into()))
        );
        // A truncated frame cut by the next one is decoded as far as it goes.
        let out = run("IWAP49,6");
        assert_eq!(out.events[0].fields["heart_rate"], json!(6));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn stream() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                Just(b"IWAP03,06000908000102,5555,30#".to_vec()),
                Just(SOS.as_bytes().to_vec()),
                Just(b"TRVAP00352121088015548#".to_vec()),
                Just(b"IW".to_vec()),
                Just(b"TR".to_vec()),
                Just(b"#".to_vec()),
                prop::collection::vec(any::<u8>(), 0..64),
                prop::collection::vec(any::<u8>(), 0..(MAX_FRAME + 64)),
                // A frame start with no `#` in reach: the oversized path.
                prop::collection::vec(
                    any::<u8>().prop_filter("no #", |b| *b != TERMINATOR),
                    0..(MAX_FRAME + 64)
                )
                .prop_map(|tail| [b"IWAP01".to_vec(), tail].concat()),
            ];
            prop::collection::vec(piece, 0..10).prop_map(|v| v.concat())
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_in_arbitrary_chunks_never_panic_and_stay_bounded(
                bytes in stream(),
                chunk in 1usize..700,
            ) {
                let mut f = TrvFramer::default();
                let mut buf = BytesMut::new();
                let mut accounted = 0usize;
                for piece in bytes.chunks(chunk) {
                    buf.extend_from_slice(piece);
                    prop_assert!(buf.len() <= MAX_FRAME + chunk);
                    while let Some(out) = f.next_frame(&mut buf) {
                        match out {
                            RawFrame::Frame(b) => {
                                prop_assert!(b.len() <= MAX_FRAME);
                                prop_assert_eq!(b.last(), Some(&TERMINATOR));
                                accounted += b.len();
                                let mut s = logged_in();
                                decode(&b, &mut s, &ctx());
                            }
                            RawFrame::Skipped { bytes, .. } => {
                                prop_assert!(bytes > 0);
                                accounted += bytes;
                            }
                        }
                    }
                    prop_assert!(buf.len() < MAX_FRAME);
                }
                prop_assert_eq!(accounted + buf.len(), bytes.len());
            }

            #[test]
            fn valid_frames_between_junk_all_come_out_whatever_the_chunking(
                junk in prop::collection::vec(prop::collection::vec(any::<u8>().prop_filter("no marker letters", |b| !b"IT#".contains(b)), 0..20), 5),
                chunk in 1usize..64,
            ) {
                let good = ["IWAP49,68#", SOS, "TRVCP01,06000908000102#", "IWAP03,06000908000102,5555,30#"];
                let mut bytes = Vec::new();
                for (j, g) in junk.iter().zip(good.iter().chain(std::iter::once(&""))) {
                    bytes.extend_from_slice(j);
                    bytes.extend_from_slice(g.as_bytes());
                }
                let mut f = TrvFramer::default();
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                for piece in bytes.chunks(chunk) {
                    buf.extend_from_slice(piece);
                    drain(&mut f, &mut buf, &mut got);
                }
                prop_assert_eq!(frames(&got), good.to_vec());
            }

            #[test]
            fn arbitrary_frames_never_panic_the_decoder(
                body in prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..200),
                    "(IW|TRV)(AP|YP|CP)(00|01|02|03|10|49|50|HT|HP)[0-9A-Z.,|&#-]{0,120}".prop_map(String::into_bytes),
                ],
                logged in any::<bool>(),
            ) {
                let mut s = if logged { logged_in() } else { Session::default() };
                let out = decode(&body, &mut s, &ctx());
                if !logged && out.error.as_ref().map(|e| e.0) == Some("no_login") {
                    prop_assert!(out.events.is_empty() && out.reply.is_none());
                }
                for e in &out.events {
                    for k in e.fields.keys() {
                        prop_assert!(e.event_type.field(k).is_some(), "{} kept for {}", k, e.event_type);
                    }
                }
            }
        }
    }
}
