//! The pipeline: route each message by device to a shard (order per device, devices in
//! parallel), decode, evaluate rules, commit a batch in one transaction, then release acks.
//!
//! Queues: each shard's queue holds at least the broker's in-flight window, so the hand-off
//! from the poll task does not wait while the broker keeps to its window; if a broker
//! overshoots (Mosquitto 2.0.11's quota bug), the hand-off waits — back-pressure, never a drop.

pub mod acks;
pub mod rules;

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
use crate::event::Event;
use crate::feed::AlertFeed;
use crate::pipeline::rules::Severity;
use crate::protocol::RejectReason;
use crate::protocol::{Rejection, canonical};
use crate::registry::{Registry, UnknownPolicy};
use crate::store::RuleHit;
use crate::store::{Store, WriteBatch, WriteItem};
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
        /// Payload.
        payload: Bytes,
        /// Receive time (injected clock).
        received_at: DateTime<Utc>,
        /// The broker flagged it as sent before (MQTT DUP).
        dup: bool,
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
        let write = build(shared, batch);
        test_hooks::before_commit().await;
        let started = std::time::Instant::now();
        match shared.store.commit_batch(&write, shared.clock.now()).await {
            Ok(outcome) => {
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
                    // No receiver is fine: nobody is watching the live feed.
                    let _ = shared.live.send(change);
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

fn build(shared: &Shared, batch: &[Delivery]) -> WriteBatch {
    // One version of the rules and profiles for the whole batch, even across a reload.
    let current = shared.config.current();
    let mut items = Vec::with_capacity(batch.len());
    let mut push = |item: Result<Event, Rejection>, origin: &str, received_at, dup: bool| match item
    {
        Ok(mut event) => {
            event.redelivered = dup;
            let mut hits = current.rules.hits(&event);
            if let Some(reg) = shared.registry.get(&event.device_id) {
                event.resident_id = reg.resident_id;
            } else {
                match shared.registry.policy {
                    UnknownPolicy::Accept => {}
                    UnknownPolicy::Quarantine => hits.push(RuleHit {
                        rule: "unregistered_device".into(),
                        kind: "unregistered_device".into(),
                        severity: Severity::Low,
                        title: "Unregistered device is sending data".into(),
                        once: true,
                    }),
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
        }
        Err(rejection) => {
            telemetry::rejected(origin, &rejection);
            items.push(WriteItem::Rejected {
                rejection,
                origin: origin.to_owned(),
                received_at,
            });
        }
    };
    for d in batch {
        match d {
            Delivery::Mqtt {
                topic,
                payload,
                received_at,
                dup,
                ..
            } => {
                let decoded = decode_mqtt(
                    &shared.topic_root,
                    &current.profiles,
                    topic,
                    payload,
                    *received_at,
                );
                for item in decoded.items {
                    push(item, topic, *received_at, *dup);
                }
            }
            Delivery::Frame {
                items: frame_items,
                origin,
                received_at,
                ..
            } => {
                for item in frame_items {
                    push(item.clone(), origin, *received_at, false);
                }
            }
        }
    }
    WriteBatch {
        items,
        dedup_window: chrono::Duration::seconds(shared.cfg.dedup_window_secs as i64),
        redelivery_window: chrono::Duration::seconds(shared.cfg.redelivery_window_secs as i64),
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
