//! Logs and metrics. Each notable event is one function that writes the log line and updates
//! the metric together; names are constants here so they stay consistent.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::Rejection;
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
    /// Messages waiting in a shard queue.
    pub const QUEUE_DEPTH: &str = "anxin_pipeline_queue_depth";
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
}

/// Installs the global tracing subscriber (`RUST_LOG`, default `info`). Safe to call twice.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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

/// A message or array element was refused.
pub fn rejected(origin: &str, r: &Rejection) {
    counter!(names::REJECTED, "reason" => r.reason.as_str()).increment(1);
    if let Some(suppressed) = allow_log(r.reason.as_str()) {
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

/// A shard's queue depth after taking a batch.
pub fn queue_depth(shard: usize, depth: usize) {
    gauge!(names::QUEUE_DEPTH, "shard" => shard.to_string()).set(depth as f64);
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
    if let Some(suppressed) = allow_log("tcp_skipped") {
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
    if let Some(suppressed) = allow_log(reason) {
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
