//! `cargo fuzz run stored_message`: see `warren_tests::fuzz::stored_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_tests::fuzz::stored_message(data));
