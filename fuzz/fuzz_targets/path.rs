//! Fuzz target `path`: what it checks of each input is in
//! `checks/path.rs`, which the test suite also runs on the committed seeds
//! (`corpus/path`).

#![no_main]

#[path = "checks/path.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|raw: &str| check::input(raw));
