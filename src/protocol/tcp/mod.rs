//! The 4G TCP device families (CONTRACT.md listeners): for each, a framer that splits the
//! byte stream into frames and a pure decoder that turns one frame into events and the reply
//! bytes the device expects. No sockets, database or clock here: the receive time and the
//! per-connection [`Session`] are arguments, so vectors, fuzzing and `anxin decode` are cheap.
//!
//! Family notes, framing and ack rules: `protocols/<family>/README.md` and
//! `protocols/conformance/PROTOCOLS.md`.

pub mod gt06;
pub mod jt808;
pub mod trv;
pub mod watch;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, FixedOffset, Utc};

use crate::event::{DedupKey, Event, EventType, Source};

/// What a framer found at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFrame {
    /// One whole frame, delimiters included, escapes still in place (the decoder unescapes).
    Frame(Bytes),
    /// Bytes skipped to resynchronise (junk before a frame, an oversized or broken frame).
    /// The connection goes on; the count and reason are logged and counted.
    Skipped {
        /// How many bytes were dropped.
        bytes: usize,
        /// Metric label: `junk`, `oversized`, `bad_length`, …
        reason: &'static str,
    },
}

/// Splits a byte stream into frames. Implementations must be total: any input yields frames,
/// skips or "need more" — never a panic — and must not buffer beyond their maximum frame size.
pub trait Framer: Send + std::fmt::Debug {
    /// Takes the next frame or skip from the front of `buf`; `None` means more bytes are needed.
    fn next_frame(&mut self, buf: &mut BytesMut) -> Option<RawFrame>;
}

/// Per-connection state a decoder keeps between frames.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// The device this connection belongs to, once a login or any identifying frame named it.
    pub device_id: Option<String>,
    /// The device's clock offset, for families whose devices send local time; `None` = UTC
    /// (or the family's documented default, e.g. UTC+8 for JT/T 808).
    pub tz: Option<FixedOffset>,
    /// Next outgoing serial for families that number the server's own messages (JT/T 808).
    pub out_serial: u16,
    /// Alarm bits that were set in the device's previous periodic status report, so that a
    /// level repeated in every report raises once (rising edge) and is then "still active".
    pub active_levels: u64,
    /// How the server addresses the device in a message of its own (JT/T 808: the terminal
    /// number and protocol version of the device's last frame).
    pub addressing: Option<Addressing>,
}

/// The header fields a server-initiated message must repeat (JT/T 808: terminal number as
/// BCD, 6 bytes in the 2013 header or 10 in the 2019 one, and the 2019 protocol version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    /// The terminal number, as the device sends it.
    pub phone: Vec<u8>,
    /// The 2019 header's protocol version; `None` for the 2013 header.
    pub version: Option<u8>,
}

/// What decoding one frame produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameOutput {
    /// Events, in frame order. Every alarm flag of the frame is here: SOS is never masked.
    pub events: Vec<Event>,
    /// Bytes to send back to the device, if the protocol expects an answer.
    pub reply: Option<Vec<u8>>,
    /// Send `reply` at once (login, keep-alive, time request) rather than after the frame's
    /// events are committed (everything else: the ack means "stored").
    pub reply_now: bool,
    /// Why the frame could not be (fully) decoded: `(metric reason, detail)`. The events
    /// decoded before the problem are still delivered.
    pub error: Option<(&'static str, String)>,
}

/// Inputs a decoder needs besides the frame.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// When the frame arrived (injected clock).
    pub received_at: DateTime<Utc>,
    /// Peer address, for the event's source.
    pub peer: String,
}

impl Ctx {
    /// The event source for `family`.
    pub fn source(&self, family: &str) -> Source {
        Source {
            transport: "tcp",
            protocol: family.to_owned(),
            origin: self.peer.clone(),
        }
    }

    /// A new event of `family` for `device`, deduplicated by `frame_key` (what identifies a
    /// retransmission of the frame: serial + device time, or device time + frame hash) and
    /// its position `index` among the frame's events.
    pub fn event(
        &self,
        family: &str,
        device: &str,
        event_type: EventType,
        frame_key: &str,
        index: usize,
    ) -> Event {
        Event::new(
            device,
            event_type,
            self.received_at,
            self.source(family),
            DedupKey::Device(format!("{family}:{frame_key}#{index}")),
        )
    }
}

/// The families, by their CONTRACT.md names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `[3G*…]` bracket protocol.
    Watch,
    /// Concox/Jimi binary `78 78` / `79 79`.
    Gt06,
    /// JT/T 808, `7E`-framed.
    Jt808,
    /// IW / TRV, `IWAP…#`.
    Trv,
}

impl Protocol {
    /// Every family.
    pub const ALL: [Protocol; 4] = [
        Protocol::Watch,
        Protocol::Gt06,
        Protocol::Jt808,
        Protocol::Trv,
    ];

    /// The CONTRACT.md name.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Watch => "watch",
            Protocol::Gt06 => "gt06",
            Protocol::Jt808 => "jt808",
            Protocol::Trv => "trv",
        }
    }

    /// Parses a CONTRACT.md name.
    pub fn parse(s: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The CONTRACT.md default port.
    pub fn default_port(self) -> u16 {
        match self {
            Protocol::Watch => 5093,
            Protocol::Gt06 => 5023,
            Protocol::Jt808 => 5015,
            Protocol::Trv => 5010,
        }
    }

    /// A fresh framer for one connection.
    pub fn framer(self) -> Box<dyn Framer> {
        match self {
            Protocol::Watch => Box::new(watch::WatchFramer::default()),
            Protocol::Gt06 => Box::new(gt06::Gt06Framer::default()),
            Protocol::Jt808 => Box::new(jt808::Jt808Framer::default()),
            Protocol::Trv => Box::new(trv::TrvFramer::default()),
        }
    }

    /// Decodes one frame (as returned by this family's framer).
    /// Whether the family has an alarm confirmation ([`Protocol::confirm_alarm`]).
    pub fn confirms_alarms(self) -> bool {
        matches!(self, Protocol::Jt808)
    }

    /// The message telling the device an operator has taken its emergency alarm, so it stops
    /// repeating the SOS flag and a new press can be told from the held one; `None` when the
    /// family has no such message or the device has not been heard yet.
    pub fn confirm_alarm(self, session: &mut Session) -> Option<Vec<u8>> {
        match self {
            Protocol::Jt808 => jt808::confirm_alarm(session),
            Protocol::Watch | Protocol::Gt06 | Protocol::Trv => None,
        }
    }

    /// Decodes one frame.
    pub fn decode(self, frame: &[u8], session: &mut Session, ctx: &Ctx) -> FrameOutput {
        match self {
            Protocol::Watch => watch::decode(frame, session, ctx),
            Protocol::Gt06 => gt06::decode(frame, session, ctx),
            Protocol::Jt808 => jt808::decode(frame, session, ctx),
            Protocol::Trv => trv::decode(frame, session, ctx),
        }
    }
}

/// `anxin decode`: frames `hex`/`text` with the family's framer, decodes every frame found
/// (assuming `device` for families that name it only at login) and returns the JSON to print.
pub fn decode_cli(
    protocol: &str,
    hex_in: Option<&str>,
    text: Option<&str>,
    device: &str,
) -> Result<String, String> {
    let proto = Protocol::parse(protocol)
        .ok_or_else(|| format!("unknown protocol {protocol:?} (watch, gt06, jt808, trv)"))?;
    let bytes = match (hex_in, text) {
        (Some(h), _) => {
            let clean: String = h.chars().filter(|c| !c.is_whitespace()).collect();
            hex::decode(&clean).map_err(|e| format!("--hex is not hex: {e}"))?
        }
        (None, Some(t)) => t.as_bytes().to_vec(),
        (None, None) => return Err("give --hex or --text".into()),
    };
    let mut framer = proto.framer();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut session = Session {
        device_id: Some(device.to_owned()),
        ..Default::default()
    };
    let ctx = Ctx {
        received_at: Utc::now(),
        peer: "anxin-decode".into(),
    };
    let (mut events, mut replies, mut errors, mut skipped) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut frames = 0;
    while let Some(raw) = framer.next_frame(&mut buf) {
        match raw {
            RawFrame::Frame(f) => {
                frames += 1;
                let out = proto.decode(&f, &mut session, &ctx);
                events.extend(out.events.iter().map(Event::to_json));
                if let Some(r) = out.reply {
                    replies.push(hex::encode(r));
                }
                if let Some((reason, detail)) = out.error {
                    errors.push(serde_json::json!({"reason": reason, "detail": detail}));
                }
            }
            RawFrame::Skipped { bytes, reason } => {
                skipped.push(serde_json::json!({"bytes": bytes, "reason": reason}))
            }
        }
    }
    let mut v = serde_json::json!({
        "events": events,
        "reply_hex": if replies.is_empty() { serde_json::Value::Null } else { replies.join("").into() },
    });
    if !errors.is_empty() {
        v["errors"] = errors.into();
    }
    if !skipped.is_empty() {
        v["skipped"] = skipped.into();
    }
    if frames == 0 {
        v["incomplete_bytes"] = buf.len().into();
    }
    Ok(v.to_string())
}

/// Adapts a [`Framer`] to `tokio_util::codec`, for the connection task.
#[derive(Debug)]
pub struct Codec(pub Box<dyn Framer>);

impl tokio_util::codec::Decoder for Codec {
    type Item = RawFrame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RawFrame>, std::io::Error> {
        Ok(self.0.next_frame(src))
    }
}
