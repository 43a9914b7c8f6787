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
}

impl RejectReason {
    /// Every reason, in declaration order: `anxin_ingest_rejected_total{reason}` shows each
    /// at zero from start-up. A new variant goes here too (a telemetry test checks).
    pub const ALL: [RejectReason; 13] = [
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
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
