//! Fuzz target `jwt`: what it checks of each input is in
//! `checks/jwt.rs`, which the test suite also runs on the committed seeds
//! (`corpus/jwt`).

#![no_main]

#[path = "checks/jwt.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::input(data));
