//! Device registry storage.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Row;

use super::{AlertChange, Store, StoreError, on_pool};
use crate::clock::{from_millis, to_millis};
use crate::domain::alert::UNREGISTERED_RULE;
use crate::domain::duration;
use crate::registry::Registration;

/// The outcome of an `unregistered_device` alert the engine resolved because the device was
/// registered.
pub const REGISTERED_OUTCOME: &str = "device_registered";

const COLUMNS: &str = "id, first_seen, last_seen, registered, family, device_type, room, labels, resident_id, tz_offset_minutes, report_interval_secs";

fn tz_text(minutes: i64) -> String {
    let sign = if minutes < 0 { '-' } else { '+' };
    let m = minutes.abs();
    format!("{sign}{:02}:{:02}", m / 60, m % 60)
}

fn row_json<R: Row>(r: &R) -> Result<(Value, Registration), sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let labels: String = r.try_get("labels")?;
    let labels: BTreeMap<String, String> = serde_json::from_str(&labels).unwrap_or_default();
    let reg = Registration {
        id: r.try_get("id")?,
        family: r.try_get("family")?,
        device_type: r.try_get("device_type")?,
        room: r.try_get("room")?,
        labels,
        resident_id: r.try_get("resident_id")?,
        tz: r
            .try_get::<Option<i64>, _>("tz_offset_minutes")?
            .map(tz_text),
        report_interval: r
            .try_get::<Option<i64>, _>("report_interval_secs")?
            .map(|s| duration::format(chrono::Duration::seconds(s))),
    };
    let seen = |c: &str| -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(Some(r.try_get::<i64, _>(c)?)
            .filter(|v| *v > 0)
            .map(from_millis))
    };
    let mut v = serde_json::to_value(&reg).unwrap_or(Value::Null);
    v["registered"] = json!(r.try_get::<i64, _>("registered")? == 1);
    v["first_seen"] = json!(seen("first_seen")?);
    v["last_seen"] = json!(seen("last_seen")?);
    Ok((v, reg))
}

impl Store {
    /// Registers (or re-registers) devices, all in one transaction.
    pub async fn register_devices(
        &self,
        regs: &[Registration],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let at = to_millis(now);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for r in regs {
                let labels = serde_json::to_string(&r.labels).unwrap_or_else(|_| "{}".into());
                let tz = r.offset().map(|o| i64::from(o.local_minus_utc() / 60));
                let interval = r.report_interval().map(|d| d.num_seconds());
                sqlx::query(
                    "INSERT INTO devices (id, first_seen, last_seen, registered, family, device_type, room, labels, resident_id, tz_offset_minutes, updated_at, report_interval_secs) \
                     VALUES ($1, 0, 0, 1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (id) DO UPDATE SET registered = 1, family = excluded.family, device_type = excluded.device_type, \
                     room = excluded.room, labels = excluded.labels, resident_id = excluded.resident_id, \
                     tz_offset_minutes = excluded.tz_offset_minutes, updated_at = excluded.updated_at, \
                     report_interval_secs = excluded.report_interval_secs",
                )
                .bind(&r.id)
                .bind(&r.family)
                .bind(&r.device_type)
                .bind(&r.room)
                .bind(labels)
                .bind(&r.resident_id)
                .bind(tz)
                .bind(at)
                .bind(interval)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Unregisters a device; its history stays.
    pub async fn unregister_device(&self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let n = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE devices SET registered = 0, family = NULL, device_type = NULL, room = NULL, labels = '{}', \
                 resident_id = NULL, tz_offset_minutes = NULL, report_interval_secs = NULL, updated_at = $2 \
                 WHERE id = $1 AND registered = 1",
            )
            .bind(id)
            .bind(to_millis(now))
            .execute(pool)
            .await?
            .rows_affected()
        });
        if n == 0 {
            return Err(StoreError::DeviceNotFound(id.to_owned()));
        }
        Ok(())
    }

    /// Unregistered devices that already had their `unregistered_device` alert, open or
    /// resolved by an operator (one resolved because the device was registered does not
    /// count: were the device unregistered again, it would get a new one).
    pub async fn quarantined_devices(&self) -> Result<Vec<String>, StoreError> {
        let ids = on_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(
                "SELECT DISTINCT a.device_id FROM alerts a JOIN devices d ON d.id = a.device_id \
                 WHERE a.rule = $1 AND d.registered = 0 \
                 AND (a.status <> 'resolved' OR a.outcome IS NULL OR a.outcome <> $2)",
            )
            .bind(UNREGISTERED_RULE)
            .bind(REGISTERED_OUTCOME)
            .fetch_all(pool)
            .await?
        });
        Ok(ids)
    }

    /// Resolves the open `unregistered_device` alerts of devices just registered (by the
    /// engine, outcome `device_registered`), with a timeline entry each.
    pub async fn resolve_quarantine(
        &self,
        ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<Vec<AlertChange>, StoreError> {
        let at = to_millis(now);
        let detail = serde_json::json!({ "outcome": REGISTERED_OUTCOME }).to_string();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut changes = Vec::new();
            for id in ids {
                let rows: Vec<(i64, String, String)> = sqlx::query_as(
                    "UPDATE alerts SET status = 'resolved', resolved_at = $3, resolved_by = 'engine', \
                     outcome = $4, updated_at = $3 \
                     WHERE device_id = $1 AND rule = $2 AND status <> 'resolved' \
                     RETURNING id, kind, severity",
                )
                .bind(id)
                .bind(UNREGISTERED_RULE)
                .bind(at)
                .bind(REGISTERED_OUTCOME)
                .fetch_all(&mut *tx)
                .await?;
                for (alert_id, kind, severity) in rows {
                    sqlx::query("INSERT INTO alert_timeline (alert_id, at, actor, action, detail) VALUES ($1, $2, 'engine', 'resolved', $3)")
                        .bind(alert_id)
                        .bind(at)
                        .bind(&detail)
                        .execute(&mut *tx)
                        .await?;
                    changes.push(AlertChange {
                        alert_id,
                        device_id: id.clone(),
                        kind,
                        severity,
                        action: "resolved".into(),
                    });
                }
            }
            tx.commit().await?;
            Ok(changes)
        })
    }

    /// Every registered device, to load the in-memory registry at start.
    pub async fn registered_devices(&self) -> Result<Vec<Registration>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM devices WHERE registered = 1")))
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| row_json(r).map(|(_, reg)| reg))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Devices by id, after `after`, optionally only (un)registered ones, only those of
    /// residents of `regions` when given.
    pub async fn list_devices(
        &self,
        registered: Option<bool>,
        after: Option<&str>,
        limit: i64,
        regions: Option<&[String]>,
    ) -> Result<Vec<Value>, StoreError> {
        let rows = on_pool!(self, pool => {
            // The quarantine view (registered=false) shows each device's open
            // `unregistered_device` alert, for the operator to find and register it.
            let mut q = sqlx::QueryBuilder::<Db>::new(format!(
                "SELECT {COLUMNS}, (SELECT MIN(a.id) FROM alerts a WHERE a.device_id = devices.id \
                 AND a.rule = "
            ));
            q.push_bind(UNREGISTERED_RULE)
                .push(" AND a.status <> 'resolved') AS quarantine_alert FROM devices WHERE 1=1");
            if let Some(r) = registered {
                q.push(" AND registered = ").push_bind(i64::from(r));
            }
            if let Some(a) = after {
                q.push(" AND id > ").push_bind(a.to_owned());
            }
            super::push_scope!(q, resident "resident_id", regions);
            q.push(" ORDER BY id LIMIT ").push_bind(limit.clamp(1, 5000));
            q.build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    let (mut v, _) = row_json(r)?;
                    v["quarantine_alert"] = serde_json::json!(r.try_get::<Option<i64>, _>("quarantine_alert")?);
                    Ok(v)
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// A device as JSON (registration, `first_seen`, `last_seen`), if it is registered or was
    /// ever heard from.
    pub async fn get_device(&self, id: &str) -> Result<Option<Value>, StoreError> {
        let row = on_pool!(self, pool => {
            match sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM devices WHERE id = $1 AND (registered = 1 OR last_seen > 0)")))
                .bind(id)
                .fetch_optional(pool)
                .await?
            {
                Some(r) => Some(row_json(&r)?.0),
                None => None,
            }
        });
        Ok(row)
    }
}
