//! The people side: residents and the suppressions operators put on their alerts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The time zone a resident lives in when none is given (CONTRACT.md "Rules file").
pub const DEFAULT_TIME_ZONE: &str = "Asia/Shanghai";

/// A person the centre looks after; devices point at them with their `resident_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

impl Resident {
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

impl Suppression {
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
