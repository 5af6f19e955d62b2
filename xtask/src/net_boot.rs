//! The `virtio-net-dhcp` boot-test scenario, proven from inside the guest: its init script
//! (see [`crate::guest_script`]) gets an address by DHCP with busybox `udhcpc`, fetches a
//! 1 MiB pattern with `wget` from an HTTP server on the host end of the tap and prints its
//! SHA-256, then listens with `nc -l` for a connection that the host makes (a
//! [`LiveCheck`]), sends it a message and reads the host's reply.
//!
//! The host checks its side: dnsmasq acknowledged the guest's address, the HTTP server
//! served the whole pattern once and the guest's checksum is the host's own, the host read
//! the guest's message over TCP, and Petrel's `--metrics` show the frames.
//!
//! Everything runs in a network namespace the test creates (a tap, dnsmasq, the HTTP
//! server in a thread that enters the namespace) and removes; only its 10.0.2.x addresses
//! are used, and no guest traffic leaves it.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::cache::sha256_hex;
use crate::error::{Error, IoContext, Result};
use crate::guest_script::{self, ExtraFile};
use crate::host;
use crate::live::{LiveCheck, LiveContext, LiveResult};
use crate::scenario::{NetSetup, Scenario};
use crate::virtio_boot::{device_counter, read_metrics, read_only_root_scenario};

/// The scenario's name.
pub const NAME: &str = "virtio-net-dhcp";

/// The guest's side of the test network.
pub const GUEST_IP: &str = "10.0.2.15";
/// The host's side: the tap's address, dnsmasq and the HTTP server.
pub const HOST_IP: &str = "10.0.2.1";
/// The tap inside the test namespace.
pub const TAP: &str = "ptap0";
/// The guest's MAC (Petrel's default), which dnsmasq gives [`GUEST_IP`].
pub const GUEST_MAC: &str = "06:00:ac:10:00:02";
/// The HTTP server's port on [`HOST_IP`].
pub const HTTP_PORT: u16 = 8080;
/// The path the HTTP server serves the pattern at.
pub const PATTERN_PATH: &str = "/pattern";
/// The port the guest's `nc -l` listens on.
pub const GUEST_PORT: u16 = 5555;

/// The size of the pattern the guest fetches.
const PATTERN_LEN: usize = 1 << 20;
/// Its seed (see [`guest_script::pattern`]).
const PATTERN_SEED: u64 = 0x6e65_7470_6574;

/// What the guest prints once its listener is started.
pub const LISTENING: &str = "PETREL-NET-LISTENING";
/// What the guest's listener sends the host (it is never printed on the console, so the
/// host can only have it from the TCP connection).
pub const GUEST_MESSAGE: &str = "petrel-net guest listener: 5f1d hello host";
/// What the host answers; the guest checks it.
pub const HOST_REPLY: &str = "petrel-net host: 9c3e got it";

/// How long the guest's listener waits for the host, in seconds (guest time).
const GUEST_LISTEN_SECS: u32 = 90;
/// How long the host's reads and writes on one connection may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one connect attempt to the guest may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The pause between connect attempts (the guest prints its cue as it starts `nc`, which
/// may not listen yet).
const RETRY: Duration = Duration::from_millis(250);
/// The most bytes of a request's head the HTTP server reads.
const MAX_HEAD: usize = 8192;

/// udhcpc's hook: busybox `udhcpc` runs it with the lease in its environment; it applies
/// the lease and writes it to /tmp/lease for the init script.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# The net boot test's udhcpc hook: apply the lease (busybox udhcpc passes it in the
# environment) and record it for /init.
case "$1" in
deconfig) ifconfig "$interface" 0.0.0.0 up ;;
bound|renew)
    ifconfig "$interface" "$ip" netmask "$subnet" up
    route add default gw "$router" dev "$interface"
    echo "$ip $subnet $router" > /tmp/lease ;;
esac
"#;

/// The guest's init script body: DHCP, the HTTP fetch, then the listener the host connects
/// to, bounded by a watchdog that kills `nc` if the host never comes.
fn guest_body() -> String {
    format!(
        r#"mount -t tmpfs tmpfs /tmp
if udhcpc -i eth0 -n -q -t 5 -T 2 -s /udhcpc.sh > /tmp/udhcpc.log 2>&1 && read ip mask router < /tmp/lease; then
    ok net-dhcp "ip=$ip netmask=$mask router=$router"
else
    fail net-dhcp "udhcpc: $(cat /tmp/udhcpc.log)"
fi
if wget -q -O /tmp/pattern http://{HOST_IP}:{HTTP_PORT}{PATTERN_PATH} 2> /tmp/wget.err; then
    set -- $(sha256sum /tmp/pattern)
    ok net-http "sha256=$1"
else
    fail net-http "wget: $(cat /tmp/wget.err)"
fi
echo "{GUEST_MESSAGE}" > /tmp/msg
nc -l -p {GUEST_PORT} < /tmp/msg > /tmp/reply 2> /tmp/nc.err &
listener=$!
( sleep {GUEST_LISTEN_SECS}; kill $listener ) 2> /dev/null &
echo "{LISTENING} {GUEST_PORT}"
wait $listener
status=$?
read reply < /tmp/reply
if [ "$status" = 0 ] && [ "$reply" = "{HOST_REPLY}" ]; then
    ok net-listen "the host connected to port {GUEST_PORT}, read the message and replied '$reply'"
else
    fail net-listen "nc exited with $status; the host's reply: '$reply'; $(cat /tmp/nc.err)"
fi"#
    )
}

/// One request the HTTP server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Its request line, or what was wrong with it.
    pub request: String,
    /// The status sent.
    pub status: u16,
    /// Bytes of body sent.
    pub sent: usize,
    /// What went wrong on the connection, if anything.
    pub error: Option<String>,
}

/// A running [`NetSetup`]: stop it with [`NetFixture::finish`] (or drop it) to remove it all.
#[derive(Debug)]
pub struct NetFixture {
    setup: NetSetup,
    dnsmasq: Option<std::process::Child>,
    http: Option<JoinHandle<Vec<Served>>>,
    stop: Arc<AtomicBool>,
    /// Whether the namespace is gone already.
    torn_down: bool,
}

fn ip(args: &[&str]) -> Result<()> {
    host::run(Command::new("ip").args(args))
}

/// Moves the calling thread into network namespace `namespace` (made by `ip netns add`).
pub fn enter_netns(namespace: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let ns = fs::File::open(format!("/var/run/netns/{namespace}"))?;
    // SAFETY: setns changes only this thread's network namespace, to one named by an fd we
    // hold open for the call.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A parsed HTTP request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, ...
    pub method: String,
    /// The path asked for.
    pub path: String,
}

/// Parses the request line at the start of an HTTP/1.x request's head.
pub fn parse_request(head: &[u8]) -> std::result::Result<Request, String> {
    let text = std::str::from_utf8(head).map_err(|_| "the request is not UTF-8".to_owned())?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    let words: Vec<&str> = line.split(' ').collect();
    match words[..] {
        [method, path, version]
            if !method.is_empty() && path.starts_with('/') && version.starts_with("HTTP/1.") =>
        {
            Ok(Request {
                method: method.to_owned(),
                path: path.to_owned(),
            })
        }
        _ => Err(format!("a bad request line {line:?}")),
    }
}

/// The status the server answers `request` with: the pattern for `GET` [`PATTERN_PATH`],
/// 404 for any other path, 405 for any other method.
pub fn route(request: &Request) -> u16 {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", PATTERN_PATH) => 200,
        ("GET", _) => 404,
        _ => 405,
    }
}

/// An HTTP/1.0 response head for `status` with a body of `len` bytes.
pub fn response_head(status: u16, len: usize) -> String {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    format!(
        "HTTP/1.0 {status} {reason}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    )
}

/// Reads a request's head (up to the blank line) from `conn`.
fn read_head(conn: &mut TcpStream) -> std::result::Result<Vec<u8>, String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_HEAD {
            return Err(format!("a request head over {MAX_HEAD} bytes"));
        }
        match conn.read(&mut buf) {
            Ok(0) => return Err("the client closed before the end of its request".into()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("reading the request: {e}")),
        }
    }
    Ok(head)
}

/// Answers one connection: the pattern, or an error status.
fn serve_one(mut conn: TcpStream, body: &[u8]) -> Served {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let (request, status) = match read_head(&mut conn).and_then(|h| parse_request(&h)) {
        Ok(r) => (format!("{} {}", r.method, r.path), route(&r)),
        Err(e) => (e, 400),
    };
    let body = if status == 200 { body } else { &[][..] };
    let mut served = Served {
        request,
        status,
        sent: 0,
        error: None,
    };
    let result = conn
        .write_all(response_head(status, body.len()).as_bytes())
        .and_then(|()| {
            for chunk in body.chunks(64 << 10) {
                conn.write_all(chunk)?;
                served.sent += chunk.len();
            }
            conn.flush()
        });
    if let Err(e) = result {
        served.error = Some(format!("writing the response: {e}"));
    }
    let _ = conn.shutdown(Shutdown::Write);
    served
}

/// Serves [`PATTERN_PATH`] on [`HOST_IP`]:[`HTTP_PORT`] inside `namespace` (from a thread
/// that enters it), one connection at a time, until `stop` is set; the thread returns what
/// it served.
fn serve_http(
    namespace: &str,
    stop: Arc<AtomicBool>,
    body: Vec<u8>,
) -> Result<JoinHandle<Vec<Served>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ns = namespace.to_owned();
    let handle = thread::spawn(move || {
        let listener = enter_netns(&ns)
            .and_then(|()| TcpListener::bind((HOST_IP, HTTP_PORT)))
            .and_then(|l| l.set_nonblocking(true).map(|()| l));
        let listener = match listener {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return Vec::new();
            }
        };
        let mut served = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => served.push(serve_one(conn, &body)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(50))
                }
                Err(e) => {
                    served.push(Served {
                        request: String::new(),
                        status: 0,
                        sent: 0,
                        error: Some(format!("accept: {e}")),
                    });
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
        served
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(Error::Command {
            command: format!("an HTTP server on {HOST_IP}:{HTTP_PORT} in {namespace}"),
            detail: e,
        }),
        Err(_) => Err(Error::Command {
            command: format!("an HTTP server on {HOST_IP}:{HTTP_PORT} in {namespace}"),
            detail: "its thread ended".into(),
        }),
    }
}

/// The SHA-256 of the pattern, in hex.
fn pattern_sha256() -> String {
    sha256_hex(&guest_script::pattern(PATTERN_LEN, PATTERN_SEED))
}

/// Judges the HTTP side: the server sent the whole pattern, with status 200, exactly once
/// and without error, and the guest's `net-http` detail is `sha256=<the host's sum>`.
pub fn judge_http(
    served: &[Served],
    guest_detail: Option<&str>,
    want_sha256: &str,
) -> std::result::Result<String, String> {
    let full: Vec<&Served> = served
        .iter()
        .filter(|s| s.status == 200 && s.sent == PATTERN_LEN && s.error.is_none())
        .collect();
    if full.len() != 1 || served.len() != 1 {
        return Err(format!(
            "the HTTP server should have served the pattern once, in full; it served {served:?}"
        ));
    }
    match guest_detail {
        Some(d) if d == format!("sha256={want_sha256}") => Ok(format!(
            "the host served {} over HTTP ({} bytes) and the guest's wget got it whole: {d}",
            full[0].request, full[0].sent
        )),
        other => Err(format!(
            "the guest's wget got {other:?}, but the pattern's sha256 is {want_sha256}"
        )),
    }
}

/// The line dnsmasq logs when it gave the guest its address.
fn dhcp_ack_line() -> String {
    format!("DHCPACK({TAP}) {GUEST_IP} {GUEST_MAC}")
}

impl NetFixture {
    /// Creates the namespace, the tap and, with [`NetSetup::servers`], dnsmasq and the HTTP
    /// server.
    pub fn start(setup: &NetSetup) -> Result<NetFixture> {
        let ns = setup.namespace.as_str();
        // Left over from an interrupted run, if any; usually there is none.
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", ns])?;
        let mut fixture = NetFixture {
            setup: setup.clone(),
            dnsmasq: None,
            http: None,
            stop: Default::default(),
            torn_down: false,
        };
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "tuntap", "add", "dev", TAP, "mode", "tap"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            TAP,
        ])?;
        ip(&["-n", ns, "link", "set", TAP, "up"])?;
        if !setup.servers {
            return Ok(fixture);
        }
        let log = fixture.dnsmasq_log();
        let log_file = fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
        let err_file = log_file.try_clone().ctx(|| "duplicating a file".into())?;
        let leases = setup.dir.join(format!("{ns}.leases"));
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
            ])
            .args(["--port=0", "--bind-interfaces", "--log-dhcp"])
            .arg(format!("--interface={TAP}"))
            .arg(format!(
                "--dhcp-range={GUEST_IP},{GUEST_IP},255.255.255.0,1h"
            ))
            .arg(format!("--dhcp-host={GUEST_MAC},{GUEST_IP}"))
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .ctx(|| "starting dnsmasq".into())?;
        fixture.dnsmasq = Some(child);
        let body = guest_script::pattern(PATTERN_LEN, PATTERN_SEED);
        fixture.http = Some(serve_http(ns, fixture.stop.clone(), body)?);
        Ok(fixture)
    }

    fn dnsmasq_log(&self) -> PathBuf {
        self.setup
            .dir
            .join(format!("{}.dnsmasq.log", self.setup.namespace))
    }

    /// Stops everything, removes the namespace (and the tap with it) and checks the host's
    /// side against the guest's serial log: notes when it passed, failures otherwise. Without
    /// servers there is nothing to check.
    pub fn finish(mut self, serial: &str) -> LiveResult {
        let served = self.teardown();
        if !self.setup.servers {
            return Ok(Vec::new());
        }
        let mut notes = Vec::new();
        let mut failures = Vec::new();
        let log = fs::read_to_string(self.dnsmasq_log()).unwrap_or_default();
        let ack = dhcp_ack_line();
        match guest_script::detail_of(serial, "net-dhcp") {
            Some(d) if log.contains(&ack) && d.starts_with(&format!("ip={GUEST_IP} ")) => {
                notes.push(format!("dnsmasq logged `{ack}`; the guest applied {d}"))
            }
            d => failures.push(format!(
                "dnsmasq's log {} {} `{ack}`; the guest's lease: {d:?}",
                self.dnsmasq_log().display(),
                if log.contains(&ack) { "has" } else { "lacks" }
            )),
        }
        let guest_sum = guest_script::detail_of(serial, "net-http");
        match judge_http(&served, guest_sum.as_deref(), &pattern_sha256()) {
            Ok(n) => notes.push(n),
            Err(f) => failures.push(f),
        }
        match read_metrics(&self.setup.metrics) {
            Ok(m) => {
                let rx = device_counter(&m, "virtio-net", "rx_bytes").unwrap_or(0);
                let tx = device_counter(&m, "virtio-net", "tx_bytes").unwrap_or(0);
                if rx < PATTERN_LEN as u64 {
                    failures.push(format!(
                        "virtio-net gave the guest {rx} bytes, less than the {PATTERN_LEN} of \
                         the pattern"
                    ));
                } else {
                    notes.push(format!("virtio-net: {rx} bytes to the guest, {tx} from it"));
                }
            }
            Err(e) => failures.push(e),
        }
        if failures.is_empty() {
            Ok(notes)
        } else {
            Err(failures)
        }
    }

    fn teardown(&mut self) -> Vec<Served> {
        self.torn_down = true;
        self.stop.store(true, Ordering::Relaxed);
        let served = self
            .http
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.setup.namespace])
            .status();
        served
    }
}

impl Drop for NetFixture {
    fn drop(&mut self) {
        if !self.torn_down {
            self.teardown();
        }
    }
}

/// Talks to the guest's `nc -l` over `conn`: reads what it sends until it shuts its side,
/// which must be [`GUEST_MESSAGE`] and a newline, then sends [`HOST_REPLY`] and closes,
/// which ends the guest's `nc`.
pub fn exchange(mut conn: TcpStream) -> std::result::Result<String, String> {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let mut got = Vec::new();
    conn.read_to_end(&mut got)
        .map_err(|e| format!("reading the guest's message: {e}"))?;
    let got = String::from_utf8_lossy(&got);
    if got != format!("{GUEST_MESSAGE}\n") {
        return Err(format!(
            "the guest's listener sent {got:?}, not {GUEST_MESSAGE:?}"
        ));
    }
    conn.write_all(format!("{HOST_REPLY}\n").as_bytes())
        .and_then(|()| conn.shutdown(Shutdown::Write))
        .map_err(|e| format!("sending the reply: {e}"))?;
    // Until the guest's nc, having read the reply and our end, closes.
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    Ok(format!(
        "the host connected to the guest's listener on {GUEST_IP}:{GUEST_PORT} and read \
         {GUEST_MESSAGE:?}"
    ))
}

/// Connects to `addr`, retrying until it answers or `give_up` says so.
pub fn connect_retrying(
    addr: SocketAddr,
    give_up: &dyn Fn() -> bool,
) -> std::result::Result<TcpStream, String> {
    loop {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(c) => return Ok(c),
            Err(e) if give_up() => return Err(format!("could not connect to {addr}: {e}")),
            Err(_) => thread::sleep(RETRY),
        }
    }
}

/// The host's side of the guest's listener: once the guest prints [`LISTENING`], connect to
/// it from inside the namespace and [`exchange`].
#[derive(Debug)]
pub struct GuestListener {
    /// The test namespace.
    pub namespace: String,
}

impl LiveCheck for GuestListener {
    fn run(&self, cx: &LiveContext<'_>) -> LiveResult {
        let _ = cx.ready.send(());
        let fail = |why: String| Err(vec![why]);
        if let Err(e) = enter_netns(&self.namespace) {
            return fail(format!("entering namespace {}: {e}", self.namespace));
        }
        if !cx.wait_for(LISTENING) {
            return fail(format!(
                "the guest never printed `{LISTENING}`, so the host did not connect"
            ));
        }
        let addr: SocketAddr = format!("{GUEST_IP}:{GUEST_PORT}")
            .parse()
            .expect("a fixed address");
        let started = Instant::now();
        connect_retrying(addr, &|| cx.should_stop())
            .and_then(exchange)
            .map(|note| {
                vec![format!(
                    "{note} ({:.1} s after the guest's cue)",
                    started.elapsed().as_secs_f64()
                )]
            })
            .map_err(|e| vec![e])
    }
}

/// The virtio-net scenario: root on a read-only disk holding the script and udhcpc's hook;
/// dnsmasq, the HTTP server and the host's connection to the guest's listener in the test
/// namespace.
pub fn scenario(vmlinux: &Path, dir: &Path) -> Result<Scenario> {
    host::ensure_packages(&["iproute2", "dnsmasq-base"])?;
    let image = dir.join(format!("{NAME}.ext4"));
    let metrics = dir.join(format!("{NAME}.metrics.json"));
    let _ = fs::remove_file(&metrics);
    let hook = ExtraFile {
        path: "udhcpc.sh".into(),
        data: UDHCPC_SCRIPT.as_bytes().to_vec(),
        mode: 0o755,
    };
    let script = guest_script::init_script(&guest_body());
    guest_script::build_rootfs(&image, &script, &[hook], 16)?;
    let mut s = read_only_root_scenario(NAME, vmlinux, &image);
    s.extra_args.extend([
        "--net".into(),
        format!("tap={TAP},mac={GUEST_MAC}"),
        "--metrics".into(),
        metrics.display().to_string(),
    ]);
    s.checks = vec!["net-dhcp", "net-http", "net-listen"];
    let namespace = format!("petrel-bt-{}", std::process::id());
    s.live = Some(Arc::new(GuestListener {
        namespace: namespace.clone(),
    }));
    s.net = Some(NetSetup {
        namespace,
        servers: true,
        dir: dir.to_owned(),
        metrics,
    });
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let r = parse_request(b"GET /pattern HTTP/1.1\r\nHost: 10.0.2.1\r\n\r\n").unwrap();
        assert_eq!(
            r,
            Request {
                method: "GET".into(),
                path: "/pattern".into()
            }
        );
        assert_eq!(route(&r), 200);
        let r = parse_request(b"GET /other HTTP/1.0\n\n").unwrap();
        assert_eq!(route(&r), 404);
        let r = parse_request(b"POST /pattern HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(route(&r), 405);
        for bad in [
            &b""[..],
            b"GET /pattern\r\n\r\n",
            b"GET pattern HTTP/1.1\r\n\r\n",
            b"GET /pattern HTTP/2\r\n\r\n",
            b"GET  /pattern HTTP/1.1\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn response_heads() {
        assert_eq!(
            response_head(200, 5),
            "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: \
             5\r\nConnection: close\r\n\r\n"
        );
        assert!(response_head(404, 0).starts_with("HTTP/1.0 404 Not Found\r\n"));
        assert!(response_head(405, 0).starts_with("HTTP/1.0 405 Method Not Allowed\r\n"));
    }

    #[test]
    fn http_judging() {
        let whole = Served {
            request: "GET /pattern".into(),
            status: 200,
            sent: PATTERN_LEN,
            error: None,
        };
        let sum = "ab".repeat(32);
        let one = std::slice::from_ref(&whole);
        let ok = judge_http(one, Some(&format!("sha256={sum}")), &sum);
        assert!(ok.unwrap().contains("GET /pattern"));
        // The guest's sum must be the host's.
        assert!(judge_http(one, Some("sha256=00"), &sum).is_err());
        assert!(judge_http(one, None, &sum).is_err());
        // Served short, twice, or not at all.
        let short = Served {
            sent: 100,
            error: Some("writing the response: broken pipe".into()),
            ..whole.clone()
        };
        let good = Some(format!("sha256={sum}"));
        assert!(judge_http(&[short], good.as_deref(), &sum).is_err());
        assert!(judge_http(&[whole.clone(), whole], good.as_deref(), &sum).is_err());
        assert!(judge_http(&[], good.as_deref(), &sum).is_err());
    }

    #[test]
    fn the_guest_script_uses_the_hosts_numbers() {
        let body = guest_body();
        assert!(body.contains(&format!("http://{HOST_IP}:{HTTP_PORT}{PATTERN_PATH}")));
        assert!(body.contains(&format!("nc -l -p {GUEST_PORT}")));
        assert!(body.contains(&format!("echo \"{LISTENING} {GUEST_PORT}\"")));
        // The message goes to a file, never to the console.
        assert!(body.contains(&format!("echo \"{GUEST_MESSAGE}\" > /tmp/msg")));
        assert_eq!(body.matches(GUEST_MESSAGE).count(), 1);
        assert!(body.contains(&format!("[ \"$reply\" = \"{HOST_REPLY}\" ]")));
        assert!(UDHCPC_SCRIPT.contains("route add default gw \"$router\""));
    }

    /// A stand-in for the guest's busybox `nc -l` on loopback: sends the message, shuts its
    /// side, and returns what came back until the host's end.
    fn fake_nc(message: &'static str) -> (SocketAddr, JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.write_all(message.as_bytes()).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut back = String::new();
            c.read_to_string(&mut back).unwrap();
            back
        });
        (addr, h)
    }

    #[test]
    fn the_host_reads_the_message_and_replies() {
        let (addr, nc) = fake_nc("petrel-net guest listener: 5f1d hello host\n");
        let conn = connect_retrying(addr, &|| true).unwrap();
        let note = exchange(conn).unwrap();
        assert!(note.contains(GUEST_MESSAGE), "{note}");
        assert_eq!(nc.join().unwrap(), format!("{HOST_REPLY}\n"));
    }

    #[test]
    fn a_wrong_message_is_a_failure_and_gets_no_reply() {
        let (addr, nc) = fake_nc("something else\n");
        let conn = connect_retrying(addr, &|| true).unwrap();
        let e = exchange(conn).unwrap_err();
        assert!(e.contains("something else"), "{e}");
        assert_eq!(nc.join().unwrap(), "");
    }

    #[test]
    fn connecting_gives_up_when_told() {
        // A port nothing listens on: bind one, note it, close it.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let tries = std::cell::Cell::new(0);
        let e = connect_retrying(addr, &|| {
            tries.set(tries.get() + 1);
            tries.get() >= 2
        })
        .unwrap_err();
        assert!(e.contains(&addr.to_string()), "{e}");
        assert_eq!(tries.get(), 2);
    }
}
