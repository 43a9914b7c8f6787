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
