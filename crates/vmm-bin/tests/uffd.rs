//! The Uffd memory backend from the command line (`petrel restore --uffd-socket`), with the
//! default seccomp filters on: a restored counter guest counts on with its pages served by
//! Petrel's own handler (`petrel_vmm::uffd::serve_pages`, the `uffd_handler` example's work),
//! in a process of its own; killing the handler ends Petrel with a clear error, never a hang;
//! a socket nobody listens on is refused at once, naming the field.

mod support;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use petrel_demo_guest::counter;
use petrel_tests::kvm_present_or_skip;
use support::{wait_until, TempDir};

const DEADLINE: Duration = Duration::from_secs(60);
/// Set in the environment of this test binary run again as the handler process.
const HANDLER_ENV: &str = "PETREL_TEST_UFFD_HANDLER";

/// Not a test of its own: this binary, run again with `HANDLER_ENV=SOCKET:MEMFILE`, is the
/// page-fault handler process (it does nothing otherwise).
#[test]
fn handler_process() {
    let Ok(spec) = std::env::var(HANDLER_ENV) else {
        return;
    };
    let (socket, mem) = spec.split_once(':').unwrap();
    let listener = UnixListener::bind(socket).unwrap();
    let file = std::fs::File::open(mem).unwrap();
    let (stream, _) = listener.accept().unwrap();
    let served = petrel_vmm::uffd::serve_pages(stream, &file).unwrap();
    eprintln!("handler: served {served} pages");
}

fn start_handler(socket: &Path, mem: &Path) -> Child {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "handler_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            HANDLER_ENV,
            format!("{}:{}", socket.display(), mem.display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the handler never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn petrel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_petrel"))
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// A counter guest run until it printed two ticks, then snapshotted into `snap` (SIGUSR1).
fn counter_snapshot(dir: &TempDir, snap: &Path) -> String {
    let kernel = dir.join("counter.elf");
    std::fs::write(&kernel, counter::counter_guest_elf()).unwrap();
    let out = dir.join("out1");
    let mut first = petrel()
        .arg("--kernel")
        .arg(&kernel)
        .args(["--mem", "64M", "--serial"])
        .arg(format!("file:{}", out.display()))
        .arg("--snapshot-on-signal")
        .arg(snap)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while counter::ticks(&read(&out)).len() < 2 {
        assert!(Instant::now() < deadline, "no ticks: {:?}", read(&out));
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our unreaped child.
    assert_eq!(unsafe { libc::kill(first.id() as i32, libc::SIGUSR1) }, 0);
    let status = wait_until(&mut first, Instant::now() + DEADLINE).expect("petrel stops");
    assert!(status.success(), "{}", stderr_of(&mut first));
    read(&out)
}

#[test]
fn a_restored_counter_counts_on_under_our_handler_and_its_death_ends_petrel() {
    let name = "a_restored_counter_counts_on_under_our_handler_and_its_death_ends_petrel";
    if !kvm_present_or_skip(name) {
        return;
    }
    let dir = TempDir::new("uffd-cli");
    let snap = dir.join("snap");
    let before = counter_snapshot(&dir, &snap);
    let socket: PathBuf = dir.join("uffd.sock");
    let mut handler = start_handler(&socket, &snap.join("mem"));
    let out = dir.join("out2");
    let mut restored = petrel()
        .arg("restore")
        .arg(&snap)
        .arg("--uffd-socket")
        .arg(&socket)
        .arg("--serial")
        .arg(format!("file:{}", out.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let had = counter::ticks(&before).len();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ticks = counter::ticks(&(before.clone() + &read(&out)));
        if ticks.len() >= had + 2 {
            let want: Vec<u64> = (0..ticks.len() as u64).collect();
            assert_eq!(ticks, want, "every count once, in order");
            break;
        }
        if let Some(status) = restored.try_wait().unwrap() {
            panic!("petrel exited ({status}): {}", stderr_of(&mut restored));
        }
        assert!(
            Instant::now() < deadline,
            "restored output: {:?}",
            read(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The handler dies: Petrel ends with a clear error and a non-zero exit, not a hang.
    handler.kill().unwrap();
    let _ = handler.wait();
    let status = wait_until(&mut restored, Instant::now() + Duration::from_secs(30))
        .expect("petrel ends once its handler is gone");
    let stderr = stderr_of(&mut restored);
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    assert!(
        stderr.contains("the page-fault handler serving guest memory")
            && stderr.contains("closed its connection"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("seccomp"),
        "{stderr}"
    );
}

#[test]
fn nobody_listening_is_refused_naming_the_socket() {
    if !kvm_present_or_skip("nobody_listening_is_refused_naming_the_socket") {
        return;
    }
    let dir = TempDir::new("uffd-none");
    let snap = dir.join("snap");
    counter_snapshot(&dir, &snap);
    let out = petrel()
        .arg("restore")
        .arg(&snap)
        .arg("--uffd-socket")
        .arg(dir.join("nobody.sock"))
        .args(["--serial", "none"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid mem_backend.backend_path")
            && stderr.contains("nobody.sock")
            && stderr.contains("cannot connect to a page-fault handler there"),
        "{stderr}"
    );
}
