//! Each 4G family over a real socket: login and keep-alive are answered at once, an alarm's
//! ack arrives only once the SOS alert is in the store, and frames split into single bytes or
//! packed ten to a write both work.

mod common;

use common::{Engine, EngineOpts, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn engine_with(family: &str) -> (Engine, u16) {
    let port = free_port();
    let listen = common::only_listener(family, port);
    let e = Engine::start(EngineOpts {
        env: vec![("ANXIN_TCP_LISTEN".into(), listen)],
        ..Default::default()
    })
    .await;
    (e, port)
}

/// Reads until the reply ends with `end` (text families end their frames with a marker).
async fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(common::DEADLINE, async {
        while !got.ends_with(end) {
            s.read_exact(&mut byte).await.expect("reply");
            got.push(byte[0]);
        }
    })
    .await
    .expect("reply in time");
    got
}

async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(common::DEADLINE, s.read_exact(&mut buf))
        .await
        .expect("reply in time")
        .expect("reply");
    buf
}

#[tokio::test]
async fn trv_login_keep_alive_and_sos_exchange() {
    let (e, port) = engine_with("trv").await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Login, fed one byte at a time.
    for b in b"IWAP00353456789012345,8901240204123656505f,310240202365650#" {
        s.write_all(&[*b]).await.unwrap();
    }
    let login = read_until(&mut s, b"#").await;
    assert!(
        login.starts_with(b"IWBP00,") && login.ends_with(b",0#"),
        "{}",
        String::from_utf8_lossy(&login)
    );

    let sos = b"IWAP10080524A2232.9806N11404.9355E000.1061830323.8706000908000502,460,0,9520,3671,01,zh-cn,00#";
    s.write_all(sos).await.unwrap();
    assert_eq!(read_until(&mut s, b"#").await, b"IWBP10#");
    let alerts = e.alerts("device_id=353456789012345&kind=sos").await;
    assert_eq!(
        alerts.len(),
        1,
        "the SOS alert is stored when its ack arrives"
    );

    // Ten keep-alives in one write: ten replies.
    let hb = e.get("/api/devices/353456789012345/frames").await.1;
    assert!(hb["items"].as_array().unwrap().len() >= 2);
    let keepalive = b"IWAP03,06000908000102,5555,30#";
    s.write_all(&keepalive.repeat(10)).await.unwrap();
    let mut replies = 0;
    while replies < 10 {
        let r = read_until(&mut s, b"#").await;
        assert!(r.starts_with(b"IWBP03"), "{}", String::from_utf8_lossy(&r));
        replies += 1;
    }
    let _ = read_n;
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// A 2013-header JT/T 808 location report from `phone`: alarm word `alarm`, fixed position,
/// time 2026-03-01 12:00:`second` (BCD) Beijing time.
fn jt808_location(phone: &str, serial: u16, alarm: u32, second_bcd: u8) -> Vec<u8> {
    let mut body = alarm.to_be_bytes().to_vec();
    body.extend(3u32.to_be_bytes());
    body.extend(22_543_210u32.to_be_bytes());
    body.extend(114_057_868u32.to_be_bytes());
    body.extend([
        0, 16, 0, 50, 0, 90, 0x26, 0x03, 0x01, 0x12, 0x00, second_bcd,
    ]);
    let mut raw = 0x0200u16.to_be_bytes().to_vec();
    raw.extend((body.len() as u16).to_be_bytes());
    raw.extend(unhex(phone));
    raw.extend(serial.to_be_bytes());
    raw.extend(body);
    raw.push(raw.iter().fold(0, |x, b| x ^ b));
    assert!(
        !raw.iter().any(|b| *b == 0x7e || *b == 0x7d),
        "test frame would need escaping"
    );
    let mut framed = vec![0x7e];
    framed.extend(raw);
    framed.push(0x7e);
    framed
}

#[tokio::test]
async fn jt808_register_authenticate_and_sos_exchange() {
    let (e, port) = engine_with("jt808").await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Registration (Traccar's frame, serial 0005) → 0x8100 at once, the id as auth code.
    let register = unhex(
        "7e0100002d013511221122000500000000373031303748422d52303347424400000000000000000000003233363631303402cbd5424136383630387e",
    );
    for b in &register {
        s.write_all(&[*b]).await.unwrap();
    }
    let want = unhex("7e8100000e01351122112200000005003133353131323231313232897e");
    assert_eq!(read_n(&mut s, want.len()).await, want);
    // Authentication → 0x8001 with the next outgoing serial.
    s.write_all(&unhex(
        "7e0102000b013511221122000631333531313232313132320d7e",
    ))
    .await
    .unwrap();
    let want = unhex("7e8001000501351122112200010006010200b47e");
    assert_eq!(read_n(&mut s, want.len()).await, want);

    // A location report with the SOS bit (terminal 013800138000): acked after commit.
    let sos = unhex(
        "7e02000023013800138000001000000001000000030157fb6a06cc628c00100032005a260301120000310109e4020055be7e",
    );
    s.write_all(&sos).await.unwrap();
    let ack = read_n(&mut s, 20).await;
    assert_eq!(&ack[1..3], &[0x80, 0x01], "a general response");
    assert_eq!(
        e.alerts("device_id=13800138000&kind=sos").await.len(),
        1,
        "stored before its ack"
    );

    // The operator acknowledges: the terminal gets 0x8203 (every pending alarm, emergency bit)
    // with the connection's next serial, so it stops holding the SOS flag.
    let alert = e.alerts("device_id=13800138000&kind=sos").await[0].clone();
    let (status, body) = e
        .post(
            &format!("/api/alerts/{}/ack", alert["id"]),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device_confirmation"], "sent", "{body}");
    // 7e | 8203 | 0006 | 013800138000 | 0003 (0000 register, 0001 auth, 0002 the SOS ack) |
    // 0000 all pending | 00000001 emergency | 2f xor | 7e
    let want = unhex("7e8203000601380013800000030000000000012f7e");
    assert_eq!(read_n(&mut s, want.len()).await, want);
    let (_, detail) = e.get(&format!("/api/alerts/{}", alert["id"])).await;
    assert!(
        detail.to_string().contains("device_confirmation"),
        "the confirmation is on the timeline: {detail}"
    );
    // The flag cleared, a new press is a new rising edge: counted on the acknowledged alert.
    s.write_all(&jt808_location("013800138000", 0x11, 0, 0x10))
        .await
        .unwrap();
    read_n(&mut s, 20).await;
    s.write_all(&jt808_location("013800138000", 0x12, 1, 0x20))
        .await
        .unwrap();
    read_n(&mut s, 20).await;
    let again = e.alerts("device_id=13800138000&kind=sos").await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["count"], 2, "{again:?}");

    // Ten heartbeats in one write: ten general responses, each with the next serial.
    let hb = unhex("7e0002000004304832546500b7ca7e");
    s.write_all(&hb.repeat(10)).await.unwrap();
    let replies = read_n(&mut s, 20 * 10).await;
    let serials: Vec<u16> = replies
        .chunks(20)
        .map(|r| {
            assert_eq!(&r[1..3], &[0x80, 0x01]);
            u16::from_be_bytes([r[11], r[12]])
        })
        .collect();
    assert!(
        serials.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "{serials:?}"
    );
}

#[tokio::test]
async fn gt06_login_heartbeat_and_sos_exchange() {
    let (e, port) = engine_with("gt06").await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Login of IMEI 864717003283581, serial 0x0009 → the worked-example echo, at once.
    for b in unhex("78780d01086471700328358100093f040d0a") {
        s.write_all(&[b]).await.unwrap();
    }
    let want = unhex("78780501000955940d0a");
    assert_eq!(read_n(&mut s, want.len()).await, want);
    // Ten heartbeats in one write: ten echoes.
    let hb = unhex("78780a13440604000201baaf540d0a");
    s.write_all(&hb.repeat(10)).await.unwrap();
    let one = unhex("7878051301bafb710d0a");
    assert_eq!(read_n(&mut s, one.len() * 10).await, one.repeat(10));
    // An SOS alarm packet (0x16, alarm byte 0x01): acked only after commit.
    s.write_all(&unhex(
        "787825161a0305080e3ac9026b2a2c0c3cb19c03145a0901cc00266a001e17040504010200211ef20d0a",
    ))
    .await
    .unwrap();
    let want = unhex("787805160021f14e0d0a");
    assert_eq!(read_n(&mut s, want.len()).await, want);
    assert_eq!(
        e.alerts("device_id=864717003283581&kind=sos").await.len(),
        1,
        "stored before its ack"
    );
}

#[tokio::test]
async fn the_connection_limit_and_idle_timeout_close_connections_and_are_counted() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("anxin.toml");
    std::fs::write(
        &config,
        format!(
            "rules_file = \"{}/config/rules.toml\"\n[tcp]\nmax_connections = 1\nidle_timeout_secs = 1\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let e = Engine::start(EngineOpts {
        env: vec![(
            "ANXIN_TCP_LISTEN".into(),
            format!("watch=127.0.0.1:{port},gt06=off,jt808=off,trv=off"),
        )],
        config: Some(config),
        ..Default::default()
    })
    .await;
    let mut first = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    first.write_all(b"[3G*1000000001*0002*LK]").await.unwrap();
    let reply = b"[3G*1000000001*0002*LK]";
    assert_eq!(read_n(&mut first, reply.len()).await, reply);
    // The second connection is over the limit: closed at once, counted.
    let mut second = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(common::DEADLINE, second.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "refused connections are closed");
    e.wait_metric(
        "anxin_tcp_connections_refused_total{family=\"watch\",reason=\"listener_full\"}",
        1.0,
    )
    .await;
    // The first one, now silent, is closed by the idle timeout.
    let n = tokio::time::timeout(common::DEADLINE, first.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "an idle connection is closed");
}
