//! libFuzzer entry point; the properties are in `ringsocks_fuzz::socks_codecs` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringsocks_fuzz::socks_codecs(data));
