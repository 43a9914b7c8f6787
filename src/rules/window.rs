//! Daily windows (`active = "22:00-06:00"`) in a resident's time zone.

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A daily window `[start, end)` of local wall-clock time; it crosses midnight when `end` is
/// not after `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Opens at.
    pub start: NaiveTime,
    /// Closes at.
    pub end: NaiveTime,
}

impl Window {
    /// Parses `HH:MM-HH:MM`; an empty window (start = end) is refused, it could never open.
    pub fn parse(s: &str) -> Result<Window, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a window like \"22:00-06:00\""))?;
        let t = |x: &str| {
            NaiveTime::parse_from_str(x.trim(), "%H:%M")
                .map_err(|_| format!("{x:?} in window {s:?} is not a time HH:MM"))
        };
        let w = Window {
            start: t(a)?,
            end: t(b)?,
        };
        if w.start == w.end {
            return Err(format!(
                "window {s:?} is empty: it opens and closes at the same time, so the rule could never fire"
            ));
        }
        Ok(w)
    }

    /// Whether local wall-clock time `t` is inside.
    pub fn contains_time(&self, t: NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// Whether instant `at` is inside, in zone `tz`.
    pub fn contains(&self, at: DateTime<Utc>, tz: Tz) -> bool {
        self.contains_time(at.with_timezone(&tz).time())
    }

    /// `at` itself when inside, else the next instant the window opens. A start that falls in
    /// a DST gap opens at the first instant after the gap; one that happens twice opens at
    /// the first.
    pub fn next_open(&self, at: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        if self.contains(at, tz) {
            return at;
        }
        let local = at.with_timezone(&tz);
        let mut day = local.date_naive();
        // Today's opening if still ahead, else tomorrow's (a window crossing midnight that is
        // closed now opens later today).
        for _ in 0..3 {
            let naive = day.and_time(self.start);
            let opens = match tz.from_local_datetime(&naive) {
                chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
                chrono::LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
                chrono::LocalResult::None => {
                    // In a spring-forward gap: the wall clock jumps past the start; the window
                    // is open from the first minute that exists.
                    let mut probe = naive;
                    loop {
                        probe += Duration::minutes(1);
                        if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                            break t.with_timezone(&Utc);
                        }
                    }
                }
            };
            if opens > at {
                return opens;
            }
            day = day.succ_opt().unwrap_or(day);
        }
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn windows_cross_midnight_and_hold_to_the_opening() {
        let day = Window::parse("06:00-22:00").unwrap();
        let sh = chrono_tz::Asia::Shanghai;
        // 04:00 local → 06:00 local the same morning.
        assert_eq!(
            day.next_open(utc("2026-03-02T04:00:00+08:00"), sh),
            utc("2026-03-02T06:00:00+08:00")
        );
        // 23:00 local → 06:00 the next morning.
        assert_eq!(
            day.next_open(utc("2026-03-02T23:00:00+08:00"), sh),
            utc("2026-03-03T06:00:00+08:00")
        );
        let at = utc("2026-03-02T08:00:00+08:00");
        assert_eq!(day.next_open(at, sh), at);
        let night = Window::parse("23:00-05:00").unwrap();
        assert!(night.contains(utc("2026-03-02T23:30:00+08:00"), sh));
        assert!(night.contains(utc("2026-03-03T04:59:00+08:00"), sh));
        assert!(!night.contains(utc("2026-03-02T21:00:00+08:00"), sh));
        assert_eq!(
            night.next_open(utc("2026-03-02T21:00:00+08:00"), sh),
            utc("2026-03-02T23:00:00+08:00")
        );
    }

    #[test]
    fn dst_gaps_and_repeats_are_handled() {
        let london = chrono_tz::Europe::London;
        // 2026-03-29 01:00 → 02:00 in London: a window opening at 01:30 opens at 02:00 BST.
        let w = Window::parse("01:30-03:00").unwrap();
        assert_eq!(
            w.next_open(utc("2026-03-29T00:00:00Z"), london),
            utc("2026-03-29T01:00:00Z")
        );
        // 2026-10-25 02:00 BST → 01:00 GMT: 01:30 happens twice; the first counts.
        assert_eq!(
            w.next_open(utc("2026-10-24T23:00:00Z"), london),
            utc("2026-10-25T00:30:00Z")
        );
        assert!(Window::parse("06:00-06:00").unwrap_err().contains("never"));
        assert!(Window::parse("6-22").is_err());
    }
}
