//! Rule evaluation with time: one [`Engine`] per shard holds the state of the rules for the
//! devices and residents of that shard — pending `for`s, absences, escalations, correlations —
//! and turns an input (an event, or the deadlines due by a time) into actions the store
//! commits with the batch.
//!
//! Durability without a write per message: an absence is derived from the last activity the
//! batch commits anyway (`devices.activity`) and the alerts it opened; only deadlines that
//! cannot be derived (a `for`, an escalation step, a correlation) are rows, written in the
//! transaction of the batch that starts them and deleted in the one that fires or cancels
//! them. State changes made while building a batch are undone if its commit fails.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::{Per, Rule, RuleSet, Trigger, TypeSet};
use crate::clock::{from_millis, to_millis};
use crate::domain::care::{DEFAULT_TIME_ZONE, Resident};
use crate::domain::partition;
use crate::event::{Event, EventType};
use crate::registry::Registration;
use crate::store::{
    BatchOutcome, Clear, Deadline, DeadlineChange, DeadlineKind, FollowSpec, RuleHit, TimerState,
    WriteItem,
};

/// What the engine needs to know about devices, residents and suppressions (the registry).
pub trait Directory {
    /// A registered device.
    fn registration(&self, device: &str) -> Option<Arc<Registration>>;
    /// A resident.
    fn resident(&self, id: &str) -> Option<Arc<Resident>>;
    /// Every resident.
    fn residents(&self) -> Vec<Arc<Resident>>;
    /// Every registered device.
    fn registrations(&self) -> Vec<Registration>;
    /// The devices of a resident.
    fn devices_of(&self, resident: &str) -> Vec<Registration>;
    /// A device's reporting interval: its own, else its type's default.
    fn report_interval(&self, device: &str) -> Option<Duration>;
    /// The active suppression covering an alert of `kind` for the device at `at`: its id and
    /// end.
    fn suppression(
        &self,
        resident: Option<&str>,
        device: &str,
        kind: &str,
        at: DateTime<Utc>,
    ) -> Option<(i64, DateTime<Utc>)>;
    /// Changes whenever registrations, residents or suppressions change.
    fn version(&self) -> u64;
}

/// The subject of a household (all of a resident's devices together).
pub fn household(resident: &str) -> String {
    format!("r/{resident}")
}

/// The partition key of a device: its resident's id, else its own, so one household's
/// devices, events and deadlines share a shard (correlation and per-resident absences).
pub fn partition_key(reg: Option<&Registration>, device: &str) -> String {
    reg.and_then(|r| r.resident_id.clone())
        .unwrap_or_else(|| device.to_owned())
}

type DKey = (DeadlineKind, String, String);
type AKey = (String, String);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum TKey {
    D(DKey),
    A(AKey),
}

/// An absence being counted.
#[derive(Debug, Clone, PartialEq)]
struct Absence {
    /// Last watched message, ms.
    last: i64,
    /// When it fires; `None` once fired (until the next message).
    due: Option<i64>,
    /// Its alert is open (or was, until the next message clears it).
    fired: bool,
    /// The device an alert names (a household's most recently active one).
    device: String,
    /// The resident.
    resident: Option<String>,
    /// Partition key.
    partition: String,
    /// Held back by a suppression: `due` is that suppression's end. Looked at again as soon
    /// as no suppression covers it, so one ended early does not keep holding it.
    held: bool,
}

#[derive(Debug)]
enum Undo {
    A(AKey, Option<Absence>),
    D(DKey, Option<Deadline>),
    C(AKey, Option<bool>),
}

/// Deadline and suppression bookkeeping a batch carries besides its items.
#[derive(Debug, Default)]
pub struct Out {
    /// Deadlines started or ended.
    pub deadlines: Vec<DeadlineChange>,
    /// Matches each suppression kept from alerting.
    pub suppressed: HashMap<i64, i64>,
    /// (device, type, ms) of messages an absence of named types counts: kept on the
    /// device's row for start-up (an absence of any message counts from `last_seen`).
    pub activity: Vec<(String, EventType, i64)>,
}

/// The rules state of one shard.
#[derive(Debug)]
pub struct Engine {
    shard: usize,
    shards: usize,
    /// Deadlines before this came due while the engine was down: `late`.
    started_at: i64,
    /// No absence fires before this (ms): the broker's backlog may end it.
    absences_from: i64,
    /// The rule set generation the state was built for, and each rule's version.
    generation: u64,
    versions: HashMap<String, String>,
    deadlines: HashMap<DKey, Deadline>,
    absences: HashMap<AKey, Absence>,
    activity: HashMap<String, Vec<(EventType, i64)>>,
    /// Each device's last message of any type at start-up (the store keeps a type's time
    /// only where an absence counts it); later messages are in `activity`.
    seen: HashMap<String, i64>,
    /// (rule, subject) → condition start of its latest alert, from the store at start-up.
    fired: HashMap<AKey, i64>,
    timers: BTreeSet<(i64, TKey)>,
    /// (rule, device) of event rules with `clear`: raised (true) or cleared (false) since
    /// start; unknown ones clear once, so a reading that satisfies `clear` every few minutes
    /// notes the end of a condition once, not every time.
    raised: HashMap<AKey, bool>,
    undo: Vec<Undo>,
    directory_version: Option<u64>,
    /// Deletions from a reload, carried by every attempt until one commits.
    carry: Vec<DeadlineChange>,
}

impl Engine {
    /// An empty engine for shard `shard` of `shards`, started at `started_at`.
    pub fn new(shard: usize, shards: usize, started_at: DateTime<Utc>) -> Engine {
        Engine {
            shard,
            shards: shards.max(1),
            started_at: to_millis(started_at),
            absences_from: to_millis(started_at),
            generation: 0,
            versions: HashMap::new(),
            deadlines: HashMap::new(),
            absences: HashMap::new(),
            activity: HashMap::new(),
            seen: HashMap::new(),
            fired: HashMap::new(),
            timers: BTreeSet::new(),
            raised: HashMap::new(),
            undo: Vec::new(),
            directory_version: None,
            carry: Vec::new(),
        }
    }

    /// Holds absences that came due while the engine was down until `grace` after start-up
    /// (`[pipeline] absence_startup_grace_secs`).
    pub fn with_startup_grace(mut self, grace: Duration) -> Engine {
        self.absences_from = self.started_at + grace.num_milliseconds();
        self
    }

    fn mine(&self, key: &str) -> bool {
        partition(key, self.shards) == self.shard
    }

    /// Takes this shard's part of the stored state (start-up). Absences are rebuilt at the
    /// first [`Engine::prepare`].
    pub fn load(&mut self, state: &TimerState, dir: &dyn Directory) {
        for d in &state.deadlines {
            if self.mine(&d.partition) {
                self.put_deadline_raw((d.kind, d.rule.clone(), d.subject.clone()), Some(d.clone()));
            }
        }
        for (device, ty, at) in &state.activity {
            let Some(ty) = EventType::parse(ty) else {
                continue;
            };
            let reg = dir.registration(device);
            if !self.mine(&partition_key(reg.as_deref(), device)) {
                continue;
            }
            self.activity
                .entry(device.clone())
                .or_default()
                .push((ty, *at));
        }
        for (device, at) in &state.seen {
            let reg = dir.registration(device);
            if self.mine(&partition_key(reg.as_deref(), device)) {
                self.seen.insert(device.clone(), *at);
            }
        }
        for (rule, subject, since) in &state.fired {
            self.fired.insert((rule.clone(), subject.clone()), *since);
        }
    }

    /// Deadlines and absences pending in this shard.
    pub fn pending(&self) -> usize {
        self.timers.len()
    }

    /// Absences counted in this shard (fired or not).
    pub fn absences(&self) -> usize {
        self.absences.len()
    }

    /// The earliest pending deadline, ms.
    pub fn next_due(&self) -> Option<i64> {
        self.timers.first().map(|(d, _)| *d)
    }

    /// Starts a batch: what follows is undone by [`Engine::rollback`].
    pub fn begin(&mut self, out: &mut Out) {
        self.undo.clear();
        out.deadlines.extend(self.carry.iter().cloned());
    }

    /// The batch committed: keep its changes and mirror the deadlines the store made.
    pub fn committed(&mut self, outcome: &BatchOutcome) {
        self.undo.clear();
        self.carry.clear();
        for change in &outcome.deadlines {
            match change {
                DeadlineChange::Put(d) => {
                    if d.kind == DeadlineKind::Hold {
                        // A reading meant to count found its alert resolved: the `for` runs.
                        self.raised
                            .insert((d.rule.clone(), d.subject.clone()), false);
                    }
                    self.put_deadline_raw(
                        (d.kind, d.rule.clone(), d.subject.clone()),
                        Some(d.clone()),
                    );
                }
                DeadlineChange::Delete(k, r, s) => {
                    self.put_deadline_raw((*k, r.clone(), s.clone()), None);
                }
            }
        }
    }

    /// The batch did not commit: forget what evaluating it changed.
    pub fn rollback(&mut self) {
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::A(k, v) => {
                    self.put_absence_raw(k, v);
                }
                Undo::D(k, v) => {
                    self.put_deadline_raw(k, v);
                }
                Undo::C(k, v) => match v {
                    Some(b) => {
                        self.raised.insert(k, b);
                    }
                    None => {
                        self.raised.remove(&k);
                    }
                },
            }
        }
    }

    fn put_absence_raw(&mut self, key: AKey, v: Option<Absence>) -> Option<Absence> {
        let old = match &v {
            Some(a) => self.absences.insert(key.clone(), a.clone()),
            None => self.absences.remove(&key),
        };
        if let Some(due) = old.as_ref().and_then(|a| a.due) {
            self.timers.remove(&(due, TKey::A(key.clone())));
        }
        if let Some(due) = v.as_ref().and_then(|a| a.due) {
            self.timers.insert((due, TKey::A(key)));
        }
        old
    }

    fn put_deadline_raw(&mut self, key: DKey, v: Option<Deadline>) -> Option<Deadline> {
        let old = match &v {
            Some(d) => self.deadlines.insert(key.clone(), d.clone()),
            None => self.deadlines.remove(&key),
        };
        if let Some(o) = &old {
            self.timers.remove(&(o.due, TKey::D(key.clone())));
        }
        if let Some(d) = &v {
            self.timers.insert((d.due, TKey::D(key)));
        }
        old
    }

    fn set_raised(&mut self, key: AKey, raised: bool) {
        let old = self.raised.insert(key.clone(), raised);
        if old != Some(raised) {
            self.undo.push(Undo::C(key, old));
        }
    }

    fn set_absence(&mut self, key: AKey, v: Option<Absence>) {
        let old = self.put_absence_raw(key.clone(), v);
        self.undo.push(Undo::A(key, old));
    }

    fn set_deadline(&mut self, key: DKey, v: Option<Deadline>) {
        let old = self.put_deadline_raw(key.clone(), v);
        self.undo.push(Undo::D(key, old));
    }

    /// Stores a deadline change of the engine's own (a hold started or cancelled).
    fn change_deadline(&mut self, key: DKey, v: Option<Deadline>, out: &mut Out) {
        out.deadlines.push(match &v {
            Some(d) => DeadlineChange::Put(d.clone()),
            None => DeadlineChange::Delete(key.0, key.1.clone(), key.2.clone()),
        });
        self.set_deadline(key, v);
    }

    /// Brings the state in line with the rules in force and the directory: a reload keeps
    /// the state of unchanged rules and restarts that of changed ones (logged); a changed
    /// directory adds and drops the residents and devices the absences count.
    pub fn prepare(
        &mut self,
        rules: &RuleSet,
        generation: u64,
        dir: &dyn Directory,
        now: DateTime<Utc>,
        out: &mut Out,
    ) {
        let mut rebuild = false;
        if generation != self.generation {
            let current: HashMap<String, String> = rules
                .rules
                .iter()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect();
            if self.generation != 0 {
                let before = std::mem::take(&mut self.versions);
                let stale = |name: &str| current.get(name) != before.get(name);
                let dropped: Vec<AKey> = self
                    .absences
                    .keys()
                    .filter(|(r, _)| stale(r))
                    .cloned()
                    .collect();
                for k in dropped {
                    tracing::info!(rule = %k.0, subject = %k.1, "Rule changed by a reload: its absence is counted again under the new rule");
                    self.set_absence(k, None);
                }
                let held: Vec<DKey> = self
                    .deadlines
                    .keys()
                    .filter(|(kind, r, _)| *kind != DeadlineKind::Escalate && stale(r))
                    .cloned()
                    .collect();
                for k in held {
                    tracing::info!(rule = %k.1, subject = %k.2, kind = k.0.as_str(), "Rule changed by a reload: its pending deadline is restarted (dropped; the next matching event starts it again)");
                    self.carry
                        .push(DeadlineChange::Delete(k.0, k.1.clone(), k.2.clone()));
                    out.deadlines
                        .push(DeadlineChange::Delete(k.0, k.1.clone(), k.2.clone()));
                    self.set_deadline(k, None);
                }
            }
            self.versions = current;
            self.generation = generation;
            rebuild = true;
        }
        if self.directory_version != Some(dir.version()) {
            self.directory_version = Some(dir.version());
            rebuild = true;
        }
        if rebuild {
            self.reconcile(rules, dir, to_millis(now));
        }
    }

    /// Creates the absences the rules and directory call for, drops the others.
    fn reconcile(&mut self, rules: &RuleSet, dir: &dyn Directory, now: i64) {
        let mut desired: HashMap<AKey, (Vec<String>, Option<String>, String)> = HashMap::new();
        let absence_rules: Vec<&Rule> = rules
            .rules
            .iter()
            .filter(|r| matches!(r.trigger, Trigger::Absent { .. }))
            .collect();
        if !absence_rules.is_empty() {
            let regs = if absence_rules.iter().any(|r| {
                matches!(
                    r.trigger,
                    Trigger::Absent {
                        per: Per::Device,
                        ..
                    }
                )
            }) {
                dir.registrations()
            } else {
                Vec::new()
            };
            let residents = if absence_rules.iter().any(|r| {
                matches!(
                    r.trigger,
                    Trigger::Absent {
                        per: Per::Resident,
                        ..
                    }
                )
            }) {
                dir.residents()
            } else {
                Vec::new()
            };
            for rule in &absence_rules {
                let Trigger::Absent { per, after, .. } = &rule.trigger else {
                    continue;
                };
                match per {
                    Per::Device => {
                        for reg in &regs {
                            let part = partition_key(Some(reg), &reg.id);
                            if !self.mine(&part) {
                                continue;
                            }
                            let resident = reg.resident_id.as_deref().and_then(|r| dir.resident(r));
                            if !selects(rule, Some(reg), resident.as_deref())
                                || after.resolve(dir.report_interval(&reg.id)).is_none()
                            {
                                continue;
                            }
                            desired.insert(
                                (rule.name.clone(), reg.id.clone()),
                                (vec![reg.id.clone()], reg.resident_id.clone(), part),
                            );
                        }
                    }
                    Per::Resident => {
                        for res in &residents {
                            if !self.mine(&res.id)
                                || !rule
                                    .residents
                                    .matches(|k| res.labels.get(k).map(String::as_str))
                            {
                                continue;
                            }
                            let devices: Vec<String> = dir
                                .devices_of(&res.id)
                                .into_iter()
                                .filter(|reg| selects_device(rule, Some(reg)))
                                .map(|reg| reg.id)
                                .collect();
                            if devices.is_empty() {
                                continue;
                            }
                            desired.insert(
                                (rule.name.clone(), household(&res.id)),
                                (devices, Some(res.id.clone()), res.id.clone()),
                            );
                        }
                    }
                }
            }
        }
        let gone: Vec<AKey> = self
            .absences
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            self.set_absence(k, None);
        }
        // A suppression ended early (DELETE) or pruned at its end changes the directory:
        // the absences it held back come due now, not at the end it was created with.
        let released: Vec<(AKey, Absence)> = self
            .absences
            .iter()
            .filter(|(_, a)| a.held)
            .filter_map(|(k, a)| {
                let rule = rules.get(&k.0)?;
                let covered = dir
                    .suppression(
                        a.resident.as_deref(),
                        &a.device,
                        &rule.kind,
                        from_millis(now),
                    )
                    .is_some();
                if covered {
                    return None;
                }
                let mut a = a.clone();
                a.held = false;
                // Due when the suppression ended, if its own deadline has passed.
                a.due = self.absence_due(rule, &a, dir).map(|d| d.max(now));
                Some((k.clone(), a))
            })
            .collect();
        for (k, a) in released {
            self.set_absence(k, Some(a));
        }
        for (key, (devices, resident, part)) in desired {
            if let Some(a) = self.absences.get(&key).cloned() {
                // Still counted: its interval, window or time zone may have changed (one held
                // by a suppression keeps the suppression's end).
                if !a.fired
                    && !a.held
                    && let Some(rule) = rules.get(&key.0)
                {
                    let due = self.absence_due(rule, &a, dir);
                    if due != a.due {
                        self.set_absence(key, Some(Absence { due, ..a }));
                    }
                }
                continue;
            }
            let Some(rule) = rules.get(&key.0) else {
                continue;
            };
            let Trigger::Absent { types, .. } = &rule.trigger else {
                continue;
            };
            // The last watched message of any of its devices; never heard from: counted from
            // now (an absence cannot predate what the engine knows).
            let mut last: Option<(i64, &String)> = None;
            for d in &devices {
                for (ty, at) in self.activity.get(d).map(Vec::as_slice).unwrap_or(&[]) {
                    if types.contains(*ty) && last.is_none_or(|(l, _)| *at > l) {
                        last = Some((*at, d));
                    }
                }
                if matches!(types, TypeSet::Any)
                    && let Some(at) = self.seen.get(d)
                    && last.is_none_or(|(l, _)| *at > l)
                {
                    last = Some((*at, d));
                }
            }
            let (last, device) = match last {
                Some((at, d)) => (at, d.clone()),
                None => (now, devices[0].clone()),
            };
            let fired = self.fired.get(&key).is_some_and(|since| *since >= last);
            let mut a = Absence {
                last,
                due: None,
                fired,
                device,
                resident,
                partition: part,
                held: false,
            };
            if !fired {
                a.due = self.absence_due(rule, &a, dir);
            }
            self.set_absence(key, Some(a));
        }
    }

    fn absence_due(&self, rule: &Rule, a: &Absence, dir: &dyn Directory) -> Option<i64> {
        self.absence_due_raw(rule, a, dir)
            .map(|due| due.max(self.absences_from))
    }

    /// When the absence comes due by its rule alone (before the start-up grace).
    fn absence_due_raw(&self, rule: &Rule, a: &Absence, dir: &dyn Directory) -> Option<i64> {
        let Trigger::Absent { after, .. } = &rule.trigger else {
            return None;
        };
        let allowance = after.resolve(dir.report_interval(&a.device))?;
        let raw = from_millis(a.last) + allowance;
        let due = match &rule.active {
            Some(w) => w.next_open(raw, tz_of(a.resident.as_deref(), dir)),
            None => raw,
        };
        Some(to_millis(due))
    }

    /// Evaluates one event: updates absences and correlations, starts or cancels `for`s, and
    /// returns the rules it triggered now and the conditions it ended.
    pub fn on_event(
        &mut self,
        rules: &RuleSet,
        dir: &dyn Directory,
        event: &Event,
        out: &mut Out,
    ) -> (Vec<RuleHit>, Vec<Clear>) {
        let mut hits = Vec::new();
        let mut clears = Vec::new();
        let device = event.device_id.as_str();
        let at = to_millis(event.received_at);
        let reg = dir.registration(device);
        let resident = reg
            .as_ref()
            .and_then(|r| r.resident_id.as_deref())
            .and_then(|r| dir.resident(r));
        let part = partition_key(reg.as_deref(), device);
        let home = resident
            .as_ref()
            .map(|r| household(&r.id))
            .unwrap_or_else(|| device.to_owned());
        let ty = event.event_type;

        match self.activity.get_mut(device) {
            Some(acts) => match acts.iter_mut().find(|(t, _)| *t == ty) {
                Some((_, last)) => *last = (*last).max(at),
                None => acts.push((ty, at)),
            },
            None => {
                self.activity.insert(device.to_owned(), vec![(ty, at)]);
            }
        }

        for rule in &rules.rules {
            match &rule.trigger {
                Trigger::Absent { types, per, .. } if types.contains(ty) => {
                    let subject = match per {
                        Per::Device => device.to_owned(),
                        Per::Resident if selects_device(rule, reg.as_deref()) => home.clone(),
                        Per::Resident => continue,
                    };
                    let key = (rule.name.clone(), subject.clone());
                    let Some(mut a) = self.absences.get(&key).cloned() else {
                        continue;
                    };
                    if !matches!(types, TypeSet::Any) {
                        out.activity.push((device.to_owned(), ty, at));
                    }
                    if a.fired {
                        clears.push(Clear {
                            rule: rule.name.clone(),
                            subject,
                        });
                        a.fired = false;
                    }
                    if at >= a.last {
                        a.last = at;
                        a.device = device.to_owned();
                    }
                    a.held = false;
                    a.due = self.absence_due(rule, &a, dir);
                    self.set_absence(key, Some(a));
                }
                Trigger::Follows { types, .. }
                    if types.contains(ty) && selects_device(rule, reg.as_deref()) =>
                {
                    let key = (DeadlineKind::Follow, rule.name.clone(), home.clone());
                    if self.deadlines.contains_key(&key) {
                        self.change_deadline(key, None, out);
                    }
                }
                Trigger::Event {
                    event: t,
                    when,
                    any_of,
                    hold,
                    clear,
                } if *t == ty => {
                    if !selects(rule, reg.as_deref(), resident.as_deref()) {
                        continue;
                    }
                    let thresholds = resident.as_ref().map(|r| &r.thresholds);
                    let matched = rule.matches_with(event, thresholds);
                    // An event that carries none of the fields a rule looks at says nothing
                    // about its condition (an SpO2 reading does not cancel a heart-rate `for`).
                    let relevant = (when.is_empty() && any_of.is_empty())
                        || when
                            .iter()
                            .chain(any_of)
                            .any(|c| c.eval(event, thresholds).is_some());
                    let cleared = !clear.is_empty()
                        && clear
                            .iter()
                            .all(|c| c.eval(event, thresholds) == Some(true));
                    // Keys are made only when something may change: most readings are routine.
                    let ckey = || (rule.name.clone(), device.to_owned());
                    if cleared && self.raised.get(&ckey()) != Some(&false) {
                        clears.push(Clear {
                            rule: rule.name.clone(),
                            subject: device.to_owned(),
                        });
                        self.set_raised(ckey(), false);
                    }
                    match hold {
                        Some(_) if !matched && (!relevant || self.deadlines.is_empty()) => {}
                        Some(d) => {
                            let key = (DeadlineKind::Hold, rule.name.clone(), device.to_owned());
                            let pending = self.deadlines.contains_key(&key);
                            if matched && !pending {
                                let mut dl = Deadline {
                                    kind: DeadlineKind::Hold,
                                    rule: rule.name.clone(),
                                    subject: device.to_owned(),
                                    partition: part.clone(),
                                    due: at + d.num_milliseconds(),
                                    alert_id: None,
                                    level: 0,
                                    since: at,
                                    version: rule.version.clone(),
                                    detail: serde_json::json!({
                                        "resident_id": resident.as_ref().map(|r| r.id.clone()),
                                        "type": ty.name(),
                                        "fields": event.fields,
                                    }),
                                };
                                if self.raised.get(&ckey()) == Some(&true) {
                                    // Its alert is open (as far as this shard knows): the
                                    // reading counts on it; the store starts the `for` instead
                                    // if an operator has resolved it meanwhile.
                                    dl.detail["count_or_hold"] = true.into();
                                    let mut hit = self.hit(
                                        rules,
                                        rule,
                                        device,
                                        &part,
                                        &home,
                                        resident.as_deref(),
                                    );
                                    hit.hold = Some(dl);
                                    hits.push(hit);
                                } else {
                                    self.change_deadline(key, Some(dl), out);
                                }
                            } else if !matched && relevant && pending {
                                self.change_deadline(key, None, out);
                            }
                        }
                        None if matched => {
                            if let Some(w) = &rule.active
                                && !w.contains(event.received_at, tz(resident.as_deref()))
                            {
                                continue;
                            }
                            let rid = resident.as_ref().map(|r| r.id.as_str());
                            if let Some((id, _)) =
                                dir.suppression(rid, device, &rule.kind, event.received_at)
                            {
                                *out.suppressed.entry(id).or_default() += 1;
                                continue;
                            }
                            hits.push(self.hit(
                                rules,
                                rule,
                                device,
                                &part,
                                &home,
                                resident.as_deref(),
                            ));
                            if !clear.is_empty() {
                                self.set_raised(ckey(), true);
                            }
                        }
                        None => {}
                    }
                }
                _ => {}
            }
        }
        (hits, clears)
    }

    /// The hit of `rule` for `device`, with the correlations that follow it.
    fn hit(
        &self,
        rules: &RuleSet,
        rule: &Rule,
        device: &str,
        part: &str,
        home: &str,
        resident: Option<&Resident>,
    ) -> RuleHit {
        let mut hit = rule.hit(device, rules.steps(rule));
        hit.partition = part.to_owned();
        for f in &rules.rules {
            if let Trigger::Follows {
                rules: followed,
                after,
                raise,
                ..
            } = &f.trigger
                && followed.contains(&rule.name)
                && f.residents
                    .matches(|k| resident.and_then(|r| r.labels.get(k)).map(String::as_str))
            {
                hit.follows.push(FollowSpec {
                    rule: f.name.clone(),
                    version: f.version.clone(),
                    subject: home.to_owned(),
                    after: after.num_milliseconds(),
                    raise: *raise,
                });
            }
        }
        hit
    }

    /// Fires every deadline due by `upto` (ms), in due order, into `items`.
    pub fn fire_due(
        &mut self,
        rules: &RuleSet,
        dir: &dyn Directory,
        upto: i64,
        items: &mut Vec<WriteItem>,
        out: &mut Out,
    ) {
        while let Some((due, key)) = self.timers.first().cloned() {
            if due > upto {
                break;
            }
            let late = due < self.started_at;
            crate::telemetry::timer_fired((upto - due) as f64 / 1000.0);
            match key {
                TKey::A(akey) => self.fire_absence(rules, dir, akey, due, late, items, out),
                TKey::D(dkey) => self.fire_deadline(rules, dir, dkey, due, late, items, out),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fire_absence(
        &mut self,
        rules: &RuleSet,
        dir: &dyn Directory,
        key: AKey,
        due: i64,
        late: bool,
        items: &mut Vec<WriteItem>,
        out: &mut Out,
    ) {
        let Some(mut a) = self.absences.get(&key).cloned() else {
            return;
        };
        let Some(rule) = rules.get(&key.0) else {
            self.set_absence(key, None);
            return;
        };
        let at = from_millis(due);
        if let Some((id, until)) = dir.suppression(a.resident.as_deref(), &a.device, &rule.kind, at)
        {
            // Held, not lost: the absence is looked at again when the suppression ends.
            *out.suppressed.entry(id).or_default() += 1;
            let next = match &rule.active {
                Some(w) => w.next_open(until, tz_of(a.resident.as_deref(), dir)),
                None => until,
            };
            a.due = Some(to_millis(next).max(due + 1));
            a.held = true;
            self.set_absence(key, Some(a));
            return;
        }
        let mut hit = rule.hit(&a.device, rules.steps(rule));
        hit.subject = key.1.clone();
        hit.partition = a.partition.clone();
        hit.since = Some(a.last);
        // Held by the start-up grace, it was still due while the engine was down; its
        // timeline shows when it came due by its rule.
        let due = match self.absence_due_raw(rule, &a, dir) {
            Some(raw) if due <= self.absences_from && raw < due => raw,
            _ => due,
        };
        hit.late = late || due < self.started_at;
        items.push(WriteItem::Fired {
            device_id: a.device.clone(),
            resident_id: a.resident.clone(),
            hit,
            due,
        });
        a.fired = true;
        a.due = None;
        a.held = false;
        // Remembered beyond this absence's entry: were the subject dropped and counted again
        // (a registry change), the same silence must not fire twice.
        self.fired.insert(key.clone(), a.last);
        self.set_absence(key, Some(a));
    }

    #[allow(clippy::too_many_arguments)]
    fn fire_deadline(
        &mut self,
        rules: &RuleSet,
        dir: &dyn Directory,
        key: DKey,
        due: i64,
        late: bool,
        items: &mut Vec<WriteItem>,
        out: &mut Out,
    ) {
        let Some(d) = self.deadlines.get(&key).cloned() else {
            return;
        };
        match d.kind {
            DeadlineKind::Hold => {
                let Some(rule) = rules.get(&d.rule).filter(|r| r.version == d.version) else {
                    tracing::info!(rule = %d.rule, device = %d.subject, "A pending `for` of a rule that changed or went away is dropped");
                    self.change_deadline(key, None, out);
                    return;
                };
                let resident_id = d.detail["resident_id"].as_str().map(str::to_owned);
                let at = from_millis(due);
                if let Some(w) = &rule.active {
                    let tz = tz_of(resident_id.as_deref(), dir);
                    if !w.contains(at, tz) {
                        let mut held = d.clone();
                        held.due = to_millis(w.next_open(at, tz));
                        self.change_deadline(key, Some(held), out);
                        return;
                    }
                }
                self.change_deadline(key, None, out);
                if let Some((id, _)) =
                    dir.suppression(resident_id.as_deref(), &d.subject, &rule.kind, at)
                {
                    *out.suppressed.entry(id).or_default() += 1;
                    return;
                }
                let resident = resident_id.as_deref().and_then(|r| dir.resident(r));
                let home = resident_id
                    .as_deref()
                    .map(household)
                    .unwrap_or_else(|| d.subject.clone());
                let mut hit = self.hit(
                    rules,
                    rule,
                    &d.subject,
                    &d.partition,
                    &home,
                    resident.as_deref(),
                );
                self.set_raised((rule.name.clone(), d.subject.clone()), true);
                hit.since = Some(d.since);
                hit.late = late;
                items.push(WriteItem::Fired {
                    device_id: d.subject.clone(),
                    resident_id,
                    hit,
                    due,
                });
            }
            DeadlineKind::Escalate => {
                let steps: Vec<i64> = d.detail["steps"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
                    .unwrap_or_default();
                let opened = d.detail["opened_at"].as_i64().unwrap_or(d.since);
                let next = steps.get(d.level as usize).map(|step| Deadline {
                    level: d.level + 1,
                    due: opened + step,
                    ..d.clone()
                });
                items.push(WriteItem::Escalate {
                    alert_id: d.alert_id.unwrap_or_default(),
                    rule: d.rule.clone(),
                    level: d.level,
                    due,
                    late,
                    next,
                });
                // The store puts the next step or deletes this one; mirrored after commit.
                self.set_deadline(key, None);
            }
            DeadlineKind::Follow => {
                let title = rules
                    .get(&d.rule)
                    .map(|r| r.title.clone())
                    .unwrap_or_else(|| d.rule.clone());
                items.push(WriteItem::Raise {
                    alert_id: d.alert_id.unwrap_or_default(),
                    rule: d.rule.clone(),
                    subject: d.subject.clone(),
                    by: d.level.max(1),
                    due,
                    late,
                    title,
                });
                self.set_deadline(key, None);
            }
        }
    }
}

fn tz(resident: Option<&Resident>) -> chrono_tz::Tz {
    resident.map(Resident::tz).unwrap_or_else(|| {
        DEFAULT_TIME_ZONE
            .parse()
            .unwrap_or(chrono_tz::Asia::Shanghai)
    })
}

fn tz_of(resident: Option<&str>, dir: &dyn Directory) -> chrono_tz::Tz {
    tz(resident.and_then(|r| dir.resident(r)).as_deref())
}

/// The device selector: `type`, `room`, then labels.
fn selects_device(rule: &Rule, reg: Option<&Registration>) -> bool {
    rule.devices.matches(|k| {
        let reg = reg?;
        match k {
            "type" => reg.device_type.as_deref(),
            "room" => reg.room.as_deref(),
            _ => reg.labels.get(k).map(String::as_str),
        }
    })
}

/// Both selectors.
fn selects(rule: &Rule, reg: Option<&Registration>, resident: Option<&Resident>) -> bool {
    selects_device(rule, reg)
        && rule
            .residents
            .matches(|k| resident.and_then(|r| r.labels.get(k)).map(String::as_str))
}
