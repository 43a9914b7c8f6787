//! Scripted scenarios: a fixed, short sequence of events from one device.
//!
//! Each message is published and its PUBACK awaited before the next, so the printed lines are
//! exactly what the broker accepted, in order, and an acceptance check can rely on them.

use anyhow::{Context, Result, anyhow, bail};
use chrono::Utc;
use tokio::time::timeout;

use crate::mqtt::{self, Endpoint, HANDSHAKE_TIMEOUT, Link, Notice, Role};
use crate::payload::{self, DoorState, Event, SmokeState, Vitals, WaterState};

/// A named script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One SOS press.
    Sos,
    /// A smoke alarm, then the all-clear.
    Smoke,
    /// One vitals reading with a heart rate of 130.
    VitalsHigh,
    /// Routine traffic ending in an SOS: heartbeat, battery 80, motion, door open, water leak, SOS.
    Mixed,
}

impl Scenario {
    /// The events the scenario publishes, in order.
    pub fn events(self) -> Vec<Event> {
        match self {
            Scenario::Sos => vec![Event::Sos],
            Scenario::Smoke => vec![
                Event::Smoke {
                    state: SmokeState::Alarm,
                },
                Event::Smoke {
                    state: SmokeState::Clear,
                },
            ],
            Scenario::VitalsHigh => vec![Event::Vitals(Vitals {
                heart_rate: Some(130),
                ..Vitals::default()
            })],
            Scenario::Mixed => vec![
                Event::Heartbeat,
                Event::Battery { percent: 80 },
                Event::Motion {
                    room: Some("living_room".into()),
                },
                Event::Door {
                    state: DoorState::Open,
                },
                Event::Water {
                    state: WaterState::Leak,
                },
                Event::Sos,
            ],
        }
    }
}

/// Publishes `scenario` as `device_id`, numbering from `seq_start`, and prints
/// `published <topic> <payload>` once each message is acked.
pub async fn run(
    endpoint: &Endpoint,
    topic_root: &str,
    scenario: Scenario,
    device_id: &str,
    seq_start: u64,
) -> Result<()> {
    let topic = payload::events_topic(topic_root, device_id);
    let mut link = mqtt::connect(endpoint, Role::Publisher);
    link.wait_connected().await?;
    for (seq, event) in (seq_start..).zip(scenario.events()) {
        let bytes = payload::encode(&event, Utc::now(), seq, 0)?;
        let text = String::from_utf8(bytes.clone()).context("payload is not UTF-8")?;
        link.client
            .publish(topic.clone(), bytes)
            .await
            .context("queueing publish")?;
        timeout(HANDSHAKE_TIMEOUT, wait_acked(&mut link))
            .await
            .context("no PUBACK in time")??;
        println!("published {topic} {text}");
    }
    link.close().await
}

async fn wait_acked(link: &mut Link) -> Result<()> {
    loop {
        match link.notices.recv().await {
            Some(Notice::Acked(Ok(()))) => return Ok(()),
            Some(Notice::Acked(Err(reason))) => bail!("broker refused the publish: {reason}"),
            Some(Notice::Closed(error)) => {
                return Err(anyhow!(error.unwrap_or_else(|| "disconnected".into())))
                    .context("connection lost before PUBACK");
            }
            Some(_) => {}
            None => bail!("event loop ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn types(scenario: Scenario) -> Vec<String> {
        scenario
            .events()
            .iter()
            .map(|e| {
                let v: Value =
                    serde_json::from_slice(&payload::encode(e, Utc::now(), 1, 0).unwrap()).unwrap();
                v["type"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn scenarios_publish_their_scripted_types() {
        assert_eq!(types(Scenario::Sos), ["sos"]);
        assert_eq!(types(Scenario::Smoke), ["smoke", "smoke"]);
        assert_eq!(types(Scenario::VitalsHigh), ["vitals"]);
        assert_eq!(
            types(Scenario::Mixed),
            ["heartbeat", "battery", "motion", "door", "water", "sos"]
        );
    }

    #[test]
    fn smoke_alarm_is_followed_by_clear() {
        assert_eq!(
            Scenario::Smoke.events(),
            [
                Event::Smoke {
                    state: SmokeState::Alarm
                },
                Event::Smoke {
                    state: SmokeState::Clear
                }
            ]
        );
    }

    #[test]
    fn vitals_high_has_heart_rate_130() {
        let events = Scenario::VitalsHigh.events();
        let [Event::Vitals(vitals)] = events.as_slice() else {
            panic!("expected one vitals event");
        };
        assert_eq!(vitals.heart_rate, Some(130));
    }
}
