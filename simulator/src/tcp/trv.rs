//! The IW ("Trv") text protocol, written from PROTOCOLS.md §5: sentences `IW` + `APnn` +
//! fields + `#`, no checksum and no length. The server acks with the type's first letter
//! incremented (`IWAP10…#` → `IWBP10#`); the login `IWAP00<IMEI>#` gets
//! `IWBP00,<yyyyMMddHHmmss>,<tz>#`.

use chrono::{DateTime, Utc};

use super::{Expect, Reply};

/// Sentences longer than this without a `#` are junk to a client reading server replies.
const MAX_SENTENCE: usize = 4096;

/// AP10 alarm code for SOS (PROTOCOLS.md §5: Traccar maps 01 to SOS, 05/06 to fall).
pub const ALARM_SOS: u8 = 1;

/// Login: `IWAP00<IMEI>#`.
pub fn login(imei: &str) -> String {
    format!("IWAP00{imei}#")
}

/// The radio and battery block shared by AP03 and the fix sentences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Radio {
    /// GSM signal, 0–100.
    pub gsm: u16,
    /// Satellites in use.
    pub satellites: u16,
    /// Battery, %.
    pub battery: u16,
    /// ACC / reserved digit.
    pub acc: u8,
    /// Arm (fortification) state, two digits.
    pub arm: u8,
    /// Working mode, two digits.
    pub mode: u8,
}

impl Radio {
    /// Good signal, 9 satellites, 90 % battery, disarmed, mode 02.
    pub const GOOD: Radio = Radio {
        gsm: 60,
        satellites: 9,
        battery: 90,
        acc: 0,
        arm: 1,
        mode: 2,
    };

    fn digits(self) -> String {
        format!(
            "{:03}{:03}{:03}{}{:02}{:02}",
            self.gsm, self.satellites, self.battery, self.acc, self.arm, self.mode
        )
    }
}

/// Heartbeat: `IWAP03,<gsm3><sat3><battery3><acc><arm2><mode2>,<steps>,<rolls>#`.
pub fn heartbeat(radio: Radio, steps: u32, rolls: u32) -> String {
    format!("IWAP03,{},{steps},{rolls}#", radio.digits())
}

/// A GPS fix as the fix sentences (AP01, AP10) carry it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fix {
    /// UTC time of the fix.
    pub time: DateTime<Utc>,
    /// Whether the fix is valid (`A`) or not (`V`).
    pub valid: bool,
    /// Latitude, degrees (negative south).
    pub lat: f64,
    /// Longitude, degrees (negative west).
    pub lon: f64,
    /// km/h.
    pub speed: f64,
    /// Degrees.
    pub course: f64,
    /// Radio and battery block.
    pub radio: Radio,
    /// `MCC,MNC,LAC,CID` of the serving cell.
    pub cell: (u16, u16, u32, u32),
}

impl Fix {
    /// A valid fix at `lat`/`lon` at `time`, standing still, on China Mobile.
    pub fn at(time: DateTime<Utc>, lat: f64, lon: f64) -> Fix {
        Fix {
            time,
            valid: true,
            lat,
            lon,
            speed: 0.0,
            course: 0.0,
            radio: Radio::GOOD,
            cell: (460, 0, 9520, 3671),
        }
    }

    /// `YYMMDD A DDMM.MMMM N DDDMM.MMMM E ddd.d hhmmss ccc.cc <radio>,MCC,MNC,LAC,CID`.
    fn text(&self) -> String {
        let (mcc, mnc, lac, cid) = self.cell;
        format!(
            "{}{}{}{}{}{}{:05.1}{}{:06.2}{},{mcc},{mnc},{lac},{cid}",
            self.time.format("%y%m%d"),
            if self.valid { 'A' } else { 'V' },
            ddmm(self.lat, 2),
            if self.lat < 0.0 { 'S' } else { 'N' },
            ddmm(self.lon, 3),
            if self.lon < 0.0 { 'W' } else { 'E' },
            self.speed,
            self.time.format("%H%M%S"),
            self.course,
            self.radio.digits(),
        )
    }
}

/// Degrees as `D…DMM.MMMM` with `width` degree digits.
fn ddmm(degrees: f64, width: usize) -> String {
    // Work in 1e-4 minutes so that rounding never produces `60.0000`.
    let units = (degrees.abs() * 60.0 * 10_000.0).round() as u64;
    let (deg, rest) = (units / 600_000, units % 600_000);
    format!(
        "{deg:0width$}{:02}.{:04}",
        rest / 10_000,
        rest % 10_000,
        width = width
    )
}

/// Alarm report: `IWAP10<fix>,<alarm code 2>,<language>,<reply flag>[,<wifi>]#`.
pub fn alarm(fix: &Fix, code: u8, language: &str, wifi: Option<&str>) -> String {
    let mut s = format!("IWAP10{},{code:02},{language},00", fix.text());
    if let Some(wifi) = wifi {
        s.push(',');
        s.push_str(wifi);
    }
    s.push('#');
    s
}

/// Heart rate: `IWAP49,<bpm>#`.
pub fn heart_rate(bpm: u16) -> String {
    format!("IWAP49,{bpm}#")
}

/// Heart rate and blood pressure: `IWAPHT,<bpm>,<systolic>,<diastolic>#`.
pub fn blood_pressure(bpm: u16, systolic: u16, diastolic: u16) -> String {
    format!("IWAPHT,{bpm},{systolic},{diastolic}#")
}

/// The full health set: `IWAPHP,<bpm>,<sys>,<dia>,<SpO2>,<blood sugar>,<°C>,,,,,,,#`.
pub fn health(bpm: u16, systolic: u16, diastolic: u16, spo2: u8, sugar: u16, temp: f64) -> String {
    format!("IWAPHP,{bpm},{systolic},{diastolic},{spo2},{sugar},{temp:.1},,,,,,,#")
}

/// Body temperature and battery: `IWAP50,<°C>,<battery %>#`.
pub fn temperature(temp: f64, battery: u8) -> String {
    format!("IWAP50,{temp:.1},{battery}#")
}

/// The ack of a sentence: its prefix, the type with the first letter incremented.
/// `None` for text that is not an `IWAPxx` sentence.
pub fn expect_for(sentence: &str) -> Option<Expect> {
    let ty = sentence.strip_prefix("IWAP")?.as_bytes().get(..2)?;
    Some(Expect::Trv {
        ty: [b'B', b'P', ty[0], ty[1]],
    })
}

/// Takes the next sentence (up to and including `#`, or leading line breaks) off the front
/// of `buf`; `None` means more bytes are needed.
pub fn split(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let skip = buf
        .iter()
        .take_while(|b| b.is_ascii_whitespace() || **b == 0)
        .count();
    if skip > 0 {
        return Some(buf.drain(..skip).collect());
    }
    match buf.iter().position(|&b| b == b'#') {
        Some(n) => Some(buf.drain(..=n).collect()),
        None if buf.len() > MAX_SENTENCE => Some(std::mem::take(buf)),
        None => None,
    }
}

/// Parses one server sentence.
pub fn parse(frame: &[u8]) -> Reply {
    match std::str::from_utf8(frame) {
        Ok(text) if text.ends_with('#') && text.len() > 1 => Reply::Trv {
            text: text[..text.len() - 1].to_owned(),
        },
        Ok(text) if text.trim().is_empty() => Reply::Malformed("blank".into()),
        _ => Reply::Malformed("not a `…#` sentence".into()),
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
    fn login_matches_traccar_vector() {
        assert_eq!(login("353456789012345"), "IWAP00353456789012345#");
    }

    #[test]
    fn heartbeat_matches_traccar_vector() {
        let radio = Radio {
            battery: 80,
            ..Radio::GOOD
        };
        assert_eq!(heartbeat(radio, 5555, 30), "IWAP03,06000908000102,5555,30#");
    }

    #[test]
    fn alarm_matches_traccar_vector() {
        // trv.json: the SOS sentence (alarm code 01), with its Wi-Fi list.
        let fix = Fix {
            time: utc("2008-05-24T06:18:30Z"),
            valid: true,
            lat: 22.0 + 32.9806 / 60.0,
            lon: 114.0 + 4.9355 / 60.0,
            speed: 0.1,
            course: 323.87,
            radio: Radio {
                gsm: 60,
                satellites: 9,
                battery: 80,
                acc: 0,
                arm: 5,
                mode: 2,
            },
            cell: (460, 0, 9520, 3671),
        };
        let wifi = "HOME|74-DE-2B-44-88-8C|97&HOME1|74-DE-2B-44-88-8C|97&HOME2|74-DE-2B-44-88-8C|97&HOME3|74-DE-2B-44-88-8C|97";
        assert_eq!(
            alarm(&fix, ALARM_SOS, "zhcn", Some(wifi)),
            format!(
                "IWAP10080524A2232.9806N11404.9355E000.1061830323.8706000908000502,460,0,9520,3671,01,zhcn,00,{wifi}#"
            )
        );
        // trv.json: TRVAP10 without Wi-Fi and alarm 00, same fix.
        assert_eq!(
            alarm(&fix, 0, "zh-cn", None),
            "IWAP10080524A2232.9806N11404.9355E000.1061830323.8706000908000502,460,0,9520,3671,00,zh-cn,00#"
        );
    }

    #[test]
    fn southern_western_fix_and_rounding() {
        assert_eq!(ddmm(31.230416, 2), "3113.8250");
        assert_eq!(ddmm(121.473701, 3), "12128.4221");
        assert_eq!(ddmm(-0.999999999, 2), "0100.0000");
        let mut fix = Fix::at(utc("2026-03-05T08:15:30Z"), -33.5, -70.75);
        fix.course = 5.5;
        assert_eq!(
            fix.text(),
            "260305A3330.0000S07045.0000W000.0081530005.5006000909000102,460,0,9520,3671"
        );
    }

    #[test]
    fn vitals_match_traccar_vectors() {
        assert_eq!(heart_rate(68), "IWAP49,68#");
        assert_eq!(blood_pressure(60, 130, 85), "IWAPHT,60,130,85#");
        assert_eq!(
            health(60, 130, 85, 95, 90, 36.5),
            "IWAPHP,60,130,85,95,90,36.5,,,,,,,#"
        );
        assert_eq!(temperature(36.7, 90), "IWAP50,36.7,90#");
    }

    #[test]
    fn acks_are_the_incremented_type() {
        let login_ack = parse(b"IWBP00,20260305081500,0#");
        assert_eq!(
            expect_for(&login("1")).unwrap().check(&login_ack, "1"),
            Match::Acked
        );
        let e = expect_for("IWAP10...#").unwrap();
        assert_eq!(e.check(&parse(b"IWBP10#"), "x"), Match::Acked);
        assert_eq!(e.check(&parse(b"IWBP03#"), "x"), Match::No);
        assert_eq!(e.check(&parse(b"IWBP100#"), "x"), Match::No);
        assert_eq!(
            expect_for("IWAPHP,1#")
                .unwrap()
                .check(&parse(b"IWBPHP#"), "x"),
            Match::Acked
        );
        assert_eq!(expect_for("TRVAP00#"), None);
    }

    #[test]
    fn split_cuts_at_hash() {
        let mut buf = b"IWBP00,20260305081500,0#\r\nIWBP1".to_vec();
        assert_eq!(split(&mut buf), Some(b"IWBP00,20260305081500,0#".to_vec()));
        assert_eq!(split(&mut buf), Some(b"\r\n".to_vec()));
        assert_eq!(split(&mut buf), None);
        buf.extend_from_slice(b"0#");
        assert_eq!(split(&mut buf), Some(b"IWBP10#".to_vec()));
    }
}
