//! Firecracker's REST API, end to end: `petrel --api-sock` driven over plain HTTP/1.1 on its
//! Unix socket, as Firecracker's clients drive it; `--config-file --no-api`; the command-line
//! mistakes; and clients that misbehave while a guest runs.
//!
//! The running-guest tests boot the keyboard guest (`petrel_demo_guest::keyboard_guest_elf`),
//! which prints a line and then waits for Ctrl-Alt-Del, so that there is time to inspect,
//! pause and resume it; `SendCtrlAltDel` makes it reset, and `petrel` exits 0.

mod support;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use petrel_demo_guest::{counter, keyboard};
use petrel_tests::kvm_present_or_skip;
use serde_json::Value;
use support::{wait_until, TempDir};

/// How long `petrel` may take to create its socket, to print a guest line, or to exit after
/// the guest resets. Generous: the guest's kernel code runs emulated on the development host.
const DEADLINE: Duration = Duration::from_secs(60);
/// How long a client waits for one answer before the test fails (no test waits this long
/// when Petrel works).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Firecracker's (and Petrel's) largest request body.
const MAX_PAYLOAD: usize = 51_200;

/// One HTTP response.
#[derive(Debug)]
struct Reply {
    /// The status code.
    status: u16,
    /// Header names (lower case) and values.
    headers: Vec<(String, String)>,
    /// The body, `Content-Length` bytes.
    body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `fault_message` of a 400 answer.
    fn fault(&self) -> String {
        assert_eq!(self.status, 400, "expected a fault, got {self:?}");
        let json = self.json();
        json["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message in {json}"))
            .to_string()
    }

    /// The value of header `name` (lower case), if present.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 client on one connection to the API socket (kept alive between requests).
struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the API socket.
    fn connect(sock: &Path) -> Client {
        let stream = UnixStream::connect(sock)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", sock.display()));
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        let writer = stream.try_clone().unwrap();
        Client {
            reader: BufReader::new(stream),
            writer,
        }
    }

    /// Sends one request (with a JSON body if `body` is given) and reads the answer.
    fn send(&mut self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n");
        if let Some(body) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or_default());
        self.writer
            .write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("cannot send {method} {path}: {e}"));
        self.read_reply()
            .unwrap_or_else(|e| panic!("no answer to {method} {path}: {e}"))
    }

    /// Reads one response: the status line, the headers, then `Content-Length` bytes.
    fn read_reply(&mut self) -> io::Result<Reply> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end_matches(['\r', '\n']);
            if header.is_empty() {
                break;
            }
            let (name, value) = header
                .split_once(':')
                .ok_or_else(|| io::Error::other(format!("bad header {header:?}")))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let len = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(Ok(0), |(_, v)| v.parse::<usize>())
            .map_err(io::Error::other)?;
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Whether the server has closed the connection: a read finds its end (or a reset, which
    /// is how a Unix socket closed with unread input ends).
    fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        }
    }
}

/// One request on a fresh connection.
fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> Reply {
    Client::connect(sock).send(method, path, body)
}

/// Reads `from` to its end on a thread, into `into`.
fn capture<R: Read + Send + 'static>(mut from: R, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // A read error ends the capture; the assertions on what arrived tell the rest.
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// A `petrel` process with its stdout and stderr captured; killed when dropped if still
/// running.
struct Petrel {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Petrel {
    /// Starts `petrel` with `args`, stdin null.
    fn start(args: &[&str]) -> Petrel {
        Petrel::start_program(Path::new(env!("CARGO_BIN_EXE_petrel")), args)
    }

    /// Starts `program` (`petrel` or a link to it) with `args`, stdin null.
    fn start_program(program: &Path, args: &[&str]) -> Petrel {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start petrel");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            capture(child.stdout.take().unwrap(), stdout.clone()),
            capture(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Petrel {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Starts `petrel --api-sock <sock> --id <id>` and waits until the socket takes
    /// connections. (The file appears when the socket is bound, a moment before it listens:
    /// a connection in between is refused, so the wait is for a connection, not the file.)
    fn serve(sock: &Path, id: &str) -> Petrel {
        Petrel::serve_with(sock, id, &[])
    }

    /// [`Petrel::serve`] with `extra` arguments.
    fn serve_with(sock: &Path, id: &str, extra: &[&str]) -> Petrel {
        let mut args = vec!["--api-sock", sock.to_str().unwrap(), "--id", id];
        args.extend_from_slice(extra);
        let mut petrel = Petrel::start(&args);
        let deadline = Instant::now() + DEADLINE;
        while UnixStream::connect(sock).is_err() {
            if let Some(status) = petrel.child.try_wait().unwrap() {
                panic!(
                    "petrel exited ({status}) before creating {}: {}",
                    sock.display(),
                    petrel.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} takes no connections after {DEADLINE:?}",
                sock.display()
            );
            thread::sleep(Duration::from_millis(10));
        }
        petrel
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until the guest's output contains `text`; fails past [`DEADLINE`].
    fn wait_for_output(&mut self, text: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.stdout().contains(text) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "petrel exited ({status}) before printing {text:?}; stdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} after {DEADLINE:?}; stdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit (fails past [`DEADLINE`]) and for its output to end.
    fn finish(mut self) -> (ExitStatus, String, String) {
        let status = wait_until(&mut self.child, Instant::now() + DEADLINE);
        for reader in self.readers.drain(..) {
            reader.join().expect("output reader");
        }
        let (out, err) = (self.stdout(), self.stderr());
        let status = status.unwrap_or_else(|| {
            panic!("petrel still ran after {DEADLINE:?}, killed; stdout:\n{out}\nstderr:\n{err}")
        });
        (status, out, err)
    }
}

impl Drop for Petrel {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes the keyboard guest and a 1 MiB disk image into `dir`; returns their paths.
fn guest_files(dir: &TempDir) -> (PathBuf, PathBuf) {
    let kernel = dir.join("keyboard.elf");
    std::fs::write(&kernel, keyboard::keyboard_guest_elf()).unwrap();
    let disk = dir.join("rootfs.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    (kernel, disk)
}

/// `GET /`'s state.
fn state(sock: &Path) -> String {
    let reply = call(sock, "GET", "/", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()["state"].as_str().unwrap().to_string()
}

/// Configures the keyboard guest with `vcpus` vCPUs and 128 MiB, and a root drive.
fn configure(sock: &Path, kernel: &Path, disk: &Path, vcpus: u32) {
    let boot = serde_json::json!({
        "kernel_image_path": kernel,
        "boot_args": "console=ttyS0 reboot=k panic=1",
    });
    let reply = call(sock, "PUT", "/boot-source", Some(&boot.to_string()));
    assert_eq!(reply.status, 204, "PUT /boot-source: {reply:?}");
    let machine = serde_json::json!({ "vcpu_count": vcpus, "mem_size_mib": 128 });
    let reply = call(sock, "PUT", "/machine-config", Some(&machine.to_string()));
    assert_eq!(reply.status, 204, "PUT /machine-config: {reply:?}");
    let drive = serde_json::json!({
        "drive_id": "rootfs",
        "path_on_host": disk,
        "is_root_device": true,
        "is_read_only": false,
    });
    let reply = call(sock, "PUT", "/drives/rootfs", Some(&drive.to_string()));
    assert_eq!(reply.status, 204, "PUT /drives/rootfs: {reply:?}");
}

/// `InstanceStart`, then waits for the guest's first line.
fn start_guest(petrel: &mut Petrel, sock: &Path) {
    let reply = call(
        sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(reply.status, 204, "InstanceStart: {reply:?}");
    petrel.wait_for_output(keyboard::WAITING_LINE);
}

/// `SendCtrlAltDel`, then checks that the guest saw it, that `petrel` exits 0 and that the
/// socket file is gone.
fn ctrl_alt_del_ends_it(petrel: Petrel, sock: &Path) {
    let reply = call(
        sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"SendCtrlAltDel"}"#),
    );
    assert_eq!(reply.status, 204, "SendCtrlAltDel: {reply:?}");
    let (status, out, err) = petrel.finish();
    assert!(
        out.contains(keyboard::RESETTING_LINE),
        "the guest did not see Ctrl-Alt-Del; stdout:\n{out}\nstderr:\n{err}"
    );
    assert_eq!(status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(!sock.exists(), "{} is left behind", sock.display());
}

#[test]
fn configure_start_pause_resume_and_ctrl_alt_del() {
    if !kvm_present_or_skip("configure_start_pause_resume_and_ctrl_alt_del") {
        return;
    }
    let started = Instant::now();
    let dir = TempDir::new("api-life");
    let (kernel, disk) = guest_files(&dir);
    let sock = dir.join("api.sock");
    let mut petrel = Petrel::serve(&sock, "test-vm");

    let info = call(&sock, "GET", "/", None);
    assert_eq!(info.status, 200, "{info:?}");
    assert_eq!(info.header("content-type"), Some("application/json"));
    let info = info.json();
    assert_eq!(info["id"], "test-vm", "{info}");
    assert_eq!(info["state"], "Not started", "{info}");

    configure(&sock, &kernel, &disk, 2);
    let config = call(&sock, "GET", "/vm/config", None);
    assert_eq!(config.status, 200, "{config:?}");
    let config = config.json();
    assert_eq!(
        config["boot-source"]["kernel_image_path"],
        kernel.to_str().unwrap(),
        "{config}"
    );
    assert_eq!(config["machine-config"]["vcpu_count"], 2, "{config}");
    assert_eq!(config["machine-config"]["mem_size_mib"], 128, "{config}");
    let drives = config["drives"].as_array().expect("drives");
    assert_eq!(drives.len(), 1, "{config}");
    assert_eq!(drives[0]["drive_id"], "rootfs");
    assert_eq!(drives[0]["path_on_host"], disk.to_str().unwrap());
    assert_eq!(drives[0]["is_root_device"], true);

    start_guest(&mut petrel, &sock);
    assert_eq!(state(&sock), "Running");

    // The configuration is fixed once the guest runs.
    let boot = serde_json::json!({ "kernel_image_path": kernel }).to_string();
    let fault = call(&sock, "PUT", "/boot-source", Some(&boot)).fault();
    assert!(fault.contains("before the VM starts"), "{fault}");
    let fault = call(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    )
    .fault();
    assert!(fault.contains("InstanceStart"), "{fault}");

    let reply = call(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(reply.status, 204, "pause: {reply:?}");
    assert_eq!(state(&sock), "Paused");
    let reply = call(&sock, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    assert_eq!(reply.status, 204, "resume: {reply:?}");
    assert_eq!(state(&sock), "Running");

    ctrl_alt_del_ends_it(petrel, &sock);
    eprintln!(
        "configured, ran, paused, resumed and reset in {:?}",
        started.elapsed()
    );
}

#[test]
fn bad_requests_get_400_with_a_fault_message_naming_the_problem() {
    // No guest starts here: this needs no KVM.
    let dir = TempDir::new("api-bad");
    let (kernel, disk) = guest_files(&dir);
    let sock = dir.join("api.sock");
    let petrel = Petrel::serve(&sock, "test-vm");

    let drive = |body_id: &str| {
        serde_json::json!({
            "drive_id": body_id,
            "path_on_host": disk,
            "is_root_device": true,
        })
        .to_string()
    };
    // (method, path, body, words the fault_message must contain)
    let cases: Vec<(&str, String, Option<String>, Vec<&str>)> = vec![
        (
            "PUT",
            "/machine-config".into(),
            Some(r#"{"vcpu_count":1,"mem_size_mib":128,"bogus":1}"#.into()),
            vec!["unknown field", "bogus"],
        ),
        (
            "PUT",
            "/drives/rootfs".into(),
            Some(drive("other")),
            vec!["rootfs", "other", "does not match"],
        ),
        (
            "PUT",
            "/drives/bad.id".into(),
            Some(drive("bad.id")),
            vec!["drive_id", "bad.id"],
        ),
        (
            "PUT",
            "/boot-source".into(),
            None,
            vec!["empty", "/boot-source"],
        ),
        ("GET", "/no-such-route".into(), None, vec!["/no-such-route"]),
        (
            "PUT",
            "/actions".into(),
            Some(r#"{"action_type":"InstanceStart"}"#.into()),
            vec!["boot source"],
        ),
        (
            "PATCH",
            "/vm".into(),
            Some(r#"{"state":"Paused"}"#.into()),
            vec!["InstanceStart"],
        ),
    ];
    let mut client = Client::connect(&sock);
    for (method, path, body, words) in &cases {
        let fault = client.send(method, path, body.as_deref()).fault();
        for word in words {
            assert!(
                fault.contains(word),
                "{method} {path}: {fault:?} does not mention {word:?}"
            );
        }
        eprintln!("{method} {path}: 400 {fault}");
    }

    // A body over the limit is refused, and that connection closed.
    let big = format!(r#"{{"kernel_image_path":"{}"}}"#, "a".repeat(MAX_PAYLOAD));
    let mut client = Client::connect(&sock);
    let fault = client.send("PUT", "/boot-source", Some(&big)).fault();
    assert!(fault.contains(&MAX_PAYLOAD.to_string()), "{fault}");
    assert!(
        client.is_closed(),
        "the connection stays open after an oversized body"
    );

    // None of that configured anything.
    let config = call(&sock, "GET", "/vm/config", None).json();
    assert_eq!(
        config["drives"].as_array().map(Vec::len),
        Some(0),
        "{config}"
    );
    // (Firecracker's boot source before any PUT: an empty kernel path.)
    assert_eq!(config["boot-source"]["kernel_image_path"], "", "{config}");
    assert_eq!(state(&sock), "Not started");
    // A good request still works.
    let boot = serde_json::json!({ "kernel_image_path": kernel }).to_string();
    assert_eq!(call(&sock, "PUT", "/boot-source", Some(&boot)).status, 204);

    // SIGTERM before the guest starts: the socket removed, then ended by the signal.
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for yet.
    let rc = unsafe { libc::kill(petrel.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    let (status, _, err) = petrel.finish();
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "{status}; stderr:\n{err}"
    );
    assert!(!sock.exists(), "{} is left behind", sock.display());
}

#[test]
fn config_file_without_api_boots_the_demo_guest() {
    if !kvm_present_or_skip("config_file_without_api_boots_the_demo_guest") {
        return;
    }
    let dir = TempDir::new("api-config");
    let kernel = dir.join("demo.elf");
    std::fs::write(&kernel, petrel_demo_guest::demo_kernel_elf()).unwrap();
    let config = dir.join("vm.json");
    let doc = serde_json::json!({
        "boot-source": { "kernel_image_path": kernel },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
    });
    std::fs::write(&config, doc.to_string()).unwrap();
    let petrel = Petrel::start(&[
        "--config-file",
        config.to_str().unwrap(),
        "--no-api",
        "--id",
        "from-file",
    ]);
    let (status, out, err) = petrel.finish();
    assert_eq!(status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for line in [
        petrel_demo_guest::GREETING_LINE,
        "memory: ",
        petrel_demo_guest::RESETTING_LINE,
    ] {
        assert!(out.contains(line), "{line:?} missing; stdout:\n{out}");
    }
}

/// Runs `program args` (stdin null) and checks that it exits 2 with one line on stderr that
/// contains every one of `words`.
fn exits_2_with_one_line_from(program: &Path, args: &[&str], words: &[&str]) {
    let (status, out, err) = Petrel::start_program(program, args).finish();
    assert_eq!(
        status.code(),
        Some(2),
        "{args:?}: stdout:\n{out}\nstderr:\n{err}"
    );
    assert_eq!(err.lines().count(), 1, "{args:?}: one line wanted:\n{err}");
    for word in words {
        assert!(
            err.contains(word),
            "{args:?}: {err:?} does not mention {word:?}"
        );
    }
}

/// [`exits_2_with_one_line_from`] for `petrel` itself.
fn exits_2_with_one_line(args: &[&str], words: &[&str]) {
    exits_2_with_one_line_from(Path::new(env!("CARGO_BIN_EXE_petrel")), args, words);
}

#[test]
fn command_line_mistakes_exit_2_with_one_line() {
    let dir = TempDir::new("api-cli");
    let sock = dir.join("api.sock");
    let sock = sock.to_str().unwrap();
    // Under either name the message names both flags.
    let firecracker = dir.join("firecracker");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_petrel"), &firecracker).unwrap();
    exits_2_with_one_line_from(&firecracker, &["--no-api"], &["--no-api", "--config-file"]);
    exits_2_with_one_line(&["--no-api"], &["--no-api", "--config-file"]);
    exits_2_with_one_line(
        &["--api-sock", sock, "--id", "bad_id!"],
        &["--id", "bad_id!"],
    );
    assert!(!Path::new(sock).exists(), "a refused start left {sock}");

    // A socket someone else serves is neither taken over nor removed.
    let _other = UnixListener::bind(sock).unwrap();
    exits_2_with_one_line(&["--api-sock", sock, "--id", "second"], &[sock]);
    assert!(
        UnixStream::connect(sock).is_ok(),
        "the other server's socket was removed"
    );
}

#[test]
fn hostile_clients_leave_the_api_and_the_guest_running() {
    if !kvm_present_or_skip("hostile_clients_leave_the_api_and_the_guest_running") {
        return;
    }
    let dir = TempDir::new("api-hostile");
    let (kernel, disk) = guest_files(&dir);
    let sock = dir.join("api.sock");
    let mut petrel = Petrel::serve(&sock, "test-vm");
    configure(&sock, &kernel, &disk, 1);
    start_guest(&mut petrel, &sock);

    // 1 000 connections, opened and dropped at once.
    let started = Instant::now();
    for _ in 0..1000 {
        drop(UnixStream::connect(&sock).expect("connect"));
    }
    eprintln!(
        "1000 connections opened and dropped in {:?}",
        started.elapsed()
    );
    assert_eq!(state(&sock), "Running");

    // Garbage: not HTTP at all. Petrel answers 400 and closes the connection.
    let mut client = Client::connect(&sock);
    let mut garbage = vec![0u8, 0xff, 0x7f, b'\r', b'\n', 0x1b];
    let mut x: u32 = 0x1234_5678;
    garbage.extend((0..2048).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x.to_le_bytes()[0]
    }));
    garbage.extend_from_slice(b"\r\n\r\n");
    client.writer.write_all(&garbage).unwrap();
    let reply = client.read_reply().expect("an answer to garbage");
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(
        client.is_closed(),
        "the connection stays open after garbage"
    );

    // Slowloris: one byte per 100 ms of a request that never ends (30 bytes, about 3 s),
    // while another client's requests, sent all along, are answered.
    const SLOW_BYTES: usize = 30;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let slow = {
        let (stop, sent, sock) = (stop.clone(), sent.clone(), sock.clone());
        thread::spawn(move || -> io::Result<()> {
            let mut stream = UnixStream::connect(&sock)?;
            let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
            let mut bytes = request.iter().copied().chain(std::iter::repeat(b'a'));
            while !stop.load(Ordering::Relaxed) {
                if sent.load(Ordering::Relaxed) < SLOW_BYTES {
                    stream.write_all(&[bytes.next().unwrap()])?;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
    };
    let mut client = Client::connect(&sock);
    let mut answered = 0;
    while answered < 20 || sent.load(Ordering::Relaxed) < SLOW_BYTES {
        // Half on the kept-alive connection, half on new ones.
        let reply = if answered % 2 == 0 {
            client.send("GET", "/", None)
        } else {
            call(&sock, "GET", "/", None)
        };
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json()["state"], "Running");
        answered += 1;
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    slow.join()
        .unwrap()
        .expect("the slow client was cut off early");
    eprintln!("{answered} requests answered while a slow client sent {SLOW_BYTES} bytes");

    // An oversized body: 400, then the connection is closed.
    let mut client = Client::connect(&sock);
    let big = "x".repeat(MAX_PAYLOAD + 1);
    let fault = client.send("PUT", "/drives/data", Some(&big)).fault();
    assert!(fault.contains(&MAX_PAYLOAD.to_string()), "{fault}");
    assert!(client.is_closed(), "the connection stays open");

    // The API answers and the guest still runs: it sees Ctrl-Alt-Del and resets.
    assert_eq!(state(&sock), "Running");
    assert!(petrel.running(), "stderr:\n{}", petrel.stderr());
    ctrl_alt_del_ends_it(petrel, &sock);
}

/// Configures the counter guest (128 MiB, dirty pages tracked) and starts it; waits for its
/// first tick.
fn start_counter_guest(petrel: &mut Petrel, sock: &Path, kernel: &Path) {
    let boot = serde_json::json!({ "kernel_image_path": kernel });
    let reply = call(sock, "PUT", "/boot-source", Some(&boot.to_string()));
    assert_eq!(reply.status, 204, "PUT /boot-source: {reply:?}");
    let machine =
        serde_json::json!({ "vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true });
    let reply = call(sock, "PUT", "/machine-config", Some(&machine.to_string()));
    assert_eq!(reply.status, 204, "PUT /machine-config: {reply:?}");
    let reply = call(
        sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(reply.status, 204, "InstanceStart: {reply:?}");
    petrel.wait_for_output(&format!("{}0\r\n", counter::TICK_PREFIX));
}

fn patch_vm(sock: &Path, state: &str) {
    let reply = call(
        sock,
        "PATCH",
        "/vm",
        Some(&format!(r#"{{"state": "{state}"}}"#)),
    );
    assert_eq!(reply.status, 204, "PATCH /vm {state}: {reply:?}");
}

fn create_snapshot(sock: &Path, kind: &str, state: &Path, mem: &Path) -> Reply {
    let body = serde_json::json!({
        "snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem,
    });
    call(sock, "PUT", "/snapshot/create", Some(&body.to_string()))
}

/// Waits until the counts in `before` followed by `petrel`'s output reach `n` more than in
/// `before`; checks they count on one by one.
fn counts_on(petrel: &mut Petrel, before: &str, n: usize) {
    let deadline = Instant::now() + DEADLINE;
    let had = counter::ticks(before).len();
    loop {
        let all = format!("{before}{}", petrel.stdout());
        let ticks = counter::ticks(&all);
        if ticks.len() >= had + n {
            let want: Vec<u64> = (0..ticks.len() as u64).collect();
            assert_eq!(ticks, want, "every count once, in order");
            return;
        }
        assert!(
            petrel.running(),
            "petrel exited; stderr:\n{}",
            petrel.stderr()
        );
        assert!(Instant::now() < deadline, "output: {all:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn snapshots_full_and_diff_over_the_api_load_in_fresh_processes() {
    if !kvm_present_or_skip("snapshots_full_and_diff_over_the_api_load_in_fresh_processes") {
        return;
    }
    let dir = TempDir::new("api-snap");
    let kernel = dir.join("counter.elf");
    std::fs::write(&kernel, counter::counter_guest_elf()).unwrap();
    let (state1, mem1) = (dir.join("full.state"), dir.join("full.mem"));
    let (state2, mem2) = (dir.join("diff.state"), dir.join("diff.mem"));

    let sock = dir.join("first.sock");
    let mut first = Petrel::serve(&sock, "first");
    start_counter_guest(&mut first, &sock, &kernel);
    let running = create_snapshot(&sock, "Full", &state1, &mem1).fault();
    assert!(running.contains("pause the VM first"), "{running}");
    patch_vm(&sock, "Paused");
    let reply = create_snapshot(&sock, "Full", &state1, &mem1);
    assert_eq!(reply.status, 204, "Full snapshot: {reply:?}");
    let at_full = first.stdout();
    patch_vm(&sock, "Resumed");
    // Same process: its output holds the earlier counts already.
    counts_on(&mut first, "", counter::ticks(&at_full).len() + 2);
    patch_vm(&sock, "Paused");
    let reply = create_snapshot(&sock, "Diff", &state2, &mem2);
    assert_eq!(reply.status, 204, "Diff snapshot: {reply:?}");
    let at_diff = first.stdout();
    drop(first);
    // The Diff holds a few pages of the 128 MiB; the rest are holes.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&mem2).unwrap();
    assert_eq!(meta.len(), 128 << 20);
    assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());

    // The Full snapshot, loaded running (with the deprecated mem_file_path).
    let sock = dir.join("full.sock");
    let mut full = Petrel::serve(&sock, "full");
    let load = serde_json::json!({
        "snapshot_path": state1, "mem_file_path": mem1, "resume_vm": true,
    });
    let reply = call(&sock, "PUT", "/snapshot/load", Some(&load.to_string()));
    assert_eq!(reply.status, 204, "load Full: {reply:?}");
    assert_eq!(state(&sock), "Running");
    counts_on(&mut full, &at_full, 2);
    drop(full);

    // The Diff applied to a copy of the Full memory file, loaded paused, then resumed.
    let merged = dir.join("merged.mem");
    std::fs::copy(&mem1, &merged).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args(["rebase-snap", "--base-file"])
        .arg(&merged)
        .arg("--diff-file")
        .arg(&mem2)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", out);
    let sock = dir.join("diff.sock");
    let mut diff = Petrel::serve(&sock, "diff");
    let load = serde_json::json!({
        "snapshot_path": state2,
        "mem_backend": { "backend_type": "File", "backend_path": merged },
    });
    let reply = call(&sock, "PUT", "/snapshot/load", Some(&load.to_string()));
    assert_eq!(reply.status, 204, "load Diff: {reply:?}");
    assert_eq!(state(&sock), "Paused");
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(diff.stdout(), "", "a paused guest prints nothing");
    // A second load is refused: the VM exists.
    let again = call(&sock, "PUT", "/snapshot/load", Some(&load.to_string())).fault();
    assert!(again.contains("only allowed before"), "{again}");
    patch_vm(&sock, "Resumed");
    counts_on(&mut diff, &at_diff, 2);
}

/// Boots the counter guest over the API in `dir`, pauses it and writes a Full snapshot to
/// `state_file` and `mem`; returns its console output up to the snapshot.
fn counter_snapshot(dir: &TempDir, state_file: &Path, mem: &Path) -> String {
    let kernel = dir.join("counter.elf");
    std::fs::write(&kernel, counter::counter_guest_elf()).unwrap();
    let sock = dir.join("first.sock");
    let mut first = Petrel::serve(&sock, "first");
    start_counter_guest(&mut first, &sock, &kernel);
    patch_vm(&sock, "Paused");
    let reply = create_snapshot(&sock, "Full", state_file, mem);
    assert_eq!(reply.status, 204, "Full snapshot: {reply:?}");
    first.stdout()
}

#[test]
fn a_working_set_is_saved_on_request_and_prefetched_by_the_next_load() {
    if !kvm_present_or_skip("a_working_set_is_saved_on_request_and_prefetched_by_the_next_load") {
        return;
    }
    let dir = TempDir::new("api-working-set");
    let (state_file, mem) = (dir.join("vm.state"), dir.join("vm.mem"));
    let at_snapshot = counter_snapshot(&dir, &state_file, &mem);
    let load = serde_json::json!({
        "snapshot_path": state_file,
        "mem_backend": { "backend_type": "File", "backend_path": mem },
        "resume_vm": true,
    })
    .to_string();
    let set = dir.join("vm.state.working-set");

    // A VM not restored to record has no working set to save.
    let sock = dir.join("plain.sock");
    let plain = Petrel::serve(&sock, "plain");
    assert_eq!(
        call(&sock, "PUT", "/snapshot/load", Some(&load)).status,
        204
    );
    let refused = call(&sock, "PUT", "/snapshot/working-set", None).fault();
    assert!(refused.contains("--working-set record"), "{refused}");
    drop(plain);

    // Recording: saved on request, with the seccomp filters on, while the guest runs on.
    let sock = dir.join("record.sock");
    let mut record = Petrel::serve_with(&sock, "record", &["--working-set", "record"]);
    assert_eq!(
        call(&sock, "PUT", "/snapshot/load", Some(&load)).status,
        204
    );
    counts_on(&mut record, &at_snapshot, 1);
    let reply = call(&sock, "PUT", "/snapshot/working-set", Some("{}"));
    assert_eq!(reply.status, 204, "{reply:?}");
    assert!(set.is_file());
    counts_on(&mut record, &at_snapshot, 2);
    assert_eq!(state(&sock), "Running");
    drop(record);

    // The next load prefetches it, and the guest counts on.
    let sock = dir.join("prefetch.sock");
    let mut prefetch = Petrel::serve(&sock, "prefetch");
    assert_eq!(
        call(&sock, "PUT", "/snapshot/load", Some(&load)).status,
        204
    );
    counts_on(&mut prefetch, &at_snapshot, 2);
    let stderr = prefetch.stderr();
    assert!(stderr.contains("prefetched the working set"), "{stderr}");
}

#[test]
fn a_snapshot_naming_the_loaded_memory_file_leaves_guest_and_file_whole() {
    if !kvm_present_or_skip("a_snapshot_naming_the_loaded_memory_file_leaves_guest_and_file_whole")
    {
        return;
    }
    let dir = TempDir::new("api-snap-mapped");
    let kernel = dir.join("counter.elf");
    std::fs::write(&kernel, counter::counter_guest_elf()).unwrap();
    let (state1, mem1) = (dir.join("first.state"), dir.join("first.mem"));

    let sock = dir.join("first.sock");
    let mut first = Petrel::serve(&sock, "first");
    start_counter_guest(&mut first, &sock, &kernel);
    patch_vm(&sock, "Paused");
    let reply = create_snapshot(&sock, "Full", &state1, &mem1);
    assert_eq!(reply.status, 204, "Full snapshot: {reply:?}");
    let at_first = first.stdout();
    drop(first);
    let mem1_bytes = std::fs::read(&mem1).unwrap();

    // Loaded (mapped privately) from first.mem, dirty pages tracked.
    let sock = dir.join("second.sock");
    let mut second = Petrel::serve(&sock, "second");
    let load = serde_json::json!({
        "snapshot_path": state1,
        "mem_backend": { "backend_type": "File", "backend_path": mem1 },
        "track_dirty_pages": true, "resume_vm": true,
    });
    let reply = call(&sock, "PUT", "/snapshot/load", Some(&load.to_string()));
    assert_eq!(reply.status, 204, "load: {reply:?}");
    counts_on(&mut second, &at_first, 2);
    patch_vm(&sock, "Paused");

    // A Diff over the memory file it applies to is refused, by whatever name the file is
    // reached: the file and the guest stay as they were.
    let link = dir.join("link.mem");
    std::fs::hard_link(&mem1, &link).unwrap();
    let dotted = dir.join(".").join("first.mem");
    let state2 = dir.join("second.state");
    for name in [&mem1, &dotted, &link] {
        let fault = create_snapshot(&sock, "Diff", &state2, name).fault();
        assert!(
            fault.contains(&name.display().to_string())
                && fault.contains("the memory file this VM was restored from"),
            "{fault}"
        );
    }
    assert!(!state2.exists(), "a refused snapshot writes nothing");
    assert_eq!(state(&sock), "Paused");
    assert!(
        std::fs::read(&mem1).unwrap() == mem1_bytes,
        "first.mem unchanged"
    );

    // A Full snapshot over it replaces the name with a new file; the guest keeps the memory
    // it maps (the old file, which stays as it was under its other name).
    let reply = create_snapshot(&sock, "Full", &state2, &dotted);
    assert_eq!(
        reply.status, 204,
        "Full snapshot over the mapped file: {reply:?}"
    );
    let at_second = format!("{at_first}{}", second.stdout());
    patch_vm(&sock, "Resumed");
    let printed = counter::ticks(&second.stdout()).len();
    counts_on(&mut second, &at_first, printed + 2);
    drop(second);
    assert!(
        std::fs::read(&link).unwrap() == mem1_bytes,
        "the old file unchanged"
    );
    let new_mem = std::fs::read(&mem1).unwrap();
    assert_eq!(new_mem.len(), mem1_bytes.len());
    // The counter guest's memory is a dozen non-zero pages; a few ticks change one or two.
    let non_zero = |m: &[u8]| m.chunks(4096).filter(|p| p.iter().any(|&b| b != 0)).count();
    let differing = new_mem
        .chunks(4096)
        .zip(mem1_bytes.chunks(4096))
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        non_zero(&mem1_bytes) > 8
            && differing <= 4
            && non_zero(&new_mem) + 4 >= non_zero(&mem1_bytes),
        "{differing} pages differ, {} of {} non-zero: the untouched pages are not all there",
        non_zero(&new_mem),
        non_zero(&mem1_bytes)
    );

    // The new snapshot loads and counts on from where it was taken.
    let sock = dir.join("third.sock");
    let mut third = Petrel::serve(&sock, "third");
    let load = serde_json::json!({
        "snapshot_path": state2,
        "mem_backend": { "backend_type": "File", "backend_path": mem1 },
        "resume_vm": true,
    });
    let reply = call(&sock, "PUT", "/snapshot/load", Some(&load.to_string()));
    assert_eq!(reply.status, 204, "load the second snapshot: {reply:?}");
    counts_on(&mut third, &at_second, 2);
}

#[test]
fn machine_config_and_vm_config_answer_every_field_firecracker_does() {
    // Configuration only: this needs no KVM.
    let dir = TempDir::new("api-config-fields");
    let sock = dir.join("api.sock");
    let _petrel = Petrel::serve(&sock, "fields");
    let text = |path: &str| {
        let reply = call(&sock, "GET", path, None);
        assert_eq!(reply.status, 200, "GET {path}: {reply:?}");
        String::from_utf8(reply.body).unwrap()
    };

    // A fresh instance: Firecracker's defaults, every field written.
    assert_eq!(
        text("/machine-config"),
        r#"{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}"#
    );
    assert_eq!(
        text("/vm/config"),
        concat!(
            r#"{"balloon":null,"drives":[],"#,
            r#""boot-source":{"kernel_image_path":"","initrd_path":null,"boot_args":null},"#,
            r#""cpu-config":null,"logger":null,"#,
            r#""machine-config":{"vcpu_count":1,"mem_size_mib":128,"smt":false,"#,
            r#""track_dirty_pages":false,"huge_pages":"None"},"#,
            r#""metrics":null,"mmds-config":null,"network-interfaces":[],"vsock":null,"#,
            r#""entropy":null,"pmem":[],"memory-hotplug":null}"#
        )
    );

    // What was put, with the defaults of what was not; a "None" template is no template.
    let put = |path: &str, body: serde_json::Value| {
        let reply = call(&sock, "PUT", path, Some(&body.to_string()));
        assert_eq!(reply.status, 204, "PUT {path}: {reply:?}");
    };
    put(
        "/machine-config",
        serde_json::json!({"vcpu_count": 2, "mem_size_mib": 256, "cpu_template": "None",
                           "track_dirty_pages": true}),
    );
    let machine = r#"{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":true,"huge_pages":"None"}"#;
    assert_eq!(text("/machine-config"), machine);
    let reply = call(
        &sock,
        "PATCH",
        "/machine-config",
        Some(r#"{"mem_size_mib": 512}"#),
    );
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(
        text("/machine-config"),
        machine.replace("256", "512"),
        "PATCH keeps the other fields"
    );
    put(
        "/boot-source",
        serde_json::json!({"kernel_image_path": "/k", "boot_args": "console=ttyS0"}),
    );
    put(
        "/drives/rootfs",
        serde_json::json!({"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true}),
    );
    put(
        "/network-interfaces/eth0",
        serde_json::json!({"iface_id": "eth0", "host_dev_name": "tap0",
                           "guest_mac": "06:00:AC:10:00:02",
                           "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}}),
    );
    put(
        "/vsock",
        serde_json::json!({"vsock_id": "v", "guest_cid": 3, "uds_path": "/v.sock"}),
    );
    put("/entropy", serde_json::json!({}));
    put(
        "/balloon",
        serde_json::json!({"amount_mib": 64, "deflate_on_oom": true}),
    );
    let config: Value = serde_json::from_str(&text("/vm/config")).unwrap();
    let want = serde_json::json!({
        "balloon": {"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 0,
                    "free_page_hinting": false, "free_page_reporting": false},
        "drives": [{"drive_id": "rootfs", "partuuid": null, "is_root_device": true,
                    "cache_type": "Unsafe", "is_read_only": false, "path_on_host": "/r",
                    "rate_limiter": null, "io_engine": "Sync", "socket": null}],
        "boot-source": {"kernel_image_path": "/k", "initrd_path": null,
                        "boot_args": "console=ttyS0"},
        "cpu-config": null,
        "logger": null,
        "machine-config": serde_json::from_str::<Value>(&machine.replace("256", "512")).unwrap(),
        "metrics": null,
        "mmds-config": null,
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                                "guest_mac": "06:00:ac:10:00:02", "mtu": null,
                                "rx_rate_limiter": null,
                                "tx_rate_limiter": {"bandwidth": null,
                                    "ops": {"size": 10, "one_time_burst": null,
                                            "refill_time": 1000}}}],
        "vsock": {"guest_cid": 3, "uds_path": "/v.sock"},
        "entropy": {"rate_limiter": null},
        "pmem": [],
        "memory-hotplug": null
    });
    assert_eq!(config, want);
}

#[test]
fn mmds_over_the_socket_as_firecrackers_clients_drive_it() {
    // Configuration and data only: this needs no KVM.
    let dir = TempDir::new("api-mmds");
    let sock = dir.join("api.sock");
    let metadata = dir.join("metadata.json");
    std::fs::write(
        &metadata,
        r#"{"latest": {"meta-data": {"ami-id": "from-file"}}}"#,
    )
    .unwrap();
    let _petrel = {
        let mut petrel = Petrel::start(&[
            "--api-sock",
            sock.to_str().unwrap(),
            "--id",
            "mmds",
            "--mmds-size-limit",
            "256",
            "--metadata",
            metadata.to_str().unwrap(),
        ]);
        let deadline = Instant::now() + DEADLINE;
        while UnixStream::connect(&sock).is_err() {
            assert!(petrel.running(), "petrel exited: {}", petrel.stderr());
            assert!(Instant::now() < deadline, "no socket after {DEADLINE:?}");
            thread::sleep(Duration::from_millis(10));
        }
        petrel
    };
    // One connection, kept alive, as the SDKs keep theirs.
    let mut client = Client::connect(&sock);
    let reply = client.send("GET", "/mmds", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json(),
        serde_json::json!({"latest": {"meta-data": {"ami-id": "from-file"}}})
    );

    // firecracker-go-sdk with MMDS on: the interface, then /mmds/config, then SetMetadata,
    // UpdateMetadata and GetMetadata.
    let iface =
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"}"#;
    let reply = client.send("PUT", "/network-interfaces/eth0", Some(iface));
    assert_eq!(reply.status, 204, "{reply:?}");
    let reply = client.send(
        "PUT",
        "/mmds/config",
        Some(r#"{"network_interfaces": ["eth1"]}"#),
    );
    assert!(
        reply.fault().contains(
            "The list of network interface IDs provided contains at least one ID that does not \
             correspond to any existing network interface."
        ),
        "{reply:?}"
    );
    let config = r#"{"version": "V2", "ipv4_address": "169.254.169.254",
                     "network_interfaces": ["eth0"]}"#;
    let reply = client.send("PUT", "/mmds/config", Some(config));
    assert_eq!(reply.status, 204, "{reply:?}");
    let data = r#"{"latest": {"meta-data": {"ami-id": "ami-12345678", "instance-type": "m5"}}}"#;
    let reply = client.send("PUT", "/mmds", Some(data));
    assert_eq!(reply.status, 204, "{reply:?}");
    let reply = client.send(
        "PATCH",
        "/mmds",
        Some(r#"{"latest": {"meta-data": {"instance-type": null, "hostname": "vm1"}}}"#),
    );
    assert_eq!(reply.status, 204, "{reply:?}");
    let reply = client.send("GET", "/mmds", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json(),
        serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-12345678", "hostname": "vm1"}}})
    );
    let reply = client.send("GET", "/vm/config", None);
    assert_eq!(
        reply.json()["mmds-config"],
        serde_json::json!({"version": "V2", "network_interfaces": ["eth0"],
                           "ipv4_address": "169.254.169.254", "imds_compat": false})
    );

    // --mmds-size-limit: over it, Firecracker's 413 and text; the store keeps what it had.
    let big = format!(r#"{{"latest": "{}"}}"#, "x".repeat(300));
    let reply = client.send("PUT", "/mmds", Some(&big));
    assert_eq!(reply.status, 413, "{reply:?}");
    let text = reply.json()["fault_message"].as_str().unwrap().to_owned();
    assert!(
        text.starts_with("MMDS limit exceeded error: The MMDS patch request doesn't fit."),
        "{text}"
    );
    assert_eq!(
        client.send("GET", "/mmds", None).json()["latest"]["meta-data"]["hostname"],
        "vm1"
    );
    // Refusals name the field, in Firecracker's words.
    let reply = client.send(
        "PUT",
        "/mmds/config",
        Some(r#"{"network_interfaces": ["eth0"], "ipv4_address": "192.168.0.1"}"#),
    );
    assert_eq!(
        reply.fault(),
        "ipv4_address `192.168.0.1`: The MMDS IPv4 address is not link local."
    );
    let reply = client.send("GET", "/mmds/config", None);
    assert_eq!(
        reply.fault(),
        "method GET is not allowed on /mmds/config (allowed: PUT)"
    );
}

#[test]
fn a_metadata_file_that_does_not_fit_is_refused_at_start() {
    let dir = TempDir::new("api-mmds-cli");
    let sock = dir.join("api.sock");
    let metadata = dir.join("metadata.json");
    std::fs::write(&metadata, r#"{"k": "a value longer than the limit"}"#).unwrap();
    let (sock, metadata) = (sock.to_str().unwrap(), metadata.to_str().unwrap());
    exits_2_with_one_line(
        &[
            "--api-sock",
            sock,
            "--mmds-size-limit",
            "8",
            "--metadata",
            metadata,
        ],
        &["--metadata", "The MMDS patch request doesn't fit."],
    );
    exits_2_with_one_line(
        &["--api-sock", sock, "--metadata", "/nonexistent/md.json"],
        &["--metadata", "/nonexistent/md.json"],
    );
}

#[test]
fn a_uffd_load_is_served_by_the_handler_and_a_bad_socket_is_a_400() {
    if !kvm_present_or_skip("a_uffd_load_is_served_by_the_handler_and_a_bad_socket_is_a_400") {
        return;
    }
    let dir = TempDir::new("api-uffd");
    let (state_file, mem) = (dir.join("full.state"), dir.join("full.mem"));
    let at_full = counter_snapshot(&dir, &state_file, &mem);

    // Nobody listening: 400 at load time, naming the field; the process can load again.
    let sock = dir.join("uffd.sock");
    let mut restored = Petrel::serve(&sock, "uffd");
    let load = |backend: &Path| {
        serde_json::json!({
            "snapshot_path": state_file, "resume_vm": true,
            "mem_backend": { "backend_type": "Uffd", "backend_path": backend },
        })
        .to_string()
    };
    let nobody = call(
        &sock,
        "PUT",
        "/snapshot/load",
        Some(&load(&dir.join("nobody"))),
    );
    let fault = nobody.fault();
    assert!(
        fault.contains("mem_backend.backend_path") && fault.contains("cannot connect"),
        "{fault}"
    );
    // Petrel's handler, on a thread of this test; it ends when Petrel closes the connection.
    let handler_sock = dir.join("handler.sock");
    let listener = std::os::unix::net::UnixListener::bind(&handler_sock).unwrap();
    let file = std::fs::File::open(&mem).unwrap();
    let handler = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        petrel_vmm::uffd::serve_pages(stream, &file).unwrap()
    });
    let reply = call(&sock, "PUT", "/snapshot/load", Some(&load(&handler_sock)));
    assert_eq!(reply.status, 204, "load Uffd: {reply:?}");
    assert_eq!(state(&sock), "Running");
    counts_on(&mut restored, &at_full, 2);
    drop(restored);
    let served = handler.join().unwrap();
    assert!(served > 0, "the handler served no page");
}
