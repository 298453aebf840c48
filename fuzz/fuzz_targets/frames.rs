//! `cargo fuzz run frames`: see `warren_tests::fuzz::frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_tests::fuzz::frames(data));
