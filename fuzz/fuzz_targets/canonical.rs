//! The canonical MQTT JSON decoder: the input is the payload of a message on a valid topic.
#![no_main]

use anxin::protocol::canonical;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = canonical::decode(
        "anxin",
        "anxin/devices/fuzz-device_1/events",
        data,
        anxin_fuzz::received_at(),
    );
    assert_eq!(decoded.device_id.as_deref(), Some("fuzz-device_1"));
    assert!(
        !decoded.items.is_empty(),
        "a message decodes to at least one item"
    );
    for item in &decoded.items {
        match item {
            Ok(event) => {
                std::hint::black_box(event.to_json().to_string());
            }
            Err(rejection) => {
                std::hint::black_box(&rejection.detail);
            }
        }
    }
});
