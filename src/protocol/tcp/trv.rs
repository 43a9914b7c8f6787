//! The `trv` family: framer and decoder (not built yet: the framer drops everything so the
//! listener stays off until it is).

use bytes::BytesMut;

use super::{Ctx, FrameOutput, Framer, RawFrame, Session};

/// Splits a `trv` byte stream into frames.
#[derive(Debug, Default)]
pub struct TrvFramer {
    dropped: u64,
}

impl Framer for TrvFramer {
    fn next_frame(&mut self, buf: &mut BytesMut) -> Option<RawFrame> {
        if buf.is_empty() {
            return None;
        }
        let bytes = buf.len();
        buf.clear();
        self.dropped += bytes as u64;
        Some(RawFrame::Skipped {
            bytes,
            reason: "unsupported",
        })
    }
}

/// Decodes one `trv` frame.
pub fn decode(_frame: &[u8], _session: &mut Session, _ctx: &Ctx) -> FrameOutput {
    FrameOutput {
        error: Some(("unsupported", "the trv decoder is not built yet".into())),
        ..Default::default()
    }
}
