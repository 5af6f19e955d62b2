//! How `petrel` ends on a stop signal (SIGINT, SIGTERM, SIGHUP): it stops the guest and cleans
//! up (terminal mode restored, API socket removed, statistics printed), then dies by the same
//! signal, so that its parent sees it killed by that signal, as a client waiting on Firecracker
//! after `StopVMM` expects. Under the name `firecracker` it ends as Firecracker does: killed by
//! SIGINT and SIGTERM (left at their default action), exit code 156 on SIGHUP (its handler).

mod support;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use petrel_demo_guest::keyboard;
use petrel_tests::kvm_present_or_skip;
use support::{wait_until, TempDir};

/// How long petrel may take to start its guest, or to end after a signal (the guest's code
/// runs emulated on the development host).
const DEADLINE: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A child whose stdout and stderr are collected on threads.
struct Running {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

impl Running {
    /// Spawns `cmd` with stdout and stderr piped.
    fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start petrel");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), out.clone()),
            collect(child.stderr.take().unwrap(), err.clone()),
        ];
        Running {
            child,
            out,
            err,
            readers,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Waits until `ready` holds (checked every 20 ms); fails if petrel exits first or past
    /// [`DEADLINE`].
    fn wait_for(&mut self, what: &str, mut ready: impl FnMut(&Running) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !ready(self) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("petrel ended ({status}) before {what}: {}", self.stderr());
            }
            assert!(Instant::now() < deadline, "no {what}: {}", self.stderr());
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig`, waits for the end, and returns the status and stderr.
    fn signal_and_wait(mut self, sig: libc::c_int) -> (ExitStatus, String) {
        // SAFETY: kill(2) on our own child, not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        let status = wait_until(&mut self.child, Instant::now() + DEADLINE);
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let err = self.stderr();
        let status = status.unwrap_or_else(|| panic!("petrel still ran, killed: {err}"));
        eprintln!("{status}; stderr:\n{err}");
        (status, err)
    }
}

/// `petrel run` of the endless kvmsample loop, its console on stdio.
fn endless_guest() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_petrel"));
    cmd.args([
        "run",
        "--raw",
        "examples/kvmsample-loop/kvmsample-loop.bin",
        "--real-mode",
        "--exit-stats",
    ])
    .current_dir(repo_root());
    cmd
}

/// A pseudo-terminal: the master, and the slave opened without becoming this process's
/// controlling terminal.
fn pty() -> (OwnedFd, File, PathBuf) {
    // SAFETY: posix_openpt returns a new descriptor or -1, checked.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(
        master >= 0,
        "posix_openpt: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt/unlockpt on our master; ptsname_r writes at most `name.len()` bytes.
    unsafe {
        assert_eq!(libc::grantpt(master.as_raw_fd()), 0);
        assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
        assert_eq!(
            libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()),
            0
        );
    }
    // SAFETY: ptsname_r wrote a NUL-terminated path.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    let path = PathBuf::from(path.to_str().unwrap());
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)
        .expect("open the pty's slave");
    (master, slave, path)
}

/// The terminal's local modes (`c_lflag`).
fn lflag(tty: &File) -> libc::tcflag_t {
    // SAFETY: termios is plain data; tcgetattr fills it for our descriptor.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::tcgetattr(tty.as_raw_fd(), &mut t) }, 0);
    t.c_lflag
}

#[test]
fn petrel_stops_cleans_up_and_dies_by_the_stop_signal() {
    if !kvm_present_or_skip("petrel_stops_cleans_up_and_dies_by_the_stop_signal") {
        return;
    }
    let dir = TempDir::new("signals-own");
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // The metrics file is written once a second while the guest runs, and at the end.
        let metrics = dir.join(&format!("metrics-{sig}.json"));
        let mut petrel = Running::spawn(
            endless_guest()
                .arg("--metrics")
                .arg(&metrics)
                .stdin(Stdio::null()),
        );
        petrel.wait_for("the guest running", |_| metrics.exists());
        let (status, err) = petrel.signal_and_wait(sig);
        assert_eq!(status.signal(), Some(sig), "{status}: {err}");
        assert!(err.contains("stopped the guest on SIG"), "{err}");
        assert!(
            err.contains("exits reached Petrel"),
            "statistics first: {err}"
        );
        let last: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
        assert_eq!(
            last["running"], false,
            "the final metrics were written: {last}"
        );
    }
}

#[test]
fn petrel_restores_the_terminal_before_dying_by_sigterm() {
    if !kvm_present_or_skip("petrel_restores_the_terminal_before_dying_by_sigterm") {
        return;
    }
    let (_master, slave, path) = pty();
    let before = lflag(&slave);
    assert_ne!(before & libc::ICANON, 0, "a new pty is in canonical mode");
    let stdin = File::open(&path).unwrap();
    let mut cmd = endless_guest();
    cmd.stdin(stdin);
    // SAFETY: between fork and exec the closure makes two system calls (setsid, ioctl), both
    // async-signal-safe: petrel leads a new session whose controlling terminal is the pty,
    // in the foreground, as in an interactive shell.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut petrel = Running::spawn(&mut cmd);
    petrel.wait_for("raw mode", |_| lflag(&slave) & libc::ICANON == 0);
    let (status, err) = petrel.signal_and_wait(libc::SIGTERM);
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}: {err}");
    assert_eq!(
        lflag(&slave),
        before,
        "the terminal's modes were not restored"
    );
}

/// A directory with a `firecracker` link to petrel, and the keyboard guest in a config file.
fn firecracker_setup(dir: &TempDir) -> (PathBuf, PathBuf) {
    let firecracker = dir.join("firecracker");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_petrel"), &firecracker).unwrap();
    let kernel = dir.join("keyboard.elf");
    std::fs::write(&kernel, keyboard::keyboard_guest_elf()).unwrap();
    let config = dir.join("vm.json");
    let doc = serde_json::json!({
        "boot-source": { "kernel_image_path": kernel },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
    });
    std::fs::write(&config, doc.to_string()).unwrap();
    (firecracker, config)
}

#[test]
fn as_firecracker_it_ends_as_firecracker_does() {
    if !kvm_present_or_skip("as_firecracker_it_ends_as_firecracker_does") {
        return;
    }
    let dir = TempDir::new("signals-fc");
    let (firecracker, config) = firecracker_setup(&dir);
    let sock = dir.join("fc.sock");
    let run = |args: &[&Path]| {
        let mut cmd = Command::new(&firecracker);
        cmd.args(args).stdin(Stdio::null());
        Running::spawn(&mut cmd)
    };
    let running_guest = || {
        let mut p = run(&[
            Path::new("--api-sock"),
            &sock,
            Path::new("--config-file"),
            &config,
        ]);
        p.wait_for("the guest's line", |p| {
            p.stdout().contains(keyboard::WAITING_LINE)
        });
        p
    };

    // A running guest and SIGTERM or SIGINT: killed by the signal, the socket removed.
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let (status, err) = running_guest().signal_and_wait(sig);
        assert_eq!(status.signal(), Some(sig), "{status}: {err}");
        assert!(!sock.exists(), "{} is left behind", sock.display());
    }
    // SIGHUP: Firecracker's own exit code for it.
    let (status, err) = running_guest().signal_and_wait(libc::SIGHUP);
    assert_eq!(status.code(), Some(156), "{status}: {err}");
    assert!(!sock.exists(), "{} is left behind", sock.display());

    // Before the guest starts, waiting for API requests: the same.
    let mut waiting = run(&[Path::new("--api-sock"), &sock]);
    waiting.wait_for("the API socket", |_| UnixStream::connect(&sock).is_ok());
    let (status, err) = waiting.signal_and_wait(libc::SIGTERM);
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}: {err}");
    assert!(!sock.exists(), "{} is left behind", sock.display());
}
