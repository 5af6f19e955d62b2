//! Replays every stored input of every fuzz target on stable: the seeds
//! (`fuzz/corpus/<target>/*`) and the minimised crashes (`fuzz/regressions/<target>/*`), through
//! the same harness the fuzz target runs. A crash found once stays fixed.

use std::path::{Path, PathBuf};

use petrel_fuzz_harness::{run, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files under `fuzz/<kind>/<target>/`, sorted (none if the directory does not exist).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let mut seen = 0;
    for kind in ["corpus", "regressions"] {
        for path in inputs(kind, target) {
            let data = std::fs::read(&path).unwrap();
            eprintln!("{target}: {}", path.display());
            run(target, &data);
            seen += 1;
        }
    }
    assert!(
        seen > 0,
        "{target}: no seed or regression input under fuzz/"
    );
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            replay(stringify!($name));
        }
    )*};
}

replay_tests!(
    virtio_blk,
    virtio_net,
    virtio_rng,
    virtio_vsock,
    legacy_bus,
    acpi_pm,
    kvm_exit,
    kvm_stats,
    loader_kernel,
    loader_cmdline,
    api_http,
    api_request,
    api_config_file,
    snapshot_state,
    mmds_net,
    balloon,
);

#[test]
fn every_target_has_a_replay_test_and_a_fuzz_target() {
    assert_eq!(TARGETS.len(), 16);
    for target in TARGETS {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        assert!(file.is_file(), "{} is missing", file.display());
    }
}
