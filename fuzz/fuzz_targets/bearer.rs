//! Fuzz target `bearer`: what it checks of each input is in
//! `checks/bearer.rs`, which the test suite also runs on the committed seeds
//! (`corpus/bearer`).

#![no_main]

#[path = "checks/bearer.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::input(data));
