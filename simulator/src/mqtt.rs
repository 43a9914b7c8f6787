//! One small interface over rumqttc's MQTT 3.1.1 and MQTT 5 clients.
//!
//! Each connection's event loop runs in its own task and only forwards what the simulator
//! cares about over an unbounded channel, so a caller that awaits a publish or an ack can
//! never stall the loop that would free room for it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rumqttc::v5;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::payload::MAX_PAYLOAD_BYTES;

/// Packet limit given to rumqttc in both directions. Its 10 KiB default would drop the
/// connection on a legal 64 KiB payload, so allow that plus the fixed header, topic and
/// properties.
const MAX_PACKET_BYTES: usize = MAX_PAYLOAD_BYTES + 4 * 1024;

/// Unacked publishes a publisher keeps outstanding. rumqttc's default of 100 throttles a load
/// run to one window per round trip; a v5 broker's smaller Receive Maximum still wins.
const PUBLISH_WINDOW: u16 = 1000;

/// Session expiry asked of an MQTT 5 broker for a subscriber; without one, clean_start=false
/// still loses the session at disconnect (PITFALLS 2).
const SESSION_EXPIRY_SECS: u32 = 3600;

/// How long to wait for CONNACK, SUBACK and the like before calling the broker unreachable.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which MQTT protocol version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// MQTT 3.1.1.
    #[value(name = "4")]
    V311,
    /// MQTT 5.
    #[value(name = "5")]
    V5,
}

/// A broker address from an `mqtt://host:port` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl FromStr for BrokerAddr {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| {
                format!("`{url}`: expected mqtt://host:port (TLS is not supported by anxin-sim)")
            })?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '@']) {
            return Err(format!(
                "`{url}`: only mqtt://host:port is supported, without path, query or credentials"
            ));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("`{url}`: unclosed `[` in IPv6 address"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{url}`: missing host"));
        }
        let port = match port {
            Some(port) => port
                .parse()
                .map_err(|_| format!("`{url}`: invalid port `{port}`"))?,
            None => 1883,
        };
        Ok(BrokerAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl BrokerAddr {
    /// The broker the engine uses, from its `ANXIN_MQTT_URL` (CONTRACT.md): `embedded` is
    /// 127.0.0.1:1883, `embedded://HOST:PORT` is that address (the engine's in-process broker
    /// listens there), `mqtt://host:port` an external broker.
    pub fn from_engine_url(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if url == "embedded" {
            return Ok(BrokerAddr {
                host: "127.0.0.1".into(),
                port: 1883,
            });
        }
        if let Some(addr) = url.strip_prefix("embedded://") {
            // The engine takes an IP address and port here, nothing else.
            let addr: std::net::SocketAddr = addr.parse().map_err(|_| {
                format!("ANXIN_MQTT_URL={url:?}: embedded://HOST:PORT needs an IP address and port")
            })?;
            return Ok(BrokerAddr {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        if url.starts_with("mqtts://") {
            return Err(format!(
                "ANXIN_MQTT_URL={url:?}: anxin-sim does not speak TLS; give --url mqtt://HOST:PORT"
            ));
        }
        url.parse().map_err(|e| format!("ANXIN_MQTT_URL: {e}"))
    }
}

impl fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "mqtt://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "mqtt://{}:{}", self.host, self.port)
        }
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The broker.
    pub broker: BrokerAddr,
    /// MQTT client identifier.
    pub client_id: String,
    /// Protocol version.
    pub protocol: Protocol,
}

/// What the connection is for; decides session and ack settings.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// Publishes only: clean session, large outgoing window.
    Publisher,
    /// Subscribes with a persistent session and acks each publish itself.
    Subscriber {
        /// Receive Maximum asked of an MQTT 5 broker; MQTT 3.1.1 has no such setting.
        receive_maximum: u16,
    },
}

/// The sending half of a connection.
#[derive(Debug, Clone)]
pub enum Client {
    /// MQTT 3.1.1.
    V311(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(v5::AsyncClient),
}

/// A publish received from the broker, kept whole because rumqttc acks by the packet itself.
#[derive(Debug)]
pub enum Delivery {
    /// Received over MQTT 3.1.1.
    V311(rumqttc::Publish),
    /// Received over MQTT 5.
    V5(v5::mqttbytes::v5::Publish),
}

/// What the event loop reports.
#[derive(Debug)]
pub enum Notice {
    /// CONNACK with a success code.
    Connected {
        /// Whether the broker resumed an existing session.
        session_present: bool,
    },
    /// PUBACK for one of our publishes; `Err` carries an MQTT 5 failure reason.
    Acked(Result<(), String>),
    /// SUBACK; `Err` when the broker refused a filter.
    Subscribed(Result<(), String>),
    /// A publish from the broker.
    Received(Delivery),
    /// The connection ended: `None` after our own DISCONNECT went out, else the error.
    /// The event loop task stops after sending this.
    Closed(Option<String>),
}

/// A connection: its client and the event loop's reports.
#[derive(Debug)]
pub struct Link {
    /// Sends requests to the event loop.
    pub client: Client,
    /// Reports from the event loop, in the order it saw them.
    pub notices: mpsc::UnboundedReceiver<Notice>,
}

/// Starts a connection; the event loop task connects on its first poll.
///
/// Must be called inside a tokio runtime.
pub fn connect(endpoint: &Endpoint, role: Role) -> Link {
    let (tx, notices) = mpsc::unbounded_channel();
    let BrokerAddr { host, port } = endpoint.broker.clone();
    // The request channel holds at least a full window, so a caller that keeps it full is
    // limited by the broker's acks rather than by a channel smaller than the window.
    let capacity = match role {
        Role::Publisher => usize::from(PUBLISH_WINDOW),
        Role::Subscriber { receive_maximum } => usize::from(receive_maximum) + 16,
    };
    let client = match endpoint.protocol {
        Protocol::V311 => {
            let mut options = rumqttc::MqttOptions::new(&endpoint.client_id, host, port);
            options
                .set_keep_alive(Duration::from_secs(30))
                .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
            match role {
                Role::Publisher => {
                    options.set_clean_session(true).set_inflight(PUBLISH_WINDOW);
                }
                Role::Subscriber { .. } => {
                    options.set_clean_session(false).set_manual_acks(true);
                }
            }
            let (client, event_loop) = rumqttc::AsyncClient::new(options, capacity);
            tokio::spawn(drive_v311(event_loop, tx));
            Client::V311(client)
        }
        Protocol::V5 => {
            let mut options = v5::MqttOptions::new(&endpoint.client_id, host, port);
            options
                .set_keep_alive(Duration::from_secs(30))
                .set_max_packet_size(Some(MAX_PACKET_BYTES as u32));
            match role {
                Role::Publisher => {
                    // Only an upper bound: the broker's Receive Maximum from CONNACK applies
                    // when smaller. Without it a broker that omits the property would get
                    // 65535 unacked publishes.
                    options
                        .set_clean_start(true)
                        .set_outgoing_inflight_upper_limit(PUBLISH_WINDOW);
                }
                Role::Subscriber { receive_maximum } => {
                    options
                        .set_clean_start(false)
                        .set_session_expiry_interval(Some(SESSION_EXPIRY_SECS))
                        .set_receive_maximum(Some(receive_maximum))
                        .set_manual_acks(true);
                }
            }
            let (client, event_loop) = v5::AsyncClient::new(options, capacity);
            tokio::spawn(drive_v5(event_loop, tx));
            Client::V5(client)
        }
    };
    Link { client, notices }
}

/// Polls an MQTT 3.1.1 event loop until the connection ends or nobody listens any more.
///
/// A connection error ends the task instead of reconnecting: with a clean session rumqttc
/// would drop the unacked publishes, and a load figure over a silently reconnected link
/// would be misleading.
async fn drive_v311(mut event_loop: rumqttc::EventLoop, tx: mpsc::UnboundedSender<Notice>) {
    use rumqttc::{Event, Outgoing, Packet, SubscribeReasonCode};
    loop {
        let notice = match event_loop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => Notice::Connected {
                session_present: connack.session_present,
            },
            Ok(Event::Incoming(Packet::PubAck(_))) => Notice::Acked(Ok(())),
            Ok(Event::Incoming(Packet::SubAck(suback))) => Notice::Subscribed(
                match suback
                    .return_codes
                    .iter()
                    .find(|code| matches!(code, SubscribeReasonCode::Failure))
                {
                    Some(code) => Err(format!("{code:?}")),
                    None => Ok(()),
                },
            ),
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                Notice::Received(Delivery::V311(publish))
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = tx.send(Notice::Closed(None));
                return;
            }
            Ok(_) => continue,
            Err(error) => {
                let _ = tx.send(Notice::Closed(Some(error.to_string())));
                return;
            }
        };
        if tx.send(notice).is_err() {
            return;
        }
    }
}

/// The MQTT 5 twin of [`drive_v311`]; the packet types differ, the behaviour does not.
async fn drive_v5(mut event_loop: v5::EventLoop, tx: mpsc::UnboundedSender<Notice>) {
    use rumqttc::Outgoing;
    use v5::Event;
    use v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
    loop {
        let notice = match event_loop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => Notice::Connected {
                session_present: connack.session_present,
            },
            Ok(Event::Incoming(Packet::PubAck(puback))) => Notice::Acked(match puback.reason {
                // No subscriber is the broker's business, not a refusal of the message.
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                reason => Err(format!("{reason:?}")),
            }),
            Ok(Event::Incoming(Packet::SubAck(suback))) => Notice::Subscribed(
                match suback
                    .return_codes
                    .iter()
                    .find(|code| !matches!(code, SubscribeReasonCode::Success(_)))
                {
                    Some(code) => Err(format!("{code:?}")),
                    None => Ok(()),
                },
            ),
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                Notice::Received(Delivery::V5(publish))
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = tx.send(Notice::Closed(None));
                return;
            }
            Ok(_) => continue,
            Err(error) => {
                let _ = tx.send(Notice::Closed(Some(error.to_string())));
                return;
            }
        };
        if tx.send(notice).is_err() {
            return;
        }
    }
}

impl Client {
    /// Queues a QoS 1 publish; waits only while the request channel is full.
    pub async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<()> {
        match self {
            Client::V311(client) => {
                client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                    .await?
            }
            Client::V5(client) => {
                client
                    .publish(topic, v5::mqttbytes::QoS::AtLeastOnce, false, payload)
                    .await?
            }
        }
        Ok(())
    }

    /// Queues a QoS 1 subscription to `filter`.
    pub async fn subscribe(&self, filter: &str) -> Result<()> {
        match self {
            Client::V311(client) => client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await?,
            Client::V5(client) => {
                client
                    .subscribe(filter, v5::mqttbytes::QoS::AtLeastOnce)
                    .await?
            }
        }
        Ok(())
    }

    /// Acks a received publish, without waiting unless the request channel is full.
    pub async fn ack(&self, delivery: &Delivery) -> Result<()> {
        match (self, delivery) {
            (Client::V311(client), Delivery::V311(publish)) => {
                if client.try_ack(publish).is_err() {
                    client.ack(publish).await?;
                }
            }
            (Client::V5(client), Delivery::V5(publish)) => {
                if client.try_ack(publish).is_err() {
                    client.ack(publish).await?;
                }
            }
            _ => bail!("a publish received over one protocol version cannot be acked on another"),
        }
        Ok(())
    }

    /// Queues a DISCONNECT.
    pub async fn disconnect(&self) -> Result<()> {
        match self {
            Client::V311(client) => client.disconnect().await?,
            Client::V5(client) => client.disconnect().await?,
        }
        Ok(())
    }
}

impl Link {
    /// Waits for CONNACK and returns whether the broker resumed a session.
    pub async fn wait_connected(&mut self) -> Result<bool> {
        let wait = async {
            loop {
                match self.notices.recv().await {
                    Some(Notice::Connected { session_present }) => return Ok(session_present),
                    Some(Notice::Closed(error)) => {
                        return Err(anyhow!(error.unwrap_or_else(|| "disconnected".into())));
                    }
                    Some(_) => {}
                    None => bail!("event loop ended"),
                }
            }
        };
        timeout(HANDSHAKE_TIMEOUT, wait)
            .await
            .context("no CONNACK in time")?
            .context("connecting to the broker")
    }

    /// Sends DISCONNECT and waits briefly until it has gone out.
    ///
    /// Reports arriving meanwhile are dropped: callers close once they have what they need.
    pub async fn close(mut self) -> Result<()> {
        self.client.disconnect().await?;
        let wait = async {
            while let Some(notice) = self.notices.recv().await {
                if let Notice::Closed(error) = notice {
                    return error.map_or(Ok(()), |e| Err(anyhow!(e)));
                }
            }
            Ok(())
        };
        timeout(HANDSHAKE_TIMEOUT, wait)
            .await
            .context("DISCONNECT not sent in time")?
            .context("disconnecting")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<(String, u16), String> {
        url.parse::<BrokerAddr>().map(|b| (b.host, b.port))
    }

    #[test]
    fn broker_urls_give_host_and_port() {
        assert_eq!(
            parse("mqtt://127.0.0.1:1883"),
            Ok(("127.0.0.1".into(), 1883))
        );
        assert_eq!(
            parse("mqtt://broker.lan:11883/"),
            Ok(("broker.lan".into(), 11883))
        );
        assert_eq!(parse("tcp://localhost"), Ok(("localhost".into(), 1883)));
        assert_eq!(parse("mqtt://[::1]:1884"), Ok(("::1".into(), 1884)));
        assert_eq!(parse("mqtt://[::1]"), Ok(("::1".into(), 1883)));
    }

    #[test]
    fn unsupported_broker_urls_are_refused() {
        assert!(parse("127.0.0.1:1883").is_err());
        assert!(parse("mqtts://host:8883").is_err());
        assert!(parse("mqtt://:1883").is_err());
        assert!(parse("mqtt://host:port").is_err());
        assert!(parse("mqtt://host:99999").is_err());
        assert!(parse("mqtt://user@host:1883").is_err());
        assert!(parse("mqtt://host:1883/path").is_err());
    }

    #[test]
    fn the_engine_url_names_the_same_broker() {
        let engine = |url: &str| BrokerAddr::from_engine_url(url).map(|b| (b.host, b.port));
        assert_eq!(engine("embedded"), Ok(("127.0.0.1".into(), 1883)));
        assert_eq!(
            engine("embedded://127.0.0.1:18830"),
            Ok(("127.0.0.1".into(), 18830))
        );
        assert_eq!(
            engine("mqtt://broker.lan:1884"),
            Ok(("broker.lan".into(), 1884))
        );
        assert!(engine("mqtts://broker.lan:8883").is_err());
        assert!(engine("embedded://nowhere").is_err());
    }

    #[test]
    fn broker_addresses_print_back_as_urls() {
        for url in ["mqtt://127.0.0.1:1883", "mqtt://[::1]:1884"] {
            assert_eq!(url.parse::<BrokerAddr>().unwrap().to_string(), url);
        }
    }
}
