//! What the monthly report reads (domain::report computes it).

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError, on_pool, push_scope};
use crate::clock::{from_millis, to_millis};
use crate::domain::report::{AlertFacts, RecordFacts};

impl Store {
    /// What the monthly report counts: alerts opened in `[from, to)`, and service records
    /// checked in, checked out or followed up in it, of residents of `regions` when given.
    pub async fn report_facts(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        regions: Option<&[String]>,
    ) -> Result<(Vec<AlertFacts>, Vec<RecordFacts>), StoreError> {
        let (from, to) = (to_millis(from), to_millis(to));
        let t = |v: Option<i64>| v.map(from_millis);
        on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::<Db>::new(
                "SELECT kind, severity, opened_at, acknowledged_at FROM alerts WHERE opened_at >= ",
            );
            q.push_bind(from).push(" AND opened_at < ").push_bind(to);
            push_scope!(q, resident "resident_id", regions);
            let alerts = q
                .build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(AlertFacts {
                        kind: r.try_get("kind")?,
                        severity: r.try_get("severity")?,
                        opened_at: from_millis(r.try_get("opened_at")?),
                        acknowledged_at: t(r.try_get("acknowledged_at")?),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let mut q = sqlx::QueryBuilder::<Db>::new(
                "SELECT r.provider, a.opened_at AS alert_opened_at, r.check_in_at, r.check_out_at, \
                 r.items, r.rating, r.follow_up_at FROM service_records r \
                 LEFT JOIN alerts a ON a.id = r.alert_id WHERE (",
            );
            for (i, column) in ["r.check_in_at", "r.check_out_at", "r.follow_up_at"].iter().enumerate() {
                if i > 0 {
                    q.push(" OR ");
                }
                q.push("(").push(*column).push(" >= ").push_bind(from)
                    .push(" AND ").push(*column).push(" < ").push_bind(to).push(")");
            }
            q.push(")");
            push_scope!(q, resident "r.resident_id", regions);
            let records = q
                .build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    let items: String = r.try_get("items")?;
                    Ok(RecordFacts {
                        provider: r.try_get("provider")?,
                        alert_opened_at: t(r.try_get("alert_opened_at")?),
                        check_in_at: t(r.try_get("check_in_at")?),
                        check_out_at: t(r.try_get("check_out_at")?),
                        items: serde_json::from_str(&items).unwrap_or_default(),
                        rating: r.try_get("rating")?,
                        follow_up_at: t(r.try_get("follow_up_at")?),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            Ok((alerts, records))
        })
    }
}
