//! The people side: residents and the suppressions operators put on their alerts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The time zone a resident lives in when none is given (CONTRACT.md "Rules file").
pub const DEFAULT_TIME_ZONE: &str = "Asia/Shanghai";

/// A person the centre looks after; devices point at them with their `resident_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resident {
    /// Identifier chosen by the centre (`[A-Za-z0-9_.:-]{1,64}`).
    pub id: String,
    /// Full name.
    pub name: String,
    /// The region (office) responsible for them.
    pub region: String,
    /// IANA time zone name, for rule windows (`Asia/Shanghai`).
    pub time_zone: String,
    /// Free labels rules select on (`lives_alone = "true"`, `dementia = "true"`, …).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Personal values that replace a rule condition's value where it names them
    /// (`override = "hr_high"`).
    #[serde(default)]
    pub thresholds: BTreeMap<String, f64>,
}

/// Whether `id` is a valid resident id: `[A-Za-z0-9_.:-]{1,64}`, the device id alphabet.
pub fn valid_resident_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// At most this many labels or thresholds per resident (as for devices).
pub const MAX_LABELS: usize = 32;

impl Resident {
    /// Every problem with this resident, each naming its field; empty when it is valid.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !valid_resident_id(&self.id) {
            out.push(format!("id {:?} breaks [A-Za-z0-9_.:-]{{1,64}}", self.id));
        }
        for (field, value, max) in [("name", &self.name, 200), ("region", &self.region, 64)] {
            if value.trim().is_empty() {
                out.push(format!("{field} must not be empty"));
            } else if value.chars().count() > max {
                out.push(format!("{field} is longer than {max} characters"));
            }
        }
        if self.time_zone.parse::<chrono_tz::Tz>().is_err() {
            out.push(format!(
                "unknown time zone {:?}: time_zone takes an IANA name such as {DEFAULT_TIME_ZONE}",
                self.time_zone
            ));
        }
        if self.labels.len() > MAX_LABELS {
            out.push(format!("labels: at most {MAX_LABELS}"));
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > 64 || v.len() > 128 {
                out.push(format!(
                    "labels: label {k:?}: keys 1..=64, values ..=128 characters"
                ));
            }
        }
        if self.thresholds.len() > MAX_LABELS {
            out.push(format!("thresholds: at most {MAX_LABELS}"));
        }
        for (k, v) in &self.thresholds {
            if k.is_empty() || k.len() > 64 {
                out.push(format!("thresholds: name {k:?} must be 1..=64 characters"));
            }
            if !v.is_finite() {
                out.push(format!("thresholds: {k:?} must be a finite number"));
            }
        }
        out
    }

    /// The resident's time zone; an unknown name (refused on the way in) falls back to the
    /// default rather than failing a rule.
    pub fn tz(&self) -> chrono_tz::Tz {
        self.time_zone.parse().unwrap_or(chrono_tz::Asia::Shanghai)
    }
}

/// Alert kinds no suppression can silence (DESIGN.md: SOS, fall, smoke, gas are critical,
/// immediate and never suppressible).
pub const NEVER_SUPPRESSED: [&str; 4] = ["sos", "fall", "smoke", "gas"];

/// An operator's "do not alert" for a resident or a device, with an author, a reason and an
/// end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Suppression {
    /// Store id.
    pub id: i64,
    /// The resident covered (all their devices), or
    pub resident_id: Option<String>,
    /// the one device covered.
    pub device_id: Option<String>,
    /// Alert kinds covered; `None`: every kind except [`NEVER_SUPPRESSED`].
    pub kinds: Option<Vec<String>>,
    /// Why ("in hospital", "installer test", …).
    pub reason: String,
    /// Who put it on (the token's identity).
    pub author: String,
    /// When it was put on.
    pub created_at: DateTime<Utc>,
    /// When it ends by itself.
    pub until: DateTime<Utc>,
    /// Matches it kept from becoming alerts.
    pub suppressed_count: i64,
}

/// The longest a suppression may run: one that outlives any stay in hospital is a silenced
/// resident nobody remembers.
pub const MAX_SUPPRESSION_DAYS: i64 = 366;

impl Suppression {
    /// Every problem with a suppression about to be put on at `now`, each naming its field;
    /// empty when it is valid. Whether the resident or device exists is the caller's check.
    pub fn problems(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut out = Vec::new();
        match (&self.resident_id, &self.device_id) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => out.push("give exactly one of resident_id and device_id".to_owned()),
        }
        if let Some(kinds) = &self.kinds {
            if kinds.is_empty() {
                out.push(
                    "kinds is empty; omit it to cover every kind but sos, fall, smoke and gas"
                        .to_owned(),
                );
            }
            for k in kinds {
                // "SOS" is the same alarm to the operator who wrote it.
                if NEVER_SUPPRESSED.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                    out.push(format!(
                        "kinds names {k:?}: sos, fall, smoke and gas can never be suppressed"
                    ));
                } else if k.is_empty() || k.len() > 64 {
                    out.push(format!("kinds: {k:?} must be 1..=64 characters"));
                }
            }
        }
        if self.reason.trim().is_empty() {
            out.push("reason must not be empty: say why alerts are held back".to_owned());
        } else if self.reason.chars().count() > 500 {
            out.push("reason is longer than 500 characters".to_owned());
        }
        if self.until <= now {
            out.push(format!(
                "until {} is not in the future",
                self.until.to_rfc3339()
            ));
        } else if self.until - now > chrono::Duration::days(MAX_SUPPRESSION_DAYS) {
            out.push(format!(
                "until {} is more than {MAX_SUPPRESSION_DAYS} days ahead",
                self.until.to_rfc3339()
            ));
        }
        out
    }

    /// Whether it keeps an alert of `kind` for `device` (of `resident`) from opening at `now`.
    pub fn covers(
        &self,
        resident: Option<&str>,
        device: &str,
        kind: &str,
        now: DateTime<Utc>,
    ) -> bool {
        if now >= self.until || NEVER_SUPPRESSED.contains(&kind) {
            return false;
        }
        let scope = match (&self.resident_id, &self.device_id) {
            (Some(r), _) => resident == Some(r.as_str()),
            (None, Some(d)) => d == device,
            (None, None) => false,
        };
        scope
            && self
                .kinds
                .as_ref()
                .is_none_or(|k| k.iter().any(|k| k == kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn resident() -> Resident {
        Resident {
            id: "r-1".into(),
            name: "Wang Fang".into(),
            region: "xh".into(),
            time_zone: DEFAULT_TIME_ZONE.into(),
            labels: BTreeMap::new(),
            thresholds: BTreeMap::new(),
        }
    }

    fn suppression() -> Suppression {
        Suppression {
            id: 0,
            resident_id: Some("r-1".into()),
            device_id: None,
            kinds: None,
            reason: "in hospital".into(),
            author: "admin".into(),
            created_at: at("2026-03-01T00:00:00Z"),
            until: at("2026-03-08T00:00:00Z"),
            suppressed_count: 0,
        }
    }

    #[test]
    fn a_resident_names_every_field_at_fault() {
        assert!(resident().problems().is_empty());
        let bad = Resident {
            id: "r 1".into(),
            name: " ".into(),
            region: String::new(),
            time_zone: "Mars/Olympus".into(),
            labels: BTreeMap::from([(String::new(), "x".into())]),
            thresholds: BTreeMap::from([("hr_high".into(), f64::NAN)]),
        };
        let p = bad.problems();
        for needle in [
            "id \"r 1\"",
            "name must not be empty",
            "region must not be empty",
            "unknown time zone \"Mars/Olympus\"",
            "labels:",
            "thresholds: \"hr_high\" must be a finite number",
        ] {
            assert!(p.iter().any(|m| m.contains(needle)), "{needle:?} in {p:?}");
        }
    }

    #[test]
    fn a_suppression_never_names_an_alarm_and_always_ends_in_the_future() {
        let now = at("2026-03-01T00:00:00Z");
        assert!(suppression().problems(now).is_empty());
        let with = |f: &dyn Fn(&mut Suppression)| {
            let mut s = suppression();
            f(&mut s);
            s.problems(now).join("; ")
        };
        assert!(with(&|s| s.kinds = Some(vec!["door".into(), "SOS".into()])).contains("\"SOS\""));
        assert!(with(&|s| s.kinds = Some(vec![])).contains("kinds is empty"));
        assert!(with(&|s| s.device_id = Some("d1".into())).contains("exactly one"));
        assert!(with(&|s| s.resident_id = None).contains("exactly one"));
        assert!(with(&|s| s.reason = "  ".into()).contains("reason"));
        assert!(with(&|s| s.until = now).contains("not in the future"));
        assert!(with(&|s| s.until = now + chrono::Duration::days(400)).contains("366 days"));
        // Whatever it says, it never covers the four alarms.
        let s = suppression();
        assert!(s.covers(Some("r-1"), "d1", "door", now));
        assert!(!s.covers(Some("r-1"), "d1", "fall", now));
    }
}
