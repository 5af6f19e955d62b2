//! Fuzz target `loader_cmdline`: the harness is `petrel_fuzz_harness::run("loader_cmdline", _)`, shared with the
//! stable replay tests (crates/fuzz-harness/tests/replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| petrel_fuzz_harness::run("loader_cmdline", data));
