//! The jt808 TCP family: arbitrary bytes in arbitrary reads through `Jt808Framer` and
//! `jt808::decode` with one session (see `anxin_fuzz::run_family` for the input layout).
#![no_main]

use anxin::protocol::tcp::{Protocol, jt808};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    anxin_fuzz::run_family(Protocol::Jt808, jt808::MAX_FRAME_LEN, data);
});
