//! Soak: many devices of one family holding connections open and sending keep-alives, with
//! every ack, missing ack and disconnect counted.
//!
//! One tokio task per connection, a 512-byte read buffer and a small queue of unacked
//! keep-alives each, so that 10 000 connections fit in a few tens of MiB next to the engine.
//! Connections are opened at `ramp_per_sec` (no SYN storm) and each one's first keep-alive is
//! placed at a random point of its first interval, so they do not all fire together.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::{Device, Expect, Family, Match};
use crate::load::Prng;

/// Settings of a soak run.
#[derive(Debug, Clone)]
pub struct SoakArgs {
    /// Device family.
    pub family: Family,
    /// Engine listener.
    pub addr: SocketAddr,
    /// Connections (devices) to hold open.
    pub connections: u32,
    /// Keep-alive period of each connection.
    pub interval: Duration,
    /// Keep-alives are sent until this long after the start.
    pub duration: Duration,
    /// New connections per second while ramping up.
    pub ramp_per_sec: u32,
    /// Index of the first device id ([`Family::soak_device_id`]), so that parallel runs can
    /// use distinct devices.
    pub id_start: u64,
    /// An ack not received within this time is missing.
    pub ack_timeout: Duration,
}

/// Upper bounds of the ack-latency buckets, in milliseconds; one more bucket holds the rest.
const LATENCY_BOUNDS_MS: [u64; 14] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000,
];

/// A lock-free ack-latency histogram.
#[derive(Debug, Default)]
struct Latency {
    buckets: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    max_us: AtomicU64,
}

impl Latency {
    fn record(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        let i = LATENCY_BOUNDS_MS
            .iter()
            .position(|&b| ms < b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.max_us.fetch_max(d.as_micros() as u64, Relaxed);
    }

    /// The bucket bound below which `q` of the samples fall (`None` without samples, or
    /// when they are in the open-ended bucket).
    fn quantile_ms(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return LATENCY_BOUNDS_MS.get(i).copied();
            }
        }
        None
    }
}

/// Run-wide tallies, shared by every connection task.
#[derive(Debug, Default)]
struct Counters {
    open: AtomicU64,
    peak_open: AtomicU64,
    logins: AtomicU64,
    login_failures: AtomicU64,
    keepalives_sent: AtomicU64,
    acks: AtomicU64,
    missing: AtomicU64,
    disconnects: AtomicU64,
    connect_errors: AtomicU64,
    refused: AtomicU64,
    bad_frames: AtomicU64,
    latency: Latency,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard<'a>(&'a Counters);

impl<'a> OpenGuard<'a> {
    fn new(c: &'a Counters) -> Self {
        let now = c.open.fetch_add(1, Relaxed) + 1;
        c.peak_open.fetch_max(now, Relaxed);
        OpenGuard(c)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// Raises the soft open-files limit to the hard limit; returns `(before, after, hard)`.
pub fn raise_fd_limit() -> std::io::Result<(u64, u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok((wide(before), wide(lim.rlim_cur), wide(lim.rlim_max)))
}

/// `rlim_t` as u64 on every platform (it is u64 on Linux, i64 or u32 elsewhere).
fn wide<T: TryInto<u64>>(v: T) -> u64 {
    v.try_into().unwrap_or(u64::MAX)
}

/// A `kB` field (`VmRSS`, `VmHWM`) of `/proc/self/status`, in KiB.
pub fn own_memory_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        line.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// How one connection ended.
enum LinkEnd {
    /// The run is over.
    Finished,
    /// The engine closed it or a read/write failed (counted as a disconnect).
    Dropped,
    /// A login step was not acked in time or was refused.
    LoginFailed,
}

/// A keep-alive waiting for its ack.
struct Pending {
    sent: Instant,
    expect: Expect,
}

/// Plays one device until `end`, reconnecting after a disconnect as a real device would.
async fn device_task(index: u64, args: Arc<SoakArgs>, c: Arc<Counters>, end: Instant) {
    let mut dev = Device::new(
        args.family,
        args.family.soak_device_id(args.id_start + index),
    );
    let mut prng = Prng::new(0x5EED_0000 ^ index);
    while Instant::now() < end {
        let stream = match timeout(args.ack_timeout, TcpStream::connect(args.addr)).await {
            Ok(Ok(stream)) => stream,
            _ => {
                Counters::add(&c.connect_errors, 1);
                sleep(Duration::from_millis(1000 + prng.below(2000))).await;
                continue;
            }
        };
        stream.set_nodelay(true).ok();
        match run_link(&mut dev, stream, &args, &c, &mut prng, end).await {
            LinkEnd::Finished => return,
            LinkEnd::Dropped | LinkEnd::LoginFailed => {
                sleep(Duration::from_millis(1000 + prng.below(2000))).await;
            }
        }
    }
}

/// Logs in on `stream`, then sends keep-alives every interval until `end` and waits for the
/// last acks (at most the ack timeout).
async fn run_link(
    dev: &mut Device,
    mut stream: TcpStream,
    args: &SoakArgs,
    c: &Counters,
    prng: &mut Prng,
    end: Instant,
) -> LinkEnd {
    let family = dev.family();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 512];

    // Login: each step waits for its ack (jt808: register, then authenticate).
    let mut step = dev.login();
    loop {
        if stream.write_all(&step.bytes).await.is_err() {
            Counters::add(&c.disconnects, 1);
            Counters::add(&c.login_failures, 1);
            return LinkEnd::Dropped;
        }
        let expect = step.expect.expect("login steps are acked");
        let deadline = Instant::now() + args.ack_timeout;
        let reply = 'wait: loop {
            while let Some(frame) = family.split(&mut buf) {
                let reply = family.parse(&frame);
                match expect.check(&reply, dev.id()) {
                    Match::Acked => break 'wait Some(reply),
                    Match::Refused(_) => {
                        Counters::add(&c.refused, 1);
                        Counters::add(&c.login_failures, 1);
                        return LinkEnd::LoginFailed;
                    }
                    Match::No if reply.problem().is_some() => Counters::add(&c.bad_frames, 1),
                    Match::No => {}
                }
            }
            tokio::select! {
                read = stream.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => {
                        Counters::add(&c.disconnects, 1);
                        Counters::add(&c.login_failures, 1);
                        return LinkEnd::Dropped;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
                _ = sleep_until(deadline) => break 'wait None,
            }
        };
        let Some(reply) = reply else {
            Counters::add(&c.missing, 1);
            Counters::add(&c.login_failures, 1);
            return LinkEnd::LoginFailed;
        };
        match dev.after_ack(&step, &reply) {
            Some(next) => step = next,
            None => break,
        }
    }
    Counters::add(&c.logins, 1);
    let _open = OpenGuard::new(c);

    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut next_keepalive = Instant::now() + args.interval.mul_f64(prng.unit());
    let grace_end = end + args.ack_timeout;
    loop {
        while let Some(frame) = family.split(&mut buf) {
            let reply = family.parse(&frame);
            let found = pending.iter().enumerate().find_map(|(i, p)| {
                match p.expect.check(&reply, dev.id()) {
                    Match::No => None,
                    m => Some((i, m)),
                }
            });
            match found {
                Some((i, m)) => {
                    let p = pending.remove(i).expect("index from the queue");
                    if m == Match::Acked {
                        Counters::add(&c.acks, 1);
                        c.latency.record(p.sent.elapsed());
                    } else {
                        Counters::add(&c.refused, 1);
                    }
                }
                None if reply.problem().is_some() => Counters::add(&c.bad_frames, 1),
                None => {}
            }
        }
        let now = Instant::now();
        while pending
            .front()
            .is_some_and(|p| now >= p.sent + args.ack_timeout)
        {
            pending.pop_front();
            Counters::add(&c.missing, 1);
        }
        if now >= grace_end || (now >= end && pending.is_empty()) {
            return LinkEnd::Finished;
        }
        if now < end && now >= next_keepalive {
            let out = dev.keepalive();
            if stream.write_all(&out.bytes).await.is_err() {
                Counters::add(&c.disconnects, 1);
                Counters::add(&c.missing, pending.len() as u64);
                return LinkEnd::Dropped;
            }
            Counters::add(&c.keepalives_sent, 1);
            pending.push_back(Pending {
                sent: now,
                expect: out.expect.expect("keep-alives are acked"),
            });
            next_keepalive += args.interval;
            if next_keepalive <= now {
                next_keepalive = now + args.interval;
            }
            continue;
        }
        let mut wake = pending
            .front()
            .map_or(grace_end, |p| p.sent + args.ack_timeout);
        if now < end {
            wake = wake.min(next_keepalive).min(end);
        }
        tokio::select! {
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => {
                    Counters::add(&c.disconnects, 1);
                    Counters::add(&c.missing, pending.len() as u64);
                    return LinkEnd::Dropped;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
            _ = sleep_until(wake) => {}
        }
    }
}

/// Prints a progress line to stderr every 10 s, and once when every connection is up.
async fn progress(c: Arc<Counters>, started: Instant, connections: u64) {
    let mut all_up = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut secs = 0u64;
    loop {
        tick.tick().await;
        let open = c.open.load(Relaxed);
        let rss = own_memory_kib("VmRSS").unwrap_or(0);
        if !all_up && open >= connections {
            all_up = true;
            eprintln!(
                "soak: all {connections} connections logged in after {:.1} s (simulator RSS {} KiB)",
                started.elapsed().as_secs_f64(),
                rss
            );
        }
        if secs.is_multiple_of(10) && secs > 0 {
            eprintln!(
                "soak: t={secs}s open={open} keepalives_sent={} acks={} missing={} disconnects={} connect_errors={} rss={rss}KiB",
                c.keepalives_sent.load(Relaxed),
                c.acks.load(Relaxed),
                c.missing.load(Relaxed),
                c.disconnects.load(Relaxed),
                c.connect_errors.load(Relaxed),
            );
        }
        secs += 1;
    }
}

/// Runs the soak and prints the summary and JSON lines (see [`SoakReport::passed`]).
pub async fn run(args: SoakArgs) -> Result<SoakReport> {
    let fd_limit = match raise_fd_limit() {
        Ok((before, after, hard)) => {
            println!("soak: open-files limit {before} -> {after} (hard {hard})");
            after
        }
        Err(e) => {
            println!("soak: could not raise the open-files limit: {e}");
            0
        }
    };
    if fd_limit != 0 && fd_limit < u64::from(args.connections) + 32 {
        println!(
            "soak: warning: {} connections need more than the {fd_limit} open files allowed",
            args.connections
        );
    }
    println!(
        "soak: {} {} connections to {}, keep-alive every {:?} for {:?}, ramp {}/s",
        args.connections,
        args.family.name(),
        args.addr,
        args.interval,
        args.duration,
        args.ramp_per_sec
    );
    let args = Arc::new(args);
    let c = Arc::new(Counters::default());
    let started = Instant::now();
    let end = started + args.duration;
    let reporter = tokio::spawn(progress(c.clone(), started, u64::from(args.connections)));

    let mut tasks = JoinSet::new();
    let step = Duration::from_secs_f64(1.0 / f64::from(args.ramp_per_sec.max(1)));
    for i in 0..args.connections {
        let at = started + step * i;
        if at >= end {
            println!("soak: ramp ran past the duration; opened {i} connections");
            break;
        }
        sleep_until(at).await;
        tasks.spawn(device_task(u64::from(i), args.clone(), c.clone(), end));
    }
    while tasks.join_next().await.is_some() {}
    reporter.abort();
    let elapsed = started.elapsed().as_secs_f64();

    let get = |a: &AtomicU64| a.load(Relaxed);
    let report = SoakReport {
        family: args.family,
        connections: args.connections,
        logins: get(&c.logins),
        login_failures: get(&c.login_failures),
        peak_open: get(&c.peak_open),
        keepalives_sent: get(&c.keepalives_sent),
        acks: get(&c.acks),
        missing: get(&c.missing),
        disconnects: get(&c.disconnects),
        connect_errors: get(&c.connect_errors),
        refused: get(&c.refused),
        bad_frames: get(&c.bad_frames),
        ack_p50_ms: c.latency.quantile_ms(0.5),
        ack_p99_ms: c.latency.quantile_ms(0.99),
        ack_max_ms: c.latency.max_us.load(Relaxed) as f64 / 1000.0,
        interval: args.interval,
        duration: args.duration,
        elapsed,
        fd_limit,
    };
    println!("{}", report.summary());
    println!("{}", report.json());
    Ok(report)
}

/// What a soak run counted.
#[derive(Debug, Clone, PartialEq)]
pub struct SoakReport {
    /// Device family.
    pub family: Family,
    /// Connections asked for.
    pub connections: u32,
    /// Completed logins (more than `connections` after reconnects).
    pub logins: u64,
    /// Login steps not acked in time, refused, or cut by a disconnect.
    pub login_failures: u64,
    /// Most connections logged in at once.
    pub peak_open: u64,
    /// Keep-alives sent after login.
    pub keepalives_sent: u64,
    /// Keep-alive acks received.
    pub acks: u64,
    /// Acks (login or keep-alive) not received within the ack timeout, or outstanding when
    /// the connection dropped.
    pub missing: u64,
    /// Connections the engine closed or that failed while open.
    pub disconnects: u64,
    /// Connection attempts that failed or timed out.
    pub connect_errors: u64,
    /// Replies that refused (JT/T 808 results other than success).
    pub refused: u64,
    /// Malformed replies, or replies with a bad CRC/XOR/length.
    pub bad_frames: u64,
    /// Latency bucket bound (ms) at or below which half the acks came.
    pub ack_p50_ms: Option<u64>,
    /// Latency bucket bound (ms) at or below which 99 % of the acks came.
    pub ack_p99_ms: Option<u64>,
    /// Slowest ack, ms.
    pub ack_max_ms: f64,
    /// Keep-alive period.
    pub interval: Duration,
    /// Sending period.
    pub duration: Duration,
    /// Seconds from the start to the last connection's end.
    pub elapsed: f64,
    /// Open-files limit in force (0 if unknown).
    pub fd_limit: u64,
}

impl SoakReport {
    /// Whether nothing was missing, dropped, refused or failed.
    pub fn passed(&self) -> bool {
        self.missing == 0
            && self.disconnects == 0
            && self.connect_errors == 0
            && self.login_failures == 0
            && self.refused == 0
    }

    /// The human summary line.
    pub fn summary(&self) -> String {
        format!(
            "soak: family={} connections={} keepalives_sent={} acks={} missing={} disconnects={} duration={}s",
            self.family.name(),
            self.connections,
            self.keepalives_sent,
            self.acks,
            self.missing,
            self.disconnects,
            self.duration.as_secs()
        )
    }

    /// The machine-readable line, including the simulator's own memory now.
    pub fn json(&self) -> String {
        // A struct rather than `json!` keeps the keys in this order.
        #[derive(Serialize)]
        struct AckMs {
            p50_le: Option<u64>,
            p99_le: Option<u64>,
            max: f64,
        }
        #[derive(Serialize)]
        struct Line<'a> {
            family: &'a str,
            connections: u32,
            logins: u64,
            login_failures: u64,
            peak_open: u64,
            keepalives_sent: u64,
            acks: u64,
            missing: u64,
            disconnects: u64,
            connect_errors: u64,
            refused: u64,
            bad_frames: u64,
            ack_ms: AckMs,
            interval_secs: f64,
            duration_secs: f64,
            elapsed_secs: f64,
            fd_limit: u64,
            sim_rss_kib: Option<u64>,
            sim_peak_rss_kib: Option<u64>,
            passed: bool,
        }
        let line = Line {
            family: self.family.name(),
            connections: self.connections,
            logins: self.logins,
            login_failures: self.login_failures,
            peak_open: self.peak_open,
            keepalives_sent: self.keepalives_sent,
            acks: self.acks,
            missing: self.missing,
            disconnects: self.disconnects,
            connect_errors: self.connect_errors,
            refused: self.refused,
            bad_frames: self.bad_frames,
            ack_ms: AckMs {
                p50_le: self.ack_p50_ms,
                p99_le: self.ack_p99_ms,
                max: self.ack_max_ms,
            },
            interval_secs: self.interval.as_secs_f64(),
            duration_secs: self.duration.as_secs_f64(),
            elapsed_secs: (self.elapsed * 10.0).round() / 10.0,
            fd_limit: self.fd_limit,
            sim_rss_kib: own_memory_kib("VmRSS"),
            sim_peak_rss_kib: own_memory_kib("VmHWM"),
            passed: self.passed(),
        };
        serde_json::to_string(&line).expect("plain numbers always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_use_bucket_bounds() {
        let l = Latency::default();
        assert_eq!(l.quantile_ms(0.5), None);
        for _ in 0..98 {
            l.record(Duration::from_micros(300));
        }
        l.record(Duration::from_millis(40));
        l.record(Duration::from_secs(40));
        assert_eq!(l.quantile_ms(0.5), Some(1));
        assert_eq!(l.quantile_ms(0.99), Some(50));
        assert_eq!(l.quantile_ms(1.0), None);
        assert_eq!(l.max_us.load(Relaxed), 40_000_000);
    }

    #[test]
    fn summary_and_json_lines() {
        let report = SoakReport {
            family: Family::Watch,
            connections: 10,
            logins: 10,
            login_failures: 0,
            peak_open: 10,
            keepalives_sent: 50,
            acks: 49,
            missing: 1,
            disconnects: 0,
            connect_errors: 0,
            refused: 0,
            bad_frames: 0,
            ack_p50_ms: Some(1),
            ack_p99_ms: Some(2),
            ack_max_ms: 1.5,
            interval: Duration::from_secs(5),
            duration: Duration::from_secs(30),
            elapsed: 31.04,
            fd_limit: 1024,
        };
        assert_eq!(
            report.summary(),
            "soak: family=watch connections=10 keepalives_sent=50 acks=49 missing=1 disconnects=0 duration=30s"
        );
        assert!(!report.passed());
        let v: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(v["missing"], 1);
        assert_eq!(v["elapsed_secs"], 31.0);
        assert_eq!(v["passed"], false);
        assert!(
            report
                .json()
                .starts_with("{\"family\":\"watch\",\"connections\":10,")
        );
    }

    #[test]
    fn own_memory_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(own_memory_kib("VmRSS").unwrap() > 0);
            assert!(own_memory_kib("VmNoSuchField").is_none());
        }
    }

    #[test]
    fn fd_limit_is_raised_to_the_hard_limit() {
        let (_, after, hard) = raise_fd_limit().unwrap();
        assert_eq!(after, hard);
    }
}
