//! The sandbox case (issue 27): from "start a sandbox" to the first answer of a program in the
//! guest's userspace. A snapshot of a Linux guest whose shell waits in `read()` on its console
//! is loaded by a fresh `petrel --api-sock` (`PUT /snapshot/load` with `resume_vm`), one line is
//! written to the console, and the time to the guest's answer is measured: with the snapshot's
//! working set prefetched (`--working-set prefetch`, after a `--working-set record` run) and
//! with on-demand faults (`--working-set off`), beside a fresh boot of the same guest; and under
//! the `Uffd` backend, Petrel's page-fault handler filling the working set ahead of the guest,
//! beside the same handler filling each page on its first touch.
//!
//! The guest: the boot-test kernel (vmlinux, 256 MiB, 1 vCPU) with a read-only ext4 root on
//! virtio-blk holding busybox and an `/init` that prints [`READY`] and then answers each console
//! line `L` with `answer L`, in shell builtins only (no fork).
//!
//! Each round boots the guest (timed to its first answer), snapshots it with SIGUSR1 once the
//! shell waits in `read()` again, records the snapshot's working set, and loads it on demand and
//! prefetched, from the file and under Uffd (in alternating order), all within seconds of the
//! snapshot, so that every load sees the same snapshot age. Firecracker is not installed here:
//! its figures are the ranges issue 27's author measured with the same guest and method.

pub mod acpi_cost;
mod console;
mod rows;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use console::{type_line, Console};
pub use rows::left_out;
use rows::{no_option, rows};

use super::api::{connect, spawn_api_with, stop};
use super::proc::{self, Watchdog};
use super::report::{Cell, Row};
use super::snapshot::start_handler;
use super::{missing, ms, Bench, GUEST_MIB};
use crate::error::{Error, IoContext, Result};
use crate::guest_script::build_rootfs;
use crate::host;
use crate::snapshot_boot::{WORKING_SET_PREFETCHED, WORKING_SET_SAVED};
use crate::uffd_handler;
use crate::virtio_boot::root_cmdline;

/// How long a load waits after the first answer before it writes its second line.
const LATER_PAUSE: Duration = Duration::from_millis(300);

/// What the guest's init prints once its answering loop is about to read the console.
pub const READY: &str = "PETREL-SANDBOX-READY";

/// What the guest puts before each line it answers.
const ANSWER_PREFIX: &str = "answer ";

/// Size of the guest's root filesystem image, MiB (busybox is about 2 MiB).
const ROOTFS_MIB: u32 = 16;

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

/// The guest's files, and where its snapshots go.
#[derive(Debug, Clone)]
struct Guest {
    vmlinux: PathBuf,
    rootfs: PathBuf,
    /// Its command line ([`cmdline`], or more words for a variant).
    cmdline: String,
    /// What its logs' names carry after `sandbox` (empty for the case's own guest).
    label: String,
    snapshot: PathBuf,
    /// Petrel's page-fault handler (the `uffd_handler` example), or why it could not be built.
    uffd_handler: std::result::Result<PathBuf, String>,
}

impl Guest {
    /// `--kernel ... --disk ROOTFS,ro`: the arguments that boot it.
    fn boot_args(&self) -> Vec<String> {
        vec![
            "--kernel".into(),
            self.vmlinux.display().to_string(),
            "--cmdline".into(),
            self.cmdline.clone(),
            "--mem".into(),
            format!("{GUEST_MIB}M"),
            "--vcpus".into(),
            "1".into(),
            "--disk".into(),
            format!("{},ro", self.rootfs.display()),
        ]
    }

    /// The working-set file of the snapshot.
    fn working_set_file(&self) -> PathBuf {
        self.snapshot.join("state.working-set")
    }
}

/// Builds (or finds) the kernel and writes the root filesystem.
fn prepare(b: &Bench) -> Result<Guest> {
    let built = crate::build::build_guest(&[])?;
    let rootfs = b.dir.join("sandbox-root.ext4");
    build_rootfs(&rootfs, &init_script(), &[], ROOTFS_MIB)?;
    let uffd_handler = crate::build::build_uffd_handler(&crate::build::workspace_root())
        .map_err(|e| format!("building the uffd_handler example: {e}"));
    Ok(Guest {
        vmlinux: built.kernel.vmlinux,
        rootfs,
        cmdline: cmdline(),
        label: String::new(),
        snapshot: b.dir.join("sandbox-snapshot"),
        uffd_handler,
    })
}

/// One fresh boot, which also takes the round's snapshot: `petrel --kernel ...
/// --snapshot-on-signal DIR --serial stdio` with stdin and stdout piped; `ping N` is written
/// once [`READY`] shows, and the time from the spawn to its answer returned, s. Then, after
/// [`INTO_READ`], SIGUSR1: petrel must say [`SNAPSHOT_WRITTEN`], exit 0 and leave DIR/state
/// and DIR/mem.
fn boot_run(b: &Bench, g: &Guest, n: u32) -> Result<f64> {
    let _ = fs::remove_dir_all(&g.snapshot);
    let log = b
        .dir
        .join("logs")
        .join(format!("sandbox{}-boot.stderr", g.label));
    let err = fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(&b.petrel);
    cmd.args(g.boot_args())
        .args(["--serial", "stdio", "--snapshot-on-signal"])
        .arg(&g.snapshot);
    if n == 1 {
        println!("    {}", host::describe(&cmd));
    }
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(&cmd)))?;
    let mut vmm = host::Reaped(child);
    let mut console = Console::start(vmm.0.stdout.take().expect("stdout is piped"));
    let mut stdin = vmm.0.stdin.take().expect("stdin is piped");
    console.wait_for(READY, &|l| l.contains(READY), BOOT_LIMIT)?;
    let line = format!("ping {n}");
    type_line(&mut stdin, &line)?;
    let want = answer_to(&line);
    let answered = console.wait_for(&format!("`{want}`"), &|l| l == want, ANSWER_LIMIT)?;
    let took = answered.saturating_duration_since(start).as_secs_f64();
    thread::sleep(INTO_READ);
    host::signal_process(vmm.0.id(), libc::SIGUSR1);
    let dog = Watchdog::arm(vmm.0.id(), ANSWER_LIMIT);
    let status = vmm.0.wait().ctx(|| "waiting for petrel".into())?;
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
    println!("    fresh boot {n}: answered after {took:.1} s; snapshot written");
    Ok(took)
}

/// One timed load: from just before `PUT /snapshot/load` to the guest's answer, and to the
/// load's 204, ms; and the VMM's stderr.
#[derive(Debug, Clone, PartialEq)]
struct LoadRun {
    answer_ms: f64,
    load_ms: f64,
    /// From writing a second line to its answer: the guest warm, nothing left of the load.
    later_ms: f64,
    stderr: String,
}

/// A fresh `petrel --api-sock` with `args`, stdin and stdout piped: `PUT /snapshot/load`
/// (File backend, `resume_vm`), then `ping N` on the console once it answered 204; the guest
/// must answer `answer ping N`; then a second line, `ping N again`, timed on its own (the
/// floor a warm guest answers at here). Then SIGTERM, by which petrel must end. Its console,
/// each line with its time from the request, is kept in `logs/sandbox-load-MODE.console`.
fn load_run(b: &Bench, g: &Guest, args: &[&str], n: u32) -> Result<LoadRun> {
    load_run_with(b, g, args, n, Memory::File)
}

/// What serves a load's guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Memory {
    /// The memory file, mapped by petrel.
    File,
    /// Petrel's page-fault handler (`Uffd` backend), prefetching the working set or not.
    Uffd { prefetch: bool },
}

/// [`load_run`] with the guest memory served by `memory`. Under `Uffd` the handler is started
/// first (given the state file when it prefetches) and must exit 0 once petrel ended; its
/// closing line is kept in the run's `stderr`.
fn load_run_with(b: &Bench, g: &Guest, args: &[&str], n: u32, memory: Memory) -> Result<LoadRun> {
    let mode = match memory {
        Memory::File => args.last().copied().unwrap_or("no-flag"),
        Memory::Uffd { prefetch: false } => "uffd",
        Memory::Uffd { prefetch: true } => "uffd-prefetch",
    };
    let log = b
        .dir
        .join("logs")
        .join(format!("sandbox{}-load-{mode}.stderr", g.label));
    let mem = g.snapshot.join("mem");
    let handler = match memory {
        Memory::File => None,
        Memory::Uffd { prefetch } => {
            let path = g
                .uffd_handler
                .as_ref()
                .map_err(|e| Error::Other(e.clone()))?;
            let state = g.snapshot.join("state");
            let name = format!("sandbox-load-{mode}-handler");
            Some(start_handler(
                b,
                path,
                &mem,
                prefetch.then_some(state.as_path()),
                &name,
            )?)
        }
    };
    let (mut p, sock, start) = spawn_api_with(b, args, Stdio::piped(), Stdio::piped(), &log)?;
    let mut console = Console::start(p.child.stdout.take().expect("stdout is piped"));
    let mut stdin = p.child.stdin.take().expect("stdin is piped");
    let (mut client, _) = connect(&mut p, &sock, start)?;
    let mem_backend = match &handler {
        None => serde_json::json!({ "backend_type": "File", "backend_path": mem }),
        Some(h) => serde_json::json!({ "backend_type": "Uffd", "backend_path": h.socket }),
    };
    let body = serde_json::json!({
        "snapshot_path": g.snapshot.join("state"),
        "mem_backend": mem_backend,
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
    // The guest's own pace, warm: the same again, once its first answer is out.
    thread::sleep(LATER_PAUSE);
    let again = format!("ping {n} again");
    let typed = Instant::now();
    type_line(&mut stdin, &again)?;
    let want = answer_to(&again);
    let answered_again = console.wait_for(&format!("`{want}`"), &|l| l == want, ANSWER_LIMIT)?;
    drop(client);
    stop(&mut p, &log)?;
    let handler_said = match handler {
        Some(h) => format!("\n{}", h.finish()?),
        None => String::new(),
    };
    let console_log = log.with_extension("console");
    fs::write(&console_log, console.lines.timed_text(sent))
        .ctx(|| format!("writing {}", console_log.display()))?;
    let run = LoadRun {
        answer_ms: ms(answered.saturating_duration_since(sent)),
        load_ms: ms(loaded),
        later_ms: ms(answered_again.saturating_duration_since(typed)),
        stderr: fs::read_to_string(&log).unwrap_or_default() + &handler_said,
    };
    let guest = g.label.trim_start_matches('-');
    let guest = if guest.is_empty() {
        String::new()
    } else {
        format!("{guest}, ")
    };
    println!(
        "    load {n} ({guest}{mode}): answered {:.1} ms after the request, the request {:.2} ms; a \
         second line answered in {:.1} ms",
        run.answer_ms, run.load_ms, run.later_ms
    );
    Ok(run)
}

/// A prefetched load: [`load_run`] with `--working-set prefetch`; petrel must say it
/// prefetched the working set (a file it ignored would make this an on-demand run).
fn prefetch_run(b: &Bench, g: &Guest, n: u32) -> Result<LoadRun> {
    let run = load_run(b, g, &working_set_args(WorkingSet::Prefetch, true), n)?;
    if !run.stderr.contains(WORKING_SET_PREFETCHED) {
        return Err(Error::Other(format!(
            "petrel did not say `{WORKING_SET_PREFETCHED}`; stderr: {}",
            host::tail_lines(&run.stderr, 3).join(" / ")
        )));
    }
    Ok(run)
}

/// A load under the `Uffd` backend, Petrel's handler serving the memory file; with `prefetch`
/// the handler fills the working set ahead of the guest and must say so.
fn uffd_run(b: &Bench, g: &Guest, n: u32, prefetch: bool) -> Result<LoadRun> {
    let run = load_run_with(b, g, &[], n, Memory::Uffd { prefetch })?;
    if prefetch && !run.stderr.contains(uffd_handler::PREFETCHED) {
        return Err(Error::Other(format!(
            "the page-fault handler did not say `{}`: {}",
            uffd_handler::PREFETCHED,
            host::tail_lines(&run.stderr, 2).join(" / ")
        )));
    }
    Ok(run)
}

/// The pages named on a recording petrel's `working set of N pages (...) saved to PATH`
/// line, and the line.
fn working_set_pages(stderr: &str) -> Option<(u64, String)> {
    stderr.lines().find_map(|l| {
        let rest = &l[l.find(WORKING_SET_SAVED)? + WORKING_SET_SAVED.len()..];
        let (pages, after) = rest.split_once(' ')?;
        after.starts_with("pages").then_some(())?;
        Some((pages.parse().ok()?, l.trim().to_owned()))
    })
}

/// What a record run left: the working set's size, MiB of guest memory, and what to say
/// about it.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    mib: f64,
    note: String,
}

/// The record run: a [`load_run`] with `--working-set record`; the working-set file must then
/// be there and the stderr line say how many pages it holds.
fn record_run(b: &Bench, g: &Guest, n: u32) -> Result<Recorded> {
    let file = g.working_set_file();
    let _ = fs::remove_file(&file);
    let run = load_run(b, g, &working_set_args(WorkingSet::Record, true), n)?;
    let bytes = fs::metadata(&file)
        .map(|m| m.len())
        .map_err(|e| Error::Other(format!("no working-set file {}: {e}", file.display())))?;
    let (pages, line) = working_set_pages(&run.stderr).ok_or_else(|| {
        Error::Other(format!(
            "the recording petrel's stderr has no `{WORKING_SET_SAVED}N pages` line: {}",
            host::tail_lines(&run.stderr, 3).join(" / ")
        ))
    })?;
    Ok(Recorded {
        mib: (pages * PAGE_BYTES) as f64 / f64::from(1u32 << 20),
        note: format!(
            "the last record run answered {:.1} ms after its load request; its stderr: \
             `{line}`; the file (state.working-set) is {bytes} bytes",
            run.answer_ms
        ),
    })
}

/// The runs of one side: values per run, or what ended them.
#[derive(Debug, Default)]
struct Side {
    answer: Vec<f64>,
    load: Vec<f64>,
    /// A second line's answer, the guest warm (loads only).
    later: Vec<f64>,
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

    /// Runs `one` unless the side has ended; its first error ends the side. Returns whether
    /// it ran and succeeded.
    fn run(&mut self, i: u32, one: impl FnOnce() -> Result<(f64, f64, f64)>) -> bool {
        if self.ended.is_some() {
            return false;
        }
        match one() {
            Ok((answer, load, later)) => {
                self.answer.push(answer);
                self.load.push(load);
                self.later.push(later);
                true
            }
            Err(e) => {
                self.ended = Some(Cell::Error(format!("run {}: {e}", i + 1)));
                false
            }
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
    /// Loads under the `Uffd` backend, Petrel's handler serving every page on its fault.
    uffd: Side,
    /// The same, the handler prefetching the round's working set.
    uffd_prefetch: Side,
    boot: Side,
    /// The working set of each round's snapshot, or why there is none.
    recorded: std::result::Result<Vec<Recorded>, Cell>,
    /// Whether the petrel had `--working-set` (without it, `off` is run with no flag).
    has_option: bool,
}

/// The case: `runs` rounds of a fresh boot that snapshots the guest, a record run, and an
/// on-demand and a prefetched load of that snapshot (their order alternating by round).
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
        uffd: Side::default(),
        uffd_prefetch: Side::default(),
        boot: Side::default(),
        recorded: Ok(Vec::new()),
        has_option,
    };
    let g = match guest {
        Ok(g) => g,
        Err(cell) => {
            for side in [
                &mut r.off,
                &mut r.prefetch,
                &mut r.uffd,
                &mut r.uffd_prefetch,
                &mut r.boot,
            ] {
                side.ended = Some(cell.clone());
            }
            r.recorded = Err(cell);
            return rows(&r);
        }
    };
    if !has_option {
        r.recorded = Err(no_option(b));
        r.prefetch = Side::not_run(no_option(b));
        r.uffd_prefetch = Side::not_run(no_option(b));
    }
    let off_args = working_set_args(WorkingSet::Off, has_option);
    // The number of the line each run writes (`ping N`), unique over the case.
    let count = std::cell::Cell::new(0u32);
    let next = || {
        count.set(count.get() + 1);
        count.get()
    };
    let as_pair = |l: LoadRun| (l.answer_ms, l.load_ms, l.later_ms);
    for i in 0..runs {
        if !r
            .boot
            .run(i, || Ok((boot_run(b, &g, next())?, f64::NAN, f64::NAN)))
        {
            // No snapshot for this round: the loads end with the boot's error.
            let why = r.boot.ended.clone();
            for side in [
                &mut r.off,
                &mut r.prefetch,
                &mut r.uffd,
                &mut r.uffd_prefetch,
            ] {
                side.ended = side.ended.take().or_else(|| why.clone());
            }
            break;
        }
        if let Ok(recorded) = &mut r.recorded {
            match record_run(b, &g, next()) {
                Ok(rec) => recorded.push(rec),
                Err(e) => {
                    let cell = Cell::Error(format!("the record run of round {}: {e}", i + 1));
                    r.prefetch.ended.get_or_insert(cell.clone());
                    r.uffd_prefetch.ended.get_or_insert(cell.clone());
                    r.recorded = Err(cell);
                }
            }
        }
        let off = |side: &mut Side| {
            side.run(i, || load_run(b, &g, &off_args, next()).map(as_pair));
        };
        let prefetch = |side: &mut Side| {
            side.run(i, || prefetch_run(b, &g, next()).map(as_pair));
        };
        let uffd = |side: &mut Side, with_set: bool| {
            side.run(i, || uffd_run(b, &g, next(), with_set).map(as_pair));
        };
        if i % 2 == 0 {
            off(&mut r.off);
            prefetch(&mut r.prefetch);
            uffd(&mut r.uffd, false);
            uffd(&mut r.uffd_prefetch, true);
        } else {
            prefetch(&mut r.prefetch);
            off(&mut r.off);
            uffd(&mut r.uffd_prefetch, true);
            uffd(&mut r.uffd, false);
        }
    }
    rows(&r)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn working_set_line_is_parsed() {
        let stderr = "petrel: stopped the guest on SIGTERM\n\
                      petrel: working set of 1234 pages (4.8 MiB, 310 written) saved to \
                      /s/state.working-set\n";
        let (pages, line) = working_set_pages(stderr).unwrap();
        assert_eq!(pages, 1234);
        assert!(line.ends_with("state.working-set"), "{line}");
        assert_eq!(working_set_pages("working set of many pages\n"), None);
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
}
