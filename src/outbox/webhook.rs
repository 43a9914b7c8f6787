//! One webhook attempt: the body in the endpoint's format, its signature, the POST, and what
//! the answer means. No store, no clock of its own: the dispatcher passes both in.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::config::notify::{WebhookConfig, WebhookFormat};
use crate::store::Claimed;

/// The delivery's id: the same on every attempt and after a redrive, so a receiver that got
/// an attempt whose answer we never saw recognises the retry (at-least-once: dedupe on it).
pub const HEADER_DELIVERY: &str = "x-anxin-delivery";
/// The notification's id (one notification goes to each matching endpoint).
pub const HEADER_NOTIFICATION: &str = "x-anxin-notification";
/// Unix seconds when this attempt was signed; receivers refuse old ones (replays).
pub const HEADER_TIMESTAMP: &str = "x-anxin-timestamp";
/// `sha256=` and the hex HMAC-SHA256, keyed with the endpoint's secret, of
/// `"{timestamp}.{body}"`: the timestamp is signed too, so a replay cannot freshen it.
pub const HEADER_SIGNATURE: &str = "x-anxin-signature";

/// What an attempt sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The body, JSON.
    pub body: String,
    /// Unix seconds it was signed at.
    pub timestamp: i64,
    /// `sha256=<hex>`.
    pub signature: String,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The endpoint answered 2xx (the status).
    Delivered(u16),
    /// Anything else: the answer's status and text, or why there was none.
    Failed {
        /// For the dead-letter list and the log.
        error: String,
        /// The endpoint's `Retry-After` (seconds form), if it sent one with a 429 or 503.
        retry_after: Option<Duration>,
    },
}

/// The signature header's value for `body` signed at `timestamp`.
pub fn sign(secret: &[u8], timestamp: i64, body: &str) -> String {
    // HMAC takes keys of any length; the config insists on 16 characters at least.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The body and signature of an attempt to deliver `c` to `endpoint` at `unix_secs`.
pub fn outgoing(endpoint: &WebhookConfig, c: &Claimed, unix_secs: i64) -> Outgoing {
    let body = match endpoint.format {
        WebhookFormat::Json | WebhookFormat::Export => c.payload.clone(),
        WebhookFormat::Sms => serde_json::json!({
            "to": endpoint.to,
            "text": sms_text(&serde_json::from_str(&c.payload).unwrap_or(Value::Null)),
        })
        .to_string(),
    };
    let signature = sign(endpoint.secret.expose().as_bytes(), unix_secs, &body);
    Outgoing {
        body,
        timestamp: unix_secs,
        signature,
    }
}

/// An SMS for a notification: one line, what happened first (a phone screen shows the start).
pub fn sms_text(n: &Value) -> String {
    let a = &n["alert"];
    let s = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    let what = match n["cause"].as_str() {
        Some("escalated") => format!(
            "ESCALATED to level {}, not acknowledged: {} {}",
            n["level"].as_i64().unwrap_or(0),
            s(&a["severity"]),
            s(&a["kind"])
        ),
        _ => format!("{} {}", s(&a["severity"]).to_uppercase(), s(&a["kind"])),
    };
    let who = match n["resident"]["name"].as_str() {
        Some(name) => format!(
            "{name} ({}), device {}",
            s(&n["resident"]["region"]),
            s(&a["device_id"])
        ),
        None => format!("device {}", s(&a["device_id"])),
    };
    let opened = a["opened_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    format!(
        "[anxin] {what}: {} - {who}. Alert {} opened {opened}.",
        s(&a["title"]),
        a["id"].as_i64().unwrap_or(0)
    )
}

/// POSTs `out` for delivery `c`; redirects are not followed (a webhook that moved is a
/// configuration to fix, and a redirected POST would become a GET).
pub async fn send(
    client: &reqwest::Client,
    endpoint: &WebhookConfig,
    c: &Claimed,
    out: Outgoing,
) -> Attempt {
    let ids = [
        (HEADER_DELIVERY, c.id.to_string()),
        (HEADER_NOTIFICATION, c.notification_id.to_string()),
    ];
    post(client, endpoint, &ids, out).await
}

/// POSTs `out` to `endpoint` with the signature, the timestamp and the `ids` headers.
pub async fn post(
    client: &reqwest::Client,
    endpoint: &WebhookConfig,
    ids: &[(&'static str, String)],
    out: Outgoing,
) -> Attempt {
    let mut req = client
        .post(endpoint.url.clone())
        .timeout(Duration::from_millis(endpoint.timeout_ms))
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    for (name, value) in ids {
        req = req.header(*name, value);
    }
    let sent = req
        .header(HEADER_TIMESTAMP, out.timestamp.to_string())
        .header(HEADER_SIGNATURE, out.signature)
        .body(out.body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return Attempt::Failed {
                error: error_chain(&e),
                retry_after: None,
            };
        }
    };
    let status = resp.status();
    if status.is_success() {
        return Attempt::Delivered(status.as_u16());
    }
    let retry_after = match status.as_u16() {
        429 | 503 => resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs),
        _ => None,
    };
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| format!(" to {l}"))
        .unwrap_or_default();
    // A line of the answer helps whoever reads the dead letter; never more.
    let text = tokio::time::timeout(Duration::from_secs(2), resp.text())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text: String = text.chars().take(200).collect();
    let error = if status.is_redirection() {
        format!("HTTP {status}: redirected{location}; redirects are not followed")
    } else if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    };
    Attempt::Failed { error, retry_after }
}

/// An error and its causes on one line ("error sending request …: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

/// The wait before the next attempt after `attempts` failed ones: `initial` doubled per
/// further failure, at most `max`, of which the second half is random ("equal jitter": the
/// deliveries of one outage do not all come back at the same instant); at least the
/// endpoint's own `Retry-After`, itself at most `max`.
pub fn backoff(
    initial_ms: u64,
    max_ms: u64,
    attempts: i64,
    retry_after: Option<Duration>,
) -> Duration {
    let doublings = (attempts.max(1) - 1).min(30) as u32;
    let exp = initial_ms.saturating_mul(1u64 << doublings).min(max_ms);
    let half = exp / 2;
    let jittered = half + rand::random_range(0..=exp - half);
    let floor = retry_after.map_or(0, |r| (r.as_millis() as u64).min(max_ms));
    Duration::from_millis(jittered.max(floor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: Python's hmac.new(key, b"1700000000." + body, sha256).
        assert_eq!(
            sign(
                b"a-secret-of-16-chars",
                1_700_000_000,
                r#"{"cause":"opened"}"#
            ),
            "sha256=c4b37b5775e4b0c215ebf352ef0fad2024d6546c41d6b9758eb1fbd39c315a55"
        );
        // The timestamp is part of what is signed.
        assert_ne!(sign(b"k", 1, "{}"), sign(b"k", 2, "{}"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_and_honours_retry_after() {
        for _ in 0..100 {
            let first = backoff(1000, 300_000, 1, None).as_millis();
            assert!((500..=1000).contains(&first), "{first}");
            let fourth = backoff(1000, 300_000, 4, None).as_millis();
            assert!((4000..=8000).contains(&fourth), "{fourth}");
            let capped = backoff(1000, 300_000, 40, None).as_millis();
            assert!((150_000..=300_000).contains(&capped), "{capped}");
            let told = backoff(1000, 300_000, 1, Some(Duration::from_secs(30))).as_millis();
            assert_eq!(told, 30_000);
            let told_too_long = backoff(1000, 5000, 1, Some(Duration::from_secs(3600))).as_millis();
            assert_eq!(told_too_long, 5000);
        }
    }

    #[test]
    fn an_sms_says_what_happened_first() {
        let n = serde_json::json!({
            "cause": "escalated", "level": 2,
            "alert": {"id": 42, "device_id": "pendant-1", "severity": "critical", "kind": "sos",
                      "title": "SOS button pressed", "opened_at": "2026-05-01T08:00:00Z"},
            "resident": {"id": "r1", "name": "Wang Fang", "region": "tianhe"},
        });
        assert_eq!(
            sms_text(&n),
            "[anxin] ESCALATED to level 2, not acknowledged: critical sos: SOS button pressed - Wang Fang (tianhe), device pendant-1. Alert 42 opened 2026-05-01 08:00 UTC."
        );
        let opened = serde_json::json!({
            "cause": "opened", "level": 0,
            "alert": {"id": 7, "device_id": "d", "severity": "critical", "kind": "fall", "title": "Fall detected",
                      "opened_at": "2026-05-01T08:00:00Z"},
            "resident": null,
        });
        assert_eq!(
            sms_text(&opened),
            "[anxin] CRITICAL fall: Fall detected - device d. Alert 7 opened 2026-05-01 08:00 UTC."
        );
    }
}
