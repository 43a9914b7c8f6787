//! The baseline consumer: a bare rumqttc subscriber that acks every publish on receipt.
//!
//! It measures what the broker and client can deliver with no work per message, to compare
//! with the engine, which acks only after commit. With a persistent session it also drains
//! a backlog queued while it was away (`--subscribe-only` first, then a load run). The broker
//! bounds that backlog: Mosquitto drops messages past `max_queued_messages` (default 1000)
//! without telling the publisher (PITFALLS 8), so a short drain there is a broker setting.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tokio::time::{Instant, timeout};

use crate::mqtt::{self, Endpoint, HANDSHAKE_TIMEOUT, Link, Notice, Role};

/// Settings of one drain run.
#[derive(Debug, Clone)]
pub struct DrainArgs {
    /// Messages to receive before stopping; unused with `subscribe_only`.
    pub count: u64,
    /// MQTT 5 Receive Maximum.
    pub receive_maximum: u16,
    /// Give up when no message has arrived for this long.
    pub idle_timeout: Duration,
    /// Only create the session and subscription, then leave.
    pub subscribe_only: bool,
}

/// What a drain received.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Messages received and acked.
    pub drained: u64,
    /// From the first message received to the last.
    pub secs: f64,
}

impl Report {
    /// Messages per second between the first and the last message.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.drained as f64 / self.secs
        } else {
            0.0
        }
    }

    /// The human summary line.
    pub fn summary(&self) -> String {
        format!(
            "drained {} messages in {:.3} s: {:.1} msg/s",
            self.drained,
            self.secs,
            self.rate()
        )
    }

    /// The machine-readable line.
    pub fn json(&self) -> String {
        // A struct rather than `json!` keeps the keys in the documented order.
        #[derive(Serialize)]
        struct Line {
            drained: u64,
            secs: f64,
            rate: f64,
        }
        let line = Line {
            drained: self.drained,
            secs: (self.secs * 1000.0).round() / 1000.0,
            rate: (self.rate() * 10.0).round() / 10.0,
        };
        serde_json::to_string(&line).expect("plain numbers always serialise")
    }
}

/// Subscribes to every device's events and drains them; returns whether the goal was met.
pub async fn run(endpoint: &Endpoint, topic_root: &str, args: &DrainArgs) -> Result<bool> {
    let filter = format!("{topic_root}/devices/+/events");
    let mut link = mqtt::connect(
        endpoint,
        Role::Subscriber {
            receive_maximum: args.receive_maximum,
        },
    );
    let session_present = link.wait_connected().await?;
    // Subscribing on a resumed session too is harmless and covers a broker that lost it.
    link.client
        .subscribe(&filter)
        .await
        .context("queueing SUBSCRIBE")?;

    if args.subscribe_only {
        // Publishes from an existing backlog can arrive before the SUBACK; they are left
        // unacked so that the broker redelivers them to the next drain.
        timeout(HANDSHAKE_TIMEOUT, wait_subscribed(&mut link))
            .await
            .context("no SUBACK in time")??;
        println!("subscribed");
        eprintln!(
            "session of client id `{}` {} on the broker",
            endpoint.client_id,
            if session_present {
                "resumed"
            } else {
                "created"
            }
        );
        link.close().await?;
        return Ok(true);
    }

    let mut drained = 0u64;
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    while drained < args.count {
        let Ok(notice) = timeout(args.idle_timeout, link.notices.recv()).await else {
            eprintln!(
                "no message for {} s; received {drained} of {}",
                args.idle_timeout.as_secs(),
                args.count
            );
            break;
        };
        match notice {
            Some(Notice::Received(delivery)) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                link.client.ack(&delivery).await.context("acking")?;
                drained += 1;
            }
            Some(Notice::Subscribed(result)) => {
                result.map_err(|reason| {
                    anyhow!("broker refused subscription to {filter}: {reason}")
                })?;
            }
            Some(Notice::Closed(error)) => {
                return Err(anyhow!(error.unwrap_or_else(|| "disconnected".into())))
                    .context(format!("connection lost after {drained} messages"));
            }
            Some(_) => {}
            None => bail!("event loop ended"),
        }
    }
    let report = Report {
        drained,
        secs: match (first, last) {
            (Some(first), Some(last)) => (last - first).as_secs_f64(),
            _ => 0.0,
        },
    };
    println!("{}", report.summary());
    println!("{}", report.json());
    link.close().await?;
    Ok(drained >= args.count)
}

async fn wait_subscribed(link: &mut Link) -> Result<()> {
    loop {
        match link.notices.recv().await {
            Some(Notice::Subscribed(result)) => {
                return result.map_err(|reason| anyhow!("broker refused subscription: {reason}"));
            }
            Some(Notice::Closed(error)) => {
                return Err(anyhow!(error.unwrap_or_else(|| "disconnected".into())));
            }
            Some(_) => {}
            None => bail!("event loop ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines_have_the_documented_shape() {
        let report = Report {
            drained: 2000,
            secs: 0.5,
        };
        assert_eq!(
            report.summary(),
            "drained 2000 messages in 0.500 s: 4000.0 msg/s"
        );
        assert_eq!(
            report.json(),
            r#"{"drained":2000,"secs":0.5,"rate":4000.0}"#
        );
    }

    #[test]
    fn a_single_message_has_no_rate() {
        let report = Report {
            drained: 1,
            secs: 0.0,
        };
        assert_eq!(report.rate(), 0.0);
    }
}
