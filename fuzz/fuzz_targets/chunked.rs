//! Fuzz target `chunked`: what it checks of each input is in
//! `checks/chunked.rs`, which the test suite also runs on the committed seeds
//! (`corpus/chunked`).

#![no_main]

#[path = "checks/chunked.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::input(data));
