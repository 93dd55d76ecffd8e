//! libFuzzer entry point; the properties are in `ringsocks_fuzz::proxy_protocol` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringsocks_fuzz::proxy_protocol(data));
