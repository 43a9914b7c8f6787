//! Service providers and workers (migration 0011).

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError, on_pool, push_scope};
use crate::clock::to_millis;
use crate::domain::provider::{Provider, Worker};

impl Store {
    /// Creates or replaces a provider (validated by the caller); `true` when created.
    pub async fn put_provider(&self, p: &Provider, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let at = to_millis(now);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO providers (id, name, region, phone, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&p.id)
            .bind(&p.name)
            .bind(&p.region)
            .bind(p.phone.as_deref())
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                sqlx::query("UPDATE providers SET name = $2, region = $3, phone = $4, updated_at = $5 WHERE id = $1")
                    .bind(&p.id)
                    .bind(&p.name)
                    .bind(&p.region)
                    .bind(p.phone.as_deref())
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(inserted == 1)
        })
    }

    /// Providers by id, of `regions` only when given.
    pub async fn list_providers(
        &self,
        id: Option<&str>,
        regions: Option<&[String]>,
    ) -> Result<Vec<Provider>, StoreError> {
        on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::<Db>::new("SELECT id, name, region, phone FROM providers WHERE 1=1");
            if let Some(id) = id {
                q.push(" AND id = ").push_bind(id.to_owned());
            }
            push_scope!(q, "region", regions);
            q.push(" ORDER BY id LIMIT 5000");
            let rows = q.build().fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    Ok(Provider {
                        id: r.try_get("id")?,
                        name: r.try_get("name")?,
                        region: r.try_get("region")?,
                        phone: r.try_get("phone")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::Db)
        })
    }

    /// A provider.
    pub async fn get_provider(&self, id: &str) -> Result<Option<Provider>, StoreError> {
        Ok(self.list_providers(Some(id), None).await?.pop())
    }

    /// Creates or replaces a worker (validated by the caller, its provider existing); `true`
    /// when created.
    pub async fn put_worker(&self, w: &Worker, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let at = to_millis(now);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO workers (id, provider_id, name, phone, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&w.id)
            .bind(&w.provider_id)
            .bind(&w.name)
            .bind(w.phone.as_deref())
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                sqlx::query("UPDATE workers SET provider_id = $2, name = $3, phone = $4, updated_at = $5 WHERE id = $1")
                    .bind(&w.id)
                    .bind(&w.provider_id)
                    .bind(&w.name)
                    .bind(w.phone.as_deref())
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(inserted == 1)
        })
    }

    /// Workers by id, of one provider or one id when given, of providers of `regions` only
    /// when given. Each with its provider's region.
    pub async fn list_workers(
        &self,
        provider: Option<&str>,
        id: Option<&str>,
        regions: Option<&[String]>,
    ) -> Result<Vec<(Worker, String)>, StoreError> {
        on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::<Db>::new(
                "SELECT w.id, w.provider_id, w.name, w.phone, p.region FROM workers w \
                 JOIN providers p ON p.id = w.provider_id WHERE 1=1",
            );
            if let Some(p) = provider {
                q.push(" AND w.provider_id = ").push_bind(p.to_owned());
            }
            if let Some(id) = id {
                q.push(" AND w.id = ").push_bind(id.to_owned());
            }
            push_scope!(q, "p.region", regions);
            q.push(" ORDER BY w.id LIMIT 5000");
            let rows = q.build().fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    Ok((
                        Worker {
                            id: r.try_get("id")?,
                            provider_id: r.try_get("provider_id")?,
                            name: r.try_get("name")?,
                            phone: r.try_get("phone")?,
                        },
                        r.try_get("region")?,
                    ))
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::Db)
        })
    }
}
