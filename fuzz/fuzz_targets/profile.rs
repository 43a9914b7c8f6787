//! The vendor-profile mapper: the input's first byte picks a shipped profile, the rest is the
//! MQTT payload on that profile's topic. Checked: no panic, at least one item per message,
//! every event valid against the canonical schema, every rejection keeps its raw bytes.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use anxin::config::profiles;
use anxin::protocol::profile::Profile;
use libfuzzer_sys::fuzz_target;

const SHIPPED: [(&str, &str); 3] = [
    (
        "cat1-smoke-gas.toml",
        include_str!("../../protocols/cat1-smoke-gas.toml"),
    ),
    ("senml.toml", include_str!("../../protocols/senml.toml")),
    (
        "watch-health-json.toml",
        include_str!("../../protocols/watch-health-json.toml"),
    ),
];

fn shipped() -> &'static [Profile] {
    static P: OnceLock<Vec<Profile>> = OnceLock::new();
    P.get_or_init(|| {
        SHIPPED
            .iter()
            .map(|(file, src)| {
                profiles::parse(Path::new(file), src, "anxin")
                    .expect("shipped profiles are valid")
                    .0
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let profile = &shipped()[usize::from(pick) % SHIPPED.len()];
    let topic = profile.topic.text.replace("{device_id}", "861234567890123");
    let device = profile
        .topic
        .matches(&topic)
        .expect("the profile's own topic matches");
    let decoded = profile.decode(&topic, device, payload, anxin_fuzz::received_at());
    assert!(
        !decoded.items.is_empty(),
        "a message decodes to at least one item"
    );
    for item in &decoded.items {
        match item {
            Ok(event) => {
                for (name, value) in &event.fields {
                    assert!(
                        event.event_type.field(name).is_some(),
                        "{} has no field {name} (value {value})",
                        event.event_type
                    );
                }
                assert!(
                    event.event_type.check_fields(&event.fields).is_ok(),
                    "invalid event {:?}",
                    event.to_json()
                );
                std::hint::black_box(event.to_json().to_string());
            }
            Err(rejection) => {
                // The raw bytes are kept: the element, or the whole (possibly empty) payload.
                assert!(
                    !rejection.raw.is_empty() || payload.is_empty(),
                    "rejection without raw bytes: {}",
                    rejection.detail
                );
            }
        }
    }
});
