//! The TCP scenario and soak machinery against tiny fake listeners written here by hand (not
//! with the simulator's own parsers): retransmission of unacked alarms with the same bytes,
//! strict ack checking, and the soak's counting of acks, missing acks and disconnects.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anxin_sim::tcp::Family;
use anxin_sim::tcp::scenario::{self, ScenarioArgs, TcpScenario};
use anxin_sim::tcp::soak::{self, SoakArgs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Frames a fake engine received, in order, over all connections.
type Log = Arc<Mutex<Vec<Vec<u8>>>>;

/// Runs `handle` on every accepted connection; returns the address.
async fn fake<F, Fut>(handle: F) -> String
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(handle(socket));
        }
    });
    addr
}

/// Reads `[…]` frames; acks LK always and AL only from the `al_ack_from`-th AL on.
async fn watch_conn(mut s: TcpStream, log: Log, al_ack_from: usize) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.iter().position(|&b| b == b']') {
            let frame: Vec<u8> = buf.drain(..=end).collect();
            let text = String::from_utf8(frame.clone()).unwrap();
            let fields: Vec<&str> = text[1..text.len() - 1].splitn(4, '*').collect();
            let (vendor, id, content) = (fields[0], fields[1], fields[3]);
            let word = content.split(',').next().unwrap();
            let seen_al = {
                let mut log = log.lock().unwrap();
                log.push(frame);
                log.iter()
                    .filter(|f| f.windows(4).any(|w| w == b"*AL,"))
                    .count()
            };
            let reply = match word {
                "LK" => Some(format!("[{vendor}*{id}*0002*LK]")),
                "AL" if seen_al >= al_ack_from => Some(format!("[{vendor}*{id}*0002*AL]")),
                _ => None,
            };
            if let Some(r) = reply
                && s.write_all(r.as_bytes()).await.is_err()
            {
                return;
            }
        }
    }
}

fn args(family: Family, addr: &str, device: &str, retries: u32) -> ScenarioArgs {
    ScenarioArgs {
        family,
        addr: addr.to_owned(),
        device: device.to_owned(),
        retry_every: Duration::from_millis(200),
        retries,
    }
}

#[tokio::test]
async fn unacked_sos_is_retransmitted_unchanged_until_acked() {
    let log: Log = Log::default();
    let l = log.clone();
    let addr = fake(move |s| watch_conn(s, l.clone(), 3)).await;
    let ok = scenario::run(
        TcpScenario::Sos,
        &args(Family::Watch, &addr, "8000000001", 5),
    )
    .await
    .unwrap();
    assert!(ok);
    let log = log.lock().unwrap();
    let als: Vec<&Vec<u8>> = log
        .iter()
        .filter(|f| f.windows(4).any(|w| w == b"*AL,"))
        .collect();
    assert_eq!(als.len(), 3, "acked on the third transmission");
    assert!(
        als.iter().all(|f| *f == als[0]),
        "retransmissions are byte-identical"
    );
    assert!(log[0].starts_with(b"[3G*8000000001*0009*LK,0,0,90]"));
}

#[tokio::test]
async fn sos_gives_up_after_the_retries() {
    let log: Log = Log::default();
    let l = log.clone();
    let addr = fake(move |s| watch_conn(s, l.clone(), usize::MAX)).await;
    let ok = scenario::run(
        TcpScenario::Sos,
        &args(Family::Watch, &addr, "8000000002", 2),
    )
    .await
    .unwrap();
    assert!(!ok);
    let als = log
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f.windows(4).any(|w| w == b"*AL,"))
        .count();
    assert_eq!(als, 3, "one transmission and two retransmissions");
}

/// GT06: acks the login, answers the first alarm with a corrupted CRC (which must not count)
/// and the retransmission with a correct echo.
async fn gt06_conn(mut s: TcpStream, log: Log) {
    // CRC-16/X-25 by hand, bit by bit.
    fn x25(bytes: &[u8]) -> u16 {
        let mut crc: u16 = 0xFFFF;
        for &b in bytes {
            crc ^= u16::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x8408
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut alarms = 0;
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 3 && buf.len() >= usize::from(buf[2]) + 5 {
            let total = usize::from(buf[2]) + 5;
            let p: Vec<u8> = buf.drain(..total).collect();
            assert_eq!(&p[..2], &[0x78, 0x78]);
            assert_eq!(&p[total - 2..], &[0x0D, 0x0A]);
            let crc = u16::from_be_bytes([p[total - 4], p[total - 3]]);
            assert_eq!(crc, x25(&p[2..total - 4]), "simulator sent a bad CRC");
            let (proto, serial) = (p[3], [p[total - 6], p[total - 5]]);
            log.lock().unwrap().push(p.clone());
            let mut ack = vec![0x78, 0x78, 0x05, proto, serial[0], serial[1]];
            let mut crc = x25(&ack[2..]);
            if proto == 0x16 {
                alarms += 1;
                if alarms == 1 {
                    crc ^= 1;
                }
            }
            ack.extend_from_slice(&crc.to_be_bytes());
            ack.extend_from_slice(&[0x0D, 0x0A]);
            s.write_all(&ack).await.unwrap();
        }
    }
}

#[tokio::test]
async fn gt06_ack_with_a_bad_crc_is_not_an_ack() {
    let log: Log = Log::default();
    let l = log.clone();
    let addr = fake(move |s| gt06_conn(s, l.clone())).await;
    let ok = scenario::run(
        TcpScenario::Sos,
        &args(Family::Gt06, &addr, "123456789012345", 3),
    )
    .await
    .unwrap();
    assert!(ok);
    let log = log.lock().unwrap();
    assert_eq!(log[0], anxin_sim::tcp::gt06::login("123456789012345", 1));
    let alarms: Vec<&Vec<u8>> = log.iter().filter(|p| p[3] == 0x16).collect();
    assert_eq!(alarms.len(), 2);
    assert_eq!(alarms[0], alarms[1]);
    assert_eq!(
        &alarms[0][alarms[0].len() - 6..alarms[0].len() - 4],
        &[0, 2]
    );
}

#[tokio::test]
async fn sos_survives_a_dropped_connection() {
    // The first connection is closed as soon as the alarm arrives; the device must reconnect,
    // log in again and retransmit.
    let conns = Arc::new(Mutex::new(0));
    let log: Log = Log::default();
    let (c, l) = (conns.clone(), log.clone());
    let addr = fake(move |mut s: TcpStream| {
        let (c, l) = (c.clone(), l.clone());
        async move {
            let n = {
                let mut c = c.lock().unwrap();
                *c += 1;
                *c
            };
            if n == 1 {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                let mut lk_acked = false;
                while let Ok(k) = s.read(&mut buf).await {
                    if k == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..k]);
                    if !lk_acked && seen.windows(4).any(|w| w == b"*LK,") {
                        lk_acked = true;
                        let _ = s.write_all(b"[3G*8000000003*0002*LK]").await;
                    }
                    if seen.windows(4).any(|w| w == b"*AL,") {
                        l.lock().unwrap().push(seen.clone());
                        return; // drop the connection without acking
                    }
                }
            } else {
                watch_conn(s, l, 0).await;
            }
        }
    })
    .await;
    let ok = scenario::run(
        TcpScenario::Sos,
        &args(Family::Watch, &addr, "8000000003", 3),
    )
    .await
    .unwrap();
    assert!(ok);
    assert_eq!(*conns.lock().unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_counts_every_keepalive_ack() {
    let log: Log = Log::default();
    let l = log.clone();
    let addr = fake(move |s| watch_conn(s, l.clone(), 0)).await;
    let report = soak::run(SoakArgs {
        family: Family::Watch,
        addr: addr.parse().unwrap(),
        connections: 20,
        interval: Duration::from_secs(1),
        duration: Duration::from_secs(3),
        ramp_per_sec: 100,
        id_start: 0,
        ack_timeout: Duration::from_secs(2),
    })
    .await
    .unwrap();
    assert!(report.passed(), "{report:?}");
    assert_eq!(report.logins, 20);
    assert!(report.keepalives_sent >= 40, "{report:?}");
    assert_eq!(report.acks, report.keepalives_sent);
    // 20 distinct devices.
    let mut ids: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|f| {
            String::from_utf8_lossy(f)
                .split('*')
                .nth(1)
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_counts_missing_acks_and_disconnects() {
    // Acks the login LK, then ignores everything and closes after 1.5 s.
    let addr = fake(|mut s: TcpStream| async move {
        let mut buf = [0u8; 256];
        if let Ok(n) = s.read(&mut buf).await
            && n > 0
        {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let id = text.split('*').nth(1).unwrap_or("x").to_owned();
            let _ = s.write_all(format!("[3G*{id}*0002*LK]").as_bytes()).await;
        }
        let _ = tokio::time::timeout(Duration::from_millis(1500), async {
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    })
    .await;
    let report = soak::run(SoakArgs {
        family: Family::Watch,
        addr: addr.parse().unwrap(),
        connections: 5,
        interval: Duration::from_millis(500),
        duration: Duration::from_secs(2),
        ramp_per_sec: 100,
        id_start: 100,
        ack_timeout: Duration::from_secs(1),
    })
    .await
    .unwrap();
    assert!(!report.passed());
    assert_eq!(report.acks, 0);
    assert!(report.missing > 0, "{report:?}");
    assert!(report.disconnects > 0, "{report:?}");
}
