#![no_main]
//! See `stockade_agent::fuzz::cgroup_path` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| stockade_agent::fuzz::cgroup_path(data));
