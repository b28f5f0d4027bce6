//! Fuzz target `request_head`: what it checks of each input is in
//! `checks/request_head.rs`, which the test suite also runs on the committed seeds
//! (`corpus/request_head`).

#![no_main]

#[path = "checks/request_head.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::input(data));
