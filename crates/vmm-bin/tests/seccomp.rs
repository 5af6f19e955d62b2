//! The seccomp filters: a call outside a thread kind's list stops the process with exit code
//! 148 and a line naming the thread and the call; `--seccomp-filter` and `--no-seccomp` work
//! on Petrel's command line and in Firecracker's mode.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use petrel_tests::kvm_present_or_skip as kvm_or_skip;

const EXIT_BAD_SYSCALL: i32 = 148;

fn petrel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args(args)
        .output()
        .expect("run petrel")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("petrel-seccomp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_forbidden_call_on_each_thread_kind_exits_148_naming_the_thread_and_the_call() {
    for (kind, thread) in [
        ("vmm", "main"),
        ("api", "fc_api"),
        ("vcpu", "petrel-vcpu0"),
        ("console", "petrel-console"),
    ] {
        let o = petrel(&["__seccomp-selftest", kind]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(EXIT_BAD_SYSCALL), "{kind}: {err}");
        let expected = format!(
            "petrel: seccomp: thread {thread} ({kind} filter) made system call 41 (socket), \
             which its filter forbids; exiting with code 148"
        );
        assert_eq!(err.trim_end(), expected, "{kind}");
    }
}

/// A filter file where each kind traps only `trapped` (a JSON array of rules) and allows the
/// rest.
fn filter_file(dir: &Path, vcpu_traps: &str) -> PathBuf {
    let filter = |traps: &str| {
        format!(r#"{{"default_action": "allow", "filter_action": "trap", "filter": {traps}}}"#)
    };
    let reboot = r#"[{"syscall": "reboot"}]"#;
    write(
        dir,
        "filters.json",
        &format!(
            r#"{{"vmm": {}, "api": {}, "vcpu": {}}}"#,
            filter(reboot),
            filter(reboot),
            filter(vcpu_traps)
        ),
    )
}

/// A vCPU filter that forbids `KVM_RUN` (0xae80 = 44672).
const TRAP_KVM_RUN: &str = r#"[{"syscall": "ioctl", "args": [
    {"index": 1, "type": "dword", "op": "eq", "val": 44672, "comment": "KVM_RUN"}]}]"#;

#[test]
fn a_filter_file_replaces_the_builtin_filters_and_no_seccomp_turns_them_off() {
    let dir = scratch("file");
    // The selftest's socket() is allowed by this file's vcpu filter.
    let file = filter_file(&dir, r#"[{"syscall": "reboot"}]"#);
    let o = petrel(&["__seccomp-selftest", "vcpu", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("the vcpu filter allowed socket(AF_INET)"));

    // A file without a vcpu filter, and both flags at once, are refused at start.
    let partial = write(
        &dir,
        "partial.json",
        r#"{"vmm": {"default_action": "allow", "filter_action": "trap", "filter": []}}"#,
    );
    let o = petrel(&["demo", "--seccomp-filter", partial.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no `api` filter"), "{}", stderr(&o));
    let o = petrel(&[
        "demo",
        "--no-seccomp",
        "--seccomp-filter",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not both"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_file_is_what_the_vcpu_threads_get_on_petrels_command_line() {
    if !kvm_or_skip("the_file_is_what_the_vcpu_threads_get_on_petrels_command_line") {
        return;
    }
    let dir = scratch("demo");
    let file = filter_file(&dir, TRAP_KVM_RUN);
    let o = petrel(&[
        "demo",
        "--serial",
        "none",
        "--seccomp-filter",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(EXIT_BAD_SYSCALL), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("thread petrel-vcpu0 (vcpu filter) made system call 16 (ioctl)"),
        "{}",
        stderr(&o)
    );
    // The same guest runs to its end with the built-in filters, and with none.
    for extra in [None, Some("--no-seccomp")] {
        let mut args = vec!["demo", "--serial", "none"];
        args.extend(extra);
        let o = petrel(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_file_is_what_the_vcpu_threads_get_in_firecrackers_mode() {
    if !kvm_or_skip("the_file_is_what_the_vcpu_threads_get_in_firecrackers_mode") {
        return;
    }
    let dir = scratch("fc");
    let kernel = dir.join("demo.elf");
    std::fs::write(&kernel, petrel_demo_guest::demo_kernel_elf()).unwrap();
    let config = write(
        &dir,
        "vm.json",
        &format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}},
                 "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}},
                 "drives": []}}"#,
            kernel.display()
        ),
    );
    let file = filter_file(&dir, TRAP_KVM_RUN);
    let o = petrel(&[
        "--no-api",
        "--config-file",
        config.to_str().unwrap(),
        "--seccomp-filter",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(EXIT_BAD_SYSCALL), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("thread fc_vcpu 0 (vcpu filter) made system call 16 (ioctl)"),
        "{}",
        stderr(&o)
    );
    for extra in [None, Some("--no-seccomp")] {
        let mut args = vec!["--no-api", "--config-file", config.to_str().unwrap()];
        args.extend(extra);
        let o = petrel(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
