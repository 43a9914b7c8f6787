//! Logs and metrics. Each notable event is one function that writes the log line and updates
//! the metric together; names are constants here so they stay consistent.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::event::{Event, Flaw};
use crate::protocol::{RejectReason, Rejection};
use crate::store::{BatchOutcome, StoreError};

/// Metric names.
pub mod names {
    /// MQTT publishes received.
    pub const MQTT_RECEIVED: &str = "anxin_mqtt_messages_received_total";
    /// MQTT publishes acked after commit.
    pub const MQTT_ACKED: &str = "anxin_mqtt_messages_acked_total";
    /// Acks not sent because their connection is gone (the broker redelivers).
    pub const MQTT_STALE_ACKS: &str = "anxin_mqtt_stale_acks_dropped_total";
    /// Connections established.
    pub const MQTT_CONNECTS: &str = "anxin_mqtt_connects_total";
    /// Connection errors.
    pub const MQTT_ERRORS: &str = "anxin_mqtt_connection_errors_total";
    /// 1 while connected and subscribed.
    pub const MQTT_READY: &str = "anxin_mqtt_subscribed";
    /// Received, not yet acked.
    pub const MQTT_UNACKED: &str = "anxin_mqtt_unacked_messages";
    /// Most messages held unacked at once since start (the broker's real window).
    pub const MQTT_UNACKED_PEAK: &str = "anxin_mqtt_unacked_messages_peak";
    /// Age of the oldest unacked message.
    pub const MQTT_OLDEST_UNACKED: &str = "anxin_mqtt_oldest_unacked_age_seconds";
    /// Refusals by reason.
    pub const REJECTED: &str = "anxin_ingest_rejected_total";
    /// Events stored.
    pub const ACCEPTED: &str = "anxin_ingest_events_accepted_total";
    /// Events recognised as redeliveries.
    pub const DUPLICATES: &str = "anxin_ingest_duplicates_total";
    /// Messages per committed batch.
    pub const BATCH_SIZE: &str = "anxin_pipeline_batch_messages";
    /// Commit latency.
    pub const COMMIT_SECONDS: &str = "anxin_store_commit_seconds";
    /// Failed commits (retried).
    pub const COMMIT_ERRORS: &str = "anxin_store_commit_errors_total";
    /// Counter: logins refused (wrong login or password, or a disabled user).
    pub const LOGINS_REFUSED: &str = "anxin_api_logins_refused_total";
    /// Counter: API writes the audit log could not record.
    pub const AUDIT_FAILED: &str = "anxin_api_audit_failures_total";
    /// Messages waiting in a shard queue.
    pub const QUEUE_DEPTH: &str = "anxin_pipeline_queue_depth";
    /// Deadlines and absences a shard is timing.
    pub const TIMERS_PENDING: &str = "anxin_rules_timers_pending";
    /// How late deadlines fired after their time.
    pub const TIMER_LAG: &str = "anxin_rules_timer_lag_seconds";
    /// Times the hand-off to a shard had to wait (broker exceeded its window).
    pub const HANDOFF_WAITS: &str = "anxin_pipeline_handoff_waits_total";
    /// Open device connections, by family.
    pub const TCP_CONNECTIONS: &str = "anxin_tcp_connections";
    /// Connections closed at once on arrival, by family and `reason` (`per_address`,
    /// `listener_full`, `descriptors`).
    pub const TCP_REFUSED: &str = "anxin_tcp_connections_refused_total";
    /// Frames received, by family.
    pub const TCP_FRAMES: &str = "anxin_tcp_frames_total";
    /// Frames a decoder had a problem with, by family and reason.
    pub const TCP_DECODE_ERRORS: &str = "anxin_tcp_decode_errors_total";
    /// Bytes skipped by a framer to resynchronise, by family and reason.
    pub const TCP_SKIPPED_BYTES: &str = "anxin_tcp_skipped_bytes_total";
    /// Times a connection's reads were paused by its frame-rate limit.
    pub const TCP_THROTTLED: &str = "anxin_tcp_throttled_total";
    /// Alerts opened.
    pub const ALERTS_OPENED: &str = "anxin_alerts_opened_total";
    /// Events a vendor profile produced, by `profile`.
    pub const PROFILE_EVENTS: &str = "anxin_profile_events_total";
    /// Elements or messages a vendor profile refused, by `profile` and `reason` (also counted
    /// in `anxin_ingest_rejected_total`).
    pub const PROFILE_REJECTED: &str = "anxin_profile_rejected_total";
    /// Configuration reloads, by `result` (`ok` or `refused`).
    pub const CONFIG_RELOADS: &str = "anxin_config_reloads_total";
    /// Retained messages replayed by the broker: recorded, never counted as presses.
    pub const MQTT_RETAINED: &str = "anxin_mqtt_retained_total";
    /// CONNACKs without the broker session the engine had: what the broker held is gone.
    pub const MQTT_SESSION_LOST: &str = "anxin_mqtt_session_lost_total";
    /// Always 1; the labels say which build runs (`version`, `profile`, `features`).
    pub const BUILD_INFO: &str = "anxin_build_info";
    /// Unresolved alerts, by `severity`; refreshed from the store every 2 s.
    pub const ALERTS_OPEN: &str = "anxin_alerts_open";
    /// Consoles connected to `GET /api/stream`.
    pub const STREAM_CLIENTS: &str = "anxin_stream_clients";
    /// Times a live-feed client was told to reload (`resync`), by `reason`.
    pub const STREAM_RESYNCS: &str = "anxin_stream_resyncs_total";
    /// Device connections closed for not identifying their device in time, by family.
    pub const TCP_LOGIN_TIMEOUTS: &str = "anxin_tcp_login_timeouts_total";
    /// Device connections closed after too many bytes of junk, by family.
    pub const TCP_JUNK_CLOSED: &str = "anxin_tcp_junk_closed_total";
    /// Unidentified device connections closed to admit a new one at a full limit, by family.
    pub const TCP_EVICTED: &str = "anxin_tcp_connections_evicted_total";
    /// Failed accepts on a device listener (out of descriptors and the like), by family.
    pub const TCP_ACCEPT_ERRORS: &str = "anxin_tcp_accept_errors_total";
    /// Device connections allowed over all listeners (the open-files limit less the reserve,
    /// or the listeners' own limits).
    pub const TCP_CONNECTION_CAP: &str = "anxin_tcp_connections_cap";
    /// Webhook attempts, by `endpoint` and `result` (`delivered`, `failed`: retried later,
    /// `dead`: failed for the last time).
    pub const OUTBOX_DELIVERIES: &str = "anxin_outbox_deliveries_total";
    /// From a notification's commit to its endpoint's 2xx, by `endpoint`.
    pub const OUTBOX_LATENCY: &str = "anxin_outbox_delivery_latency_seconds";
    /// Age of the oldest notification not yet delivered (pending delivery or not fanned out).
    pub const OUTBOX_AGE: &str = "anxin_outbox_oldest_pending_age_seconds";
    /// Deliveries waiting for their next attempt.
    pub const OUTBOX_PENDING: &str = "anxin_outbox_pending_deliveries";
    /// Dead letters (deliveries that gave up), until re-driven.
    pub const OUTBOX_DEAD: &str = "anxin_outbox_dead_letters";
}

/// HELP text of every counter, in one place so none is left without.
const COUNTERS: &[(&str, &str)] = &[
    (
        names::MQTT_RECEIVED,
        "MQTT publishes received from the broker.",
    ),
    (
        names::MQTT_ACKED,
        "MQTT publishes acknowledged to the broker, each after its commit.",
    ),
    (
        names::MQTT_STALE_ACKS,
        "Acks not sent because their connection is gone; the broker redelivers those messages.",
    ),
    (
        names::MQTT_CONNECTS,
        "Connections to the MQTT broker established.",
    ),
    (
        names::MQTT_ERRORS,
        "MQTT connection errors (each followed by a reconnect).",
    ),
    (
        names::REJECTED,
        "Messages or array elements refused, by reason; each is stored with its raw bytes.",
    ),
    (names::ACCEPTED, "Events stored."),
    (
        names::DUPLICATES,
        "Events recognised as retransmits or redeliveries and not stored again.",
    ),
    (
        names::COMMIT_ERRORS,
        "Failed batch commits; the batch is retried and its messages stay unacked.",
    ),
    (
        names::HANDOFF_WAITS,
        "Times the hand-off to a shard waited because its queue was full.",
    ),
    (
        names::LOGINS_REFUSED,
        "Logins refused: wrong login or password, or a disabled user.",
    ),
    (
        names::AUDIT_FAILED,
        "API writes the audit log could not record (the write itself was committed).",
    ),
    (
        names::TCP_REFUSED,
        "Device connections refused at a connection limit, by family and reason (per_address, listener_full, descriptors).",
    ),
    (
        names::TCP_FRAMES,
        "Frames received from 4G devices, by family.",
    ),
    (
        names::TCP_DECODE_ERRORS,
        "Frames a decoder had a problem with, by family and reason.",
    ),
    (
        names::TCP_SKIPPED_BYTES,
        "Bytes a framer skipped to find the next frame, by family and reason.",
    ),
    (
        names::TCP_THROTTLED,
        "Times a connection's reads were paused by its frame-rate limit.",
    ),
    (names::ALERTS_OPENED, "Alerts opened, by kind and severity."),
    (
        names::PROFILE_EVENTS,
        "Events a vendor profile produced, by profile.",
    ),
    (
        names::PROFILE_REJECTED,
        "Elements or messages a vendor profile refused, by profile and reason (also in anxin_ingest_rejected_total).",
    ),
    (
        names::CONFIG_RELOADS,
        "Configuration reloads, by result (ok or refused).",
    ),
    (
        names::STREAM_RESYNCS,
        "Live-feed clients told to reload from GET /api/alerts, by reason.",
    ),
    (
        names::TCP_LOGIN_TIMEOUTS,
        "Device connections closed for not identifying their device within the login deadline, by family.",
    ),
    (
        names::TCP_JUNK_CLOSED,
        "Device connections closed after too many bytes without a usable frame, by family.",
    ),
    (
        names::TCP_EVICTED,
        "Unidentified device connections closed to admit a new one at a full limit, by family.",
    ),
    (
        names::TCP_ACCEPT_ERRORS,
        "Failed accepts on a device listener (out of descriptors and the like), by family.",
    ),
    (
        names::MQTT_RETAINED,
        "Retained messages the broker replayed on subscribe: recorded, never counted as presses.",
    ),
    (
        names::MQTT_SESSION_LOST,
        "Connections on which the broker no longer had the engine's session: what it held for us is gone.",
    ),
    (
        names::OUTBOX_DELIVERIES,
        "Webhook attempts by endpoint and result: delivered (2xx), failed (retried later), dead (failed for the last time).",
    ),
];

/// HELP text of every gauge.
const GAUGES: &[(&str, &str)] = &[
    (
        names::MQTT_READY,
        "1 while connected to the broker and subscribed, else 0.",
    ),
    (
        names::MQTT_UNACKED,
        "Messages received from the broker and not yet acked.",
    ),
    (
        names::MQTT_UNACKED_PEAK,
        "Most messages held unacked at once since start: the broker's real in-flight window.",
    ),
    (
        names::MQTT_OLDEST_UNACKED,
        "Age in seconds of the oldest message received and not yet acked.",
    ),
    (
        names::QUEUE_DEPTH,
        "Messages waiting in a pipeline shard's queue, by shard.",
    ),
    (
        names::TIMERS_PENDING,
        "Rule deadlines and absences a pipeline shard is timing, by shard.",
    ),
    (
        names::TCP_CONNECTIONS,
        "Open 4G device connections, by family.",
    ),
    (
        names::BUILD_INFO,
        "Always 1; the labels name the running build.",
    ),
    (
        names::ALERTS_OPEN,
        "Unresolved alerts by severity, refreshed from the store every 2 seconds.",
    ),
    (
        names::STREAM_CLIENTS,
        "Consoles connected to the live feed (GET /api/stream).",
    ),
    (
        names::TCP_CONNECTION_CAP,
        "Device connections allowed over all listeners: the listeners' own limits, or the open-files limit less the reserve.",
    ),
    (
        names::OUTBOX_AGE,
        "Age in seconds of the oldest notification not yet delivered to every endpoint (0 when none waits).",
    ),
    (
        names::OUTBOX_PENDING,
        "Webhook deliveries waiting for their next attempt.",
    ),
    (
        names::OUTBOX_DEAD,
        "Webhook deliveries that gave up after max_attempts (dead letters), until re-driven.",
    ),
];

/// HELP text of every histogram.
const HISTOGRAMS: &[(&str, &str)] = &[
    (names::BATCH_SIZE, "Messages per committed batch."),
    (
        names::COMMIT_SECONDS,
        "Time to commit one batch, in seconds.",
    ),
    (
        names::TIMER_LAG,
        "How long after its time a rule deadline was taken up by its shard, in seconds (a late one, due while the engine was down, included).",
    ),
    (
        names::OUTBOX_LATENCY,
        "From a notification's commit to its endpoint's 2xx answer, in seconds, by endpoint (retries included).",
    ),
];

/// Label values known at start-up, so every series can be shown (at zero) before its first
/// event: a dashboard or alert rule then sees 0, not "no data".
#[derive(Debug, Clone, Default)]
pub struct KnownLabels {
    /// Pipeline shards.
    pub shards: usize,
    /// (kind, severity) of each rule.
    pub rule_alerts: Vec<(String, String)>,
    /// Vendor profile names.
    pub profiles: Vec<String>,
}

/// Gives every series its HELP text and registers every series whose labels are known now at
/// zero (labels that only a decoder knows, such as TCP decode-error reasons, appear on first
/// use). Call once at start-up, before the tasks that update them run.
pub fn register_all(known: &KnownLabels) {
    use crate::domain::alert::Severity;
    use crate::protocol::RejectReason;
    use crate::protocol::tcp::Protocol;
    use metrics::{describe_counter, describe_gauge, describe_histogram};

    for (name, help) in COUNTERS {
        describe_counter!(*name, *help);
    }
    for (name, help) in GAUGES {
        describe_gauge!(*name, *help);
    }
    for (name, help) in HISTOGRAMS {
        describe_histogram!(*name, *help);
    }
    for name in [
        names::MQTT_RECEIVED,
        names::MQTT_ACKED,
        names::MQTT_STALE_ACKS,
        names::MQTT_CONNECTS,
        names::MQTT_ERRORS,
        names::ACCEPTED,
        names::DUPLICATES,
        names::COMMIT_ERRORS,
        names::HANDOFF_WAITS,
        names::LOGINS_REFUSED,
        names::AUDIT_FAILED,
        names::TCP_THROTTLED,
        names::MQTT_RETAINED,
        names::MQTT_SESSION_LOST,
    ] {
        counter!(name).increment(0);
    }
    for name in [
        names::MQTT_READY,
        names::MQTT_UNACKED,
        names::MQTT_UNACKED_PEAK,
        names::MQTT_OLDEST_UNACKED,
        names::STREAM_CLIENTS,
    ] {
        gauge!(name).set(0.0);
    }
    // Registering is enough: the exporter renders a registered histogram with empty buckets.
    let _ = histogram!(names::BATCH_SIZE);
    let _ = histogram!(names::COMMIT_SECONDS);
    let _ = histogram!(names::TIMER_LAG);
    for r in RejectReason::ALL {
        counter!(names::REJECTED, "reason" => r.as_str()).increment(0);
    }
    for p in Protocol::ALL {
        gauge!(names::TCP_CONNECTIONS, "family" => p.name()).set(0.0);
        for r in crate::ingest::tcp::admission::Refusal::ALL {
            counter!(names::TCP_REFUSED, "family" => p.name(), "reason" => r.as_str()).increment(0);
        }
        for name in [
            names::TCP_LOGIN_TIMEOUTS,
            names::TCP_JUNK_CLOSED,
            names::TCP_EVICTED,
            names::TCP_ACCEPT_ERRORS,
        ] {
            counter!(name, "family" => p.name()).increment(0);
        }
        counter!(names::TCP_FRAMES, "family" => p.name()).increment(0);
    }
    for shard in 0..known.shards {
        gauge!(names::QUEUE_DEPTH, "shard" => shard.to_string()).set(0.0);
    }
    for (kind, severity) in &known.rule_alerts {
        counter!(names::ALERTS_OPENED, "kind" => kind.clone(), "severity" => severity.clone())
            .increment(0);
    }
    for profile in &known.profiles {
        counter!(names::PROFILE_EVENTS, "profile" => profile.clone()).increment(0);
        for r in RejectReason::ALL {
            counter!(names::PROFILE_REJECTED, "profile" => profile.clone(), "reason" => r.as_str())
                .increment(0);
        }
    }
    for result in ["ok", "refused"] {
        counter!(names::CONFIG_RELOADS, "result" => result).increment(0);
    }
    for s in Severity::ALL {
        gauge!(names::ALERTS_OPEN, "severity" => s.as_str()).set(0.0);
    }
    for reason in ResyncReason::ALL {
        counter!(names::STREAM_RESYNCS, "reason" => reason.as_str()).increment(0);
    }
    gauge!(
        names::BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "profile" => if cfg!(debug_assertions) { "debug" } else { "release" },
        "features" => if cfg!(feature = "test-hooks") { "test-hooks" } else { "" }
    )
    .set(1.0);
}

/// Sets the open-alerts gauge from a count per severity; severities missing from `counts`
/// have none open.
pub fn alerts_open(counts: &[(crate::domain::alert::Severity, i64)]) {
    for s in crate::domain::alert::Severity::ALL {
        let n = counts
            .iter()
            .filter(|(sev, _)| *sev == s)
            .map(|(_, n)| *n)
            .sum::<i64>();
        gauge!(names::ALERTS_OPEN, "severity" => s.as_str()).set(n as f64);
    }
}

/// Counting the open alerts failed (the store is unreachable); the gauge keeps its last value.
pub fn alerts_open_failed(e: &StoreError) {
    if let Some(suppressed) = allow_log("alerts_open") {
        tracing::warn!(error = %e, suppressed_since_last = suppressed, "Could not count open alerts; anxin_alerts_open keeps its last value");
    }
}

/// Registers the outbox's series for each configured endpoint at zero, and its gauges.
pub fn outbox_endpoints(endpoints: &[String]) {
    for e in endpoints {
        for result in ["delivered", "failed", "dead"] {
            counter!(names::OUTBOX_DELIVERIES, "endpoint" => e.clone(), "result" => result)
                .increment(0);
        }
        let _ = histogram!(names::OUTBOX_LATENCY, "endpoint" => e.clone());
    }
    outbox_gauges(0, 0, 0.0);
}

/// The outbox at a glance: pending deliveries, dead letters, age of the oldest undelivered
/// notification in seconds.
pub fn outbox_gauges(pending: i64, dead: i64, oldest_age_secs: f64) {
    gauge!(names::OUTBOX_PENDING).set(pending as f64);
    gauge!(names::OUTBOX_DEAD).set(dead as f64);
    gauge!(names::OUTBOX_AGE).set(oldest_age_secs);
}

/// A webhook endpoint answered 2xx.
pub fn outbox_delivered(
    endpoint: &str,
    delivery: i64,
    attempts: i64,
    status: u16,
    latency_secs: f64,
) {
    counter!(names::OUTBOX_DELIVERIES, "endpoint" => endpoint.to_owned(), "result" => "delivered")
        .increment(1);
    histogram!(names::OUTBOX_LATENCY, "endpoint" => endpoint.to_owned()).record(latency_secs);
    tracing::info!(
        endpoint,
        delivery,
        attempts,
        status,
        latency_secs,
        "Notification delivered"
    );
}

/// An export endpoint answered 2xx to a page of `items`, the oldest changed `lag_secs` ago.
pub fn export_pushed(endpoint: &str, items: usize, lag_secs: f64) {
    counter!(names::OUTBOX_DELIVERIES, "endpoint" => endpoint.to_owned(), "result" => "delivered")
        .increment(1);
    histogram!(names::OUTBOX_LATENCY, "endpoint" => endpoint.to_owned()).record(lag_secs);
    tracing::debug!(endpoint, items, lag_secs, "Export page delivered");
}

/// A page to an export endpoint failed; the same page is sent again in `retry_in_ms`.
pub fn export_push_failed(endpoint: &str, failures: i64, error: &str, retry_in_ms: i64) {
    counter!(names::OUTBOX_DELIVERIES, "endpoint" => endpoint.to_owned(), "result" => "failed")
        .increment(1);
    if let Some(suppressed) = allow_log("export_failed") {
        tracing::warn!(
            endpoint,
            failures,
            error,
            retry_in_ms,
            suppressed_since_last = suppressed,
            "Export page not delivered; will send it again"
        );
    }
}

/// A webhook attempt failed; it is tried again in `retry_in_ms`.
pub fn outbox_attempt_failed(
    endpoint: &str,
    delivery: i64,
    attempts: i64,
    error: &str,
    retry_in_ms: i64,
) {
    counter!(names::OUTBOX_DELIVERIES, "endpoint" => endpoint.to_owned(), "result" => "failed")
        .increment(1);
    if let Some(suppressed) = allow_log("outbox_failed") {
        tracing::warn!(
            endpoint,
            delivery,
            attempts,
            error,
            retry_in_ms,
            suppressed_since_last = suppressed,
            "Notification delivery failed; will retry"
        );
    }
}

/// A webhook delivery gave up: a dead letter, re-drivable through the API. Always logged.
pub fn outbox_dead(endpoint: &str, delivery: i64, notification: i64, attempts: i64, error: &str) {
    counter!(names::OUTBOX_DELIVERIES, "endpoint" => endpoint.to_owned(), "result" => "dead")
        .increment(1);
    tracing::error!(
        endpoint,
        delivery,
        notification,
        attempts,
        error,
        "Notification delivery gave up: dead letter (GET /api/outbox?status=dead, POST /api/outbox/{{id}}/redrive)"
    );
}

/// The outbox could not reach the store; nothing is lost, the rows wait there.
pub fn outbox_store_failed(e: &StoreError) {
    if let Some(suppressed) = allow_log("outbox_store") {
        tracing::warn!(error = %e, suppressed_since_last = suppressed, "Notifications outbox: store unavailable; will retry");
    }
}

/// Why a live-feed client is told to reload from `GET /api/alerts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// Its `Last-Event-ID` is from another engine run (a restart) or not one of ours.
    UnknownId,
    /// Its `Last-Event-ID` is older than the replay buffer reaches.
    TooOld,
    /// It read more slowly than changes came and the buffer moved past it.
    FellBehind,
}

impl ResyncReason {
    /// Every reason.
    pub const ALL: [ResyncReason; 3] = [
        ResyncReason::UnknownId,
        ResyncReason::TooOld,
        ResyncReason::FellBehind,
    ];

    /// The metric label and the `reason` in the `resync` event.
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::UnknownId => "unknown_id",
            ResyncReason::TooOld => "too_old",
            ResyncReason::FellBehind => "fell_behind",
        }
    }
}

/// A live-feed client connected (`+1`) or left (`-1`).
pub fn stream_clients(delta: f64) {
    gauge!(names::STREAM_CLIENTS).increment(delta);
}

/// A live-feed client is told to reload.
pub fn stream_resync(reason: ResyncReason, last_event_id: Option<&str>) {
    counter!(names::STREAM_RESYNCS, "reason" => reason.as_str()).increment(1);
    if let Some(suppressed) = allow_log("stream_resync") {
        tracing::info!(
            reason = reason.as_str(),
            last_event_id = last_event_id.unwrap_or("-"),
            suppressed_since_last = suppressed,
            "Live feed client told to reload (resync)"
        );
    }
}

/// How log lines are written to stderr (`--log-format`, `ANXIN_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message`, the event's
    /// fields at the top level, and the spans), for log shippers.
    Json,
}

/// The filter when `RUST_LOG` is unset: our own lines from `info`, the embedded broker's only
/// from `warn` (at `info` it logs every connection, subscription and disconnection).
const DEFAULT_FILTER: &str = "info,rumqttd=warn";

/// The filter of commands whose output is a report (`anxin test-rules`): the engine they run
/// speaks only when something is wrong.
pub const QUIET_FILTER: &str = "warn";

/// Installs the global tracing subscriber: `RUST_LOG` (default [`DEFAULT_FILTER`]), written to
/// stderr as `format`. Safe to call twice (the second call changes nothing).
pub fn init_tracing(format: LogFormat) {
    init_tracing_with(format, DEFAULT_FILTER)
}

/// [`init_tracing`] with another filter when `RUST_LOG` is unset.
pub fn init_tracing_with(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let filter = match tracing_subscriber::EnvFilter::try_new(&spec) {
        _ if spec.trim().is_empty() => tracing_subscriber::EnvFilter::new(default_filter),
        Ok(f) if spec.contains("rumqttd") => f,
        // The broker's per-connection INFO lines would drown ours; an operator who wants
        // them names rumqttd in RUST_LOG.
        Ok(f) => f.add_directive("rumqttd=warn".parse().expect("a valid directive")),
        Err(e) => {
            eprintln!("anxin: ignoring RUST_LOG={spec:?} ({e}); using {DEFAULT_FILTER:?}");
            tracing_subscriber::EnvFilter::new(DEFAULT_FILTER)
        }
    };
    // Asking for rumqttd's debug lines asks for everything it says, disconnects included.
    let broker_verbose = spec.split(',').any(|d| {
        d.trim().starts_with("rumqttd")
            && matches!(d.rsplit('=').next().map(str::trim), Some("debug" | "trace"))
    });
    let quiet = (!broker_verbose).then_some(QuietBrokerDisconnects);
    let registry = tracing_subscriber::registry().with(filter).with(quiet);
    let _ = match format {
        LogFormat::Text => {
            // Escape codes only for a person at a terminal: journald, files and pipes get
            // plain text (and NO_COLOR is honoured even at a terminal).
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(colour),
                )
                .try_init()
        }
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}

/// Drops the ERROR lines the embedded broker (rumqttd 0.20.0, pinned) writes for ordinary
/// client disconnections; its other errors pass untouched. A filter directive cannot do this:
/// the same callsites log real failures, so the decision needs the message and the error.
struct QuietBrokerDisconnects;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for QuietBrokerDisconnects {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let meta = event.metadata();
        if *meta.level() != tracing::Level::ERROR || !meta.target().starts_with("rumqttd") {
            return true;
        }
        let mut fields = BrokerLine::default();
        event.record(&mut fields);
        !is_normal_disconnect(&fields.message, &fields.error)
    }
}

/// The `message` and `error` fields of a rumqttd log line, as text.
#[derive(Default)]
struct BrokerLine {
    message: String,
    error: String,
}

impl tracing::field::Visit for BrokerLine {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "error" => self.error = format!("{value:?}"),
            _ => {}
        }
    }
}

/// Whether a rumqttd ERROR line (message, `error` field in Debug form) reports an ordinary end
/// of a client connection. Read from rumqttd 0.20.0 `server/broker.rs` (`remote`) and
/// `router/routing.rs` (`handle_disconnection`):
/// - `router-drop` with `Recv(Disconnected)`: the router closed the link after the client's
///   DISCONNECT (when the router drops a client for a fault, it logs the fault itself);
/// - `no-connection id N is already gone`: a client that sent DISCONNECT and then closed the
///   socket is disconnected twice (the source's own comment says clients may do this);
/// - `disconnected` / `Error while handling MQTT connect packet` with a reset, aborted or
///   broken connection, an early EOF or a keep-alive timeout: the peer went away (a device
///   losing its mobile link, a port probe, a health check).
fn is_normal_disconnect(message: &str, error: &str) -> bool {
    const GONE: [&str; 5] = [
        "ConnectionReset",
        "ConnectionAborted",
        "BrokenPipe",
        "UnexpectedEof",
        "KeepAlive(",
    ];
    match message {
        "router-drop" => error.contains("Recv(Disconnected)"),
        "disconnected" | "Error while handling MQTT connect packet" => {
            GONE.iter().any(|k| error.contains(k))
        }
        m => m.starts_with("no-connection id ") && m.ends_with(" is already gone"),
    }
}

/// The process-wide Prometheus recorder (PITFALLS 15: install once, share the handle).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::COMMIT_SECONDS.into()),
                    &[
                        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::TIMER_LAG.into()),
                        &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 30.0, 300.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::OUTBOX_LATENCY.into()),
                        &[
                            0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
                        ],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::BATCH_SIZE.into()),
                        &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0],
                    )
                })
                .expect("bucket lists are non-empty");
            match builder.install_recorder() {
                Ok(h) => h,
                // Another recorder is installed (an embedding application's): render ours
                // from a private recorder so /metrics still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Rate limit for repetitive warnings: at most `PER_WINDOW` lines per key per window, then a
/// summary of how many were suppressed.
const PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(10);

/// Per key: window start, lines logged in it, lines suppressed in it.
type LogBudget = HashMap<&'static str, (Instant, u32, u64)>;

fn allow_log(key: &'static str) -> Option<u64> {
    static STATE: OnceLock<Mutex<LogBudget>> = OnceLock::new();
    let mut map = STATE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let entry = map.entry(key).or_insert((now, 0, 0));
    if now.duration_since(entry.0) > WINDOW {
        let suppressed = entry.2;
        *entry = (now, 1, 0);
        return Some(suppressed);
    }
    if entry.1 < PER_WINDOW {
        entry.1 += 1;
        Some(0)
    } else {
        entry.2 += 1;
        None
    }
}

/// Lines per (reason, device) and window: a noisy device shows, and then is summarised.
const PER_DEVICE_WINDOW: u32 = 3;
/// Lines per window over all devices (alarms excepted): a flood from many devices cannot
/// bury the log.
const ALL_DEVICES_WINDOW: u32 = 100;
/// (reason, device) keys remembered before expired ones are dropped.
const MAX_DEVICE_KEYS: usize = 10_000;

/// Per (reason, device): window start, lines logged in it, lines suppressed in it.
type DeviceLogBudget = HashMap<(&'static str, String), (Instant, u32, u64)>;

/// Whether to log a warning about `device`, and how many were suppressed since its last
/// line. Keyed by (reason, device) so one noisy device never hides another's; a line about a
/// possible alarm is always written (the suppressed count still shows the noise).
fn allow_device_log(reason: &'static str, device: &str, alarm: bool) -> Option<u64> {
    static STATE: OnceLock<Mutex<(DeviceLogBudget, Instant, u32)>> = OnceLock::new();
    let mut guard = STATE
        .get_or_init(|| Mutex::new((HashMap::new(), Instant::now(), 0)))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (map, all_start, all_count) = &mut *guard;
    let now = Instant::now();
    if now.duration_since(*all_start) > WINDOW {
        *all_start = now;
        *all_count = 0;
    }
    if map.len() >= MAX_DEVICE_KEYS {
        map.retain(|_, e| now.duration_since(e.0) <= WINDOW || e.2 > 0);
        if map.len() >= MAX_DEVICE_KEYS {
            map.clear();
        }
    }
    let entry = map
        .entry((reason, device.to_owned()))
        .or_insert((now, 0, 0));
    if now.duration_since(entry.0) > WINDOW {
        entry.0 = now;
        entry.1 = 0;
    }
    let within = entry.1 < PER_DEVICE_WINDOW && *all_count < ALL_DEVICES_WINDOW;
    if alarm || within {
        entry.1 += 1;
        *all_count += 1;
        Some(std::mem::take(&mut entry.2))
    } else {
        entry.2 += 1;
        None
    }
}

/// A message or array element was refused.
pub fn rejected(origin: &str, r: &Rejection) {
    counter!(names::REJECTED, "reason" => r.reason.as_str()).increment(1);
    let device = r.device_id.as_deref().unwrap_or(origin);
    if let Some(suppressed) = allow_device_log(r.reason.as_str(), device, r.may_be_alarm()) {
        tracing::warn!(
            device = r.device_id.as_deref().unwrap_or("-"),
            topic = origin,
            reason = r.reason.as_str(),
            suppressed_since_last = suppressed,
            "Rejected input: {}",
            r.detail
        );
    }
}

/// A value that came with an event could not be used; the event stands without it.
pub fn flawed(origin: &str, e: &Event, f: &Flaw) {
    let reason = RejectReason::IgnoredField.as_str();
    counter!(names::REJECTED, "reason" => reason).increment(1);
    let alarm = e.event_type.is_life_safety();
    if let Some(suppressed) = allow_device_log(reason, &e.device_id, alarm) {
        tracing::warn!(
            device = %e.device_id,
            topic = origin,
            event = e.event_type.name(),
            field = %f.field,
            value = %f.value,
            reason,
            suppressed_since_last = suppressed,
            "Value ignored, {} kept: {}",
            e.event_type,
            f.problem
        );
    }
}

/// A device time too far from the receive time to show.
pub fn implausible_time(device: &str, off: chrono::Duration) {
    let reason = RejectReason::ImplausibleTime.as_str();
    counter!(names::REJECTED, "reason" => reason).increment(1);
    if let Some(suppressed) = allow_device_log(reason, device, false) {
        tracing::warn!(
            device,
            off_secs = off.num_seconds(),
            suppressed_since_last = suppressed,
            "Device clock off; receive time shown instead"
        );
    }
}

/// The broker replayed a retained message: recorded, not counted as a press.
pub fn retained(origin: &str, device: &str, event: &str) {
    counter!(names::MQTT_RETAINED).increment(1);
    if let Some(suppressed) = allow_device_log("retained", device, false) {
        tracing::info!(
            device,
            topic = origin,
            event,
            suppressed_since_last = suppressed,
            "Retained message recorded, not counted as a press (devices should publish with retain off)"
        );
    }
}

/// A batch committed.
pub fn batch_committed(messages: usize, took: Duration, o: &BatchOutcome) {
    histogram!(names::BATCH_SIZE).record(messages as f64);
    histogram!(names::COMMIT_SECONDS).record(took.as_secs_f64());
    counter!(names::ACCEPTED).increment(o.accepted as u64);
    counter!(names::DUPLICATES).increment(o.duplicates as u64);
    for c in &o.changes {
        if c.action == "opened" {
            counter!(names::ALERTS_OPENED, "kind" => c.kind.clone(), "severity" => c.severity.clone())
                .increment(1);
            tracing::info!(alert = c.alert_id, device = %c.device_id, kind = %c.kind, severity = %c.severity, "Alert opened");
        }
    }
}

/// A commit failed; it will be retried after `backoff`.
pub fn commit_failed(e: &StoreError, messages: usize, backoff: Duration) {
    counter!(names::COMMIT_ERRORS).increment(1);
    if let Some(suppressed) = allow_log("commit_failed") {
        tracing::error!(error = %e, messages, retry_in_ms = backoff.as_millis() as u64, suppressed_since_last = suppressed,
            "Commit failed; messages stay unacked and the commit is retried");
    }
}

/// An API request failed on our side (5xx); during a database outage every request does, so
/// the lines are rate-limited.
pub fn api_request_failed(status: u16, error: &dyn std::fmt::Display) {
    if let Some(suppressed) = allow_log("api_failed") {
        tracing::error!(status, error = %error, suppressed_since_last = suppressed, "API request failed");
    }
}

/// An API write could not be appended to the audit log.
pub fn audit_failed() {
    counter!(names::AUDIT_FAILED).increment(1);
}

/// A login was refused; the line names neither the login nor the password tried.
pub fn login_refused() {
    counter!(names::LOGINS_REFUSED).increment(1);
    if let Some(suppressed) = allow_log("login_refused") {
        tracing::warn!(suppressed_since_last = suppressed, "Login refused");
    }
}

/// A shard's queue depth after taking a batch.
pub fn queue_depth(shard: usize, depth: usize) {
    gauge!(names::QUEUE_DEPTH, "shard" => shard.to_string()).set(depth as f64);
}

/// A rule deadline was taken up `lag_secs` after its time.
pub fn timer_fired(lag_secs: f64) {
    histogram!(names::TIMER_LAG).record(lag_secs.max(0.0));
}

/// Deadlines and absences a shard is timing.
pub fn timers_pending(shard: usize, n: usize) {
    gauge!(names::TIMERS_PENDING, "shard" => shard.to_string()).set(n as f64);
}

/// The hand-off to a shard waited.
pub fn handoff_waited(shard: usize) {
    counter!(names::HANDOFF_WAITS).increment(1);
    if let Some(suppressed) = allow_log("handoff") {
        tracing::warn!(
            shard,
            suppressed_since_last = suppressed,
            "Shard queue full: the broker sent more than its in-flight window; pausing intake"
        );
    }
}

/// A connection was refused on arrival (`reason`: `per_address`, `listener_full`,
/// `descriptors`).
pub fn tcp_refused(family: &'static str, peer: std::net::SocketAddr, reason: &'static str) {
    counter!(names::TCP_REFUSED, "family" => family, "reason" => reason).increment(1);
    if let Some(suppressed) = allow_log("tcp_refused") {
        tracing::warn!(family, %peer, reason, suppressed_since_last = suppressed, "Connection refused at a connection limit");
    }
}

/// A framer skipped bytes to resynchronise.
pub fn tcp_skipped(
    family: &'static str,
    peer: &str,
    device: Option<&str>,
    bytes: usize,
    reason: &'static str,
) {
    counter!(names::TCP_SKIPPED_BYTES, "family" => family, "reason" => reason)
        .increment(bytes as u64);
    if let Some(suppressed) = allow_device_log("tcp_skipped", device.unwrap_or(peer), false) {
        tracing::warn!(
            family,
            peer,
            device = device.unwrap_or("-"),
            bytes,
            reason,
            suppressed_since_last = suppressed,
            "Skipped bytes in the device stream"
        );
    }
}

/// A decoder reported a problem with a frame.
pub fn tcp_decode_error(
    family: &'static str,
    peer: &str,
    device: Option<&str>,
    reason: &'static str,
    detail: &str,
) {
    counter!(names::TCP_DECODE_ERRORS, "family" => family, "reason" => reason).increment(1);
    if let Some(suppressed) = allow_device_log(reason, device.unwrap_or(peer), false) {
        tracing::warn!(
            family,
            peer,
            device = device.unwrap_or("-"),
            reason,
            suppressed_since_last = suppressed,
            "Frame decode problem: {detail}"
        );
    }
}

/// A device connection ended.
pub fn tcp_closed(family: &'static str, peer: &str, device: Option<&str>, why: &str) {
    tracing::debug!(
        family,
        peer,
        device = device.unwrap_or("-"),
        why,
        "Device connection closed"
    );
}

/// A device listener's accept failed (out of descriptors and the like); it backs off.
pub fn tcp_accept_failed(family: &'static str, e: &std::io::Error) {
    counter!(names::TCP_ACCEPT_ERRORS, "family" => family).increment(1);
    if let Some(suppressed) = allow_log("tcp_accept_failed") {
        tracing::warn!(family, error = %e, suppressed_since_last = suppressed, "Accept failed; backing off");
    }
}

/// A connection did not identify its device within the login deadline.
pub fn tcp_login_timeout(family: &'static str, peer: &str, deadline: Duration) {
    counter!(names::TCP_LOGIN_TIMEOUTS, "family" => family).increment(1);
    if let Some(suppressed) = allow_log("tcp_login_timeout") {
        tracing::warn!(
            family,
            peer,
            deadline_secs = deadline.as_secs(),
            suppressed_since_last = suppressed,
            "Connection closed: no device identified within the login deadline"
        );
    }
}

/// A connection sent more than `limit` bytes of junk without a usable frame.
pub fn tcp_junk_closed(
    family: &'static str,
    peer: &str,
    device: Option<&str>,
    bytes: usize,
    limit: usize,
) {
    counter!(names::TCP_JUNK_CLOSED, "family" => family).increment(1);
    if let Some(suppressed) = allow_log("tcp_junk_closed") {
        tracing::warn!(
            family,
            peer,
            device = device.unwrap_or("-"),
            bytes,
            limit,
            suppressed_since_last = suppressed,
            "Connection closed: junk without a usable frame"
        );
    }
}

/// An unidentified connection was closed to admit a new one at a full limit.
pub fn tcp_evicted(family: &'static str, peer: &str) {
    counter!(names::TCP_EVICTED, "family" => family).increment(1);
    if let Some(suppressed) = allow_log("tcp_evicted") {
        tracing::warn!(
            family,
            peer,
            suppressed_since_last = suppressed,
            "Connection closed to make room: no device identified yet and the limit is reached"
        );
    }
}

/// The device connection limits in force, logged once at start.
pub fn tcp_limits(total_cap: usize, configured: usize, open_files: Option<u64>, reserve: usize) {
    gauge!(names::TCP_CONNECTION_CAP).set(total_cap as f64);
    if total_cap < configured {
        tracing::warn!(
            total_cap,
            configured,
            open_files,
            reserved_descriptors = reserve,
            "Device connections capped by the open-files limit; raise it (LimitNOFILE) to admit more"
        );
    } else {
        tracing::info!(
            total_cap,
            open_files,
            reserved_descriptors = reserve,
            "Device connection limit"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_noisy_device_never_hides_another_devices_line_nor_an_alarm() {
        // Reason names unique to this test: the budget is process-wide.
        let reason = "test_noisy_device";
        let logged = (0..50)
            .filter(|_| allow_device_log(reason, "noisy", false).is_some())
            .count();
        assert_eq!(
            logged, PER_DEVICE_WINDOW as usize,
            "the noisy device is summarised"
        );
        assert_eq!(
            allow_device_log(reason, "quiet", false),
            Some(0),
            "another device's first line is written"
        );
        assert!(
            allow_device_log(reason, "noisy", true).is_some(),
            "an alarm's line is written even past the budget"
        );
    }

    #[test]
    fn ordinary_broker_disconnects_are_recognised_and_real_errors_are_not() {
        let normal = [
            ("router-drop", "Recv(Disconnected)"),
            ("no-connection id 7 is already gone", ""),
            (
                "disconnected",
                r#"Network(Io(Custom { kind: ConnectionReset, error: "connection reset by peer" }))"#,
            ),
            ("disconnected", "Network(KeepAlive(Elapsed(())))"),
            (
                "Error while handling MQTT connect packet",
                r#"Network(Io(Custom { kind: ConnectionReset, error: "connection reset by peer" }))"#,
            ),
        ];
        for (message, error) in normal {
            assert!(is_normal_disconnect(message, error), "{message} {error}");
        }
        let real = [
            ("out of order ack.", ""),
            ("Server error - V4", "Io(Os { code: 98, kind: AddrInUse })"),
            ("router-drop", "Send(SendError { .. })"),
            ("disconnected", "Network(Protocol(InvalidProtocol))"),
            (
                "Error while handling MQTT connect packet",
                "Timeout(Elapsed(()))",
            ),
            ("no space for new connection", ""),
            ("connection-stop", ""),
        ];
        for (message, error) in real {
            assert!(!is_normal_disconnect(message, error), "{message} {error}");
        }
    }

    #[test]
    fn every_reject_reason_is_registered() {
        // Counted from the enum's source, so a variant added without extending ALL fails here.
        let src = include_str!("protocol/mod.rs");
        let body = src
            .split_once("pub enum RejectReason {")
            .and_then(|(_, rest)| rest.split_once("\n}"))
            .expect("the enum is in protocol/mod.rs")
            .0;
        let variants: Vec<&str> = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//") && !l.starts_with('#') && l.ends_with(','))
            .map(|l| l.trim_end_matches(','))
            .collect();
        let listed: Vec<String> = crate::protocol::RejectReason::ALL
            .iter()
            .map(|r| format!("{r:?}"))
            .collect();
        assert_eq!(listed, variants);
    }
}
