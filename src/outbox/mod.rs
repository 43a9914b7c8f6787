//! The notifications outbox's dispatcher: delivers what `commit_batch` wrote to the
//! `[[notify.webhook]]` endpoints, with retries, backoff and dead letters (README
//! "Notifications (webhooks)", ARCHITECTURE.md "Notifications outbox").
//!
//! One task. Each round it (1) fans out at most `batch` notifications into deliveries (one per
//! matching endpoint), (2) claims, per endpoint, as many due deliveries as that endpoint has
//! free attempt slots and starts an attempt at each as a task of its own, (3) as each attempt
//! ends, records its answer: 2xx delivered; otherwise due again after a backoff, or a dead
//! letter after `max_attempts`. It wakes on every committed alert change (the live feed's
//! head), on a redrive, when an attempt ends, at the next delivery's due time, and at least
//! every `poll_ms`.
//!
//! Bounds: at most `batch` attempts in flight, each endpoint an equal share (so one that hangs
//! holds only its own slots); everything else waits in the table, oldest first — when it is
//! "full", the backlog is simply rows not yet claimed. The pipeline never waits for the
//! outbox: a notification is one more row in the batch's transaction. Delivery is at least
//! once: a crash after the POST and before the answer is recorded repeats the attempt when
//! its lease runs out, with the same `X-Anxin-Delivery`, on which receivers dedupe.

pub mod export;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, from_millis, to_millis};
use crate::config::notify::{Cause, NotifyConfig, WebhookConfig};
use crate::domain::alert::Severity;
use crate::store::{Claimed, NotificationHead, Store};
use crate::telemetry;
use webhook::Attempt;

/// How often the gauges (and the next due time) are read from the store while attempts run.
const STATS_EVERY: Duration = Duration::from_millis(500);

/// The least time between two rounds that something woke.
const MIN_ROUND_GAP: Duration = Duration::from_millis(20);

/// At shutdown, how long attempts under way may take to finish and be recorded.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// A claimed delivery is leased for its endpoint's longest timeout plus this: if its answer
/// is never recorded (a crash), it comes due again then.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// How often delivered notifications past their retention are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Recording an attempt's result is tried this many times before the lease is left to
/// repeat the attempt (the store may be briefly away).
const RECORD_TRIES: u32 = 3;

/// A handle on the outbox for the API: which endpoints exist, and a way to wake the
/// dispatcher (after a redrive). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    wake: Notify,
    endpoints: Vec<String>,
}

impl Outbox {
    /// A handle for the endpoints of `cfg`.
    pub fn new(cfg: &NotifyConfig) -> Outbox {
        Outbox {
            inner: Arc::new(Inner {
                wake: Notify::new(),
                endpoints: cfg.webhooks.iter().map(|w| w.name.clone()).collect(),
            }),
        }
    }

    /// Whether `name` is a configured endpoint.
    pub fn is_configured(&self, name: &str) -> bool {
        self.inner.endpoints.iter().any(|e| e == name)
    }

    /// The configured endpoints' names.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// Makes the dispatcher look at the table now (a permit is kept if it is busy).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }
}

/// The endpoints a notification goes to.
fn route(webhooks: &[WebhookConfig], n: &NotificationHead) -> Vec<String> {
    let (Some(cause), Some(severity)) = (Cause::parse(&n.cause), Severity::parse(&n.severity))
    else {
        return Vec::new();
    };
    webhooks
        .iter()
        .filter(|w| w.wants(cause, &n.alert_kind, severity))
        .map(|w| w.name.clone())
        .collect()
}

/// Runs the dispatcher until `stop`. `changes` is the live feed's head: it moves after every
/// committed alert change, which is when new notifications may exist.
pub async fn run(
    outbox: Outbox,
    cfg: NotifyConfig,
    store: Store,
    clock: SharedClock,
    mut changes: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = test_hooks::before_dispatch() => {}
        _ = stop.cancelled() => return,
    }
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("anxin/", env!("CARGO_PKG_VERSION")))
        // A fresh connection per attempt: notifications are rare, and a pooled connection the
        // receiver closed while idle would fail an attempt for nothing.
        .pool_max_idle_per_host(0)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            // Only a broken TLS setup of the host gets here; notifications wait in the table.
            tracing::error!(error = %e, "Cannot build the webhook HTTP client; notifications are kept and not sent");
            return;
        }
    };
    let endpoints: HashMap<String, WebhookConfig> = cfg
        .webhooks
        .iter()
        .map(|w| (w.name.clone(), w.clone()))
        .collect();
    let names = outbox.endpoints().to_vec();
    telemetry::outbox_endpoints(&names);
    let lease = cfg
        .webhooks
        .iter()
        .map(|w| Duration::from_millis(w.timeout_ms))
        .max()
        .unwrap_or_default()
        + LEASE_MARGIN;
    let poll = Duration::from_millis(cfg.poll_ms);
    let mut store_backoff = Duration::from_millis(200);

    // Deliveries to endpoints no longer configured would wait forever: dead letters, named.
    loop {
        match store.outbox_orphans(&names).await {
            Ok(0) => break,
            Ok(n) => {
                tracing::warn!(
                    deliveries = n,
                    "Pending deliveries to endpoints no longer configured are dead letters now; re-drive them once the endpoint is back"
                );
                break;
            }
            Err(e) => {
                telemetry::outbox_store_failed(&e);
                tokio::select! {
                    _ = tokio::time::sleep(store_backoff) => {}
                    _ = stop.cancelled() => return,
                }
                store_backoff = (store_backoff * 2).min(Duration::from_secs(5));
            }
        }
    }

    let mut d = Dispatcher {
        // An endpoint's share of the slots: one that hangs holds only its own, never another
        // endpoint's deliveries.
        per_endpoint: (cfg.batch / names.len().max(1)).max(1),
        busy: names
            .iter()
            .map(|n| (n.clone(), Arc::new(AtomicUsize::new(0))))
            .collect(),
        endpoints: Arc::new(endpoints),
        names,
        inflight: JoinSet::new(),
        client,
        lease,
        cfg,
        store,
        clock,
    };
    let mut feed_open = true;
    let mut last_purge: Option<Instant> = None;
    let mut last_stats: Option<Instant> = None;
    let mut next_due: Option<DateTime<Utc>> = None;
    while !stop.is_cancelled() {
        let more = match d.round().await {
            Ok(more) => {
                store_backoff = Duration::from_millis(200);
                more
            }
            Err(e) => {
                // The store is away: nothing is lost (every row waits in it); look again later.
                telemetry::outbox_store_failed(&e);
                let wait = store_backoff;
                store_backoff = (store_backoff * 2).min(Duration::from_secs(5));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
        };
        // The gauges and the next due time: at most every STATS_EVERY while attempts run
        // (each finished attempt reports its own next due time meanwhile).
        if d.inflight.is_empty() || last_stats.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
            last_stats = Some(Instant::now());
            match d.store.outbox_stats().await {
                Ok(stats) => {
                    let now = d.clock.now();
                    telemetry::outbox_gauges(
                        stats.pending,
                        stats.dead,
                        stats
                            .oldest_at
                            .map_or(0.0, |t| (to_millis(now) - t).max(0) as f64 / 1000.0),
                    );
                    next_due = stats.next_due_at.map(from_millis);
                }
                Err(e) => telemetry::outbox_store_failed(&e),
            }
        }
        if last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY) {
            last_purge = Some(Instant::now());
            let before = d.clock.now() - chrono::Duration::days(d.cfg.retention_days as i64);
            match d.store.outbox_purge(before).await {
                Ok(n) if n > 0 => tracing::info!(
                    notifications = n,
                    "Delivered notifications past their retention deleted"
                ),
                Ok(_) => {}
                Err(e) => telemetry::outbox_store_failed(&e),
            }
        }
        if more {
            // More notifications wait than one round fans out: go on at once.
            continue;
        }
        let wait = until(next_due, d.clock.now(), poll);
        tokio::select! {
            done = d.inflight.join_next(), if !d.inflight.is_empty() => {
                if let Some(Ok(Some(at))) = done {
                    next_due = Some(next_due.map_or(at, |n| n.min(at)));
                }
            }
            r = changes.changed(), if feed_open => {
                if r.is_err() {
                    feed_open = false;
                }
            }
            _ = outbox.inner.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => break,
        }
        // Alert changes can come hundreds a second in a storm; rounds a few milliseconds apart
        // take them all without keeping SQLite's one connection from the pipeline.
        tokio::select! {
            _ = tokio::time::sleep(MIN_ROUND_GAP) => {}
            _ = stop.cancelled() => break,
        }
    }
    // Attempts under way get a moment to finish and be recorded; any cut short is repeated
    // when its lease runs out, with the same X-Anxin-Delivery.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while d.inflight.join_next().await.is_some() {}
    })
    .await;
}

/// The dispatcher's state between rounds.
struct Dispatcher {
    cfg: NotifyConfig,
    store: Store,
    clock: SharedClock,
    client: reqwest::Client,
    endpoints: Arc<HashMap<String, WebhookConfig>>,
    names: Vec<String>,
    /// How long a claim holds a delivery: the longest timeout plus a margin.
    lease: Duration,
    /// Attempts at once per endpoint.
    per_endpoint: usize,
    /// Attempts under way per endpoint (each attempt holds a [`Slot`]).
    busy: HashMap<String, Arc<AtomicUsize>>,
    /// The attempts under way; each answers when it is due again (`None`: done or dead).
    inflight: JoinSet<Option<DateTime<Utc>>>,
}

impl Dispatcher {
    /// Fans out at most `batch` notifications, then claims, per endpoint, as many due
    /// deliveries as it has free slots and starts an attempt at each at once (so a claim's
    /// lease runs while its attempt does). `true` when more notifications wait to be fanned out.
    async fn round(&mut self) -> Result<bool, crate::store::StoreError> {
        let now = self.clock.now();
        let webhooks = &self.cfg.webhooks;
        let fanned = self
            .store
            .outbox_fan_out(self.cfg.batch, now, |n| route(webhooks, n))
            .await?;
        for name in &self.names {
            let busy = self.busy[name].clone();
            let free = self
                .per_endpoint
                .saturating_sub(busy.load(Ordering::SeqCst));
            if free == 0 {
                continue;
            }
            let claimed = self
                .store
                .outbox_claim(std::slice::from_ref(name), now, now + self.lease, free)
                .await?;
            for c in claimed {
                let slot = Slot::take(busy.clone());
                let (client, endpoints, store, clock) = (
                    self.client.clone(),
                    self.endpoints.clone(),
                    self.store.clone(),
                    self.clock.clone(),
                );
                self.inflight.spawn(async move {
                    let _slot = slot;
                    attempt(&client, &endpoints, &store, &clock, c).await
                });
            }
        }
        Ok(fanned == self.cfg.batch)
    }
}

/// One attempt's hold on its endpoint's slots; given back when the attempt ends, however it
/// ends.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(busy: Arc<AtomicUsize>) -> Slot {
        busy.fetch_add(1, Ordering::SeqCst);
        Slot(busy)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long to sleep: until the next delivery is due, at most `poll` (also the bound with a
/// clock that tests move by hand).
fn until(next_due: Option<DateTime<Utc>>, now: DateTime<Utc>, poll: Duration) -> Duration {
    match next_due {
        Some(due) => (due - now).to_std().unwrap_or_default().min(poll),
        None => poll,
    }
}

/// One attempt at one claimed delivery, and its result recorded; answers when the delivery
/// is due again (`None`: delivered, or a dead letter now).
async fn attempt(
    client: &reqwest::Client,
    endpoints: &HashMap<String, WebhookConfig>,
    store: &Store,
    clock: &SharedClock,
    c: Claimed,
) -> Option<DateTime<Utc>> {
    let Some(ep) = endpoints.get(&c.endpoint) else {
        // Claims name configured endpoints only.
        return None;
    };
    let out = webhook::outgoing(ep, &c, clock.now().timestamp());
    let result = webhook::send(client, ep, &c, out).await;
    let now = clock.now();
    match result {
        Attempt::Delivered(status) => {
            let latency = (to_millis(now) - c.created_at).max(0) as f64 / 1000.0;
            if record(|| store.outbox_delivered(c.id, now)).await {
                telemetry::outbox_delivered(&c.endpoint, c.id, c.attempts, status, latency);
            }
            None
        }
        Attempt::Failed { error, retry_after } => {
            let give_up = c.attempts >= i64::from(ep.max_attempts);
            let next = (!give_up).then(|| {
                let wait = webhook::backoff(
                    ep.backoff_initial_ms,
                    ep.backoff_max_ms,
                    c.attempts,
                    retry_after,
                );
                now + chrono::Duration::from_std(wait).unwrap_or_default()
            });
            if record(|| store.outbox_failed(c.id, &error, next)).await {
                match next {
                    Some(at) => telemetry::outbox_attempt_failed(
                        &c.endpoint,
                        c.id,
                        c.attempts,
                        &error,
                        (at - now).num_milliseconds(),
                    ),
                    None => telemetry::outbox_dead(
                        &c.endpoint,
                        c.id,
                        c.notification_id,
                        c.attempts,
                        &error,
                    ),
                }
            }
            next
        }
    }
}

/// Records a result, trying a few times; `false` when the store kept failing (the lease then
/// repeats the attempt, which the receiver recognises by its `X-Anxin-Delivery`).
async fn record<T, F, Fut>(f: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
{
    for i in 0..RECORD_TRIES {
        match f().await {
            Ok(_) => return true,
            Err(e) => {
                telemetry::outbox_store_failed(&e);
                tokio::time::sleep(Duration::from_millis(200 << i)).await;
            }
        }
    }
    false
}

/// Hooks for crash tests, compiled only with the `test-hooks` feature.
mod test_hooks {
    /// With `ANXIN_TEST_HOLD_OUTBOX=PATH`, the dispatcher writes PATH and then never starts:
    /// a test can SIGKILL the engine after notifications were committed and before any was
    /// fanned out or sent, deterministically.
    #[cfg(feature = "test-hooks")]
    pub async fn before_dispatch() {
        if let Ok(path) = std::env::var("ANXIN_TEST_HOLD_OUTBOX") {
            tracing::warn!(marker = %path, "Test hook: holding the notifications outbox until killed");
            let _ = std::fs::write(&path, b"holding");
            std::future::pending::<()>().await;
        }
    }

    #[cfg(not(feature = "test-hooks"))]
    pub async fn before_dispatch() {}
}
