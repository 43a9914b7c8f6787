//! The pipeline: route each message by device to a shard (order per device, devices in
//! parallel), decode, evaluate rules, commit a batch in one transaction, then release acks.
//!
//! Queues: each shard's queue holds at least the broker's in-flight window, so the hand-off
//! from the poll task does not wait while the broker keeps to its window; if a broker
//! overshoots (Mosquitto 2.0.11's quota bug), the hand-off waits — back-pressure, never a drop.

pub mod acks;

use std::collections::HashSet;
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
use crate::domain::alert::Severity;
use crate::event::{DedupKey, Event, Flaw};
use crate::feed::AlertFeed;
use crate::protocol::RejectReason;
use crate::protocol::{Rejection, canonical};
use crate::registry::{Registry, UnknownPolicy};
use crate::rules::engine::{Engine, Out};
use crate::store::{BatchOutcome, RuleHit};
use crate::store::{Store, StoreError, WriteBatch, WriteItem};
use crate::telemetry;
use crate::telemetry::names;

pub use crate::domain::partition;

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
        /// The MQTT packet id (0 for QoS 0).
        pkid: u16,
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
    registry: Registry,
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
        engines: Vec<Engine>,
    ) -> (Pipeline, Vec<JoinHandle<()>>) {
        let shared = Arc::new(Shared {
            store,
            config: config.clone(),
            clock,
            sink,
            live,
            topic_root: topic_root.clone(),
            cfg: cfg.clone(),
            registry: registry.clone(),
        });
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        let shards = cfg.shards.max(1);
        let mut engines = engines.into_iter();
        for id in 0..shards {
            let (tx, rx) = mpsc::channel(queue_capacity.max(1));
            senders.push(tx);
            let engine = engines
                .next()
                .unwrap_or_else(|| Engine::new(id, shards, shared.clock.now()));
            tasks.push(tokio::spawn(run_shard(
                id,
                rx,
                shared.clone(),
                hard_stop.clone(),
                engine,
            )));
        }
        (
            Pipeline {
                senders,
                topic_root,
                config,
                registry,
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
        // A household's devices share a shard: per-resident absences and correlations see
        // all of its events in order.
        match self.registry.resident_of(key) {
            Some(resident) => partition(&resident, self.senders.len()),
            None => partition(key, self.senders.len()),
        }
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

/// The longest a shard sleeps between looks at its deadlines: bounds the firing lag when
/// the injected clock jumps (tests) and how soon a registry change reaches the absences.
const TIMER_TICK: Duration = Duration::from_millis(250);

/// Loads the stored timer state and gives each shard its engine (start-up).
pub async fn engines(
    store: &Store,
    registry: &Registry,
    cfg: &PipelineConfig,
    started_at: DateTime<Utc>,
) -> Result<Vec<Engine>, StoreError> {
    let shards = cfg.shards;
    let grace = chrono::Duration::seconds(cfg.absence_startup_grace_secs as i64);
    let started = std::time::Instant::now();
    let state = store.timer_state().await?;
    let shards = shards.max(1);
    let engines: Vec<Engine> = (0..shards)
        .map(|id| {
            let mut e = Engine::new(id, shards, started_at).with_startup_grace(grace);
            e.load(&state, registry);
            e
        })
        .collect();
    tracing::info!(
        deadlines = state.deadlines.len(),
        activity = state.activity.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "Timer state loaded"
    );
    Ok(engines)
}

async fn run_shard(
    id: usize,
    mut rx: mpsc::Receiver<Delivery>,
    shared: Arc<Shared>,
    hard_stop: CancellationToken,
    mut engine: Engine,
) {
    let max = shared.cfg.max_batch_messages;
    let delay = Duration::from_millis(shared.cfg.max_batch_delay_ms);
    let mut batch: Vec<Delivery> = Vec::with_capacity(max);
    loop {
        let now = crate::clock::to_millis(shared.clock.now());
        let wait = engine
            .next_due()
            .map(|due| Duration::from_millis((due - now).max(0) as u64))
            .unwrap_or(TIMER_TICK)
            .min(TIMER_TICK);
        let first = tokio::select! {
            d = rx.recv() => match d {
                Some(d) => Some(d),
                None => break,
            },
            _ = tokio::time::sleep(wait) => None,
            _ = hard_stop.cancelled() => break,
        };
        if let Some(first) = first {
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
        }
        telemetry::queue_depth(id, rx.len());
        telemetry::timers_pending(id, engine.pending());
        if !process(&shared, &mut engine, &mut batch, &hard_stop).await {
            break;
        }
        batch.clear();
    }
}

/// Decodes, evaluates and commits one batch, retrying the commit until it succeeds; the
/// messages stay unacked meanwhile, so the broker keeps them. Returns false at hard stop.
async fn process(
    shared: &Shared,
    engine: &mut Engine,
    batch: &mut Vec<Delivery>,
    hard_stop: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(50);
    let max_backoff = Duration::from_millis(shared.cfg.commit_retry_max_backoff_ms);
    // Every attempt at this batch carries one token, so a retry can tell whether an attempt
    // whose answer was lost went through (`WriteBatch::token`).
    let token = hex::encode(rand::random::<[u8; 16]>());
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
        }
        let mut out = Out::default();
        engine.begin(&mut out);
        let now = shared.clock.now();
        let Built {
            mut write,
            quarantined,
            notes,
        } = build(shared, engine, &mut out, batch, now);
        write.deadlines = out.deadlines;
        write.suppressed = out.suppressed.into_iter().collect();
        write.activity = out.activity;
        if batch.is_empty()
            && write.items.is_empty()
            && write.deadlines.is_empty()
            && write.suppressed.is_empty()
        {
            // Only in-memory changes (absences counted for a changed registry): nothing to
            // store.
            engine.committed(&BatchOutcome::default());
            return true;
        }
        write.token.clone_from(&token);
        write.retry = attempt > 0;
        attempt += 1;
        test_hooks::before_commit().await;
        let started = std::time::Instant::now();
        // A commit cut off by a network partition would otherwise wait for TCP to give up
        // (many minutes) before its retry; the retry is safe (`WriteBatch::token`). The
        // allowance grows with the batch, so a storm of alarms against a distant database is
        // never abandoned for its size alone.
        let commit_timeout = Duration::from_secs(shared.cfg.commit_timeout_secs)
            + COMMIT_TIME_PER_ITEM * write.items.len() as u32;
        let committed =
            tokio::time::timeout(commit_timeout, shared.store.commit_batch(&write, now))
                .await
                .unwrap_or(Err(StoreError::Unanswered(commit_timeout)));
        match committed {
            Ok(outcome) => {
                engine.committed(&outcome);
                // Counted once, now that it is stored (a failed attempt counts nothing).
                for note in &notes {
                    note.emit();
                }
                resolve_late_registrations(shared, &quarantined).await;
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
                engine.rollback();
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

/// What a commit may take per item beyond `commit_timeout_secs`: an alarm costs a few round
/// trips (event, alert, timeline), ~40 ms against a database 10 ms away.
const COMMIT_TIME_PER_ITEM: Duration = Duration::from_millis(100);

/// A device registered while a batch that raised its `unregistered_device` alert was being
/// built: the API resolved nothing then (the alert did not exist yet), so resolve it now.
async fn resolve_late_registrations(shared: &Shared, quarantined: &HashSet<String>) {
    let late: Vec<String> = quarantined
        .iter()
        .filter(|d| shared.registry.is_registered(d))
        .cloned()
        .collect();
    if late.is_empty() {
        return;
    }
    match shared
        .store
        .resolve_quarantine(&late, shared.clock.now())
        .await
    {
        Ok(changes) => {
            for c in changes {
                shared.live.send(c);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "Could not resolve the unregistered-device alert of a device registered meanwhile; an operator can")
        }
    }
}

/// Something to count and log once the batch it belongs to is committed.
enum Note {
    Rejected(String, Rejection),
    Flawed(String, Box<Event>, Flaw),
    Retained(String, String, &'static str),
    ImplausibleTime(String, chrono::Duration),
    Profile(String, Result<(), RejectReason>),
}

impl Note {
    fn emit(&self) {
        match self {
            Note::Rejected(origin, r) => telemetry::rejected(origin, r),
            Note::Flawed(origin, e, f) => telemetry::flawed(origin, e, f),
            Note::Retained(origin, device, event) => telemetry::retained(origin, device, event),
            Note::ImplausibleTime(device, off) => telemetry::implausible_time(device, *off),
            Note::Profile(profile, Ok(())) => {
                metrics::counter!(names::PROFILE_EVENTS, "profile" => profile.clone()).increment(1)
            }
            Note::Profile(profile, Err(reason)) => metrics::counter!(
                names::PROFILE_REJECTED,
                "profile" => profile.clone(),
                "reason" => reason.as_str()
            )
            .increment(1),
        }
    }
}

/// A batch ready to commit, and what to remember once it is committed.
struct Built {
    write: WriteBatch,
    /// Unregistered devices whose `unregistered_device` alert this batch raises.
    quarantined: HashSet<String>,
    /// Counted and logged after the commit.
    notes: Vec<Note>,
}

fn build(
    shared: &Shared,
    engine: &mut Engine,
    out: &mut Out,
    batch: &[Delivery],
    now: DateTime<Utc>,
) -> Built {
    // One version of the rules and profiles for the whole batch, even across a reload.
    let current = shared.config.current();
    let rules = &current.rules;
    let dir = &shared.registry;
    engine.prepare(rules, current.generation, dir, now, out);
    let clock = ClockWindows::from(&shared.cfg);
    let mut items = Vec::with_capacity(batch.len());
    let mut quarantined: HashSet<String> = HashSet::new();
    let mut notes = Vec::new();
    let mut profile_notes = Vec::new();
    // An event's way into the batch; `Err` is why it is refused instead.
    let mut accept = |item: Result<Event, Rejection>,
                      origin: &str,
                      transport: Transport,
                      notes: &mut Vec<Note>,
                      engine: &mut Engine,
                      out: &mut Out|
     -> Result<WriteItem, Rejection> {
        let mut event = item?;
        // What the decoder could not use: counted, and logged without hiding an alarm's.
        for f in &event.flaws {
            notes.push(Note::Flawed(
                origin.to_owned(),
                Box::new(event.clone()),
                f.clone(),
            ));
        }
        match clock.check(&mut event, transport.json) {
            Ok(None) => {}
            Ok(Some(off)) => notes.push(Note::ImplausibleTime(event.device_id.clone(), off)),
            Err(rejection) => return Err(rejection),
        }
        // A payload key names the MQTT packet too: a DUP copy carries its first copy's packet
        // id (MQTT 3.1.1 §4.4, MQTT 5 §4.4), an earlier identical press almost never does.
        if let (Some(pkid), DedupKey::Payload(k)) = (transport.pkid, &event.dedup_key) {
            event.dedup_key = DedupKey::Payload(format!("{k}:p{pkid}"));
        }
        event.redelivered = transport.dup;
        event.retained = transport.retain;
        let mut hits = Vec::new();
        let mut clears = Vec::new();
        if transport.retain {
            // A retained message is the broker's copy of an old one, replayed on every
            // subscribe: recorded as what the device last said, never counted as a press.
            notes.push(Note::Retained(
                origin.to_owned(),
                event.device_id.clone(),
                event.event_type.name(),
            ));
            event.flaws.push(Flaw::new(
                "retain",
                "true",
                "a retained message the broker replayed on subscribe: recorded, never counted as a press",
            ));
        } else {
            (hits, clears) = engine.on_event(rules, dir, &event, out);
        }
        if let Some(reg) = shared.registry.get_shared(&event.device_id) {
            event.resident_id.clone_from(&reg.resident_id);
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
                            subject: event.device_id.clone(),
                            partition: event.device_id.clone(),
                            ..RuleHit::default()
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
                    return Err(rejection);
                }
                UnknownPolicy::Reject => {}
            }
        }
        Ok(WriteItem::Event {
            event,
            hits,
            clears,
        })
    };
    let mut push = |item: Result<Event, Rejection>,
                    origin: &str,
                    received_at: DateTime<Utc>,
                    transport: Transport,
                    items: &mut Vec<WriteItem>,
                    engine: &mut Engine,
                    out: &mut Out| {
        // Deadlines due before this message arrived fire first: one order per household.
        engine.fire_due(rules, dir, crate::clock::to_millis(received_at), items, out);
        match accept(item, origin, transport, &mut notes, engine, out) {
            Ok(w) => items.push(w),
            Err(rejection) => {
                notes.push(Note::Rejected(origin.to_owned(), rejection.clone()));
                items.push(WriteItem::Rejected {
                    rejection,
                    origin: origin.to_owned(),
                    received_at,
                });
            }
        }
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
                pkid,
                ..
            } => {
                let (decoded, profile) = if *size > canonical::MAX_PAYLOAD_BYTES {
                    (
                        oversized(shared, &current.profiles, topic, payload, *size),
                        None,
                    )
                } else {
                    decode_mqtt(
                        &shared.topic_root,
                        &current.profiles,
                        topic,
                        payload,
                        *received_at,
                    )
                };
                if let Some(profile) = profile {
                    for item in &decoded.items {
                        profile_notes.push(Note::Profile(
                            profile.clone(),
                            item.as_ref().map(|_| ()).map_err(|r| r.reason),
                        ));
                    }
                }
                let transport = Transport {
                    json: true,
                    dup: *dup,
                    retain: *retain,
                    pkid: Some(*pkid),
                };
                for item in decoded.items {
                    push(
                        item,
                        topic,
                        *received_at,
                        transport,
                        &mut items,
                        engine,
                        out,
                    );
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
                    pkid: None,
                };
                for item in frame_items {
                    push(
                        item.clone(),
                        origin,
                        *received_at,
                        transport,
                        &mut items,
                        engine,
                        out,
                    );
                }
            }
        }
    }
    engine.fire_due(rules, dir, crate::clock::to_millis(now), &mut items, out);
    notes.append(&mut profile_notes);
    Built {
        write: WriteBatch {
            items,
            dedup_window: chrono::Duration::seconds(shared.cfg.dedup_window_secs as i64),
            redelivery_window: chrono::Duration::seconds(shared.cfg.redelivery_window_secs as i64),
            token: String::new(),
            retry: false,
            deadlines: Vec::new(),
            suppressed: Vec::new(),
            activity: Vec::new(),
        },
        quarantined,
        notes,
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

pub use crate::domain::alert::UNREGISTERED_RULE;

/// How a message arrived, as far as the pipeline cares.
#[derive(Debug, Clone, Copy)]
struct Transport {
    /// An MQTT JSON format (canonical or a profile), whose contract is strict.
    json: bool,
    /// The broker flagged it as sent before (MQTT DUP).
    dup: bool,
    /// A retained message replayed by the broker.
    retain: bool,
    /// The MQTT packet id, which a redelivered copy shares with its first copy.
    pkid: Option<u16>,
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
    /// `Ok(Some(off))`: the time was set aside, `off` from the receive time.
    fn check(
        &self,
        event: &mut Event,
        strict: bool,
    ) -> Result<Option<chrono::Duration>, Rejection> {
        let Some(t) = event.device_time else {
            return Ok(None);
        };
        let off = t - event.received_at;
        let far = off.abs();
        if far <= self.tolerance {
            return Ok(None);
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
        event.flaws.push(Flaw::new(
            "ts",
            t.to_rfc3339(),
            format!("the device clock is {text}; receive time shown"),
        ));
        event.device_time = None;
        // A clock this wrong may be stuck (a dead RTC sends one time forever): without `seq`
        // it cannot tell presses apart, so only the transport may call a copy a duplicate.
        if strict
            && event.seq.is_none()
            && let DedupKey::Device(k) = &event.dedup_key
        {
            event.dedup_key = DedupKey::Payload(k.clone());
        }
        Ok(Some(far))
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
/// pattern matches (named in the answer, for its metrics), else a `bad_topic` rejection.
pub fn decode_mqtt(
    root: &str,
    profiles: &crate::protocol::profile::ProfileSet,
    topic: &str,
    payload: &[u8],
    received_at: DateTime<Utc>,
) -> (canonical::Decoded, Option<String>) {
    if canonical::device_from_topic(root, topic).is_ok() {
        return (canonical::decode(root, topic, payload, received_at), None);
    }
    let Some((profile, device)) = profiles.route(topic) else {
        // The canonical decoder words the bad-topic rejection.
        return (canonical::decode(root, topic, payload, received_at), None);
    };
    (
        profile.decode(topic, device, payload, received_at),
        Some(profile.name.clone()),
    )
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

/// One shard driven by hand, without a broker: `anxin test-rules` steps it on a virtual clock
/// with the real decoding, rules, store and timers.
#[derive(Debug)]
pub struct ManualShard {
    shared: Arc<Shared>,
    engine: Engine,
    stop: CancellationToken,
}

/// Acks nothing: a manual shard's messages come from no broker.
#[derive(Debug)]
struct NoAcks;

impl AckSink for NoAcks {
    fn resolve(&self, _: &[u64], _: bool) {}
    fn redelivered(&self, _: u64) -> bool {
        false
    }
}

impl ManualShard {
    /// A single shard over `store`, reading rules from `config` and time from `clock`.
    pub fn new(
        cfg: PipelineConfig,
        store: Store,
        config: Arc<Live>,
        clock: SharedClock,
        registry: Registry,
        topic_root: &str,
    ) -> ManualShard {
        let engine = Engine::new(0, 1, clock.now());
        ManualShard {
            shared: Arc::new(Shared {
                store,
                config,
                clock,
                sink: Arc::new(NoAcks),
                live: AlertFeed::new(16),
                topic_root: topic_root.to_owned(),
                cfg,
                registry,
            }),
            engine,
            stop: CancellationToken::new(),
        }
    }

    /// Fires what is due now and commits `batch` (which may be empty).
    pub async fn step(&mut self, mut batch: Vec<Delivery>) {
        process(&self.shared, &mut self.engine, &mut batch, &self.stop).await;
    }

    /// The earliest pending deadline, ms.
    pub fn next_due(&self) -> Option<i64> {
        self.engine.next_due()
    }
}
