#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixcache::fuzz::request_path(data));
