//! libFuzzer entry point; the properties are in `ringsocks_fuzz::udp_header` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringsocks_fuzz::udp_header(data));
