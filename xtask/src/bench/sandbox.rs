//! The sandbox case (issue 27): from "start a sandbox" to the first answer of a program in the
//! guest's userspace. A snapshot of a Linux guest whose shell waits in `read()` on its console
//! is loaded by a fresh `petrel --api-sock` (`PUT /snapshot/load` with `resume_vm`), one line is
//! written to the console, and the time to the guest's answer is measured: with the snapshot's
//! working set prefetched (`--working-set prefetch`, after one `--working-set record` run), with
//! on-demand faults (`--working-set off`), and against a fresh boot of the same guest.
//!
//! The guest: the boot-test kernel (vmlinux, 256 MiB, 1 vCPU) with a read-only ext4 root on
//! virtio-blk holding busybox and an `/init` that prints [`READY`] and then answers each console
//! line `L` with `answer L`, in shell builtins only (no fork). Firecracker is not installed
//! here: its figures are the ranges issue 27's author measured with the same guest and method.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use super::api::{connect, spawn_api_with, stop};
use super::proc::{self, Watchdog};
use super::report::{Cell, Row, Target, Unit};
use super::{missing, ms, Bench, GUEST_MIB};
use crate::error::{Error, IoContext, Result};
use crate::guest_script::build_rootfs;
use crate::host;
use crate::virtio_boot::root_cmdline;

/// What the guest's init prints once its answering loop is about to read the console.
pub const READY: &str = "PETREL-SANDBOX-READY";

/// What the guest puts before each line it answers.
const ANSWER_PREFIX: &str = "answer ";

/// Size of the guest's root filesystem image, MiB (busybox is about 2 MiB).
const ROOTFS_MIB: u32 = 16;

/// Firecracker's medians from `PUT /snapshot/load` to the guest's answer, ms: the lowest and
/// highest of three sets of 5-8 runs (issue 27).
const FIRECRACKER_ANSWER_MS: (f64, f64) = (164.0, 268.0);

/// Firecracker's `PUT /snapshot/load` (with `resume_vm`) answered, ms, in the same runs.
const FIRECRACKER_LOAD_MS: (f64, f64) = (9.9, 10.1);

/// Load to answer with the working set prefetched must take at most this fraction of
/// Firecracker's (its lowest median, so that the target holds against each of its sets).
const ANSWER_TARGET: f64 = 0.25;

/// How long a fresh boot may take to print [`READY`] (about 20-25 s when guest kernel code is
/// emulated).
const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// How long the guest may take to answer once the line is written, or the VMM to stop.
const ANSWER_LIMIT: Duration = Duration::from_secs(60);

/// How long the snapshot's source waits after [`READY`] before SIGUSR1, for the shell to go
/// from its `echo` to blocking in `read()`.
const INTO_READ: Duration = Duration::from_secs(2);

/// What petrel prints on stderr once the snapshot's files are written.
const SNAPSHOT_WRITTEN: &str = "snapshot written";

/// How the working-set line on a recording petrel's stderr starts.
const WORKING_SET_LINE: &str = "working set: ";

/// The bytes of a guest page, for the working-set size.
const PAGE_BYTES: u64 = 4096;

/// The guest's `/init`: the ready line, then one answer per console line (builtins only).
fn init_script() -> String {
    format!(
        "#!/bin/busybox sh\n\
         # Petrel bench (sandbox): answer each console line.\n\
         echo {READY}\n\
         while read -r l; do echo \"{ANSWER_PREFIX}$l\"; done\n\
         echo PETREL-SANDBOX-EOF\n"
    )
}

/// The guest's command line (Petrel adds its words for emulating hosts itself).
fn cmdline() -> String {
    root_cmdline("ro")
}

/// The line the guest must print for the line `sent`.
fn answer_to(sent: &str) -> String {
    format!("{ANSWER_PREFIX}{sent}")
}

/// A restoring petrel's `--working-set` mode (issue 27's design).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkingSet {
    /// On-demand faults only.
    Off,
    /// No prefetch; the touched pages are written to `DIR/state.working-set` at the end.
    Record,
    /// The recorded pages brought in before the vCPUs run.
    Prefetch,
}

impl WorkingSet {
    fn flag(self) -> &'static str {
        match self {
            WorkingSet::Off => "off",
            WorkingSet::Record => "record",
            WorkingSet::Prefetch => "prefetch",
        }
    }
}

/// The arguments of a restoring petrel for `mode`: none for `Off` on a petrel without the
/// option (on-demand faults are all it does).
fn working_set_args(mode: WorkingSet, has_option: bool) -> Vec<&'static str> {
    if has_option {
        vec!["--working-set", mode.flag()]
    } else {
        Vec::new()
    }
}

/// Whether this petrel has `--working-set` (its `restore --help` lists it).
fn has_working_set_option(petrel: &Path) -> bool {
    Command::new(petrel)
        .args(["restore", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--working-set"))
}

/// Complete console lines and when each was read, from the chunks of a pipe.
#[derive(Debug, Default)]
struct Lines {
    partial: Vec<u8>,
    done: Vec<(Instant, String)>,
}

impl Lines {
    /// Adds a chunk read at `at`: each line it completes is stamped `at` (trailing `\r` cut).
    fn push(&mut self, at: Instant, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_owned();
                self.done.push((at, line));
                self.partial.clear();
            } else {
                self.partial.push(byte);
            }
        }
    }

    /// When the first complete line that `want` accepts was read.
    fn find(&self, want: &dyn Fn(&str) -> bool) -> Option<Instant> {
        self.done.iter().find(|(_, l)| want(l)).map(|(at, _)| *at)
    }

    /// Every complete line, each with the milliseconds since `since` when it was read.
    fn timed_text(&self, since: Instant) -> String {
        self.done
            .iter()
            .map(|(at, l)| format!("{:9.1} {l}\n", ms(at.saturating_duration_since(since))))
            .collect()
    }

    /// The last `n` complete lines, for error messages.
    fn tail(&self, n: usize) -> String {
        let from = self.done.len().saturating_sub(n);
        self.done[from..]
            .iter()
            .map(|(_, l)| l.trim())
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

/// A guest console on a VMM's stdout pipe, read on a thread that stamps each chunk when
/// `read` returns it, and keeps reading until the VMM closes it.
struct Console {
    chunks: Receiver<(Instant, Vec<u8>)>,
    lines: Lines,
}

impl Console {
    fn start(mut out: ChildStdout) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match out.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        // A receiver gone still leaves the pipe drained until the VMM ends.
                        let _ = tx.send((Instant::now(), buf[..n].to_vec()));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        Self {
            chunks: rx,
            lines: Lines::default(),
        }
    }

    /// Waits up to `limit` for a line that `want` accepts; returns when it was read.
    fn wait_for(
        &mut self,
        what: &str,
        want: &dyn Fn(&str) -> bool,
        limit: Duration,
    ) -> Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(at) = self.lines.find(want) {
                return Ok(at);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok((at, bytes)) => self.lines.push(at, &bytes),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::Other(format!(
                        "no {what} on the console within {} s; it ends with `{}`",
                        limit.as_secs(),
                        self.lines.tail(3)
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Other(format!(
                        "the VMM closed the console before {what}; it ends with `{}`",
                        self.lines.tail(3)
                    )))
                }
            }
        }
    }
}

/// Writes `line` and a newline to the guest's console input.
fn type_line(stdin: &mut ChildStdin, line: &str) -> Result<()> {
    stdin
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| stdin.flush())
        .ctx(|| "writing to the VMM's stdin".into())
}

/// The guest's files, and the snapshot taken of it.
#[derive(Debug)]
struct Guest {
    vmlinux: PathBuf,
    rootfs: PathBuf,
    snapshot: PathBuf,
    /// Spawn to [`READY`] of the snapshot's source boot, s.
    source_ready_s: f64,
}

impl Guest {
    /// `--kernel ... --disk ROOTFS,ro`: the arguments that boot it.
    fn boot_args(&self) -> Vec<String> {
        vec![
            "--kernel".into(),
            self.vmlinux.display().to_string(),
            "--cmdline".into(),
            cmdline(),
            "--mem".into(),
            format!("{GUEST_MIB}M"),
            "--vcpus".into(),
            "1".into(),
            "--disk".into(),
            format!("{},ro", self.rootfs.display()),
        ]
    }
}

/// Builds (or finds) the kernel, writes the root filesystem, and snapshots the guest.
fn prepare(b: &Bench) -> Result<Guest> {
    let built = crate::build::build_guest(&[])?;
    let rootfs = b.dir.join("sandbox-root.ext4");
    build_rootfs(&rootfs, &init_script(), &[], ROOTFS_MIB)?;
    let mut g = Guest {
        vmlinux: built.kernel.vmlinux,
        rootfs,
        snapshot: b.dir.join("sandbox-snapshot"),
        source_ready_s: f64::NAN,
    };
    g.source_ready_s = make_snapshot(b, &g)?;
    Ok(g)
}

/// Boots the guest with `--snapshot-on-signal`, waits for [`READY`] and [`INTO_READ`], sends
/// SIGUSR1; petrel must say [`SNAPSHOT_WRITTEN`] and exit 0. Returns spawn to READY, s.
fn make_snapshot(b: &Bench, g: &Guest) -> Result<f64> {
    let _ = fs::remove_dir_all(&g.snapshot);
    let serial = b.dir.join("logs").join("sandbox-source.serial");
    let log = b.dir.join("logs").join("sandbox-source.stderr");
    let _ = fs::remove_file(&serial);
    let mut cmd = Command::new(&b.petrel);
    cmd.args(g.boot_args())
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .arg("--snapshot-on-signal")
        .arg(&g.snapshot);
    println!("    {}", host::describe(&cmd));
    let err = fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(&cmd)))?;
    let dog = Watchdog::arm(child.id(), BOOT_LIMIT + ANSWER_LIMIT);
    let ready = loop {
        let text = fs::read_to_string(&serial).unwrap_or_default();
        if text.lines().any(|l| l.contains(READY)) {
            break start.elapsed();
        }
        if start.elapsed() > BOOT_LIMIT || !matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
            dog.disarm();
            return Err(Error::Other(format!(
                "the guest did not print {READY} within {} s; serial log: `{}`; stderr: {}",
                BOOT_LIMIT.as_secs(),
                host::tail_lines(&text, 3).join(" / "),
                proc::tail_of(&log, 3)
            )));
        }
        thread::sleep(Duration::from_millis(20));
    };
    println!(
        "    {READY} after {:.1} s; snapshot in {} s",
        ready.as_secs_f64(),
        INTO_READ.as_secs()
    );
    thread::sleep(INTO_READ);
    proc::signal(child.id(), libc::SIGUSR1);
    let status = child.wait().ctx(|| "waiting for petrel".into())?;
    let stderr = fs::read_to_string(&log).unwrap_or_default();
    if dog.disarm()
        || !status.success()
        || !stderr.contains(SNAPSHOT_WRITTEN)
        || !g.snapshot.join("state").is_file()
        || !g.snapshot.join("mem").is_file()
    {
        return Err(Error::Other(format!(
            "the snapshot was not written ({status}); stderr: {}",
            proc::tail_of(&log, 3)
        )));
    }
    Ok(ready.as_secs_f64())
}

/// One timed load: from just before `PUT /snapshot/load` to the guest's answer, and to the
/// load's 204, ms; and the VMM's stderr.
#[derive(Debug, Clone, PartialEq)]
struct LoadRun {
    answer_ms: f64,
    load_ms: f64,
    stderr: String,
}

/// A fresh `petrel --api-sock` with `args`, stdin and stdout piped: `PUT /snapshot/load`
/// (File backend, `resume_vm`), then `ping N` on the console once it answered 204; the guest
/// must answer `answer ping N`. Then SIGTERM, by which petrel must end.
fn load_run(b: &Bench, g: &Guest, args: &[&str], n: u32) -> Result<LoadRun> {
    let name = match args.last() {
        Some(mode) => format!("sandbox-load-{mode}"),
        None => "sandbox-load".to_owned(),
    };
    let log = b.dir.join("logs").join(format!("{name}.stderr"));
    let (mut p, sock, start) = spawn_api_with(b, args, Stdio::piped(), Stdio::piped(), &log)?;
    let mut console = Console::start(p.child.stdout.take().expect("stdout is piped"));
    let mut stdin = p.child.stdin.take().expect("stdin is piped");
    let (mut client, _) = connect(&mut p, &sock, start)?;
    let body = serde_json::json!({
        "snapshot_path": g.snapshot.join("state"),
        "mem_backend": { "backend_type": "File", "backend_path": g.snapshot.join("mem") },
        "resume_vm": true,
    })
    .to_string();
    let sent = Instant::now();
    client.send("PUT", "/snapshot/load", Some(&body))?;
    let answer = client.receive()?;
    let loaded = sent.elapsed();
    if answer.status != 204 {
        return Err(Error::Other(format!(
            "PUT /snapshot/load was answered {}: {}",
            answer.status,
            answer.body.trim()
        )));
    }
    let line = format!("ping {n}");
    type_line(&mut stdin, &line)?;
    let want = answer_to(&line);
    let answered = console.wait_for(&format!("`{want}`"), &|l| l == want, ANSWER_LIMIT)?;
    drop(client);
    stop(&mut p, &log)?;
    let console_log = log.with_extension("console");
    fs::write(&console_log, console.lines.timed_text(sent))
        .ctx(|| format!("writing {}", console_log.display()))?;
    let run = LoadRun {
        answer_ms: ms(answered.saturating_duration_since(sent)),
        load_ms: ms(loaded),
        stderr: fs::read_to_string(&log).unwrap_or_default(),
    };
    println!(
        "    load {n} ({}): answered {:.1} ms after the request, the request {:.2} ms",
        args.last().unwrap_or(&"no flag"),
        run.answer_ms,
        run.load_ms
    );
    Ok(run)
}

/// One fresh boot of the guest with its console on stdio: from the spawn to the answer to
/// `ping N`, written once [`READY`] showed, s. Then SIGTERM, by which petrel must end.
fn boot_run(b: &Bench, g: &Guest, n: u32) -> Result<f64> {
    let log = b.dir.join("logs").join("sandbox-boot.stderr");
    let err = fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(&b.petrel);
    cmd.args(g.boot_args()).args(["--serial", "stdio"]);
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(&cmd)))?;
    let mut vmm = Reaped(child);
    let mut console = Console::start(vmm.0.stdout.take().expect("stdout is piped"));
    let mut stdin = vmm.0.stdin.take().expect("stdin is piped");
    console.wait_for(READY, &|l| l.contains(READY), BOOT_LIMIT)?;
    let line = format!("ping {n}");
    type_line(&mut stdin, &line)?;
    let want = answer_to(&line);
    let answered = console.wait_for(&format!("`{want}`"), &|l| l == want, ANSWER_LIMIT)?;
    let status = proc::terminate(&mut vmm.0, ANSWER_LIMIT)?;
    if !proc::ended_by_sigterm(&status) {
        return Err(Error::Other(format!(
            "petrel ended with {status} on SIGTERM, not by the signal; stderr: {}",
            proc::tail_of(&log, 3)
        )));
    }
    Ok(answered.saturating_duration_since(start).as_secs_f64())
}

/// A VMM that is killed and reaped if it is still running when dropped (a failed run).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The pages named on a recording petrel's `working set: N pages (M MiB) written to PATH`
/// line, and the line.
fn working_set_pages(stderr: &str) -> Option<(u64, String)> {
    stderr.lines().find_map(|l| {
        let rest = &l[l.find(WORKING_SET_LINE)? + WORKING_SET_LINE.len()..];
        let (pages, after) = rest.split_once(' ')?;
        after.starts_with("pages").then_some(())?;
        Some((pages.parse().ok()?, l.trim().to_owned()))
    })
}

/// What the record run left: the working set's size, MiB of guest memory, and what to say
/// about it.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    mib: f64,
    note: String,
}

/// The record run: a [`load_run`] with `--working-set record`; the working-set file must then
/// be there and the stderr line say how many pages it holds.
fn record_run(b: &Bench, g: &Guest, n: u32) -> Result<Recorded> {
    let file = g.snapshot.join("state.working-set");
    let _ = fs::remove_file(&file);
    let run = load_run(b, g, &working_set_args(WorkingSet::Record, true), n)?;
    let bytes = fs::metadata(&file)
        .map(|m| m.len())
        .map_err(|e| Error::Other(format!("no working-set file {}: {e}", file.display())))?;
    let (pages, line) = working_set_pages(&run.stderr).ok_or_else(|| {
        Error::Other(format!(
            "the recording petrel's stderr has no `{WORKING_SET_LINE}N pages` line: {}",
            host::tail_lines(&run.stderr, 3).join(" / ")
        ))
    })?;
    Ok(Recorded {
        mib: (pages * PAGE_BYTES) as f64 / f64::from(1u32 << 20),
        note: format!(
            "the record run answered {:.1} ms after the load request (load answered in {:.2} \
             ms); its stderr: `{line}`; {} is {bytes} bytes",
            run.answer_ms,
            run.load_ms,
            file.display()
        ),
    })
}

/// The runs of one side: values per run, or what ended them.
#[derive(Debug, Default)]
struct Side {
    answer: Vec<f64>,
    load: Vec<f64>,
    ended: Option<Cell>,
}

impl Side {
    /// A side that is not run, for `why`.
    fn not_run(why: Cell) -> Self {
        Self {
            ended: Some(why),
            ..Self::default()
        }
    }

    /// Runs `one` unless the side has ended; its first error ends the side.
    fn run(&mut self, i: u32, one: impl FnOnce() -> Result<(f64, f64)>) {
        if self.ended.is_some() {
            return;
        }
        match one() {
            Ok((answer, load)) => {
                self.answer.push(answer);
                self.load.push(load);
            }
            Err(e) => self.ended = Some(Cell::Error(format!("run {}: {e}", i + 1))),
        }
    }

    fn cell(&self, pick: fn(&Self) -> &Vec<f64>) -> Cell {
        self.ended
            .clone()
            .unwrap_or_else(|| Cell::Measured(pick(self).clone()))
    }
}

/// Everything the case measured.
#[derive(Debug)]
struct Results {
    runs: u32,
    off: Side,
    prefetch: Side,
    boot: Side,
    recorded: std::result::Result<Recorded, Cell>,
    /// Whether the petrel had `--working-set` (without it, `off` is run with no flag).
    has_option: bool,
    /// The snapshot's source boot to READY, s.
    source_ready_s: f64,
}

/// The case: the snapshot, one untimed warm-up load, the record run, then `runs` rounds of
/// an on-demand load, a prefetched load and a fresh boot.
pub fn sandbox(b: &Bench, runs: u32) -> Vec<Row> {
    let has_option = has_working_set_option(&b.petrel);
    if !has_option {
        println!(
            "    {} has no --working-set: on-demand loads only, with no flag",
            b.petrel.display()
        );
    }
    let guest = missing(b, false).map(Err).unwrap_or_else(|| {
        prepare(b).map_err(|e| Cell::Error(format!("preparing the guest: {e}")))
    });
    let mut r = Results {
        runs,
        off: Side::default(),
        prefetch: Side::default(),
        boot: Side::default(),
        recorded: Err(Cell::None(String::new())),
        has_option,
        source_ready_s: f64::NAN,
    };
    let g = match guest {
        Ok(g) => g,
        Err(cell) => {
            for side in [&mut r.off, &mut r.prefetch, &mut r.boot] {
                side.ended = Some(cell.clone());
            }
            r.recorded = Err(cell);
            return rows(&r);
        }
    };
    r.source_ready_s = g.source_ready_s;
    let off_args = working_set_args(WorkingSet::Off, has_option);
    let prefetch_args = working_set_args(WorkingSet::Prefetch, true);
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    let as_pair = |l: LoadRun| (l.answer_ms, l.load_ms);
    if let Err(e) = load_run(b, &g, &off_args, next()) {
        let cell = Cell::Error(format!("the warm-up load: {e}"));
        r.off.ended = Some(cell.clone());
        r.prefetch.ended = Some(cell);
    }
    r.recorded = if !has_option {
        Err(no_option(b))
    } else if let Some(c) = &r.off.ended {
        Err(c.clone())
    } else {
        record_run(b, &g, next()).map_err(|e| Cell::Error(format!("the record run: {e}")))
    };
    if let Err(c) = &r.recorded {
        r.prefetch = Side::not_run(c.clone());
    }
    for i in 0..runs {
        r.off
            .run(i, || load_run(b, &g, &off_args, next()).map(as_pair));
        r.prefetch
            .run(i, || load_run(b, &g, &prefetch_args, next()).map(as_pair));
        r.boot.run(i, || {
            let s = boot_run(b, &g, next())?;
            println!("    fresh boot {}: answered after {s:.1} s", i + 1);
            Ok((s, f64::NAN))
        });
    }
    rows(&r)
}

/// Why the prefetch side is missing on a petrel without the option.
fn no_option(b: &Bench) -> Cell {
    Cell::Missing(format!(
        "{} has no `--working-set` option (`restore --help` does not list it)",
        b.petrel.display()
    ))
}

/// Firecracker's load-to-answer figure, as compared: the lowest of its medians.
fn firecracker_answer() -> Cell {
    Cell::Reference {
        median: FIRECRACKER_ANSWER_MS.0,
        source: format!(
            "Firecracker's medians from PUT /snapshot/load to the guest's answer were {} to {} \
             ms (single runs 110 to 690 ms) in three sets of 5-8 runs, measured by issue 27's \
             author on this kind of host with the same guest and method, not in this run \
             (Firecracker is not installed here); the lowest median is shown and compared",
            FIRECRACKER_ANSWER_MS.0, FIRECRACKER_ANSWER_MS.1
        ),
    }
}

/// Firecracker's load-request figure: the middle of its range.
fn firecracker_load() -> Cell {
    Cell::Reference {
        median: (FIRECRACKER_LOAD_MS.0 + FIRECRACKER_LOAD_MS.1) / 2.0,
        source: format!(
            "Firecracker answered PUT /snapshot/load (resume_vm) in {} to {} ms (medians) in \
             the same runs of issue 27's author, not in this run; the middle is shown",
            FIRECRACKER_LOAD_MS.0, FIRECRACKER_LOAD_MS.1
        ),
    }
}

/// The table's rows from the case's results.
fn rows(r: &Results) -> Vec<Row> {
    let runs = r.runs;
    let guest = format!(
        "The guest: the boot-test kernel (vmlinux, {GUEST_MIB} MiB, 1 vCPU, `{}`) with a \
         read-only ext4 root on virtio-blk (`--disk sandbox-root.ext4,ro`: busybox and an /init \
         that prints `{READY}`, then answers each console line L with `{ANSWER_PREFIX}L` in a \
         `while read -r l; do echo ...; done` loop, builtins only). Snapshotted once per bench \
         run with `--snapshot-on-signal DIR` and SIGUSR1 {} s after `{READY}` (the shell blocked \
         in read()); that boot printed it after {:.1} s.",
        cmdline(),
        INTO_READ.as_secs(),
        r.source_ready_s
    );
    let method = "Each run: a fresh `petrel --api-sock SOCKET` with stdin and stdout piped (the \
                  restored guest's console), `PUT /snapshot/load` (`mem_backend` File on DIR/mem, \
                  `resume_vm: true`); once it answered 204, `ping N` and a newline are written \
                  to petrel's stdin; timed from just before writing the request to the moment \
                  the line `answer ping N` (the guest's exact echo of what was sent) is read \
                  from its stdout; then SIGTERM, by which petrel must end.";
    let order = format!(
        "One untimed warm-up load, then one `--working-set record` run (not in these rows), \
         then {runs} rounds of: an on-demand load, a prefetched load, a fresh boot."
    );
    let off_flag = if r.has_option {
        "`--working-set off`"
    } else {
        "no `--working-set` (this petrel has no such option: on-demand faults)"
    };
    vec![
        Row {
            id: "sandbox_answer_prefetch",
            name: "sandbox: snapshot load to answer, prefetched".into(),
            unit: Unit::Ms,
            petrel: r.prefetch.cell(|s| &s.answer),
            comparison_name: "Firecracker (earlier, same guest)".into(),
            comparison: firecracker_answer(),
            target: Target::RatioAtMost(ANSWER_TARGET),
            measures: format!(
                "{guest} {method} Petrel with `--working-set prefetch` (the pages the record \
                 run's guest touched brought in before its vCPU runs). {order} Runs: {runs}. \
                 On hardware KVM this figure is unmeasured."
            ),
        },
        Row {
            id: "sandbox_answer_on_demand",
            name: "sandbox: snapshot load to answer, on demand".into(),
            unit: Unit::Ms,
            petrel: r.off.cell(|s| &s.answer),
            comparison_name: "Firecracker (earlier, same guest)".into(),
            comparison: firecracker_answer(),
            target: Target::None,
            measures: format!(
                "The same method with {off_flag}: each page faults in from the privately mapped \
                 memory file when the guest first touches it. Runs alternate with the row \
                 above's. Runs: {runs}."
            ),
        },
        Row {
            id: "sandbox_fresh_boot_answer",
            name: "sandbox: fresh boot to answer".into(),
            unit: Unit::S,
            petrel: r.boot.cell(|s| &s.answer),
            comparison_name: "-".into(),
            comparison: Cell::None("-".into()),
            target: Target::None,
            measures: format!(
                "The same guest booted: `petrel --kernel vmlinux --cmdline ... --mem \
                 {GUEST_MIB}M --vcpus 1 --disk sandbox-root.ext4,ro --serial stdio` with stdin \
                 and stdout piped; `ping N` written once `{READY}` is read; timed from just \
                 before the spawn to `answer ping N`; then SIGTERM. Runs alternate with the \
                 loads. Runs: {runs}."
            ),
        },
        Row {
            id: "sandbox_load_answered_prefetch",
            name: "sandbox: PUT /snapshot/load answered, prefetched".into(),
            unit: Unit::MsFine,
            petrel: r.prefetch.cell(|s| &s.load),
            comparison_name: "Firecracker (earlier, same guest)".into(),
            comparison: firecracker_load(),
            target: Target::None,
            measures: "The prefetched runs' load requests: from just before writing the \
                       request to the end of its 204 (the prefetch happens before the vCPU \
                       starts, inside this time)."
                .into(),
        },
        Row {
            id: "sandbox_load_answered_on_demand",
            name: "sandbox: PUT /snapshot/load answered, on demand".into(),
            unit: Unit::MsFine,
            petrel: r.off.cell(|s| &s.load),
            comparison_name: "Firecracker (earlier, same guest)".into(),
            comparison: firecracker_load(),
            target: Target::None,
            measures: "The on-demand runs' load requests, timed as in the row above.".into(),
        },
        Row {
            id: "sandbox_working_set",
            name: "sandbox: working set recorded".into(),
            unit: Unit::MiB,
            petrel: match &r.recorded {
                Ok(rec) => Cell::Measured(vec![rec.mib]),
                Err(c) => c.clone(),
            },
            comparison_name: "guest RAM".into(),
            comparison: Cell::None(format!("{GUEST_MIB} MiB")),
            target: Target::None,
            measures: match &r.recorded {
                Ok(rec) => format!(
                    "The guest memory named by the working-set file the `--working-set record` \
                     run wrote when stopped (pages the guest touched from the load to the \
                     SIGTERM after its answer): {}.",
                    rec.note
                ),
                Err(_) => "The guest memory named by the working-set file a `--working-set \
                           record` run writes."
                    .into(),
            },
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::Verdict;

    #[test]
    fn the_init_answers_with_builtins_only() {
        let s = init_script();
        assert!(s.starts_with("#!/bin/busybox sh\n"), "{s}");
        assert!(s.contains(&format!("echo {READY}\n")), "{s}");
        assert!(
            s.contains("while read -r l; do echo \"answer $l\"; done"),
            "{s}"
        );
        assert_eq!(answer_to("ping 3"), "answer ping 3");
        let c = cmdline();
        assert!(
            c.contains("root=/dev/vda ro") && c.contains("console=ttyS0"),
            "{c}"
        );
    }

    #[test]
    fn lines_are_stamped_when_completed() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        let t2 = t0 + Duration::from_millis(9);
        let mut l = Lines::default();
        l.push(t0, b"[ 1.0] boot\r\nping 1\r\nans");
        l.push(t1, b"wer ping 1");
        let want = |s: &str| s == "answer ping 1";
        // The answer is not complete until its newline.
        assert_eq!(l.find(&want), None);
        l.push(t2, b"\r\nanswer ping 10\r\n");
        assert_eq!(l.find(&want), Some(t2));
        // The tty's echo of the typed line is not the answer; a longer line is not either.
        assert_eq!(l.find(&|s: &str| s == "ping 1"), Some(t0));
        assert_eq!(l.find(&|s: &str| s == "answer ping 1 "), None);
        assert_eq!(l.tail(2), "answer ping 1 / answer ping 10");
        assert!(l
            .timed_text(t0)
            .ends_with("      9.0 answer ping 1\n      9.0 answer ping 10\n"));
    }

    #[test]
    fn working_set_line_is_parsed() {
        let stderr = "petrel: restored\n\
                      petrel: working set: 1234 pages (4.8 MiB) written to /s/state.working-set\n";
        let (pages, line) = working_set_pages(stderr).unwrap();
        assert_eq!(pages, 1234);
        assert!(line.ends_with("state.working-set"), "{line}");
        assert_eq!(working_set_pages("working set: many pages\n"), None);
        assert_eq!(working_set_pages("no such line\n"), None);
    }

    #[test]
    fn working_set_flags() {
        assert_eq!(
            working_set_args(WorkingSet::Prefetch, true),
            ["--working-set", "prefetch"]
        );
        assert_eq!(
            working_set_args(WorkingSet::Record, true),
            ["--working-set", "record"]
        );
        assert_eq!(
            working_set_args(WorkingSet::Off, true),
            ["--working-set", "off"]
        );
        assert!(working_set_args(WorkingSet::Off, false).is_empty());
    }

    fn results(prefetch_ms: f64) -> Results {
        let side = |answer: f64, load: f64| Side {
            answer: vec![answer, answer + 2.0],
            load: vec![load, load],
            ended: None,
        };
        Results {
            runs: 2,
            off: side(250.0, 2.7),
            prefetch: side(prefetch_ms, 4.0),
            boot: side(22.0, f64::NAN),
            recorded: Ok(Recorded {
                mib: 9.5,
                note: "n".into(),
            }),
            has_option: true,
            source_ready_s: 21.0,
        }
    }

    #[test]
    fn rows_judge_against_a_quarter_of_firecrackers_lowest_median() {
        let rows = rows(&results(40.0));
        let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
        assert_eq!(
            ids,
            [
                "sandbox_answer_prefetch",
                "sandbox_answer_on_demand",
                "sandbox_fresh_boot_answer",
                "sandbox_load_answered_prefetch",
                "sandbox_load_answered_on_demand",
                "sandbox_working_set"
            ]
        );
        // Median 41 ms against 164 ms: exactly a quarter.
        assert_eq!(rows[0].petrel, Cell::Measured(vec![40.0, 42.0]));
        assert_eq!(rows[0].verdict(), Verdict::Pass);
        assert!(rows[0].measures.contains("unmeasured"));
        assert_eq!(super::rows(&results(41.0))[0].verdict(), Verdict::Fail);
        assert_eq!(rows[1].verdict(), Verdict::Info);
        assert_eq!(rows[2].petrel, Cell::Measured(vec![22.0, 24.0]));
        assert_eq!(rows[5].petrel, Cell::Measured(vec![9.5]));
        assert_eq!(rows[2].comparison, Cell::None("-".into()));
        assert!(rows[0]
            .comparison
            .reason()
            .unwrap()
            .contains("not in this run"));
    }

    #[test]
    fn a_failed_side_fails_its_rows_only() {
        let mut r = results(30.0);
        r.prefetch = Side::not_run(Cell::Missing("no option".into()));
        r.recorded = Err(Cell::Missing("no option".into()));
        let rows = rows(&r);
        assert_eq!(rows[0].verdict(), Verdict::Missing);
        assert_eq!(rows[5].verdict(), Verdict::Missing);
        assert!(matches!(rows[1].petrel, Cell::Measured(_)));
        let mut side = Side::default();
        side.run(0, || Ok((1.0, 2.0)));
        side.run(1, || Err(Error::Other("boom".into())));
        side.run(2, || Ok((3.0, 4.0)));
        assert_eq!(side.cell(|s| &s.answer), Cell::Error("run 2: boom".into()));
    }
}
