//! Regions and the audit log (migration 0010).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, on_pool};
use crate::clock::{from_millis, to_millis};
use crate::domain::region::Region;

/// Appends `AND <column> IN (<regions>)` to a query builder, or nothing for every region;
/// an empty set matches nothing.
/// With `resident` instead of a column, the rows whose `$column` names a resident of those
/// regions.
macro_rules! push_scope {
    ($q:expr, resident $column:expr, $regions:expr) => {
        $crate::store::push_scope!(@ $q, concat!(" AND ", $column, " IN (SELECT id FROM residents WHERE region IN ("), "))", $regions)
    };
    ($q:expr, $column:expr, $regions:expr) => {
        $crate::store::push_scope!(@ $q, concat!(" AND ", $column, " IN ("), ")", $regions)
    };
    (@ $q:expr, $open:expr, $close:expr, $regions:expr) => {
        if let Some(regions) = $regions {
            if regions.is_empty() {
                $q.push(" AND 1 = 0");
            } else {
                $q.push($open);
                let mut list = $q.separated(", ");
                for r in regions.iter() {
                    list.push_bind(r.clone());
                }
                list.push_unseparated($close);
            }
        }
    };
}
pub(crate) use push_scope;

/// One write through the API, as the audit log keeps it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Id, increasing.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who: a login, `admin` for the bootstrap token, `-` for nobody authenticated.
    pub actor: String,
    /// Their role, when authenticated.
    pub role: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The answer's status.
    pub status: i64,
    /// The peer address the request came from.
    pub remote: Option<String>,
}

impl Store {
    /// Every region.
    pub async fn all_regions(&self) -> Result<Vec<Region>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT id, name, parent FROM regions ORDER BY id")
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(Region {
                        id: r.try_get("id")?,
                        name: r.try_get("name")?,
                        parent: r.try_get("parent")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::Db)
        })
    }

    /// Creates or replaces a region (checked by the caller); `true` when it was created.
    pub async fn put_region(&self, r: &Region, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let at = to_millis(now);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO regions (id, name, parent, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&r.id)
            .bind(&r.name)
            .bind(r.parent.as_deref())
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                sqlx::query("UPDATE regions SET name = $2, parent = $3, updated_at = $4 WHERE id = $1")
                    .bind(&r.id)
                    .bind(&r.name)
                    .bind(r.parent.as_deref())
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(inserted == 1)
        })
    }

    /// Appends `e` to the audit log (its `id` is the log's to give).
    pub async fn audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO audit_log (at, actor, role, method, path, status, remote) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(to_millis(e.at))
            .bind(&e.actor)
            .bind(e.role.as_deref())
            .bind(&e.method)
            .bind(&e.path)
            .bind(e.status as i32)
            .bind(e.remote.as_deref())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The audit log, newest first, before id `before`, at most `limit` (1..=1000), only
    /// `actor`'s when given.
    pub async fn audit_log(
        &self,
        before: Option<i64>,
        actor: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = limit.clamp(1, 1000);
        on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::<Db>::new(
                "SELECT id, at, actor, role, method, path, status, remote FROM audit_log WHERE 1=1",
            );
            if let Some(b) = before {
                q.push(" AND id < ").push_bind(b);
            }
            if let Some(a) = actor {
                q.push(" AND actor = ").push_bind(a.to_owned());
            }
            q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
            let rows = q.build().fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    Ok(AuditEntry {
                        id: r.try_get("id")?,
                        at: from_millis(r.try_get("at")?),
                        actor: r.try_get("actor")?,
                        role: r.try_get("role")?,
                        method: r.try_get("method")?,
                        path: r.try_get("path")?,
                        status: i64::from(r.try_get::<i32, _>("status")?),
                        remote: r.try_get("remote")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::Db)
        })
    }
}
