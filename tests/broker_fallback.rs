//! The MQTT 5 → 3.1.1 fallback against a front that refuses MQTT 5 with a CONNACK and passes
//! MQTT 3.1.1 through to a private Mosquitto (nats-server itself: tests/durability.rs).

mod common;

use common::{Engine, EngineOpts, Mosquitto, poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// MQTT 3.1.1 §3.2: CONNACK, remaining length 2, no session, return code 0x01 "unacceptable
/// protocol version" — what a 3.1.1-only broker must answer to an MQTT 5 CONNECT
/// [MQTT-3.1.2-2], then close.
const CONNACK_V311_UNACCEPTABLE_VERSION: &[u8] = &[0x20, 0x02, 0x00, 0x01];

/// MQTT 5.0 §3.2: CONNACK, remaining length 3, no session, reason code 0x84 "Unsupported
/// Protocol Version", no properties.
const CONNACK_V5_UNSUPPORTED_VERSION: &[u8] = &[0x20, 0x03, 0x00, 0x84, 0x00];

/// A front for `upstream` that answers every MQTT 5 CONNECT with `refusal` and closes, and
/// passes every other connection through. Returns its port.
async fn refuse_mqtt5(upstream: u16, refusal: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Fixed header (1) + remaining length (1..4) + protocol name "MQTT" (6) + level.
                let mut head = Vec::new();
                let level = loop {
                    let mut b = [0u8; 64];
                    let n = inbound.read(&mut b).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&b[..n]);
                    let len_bytes = head[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
                    if head.len() > 1 + len_bytes + 6 {
                        break head[1 + len_bytes + 6];
                    }
                };
                if level == 5 {
                    let _ = inbound.write_all(refusal).await;
                    return;
                }
                let Ok(mut out) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                if out.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    port
}

const FALLBACK: &str = "The broker refused MQTT 5; reconnecting with MQTT 3.1.1";

/// Starts an engine behind a front answering MQTT 5 with `refusal`; returns the broker (for
/// publishing), the engine and the number of failed MQTT 5 connections before the fallback.
async fn engine_behind(refusal: &'static [u8]) -> (Mosquitto, Engine, usize) {
    let mq = Mosquitto::start().await;
    let front = refuse_mqtt5(mq.port, refusal).await;
    let e = Engine::start(EngineOpts {
        mqtt_url: Some(format!("mqtt://127.0.0.1:{front}")),
        ..Default::default()
    })
    .await;
    let log = e.log();
    assert_eq!(log.matches(FALLBACK).count(), 1, "log:\n{log}");
    let tries = log.matches("MQTT connection error").count();
    // Devices publish to the broker itself; the engine's 3.1.1 session receives it.
    common::publish(mq.port, &e.topic("r1"), r#"{"type":"sos","seq":1}"#);
    poll("the SOS over 3.1.1", || async {
        e.alerts("device_id=r1&kind=sos").await.into_iter().next()
    })
    .await;
    (mq, e, tries)
}

#[tokio::test]
async fn an_mqtt_5_connack_unsupported_protocol_version_gets_3_1_1_at_once() {
    let (_mq, e, tries) = engine_behind(CONNACK_V5_UNSUPPORTED_VERSION).await;
    assert_eq!(tries, 0, "log:\n{}", e.log());
}

/// rumqttc 0.25.1 reads the 4-byte 3.1.1 CONNACK as an incomplete MQTT 5 one, so this
/// refusal shows as the connection closed in answer to CONNECT: the fallback waits for the
/// second one (one failed try before it).
#[tokio::test]
async fn a_3_1_1_connack_unacceptable_protocol_version_gets_3_1_1_on_the_second_refusal() {
    let (_mq, e, tries) = engine_behind(CONNACK_V311_UNACCEPTABLE_VERSION).await;
    assert_eq!(tries, 1, "log:\n{}", e.log());
}
