//! The cases of Firecracker's REST API (`petrel --api-sock`): how soon the socket accepts,
//! how soon `InstanceStart` reaches the guest, and what serving the API adds to the VMM's
//! memory. Firecracker is not installed here: its figures are medians measured earlier on
//! this kind of machine, shown as such.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::memory::{no_guest_mapping, MemRun};
use super::proc::{self, MemWatch, Watchdog};
use super::report::{Cell, Row, Target, Unit};
use super::{
    alternate, demo_ran, mib, missing, ms, Bench, GUEST_MIB, MEMORY_POLL, SETTLE, SHORT_LIMIT,
};
use crate::error::{Error, IoContext, Result};
use crate::fcapi::ApiClient;
use crate::host;

/// Firecracker's median from spawn to its API socket accepting a connection, ms.
const FIRECRACKER_SOCKET_MS: f64 = 1.31;

/// Firecracker's median from sending `InstanceStart` to the guest's first serial byte, ms.
const FIRECRACKER_START_MS: f64 = 10.7;

/// Where Firecracker's figures come from.
const FIRECRACKER_SOURCE: &str = "Firecracker's median, measured earlier on this kind of \
                                  machine (PVM, 2 CPUs) to the same point; Firecracker is not \
                                  installed here";

/// Spawn to the socket accepting must not take longer, ms.
const SOCKET_TARGET_MS: f64 = 0.65;

/// `InstanceStart` to the first guest byte must not take longer, ms.
const START_TARGET_MS: f64 = 5.0;

/// Serving the API must add less than this to the VMM's overhead, MiB.
const ADDED_MEMORY_TARGET_MIB: f64 = 0.5;

/// How long petrel may take to accept on its socket before the run fails.
const SOCKET_LIMIT: Duration = Duration::from_secs(5);

/// A petrel process that is killed (and reaped) if it is still running when dropped, so
/// that a failed run leaves nothing behind; and its socket, removed then too.
pub(super) struct Petrel {
    pub(super) child: host::Reaped,
    socket: Option<PathBuf>,
}

impl Drop for Petrel {
    fn drop(&mut self) {
        // Petrel itself is killed, if it still runs, when `child` is dropped after this.
        if let Some(s) = &self.socket {
            let _ = fs::remove_file(s);
        }
    }
}

/// Where the bench's API socket lives: under the temporary directory, since a socket's path
/// must fit in 108 bytes.
fn socket_path() -> PathBuf {
    std::env::temp_dir().join(format!("petrel-bench-{}.sock", std::process::id()))
}

/// `petrel --api-sock SOCKET`, stdout as given, stderr into `log`; returns the process, the
/// socket, and the time just before the spawn.
pub(super) fn spawn_api(
    b: &Bench,
    stdout: Stdio,
    log: &Path,
) -> Result<(Petrel, PathBuf, Instant)> {
    spawn_api_with(b, &[], Stdio::null(), stdout, log)
}

/// [`spawn_api`] with more arguments after `--api-sock SOCKET`, and stdin as given.
pub(super) fn spawn_api_with(
    b: &Bench,
    args: &[&str],
    stdin: Stdio,
    stdout: Stdio,
    log: &Path,
) -> Result<(Petrel, PathBuf, Instant)> {
    let sock = socket_path();
    let _ = fs::remove_file(&sock);
    let err = fs::File::create(log).ctx(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(&b.petrel);
    cmd.arg("--api-sock").arg(&sock).args(args);
    let start = Instant::now();
    let child = cmd
        .stdin(stdin)
        .stdout(stdout)
        .stderr(err)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(&cmd)))?;
    Ok((
        Petrel {
            child: host::Reaped(child),
            socket: Some(sock.clone()),
        },
        sock,
        start,
    ))
}

/// Connects to a freshly spawned petrel's socket as soon as it accepts.
pub(super) fn connect(
    p: &mut Petrel,
    sock: &Path,
    start: Instant,
) -> Result<(ApiClient, Duration)> {
    let child = &mut p.child;
    let (client, at) = ApiClient::connect_when_ready(sock, start, SOCKET_LIMIT, || {
        matches!(child.try_wait(), Ok(None))
    })?;
    client.set_timeout(Some(SHORT_LIMIT))?;
    Ok((client, at))
}

/// Stops a petrel with SIGTERM; it must end by the signal, after cleaning up.
pub(super) fn stop(p: &mut Petrel, log: &Path) -> Result<()> {
    let status = proc::terminate(&mut p.child, Duration::from_secs(10))?;
    if proc::ended_by_sigterm(&status) {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "petrel ended with {status} on SIGTERM, not by the signal; stderr: {}",
            proc::tail_of(log, 3)
        )))
    }
}

/// `{"kernel_image_path": ...}` for `PUT /boot-source`.
fn boot_source(kernel: &Path) -> String {
    serde_json::json!({ "kernel_image_path": kernel.display().to_string() }).to_string()
}

/// `PUT /machine-config`'s body: 1 vCPU and the bench's guest memory.
fn machine_config() -> String {
    serde_json::json!({ "vcpu_count": 1, "mem_size_mib": GUEST_MIB }).to_string()
}

/// The body of `PUT /actions` that boots the VM.
const INSTANCE_START: &str = r#"{"action_type":"InstanceStart"}"#;

/// One run of the socket case: (spawn to accepting, spawn to `GET /` answered), ms.
fn socket_run(b: &Bench) -> Result<(f64, f64)> {
    let log = b.dir.join("logs").join("api-socket.stderr");
    let (mut p, sock, start) = spawn_api(b, Stdio::null(), &log)?;
    let (mut client, accepted) = connect(&mut p, &sock, start)?;
    let info = client.expect("GET", "/", None, 200)?;
    let answered = start.elapsed();
    if !info.body.contains("Not started") {
        return Err(Error::Other(format!(
            "GET / answered {}, not a VM in state `Not started`",
            info.body.trim()
        )));
    }
    drop(client);
    stop(&mut p, &log)?;
    Ok((ms(accepted), ms(answered)))
}

/// `runs` timings of two figures each from `run`, after one untimed warm-up run (page cache,
/// first mapping of the binary), as for start-up; the first failing run ends the case.
fn timed_pairs(
    b: &Bench,
    runs: u32,
    run: fn(&Bench) -> Result<(f64, f64)>,
) -> std::result::Result<Vec<(f64, f64)>, Cell> {
    if let Some(cell) = missing(b, false) {
        return Err(cell);
    }
    let mut values = Vec::with_capacity(runs as usize);
    for i in 0..=runs {
        match run(b) {
            Ok(t) if i > 0 => values.push(t),
            Ok(_) => {}
            Err(e) => return Err(Cell::Error(format!("run {}: {e}", i + 1))),
        }
    }
    Ok(values)
}

/// One of the two figures of [`timed_pairs`]' runs as a table cell.
fn pair_cell(
    values: &std::result::Result<Vec<(f64, f64)>, Cell>,
    pick: fn(&(f64, f64)) -> f64,
) -> Cell {
    match values {
        Ok(v) => Cell::Measured(v.iter().map(pick).collect()),
        Err(c) => c.clone(),
    }
}

/// Case: spawn to the API socket accepting, and to `GET /` answered.
pub fn socket(b: &Bench, runs: u32) -> Vec<Row> {
    let values = timed_pairs(b, runs, socket_run);
    let cell = |pick: fn(&(f64, f64)) -> f64| pair_cell(&values, pick);
    vec![
        Row {
            id: "api_socket_accepting",
            name: "API: spawn to socket accepting".into(),
            unit: Unit::MsFine,
            petrel: cell(|t| t.0),
            comparison_name: "Firecracker (earlier)".into(),
            comparison: Cell::Reference {
                median: FIRECRACKER_SOCKET_MS,
                source: FIRECRACKER_SOURCE.into(),
            },
            target: Target::ValueAtMost(SOCKET_TARGET_MS),
            measures: format!(
                "Wall time from just before spawning `petrel --api-sock SOCKET` to the first \
                 successful connect() on the socket (tried in a loop that yields the CPU between \
                 tries, from the spawn on); one untimed warm-up run, then the VMM is stopped \
                 with SIGTERM after each run and must end by it. Firecracker's figure is to the \
                 same point (its socket accepting). Runs: {runs}."
            ),
        },
        Row {
            id: "api_socket_answered",
            name: "API: spawn to `GET /` answered".into(),
            unit: Unit::MsFine,
            petrel: cell(|t| t.1),
            comparison_name: "-".into(),
            comparison: Cell::None("-".into()),
            target: Target::None,
            measures: "The same runs, to the end of the answer to `GET /` sent on that first \
                       connection (200, the instance info, state `Not started`)."
                .into(),
        },
    ]
}

/// Reads a child's stdout on a thread, noting when the first byte came.
struct FirstByte {
    thread: JoinHandle<(Option<Instant>, Vec<u8>)>,
}

impl FirstByte {
    fn start(mut out: ChildStdout) -> Self {
        let thread = thread::spawn(move || {
            let mut first = None;
            let mut text = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match out.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        first.get_or_insert_with(Instant::now);
                        text.extend_from_slice(&buf[..n]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            (first, text)
        });
        Self { thread }
    }

    /// Waits for the end of the output; returns when the first byte came and all of it.
    fn finish(self) -> (Option<Instant>, String) {
        let (first, text) = self.thread.join().unwrap_or((None, Vec::new()));
        (first, String::from_utf8_lossy(&text).into_owned())
    }
}

/// One run of the `InstanceStart` case: (to the first guest byte, to the 204), ms.
fn start_run(b: &Bench) -> Result<(f64, f64)> {
    let log = b.dir.join("logs").join("api-start.stderr");
    let (mut p, sock, start) = spawn_api(b, Stdio::piped(), &log)?;
    let out = FirstByte::start(p.child.stdout.take().expect("stdout is piped"));
    let (mut client, _) = connect(&mut p, &sock, start)?;
    client.expect("PUT", "/boot-source", Some(&boot_source(&b.demo_elf)), 204)?;
    client.expect("PUT", "/machine-config", Some(&machine_config()), 204)?;
    let sent = Instant::now();
    client.send("PUT", "/actions", Some(INSTANCE_START))?;
    let answer = client.receive()?;
    let answered = sent.elapsed();
    if answer.status != 204 {
        return Err(Error::Other(format!(
            "InstanceStart was answered {}: {}",
            answer.status,
            answer.body.trim()
        )));
    }
    drop(client);
    let dog = Watchdog::arm(p.child.id(), SHORT_LIMIT);
    let status = p.child.wait().ctx(|| "waiting for petrel".into())?;
    if dog.disarm() {
        return Err(Error::Other(format!(
            "petrel ran past {} s and was killed",
            SHORT_LIMIT.as_secs()
        )));
    }
    let (first, stdout) = out.finish();
    if !status.success() || !demo_ran(&stdout) {
        return Err(Error::Other(format!(
            "petrel --api-sock with the demo guest: {status}, stdout {:?}; stderr: {}",
            host::tail_lines(&stdout, 2).join(" / "),
            proc::tail_of(&log, 3)
        )));
    }
    let first = first.ok_or_else(|| Error::Other("the guest printed nothing".into()))?;
    Ok((ms(first.saturating_duration_since(sent)), ms(answered)))
}

/// Case: `InstanceStart` to the demo guest's first serial byte.
pub fn start(b: &Bench, runs: u32) -> Vec<Row> {
    let values = timed_pairs(b, runs, start_run);
    let cell = |pick: fn(&(f64, f64)) -> f64| pair_cell(&values, pick);
    vec![
        Row {
            id: "api_instance_start_first_byte",
            name: "API: InstanceStart to first guest byte".into(),
            unit: Unit::MsFine,
            petrel: cell(|t| t.0),
            comparison_name: "Firecracker (earlier)".into(),
            comparison: Cell::Reference {
                median: FIRECRACKER_START_MS,
                source: FIRECRACKER_SOURCE.into(),
            },
            target: Target::ValueAtMost(START_TARGET_MS),
            measures: format!(
                "`petrel --api-sock SOCKET` configured over one kept-alive connection with \
                 `PUT /boot-source` (demo.elf, no boot_args) and `PUT /machine-config` (1 vCPU, \
                 {GUEST_MIB} MiB), both answered 204; then wall time from just before writing \
                 `PUT /actions {INSTANCE_START}` to the first byte of the guest's serial output \
                 read from petrel's stdout pipe (a thread blocked in read). Each run must print \
                 the demo's 5 lines and exit 0; one untimed warm-up run. Runs: {runs}."
            ),
        },
        Row {
            id: "api_instance_start_answered",
            name: "API: InstanceStart answered (204)".into(),
            unit: Unit::MsFine,
            petrel: cell(|t| t.1),
            comparison_name: "-".into(),
            comparison: Cell::None("-".into()),
            target: Target::None,
            measures: "The same runs, to the end of the 204 answering `InstanceStart` (Petrel \
                       answers once the VM is built and its vCPU started)."
                .into(),
        },
    ]
}

/// Reads the VMM's memory once, `SETTLE` after `since`, then stops it with SIGTERM.
fn settled_memory(p: &mut Petrel, since: Instant, log: &Path) -> Result<MemRun> {
    let guest_kib = GUEST_MIB * 1024;
    let w = proc::watch_memory(&mut p.child, guest_kib, MEMORY_POLL, SHORT_LIMIT, |_| {
        since.elapsed() >= SETTLE
    })?;
    if w.exited {
        return Err(Error::Other(format!(
            "the spin guest's petrel exited early; stderr: {}",
            proc::tail_of(log, 3)
        )));
    }
    let mut last = MemWatch::default();
    last.sample(p.child.id(), guest_kib);
    stop(p, log)?;
    let split = last.last_split.ok_or_else(|| no_guest_mapping("petrel"))?;
    Ok(MemRun {
        steady: mib(split.overhead_kib()),
        private: mib(split.private_overhead_kib()),
        peak: f64::NAN,
        peak_overhead: f64::NAN,
    })
}

/// The spin kernel booted through the API; memory read `SETTLE` after `InstanceStart`.
fn api_memory_run(b: &Bench) -> Result<MemRun> {
    let log = b.dir.join("logs").join("api-memory.stderr");
    let (mut p, sock, start) = spawn_api(b, Stdio::null(), &log)?;
    let (mut client, _) = connect(&mut p, &sock, start)?;
    client.expect("PUT", "/boot-source", Some(&boot_source(&b.spin_elf)), 204)?;
    client.expect("PUT", "/machine-config", Some(&machine_config()), 204)?;
    client.expect("PUT", "/actions", Some(INSTANCE_START), 204)?;
    let started = Instant::now();
    drop(client);
    settled_memory(&mut p, started, &log)
}

/// The spin kernel booted from the command line; memory read `SETTLE` after the spawn.
fn cmdline_memory_run(b: &Bench) -> Result<MemRun> {
    let log = b.dir.join("logs").join("api-memory-cmdline.stderr");
    let err = fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(&b.petrel);
    cmd.arg("--kernel")
        .arg(&b.spin_elf)
        .args(["--mem", &format!("{GUEST_MIB}M")]);
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(&cmd)))?;
    let mut p = Petrel {
        child: host::Reaped(child),
        socket: None,
    };
    settled_memory(&mut p, start, &log)
}

/// Case: the VMM's overhead with the VM started through the API against the command line.
pub fn memory(b: &Bench, runs: u32) -> Vec<Row> {
    let mut api_runs = Vec::new();
    let mut cmdline_runs = Vec::new();
    let (api, cmdline) = alternate(
        runs,
        (missing(b, false), |_| {
            api_memory_run(b).map(|r| {
                api_runs.push(r);
                r.steady
            })
        }),
        (missing(b, false), |_| {
            cmdline_memory_run(b).map(|r| {
                cmdline_runs.push(r);
                r.steady
            })
        }),
    );
    let private = |cell: &Cell, v: &[MemRun]| match cell {
        Cell::Measured(_) => Cell::Measured(v.iter().map(|r| r.private).collect()),
        other => other.clone(),
    };
    let (api_private, cmdline_private) =
        (private(&api, &api_runs), private(&cmdline, &cmdline_runs));
    vec![
        Row {
            id: "api_memory_overhead",
            name: "API: VMM overhead, VM alive".into(),
            unit: Unit::MiB,
            petrel: api,
            comparison_name: "Petrel, command line".into(),
            comparison: cmdline,
            target: Target::AddedBelow(ADDED_MEMORY_TARGET_MIB),
            measures: format!(
                "What serving the API adds: the VMM's resident memory minus the guest-RAM \
                 mapping's (as in the memory rows) with a VM started through the API, against \
                 one started from the command line, the same guest in both: spin.elf, a 122-byte \
                 ELF kernel whose entry point is `jmp $`. API: `petrel --api-sock SOCKET`, \
                 `PUT /boot-source`, `PUT /machine-config` ({GUEST_MIB} MiB), `PUT /actions \
                 InstanceStart`, the connection closed, read {} ms after the 204. Command line: \
                 `petrel --kernel spin.elf --mem {GUEST_MIB}M`, read {} ms after the spawn. Both \
                 then SIGTERM (ended by it); runs alternate. The target is on the difference of the \
                 medians.",
                SETTLE.as_millis(),
                SETTLE.as_millis()
            ),
        },
        Row {
            id: "api_memory_private",
            name: "API: VMM private memory, VM alive".into(),
            unit: Unit::MiB,
            petrel: api_private,
            comparison_name: "Petrel, command line".into(),
            comparison: cmdline_private,
            target: Target::None,
            measures: "From the same smaps reads, only the Anonymous pages minus the guest \
                       RAM's: the API's cost per VM, its code being shared between VMMs."
                .into(),
        },
    ]
}
