//! The trv TCP family: arbitrary bytes in arbitrary reads through `TrvFramer` and
//! `trv::decode` with one session (see `anxin_fuzz::run_family` for the input layout).
#![no_main]

use anxin::protocol::tcp::{Protocol, trv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    anxin_fuzz::run_family(Protocol::Trv, trv::MAX_FRAME, data);
});
