#![no_main]
//! See `stockade_agent::fuzz::containment_request` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| stockade_agent::fuzz::containment_request(data));
