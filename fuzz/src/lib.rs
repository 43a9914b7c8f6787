//! Shared driver for the fuzz targets: a byte stream through one TCP family's framer and
//! decoder, the way a connection task feeds them (`protocol::tcp::Codec`), with the
//! invariants of the `Framer` contract checked on every step.

use anxin::protocol::tcp::{Ctx, Protocol, RawFrame, Session};
use bytes::BytesMut;
use chrono::{DateTime, Utc};

/// The injected receive time: fixed, so a crash replays identically.
pub fn received_at() -> DateTime<Utc> {
    // 2026-03-05T08:15:00Z, the `received_at` of the protocol vectors.
    DateTime::from_timestamp(1_772_698_500, 0).expect("valid timestamp")
}

/// The device the session is pre-identified as when the control byte asks for it (as the
/// vectors' `logged_in_as` does), so frames that need a login reach their decoders too.
pub const DEVICE: &str = "864717003283581";

/// Runs `data` through `proto`'s framer and decoder.
///
/// `data[0]` is a control byte: bits 0..=5 choose the read size, 1..=64 bytes; bit 6 inserts
/// `max_frame + 1` copies of the byte before the stream's midpoint at the midpoint, so the
/// oversized paths (and resynchronisation after them) are reachable whatever libFuzzer's
/// `-max_len` (watch's limit is 128 KiB, trv's 4 KiB) at the cost of one long run of bytes;
/// bit 7 starts the session already identified as [`DEVICE`] (else a login frame must name
/// the device).
/// The rest is the TCP stream, delivered one read at a time into one `BytesMut`; every frame
/// is decoded with one `Session` that lives for the whole stream, like a connection's.
///
/// Checked (any failure is a crash): no panic; after each read the buffer holds at most
/// `max_frame + read size` bytes (a framer never buffers beyond its maximum frame); every
/// `Some` the framer returns consumes bytes from the front of the buffer, exactly as many as
/// the frame's length or the skip's count (no silent loss, no infinite loop).
pub fn run_family(proto: Protocol, max_frame: usize, data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(ctl & 0x3f) + 1;
    let padded;
    let stream = if ctl & 0x40 != 0 && !stream.is_empty() {
        let mid = stream.len().div_ceil(2);
        let mut v = Vec::with_capacity(stream.len() + max_frame + 1);
        v.extend_from_slice(&stream[..mid]);
        v.resize(mid + max_frame + 1, stream[mid - 1]);
        v.extend_from_slice(&stream[mid..]);
        padded = v;
        &padded[..]
    } else {
        stream
    };
    let mut session = Session::default();
    if ctl & 0x80 != 0 {
        session.device_id = Some(DEVICE.to_owned());
    }
    let ctx = Ctx {
        received_at: received_at(),
        peer: "203.0.113.7:40000".into(),
    };
    let mut framer = proto.framer();
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        assert!(
            buf.len() <= max_frame + chunk,
            "{}: buffer holds {} bytes, more than max frame {max_frame} + read {chunk}",
            proto.name(),
            buf.len()
        );
        loop {
            let before = buf.len();
            let Some(raw) = framer.next_frame(&mut buf) else {
                break;
            };
            let consumed = before - buf.len();
            match raw {
                RawFrame::Frame(frame) => {
                    assert!(!frame.is_empty(), "{}: empty frame", proto.name());
                    assert_eq!(
                        consumed,
                        frame.len(),
                        "{}: a frame of {} bytes consumed {consumed} bytes",
                        proto.name(),
                        frame.len()
                    );
                    let out = proto.decode(&frame, &mut session, &ctx);
                    // What the frame log does with the output.
                    for e in &out.events {
                        std::hint::black_box(e.to_json().to_string());
                    }
                    std::hint::black_box(&out.reply);
                }
                RawFrame::Skipped { bytes, reason } => {
                    assert!(bytes > 0, "{}: skipped 0 bytes ({reason})", proto.name());
                    assert_eq!(
                        consumed,
                        bytes,
                        "{}: skip of {bytes} bytes ({reason}) consumed {consumed} bytes",
                        proto.name()
                    );
                }
            }
        }
    }
}
