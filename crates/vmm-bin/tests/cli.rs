//! End-to-end tests of the `petrel` binary: the seed programs from the README, and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn petrel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run petrel")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kvm_or_skip(name: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    if std::env::var("VMM_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("{name}: /dev/kvm is missing and VMM_REQUIRE_KVM=1");
    }
    eprintln!("SKIPPED {name}: no /dev/kvm on this machine (set VMM_REQUIRE_KVM=1 to fail)");
    false
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn lwn_demo_prints_4() {
    if !kvm_or_skip("lwn_demo_prints_4") {
        return;
    }
    let o = petrel(&[
        "run",
        "--raw",
        "examples/lwn-demo/lwn-demo.bin",
        "--real-mode",
        "--reg",
        "rax=2",
        "--reg",
        "rbx=2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "4\n");
}

#[test]
fn kvmsample_loop_prints_each_value_and_counts_exits() {
    if !kvm_or_skip("kvmsample_loop_prints_each_value_and_counts_exits") {
        return;
    }
    let o = petrel(&[
        "run",
        "--raw",
        "examples/kvmsample-loop/kvmsample-loop.bin",
        "--real-mode",
        "--max-exits",
        "4",
        "--exit-stats",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "port 0x10: 0\nport 0x10: 1\nport 0x10: 2\nport 0x10: 3\n"
    );
    let err = stderr(&o);
    assert!(err.contains("4 exits reached Petrel"), "{err}");
    assert!(err.contains("0x0010"), "{err}");
    assert!(err.contains("median us"), "{err}");
}

#[test]
fn exit_stats_json_is_valid_and_counts_ports() {
    if !kvm_or_skip("exit_stats_json_is_valid_and_counts_ports") {
        return;
    }
    let o = petrel(&[
        "run",
        "--raw",
        "examples/kvmsample-loop/kvmsample-loop.bin",
        "--real-mode",
        "--max-exits",
        "3",
        "--exit-stats=json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let json_start = out.find('{').expect("JSON on stdout");
    let v: serde_json::Value = serde_json::from_str(&out[json_start..]).expect("valid JSON");
    assert_eq!(v["total"]["total"], 3);
    assert_eq!(v["total"]["by_port"][0][0], "0x0010");
    assert_eq!(v["total"]["by_port"][0][1]["count"], 3);
}

#[test]
fn bad_input_exits_2_with_a_message_naming_it() {
    let dir = std::env::temp_dir().join(format!("petrel-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let big = dir.join("big.bin");
    std::fs::write(&big, vec![0u8; 3 << 20]).unwrap();
    let demo = "examples/lwn-demo/lwn-demo.bin";
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--raw".into(), "/nonexistent/x.bin".into()],
            "/nonexistent/x.bin",
        ),
        (
            vec!["--raw".into(), empty.display().to_string()],
            "is empty",
        ),
        (
            vec![
                "--raw".into(),
                big.display().to_string(),
                "--mem".into(),
                "2M".into(),
            ],
            "larger than guest RAM",
        ),
        (
            vec!["--raw".into(), demo.into(), "--reg".into(), "rax2".into()],
            "--reg",
        ),
        (
            vec!["--raw".into(), demo.into(), "--reg".into(), "rzz=1".into()],
            "unknown register",
        ),
        (
            vec![
                "--raw".into(),
                demo.into(),
                "--load-addr".into(),
                "0x40000000".into(),
            ],
            "does not fit in guest RAM",
        ),
        (
            vec!["--raw".into(), demo.into(), "--mem".into(), "0".into()],
            "must not be zero",
        ),
        (
            vec!["--raw".into(), demo.into(), "--mem".into(), "4097".into()],
            "not a multiple",
        ),
    ];
    for (extra, expect) in cases {
        let mut args = vec!["run".to_string(), "--real-mode".to_string()];
        args.extend(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = petrel(&refs);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(expect),
            "{args:?}: expected `{expect}` in: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn usage_errors_exit_2() {
    let o = petrel(&["run", "--raw"]);
    assert_eq!(o.status.code(), Some(2));
    let o = petrel(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}
