//! Fuzz target `balloon`: the harness is `petrel_fuzz_harness::run("balloon", _)`, shared with the
//! stable replay tests (crates/fuzz-harness/tests/replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| petrel_fuzz_harness::run("balloon", data));
