//! 4G TCP ingest: one listener per family, one task per connection.
//!
//! A connection reads frames through its family's framer, decodes each with the pure decoder,
//! hands the events to the pipeline shard of the device and writes the device's ack only once
//! the shard has committed them — except for login and keep-alive replies, which the device
//! needs at once and which carry nothing to lose. Frames of one connection are handled one
//! after another, so a device's events keep their order.
//!
//! Limits, each closing a connection and counted:
//! - admission ([`admission`]): per address, per listener, and a total over all listeners
//!   kept below the open-files limit so the API, the store and the broker keep their
//!   descriptors; at a full listener or total the oldest connection that has not identified
//!   its device is evicted to make room;
//! - a login deadline: a connection must identify its device within `login_timeout_secs`;
//! - a junk bound: more than `max_junk_bytes` skipped or unusable bytes without a usable frame
//!   in between;
//! - an idle timeout, the framer's maximum frame size, and a per-connection frame rate that
//!   throttles by pausing reads — TCP back-pressure; a frame is never discarded.

pub mod admission;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use futures_util::StreamExt;
use metrics::{counter, gauge};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
use crate::pipeline::{Delivery, Pipeline};
use crate::protocol::tcp::{Codec, Ctx, FrameOutput, Protocol, RawFrame, Session};
use crate::protocol::{RejectReason, Rejection};
use crate::registry::{Registry, UnknownPolicy};
use crate::telemetry::{self, names};

/// Frames kept per device for `GET /api/devices/{id}/frames`: enough to see a login, its
/// keep-alives and the last alarm, at a few hundred bytes a record.
const FRAMES_PER_DEVICE: usize = 10;
/// Bytes of each frame kept there; enough to read any control frame, bounded for memory.
const FRAME_BYTES_KEPT: usize = 512;

/// One logged frame, kept compact (the JSON is built only when someone asks).
#[derive(Debug)]
struct FrameRecord {
    at: DateTime<Utc>,
    family: &'static str,
    len: usize,
    kept: Box<[u8]>,
    events: Box<[&'static str]>,
    reply: Option<Box<[u8]>>,
    error: Option<(&'static str, Box<str>)>,
}

impl FrameRecord {
    fn to_json(&self) -> Value {
        // Text families read as text, binary ones as hex.
        let (text, hex) = match std::str::from_utf8(&self.kept) {
            Ok(t) if !t.chars().any(char::is_control) => (Some(t), None),
            _ => (None, Some(hex::encode(&self.kept))),
        };
        json!({
            "at": self.at,
            "family": self.family,
            "bytes": self.len,
            "hex": hex,
            "text": text,
            "events": self.events,
            "reply_hex": self.reply.as_ref().map(hex::encode),
            "error": self.error.as_ref().map(|(r, d)| json!({"reason": r, "detail": d})),
        })
    }
}

/// The recent raw frames of each device with their decode result, in memory and bounded
/// (10 per device, 512 bytes of each), for installers checking a device. Frames of a
/// connection that has not named its device are not kept here.
#[derive(Debug, Clone, Default)]
pub struct FrameLog {
    map: Arc<DashMap<String, VecDeque<FrameRecord>>>,
}

impl FrameLog {
    /// Records a frame of `device`.
    pub fn record(
        &self,
        device: &str,
        family: &'static str,
        at: DateTime<Utc>,
        frame: &[u8],
        out: &FrameOutput,
    ) {
        let rec = FrameRecord {
            at,
            family,
            len: frame.len(),
            kept: frame[..frame.len().min(FRAME_BYTES_KEPT)].into(),
            events: out.events.iter().map(|e| e.event_type.name()).collect(),
            reply: out.reply.as_deref().map(Into::into),
            error: out.error.as_ref().map(|(r, d)| (*r, d.as_str().into())),
        };
        let mut q = self.map.entry(device.to_owned()).or_default();
        if q.len() == FRAMES_PER_DEVICE {
            q.pop_front();
        }
        q.push_back(rec);
    }

    /// The recent frames of `device`, oldest first.
    pub fn recent(&self, device: &str) -> Vec<Value> {
        self.map
            .get(device)
            .map(|q| q.iter().map(FrameRecord::to_json).collect())
            .unwrap_or_default()
    }
}

/// Per-connection limits (the connection counts are the [`admission::Gate`]'s).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Close a connection that sent nothing for this long.
    pub idle_timeout: Duration,
    /// Frames per second one connection may send before its reads are paused.
    pub max_frames_per_sec: u32,
    /// Close a connection that has not identified its device this long after it opened.
    pub login_timeout: Duration,
    /// Close a connection after this many skipped or unusable bytes without a usable frame.
    pub max_junk_bytes: usize,
}

/// What every connection of every listener shares.
#[derive(Debug, Clone)]
pub struct TcpShared {
    /// Registered devices and the unknown-device policy.
    pub registry: Registry,
    /// Recent frames per device.
    pub frames: FrameLog,
    /// The connected devices' command queues.
    pub downlinks: Downlinks,
    /// Connection admission over all listeners.
    pub gate: admission::Gate,
}

/// A message the platform sends to a connected device on its own initiative.
#[derive(Debug)]
pub enum Downlink {
    /// An operator took the device's emergency alarm (JT/T 808 0x8203).
    ConfirmAlarm {
        /// Told whether the bytes were written.
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// How a downlink fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownlinkOutcome {
    /// Written to the device's connection.
    Sent,
    /// The device has no open connection (it is told at its next alarm report, if it still
    /// holds the flag and an operator acknowledges again — or it clears the flag itself).
    NotConnected,
    /// The device's family has no such message.
    NotSupported,
    /// The connection's command queue was full, closed, or the write failed.
    Failed(String),
}

impl DownlinkOutcome {
    /// For the API and the alert timeline.
    pub fn as_str(&self) -> String {
        match self {
            DownlinkOutcome::Sent => "sent".into(),
            DownlinkOutcome::NotConnected => "not_connected".into(),
            DownlinkOutcome::NotSupported => "not_supported".into(),
            DownlinkOutcome::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// Commands a connection accepts before it has written the earlier ones: a device gets one
/// confirmation per acknowledged alert, so a full queue means the connection is stuck; the
/// command is then refused (reported to the operator), never waited on.
const DOWNLINK_QUEUE: usize = 8;

/// A device's open connection: its number, family and command queue.
#[derive(Debug, Clone)]
struct Link {
    conn: u64,
    protocol: Protocol,
    tx: mpsc::Sender<Downlink>,
}

/// Devices with an open connection, by id, with the connection's command queue.
#[derive(Debug, Clone, Default)]
pub struct Downlinks(Arc<DashMap<String, Link>>);

impl Downlinks {
    /// Confirms the emergency alarm of `device`, waiting at most `wait` for the write.
    pub async fn confirm_alarm(&self, device: &str, wait: Duration) -> DownlinkOutcome {
        let Some((proto, tx)) = self.0.get(device).map(|e| (e.protocol, e.tx.clone())) else {
            return DownlinkOutcome::NotConnected;
        };
        if !proto.confirms_alarms() {
            return DownlinkOutcome::NotSupported;
        }
        let (done, result) = oneshot::channel();
        if let Err(e) = tx.try_send(Downlink::ConfirmAlarm { done }) {
            return DownlinkOutcome::Failed(match e {
                mpsc::error::TrySendError::Full(_) => {
                    "the connection's command queue is full".into()
                }
                mpsc::error::TrySendError::Closed(_) => "the connection closed".into(),
            });
        }
        match tokio::time::timeout(wait, result).await {
            Ok(Ok(Ok(()))) => DownlinkOutcome::Sent,
            Ok(Ok(Err(e))) => DownlinkOutcome::Failed(e),
            Ok(Err(_)) => DownlinkOutcome::Failed("the connection closed".into()),
            Err(_) => DownlinkOutcome::Failed(format!("not written within {wait:?}")),
        }
    }

    fn register(&self, device: &str, conn: u64, proto: Protocol, tx: &mpsc::Sender<Downlink>) {
        self.0.insert(
            device.to_owned(),
            Link {
                conn,
                protocol: proto,
                tx: tx.clone(),
            },
        );
    }

    fn unregister(&self, device: &str, conn: u64) {
        // A newer connection of the same device keeps its entry.
        self.0.remove_if(device, |_, v| v.conn == conn);
    }
}

/// How long the accept loop waits for evicted connections to close before it refuses a new
/// one: their tasks only need to be scheduled, so this is ample, and it bounds the pause of
/// the listener when one is stuck (e.g. waiting for a commit).
const EVICTION_WAIT: Duration = Duration::from_millis(100);

/// Numbers connections, so a closing one removes only its own downlink entry.
static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Accepts connections until `shutdown`; each connection runs on `tracker`.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    protocol: Protocol,
    pipeline: Pipeline,
    clock: SharedClock,
    limits: Limits,
    shared: TcpShared,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let family = protocol.name();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        let (socket, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(10);
                a
            }
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                telemetry::tcp_accept_failed(family, &e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let conn_id = NEXT_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let evict = CancellationToken::new();
        let ticket = match shared
            .gate
            .admit_or_wait(protocol, peer.ip(), conn_id, evict.clone(), EVICTION_WAIT)
            .await
        {
            Ok((ticket, _)) => ticket,
            Err(why) => {
                // Closed at once: a refused connection must not hold a descriptor.
                drop(socket);
                telemetry::tcp_refused(family, peer, why.as_str());
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let conn = Connection {
            protocol,
            pipeline: pipeline.clone(),
            clock: clock.clone(),
            limits: limits.clone(),
            shared: shared.clone(),
            peer,
            id: conn_id,
        };
        let stop = shutdown.clone();
        tracker.spawn(async move {
            gauge!(names::TCP_CONNECTIONS, "family" => family).increment(1.0);
            conn.run(socket, stop, evict, &ticket).await;
            gauge!(names::TCP_CONNECTIONS, "family" => family).decrement(1.0);
            drop(ticket);
        });
    }
}

struct Connection {
    protocol: Protocol,
    pipeline: Pipeline,
    clock: SharedClock,
    limits: Limits,
    shared: TcpShared,
    peer: SocketAddr,
    /// Numbers the connection for the downlink registry and for eviction (oldest first).
    id: u64,
}

/// Why a connection ended, for the log.
enum End {
    Closed,
    Idle,
    Shutdown,
    Io(std::io::Error),
    PipelineStopped,
    /// No device identified within the login deadline.
    LoginTimeout,
    /// This many bytes were skipped or unusable without a usable frame in between.
    Junk(usize),
    /// Closed to admit a new connection while it had not identified its device.
    Evicted,
}

impl Connection {
    async fn run(
        self,
        socket: TcpStream,
        stop: CancellationToken,
        evict: CancellationToken,
        ticket: &admission::Ticket,
    ) {
        let family = self.protocol.name();
        let (rd, mut wr) = socket.into_split();
        let mut frames = FramedRead::new(rd, Codec(self.protocol.framer()));
        let mut session = Session::default();
        let mut bucket = Bucket::new(self.limits.max_frames_per_sec);
        let peer = self.peer.to_string();
        let conn_id = self.id;
        // Only families with platform-initiated messages get a command queue (a 10 000-watch
        // fleet should not pay for one).
        let (downlink_tx, mut downlinks) = if self.protocol.confirms_alarms() {
            let (tx, rx) = mpsc::channel(DOWNLINK_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let mut registered: Option<String> = None;
        // Until the session knows its device, the connection holds a place that a silent or
        // junk-only peer could keep for the whole idle timeout.
        let login_deadline = tokio::time::sleep(self.limits.login_timeout);
        tokio::pin!(login_deadline);
        let mut identified = false;
        // Skipped or unusable bytes since the last usable frame.
        let mut junk: usize = 0;
        let end = loop {
            let next = tokio::select! {
                n = tokio::time::timeout(self.limits.idle_timeout, frames.next()) => n,
                Some(cmd) = async {
                    match downlinks.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Downlink::ConfirmAlarm { done } = cmd;
                    match self.protocol.confirm_alarm(&mut session) {
                        Some(bytes) => match wr.write_all(&bytes).await {
                            Ok(()) => {
                                tracing::info!(family, peer = %peer, device = session.device_id.as_deref().unwrap_or("-"), "Alarm confirmation sent to the device");
                                let _ = done.send(Ok(()));
                            }
                            Err(e) => {
                                let _ = done.send(Err(format!("write failed: {e}")));
                                break End::Io(e);
                            }
                        },
                        None => {
                            let _ = done.send(Err("nothing to address the device with yet".into()));
                        }
                    }
                    continue;
                }
                _ = &mut login_deadline, if !identified => break End::LoginTimeout,
                _ = evict.cancelled() => break End::Evicted,
                _ = stop.cancelled() => break End::Shutdown,
            };
            let raw = match next {
                Err(_) => break End::Idle,
                Ok(None) => break End::Closed,
                Ok(Some(Err(e))) => break End::Io(e),
                Ok(Some(Ok(raw))) => raw,
            };
            let frame = match raw {
                RawFrame::Skipped { bytes, reason } => {
                    telemetry::tcp_skipped(
                        family,
                        &peer,
                        session.device_id.as_deref(),
                        bytes,
                        reason,
                    );
                    junk = junk.saturating_add(bytes);
                    if junk > self.limits.max_junk_bytes {
                        break End::Junk(junk);
                    }
                    continue;
                }
                RawFrame::Frame(f) => f,
            };
            bucket.take().await;
            counter!(names::TCP_FRAMES, "family" => family).increment(1);
            let received_at = self.clock.now();
            let ctx = Ctx {
                received_at,
                peer: peer.clone(),
            };
            let before = session.clone();
            let mut out = self.protocol.decode(&frame, &mut session, &ctx);
            // A device whose clock runs on local time: once the frame named it, decode again
            // with its registered offset (decoding is pure, so this is only CPU).
            if let Some(tz) = session
                .device_id
                .as_deref()
                .and_then(|d| self.shared.registry.offset(d))
                && session.tz != Some(tz)
            {
                session = before;
                session.tz = Some(tz);
                out = self.protocol.decode(&frame, &mut session, &ctx);
            }
            // A frame is usable when it decoded cleanly or still produced something; frames
            // that decode to nothing but an error count as junk.
            if out.error.is_none() || !out.events.is_empty() || out.reply.is_some() {
                junk = 0;
            } else {
                junk = junk.saturating_add(frame.len());
            }
            if !identified && session.device_id.is_some() {
                identified = true;
                ticket.identified();
            }
            let device = session.device_id.clone();
            if device != registered {
                if let Some(old) = &registered {
                    self.shared.downlinks.unregister(old, conn_id);
                }
                if let (Some(d), Some(tx)) = (&device, &downlink_tx) {
                    self.shared
                        .downlinks
                        .register(d, conn_id, self.protocol, tx);
                }
                registered = device.clone();
            }
            // Only identified devices: keyed by peer, every connection of a flood would add a
            // key that is never removed. An unusable frame's bytes are kept in the store's
            // rejection record instead.
            if let Some(d) = device.as_deref() {
                self.shared
                    .frames
                    .record(d, family, received_at, &frame, &out);
            }
            // Under `reject`, an unregistered device gets no answer — not even to its login —
            // unless the frame carries an alarm, which is committed and acked like any other.
            let refused = self.shared.registry.policy == UnknownPolicy::Reject
                && device
                    .as_deref()
                    .is_none_or(|d| !self.shared.registry.is_registered(d))
                && !out.events.iter().any(|e| e.event_type.is_life_safety());
            if refused {
                out.reply = None;
            }
            let mut items: Vec<Result<_, Rejection>> = out.events.into_iter().map(Ok).collect();
            if let Some((reason, detail)) = &out.error {
                telemetry::tcp_decode_error(family, &peer, device.as_deref(), reason, detail);
                if items.is_empty() && out.reply.is_none() {
                    // Nothing usable came out of it: keep the raw frame for inspection.
                    items.push(Err(Rejection {
                        device_id: device.clone(),
                        reason: RejectReason::BadFrame,
                        detail: format!("{family}: {reason}: {detail}"),
                        raw: frame.to_vec(),
                    }));
                }
            }
            if out.reply_now
                && let Some(reply) = &out.reply
                && let Err(e) = wr.write_all(reply).await
            {
                break End::Io(e);
            }
            if !items.is_empty() {
                let (committed, done) = oneshot::channel();
                let d = Delivery::Frame {
                    device_id: device.unwrap_or_else(|| peer.clone()),
                    origin: format!("{family}://{peer}"),
                    items,
                    received_at,
                    committed,
                };
                if self.pipeline.submit(d).await.is_err() || done.await.is_err() {
                    // Never ack what was not committed: the device retransmits.
                    break End::PipelineStopped;
                }
            }
            if !out.reply_now
                && let Some(reply) = &out.reply
                && let Err(e) = wr.write_all(reply).await
            {
                break End::Io(e);
            }
            // Checked after the frame was handled: what it carried is committed and answered.
            if junk > self.limits.max_junk_bytes {
                break End::Junk(junk);
            }
            // Evicted while this frame (the one that identified the device) was in hand: its
            // place was given away, so the device reconnects.
            if evict.is_cancelled() {
                break End::Evicted;
            }
        };
        if let Some(d) = &registered {
            self.shared.downlinks.unregister(d, conn_id);
        }
        let _ = wr.shutdown().await;
        let device = session.device_id.as_deref();
        let why = match end {
            End::Closed => "closed by the device".to_owned(),
            End::Idle => format!("idle for {:?}", self.limits.idle_timeout),
            End::Shutdown => "engine shutting down".to_owned(),
            End::Io(e) => format!("I/O error: {e}"),
            End::PipelineStopped => "pipeline stopped before commit".to_owned(),
            End::LoginTimeout => {
                telemetry::tcp_login_timeout(family, &peer, self.limits.login_timeout);
                format!(
                    "no device identified within {:?}",
                    self.limits.login_timeout
                )
            }
            End::Junk(bytes) => {
                telemetry::tcp_junk_closed(
                    family,
                    &peer,
                    device,
                    bytes,
                    self.limits.max_junk_bytes,
                );
                format!("{bytes} bytes of junk without a usable frame")
            }
            End::Evicted => {
                telemetry::tcp_evicted(family, &peer);
                "evicted to admit a new connection (no device identified yet)".to_owned()
            }
        };
        telemetry::tcp_closed(family, &peer, device, &why);
    }
}

/// Token bucket: a burst of `rate` frames, refilled at `rate` per second. Waiting here pauses
/// reads, so the kernel's receive window pushes back on the device.
struct Bucket {
    rate: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        let rate = f64::from(rate.max(1));
        Bucket {
            rate,
            tokens: rate,
            last: tokio::time::Instant::now(),
        }
    }

    async fn take(&mut self) {
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
            counter!(names::TCP_THROTTLED).increment(1);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.last = tokio::time::Instant::now();
        }
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_paces_a_flood_without_dropping() {
        let mut b = Bucket::new(10);
        let start = tokio::time::Instant::now();
        for _ in 0..30 {
            b.take().await;
        }
        // 10 at once, then 20 more at 10/s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took <= Duration::from_millis(2100),
            "{took:?}"
        );
    }
}
