//! Fuzz target `kvm_exit`: the harness is `petrel_fuzz_harness::run("kvm_exit", _)`, shared with the
//! stable replay tests (crates/fuzz-harness/tests/replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| petrel_fuzz_harness::run("kvm_exit", data));
