//! `cargo xtask bench`: Petrel's VMM-side costs, measured side by side with QEMU (and with a
//! bare `KVM_RUN` loop) in one run, printed as a table and written to
//! `target/bench/results.json`.
//!
//! The cases:
//! 1. start-up: spawn to the demo guest's first serial byte, and spawn to the VMM's exit; and
//!    how much of that building the guest's ACPI tables takes;
//! 2. memory: the VMM's resident memory minus the guest RAM it holds, with the VM alive, and
//!    the peak resident set over a demo run (`bench/memory.rs`);
//! 3. exit cost: time per port-write exit through the whole VMM against a bare `KVM_RUN`
//!    loop on the same guest;
//! 4. density: demo VMs started and stopped per second, one after another and two at a time
//!    (`bench/density.rs`);
//! 5. Linux: time for the boot-test kernel to reach `Run /init as init process`
//!    (`bench/linux.rs`);
//! 6. Firecracker's API (`petrel --api-sock`): spawn to the socket accepting, `InstanceStart`
//!    to the first guest byte, and what serving the API adds to the VMM's memory, against
//!    Firecracker's figures measured earlier (it is not installed here) and against Petrel
//!    started from its command line;
//! 7. snapshots: restoring one (from the command line and through `PUT /snapshot/load`)
//!    beside a fresh boot of the same guest;
//! 8. clones: `--clones N` VMs restored from one snapshot and alive at once: clones restored
//!    per second, and the memory each adds (its guest mapping's `Rss` and `Private_Dirty`,
//!    the VMM's own `Private_Dirty`); then the guest memory again with the snapshot's working set
//!    recorded and prefetched by every clone;
//! 9. alive: `--alive N` halted 16 MiB VMs alive at once, each answering `GET /` on its API
//!    socket, then all stopped: the host memory per VM, the VMM's own, threads and
//!    descriptors per VM;
//! 10. sandbox: a Linux guest's snapshot loaded through `PUT /snapshot/load` to the answer of
//!     a shell in its userspace, with its working set prefetched and without, beside a fresh
//!     boot of the same guest (`bench/sandbox.rs`);
//! 11. sandbox-acpi: the same guest's loads beside loads of it booted with `acpi=off`, which
//!     shows what the VM generation ID's notification costs the first answer
//!     (`bench/sandbox/acpi_cost.rs`).
//!
//! QEMU runs the same demo guest ELF (through its PVH entry) on `-M microvm` with KVM. A
//! missing QEMU or `/dev/kvm` is shown in the table and makes the run fail unless
//! `--allow-missing` is given; a missed target makes it fail too.

mod acpi;
mod api;
mod density;
mod farm;
mod floor;
mod linux;
mod memory;
mod proc;
mod procfs;
mod report;
mod sandbox;
mod snapshot;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use petrel_demo_guest::{self as demo_guest, GREETING_LINE, RESETTING_LINE};

use crate::cli::BenchArgs;
use crate::error::{Error, IoContext, Result};
use crate::host::{self, HostKvm};
use proc::Timed;
use report::{Cell, Context, Row, Target, Unit, Verdict};

/// The cases, by the names `--only` takes.
pub const CASES: &[&str] = &[
    "startup",
    "memory",
    "exits",
    "density",
    "linux",
    "api-socket",
    "api-start",
    "api-memory",
    "snapshot",
    "clones",
    "alive",
    "sandbox",
    "sandbox-acpi",
];

/// Guest memory of every VM in the bench, MiB (Petrel's default, and what QEMU is given).
const GUEST_MIB: u64 = 256;

/// The sink port of the exit-cost guest.
const SINK_PORT: u16 = 0x10;

/// The exit-cost guest (real mode): `1: out 0x10, al` (e6 10), `jmp 1b` (eb fc).
const EXIT_LOOP: [u8; 4] = [0xe6, SINK_PORT as u8, 0xeb, 0xfc];

/// The steady-state memory guest (real mode): `jmp $` (eb fe), a guest that never exits.
const SPIN: [u8; 2] = crate::elf::SPIN_CODE;

/// Most runs of the memory cases (each keeps a VM alive for [`SETTLE`]).
const MEMORY_RUNS: u32 = 5;

/// Most repetitions of each density measurement (each is `--vms` VMs).
const DENSITY_RUNS: u32 = 3;

/// How long a VM is left alive before its steady-state memory is read.
const SETTLE: Duration = Duration::from_millis(300);

/// How often memory is polled during a run.
const MEMORY_POLL: Duration = Duration::from_millis(1);

/// Time limit for one short VM (demo, spin, exit loop).
const SHORT_LIMIT: Duration = Duration::from_secs(60);

/// The ratio to QEMU that start-up to the first guest byte must not exceed.
const STARTUP_TARGET: f64 = 1.0 / 3.0;

/// Per-exit time through Petrel over the bare `KVM_RUN` loop must not exceed this.
const EXIT_TARGET: f64 = 1.10;

/// Everything the cases share.
#[derive(Debug)]
struct Bench {
    /// The petrel binary.
    petrel: PathBuf,
    /// `target/bench`.
    dir: PathBuf,
    /// The demo guest ELF, for QEMU and the API.
    demo_elf: PathBuf,
    /// An ELF kernel that spins (`jmp $`), for the API's memory case.
    spin_elf: PathBuf,
    /// `Err(why)` when /dev/kvm cannot be used.
    kvm: std::result::Result<(), String>,
    /// QEMU's `-M` argument, or why QEMU cannot be used.
    qemu: std::result::Result<String, String>,
    /// Whether guest kernel code runs in KVM's emulator here.
    emulated: bool,
}

/// Runs the bench; returns the exit code: 0 when every target passed, 1 when one failed, a
/// measurement failed, or (without `--allow-missing`) QEMU or KVM was missing; 2 for bad
/// options.
pub fn run(args: &BenchArgs) -> u8 {
    if let Some(bad) = args.only.iter().find(|o| !CASES.contains(&o.as_str())) {
        eprintln!(
            "error: no bench case {bad:?}; there are: {}",
            CASES.join(", ")
        );
        return 2;
    }
    let wanted = |case: &str| args.only.is_empty() || args.only.iter().any(|o| o == case);
    let load_at_start = report::load_average();
    let bench = match setup(args) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let mut rows = Vec::new();
    if wanted("startup") {
        println!(
            "==> start-up ({} runs each, after one warm-up run)",
            args.runs
        );
        rows.extend(startup(&bench, args.runs));
        rows.push(acpi::tables_row(&bench, args.runs));
    }
    if wanted("memory") {
        let runs = args.runs.min(MEMORY_RUNS);
        println!("==> memory ({runs} runs each)");
        rows.extend(memory::memory(&bench, runs));
    }
    if wanted("exits") {
        println!("==> exit cost ({} runs of {} exits)", args.runs, args.exits);
        rows.push(exits(&bench, args.runs, args.exits));
    }
    if wanted("density") {
        let runs = args.runs.min(DENSITY_RUNS);
        println!("==> density ({runs} runs of {} VMs)", args.vms);
        rows.extend(density::density(&bench, runs, args.vms));
    }
    if wanted("linux") {
        if args.linux {
            println!("==> Linux boot ({} run(s))", args.linux_runs);
            rows.extend(linux::linux(&bench, args.linux_runs, args.linux_timeout));
        } else {
            for (id, name) in [
                ("linux_run_init", "Linux to `Run /init`"),
                ("linux_userspace", "Linux to the first userspace output"),
            ] {
                rows.push(Row {
                    id,
                    name: name.into(),
                    unit: Unit::S,
                    petrel: Cell::None("not run (--no-linux)".into()),
                    comparison_name: "QEMU microvm".into(),
                    comparison: Cell::None("not run (--no-linux)".into()),
                    target: Target::None,
                    measures: "Linux boot: left out with --no-linux.".into(),
                });
            }
        }
    }
    if wanted("api-socket") {
        println!(
            "==> API: spawn to socket accepting ({} runs, after one warm-up run)",
            args.runs
        );
        rows.extend(api::socket(&bench, args.runs));
    }
    if wanted("api-start") {
        println!(
            "==> API: InstanceStart to first guest byte ({} runs, after one warm-up run)",
            args.runs
        );
        rows.extend(api::start(&bench, args.runs));
    }
    if wanted("api-memory") {
        let runs = args.runs.min(MEMORY_RUNS);
        println!("==> API: memory ({runs} runs each)");
        rows.extend(api::memory(&bench, runs));
    }
    if wanted("snapshot") {
        println!(
            "==> snapshot: restore and PUT /snapshot/load ({} runs each, after one warm-up run)",
            args.runs
        );
        rows.extend(snapshot::restore(&bench, args.runs));
    }
    if wanted("clones") {
        println!(
            "==> clones: {} restored from one snapshot, alive at once",
            args.clones
        );
        rows.extend(farm::clones(&bench, args.clones));
    }
    if wanted("alive") {
        println!("==> VMs alive at once: {} halted guests", args.alive);
        rows.extend(farm::alive(&bench, args.alive));
    }
    if wanted("sandbox") {
        if args.linux {
            println!(
                "==> sandbox: snapshot load to a guest program's answer ({} runs each)",
                args.runs
            );
            rows.extend(sandbox::sandbox(&bench, args.runs));
        } else {
            rows.extend(sandbox::left_out(args.runs, "not run (--no-linux)"));
        }
    }
    if wanted("sandbox-acpi") {
        if args.linux {
            println!(
                "==> sandbox-acpi: what the guest's ACPI costs a load ({} runs each)",
                args.runs
            );
            rows.extend(sandbox::acpi_cost::case(&bench, args.runs));
        } else {
            rows.extend(sandbox::acpi_cost::left_out(
                args.runs,
                "not run (--no-linux)",
            ));
        }
    }
    let ctx = Context {
        date: report::utc_now(),
        host: host_description(bench.emulated),
        qemu: qemu_description(&bench),
        runs: args.runs,
        load: (load_at_start, report::load_average()),
    };
    let table = report::table(&ctx, &rows);
    println!();
    print!("{table}");
    let json_path = bench.dir.join("results.json");
    let json = report::json_document(&ctx, &rows);
    let written = serde_json::to_string_pretty(&json)
        .map_err(|e| Error::Other(format!("encoding results: {e}")))
        .and_then(|text| {
            fs::write(&json_path, text + "\n").ctx(|| format!("writing {}", json_path.display()))
        });
    match written {
        Ok(()) => println!("results: {}", json_path.display()),
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    }
    exit_code(&rows, args.allow_missing)
}

/// 0 when every row passed or has no target; 1 when one failed, or was missing something
/// and `allow_missing` is off.
fn exit_code(rows: &[Row], allow_missing: bool) -> u8 {
    let bad = rows.iter().any(|r| match r.verdict() {
        Verdict::Fail => true,
        Verdict::Missing => !allow_missing,
        Verdict::Pass | Verdict::Info => false,
    });
    let missing_measurement = !allow_missing
        && rows.iter().any(|r| {
            matches!(r.petrel, Cell::Missing(_)) || matches!(r.comparison, Cell::Missing(_))
        });
    u8::from(bad || missing_measurement)
}

/// Builds petrel, writes the guests, checks KVM and QEMU.
fn setup(args: &BenchArgs) -> Result<Bench> {
    let root = crate::build::workspace_root();
    let dir = crate::build::target_dir(&root).join("bench");
    fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let petrel = match &args.petrel {
        Some(p) => p.clone(),
        None => crate::build::build_petrel(&root)?,
    };
    let demo_elf = dir.join("demo.elf");
    write(&demo_elf, &demo_guest::demo_kernel_elf())?;
    write(&dir.join("spin.bin"), &SPIN)?;
    let spin_elf = dir.join("spin.elf");
    write(&spin_elf, &crate::elf::spin_kernel_elf())?;
    write(&dir.join("exit-loop.bin"), &EXIT_LOOP)?;
    fs::create_dir_all(dir.join("logs")).ctx(|| "creating target/bench/logs".into())?;
    let kvm = kvm_ioctls::Kvm::new()
        .map(drop)
        .map_err(|e| format!("/dev/kvm cannot be opened ({e})"));
    if let Err(why) = &kvm {
        println!("KVM: {why}");
    }
    let mut bench = Bench {
        petrel,
        dir,
        demo_elf,
        spin_elf,
        kvm,
        qemu: Err(String::new()),
        emulated: Path::new("/sys/module/kvm_pvm").exists(),
    };
    bench.qemu = find_qemu(&bench);
    match &bench.qemu {
        Ok(machine) => println!("QEMU: works with -enable-kvm, -M {machine}"),
        Err(why) => println!("QEMU: {why}"),
    }
    Ok(bench)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).ctx(|| format!("writing {}", path.display()))
}

/// Installs QEMU when it is missing and checks that it boots the demo guest with KVM;
/// returns the `-M` argument that prints the guest's time (with `rtc=on` if that is needed).
fn find_qemu(b: &Bench) -> std::result::Result<String, String> {
    if let Err(e) = host::ensure_packages(&[crate::host::QEMU_PACKAGE]) {
        return Err(format!(
            "{} could not be installed: {e}",
            crate::host::QEMU_PACKAGE
        ));
    }
    b.kvm.clone()?;
    let mut last = String::new();
    for machine in ["microvm", "microvm,rtc=on"] {
        let log = b.dir.join("logs").join("qemu-probe.stderr");
        let mut cmd = qemu_demo(b, machine, "stdio", false);
        match proc::run_timed(&mut cmd, &log, SHORT_LIMIT) {
            Ok(t) if t.status.success() && demo_ran(&t.stdout) => {
                if t.stdout.contains("time: unavailable") {
                    last = format!("`{}` printed `time: unavailable`", host::describe(&cmd));
                    continue;
                }
                return Ok(machine.to_owned());
            }
            Ok(t) => {
                last = format!(
                    "`{}` did not run the demo guest ({}; stdout {:?}; stderr: {})",
                    host::describe(&cmd),
                    t.status,
                    host::tail_lines(&t.stdout, 2).join(" / "),
                    proc::tail_of(&log, 3)
                );
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Whether a demo run printed its first and last lines.
fn demo_ran(stdout: &str) -> bool {
    stdout.contains(GREETING_LINE) && stdout.contains(RESETTING_LINE)
}

/// QEMU on the demo guest: the serial port on `serial` (`stdio`, `null`), stopping at the
/// guest's triple fault (`-no-reboot`) or, with `pause`, staying alive paused there
/// (`-no-shutdown`).
fn qemu_demo(b: &Bench, machine: &str, serial: &str, pause: bool) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        machine,
        "-enable-kvm",
        "-nodefaults",
        "-no-user-config",
    ])
    .args(["-nographic", "-serial", serial, "-kernel"])
    .arg(&b.demo_elf)
    .args(["-m", &GUEST_MIB.to_string(), "-no-reboot"]);
    if pause {
        cmd.arg("-no-shutdown");
    }
    cmd
}

/// `petrel demo`, with the serial port on `serial`.
fn petrel_demo(b: &Bench, serial: &str) -> Command {
    let mut cmd = Command::new(&b.petrel);
    cmd.args([
        "demo",
        "--mem",
        &format!("{GUEST_MIB}M"),
        "--serial",
        serial,
    ]);
    cmd
}

/// The side that `kvm` or `qemu` being unusable leaves empty, if either is.
fn missing(b: &Bench, needs_qemu: bool) -> Option<Cell> {
    if let Err(why) = &b.kvm {
        return Some(Cell::Missing(why.clone()));
    }
    if needs_qemu {
        if let Err(why) = &b.qemu {
            return Some(Cell::Missing(format!("QEMU: {why}")));
        }
    }
    None
}

/// Collects one value per run from `one`; the first error ends the collection.
fn collect(runs: u32, one: impl FnMut(u32) -> Result<f64>) -> Cell {
    let (cell, _) = alternate(
        runs,
        (None, one),
        (Some(Cell::None(String::new())), |_| Ok(0.0)),
    );
    cell
}

/// Collects one value per run from each side, taking turns (a, b, a, b, ...) so that a
/// change in the host's load over the bench touches both alike. A side given a cell up
/// front (missing, not applicable) is not run; a side's first error ends its runs.
fn alternate(
    runs: u32,
    a: (Option<Cell>, impl FnMut(u32) -> Result<f64>),
    b: (Option<Cell>, impl FnMut(u32) -> Result<f64>),
) -> (Cell, Cell) {
    let (mut a_done, mut a_run) = a;
    let (mut b_done, mut b_run) = b;
    let (mut a_values, mut b_values) = (Vec::new(), Vec::new());
    for i in 0..runs {
        for (done, run, values) in [
            (
                &mut a_done,
                &mut a_run as &mut dyn FnMut(u32) -> Result<f64>,
                &mut a_values,
            ),
            (&mut b_done, &mut b_run, &mut b_values),
        ] {
            if done.is_none() {
                match run(i) {
                    Ok(v) => values.push(v),
                    Err(e) => *done = Some(Cell::Error(format!("run {}: {e}", i + 1))),
                }
            }
        }
    }
    (
        a_done.unwrap_or(Cell::Measured(a_values)),
        b_done.unwrap_or(Cell::Measured(b_values)),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A demo run's checks: exit 0, the first and last lines on stdout.
fn checked_demo(t: Timed, what: &str, log: &Path) -> Result<Timed> {
    if t.status.success() && demo_ran(&t.stdout) {
        Ok(t)
    } else {
        Err(Error::Other(format!(
            "{what}: {}, stdout {:?}; stderr: {}",
            t.status,
            host::tail_lines(&t.stdout, 2).join(" / "),
            proc::tail_of(log, 3)
        )))
    }
}

/// Case 1: start-up, Petrel and QEMU runs alternating.
fn startup(b: &Bench, runs: u32) -> Vec<Row> {
    let qemu_name = format!("QEMU {}", qemu_short(b));
    let logs = b.dir.join("logs");
    let petrel_run = || -> Result<Timed> {
        let log = logs.join("startup-petrel.stderr");
        let t = proc::run_timed(&mut petrel_demo(b, "stdio"), &log, SHORT_LIMIT)?;
        checked_demo(t, "petrel demo", &log)
    };
    let qemu_run = |machine: &str| -> Result<Timed> {
        let log = logs.join("startup-qemu.stderr");
        let t = proc::run_timed(
            &mut qemu_demo(b, machine, "stdio", false),
            &log,
            SHORT_LIMIT,
        )?;
        checked_demo(t, "QEMU", &log)
    };
    let mut p: std::result::Result<Vec<Timed>, Cell> = missing(b, false).map_or(Ok(vec![]), Err);
    let mut q: std::result::Result<Vec<Timed>, Cell> = missing(b, true).map_or(Ok(vec![]), Err);
    // One warm-up run each (page cache, first mapping of the binaries), then alternate.
    for i in 0..=runs {
        if let Ok(v) = &mut p {
            match petrel_run() {
                Ok(t) if i > 0 => v.push(t),
                Ok(_) => {}
                Err(e) => p = Err(Cell::Error(e.to_string())),
            }
        }
        if let (Ok(v), Ok(machine)) = (&mut q, &b.qemu) {
            match qemu_run(machine) {
                Ok(t) if i > 0 => v.push(t),
                Ok(_) => {}
                Err(e) => q = Err(Cell::Error(e.to_string())),
            }
        }
    }
    let cell = |side: &std::result::Result<Vec<Timed>, Cell>, f: fn(&Timed) -> Option<Duration>| {
        match side {
            Ok(v) => match v.iter().map(f).collect::<Option<Vec<_>>>() {
                Some(d) => Cell::Measured(d.into_iter().map(ms).collect()),
                None => Cell::Error("a run printed nothing".into()),
            },
            Err(c) => c.clone(),
        }
    };
    let first = |t: &Timed| t.first_byte;
    let exit = |t: &Timed| Some(t.exit);
    vec![
        Row {
            id: "startup_first_byte",
            name: "start-up: spawn to first guest byte".into(),
            unit: Unit::Ms,
            petrel: cell(&p, first),
            comparison_name: qemu_name.clone(),
            comparison: cell(&q, first),
            target: Target::RatioAtMost(STARTUP_TARGET),
            measures: format!(
                "Wall time from just before spawning the VMM to the first byte of the demo \
                 guest's serial output read from the VMM's stdout pipe: `petrel demo` against \
                 `{}` (the same ELF, through its PVH entry); one untimed warm-up run each, then \
                 Petrel and QEMU runs alternate.",
                describe_qemu_demo(b)
            ),
        },
        Row {
            id: "startup_exit",
            name: "start-up: spawn to VMM exit".into(),
            unit: Unit::Ms,
            petrel: cell(&p, exit),
            comparison_name: qemu_name,
            comparison: cell(&q, exit),
            target: Target::None,
            measures: "The same runs, to the VMM's exit as waitpid saw it, after the guest \
                       printed its 5 lines and reset the machine (Petrel: the i8042 reset; \
                       QEMU microvm has no i8042, so the guest triple-faults and -no-reboot \
                       ends QEMU)."
                .into(),
        },
    ]
}

/// QEMU's short version (`7.2.x`), or `-` without QEMU.
fn qemu_short(b: &Bench) -> String {
    if b.qemu.is_err() {
        return "(missing)".into();
    }
    let out = Command::new("qemu-system-x86_64").arg("--version").output();
    out.ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text.lines().next()?.to_owned();
            let v = line.split_whitespace().nth(3)?.to_owned();
            Some(v)
        })
        .unwrap_or_else(|| "(version unknown)".into())
}

/// QEMU as the table's header line gives it.
fn qemu_description(b: &Bench) -> String {
    match &b.qemu {
        Ok(machine) => {
            let pkg = host::installed_version(crate::host::QEMU_PACKAGE)
                .ok()
                .flatten()
                .unwrap_or_else(|| "?".into());
            format!(
                "qemu-system-x86_64 {} (Debian {pkg}), -M {machine} -enable-kvm",
                qemu_short(b)
            )
        }
        Err(why) => format!("MISSING ({why})"),
    }
}

/// The QEMU demo command line with the bench's paths left out, for the notes.
fn describe_qemu_demo(b: &Bench) -> String {
    let machine = b.qemu.as_deref().unwrap_or("microvm");
    format!(
        "qemu-system-x86_64 -M {machine} -enable-kvm -nodefaults -no-user-config -nographic \
         -serial stdio -kernel demo.elf -m {GUEST_MIB} -no-reboot"
    )
}

/// The host in words.
fn host_description(emulated: bool) -> String {
    let kvm = if emulated {
        "PVM (KVM without VT-x/AMD-V: guest kernel code is emulated, ~1000x slower)".to_owned()
    } else {
        match host::host_kvm() {
            HostKvm::Hardware => "hardware KVM (VMX/SVM)".to_owned(),
            HostKvm::Emulating(why) => format!("KVM of an unknown kind ({why})"),
        }
    };
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{kvm}, {cpus} CPUs ({model}), Linux {}", kernel.trim())
}

/// Case 3: per-exit time through Petrel against the bare `KVM_RUN` loop.
fn exits(b: &Bench, runs: u32, n: u64) -> Row {
    let metrics = b.dir.join("exit-metrics.json");
    let log = b.dir.join("logs").join("exits-petrel.stderr");
    let petrel_run = |_| {
        let _ = fs::remove_file(&metrics);
        let mut cmd = Command::new(&b.petrel);
        cmd.args(["run", "--raw"])
            .arg(b.dir.join("exit-loop.bin"))
            .args([
                "--real-mode",
                "--serial",
                "none",
                "--max-exits",
                &n.to_string(),
            ])
            .arg("--metrics")
            .arg(&metrics);
        let t = proc::run_timed(&mut cmd, &log, SHORT_LIMIT)?;
        if !t.status.success() {
            return Err(Error::Other(format!(
                "petrel: {}; stderr: {}",
                t.status,
                proc::tail_of(&log, 3)
            )));
        }
        let text = fs::read_to_string(&metrics).ctx(|| format!("reading {}", metrics.display()))?;
        Ok(run_span_us(&text)? / n as f64)
    };
    let bare_run = |_| {
        let d = floor::time_port_exits(&EXIT_LOOP, SINK_PORT, n)?;
        Ok(d.as_secs_f64() * 1e6 / n as f64)
    };
    let (petrel, bare) = alternate(
        runs,
        (missing(b, false), petrel_run),
        (missing(b, false), bare_run),
    );
    Row {
        id: "exit_cost",
        name: "exit cost: port write, per exit".into(),
        unit: Unit::Us,
        petrel,
        comparison_name: "bare KVM_RUN loop".into(),
        comparison: bare,
        target: Target::RatioAtMost(EXIT_TARGET),
        measures: format!(
            "A real-mode guest looping on `out 0x{SINK_PORT:02x}, al` (to a port nothing claims). \
             Petrel: `petrel run --raw exit-loop.bin --real-mode --serial none --max-exits {n} \
             --metrics FILE`, (`guest stopped` - `first KVM_RUN`) of its timeline / {n}. Floor: \
             the same guest in a VM made in the bench with kvm-ioctls (one 64 KiB slot, one \
             vCPU, nothing else), {n} KVM_RUN calls in a loop that checks each returns \
             KVM_EXIT_IO, timed from the first."
        ),
    }
}

/// Microseconds from Petrel's `first KVM_RUN` to `guest stopped`, from its `--metrics` JSON.
fn run_span_us(metrics_json: &str) -> Result<f64> {
    timeline_span_us(metrics_json, "first KVM_RUN", "guest stopped")
}

/// Microseconds from Petrel's timeline event `from` to its event `to`, from its `--metrics`
/// JSON; an error names an event that is not there.
fn timeline_span_us(metrics_json: &str, from: &str, to: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(metrics_json)
        .map_err(|e| Error::Other(format!("petrel's metrics JSON: {e}")))?;
    let at = |what: &str| {
        v["timeline"]
            .as_array()
            .and_then(|events| events.iter().find(|e| e["what"] == what))
            .and_then(|e| e["at_us"].as_u64())
            .ok_or_else(|| Error::Other(format!("petrel's metrics have no `{what}` event")))
    };
    let (start, end) = (at(from)?, at(to)?);
    Ok(end.saturating_sub(start) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests() {
        // `out 0x10, al` then a short jump back by 4 (to the out).
        assert_eq!(EXIT_LOOP, [0xe6, 0x10, 0xeb, 0xfc]);
        assert_eq!(i8::from_ne_bytes([EXIT_LOOP[3]]), -(EXIT_LOOP.len() as i8));
        assert_eq!(i8::from_ne_bytes([SPIN[1]]), -(SPIN.len() as i8));
    }

    #[test]
    fn metrics_span() {
        let json = r#"{"timeline":[{"what":"process start","at_us":0},
            {"what":"first KVM_RUN","at_us":1000},{"what":"guest stopped","at_us":71000}]}"#;
        assert_eq!(run_span_us(json).unwrap(), 70_000.0);
        assert!(run_span_us(r#"{"timeline":[]}"#).is_err());
        assert!(run_span_us("not json").is_err());
    }

    #[test]
    fn exit_codes() {
        let row = |p: Cell, c: Cell, t: Target| Row {
            id: "x",
            name: "x".into(),
            unit: Unit::Ms,
            petrel: p,
            comparison_name: "q".into(),
            comparison: c,
            target: t,
            measures: String::new(),
        };
        let m = |v: f64| Cell::Measured(vec![v]);
        let pass = row(m(1.0), m(4.0), Target::RatioAtMost(STARTUP_TARGET));
        let fail = row(m(3.0), m(4.0), Target::RatioAtMost(STARTUP_TARGET));
        let no_qemu = row(m(1.0), Cell::Missing("QEMU".into()), Target::None);
        assert_eq!(exit_code(std::slice::from_ref(&pass), false), 0);
        assert_eq!(exit_code(&[pass.clone(), fail], true), 1);
        assert_eq!(exit_code(&[pass.clone(), no_qemu.clone()], false), 1);
        assert_eq!(exit_code(&[pass, no_qemu], true), 0);
    }

    #[test]
    fn demo_output_check() {
        let out = format!("{GREETING_LINE}\r\ncpu: x\r\n{RESETTING_LINE}\r\n");
        assert!(demo_ran(&out));
        assert!(!demo_ran(GREETING_LINE));
    }
}
