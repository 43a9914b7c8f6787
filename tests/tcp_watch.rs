//! The watch family over real sockets: the acks a watch expects, byte for byte, and the
//! guarantee behind the alarm ack — when the `AL` reply reaches the watch, the SOS alert is
//! already in the store.

mod common;

use std::time::Duration;

use common::{Engine, EngineOpts, free_port, poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn engine_with_watch() -> (Engine, u16) {
    let port = free_port();
    let e = Engine::start(EngineOpts {
        env: vec![(
            "ANXIN_TCP_LISTEN".into(),
            format!("watch=127.0.0.1:{port},gt06=off,jt808=off,trv=off"),
        )],
        ..Default::default()
    })
    .await;
    (e, port)
}

/// Reads until `want` bytes arrived (replies are short and exact).
async fn read_exact_reply(s: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut buf = vec![0u8; want];
    tokio::time::timeout(common::DEADLINE, s.read_exact(&mut buf))
        .await
        .expect("reply in time")
        .expect("reply read");
    buf
}

#[tokio::test]
async fn keep_alive_and_alarm_are_acked_and_the_sos_is_stored_before_its_ack() {
    let (e, port) = engine_with_watch().await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();

    s.write_all(b"[3G*8800000015*000A*LK,0,10,95]")
        .await
        .unwrap();
    let lk = read_exact_reply(&mut s, b"[3G*8800000015*0002*LK]".len()).await;
    assert_eq!(lk, b"[3G*8800000015*0002*LK]");

    // SOS (status bit 16) together with low battery (bit 0): both are reported.
    s.write_all(b"[3G*8800000015*0060*AL,231126,101500,A,31.230416,N,121.473701,E,0.00,0,0,7,80,12,0,0,00010001,0,0,0]")
        .await
        .unwrap();
    let al = read_exact_reply(&mut s, b"[3G*8800000015*0002*AL]".len()).await;
    assert_eq!(al, b"[3G*8800000015*0002*AL]");
    // No polling: the ack means "committed".
    let sos = e.alerts("device_id=8800000015&kind=sos").await;
    assert_eq!(sos.len(), 1, "the SOS alert exists when the ack arrives");
    assert_eq!(sos[0]["severity"], "critical");
    let low = e.alerts("device_id=8800000015&kind=low_battery").await;
    assert_eq!(
        low.len(),
        1,
        "the low-battery flag in the same frame is reported too"
    );
}

#[tokio::test]
async fn an_sos_with_an_impossible_time_and_position_is_stored_before_its_ack() {
    let (e, port) = engine_with_watch().await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Day 31 of month 13 at 99:99:99, latitude 91.5: the SOS stands (DESIGN.md guarantee 5).
    s.write_all(b"[3G*8800000016*0060*AL,311326,999999,A,91.5,N,121.473701,E,0.00,0,0,7,80,12,0,0,00010000,0,0,0]")
        .await
        .unwrap();
    let al = read_exact_reply(&mut s, b"[3G*8800000016*0002*AL]".len()).await;
    assert_eq!(al, b"[3G*8800000016*0002*AL]");
    let sos = e.alerts("device_id=8800000016&kind=sos").await;
    assert_eq!(sos.len(), 1, "the SOS alert exists when the ack arrives");
    // A length field that cannot be valid gets no ack; the next frame's ack shows it was read.
    s.write_all(b"[3G*8800000016*FFFFFFFF*LK][3G*8800000016*0002*LK]")
        .await
        .unwrap();
    let lk = read_exact_reply(&mut s, b"[3G*8800000016*0002*LK]".len()).await;
    assert_eq!(lk, b"[3G*8800000016*0002*LK]");
    e.wait_metric(
        "anxin_tcp_decode_errors_total{family=\"watch\",reason=\"bad_length\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_frame_fed_one_byte_at_a_time_and_ten_frames_in_one_write_both_work() {
    let (_e, port) = engine_with_watch().await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    for b in b"[SG*9081000548*0009*LK,0,100]" {
        s.write_all(&[*b]).await.unwrap();
        s.flush().await.unwrap();
    }
    let reply = b"[SG*9081000548*0002*LK]";
    assert_eq!(read_exact_reply(&mut s, reply.len()).await, reply);

    let ten = b"[SG*9081000548*0009*LK,0,100]".repeat(10);
    s.write_all(&ten).await.unwrap();
    let all = read_exact_reply(&mut s, reply.len() * 10).await;
    assert_eq!(all, reply.repeat(10));
}

#[tokio::test]
async fn junk_and_broken_frames_are_counted_and_the_connection_survives() {
    let (e, port) = engine_with_watch().await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n[3G*not an id!*0002*LK][3G*1234567890*0002*LK]")
        .await
        .unwrap();
    let reply = b"[3G*1234567890*0002*LK]";
    assert_eq!(read_exact_reply(&mut s, reply.len()).await, reply);
    e.wait_metric(
        "anxin_tcp_skipped_bytes_total{family=\"watch\",reason=\"junk\"}",
        18.0,
    )
    .await;
    e.wait_metric(
        "anxin_tcp_decode_errors_total{family=\"watch\",reason=\"bad_device_id\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_repeated_status_level_does_not_count_as_a_new_press() {
    let (e, port) = engine_with_watch().await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Three periodic reports with the removal bit (20) held: one alert, count 1.
    for t in ["101500", "101600", "101700"] {
        let f = format!(
            "[3G*7700000001*0060*UD,231126,{t},A,31.2,N,121.4,E,0,0,0,7,80,12,0,0,00100000,0,0,0]"
        );
        s.write_all(f.as_bytes()).await.unwrap();
    }
    // UD frames get no reply; a keep-alive after them shows they were all handled (in order).
    s.write_all(b"[3G*7700000001*0002*LK]").await.unwrap();
    read_exact_reply(&mut s, b"[3G*7700000001*0002*LK]".len()).await;
    let a = poll("removal alert", || async {
        e.alerts("device_id=7700000001&kind=removal")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(a["count"], 1);
    let (_, full) = e.get(&format!("/api/alerts/{}", a["id"])).await;
    let actions: Vec<&str> = full["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["opened", "still_active", "still_active"]);
    let _ = Duration::ZERO;
}

#[test]
fn anxin_decode_prints_the_events_and_the_reply() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anxin"))
        .args([
            "decode",
            "--protocol",
            "watch",
            "--text",
            "[3G*8800000015*000A*LK,0,10,95]",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["events"][0]["type"], "heartbeat");
    assert_eq!(v["events"][1]["fields"]["percent"], 95.0);
    assert_eq!(v["reply_hex"], hex::encode(b"[3G*8800000015*0002*LK]"));
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_anxin"))
        .args(["decode", "--protocol", "nope", "--hex", "00"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown protocol"));
}
