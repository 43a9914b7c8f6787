//! The store façade: domain methods over SQLite or PostgreSQL, chosen by URL at start-up.
//!
//! Both backends run the same SQL text where the dialects agree (`$N` placeholders work on
//! both; `ON CONFLICT`, partial unique indexes and `RETURNING` too), so each method body is
//! written once and compiled for each pool by [`on_pool!`]. Schema differences live in the
//! two migrations folders.

mod batch;
mod bulk;
mod deadlines;
mod devices;
pub mod export;
pub(crate) mod outbox;
mod providers;
mod records;
mod regions;
mod reports;
mod residents;
mod sessions;
mod users;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Row, SqlitePool};

pub use batch::{AlertChange, BatchOutcome, Clear, FollowSpec, RuleHit, WriteBatch, WriteItem};
pub use deadlines::{Deadline, DeadlineChange, DeadlineKind, TimerState};
pub use devices::REGISTERED_OUTCOME;
pub use export::{ExportCursor, ExportItem};
pub use outbox::{Claimed, DELIVERY_STATUSES, Delivery, NotificationHead, OutboxStats};
pub use records::{CheckOut, Crew, FOLLOW_UP_RESULTS, FollowUp, Position, ServiceRecord};
pub use regions::AuditEntry;
pub(crate) use regions::push_scope;
pub use residents::ResidentRecord;
pub use sessions::{MqttSessionRecord, SYSTEM_DEVICE, SYSTEM_KIND, SystemAlert};
pub use users::{User, UserInput};

use crate::clock::{from_millis, to_millis};
use crate::domain::alert::{OperatorRecord, OperatorStep};

/// Store failures. Domain variants carry the id involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such alert.
    #[error("alert {0} not found")]
    NotFound(i64),
    /// No such registered device.
    #[error("device {0} is not registered")]
    DeviceNotFound(String),
    /// No such resident.
    #[error("resident {0} not found")]
    ResidentNotFound(String),
    /// Registered devices still point at the resident.
    #[error(
        "resident {id} still has devices ({}); point them at another resident or unregister them first",
        devices.join(", ")
    )]
    ResidentInUse {
        /// The resident.
        id: String,
        /// The registered devices whose `resident_id` it is.
        devices: Vec<String>,
    },
    /// No such active suppression.
    #[error("suppression {0} not found, or no longer active")]
    SuppressionNotFound(i64),
    /// The alert is not in a state that allows the step.
    #[error("alert {id} is {status}{}; {step} is not allowed", holder.as_deref().map(|h| format!(" by {h}")).unwrap_or_default())]
    Conflict {
        /// The alert.
        id: i64,
        /// Its current status.
        status: String,
        /// The refused step.
        step: &'static str,
        /// Who took the alert to that status (who acknowledged or resolved it), if anyone.
        holder: Option<String>,
    },
    /// Another resident holds the ID-card number (the number itself is never in the
    /// message: messages reach logs).
    #[error(
        "resident {resident}: another resident already has this ID-card number (one person, one record)"
    )]
    IdNumberTaken {
        /// The resident being written.
        resident: String,
        /// The resident holding the number (empty when a concurrent write took it).
        holder: String,
    },
    /// No such region.
    #[error("region {0} not found")]
    RegionNotFound(String),
    /// No such user.
    #[error("user {0} not found")]
    UserNotFound(i64),
    /// Another user has this login.
    #[error("login {0:?} is taken")]
    LoginTaken(String),
    /// No such service record.
    #[error("service record {0} not found")]
    RecordNotFound(i64),
    /// The service record is not in a state that allows the step.
    #[error("service record {id} is {status}; {step} is not allowed")]
    RecordConflict {
        /// The record.
        id: i64,
        /// Its status.
        status: String,
        /// The refused step.
        step: &'static str,
    },
    /// No such notification delivery.
    #[error("delivery {0} not found")]
    DeliveryNotFound(i64),
    /// The delivery is not in a state that allows the step.
    #[error("delivery {id}: {reason}")]
    DeliveryConflict {
        /// The delivery.
        id: i64,
        /// Why not.
        reason: String,
    },
    /// The request is not valid.
    #[error("{0}")]
    Validation(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database did not answer in time (the request was abandoned).
    #[error("the database did not answer within {0:?}")]
    Unanswered(std::time::Duration),
}

/// A connection pool of either backend.
#[derive(Debug, Clone)]
pub enum Store {
    /// SQLite: one writer connection (WAL), the embedded default.
    Sqlite(SqlitePool),
    /// PostgreSQL: production.
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the typed pool and `Db` aliased to its database type.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => {
                #[allow(dead_code)]
                type Db = sqlx::Sqlite;
                $body
            }
            Store::Postgres($pool) => {
                #[allow(dead_code)]
                type Db = sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// An alert as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Alert {
    /// Id.
    pub id: i64,
    /// Device that raised it.
    pub device_id: String,
    /// Resident, when the device is assigned to one.
    pub resident_id: Option<String>,
    /// Rule name.
    pub rule: String,
    /// What opened it.
    pub kind: String,
    /// `critical`, `high`, `medium`, `low`.
    pub severity: String,
    /// Operator-facing title.
    pub title: String,
    /// `open`, `acknowledged`, `dispatched`, `resolved`.
    pub status: String,
    /// Presses/matches counted while open.
    pub count: i64,
    /// Raised by escalation; never a new alert.
    pub escalation_level: i64,
    /// When it opened.
    pub opened_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Receive time of the last counted event.
    pub last_event_at: DateTime<Utc>,
    /// When acknowledged.
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// Who acknowledged.
    pub acknowledged_by: Option<String>,
    /// When resolved.
    pub resolved_at: Option<DateTime<Utc>>,
    /// Who resolved.
    pub resolved_by: Option<String>,
    /// Resolution outcome.
    pub outcome: Option<String>,
    /// Resolution note.
    pub note: Option<String>,
    /// What it is about: the device id, or `r/<resident id>` for a household (an absence
    /// counted over a resident's devices).
    pub subject: Option<String>,
    /// Version (hash) of the rule that opened it.
    pub rule_version: Option<String>,
    /// Since when its condition held (an absence's last activity, a `for`'s start).
    pub since: Option<DateTime<Utc>>,
}

/// One timeline entry.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TimelineEntry {
    /// Id, increasing.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// `engine` or the operator.
    pub actor: String,
    /// `opened`, `event`, `duplicate`, `cancelled_on_device`, `acknowledged`, `resolved`,
    /// `call`, `note`, and the rules' `cleared`, `escalated`.
    pub action: String,
    /// JSON text with the details.
    pub detail: serde_json::Value,
}

/// Filters of `GET /api/alerts`.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// `open` means every unresolved status; otherwise an exact status.
    pub status: Option<String>,
    /// Only this device.
    pub device_id: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Page size.
    pub limit: i64,
    /// Continue after this (severity_rank, opened_at, id).
    pub after: Option<(i64, i64, i64)>,
    /// Only alerts of residents of these regions; `None`: every alert.
    pub regions: Option<Vec<String>>,
}

/// Resolution outcomes (CONTRACT.md).
pub const OUTCOMES: [&str; 5] = [
    "false_alarm",
    "resolved_by_phone",
    "carer_visited",
    "ambulance_called",
    "other",
];

/// Whom an operator can call about an alert (`POST /api/alerts/{id}/calls`): the resident,
/// the emergency contacts in order, the relative, neighbour and paired volunteer of the
/// resident's card, and 120 (China's ambulance number).
pub const CALL_TARGETS: [&str; 8] = [
    "resident",
    "contact1",
    "contact2",
    "contact3",
    "relative",
    "neighbour",
    "volunteer",
    "120",
];

/// How a call ended.
pub const CALL_OUTCOMES: [&str; 4] = ["answered", "no_answer", "busy", "wrong_number"];

/// The longest note or call note kept, in characters: a paragraph, not a document.
pub const MAX_NOTE_CHARS: usize = 2000;

fn check_text(field: &str, text: &str) -> Result<(), StoreError> {
    let n = text.chars().count();
    if n > MAX_NOTE_CHARS {
        return Err(StoreError::Validation(format!(
            "{field} has {n} characters; at most {MAX_NOTE_CHARS}"
        )));
    }
    Ok(())
}

/// The conditional update of an operator's step: `$1` id, `$2` time, `$3` actor (and `$4`
/// outcome, `$5` note for a resolve). The lifecycle decides which statuses the step may start
/// from; the update is conditional on them, so two operators cannot both take one alert.
fn step_sql(step: OperatorStep) -> String {
    let from = step
        .allowed_from()
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let set = match step {
        OperatorStep::Acknowledge => "acknowledged_at = $2, acknowledged_by = $3",
        // Sending help is taking the alert, if nobody had.
        OperatorStep::Dispatch => {
            "acknowledged_at = COALESCE(acknowledged_at, $2), acknowledged_by = COALESCE(acknowledged_by, $3)"
        }
        OperatorStep::Resolve => "resolved_at = $2, resolved_by = $3, outcome = $4, note = $5",
    };
    format!(
        "UPDATE alerts SET status = '{}', {set}, updated_at = $2 WHERE id = $1 AND status IN ({from})",
        step.to().as_str()
    )
}

/// Why a conditional step on an alert changed nothing: no such alert, or its status and who
/// holds it.
macro_rules! refusal {
    ($tx:expr, $id:expr, $step:expr) => {{
        let row: Option<(String, Option<String>, Option<String>)> =
            sqlx::query_as("SELECT status, acknowledged_by, resolved_by FROM alerts WHERE id = $1")
                .bind($id)
                .fetch_optional(&mut *$tx)
                .await?;
        match row {
            None => StoreError::NotFound($id),
            Some((status, acked_by, resolved_by)) => {
                let holder = match status.as_str() {
                    "resolved" => resolved_by,
                    "open" => None,
                    _ => acked_by,
                };
                StoreError::Conflict {
                    id: $id,
                    status,
                    step: $step,
                    holder,
                }
            }
        }
    }};
}
pub(crate) use refusal;

/// Writes an operator's entry on an alert's timeline in the transaction `$tx`.
macro_rules! operator_entry {
    ($tx:expr, $id:expr, $at:expr, $actor:expr, $action:expr, $detail:expr) => {
        sqlx::query(
            "INSERT INTO alert_timeline (alert_id, at, actor, action, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind($id)
        .bind($at)
        .bind($actor)
        .bind($action)
        .bind($detail)
        .execute(&mut *$tx)
        .await?
    };
}
pub(crate) use operator_entry;

/// The alert as the transaction `$tx` sees it.
macro_rules! alert_in {
    ($tx:expr, $id:expr) => {{
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"
        )))
        .bind($id)
        .fetch_one(&mut *$tx)
        .await?;
        alert_from_row(&row)?.0
    }};
}
pub(crate) use alert_in;

const ALERT_COLUMNS: &str = "id, device_id, resident_id, rule, kind, severity, severity_rank, title, status, count, escalation_level, opened_at, updated_at, last_event_at, acknowledged_at, acknowledged_by, resolved_at, resolved_by, outcome, note, subject, rule_version, since_at";

fn alert_from_row<R: Row>(r: &R) -> Result<(Alert, i64), sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let t = |c: &str| -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(r.try_get::<Option<i64>, _>(c)?.map(from_millis))
    };
    Ok((
        Alert {
            id: r.try_get("id")?,
            device_id: r.try_get("device_id")?,
            resident_id: r.try_get("resident_id")?,
            rule: r.try_get("rule")?,
            kind: r.try_get("kind")?,
            severity: r.try_get("severity")?,
            title: r.try_get("title")?,
            status: r.try_get("status")?,
            count: r.try_get("count")?,
            escalation_level: r.try_get("escalation_level")?,
            opened_at: from_millis(r.try_get("opened_at")?),
            updated_at: from_millis(r.try_get("updated_at")?),
            last_event_at: from_millis(r.try_get("last_event_at")?),
            acknowledged_at: t("acknowledged_at")?,
            acknowledged_by: r.try_get("acknowledged_by")?,
            resolved_at: t("resolved_at")?,
            resolved_by: r.try_get("resolved_by")?,
            outcome: r.try_get("outcome")?,
            note: r.try_get("note")?,
            subject: r.try_get("subject")?,
            rule_version: r.try_get("rule_version")?,
            since: t("since_at")?,
        },
        r.try_get("severity_rank")?,
    ))
}

impl Store {
    /// Connects by URL scheme and runs the backend's migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let store = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // NORMAL in WAL mode survives a process crash; only an OS crash or power loss
                // can lose the last commits, the same window the broker's own persistence has.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            if let Some(path) = url
                .strip_prefix("sqlite://")
                .and_then(|p| p.split('?').next())
                && let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Validation(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            // One connection: SQLite has one writer anyway, and a single connection keeps
            // readers from seeing a half-migrated or busy database.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await?;
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
            Store::Sqlite(pool)
        } else {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            Store::Postgres(pool)
        };
        Ok(store)
    }

    /// A handle for the operator API. On PostgreSQL: a pool of its own, at most
    /// `max_connections`, connecting lazily, whose requests give up waiting for a connection
    /// after `acquire_timeout` — so during a database outage the API answers 503 at once,
    /// while the pipeline's pool keeps its long wait and its commits their own retry. On
    /// SQLite: the same single connection (a file does not go away).
    pub fn for_api(
        &self,
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Store, StoreError> {
        Ok(match self {
            Store::Sqlite(_) => self.clone(),
            Store::Postgres(_) => Store::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .min_connections(0)
                    .acquire_timeout(acquire_timeout)
                    .connect_lazy_with(PgConnectOptions::from_str(url)?),
            ),
        })
    }

    /// Unresolved alerts per severity rank (0 most urgent), as `GET /api/alerts?status=open`
    /// counts them. `<> 'resolved'` is written as two ranges so the `alerts_queue` index
    /// (status first) serves it without visiting the resolved alerts, which only pile up.
    pub async fn open_alerts_by_rank(&self) -> Result<Vec<(i64, i64)>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT severity_rank, COUNT(*) FROM alerts \
                 WHERE status < 'resolved' OR status > 'resolved' GROUP BY severity_rank",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Which backend, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Answers when the database does (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    /// Deletes dedup keys that expired before `now`, and batch tokens older than an hour.
    pub async fn purge_dedup(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        // A batch is retried within minutes of its first attempt; an hour is plenty.
        let batches_before = to_millis(now - chrono::Duration::hours(1));
        let n = on_pool!(self, pool => {
            sqlx::query("DELETE FROM batches WHERE committed_at < $1")
                .bind(batches_before)
                .execute(pool)
                .await?;
            sqlx::query("DELETE FROM dedup WHERE expires_at < $1")
                .bind(to_millis(now))
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n)
    }

    /// Alerts, most urgent first: severity, then oldest first, then id.
    pub async fn list_alerts(
        &self,
        f: &AlertFilter,
    ) -> Result<(Vec<Alert>, Option<(i64, i64, i64)>), StoreError> {
        let limit = f.limit.clamp(1, 5000);
        let rows = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::<Db>::new(format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE 1=1"));
            match f.status.as_deref() {
                Some("open") => {
                    q.push(" AND status <> 'resolved'");
                }
                Some(s) => {
                    q.push(" AND status = ").push_bind(s.to_owned());
                }
                None => {}
            }
            if let Some(d) = &f.device_id {
                q.push(" AND device_id = ").push_bind(d.clone());
            }
            if let Some(k) = &f.kind {
                q.push(" AND kind = ").push_bind(k.clone());
            }
            push_scope!(q, resident "resident_id", f.regions.as_ref());
            if let Some((rank, opened, id)) = f.after {
                q.push(" AND (severity_rank > ").push_bind(rank)
                    .push(" OR (severity_rank = ").push_bind(rank)
                    .push(" AND (opened_at > ").push_bind(opened)
                    .push(" OR (opened_at = ").push_bind(opened)
                    .push(" AND id > ").push_bind(id).push("))))");
            }
            q.push(" ORDER BY severity_rank, opened_at, id LIMIT ").push_bind(limit + 1);
            let rows = q.build().fetch_all(pool).await?;
            rows.iter().map(alert_from_row).collect::<Result<Vec<_>, _>>()?
        });
        let mut alerts: Vec<(Alert, i64)> = rows;
        let next = if alerts.len() as i64 > limit {
            alerts.truncate(limit as usize);
            alerts
                .last()
                .map(|(a, rank)| (*rank, to_millis(a.opened_at), a.id))
        } else {
            None
        };
        Ok((alerts.into_iter().map(|(a, _)| a).collect(), next))
    }

    /// Whose an alert is: its resident (if any) and device; `NotFound` when there is no such
    /// alert. What the API checks a caller's regions against before anything else.
    pub async fn alert_owner(&self, id: i64) -> Result<(Option<String>, String), StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query("SELECT resident_id, device_id FROM alerts WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or(StoreError::NotFound(id))?;
            Ok((row.try_get("resident_id")?, row.try_get("device_id")?))
        })
    }

    /// One alert and its timeline.
    pub async fn get_alert(&self, id: i64) -> Result<(Alert, Vec<TimelineEntry>), StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or(StoreError::NotFound(id))?;
            let (alert, _) = alert_from_row(&row)?;
            let rows = sqlx::query(
                "SELECT id, at, actor, action, detail FROM alert_timeline WHERE alert_id = $1 ORDER BY id",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            let mut timeline = Vec::with_capacity(rows.len());
            for r in &rows {
                let detail: String = r.try_get("detail")?;
                timeline.push(TimelineEntry {
                    id: r.try_get("id")?,
                    at: from_millis(r.try_get("at")?),
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
                });
            }
            Ok((alert, timeline))
        })
    }

    /// open → acknowledged, conditionally: two operators cannot both take the alert.
    pub async fn acknowledge(
        &self,
        id: i64,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Alert, StoreError> {
        self.transition(id, actor, now, OperatorStep::Acknowledge, None, None)
            .await
    }

    /// Appends an entry to an alert's timeline (no status change), e.g. what was sent to the
    /// device.
    pub async fn note(
        &self,
        id: i64,
        actor: &str,
        now: DateTime<Utc>,
        action: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let at = to_millis(now);
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO alert_timeline (alert_id, at, actor, action, detail) VALUES ($1, $2, $3, $4, $5)")
                .bind(id)
                .bind(at)
                .bind(actor)
                .bind(action)
                .bind(detail)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// any unresolved status → resolved, with an outcome.
    pub async fn resolve(
        &self,
        id: i64,
        actor: &str,
        now: DateTime<Utc>,
        outcome: &str,
        note: Option<&str>,
    ) -> Result<Alert, StoreError> {
        if !OUTCOMES.contains(&outcome) {
            return Err(StoreError::Validation(format!(
                "outcome {outcome:?} is not one of {}",
                OUTCOMES.join(", ")
            )));
        }
        self.transition(id, actor, now, OperatorStep::Resolve, Some(outcome), note)
            .await
    }

    async fn transition(
        &self,
        id: i64,
        actor: &str,
        now: DateTime<Utc>,
        step: OperatorStep,
        outcome: Option<&str>,
        note: Option<&str>,
    ) -> Result<Alert, StoreError> {
        let at = to_millis(now);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let sql = step_sql(step);
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(at).bind(actor);
            if step == OperatorStep::Resolve {
                q = q.bind(outcome).bind(note);
            }
            let done = q.execute(&mut *tx).await?.rows_affected();
            if done == 0 {
                return Err(refusal!(tx, id, step.name()));
            }
            let detail = serde_json::json!({ "outcome": outcome, "note": note }).to_string();
            operator_entry!(tx, id, at, actor, step.action(), detail);
            let alert = alert_in!(tx, id);
            tx.commit().await?;
            Ok(alert)
        })
    }

    /// Records a call an operator made about an alert (to whom, how it ended) on its
    /// timeline; refused once the alert is resolved (later calls belong to a follow-up).
    pub async fn record_call(
        &self,
        id: i64,
        actor: &str,
        now: DateTime<Utc>,
        to: &str,
        outcome: &str,
        note: Option<&str>,
    ) -> Result<Alert, StoreError> {
        if !CALL_TARGETS.contains(&to) {
            return Err(StoreError::Validation(format!(
                "to {to:?} is not one of {}",
                CALL_TARGETS.join(", ")
            )));
        }
        if !CALL_OUTCOMES.contains(&outcome) {
            return Err(StoreError::Validation(format!(
                "outcome {outcome:?} is not one of {}",
                CALL_OUTCOMES.join(", ")
            )));
        }
        check_text("note", note.unwrap_or_default())?;
        let detail = serde_json::json!({ "to": to, "outcome": outcome, "note": note });
        self.add_record(id, actor, now, OperatorRecord::Call, &detail.to_string())
            .await
    }

    /// Adds an operator's note to an alert's timeline, in any status (a case is documented
    /// after it closes too).
    pub async fn add_note(
        &self,
        id: i64,
        actor: &str,
        now: DateTime<Utc>,
        text: &str,
    ) -> Result<Alert, StoreError> {
        if text.trim().is_empty() {
            return Err(StoreError::Validation("text is empty".into()));
        }
        check_text("text", text)?;
        let detail = serde_json::json!({ "text": text });
        self.add_record(id, actor, now, OperatorRecord::Note, &detail.to_string())
            .await
    }

    /// A timeline entry by an operator that changes no status, in the statuses the
    /// lifecycle allows it.
    async fn add_record(
        &self,
        id: i64,
        actor: &str,
        now: DateTime<Utc>,
        record: OperatorRecord,
        detail: &str,
    ) -> Result<Alert, StoreError> {
        let at = to_millis(now);
        let action = record.action();
        let allowed = record
            .allowed_on()
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // Touching the row first orders the entry with a concurrent resolve (the row lock
            // on PostgreSQL, the one writer on SQLite): a call is never recorded on an alert
            // resolved before it.
            let touched = sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE alerts SET updated_at = $2 WHERE id = $1 AND status IN ({allowed})")))
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if touched == 0 {
                return Err(refusal!(tx, id, action));
            }
            operator_entry!(tx, id, at, actor, action, detail);
            let alert = alert_in!(tx, id);
            tx.commit().await?;
            Ok(alert)
        })
    }

    /// The newest events of `event_type` from `devices` received since `since`, newest
    /// first, at most `limit`.
    pub async fn recent_events(
        &self,
        devices: &[String],
        event_type: &str,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::<Db>::new(
                "SELECT id, device_id, type, fields, device_ts, received_at FROM events WHERE type = ",
            );
            q.push_bind(event_type.to_owned());
            q.push(" AND received_at >= ").push_bind(to_millis(since));
            q.push(" AND device_id IN (");
            let mut sep = q.separated(", ");
            for d in devices {
                sep.push_bind(d.clone());
            }
            q.push(") ORDER BY id DESC LIMIT ").push_bind(limit);
            let rows = q.build().fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    let fields: String = r.try_get("fields")?;
                    Ok(StoredEvent {
                        id: r.try_get("id")?,
                        device_id: r.try_get("device_id")?,
                        event_type: r.try_get("type")?,
                        fields: serde_json::from_str(&fields).unwrap_or(serde_json::Value::Null),
                        device_ts: r.try_get::<Option<i64>, _>("device_ts")?.map(from_millis),
                        received_at: from_millis(r.try_get("received_at")?),
                    })
                })
                .collect()
        })
    }

    /// Counts rows of a table, for tests, benches and the load report.
    pub async fn count(&self, table: Table) -> Result<i64, StoreError> {
        let sql = match table {
            Table::Events => "SELECT COUNT(*) FROM events",
            Table::Rejected => "SELECT COUNT(*) FROM rejected",
            Table::Alerts => "SELECT COUNT(*) FROM alerts",
            Table::Devices => "SELECT COUNT(*) FROM devices",
        };
        let n: i64 = on_pool!(self, pool => sqlx::query_scalar(sql).fetch_one(pool).await?);
        Ok(n)
    }

    /// Rejected rows (reason, detail, raw), newest last, for tests and inspection.
    pub async fn rejected(&self, limit: i64) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query("SELECT reason, detail, raw FROM rejected ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("reason")?, r.try_get("detail")?, r.try_get("raw")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows.into_iter().rev().collect())
    }

    /// Per-event (device, seq, received_at, committed_at, device_ts) in commit order, for the
    /// load report (latency, order per device).
    pub async fn event_timings(&self) -> Result<Vec<EventTiming>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query("SELECT device_id, seq, device_ts, received_at, committed_at FROM events ORDER BY id")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(EventTiming {
                        device_id: r.try_get("device_id")?,
                        seq: r.try_get("seq")?,
                        device_ts: r.try_get("device_ts")?,
                        received_at: r.try_get("received_at")?,
                        committed_at: r.try_get("committed_at")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }
}

/// Tables that [`Store::count`] can count.
#[derive(Debug, Clone, Copy)]
pub enum Table {
    /// Accepted events.
    Events,
    /// Rejections.
    Rejected,
    /// Alerts.
    Alerts,
    /// Devices seen.
    Devices,
}

/// A stored event as an operator sees it next to an alert (last position, recent vitals).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredEvent {
    /// Id (receive order).
    pub id: i64,
    /// Device.
    pub device_id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its fields (CONTRACT.md canonical names).
    pub fields: serde_json::Value,
    /// The device's time, if it sent one.
    pub device_ts: Option<DateTime<Utc>>,
    /// When the engine received it.
    pub received_at: DateTime<Utc>,
}

/// Timing columns of one stored event (milliseconds since the epoch).
#[derive(Debug, Clone)]
pub struct EventTiming {
    /// Device.
    pub device_id: String,
    /// Device sequence.
    pub seq: Option<i64>,
    /// Device time.
    pub device_ts: Option<i64>,
    /// Engine receive time.
    pub received_at: i64,
    /// Commit time.
    pub committed_at: i64,
}
