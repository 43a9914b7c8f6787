//! The device registry: which devices an installer registered, with their family, type, room,
//! labels, resident, clock offset and reporting interval, and the unknown-device policy for
//! everything else (CONTRACT.md, "Devices"); with them the residents and the active
//! suppressions. The pipeline, the rules engine and the TCP listeners consult an in-memory
//! copy kept in step with the store by the API, so no lookup touches the database on the hot
//! path.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, FixedOffset, Utc};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::domain::care::{Resident, Suppression};
use crate::domain::duration;
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
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
    /// How often the device reports at least once (`"10m"`), the basis of offline
    /// supervision; unset: the default of its `type` (`[devices] report_interval`).
    #[serde(default)]
    pub report_interval: Option<String>,
}

/// One problem with a registration, located.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
        if let Some(Err(e)) = self.report_interval.as_deref().map(duration::parse) {
            bad("report_interval", e);
        }
        out
    }

    /// The clock offset, when set and valid.
    pub fn offset(&self) -> Option<FixedOffset> {
        self.tz.as_deref().and_then(parse_tz)
    }

    /// The device's own reporting interval, when set and valid.
    pub fn report_interval(&self) -> Option<chrono::Duration> {
        self.report_interval
            .as_deref()
            .and_then(|t| duration::parse(t).ok())
    }

    /// Writes `report_interval` the way the store gives it back (`"600s"` becomes `"10m"`),
    /// so the registry holds the same text before and after a restart.
    pub fn normalize(&mut self) {
        if let Some(d) = self.report_interval() {
            self.report_interval = Some(duration::format(d));
        }
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

/// Parses a CSV registration file: header `id,family,type,room,labels,resident_id,tz,
/// report_interval` (only `id` is required; `labels` as `key=value;key=value`). Returns every
/// row's problems.
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
    const KNOWN: [&str; 8] = [
        "id",
        "family",
        "type",
        "room",
        "labels",
        "resident_id",
        "tz",
        "report_interval",
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
            report_interval: col("report_interval"),
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

/// The in-memory registry shared by the pipeline, the rules engine, the listeners and the
/// API: registered devices, residents and active suppressions. Every change bumps
/// [`Registry::version`].
#[derive(Debug, Clone)]
pub struct Registry {
    devices: Arc<DashMap<String, Arc<Registration>>>,
    /// Resident id → ids of the devices pointing at it (rules look households up by it).
    households: Arc<DashMap<String, std::collections::BTreeSet<String>>>,
    /// Unregistered devices that already have their `unregistered_device` alert.
    quarantined: Arc<dashmap::DashSet<String>>,
    residents: Arc<DashMap<String, Arc<Resident>>>,
    /// Few at any time (a handful per hundred residents), read on every rule match: a list
    /// scanned under a read lock beats any index.
    suppressions: Arc<RwLock<Vec<Suppression>>>,
    /// `[devices] report_interval`: the reporting interval of each device type.
    report_defaults: Arc<RwLock<HashMap<String, chrono::Duration>>>,
    version: Arc<AtomicU64>,
    /// Policy for devices not in it.
    pub policy: UnknownPolicy,
}

impl Registry {
    /// An empty registry with `policy`.
    pub fn new(policy: UnknownPolicy) -> Registry {
        Registry {
            devices: Arc::new(DashMap::new()),
            households: Arc::new(DashMap::new()),
            quarantined: Arc::default(),
            residents: Arc::default(),
            suppressions: Arc::default(),
            report_defaults: Arc::default(),
            version: Arc::default(),
            policy,
        }
    }

    /// Counts a change of devices, residents, suppressions or defaults.
    fn changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// A number that grows with every change of registrations, residents, suppressions or
    /// reporting-interval defaults: whoever derives something from them (which residents and
    /// devices a rule covers) recomputes when it moved.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Whether `id` is registered.
    pub fn is_registered(&self, id: &str) -> bool {
        self.devices.contains_key(id)
    }

    /// A copy of a registration.
    pub fn get(&self, id: &str) -> Option<Registration> {
        self.devices.get(id).map(|r| Registration::clone(&r))
    }

    /// A shared handle on a registration (no copy: read on every event by the rules).
    pub fn get_shared(&self, id: &str) -> Option<Arc<Registration>> {
        self.devices.get(id).map(|r| Arc::clone(&r))
    }

    fn unlink(&self, old: Option<&Registration>) {
        if let Some(old) = old
            && let Some(rid) = &old.resident_id
        {
            let empty = match self.households.get_mut(rid) {
                Some(mut set) => {
                    set.remove(&old.id);
                    set.is_empty()
                }
                None => false,
            };
            if empty {
                self.households.remove_if(rid, |_, set| set.is_empty());
            }
        }
    }

    /// Adds or replaces registrations.
    pub fn put(&self, regs: impl IntoIterator<Item = Registration>) {
        for r in regs {
            if let Some(rid) = &r.resident_id {
                self.households
                    .entry(rid.clone())
                    .or_default()
                    .insert(r.id.clone());
            }
            let id = r.id.clone();
            let old = self.devices.insert(id, Arc::new(r.clone()));
            if old.as_ref().is_some_and(|o| o.resident_id != r.resident_id) {
                self.unlink(old.as_deref());
            }
        }
        self.changed();
    }

    /// Removes a registration.
    pub fn remove(&self, id: &str) {
        let old = self.devices.remove(id).map(|(_, r)| r);
        self.unlink(old.as_deref());
        self.changed();
    }

    /// Every registered device, by id.
    pub fn registrations(&self) -> Vec<Registration> {
        let mut all: Vec<Registration> = self
            .devices
            .iter()
            .map(|r| Registration::clone(&r))
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// The registered devices pointing at a resident, by id.
    pub fn devices_of(&self, resident_id: &str) -> Vec<Registration> {
        let Some(ids) = self.households.get(resident_id).map(|s| s.clone()) else {
            return Vec::new();
        };
        ids.iter().filter_map(|id| self.get(id)).collect()
    }

    /// The resident id of a registered device.
    pub fn resident_of(&self, device_id: &str) -> Option<String> {
        self.devices
            .get(device_id)
            .and_then(|r| r.resident_id.clone())
    }

    /// The clock offset of a registered device.
    pub fn offset(&self, id: &str) -> Option<FixedOffset> {
        self.devices.get(id).and_then(|r| r.offset())
    }

    /// Sets the reporting interval of each device type (`[devices] report_interval`),
    /// replacing the previous ones.
    pub fn set_report_interval_defaults(&self, by_type: HashMap<String, chrono::Duration>) {
        *self
            .report_defaults
            .write()
            .unwrap_or_else(|e| e.into_inner()) = by_type;
        self.changed();
    }

    /// How often a registered device reports at least once: its registration's own
    /// `report_interval`, else the default of its `type`, else `None` (not supervised).
    pub fn report_interval(&self, device_id: &str) -> Option<chrono::Duration> {
        let reg = self.devices.get(device_id)?;
        if let Some(own) = reg.report_interval() {
            return Some(own);
        }
        let by_type = self
            .report_defaults
            .read()
            .unwrap_or_else(|e| e.into_inner());
        by_type.get(reg.device_type.as_deref()?).copied()
    }

    /// A resident.
    pub fn resident(&self, id: &str) -> Option<Arc<Resident>> {
        self.residents.get(id).map(|r| Arc::clone(&r))
    }

    /// Every resident, by id.
    pub fn residents(&self) -> Vec<Arc<Resident>> {
        let mut all: Vec<Arc<Resident>> = self.residents.iter().map(|r| Arc::clone(&r)).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Adds or replaces a resident.
    pub fn put_resident(&self, r: Resident) {
        self.residents.insert(r.id.clone(), Arc::new(r));
        self.changed();
    }

    /// Removes a resident.
    pub fn remove_resident(&self, id: &str) {
        self.residents.remove(id);
        self.changed();
    }

    /// The id of an active suppression that keeps an alert of `kind` for `device` (of
    /// `resident`) from opening at `now` ([`Suppression::covers`]); of several, the oldest.
    pub fn suppression_for(
        &self,
        resident: Option<&str>,
        device: &str,
        kind: &str,
        now: DateTime<Utc>,
    ) -> Option<i64> {
        let all = self.suppressions.read().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .filter(|s| s.covers(resident, device, kind, now))
            .map(|s| s.id)
            .min()
    }

    /// The suppressions held (not ended; one past its `until` stays until
    /// [`Registry::prune_suppressions`]), by id.
    pub fn suppressions(&self) -> Vec<Suppression> {
        self.suppressions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds or replaces a suppression (by id).
    pub fn put_suppression(&self, s: Suppression) {
        {
            let mut all = self.suppressions.write().unwrap_or_else(|e| e.into_inner());
            all.retain(|o| o.id != s.id);
            let at = all.partition_point(|o| o.id < s.id);
            all.insert(at, s);
        }
        self.changed();
    }

    /// Drops a suppression that was ended early.
    pub fn end_suppression(&self, id: i64) {
        self.suppressions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.id != id);
        self.changed();
    }

    /// Drops the suppressions whose `until` has passed at `now`; returns how many.
    pub fn prune_suppressions(&self, now: DateTime<Utc>) -> usize {
        let dropped = {
            let mut all = self.suppressions.write().unwrap_or_else(|e| e.into_inner());
            let before = all.len();
            all.retain(|s| s.until > now);
            before - all.len()
        };
        if dropped > 0 {
            self.changed();
        }
        dropped
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

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn suppression(id: i64, resident: Option<&str>, device: Option<&str>) -> Suppression {
        Suppression {
            id,
            resident_id: resident.map(str::to_owned),
            device_id: device.map(str::to_owned),
            kinds: None,
            reason: "in hospital".into(),
            author: "admin".into(),
            created_at: at("2026-01-01T00:00:00Z"),
            until: at("2026-01-02T00:00:00Z"),
            suppressed_count: 0,
        }
    }

    #[test]
    fn report_interval_comes_from_the_registration_else_the_type_default() {
        let reg = Registry::new(UnknownPolicy::Accept);
        reg.put([
            Registration {
                id: "w1".into(),
                device_type: Some("watch".into()),
                report_interval: Some("600s".into()),
                ..Default::default()
            },
            Registration {
                id: "w2".into(),
                device_type: Some("watch".into()),
                ..Default::default()
            },
            Registration {
                id: "x1".into(),
                device_type: Some("kettle".into()),
                ..Default::default()
            },
            Registration {
                id: "n1".into(),
                ..Default::default()
            },
        ]);
        reg.set_report_interval_defaults(HashMap::from([(
            "watch".to_owned(),
            chrono::Duration::minutes(5),
        )]));
        assert_eq!(
            reg.report_interval("w1"),
            Some(chrono::Duration::minutes(10))
        );
        assert_eq!(
            reg.report_interval("w2"),
            Some(chrono::Duration::minutes(5))
        );
        assert_eq!(reg.report_interval("x1"), None, "a type without a default");
        assert_eq!(reg.report_interval("n1"), None, "no type at all");
        assert_eq!(reg.report_interval("nobody"), None, "not registered");

        let mut r = reg.get("w1").unwrap();
        r.normalize();
        assert_eq!(r.report_interval.as_deref(), Some("10m"));
        let bad = Registration {
            id: "b".into(),
            report_interval: Some("10 minutes".into()),
            ..Default::default()
        };
        assert_eq!(bad.problems(4)[0].field, "report_interval");
        let csv = parse_csv(b"id,type,report_interval\nd1,water,25h\n").unwrap();
        assert_eq!(csv[0].report_interval(), Some(chrono::Duration::hours(25)));
    }

    #[test]
    fn residents_devices_and_suppressions_are_kept_and_every_change_bumps_the_version() {
        let reg = Registry::new(UnknownPolicy::Accept);
        let mut v = reg.version();
        let bumped = |v: &mut u64, what: &str| {
            let now = reg.version();
            assert!(now > *v, "{what} must bump the version");
            *v = now;
        };
        reg.put_resident(Resident {
            id: "r1".into(),
            name: "Li Hua".into(),
            region: "xh".into(),
            time_zone: "Asia/Shanghai".into(),
            labels: BTreeMap::new(),
            thresholds: BTreeMap::from([("hr_high".to_owned(), 110.0)]),
        });
        bumped(&mut v, "put_resident");
        reg.put([
            Registration {
                id: "b".into(),
                resident_id: Some("r1".into()),
                ..Default::default()
            },
            Registration {
                id: "a".into(),
                resident_id: Some("r1".into()),
                ..Default::default()
            },
            Registration {
                id: "c".into(),
                resident_id: Some("r2".into()),
                ..Default::default()
            },
        ]);
        bumped(&mut v, "put");
        let ids = |regs: Vec<Registration>| regs.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(reg.devices_of("r1")), ["a", "b"]);
        assert_eq!(ids(reg.registrations()), ["a", "b", "c"]);
        assert_eq!(reg.resident_of("c").as_deref(), Some("r2"));
        assert_eq!(reg.resident("r1").unwrap().thresholds["hr_high"], 110.0);
        assert_eq!(reg.residents().len(), 1);

        reg.put_suppression(suppression(7, Some("r1"), None));
        bumped(&mut v, "put_suppression");
        reg.put_suppression(suppression(3, None, Some("c")));
        bumped(&mut v, "put_suppression");
        let during = at("2026-01-01T12:00:00Z");
        assert_eq!(
            reg.suppression_for(Some("r1"), "a", "door", during),
            Some(7)
        );
        assert_eq!(reg.suppression_for(Some("r1"), "a", "sos", during), None);
        assert_eq!(
            reg.suppression_for(Some("r2"), "c", "door", during),
            Some(3)
        );
        assert_eq!(reg.suppression_for(Some("r2"), "d", "door", during), None);
        assert_eq!(
            reg.suppressions().iter().map(|s| s.id).collect::<Vec<_>>(),
            [3, 7]
        );
        let mut both = suppression(2, Some("r2"), None);
        both.kinds = Some(vec!["door".into()]);
        reg.put_suppression(both);
        bumped(&mut v, "put_suppression");
        assert_eq!(
            reg.suppression_for(Some("r2"), "c", "door", during),
            Some(2),
            "of several, the oldest"
        );
        assert_eq!(
            reg.suppression_for(Some("r2"), "c", "water", during),
            Some(3)
        );

        reg.end_suppression(3);
        bumped(&mut v, "end_suppression");
        assert_eq!(reg.suppression_for(Some("r2"), "c", "water", during), None);
        assert_eq!(reg.prune_suppressions(during), 0);
        assert_eq!(reg.version(), v, "nothing pruned, nothing changed");
        assert_eq!(reg.prune_suppressions(at("2026-01-02T00:00:00Z")), 2);
        bumped(&mut v, "prune_suppressions");
        assert!(reg.suppressions().is_empty());

        reg.remove_resident("r1");
        bumped(&mut v, "remove_resident");
        assert!(reg.resident("r1").is_none());
        reg.remove("a");
        bumped(&mut v, "remove");
        reg.set_report_interval_defaults(HashMap::new());
        bumped(&mut v, "set_report_interval_defaults");
    }
}
