//! `cargo fuzz run connection`: see `warren_tests::fuzz::connection`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_tests::fuzz::connection(data));
