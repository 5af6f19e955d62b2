//! Fuzz target `mmds_net`: the harness is `petrel_fuzz_harness::run("mmds_net", _)`, shared with the
//! stable replay tests (crates/fuzz-harness/tests/replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| petrel_fuzz_harness::run("mmds_net", data));
