//! The write path: one transaction per batch (group commit). Everything a batch of messages
//! produced — events, duplicate bookkeeping, alerts, timeline entries, rejections, the
//! notifications of critical openings and escalations — commits
//! together or not at all, so acks can follow the commit (DESIGN.md guarantee 1).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::bulk::{Bulk, KeyRow, SeenRow, flaws_json};
use super::deadlines::apply_deadlines;
use super::outbox::write_notifications;
use super::{Deadline, DeadlineChange, DeadlineKind, Store, StoreError, on_pool};
use crate::clock::to_millis;
use crate::domain::alert::Severity;
use crate::domain::alert::{Decision, EngineStep, Status, decide};
use crate::event::{DedupKey, Event, EventType};
use crate::protocol::Rejection;

/// SQLite allows 32 766 bound parameters per statement; PostgreSQL 65 535. Eleven columns
/// per row keeps a chunk well under both.
const ROWS_PER_STATEMENT: usize = 1000;

/// A rule that fired (evaluated before the transaction: rules are pure).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleHit {
    /// Rule name.
    pub rule: String,
    /// Alert kind.
    pub kind: String,
    /// Alert severity.
    pub severity: Severity,
    /// Alert title.
    pub title: String,
    /// Raise at most one open alert and never count on it (a condition, not a press:
    /// `unregistered_device`).
    pub once: bool,
    /// Version of the rule (empty for the engine's own alerts).
    pub version: String,
    /// What the alert is about: the device id, or `r/<resident id>` for a household.
    pub subject: String,
    /// The partition key of the subject (resident id, else device id), for its deadlines.
    pub partition: String,
    /// Since when the condition held, ms (an absence's last activity, a `for`'s start).
    pub since: Option<i64>,
    /// Fired by a deadline that came due while the engine was down.
    pub late: bool,
    /// Escalation steps, ms after opening, cumulative.
    pub escalate: Vec<i64>,
    /// Correlations the opening starts.
    pub follows: Vec<FollowSpec>,
    /// Only count on an unresolved alert; when there is none, start this `for` instead (a
    /// reading of a condition whose alert the engine believes open).
    pub hold: Option<Deadline>,
}

/// A correlation an opening alert starts (`follows`).
#[derive(Debug, Clone, PartialEq)]
pub struct FollowSpec {
    /// The correlation rule.
    pub rule: String,
    /// Its version.
    pub version: String,
    /// The household subject it watches.
    pub subject: String,
    /// How long after the opening, ms.
    pub after: i64,
    /// Levels to raise by.
    pub raise: i64,
}

/// A rule's condition ended: the alert of (rule, subject) gets a `cleared` entry, and is
/// resolved when the lifecycle allows ([`decide`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Clear {
    /// Rule name.
    pub rule: String,
    /// Alert subject.
    pub subject: String,
}

/// One thing to write, in receive order.
#[derive(Debug, Clone)]
pub enum WriteItem {
    /// An accepted event and what it did to rules.
    Event {
        /// The event.
        event: Event,
        /// Rules it triggered.
        hits: Vec<RuleHit>,
        /// Conditions it ended.
        clears: Vec<Clear>,
    },
    /// A deadline opened (or counted on) an alert with no event in hand.
    Fired {
        /// The device the alert names.
        device_id: String,
        /// Its resident.
        resident_id: Option<String>,
        /// The rule that fired.
        hit: RuleHit,
        /// When it came due, ms.
        due: i64,
    },
    /// An escalation step came due.
    Escalate {
        /// The alert.
        alert_id: i64,
        /// Its rule (the deadline's key).
        rule: String,
        /// The level to raise to.
        level: i64,
        /// When it came due, ms.
        due: i64,
        /// Came due while the engine was down.
        late: bool,
        /// The step after this one, if any.
        next: Option<Deadline>,
    },
    /// A correlation came due: raise the followed alert.
    Raise {
        /// The followed alert.
        alert_id: i64,
        /// The correlation rule (the deadline's key).
        rule: String,
        /// The household subject (the deadline's key).
        subject: String,
        /// Levels to add.
        by: i64,
        /// When it came due, ms.
        due: i64,
        /// Came due while the engine was down.
        late: bool,
        /// Its title, for the timeline.
        title: String,
    },
    /// A refused message or array element.
    Rejected {
        /// What was refused and why.
        rejection: Rejection,
        /// Topic or peer.
        origin: String,
        /// When it arrived.
        received_at: DateTime<Utc>,
    },
}

/// A batch to commit.
#[derive(Debug, Clone)]
pub struct WriteBatch {
    /// Items in receive order.
    pub items: Vec<WriteItem>,
    /// How long `(device, seq, ts)` keys, and the payload keys a broker-flagged copy is
    /// matched against, are kept.
    pub dedup_window: Duration,
    /// How long a 4G frame key ([`DedupKey::Frame`]) recognises the same bytes as a
    /// retransmission.
    pub redelivery_window: Duration,
    /// Identifies this batch across attempts to commit it: written with the batch, so a
    /// retry after a commit whose answer was lost (the connection dropped after COMMIT, or an
    /// abandoned commit) finds that it already went through, and returns what it did.
    pub token: String,
    /// An earlier attempt with this token failed: look the token up first.
    pub retry: bool,
    /// Deadlines the rules started or ended.
    pub deadlines: Vec<DeadlineChange>,
    /// Suppressions that kept a match from alerting: (id, matches).
    pub suppressed: Vec<(i64, i64)>,
    /// (device, type, ms) of messages an absence of named types counts: the last of each
    /// per device is kept (`devices.activity`). An absence of any message counts from
    /// `devices.last_seen`, which every batch writes anyway.
    pub activity: Vec<(String, EventType, i64)>,
}

/// Whether an event is new whatever the dedup table says: without `seq` or `ts` nothing but
/// the transport can tell a redelivery from the next press (two identical SOS payloads are
/// two presses, DESIGN.md guarantee 2), so only a copy the broker flagged (MQTT DUP) is
/// looked up. Its key is still written, for such a copy to find.
fn new_by_transport(event: &Event) -> bool {
    matches!(event.dedup_key, DedupKey::Payload(_)) && !event.redelivered
}

/// When a dedup row no longer stands in the way of a new event with its key: its validity
/// ended, or (for a broker-flagged copy) its retention ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Horizon {
    ValidUntil,
    ExpiresAt,
}

impl Horizon {
    fn condition(self) -> &'static str {
        match self {
            Horizon::ValidUntil => "dedup.valid_until < excluded.seen_at",
            Horizon::ExpiresAt => "dedup.expires_at < excluded.seen_at",
        }
    }
}

/// What happened to an alert in a batch, for the live feed and metrics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertChange {
    /// The alert.
    pub alert_id: i64,
    /// Its device.
    pub device_id: String,
    /// Its kind.
    pub kind: String,
    /// Its severity.
    pub severity: String,
    /// `opened`, `counted`, `duplicate`, `cancelled_on_device`, `cleared`, `escalated`,
    /// `acknowledged`, `resolved`, `call`, `note`.
    pub action: String,
}

/// The result of a committed batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BatchOutcome {
    /// Events stored.
    pub accepted: usize,
    /// Events recognised as redeliveries and not stored again.
    pub duplicates: usize,
    /// Rejections stored.
    pub rejected: usize,
    /// Alert changes, in order.
    pub changes: Vec<AlertChange>,
    /// Deadlines the store started or ended itself (an opened alert's escalation, a
    /// correlation, the next escalation step), for the engine's in-memory mirror.
    #[serde(default)]
    pub deadlines: Vec<DeadlineChange>,
    /// Not committed now: an earlier attempt with the same token had committed it, and this
    /// is what that attempt did.
    #[serde(skip)]
    pub replayed: bool,
}

impl Store {
    /// Commits a batch in one transaction; on error nothing of it is stored.
    pub async fn commit_batch(
        &self,
        batch: &WriteBatch,
        now: DateTime<Utc>,
    ) -> Result<BatchOutcome, StoreError> {
        let committed_at = to_millis(now);
        let mut out = BatchOutcome::default();

        // Unique (device, key) pairs with their expiry; a pair twice in one statement would
        // make PostgreSQL's ON CONFLICT DO UPDATE fail, and is a duplicate anyway.
        // (device, key, seen, valid_until, expires, when an existing row gives way)
        let mut keys: Vec<(String, String, i64, i64, i64, Horizon)> = Vec::new();
        let mut seen_keys = HashSet::new();
        let mut devices: HashMap<&str, i64> = HashMap::new();
        // The last message of each type an absence counts, per device: kept on the device's
        // row, which the batch writes anyway, so absences cost no statement of their own.
        let mut activity: HashMap<&str, BTreeMap<&'static str, i64>> = HashMap::new();
        for (device, ty, at) in &batch.activity {
            let last = activity
                .entry(device.as_str())
                .or_default()
                .entry(ty.name())
                .or_insert(*at);
            *last = (*last).max(*at);
        }
        for item in &batch.items {
            if let WriteItem::Event { event, .. } = item {
                let received = to_millis(event.received_at);
                // A payload key is valid for nothing by itself (the next identical press is a
                // press); only a DUP-flagged copy matches it, for the whole dedup window.
                let (valid, horizon) = match event.dedup_key {
                    DedupKey::Device(_) => (
                        to_millis(event.received_at + batch.dedup_window),
                        Horizon::ValidUntil,
                    ),
                    DedupKey::Payload(_) if event.redelivered => (received, Horizon::ExpiresAt),
                    DedupKey::Payload(_) => (received, Horizon::ValidUntil),
                    DedupKey::Frame(_) => (
                        to_millis(event.received_at + batch.redelivery_window),
                        Horizon::ValidUntil,
                    ),
                };
                if seen_keys.insert((event.device_id.as_str(), event.dedup_key.as_str())) {
                    keys.push((
                        event.device_id.clone(),
                        event.dedup_key.as_str().to_owned(),
                        received,
                        valid,
                        to_millis(event.received_at + batch.dedup_window),
                        horizon,
                    ));
                }
                // A retained message is the broker's copy, replayed at every connection: the
                // device was not seen then (0 leaves first and last seen as they are).
                let last = devices.entry(&event.device_id).or_insert(0);
                if !event.retained {
                    *last = (*last).max(received);
                }
            }
        }
        let mut devices: Vec<(&str, i64, Option<String>)> = devices
            .into_iter()
            .map(|(d, at)| {
                let seen = activity.get(d).map(|types| {
                    serde_json::Value::Object(
                        types
                            .iter()
                            .map(|(t, at)| ((*t).to_owned(), (*at).into()))
                            .collect(),
                    )
                    .to_string()
                });
                (d, at, seen)
            })
            .collect();
        // A stable order keeps concurrent shard transactions from deadlocking on PostgreSQL.
        devices.sort_unstable();

        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;

            // 0. A retry of a batch that went through after all: what it did, nothing more.
            if batch.retry {
                let done: Option<String> = sqlx::query_scalar("SELECT outcome FROM batches WHERE token = $1")
                    .bind(&batch.token)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(done) = done {
                    tx.rollback().await?;
                    let mut outcome: BatchOutcome = serde_json::from_str(&done)
                        .map_err(|e| StoreError::Validation(format!("stored outcome of batch {}: {e}", batch.token)))?;
                    outcome.replayed = true;
                    return Ok(outcome);
                }
            }
            // Payload keys of this batch's new events, for DUP copies in the same batch.
            let mut in_batch: HashSet<(String, String)> = HashSet::new();
            // (subject, rule) of the unresolved alerts the batch's clears could act on, kept
            // up to date as the batch opens and resolves them: one query per batch instead
            // of one per clearing reading.
            let mut open_keys: HashSet<(String, String)> = HashSet::new();
            {
                let mut subjects: Vec<&str> = batch
                    .items
                    .iter()
                    .filter_map(|i| match i {
                        WriteItem::Event { clears, .. } => Some(clears.iter().map(|c| c.subject.as_str())),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                subjects.sort_unstable();
                subjects.dedup();
                for chunk in subjects.chunks(ROWS_PER_STATEMENT) {
                    let mut q = sqlx::QueryBuilder::<Db>::new("SELECT subject, rule FROM alerts WHERE status <> 'resolved' AND subject IN (");
                    let mut sep = q.separated(", ");
                    for s in chunk {
                        sep.push_bind((*s).to_owned());
                    }
                    q.push(")");
                    for row in q.build().fetch_all(&mut *tx).await? {
                        open_keys.insert((row.try_get("subject")?, row.try_get("rule")?));
                    }
                }
            }

            // 1. Which keys are new: inserted, or overwriting a row no longer valid. A payload
            //    hash the broker flagged DUP matches for the whole dedup window (a redelivery
            //    after a long outage); an unflagged one is new whatever the table holds.
            let mut fresh: HashSet<(String, String)> = HashSet::new();
            for horizon in [Horizon::ValidUntil, Horizon::ExpiresAt] {
                let rows: Vec<KeyRow<'_>> = keys
                    .iter()
                    .filter(|k| k.5 == horizon)
                    .map(|(d, k, seen, valid, exp, _)| (d.as_str(), k.as_str(), *seen, *valid, *exp))
                    .collect();
                fresh.extend(<Db as Bulk>::record_keys(&mut *tx, &rows, horizon.condition()).await?);
            }

            // 2. Devices seen.
            let seen: Vec<SeenRow<'_>> = devices.iter().map(|(d, at, a)| (*d, *at, a.as_deref())).collect();
            <Db as Bulk>::devices_seen(&mut *tx, &seen).await?;

            // 3. Events, in order. Plain events go in multi-row inserts; events that touch an
            //    alert are written one at a time so the timeline can name the event id.
            // The escalation level each `escalated` change reached, by its index in
            // out.changes: its notification names the level.
            let mut levels: HashMap<usize, i64> = HashMap::new();
            let mut plain: Vec<&Event> = Vec::new();
            let mut rejected: Vec<(&Rejection, &str, i64)> = Vec::new();
            for item in &batch.items {
                match item {
                    WriteItem::Rejected { rejection, origin, received_at } => {
                        rejected.push((rejection, origin.as_str(), to_millis(*received_at)));
                    }
                    WriteItem::Event { event, hits, clears } => {
                        let key = (event.device_id.clone(), event.dedup_key.as_str().to_owned());
                        let new = if new_by_transport(event) {
                            // Written for a later DUP copy of this very message to find.
                            in_batch.insert(key);
                            true
                        } else if in_batch.contains(&key) {
                            // A DUP copy of a message earlier in this batch (nats-server
                            // resends after ack_wait while the first copy still waits).
                            false
                        } else {
                            // One copy of a key in a batch is the event; the others are its
                            // retransmits.
                            fresh.remove(&key)
                        };
                        if !new {
                            out.duplicates += 1;
                            // A redelivery goes on the timeline of what it would have counted on,
                            // without counting.
                            note_on_open!(tx, hits, event, committed_at, "duplicate", out);
                            continue;
                        }
                        out.accepted += 1;
                        if event.still_active {
                            // A level the device keeps reporting: on the timeline of what it
                            // raised, never a new press and never a new alert.
                            note_on_open!(tx, hits, event, committed_at, "still_active", out);
                            plain.push(event);
                            continue;
                        }
                        // A retained cancel is the broker's replay of an old press: recorded,
                        // never acted on (it would mark today's SOS cancelled on the device).
                        let cancels = event.event_type == EventType::Cancel && !event.retained;
                        // Only a clear with an unresolved alert to act on costs anything: most
                        // readings that satisfy a `clear` find nothing open.
                        let clears: Vec<&Clear> = clears
                            .iter()
                            .filter(|c| open_keys.contains(&(c.subject.clone(), c.rule.clone())))
                            .collect();
                        if hits.is_empty() && clears.is_empty() && !cancels {
                            plain.push(event);
                            continue;
                        }
                        // Ids follow receive order: what queued up before this event goes first.
                        insert_plain!(tx, plain, committed_at);
                        let event_id: i64 = sqlx::query_scalar(
                            "INSERT INTO events (device_id, type, fields, device_ts, seq, received_at, committed_at, protocol, origin, dedup_key, flaws) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
                        )
                        .bind(&event.device_id)
                        .bind(event.event_type.name())
                        .bind(serde_json::Value::Object(event.fields.clone()).to_string())
                        .bind(event.device_time.map(to_millis))
                        .bind(event.seq)
                        .bind(to_millis(event.received_at))
                        .bind(committed_at)
                        .bind(&event.source.protocol)
                        .bind(&event.source.origin)
                        .bind(event.dedup_key.as_str())
                        .bind(flaws_json(event))
                        .fetch_one(&mut *tx)
                        .await?;
                        if cancels {
                            // The wearer cancelled on the device: recorded, never resolving.
                            let open: Vec<(i64, String, String)> = sqlx::query_as(
                                "SELECT id, kind, severity FROM alerts WHERE device_id = $1 AND status <> 'resolved' ORDER BY id",
                            )
                            .bind(&event.device_id)
                            .fetch_all(&mut *tx)
                            .await?;
                            for (id, kind, severity) in open {
                                timeline!(tx, id, committed_at, "cancelled_on_device", event, Some(event_id));
                                out.changes.push(AlertChange {
                                    alert_id: id,
                                    device_id: event.device_id.clone(),
                                    kind,
                                    severity,
                                    action: "cancelled_on_device".into(),
                                });
                            }
                        }
                        for hit in hits {
                            let received = to_millis(event.received_at);
                            let Some((id, action)) = open_or_count!(tx, hit, &event.device_id, &event.resident_id, received, committed_at, out) else {
                                continue;
                            };
                            open_keys.insert((hit.subject.clone(), hit.rule.clone()));
                            timeline!(tx, id, committed_at, if action == "opened" { "opened" } else { "event" }, event, Some(event_id));
                            out.changes.push(change(id, &event.device_id, hit, action));
                        }
                        for clear in clears {
                            let detail = event_detail(event, Some(event_id));
                            if clear_alert!(tx, clear, committed_at, detail, out) {
                                open_keys.remove(&(clear.subject.clone(), clear.rule.clone()));
                            }
                        }
                    }
                    WriteItem::Fired { device_id, resident_id, hit, due } => {
                        insert_plain!(tx, plain, committed_at);
                        let Some((id, action)) = open_or_count!(tx, hit, device_id, resident_id, *due, committed_at, out) else {
                            continue;
                        };
                        open_keys.insert((hit.subject.clone(), hit.rule.clone()));
                        let detail = serde_json::json!({
                            "rule": hit.rule,
                            "due_at": crate::clock::from_millis(*due),
                            "since": hit.since.map(crate::clock::from_millis),
                            "late": hit.late,
                            "rule_version": hit.version,
                        });
                        timeline_entry!(tx, id, committed_at, if action == "opened" { "opened" } else { "event" }, detail.to_string());
                        out.changes.push(change(id, device_id, hit, action));
                    }
                    WriteItem::Escalate { alert_id, rule, level, due, late, next } => {
                        insert_plain!(tx, plain, committed_at);
                        // Each step adds a level on top of what a correlation added: an alarm
                        // nobody answers keeps climbing.
                        let row: Option<(String, String, String, i64)> = sqlx::query_as(
                            "UPDATE alerts SET escalation_level = escalation_level + 1, updated_at = $3 \
                             WHERE id = $1 AND status = $2 RETURNING device_id, kind, severity, escalation_level",
                        )
                        .bind(alert_id)
                        .bind(Status::Open.as_str())
                        .bind(committed_at)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let key = (DeadlineKind::Escalate, rule.clone(), alert_id.to_string());
                        let raised = match row {
                            Some((device, kind, severity, new_level)) => {
                                let detail = serde_json::json!({
                                    "level": new_level,
                                    "step": level,
                                    "due_at": crate::clock::from_millis(*due),
                                    "late": late,
                                    "reason": "unacknowledged",
                                });
                                timeline_entry!(tx, *alert_id, committed_at, "escalated", detail.to_string());
                                out.changes.push(AlertChange { alert_id: *alert_id, device_id: device, kind, severity, action: "escalated".into() });
                                levels.insert(out.changes.len() - 1, new_level);
                                true
                            }
                            // Acknowledged or resolved: this step and the ones after it no longer
                            // apply.
                            _ => false,
                        };
                        let changes = match (raised, next) {
                            (true, Some(next)) => vec![DeadlineChange::Put(next.clone())],
                            _ => vec![DeadlineChange::Delete(key.0, key.1, key.2)],
                        };
                        out.deadlines.extend(changes);
                    }
                    WriteItem::Raise { alert_id, rule, subject, by, due, late, title } => {
                        insert_plain!(tx, plain, committed_at);
                        let row: Option<(String, String, String, String)> = sqlx::query_as(
                            "SELECT device_id, kind, severity, status FROM alerts WHERE id = $1",
                        )
                        .bind(alert_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if let Some((device, kind, severity, status)) = row {
                            let status = Status::parse(&status).unwrap_or(Status::Resolved);
                            let sev = Severity::parse(&severity).unwrap_or(Severity::Low);
                            if decide(EngineStep::Correlate, status, sev) == Decision::Raise {
                                let level: i64 = sqlx::query_scalar(
                                    "UPDATE alerts SET escalation_level = escalation_level + $2, updated_at = $3 WHERE id = $1 RETURNING escalation_level",
                                )
                                .bind(alert_id)
                                .bind(by)
                                .bind(committed_at)
                                .fetch_one(&mut *tx)
                                .await?;
                                let detail = serde_json::json!({
                                    "level": level,
                                    "due_at": crate::clock::from_millis(*due),
                                    "late": late,
                                    "reason": "correlation",
                                    "rule": rule,
                                    "title": title,
                                });
                                timeline_entry!(tx, *alert_id, committed_at, "escalated", detail.to_string());
                                out.changes.push(AlertChange { alert_id: *alert_id, device_id: device, kind, severity, action: "escalated".into() });
                                levels.insert(out.changes.len() - 1, level);
                            }
                        }
                        let changes = vec![DeadlineChange::Delete(DeadlineKind::Follow, rule.clone(), subject.clone())];
                        out.deadlines.extend(changes);
                    }
                }
            }
            insert_plain!(tx, plain, committed_at);
            for chunk in rejected.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::<Db>::new(
                    "INSERT INTO rejected (device_id, origin, reason, detail, raw, received_at) ",
                );
                q.push_values(chunk, |mut b, (r, origin, at)| {
                    b.push_bind(r.device_id.clone())
                        .push_bind((*origin).to_owned())
                        .push_bind(r.reason.as_str())
                        .push_bind(r.detail.clone())
                        .push_bind(r.raw.clone())
                        .push_bind(*at);
                });
                q.build().execute(&mut *tx).await?;
            }
            out.rejected = rejected.len();
            // The store's own deadline changes (items' order), then the engine's: the last
            // change of each deadline stands.
            apply_deadlines!(tx, out.deadlines.iter().chain(&batch.deadlines));
            for (id, n) in &batch.suppressed {
                sqlx::query("UPDATE suppressions SET suppressed_count = suppressed_count + $2 WHERE id = $1")
                    .bind(id)
                    .bind(n)
                    .execute(&mut *tx)
                    .await?;
            }
            // The notifications outbox: critical openings and escalations, in this
            // transaction, so an alert is never committed without them (store/outbox.rs).
            write_notifications!(tx, &out.changes, &levels, committed_at);
            sqlx::query("INSERT INTO batches (token, committed_at, outcome) VALUES ($1, $2, $3)")
                .bind(&batch.token)
                .bind(committed_at)
                .bind(serde_json::to_string(&out).unwrap_or_default())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(out)
    }
}

fn change(id: i64, device_id: &str, hit: &RuleHit, action: &str) -> AlertChange {
    AlertChange {
        alert_id: id,
        device_id: device_id.to_owned(),
        kind: hit.kind.clone(),
        severity: hit.severity.as_str().to_owned(),
        action: action.to_owned(),
    }
}

/// Writes the queued plain events in multi-row statements and empties the queue.
macro_rules! insert_plain {
    ($tx:expr, $plain:expr, $at:expr) => {{
        <Db as Bulk>::insert_events(&mut *$tx, &$plain, $at).await?;
        $plain.clear();
    }};
}
use insert_plain;

/// The id of the unresolved alert of a device and rule, if any.
macro_rules! open_alert {
    ($tx:expr, $device:expr, $rule:expr) => {{
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM alerts WHERE subject = $1 AND rule = $2 AND status <> 'resolved'",
        )
        .bind($device)
        .bind($rule)
        .fetch_optional(&mut *$tx)
        .await?;
        id
    }};
}
use open_alert;

/// Records `action` on the unresolved alert of each rule hit, without counting: a redelivery
/// or a level still held is history, not a new press.
macro_rules! note_on_open {
    ($tx:expr, $hits:expr, $event:expr, $at:expr, $action:expr, $out:expr) => {{
        for hit in $hits {
            if let Some(id) = open_alert!($tx, &hit.subject, &hit.rule) {
                timeline!($tx, id, $at, $action, $event, None::<i64>);
                $out.changes
                    .push(change(id, &$event.device_id, hit, $action));
            }
        }
    }};
}
use note_on_open;

/// The timeline detail of an event.
fn event_detail(event: &Event, event_id: Option<i64>) -> String {
    let mut detail = serde_json::json!({
        "event_id": event_id,
        "type": event.event_type.name(),
        "fields": event.fields,
        "seq": event.seq,
        "device_time": event.device_time,
        "received_at": event.received_at,
    });
    if !event.flaws.is_empty() {
        // What the device sent that could not be used, for the operator to see.
        detail["flaws"] = serde_json::json!(event.flaws);
    }
    detail.to_string()
}

/// Appends an engine entry with `detail` (JSON text) to an alert's timeline (a macro so it
/// compiles for both transaction types without a wall of sqlx trait bounds).
macro_rules! timeline_entry {
    ($tx:expr, $alert_id:expr, $at:expr, $action:expr, $detail:expr) => {{
        sqlx::query("INSERT INTO alert_timeline (alert_id, at, actor, action, detail) VALUES ($1, $2, 'engine', $3, $4)")
            .bind($alert_id)
            .bind($at)
            .bind($action)
            .bind($detail)
            .execute(&mut *$tx)
            .await?;
    }};
}
use timeline_entry;

/// Appends an engine entry about `event` to an alert's timeline.
macro_rules! timeline {
    ($tx:expr, $alert_id:expr, $at:expr, $action:expr, $event:expr, $event_id:expr) => {{
        let detail = event_detail($event, $event_id);
        timeline_entry!($tx, $alert_id, $at, $action, detail);
    }};
}
use timeline;

/// Opens the alert of a hit, or counts on the unresolved one of its rule and subject;
/// `None` when a `once` hit finds its alert open already. Opening also starts its
/// escalation and the correlations that follow it (deadlines in this transaction).
macro_rules! open_or_count {
    ($tx:expr, $hit:expr, $device:expr, $resident:expr, $received:expr, $at:expr, $out:expr) => {{
        let hit: &RuleHit = $hit;
        // Conditional on still being unresolved: an operator may have just resolved it, and
        // then this press must open a new alert.
        let counted: Option<i64> = if hit.once {
            if open_alert!($tx, &hit.subject, &hit.rule).is_some() {
                None
            } else {
                Some(-1)
            }
        } else {
            sqlx::query_scalar(
                "UPDATE alerts SET count = count + 1, last_event_at = $3, updated_at = $4 \
                 WHERE subject = $1 AND rule = $2 AND status <> 'resolved' RETURNING id",
            )
            .bind(&hit.subject)
            .bind(&hit.rule)
            .bind($received)
            .bind($at)
            .fetch_optional(&mut *$tx)
            .await?
        };
        match counted {
            None if hit.once => None,
            Some(id) if id >= 0 => Some((id, "counted")),
            None if hit.hold.is_some() => {
                let started: Vec<DeadlineChange> = hit.hold.iter().cloned().map(DeadlineChange::Put).collect();
                $out.deadlines.extend(started);
                None
            }
            _ => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO alerts (device_id, resident_id, rule, kind, severity, severity_rank, title, status, count, \
                     escalation_level, opened_at, updated_at, last_event_at, subject, rule_version, since_at) \
                     VALUES ($1, $9, $2, $3, $4, $5, $6, 'open', 1, 0, $7, $7, $8, $10, $11, $12) RETURNING id",
                )
                .bind($device)
                .bind(&hit.rule)
                .bind(&hit.kind)
                .bind(hit.severity.as_str())
                .bind(hit.severity.rank())
                .bind(&hit.title)
                .bind($at)
                .bind($received)
                .bind($resident)
                .bind(&hit.subject)
                .bind(&hit.version)
                .bind(hit.since)
                .fetch_one(&mut *$tx)
                .await?;
                let mut started = Vec::new();
                if let Some(first) = hit.escalate.first() {
                    started.push(DeadlineChange::Put(Deadline {
                        kind: DeadlineKind::Escalate,
                        rule: hit.rule.clone(),
                        subject: id.to_string(),
                        partition: hit.partition.clone(),
                        due: $at + first,
                        alert_id: Some(id),
                        level: 1,
                        since: $at,
                        version: hit.version.clone(),
                        detail: serde_json::json!({ "steps": hit.escalate, "opened_at": $at }),
                    }));
                }
                for f in &hit.follows {
                    started.push(DeadlineChange::Put(Deadline {
                        kind: DeadlineKind::Follow,
                        rule: f.rule.clone(),
                        subject: f.subject.clone(),
                        partition: hit.partition.clone(),
                        due: $at + f.after,
                        alert_id: Some(id),
                        level: f.raise,
                        since: $at,
                        version: f.version.clone(),
                        detail: serde_json::json!({ "followed": hit.rule }),
                    }));
                }
                $out.deadlines.extend(started);
                Some((id, "opened"))
            }
        }
    }};
}
use open_or_count;

/// Ends the condition of a rule and subject on its unresolved alert: a `cleared` entry, and
/// the alert resolved with outcome `cleared` when the lifecycle allows (then `true`).
macro_rules! clear_alert {
    ($tx:expr, $clear:expr, $at:expr, $detail:expr, $out:expr) => {{
        let clear: &Clear = $clear;
        let row: Option<(i64, String, String, String, String)> = sqlx::query_as(
            "SELECT id, device_id, kind, severity, status FROM alerts WHERE subject = $1 AND rule = $2 AND status <> 'resolved'",
        )
        .bind(&clear.subject)
        .bind(&clear.rule)
        .fetch_optional(&mut *$tx)
        .await?;
        let mut resolved = false;
        if let Some((id, device, kind, severity, status)) = row {
            let st = Status::parse(&status).unwrap_or(Status::Open);
            let sev = Severity::parse(&severity).unwrap_or(Severity::Critical);
            timeline_entry!($tx, id, $at, "cleared", $detail);
            let mut action = "cleared";
            if decide(EngineStep::Clear, st, sev) == Decision::Resolve {
                // Conditional: an operator may have taken it since it was read.
                let done = sqlx::query(
                    "UPDATE alerts SET status = 'resolved', resolved_at = $2, resolved_by = 'engine', outcome = 'cleared', updated_at = $2 \
                     WHERE id = $1 AND status = 'open'",
                )
                .bind(id)
                .bind($at)
                .execute(&mut *$tx)
                .await?;
                if done.rows_affected() == 1 {
                    timeline_entry!($tx, id, $at, "resolved", serde_json::json!({ "outcome": "cleared" }).to_string());
                    action = "resolved";
                    resolved = true;
                }
            }
            $out.changes.push(AlertChange { alert_id: id, device_id: device, kind, severity, action: action.into() });
        }
        resolved
    }};
}
use clear_alert;
