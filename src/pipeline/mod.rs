//! The pipeline: route each message by device to a shard (order per device, devices in
//! parallel), decode, evaluate rules, commit a batch in one transaction, then release acks.
//!
//! Queues: each shard's queue holds at least the broker's in-flight window, so the hand-off
//! from the poll task does not wait while the broker keeps to its window; if a broker
//! overshoots (Mosquitto 2.0.11's quota bug), the hand-off waits — back-pressure, never a drop.

pub mod acks;
pub mod rules;

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::PipelineConfig;
use crate::config::live::Live;
use crate::event::{Event, Flaw};
use crate::feed::AlertFeed;
use crate::pipeline::rules::Severity;
use crate::protocol::RejectReason;
use crate::protocol::{Rejection, canonical};
use crate::registry::{Registry, UnknownPolicy};
use crate::store::RuleHit;
use crate::store::{Store, StoreError, WriteBatch, WriteItem};
use crate::telemetry;
use crate::telemetry::names;

/// One received message or frame on its way to a shard.
#[derive(Debug)]
pub enum Delivery {
    /// An MQTT message, decoded in the shard; acked through the [`AckSink`] after commit.
    Mqtt {
        /// Receive position in the ack tracker.
        pos: u64,
        /// Connection generation it arrived on.
        generation: u64,
        /// Topic.
        topic: String,
        /// Payload; of an oversized one only its first bytes.
        payload: Bytes,
        /// The payload's size as received.
        size: usize,
        /// Receive time (injected clock).
        received_at: DateTime<Utc>,
        /// The broker flagged it as sent before (MQTT DUP).
        dup: bool,
        /// A retained message the broker replays on subscribe.
        retain: bool,
    },
    /// A device frame already decoded by its connection task, which sends the device's ack
    /// once `committed` fires.
    Frame {
        /// The device, for routing (order per device).
        device_id: String,
        /// Peer address, for rejections.
        origin: String,
        /// Events and refusals the frame produced.
        items: Vec<Result<Event, Rejection>>,
        /// Receive time (injected clock).
        received_at: DateTime<Utc>,
        /// Fired after the commit; dropped unfired if the pipeline stops first.
        committed: oneshot::Sender<()>,
    },
}

impl Delivery {
    fn mqtt_pos(&self) -> Option<(u64, u64)> {
        match self {
            Delivery::Mqtt {
                pos, generation, ..
            } => Some((*pos, *generation)),
            Delivery::Frame { .. } => None,
        }
    }
}

/// Where shards report resolved messages: the transport's ack tracker.
pub trait AckSink: Send + Sync + std::fmt::Debug {
    /// Messages at `positions` are resolved; `ack` says whether to ack them.
    fn resolve(&self, positions: &[u64], ack: bool);
    /// Whether a message of `generation` will be redelivered by the broker (the connection it
    /// came on is gone and the broker resumed our session), so a held copy can be let go.
    fn redelivered(&self, generation: u64) -> bool;
}

/// Shared by every shard.
#[derive(Debug)]
struct Shared {
    store: Store,
    config: Arc<Live>,
    clock: SharedClock,
    sink: Arc<dyn AckSink>,
    live: AlertFeed,
    topic_root: String,
    cfg: PipelineConfig,
    registry: Registry,
}

/// The running pipeline's input side.
#[derive(Debug, Clone)]
pub struct Pipeline {
    senders: Vec<mpsc::Sender<Delivery>>,
    topic_root: String,
    config: Arc<Live>,
}

impl Pipeline {
    /// Starts `cfg.shards` shard tasks, each with a queue of `queue_capacity`. Shards stop when
    /// every [`Pipeline`] clone is dropped and their queues are drained, or at `hard_stop`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cfg: PipelineConfig,
        queue_capacity: usize,
        store: Store,
        config: Arc<Live>,
        clock: SharedClock,
        sink: Arc<dyn AckSink>,
        live: AlertFeed,
        topic_root: String,
        registry: Registry,
        hard_stop: CancellationToken,
    ) -> (Pipeline, Vec<JoinHandle<()>>) {
        let shared = Arc::new(Shared {
            store,
            config: config.clone(),
            clock,
            sink,
            live,
            topic_root: topic_root.clone(),
            cfg: cfg.clone(),
            registry,
        });
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for id in 0..cfg.shards.max(1) {
            let (tx, rx) = mpsc::channel(queue_capacity.max(1));
            senders.push(tx);
            tasks.push(tokio::spawn(run_shard(
                id,
                rx,
                shared.clone(),
                hard_stop.clone(),
            )));
        }
        (
            Pipeline {
                senders,
                topic_root,
                config,
            },
            tasks,
        )
    }

    /// The shard of a delivery: by device id, so one device's messages stay in order whatever
    /// transport they came by.
    pub fn shard_of(&self, d: &Delivery) -> usize {
        let key = match d {
            // A vendor topic without a device level keeps its messages in topic order.
            Delivery::Mqtt { topic, .. } => {
                match canonical::device_from_topic(&self.topic_root, topic) {
                    Ok(id) => id,
                    Err(_) => match self.config.current().profiles.route(topic) {
                        Some((_, Some(id))) => id,
                        _ => topic,
                    },
                }
            }
            Delivery::Frame { device_id, .. } => device_id,
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.senders.len() as u64) as usize
    }

    /// Hands a message to its shard. Waits only when the shard's queue is full, which the
    /// broker's window prevents; returns the delivery back if the pipeline has stopped.
    pub async fn submit(&self, d: Delivery) -> Result<(), Delivery> {
        let shard = self.shard_of(&d);
        let tx = &self.senders[shard];
        match tx.try_send(d) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(d)) => {
                telemetry::handoff_waited(shard);
                tx.send(d).await.map_err(|e| e.0)
            }
            Err(mpsc::error::TrySendError::Closed(d)) => Err(d),
        }
    }

    /// Messages queued in each shard.
    pub fn depths(&self) -> Vec<usize> {
        self.senders
            .iter()
            .map(|s| s.max_capacity() - s.capacity())
            .collect()
    }
}

async fn run_shard(
    id: usize,
    mut rx: mpsc::Receiver<Delivery>,
    shared: Arc<Shared>,
    hard_stop: CancellationToken,
) {
    let max = shared.cfg.max_batch_messages;
    let delay = Duration::from_millis(shared.cfg.max_batch_delay_ms);
    let mut batch: Vec<Delivery> = Vec::with_capacity(max);
    loop {
        let first = tokio::select! {
            d = rx.recv() => d,
            _ = hard_stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        // Natural batching: whatever arrived while the last commit ran joins this one.
        while batch.len() < max {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        if !delay.is_zero() && batch.len() < max {
            let deadline = tokio::time::Instant::now() + delay;
            while batch.len() < max {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(d)) => batch.push(d),
                    _ => break,
                }
            }
        }
        telemetry::queue_depth(id, rx.len());
        if !process(&shared, &mut batch, &hard_stop).await {
            break;
        }
        batch.clear();
    }
}

/// Decodes, evaluates and commits one batch, retrying the commit until it succeeds; the
/// messages stay unacked meanwhile, so the broker keeps them. Returns false at hard stop.
async fn process(
    shared: &Shared,
    batch: &mut Vec<Delivery>,
    hard_stop: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(50);
    let max_backoff = Duration::from_millis(shared.cfg.commit_retry_max_backoff_ms);
    let commit_timeout = Duration::from_secs(shared.cfg.commit_timeout_secs);
    let mut attempt = 0u32;
    loop {
        // A message whose connection is gone and whose session the broker resumed comes back
        // as a fresh copy; committing the old one too would only make work for dedup.
        let stale: Vec<u64> = batch
            .iter()
            .filter_map(Delivery::mqtt_pos)
            .filter(|(_, generation)| shared.sink.redelivered(*generation))
            .map(|(pos, _)| pos)
            .collect();
        if !stale.is_empty() {
            batch.retain(|d| !d.mqtt_pos().is_some_and(|(pos, _)| stale.contains(&pos)));
            shared.sink.resolve(&stale, false);
            if batch.is_empty() {
                return true;
            }
        }
        let Built {
            mut write,
            quarantined,
        } = build(shared, batch);
        write.retry = attempt > 0;
        attempt += 1;
        test_hooks::before_commit().await;
        let started = std::time::Instant::now();
        // A commit cut off by a network partition would otherwise wait for TCP to give up
        // (many minutes) before its retry; the retry is safe (`WriteBatch::retry`).
        let committed = tokio::time::timeout(
            commit_timeout,
            shared.store.commit_batch(&write, shared.clock.now()),
        )
        .await
        .unwrap_or(Err(StoreError::Unanswered(commit_timeout)));
        match committed {
            Ok(outcome) => {
                shared.registry.mark_quarantined(quarantined);
                telemetry::batch_committed(batch.len(), started.elapsed(), &outcome);
                let positions: Vec<u64> = batch
                    .iter()
                    .filter_map(Delivery::mqtt_pos)
                    .map(|(p, _)| p)
                    .collect();
                shared.sink.resolve(&positions, true);
                for d in batch.drain(..) {
                    if let Delivery::Frame { committed, .. } = d {
                        // The connection may be gone; the device will retransmit.
                        let _ = committed.send(());
                    }
                }
                for change in outcome.changes {
                    shared.live.send(change);
                }
                return true;
            }
            Err(e) => {
                telemetry::commit_failed(&e, batch.len(), backoff);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = hard_stop.cancelled() => return false,
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}

/// A batch ready to commit, and what to remember once it is committed.
struct Built {
    write: WriteBatch,
    /// Unregistered devices whose `unregistered_device` alert this batch raises.
    quarantined: HashSet<String>,
}

fn build(shared: &Shared, batch: &[Delivery]) -> Built {
    // One version of the rules and profiles for the whole batch, even across a reload.
    let current = shared.config.current();
    let clock = ClockWindows::from(&shared.cfg);
    let mut items = Vec::with_capacity(batch.len());
    let mut quarantined: HashSet<String> = HashSet::new();
    let mut push = |item: Result<Event, Rejection>,
                    origin: &str,
                    received_at,
                    transport: Transport| {
        let mut event = match item {
            Ok(e) => e,
            Err(rejection) => {
                telemetry::rejected(origin, &rejection);
                items.push(WriteItem::Rejected {
                    rejection,
                    origin: origin.to_owned(),
                    received_at,
                });
                return;
            }
        };
        // What the decoder could not use: counted, and logged without hiding an alarm's.
        for f in &event.flaws {
            telemetry::flawed(origin, &event, f);
        }
        if let Err(rejection) = clock.check(&mut event, transport.json) {
            telemetry::rejected(origin, &rejection);
            items.push(WriteItem::Rejected {
                rejection,
                origin: origin.to_owned(),
                received_at,
            });
            return;
        }
        event.redelivered = transport.dup;
        let mut hits = Vec::new();
        if transport.retain {
            // A retained message is the broker's copy of an old one, replayed on every
            // subscribe: recorded as what the device last said, never counted as a press.
            telemetry::retained(origin, &event);
            event.flaws.push(Flaw::new(
                "retain",
                "true",
                "a retained message the broker replayed on subscribe: recorded, never counted as a press",
            ));
        } else {
            hits = current.rules.hits(&event);
        }
        if let Some(reg) = shared.registry.get(&event.device_id) {
            event.resident_id = reg.resident_id;
        } else {
            match shared.registry.policy {
                UnknownPolicy::Accept => {}
                // One alert per device, raised by its first event: the registry remembers
                // which devices have theirs, so later events cost nothing extra.
                UnknownPolicy::Quarantine => {
                    if !shared.registry.is_quarantined(&event.device_id)
                        && quarantined.insert(event.device_id.clone())
                    {
                        hits.push(RuleHit {
                            rule: UNREGISTERED_RULE.into(),
                            kind: UNREGISTERED_RULE.into(),
                            severity: Severity::Low,
                            title: "Unregistered device is sending data".into(),
                            once: true,
                        });
                    }
                }
                // Refused, except alarms: a stranger's SOS still reaches an operator.
                UnknownPolicy::Reject if !event.event_type.is_life_safety() => {
                    let rejection = Rejection {
                        device_id: Some(event.device_id.clone()),
                        reason: RejectReason::UnknownDevice,
                        detail: format!(
                            "device {} is not registered and the unknown-device policy is reject",
                            event.device_id
                        ),
                        raw: event.to_json().to_string().into_bytes(),
                    };
                    telemetry::rejected(origin, &rejection);
                    items.push(WriteItem::Rejected {
                        rejection,
                        origin: origin.to_owned(),
                        received_at,
                    });
                    return;
                }
                UnknownPolicy::Reject => {}
            }
        }
        items.push(WriteItem::Event { event, hits });
    };
    for d in batch {
        match d {
            Delivery::Mqtt {
                topic,
                payload,
                size,
                received_at,
                dup,
                retain,
                ..
            } => {
                let decoded = if *size > canonical::MAX_PAYLOAD_BYTES {
                    oversized(shared, &current.profiles, topic, payload, *size)
                } else {
                    decode_mqtt(
                        &shared.topic_root,
                        &current.profiles,
                        topic,
                        payload,
                        *received_at,
                    )
                };
                let transport = Transport {
                    json: true,
                    dup: *dup,
                    retain: *retain,
                };
                for item in decoded.items {
                    push(item, topic, *received_at, transport);
                }
            }
            Delivery::Frame {
                items: frame_items,
                origin,
                received_at,
                ..
            } => {
                let transport = Transport {
                    json: false,
                    dup: false,
                    retain: false,
                };
                for item in frame_items {
                    push(item.clone(), origin, *received_at, transport);
                }
            }
        }
    }
    Built {
        write: WriteBatch {
            items,
            dedup_window: chrono::Duration::seconds(shared.cfg.dedup_window_secs as i64),
            retry: false,
        },
        quarantined,
    }
}

/// The refusal of a payload above the format's limit, of which only `kept` (a prefix)
/// arrived here; the device is taken from the topic where it names one.
fn oversized(
    shared: &Shared,
    profiles: &crate::protocol::profile::ProfileSet,
    topic: &str,
    kept: &[u8],
    size: usize,
) -> canonical::Decoded {
    let device = match canonical::device_from_topic(&shared.topic_root, topic) {
        Ok(id) => Some(id.to_owned()),
        Err(_) => profiles
            .route(topic)
            .and_then(|(_, d)| d.map(str::to_owned)),
    };
    canonical::Decoded {
        device_id: device.clone(),
        items: vec![Err(Rejection {
            device_id: device,
            reason: RejectReason::PayloadTooLarge,
            detail: format!(
                "payload is {size} bytes, the maximum is {}; its first {} bytes are kept",
                canonical::MAX_PAYLOAD_BYTES,
                kept.len()
            ),
            raw: kept.to_vec(),
        })],
    }
}

/// The rule name and alert kind of the one alert an unregistered device gets under the
/// `quarantine` policy (CONTRACT.md, "Devices").
pub const UNREGISTERED_RULE: &str = "unregistered_device";

/// How a message arrived, as far as the pipeline cares.
#[derive(Debug, Clone, Copy)]
struct Transport {
    /// An MQTT JSON format (canonical or a profile), whose contract is strict.
    json: bool,
    /// The broker flagged it as sent before (MQTT DUP).
    dup: bool,
    /// A retained message replayed by the broker.
    retain: bool,
}

/// How far a device clock may be from the receive time (`[pipeline]` settings).
#[derive(Debug, Clone, Copy)]
struct ClockWindows {
    /// Beyond this, the device time is not shown: receive time stands in, flagged.
    tolerance: chrono::Duration,
    /// Beyond this, the device time is no time at all: a JSON event other than an alarm is
    /// refused; an alarm, or a 4G frame (many report 2000-01-01 until they have a fix), is
    /// kept with receive time, flagged.
    limit: chrono::Duration,
}

impl From<&PipelineConfig> for ClockWindows {
    fn from(c: &PipelineConfig) -> Self {
        ClockWindows {
            tolerance: chrono::Duration::seconds(c.device_clock_tolerance_secs as i64),
            limit: chrono::Duration::seconds(c.device_clock_limit_secs as i64),
        }
    }
}

impl ClockWindows {
    /// Checks the event's device time against its receive time. The duplicate key was made
    /// from what the device sent and stays: it identifies the message, right clock or not.
    fn check(&self, event: &mut Event, strict: bool) -> Result<(), Rejection> {
        let Some(t) = event.device_time else {
            return Ok(());
        };
        let off = t - event.received_at;
        let far = off.abs();
        if far <= self.tolerance {
            return Ok(());
        }
        let how = if off > chrono::Duration::zero() {
            "ahead of"
        } else {
            "behind"
        };
        let text = format!("{} {how} the receive time", human(far));
        if far > self.limit && strict && !event.event_type.is_life_safety() {
            return Err(Rejection {
                device_id: Some(event.device_id.clone()),
                reason: RejectReason::BadField,
                detail: format!(
                    "{} time {} is {text}, beyond the {} a device clock may be off",
                    event.event_type,
                    t.to_rfc3339(),
                    human(self.limit)
                ),
                raw: event.to_json().to_string().into_bytes(),
            });
        }
        telemetry::implausible_time(&event.device_id, far);
        event.flaws.push(Flaw::new(
            "ts",
            t.to_rfc3339(),
            format!("the device clock is {text}; receive time shown"),
        ));
        event.device_time = None;
        Ok(())
    }
}

/// A duration for people: the largest unit or two.
fn human(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    match s {
        s if s >= 365 * 86_400 => format!("{:.1} years", s as f64 / (365.25 * 86_400.0)),
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{s}s"),
    }
}

/// Decodes an MQTT message by its topic: the canonical format, else the vendor profile whose
/// pattern matches, else a `bad_topic` rejection. Profile outcomes are counted per profile.
pub fn decode_mqtt(
    root: &str,
    profiles: &crate::protocol::profile::ProfileSet,
    topic: &str,
    payload: &[u8],
    received_at: DateTime<Utc>,
) -> canonical::Decoded {
    if canonical::device_from_topic(root, topic).is_ok() {
        return canonical::decode(root, topic, payload, received_at);
    }
    let Some((profile, device)) = profiles.route(topic) else {
        // The canonical decoder words the bad-topic rejection.
        return canonical::decode(root, topic, payload, received_at);
    };
    let decoded = profile.decode(topic, device, payload, received_at);
    for item in &decoded.items {
        match item {
            Ok(_) => metrics::counter!(names::PROFILE_EVENTS, "profile" => profile.name.clone())
                .increment(1),
            Err(r) => metrics::counter!(
                names::PROFILE_REJECTED,
                "profile" => profile.name.clone(),
                "reason" => r.reason.as_str()
            )
            .increment(1),
        }
    }
    decoded
}

/// Hooks for crash tests, compiled only with the `test-hooks` feature.
mod test_hooks {
    /// With `ANXIN_TEST_HOLD_COMMIT=PATH`, the first commit writes PATH and then never
    /// happens: a test can SIGKILL the engine between receipt and commit, deterministically.
    #[cfg(feature = "test-hooks")]
    pub async fn before_commit() {
        if let Ok(path) = std::env::var("ANXIN_TEST_HOLD_COMMIT") {
            tracing::warn!(marker = %path, "Test hook: holding the commit until killed");
            let _ = std::fs::write(&path, b"holding");
            std::future::pending::<()>().await;
        }
    }

    #[cfg(not(feature = "test-hooks"))]
    pub async fn before_commit() {}
}
