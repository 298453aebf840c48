//! `cargo fuzz run method`: see `warren_tests::fuzz::method`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_tests::fuzz::method(data));
