//! The embedded broker: rumqttd in-process, for one box and development.
//!
//! Limits (PITFALLS 13), stated wherever this mode is documented: it PUBACKs publishers on
//! receipt and keeps nothing on disk, so a crash of this process loses what devices were told
//! was delivered; at most 100 messages in flight to a subscriber; it disconnects a client that
//! acks out of order; it never sets DUP. Production uses an external broker.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::protocol::canonical::MAX_PAYLOAD_BYTES;

/// rumqttd's fixed outgoing window (`MAX_INFLIGHT` in `router/iobufs.rs`).
pub const WINDOW: usize = 100;

/// Starts rumqttd on `addr` (MQTT 3.1.1) on its own thread. Fails clearly if the port is taken.
pub fn start(addr: SocketAddr) -> anyhow::Result<()> {
    // rumqttd reports a bind failure only inside its listener thread; probe first so the
    // operator gets a clear message. (The window between probe and bind is harmless: the
    // engine's own connection would then fail and say so.)
    if let Err(e) = std::net::TcpListener::bind(addr) {
        bail!(
            "cannot start the embedded MQTT broker on {addr}: {e}. Another broker is probably \
             running there; to use it instead, set ANXIN_MQTT_URL=mqtt://{addr} (or choose a free \
             port with ANXIN_MQTT_URL=embedded://127.0.0.1:PORT)"
        );
    }
    let server = ServerSettings {
        name: "anxin-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            // CONTRACT.md: canonical payloads are at most 64 KiB. rumqttd checks a packet's
            // remaining length (topic, packet id, payload) and drops the connection above it,
            // so an oversized payload is refused to the device rather than taken and then
            // refused by the engine. 64 KiB + the overhead of the shortest canonical topic
            // (`anxin/v1/devices/X/events`: 2 + 25 bytes, packet id 2): nothing above 64 KiB
            // passes; a payload within a few bytes of it on a longer topic is refused too.
            max_payload_size: MAX_PAYLOAD_BYTES + 29,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        // Leave rumqttd's own Prometheus exporter, console and metrics off: they would install
        // a second metrics stack and bind ports of their own (PITFALLS 13).
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            // start() joins its listener threads and only returns on error.
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "Embedded MQTT broker stopped");
            }
        })
        .context("spawning the embedded broker thread")?;
    Ok(())
}
