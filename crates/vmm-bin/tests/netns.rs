//! A tap in a network namespace that `petrel` enters as CNI plugins and firecracker-containerd
//! start the VMM: `setns(2)` into the namespace, `/sys` not remounted (so `/sys/class/net`
//! still shows the namespace that mounted it). The tap must open there, from the command line
//! and through the API, and a tap missing there must be one clear line (exit 2) or a 400.
//!
//! Needs root and `ip` (iproute2) to make the namespace and the tap, and /dev/kvm to run the
//! demo guest; skips with a printed reason without them, fails with `VMM_REQUIRE_KVM=1`.

mod support;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use petrel_demo_guest::RESETTING_LINE;
use petrel_tests::kvm_present_or_skip;
use support::{wait_until, TempDir};

/// How long petrel may take to boot and reset the demo guest (its code runs emulated on the
/// development host), or to create its API socket.
const DEADLINE: Duration = Duration::from_secs(60);
/// The tap made in the namespace: a name the host's own namespace (the one `/sys` shows)
/// does not have.
const TAP: &str = "petrelns0";
/// A name no interface in the namespace has.
const MISSING: &str = "petrelns9";

/// Whether test `name` can run here: /dev/kvm, root and `ip`.
fn can_run(name: &str) -> bool {
    if !kvm_present_or_skip(name) {
        return false;
    }
    // SAFETY: geteuid only reads this process's credentials.
    let why = if unsafe { libc::geteuid() } != 0 {
        "making a network namespace and a tap needs root"
    } else if !Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "`ip` (iproute2) is not installed"
    } else {
        return true;
    };
    if std::env::var("VMM_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("{name}: {why} and VMM_REQUIRE_KVM=1");
    }
    eprintln!("SKIPPED {name}: {why} (set VMM_REQUIRE_KVM=1 to fail)");
    false
}

/// Runs `ip` with `args`; fails the test when it fails.
fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A named network namespace (`ip netns add`) holding the tap [`TAP`]; deleted, with the tap,
/// when dropped, a failed test included.
struct NetNs {
    name: String,
}

impl NetNs {
    fn new(tag: &str) -> NetNs {
        let name = format!("petrel-{tag}-{}", std::process::id());
        // A leftover from a killed run with the same pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ip(&["-n", &ns.name, "tuntap", "add", "dev", TAP, "mode", "tap"]);
        // The point of the test: /sys (this process's mount) does not show the tap.
        assert!(
            !Path::new("/sys/class/net").join(TAP).exists(),
            "the host has an interface {TAP} itself; the test needs a name it lacks"
        );
        ns
    }

    /// Whether the namespace has an interface `dev`.
    fn has(&self, dev: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", dev])
            .output()
            .expect("run ip")
            .status
            .success()
    }

    /// `petrel` with `args`, started in the namespace as a CNI-style launcher does: `setns`
    /// in the child before `exec`, nothing remounted. Output piped, stdin null.
    fn petrel(&self, args: &[&str]) -> Command {
        let ns = File::open(Path::new("/var/run/netns").join(&self.name))
            .expect("open the namespace's file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_petrel"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec and makes one system
        // call, setns(2), which is async-signal-safe; `ns` stays open in the parent (moved
        // into the closure, which the Command keeps) until the child has exec'd.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its tap.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The demo guest's kernel, written into `dir`.
fn demo_kernel(dir: &TempDir) -> PathBuf {
    let kernel = dir.join("demo.elf");
    std::fs::write(&kernel, petrel_demo_guest::demo_kernel_elf()).unwrap();
    kernel
}

/// Waits for `child` (killed past [`DEADLINE`]) and collects its output.
fn finish(mut child: Child) -> Output {
    let status = wait_until(&mut child, Instant::now() + DEADLINE);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    let output = Output {
        status: status.unwrap_or_else(|| {
            panic!(
                "petrel still ran after {DEADLINE:?}, killed; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            )
        }),
        stdout,
        stderr,
    };
    eprintln!(
        "petrel: {}; stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// One request on a fresh connection; the status code and the body.
fn call(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(sock).expect("connect to the API socket");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line[9..12].parse().unwrap();
    let mut len = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Starts `petrel --api-sock` in `ns`, waits for the socket, and configures the demo guest
/// with one network interface on `tap`. Returns the child.
fn api_petrel(ns: &NetNs, dir: &TempDir, sock: &Path, tap: &str) -> Child {
    let mut child = ns
        .petrel(&["--api-sock", sock.to_str().unwrap(), "--id", "netns"])
        .spawn()
        .expect("start petrel");
    let deadline = Instant::now() + DEADLINE;
    while UnixStream::connect(sock).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "petrel exited before serving its socket"
        );
        assert!(Instant::now() < deadline, "no API socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let boot = serde_json::json!({ "kernel_image_path": demo_kernel(dir) }).to_string();
    assert_eq!(call(sock, "PUT", "/boot-source", &boot).0, 204);
    let machine = r#"{"vcpu_count": 1, "mem_size_mib": 128}"#;
    assert_eq!(call(sock, "PUT", "/machine-config", machine).0, 204);
    let net = serde_json::json!({ "iface_id": "eth0", "host_dev_name": tap }).to_string();
    let reply = call(sock, "PUT", "/network-interfaces/eth0", &net);
    assert_eq!(reply.0, 204, "PUT /network-interfaces: {reply:?}");
    child
}

const START: &str = r#"{"action_type": "InstanceStart"}"#;

#[test]
fn a_tap_in_an_entered_network_namespace_opens() {
    let name = "a_tap_in_an_entered_network_namespace_opens";
    if !can_run(name) {
        return;
    }
    let ns = NetNs::new("tap");
    let dir = TempDir::new("netns-tap");
    let kernel = demo_kernel(&dir);

    // The command line: the demo guest boots with the interface and resets.
    let child = ns
        .petrel(&[
            "--kernel",
            kernel.to_str().unwrap(),
            "--net",
            &format!("tap={TAP}"),
        ])
        .spawn()
        .expect("start petrel");
    let o = finish(child);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}");
    assert!(out.contains(RESETTING_LINE), "stdout:\n{out}");

    // The API: PUT /network-interfaces, then InstanceStart.
    let sock = dir.join("api.sock");
    let child = api_petrel(&ns, &dir, &sock, TAP);
    let reply = call(&sock, "PUT", "/actions", START);
    assert_eq!(reply.0, 204, "InstanceStart: {reply:?}");
    let o = finish(child);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}");
    assert!(out.contains(RESETTING_LINE), "stdout:\n{out}");
}

#[test]
fn a_tap_missing_in_an_entered_network_namespace_is_one_line() {
    let name = "a_tap_missing_in_an_entered_network_namespace_is_one_line";
    if !can_run(name) {
        return;
    }
    let ns = NetNs::new("missing");
    let dir = TempDir::new("netns-missing");
    let kernel = demo_kernel(&dir);
    let expected = format!("tap device \"{MISSING}\" does not exist");

    // The command line: exit 2 and one line naming the tap.
    let child = ns
        .petrel(&[
            "--kernel",
            kernel.to_str().unwrap(),
            "--net",
            &format!("tap={MISSING}"),
        ])
        .spawn()
        .expect("start petrel");
    let o = finish(child);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&expected), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    // An interface that is not a tap (every namespace has `lo`): one line saying so.
    let child = ns
        .petrel(&["--kernel", kernel.to_str().unwrap(), "--net", "tap=lo"])
        .spawn()
        .expect("start petrel");
    let o = finish(child);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("\"lo\" is not a tap device"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    // The API: InstanceStart answers 400 with the same words, and nothing started.
    let sock = dir.join("api.sock");
    let mut child = api_petrel(&ns, &dir, &sock, MISSING);
    let (status, body) = call(&sock, "PUT", "/actions", START);
    assert_eq!(status, 400, "{body}");
    let fault: serde_json::Value = serde_json::from_str(&body).unwrap();
    let fault = fault["fault_message"].as_str().unwrap();
    assert!(fault.contains(&expected), "{fault}");
    let (status, body) = call(&sock, "GET", "/", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Not started"), "{body}");
    let _ = child.kill();
    let _ = child.wait();

    // Petrel made no tap of that name (TUNSETIFF would have, as root).
    assert!(!ns.has(MISSING), "a tap {MISSING} was created");
}
