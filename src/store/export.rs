//! The export feed for higher platforms (docs/EXPORT.md): alerts and service records in the
//! order they last changed, paged by a cursor.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::records::{RECORD_COLUMNS, record_from_row};
use super::{
    ALERT_COLUMNS, Alert, ServiceRecord, Store, StoreError, alert_from_row, on_pool, push_scope,
};
use crate::clock::to_millis;

/// Where a page ends: the last item's change time (ms), its type (0 alert, 1 service record)
/// and id. Items sort by exactly this.
pub type ExportCursor = (i64, u8, i64);

/// One item of the feed.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ExportItem {
    /// An alert as it is now.
    Alert(Alert),
    /// A service record as it is now.
    ServiceRecord(ServiceRecord),
}

/// The feed's format name and version (docs/EXPORT.md); a change that is not purely additive
/// raises the version.
pub const FORMAT: &str = "anxin.export";
/// See [`FORMAT`].
pub const VERSION: u32 = 1;

/// How far behind real time the feed stays, so that a transaction that took its time before
/// the cursor passed it has committed (its rows carry the time they were computed at, not the
/// time they became visible).
pub const SETTLE: chrono::Duration = chrono::Duration::seconds(5);

/// Where the feed starts.
pub const START: ExportCursor = (i64::MIN, 0, i64::MIN);

/// A cursor as the feed writes it: `<ms>.<type>.<id>`.
pub fn cursor_text((t, k, id): ExportCursor) -> String {
    format!("{t}.{k}.{id}")
}

/// A cursor this feed wrote, or `None`.
pub fn parse_cursor(c: &str) -> Option<ExportCursor> {
    let mut it = c.split('.');
    let t = it.next()?.parse().ok()?;
    let k: u8 = it.next()?.parse().ok()?;
    let id = it.next()?.parse().ok()?;
    (it.next().is_none() && k <= 1).then_some((t, k, id))
}

/// One page as the feed and the export webhooks send it: `format`, `version`, `items` (each
/// with its `cursor`) and `next`.
pub fn page_json(items: &[ExportItem], after: ExportCursor) -> serde_json::Value {
    let next = items.last().map_or(after, ExportItem::cursor);
    let items: Vec<serde_json::Value> = items
        .iter()
        .map(|i| {
            let mut v = serde_json::json!(i);
            v["cursor"] = serde_json::json!(cursor_text(i.cursor()));
            v
        })
        .collect();
    serde_json::json!({
        "format": FORMAT,
        "version": VERSION,
        "items": items,
        "next": if next == START { None } else { Some(cursor_text(next)) },
    })
}

impl ExportItem {
    /// The item's place in the feed.
    pub fn cursor(&self) -> ExportCursor {
        match self {
            ExportItem::Alert(a) => (to_millis(a.updated_at), 0, a.id),
            ExportItem::ServiceRecord(r) => (to_millis(r.updated_at), 1, r.id),
        }
    }
}

impl Store {
    /// The cursor export endpoint `endpoint` has acknowledged up to.
    pub async fn export_cursor(&self, endpoint: &str) -> Result<Option<String>, StoreError> {
        on_pool!(self, pool => {
            Ok(sqlx::query_scalar("SELECT cursor FROM export_cursors WHERE endpoint = $1")
                .bind(endpoint)
                .fetch_optional(pool)
                .await?)
        })
    }

    /// Export endpoint `endpoint` acknowledged everything up to `cursor`.
    pub async fn set_export_cursor(
        &self,
        endpoint: &str,
        cursor: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO export_cursors (endpoint, cursor, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (endpoint) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
            )
            .bind(endpoint)
            .bind(cursor)
            .bind(to_millis(now))
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Up to `limit` items after `after` that last changed at or before `until`, of residents
    /// of `regions` when given, in feed order.
    pub async fn export_page(
        &self,
        after: ExportCursor,
        until: DateTime<Utc>,
        limit: i64,
        regions: Option<&[String]>,
    ) -> Result<Vec<ExportItem>, StoreError> {
        let until = to_millis(until);
        let (t, kind, id) = after;
        let mut items = on_pool!(self, pool => {
            // Alerts sort before records of the same millisecond.
            let mut q = sqlx::QueryBuilder::<Db>::new(format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE updated_at <= "));
            q.push_bind(until);
            if kind == 0 {
                q.push(" AND (updated_at > ").push_bind(t)
                    .push(" OR (updated_at = ").push_bind(t).push(" AND id > ").push_bind(id).push("))");
            } else {
                q.push(" AND updated_at > ").push_bind(t);
            }
            push_scope!(q, resident "resident_id", regions);
            q.push(" ORDER BY updated_at, id LIMIT ").push_bind(limit);
            let mut items: Vec<ExportItem> = q
                .build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| alert_from_row(r).map(|(a, _)| ExportItem::Alert(a)))
                .collect::<Result<_, sqlx::Error>>()?;
            let mut q = sqlx::QueryBuilder::<Db>::new(format!("SELECT {RECORD_COLUMNS} FROM service_records WHERE updated_at <= "));
            q.push_bind(until);
            if kind == 0 {
                q.push(" AND updated_at >= ").push_bind(t);
            } else {
                q.push(" AND (updated_at > ").push_bind(t)
                    .push(" OR (updated_at = ").push_bind(t).push(" AND id > ").push_bind(id).push("))");
            }
            push_scope!(q, resident "resident_id", regions);
            q.push(" ORDER BY updated_at, id LIMIT ").push_bind(limit);
            for r in q.build().fetch_all(pool).await?.iter() {
                items.push(ExportItem::ServiceRecord(record_from_row(r)?));
            }
            items
        });
        items.sort_by_key(ExportItem::cursor);
        items.truncate(limit.max(0) as usize);
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_strangers_are_refused() {
        let c = (1_796_083_200_000, 1, 42);
        assert_eq!(parse_cursor(&cursor_text(c)), Some(c));
        for bad in ["", "1.2.3", "1.0", "a.0.1", "1.0.1.9", "-1.0.x"] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
    }
}
