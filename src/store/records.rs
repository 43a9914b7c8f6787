//! Service records (migration 0009): a carer dispatched from an alert, checked in on site and
//! checked out with what was done and the resident's rating. Every step also goes on the
//! alert's timeline, in the same transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::{
    ALERT_COLUMNS, Alert, Store, StoreError, alert_from_row, alert_in, on_pool, operator_entry,
    refusal, step_sql,
};
use crate::clock::{from_millis, to_millis};
use crate::domain::alert::OperatorStep;

/// The best rating a resident gives a visit (1 is the worst).
pub const MAX_RATING: i64 = 5;

/// A position reported at check-in or check-out.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Position {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
}

/// What a check-out records.
#[derive(Debug, Clone, Default)]
pub struct CheckOut {
    /// When (default: now).
    pub at: Option<DateTime<Utc>>,
    /// Where.
    pub position: Option<Position>,
    /// Service items done (the platform's service catalogue names).
    pub items: Vec<String>,
    /// What was done, in words.
    pub content: Option<String>,
    /// How it ended.
    pub outcome: Option<String>,
    /// The resident's rating, 1–5.
    pub rating: Option<i64>,
}

/// How a follow-up call (回访) went: the resident satisfied, neither, not satisfied, or not
/// reached.
pub const FOLLOW_UP_RESULTS: [&str; 4] = ["satisfied", "neutral", "unsatisfied", "unreachable"];

/// The follow-up call after a visit.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct FollowUp {
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// Who called.
    pub by: String,
    /// One of [`FOLLOW_UP_RESULTS`].
    pub result: String,
    /// What was said.
    pub note: Option<String>,
}

/// Who is sent: the provider and worker as named on the record, and the records they are
/// when they were named by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Crew {
    /// Provider name.
    pub provider: String,
    /// Worker name.
    pub worker: String,
    /// The provider record, when there is one.
    pub provider_id: Option<String>,
    /// The worker record, when there is one.
    pub worker_id: Option<String>,
}

impl Crew {
    /// A crew named by free text only.
    pub fn named(provider: &str, worker: &str) -> Crew {
        Crew {
            provider: provider.to_owned(),
            worker: worker.to_owned(),
            ..Crew::default()
        }
    }
}

/// A service record as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ServiceRecord {
    /// Id.
    pub id: i64,
    /// The alert it was dispatched from.
    pub alert_id: Option<i64>,
    /// The resident served.
    pub resident_id: Option<String>,
    /// The device that raised the alert.
    pub device_id: Option<String>,
    /// Service provider.
    pub provider: String,
    /// Worker sent.
    pub worker: String,
    /// The provider record, when the dispatch named one.
    pub provider_id: Option<String>,
    /// The worker record, when the dispatch named one.
    pub worker_id: Option<String>,
    /// `dispatched`, `on_site` or `done`.
    pub status: String,
    /// Who dispatched.
    pub opened_by: String,
    /// When.
    pub opened_at: DateTime<Utc>,
    /// Check-in time.
    pub check_in_at: Option<DateTime<Utc>>,
    /// Check-in position.
    pub check_in: Option<Position>,
    /// How far from the resident's home the check-in was, in metres, when both are known.
    pub check_in_distance_m: Option<f64>,
    /// The check-in was farther than [`crate::domain::provider::FAR_METRES`] from home.
    pub check_in_far: Option<bool>,
    /// Check-out time.
    pub check_out_at: Option<DateTime<Utc>>,
    /// Check-out position.
    pub check_out: Option<Position>,
    /// Service items done.
    pub items: Vec<String>,
    /// What was done.
    pub content: Option<String>,
    /// How it ended.
    pub outcome: Option<String>,
    /// The resident's rating, 1–5.
    pub rating: Option<i64>,
    /// For a planned visit (no alert): when it is planned.
    pub planned_at: Option<DateTime<Utc>>,
    /// The follow-up call, once made.
    pub follow_up: Option<FollowUp>,
    /// When the next visit is due, if one was agreed.
    pub next_visit_at: Option<DateTime<Utc>>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

pub(super) const RECORD_COLUMNS: &str = "id, alert_id, resident_id, device_id, provider, worker, status, opened_by, opened_at, \
     check_in_at, check_in_lat, check_in_lon, check_out_at, check_out_lat, check_out_lon, items, content, outcome, rating, \
     planned_at, follow_up_at, follow_up_by, follow_up_result, follow_up_note, next_visit_at, updated_at, \
     provider_id, worker_id, check_in_distance_m";

pub(super) fn record_from_row<R>(r: &R) -> Result<ServiceRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<f64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let pos = |lat: &str, lon: &str| -> Result<Option<Position>, StoreError> {
        let (lat, lon): (Option<f64>, Option<f64>) = (r.try_get(lat)?, r.try_get(lon)?);
        Ok(lat.zip(lon).map(|(lat, lon)| Position { lat, lon }))
    };
    let time = |c: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(r.try_get::<Option<i64>, _>(c)?.map(from_millis))
    };
    let items: String = r.try_get("items")?;
    Ok(ServiceRecord {
        id: r.try_get("id")?,
        alert_id: r.try_get("alert_id")?,
        resident_id: r.try_get("resident_id")?,
        device_id: r.try_get("device_id")?,
        provider: r.try_get("provider")?,
        worker: r.try_get("worker")?,
        provider_id: r.try_get("provider_id")?,
        worker_id: r.try_get("worker_id")?,
        status: r.try_get("status")?,
        opened_by: r.try_get("opened_by")?,
        opened_at: from_millis(r.try_get("opened_at")?),
        check_in_at: time("check_in_at")?,
        check_in: pos("check_in_lat", "check_in_lon")?,
        check_in_distance_m: r.try_get("check_in_distance_m")?,
        check_in_far: r
            .try_get::<Option<f64>, _>("check_in_distance_m")?
            .map(|d| d > crate::domain::provider::FAR_METRES),
        check_out_at: time("check_out_at")?,
        check_out: pos("check_out_lat", "check_out_lon")?,
        items: serde_json::from_str(&items).unwrap_or_default(),
        content: r.try_get("content")?,
        outcome: r.try_get("outcome")?,
        rating: r.try_get("rating")?,
        planned_at: time("planned_at")?,
        follow_up: match time("follow_up_at")? {
            Some(at) => Some(FollowUp {
                at,
                by: r
                    .try_get::<Option<String>, _>("follow_up_by")?
                    .unwrap_or_default(),
                result: r
                    .try_get::<Option<String>, _>("follow_up_result")?
                    .unwrap_or_default(),
                note: r.try_get("follow_up_note")?,
            }),
            None => None,
        },
        next_visit_at: time("next_visit_at")?,
        updated_at: from_millis(r.try_get("updated_at")?),
    })
}

fn check_len(field: &str, v: &str, max: usize) -> Result<(), StoreError> {
    if v.trim().is_empty() || v.chars().count() > max {
        return Err(StoreError::Validation(format!(
            "{field}: 1–{max} characters"
        )));
    }
    Ok(())
}

fn check_position(p: Option<Position>) -> Result<(), StoreError> {
    if let Some(p) = p
        && !((-90.0..=90.0).contains(&p.lat) && (-180.0..=180.0).contains(&p.lon))
    {
        return Err(StoreError::Validation(format!(
            "position {}, {} is not a latitude and longitude",
            p.lat, p.lon
        )));
    }
    Ok(())
}

/// A time a worker's phone reports may run a little ahead of ours, not more.
const CLOCK_SLACK_MINUTES: i64 = 5;

fn check_time(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<i64, StoreError> {
    let at = at.unwrap_or(now);
    if at > now + chrono::Duration::minutes(CLOCK_SLACK_MINUTES) {
        return Err(StoreError::Validation(format!(
            "at {} is in the future",
            at.to_rfc3339()
        )));
    }
    Ok(to_millis(at))
}

/// A value a record step sets.
enum Val {
    Int(Option<i64>),
    Float(Option<f64>),
    Text(Option<String>),
}

/// Why a conditional step on a record changed nothing.
macro_rules! record_refusal {
    ($tx:expr, $id:expr, $step:expr) => {{
        let row: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT status, follow_up_at FROM service_records WHERE id = $1")
                .bind($id)
                .fetch_optional(&mut *$tx)
                .await?;
        match row {
            None => StoreError::RecordNotFound($id),
            Some((status, followed)) => StoreError::RecordConflict {
                id: $id,
                status: if followed.is_some() {
                    format!("{status} and followed up")
                } else {
                    status
                },
                step: $step,
            },
        }
    }};
}

impl Store {
    /// Sends a carer for an alert: the alert becomes `dispatched` (claimed by the caller if
    /// nobody had it) and a service record is opened, in one transaction.
    pub async fn dispatch(
        &self,
        alert_id: i64,
        actor: &str,
        now: DateTime<Utc>,
        crew: &Crew,
    ) -> Result<(Alert, i64), StoreError> {
        let (provider, worker) = (crew.provider.as_str(), crew.worker.as_str());
        check_len("provider", provider, 200)?;
        check_len("worker", worker, 200)?;
        let at = to_millis(now);
        let step = OperatorStep::Dispatch;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(sqlx::AssertSqlSafe(step_sql(step)))
                .bind(alert_id)
                .bind(at)
                .bind(actor)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if done == 0 {
                return Err(refusal!(tx, alert_id, step.name()));
            }
            let record_id: i64 = sqlx::query_scalar(
                "INSERT INTO service_records (alert_id, resident_id, device_id, provider, worker, status, opened_by, opened_at, updated_at, provider_id, worker_id) \
                 SELECT id, resident_id, device_id, $2, $3, 'dispatched', $4, $5, $5, $6, $7 FROM alerts WHERE id = $1 RETURNING id",
            )
            .bind(alert_id)
            .bind(provider)
            .bind(worker)
            .bind(actor)
            .bind(at)
            .bind(crew.provider_id.as_deref())
            .bind(crew.worker_id.as_deref())
            .fetch_one(&mut *tx)
            .await?;
            let detail = serde_json::json!({ "provider": provider, "worker": worker, "record_id": record_id,
                "provider_id": crew.provider_id, "worker_id": crew.worker_id });
            operator_entry!(tx, alert_id, at, actor, step.action(), detail.to_string());
            let alert = alert_in!(tx, alert_id);
            tx.commit().await?;
            Ok((alert, record_id))
        })
    }

    /// The worker is on site: `dispatched` → `on_site`; `distance_m` from the resident's home
    /// when both positions are known (flagged far past
    /// [`crate::domain::provider::FAR_METRES`]).
    pub async fn check_in(
        &self,
        id: i64,
        actor: &str,
        now: DateTime<Utc>,
        at: Option<DateTime<Utc>>,
        position: Option<Position>,
        distance_m: Option<f64>,
    ) -> Result<ServiceRecord, StoreError> {
        check_position(position)?;
        let when = check_time(at, now)?;
        let far = distance_m.map(|d| d > crate::domain::provider::FAR_METRES);
        let detail = serde_json::json!({ "record_id": id, "at": from_millis(when), "position": position,
            "distance_m": distance_m, "far": far });
        let sets = vec![
            ("status", Val::Text(Some("on_site".into()))),
            ("check_in_at", Val::Int(Some(when))),
            ("check_in_lat", Val::Float(position.map(|p| p.lat))),
            ("check_in_lon", Val::Float(position.map(|p| p.lon))),
            ("check_in_distance_m", Val::Float(distance_m)),
        ];
        self.record_step(
            id,
            actor,
            now,
            "check_in",
            detail,
            sets,
            "dispatched",
            false,
        )
        .await
    }

    /// The visit is over: `on_site` → `done`, with what was done and the rating.
    pub async fn check_out(
        &self,
        id: i64,
        actor: &str,
        now: DateTime<Utc>,
        c: &CheckOut,
    ) -> Result<ServiceRecord, StoreError> {
        check_position(c.position)?;
        let when = check_time(c.at, now)?;
        if let Some(r) = c.rating
            && !(1..=MAX_RATING).contains(&r)
        {
            return Err(StoreError::Validation(format!(
                "rating {r} is not 1–{MAX_RATING}"
            )));
        }
        if c.items.len() > 50 {
            return Err(StoreError::Validation("items: at most 50".into()));
        }
        for item in &c.items {
            check_len("items", item, 100)?;
        }
        if let Some(v) = &c.content {
            check_len("content", v, 2000)?;
        }
        if let Some(v) = &c.outcome {
            check_len("outcome", v, 200)?;
        }
        let items = serde_json::to_string(&c.items).unwrap_or_else(|_| "[]".into());
        let detail = serde_json::json!({
            "record_id": id, "at": from_millis(when), "position": c.position,
            "items": c.items, "outcome": c.outcome, "rating": c.rating,
        });
        let sets = vec![
            ("status", Val::Text(Some("done".into()))),
            ("check_out_at", Val::Int(Some(when))),
            ("check_out_lat", Val::Float(c.position.map(|p| p.lat))),
            ("check_out_lon", Val::Float(c.position.map(|p| p.lon))),
            ("items", Val::Text(Some(items))),
            ("content", Val::Text(c.content.clone())),
            ("outcome", Val::Text(c.outcome.clone())),
            ("rating", Val::Int(c.rating)),
        ];
        self.record_step(id, actor, now, "check_out", detail, sets, "on_site", false)
            .await
    }

    /// The follow-up call after a visit (once, after check-out), and the next visit if one
    /// was agreed.
    pub async fn follow_up(
        &self,
        id: i64,
        actor: &str,
        now: DateTime<Utc>,
        result: &str,
        note: Option<&str>,
        next_visit_at: Option<DateTime<Utc>>,
    ) -> Result<ServiceRecord, StoreError> {
        if !FOLLOW_UP_RESULTS.contains(&result) {
            return Err(StoreError::Validation(format!(
                "result {result:?} is not one of {}",
                FOLLOW_UP_RESULTS.join(", ")
            )));
        }
        if let Some(n) = note {
            check_len("note", n, 2000)?;
        }
        if next_visit_at.is_some_and(|t| t < now) {
            return Err(StoreError::Validation(
                "next_visit_at is in the past".into(),
            ));
        }
        let detail = serde_json::json!({
            "record_id": id, "result": result, "note": note, "next_visit_at": next_visit_at,
        });
        let sets = vec![
            ("follow_up_at", Val::Int(Some(to_millis(now)))),
            ("follow_up_by", Val::Text(Some(actor.to_owned()))),
            ("follow_up_result", Val::Text(Some(result.to_owned()))),
            ("follow_up_note", Val::Text(note.map(str::to_owned))),
            ("next_visit_at", Val::Int(next_visit_at.map(to_millis))),
        ];
        self.record_step(id, actor, now, "follow_up", detail, sets, "done", true)
            .await
    }

    /// A planned home-care visit to a resident, not tied to an alert (the platforms count
    /// them per elder and period); it is checked in and out like a dispatch.
    pub async fn plan_visit(
        &self,
        resident_id: &str,
        actor: &str,
        now: DateTime<Utc>,
        crew: &Crew,
        planned_at: Option<DateTime<Utc>>,
    ) -> Result<ServiceRecord, StoreError> {
        let (provider, worker) = (crew.provider.as_str(), crew.worker.as_str());
        check_len("provider", provider, 200)?;
        check_len("worker", worker, 200)?;
        let at = to_millis(now);
        on_pool!(self, pool => {
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO service_records (resident_id, provider, worker, status, opened_by, opened_at, planned_at, updated_at, provider_id, worker_id) \
                 SELECT id, $2, $3, 'dispatched', $4, $5, $6, $5, $7, $8 FROM residents WHERE id = $1 RETURNING id",
            )
            .bind(resident_id)
            .bind(provider)
            .bind(worker)
            .bind(actor)
            .bind(at)
            .bind(planned_at.map(to_millis))
            .bind(crew.provider_id.as_deref())
            .bind(crew.worker_id.as_deref())
            .fetch_optional(pool)
            .await?;
            let id = id.ok_or_else(|| StoreError::ResidentNotFound(resident_id.to_owned()))?;
            let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {RECORD_COLUMNS} FROM service_records WHERE id = $1")))
                .bind(id)
                .fetch_one(pool)
                .await?;
            record_from_row(&row)
        })
    }

    /// A conditional step on a record (`from` is the status it may start from; a follow-up
    /// only once) setting `sets`, with its entry on the alert's timeline.
    #[allow(clippy::too_many_arguments)]
    async fn record_step(
        &self,
        id: i64,
        actor: &str,
        now: DateTime<Utc>,
        action: &'static str,
        detail: serde_json::Value,
        sets: Vec<(&'static str, Val)>,
        from: &str,
        unless_followed_up: bool,
    ) -> Result<ServiceRecord, StoreError> {
        let at = to_millis(now);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut q = sqlx::QueryBuilder::<Db>::new("UPDATE service_records SET updated_at = ");
            q.push_bind(at);
            for (column, value) in &sets {
                q.push(", ").push(*column).push(" = ");
                match value {
                    Val::Int(v) => q.push_bind(*v),
                    Val::Float(v) => q.push_bind(*v),
                    Val::Text(v) => q.push_bind(v.clone()),
                };
            }
            q.push(" WHERE id = ").push_bind(id).push(" AND status = ").push_bind(from.to_owned());
            if unless_followed_up {
                q.push(" AND follow_up_at IS NULL");
            }
            q.push(" RETURNING alert_id");
            let alert: Option<Option<i64>> = q.build_query_scalar().fetch_optional(&mut *tx).await?;
            let Some(alert) = alert else {
                return Err(record_refusal!(tx, id, action));
            };
            if let Some(alert_id) = alert {
                operator_entry!(tx, alert_id, at, actor, action, detail.to_string());
            }
            let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {RECORD_COLUMNS} FROM service_records WHERE id = $1")))
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            let record = record_from_row(&row)?;
            tx.commit().await?;
            Ok(record)
        })
    }

    /// One service record.
    pub async fn get_record(&self, id: i64) -> Result<ServiceRecord, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {RECORD_COLUMNS} FROM service_records WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or(StoreError::RecordNotFound(id))?;
            record_from_row(&row)
        })
    }

    /// Service records opened in `[from, to)` (ms), of one resident if given, of residents of
    /// `regions` only when given, by id after `after`, at most `limit`.
    pub async fn list_records(
        &self,
        resident_id: Option<&str>,
        from: i64,
        to: i64,
        after: i64,
        limit: i64,
        regions: Option<&[String]>,
    ) -> Result<Vec<ServiceRecord>, StoreError> {
        on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::<Db>::new(format!("SELECT {RECORD_COLUMNS} FROM service_records WHERE opened_at >= "));
            q.push_bind(from).push(" AND opened_at < ").push_bind(to).push(" AND id > ").push_bind(after);
            if let Some(r) = resident_id {
                q.push(" AND resident_id = ").push_bind(r.to_owned());
            }
            super::push_scope!(q, resident "resident_id", regions);
            q.push(" ORDER BY id LIMIT ").push_bind(limit);
            let rows = q.build().fetch_all(pool).await?;
            rows.iter().map(record_from_row).collect()
        })
    }
}
