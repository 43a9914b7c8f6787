//! Durable deadlines and the activity absences are derived from (migration 0007).

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Store, StoreError, on_pool};

/// What a stored deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineKind {
    /// A rule's `for`: the alert opens at the deadline unless cancelled.
    Hold,
    /// An escalation step of an unacknowledged alert.
    Escalate,
    /// A correlation: the followed alert is raised unless the household moves.
    Follow,
}

impl DeadlineKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadlineKind::Hold => "hold",
            DeadlineKind::Escalate => "escalate",
            DeadlineKind::Follow => "follow",
        }
    }

    fn parse(s: &str) -> Option<DeadlineKind> {
        [
            DeadlineKind::Hold,
            DeadlineKind::Escalate,
            DeadlineKind::Follow,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One stored deadline; (kind, rule, subject) identifies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deadline {
    /// What it is for.
    pub kind: DeadlineKind,
    /// The rule it belongs to (for an escalation: the alert's rule).
    pub rule: String,
    /// Hold: the device id; escalation: the alert id; follow: the household subject.
    pub subject: String,
    /// The partition (shard) key: the resident id, else the device id.
    pub partition: String,
    /// When it fires, ms since the epoch.
    pub due: i64,
    /// The alert it acts on (escalation, follow).
    pub alert_id: Option<i64>,
    /// Escalation: the level it raises to.
    pub level: i64,
    /// When the condition began, ms.
    pub since: i64,
    /// Version of the rule that set it.
    pub version: String,
    /// What firing needs besides: the event that started a hold, escalation steps, …
    pub detail: serde_json::Value,
}

/// A change to the stored deadlines, made in a batch's transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeadlineChange {
    /// Insert or replace.
    Put(Deadline),
    /// Remove (absent is fine).
    Delete(DeadlineKind, String, String),
}

/// Everything start-up needs to rebuild the timers.
#[derive(Debug, Default)]
pub struct TimerState {
    /// Every stored deadline.
    pub deadlines: Vec<Deadline>,
    /// (device, event type, last ms), where an absence of named types counts the type.
    pub activity: Vec<(String, String, i64)>,
    /// (device, last message of any type, ms).
    pub seen: Vec<(String, i64)>,
    /// (rule, subject, since ms): the condition start of the latest alert of each absence
    /// rule and subject — an absence that began then has already fired.
    pub fired: Vec<(String, String, i64)>,
}

impl Store {
    /// Loads what the timers are rebuilt from.
    pub async fn timer_state(&self) -> Result<TimerState, StoreError> {
        let mut out = TimerState::default();
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT kind, rule, subject, partition_key, due_at, alert_id, level, since_at, rule_version, detail FROM deadlines",
            )
            .fetch_all(pool)
            .await?;
            for r in rows {
                let kind: String = r.try_get("kind")?;
                let Some(kind) = DeadlineKind::parse(&kind) else {
                    tracing::warn!(kind, "Skipping a stored deadline of an unknown kind");
                    continue;
                };
                let detail: String = r.try_get("detail")?;
                out.deadlines.push(Deadline {
                    kind,
                    rule: r.try_get("rule")?,
                    subject: r.try_get("subject")?,
                    partition: r.try_get("partition_key")?,
                    due: r.try_get("due_at")?,
                    alert_id: r.try_get("alert_id")?,
                    level: r.try_get("level")?,
                    since: r.try_get("since_at")?,
                    version: r.try_get("rule_version")?,
                    detail: serde_json::from_str(&detail).unwrap_or_default(),
                });
            }
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT id, activity FROM devices WHERE activity IS NOT NULL")
                    .fetch_all(pool)
                    .await?;
            for (device, seen) in rows {
                let Ok(serde_json::Value::Object(types)) = serde_json::from_str::<serde_json::Value>(&seen) else {
                    tracing::warn!(device, "Skipping a device's unreadable activity");
                    continue;
                };
                for (ty, at) in types {
                    if let Some(at) = at.as_i64() {
                        out.activity.push((device.clone(), ty, at));
                    }
                }
            }
            out.seen = sqlx::query_as("SELECT id, last_seen FROM devices WHERE last_seen > 0")
                .fetch_all(pool)
                .await?;
            out.fired = sqlx::query_as(
                "SELECT rule, subject, MAX(since_at) FROM alerts WHERE since_at IS NOT NULL AND subject IS NOT NULL GROUP BY rule, subject",
            )
            .fetch_all(pool)
            .await?;
        });
        Ok(out)
    }
}

/// The state a sequence of deadline changes leaves: the last change of each deadline, in
/// a stable order (puts, then deletes).
pub(crate) fn coalesce<'a>(
    changes: impl IntoIterator<Item = &'a DeadlineChange>,
) -> (Vec<&'a Deadline>, Vec<(DeadlineKind, &'a str, &'a str)>) {
    let mut last: std::collections::BTreeMap<(DeadlineKind, &str, &str), &DeadlineChange> =
        std::collections::BTreeMap::new();
    for c in changes {
        let key = match c {
            DeadlineChange::Put(d) => (d.kind, d.rule.as_str(), d.subject.as_str()),
            DeadlineChange::Delete(k, r, s) => (*k, r.as_str(), s.as_str()),
        };
        last.insert(key, c);
    }
    let mut puts = Vec::new();
    let mut deletes = Vec::new();
    for (key, c) in last {
        match c {
            DeadlineChange::Put(d) => puts.push(d),
            DeadlineChange::Delete(..) => deletes.push(key),
        }
    }
    (puts, deletes)
}

/// Applies a batch's deadline changes inside its transaction, one statement for the puts
/// and one for the deletes (per few hundred; a macro: both transaction types): a round trip
/// per change would lengthen every batch that opens critical alerts.
macro_rules! apply_deadlines {
    ($tx:expr, $changes:expr) => {{
        let (puts, deletes) = $crate::store::deadlines::coalesce($changes);
        for chunk in puts.chunks(500) {
            let mut q = sqlx::QueryBuilder::<Db>::new(
                "INSERT INTO deadlines (kind, rule, subject, partition_key, due_at, alert_id, level, since_at, rule_version, detail) ",
            );
            q.push_values(chunk, |mut b, d| {
                b.push_bind(d.kind.as_str())
                    .push_bind(d.rule.clone())
                    .push_bind(d.subject.clone())
                    .push_bind(d.partition.clone())
                    .push_bind(d.due)
                    .push_bind(d.alert_id)
                    .push_bind(d.level)
                    .push_bind(d.since)
                    .push_bind(d.version.clone())
                    .push_bind(d.detail.to_string());
            });
            q.push(
                " ON CONFLICT (kind, rule, subject) DO UPDATE SET partition_key = excluded.partition_key, due_at = excluded.due_at, \
                 alert_id = excluded.alert_id, level = excluded.level, since_at = excluded.since_at, \
                 rule_version = excluded.rule_version, detail = excluded.detail",
            );
            q.build().execute(&mut *$tx).await?;
        }
        for chunk in deletes.chunks(300) {
            let mut q = sqlx::QueryBuilder::<Db>::new("DELETE FROM deadlines WHERE ");
            for (i, (kind, rule, subject)) in chunk.iter().enumerate() {
                if i > 0 {
                    q.push(" OR ");
                }
                q.push("(kind = ")
                    .push_bind(kind.as_str())
                    .push(" AND rule = ")
                    .push_bind(rule.to_string())
                    .push(" AND subject = ")
                    .push_bind(subject.to_string())
                    .push(")");
            }
            q.build().execute(&mut *$tx).await?;
        }
    }};
}
pub(crate) use apply_deadlines;
