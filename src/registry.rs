//! The device registry: which devices an installer registered, with their family, type, room,
//! labels, resident and clock offset, and the unknown-device policy for everything else
//! (CONTRACT.md, "Devices"). The pipeline and the TCP listeners consult an in-memory copy kept
//! in step with the store by the API, so no lookup touches the database on the hot path.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::FixedOffset;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::event::valid_device_id;
use crate::protocol::tcp::Protocol;

/// What happens to messages from devices nobody registered (CONTRACT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownPolicy {
    /// Refuse everything except life-safety alarms (SOS, fall, smoke, gas).
    Reject,
    /// Process as usual and raise one low `unregistered_device` alert per device.
    Quarantine,
    /// Process as usual.
    Accept,
}

impl UnknownPolicy {
    /// Parses `reject`, `quarantine` or `accept`.
    pub fn parse(s: &str) -> Option<UnknownPolicy> {
        match s {
            "reject" => Some(UnknownPolicy::Reject),
            "quarantine" => Some(UnknownPolicy::Quarantine),
            "accept" => Some(UnknownPolicy::Accept),
            _ => None,
        }
    }
}

/// A registered device, as the API takes and shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Device id (`[A-Za-z0-9_.:-]{1,64}`; a 4G device's identifier as decimal digits).
    pub id: String,
    /// Protocol family (`watch`, `gt06`, `jt808`, `trv`) or `mqtt`.
    #[serde(default)]
    pub family: Option<String>,
    /// What it is: `pendant`, `watch`, `smoke`, `gas`, `water`, `door`, `pir`, …
    #[serde(default, rename = "type")]
    pub device_type: Option<String>,
    /// Where it is installed.
    #[serde(default)]
    pub room: Option<String>,
    /// Free labels for rules and reports (`lives_alone`, `region`, …).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The resident wearing or living with it.
    #[serde(default)]
    pub resident_id: Option<String>,
    /// The device clock's offset from UTC, `+08:00`, for watches that send local time.
    #[serde(default)]
    pub tz: Option<String>,
}

/// One problem with a registration, located.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegistrationError {
    /// 1-based row (CSV data row or array element).
    pub row: usize,
    /// The field at fault.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn short_text(v: &Option<String>) -> bool {
    v.as_ref().is_none_or(|s| !s.is_empty() && s.len() <= 64)
}

impl Registration {
    /// Every problem with this registration.
    pub fn problems(&self, row: usize) -> Vec<RegistrationError> {
        let mut out = Vec::new();
        let mut bad = |field: &str, message: String| {
            out.push(RegistrationError {
                row,
                field: field.into(),
                message,
            })
        };
        if !valid_device_id(&self.id) {
            bad(
                "id",
                format!("{:?} breaks [A-Za-z0-9_.:-]{{1,64}}", self.id),
            );
        }
        if let Some(f) = &self.family
            && f != "mqtt"
            && Protocol::parse(f).is_none()
        {
            bad(
                "family",
                format!("{f:?} is not one of mqtt, watch, gt06, jt808, trv"),
            );
        }
        for (name, v) in [
            ("type", &self.device_type),
            ("room", &self.room),
            ("resident_id", &self.resident_id),
        ] {
            if !short_text(v) {
                bad(name, "must be 1..=64 characters".into());
            }
        }
        if self.labels.len() > 32 {
            bad("labels", "at most 32 labels".into());
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > 64 || v.len() > 128 {
                bad(
                    "labels",
                    format!("label {k:?}: keys 1..=64, values ..=128 characters"),
                );
            }
        }
        if let Some(tz) = &self.tz
            && parse_tz(tz).is_none()
        {
            bad(
                "tz",
                format!("{tz:?} is not an offset like +08:00 or -05:30"),
            );
        }
        out
    }

    /// The clock offset, when set and valid.
    pub fn offset(&self) -> Option<FixedOffset> {
        self.tz.as_deref().and_then(parse_tz)
    }
}

/// Parses `+08:00`, `-0530`, `+8`.
pub fn parse_tz(s: &str) -> Option<FixedOffset> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => (&rest[..2], &rest[2..]),
        None => (rest, "0"),
    };
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// Parses a CSV registration file: header `id,family,type,room,labels,resident_id,tz`
/// (only `id` is required; `labels` as `key=value;key=value`). Returns every row's problems.
pub fn parse_csv(data: &[u8]) -> Result<Vec<Registration>, Vec<RegistrationError>> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(data);
    let headers = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            return Err(vec![RegistrationError {
                row: 0,
                field: "header".into(),
                message: e.to_string(),
            }]);
        }
    };
    const KNOWN: [&str; 7] = [
        "id",
        "family",
        "type",
        "room",
        "labels",
        "resident_id",
        "tz",
    ];
    let mut errors = Vec::new();
    for h in headers.iter() {
        if !KNOWN.contains(&h) {
            errors.push(RegistrationError {
                row: 0,
                field: h.into(),
                message: format!("unknown column (known: {})", KNOWN.join(", ")),
            });
        }
    }
    if !headers.iter().any(|h| h == "id") {
        errors.push(RegistrationError {
            row: 0,
            field: "id".into(),
            message: "the id column is required".into(),
        });
    }
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let row = i + 1;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                errors.push(RegistrationError {
                    row,
                    field: "-".into(),
                    message: e.to_string(),
                });
                continue;
            }
        };
        let col = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .and_then(|i| rec.get(i))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let mut labels = BTreeMap::new();
        if let Some(l) = col("labels") {
            for pair in l.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some((k, v)) => {
                        labels.insert(k.trim().to_owned(), v.trim().to_owned());
                    }
                    None => errors.push(RegistrationError {
                        row,
                        field: "labels".into(),
                        message: format!("{pair:?} is not key=value"),
                    }),
                }
            }
        }
        let r = Registration {
            id: col("id").unwrap_or_default(),
            family: col("family"),
            device_type: col("type"),
            room: col("room"),
            labels,
            resident_id: col("resident_id"),
            tz: col("tz"),
        };
        errors.extend(r.problems(row));
        out.push(r);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The in-memory registry shared by the pipeline, the listeners and the API.
#[derive(Debug, Clone)]
pub struct Registry {
    devices: Arc<DashMap<String, Registration>>,
    /// Unregistered devices that already have their `unregistered_device` alert.
    quarantined: Arc<dashmap::DashSet<String>>,
    /// Policy for devices not in it.
    pub policy: UnknownPolicy,
}

impl Registry {
    /// An empty registry with `policy`.
    pub fn new(policy: UnknownPolicy) -> Registry {
        Registry {
            devices: Arc::new(DashMap::new()),
            quarantined: Arc::default(),
            policy,
        }
    }

    /// Whether `id` is registered.
    pub fn is_registered(&self, id: &str) -> bool {
        self.devices.contains_key(id)
    }

    /// A copy of a registration.
    pub fn get(&self, id: &str) -> Option<Registration> {
        self.devices.get(id).map(|r| r.clone())
    }

    /// Adds or replaces registrations.
    pub fn put(&self, regs: impl IntoIterator<Item = Registration>) {
        for r in regs {
            self.devices.insert(r.id.clone(), r);
        }
    }

    /// Removes a registration.
    pub fn remove(&self, id: &str) {
        self.devices.remove(id);
    }

    /// The resident of a registered device.
    pub fn resident(&self, id: &str) -> Option<String> {
        self.devices.get(id).and_then(|r| r.resident_id.clone())
    }

    /// The clock offset of a registered device.
    pub fn offset(&self, id: &str) -> Option<FixedOffset> {
        self.devices.get(id).and_then(|r| r.offset())
    }

    /// Whether an unregistered device already has its `unregistered_device` alert.
    pub fn is_quarantined(&self, id: &str) -> bool {
        self.quarantined.contains(id)
    }

    /// Remembers that these devices have their `unregistered_device` alert (after commit).
    pub fn mark_quarantined(&self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            self.quarantined.insert(id);
        }
    }

    /// Forgets a device's quarantine (it was registered: its alert is resolved, and were it
    /// unregistered again, its next message raises a new one).
    pub fn unmark_quarantined(&self, id: &str) {
        self.quarantined.remove(id);
    }

    /// How many devices are registered.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_are_checked_and_every_problem_is_named_with_its_row() {
        let ok = parse_csv(b"id,family,type,room,labels,resident_id,tz\n860000000000001,gt06,pendant,bedroom,lives_alone=yes;region=xh,r1,+08:00\nd2,,smoke,kitchen,,,\n").unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].labels.get("region").map(String::as_str), Some("xh"));
        assert_eq!(ok[0].offset(), FixedOffset::east_opt(8 * 3600));
        let bad = parse_csv(b"id,family,colour\nbad id,fax,red\nd3,watch,\n").unwrap_err();
        let got: Vec<_> = bad.iter().map(|e| (e.row, e.field.as_str())).collect();
        assert_eq!(got, [(0, "colour"), (1, "id"), (1, "family")]);
    }

    #[test]
    fn offsets_parse_in_the_usual_shapes() {
        assert_eq!(parse_tz("+08:00"), FixedOffset::east_opt(28_800));
        assert_eq!(parse_tz("-0530"), FixedOffset::east_opt(-19_800));
        assert_eq!(parse_tz("+8"), FixedOffset::east_opt(28_800));
        assert_eq!(parse_tz("8"), None);
        assert_eq!(parse_tz("+25:00"), None);
    }
}
