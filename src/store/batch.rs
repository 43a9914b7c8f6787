//! The write path: one transaction per batch (group commit). Everything a batch of messages
//! produced — events, duplicate bookkeeping, alerts, timeline entries, rejections — commits
//! together or not at all, so acks can follow the commit (DESIGN.md guarantee 1).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Store, StoreError, on_pool};
use crate::clock::to_millis;
use crate::domain::alert::Severity;
use crate::event::{DedupKey, Event, EventType};
use crate::protocol::Rejection;

/// SQLite allows 32 766 bound parameters per statement; PostgreSQL 65 535. Eleven columns
/// per row keeps a chunk well under both.
const ROWS_PER_STATEMENT: usize = 1000;

/// An event's flaws as stored: a JSON array, or NULL when there is none.
fn flaws_json(e: &Event) -> Option<String> {
    (!e.flaws.is_empty()).then(|| serde_json::to_string(&e.flaws).unwrap_or_default())
}

/// A rule an event triggered (evaluated before the transaction: rules are pure).
#[derive(Debug, Clone, PartialEq)]
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
}

/// One thing to write, in receive order.
#[derive(Debug, Clone)]
pub enum WriteItem {
    /// An accepted event and the rules it triggered.
    Event {
        /// The event.
        event: Event,
        /// Rules it triggered.
        hits: Vec<RuleHit>,
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
    /// `opened`, `counted`, `duplicate`, `cancelled_on_device`, `acknowledged`, `resolved`.
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
                let last = devices.entry(&event.device_id).or_insert(received);
                *last = (*last).max(received);
            }
        }
        let mut devices: Vec<(&str, i64)> = devices.into_iter().collect();
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

            // 1. Which keys are new: inserted, or overwriting a row no longer valid. A payload
            //    hash the broker flagged DUP matches for the whole dedup window (a redelivery
            //    after a long outage); an unflagged one is new whatever the table holds.
            let mut fresh: HashSet<(String, String)> = HashSet::new();
            for horizon in [Horizon::ValidUntil, Horizon::ExpiresAt] {
                let rows: Vec<_> = keys.iter().filter(|k| k.5 == horizon).collect();
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    let mut q = sqlx::QueryBuilder::<Db>::new("INSERT INTO dedup (device_id, key, seen_at, valid_until, expires_at) ");
                    q.push_values(chunk, |mut b, (d, k, seen, valid, exp, _)| {
                        b.push_bind(d.clone()).push_bind(k.clone()).push_bind(*seen).push_bind(*valid).push_bind(*exp);
                    });
                    q.push(
                        " ON CONFLICT (device_id, key) DO UPDATE SET seen_at = excluded.seen_at, valid_until = excluded.valid_until, \
                         expires_at = excluded.expires_at WHERE ",
                    )
                    .push(horizon.condition())
                    .push(" RETURNING device_id, key");
                    for row in q.build().fetch_all(&mut *tx).await? {
                        fresh.insert((row.try_get("device_id")?, row.try_get("key")?));
                    }
                }
            }

            // 2. Devices seen.
            for chunk in devices.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::<Db>::new("INSERT INTO devices (id, first_seen, last_seen) ");
                q.push_values(chunk, |mut b, (d, at)| {
                    b.push_bind((*d).to_owned()).push_bind(*at).push_bind(*at);
                });
                q.push(
                    " ON CONFLICT (id) DO UPDATE SET last_seen = CASE WHEN excluded.last_seen > devices.last_seen \
                     THEN excluded.last_seen ELSE devices.last_seen END, \
                     first_seen = CASE WHEN devices.first_seen = 0 THEN excluded.first_seen ELSE devices.first_seen END",
                );
                q.build().execute(&mut *tx).await?;
            }

            // 3. Events, in order. Plain events go in multi-row inserts; events that touch an
            //    alert are written one at a time so the timeline can name the event id.
            let mut plain: Vec<&Event> = Vec::new();
            let mut rejected: Vec<(&Rejection, &str, i64)> = Vec::new();
            for item in &batch.items {
                match item {
                    WriteItem::Rejected { rejection, origin, received_at } => {
                        rejected.push((rejection, origin.as_str(), to_millis(*received_at)));
                    }
                    WriteItem::Event { event, hits } => {
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
                        if hits.is_empty() && !cancels {
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
                            // Conditional on still being unresolved: an operator may have just
                            // resolved it, and then this press must open a new alert.
                            let counted: Option<i64> = if hit.once {
                                if open_alert!(tx, &event.device_id, &hit.rule).is_some() {
                                    continue;
                                }
                                None
                            } else {
                                sqlx::query_scalar(
                                    "UPDATE alerts SET count = count + 1, last_event_at = $3, updated_at = $4 \
                                     WHERE device_id = $1 AND rule = $2 AND status <> 'resolved' RETURNING id",
                                )
                                .bind(&event.device_id)
                                .bind(&hit.rule)
                                .bind(received)
                                .bind(committed_at)
                                .fetch_optional(&mut *tx)
                                .await?
                            };
                            let (id, action) = match counted {
                                Some(id) => (id, "counted"),
                                None => {
                                    let id: i64 = sqlx::query_scalar(
                                        "INSERT INTO alerts (device_id, resident_id, rule, kind, severity, severity_rank, title, status, count, \
                                         escalation_level, opened_at, updated_at, last_event_at) \
                                         VALUES ($1, $9, $2, $3, $4, $5, $6, 'open', 1, 0, $7, $7, $8) RETURNING id",
                                    )
                                    .bind(&event.device_id)
                                    .bind(&hit.rule)
                                    .bind(&hit.kind)
                                    .bind(hit.severity.as_str())
                                    .bind(hit.severity.rank())
                                    .bind(&hit.title)
                                    .bind(committed_at)
                                    .bind(received)
                                    .bind(&event.resident_id)
                                    .fetch_one(&mut *tx)
                                    .await?;
                                    (id, "opened")
                                }
                            };
                            timeline!(tx, id, committed_at, if action == "opened" { "opened" } else { "event" }, event, Some(event_id));
                            out.changes.push(change(id, event, hit, action));
                        }
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

fn change(id: i64, event: &Event, hit: &RuleHit, action: &str) -> AlertChange {
    AlertChange {
        alert_id: id,
        device_id: event.device_id.clone(),
        kind: hit.kind.clone(),
        severity: hit.severity.as_str().to_owned(),
        action: action.to_owned(),
    }
}

/// Writes the queued plain events in multi-row statements and empties the queue.
macro_rules! insert_plain {
    ($tx:expr, $plain:expr, $at:expr) => {{
            for chunk in $plain.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::<Db>::new(
                    "INSERT INTO events (device_id, type, fields, device_ts, seq, received_at, committed_at, protocol, origin, dedup_key, flaws) ",
                );
                q.push_values(chunk, |mut b, e| {
                    b.push_bind(e.device_id.clone())
                        .push_bind(e.event_type.name())
                        .push_bind(serde_json::Value::Object(e.fields.clone()).to_string())
                        .push_bind(e.device_time.map(to_millis))
                        .push_bind(e.seq)
                        .push_bind(to_millis(e.received_at))
                        .push_bind($at)
                        .push_bind(e.source.protocol.clone())
                        .push_bind(e.source.origin.clone())
                        .push_bind(e.dedup_key.as_str().to_owned())
                        .push_bind(flaws_json(e));
                });
                q.build().execute(&mut *$tx).await?;
            }
        $plain.clear();
    }};
}
use insert_plain;

/// The id of the unresolved alert of a device and rule, if any.
macro_rules! open_alert {
    ($tx:expr, $device:expr, $rule:expr) => {{
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM alerts WHERE device_id = $1 AND rule = $2 AND status <> 'resolved'",
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
            if let Some(id) = open_alert!($tx, &$event.device_id, &hit.rule) {
                timeline!($tx, id, $at, $action, $event, None::<i64>);
                $out.changes.push(change(id, $event, hit, $action));
            }
        }
    }};
}
use note_on_open;

/// Appends an engine entry to an alert's timeline (a macro so it compiles for both
/// transaction types without a wall of sqlx trait bounds).
macro_rules! timeline {
    ($tx:expr, $alert_id:expr, $at:expr, $action:expr, $event:expr, $event_id:expr) => {{
        let event: &Event = $event;
        let mut detail = serde_json::json!({
            "event_id": $event_id,
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
        let detail = detail.to_string();
        sqlx::query("INSERT INTO alert_timeline (alert_id, at, actor, action, detail) VALUES ($1, $2, 'engine', $3, $4)")
            .bind($alert_id)
            .bind($at)
            .bind($action)
            .bind(detail)
            .execute(&mut *$tx)
            .await?;
    }};
}
use timeline;
