//! The rows every message writes — its event, its dedup key, its device's last-seen time —
//! in as few statements as each database does best. PostgreSQL takes each column as one array
//! (`UNNEST`): one statement text per table, prepared once per connection, whatever the batch
//! size. A multi-row `VALUES` list is a new statement for every row count, parsed and planned
//! again and again (sqlx keeps 100 per connection), and binds five to eleven parameters per
//! row. SQLite has no arrays; it keeps `VALUES` lists within its parameter limit.

use std::future::Future;

use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

use crate::clock::to_millis;
use crate::event::Event;

/// Rows per `VALUES` statement on SQLite: 11 columns × 1000 stays below its 32 766 parameters.
const ROWS_PER_STATEMENT: usize = 1000;

/// A dedup key to record: (device, key, seen_at, valid_until, expires_at).
pub(super) type KeyRow<'a> = (&'a str, &'a str, i64, i64, i64);

/// A device seen in the batch: (id, last seen ms (0: only a retained copy), activity JSON).
pub(super) type SeenRow<'a> = (&'a str, i64, Option<&'a str>);

/// What to keep of a device row that exists: the later last-seen, the first first-seen, and
/// the activity merged per type (`$merge` is the database's JSON merge of the two texts): newer
/// types' times replace older ones, the others stay, as batches of one device commit in its
/// shard's order.
macro_rules! devices_conflict {
    ($merge:expr) => {
        concat!(
            " ON CONFLICT (id) DO UPDATE SET last_seen = CASE WHEN excluded.last_seen > devices.last_seen \
             THEN excluded.last_seen ELSE devices.last_seen END, \
             first_seen = CASE WHEN devices.first_seen = 0 THEN excluded.first_seen ELSE devices.first_seen END, \
             activity = CASE WHEN excluded.activity IS NULL THEN devices.activity \
             WHEN devices.activity IS NULL THEN excluded.activity ELSE ",
            $merge,
            " END"
        )
    };
}

fn fields_json(e: &Event) -> String {
    serde_json::to_string(&e.fields).unwrap_or_else(|_| "{}".into())
}

/// An event's flaws as stored: a JSON array, or NULL when there is none.
pub(super) fn flaws_json(e: &Event) -> Option<String> {
    (!e.flaws.is_empty()).then(|| serde_json::to_string(&e.flaws).unwrap_or_default())
}

/// The bulk writes of a batch, per database.
pub(super) trait Bulk: sqlx::Database {
    /// Inserts `events` in order (their ids follow it), committed at `at` ms.
    fn insert_events(
        conn: &mut Self::Connection,
        events: &[&Event],
        at: i64,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Records `keys` where no row stands in their way (`condition` says when an existing row
    /// no longer does); returns the (device, key) pairs written, i.e. the new ones.
    fn record_keys(
        conn: &mut Self::Connection,
        keys: &[KeyRow<'_>],
        condition: &'static str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, sqlx::Error>> + Send;

    /// Creates or updates the rows of the devices seen (sorted by id: concurrent shards lock
    /// them in one order).
    fn devices_seen(
        conn: &mut Self::Connection,
        devices: &[SeenRow<'_>],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

impl Bulk for Postgres {
    async fn insert_events(
        conn: &mut sqlx::PgConnection,
        events: &[&Event],
        at: i64,
    ) -> Result<(), sqlx::Error> {
        if events.is_empty() {
            return Ok(());
        }
        // UNNEST of several arrays zips them in order, and the insert takes the rows in that
        // order: ids follow receive order.
        sqlx::query(
            "INSERT INTO events (device_id, type, fields, device_ts, seq, received_at, committed_at, protocol, origin, dedup_key, flaws) \
             SELECT d, t, f, dts, s, r, $11, p, o, k, fl FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], \
             $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[]) AS u(d, t, f, dts, s, r, p, o, k, fl)",
        )
        .bind(events.iter().map(|e| e.device_id.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_type.name()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| fields_json(e)).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.device_time.map(to_millis)).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.seq).collect::<Vec<_>>())
        .bind(events.iter().map(|e| to_millis(e.received_at)).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.source.protocol.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.source.origin.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.dedup_key.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| flaws_json(e)).collect::<Vec<_>>())
        .bind(at)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn record_keys(
        conn: &mut sqlx::PgConnection,
        keys: &[KeyRow<'_>],
        condition: &'static str,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "INSERT INTO dedup (device_id, key, seen_at, valid_until, expires_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[]) \
             ON CONFLICT (device_id, key) DO UPDATE SET seen_at = excluded.seen_at, valid_until = excluded.valid_until, \
             expires_at = excluded.expires_at WHERE {condition} RETURNING device_id, key"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.3).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.4).collect::<Vec<_>>())
            .fetch_all(conn)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn devices_seen(
        conn: &mut sqlx::PgConnection,
        devices: &[SeenRow<'_>],
    ) -> Result<(), sqlx::Error> {
        if devices.is_empty() {
            return Ok(());
        }
        sqlx::query(concat!(
            "INSERT INTO devices (id, first_seen, last_seen, activity) \
             SELECT d, s, s, a FROM UNNEST($1::text[], $2::int8[], $3::text[]) AS u(d, s, a)",
            devices_conflict!("(devices.activity::jsonb || excluded.activity::jsonb)::text")
        ))
        .bind(devices.iter().map(|d| d.0).collect::<Vec<_>>())
        .bind(devices.iter().map(|d| d.1).collect::<Vec<_>>())
        .bind(devices.iter().map(|d| d.2).collect::<Vec<_>>())
        .execute(conn)
        .await?;
        Ok(())
    }
}

impl Bulk for Sqlite {
    async fn insert_events(
        conn: &mut sqlx::SqliteConnection,
        events: &[&Event],
        at: i64,
    ) -> Result<(), sqlx::Error> {
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO events (device_id, type, fields, device_ts, seq, received_at, committed_at, protocol, origin, dedup_key, flaws) ",
            );
            q.push_values(chunk, |mut b, e| {
                b.push_bind(e.device_id.clone())
                    .push_bind(e.event_type.name())
                    .push_bind(fields_json(e))
                    .push_bind(e.device_time.map(to_millis))
                    .push_bind(e.seq)
                    .push_bind(to_millis(e.received_at))
                    .push_bind(at)
                    .push_bind(e.source.protocol.clone())
                    .push_bind(e.source.origin.clone())
                    .push_bind(e.dedup_key.as_str().to_owned())
                    .push_bind(flaws_json(e));
            });
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn record_keys(
        conn: &mut sqlx::SqliteConnection,
        keys: &[KeyRow<'_>],
        condition: &'static str,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        let mut fresh = Vec::new();
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO dedup (device_id, key, seen_at, valid_until, expires_at) ",
            );
            q.push_values(chunk, |mut b, (d, k, seen, valid, exp)| {
                b.push_bind(d.to_string())
                    .push_bind(k.to_string())
                    .push_bind(*seen)
                    .push_bind(*valid)
                    .push_bind(*exp);
            });
            q.push(
                " ON CONFLICT (device_id, key) DO UPDATE SET seen_at = excluded.seen_at, valid_until = excluded.valid_until, \
                 expires_at = excluded.expires_at WHERE ",
            )
            .push(condition)
            .push(" RETURNING device_id, key");
            for row in q.build().fetch_all(&mut *conn).await? {
                fresh.push((row.try_get(0)?, row.try_get(1)?));
            }
        }
        Ok(fresh)
    }

    async fn devices_seen(
        conn: &mut sqlx::SqliteConnection,
        devices: &[SeenRow<'_>],
    ) -> Result<(), sqlx::Error> {
        for chunk in devices.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO devices (id, first_seen, last_seen, activity) ",
            );
            q.push_values(chunk, |mut b, (d, at, seen)| {
                b.push_bind(d.to_string())
                    .push_bind(*at)
                    .push_bind(*at)
                    .push_bind(seen.map(str::to_owned));
            });
            q.push(devices_conflict!(
                "json_patch(devices.activity, excluded.activity)"
            ));
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }
}
