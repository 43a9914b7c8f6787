//! The notifications outbox: `notifications` rows written inside the batch's transaction
//! ([`write_notifications!`], called by `commit_batch`), then fanned out to one `deliveries`
//! row per matching endpoint and delivered by `crate::outbox` — each step its own short
//! transaction, and none of them can lose a row: a notification not yet fanned out is found
//! again by its `fanned_out_at IS NULL`, a delivery claimed by a dispatcher that died comes
//! due again when its lease (`next_attempt_at`) passes.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::{AlertChange, Store, StoreError, on_pool};
use crate::clock::{from_millis, to_millis};

/// The statuses of a delivery.
pub const DELIVERY_STATUSES: [&str; 3] = ["pending", "delivered", "dead"];

/// A notification not yet fanned out: what the endpoints' filters look at.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationHead {
    /// Id.
    pub id: i64,
    /// `opened` or `escalated`.
    pub cause: String,
    /// The alert's kind.
    pub alert_kind: String,
    /// The alert's severity.
    pub severity: String,
    /// Commit time, ms.
    pub created_at: i64,
}

/// A delivery claimed for one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The delivery's id (`X-Anxin-Delivery`).
    pub id: i64,
    /// Its notification.
    pub notification_id: i64,
    /// The endpoint's name.
    pub endpoint: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
    /// The notification's commit time, ms (latency counts from it).
    pub created_at: i64,
    /// The notification's JSON.
    pub payload: String,
}

/// A delivery as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Delivery {
    /// Id: the `X-Anxin-Delivery` header, and the `{id}` of the redrive route.
    pub id: i64,
    /// Its notification.
    pub notification_id: i64,
    /// The alert the notification is about.
    pub alert_id: i64,
    /// `opened` or `escalated`.
    pub cause: String,
    /// The escalation level reached (0 for `opened`).
    pub level: i64,
    /// The endpoint's name.
    pub endpoint: String,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    /// Attempts made (a redrive starts again from 0).
    pub attempts: i64,
    /// When the notification was committed.
    pub created_at: DateTime<Utc>,
    /// When the last attempt started.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When a pending one is due next.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the endpoint answered 2xx.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The outbox at a glance, for the gauges and the dispatcher's next wake-up.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxStats {
    /// Pending deliveries.
    pub pending: i64,
    /// Commit time of the oldest pending delivery or not-yet-fanned-out notification, ms.
    pub oldest_at: Option<i64>,
    /// The earliest `next_attempt_at` of a pending delivery, ms.
    pub next_due_at: Option<i64>,
    /// Dead letters.
    pub dead: i64,
}

const DELIVERY_COLUMNS: &str = "d.id, d.notification_id, n.alert_id, n.cause, n.level, d.endpoint, d.status, d.attempts, d.created_at, d.last_attempt_at, d.next_attempt_at, d.last_error, d.delivered_at";

fn delivery_from_row<R: Row>(r: &R) -> Result<Delivery, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = r.try_get("status")?;
    let t = |c: &str| -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(r.try_get::<Option<i64>, _>(c)?.map(from_millis))
    };
    Ok(Delivery {
        id: r.try_get("id")?,
        notification_id: r.try_get("notification_id")?,
        alert_id: r.try_get("alert_id")?,
        cause: r.try_get("cause")?,
        level: r.try_get("level")?,
        endpoint: r.try_get("endpoint")?,
        attempts: r.try_get("attempts")?,
        created_at: from_millis(r.try_get("created_at")?),
        last_attempt_at: t("last_attempt_at")?,
        // Only a pending delivery is going anywhere.
        next_attempt_at: if status == "pending" {
            t("next_attempt_at")?
        } else {
            None
        },
        last_error: r.try_get("last_error")?,
        delivered_at: t("delivered_at")?,
        status,
    })
}

/// Which alert changes of a batch are notified: a critical alert opened (level 0), or an
/// escalation (the level reached, from `levels`: the index of the change in `changes`).
pub(crate) fn triggers<'a>(
    changes: &'a [AlertChange],
    levels: &'a HashMap<usize, i64>,
) -> impl Iterator<Item = (&'a AlertChange, i64)> + 'a {
    changes
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c.action.as_str() {
            "opened" if c.severity == "critical" => Some((c, 0)),
            "escalated" => Some((c, levels.get(&i).copied().unwrap_or(0))),
            _ => None,
        })
}

/// Writes the batch's notifications in its transaction `$tx`: one row per trigger
/// ([`triggers`]), its payload the alert (and its resident) as the transaction sees it.
macro_rules! write_notifications {
    ($tx:expr, $changes:expr, $levels:expr, $at:expr) => {{
        for (change, level) in $crate::store::outbox::triggers($changes, $levels) {
            let row = sqlx::query(
                "SELECT a.id, a.device_id, a.resident_id, a.rule, a.kind, a.severity, a.title, a.status, \
                 a.count, a.escalation_level, a.opened_at, r.name AS resident_name, r.region AS resident_region \
                 FROM alerts a LEFT JOIN residents r ON r.id = a.resident_id WHERE a.id = $1",
            )
            .bind(change.alert_id)
            .fetch_one(&mut *$tx)
            .await?;
            let payload = $crate::store::outbox::payload(&row, &change.action, level, $at)?;
            sqlx::query(
                "INSERT INTO notifications (alert_id, cause, level, alert_kind, severity, payload, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(change.alert_id)
            .bind(&change.action)
            .bind(level)
            .bind(&change.kind)
            .bind(&change.severity)
            .bind(payload)
            .bind($at)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}
pub(crate) use write_notifications;

/// The JSON a notification carries (README "Notifications"): what happened, the alert as
/// committed, and its resident (name and region: what whoever is notified needs to act;
/// contacts and medical notes stay in the console).
pub(crate) fn payload<R: Row>(
    r: &R,
    cause: &str,
    level: i64,
    at: i64,
) -> Result<String, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let resident_id: Option<String> = r.try_get("resident_id")?;
    let resident_name: Option<String> = r.try_get("resident_name")?;
    let resident = match (&resident_id, resident_name) {
        (Some(id), Some(name)) => serde_json::json!({
            "id": id,
            "name": name,
            "region": r.try_get::<Option<String>, _>("resident_region")?,
        }),
        _ => serde_json::Value::Null,
    };
    Ok(serde_json::json!({
        "cause": cause,
        "level": level,
        "at": from_millis(at),
        "alert": {
            "id": r.try_get::<i64, _>("id")?,
            "device_id": r.try_get::<String, _>("device_id")?,
            "resident_id": resident_id,
            "rule": r.try_get::<String, _>("rule")?,
            "kind": r.try_get::<String, _>("kind")?,
            "severity": r.try_get::<String, _>("severity")?,
            "title": r.try_get::<String, _>("title")?,
            "status": r.try_get::<String, _>("status")?,
            "count": r.try_get::<i64, _>("count")?,
            "escalation_level": r.try_get::<i64, _>("escalation_level")?,
            "opened_at": from_millis(r.try_get("opened_at")?),
        },
        "resident": resident,
    })
    .to_string())
}

impl Store {
    /// Makes the deliveries of at most `limit` notifications not yet fanned out, oldest
    /// first: one per endpoint `route` names (none: the notification goes nowhere), due at
    /// the notification's commit time; then marks them fanned out. One transaction; a
    /// delivery that exists already is left alone (another instance got there first).
    /// Returns how many notifications were fanned out.
    pub async fn outbox_fan_out<F>(
        &self,
        limit: usize,
        now: DateTime<Utc>,
        route: F,
    ) -> Result<usize, StoreError>
    where
        F: Fn(&NotificationHead) -> Vec<String> + Sync,
    {
        let at = to_millis(now);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(
                "SELECT id, cause, alert_kind, severity, created_at FROM notifications \
                 WHERE fanned_out_at IS NULL ORDER BY id LIMIT $1",
            )
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await?;
            let mut heads = Vec::with_capacity(rows.len());
            for r in &rows {
                heads.push(NotificationHead {
                    id: r.try_get("id")?,
                    cause: r.try_get("cause")?,
                    alert_kind: r.try_get("alert_kind")?,
                    severity: r.try_get("severity")?,
                    created_at: r.try_get("created_at")?,
                });
            }
            let made: Vec<(i64, String, i64)> = heads
                .iter()
                .flat_map(|h| route(h).into_iter().map(move |e| (h.id, e, h.created_at)))
                .collect();
            // A few endpoints per notification at most; the claim batch bounds the rows.
            for chunk in made.chunks(500) {
                let mut q = sqlx::QueryBuilder::<Db>::new(
                    "INSERT INTO deliveries (notification_id, endpoint, status, attempts, next_attempt_at, created_at) ",
                );
                q.push_values(chunk, |mut b, (id, endpoint, created)| {
                    b.push_bind(*id)
                        .push_bind(endpoint.clone())
                        .push_bind("pending")
                        .push_bind(0_i64)
                        .push_bind(*created)
                        .push_bind(*created);
                });
                q.push(" ON CONFLICT (notification_id, endpoint) DO NOTHING");
                q.build().execute(&mut *tx).await?;
            }
            for h in &heads {
                sqlx::query("UPDATE notifications SET fanned_out_at = $2 WHERE id = $1")
                    .bind(h.id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(heads.len())
        })
    }

    /// Claims at most `limit` pending deliveries to `endpoints` due by `now`, earliest first,
    /// for one attempt each: their attempt count goes up and they are leased until
    /// `lease_until` (due again then, should this attempt never report back). The update is
    /// conditional on still being pending and due, so two dispatchers never claim one
    /// delivery.
    pub async fn outbox_claim(
        &self,
        endpoints: &[String],
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        if endpoints.is_empty() {
            return Ok(Vec::new());
        }
        let (now, lease) = (to_millis(now), to_millis(lease_until));
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut q = sqlx::QueryBuilder::<Db>::new(
                "UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = ",
            );
            q.push_bind(now)
                .push(", next_attempt_at = ")
                .push_bind(lease)
                .push(" WHERE id IN (SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ")
                .push_bind(now)
                .push(" AND endpoint IN (");
            let mut sep = q.separated(", ");
            for e in endpoints {
                sep.push_bind(e.clone());
            }
            q.push(") ORDER BY next_attempt_at, id LIMIT ")
                .push_bind(limit as i64)
                .push(") AND status = 'pending' AND next_attempt_at <= ")
                .push_bind(now)
                .push(" RETURNING id, notification_id, endpoint, attempts, created_at");
            let rows = q.build().fetch_all(&mut *tx).await?;
            let mut claimed = Vec::with_capacity(rows.len());
            for r in &rows {
                claimed.push(Claimed {
                    id: r.try_get("id")?,
                    notification_id: r.try_get("notification_id")?,
                    endpoint: r.try_get("endpoint")?,
                    attempts: r.try_get("attempts")?,
                    created_at: r.try_get("created_at")?,
                    payload: String::new(),
                });
            }
            if !claimed.is_empty() {
                let mut q = sqlx::QueryBuilder::<Db>::new("SELECT id, payload FROM notifications WHERE id IN (");
                let mut sep = q.separated(", ");
                for c in &claimed {
                    sep.push_bind(c.notification_id);
                }
                q.push(")");
                let mut payloads: HashMap<i64, String> = HashMap::new();
                for r in q.build().fetch_all(&mut *tx).await? {
                    payloads.insert(r.try_get("id")?, r.try_get("payload")?);
                }
                // One notification may be claimed for several endpoints at once.
                for c in &mut claimed {
                    c.payload = payloads.get(&c.notification_id).cloned().unwrap_or_default();
                }
            }
            tx.commit().await?;
            claimed.sort_by_key(|c| c.id);
            Ok(claimed)
        })
    }

    /// Records a 2xx answer: the delivery is done. `false` when it was no longer pending.
    pub async fn outbox_delivered(&self, id: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let n = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE deliveries SET status = 'delivered', delivered_at = $2, last_error = NULL \
                 WHERE id = $1 AND status = 'pending'",
            )
            .bind(id)
            .bind(to_millis(now))
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Records a failed attempt: due again at `next` (`None`: it is a dead letter now).
    pub async fn outbox_failed(
        &self,
        id: i64,
        error: &str,
        next: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        // Error texts come from the endpoint's answer: keep them to a line.
        let error: String = error.chars().take(500).collect();
        on_pool!(self, pool => {
            match next {
                Some(at) => {
                    sqlx::query(
                        "UPDATE deliveries SET next_attempt_at = $2, last_error = $3 WHERE id = $1 AND status = 'pending'",
                    )
                    .bind(id)
                    .bind(to_millis(at))
                    .bind(&error)
                    .execute(pool)
                    .await?;
                }
                None => {
                    sqlx::query(
                        "UPDATE deliveries SET status = 'dead', last_error = $2 WHERE id = $1 AND status = 'pending'",
                    )
                    .bind(id)
                    .bind(&error)
                    .execute(pool)
                    .await?;
                }
            }
        });
        Ok(())
    }

    /// Pending deliveries to endpoints no longer configured become dead letters (named as
    /// such): nothing would ever send them, and a redrive once the endpoint is back sends
    /// them. Returns how many.
    pub async fn outbox_orphans(&self, configured: &[String]) -> Result<u64, StoreError> {
        let n = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::<Db>::new(
                "UPDATE deliveries SET status = 'dead', last_error = 'the endpoint is no longer configured' \
                 WHERE status = 'pending'",
            );
            if !configured.is_empty() {
                q.push(" AND endpoint NOT IN (");
                let mut sep = q.separated(", ");
                for e in configured {
                    sep.push_bind(e.clone());
                }
                q.push(")");
            }
            q.build().execute(pool).await?.rows_affected()
        });
        Ok(n)
    }

    /// The outbox at a glance (three indexed queries).
    pub async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        on_pool!(self, pool => {
            let (pending, oldest, next): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(*), MIN(created_at), MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'",
            )
            .fetch_one(pool)
            .await?;
            let unfanned: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(created_at) FROM notifications WHERE fanned_out_at IS NULL",
            )
            .fetch_one(pool)
            .await?;
            let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status = 'dead'")
                .fetch_one(pool)
                .await?;
            let oldest_at = match (oldest, unfanned) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            Ok(OutboxStats { pending, oldest_at, next_due_at: next, dead })
        })
    }

    /// Deliveries with `status`, optionally to one `endpoint`, of alerts of residents of
    /// `regions` when given, by id after `after`, at most `limit`; with the id to continue after when there are more.
    pub async fn outbox_list(
        &self,
        status: &str,
        endpoint: Option<&str>,
        limit: i64,
        after: Option<i64>,
        regions: Option<&[String]>,
    ) -> Result<(Vec<Delivery>, Option<i64>), StoreError> {
        let limit = limit.clamp(1, 1000);
        let mut items = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::<Db>::new(format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN notifications n ON n.id = d.notification_id WHERE d.status = "
            ));
            q.push_bind(status.to_owned());
            if let Some(e) = endpoint {
                q.push(" AND d.endpoint = ").push_bind(e.to_owned());
            }
            if let Some(a) = after {
                q.push(" AND d.id > ").push_bind(a);
            }
            super::push_scope!(q, resident "(SELECT resident_id FROM alerts WHERE alerts.id = n.alert_id)", regions);
            q.push(" ORDER BY d.id LIMIT ").push_bind(limit + 1);
            q.build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(delivery_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        let next = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|d| d.id)
        } else {
            None
        };
        Ok((items, next))
    }

    /// One delivery.
    pub async fn outbox_delivery(&self, id: i64) -> Result<Delivery, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN notifications n ON n.id = d.notification_id WHERE d.id = $1"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await?
            .ok_or(StoreError::DeliveryNotFound(id))?;
            Ok(delivery_from_row(&row)?)
        })
    }

    /// Puts a dead letter back in the queue, due now, its attempts counted afresh (the last
    /// error stays until the next attempt says more). Conditional on it being dead: a
    /// pending or delivered one is refused (409), an unknown id is 404.
    pub async fn outbox_redrive(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Delivery, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2 WHERE id = $1 AND status = 'dead'",
            )
            .bind(id)
            .bind(to_millis(now))
            .execute(pool)
            .await?
            .rows_affected()
        });
        let d = self.outbox_delivery(id).await?;
        if done == 0 {
            return Err(StoreError::DeliveryConflict {
                id,
                reason: format!("it is {}; only a dead letter can be re-driven", d.status),
            });
        }
        Ok(d)
    }

    /// Puts every dead letter to `endpoint` back in the queue, as [`Store::outbox_redrive`]
    /// does one (after an outage that outlasted `max_attempts`). Returns how many.
    pub async fn outbox_redrive_all(
        &self,
        endpoint: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let n = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2 WHERE endpoint = $1 AND status = 'dead'",
            )
            .bind(endpoint)
            .bind(to_millis(now))
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n)
    }

    /// Deletes notifications written before `before` whose every delivery was made (their
    /// deliveries go with them); those with a pending or dead delivery stay. Returns how many.
    pub async fn outbox_purge(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let n = on_pool!(self, pool => {
            sqlx::query(
                "DELETE FROM notifications WHERE created_at < $1 AND fanned_out_at IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_id = notifications.id AND d.status <> 'delivered')",
            )
            .bind(to_millis(before))
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n)
    }
}
