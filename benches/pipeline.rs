//! Criterion benches for the hot path: decoding canonical payloads, evaluating the shipped
//! rules, group-committing batches to SQLite (the embedded default), the 4G families'
//! decoders, the vendor-profile mapper and the TCP connection admission. Run:
//! `cargo bench --bench pipeline`. The end-to-end load figures come from `benches/load.sh`.

use std::hint::black_box;
use std::path::Path;

use anxin::protocol::canonical;
use anxin::rules::RuleSet;
use anxin::store::{Store, WriteBatch, WriteItem};
use chrono::{DateTime, Duration, Utc};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const PAYLOADS: [&str; 6] = [
    r#"{"type":"heartbeat","seq":1,"ts":"2026-11-23T10:00:00Z"}"#,
    r#"{"type":"vitals","heart_rate":72,"spo2":97,"temperature":36.6,"seq":2,"ts":"2026-11-23T10:00:01Z"}"#,
    r#"{"type":"position","lat":31.23,"lon":121.47,"accuracy_m":15,"source":"gps","seq":3,"ts":"2026-11-23T10:00:02Z"}"#,
    r#"{"type":"battery","percent":81,"seq":4,"ts":"2026-11-23T10:00:03Z"}"#,
    r#"{"type":"door","state":"open","seq":5,"ts":"2026-11-23T10:00:04Z"}"#,
    r#"{"type":"sos","seq":6,"ts":"2026-11-23T10:00:05Z"}"#,
];

fn at() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).unwrap()
}

fn rules() -> RuleSet {
    RuleSet::parse(
        Path::new("config/rules.toml"),
        include_str!("../config/rules.toml"),
    )
    .unwrap()
}

fn decode_and_rules(c: &mut Criterion) {
    let rules = rules();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(PAYLOADS.len() as u64));
    g.bench_function("canonical_6_payloads", |b| {
        b.iter(|| {
            for p in PAYLOADS {
                black_box(canonical::decode(
                    "anxin/v1",
                    "anxin/v1/devices/dev-000123/events",
                    p.as_bytes(),
                    at(),
                ));
            }
        })
    });
    g.bench_function("canonical_plus_rules_6_payloads", |b| {
        b.iter(|| {
            for p in PAYLOADS {
                let d = canonical::decode(
                    "anxin/v1",
                    "anxin/v1/devices/dev-000123/events",
                    p.as_bytes(),
                    at(),
                );
                for e in d.items.iter().flatten() {
                    black_box(rules.matching(e).count());
                }
            }
        })
    });
    g.finish();
}

fn batch(rules: &RuleSet, n: usize, round: usize) -> WriteBatch {
    let items = (0..n)
        .map(|i| {
            // Routine traffic: vitals within range, so no alert work; realistic for the bulk.
            let p = format!(
                r#"{{"type":"vitals","heart_rate":{},"seq":{},"ts":"2026-11-23T10:00:00Z"}}"#,
                60 + i % 40,
                round * n + i
            );
            let topic = format!("anxin/v1/devices/dev-{:05}/events", i % 1000);
            let event = canonical::decode("anxin/v1", &topic, p.as_bytes(), at())
                .items
                .remove(0)
                .unwrap();
            let hits = rules.hits(&event);
            WriteItem::Event {
                event,
                hits,
                clears: Vec::new(),
            }
        })
        .collect();
    WriteBatch {
        items,
        dedup_window: Duration::hours(24),
        redelivery_window: Duration::seconds(60),
        token: format!("bench-{n}-{round}"),
        retry: false,
        deadlines: Vec::new(),
        suppressed: Vec::new(),
        activity: Vec::new(),
    }
}

fn commit(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rt
        .block_on(Store::connect(
            &format!("sqlite://{}/bench.db", dir.path().display()),
            1,
        ))
        .unwrap();
    let rules = rules();
    let mut g = c.benchmark_group("commit_sqlite");
    g.sample_size(20);
    for n in [1usize, 100, 1000] {
        g.throughput(Throughput::Elements(n as u64));
        let mut round = 0;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_batched(
                || {
                    round += 1;
                    batch(&rules, n, round)
                },
                |wb| rt.block_on(store.commit_batch(&wb, at())).unwrap(),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Frames per second per 4G family: every decode frame of Traccar's test file for the family,
/// framed and decoded with a fresh session each round (as a new connection would).
fn tcp_families(c: &mut Criterion) {
    use anxin::protocol::tcp::{Ctx, Protocol, RawFrame, Session};
    let ctx = Ctx {
        received_at: at(),
        peer: "bench".into(),
    };
    let mut g = c.benchmark_group("tcp_decode");
    for proto in Protocol::ALL {
        let path = format!(
            "{}/protocols/conformance/traccar/{}.json",
            env!("CARGO_MANIFEST_DIR"),
            proto.name()
        );
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("skipping {}: {path} not found", proto.name());
            continue;
        };
        let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        let frames: Vec<Vec<u8>> = entries
            .iter()
            .filter(|e| e["kind"] == "decode")
            .map(|e| {
                let f = e["frame"].as_str().unwrap();
                if e["encoding"] == "hex" {
                    hex::decode(f).unwrap()
                } else {
                    f.as_bytes().to_vec()
                }
            })
            .collect();
        g.throughput(Throughput::Elements(frames.len() as u64));
        g.bench_function(proto.name(), |b| {
            b.iter(|| {
                let mut session = Session {
                    device_id: Some("123456789012345".into()),
                    ..Default::default()
                };
                for f in &frames {
                    black_box(proto.decode(f, &mut session, &ctx));
                }
            })
        });
        // The framer alone, over the same frames as one stream.
        let stream: Vec<u8> = frames.concat();
        g.throughput(Throughput::Bytes(stream.len() as u64));
        g.bench_function(format!("{}_framer", proto.name()), |b| {
            b.iter(|| {
                let mut f = proto.framer();
                let mut buf = bytes::BytesMut::from(&stream[..]);
                let mut n = 0;
                while let Some(r) = f.next_frame(&mut buf) {
                    if let RawFrame::Frame(_) = r {
                        n += 1;
                    }
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

/// Payloads per second per shipped vendor profile: the payloads of the profile's vectors that
/// map without a rejection (ordinary traffic), topic routing included.
fn profiles(c: &mut Criterion) {
    let set = anxin::config::profiles::load_dir(Path::new("protocols"), "anxin/v1")
        .expect("shipped profiles load");
    let mut g = c.benchmark_group("profile_decode");
    for profile in &set.profiles {
        let dir = Path::new("protocols").join(&profile.name).join("vectors");
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap())
                    .unwrap();
            if v["rejections"].as_array().is_some_and(|r| r.is_empty()) {
                cases.push((
                    v["topic"].as_str().unwrap().to_owned(),
                    v["payload"].to_string().into_bytes(),
                ));
            }
        }
        cases.sort();
        g.throughput(Throughput::Elements(cases.len() as u64));
        g.bench_function(format!("{}_{}_payloads", profile.name, cases.len()), |b| {
            b.iter(|| {
                for (topic, payload) in &cases {
                    let (p, device) = set.route(topic).expect("routed");
                    black_box(p.decode(topic, device, payload, at()));
                }
            })
        });
    }
    g.finish();
}

/// The admission of one device connection (`ingest::tcp::admission::Gate`): admit and close
/// with room to spare, and admit at a full gate, which evicts the oldest unidentified
/// connection. Baseline in the same run: the semaphore permit the accept loop took before.
fn tcp_admission(c: &mut Criterion) {
    use anxin::ingest::tcp::admission::{Caps, Gate};
    use anxin::protocol::tcp::Protocol;
    use std::net::{IpAddr, Ipv4Addr};
    use tokio_util::sync::CancellationToken;
    let ip = |n: u64| IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + (n % 4096) as u32));
    let mut g = c.benchmark_group("tcp_admission");
    g.throughput(Throughput::Elements(1));
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(20_000));
    g.bench_function("baseline_semaphore_permit", |b| {
        b.iter(|| black_box(permits.clone().try_acquire_owned().ok()))
    });
    let caps = Caps {
        per_listener: 20_000,
        total: 20_000,
        per_address: 1000,
    };
    let gate = Gate::new(caps);
    // 10 000 connections already held, as on a busy box.
    let held: Vec<_> = (0..10_000)
        .map(|id| {
            let (t, _) = gate
                .admit(Protocol::Watch, ip(id), id, CancellationToken::new())
                .unwrap();
            t.identified();
            t
        })
        .collect();
    let mut id = 1_000_000;
    g.bench_function("admit_and_close", |b| {
        b.iter(|| {
            id += 1;
            black_box(gate.admit(Protocol::Gt06, ip(id), id, CancellationToken::new()))
        })
    });
    drop(held);
    // A full gate of unidentified connections: every admission evicts the oldest (whose
    // ticket then closes, as its task would).
    let full = Gate::new(Caps {
        total: 1000,
        ..caps
    });
    let mut tickets = std::collections::VecDeque::new();
    for id in 0..1000 {
        tickets.push_back(
            full.admit(Protocol::Watch, ip(id), id, CancellationToken::new())
                .unwrap()
                .0,
        );
    }
    g.bench_function("admit_evicting_at_a_full_gate", |b| {
        b.iter(|| {
            id += 1;
            let (t, ev) = full
                .admit(Protocol::Watch, ip(id), id, CancellationToken::new())
                .unwrap();
            tickets.push_back(t);
            tickets.pop_front();
            black_box(ev)
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    decode_and_rules,
    commit,
    tcp_families,
    profiles,
    tcp_admission
);
criterion_main!(benches);
