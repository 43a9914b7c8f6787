//! The watch bracket protocol, written from PROTOCOLS.md §2: `[3G*ID*LLLL*CONTENT]` where
//! LLLL is the content length in 4 hex digits, CONTENT is `TYPE[,field…]`; no checksum.
//! The server acks `LK` with `[3G*ID*0002*LK]` and `AL` with `[3G*ID*0002*AL]`; health
//! messages get no reply.

use chrono::{DateTime, Utc};

use super::{Expect, Reply};

/// The vendor code the simulator speaks.
pub const VENDOR: &str = "3G";

/// Status-word bit of SOS (PROTOCOLS.md §2, alarm bits).
pub const STATUS_SOS: u32 = 1 << 16;

/// Frames longer than this without a closing bracket are junk to a client.
const MAX_FRAME: usize = 16 * 1024;

/// A frame `[MM*ID*LLLL*CONTENT]` with LLLL = the content length, 4 uppercase hex digits.
pub fn frame(vendor: &str, id: &str, content: &str) -> String {
    format!("[{vendor}*{id}*{:04X}*{content}]", content.len())
}

/// Link keep-alive `LK,steps,rolls,battery%`.
pub fn keepalive(id: &str, steps: u32, rolls: u32, battery: u8) -> String {
    frame(VENDOR, id, &format!("LK,{steps},{rolls},{battery}"))
}

/// Heart rate `heart,<bpm>`.
pub fn heart(id: &str, bpm: u16) -> String {
    frame(VENDOR, id, &format!("heart,{bpm}"))
}

/// Blood pressure and heart rate `bphrt,<systolic>,<diastolic>,<bpm>`.
pub fn bphrt(id: &str, systolic: u16, diastolic: u16, bpm: u16) -> String {
    frame(VENDOR, id, &format!("bphrt,{systolic},{diastolic},{bpm}"))
}

/// The body shared by UD and AL: time, fix, radio, status word, cells, Wi-Fi.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Device time (sent as `ddmmyy,hhmmss`, UTC).
    pub time: DateTime<Utc>,
    /// `A` (valid) or `V`.
    pub valid: bool,
    /// Latitude, degrees (negative south).
    pub lat: f64,
    /// Longitude, degrees (negative west).
    pub lon: f64,
    /// km/h.
    pub speed: f64,
    /// Degrees.
    pub course: f64,
    /// Metres.
    pub altitude: f64,
    /// Satellites in use.
    pub satellites: u8,
    /// GSM signal, 0–100.
    pub gsm: u8,
    /// Battery, %.
    pub battery: u8,
    /// Pedometer.
    pub steps: u32,
    /// Roll / tumble count.
    pub rolls: u32,
    /// The 32-bit status word (bit 16 SOS, 20 removal, 21/22 fall).
    pub status: u32,
    /// `MCC,MNC` and the cells `(LAC, CID, RSSI)`.
    pub cells: (u16, u16, Vec<(u32, u32, i32)>),
}

impl Report {
    /// A valid fix at `lat`/`lon` at `time`, standing still, with one China Mobile cell.
    pub fn at(time: DateTime<Utc>, lat: f64, lon: f64, status: u32) -> Report {
        Report {
            time,
            valid: true,
            lat,
            lon,
            speed: 0.0,
            course: 0.0,
            altitude: 10.0,
            satellites: 8,
            gsm: 80,
            battery: 90,
            steps: 0,
            rolls: 0,
            status,
            cells: (460, 0, vec![(9365, 4003, 50)]),
        }
    }

    fn text(&self) -> String {
        let (mcc, mnc, cells) = &self.cells;
        let mut s = format!(
            "{},{},{},{:.6},{},{:.7},{},{:.2},{:.1},{:.1},{},{},{},{},{},{:08X},{},1,{mcc},{mnc}",
            self.time.format("%d%m%y"),
            self.time.format("%H%M%S"),
            if self.valid { 'A' } else { 'V' },
            self.lat.abs(),
            if self.lat < 0.0 { 'S' } else { 'N' },
            self.lon.abs(),
            if self.lon < 0.0 { 'W' } else { 'E' },
            self.speed,
            self.course,
            self.altitude,
            self.satellites,
            self.gsm,
            self.battery,
            self.steps,
            self.rolls,
            self.status,
            cells.len(),
        );
        for (lac, cid, rssi) in cells {
            s.push_str(&format!(",{lac},{cid},{rssi}"));
        }
        s.push_str(",0"); // no Wi-Fi
        s
    }
}

/// Alarm `AL,<report>`.
pub fn alarm(id: &str, report: &Report) -> String {
    frame(VENDOR, id, &format!("AL,{}", report.text()))
}

/// The ack of a message whose type is `word` (`LK`, `AL`).
pub fn expect(word: &'static str) -> Expect {
    Expect::Watch { word }
}

/// Takes the next bracketed frame (or leading junk) off the front of `buf`, matching nested
/// brackets; `None` means more bytes are needed.
pub fn split(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    match buf.iter().position(|&b| b == b'[') {
        Some(0) => {}
        Some(n) => return Some(buf.drain(..n).collect()),
        None if buf.is_empty() => return None,
        None => return Some(std::mem::take(buf)),
    }
    let mut depth = 0usize;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'[' => depth += 1,
            b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(buf.drain(..=i).collect());
                }
            }
            _ => {}
        }
    }
    (buf.len() > MAX_FRAME).then(|| std::mem::take(buf))
}

/// Parses one server frame `[MM*ID*[IDX*]LLLL*CONTENT]`.
pub fn parse(frame: &[u8]) -> Reply {
    let Some(inner) = std::str::from_utf8(frame)
        .ok()
        .and_then(|t| t.strip_prefix('['))
        .and_then(|t| t.strip_suffix(']'))
    else {
        return Reply::Malformed("not a `[…]` frame".into());
    };
    let mut parts = inner.splitn(3, '*');
    let (Some(vendor), Some(id), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Reply::Malformed("fewer than three `*` fields".into());
    };
    let is_hex4 = |s: &str| s.len() == 4 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let (len_field, content) = match rest.split_once('*') {
        Some((idx, after)) if is_hex4(idx) => match after.split_once('*') {
            Some((len, content)) if is_hex4(len) => (len, content),
            _ => (idx, after),
        },
        _ => return Reply::Malformed("no 4-hex-digit length field".into()),
    };
    let declared = usize::from_str_radix(len_field, 16).unwrap_or(usize::MAX);
    Reply::Watch {
        vendor: vendor.to_owned(),
        id: id.to_owned(),
        content: content.to_owned(),
        problem: (declared != content.len()).then(|| {
            format!(
                "length field {len_field} but {} content bytes",
                content.len()
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::Match;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn keepalive_matches_traccar_vectors() {
        assert_eq!(
            keepalive("9705141740", 0, 0, 53),
            "[3G*9705141740*0009*LK,0,0,53]"
        );
        assert_eq!(
            keepalive("352661090143150", 0, 0, 100),
            "[3G*352661090143150*000A*LK,0,0,100]"
        );
        assert_eq!(
            keepalive("4700186508", 0, 10, 100),
            "[3G*4700186508*000B*LK,0,10,100]"
        );
    }

    #[test]
    fn health_messages_match_traccar_vectors() {
        assert_eq!(heart("6005412902", 71), "[3G*6005412902*0008*heart,71]");
        assert_eq!(
            bphrt("1234567890", 120, 80, 75),
            "[3G*1234567890*000F*bphrt,120,80,75]"
        );
    }

    #[test]
    fn sos_alarm_sets_status_bit_16() {
        let report = Report::at(
            utc("2017-05-25T21:41:18Z"),
            31.230416,
            121.473701,
            STATUS_SOS,
        );
        let f = alarm("6907919734", &report);
        let content = "AL,250517,214118,A,31.230416,N,121.4737010,E,0.00,0.0,10.0,8,80,90,0,0,00010000,1,1,460,0,9365,4003,50,0";
        assert_eq!(
            f,
            format!("[3G*6907919734*{:04X}*{content}]", content.len())
        );
        let Reply::Watch {
            content: parsed,
            problem,
            ..
        } = parse(f.as_bytes())
        else {
            panic!("own frame does not parse")
        };
        assert_eq!((parsed.as_str(), problem), (content, None));
    }

    #[test]
    fn southern_western_report() {
        let mut report = Report::at(utc("2016-07-21T23:16:01Z"), -33.480366, -70.7630692, 0);
        report.valid = false;
        report.cells = (730, 2, vec![(29731, 54315, 167), (29731, 54316, 162)]);
        assert_eq!(
            report.text(),
            "210716,231601,V,33.480366,S,70.7630692,W,0.00,0.0,10.0,8,80,90,0,0,00000000,2,1,730,2,29731,54315,167,29731,54316,162,0"
        );
    }

    #[test]
    fn acks_name_the_device_and_the_word() {
        let ack = parse(b"[3G*9705141740*0002*LK]");
        assert_eq!(expect("LK").check(&ack, "9705141740"), Match::Acked);
        assert_eq!(expect("AL").check(&ack, "9705141740"), Match::No);
        assert_eq!(expect("LK").check(&ack, "9705141741"), Match::No);
        let al = parse(b"[3G*9705141740*0002*AL]");
        assert_eq!(expect("AL").check(&al, "9705141740"), Match::Acked);
        // An AL_LTE ack word is not an AL ack.
        let other = parse(b"[3G*9705141740*0006*AL_LTE]");
        assert_eq!(expect("AL").check(&other, "9705141740"), Match::No);
        // The index form is understood.
        let idx = parse(b"[ZJ*014111001350304*0034*0002*LK]");
        assert_eq!(expect("LK").check(&idx, "014111001350304"), Match::Acked);
        // A wrong length field is reported but still an ack (Traccar ignores LLLL).
        let bad_len = parse(b"[3G*9705141740*0003*LK]");
        assert!(matches!(
            bad_len,
            Reply::Watch {
                problem: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn split_matches_nested_brackets() {
        let mut buf = b"x[3G*1*0002*LK][3G*1*0008*UD,[a]b".to_vec();
        assert_eq!(split(&mut buf), Some(b"x".to_vec()));
        assert_eq!(split(&mut buf), Some(b"[3G*1*0002*LK]".to_vec()));
        assert_eq!(split(&mut buf), None);
        buf.extend_from_slice(b"]");
        assert_eq!(split(&mut buf), Some(b"[3G*1*0008*UD,[a]b]".to_vec()));
    }
}
