//! MQTT broker sessions the engine has had (`mqtt_sessions`, migration 0004) and the engine's
//! own `system` alerts, which belong to no device.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{AlertChange, Store, StoreError, on_pool};
use crate::clock::{from_millis, to_millis};
use crate::domain::alert::Severity;

/// The device id of alerts the engine raises about itself.
pub const SYSTEM_DEVICE: &str = "system";

/// The kind of those alerts.
pub const SYSTEM_KIND: &str = "system";

/// A session the engine had on a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSessionRecord {
    /// First CONNACK recorded.
    pub first_at: DateTime<Utc>,
    /// Latest CONNACK recorded.
    pub last_at: DateTime<Utc>,
}

/// A `system` alert to open, or to count on while it is unresolved.
#[derive(Debug, Clone)]
pub struct SystemAlert<'a> {
    /// Rule name: one unresolved alert per rule.
    pub rule: &'a str,
    /// Severity.
    pub severity: Severity,
    /// Operator-facing title: what happened and what to do.
    pub title: &'a str,
    /// Timeline entry detail.
    pub detail: serde_json::Value,
}

impl Store {
    /// The session recorded for `client_id` on `broker`, if the engine ever had one there.
    pub async fn mqtt_session(
        &self,
        client_id: &str,
        broker: &str,
    ) -> Result<Option<MqttSessionRecord>, StoreError> {
        let row = on_pool!(self, pool => {
            sqlx::query("SELECT first_at, last_at FROM mqtt_sessions WHERE client_id = $1 AND broker = $2")
                .bind(client_id)
                .bind(broker)
                .fetch_optional(pool)
                .await?
                .map(|r| -> Result<_, sqlx::Error> {
                    Ok(MqttSessionRecord {
                        first_at: from_millis(r.try_get("first_at")?),
                        last_at: from_millis(r.try_get("last_at")?),
                    })
                })
                .transpose()?
        });
        Ok(row)
    }

    /// Notes that `client_id` holds a session on `broker` as of `at` (a CONNACK).
    pub async fn record_mqtt_session(
        &self,
        client_id: &str,
        broker: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO mqtt_sessions (client_id, broker, first_at, last_at) VALUES ($1, $2, $3, $3) \
                 ON CONFLICT (client_id, broker) DO UPDATE SET last_at = excluded.last_at",
            )
            .bind(client_id)
            .bind(broker)
            .bind(to_millis(at))
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Opens a `system` alert for `a.rule`, or counts on the unresolved one, with a timeline
    /// entry either way; one transaction. Returns the change for the live feed.
    pub async fn raise_system_alert(
        &self,
        a: &SystemAlert<'_>,
        now: DateTime<Utc>,
    ) -> Result<AlertChange, StoreError> {
        let at = to_millis(now);
        let detail = a.detail.to_string();
        let (id, action) = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let counted: Option<i64> = sqlx::query_scalar(
                "UPDATE alerts SET count = count + 1, last_event_at = $3, updated_at = $3 \
                 WHERE subject = $1 AND rule = $2 AND status <> 'resolved' RETURNING id",
            )
            .bind(SYSTEM_DEVICE)
            .bind(a.rule)
            .bind(at)
            .fetch_optional(&mut *tx)
            .await?;
            let (id, action) = match counted {
                Some(id) => (id, "counted"),
                None => {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO alerts (device_id, resident_id, rule, kind, severity, severity_rank, title, status, count, \
                         escalation_level, opened_at, updated_at, last_event_at, subject) \
                         VALUES ($1, NULL, $2, $3, $4, $5, $6, 'open', 1, 0, $7, $7, $7, $1) RETURNING id",
                    )
                    .bind(SYSTEM_DEVICE)
                    .bind(a.rule)
                    .bind(SYSTEM_KIND)
                    .bind(a.severity.as_str())
                    .bind(a.severity.rank())
                    .bind(a.title)
                    .bind(at)
                    .fetch_one(&mut *tx)
                    .await?;
                    (id, "opened")
                }
            };
            sqlx::query("INSERT INTO alert_timeline (alert_id, at, actor, action, detail) VALUES ($1, $2, 'engine', $3, $4)")
                .bind(id)
                .bind(at)
                .bind(if action == "opened" { "opened" } else { "event" })
                .bind(&detail)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            (id, action)
        });
        Ok(AlertChange {
            alert_id: id,
            device_id: SYSTEM_DEVICE.to_owned(),
            kind: SYSTEM_KIND.to_owned(),
            severity: a.severity.as_str().to_owned(),
            action: action.to_owned(),
        })
    }
}
