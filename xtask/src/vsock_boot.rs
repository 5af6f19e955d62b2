//! The `vsock-echo` boot-test scenario: a small static C program in the guest
//! (`xtask/guest/vsock_echo.c`, built here with `gcc -static`) talks to the host over
//! Petrel's virtio-vsock device both ways, following Firecracker's convention
//! (docs/vsock.md):
//!
//! - guest to host: the guest connects to CID 2 port [`HOST_PORT`]; Petrel connects that to
//!   the host's Unix socket `<uds>_HOST_PORT`, where the host (a [`LiveCheck`]) echoes one
//!   line; the guest checks the echo and the host checks the line it got.
//! - host to guest: once the guest prints [`LISTENING`], the host connects to `<uds>`, sends
//!   `CONNECT GUEST_PORT`, reads `OK <port>`, sends a line and checks the guest's echo.
//!
//! Petrel's `--metrics` must then show both connections and no bad packets.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::error::{IoContext, Result};
use crate::guest_script::{self, ExtraFile};
use crate::host;
use crate::live::{LiveCheck, LiveContext, LiveResult};
use crate::scenario::Scenario;
use crate::virtio_boot::{device_counter, read_only_root_scenario};

/// The scenario's name.
pub const NAME: &str = "vsock-echo";
/// The guest's CID.
pub const GUEST_CID: u32 = 3;
/// The host port the guest connects to.
pub const HOST_PORT: u32 = 5000;
/// The guest port the host connects to.
pub const GUEST_PORT: u32 = 5001;
/// What the guest program sends the host (`MESSAGE_TO_HOST` in the C source).
pub const GUEST_MESSAGE: &str = "petrel-vsock guest to host: 7a41";
/// What the guest program prints once it listens (`LISTENING_CUE` in the C source).
pub const LISTENING: &str = "PETREL-VSOCK-LISTENING";
/// What the host sends the guest's listener, which must come back.
pub const HOST_MESSAGE: &str = "petrel-vsock host to guest: 31c8";

/// The guest program's source, relative to the xtask crate.
const SOURCE: &str = "guest/vsock_echo.c";
/// How long one read or write on a host connection may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause between polls for the guest's connection, and between connect attempts.
const POLL: Duration = Duration::from_millis(50);
/// The longest line the host reads.
const MAX_LINE: usize = 256;

/// The guest's init script body: run the program, which prints its own check lines.
fn guest_body() -> String {
    format!(
        r#"/vsock_echo {HOST_PORT} {GUEST_PORT}
status=$?
if [ "$status" = 0 ]; then ok vsock-prog "exit 0"; else fail vsock-prog "vsock_echo exited with $status"; fi"#
    )
}

/// The `CONNECT` line a host client sends Petrel's `<uds>` for guest port `port`.
pub fn connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// The host port of Petrel's `OK <port>` answer to a `CONNECT` (the newline stripped).
pub fn parse_ok(line: &str) -> std::result::Result<u32, String> {
    line.strip_prefix("OK ")
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("Petrel answered the CONNECT with {line:?}, not `OK <port>`"))
}

/// `<uds>_<port>`: where the host listens for guest connections to `port`.
pub fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Reads one line (without its newline) from `conn`, byte by byte so that nothing after it
/// is taken.
fn read_line(conn: &mut UnixStream) -> std::result::Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match conn.read(&mut byte) {
            Ok(0) => {
                return Err(format!(
                    "the connection ended after {:?}, before a newline",
                    String::from_utf8_lossy(&line)
                ))
            }
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) if line.len() >= MAX_LINE => return Err(format!("a line over {MAX_LINE} bytes")),
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("reading: {e}")),
        }
    }
}

fn timeouts(conn: &UnixStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
}

/// The host's side of the guest's connection: reads the guest's line, echoes it, and waits
/// for the guest to close. Returns the line.
pub fn echo_once(mut conn: UnixStream) -> std::result::Result<String, String> {
    timeouts(&conn);
    let line = read_line(&mut conn)?;
    conn.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("echoing: {e}"))?;
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    Ok(line)
}

/// The host's connection to the guest's listener through Petrel's `<uds>`: `CONNECT`, `OK`,
/// a line out and its echo back. Returns the note.
pub fn talk_to_guest(mut conn: UnixStream, port: u32) -> std::result::Result<String, String> {
    timeouts(&conn);
    conn.write_all(connect_line(port).as_bytes())
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    let local = parse_ok(&read_line(&mut conn)?)?;
    conn.write_all(format!("{HOST_MESSAGE}\n").as_bytes())
        .map_err(|e| format!("sending to the guest: {e}"))?;
    let echo = read_line(&mut conn)?;
    if echo != HOST_MESSAGE {
        return Err(format!(
            "the guest's listener echoed {echo:?}, not {HOST_MESSAGE:?}"
        ));
    }
    Ok(format!(
        "the host's CONNECT {port} was answered `OK {local}` and the guest echoed its line"
    ))
}

/// Judges what the host got on `<uds>_HOST_PORT`.
pub fn judge_guest_line(got: Option<&str>) -> std::result::Result<String, String> {
    match got {
        Some(GUEST_MESSAGE) => Ok(format!(
            "the host's listener on port {HOST_PORT} got the guest's {GUEST_MESSAGE:?} and echoed it"
        )),
        Some(other) => Err(format!(
            "the host's listener on port {HOST_PORT} got {other:?}, not {GUEST_MESSAGE:?}"
        )),
        None => Err(format!(
            "the guest never connected to the host's listener on port {HOST_PORT}"
        )),
    }
}

/// The host's side of both directions, while the VM runs.
#[derive(Debug)]
pub struct VsockEcho {
    /// Petrel's `--vsock` socket path.
    pub uds: PathBuf,
}

impl VsockEcho {
    /// Connects to Petrel's `<uds>` and talks to the guest's listener; retries (Petrel
    /// closes the connection if the guest refuses it) until it works or the run ends.
    fn connect_to_guest(&self, cx: &LiveContext<'_>) -> std::result::Result<String, String> {
        let mut last = String::from("no attempt");
        while !cx.should_stop() {
            match UnixStream::connect(&self.uds) {
                Ok(conn) => match talk_to_guest(conn, GUEST_PORT) {
                    Ok(note) => return Ok(note),
                    Err(e) => last = e,
                },
                Err(e) => last = format!("connecting to {}: {e}", self.uds.display()),
            }
            thread::sleep(POLL);
        }
        Err(format!("host to guest: {last}"))
    }
}

impl LiveCheck for VsockEcho {
    fn run(&self, cx: &LiveContext<'_>) -> LiveResult {
        let path = port_path(&self.uds, HOST_PORT);
        let _ = fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| vec![format!("listening on {}: {e}", path.display())])?;
        let _ = cx.ready.send(());
        // Guest to host first: the guest program connects before it listens.
        let mut got = None;
        while got.is_none() && !cx.should_stop() {
            match listener.accept() {
                Ok((conn, _)) => got = Some(echo_once(conn)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(POLL),
                Err(e) => got = Some(Err(format!("accepting on {}: {e}", path.display()))),
            }
        }
        drop(listener);
        let _ = fs::remove_file(&path);
        let mut notes = Vec::new();
        let mut failures = Vec::new();
        let g2h = match got {
            Some(Ok(line)) => judge_guest_line(Some(&line)),
            Some(Err(e)) => Err(format!("guest to host: {e}")),
            None => judge_guest_line(None),
        };
        match g2h {
            Ok(n) => notes.push(n),
            Err(f) => failures.push(f),
        }
        let h2g = if cx.wait_for(LISTENING) {
            self.connect_to_guest(cx)
        } else {
            Err(format!(
                "the guest never printed `{LISTENING}`, so the host did not connect"
            ))
        };
        match h2g {
            Ok(n) => notes.push(n),
            Err(f) => failures.push(f),
        }
        // Petrel removes its socket when it exits normally, but not when it is killed.
        while !cx.should_stop() {
            thread::sleep(POLL);
        }
        let _ = fs::remove_file(&self.uds);
        if failures.is_empty() {
            Ok(notes)
        } else {
            Err(failures)
        }
    }
}

/// Petrel's metrics must show both connections, the bytes both ways, and nothing refused
/// or malformed.
pub fn judge_metrics(m: &serde_json::Value) -> std::result::Result<String, String> {
    let c = |name| device_counter(m, "virtio-vsock", name).unwrap_or(0);
    let opened = c("connections_opened");
    let (to_guest, to_host) = (c("bytes_to_guest"), c("bytes_to_host"));
    let bad: Vec<String> = [
        "bad_packets",
        "credit_violations",
        "rx_bad_chains",
        "bad_host_requests",
        "host_errors",
    ]
    .iter()
    .filter(|n| c(n) > 0)
    .map(|n| format!("{n} {}", c(n)))
    .collect();
    if opened < 2 || to_guest == 0 || to_host == 0 || !bad.is_empty() {
        return Err(format!(
            "virtio-vsock metrics: {opened} connections opened, {to_guest} bytes to the guest, \
             {to_host} to the host; {}",
            if bad.is_empty() {
                "no errors".to_owned()
            } else {
                bad.join(", ")
            }
        ));
    }
    Ok(format!(
        "virtio-vsock: {opened} connections, {to_guest} bytes to the guest, {to_host} to the host"
    ))
}

/// Builds the guest program with the host's `gcc -static -O2` into `dir`.
fn build_program(dir: &Path) -> Result<Vec<u8>> {
    host::ensure_packages(&["gcc", "libc6-dev"])?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(SOURCE);
    let out = dir.join("vsock_echo");
    host::run(
        Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg(&source),
    )?;
    fs::read(&out).ctx(|| format!("reading {}", out.display()))
}

/// The vsock scenario: root on a read-only disk holding the program; Petrel's socket under
/// the system's temporary directory (a Unix socket path must be short), named with this
/// process's id.
pub fn scenario(vmlinux: &Path, dir: &Path) -> Result<Scenario> {
    let program = ExtraFile {
        path: "vsock_echo".into(),
        data: build_program(dir)?,
        mode: 0o755,
    };
    let image = dir.join(format!("{NAME}.ext4"));
    let metrics = dir.join(format!("{NAME}.metrics.json"));
    let _ = fs::remove_file(&metrics);
    let script = guest_script::init_script(&guest_body());
    guest_script::build_rootfs(&image, &script, &[program], 16)?;
    let uds = std::env::temp_dir().join(format!("petrel-bt-vsock-{}.sock", std::process::id()));
    // Stale ones from a run killed with this pid.
    let _ = fs::remove_file(&uds);
    let _ = fs::remove_file(port_path(&uds, HOST_PORT));
    let mut s = read_only_root_scenario(NAME, vmlinux, &image);
    s.extra_args.extend([
        "--vsock".into(),
        format!("cid={GUEST_CID},uds={}", uds.display()),
        "--metrics".into(),
        metrics.display().to_string(),
    ]);
    s.checks = vec!["vsock-g2h", "vsock-h2g", "vsock-prog"];
    s.live = Some(Arc::new(VsockEcho { uds }));
    s.after = vec![crate::scenario::AfterCheck::Metrics {
        metrics,
        judge: judge_metrics,
    }];
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A string `#define` of the guest program's source.
    fn c_define(name: &str) -> String {
        let src = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(SOURCE)).unwrap();
        let prefix = format!("#define {name} \"");
        let line = src.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap();
        line.trim_end().trim_end_matches('"').to_owned()
    }

    #[test]
    fn connect_and_ok_lines() {
        assert_eq!(connect_line(5001), "CONNECT 5001\n");
        assert_eq!(parse_ok("OK 1073741824"), Ok(1_073_741_824));
        for bad in [
            "OK",
            "OK ",
            "OK -1",
            "OK 12x",
            "ok 5",
            "OK 99999999999",
            "FAIL 5",
            "",
        ] {
            assert!(parse_ok(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            port_path(Path::new("/tmp/v.sock"), 5000),
            Path::new("/tmp/v.sock_5000")
        );
    }

    #[test]
    fn the_c_program_agrees() {
        assert_eq!(c_define("MESSAGE_TO_HOST"), GUEST_MESSAGE);
        assert_eq!(c_define("LISTENING_CUE"), LISTENING);
        assert!(guest_body().starts_with(&format!("/vsock_echo {HOST_PORT} {GUEST_PORT}\n")));
    }

    #[test]
    fn the_guests_line_is_judged() {
        assert!(judge_guest_line(Some(GUEST_MESSAGE)).is_ok());
        assert!(judge_guest_line(Some("hello"))
            .unwrap_err()
            .contains("hello"));
        assert!(judge_guest_line(None).unwrap_err().contains("never"));
    }

    #[test]
    fn the_host_echoes_a_line() {
        let (mut guest, host) = UnixStream::pair().unwrap();
        let h = thread::spawn(move || echo_once(host));
        guest.write_all(b"abc\nleft over").unwrap();
        let mut back = [0u8; 4];
        guest.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"abc\n");
        drop(guest);
        assert_eq!(h.join().unwrap(), Ok("abc".into()));
    }

    /// A stand-in for Petrel's `<uds>` with the guest's echo behind it.
    fn fake_petrel(answer: &'static str, echo: bool) -> (UnixStream, thread::JoinHandle<String>) {
        let (host, mut petrel) = UnixStream::pair().unwrap();
        let h = thread::spawn(move || {
            let connect = read_line(&mut petrel).unwrap();
            petrel.write_all(answer.as_bytes()).unwrap();
            if echo {
                let line = read_line(&mut petrel).unwrap();
                petrel.write_all(format!("{line}\n").as_bytes()).unwrap();
            }
            connect
        });
        (host, h)
    }

    #[test]
    fn the_host_connects_through_petrels_socket() {
        let (conn, petrel) = fake_petrel("OK 1024\n", true);
        let note = talk_to_guest(conn, 5001).unwrap();
        assert!(note.contains("OK 1024"), "{note}");
        assert_eq!(petrel.join().unwrap(), "CONNECT 5001");

        let (conn, petrel) = fake_petrel("NO\n", false);
        let e = talk_to_guest(conn, 5001).unwrap_err();
        assert!(e.contains("\"NO\""), "{e}");
        petrel.join().unwrap();
    }

    #[test]
    fn metrics_judging() {
        let m = |opened: u64, bad: u64| -> serde_json::Value {
            serde_json::json!({"exit_stats": {"virtio": [{"name": "virtio-vsock",
                "counters": {"connections_opened": opened, "bytes_to_guest": 66,
                "bytes_to_host": 66, "bad_packets": bad}}]}})
        };
        assert!(judge_metrics(&m(2, 0)).is_ok());
        assert!(judge_metrics(&m(1, 0)).is_err());
        assert!(judge_metrics(&m(2, 1))
            .unwrap_err()
            .contains("bad_packets 1"));
    }
}
