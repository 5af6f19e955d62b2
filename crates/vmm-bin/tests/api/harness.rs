//! What the API tests share: an HTTP/1.1 client on the API socket, a `petrel` process with
//! its output captured, and the keyboard guest's set-up.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use petrel_demo_guest::keyboard;
use serde_json::Value;

use crate::support::{wait_until, TempDir};

/// How long `petrel` may take to create its socket, to print a guest line, or to exit after
/// the guest resets. Generous: the guest's kernel code runs emulated on the development host.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);
/// How long a client waits for one answer before the test fails (no test waits this long
/// when Petrel works).
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Firecracker's (and Petrel's) largest request body.
pub(crate) const MAX_PAYLOAD: usize = 51_200;

/// One HTTP response.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The status code.
    pub(crate) status: u16,
    /// Header names (lower case) and values.
    pub(crate) headers: Vec<(String, String)>,
    /// The body, `Content-Length` bytes.
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `fault_message` of a 400 answer.
    pub(crate) fn fault(&self) -> String {
        assert_eq!(self.status, 400, "expected a fault, got {self:?}");
        let json = self.json();
        json["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message in {json}"))
            .to_string()
    }

    /// The value of header `name` (lower case), if present.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 client on one connection to the API socket (kept alive between requests).
pub(crate) struct Client {
    pub(crate) reader: BufReader<UnixStream>,
    pub(crate) writer: UnixStream,
}

impl Client {
    /// Connects to the API socket.
    pub(crate) fn connect(sock: &Path) -> Client {
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
    pub(crate) fn send(&mut self, method: &str, path: &str, body: Option<&str>) -> Reply {
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
    pub(crate) fn read_reply(&mut self) -> io::Result<Reply> {
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
    pub(crate) fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        }
    }
}

/// One request on a fresh connection.
pub(crate) fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> Reply {
    Client::connect(sock).send(method, path, body)
}

/// Reads `from` to its end on a thread, into `into`.
pub(crate) fn capture<R: Read + Send + 'static>(
    mut from: R,
    into: Arc<Mutex<Vec<u8>>>,
) -> JoinHandle<()> {
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
pub(crate) struct Petrel {
    pub(crate) child: Child,
    pub(crate) stdout: Arc<Mutex<Vec<u8>>>,
    pub(crate) stderr: Arc<Mutex<Vec<u8>>>,
    pub(crate) readers: Vec<JoinHandle<()>>,
}

impl Petrel {
    /// Starts `petrel` with `args`, stdin null.
    pub(crate) fn start(args: &[&str]) -> Petrel {
        Petrel::start_program(Path::new(env!("CARGO_BIN_EXE_petrel")), args)
    }

    /// Starts `program` (`petrel` or a link to it) with `args`, stdin null.
    pub(crate) fn start_program(program: &Path, args: &[&str]) -> Petrel {
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
    pub(crate) fn serve(sock: &Path, id: &str) -> Petrel {
        Petrel::serve_with(sock, id, &[])
    }

    /// [`Petrel::serve`] with `extra` arguments.
    pub(crate) fn serve_with(sock: &Path, id: &str, extra: &[&str]) -> Petrel {
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

    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until the guest's output contains `text`; fails past [`DEADLINE`].
    pub(crate) fn wait_for_output(&mut self, text: &str) {
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
    pub(crate) fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit (fails past [`DEADLINE`]) and for its output to end.
    pub(crate) fn finish(mut self) -> (ExitStatus, String, String) {
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
pub(crate) fn guest_files(dir: &TempDir) -> (PathBuf, PathBuf) {
    let kernel = dir.join("keyboard.elf");
    std::fs::write(&kernel, keyboard::keyboard_guest_elf()).unwrap();
    let disk = dir.join("rootfs.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    (kernel, disk)
}

/// `GET /`'s state.
pub(crate) fn state(sock: &Path) -> String {
    let reply = call(sock, "GET", "/", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()["state"].as_str().unwrap().to_string()
}

/// Configures the keyboard guest with `vcpus` vCPUs and 128 MiB, and a root drive.
pub(crate) fn configure(sock: &Path, kernel: &Path, disk: &Path, vcpus: u32) {
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
pub(crate) fn start_guest(petrel: &mut Petrel, sock: &Path) {
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
pub(crate) fn ctrl_alt_del_ends_it(petrel: Petrel, sock: &Path) {
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

/// Runs `program args` (stdin null) and checks that it exits 2 with one line on stderr that
/// contains every one of `words`.
pub(crate) fn exits_2_with_one_line_from(program: &Path, args: &[&str], words: &[&str]) {
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
pub(crate) fn exits_2_with_one_line(args: &[&str], words: &[&str]) {
    exits_2_with_one_line_from(Path::new(env!("CARGO_BIN_EXE_petrel")), args, words);
}
