//! `cargo fuzz run peer_request`: see `warren_tests::fuzz::peer_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_tests::fuzz::peer_request(data));
