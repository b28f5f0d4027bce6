//! Fuzz target `config`: what it checks of each input is in
//! `checks/config.rs`, which the test suite also runs on the committed seeds
//! (`corpus/config`).

#![no_main]

#[path = "checks/config.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|text: &str| check::input(text));
