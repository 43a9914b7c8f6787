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
    /// Messages waiting in a shard queue.
    pub const QUEUE_DEPTH: &str = "anxin_pipeline_queue_depth";
    /// Times the hand-off to a shard had to wait (broker exceeded its window).
    pub const HANDOFF_WAITS: &str = "anxin_pipeline_handoff_waits_total";
    /// Open device connections, by family.
    pub const TCP_CONNECTIONS: &str = "anxin_tcp_connections";
    /// Connections refused at the connection limit.
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
pub fn retained(origin: &str, e: &Event) {
    counter!(names::MQTT_RETAINED).increment(1);
    if let Some(suppressed) = allow_device_log("retained", &e.device_id, false) {
        tracing::info!(
            device = %e.device_id,
            topic = origin,
            event = e.event_type.name(),
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

/// A connection was refused at the connection limit.
pub fn tcp_refused(family: &'static str, peer: std::net::SocketAddr, limit: usize) {
    if let Some(suppressed) = allow_log("tcp_refused") {
        tracing::warn!(family, %peer, limit, suppressed_since_last = suppressed, "Connection refused: listener at its connection limit");
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
}
