//! The limits of the 4G TCP edge through the real binary: a flood of silent connections
//! against a low open-files limit does not take the engine offline, the login deadline and
//! the junk bound close connections, and the per-address limit refuses at once — each counted.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Instant;

use common::{DEADLINE, Engine, EngineOpts, free_port, poll, raise_open_files};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// CRC-16/X-25 of the GT06 family (PROTOCOLS.md §3).
const X25: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_SDLC);

/// A short-header GT06 packet: `78 78 LEN PROTO content SERIAL CRC 0D 0A`.
fn gt06(proto: u8, content: &[u8], serial: u16) -> Vec<u8> {
    let mut p = vec![0x78, 0x78, (1 + content.len() + 4) as u8, proto];
    p.extend_from_slice(content);
    p.extend_from_slice(&serial.to_be_bytes());
    let crc = X25.checksum(&p[2..]);
    p.extend_from_slice(&crc.to_be_bytes());
    p.extend_from_slice(&[0x0D, 0x0A]);
    p
}

/// The short echo the server acks a GT06 packet with.
fn gt06_echo(proto: u8, serial: u16) -> Vec<u8> {
    gt06(proto, &[], serial)
}

/// A config file with the shipped rules and `tcp` as the `[tcp]` section.
fn config(dir: &tempfile::TempDir, tcp: &str) -> PathBuf {
    let path = dir.path().join("anxin.toml");
    std::fs::write(
        &path,
        format!(
            "rules_file = \"{}/config/rules.toml\"\n[tcp]\n{tcp}\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    path
}

/// An engine with only `family` listening, on a free port.
async fn engine(family: &str, config: Option<PathBuf>, open_files: Option<u64>) -> (Engine, u16) {
    let port = free_port();
    let listen = common::only_listener(family, port);
    let e = Engine::start(EngineOpts {
        env: vec![("ANXIN_TCP_LISTEN".into(), listen)],
        config,
        open_files_limit: open_files,
        ..Default::default()
    })
    .await;
    (e, port)
}

/// Connects from `from` (any address of 127.0.0.0/8 is local on Linux).
async fn connect_from(from: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    s.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
}

async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .expect("reply in time")
        .expect("reply");
    buf
}

/// Waits until the server closes `s` (end of stream or reset), failing after [`DEADLINE`].
async fn closed_by_server(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let start = Instant::now();
    loop {
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server did not close the connection"),
        }
        assert!(start.elapsed() < DEADLINE, "the server kept the connection");
    }
}

/// The acceptance test of the flood: 3 000 silent connections from 30 addresses against an
/// engine limited to 1 024 open files. The engine keeps its descriptors for the API and the
/// store (device connections are capped at 1 024 − the reserve), evicts the oldest silent
/// connections to admit new ones, and a real GT06 device from 127.0.0.1 logs in during the
/// flood, stays connected while the flood goes on, and has its heartbeats and its SOS
/// answered; `/readyz` and `/api/alerts` answer 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_does_not_take_the_engine_offline() {
    const LIMIT: u64 = 1024;
    const FLOOD: usize = 3000;
    const ADDRESSES: usize = 30;
    let have = raise_open_files();
    assert!(
        have >= FLOOD as u64 + 200,
        "the test needs {} open files, the hard limit is {have}",
        FLOOD + 200
    );
    let (e, port) = engine("gt06", None, Some(LIMIT)).await;
    // The default store pool is 8: 64 + 128 + 32 + 3 × 8 descriptors are kept back.
    // The reserve for the default store pools: 8 pipeline + 4 API connections.
    let cap = (LIMIT as usize - anxin::ingest::tcp::admission::descriptor_reserve(8 + 4)) as f64;
    e.wait_metric("anxin_tcp_connections_cap", cap).await;
    assert!(
        e.log()
            .contains("Device connections capped by the open-files limit"),
        "the effective cap is logged at start:\n{}",
        e.log()
    );

    let flood_from = |i: usize| Ipv4Addr::new(127, 0, 1, (i % ADDRESSES) as u8 + 2);
    let mut silent = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD / 2 {
        silent.push(
            connect_from(flood_from(i), port)
                .await
                .expect("flood connect"),
        );
    }
    // Every flood connection was handled: admitted, or admitted by evicting an older silent
    // one, or (while evicted ones were still closing) refused.
    let turned_away = || async {
        e.metric("anxin_tcp_connections_evicted_total{family=\"gt06\"}")
            .await
            + e.metric("anxin_tcp_connections_refused_total{family=\"gt06\"")
                .await
    };
    poll("the first half of the flood handled", || async {
        (turned_away().await >= (FLOOD / 2) as f64 - cap).then_some(())
    })
    .await;
    poll("the evicted connections closed", || async {
        (e.metric("anxin_tcp_connections{family=\"gt06\"}").await <= cap).then_some(())
    })
    .await;
    // The engine is full of silent connections: the device gets in by evicting the oldest.
    let mut dev = connect_from(Ipv4Addr::LOCALHOST, port).await.unwrap();
    // Login of IMEI 864717003283581, serial 9 (PROTOCOLS.md §3 worked example).
    dev.write_all(&hex::decode("78780d01086471700328358100093f040d0a").unwrap())
        .await
        .unwrap();
    assert_eq!(read_n(&mut dev, 10).await, gt06_echo(0x01, 9));

    // The second half of the flood, while the device keeps talking.
    let flood = tokio::spawn(async move {
        for i in FLOOD / 2..FLOOD {
            silent.push(
                connect_from(flood_from(i), port)
                    .await
                    .expect("flood connect"),
            );
        }
        silent
    });
    let mut serial = 10u16;
    let mut answered = 0;
    while !flood.is_finished() || answered == 0 {
        // 0x13 status: terminal info 0x44, voltage level 6, GSM 4, no alarm, language 2.
        dev.write_all(&gt06(0x13, &[0x44, 0x06, 0x04, 0x00, 0x02], serial))
            .await
            .unwrap();
        assert_eq!(read_n(&mut dev, 10).await, gt06_echo(0x13, serial));
        serial += 1;
        answered += 1;
    }
    let silent = flood.await.unwrap();
    assert_eq!(silent.len(), FLOOD);

    // With 3 000 connections held open against the device port, the API and the store work.
    let r = reqwest::get(format!("http://{}/readyz", e.http))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _) = e.get("/api/alerts").await;
    assert_eq!(status, 200);
    // An SOS alarm packet (alarm byte 0x01) is stored before its ack.
    dev.write_all(
        &hex::decode(
            "787825161a0305080e3ac9026b2a2c0c3cb19c03145a0901cc00266a001e17040504010200211ef20d0a",
        )
        .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(read_n(&mut dev, 10).await, gt06_echo(0x16, 0x21));
    assert_eq!(
        e.alerts("device_id=864717003283581&kind=sos").await.len(),
        1,
        "the SOS is stored when its ack arrives"
    );
    // Never out of descriptors: no accept failed, no identified connection was evicted.
    assert_eq!(e.metric("anxin_tcp_accept_errors_total").await, 0.0);
    let evicted = e
        .metric("anxin_tcp_connections_evicted_total{family=\"gt06\"}")
        .await;
    assert!(
        evicted >= (FLOOD / 2) as f64 - cap,
        "silent connections make room for new ones: {evicted} evicted"
    );
    let held = e.metric("anxin_tcp_connections{family=\"gt06\"}").await;
    assert!(held <= cap + 32.0, "{held} connections held, cap {cap}");
    eprintln!(
        "flood of {FLOOD}: cap {cap}, {evicted} evicted, {} refused, {held} held, {answered} status frames answered during the second half",
        e.metric("anxin_tcp_connections_refused_total").await + 0.0
    );
    drop(silent);
}

#[tokio::test]
async fn a_connection_that_identifies_no_device_in_time_is_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (e, port) = engine("watch", Some(config(&dir, "login_timeout_secs = 1")), None).await;
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut watch = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let lk = b"[3G*1000000001*0002*LK]";
    watch.write_all(lk).await.unwrap();
    assert_eq!(read_n(&mut watch, lk.len()).await, lk);
    closed_by_server(&mut silent).await;
    e.wait_metric("anxin_tcp_login_timeouts_total{family=\"watch\"}", 1.0)
        .await;
    // The deadline has passed for both; the identified watch is still answered.
    watch.write_all(lk).await.unwrap();
    assert_eq!(read_n(&mut watch, lk.len()).await, lk);
    assert_eq!(
        e.metric("anxin_tcp_login_timeouts_total{family=\"watch\"}")
            .await,
        1.0
    );
    assert!(
        e.log()
            .contains("no device identified within the login deadline"),
        "a warning names the peer and family:\n{}",
        e.log()
    );
}

#[tokio::test]
async fn junk_without_a_usable_frame_closes_the_connection_after_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (e, port) = engine(
        "watch",
        Some(config(
            &dir,
            "max_junk_bytes = 1024\nlogin_timeout_secs = 600\nmax_frames_per_sec = 1000",
        )),
        None,
    )
    .await;
    // Junk only: closed once more than 1 024 bytes were skipped.
    let mut junk = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    junk.write_all(&[b'x'; 1100]).await.unwrap();
    closed_by_server(&mut junk).await;
    e.wait_metric("anxin_tcp_junk_closed_total{family=\"watch\"}", 1.0)
        .await;

    // Frames that cannot be valid count as junk too: a length field of FFFFFFFF.
    let mut bad = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let frame = b"[3G*1000000002*FFFFFFFF*LK,0,10,95]";
    bad.write_all(&frame.repeat(1024 / frame.len() + 1))
        .await
        .unwrap();
    closed_by_server(&mut bad).await;
    e.wait_metric("anxin_tcp_junk_closed_total{family=\"watch\"}", 2.0)
        .await;
    assert!(
        e.metric("anxin_tcp_decode_errors_total{family=\"watch\",reason=\"bad_length\"}")
            .await
            >= 1.0
    );

    // Junk under the bound between usable frames is survived: the count starts again at
    // every usable frame, so 2 × 800 bytes of junk do not close the connection.
    let mut noisy = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let lk = b"[3G*1000000003*0002*LK]";
    for _ in 0..2 {
        noisy.write_all(&[b'x'; 800]).await.unwrap();
        noisy.write_all(lk).await.unwrap();
        assert_eq!(read_n(&mut noisy, lk.len()).await, lk);
    }
    assert_eq!(
        e.metric("anxin_tcp_junk_closed_total{family=\"watch\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn the_per_address_limit_refuses_at_once_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (e, port) = engine(
        "watch",
        Some(config(&dir, "max_connections_per_address = 2")),
        None,
    )
    .await;
    let from = Ipv4Addr::new(127, 0, 2, 5);
    let mut held = Vec::new();
    for id in ["1000000011", "1000000012"] {
        let mut s = connect_from(from, port).await.unwrap();
        let lk = format!("[3G*{id}*0002*LK]");
        s.write_all(lk.as_bytes()).await.unwrap();
        assert_eq!(read_n(&mut s, lk.len()).await, lk.as_bytes());
        held.push(s);
    }
    let mut third = connect_from(from, port).await.unwrap();
    closed_by_server(&mut third).await;
    e.wait_metric(
        "anxin_tcp_connections_refused_total{family=\"watch\",reason=\"per_address\"}",
        1.0,
    )
    .await;
    // Another address is not affected, and the two held connections are still answered.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 2, 6), port)
        .await
        .unwrap();
    let lk = b"[3G*1000000013*0002*LK]";
    other.write_all(lk).await.unwrap();
    assert_eq!(read_n(&mut other, lk.len()).await, lk);
    for s in &mut held {
        s.write_all(b"[3G*1000000011*0002*LK]").await.unwrap();
        read_n(s, lk.len()).await;
    }
}
