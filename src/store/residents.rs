//! Residents and suppressions storage (CONTRACT.md "Residents and suppressions").

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, on_pool};
use crate::clock::{from_millis, to_millis};
use crate::domain::card::Card;
use crate::domain::care::{Resident, Suppression};

const RESIDENT_COLUMNS: &str =
    "id, name, region, time_zone, labels, thresholds, id_number, card, created_at, updated_at";

const SUPPRESSION_COLUMNS: &str =
    "id, resident_id, device_id, kinds, reason, author, created_at, until_at, suppressed_count";

/// A resident as stored: the resident and when it was first and last written.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ResidentRecord {
    /// The resident (its fields appear at the top level of the JSON).
    #[serde(flatten)]
    pub resident: Resident,
    /// The card: the ID-card number, phones, addresses, contacts, health.
    pub card: Card,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last replaced.
    pub updated_at: DateTime<Utc>,
}

/// Reads a JSON object column; a value that is not the expected object (never written by
/// this engine) reads as empty rather than failing every listing.
fn json_map<V: serde::de::DeserializeOwned>(text: &str) -> BTreeMap<String, V> {
    serde_json::from_str(text).unwrap_or_default()
}

fn resident_from_row<R: Row>(r: &R) -> Result<ResidentRecord, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    // A card this engine did not write reads as empty rather than failing every listing.
    let mut card: Card = serde_json::from_str(&r.try_get::<String, _>("card")?).unwrap_or_default();
    card.id_number = r.try_get("id_number")?;
    Ok(ResidentRecord {
        resident: Resident {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            region: r.try_get("region")?,
            time_zone: r.try_get("time_zone")?,
            labels: json_map(&r.try_get::<String, _>("labels")?),
            thresholds: json_map(&r.try_get::<String, _>("thresholds")?),
        },
        card,
        created_at: from_millis(r.try_get("created_at")?),
        updated_at: from_millis(r.try_get("updated_at")?),
    })
}

fn suppression_from_row<R: Row>(r: &R) -> Result<Suppression, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let kinds: Option<String> = r.try_get("kinds")?;
    Ok(Suppression {
        id: r.try_get("id")?,
        resident_id: r.try_get("resident_id")?,
        device_id: r.try_get("device_id")?,
        // An unreadable list must not widen the suppression to every kind: it covers none.
        kinds: kinds.map(|k| serde_json::from_str(&k).unwrap_or_default()),
        reason: r.try_get("reason")?,
        author: r.try_get("author")?,
        created_at: from_millis(r.try_get("created_at")?),
        until: from_millis(r.try_get("until_at")?),
        suppressed_count: r.try_get("suppressed_count")?,
    })
}

/// Inserts or updates one resident and its card inside transaction `$tx`; evaluates to
/// `true` when the row was created. Shared by the single write and the template import.
macro_rules! put_resident_in {
    ($tx:expr, $r:expr, $card:expr, $at:expr) => {{
        let r: &Resident = $r;
        let card: &Card = $card;
        let at: i64 = $at;
        let labels = serde_json::to_string(&r.labels).unwrap_or_else(|_| "{}".into());
        let thresholds = serde_json::to_string(&r.thresholds).unwrap_or_else(|_| "{}".into());
        let id_number = card.id_number.clone();
        // The number has a column of its own (unique, indexed); the JSON keeps the rest.
        let rest = serde_json::to_string(&Card { id_number: None, ..card.clone() })
            .unwrap_or_else(|_| "{}".into());
        if let Some(n) = &id_number {
            let holder: Option<String> =
                sqlx::query_scalar("SELECT id FROM residents WHERE id_number = $1 AND id <> $2")
                    .bind(n)
                    .bind(&r.id)
                    .fetch_optional(&mut *$tx)
                    .await?;
            if let Some(holder) = holder {
                return Err(StoreError::IdNumberTaken { resident: r.id.clone(), holder });
            }
        }
        // Insert-or-nothing then update, rather than one upsert: it tells created from
        // updated on both backends, and two concurrent PUTs still end as one row.
        let inserted = sqlx::query(
            "INSERT INTO residents (id, name, region, time_zone, labels, thresholds, id_number, card, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&r.id)
        .bind(&r.name)
        .bind(&r.region)
        .bind(&r.time_zone)
        .bind(&labels)
        .bind(&thresholds)
        .bind(id_number.as_deref())
        .bind(&rest)
        .bind(at)
        .execute(&mut *$tx)
        .await
        .map_err(|e| id_taken(e, &r.id))?
        .rows_affected();
        if inserted == 0 {
            sqlx::query(
                "UPDATE residents SET name = $2, region = $3, time_zone = $4, labels = $5, thresholds = $6, \
                 id_number = $7, card = $8, updated_at = $9 WHERE id = $1",
            )
            .bind(&r.id)
            .bind(&r.name)
            .bind(&r.region)
            .bind(&r.time_zone)
            .bind(&labels)
            .bind(&thresholds)
            .bind(id_number.as_deref())
            .bind(&rest)
            .bind(at)
            .execute(&mut *$tx)
            .await
            .map_err(|e| id_taken(e, &r.id))?;
        }
        inserted == 1
    }};
}

/// A unique violation on the ID-card number: a concurrent write gave it to another resident.
fn id_taken(e: sqlx::Error, resident: &str) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::IdNumberTaken {
            resident: resident.to_owned(),
            holder: String::new(),
        },
        _ => StoreError::Db(e),
    }
}

impl Store {
    /// Creates or replaces a resident and its card (validated by the caller); `true` when it
    /// was created. An ID-card number another resident holds is refused (`IdNumberTaken`):
    /// one person, one record, whatever the region.
    pub async fn put_resident(
        &self,
        r: &Resident,
        card: &Card,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let created = put_resident_in!(tx, r, card, to_millis(now));
            tx.commit().await?;
            Ok(created)
        })
    }

    /// Which resident holds ID-card number `id_number`, if any.
    pub async fn resident_by_id_number(
        &self,
        id_number: &str,
    ) -> Result<Option<ResidentRecord>, StoreError> {
        let row = on_pool!(self, pool => {
            match sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {RESIDENT_COLUMNS} FROM residents WHERE id_number = $1")))
                .bind(id_number)
                .fetch_optional(pool)
                .await?
            {
                Some(r) => Some(resident_from_row(&r)?),
                None => None,
            }
        });
        Ok(row)
    }

    /// A resident.
    pub async fn get_resident(&self, id: &str) -> Result<Option<ResidentRecord>, StoreError> {
        let row = on_pool!(self, pool => {
            match sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {RESIDENT_COLUMNS} FROM residents WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await?
            {
                Some(r) => Some(resident_from_row(&r)?),
                None => None,
            }
        });
        Ok(row)
    }

    /// Deletes a resident. Refused (`ResidentInUse`) while registered devices point at it:
    /// they would go on reporting for a resident nobody can see, and every rule selecting
    /// residents would silently drop them. The resident's active suppressions end with it
    /// (`ended_by` = `by`); their ids are returned.
    pub async fn delete_resident(
        &self,
        id: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>, StoreError> {
        let at = to_millis(now);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM residents WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(StoreError::ResidentNotFound(id.to_owned()));
            }
            let devices: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM devices WHERE registered = 1 AND resident_id = $1 ORDER BY id",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            if !devices.is_empty() {
                return Err(StoreError::ResidentInUse { id: id.to_owned(), devices });
            }
            sqlx::query("DELETE FROM residents WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let ended: Vec<i64> = sqlx::query_scalar(
                "UPDATE suppressions SET ended_at = $2, ended_by = $3 \
                 WHERE resident_id = $1 AND ended_at IS NULL AND until_at > $2 RETURNING id",
            )
            .bind(id)
            .bind(at)
            .bind(by)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(ended)
        })
    }

    /// Residents by id, after `after`, at most `limit` (1..=5000), of `regions` only when
    /// given; with the cursor of the next
    /// page, `None` on the last.
    pub async fn list_residents(
        &self,
        after: Option<&str>,
        limit: i64,
        regions: Option<&[String]>,
    ) -> Result<(Vec<ResidentRecord>, Option<String>), StoreError> {
        let limit = limit.clamp(1, 5000);
        let mut rows = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::<Db>::new(format!("SELECT {RESIDENT_COLUMNS} FROM residents WHERE 1=1"));
            if let Some(a) = after {
                q.push(" AND id > ").push_bind(a.to_owned());
            }
            super::push_scope!(q, "region", regions);
            // One more than asked: whether there is a next page, without a second query.
            q.push(" ORDER BY id LIMIT ").push_bind(limit + 1);
            q.build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(resident_from_row)
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        let next = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.resident.id.clone())
        } else {
            None
        };
        Ok((rows, next))
    }

    /// Every resident, to load the in-memory registry at start.
    pub async fn all_residents(&self) -> Result<Vec<Resident>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {RESIDENT_COLUMNS} FROM residents ORDER BY id")))
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| resident_from_row(r).map(|r| r.resident))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Stores a new suppression (validated by the caller; its `id` and `suppressed_count`
    /// are ignored) and returns its id.
    pub async fn create_suppression(&self, s: &Suppression) -> Result<i64, StoreError> {
        let kinds = s
            .kinds
            .as_ref()
            .map(|k| serde_json::to_string(k).unwrap_or_else(|_| "[]".into()));
        let id = on_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO suppressions (resident_id, device_id, kinds, reason, author, created_at, until_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(&s.resident_id)
            .bind(&s.device_id)
            .bind(kinds)
            .bind(&s.reason)
            .bind(&s.author)
            .bind(to_millis(s.created_at))
            .bind(to_millis(s.until))
            .fetch_one(pool)
            .await?
        });
        Ok(id)
    }

    /// The suppressions active at `now` (not ended, `until` after `now`), by id, with the
    /// matches each kept from opening an alert.
    pub async fn active_suppressions(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<Suppression>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {SUPPRESSION_COLUMNS} FROM suppressions WHERE ended_at IS NULL AND until_at > $1 ORDER BY id"
            )))
            .bind(to_millis(now))
            .fetch_all(pool)
            .await?
            .iter()
            .map(suppression_from_row)
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Ends an active suppression early, recording who did it; `SuppressionNotFound` when
    /// there is no such suppression or it is no longer active (ended, or past its `until`).
    pub async fn end_suppression(
        &self,
        id: i64,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let n = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE suppressions SET ended_at = $2, ended_by = $3 \
                 WHERE id = $1 AND ended_at IS NULL AND until_at > $2",
            )
            .bind(id)
            .bind(to_millis(now))
            .bind(by)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if n == 0 {
            return Err(StoreError::SuppressionNotFound(id));
        }
        Ok(())
    }

    /// Marks the suppressions whose `until` has passed as ended by expiry, each exactly once
    /// (a conditional update; also those that ended while the engine was down), and returns
    /// them as (id, until).
    pub async fn expire_suppressions(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(i64, DateTime<Utc>)>, StoreError> {
        let rows: Vec<(i64, i64)> = on_pool!(self, pool => {
            sqlx::query_as(
                "UPDATE suppressions SET ended_at = until_at, ended_by = 'expired' \
                 WHERE ended_at IS NULL AND until_at <= $1 RETURNING id, until_at",
            )
            .bind(to_millis(now))
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, until)| (id, crate::clock::from_millis(until)))
            .collect())
    }
}

impl Store {
    /// The residents holding any of `id_numbers`, by number.
    pub async fn residents_by_id_numbers(
        &self,
        id_numbers: &[String],
    ) -> Result<std::collections::HashMap<String, ResidentRecord>, StoreError> {
        let mut out = std::collections::HashMap::new();
        for chunk in id_numbers.chunks(500) {
            let rows = on_pool!(self, pool => {
                let mut q = sqlx::QueryBuilder::<Db>::new(format!(
                    "SELECT {RESIDENT_COLUMNS} FROM residents WHERE id_number IN ("
                ));
                let mut list = q.separated(", ");
                for n in chunk {
                    list.push_bind(n.clone());
                }
                list.push_unseparated(")");
                q.build()
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(resident_from_row)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
            for r in rows {
                if let Some(n) = r.card.id_number.clone() {
                    out.insert(n, r);
                }
            }
        }
        Ok(out)
    }

    /// Writes imported residents in one transaction: all of them or, on any error, none.
    pub async fn import_residents(
        &self,
        rows: &[(Resident, Card)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let at = to_millis(now);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for (r, card) in rows {
                let _created = put_resident_in!(tx, r, card, at);
            }
            tx.commit().await?;
            Ok(())
        })
    }
}
