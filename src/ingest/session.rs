//! Broker session loss as an alarm of its own.
//!
//! The engine keeps a persistent session under a stable client id, so the broker holds
//! messages (already acknowledged to devices) while the engine is away. A CONNACK with
//! session_present=false after this engine had a session on that broker — earlier in this
//! process, or in an earlier run (the `mqtt_sessions` table) — means the broker lost them:
//! a broker restart without persistence, an expired session, a wiped broker. That raises an
//! ERROR line, `anxin_mqtt_session_lost_total`, a `system` alert (rule `broker_session_lost`)
//! and the `/readyz` detail; readiness itself does not fail, the engine works on.
//!
//! The first connection of a client id to a broker expects no session. The embedded broker
//! keeps nothing across restarts by design, so it is never looked up or recorded: only a
//! loss within one process counts for it.
//!
//! The poll task calls [`SessionWatch::on_connack`], which decides in memory, logs, counts
//! and publishes the new view on a `watch` channel (one slot, never blocks the poll task,
//! PITFALLS 6). [`record`] turns views into store writes, retrying until the store answers,
//! so a loss is never dropped: counts accumulate in the view while a write waits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::counter;
use serde_json::json;
use tokio::sync::watch;

use crate::feed::AlertFeed;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::MqttTarget;
use crate::domain::alert::Severity;
use crate::store::{MqttSessionRecord, Store, SystemAlert};
use crate::telemetry::names;

/// Rule name of the alert.
pub const RULE: &str = "broker_session_lost";

/// The alert's title: what happened and what to do.
pub const TITLE: &str = "MQTT broker lost the engine's session: device messages sent while the engine was disconnected may be lost. Check the broker (restart without persistence? expired session?) and call residents whose devices were active in that time.";

/// The session state of the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// No CONNACK yet.
    Connecting,
    /// A session was created and none was expected.
    New,
    /// The broker resumed our session.
    Resumed,
    /// The broker had no session although we had one: what it held is gone.
    Lost,
}

impl SessionState {
    /// Name in `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Connecting => "connecting",
            SessionState::New => "new",
            SessionState::Resumed => "resumed",
            SessionState::Lost => "lost",
        }
    }
}

/// One loss, with what the alert's timeline needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Loss {
    /// The CONNACK that showed it.
    pub at: DateTime<Utc>,
    /// When we last had the session: the previous CONNACK in this process, or the stored
    /// record's latest one.
    pub previous_session_at: Option<DateTime<Utc>>,
    /// Detected at the first connection of this process (from the stored record).
    pub at_start_up: bool,
}

/// What the poll task saw, for `/readyz` and the recorder.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    /// Current connection's session.
    pub state: SessionState,
    /// CONNACKs seen by this process.
    pub connects: u64,
    /// Losses seen by this process.
    pub losses: u64,
    /// The latest loss.
    pub last_loss: Option<Loss>,
}

#[derive(Debug)]
struct Memory {
    /// A CONNACK without a session now means a loss.
    expect_session: bool,
    /// When we last held the session.
    last_session_at: Option<DateTime<Utc>>,
}

/// Session bookkeeping shared by the poll task, the recorder and `/readyz`.
#[derive(Debug)]
pub struct SessionWatch {
    client_id: String,
    /// `host:port` of an external broker; `None` for the embedded one.
    broker_key: Option<String>,
    /// The target as printed (password redacted).
    broker_shown: String,
    memory: Mutex<Memory>,
    tx: watch::Sender<SessionView>,
}

impl SessionWatch {
    /// `prior`: the stored record for this client id and broker (always `None` for the
    /// embedded broker).
    pub fn new(
        client_id: &str,
        target: &MqttTarget,
        prior: Option<MqttSessionRecord>,
    ) -> Arc<SessionWatch> {
        // Present from the start so a dashboard can alert on any increase.
        counter!(names::MQTT_SESSION_LOST).increment(0);
        let (tx, _) = watch::channel(SessionView {
            state: SessionState::Connecting,
            connects: 0,
            losses: 0,
            last_loss: None,
        });
        Arc::new(SessionWatch {
            client_id: client_id.to_owned(),
            broker_key: target.broker_key(),
            broker_shown: target.to_string(),
            memory: Mutex::new(Memory {
                expect_session: prior.is_some(),
                last_session_at: prior.map(|p| p.last_at),
            }),
            tx,
        })
    }

    /// The `host:port` sessions are recorded under; `None` for the embedded broker.
    pub fn broker_key(&self) -> Option<&str> {
        self.broker_key.as_deref()
    }

    /// A CONNACK arrived. Decides whether the session was lost, and if so logs and counts it
    /// at once; the alert follows through [`record`].
    pub fn on_connack(&self, session_present: bool, now: DateTime<Utc>) -> SessionState {
        let (lost, previous, at_start_up) = {
            let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            let lost = !session_present && m.expect_session;
            let previous = m.last_session_at;
            let at_start_up = self.tx.borrow().connects == 0;
            m.expect_session = true;
            m.last_session_at = Some(now);
            (lost, previous, at_start_up)
        };
        let state = match (session_present, lost) {
            (true, _) => SessionState::Resumed,
            (false, true) => SessionState::Lost,
            (false, false) => SessionState::New,
        };
        self.tx.send_modify(|v| {
            v.connects += 1;
            v.state = state;
            if lost {
                v.losses += 1;
                v.last_loss = Some(Loss {
                    at: now,
                    previous_session_at: previous,
                    at_start_up,
                });
            }
        });
        if lost {
            counter!(names::MQTT_SESSION_LOST).increment(1);
            tracing::error!(
                broker = %self.broker_shown,
                client_id = %self.client_id,
                previous_session_at = ?previous,
                at_start_up,
                "MQTT broker session lost: the broker has no session for our client id although we had one. \
                 Messages it held for us (acknowledged to devices while we were away) may be lost; \
                 a broker_session_lost alert is raised. Check the broker's persistence and restarts"
            );
        }
        state
    }

    /// The latest view.
    pub fn view(&self) -> SessionView {
        self.tx.borrow().clone()
    }

    /// The `/readyz` detail: `{"session": …, "lost_at": …, "losses": …, "connects": …}`.
    pub fn readyz(&self) -> serde_json::Value {
        let v = self.view();
        json!({
            "session": v.state.as_str(),
            "lost_at": v.last_loss.as_ref().map(|l| l.at),
            "losses": v.losses,
            "connects": v.connects,
        })
    }

    fn alert_detail(&self, loss: &Loss, losses: u64) -> serde_json::Value {
        json!({
            "broker": self.broker_key.clone().unwrap_or_else(|| self.broker_shown.clone()),
            "client_id": self.client_id,
            "connected_at": loss.at,
            "previous_session_at": loss.previous_session_at,
            "detected": if loss.at_start_up { "at start-up, from the stored session record" } else { "on reconnect" },
            "losses_since_start": losses,
            "meaning": "The broker answered CONNACK with session_present=false. Messages it queued for the engine, \
                        already acknowledged to the devices, are gone; the subscription was renewed.",
        })
    }
}

/// Writes what [`SessionWatch`] saw to the store: the session record on every CONNACK
/// (external brokers), and one alert entry per loss, pushed to the live feed. Retries with
/// backoff while the store fails; at `stop`, makes one last attempt at what is pending and
/// ends.
pub async fn record(
    watch: Arc<SessionWatch>,
    store: Store,
    live: AlertFeed,
    clock: SharedClock,
    stop: CancellationToken,
) {
    let mut rx = watch.tx.subscribe();
    let mut recorded_connects = 0;
    let mut alerted = 0;
    let mut backoff = Duration::from_millis(200);
    loop {
        let stopping = stop.is_cancelled();
        let view = rx.borrow_and_update().clone();
        let mut failed = false;
        // The alert first: if the process dies before the record, the next start still knows
        // the broker (from the earlier record) and nothing is silently lost.
        while alerted < view.losses {
            let Some(loss) = &view.last_loss else { break };
            let a = SystemAlert {
                rule: RULE,
                severity: Severity::High,
                title: TITLE,
                detail: watch.alert_detail(loss, alerted + 1),
            };
            match store.raise_system_alert(&a, clock.now()).await {
                Ok(change) => {
                    if change.action == "opened" {
                        counter!(names::ALERTS_OPENED, "kind" => change.kind.clone(), "severity" => change.severity.clone())
                            .increment(1);
                    }
                    tracing::info!(alert = change.alert_id, action = %change.action, "Broker session loss recorded on a system alert");
                    live.send(change);
                    alerted += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Cannot record the broker session loss alert; retrying");
                    failed = true;
                    break;
                }
            }
        }
        if !failed
            && view.connects > recorded_connects
            && let Some(broker) = watch.broker_key()
        {
            match store
                .record_mqtt_session(&watch.client_id, broker, clock.now())
                .await
            {
                Ok(()) => recorded_connects = view.connects,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Cannot record the MQTT session; retrying");
                    failed = true;
                }
            }
        }
        if stopping {
            return;
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(200);
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn external() -> MqttTarget {
        MqttTarget::parse("mqtt://u:hunter2@broker:1883").unwrap()
    }

    #[test]
    fn first_connection_expects_nothing_then_a_missing_session_is_a_loss() {
        let w = SessionWatch::new("anxin-1", &external(), None);
        assert_eq!(w.view().state, SessionState::Connecting);
        assert_eq!(w.on_connack(false, t(0)), SessionState::New);
        assert_eq!(w.on_connack(true, t(10)), SessionState::Resumed);
        assert_eq!(w.on_connack(false, t(20)), SessionState::Lost);
        let v = w.view();
        assert_eq!((v.connects, v.losses), (3, 1));
        assert_eq!(
            v.last_loss,
            Some(Loss {
                at: t(20),
                previous_session_at: Some(t(10)),
                at_start_up: false
            })
        );
        // The new session created at the loss is the one we have now.
        assert_eq!(w.on_connack(true, t(30)), SessionState::Resumed);
        assert_eq!(w.view().losses, 1);
        assert_eq!(w.readyz()["session"], "resumed");
        assert!(w.readyz()["lost_at"].is_string());
    }

    #[test]
    fn a_stored_record_makes_the_first_connection_expect_a_session() {
        let prior = MqttSessionRecord {
            first_at: t(-100),
            last_at: t(-5),
        };
        let w = SessionWatch::new("anxin-1", &external(), Some(prior.clone()));
        assert_eq!(w.on_connack(false, t(0)), SessionState::Lost);
        let loss = w.view().last_loss.unwrap();
        assert!(loss.at_start_up);
        assert_eq!(loss.previous_session_at, Some(t(-5)));

        let w = SessionWatch::new("anxin-1", &external(), Some(prior));
        assert_eq!(w.on_connack(true, t(0)), SessionState::Resumed);
        assert_eq!(w.view().losses, 0);
    }

    #[test]
    fn the_embedded_broker_is_never_recorded_and_its_detail_has_no_password() {
        let w = SessionWatch::new("anxin-1", &MqttTarget::parse("embedded").unwrap(), None);
        assert_eq!(w.broker_key(), None);
        assert_eq!(w.on_connack(false, t(0)), SessionState::New);
        let w = SessionWatch::new("anxin-1", &external(), None);
        let d = w.alert_detail(
            &Loss {
                at: t(0),
                previous_session_at: None,
                at_start_up: false,
            },
            1,
        );
        assert_eq!(d["broker"], "broker:1883");
        assert!(!d.to_string().contains("hunter2"));
    }
}
