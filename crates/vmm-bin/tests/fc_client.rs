//! Petrel driven by an existing Firecracker client library, unchanged: firecracker-python
//! 0.0.5 from PyPI, through a link named `firecracker` to the petrel binary.
//!
//! Set-up: a virtual environment under the cargo target directory
//! (`target/tmp/fc-client-venv`, reused once complete) with `firecracker-python==0.0.5` and its
//! pinned dependencies installed by pip; this needs `python3` with the `venv` module (Debian:
//! `python3-venv`) and PyPI. A failed install fails the test: it does not skip. The Python side
//! is `fc_client.py` next to this file; see its docstring for what it checks.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use petrel_demo_guest::keyboard;
use petrel_tests::kvm_present_or_skip;
use support::{wait_until, TempDir};

/// The library and version the test drives Petrel with.
const PACKAGE: &str = "firecracker-python==0.0.5";
/// How long creating the venv and installing the package may take.
const INSTALL_DEADLINE: Duration = Duration::from_secs(300);
/// How long the Python script may run (it gives up by itself after 90 s).
const RUN_DEADLINE: Duration = Duration::from_secs(150);

/// The venv: under the target directory, so `cargo clean` removes it.
fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("fc-client-venv")
}

/// Runs `cmd` to completion within `deadline`, with its output captured; panics with `what`
/// and the output if it cannot start, fails or runs too long.
fn run_or_fail(what: &str, cmd: &mut Command, deadline: Duration, hint: &str) -> String {
    eprintln!("fc_client: {what}: {cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}. {hint}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        // A read error ends the capture; the exit status tells the rest.
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_until(&mut child, Instant::now() + deadline);
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    match status {
        None => panic!("{what}: still running after {deadline:?}, killed\n{out}\n{err}"),
        Some(s) if !s.success() => panic!("{what}: {s}. {hint}\nstdout:\n{out}\nstderr:\n{err}"),
        Some(_) => {
            if !err.is_empty() {
                eprintln!("{err}");
            }
            out
        }
    }
}

/// Creates the venv with the library installed, or reuses a complete one. Fails (does not
/// skip) when python3, its venv module or pip's install does not work.
fn venv_with_library() -> PathBuf {
    let venv = venv_dir();
    let stamp = venv.join("petrel-installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == PACKAGE) {
        eprintln!("fc_client: reusing {} ({PACKAGE})", venv.display());
        return venv;
    }
    // Whatever is there is incomplete: start over.
    let _ = std::fs::remove_dir_all(&venv);
    run_or_fail(
        "creating the venv",
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        INSTALL_DEADLINE,
        "The test needs python3 with its venv module: on Debian, install python3-venv",
    );
    run_or_fail(
        "installing the library",
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--disable-pip-version-check",
            "--no-input",
            PACKAGE,
        ]),
        INSTALL_DEADLINE,
        "pip could not install the package from PyPI (is PyPI reachable?)",
    );
    std::fs::write(&stamp, PACKAGE).unwrap();
    venv
}

#[test]
fn firecracker_python_drives_petrel_unchanged() {
    if !kvm_present_or_skip("firecracker_python_drives_petrel_unchanged") {
        return;
    }
    let started = Instant::now();
    let venv = venv_with_library();
    eprintln!("fc_client: venv ready after {:?}", started.elapsed());

    let dir = TempDir::new("fc-client");
    let firecracker = dir.join("firecracker");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_petrel"), &firecracker).unwrap();
    let version = run_or_fail(
        "firecracker --version",
        Command::new(&firecracker).arg("--version"),
        Duration::from_secs(30),
        "",
    );
    assert_eq!(
        version.lines().next(),
        Some("Firecracker v1.17.0-dev"),
        "{version}"
    );

    let kernel = dir.join("keyboard.elf");
    std::fs::write(&kernel, keyboard::keyboard_guest_elf()).unwrap();
    let rootfs = dir.join("rootfs.img");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fc_client.py");
    let out = run_or_fail(
        "fc_client.py",
        Command::new(venv.join("bin/python"))
            .arg(&script)
            .arg("--binary")
            .arg(&firecracker)
            .arg("--data")
            .arg(dir.join("data"))
            .arg("--kernel")
            .arg(&kernel)
            .arg("--rootfs")
            .arg(&rootfs)
            .args(["--waiting-line", keyboard::WAITING_LINE])
            .args(["--resetting-line", keyboard::RESETTING_LINE]),
        RUN_DEADLINE,
        "",
    );
    eprint!("{out}");
    assert!(
        out.contains("the VMM exited with status 0"),
        "the script passed without its last step:\n{out}"
    );
    eprintln!("fc_client: done in {:?}", started.elapsed());
}
