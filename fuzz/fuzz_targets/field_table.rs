//! `cargo fuzz run field_table`: see `warren_tests::fuzz::field_table`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_tests::fuzz::field_table(data));
