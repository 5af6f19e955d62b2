//! Fuzz target `api_request`: the harness is `petrel_fuzz_harness::run("api_request", _)`, shared with the
//! stable replay tests (crates/fuzz-harness/tests/replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| petrel_fuzz_harness::run("api_request", data));
