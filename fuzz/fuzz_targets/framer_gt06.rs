//! The gt06 TCP family: arbitrary bytes in arbitrary reads through `Gt06Framer` and
//! `gt06::decode` with one session (see `anxin_fuzz::run_family` for the input layout).
#![no_main]

use anxin::protocol::tcp::{Protocol, gt06};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    anxin_fuzz::run_family(Protocol::Gt06, gt06::MAX_FRAME, data);
});
