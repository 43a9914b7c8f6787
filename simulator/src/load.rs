//! Rate mode: many devices publishing a paced, reproducible stream of events over one
//! connection, with every publish counted only once its PUBACK arrives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, timeout};

use crate::mqtt::{self, Endpoint, HANDSHAKE_TIMEOUT, Notice, Role};
use crate::payload::{
    self, DoorState, Event, PositionSource, SmokeState, Vitals, WaterState, events_topic,
};

/// Which events a load run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// Mostly routine reports with about 1 % alarms (SOS, smoke alarm, water leak).
    Mixed,
    /// Heartbeats only.
    Heartbeat,
    /// SOS presses only.
    Sos,
}

/// Settings of one load run.
#[derive(Debug, Clone)]
pub struct LoadArgs {
    /// Number of simulated devices; messages go to them round-robin.
    pub devices: usize,
    /// Overall messages per second; 0 means as fast as the broker acks.
    pub rate: f64,
    /// Total messages to publish.
    pub count: u64,
    /// Which events to send.
    pub mix: Mix,
    /// Whitespace appended to every payload.
    pub pad_bytes: usize,
    /// How long to wait for outstanding PUBACKs once everything is published.
    pub ack_timeout: Duration,
    /// PRNG seed, so that two runs send the same event sequence.
    pub seed: u64,
    /// Print a progress line on stderr this often (`None`: never).
    pub progress_every: Option<Duration>,
}

/// The id of simulated device number `index`.
pub fn device_id(index: usize) -> String {
    format!("sim-{index:05}")
}

/// SplitMix64: tiny, fast and well distributed, which is all a traffic mix needs, and its
/// fixed algorithm keeps a seed's sequence stable across builds and platforms.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    /// A generator whose sequence is fully determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Prng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n`; `n` must not be 0.
    pub fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift instead of `%`: no division, and the bias is negligible for small n.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A value in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Heartbeat,
    Vitals,
    Position,
    Motion,
    Battery,
    Door,
    Sos,
    SmokeAlarm,
    WaterLeak,
}

/// Weights out of 1000 for `--mix mixed`: a home-care fleet is mostly keep-alives and
/// periodic readings; the three alarm kinds together make about 1 %.
const MIXED_WEIGHTS: [(Kind, u64); 9] = [
    (Kind::Heartbeat, 300),
    (Kind::Vitals, 200),
    (Kind::Position, 150),
    (Kind::Motion, 140),
    (Kind::Battery, 100),
    (Kind::Door, 100),
    (Kind::Sos, 4),
    (Kind::SmokeAlarm, 3),
    (Kind::WaterLeak, 3),
];

const ROOMS: [&str; 5] = ["living_room", "bedroom", "kitchen", "bathroom", "hall"];

/// Draws events for a [`Mix`], reproducibly from a seed.
#[derive(Debug, Clone)]
pub struct EventSource {
    mix: Mix,
    prng: Prng,
}

impl EventSource {
    /// A source for `mix` seeded with `seed`.
    pub fn new(mix: Mix, seed: u64) -> Self {
        EventSource {
            mix,
            prng: Prng::new(seed),
        }
    }

    /// The next event.
    pub fn next_event(&mut self) -> Event {
        match self.mix {
            Mix::Heartbeat => Event::Heartbeat,
            Mix::Sos => Event::Sos,
            Mix::Mixed => {
                let kind = self.pick_kind();
                self.build(kind)
            }
        }
    }

    fn pick_kind(&mut self) -> Kind {
        let total: u64 = MIXED_WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut roll = self.prng.below(total);
        for (kind, weight) in MIXED_WEIGHTS {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        unreachable!("roll is below the sum of the weights")
    }

    fn build(&mut self, kind: Kind) -> Event {
        let p = &mut self.prng;
        match kind {
            Kind::Heartbeat => Event::Heartbeat,
            Kind::Vitals => {
                let mut vitals = Vitals {
                    heart_rate: Some(55 + p.below(40) as u16),
                    spo2: Some(94 + p.below(6) as u8),
                    ..Vitals::default()
                };
                if p.below(2) == 0 {
                    vitals.systolic = Some(105 + p.below(35) as u16);
                    vitals.diastolic = Some(65 + p.below(25) as u16);
                }
                if p.below(4) == 0 {
                    vitals.temperature = Some(round_to(36.0 + p.unit() * 1.3, 1));
                }
                if p.below(4) == 0 {
                    vitals.steps = Some(p.below(15_000) as u32);
                }
                Event::Vitals(vitals)
            }
            Kind::Position => {
                let (source, accuracy_m) = match p.below(10) {
                    0..6 => (PositionSource::Gps, 3.0 + p.unit() * 17.0),
                    6..9 => (PositionSource::Wifi, 15.0 + p.unit() * 45.0),
                    _ => (PositionSource::Lbs, 200.0 + p.unit() * 1300.0),
                };
                Event::Position {
                    lat: round_to(31.18 + p.unit() * 0.1, 6),
                    lon: round_to(121.42 + p.unit() * 0.1, 6),
                    accuracy_m: Some(round_to(accuracy_m, 1)),
                    source,
                }
            }
            Kind::Motion => Event::Motion {
                room: Some(ROOMS[p.below(ROOMS.len() as u64) as usize].to_owned()),
            },
            Kind::Battery => Event::Battery {
                percent: 15 + p.below(86) as u8,
            },
            Kind::Door => Event::Door {
                state: if p.below(2) == 0 {
                    DoorState::Open
                } else {
                    DoorState::Closed
                },
            },
            Kind::Sos => Event::Sos,
            Kind::SmokeAlarm => Event::Smoke {
                state: SmokeState::Alarm,
            },
            Kind::WaterLeak => Event::Water {
                state: WaterState::Leak,
            },
        }
    }
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// One message of a plan: which device sends it, with which sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Index of the sending device, see [`device_id`].
    pub device: usize,
    /// The device's sequence number: 1 for its first message, then one more per message.
    pub seq: u64,
    /// What it reports.
    pub event: Event,
}

/// The messages of a run, spread round-robin over the devices.
#[derive(Debug, Clone)]
pub struct Plan {
    source: EventSource,
    next_seq: Vec<u64>,
    next_device: usize,
    remaining: u64,
}

impl Plan {
    /// `count` messages over `devices` devices (at least one).
    pub fn new(devices: usize, count: u64, source: EventSource) -> Self {
        Plan {
            source,
            next_seq: vec![1; devices.max(1)],
            next_device: 0,
            remaining: count,
        }
    }
}

impl Iterator for Plan {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        self.remaining = self.remaining.checked_sub(1)?;
        let device = self.next_device;
        self.next_device = (device + 1) % self.next_seq.len();
        let seq = self.next_seq[device];
        self.next_seq[device] += 1;
        Some(Planned {
            device,
            seq,
            event: self.source.next_event(),
        })
    }
}

/// How much of a second's worth of sends may go out back to back. tokio's timer has
/// millisecond resolution, so without a burst allowance a rate above 1000 msg/s could not
/// be reached by sleeping between single sends.
const BURST_SECS: f64 = 0.05;

/// Token bucket: refills at `rate` tokens per second up to a small burst; a send takes one.
#[derive(Debug, Clone)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Negative when sends have been promised ahead of the refill; the caller sleeps it off.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst: (rate * BURST_SECS).max(1.0),
            tokens: 1.0,
            last: now,
        }
    }

    /// Takes a token at `now` and returns how long to wait before sending.
    fn take(&mut self, now: Instant) -> Duration {
        if now > self.last {
            let refill = (now - self.last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
            self.last = now;
        }
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// PUBACK tally kept by the counting task.
#[derive(Debug, Clone, Default)]
struct Acks {
    ok: u64,
    refused: u64,
    first_refusal: Option<String>,
    last_at: Option<Instant>,
    /// Set when the connection ended; `None` inside for our own DISCONNECT.
    closed: Option<Option<String>>,
}

impl Acks {
    fn settled(&self, published: u64) -> bool {
        self.ok + self.refused >= published || self.closed.is_some()
    }
}

/// Counts PUBACKs in a task of its own so that the publishing loop never has to drain
/// reports itself.
async fn count_acks(mut notices: mpsc::UnboundedReceiver<Notice>, tally: watch::Sender<Acks>) {
    while let Some(notice) = notices.recv().await {
        match notice {
            Notice::Acked(result) => tally.send_modify(|acks| {
                match result {
                    Ok(()) => acks.ok += 1,
                    Err(reason) => {
                        acks.refused += 1;
                        acks.first_refusal.get_or_insert(reason);
                    }
                }
                acks.last_at = Some(Instant::now());
            }),
            Notice::Closed(error) => {
                tally.send_modify(|acks| acks.closed = Some(error));
                return;
            }
            _ => {}
        }
    }
}

/// Every `every`, one stderr line: sent and acked so far and the acked rate since the last
/// line, so a long run shows it is moving (or stuck waiting for PUBACKs).
async fn report_progress(every: Duration, sent: Arc<AtomicU64>, tally: watch::Receiver<Acks>) {
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(start + every, every);
    let mut last_acked = 0;
    loop {
        tick.tick().await;
        let acked = tally.borrow().ok;
        eprintln!(
            "progress {:.0} s: sent {}, acked {}, {:.1} msg/s acked",
            start.elapsed().as_secs_f64(),
            sent.load(Ordering::Relaxed),
            acked,
            (acked - last_acked) as f64 / every.as_secs_f64()
        );
        last_acked = acked;
    }
}

/// What a run achieved.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Publishes handed to the client.
    pub published: u64,
    /// Publishes the broker acked with success.
    pub acked: u64,
    /// Devices that sent at least one message.
    pub devices: usize,
    /// From the first publish to the last PUBACK (or to giving up).
    pub secs: f64,
}

impl Report {
    /// Messages per second over the run.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.published as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Whether every publish was acked.
    pub fn complete(&self) -> bool {
        self.acked == self.published
    }

    /// The human summary line.
    pub fn summary(&self) -> String {
        format!(
            "published {} messages to {} devices in {:.3} s: {:.1} msg/s (acked {})",
            self.published,
            self.devices,
            self.secs,
            self.rate(),
            self.acked
        )
    }

    /// The machine-readable line.
    pub fn json(&self) -> String {
        // A struct rather than `json!` keeps the keys in the documented order.
        #[derive(Serialize)]
        struct Line {
            published: u64,
            acked: u64,
            secs: f64,
            rate: f64,
        }
        let line = Line {
            published: self.published,
            acked: self.acked,
            secs: round_to(self.secs, 3),
            rate: round_to(self.rate(), 1),
        };
        serde_json::to_string(&line).expect("plain numbers always serialise")
    }
}

/// Runs the load and prints the summary; returns whether every publish was acked.
pub async fn run(endpoint: &Endpoint, topic_root: &str, args: &LoadArgs) -> Result<bool> {
    let topics: Vec<String> = (0..args.devices)
        .map(|i| events_topic(topic_root, &device_id(i)))
        .collect();
    let mut link = mqtt::connect(endpoint, Role::Publisher);
    link.wait_connected().await?;
    let client = link.client;
    let (tally_tx, mut tally) = watch::channel(Acks::default());
    let counter = tokio::spawn(count_acks(link.notices, tally_tx));

    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let progress = args
        .progress_every
        .map(|every| tokio::spawn(report_progress(every, sent.clone(), tally.clone())));
    let mut bucket = (args.rate > 0.0).then(|| TokenBucket::new(args.rate, started));
    let plan = Plan::new(
        args.devices,
        args.count,
        EventSource::new(args.mix, args.seed),
    );
    let mut published = 0u64;
    for planned in plan {
        if let Some(bucket) = &mut bucket {
            let wait = bucket.take(Instant::now());
            if !wait.is_zero() {
                sleep(wait).await;
            }
        }
        let bytes = payload::encode(&planned.event, Utc::now(), planned.seq, args.pad_bytes)?;
        if let Err(error) = client.publish(topics[planned.device].clone(), bytes).await {
            // The event loop has ended; its reason is in the tally and reported below.
            eprintln!("publishing stopped after {published} messages: {error:#}");
            break;
        }
        published += 1;
        sent.store(published, Ordering::Relaxed);
    }

    // Whether it settles or times out, the tally at that moment is the answer.
    let _ = timeout(
        args.ack_timeout,
        tally.wait_for(|acks| acks.settled(published)),
    )
    .await;
    if let Some(progress) = progress {
        progress.abort();
    }
    let acks = tally.borrow().clone();
    let all_acked = acks.ok + acks.refused >= published;
    let finished = match acks.last_at {
        Some(last) if all_acked => last,
        _ => Instant::now(),
    };
    let report = Report {
        published,
        acked: acks.ok,
        devices: args
            .devices
            .min(usize::try_from(published).unwrap_or(usize::MAX)),
        secs: (finished - started).as_secs_f64(),
    };

    if let Some(reason) = &acks.first_refusal {
        eprintln!("broker refused {} publishes, first: {reason}", acks.refused);
    }
    match &acks.closed {
        Some(error) => eprintln!(
            "connection lost: {}",
            error.as_deref().unwrap_or("disconnected")
        ),
        None => {
            if !all_acked {
                eprintln!(
                    "gave up waiting for {} PUBACKs after {} s",
                    published - acks.ok - acks.refused,
                    args.ack_timeout.as_secs()
                );
            }
            client.disconnect().await.context("disconnecting")?;
            let _ = timeout(HANDSHAKE_TIMEOUT, counter).await;
        }
    }

    println!("{}", report.summary());
    println!("{}", report.json());
    Ok(report.complete())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn type_name(event: &Event) -> &'static str {
        match event {
            Event::Heartbeat => "heartbeat",
            Event::Vitals(_) => "vitals",
            Event::Position { .. } => "position",
            Event::Motion { .. } => "motion",
            Event::Battery { .. } => "battery",
            Event::Door { .. } => "door",
            Event::Sos => "sos",
            Event::Smoke {
                state: SmokeState::Alarm,
            } => "smoke alarm",
            Event::Water {
                state: WaterState::Leak,
            } => "water leak",
            other => panic!("unexpected event in the mix: {other:?}"),
        }
    }

    fn shares(mix: Mix, draws: u32) -> HashMap<&'static str, f64> {
        let mut source = EventSource::new(mix, 7);
        let mut counts = HashMap::new();
        for _ in 0..draws {
            *counts
                .entry(type_name(&source.next_event()))
                .or_insert(0u32) += 1;
        }
        counts
            .into_iter()
            .map(|(k, n)| (k, f64::from(n) / f64::from(draws)))
            .collect()
    }

    #[test]
    fn mixed_is_mostly_routine_with_about_one_percent_alarms() {
        let shares = shares(Mix::Mixed, 200_000);
        let alarms: f64 = ["sos", "smoke alarm", "water leak"]
            .iter()
            .map(|k| shares.get(k).copied().unwrap_or(0.0))
            .sum();
        assert!((0.008..=0.012).contains(&alarms), "alarm share {alarms}");
        for (kind, weight) in MIXED_WEIGHTS {
            let name = type_name(&EventSource::new(Mix::Mixed, 0).build(kind));
            let expected = weight as f64 / 1000.0;
            let got = shares.get(name).copied().unwrap_or(0.0);
            assert!(
                (got - expected).abs() < 0.005,
                "{name}: expected {expected}, got {got}"
            );
        }
    }

    #[test]
    fn single_type_mixes_send_only_that_type() {
        assert_eq!(shares(Mix::Heartbeat, 1000).get("heartbeat"), Some(&1.0));
        assert_eq!(shares(Mix::Sos, 1000).get("sos"), Some(&1.0));
    }

    #[test]
    fn the_same_seed_gives_the_same_events() {
        let a: Vec<Event> = Plan::new(3, 500, EventSource::new(Mix::Mixed, 42))
            .map(|p| p.event)
            .collect();
        let b: Vec<Event> = Plan::new(3, 500, EventSource::new(Mix::Mixed, 42))
            .map(|p| p.event)
            .collect();
        let c: Vec<Event> = Plan::new(3, 500, EventSource::new(Mix::Mixed, 43))
            .map(|p| p.event)
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn mixed_events_are_within_contract_ranges() {
        let mut source = EventSource::new(Mix::Mixed, 1);
        for _ in 0..20_000 {
            let bytes = payload::encode(&source.next_event(), Utc::now(), 1, 0).unwrap();
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let num = |k: &str| value.get(k).and_then(serde_json::Value::as_f64);
            if let Some(percent) = num("percent") {
                assert!((0.0..=100.0).contains(&percent));
            }
            if let Some(spo2) = num("spo2") {
                assert!((0.0..=100.0).contains(&spo2));
            }
            if let Some(t) = num("temperature") {
                assert!((25.0..=45.0).contains(&t));
            }
            if let (Some(lat), Some(lon)) = (num("lat"), num("lon")) {
                assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon));
            }
        }
    }

    #[test]
    fn plan_goes_round_robin_and_seq_increases_per_device() {
        let plan: Vec<Planned> = Plan::new(3, 10, EventSource::new(Mix::Heartbeat, 0)).collect();
        assert_eq!(plan.len(), 10);
        let devices: Vec<usize> = plan.iter().map(|p| p.device).collect();
        assert_eq!(devices, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
        for device in 0..3 {
            let seqs: Vec<u64> = plan
                .iter()
                .filter(|p| p.device == device)
                .map(|p| p.seq)
                .collect();
            let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, expected, "device {device}");
        }
    }

    #[test]
    fn more_devices_than_messages_gives_each_at_most_one() {
        let plan: Vec<Planned> = Plan::new(100, 5, EventSource::new(Mix::Heartbeat, 0)).collect();
        assert!(plan.iter().all(|p| p.seq == 1));
        assert_eq!(plan.last().unwrap().device, 4);
    }

    #[test]
    fn device_ids_are_zero_padded_and_valid() {
        assert_eq!(device_id(0), "sim-00000");
        assert_eq!(device_id(999), "sim-00999");
        assert!(payload::valid_device_id(&device_id(123_456)));
    }

    #[test]
    fn bucket_paces_an_eager_sender_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100.0, start);
        let mut now = start;
        for _ in 0..101 {
            now += bucket.take(now);
        }
        let secs = (now - start).as_secs_f64();
        assert!(
            (secs - 1.0).abs() < 1e-6,
            "101 sends at 100/s took {secs} s"
        );
    }

    #[test]
    fn bucket_allows_only_a_short_burst_after_idling() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000.0, start);
        let later = start + Duration::from_secs(10);
        let immediate = (0..1000)
            .take_while(|_| bucket.take(later).is_zero())
            .count();
        assert_eq!(immediate, 50);
    }

    #[test]
    fn summary_lines_have_the_documented_shape() {
        let report = Report {
            published: 50_000,
            acked: 50_000,
            devices: 1000,
            secs: 12.345,
        };
        assert_eq!(
            report.summary(),
            "published 50000 messages to 1000 devices in 12.345 s: 4050.2 msg/s (acked 50000)"
        );
        assert_eq!(
            report.json(),
            r#"{"published":50000,"acked":50000,"secs":12.345,"rate":4050.2}"#
        );
        assert!(report.complete());
    }
}
