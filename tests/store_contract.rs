//! The store contract, proved against every backend.
//!
//! Each case below is written once, as `async fn <case>(store: Store)`, and run twice by
//! [`contract!`]: `sqlite_<case>` against a fresh SQLite file in a temporary directory, and
//! `postgres_<case>` against a fresh PostgreSQL database (`anxin_test_<random hex>`, created
//! on the server named by `ANXIN_TEST_POSTGRES_URL` and dropped afterwards, also when the case
//! fails). Without that variable the PostgreSQL half is skipped locally, and fails under
//! `CI=true`, so CI can never pass without having run it.
//!
//! Events are built from real canonical payloads (`protocol::canonical::decode`) and alert hits
//! from the shipped `config/rules.toml`, so what is proved is what the engine writes. Time is
//! injected (`clock::ManualClock`): nothing asserted depends on the wall clock, and there are no
//! sleeps.
//!
//! What the suite proves, on both backends:
//!
//! 1. an SOS opens one critical open alert (count 1, timeline `opened`), stores the event and
//!    records the device;
//! 2. a redelivered SOS (same `seq` and `ts`, in a later batch or the same batch) is not
//!    counted, is reported as a duplicate and goes on the timeline as `duplicate`;
//! 3. new presses, and a restarted device starting again at `seq` 1, count on the open alert;
//! 4. without `seq`/`ts`, an identical payload is a new press unless the broker flags it (DUP);
//! 5. dedup keys expire after the dedup window, and `purge_dedup` removes expired keys;
//! 6. the database itself refuses a second unresolved alert for one device and rule;
//! 7. acknowledge and resolve are conditional (`Conflict`, `NotFound`, `Validation`), and a
//!    press after resolution opens a new alert;
//! 8. `list_alerts` orders most urgent first, then oldest first, pages with its cursor so that
//!    every alert is seen exactly once, and filters by status, device and kind;
//! 9. rejections are stored with reason, detail and raw bytes, in the same batch as events;
//! 10. a cancel on the device goes on the timeline of its unresolved alerts and resolves none;
//! 11. a batch that fails stores nothing of itself (events, alerts, timeline, devices, dedup
//!     keys, rejections);
//! 12. events of one device are stored in receive order;
//! 13. a batch of more rows than one SQL statement carries commits whole, duplicates included;
//! 14. residents are created then replaced (told apart), read, paged by id exactly once, and
//!     deleted only while no registered device points at them, ending their suppressions;
//! 15. suppressions are stored with their scope, kinds, author and end, listed while active
//!     with the `suppressed_count` the batch commit adds to, and ended early exactly once;
//! 16. a device's `report_interval` is stored in seconds and read back in its largest unit;
//! 17. calls and notes go on the timeline with their actor (calls only until resolved, with
//!     their `to` and `outcome` checked), and of many operators claiming one alert at once
//!     exactly one wins, the others told who holds it;
//! 18. the notifications outbox: a critical opening and an escalation each write a
//!     notification in their batch (a high alert none), fanned out once per endpoint; a claim
//!     leases a delivery so a second claim misses it until the lease ends; delivered and dead
//!     are conditional; a dead letter is re-driven once; only fully delivered notifications
//!     are purged; deliveries to endpoints no longer configured become dead letters.
//!
//! Run: `ANXIN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test --test
//! store_contract`.

use std::future::Future;
use std::path::Path;

use anxin::clock::{Clock, ManualClock, to_millis};
use anxin::domain::care::{Resident, Suppression};
use anxin::event::{Event, EventType};
use anxin::protocol::RejectReason;
use anxin::protocol::canonical::decode;
use anxin::registry::Registration;
use anxin::rules::RuleSet;
use anxin::store::{
    Alert, AlertChange, AlertFilter, BatchOutcome, Deadline, DeadlineChange, DeadlineKind,
    MAX_NOTE_CHARS, RuleHit, Store, StoreError, Table, TimelineEntry, WriteBatch, WriteItem,
};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// The admin URL of the PostgreSQL server the PostgreSQL half runs against.
const POSTGRES_URL_VAR: &str = "ANXIN_TEST_POSTGRES_URL";

/// Runs `case` against a fresh SQLite database file.
async fn on_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("anxin.db").display());
    let store = Store::connect(&url, 4)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    assert_eq!(store.backend(), "sqlite");
    case(store.clone()).await;
    store.close().await;
}

/// Runs `case` against a fresh PostgreSQL database, dropped afterwards whatever happens.
async fn on_postgres<F, Fut>(case: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let admin = match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "{POSTGRES_URL_VAR} is not set, but CI=true: the PostgreSQL half of the store \
             contract must run in CI (set {POSTGRES_URL_VAR} to an admin URL such as \
             postgres://postgres@127.0.0.1:5432/postgres)"
        ),
        _ => {
            eprintln!("{POSTGRES_URL_VAR} is not set: skipping the PostgreSQL half");
            return;
        }
    };
    let db = TempPgDatabase::create(&admin).await;
    let store = Store::connect(&db.url, 4)
        .await
        .unwrap_or_else(|e| panic!("connect to database {}: {e}", db.name));
    assert_eq!(store.backend(), "postgres");
    case(store.clone()).await;
    store.close().await;
    drop(db);
}

/// A PostgreSQL database that exists for one test. Dropping the guard drops the database
/// (`WITH (FORCE)`), on a fresh thread with its own runtime so that it also works while a
/// failing test unwinds inside the test's runtime.
struct TempPgDatabase {
    admin: String,
    name: String,
    url: String,
}

impl TempPgDatabase {
    async fn create(admin: &str) -> TempPgDatabase {
        use sqlx::Connection;
        let name = format!("anxin_test_{:016x}", rand::random::<u64>());
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .unwrap_or_else(|e| panic!("connect to {POSTGRES_URL_VAR}={admin}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        // From here on the guard owns the database.
        let db = TempPgDatabase {
            admin: admin.to_owned(),
            url: database_url(admin, &name),
            name,
        };
        let _ = conn.close().await;
        db
    }
}

impl Drop for TempPgDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                use sqlx::Connection;
                match sqlx::PgConnection::connect(&admin).await {
                    Ok(mut conn) => {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
                            .execute(&mut conn)
                            .await
                        {
                            eprintln!("could not drop test database {name}: {e}");
                        }
                        let _ = conn.close().await;
                    }
                    Err(e) => eprintln!("could not drop test database {name}: {e}"),
                }
            });
        });
        let _ = dropper.join();
    }
}

/// The admin URL with its database replaced by `name` (query parameters kept).
fn database_url(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority..].find('/') {
        Some(i) => &base[..authority + i],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// Writes the two `#[tokio::test]` wrappers, `sqlite_*` and `postgres_*`, of each case.
macro_rules! contract {
    ($($case:ident => $sqlite:ident, $postgres:ident;)*) => {$(
        #[tokio::test]
        async fn $sqlite() {
            on_sqlite($case).await;
        }

        #[tokio::test]
        async fn $postgres() {
            on_postgres($case).await;
        }
    )*};
}

contract! {
    the_monthly_report_counts_a_known_month
        => sqlite_the_monthly_report_counts_a_known_month,
           postgres_the_monthly_report_counts_a_known_month;
    the_outbox_writes_fans_out_claims_once_and_keeps_what_is_undelivered
        => sqlite_the_outbox_writes_fans_out_claims_once_and_keeps_what_is_undelivered,
           postgres_the_outbox_writes_fans_out_claims_once_and_keeps_what_is_undelivered;
    calls_and_notes_go_on_the_timeline_and_one_claim_wins
        => sqlite_calls_and_notes_go_on_the_timeline_and_one_claim_wins,
           postgres_calls_and_notes_go_on_the_timeline_and_one_claim_wins;
    absences_keep_named_types_and_any_message_from_last_seen
        => sqlite_absences_keep_named_types_and_any_message_from_last_seen,
           postgres_absences_keep_named_types_and_any_message_from_last_seen;
    the_last_change_of_each_deadline_in_a_batch_stands
        => sqlite_the_last_change_of_each_deadline_in_a_batch_stands,
           postgres_the_last_change_of_each_deadline_in_a_batch_stands;
    a_broker_flagged_redelivery_of_a_bare_payload_is_recognised_for_the_whole_dedup_window
        => sqlite_a_broker_flagged_redelivery_of_a_bare_payload_is_recognised_for_the_whole_dedup_window,
           postgres_a_broker_flagged_redelivery_of_a_bare_payload_is_recognised_for_the_whole_dedup_window;
    an_sos_opens_one_critical_alert_and_records_the_event_and_device
        => sqlite_an_sos_opens_one_critical_alert_and_records_the_event_and_device,
           postgres_an_sos_opens_one_critical_alert_and_records_the_event_and_device;
    a_redelivered_sos_is_not_counted_in_a_later_or_the_same_batch
        => sqlite_a_redelivered_sos_is_not_counted_in_a_later_or_the_same_batch,
           postgres_a_redelivered_sos_is_not_counted_in_a_later_or_the_same_batch;
    new_presses_and_a_restarted_device_count_on_the_open_alert
        => sqlite_new_presses_and_a_restarted_device_count_on_the_open_alert,
           postgres_new_presses_and_a_restarted_device_count_on_the_open_alert;
    a_payload_without_seq_or_ts_is_a_new_press_unless_the_broker_flags_it
        => sqlite_a_payload_without_seq_or_ts_is_a_new_press_unless_the_broker_flags_it,
           postgres_a_payload_without_seq_or_ts_is_a_new_press_unless_the_broker_flags_it;
    a_retried_batch_is_committed_once_and_reports_the_first_attempts_changes
        => sqlite_a_retried_batch_is_committed_once_and_reports_the_first_attempts_changes,
           postgres_a_retried_batch_is_committed_once_and_reports_the_first_attempts_changes;
    a_dup_copy_matches_only_its_own_first_copy
        => sqlite_a_dup_copy_matches_only_its_own_first_copy,
           postgres_a_dup_copy_matches_only_its_own_first_copy;
    dedup_keys_expire_and_purge_removes_expired_keys
        => sqlite_dedup_keys_expire_and_purge_removes_expired_keys,
           postgres_dedup_keys_expire_and_purge_removes_expired_keys;
    the_database_enforces_one_unresolved_alert_per_device_and_rule
        => sqlite_the_database_enforces_one_unresolved_alert_per_device_and_rule,
           postgres_the_database_enforces_one_unresolved_alert_per_device_and_rule;
    acknowledge_and_resolve_are_conditional_and_a_later_sos_opens_a_new_alert
        => sqlite_acknowledge_and_resolve_are_conditional_and_a_later_sos_opens_a_new_alert,
           postgres_acknowledge_and_resolve_are_conditional_and_a_later_sos_opens_a_new_alert;
    list_alerts_orders_most_urgent_first_pages_exactly_once_and_filters
        => sqlite_list_alerts_orders_most_urgent_first_pages_exactly_once_and_filters,
           postgres_list_alerts_orders_most_urgent_first_pages_exactly_once_and_filters;
    rejections_are_stored_with_reason_detail_and_raw_bytes_alongside_events
        => sqlite_rejections_are_stored_with_reason_detail_and_raw_bytes_alongside_events,
           postgres_rejections_are_stored_with_reason_detail_and_raw_bytes_alongside_events;
    a_cancel_is_recorded_on_unresolved_alerts_without_resolving_them
        => sqlite_a_cancel_is_recorded_on_unresolved_alerts_without_resolving_them,
           postgres_a_cancel_is_recorded_on_unresolved_alerts_without_resolving_them;
    a_failed_batch_stores_nothing_of_itself
        => sqlite_a_failed_batch_stores_nothing_of_itself,
           postgres_a_failed_batch_stores_nothing_of_itself;
    events_of_one_device_are_stored_in_receive_order
        => sqlite_events_of_one_device_are_stored_in_receive_order,
           postgres_events_of_one_device_are_stored_in_receive_order;
    a_batch_larger_than_one_statement_commits_whole
        => sqlite_a_batch_larger_than_one_statement_commits_whole,
           postgres_a_batch_larger_than_one_statement_commits_whole;
    residents_are_written_read_paged_and_deleted_only_without_devices
        => sqlite_residents_are_written_read_paged_and_deleted_only_without_devices,
           postgres_residents_are_written_read_paged_and_deleted_only_without_devices;
    suppressions_are_listed_while_active_counted_and_ended_once
        => sqlite_suppressions_are_listed_while_active_counted_and_ended_once,
           postgres_suppressions_are_listed_while_active_counted_and_ended_once;
    a_devices_report_interval_is_stored_and_read_back
        => sqlite_a_devices_report_interval_is_stored_and_read_back,
           postgres_a_devices_report_interval_is_stored_and_read_back;
}

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

const ROOT: &str = "anxin/v1";

/// How long after receipt the fixture commits a batch: keeps `opened_at` (commit time) and
/// `last_event_at` (receive time) distinguishable.
const COMMIT_LAG_MS: i64 = 250;

fn t0() -> DateTime<Utc> {
    at("2026-11-23T10:00:00Z")
}

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("a valid RFC 3339 time")
        .with_timezone(&Utc)
}

fn topic(device: &str) -> String {
    format!("{ROOT}/devices/{device}/events")
}

/// An SOS press as a device sends it, with its counter and clock.
fn sos(seq: i64, ts: &str) -> String {
    json!({ "type": "sos", "seq": seq, "ts": ts }).to_string()
}

/// A store, an injected clock and the shipped rules.
struct Fx {
    store: Store,
    clock: ManualClock,
    rules: RuleSet,
    dedup_window: Duration,
}

impl Fx {
    fn new(store: Store) -> Fx {
        let rules = RuleSet::parse(
            Path::new("config/rules.toml"),
            include_str!("../config/rules.toml"),
        )
        .expect("the shipped rules parse");
        Fx {
            store,
            clock: ManualClock::new(t0()),
            rules,
            dedup_window: Duration::hours(24),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn commit_time(&self) -> DateTime<Utc> {
        self.now() + Duration::milliseconds(COMMIT_LAG_MS)
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    fn hits(&self, event: &Event) -> Vec<RuleHit> {
        self.rules.hits(event)
    }

    /// Decodes one MQTT message received now into write items.
    fn message_on(&self, topic: &str, payload: &[u8]) -> Vec<WriteItem> {
        let received_at = self.now();
        decode(ROOT, topic, payload, received_at)
            .items
            .into_iter()
            .map(|item| match item {
                Ok(event) => {
                    let hits = self.hits(&event);
                    WriteItem::Event {
                        event,
                        hits,
                        clears: Vec::new(),
                    }
                }
                Err(rejection) => WriteItem::Rejected {
                    rejection,
                    origin: topic.to_owned(),
                    received_at,
                },
            })
            .collect()
    }

    fn message(&self, device: &str, payload: &str) -> Vec<WriteItem> {
        self.message_on(&topic(device), payload.as_bytes())
    }

    fn batch(&self, items: Vec<WriteItem>) -> WriteBatch {
        WriteBatch {
            items,
            dedup_window: self.dedup_window,
            redelivery_window: Duration::seconds(60),
            token: format!("{:032x}", rand::random::<u128>()),
            retry: false,
            deadlines: Vec::new(),
            suppressed: Vec::new(),
            activity: Vec::new(),
        }
    }

    async fn try_commit(&self, items: Vec<WriteItem>) -> Result<BatchOutcome, StoreError> {
        self.store
            .commit_batch(&self.batch(items), self.commit_time())
            .await
    }

    async fn commit(&self, items: Vec<WriteItem>) -> BatchOutcome {
        self.try_commit(items).await.expect("commit_batch")
    }

    /// Receives and commits one message from `device`.
    async fn send(&self, device: &str, payload: &str) -> BatchOutcome {
        self.commit(self.message(device, payload)).await
    }

    async fn alert(&self, id: i64) -> (Alert, Vec<TimelineEntry>) {
        self.store.get_alert(id).await.expect("get_alert")
    }

    async fn list(&self, filter: AlertFilter) -> Vec<Alert> {
        let (alerts, next) = self
            .store
            .list_alerts(&AlertFilter {
                limit: 1000,
                ..filter
            })
            .await
            .expect("list_alerts");
        assert_eq!(next, None, "a 1000-alert page holds every test alert");
        alerts
    }

    /// The one unresolved alert of `device` and `kind`.
    async fn unresolved(&self, device: &str, kind: &str) -> Alert {
        let mut alerts = self
            .list(AlertFilter {
                status: Some("open".into()),
                device_id: Some(device.into()),
                kind: Some(kind.into()),
                ..AlertFilter::default()
            })
            .await;
        assert_eq!(
            alerts.len(),
            1,
            "one unresolved {kind} alert for {device}: {alerts:?}"
        );
        alerts.remove(0)
    }

    async fn count(&self, table: Table) -> i64 {
        self.store.count(table).await.expect("count")
    }

    /// Rows of (events, alerts, devices, rejected).
    async fn counts(&self) -> (i64, i64, i64, i64) {
        (
            self.count(Table::Events).await,
            self.count(Table::Alerts).await,
            self.count(Table::Devices).await,
            self.count(Table::Rejected).await,
        )
    }
}

fn actions(timeline: &[TimelineEntry]) -> Vec<&str> {
    timeline.iter().map(|e| e.action.as_str()).collect()
}

fn outcome_counts(out: &BatchOutcome) -> (usize, usize, usize) {
    (out.accepted, out.duplicates, out.rejected)
}

fn change(alert: &Alert, action: &str) -> AlertChange {
    AlertChange {
        alert_id: alert.id,
        device_id: alert.device_id.clone(),
        kind: alert.kind.clone(),
        severity: alert.severity.clone(),
        action: action.to_owned(),
    }
}

/// Runs a statement directly on the pool, bypassing the façade.
async fn raw_execute(store: &Store, sql: &'static str) -> Result<u64, sqlx::Error> {
    match store {
        Store::Sqlite(pool) => sqlx::query(sql)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
        Store::Postgres(pool) => sqlx::query(sql)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
    }
}

/// Reads one integer directly from the pool.
async fn raw_i64(store: &Store, sql: &'static str) -> i64 {
    let n = match store {
        Store::Sqlite(pool) => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await,
        Store::Postgres(pool) => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await,
    };
    n.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// 1. An SOS opens one critical open alert of kind `sos` with count 1 and a timeline entry
///    `opened`; the event is stored and the device recorded.
async fn an_sos_opens_one_critical_alert_and_records_the_event_and_device(store: Store) {
    let fx = Fx::new(store);
    let received = fx.now();
    let committed = fx.commit_time();
    assert_eq!(fx.counts().await, (0, 0, 0, 0));
    assert_eq!(fx.store.get_device("watch-1").await.unwrap(), None);
    let empty = fx.commit(Vec::new()).await;
    assert_eq!(outcome_counts(&empty), (0, 0, 0));
    assert!(empty.changes.is_empty());

    let out = fx
        .send("watch-1", &sos(5, "2026-11-23T09:59:58.500Z"))
        .await;

    assert_eq!(outcome_counts(&out), (1, 0, 0));
    assert_eq!(out.changes.len(), 1, "{:?}", out.changes);
    let (alert, timeline) = fx.alert(out.changes[0].alert_id).await;
    assert_eq!(out.changes, [change(&alert, "opened")]);
    assert_eq!(alert.device_id, "watch-1");
    assert_eq!(alert.resident_id, None);
    assert_eq!(alert.rule, "sos");
    assert_eq!(alert.kind, "sos");
    assert_eq!(alert.severity, "critical");
    assert_eq!(alert.title, "SOS button pressed");
    assert_eq!(alert.status, "open");
    assert_eq!(alert.count, 1);
    assert_eq!(alert.escalation_level, 0);
    assert_eq!(alert.opened_at, committed);
    assert_eq!(alert.updated_at, committed);
    assert_eq!(alert.last_event_at, received);
    assert_eq!(
        (
            alert.acknowledged_at,
            alert.acknowledged_by.as_deref(),
            alert.resolved_at,
            alert.resolved_by.as_deref(),
            alert.outcome.as_deref(),
            alert.note.as_deref(),
        ),
        (None, None, None, None, None, None)
    );

    assert_eq!(actions(&timeline), ["opened"]);
    let opened = &timeline[0];
    assert_eq!(opened.actor, "engine");
    assert_eq!(opened.at, committed);
    assert_eq!(opened.detail["type"], "sos");
    assert_eq!(opened.detail["seq"], 5);
    assert!(
        opened.detail["event_id"].is_i64(),
        "the timeline names the stored event: {}",
        opened.detail
    );

    assert_eq!(fx.counts().await, (1, 1, 1, 0));
    let timings = fx.store.event_timings().await.unwrap();
    assert_eq!(timings.len(), 1);
    assert_eq!(timings[0].device_id, "watch-1");
    assert_eq!(timings[0].seq, Some(5));
    assert_eq!(
        timings[0].device_ts,
        Some(to_millis(at("2026-11-23T09:59:58.500Z")))
    );
    assert_eq!(timings[0].received_at, to_millis(received));
    assert_eq!(timings[0].committed_at, to_millis(committed));

    let device = fx
        .store
        .get_device("watch-1")
        .await
        .unwrap()
        .expect("device seen");
    assert_eq!(
        (
            &device["id"],
            &device["first_seen"],
            &device["last_seen"],
            &device["registered"]
        ),
        (
            &json!("watch-1"),
            &json!(received),
            &json!(received),
            &json!(false)
        )
    );

    // The queue shows it.
    let open = fx
        .list(AlertFilter {
            status: Some("open".into()),
            ..AlertFilter::default()
        })
        .await;
    assert_eq!(open, std::slice::from_ref(&alert));

    // A later heartbeat moves last_seen, never first_seen, and opens nothing.
    fx.advance(Duration::minutes(5));
    let later = fx.now();
    let out = fx.send("watch-1", r#"{"type":"heartbeat","seq":6}"#).await;
    assert_eq!(outcome_counts(&out), (1, 0, 0));
    assert!(out.changes.is_empty());
    assert_eq!(fx.counts().await, (2, 1, 1, 0));
    let device = fx
        .store
        .get_device("watch-1")
        .await
        .unwrap()
        .expect("device seen");
    assert_eq!(
        (&device["first_seen"], &device["last_seen"]),
        (&json!(received), &json!(later))
    );
    assert_eq!(fx.alert(alert.id).await.0, alert);
}

/// 2. The same SOS redelivered (same seq and ts), in a later batch and within one batch, is
///    not counted: the count stays 1, the outcome reports a duplicate, the timeline gets a
///    `duplicate` entry, and no event row is added.
async fn a_redelivered_sos_is_not_counted_in_a_later_or_the_same_batch(store: Store) {
    let fx = Fx::new(store);
    let press = sos(5, "2026-11-23T09:59:58Z");

    // In a later batch.
    let first = fx.send("watch-1", &press).await;
    let id = first.changes[0].alert_id;
    fx.advance(Duration::seconds(20));
    let redelivered_at = fx.commit_time();
    let again = fx.send("watch-1", &press).await;
    assert_eq!(outcome_counts(&again), (0, 1, 0));
    let (alert, timeline) = fx.alert(id).await;
    assert_eq!(again.changes, [change(&alert, "duplicate")]);
    assert_eq!(alert.count, 1);
    assert_eq!(
        alert.last_event_at,
        t0(),
        "a duplicate is not the last counted event"
    );
    assert_eq!(actions(&timeline), ["opened", "duplicate"]);
    assert_eq!(timeline[1].at, redelivered_at);
    assert_eq!(timeline[1].detail["seq"], 5);
    assert_eq!(timeline[1].detail["event_id"], serde_json::Value::Null);
    assert_eq!(fx.count(Table::Events).await, 1);

    // The key is (seq, ts), not the bytes: the same event re-encoded is still a duplicate.
    let reencoded = r#"{ "ts" : "2026-11-23T09:59:58.000Z", "seq" : 5, "type" : "sos" }"#;
    let again = fx.send("watch-1", reencoded).await;
    assert_eq!(outcome_counts(&again), (0, 1, 0));
    assert_eq!(fx.alert(id).await.0.count, 1);
    assert_eq!(
        actions(&fx.alert(id).await.1),
        ["opened", "duplicate", "duplicate"]
    );
    assert_eq!(fx.count(Table::Events).await, 1);

    // Within one batch: two deliveries of one press on another device.
    fx.advance(Duration::seconds(20));
    let mut items = fx.message("watch-2", &press);
    items.extend(fx.message("watch-2", &press));
    let out = fx.commit(items).await;
    assert_eq!(outcome_counts(&out), (1, 1, 0));
    let actions_of_batch: Vec<_> = out.changes.iter().map(|c| c.action.as_str()).collect();
    assert_eq!(actions_of_batch, ["opened", "duplicate"]);
    let (alert2, timeline2) = fx.alert(out.changes[0].alert_id).await;
    assert_ne!(alert2.id, id);
    assert_eq!(out.changes[1].alert_id, alert2.id);
    assert_eq!(alert2.count, 1);
    assert_eq!(actions(&timeline2), ["opened", "duplicate"]);
    assert_eq!(fx.count(Table::Events).await, 2);
    assert_eq!(fx.count(Table::Alerts).await, 2);

    // And a later redelivery of that one is a duplicate too.
    let out = fx.send("watch-2", &press).await;
    assert_eq!(outcome_counts(&out), (0, 1, 0));
    assert_eq!(fx.alert(alert2.id).await.0.count, 1);
    assert_eq!(fx.count(Table::Events).await, 2);
}

/// 3. A new press (new seq) while the alert is open counts on the same alert; a restarted
///    device starting again at seq 1 (with a new ts) counts too.
async fn new_presses_and_a_restarted_device_count_on_the_open_alert(store: Store) {
    let fx = Fx::new(store);
    let first = fx.send("watch-1", &sos(1, "2026-11-23T09:59:00Z")).await;
    let id = first.changes[0].alert_id;
    let opened_at = fx.commit_time();

    fx.advance(Duration::seconds(30));
    let second_at = fx.now();
    let second = fx.send("watch-1", &sos(2, "2026-11-23T09:59:30Z")).await;
    assert_eq!(outcome_counts(&second), (1, 0, 0));
    let (alert, timeline) = fx.alert(id).await;
    assert_eq!(second.changes, [change(&alert, "counted")]);
    assert_eq!(alert.count, 2);
    assert_eq!(alert.status, "open");
    assert_eq!(alert.opened_at, opened_at);
    assert_eq!(alert.last_event_at, second_at);
    assert_eq!(
        alert.updated_at,
        second_at + Duration::milliseconds(COMMIT_LAG_MS)
    );
    assert_eq!(actions(&timeline), ["opened", "event"]);
    assert_eq!(timeline[1].detail["seq"], 2);

    // The device restarts: its counter starts again at 1, with a new clock reading.
    fx.advance(Duration::minutes(3));
    let restart_at = fx.now();
    let third = fx.send("watch-1", &sos(1, "2026-11-23T10:03:10Z")).await;
    assert_eq!(outcome_counts(&third), (1, 0, 0));
    let (alert, timeline) = fx.alert(id).await;
    assert_eq!(third.changes, [change(&alert, "counted")]);
    assert_eq!(alert.count, 3);
    assert_eq!(alert.last_event_at, restart_at);
    assert_eq!(actions(&timeline), ["opened", "event", "event"]);
    assert_eq!(fx.counts().await, (3, 1, 1, 0));

    // A press without a clock reading is keyed by seq alone and counts as well.
    let fourth = fx.send("watch-1", r#"{"type":"sos","seq":2}"#).await;
    assert_eq!(outcome_counts(&fourth), (1, 0, 0));
    assert_eq!(fx.alert(id).await.0.count, 4);
}

/// 4. Without seq and ts, nothing but the transport can tell a redelivery from the next press:
///    identical payloads are each a press — a second later, in the same batch, and after the
///    operator resolved the first (the README's own `{"type":"sos"}` pressed twice).
async fn a_payload_without_seq_or_ts_is_a_new_press_unless_the_broker_flags_it(store: Store) {
    let fx = Fx::new(store);
    let press = r#"{"type":"sos"}"#;
    let first = fx.send("pendant-1", press).await;
    assert_eq!(outcome_counts(&first), (1, 0, 0));
    let id = first.changes[0].alert_id;

    fx.advance(Duration::seconds(1));
    let again = fx.send("pendant-1", press).await;
    assert_eq!(
        outcome_counts(&again),
        (1, 0, 0),
        "a second press 1 s later"
    );
    let (alert, timeline) = fx.alert(id).await;
    assert_eq!(alert.count, 2);
    assert_eq!(actions(&timeline), ["opened", "event"]);

    let mut both = fx.message("pendant-1", press);
    both.extend(fx.message("pendant-1", press));
    let twice = fx.commit(both).await;
    assert_eq!(
        outcome_counts(&twice),
        (2, 0, 0),
        "two presses in one batch"
    );
    assert_eq!(fx.alert(id).await.0.count, 4);
    assert_eq!(fx.count(Table::Events).await, 4);

    fx.store
        .resolve(id, "op", fx.now(), "false_alarm", None)
        .await
        .unwrap();
    fx.advance(Duration::seconds(10));
    let after = fx.send("pendant-1", press).await;
    assert_eq!(outcome_counts(&after), (1, 0, 0));
    assert_eq!(after.changes.len(), 1);
    assert_eq!(
        after.changes[0].action, "opened",
        "a press after resolve opens a new alert"
    );
    assert_ne!(after.changes[0].alert_id, id);
}

/// 4b. The engine was down for minutes after committing a bare SOS and before acking it: the
///     broker redelivers it flagged DUP. The flag lets the payload hash match for the whole
///     dedup window; an unflagged identical payload at the same time is a new press, and a
///     flagged copy of something never committed counts.
async fn a_broker_flagged_redelivery_of_a_bare_payload_is_recognised_for_the_whole_dedup_window(
    store: Store,
) {
    let fx = Fx::new(store);
    let press = r#"{"type":"fall"}"#;
    let flagged = |items: Vec<WriteItem>| -> Vec<WriteItem> {
        items
            .into_iter()
            .map(|i| match i {
                WriteItem::Event {
                    mut event,
                    hits,
                    clears,
                } => {
                    event.redelivered = true;
                    WriteItem::Event {
                        event,
                        hits,
                        clears,
                    }
                }
                other => other,
            })
            .collect()
    };
    let first = fx.send("pendant-9", press).await;
    let id = first.changes[0].alert_id;

    fx.advance(Duration::minutes(10));
    let redelivered = fx.commit(flagged(fx.message("pendant-9", press))).await;
    assert_eq!(
        outcome_counts(&redelivered),
        (0, 1, 0),
        "DUP copy 10 min later"
    );
    assert_eq!(fx.alert(id).await.0.count, 1);

    let unflagged = fx.send("pendant-9", press).await;
    assert_eq!(outcome_counts(&unflagged), (1, 0, 0), "a real second press");
    assert_eq!(fx.alert(id).await.0.count, 2);

    // A DUP copy whose first delivery was never committed is a press, not a duplicate.
    let never_seen = fx
        .commit(flagged(
            fx.message("pendant-9", r#"{"type":"fall","note":1}"#),
        ))
        .await;
    assert_eq!(outcome_counts(&never_seen), (1, 0, 0));
    assert_eq!(fx.alert(id).await.0.count, 3);
}

/// 4c. A commit whose answer was lost (the connection dropped after COMMIT was sent, or the
///     commit was abandoned) is retried with the same token: the retry finds that the first
///     attempt went through and returns what it did — the same alert changes, for the live
///     feed — without writing anything twice, even identical presses without seq. A retry
///     whose first attempt did not commit commits normally.
async fn a_retried_batch_is_committed_once_and_reports_the_first_attempts_changes(store: Store) {
    let fx = Fx::new(store);
    let press = r#"{"type":"sos"}"#;
    let mut items = fx.message("pendant-r", press);
    items.extend(fx.message("pendant-r", press));
    let mut batch = fx.batch(items);
    let first = fx
        .store
        .commit_batch(&batch, fx.commit_time())
        .await
        .unwrap();
    assert_eq!(outcome_counts(&first), (2, 0, 0));
    assert!(!first.replayed);
    batch.retry = true;
    let again = fx
        .store
        .commit_batch(&batch, fx.commit_time())
        .await
        .unwrap();
    assert!(again.replayed, "the retry found the first attempt");
    assert_eq!(outcome_counts(&again), (2, 0, 0));
    assert_eq!(
        again.changes, first.changes,
        "the opened SOS is reported again"
    );
    assert_eq!(fx.count(Table::Events).await, 2);
    let id = first.changes[0].alert_id;
    let (alert, timeline) = fx.alert(id).await;
    assert_eq!(alert.count, 2);
    assert_eq!(actions(&timeline), ["opened", "event"]);

    // A retry whose first attempt never committed.
    let mut other = fx.batch(fx.message("pendant-r", press));
    other.retry = true;
    let done = fx
        .store
        .commit_batch(&other, fx.commit_time())
        .await
        .unwrap();
    assert!(!done.replayed);
    assert_eq!(outcome_counts(&done), (1, 0, 0));
    assert_eq!(fx.alert(id).await.0.count, 3);
}

/// 4d. A broker-flagged copy (DUP) matches only its own first copy — same payload and the same
///     MQTT packet id, which the engine adds to the key — never an earlier identical press; a
///     first copy and its DUP copy in one batch count once.
async fn a_dup_copy_matches_only_its_own_first_copy(store: Store) {
    let fx = Fx::new(store);
    // What the pipeline does: the packet id joins the payload key; DUP marks the copy.
    let with = |items: Vec<WriteItem>, pkid: u16, dup: bool| -> Vec<WriteItem> {
        items
            .into_iter()
            .map(|i| match i {
                WriteItem::Event {
                    mut event,
                    hits,
                    clears,
                } => {
                    let key = format!("{}:p{pkid}", event.dedup_key.as_str());
                    event.dedup_key = anxin::event::DedupKey::Payload(key);
                    event.redelivered = dup;
                    WriteItem::Event {
                        event,
                        hits,
                        clears,
                    }
                }
                other => other,
            })
            .collect()
    };
    let press = r#"{"type":"sos"}"#;
    let first = fx
        .commit(with(fx.message("pendant-d", press), 7, false))
        .await;
    let id = first.changes[0].alert_id;
    fx.store
        .resolve(id, "op", fx.now(), "false_alarm", None)
        .await
        .unwrap();
    fx.advance(Duration::hours(6));
    // Six hours later the same payload arrives flagged DUP, under another packet id: the
    // copy of a press never committed, not of the 7 above. It is a press.
    let later = fx
        .commit(with(fx.message("pendant-d", press), 9, true))
        .await;
    assert_eq!(outcome_counts(&later), (1, 0, 0));
    assert_eq!(later.changes[0].action, "opened");
    // Its own copy, flagged, is a duplicate.
    let copy = fx
        .commit(with(fx.message("pendant-d", press), 9, true))
        .await;
    assert_eq!(outcome_counts(&copy), (0, 1, 0));
    // A first copy and its DUP copy in one batch (nats-server resends after ack_wait).
    let mut both = with(fx.message("pendant-e", press), 11, false);
    both.extend(with(fx.message("pendant-e", press), 11, true));
    let once = fx.commit(both).await;
    assert_eq!(outcome_counts(&once), (1, 1, 0));
}

/// 5. Dedup keys expire: the same (seq, ts) after the dedup window counts again, and
///    `purge_dedup` removes expired keys.
async fn dedup_keys_expire_and_purge_removes_expired_keys(store: Store) {
    let mut fx = Fx::new(store);
    fx.dedup_window = Duration::hours(1);
    let press = sos(9, "2026-11-23T09:59:59Z");
    let heartbeat = r#"{"type":"heartbeat","seq":1,"ts":"2026-11-23T09:59:59Z"}"#;

    let first = fx.send("watch-1", &press).await;
    let id = first.changes[0].alert_id;
    assert_eq!(
        outcome_counts(&fx.send("hub-1", heartbeat).await),
        (1, 0, 0)
    );
    assert_eq!(raw_i64(&fx.store, "SELECT COUNT(*) FROM dedup").await, 2);

    // Inside the window: a duplicate, and nothing is expired yet.
    fx.advance(Duration::minutes(30));
    assert_eq!(outcome_counts(&fx.send("watch-1", &press).await), (0, 1, 0));
    assert_eq!(fx.store.purge_dedup(fx.now()).await.unwrap(), 0);
    assert_eq!(fx.alert(id).await.0.count, 1);

    // Two hours after the first receipt the same (seq, ts) is an event again.
    fx.clock.set(t0() + Duration::hours(2));
    let late = fx.send("watch-1", &press).await;
    assert_eq!(outcome_counts(&late), (1, 0, 0));
    let (alert, timeline) = fx.alert(id).await;
    assert_eq!(late.changes, [change(&alert, "counted")]);
    assert_eq!(alert.count, 2);
    assert_eq!(actions(&timeline), ["opened", "duplicate", "event"]);
    assert_eq!(fx.count(Table::Events).await, 3);

    // The hub's key expired an hour ago and is purged; the watch's key was renewed by the late
    // event and stays.
    let purged = fx.store.purge_dedup(fx.now()).await.unwrap();
    assert!(purged > 0, "purge_dedup removed nothing");
    assert_eq!(purged, 1);
    assert_eq!(raw_i64(&fx.store, "SELECT COUNT(*) FROM dedup").await, 1);
    assert_eq!(fx.store.purge_dedup(fx.now()).await.unwrap(), 0);

    // The renewed key still recognises a redelivery; the purged one lets the event in.
    assert_eq!(outcome_counts(&fx.send("watch-1", &press).await), (0, 1, 0));
    assert_eq!(
        outcome_counts(&fx.send("hub-1", heartbeat).await),
        (1, 0, 0)
    );
    assert_eq!(fx.alert(id).await.0.count, 2);
    assert_eq!(fx.count(Table::Events).await, 4);

    // Everything is gone once every key has expired.
    assert_eq!(
        fx.store
            .purge_dedup(fx.now() + Duration::hours(2))
            .await
            .unwrap(),
        2
    );
    assert_eq!(raw_i64(&fx.store, "SELECT COUNT(*) FROM dedup").await, 0);
}

/// 6. One unresolved alert per (subject, rule) — for a device rule, per device — is enforced by the database itself.
async fn the_database_enforces_one_unresolved_alert_per_device_and_rule(store: Store) {
    let fx = Fx::new(store);
    let out = fx.send("watch-1", &sos(1, "2026-11-23T09:59:59Z")).await;
    let id = out.changes[0].alert_id;

    const SECOND_OPEN: &str = "INSERT INTO alerts (device_id, rule, kind, severity, severity_rank, title, status, count, \
         escalation_level, opened_at, updated_at, last_event_at, subject) \
         VALUES ('watch-1', 'sos', 'sos', 'critical', 0, 'SOS button pressed', 'open', 1, 0, 1, 1, 1, 'watch-1')";
    const SECOND_ACKNOWLEDGED: &str = "INSERT INTO alerts (device_id, rule, kind, severity, severity_rank, title, status, count, \
         escalation_level, opened_at, updated_at, last_event_at, subject) \
         VALUES ('watch-1', 'sos', 'sos', 'critical', 0, 'SOS button pressed', 'acknowledged', 1, 0, 1, 1, 1, 'watch-1')";
    const RESOLVED: &str = "INSERT INTO alerts (device_id, rule, kind, severity, severity_rank, title, status, count, \
         escalation_level, opened_at, updated_at, last_event_at, subject) \
         VALUES ('watch-1', 'sos', 'sos', 'critical', 0, 'SOS button pressed', 'resolved', 1, 0, 1, 1, 1, 'watch-1')";
    const OTHER_RULE: &str = "INSERT INTO alerts (device_id, rule, kind, severity, severity_rank, title, status, count, \
         escalation_level, opened_at, updated_at, last_event_at, subject) \
         VALUES ('watch-1', 'fall', 'fall', 'critical', 0, 'Fall detected', 'open', 1, 0, 1, 1, 1, 'watch-1')";
    const OTHER_DEVICE: &str = "INSERT INTO alerts (device_id, rule, kind, severity, severity_rank, title, status, count, \
         escalation_level, opened_at, updated_at, last_event_at, subject) \
         VALUES ('watch-2', 'sos', 'sos', 'critical', 0, 'SOS button pressed', 'open', 1, 0, 1, 1, 1, 'watch-2')";

    for sql in [SECOND_OPEN, SECOND_ACKNOWLEDGED] {
        let err = raw_execute(&fx.store, sql)
            .await
            .expect_err("a second unresolved alert for the same device and rule must fail");
        assert!(
            err.as_database_error()
                .is_some_and(|e| e.is_unique_violation()),
            "expected a unique violation, got {err}"
        );
    }
    assert_eq!(fx.count(Table::Alerts).await, 1);

    // Resolved rows, other rules and other devices are not constrained.
    for sql in [RESOLVED, RESOLVED, OTHER_RULE, OTHER_DEVICE] {
        assert_eq!(raw_execute(&fx.store, sql).await.unwrap(), 1, "{sql}");
    }
    assert_eq!(fx.count(Table::Alerts).await, 5);

    // Once the open one is resolved, a new unresolved one is allowed again (once).
    fx.store
        .resolve(id, "op-1", fx.now(), "false_alarm", None)
        .await
        .unwrap();
    assert_eq!(raw_execute(&fx.store, SECOND_OPEN).await.unwrap(), 1);
    assert!(raw_execute(&fx.store, SECOND_ACKNOWLEDGED).await.is_err());

    // Promoting a resolved row back to unresolved beside an open one fails as well.
    let err = raw_execute(
        &fx.store,
        "UPDATE alerts SET status = 'open' WHERE device_id = 'watch-1' AND rule = 'sos' AND status = 'resolved'",
    )
    .await
    .expect_err("reopening beside an open alert must fail");
    assert!(
        err.as_database_error()
            .is_some_and(|e| e.is_unique_violation()),
        "expected a unique violation, got {err}"
    );
}

/// 7. Acknowledge and resolve are conditional transitions; after resolution a new press opens
///    a new alert.
async fn acknowledge_and_resolve_are_conditional_and_a_later_sos_opens_a_new_alert(store: Store) {
    let fx = Fx::new(store);
    let out = fx.send("watch-1", &sos(1, "2026-11-23T09:59:59Z")).await;
    let id = out.changes[0].alert_id;

    fx.advance(Duration::seconds(40));
    let acked_at = fx.now();
    let acked = fx.store.acknowledge(id, "op-1", acked_at).await.unwrap();
    assert_eq!(acked.id, id);
    assert_eq!(acked.status, "acknowledged");
    assert_eq!(acked.acknowledged_by.as_deref(), Some("op-1"));
    assert_eq!(acked.acknowledged_at, Some(acked_at));
    assert_eq!(acked.updated_at, acked_at);
    assert_eq!(fx.alert(id).await.0, acked);

    // A second operator cannot take it.
    fx.advance(Duration::seconds(1));
    match fx.store.acknowledge(id, "op-2", fx.now()).await {
        Err(StoreError::Conflict {
            id: c,
            status,
            step,
            holder,
        }) => {
            assert_eq!(
                (c, status.as_str(), step, holder.as_deref()),
                (id, "acknowledged", "acknowledge", Some("op-1"))
            );
        }
        other => panic!("second acknowledge: expected Conflict, got {other:?}"),
    }
    assert_eq!(
        fx.alert(id).await.0,
        acked,
        "a refused step changes nothing"
    );

    match fx.store.acknowledge(987_654, "op-1", fx.now()).await {
        Err(StoreError::NotFound(n)) => assert_eq!(n, 987_654),
        other => panic!("unknown id: expected NotFound, got {other:?}"),
    }
    match fx
        .store
        .resolve(987_654, "op-1", fx.now(), "other", None)
        .await
    {
        Err(StoreError::NotFound(n)) => assert_eq!(n, 987_654),
        other => panic!("resolve unknown id: expected NotFound, got {other:?}"),
    }

    // An outcome outside the list is refused, and changes nothing.
    match fx
        .store
        .resolve(id, "op-1", fx.now(), "went_home", None)
        .await
    {
        Err(StoreError::Validation(msg)) => assert!(msg.contains("went_home"), "{msg}"),
        other => panic!("bad outcome: expected Validation, got {other:?}"),
    }
    assert_eq!(fx.alert(id).await.0, acked);

    fx.advance(Duration::minutes(20));
    let resolved_at = fx.now();
    let resolved = fx
        .store
        .resolve(
            id,
            "op-1",
            resolved_at,
            "carer_visited",
            Some("carer found her well"),
        )
        .await
        .unwrap();
    assert_eq!(resolved.status, "resolved");
    assert_eq!(resolved.outcome.as_deref(), Some("carer_visited"));
    assert_eq!(resolved.note.as_deref(), Some("carer found her well"));
    assert_eq!(resolved.resolved_by.as_deref(), Some("op-1"));
    assert_eq!(resolved.resolved_at, Some(resolved_at));
    assert_eq!(resolved.acknowledged_by.as_deref(), Some("op-1"));
    assert_eq!(resolved.count, 1);

    match fx
        .store
        .resolve(id, "op-2", fx.now(), "false_alarm", None)
        .await
    {
        Err(StoreError::Conflict {
            id: c,
            status,
            step,
            holder,
        }) => {
            assert_eq!(
                (c, status.as_str(), step, holder.as_deref()),
                (id, "resolved", "resolve", Some("op-1"))
            );
        }
        other => panic!("second resolve: expected Conflict, got {other:?}"),
    }
    match fx.store.acknowledge(id, "op-2", fx.now()).await {
        Err(StoreError::Conflict { status, .. }) => assert_eq!(status, "resolved"),
        other => panic!("acknowledge after resolve: expected Conflict, got {other:?}"),
    }

    let (alert, timeline) = fx.alert(id).await;
    assert_eq!(alert, resolved);
    assert_eq!(actions(&timeline), ["opened", "acknowledged", "resolved"]);
    assert_eq!(timeline[1].actor, "op-1");
    assert_eq!(timeline[1].at, acked_at);
    assert_eq!(timeline[2].actor, "op-1");
    assert_eq!(timeline[2].at, resolved_at);
    assert_eq!(timeline[2].detail["outcome"], "carer_visited");
    assert_eq!(timeline[2].detail["note"], "carer found her well");

    // The next press opens a new alert.
    fx.advance(Duration::minutes(1));
    let out = fx.send("watch-1", &sos(2, "2026-11-23T10:21:40Z")).await;
    let (fresh, timeline) = fx.alert(out.changes[0].alert_id).await;
    assert_eq!(out.changes, [change(&fresh, "opened")]);
    assert_ne!(fresh.id, id);
    assert_eq!(fresh.count, 1);
    assert_eq!(fresh.status, "open");
    assert_eq!(actions(&timeline), ["opened"]);
    assert_eq!(
        fx.alert(id).await.0,
        resolved,
        "the resolved alert is untouched"
    );
    assert_eq!(fx.unresolved("watch-1", "sos").await.id, fresh.id);

    // An open alert resolves directly, without an acknowledgement.
    let direct = fx
        .store
        .resolve(fresh.id, "op-3", fx.now(), "false_alarm", None)
        .await
        .unwrap();
    assert_eq!(direct.status, "resolved");
    assert_eq!(direct.acknowledged_at, None);
    assert_eq!(direct.note, None);

    // Operators racing for one alert: exactly one acknowledgement wins.
    let out = fx.send("watch-2", &sos(1, "2026-11-23T10:21:50Z")).await;
    let raced = out.changes[0].alert_id;
    let now = fx.now();
    let results = tokio::join!(
        fx.store.acknowledge(raced, "op-a", now),
        fx.store.acknowledge(raced, "op-b", now),
        fx.store.acknowledge(raced, "op-c", now),
        fx.store.acknowledge(raced, "op-d", now),
    );
    let results = [results.0, results.1, results.2, results.3];
    let winners: Vec<&Alert> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one acknowledgement wins: {results:?}"
    );
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, StoreError::Conflict { status, .. } if status == "acknowledged"),
                "the losers get Conflict: {e:?}"
            );
        }
    }
    let (alert, timeline) = fx.alert(raced).await;
    assert_eq!(alert.acknowledged_by, winners[0].acknowledged_by);
    assert_eq!(actions(&timeline), ["opened", "acknowledged"]);
}

/// 8. `list_alerts` orders most urgent first (severity, then oldest first, then id), pages
///    with its cursor so that every alert is returned exactly once, and filters.
async fn list_alerts_orders_most_urgent_first_pages_exactly_once_and_filters(store: Store) {
    let fx = Fx::new(store);
    let mut opened = Vec::new();
    let mut open = |out: BatchOutcome| opened.extend(out.changes.into_iter().map(|c| c.alert_id));

    open(
        fx.send("d1", r#"{"type":"battery","percent":9,"seq":1}"#)
            .await,
    ); // low
    fx.advance(Duration::seconds(1));
    open(
        fx.send("d2", r#"{"type":"water","state":"leak","seq":1}"#)
            .await,
    ); // high
    fx.advance(Duration::seconds(1));
    open(fx.send("d3", &sos(1, "2026-11-23T10:00:02Z")).await); // critical
    fx.advance(Duration::seconds(1));
    // Two critical alerts opened by one batch share opened_at: the id breaks the tie.
    let mut items = fx.message("d1", &sos(2, "2026-11-23T10:00:03Z"));
    items.extend(fx.message("d4", r#"{"type":"smoke","state":"alarm","seq":1}"#));
    open(fx.commit(items).await);
    fx.advance(Duration::seconds(1));
    open(fx.send("d5", r#"{"type":"tamper","seq":1}"#).await); // medium
    // Committed last but opened earliest: age, not id, decides within a severity.
    fx.clock.set(t0() - Duration::hours(1));
    open(fx.send("d6", &sos(1, "2026-11-23T09:00:00Z")).await); // critical, oldest
    assert_eq!(opened.len(), 7);

    let all = fx.list(AlertFilter::default()).await;
    let seen: Vec<(&str, &str)> = all
        .iter()
        .map(|a| (a.device_id.as_str(), a.kind.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("d6", "sos"),
            ("d3", "sos"),
            ("d1", "sos"),
            ("d4", "smoke"),
            ("d2", "water"),
            ("d5", "tamper"),
            ("d1", "low_battery"),
        ]
    );
    let severities: Vec<&str> = all.iter().map(|a| a.severity.as_str()).collect();
    assert_eq!(
        severities,
        [
            "critical", "critical", "critical", "critical", "high", "medium", "low"
        ]
    );
    let mut ids: Vec<i64> = all.iter().map(|a| a.id).collect();
    let expected_ids = ids.clone();
    ids.sort_unstable();
    opened.sort_unstable();
    assert_eq!(ids, opened, "every alert is listed once");

    // Walking with small pages yields the same sequence, each alert exactly once.
    for limit in [1, 2, 3, 7] {
        let walked = walk(&fx.store, AlertFilter::default(), limit).await;
        assert_eq!(walked, expected_ids, "walk with limit {limit}");
    }
    // A page exactly as long as the remaining list has no next cursor.
    let (page, next) = fx
        .store
        .list_alerts(&AlertFilter {
            limit: 7,
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 7);
    assert_eq!(next, None);

    // Filters.
    let water = fx.unresolved("d2", "water").await;
    fx.store
        .acknowledge(water.id, "op-1", fx.now())
        .await
        .unwrap();
    let tamper = fx.unresolved("d5", "tamper").await;
    fx.store
        .resolve(tamper.id, "op-1", fx.now(), "false_alarm", None)
        .await
        .unwrap();
    let ids_of = |alerts: Vec<Alert>| alerts.into_iter().map(|a| a.id).collect::<Vec<_>>();
    let unresolved: Vec<i64> = expected_ids
        .iter()
        .copied()
        .filter(|id| *id != tamper.id)
        .collect();

    let status = |s: &str| AlertFilter {
        status: Some(s.to_owned()),
        ..AlertFilter::default()
    };
    assert_eq!(
        ids_of(fx.list(status("open")).await),
        unresolved,
        "`open` is every unresolved status, acknowledged included"
    );
    assert_eq!(ids_of(fx.list(status("resolved")).await), [tamper.id]);
    assert_eq!(ids_of(fx.list(status("acknowledged")).await), [water.id]);
    assert_eq!(walk(&fx.store, status("open"), 1).await, unresolved);
    assert_eq!(walk(&fx.store, status("resolved"), 1).await, [tamper.id]);

    let d1 = fx
        .list(AlertFilter {
            device_id: Some("d1".into()),
            ..AlertFilter::default()
        })
        .await;
    let d1_kinds: Vec<&str> = d1.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(d1_kinds, ["sos", "low_battery"]);

    let sos_devices: Vec<String> = fx
        .list(AlertFilter {
            kind: Some("sos".into()),
            ..AlertFilter::default()
        })
        .await
        .into_iter()
        .map(|a| a.device_id)
        .collect();
    assert_eq!(sos_devices, ["d6", "d3", "d1"]);

    let combined = fx
        .list(AlertFilter {
            status: Some("open".into()),
            device_id: Some("d1".into()),
            kind: Some("low_battery".into()),
            ..AlertFilter::default()
        })
        .await;
    assert_eq!(combined.len(), 1);
    assert_eq!(combined[0].severity, "low");

    assert!(
        fx.list(AlertFilter {
            device_id: Some("nobody".into()),
            ..AlertFilter::default()
        })
        .await
        .is_empty()
    );
    assert!(
        fx.list(AlertFilter {
            device_id: Some("d5".into()),
            status: Some("open".into()),
            ..AlertFilter::default()
        })
        .await
        .is_empty()
    );
}

/// Lists with `limit` per page, following the cursor to the end; returns the ids in order.
async fn walk(store: &Store, filter: AlertFilter, limit: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let (page, next) = store
            .list_alerts(&AlertFilter {
                limit,
                after,
                ..filter.clone()
            })
            .await
            .expect("list_alerts");
        assert!(page.len() as i64 <= limit, "page longer than {limit}");
        if next.is_some() {
            assert_eq!(page.len() as i64, limit, "a page with a cursor is full");
        }
        ids.extend(page.iter().map(|a| a.id));
        match next {
            Some(cursor) => after = Some(cursor),
            None => return ids,
        }
    }
    panic!("the cursor never ended: {ids:?}");
}

/// 9. Rejections are stored with reason, detail and raw bytes, in the same transaction as the
///    events of the batch.
async fn rejections_are_stored_with_reason_detail_and_raw_bytes_alongside_events(store: Store) {
    let fx = Fx::new(store);
    let mut items = fx.message(
        "d1",
        r#"[{"type":"heartbeat","seq":1},{"type":"teleport","seq":2},3,{"type":"sos","seq":4}]"#,
    );
    items.extend(fx.message_on(&topic("d1"), b"\xff\xfe{not json"));
    items.extend(fx.message_on(&topic("bad id"), br#"{"type":"sos"}"#));
    items.extend(fx.message("d2", r#"{"type":"water","state":"flood"}"#));

    let expected: Vec<(String, String, Vec<u8>)> = items
        .iter()
        .filter_map(|i| match i {
            WriteItem::Rejected { rejection, .. } => Some((
                rejection.reason.as_str().to_owned(),
                rejection.detail.clone(),
                rejection.raw.clone(),
            )),
            _ => None,
        })
        .collect();
    let reasons: Vec<&str> = expected.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        reasons,
        [
            RejectReason::UnknownType.as_str(),
            RejectReason::NotAnObject.as_str(),
            RejectReason::MalformedJson.as_str(),
            RejectReason::BadDeviceId.as_str(),
            RejectReason::BadField.as_str(),
        ]
    );

    let out = fx.commit(items).await;
    assert_eq!(outcome_counts(&out), (2, 0, 5));
    assert_eq!(out.changes.len(), 1, "the SOS in the array opened an alert");
    assert_eq!(fx.counts().await, (2, 1, 1, 5));

    let stored = fx.store.rejected(100).await.unwrap();
    assert_eq!(stored, expected, "stored in receive order, byte for byte");
    assert_eq!(stored[1].2, b"3");
    assert_eq!(stored[2].2, b"\xff\xfe{not json");
    assert!(stored[0].1.contains("teleport"), "{}", stored[0].1);
    assert!(stored[4].1.contains("state"), "{}", stored[4].1);
    assert_eq!(fx.store.rejected(2).await.unwrap(), expected[3..]);

    // A batch of rejections alone commits too, after the earlier ones.
    fx.advance(Duration::seconds(1));
    let out = fx.commit(fx.message("d3", r#"{"seq":1}"#)).await;
    assert_eq!(outcome_counts(&out), (0, 0, 1));
    let last = fx.store.rejected(1).await.unwrap();
    assert_eq!(last[0].0, "missing_type");
    assert_eq!(last[0].2, br#"{"seq":1}"#);
    assert_eq!(fx.counts().await, (2, 1, 1, 6));
}

/// 10. A cancel on the device appends `cancelled_on_device` to the timeline of the device's
///     unresolved alerts and resolves none of them.
async fn a_cancel_is_recorded_on_unresolved_alerts_without_resolving_them(store: Store) {
    let fx = Fx::new(store);
    let sos_id = fx
        .send("watch-1", &sos(1, "2026-11-23T09:59:50Z"))
        .await
        .changes[0]
        .alert_id;
    let fall_id = fx
        .send("watch-1", r#"{"type":"fall","seq":2}"#)
        .await
        .changes[0]
        .alert_id;
    let water_id = fx
        .send("watch-1", r#"{"type":"water","state":"leak","seq":3}"#)
        .await
        .changes[0]
        .alert_id;
    let other_id = fx
        .send("watch-2", &sos(1, "2026-11-23T09:59:50Z"))
        .await
        .changes[0]
        .alert_id;
    fx.advance(Duration::seconds(10));
    fx.store
        .acknowledge(sos_id, "op-1", fx.now())
        .await
        .unwrap();
    fx.store
        .resolve(water_id, "op-1", fx.now(), "other", Some("sensor moved"))
        .await
        .unwrap();
    let before_sos = fx.alert(sos_id).await.0;
    let before_fall = fx.alert(fall_id).await.0;
    let before_water = fx.alert(water_id).await;
    let before_other = fx.alert(other_id).await;
    let events_before = fx.count(Table::Events).await;

    fx.advance(Duration::seconds(5));
    let cancelled_at = fx.commit_time();
    let out = fx.send("watch-1", r#"{"type":"cancel","seq":4}"#).await;
    assert_eq!(outcome_counts(&out), (1, 0, 0));
    assert_eq!(
        out.changes,
        [
            change(&before_sos, "cancelled_on_device"),
            change(&before_fall, "cancelled_on_device"),
        ]
    );
    assert_eq!(fx.count(Table::Events).await, events_before + 1);

    for (before, earlier) in [
        (&before_sos, vec!["opened", "acknowledged"]),
        (&before_fall, vec!["opened"]),
    ] {
        let (after, timeline) = fx.alert(before.id).await;
        assert_eq!(&after, before, "a cancel changes no alert state");
        let mut expected = earlier;
        expected.push("cancelled_on_device");
        assert_eq!(actions(&timeline), expected);
        let entry = timeline.last().unwrap();
        assert_eq!(entry.actor, "engine");
        assert_eq!(entry.at, cancelled_at);
        assert_eq!(entry.detail["type"], "cancel");
        assert_eq!(entry.detail["seq"], 4);
        assert!(entry.detail["event_id"].is_i64(), "{}", entry.detail);
    }
    assert_eq!(
        fx.alert(water_id).await,
        before_water,
        "resolved alerts are left alone"
    );
    assert_eq!(
        fx.alert(other_id).await,
        before_other,
        "other devices are left alone"
    );

    // A redelivered cancel is not recorded twice.
    let again = fx.send("watch-1", r#"{"type":"cancel","seq":4}"#).await;
    assert_eq!(outcome_counts(&again), (0, 1, 0));
    assert_eq!(
        actions(&fx.alert(fall_id).await.1),
        ["opened", "cancelled_on_device"]
    );

    // A cancel with nothing unresolved is just an event.
    let lone = fx.send("watch-3", r#"{"type":"cancel","seq":1}"#).await;
    assert_eq!(outcome_counts(&lone), (1, 0, 0));
    assert!(lone.changes.is_empty());
}

/// 11. A batch is atomic: when its commit fails, nothing of it is stored — no event, alert
///     change, timeline entry, device, dedup key or rejection.
async fn a_failed_batch_stores_nothing_of_itself(store: Store) {
    let fx = Fx::new(store);
    let first = fx.send("watch-1", &sos(1, "2026-11-23T09:59:50Z")).await;
    let id = first.changes[0].alert_id;
    let alert_before = fx.alert(id).await;
    let counts_before = fx.counts().await;
    let dedup_before = raw_i64(&fx.store, "SELECT COUNT(*) FROM dedup").await;
    assert_eq!(counts_before, (1, 1, 1, 0));

    // The batch counts on the open alert, opens another, introduces a device, stores plain
    // events and finally a rejection — whose table is gone, so the last statement fails.
    fx.advance(Duration::seconds(10));
    let failing_batch = || {
        let mut items = fx.message("watch-1", &sos(2, "2026-11-23T10:00:00Z"));
        items.extend(fx.message("watch-2", r#"{"type":"fall","seq":1}"#));
        items.extend(fx.message("hub-9", r#"{"type":"heartbeat","seq":1}"#));
        items.extend(fx.message("watch-2", r#"{"type":"cancel","seq":2}"#));
        items.extend(fx.message("watch-1", "not json"));
        items
    };
    raw_execute(&fx.store, "ALTER TABLE rejected RENAME TO rejected_away")
        .await
        .unwrap();
    let err = fx
        .try_commit(failing_batch())
        .await
        .expect_err("a batch writing to a missing table must fail");
    // It failed on its last statement, after its events, alert changes, timeline entries,
    // devices and dedup keys had been written inside the transaction.
    assert!(
        matches!(err, StoreError::Db(_)) && err.to_string().contains("rejected"),
        "expected the rejected insert to fail: {err:?}"
    );

    assert_eq!(fx.count(Table::Alerts).await, 1, "no alert was opened");
    assert_eq!(
        fx.alert(id).await,
        alert_before,
        "the open alert was not counted"
    );
    assert_eq!(fx.count(Table::Events).await, counts_before.0);
    assert_eq!(fx.count(Table::Devices).await, counts_before.2);
    assert_eq!(fx.store.get_device("watch-2").await.unwrap(), None);
    assert_eq!(fx.store.get_device("hub-9").await.unwrap(), None);
    assert_eq!(
        raw_i64(&fx.store, "SELECT COUNT(*) FROM dedup").await,
        dedup_before
    );
    assert_eq!(
        raw_i64(&fx.store, "SELECT COUNT(*) FROM alert_timeline").await,
        1
    );
    assert_eq!(
        raw_i64(&fx.store, "SELECT COUNT(*) FROM rejected_away").await,
        0
    );

    // With the table back, the same batch (a redelivery of it) commits in full: none of its
    // keys were kept, so nothing is taken for a duplicate.
    raw_execute(&fx.store, "ALTER TABLE rejected_away RENAME TO rejected")
        .await
        .unwrap();
    let out = fx.commit(failing_batch()).await;
    assert_eq!(outcome_counts(&out), (4, 0, 1));
    assert_eq!(fx.alert(id).await.0.count, 2);
    assert_eq!(fx.counts().await, (5, 2, 3, 1));

    // A closed store refuses a batch with an error rather than pretending to store it.
    fx.store.close().await;
    let err = fx
        .try_commit(fx.message("watch-1", &sos(3, "2026-11-23T10:00:20Z")))
        .await
        .expect_err("a closed pool cannot commit");
    assert!(matches!(err, StoreError::Db(_)), "{err:?}");
}

/// 12. Events of one device are stored in receive order (DESIGN.md guarantee 3): the stored
///     order (`event_timings`, by id) follows the batch, whether or not an event touches an
///     alert.
async fn events_of_one_device_are_stored_in_receive_order(store: Store) {
    let fx = Fx::new(store);
    let mut items = fx.message("watch-1", r#"{"type":"heartbeat","seq":1}"#);
    items.extend(fx.message("watch-1", &sos(2, "2026-11-23T10:00:00Z")));
    items.extend(fx.message("watch-1", r#"{"type":"battery","percent":80,"seq":3}"#));
    items.extend(fx.message("watch-1", r#"{"type":"cancel","seq":4}"#));
    items.extend(fx.message(
        "watch-1",
        r#"{"type":"position","lat":22.3,"lon":114.2,"source":"gps","seq":5}"#,
    ));
    let out = fx.commit(items).await;
    assert_eq!(outcome_counts(&out), (5, 0, 0));

    let seqs: Vec<Option<i64>> = fx
        .store
        .event_timings()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.seq)
        .collect();
    assert_eq!(
        seqs,
        [Some(1), Some(2), Some(3), Some(4), Some(5)],
        "events of one device must be stored in the order they were received"
    );
}

/// 13. A batch with more rows than one multi-row statement carries (the store chunks by 1000)
///     commits whole: every event, device and rejection, with in-batch redeliveries recognised
///     across chunk boundaries.
async fn a_batch_larger_than_one_statement_commits_whole(store: Store) {
    let fx = Fx::new(store);
    const N: i64 = 2_345;
    let mut items = Vec::new();
    for seq in 1..=N {
        let device = format!("hub-{}", seq % 1_100);
        items.extend(fx.message(&device, &format!(r#"{{"type":"heartbeat","seq":{seq}}}"#)));
    }
    // Redeliveries of the first 1 200, in the same batch, after the originals.
    for seq in 1..=1_200 {
        let device = format!("hub-{}", seq % 1_100);
        items.extend(fx.message(&device, &format!(r#"{{"type":"heartbeat","seq":{seq}}}"#)));
    }
    for i in 0..1_050 {
        items.extend(fx.message(&format!("hub-{i}"), &format!("garbage {i}")));
    }
    let out = fx.commit(items).await;
    assert_eq!(outcome_counts(&out), (N as usize, 1_200, 1_050));
    assert_eq!(fx.counts().await, (N, 0, 1_100, 1_050));
    assert_eq!(raw_i64(&fx.store, "SELECT COUNT(*) FROM dedup").await, N);

    // A redelivery of the whole batch later is all duplicates.
    fx.advance(Duration::seconds(5));
    let mut again = Vec::new();
    for seq in 1..=N {
        let device = format!("hub-{}", seq % 1_100);
        again.extend(fx.message(&device, &format!(r#"{{"type":"heartbeat","seq":{seq}}}"#)));
    }
    let out = fx.commit(again).await;
    assert_eq!(outcome_counts(&out), (0, N as usize, 0));
    assert_eq!(fx.count(Table::Events).await, N);

    // Plain events keep their order across chunks.
    let seqs: Vec<i64> = fx
        .store
        .event_timings()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.seq.unwrap())
        .collect();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
}

fn resident(id: &str, name: &str) -> Resident {
    Resident {
        id: id.to_owned(),
        name: name.to_owned(),
        region: "xh".to_owned(),
        time_zone: "Asia/Shanghai".to_owned(),
        labels: [("lives_alone".to_owned(), "true".to_owned())].into(),
        thresholds: [("hr_high".to_owned(), 110.5)].into(),
    }
}

fn device_of(id: &str, resident: &str) -> Registration {
    Registration {
        id: id.to_owned(),
        resident_id: Some(resident.to_owned()),
        ..Default::default()
    }
}

/// 14. Residents: a first write creates, a second replaces (and says so); a read returns
///     exactly what was written with both times; pages by id see every resident once; a
///     delete is refused while a registered device points at the resident, and otherwise
///     removes it and ends its active suppressions.
async fn residents_are_written_read_paged_and_deleted_only_without_devices(store: Store) {
    let fx = Fx::new(store);
    let created_at = fx.now();
    assert!(
        fx.store
            .put_resident(&resident("r1", "Li Hua"), &Default::default(), fx.now())
            .await
            .unwrap()
    );
    fx.advance(Duration::minutes(5));
    let mut changed = resident("r1", "Li Hua (Mrs)");
    changed.time_zone = "Asia/Urumqi".to_owned();
    changed.thresholds.insert("spo2_low".to_owned(), 88.0);
    assert!(
        !fx.store
            .put_resident(&changed, &Default::default(), fx.now())
            .await
            .unwrap(),
        "a second write replaces"
    );
    let got = fx.store.get_resident("r1").await.unwrap().unwrap();
    assert_eq!(got.resident, changed);
    assert_eq!((got.created_at, got.updated_at), (created_at, fx.now()));
    assert_eq!(fx.store.get_resident("nobody").await.unwrap(), None);

    for i in 2..=7 {
        fx.store
            .put_resident(
                &resident(&format!("r{i}"), "x"),
                &Default::default(),
                fx.now(),
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let (page, next) = fx
            .store
            .list_residents(cursor.as_deref(), 3, None)
            .await
            .unwrap();
        assert!(page.len() <= 3);
        seen.extend(page.into_iter().map(|r| r.resident.id));
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ["r1", "r2", "r3", "r4", "r5", "r6", "r7"]);
    let (page, next) = fx.store.list_residents(Some("r5"), 2, None).await.unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(next, None, "a last page that is exactly full has no next");
    let all = fx.store.all_residents().await.unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(all[0], changed);

    // Registered devices keep their resident; one only heard from does not count.
    fx.store
        .register_devices(&[device_of("d1", "r2"), device_of("d2", "r2")], fx.now())
        .await
        .unwrap();
    match fx.store.delete_resident("r2", "admin", fx.now()).await {
        Err(StoreError::ResidentInUse { id, devices }) => {
            assert_eq!(
                (id.as_str(), devices),
                ("r2", vec!["d1".to_owned(), "d2".to_owned()])
            )
        }
        other => panic!("expected ResidentInUse, got {other:?}"),
    }
    assert!(fx.store.get_resident("r2").await.unwrap().is_some());
    fx.store.unregister_device("d1", fx.now()).await.unwrap();
    fx.store
        .register_devices(&[device_of("d2", "r3")], fx.now())
        .await
        .unwrap();

    let until = fx.now() + Duration::days(3);
    let active = fx
        .store
        .create_suppression(&suppression(Some("r2"), None, until, fx.now()))
        .await
        .unwrap();
    let other = fx
        .store
        .create_suppression(&suppression(Some("r3"), None, until, fx.now()))
        .await
        .unwrap();
    assert_eq!(
        fx.store
            .delete_resident("r2", "admin", fx.now())
            .await
            .unwrap(),
        [active],
        "its active suppression ends with it"
    );
    assert_eq!(fx.store.get_resident("r2").await.unwrap(), None);
    let left: Vec<i64> = fx
        .store
        .active_suppressions(fx.now())
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, [other]);
    assert!(matches!(
        fx.store.delete_resident("r2", "admin", fx.now()).await,
        Err(StoreError::ResidentNotFound(id)) if id == "r2"
    ));
}

fn suppression(
    resident: Option<&str>,
    device: Option<&str>,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Suppression {
    Suppression {
        id: 0,
        resident_id: resident.map(str::to_owned),
        device_id: device.map(str::to_owned),
        kinds: None,
        reason: "in hospital".to_owned(),
        author: "admin".to_owned(),
        created_at: now,
        until,
        suppressed_count: 0,
    }
}

/// 15. Suppressions: what is written is read back (scope, kinds or none, reason, author,
///     times) while active; the batch commit's increment of `suppressed_count` shows; one past
///     its `until` or ended is not listed; ending is recorded with who did it and happens once.
async fn suppressions_are_listed_while_active_counted_and_ended_once(store: Store) {
    let fx = Fx::new(store);
    let now = fx.now();
    let mut by_device = suppression(None, Some("watch-1"), now + Duration::hours(2), now);
    by_device.kinds = Some(vec!["low_battery".to_owned(), "offline".to_owned()]);
    by_device.reason = "on charge".to_owned();
    let a = fx.store.create_suppression(&by_device).await.unwrap();
    let b = fx
        .store
        .create_suppression(&suppression(Some("r1"), None, now + Duration::days(7), now))
        .await
        .unwrap();
    let c = fx
        .store
        .create_suppression(&suppression(
            Some("r2"),
            None,
            now + Duration::minutes(30),
            now,
        ))
        .await
        .unwrap();
    assert!(a < b && b < c, "ids grow: {a} {b} {c}");

    let listed = fx.store.active_suppressions(now).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(
        listed[0],
        Suppression {
            id: a,
            ..by_device.clone()
        }
    );
    assert_eq!(
        listed[1].kinds, None,
        "no kinds: every kind but the four alarms"
    );
    assert_eq!(listed[1].resident_id.as_deref(), Some("r1"));

    // What the batch commit runs for matches a suppression kept from opening alerts.
    const COUNT: &str =
        "UPDATE suppressions SET suppressed_count = suppressed_count + $2 WHERE id = $1";
    for n in [1_i64, 2] {
        let updated = match &fx.store {
            Store::Sqlite(pool) => sqlx::query(COUNT)
                .bind(a)
                .bind(n)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            Store::Postgres(pool) => sqlx::query(COUNT)
                .bind(a)
                .bind(n)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
        };
        assert_eq!(updated.unwrap(), 1);
    }
    fx.advance(Duration::hours(1));
    let listed = fx.store.active_suppressions(fx.now()).await.unwrap();
    let ids: Vec<i64> = listed.iter().map(|s| s.id).collect();
    assert_eq!(ids, [a, b], "the 30-minute one is over");
    assert_eq!(listed[0].suppressed_count, 3);
    assert!(matches!(
        fx.store.end_suppression(c, "admin", fx.now()).await,
        Err(StoreError::SuppressionNotFound(id)) if id == c
    ));

    fx.store
        .end_suppression(a, "supervisor-7", fx.now())
        .await
        .unwrap();
    assert!(matches!(
        fx.store.end_suppression(a, "admin", fx.now()).await,
        Err(StoreError::SuppressionNotFound(_))
    ));
    assert!(matches!(
        fx.store.end_suppression(999_999, "admin", fx.now()).await,
        Err(StoreError::SuppressionNotFound(999_999))
    ));
    let ids: Vec<i64> = fx
        .store
        .active_suppressions(fx.now())
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, [b]);
    let ended_by_supervisor = raw_i64(
        &fx.store,
        "SELECT COUNT(*) FROM suppressions WHERE ended_by = 'supervisor-7' AND ended_at IS NOT NULL",
    )
    .await;
    assert_eq!(ended_by_supervisor, 1, "who ended it is kept");

    // The database refuses a suppression scoped to both or neither.
    for sql in [
        "INSERT INTO suppressions (resident_id, device_id, reason, author, created_at, until_at) VALUES ('r1', 'd1', 'x', 'a', 0, 1)",
        "INSERT INTO suppressions (resident_id, device_id, reason, author, created_at, until_at) VALUES (NULL, NULL, 'x', 'a', 0, 1)",
    ] {
        assert!(raw_execute(&fx.store, sql).await.is_err(), "{sql}");
    }
}

/// 16. `report_interval` goes in as text, is stored in seconds and comes back in the largest
///     unit that divides it, from the registry load and the device read alike; unregistering
///     clears it.
async fn a_devices_report_interval_is_stored_and_read_back(store: Store) {
    let fx = Fx::new(store);
    let mut w = device_of("w1", "r1");
    w.device_type = Some("watch".to_owned());
    w.report_interval = Some("600s".to_owned());
    let mut p = device_of("p1", "r1");
    p.report_interval = Some("90m".to_owned());
    let n = device_of("n1", "r1");
    fx.store
        .register_devices(&[w, p, n], fx.now())
        .await
        .unwrap();
    let mut got: Vec<(String, Option<String>)> = fx
        .store
        .registered_devices()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.report_interval))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("n1".to_owned(), None),
            ("p1".to_owned(), Some("90m".to_owned())),
            ("w1".to_owned(), Some("10m".to_owned())),
        ]
    );
    let w1 = fx.store.get_device("w1").await.unwrap().unwrap();
    assert_eq!(w1["report_interval"], "10m");
    assert_eq!(
        raw_i64(
            &fx.store,
            "SELECT report_interval_secs FROM devices WHERE id = 'p1'"
        )
        .await,
        5400
    );
    fx.store.unregister_device("w1", fx.now()).await.unwrap();
    assert_eq!(
        raw_i64(
            &fx.store,
            "SELECT COUNT(*) FROM devices WHERE id = 'w1' AND report_interval_secs IS NULL"
        )
        .await,
        1
    );
}

/// What start-up rebuilds absences from: the last message of each type an absence counts,
/// per device, and every device's last message of any type; a retained message is not the
/// device seen.
async fn absences_keep_named_types_and_any_message_from_last_seen(store: Store) {
    let fx = Fx::new(store);
    // What the engine reports an absence of motion counts.
    let commit = |items: Vec<WriteItem>| {
        let mut batch = fx.batch(items);
        for item in &batch.items {
            if let WriteItem::Event { event, .. } = item
                && event.event_type == EventType::Motion
                && !event.retained
            {
                let at = to_millis(event.received_at);
                batch
                    .activity
                    .push((event.device_id.clone(), EventType::Motion, at));
            }
        }
        batch
    };
    let t1 = to_millis(fx.now());
    let mut items = fx.message("d1", r#"{"type":"motion","room":"hall"}"#);
    items.extend(fx.message("d1", r#"{"type":"heartbeat"}"#));
    items.extend(fx.message("d2", r#"{"type":"heartbeat"}"#));
    fx.store
        .commit_batch(&commit(items), fx.commit_time())
        .await
        .unwrap();
    fx.advance(Duration::seconds(30));
    let t2 = to_millis(fx.now());
    // A later heartbeat moves only "any"; the motion time stays.
    let items = fx.message("d1", r#"{"type":"heartbeat"}"#);
    fx.store
        .commit_batch(&commit(items), fx.commit_time())
        .await
        .unwrap();
    fx.advance(Duration::seconds(30));
    let mut retained = fx.message("d2", r#"{"type":"motion","room":"hall"}"#);
    if let WriteItem::Event { event, .. } = &mut retained[0] {
        event.retained = true;
    }
    fx.store
        .commit_batch(&commit(retained), fx.commit_time())
        .await
        .unwrap();

    let state = fx.store.timer_state().await.unwrap();
    assert_eq!(state.activity, [("d1".to_owned(), "motion".to_owned(), t1)]);
    let mut seen = state.seen.clone();
    seen.sort();
    assert_eq!(seen, [("d1".to_owned(), t2), ("d2".to_owned(), t1)]);
}

/// A batch's deadline changes (the store's, then the engine's) leave the last change of each
/// deadline, however many there were.
async fn the_last_change_of_each_deadline_in_a_batch_stands(store: Store) {
    let fx = Fx::new(store);
    let dl = |rule: &str, subject: &str, due: i64| Deadline {
        kind: DeadlineKind::Hold,
        rule: rule.to_owned(),
        subject: subject.to_owned(),
        partition: subject.to_owned(),
        due,
        alert_id: None,
        level: 0,
        since: 1,
        version: "v".to_owned(),
        detail: json!({"n": due}),
    };
    let mut batch = fx.batch(Vec::new());
    batch.deadlines = vec![
        DeadlineChange::Put(dl("a", "d1", 10)),
        DeadlineChange::Put(dl("b", "d1", 20)),
        DeadlineChange::Put(dl("c", "d1", 30)),
        DeadlineChange::Delete(DeadlineKind::Hold, "a".to_owned(), "d1".to_owned()),
        DeadlineChange::Put(dl("b", "d1", 21)),
    ];
    fx.store
        .commit_batch(&batch, fx.commit_time())
        .await
        .unwrap();
    let mut batch = fx.batch(Vec::new());
    batch.deadlines = vec![
        DeadlineChange::Delete(DeadlineKind::Hold, "c".to_owned(), "d1".to_owned()),
        DeadlineChange::Put(dl("a", "d1", 11)),
        DeadlineChange::Delete(DeadlineKind::Hold, "zz".to_owned(), "d9".to_owned()),
    ];
    fx.store
        .commit_batch(&batch, fx.commit_time())
        .await
        .unwrap();
    let mut got: Vec<(String, i64, serde_json::Value)> = fx
        .store
        .timer_state()
        .await
        .unwrap()
        .deadlines
        .into_iter()
        .map(|d| (d.rule, d.due, d.detail))
        .collect();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        got,
        [
            ("a".to_owned(), 11, json!({"n": 11})),
            ("b".to_owned(), 21, json!({"n": 21})),
        ]
    );
}

async fn calls_and_notes_go_on_the_timeline_and_one_claim_wins(store: Store) {
    let fx = Fx::new(store);
    let out = fx.send("watch-1", &sos(1, "2026-11-23T09:59:59Z")).await;
    let id = out.changes[0].alert_id;

    // A call while nobody has taken it yet: the first operator may ring before claiming.
    fx.advance(Duration::seconds(5));
    let called_at = fx.now();
    let a = fx
        .store
        .record_call(id, "op-1", called_at, "resident", "no_answer", None)
        .await
        .unwrap();
    assert_eq!((a.status.as_str(), a.updated_at), ("open", called_at));

    // Bad values are refused by name and change nothing.
    for (to, outcome, note, names) in [
        ("resident", "voicemail", None, "voicemail"),
        ("cousin", "answered", None, "cousin"),
    ] {
        match fx
            .store
            .record_call(id, "op-1", fx.now(), to, outcome, note)
            .await
        {
            Err(StoreError::Validation(msg)) => assert!(msg.contains(names), "{msg}"),
            other => panic!("call to {to} / {outcome}: expected Validation, got {other:?}"),
        }
    }
    let long = "x".repeat(MAX_NOTE_CHARS + 1);
    for text in ["  ", long.as_str()] {
        match fx.store.add_note(id, "op-1", fx.now(), text).await {
            Err(StoreError::Validation(msg)) => assert!(msg.contains("text"), "{msg}"),
            other => panic!(
                "note of {} chars: expected Validation, got {other:?}",
                text.len()
            ),
        }
    }
    match fx.store.add_note(987_654, "op-1", fx.now(), "hello").await {
        Err(StoreError::NotFound(n)) => assert_eq!(n, 987_654),
        other => panic!("note on an unknown alert: expected NotFound, got {other:?}"),
    }

    // Sixteen operators claim it at once: one wins, each other is told who has it.
    fx.advance(Duration::seconds(5));
    let now = fx.now();
    let claims = (0..16).map(|i| {
        let store = fx.store.clone();
        tokio::spawn(async move {
            let op = format!("op-{i}");
            (op.clone(), store.acknowledge(id, &op, now).await)
        })
    });
    let mut winners = Vec::new();
    let mut refused = Vec::new();
    for claim in claims {
        match claim.await.unwrap() {
            (op, Ok(a)) => winners.push((op, a)),
            (op, Err(StoreError::Conflict { status, holder, .. })) => {
                refused.push((op, status, holder))
            }
            (op, Err(e)) => panic!("{op}: unexpected {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one claim wins: {winners:?}");
    let (winner, claimed) = &winners[0];
    assert_eq!(claimed.acknowledged_by.as_deref(), Some(winner.as_str()));
    assert_eq!(refused.len(), 15);
    for (op, status, holder) in &refused {
        assert_eq!(
            (status.as_str(), holder.as_deref()),
            ("acknowledged", Some(winner.as_str())),
            "{op} is told who holds it"
        );
    }

    fx.advance(Duration::seconds(30));
    fx.store
        .record_call(
            id,
            winner,
            fx.now(),
            "contact1",
            "answered",
            Some("daughter on her way"),
        )
        .await
        .unwrap();
    fx.store
        .add_note(
            id,
            winner,
            fx.now(),
            "Resident fell in the kitchen; conscious.",
        )
        .await
        .unwrap();
    fx.advance(Duration::minutes(10));
    fx.store
        .resolve(id, "op-sup", fx.now(), "carer_visited", None)
        .await
        .unwrap();

    // Resolved: no more calls on it (the holder now is who resolved it), notes still.
    match fx
        .store
        .record_call(id, winner, fx.now(), "resident", "answered", None)
        .await
    {
        Err(StoreError::Conflict {
            status,
            holder,
            step,
            ..
        }) => assert_eq!(
            (status.as_str(), holder.as_deref(), step),
            ("resolved", Some("op-sup"), "call")
        ),
        other => panic!("call on a resolved alert: expected Conflict, got {other:?}"),
    }
    fx.advance(Duration::seconds(1));
    let noted_at = fx.now();
    let a = fx
        .store
        .add_note(id, "op-sup", noted_at, "Follow-up visit booked.")
        .await
        .unwrap();
    assert_eq!((a.status.as_str(), a.updated_at), ("resolved", noted_at));

    let (_, timeline) = fx.alert(id).await;
    let steps: Vec<(&str, &str, Value)> = timeline
        .iter()
        .filter(|t| t.actor != "engine")
        .map(|t| (t.actor.as_str(), t.action.as_str(), t.detail.clone()))
        .collect();
    assert_eq!(
        steps,
        vec![
            (
                "op-1",
                "call",
                json!({"to": "resident", "outcome": "no_answer", "note": null})
            ),
            (
                winner.as_str(),
                "acknowledged",
                json!({"outcome": null, "note": null})
            ),
            (
                winner.as_str(),
                "call",
                json!({"to": "contact1", "outcome": "answered", "note": "daughter on her way"})
            ),
            (
                winner.as_str(),
                "note",
                json!({"text": "Resident fell in the kitchen; conscious."})
            ),
            (
                "op-sup",
                "resolved",
                json!({"outcome": "carer_visited", "note": null})
            ),
            ("op-sup", "note", json!({"text": "Follow-up visit booked."})),
        ]
    );
}

/// 19. The monthly report against a month whose answers are known: alerts opened in the month
///     (Asia/Shanghai) of residents of the region, their times to acknowledge, and the
///     services done, rated, followed up and arrived at, by provider; another region's
///     alerts and records, and an alert of the next month, are not counted.
async fn the_monthly_report_counts_a_known_month(store: Store) {
    use anxin::domain::report::{MonthlyReport, month_bounds};
    use anxin::store::CheckOut;
    let fx = Fx::new(store);
    let other = Resident {
        region: "elsewhere".into(),
        ..resident("r2", "Zhao Lei")
    };
    for r in [resident("r1", "Li Hua"), other] {
        fx.store
            .put_resident(&r, &Default::default(), fx.now())
            .await
            .unwrap();
    }
    // An SOS of `resident` on `device`, acknowledged `ack` seconds after it opened.
    let sos_of = |device: &'static str, resident: &'static str| {
        let mut items = fx.message(device, &sos(1, "2026-11-23T09:59:59Z"));
        for item in &mut items {
            if let WriteItem::Event { event, .. } = item {
                event.resident_id = Some(resident.to_owned());
            }
        }
        items
    };
    let mut opened = Vec::new();
    for (device, resident, ack) in [
        ("d1", "r1", Some(30)),
        ("d2", "r1", Some(60)),
        ("d3", "r1", Some(120)),
        ("d4", "r1", None),
        ("d5", "r2", Some(10)),
    ] {
        let out = fx.commit(sos_of(device, resident)).await;
        let id = out.changes[0].alert_id;
        let (a, _) = fx.alert(id).await;
        if let Some(s) = ack {
            fx.store
                .acknowledge(id, "op", a.opened_at + Duration::seconds(s))
                .await
                .unwrap();
        }
        opened.push((id, a.opened_at));
    }
    // Carers: two sent to alerts by P1 (on site after 600 s and 1 200 s), a planned visit by
    // P2, and one to the other region's alert.
    let visit = |id: i64,
                 provider: &'static str,
                 arrive: i64,
                 items: &'static [&'static str],
                 rating: Option<i64>| {
        let fx = &fx;
        let opened = opened.iter().find(|(a, _)| *a == id).unwrap().1;
        async move {
            let (_, record) = fx
                .store
                .dispatch(
                    id,
                    "op",
                    opened + Duration::seconds(arrive - 60),
                    &anxin::store::Crew::named(provider, "w"),
                )
                .await
                .unwrap();
            visited(
                fx,
                record,
                opened + Duration::seconds(arrive),
                items,
                rating,
            )
            .await
        }
    };
    async fn visited(
        fx: &Fx,
        record: i64,
        arrived: DateTime<Utc>,
        items: &[&str],
        rating: Option<i64>,
    ) -> i64 {
        fx.store
            .check_in(record, "w", arrived, None, None, None)
            .await
            .unwrap();
        let out = CheckOut {
            at: None,
            position: None,
            items: items.iter().map(|s| s.to_string()).collect(),
            content: None,
            outcome: Some("done".into()),
            rating,
        };
        fx.store
            .check_out(record, "w", arrived + Duration::minutes(20), &out)
            .await
            .unwrap();
        record
    }
    let first = visit(opened[0].0, "P1", 600, &["meals", "daily_care"], Some(4)).await;
    visit(opened[1].0, "P1", 1200, &["meals"], Some(5)).await;
    visit(opened[4].0, "P1", 100, &["meals"], Some(1)).await;
    let planned = fx
        .store
        .plan_visit(
            "r1",
            "op",
            fx.now(),
            &anxin::store::Crew::named("P2", "w"),
            None,
        )
        .await
        .unwrap();
    visited(
        &fx,
        planned.id,
        fx.now() + Duration::hours(3),
        &["housekeeping"],
        None,
    )
    .await;
    fx.store
        .follow_up(
            first,
            "op",
            fx.now() + Duration::hours(5),
            "satisfied",
            None,
            None,
        )
        .await
        .unwrap();
    // The first minute of December in Shanghai is still November in UTC: not this month.
    fx.advance(at("2026-11-30T16:00:00Z") - fx.now());
    fx.commit(sos_of("d6", "r1")).await;

    let bounds = month_bounds("2026-11", chrono_tz::Asia::Shanghai).unwrap();
    let (alerts, records) = fx
        .store
        .report_facts(bounds.0, bounds.1, Some(&["xh".to_owned()]))
        .await
        .unwrap();
    let r = MonthlyReport::compute(
        "2026-11",
        Some("xh".into()),
        "Asia/Shanghai",
        bounds,
        &alerts,
        &records,
    );
    assert_eq!(r.alerts_by_kind, [("sos".to_owned(), 4)].into());
    assert_eq!(r.alerts_by_severity, [("critical".to_owned(), 4)].into());
    let a = &r.acknowledge;
    assert_eq!((a.alerts, a.acknowledged), (4, 3));
    assert_eq!((a.p50_s, a.p90_s), (Some(60.0), Some(120.0)));
    assert_eq!((a.within_60s, a.within_180s), (Some(0.5), Some(0.75)));
    let s = &r.services;
    assert_eq!(
        (s.services_done, s.rated, s.average_rating),
        (3, 2, Some(4.5))
    );
    assert_eq!(
        s.by_item,
        [
            ("daily_care".to_owned(), 1),
            ("housekeeping".to_owned(), 1),
            ("meals".to_owned(), 2)
        ]
        .into()
    );
    assert_eq!(s.follow_ups, 1);
    assert_eq!(
        (s.arrivals, s.arrival_p50_s, s.arrival_p90_s),
        (2, Some(600.0), Some(1200.0))
    );
    assert_eq!(r.providers.len(), 2);
    assert_eq!(
        (
            r.providers["P1"].services_done,
            r.providers["P1"].average_rating
        ),
        (2, Some(4.5))
    );
    assert_eq!(
        (r.providers["P2"].services_done, r.providers["P2"].rated),
        (1, 0)
    );
    let csv = r.to_csv().unwrap();
    assert!(csv.contains("acknowledge,,within_60s,0.500"), "{csv}");
    assert!(csv.contains("services_by_item,P1,meals,2"), "{csv}");

    // Every region (an admin's report): the other region's alert and visit count too.
    let (alerts, records) = fx
        .store
        .report_facts(bounds.0, bounds.1, None)
        .await
        .unwrap();
    let all = MonthlyReport::compute("2026-11", None, "Asia/Shanghai", bounds, &alerts, &records);
    assert_eq!((all.acknowledge.alerts, all.services.services_done), (5, 4));
}

// ---------------------------------------------------------------------------------------------
// 18. The notifications outbox
// ---------------------------------------------------------------------------------------------

async fn the_outbox_writes_fans_out_claims_once_and_keeps_what_is_undelivered(store: Store) {
    let fx = Fx::new(store);
    let both = |_: &anxin::store::NotificationHead| vec!["a".to_owned(), "b".to_owned()];
    let opened = fx.send("watch-1", &sos(1, "2026-11-23T09:59:58Z")).await;
    let alert = opened.changes[0].alert_id;
    // A high alert notifies nobody.
    fx.send("leak-1", r#"{"type":"water","state":"leak"}"#)
        .await;
    // An escalation step of the SOS: level 1.
    fx.advance(Duration::seconds(60));
    let escalated = fx
        .commit(vec![WriteItem::Escalate {
            alert_id: alert,
            rule: "sos".into(),
            level: 1,
            due: to_millis(fx.now()),
            late: false,
            next: None,
        }])
        .await;
    assert_eq!(escalated.changes[0].action, "escalated");

    let now = fx.commit_time();
    assert_eq!(fx.store.outbox_fan_out(10, now, both).await.unwrap(), 2);
    assert_eq!(
        fx.store.outbox_fan_out(10, now, both).await.unwrap(),
        0,
        "fanned out once"
    );
    let ends = ["a".to_owned(), "b".to_owned()];
    let lease = now + Duration::seconds(15);
    let claimed = fx.store.outbox_claim(&ends, now, lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 4, "two notifications, two endpoints");
    let mut causes: Vec<(String, i64, i64)> = claimed
        .iter()
        .map(|c| {
            let p: Value = serde_json::from_str(&c.payload).unwrap();
            assert_eq!(p["alert"]["id"], alert);
            assert_eq!(p["alert"]["severity"], "critical");
            assert_eq!(c.attempts, 1);
            (
                p["cause"].as_str().unwrap().to_owned(),
                p["level"].as_i64().unwrap(),
                p["alert"]["escalation_level"].as_i64().unwrap(),
            )
        })
        .collect();
    causes.sort();
    causes.dedup();
    assert_eq!(
        causes,
        [("escalated".to_owned(), 1, 1), ("opened".to_owned(), 0, 0)],
        "each payload is the alert as its own commit saw it"
    );
    assert!(
        fx.store
            .outbox_claim(&ends, now, lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased: nobody else claims them"
    );
    let again = fx
        .store
        .outbox_claim(&ends, lease, lease + Duration::seconds(15), 10)
        .await
        .unwrap();
    assert_eq!(
        again.len(),
        4,
        "due again when the lease ends (a crashed attempt)"
    );
    assert!(again.iter().all(|c| c.attempts == 2));

    let (first, second) = (&again[0], &again[1]);
    assert!(fx.store.outbox_delivered(first.id, lease).await.unwrap());
    assert!(
        !fx.store.outbox_delivered(first.id, lease).await.unwrap(),
        "once"
    );
    fx.store
        .outbox_failed(second.id, "HTTP 500", None)
        .await
        .unwrap();
    let (dead, next) = fx
        .store
        .outbox_list("dead", None, 10, None, None)
        .await
        .unwrap();
    assert_eq!((dead.len(), next), (1, None));
    assert_eq!(
        (
            dead[0].id,
            dead[0].attempts,
            dead[0].last_error.as_deref(),
            dead[0].alert_id
        ),
        (second.id, 2, Some("HTTP 500"), alert)
    );
    let stats = fx.store.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (2, 1));
    // The opening's two deliveries are done (one delivered, one dead): the escalation's wait,
    // committed a minute later.
    assert_eq!(
        stats.oldest_at,
        Some(to_millis(opened_at(&fx, alert).await) + 60_000)
    );

    let back = fx.store.outbox_redrive(second.id, lease).await.unwrap();
    assert_eq!((back.status.as_str(), back.attempts), ("pending", 0));
    assert!(matches!(
        fx.store.outbox_redrive(second.id, lease).await,
        Err(StoreError::DeliveryConflict { .. })
    ));
    assert!(matches!(
        fx.store.outbox_redrive(999_999, lease).await,
        Err(StoreError::DeliveryNotFound(999_999))
    ));

    // Purged only once every delivery of a notification was made.
    let far = lease + Duration::days(365);
    assert_eq!(fx.store.outbox_purge(far).await.unwrap(), 0);
    let rest = fx.store.outbox_claim(&ends, far, far, 10).await.unwrap();
    assert_eq!(rest.len(), 3);
    for c in &rest {
        assert!(fx.store.outbox_delivered(c.id, far).await.unwrap());
    }
    assert_eq!(fx.store.outbox_purge(far).await.unwrap(), 2);
    let (left, _) = fx
        .store
        .outbox_list("delivered", None, 10, None, None)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");

    // An endpoint dropped from the configuration: its pending deliveries become dead letters.
    // A resident's device: the payload names the resident (and the alert's resident).
    fx.store
        .put_resident(&resident("r9", "Wang Fang"), &Default::default(), fx.now())
        .await
        .unwrap();
    let mut items = fx.message("watch-2", &sos(1, "2026-11-23T10:01:00Z"));
    if let WriteItem::Event { event, .. } = &mut items[0] {
        event.resident_id = Some("r9".to_owned());
    }
    let later = fx.commit(items).await;
    assert_eq!(later.changes[0].action, "opened");
    fx.store.outbox_fan_out(10, far, both).await.unwrap();
    let to_a = fx
        .store
        .outbox_claim(&["a".to_owned()], far, far + Duration::seconds(15), 10)
        .await
        .unwrap();
    assert_eq!(to_a.len(), 1);
    let p: Value = serde_json::from_str(&to_a[0].payload).unwrap();
    assert_eq!(
        (&p["alert"]["resident_id"], &p["resident"]),
        (
            &json!("r9"),
            &json!({"id": "r9", "name": "Wang Fang", "region": "xh"})
        ),
        "{p}"
    );
    assert_eq!(fx.store.outbox_orphans(&["a".to_owned()]).await.unwrap(), 1);
    let (dead, _) = fx
        .store
        .outbox_list("dead", Some("b"), 10, None, None)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("the endpoint is no longer configured")
    );
}

async fn opened_at(fx: &Fx, alert: i64) -> DateTime<Utc> {
    fx.alert(alert).await.0.opened_at
}
