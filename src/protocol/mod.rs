//! Pure decoders: bytes or JSON in, events and rejections out. No sockets, database or clock:
//! the receive time is an argument. That is what makes vectors, benches and fuzzing cheap.

pub mod canonical;
pub mod profile;
pub mod tcp;

/// Why a message or one object of it was refused. The label values of
/// `anxin_ingest_rejected_total{reason}`; keep them low-cardinality and stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The topic is not `{root}/devices/{device_id}/events`.
    BadTopic,
    /// The device id breaks `[A-Za-z0-9_.:-]{1,64}`.
    BadDeviceId,
    /// Larger than the format's maximum.
    PayloadTooLarge,
    /// Not UTF-8 JSON.
    MalformedJson,
    /// JSON, but neither an object nor an array of objects.
    NotAnObject,
    /// An empty array: nothing to process.
    EmptyArray,
    /// No `type` key.
    MissingType,
    /// A `type` the format does not define.
    UnknownType,
    /// A field missing, of the wrong kind or out of range.
    BadField,
    /// A device frame its decoder could make nothing of.
    BadFrame,
    /// An unregistered device under the `reject` policy (alarms still pass).
    UnknownDevice,
    /// A vendor-profile element that no mapping of its profile applies to.
    Unmapped,
    /// The topic names one device and the payload another.
    DeviceMismatch,
    /// A value of an alarm that could not be used; the alarm was raised without it (the
    /// event is kept: only the value is refused).
    IgnoredField,
    /// A device time too far from the receive time to show; receive time stood in (the event
    /// is kept: only the time is refused).
    ImplausibleTime,
}

impl RejectReason {
    /// Every reason, in declaration order: `anxin_ingest_rejected_total{reason}` shows each
    /// at zero from start-up. A new variant goes here too (a telemetry test checks).
    pub const ALL: [RejectReason; 15] = [
        RejectReason::BadTopic,
        RejectReason::BadDeviceId,
        RejectReason::PayloadTooLarge,
        RejectReason::MalformedJson,
        RejectReason::NotAnObject,
        RejectReason::EmptyArray,
        RejectReason::MissingType,
        RejectReason::UnknownType,
        RejectReason::BadField,
        RejectReason::BadFrame,
        RejectReason::UnknownDevice,
        RejectReason::Unmapped,
        RejectReason::DeviceMismatch,
        RejectReason::IgnoredField,
        RejectReason::ImplausibleTime,
    ];

    /// The metric label and stored reason.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadTopic => "bad_topic",
            RejectReason::BadDeviceId => "bad_device_id",
            RejectReason::PayloadTooLarge => "payload_too_large",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::EmptyArray => "empty_array",
            RejectReason::MissingType => "missing_type",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::BadField => "bad_field",
            RejectReason::BadFrame => "bad_frame",
            RejectReason::UnknownDevice => "unknown_device",
            RejectReason::Unmapped => "unmapped",
            RejectReason::DeviceMismatch => "device_mismatch",
            RejectReason::IgnoredField => "ignored_field",
            RejectReason::ImplausibleTime => "implausible_time",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Rejection {
    /// Whether the refused bytes may be an alarm (they name SOS, fall, smoke or gas): its
    /// refusal is then never hidden by log throttling.
    pub fn may_be_alarm(&self) -> bool {
        let raw = &self.raw[..self.raw.len().min(OVERSIZE_KEPT_BYTES)];
        let lower = raw.to_ascii_lowercase();
        [&b"sos"[..], b"fall", b"smoke", b"gas"]
            .iter()
            .any(|w| lower.windows(w.len()).any(|x| x == *w))
    }
}

/// Bytes of an oversized payload kept with its refusal: enough to see what it was and who
/// sent it, without storing megabytes a broker let through.
pub const OVERSIZE_KEPT_BYTES: usize = 4096;

/// The raw bytes a refusal keeps: the whole payload, or its first [`OVERSIZE_KEPT_BYTES`]
/// when it was refused for its size.
pub fn kept_raw(reason: RejectReason, payload: &[u8]) -> Vec<u8> {
    if reason == RejectReason::PayloadTooLarge || payload.len() > canonical::MAX_PAYLOAD_BYTES {
        payload[..payload.len().min(OVERSIZE_KEPT_BYTES)].to_vec()
    } else {
        payload.to_vec()
    }
}

/// A refused message, or a refused object of an array, with what is needed to inspect it later.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The device, when it could be told.
    pub device_id: Option<String>,
    /// The coarse reason (metric label).
    pub reason: RejectReason,
    /// The precise reason, naming the field and value.
    pub detail: String,
    /// The refused bytes: the whole payload, or the offending array element.
    pub raw: Vec<u8>,
}
