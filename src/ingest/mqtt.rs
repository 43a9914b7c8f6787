//! MQTT ingest with rumqttc: QoS 1, persistent session, manual acks after commit.
//!
//! The poll task only forwards publishes to the pipeline; it never waits on the database
//! (keep-alive and reconnection run inside `poll()`, PITFALLS 6). Acks are released by the
//! [`AckTracker`] in receive order for the committed prefix and sent by a separate ack task,
//! tagged with the connection generation they belong to: a connection error bumps the
//! generation before anything else happens, so an ack owed on a dead connection is dropped
//! and the broker's redelivered copy is acked instead (PITFALLS 5).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use metrics::{counter, gauge};
use rumqttc::v5::mqttbytes::v5 as v5b;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::{MqttConfig, MqttTarget};
use crate::ingest::session::SessionWatch;
use crate::pipeline::acks::{AckToken, AckTracker};
use crate::pipeline::{AckSink, Delivery, Pipeline};
use crate::protocol::OVERSIZE_KEPT_BYTES;
use crate::protocol::canonical::MAX_PAYLOAD_BYTES;
use crate::telemetry::names;

/// Largest packet we accept: the largest MQTT allows (a remaining length of 268 435 455 bytes,
/// MQTT 3.1.1 §2.2.3 and MQTT 5 §1.5.5, plus the fixed header). The payload limit is ours to
/// enforce, with a refusal that leaves a trace: below the broker's own limit an oversized
/// message would vanish (an MQTT 5 broker discards what exceeds the client's Maximum Packet
/// Size, MQTT 5 §3.1.2.11.4) or, over 3.1.1, fail the connection on every redelivery. The
/// shipped Mosquitto config and the embedded broker refuse such payloads first, so the device
/// learns (PITFALLS 11); nats-server 2.9 has no MQTT size limit.
const MAX_PACKET_BYTES: usize = 268_435_455 + 5;

/// A received publish, kept so it can be acked later.
#[derive(Debug)]
pub enum AckHandle {
    /// MQTT 3.1.1.
    V4(rumqttc::Publish),
    /// MQTT 5.
    V5(v5b::Publish),
}

impl AckHandle {
    /// QoS 0 messages are never acknowledged; counting them as owed would stall shutdown.
    fn needs_ack(&self) -> bool {
        match self {
            AckHandle::V4(p) => p.qos != rumqttc::QoS::AtMostOnce,
            AckHandle::V5(p) => p.qos != rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        }
    }
}

#[derive(Clone)]
enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

// Publish dominates the traffic, so boxing it would cost an allocation per message for
// nothing; the small variants are rare.
#[allow(clippy::large_enum_variant)]
enum Polled {
    ConnAck {
        session_present: bool,
    },
    SubAck {
        ok: bool,
    },
    Publish {
        topic: String,
        payload: Bytes,
        dup: bool,
        retain: bool,
        pkid: u16,
        handle: AckHandle,
    },
    PubAckSent,
    Other,
}

impl Client {
    fn try_ack(&self, h: &AckHandle) -> Result<(), String> {
        match (self, h) {
            (Client::V4(c), AckHandle::V4(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            (Client::V5(c), AckHandle::V5(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            _ => Err("ack handle of the other protocol version".into()),
        }
    }

    fn try_subscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }

    fn try_unsubscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Client::V4(c) => c.try_unsubscribe(filter).map_err(|e| e.to_string()),
            Client::V5(c) => c.try_unsubscribe(filter).map_err(|e| e.to_string()),
        }
    }

    fn try_disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

impl EventLoop {
    async fn poll(&mut self) -> Result<Polled, PollError> {
        match self {
            EventLoop::V4(el) => {
                use rumqttc::{Event, Incoming, Outgoing};
                Ok(match el.poll().await.map_err(PollError::other)? {
                    Event::Incoming(Incoming::ConnAck(c)) => Polled::ConnAck {
                        session_present: c.session_present,
                    },
                    Event::Incoming(Incoming::SubAck(s)) => Polled::SubAck {
                        ok: s
                            .return_codes
                            .iter()
                            .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
                    },
                    Event::Incoming(Incoming::Publish(mut p)) => Polled::Publish {
                        topic: std::mem::take(&mut p.topic),
                        // The ack needs only the packet id and QoS: the handle, held until
                        // commit, must not keep the payload alive too.
                        payload: std::mem::take(&mut p.payload),
                        dup: p.dup,
                        retain: p.retain,
                        pkid: p.pkid,
                        handle: AckHandle::V4(p),
                    },
                    Event::Outgoing(Outgoing::PubAck(_)) => Polled::PubAckSent,
                    _ => Polled::Other,
                })
            }
            EventLoop::V5(el) => {
                use rumqttc::Outgoing;
                use rumqttc::v5::Event;
                use v5b::Packet;
                Ok(match el.poll().await.map_err(PollError::v5)? {
                    Event::Incoming(Packet::ConnAck(c)) => Polled::ConnAck {
                        session_present: c.session_present,
                    },
                    Event::Incoming(Packet::SubAck(s)) => Polled::SubAck {
                        ok: s
                            .return_codes
                            .iter()
                            .all(|c| matches!(c, v5b::SubscribeReasonCode::Success(_))),
                    },
                    Event::Incoming(Packet::Publish(mut p)) => Polled::Publish {
                        topic: String::from_utf8_lossy(&std::mem::take(&mut p.topic)).into_owned(),
                        payload: std::mem::take(&mut p.payload),
                        dup: p.dup,
                        retain: p.retain,
                        pkid: p.pkid,
                        handle: AckHandle::V5(p),
                    },
                    Event::Outgoing(Outgoing::PubAck(_)) => Polled::PubAckSent,
                    _ => Polled::Other,
                })
            }
        }
    }

    /// Drops any ack still queued for the dead connection (rumqttc keeps other requests).
    fn clean(&mut self) {
        match self {
            EventLoop::V4(el) => el.clean(),
            EventLoop::V5(el) => el.clean(),
        }
    }
}

/// A failed `poll()`: what to log and, on an MQTT 5 client, whether it looks like the broker
/// turning the protocol version down.
#[derive(Debug)]
struct PollError {
    message: String,
    refusal: Option<V5Refusal>,
}

/// How a broker answered an MQTT 5 CONNECT it does not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V5Refusal {
    /// CONNACK reason code 0x84 "Unsupported Protocol Version" (MQTT 5.0 §3.2.2.2), or a
    /// packet in answer to CONNECT that does not parse as MQTT 5.
    Explicit,
    /// The connection closed after the TCP connect and before any CONNACK. A 3.1.1 broker
    /// answers an unsupported level with CONNACK 0x01 and closes (MQTT 3.1.1 §3.1.2.2,
    /// [MQTT-3.1.2-2]); rumqttc 0.25.1 reads that 4-byte CONNACK as an incomplete MQTT 5 one,
    /// so it shows as this close (tests/broker_fallback.rs), as does nats-server 2.9's answer.
    Closed,
}

impl PollError {
    fn other(e: impl std::fmt::Display) -> PollError {
        PollError {
            message: e.to_string(),
            refusal: None,
        }
    }

    fn v5(e: rumqttc::v5::ConnectionError) -> PollError {
        use rumqttc::v5::{ConnectionError as C, StateError as S};
        use std::io::ErrorKind as K;
        // Only kinds that mean "the peer hung up": a refused or timed-out TCP connect says
        // nothing about the protocol version.
        let hung_up = |e: &std::io::Error| {
            matches!(
                e.kind(),
                K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe
            )
        };
        let refusal = match &e {
            C::ConnectionRefused(v5b::ConnectReturnCode::UnsupportedProtocolVersion)
            | C::MqttState(S::Deserialization(_)) => Some(V5Refusal::Explicit),
            C::MqttState(S::ConnectionAborted) => Some(V5Refusal::Closed),
            C::MqttState(S::Io(io)) | C::Io(io) if hung_up(io) => Some(V5Refusal::Closed),
            _ => None,
        };
        PollError {
            message: e.to_string(),
            refusal,
        }
    }
}

impl std::fmt::Display for PollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What is needed to reconnect over MQTT 3.1.1 when the broker turns MQTT 5 down
/// (nats-server speaks 3.1.1 only): a production broker works with no config edit.
struct V4Fallback {
    cfg: MqttConfig,
    filters: watch::Receiver<Vec<String>>,
    client_id: String,
    host: String,
    port: u16,
    window: usize,
    /// TLS towards the broker, kept for the 3.1.1 client.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// MQTT 5 connections closed in answer to CONNECT, in a row.
    closed: u32,
}

impl V4Fallback {
    /// A broker that is going down also closes a fresh connection before CONNACK, so a close
    /// counts only when it repeats; an explicit refusal counts at once.
    const CLOSES_BEFORE_FALLBACK: u32 = 2;

    /// Whether `e`, on an MQTT 5 client that never got a CONNACK, means "not MQTT 5".
    fn refused(&mut self, e: &PollError) -> bool {
        match e.refusal {
            Some(V5Refusal::Explicit) => true,
            Some(V5Refusal::Closed) => {
                self.closed += 1;
                self.closed >= Self::CLOSES_BEFORE_FALLBACK
            }
            None => {
                self.closed = 0;
                false
            }
        }
    }

    /// The MQTT 3.1.1 client, built by [`MqttIngest::new`] itself so it gets the same client
    /// id, persistent session (clean session off), packet limit and queue sizes.
    fn connect(self) -> (Client, EventLoop) {
        let v4 = MqttIngest::new(
            &self.cfg,
            self.filters,
            &self.client_id,
            &self.host,
            self.port,
            false,
            self.window,
            self.tls,
        );
        (v4.client, v4.eventloop)
    }
}

/// Connection state shared by the poll task, the ack task and the shards.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Bumped on every connection error, before reconnecting.
    generation: Mutex<u64>,
    /// Whether the broker resumed our session on the current generation's connection.
    resumed: AtomicBool,
    /// Connected and the canonical subscription acknowledged.
    subscribed: AtomicBool,
    /// Filters the broker acknowledged on the current connection.
    acked_filters: Mutex<HashSet<String>>,
    /// Tokens the ack task has handled (acked or dropped as stale).
    handled: AtomicU64,
    /// Acks handed to rumqttc on a live connection.
    requested: AtomicU64,
    /// PUBACKs rumqttc reports as written.
    written: AtomicU64,
}

impl ConnState {
    fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connected and subscribed to the canonical topics (readiness).
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Whether the broker acknowledged `filter` on the current connection.
    pub fn is_filter_subscribed(&self, filter: &str) -> bool {
        self.acked_filters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(filter)
    }
}

/// The pipeline's view of MQTT acks.
#[derive(Debug)]
pub struct MqttSink {
    tracker: AckTracker<AckHandle>,
    conn: Arc<ConnState>,
}

impl AckSink for MqttSink {
    fn resolve(&self, positions: &[u64], ack: bool) {
        self.tracker.resolve(positions.iter().copied(), ack);
    }

    fn redelivered(&self, generation: u64) -> bool {
        generation < self.conn.generation() && self.conn.resumed.load(Ordering::Acquire)
    }
}

impl MqttSink {
    /// Received and not yet released.
    pub fn pending(&self) -> usize {
        self.tracker.pending()
    }

    /// Age of the oldest unreleased message.
    pub fn oldest_age(&self) -> Option<Duration> {
        self.tracker.oldest_age()
    }

    /// Most messages held unacked at once since start.
    pub fn peak(&self) -> usize {
        self.tracker.peak()
    }
}

/// Everything needed to run MQTT ingest.
pub struct MqttIngest {
    client: Client,
    eventloop: EventLoop,
    acks_rx: mpsc::UnboundedReceiver<AckToken<AckHandle>>,
    sink: Arc<MqttSink>,
    conn: Arc<ConnState>,
    filters: watch::Receiver<Vec<String>>,
    max_backoff: Duration,
    /// How many messages the broker may have in flight to us.
    pub window: usize,
    /// Told of every CONNACK (broker session loss).
    session: Option<Arc<SessionWatch>>,
    /// Set on an MQTT 5 client until its first CONNACK.
    fallback: Option<V4Fallback>,
}

impl MqttIngest {
    /// Prepares a client for `host:port`. `v5` selects MQTT 5 (with Receive Maximum and a
    /// session expiry); otherwise MQTT 3.1.1 with clean session off. `filters` is the
    /// subscription list (canonical first), followed as it changes on reload. The user name
    /// and password come from `cfg.target`; `tls` (built by [`super::tls::client_config`])
    /// turns on TLS.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &MqttConfig,
        filters: watch::Receiver<Vec<String>>,
        client_id: &str,
        host: &str,
        port: u16,
        v5: bool,
        window_if_v4: usize,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> MqttIngest {
        let login = login(cfg);
        let fallback_tls = tls.clone();
        let transport = tls.map(|c| rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(c)));
        let keep_alive = Duration::from_secs(cfg.keep_alive_secs);
        // The request channel carries acks and subscribes; room for the whole window keeps the
        // ack task from ever waiting on it (PITFALLS 6).
        let (client, eventloop, window) = if v5 {
            let window = cfg.receive_maximum as usize;
            let mut o = rumqttc::v5::MqttOptions::new(client_id, host, port);
            o.set_keep_alive(keep_alive)
                .set_clean_start(false)
                // Without an expiry a v5 broker drops the session, and its queue, on disconnect
                // (PITFALLS 2).
                .set_session_expiry_interval(Some(cfg.session_expiry_secs))
                .set_receive_maximum(Some(cfg.receive_maximum))
                .set_max_packet_size(Some(MAX_PACKET_BYTES as u32))
                .set_manual_acks(true);
            if let Some((user, pass)) = &login {
                o.set_credentials(user.as_str(), pass.as_str());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, el) = rumqttc::v5::AsyncClient::new(o, window * 2 + 64);
            (Client::V5(c), EventLoop::V5(Box::new(el)), window)
        } else {
            let mut o = rumqttc::MqttOptions::new(client_id, host, port);
            o.set_keep_alive(keep_alive)
                .set_clean_session(false)
                .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
                .set_manual_acks(true);
            if let Some((user, pass)) = &login {
                o.set_credentials(user.as_str(), pass.as_str());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, el) = rumqttc::AsyncClient::new(o, window_if_v4 * 2 + 64);
            (Client::V4(c), EventLoop::V4(Box::new(el)), window_if_v4)
        };
        let fallback = v5.then(|| V4Fallback {
            cfg: cfg.clone(),
            filters: filters.clone(),
            client_id: client_id.to_owned(),
            host: host.to_owned(),
            port,
            window,
            tls: fallback_tls,
            closed: 0,
        });
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let conn = Arc::new(ConnState::default());
        *conn.generation.lock().unwrap_or_else(|e| e.into_inner()) = 1;
        let sink = Arc::new(MqttSink {
            tracker: AckTracker::new(acks_tx),
            conn: conn.clone(),
        });
        MqttIngest {
            client,
            eventloop,
            acks_rx,
            sink,
            conn,
            filters,
            max_backoff: Duration::from_millis(cfg.reconnect_max_backoff_ms),
            window,
            session: None,
            fallback,
        }
    }

    /// Reports every CONNACK's session flag to `w` (broker session loss, `/readyz`).
    pub fn with_session_watch(mut self, w: Arc<SessionWatch>) -> Self {
        self.session = Some(w);
        self
    }

    /// The sink shards resolve messages through.
    pub fn sink(&self) -> Arc<MqttSink> {
        self.sink.clone()
    }

    /// Connection state (readiness).
    pub fn conn(&self) -> Arc<ConnState> {
        self.conn.clone()
    }

    /// Runs until `stop` is cancelled and everything received has been committed and acked
    /// (or `grace` ran out). The pipeline handle is dropped at `stop` so shards drain.
    pub async fn run(
        self,
        pipeline: Pipeline,
        clock: SharedClock,
        stop: CancellationToken,
        grace: Duration,
    ) {
        let MqttIngest {
            mut client,
            mut eventloop,
            acks_rx,
            sink,
            conn,
            mut filters,
            max_backoff,
            session,
            mut fallback,
            ..
        } = self;
        // Subscriptions sent on this connection and not yet acknowledged, in order (a broker
        // answers SUBSCRIBEs in the order received).
        let mut awaiting: VecDeque<String> = VecDeque::new();
        let mut wanted: Vec<String> = filters.borrow_and_update().clone();
        let mut filters_open = true;
        let canonical = wanted.first().cloned().unwrap_or_default();
        let released_counter = sink.clone();
        // The ack task follows the client through an MQTT 3.1.1 fallback.
        let (client_tx, client_rx) = watch::channel(client.clone());
        let ack_task = tokio::spawn(run_acks(client_rx, acks_rx, conn.clone()));
        let mut pipeline = Some(pipeline);
        let mut backoff = Duration::from_millis(100);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let polled = if let Some(d) = deadline {
                let flushed = released_counter.pending() == 0
                    && conn.handled.load(Ordering::Acquire) == released_counter.tracker.released()
                    && conn.written.load(Ordering::Acquire)
                        >= conn.requested.load(Ordering::Acquire);
                if flushed || tokio::time::Instant::now() >= d {
                    if !flushed {
                        tracing::warn!(
                            unacked = released_counter.pending(),
                            "Shutdown grace ran out; unacked messages will be redelivered by the broker"
                        );
                    }
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(50), eventloop.poll()).await {
                    Ok(r) => r,
                    Err(_) => continue,
                }
            } else {
                tokio::select! {
                    r = eventloop.poll() => r,
                    changed = filters.changed(), if filters_open => {
                        if changed.is_err() {
                            filters_open = false;
                            continue;
                        }
                        let next = filters.borrow_and_update().clone();
                        for f in next.iter().filter(|f| !wanted.contains(f)) {
                            match client.try_subscribe(f) {
                                Ok(()) => awaiting.push_back(f.clone()),
                                Err(e) => tracing::error!(filter = %f, error = %e, "Cannot queue the subscription"),
                            }
                        }
                        for f in wanted.iter().filter(|f| !next.contains(f)) {
                            conn.acked_filters.lock().unwrap_or_else(|e| e.into_inner()).remove(f);
                            if let Err(e) = client.try_unsubscribe(f) {
                                tracing::warn!(filter = %f, error = %e, "Cannot queue the unsubscription");
                            } else {
                                tracing::info!(filter = %f, "Unsubscribing: no profile reads it any more");
                            }
                        }
                        wanted = next;
                        continue;
                    }
                    _ = stop.cancelled() => {
                        tracing::info!("Stopping MQTT intake; committing what was received and sending owed acks");
                        // Shards drain their queues and exit once every sender is gone.
                        pipeline = None;
                        deadline = Some(tokio::time::Instant::now() + grace);
                        continue;
                    }
                }
            };
            if matches!(polled, Ok(Polled::ConnAck { .. })) {
                // Connected: from now on a close is a connection error, never a refusal.
                fallback = None;
            }
            match polled {
                Ok(Polled::ConnAck { session_present }) => {
                    backoff = Duration::from_millis(100);
                    conn.resumed.store(session_present, Ordering::Release);
                    counter!(names::MQTT_CONNECTS).increment(1);
                    tracing::info!(
                        session_present,
                        generation = conn.generation(),
                        "Connected to MQTT broker"
                    );
                    if let Some(w) = &session {
                        w.on_connack(session_present, clock.now());
                    }
                    // Subscribe on every CONNACK: the broker may have lost the session, and
                    // rumqttc never re-subscribes by itself (PITFALLS 3).
                    awaiting.clear();
                    for f in &wanted {
                        match client.try_subscribe(f) {
                            Ok(()) => awaiting.push_back(f.clone()),
                            Err(e) => {
                                tracing::error!(filter = %f, error = %e, "Cannot queue the subscription")
                            }
                        }
                    }
                }
                Ok(Polled::SubAck { ok }) => {
                    let Some(filter) = awaiting.pop_front() else {
                        continue;
                    };
                    if ok {
                        if filter == canonical {
                            conn.subscribed.store(true, Ordering::Release);
                            gauge!(names::MQTT_READY).set(1.0);
                        }
                        tracing::info!(filter = %filter, "Subscribed");
                        conn.acked_filters
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(filter);
                    } else {
                        tracing::error!(filter = %filter, "The broker refused the subscription");
                    }
                }
                Ok(Polled::Publish {
                    topic,
                    payload,
                    dup,
                    retain,
                    pkid,
                    handle,
                }) => {
                    counter!(names::MQTT_RECEIVED).increment(1);
                    let Some(p) = &pipeline else {
                        // Stopping: not registered, never acked; the broker redelivers it.
                        continue;
                    };
                    let generation = conn.generation();
                    let pos = sink.tracker.register(AckToken { generation, handle });
                    // An oversized payload is refused in the shard; only its prefix travels,
                    // so a queue of them stays as small as a queue of valid messages.
                    let size = payload.len();
                    let payload = if size > MAX_PAYLOAD_BYTES {
                        Bytes::copy_from_slice(&payload[..OVERSIZE_KEPT_BYTES])
                    } else {
                        payload
                    };
                    let d = Delivery::Mqtt {
                        pos,
                        generation,
                        topic,
                        payload,
                        size,
                        received_at: clock.now(),
                        dup,
                        retain,
                        pkid,
                    };
                    if p.submit(d).await.is_err() {
                        tracing::error!("Pipeline stopped unexpectedly; message left unacked");
                    }
                }
                Ok(Polled::PubAckSent) => {
                    conn.written.fetch_add(1, Ordering::AcqRel);
                    counter!(names::MQTT_ACKED).increment(1);
                }
                Ok(Polled::Other) => {}
                Err(e) if fallback.as_mut().is_some_and(|f| f.refused(&e)) => {
                    // Nothing was received yet (no CONNACK), so no ack can be owed on the
                    // MQTT 5 client being dropped.
                    let Some(v4) = fallback.take() else { continue };
                    tracing::warn!(
                        error = %e,
                        client_id = %v4.client_id,
                        "The broker refused MQTT 5; reconnecting with MQTT 3.1.1, same client id and persistent session (set [mqtt] protocol = 4 to skip the attempt)"
                    );
                    (client, eventloop) = v4.connect();
                    client_tx.send_replace(client.clone());
                }
                Err(e) => {
                    {
                        // Bump first: from here on, acks for the old connection are dropped.
                        let mut g = conn.generation.lock().unwrap_or_else(|e| e.into_inner());
                        *g += 1;
                        conn.resumed.store(false, Ordering::Release);
                    }
                    // Any ack that slipped into rumqttc's queue before the bump goes too.
                    eventloop.clean();
                    conn.subscribed.store(false, Ordering::Release);
                    conn.acked_filters
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    awaiting.clear();
                    // Acks queued for the dead connection will never be written.
                    conn.written
                        .store(conn.requested.load(Ordering::Acquire), Ordering::Release);
                    gauge!(names::MQTT_READY).set(0.0);
                    counter!(names::MQTT_ERRORS).increment(1);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection error; reconnecting");
                    if deadline.is_some() {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
        client.try_disconnect();
        // Let rumqttc write the DISCONNECT so the broker keeps the session cleanly.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Ok(ev) = eventloop.poll().await {
                if let Polled::PubAckSent = ev {
                    counter!(names::MQTT_ACKED).increment(1);
                }
            }
        })
        .await;
        ack_task.abort();
        drop(pipeline);
    }
}

/// User name and password for CONNECT, from the broker URL. An empty password is left out of
/// CONNECT by rumqttc (MQTT allows a user name alone).
fn login(cfg: &MqttConfig) -> Option<(String, String)> {
    match &cfg.target {
        MqttTarget::External {
            credentials: Some(c),
            ..
        } => Some((
            c.username.clone(),
            c.password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default(),
        )),
        _ => None,
    }
}

async fn run_acks(
    client: watch::Receiver<Client>,
    mut rx: mpsc::UnboundedReceiver<AckToken<AckHandle>>,
    conn: Arc<ConnState>,
) {
    while let Some(token) = rx.recv().await {
        loop {
            let sent = {
                // Holding the generation lock across the check and the enqueue means a
                // connection error cannot slip between them (the poll task bumps under it).
                let g = conn.generation.lock().unwrap_or_else(|e| e.into_inner());
                if token.generation != *g {
                    counter!(names::MQTT_STALE_ACKS).increment(1);
                    Some(false)
                } else {
                    match client.borrow().try_ack(&token.handle) {
                        Ok(()) => Some(true),
                        Err(_) => None,
                    }
                }
            };
            match sent {
                Some(acked) => {
                    if acked && token.handle.needs_ack() {
                        conn.requested.fetch_add(1, Ordering::AcqRel);
                    }
                    conn.handled.fetch_add(1, Ordering::AcqRel);
                    break;
                }
                // The request channel is full (it has room for twice the window, so only a
                // stalled event loop gets here): wait for it to drain.
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}
