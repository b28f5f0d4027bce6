//! Fuzz target `response_head`: what it checks of each input is in
//! `checks/response_head.rs`, which the test suite also runs on the committed seeds
//! (`corpus/response_head`).

#![no_main]

#[path = "checks/response_head.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::input(data));
