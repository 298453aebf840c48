//! `cargo fuzz run content_header`: see `warren_tests::fuzz::content_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_tests::fuzz::content_header(data));
