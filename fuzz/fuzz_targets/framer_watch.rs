//! The watch TCP family: arbitrary bytes in arbitrary reads through `WatchFramer` and
//! `watch::decode` with one session (see `anxin_fuzz::run_family` for the input layout).
#![no_main]

use anxin::protocol::tcp::{Protocol, watch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    anxin_fuzz::run_family(Protocol::Watch, watch::MAX_FRAME, data);
});
