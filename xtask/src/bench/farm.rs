//! The scale cases: a clone farm (many VMs restored from one snapshot, alive at once) and
//! many small VMs alive at once.
//!
//! **Clones.** One Full snapshot of the counter guest (the snapshot case's guest, 256 MiB),
//! then `--clones N` clones of it, one after another: each is `petrel --api-sock S` (its
//! serial output, which goes to stdout under the API, into a file), `PUT /snapshot/load` with
//! `resume_vm`, then `PATCH /vm {"state": "Paused"}`. A counter guest spins on port reads
//! between its ticks, so a thousand of them running would take both cores from everyone
//! else: each clone is paused once it has been restored, and then resumed (at most
//! [`RESUME_WINDOW`] at a time) until it prints a new tick, and paused again. With every clone
//! alive and paused after its tick, each clone's `/proc/PID/smaps` gives the memory it adds:
//! the guest mapping (the memory file, mapped privately) has `Rss` (pages the clone maps,
//! shared with the page cache and so with every other clone) and `Private_Dirty` (the pages
//! the clone wrote: its own copies); the rest of the process's `Private_Dirty` is the VMM's
//! own. Then every clone is stopped with SIGTERM and must end by the signal.
//!
//! **VMs alive at once.** `--alive N` VMs of a guest that halts with interrupts off (`cli;
//! hlt`, 16 MiB, one vCPU): each `petrel --config-file halt.json --api-sock S`, started one
//! after another with at most [`START_WINDOW`] of them not yet answering `GET /` with
//! `Running`; once all are alive each must answer again; then the host's
//! `MemAvailable` drop over N, each VM's own memory, threads and descriptors (from a sample),
//! and the CPU time all of them use over a few seconds; then SIGTERM to every one, and every
//! one must end by the signal. Starting stops early (and the row says so) when the host's
//! `MemAvailable` falls under [`FLOOR_MIB`], and the case refuses to start when `N` VMs'
//! threads would not fit under `kernel.pid_max` or `kernel.threads-max`: raising those (and
//! putting them back) is the user's decision, not the bench's.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use petrel_demo_guest::counter;

use super::procfs::{self, Mapping};
use super::report::{Cell, Row, Target, Unit};
use super::snapshot::make_snapshot;
use super::{missing, Bench, GUEST_MIB, SHORT_LIMIT};
use crate::error::{Error, IoContext, Result};
use crate::fcapi::ApiClient;

/// Starting VMs stops when the host's `MemAvailable` falls under this, MiB.
const FLOOR_MIB: u64 = 3 * 1024 + 512;

/// Threads (tasks) of one `petrel --api-sock` with a running VM: main, API, console, the
/// vCPU, and KVM's `kvm-nx-lpage-recovery` worker, which the kernel counts in the process.
const TASKS_PER_VM: u64 = 5;

/// Guest memory of each VM of the alive case, MiB.
const ALIVE_GUEST_MIB: u64 = 16;

/// Most clones resumed at once while they print their tick.
const RESUME_WINDOW: usize = 16;

/// How long one VM's socket may take to accept (many start at once).
const SOCKET_LIMIT: Duration = Duration::from_secs(60);

/// How long a resumed clone may take to print its next tick.
const TICK_LIMIT: Duration = Duration::from_secs(30);

/// How long the alive case watches the VMs' CPU time.
const IDLE_WATCH: Duration = Duration::from_secs(5);

/// Most VMs of the alive case starting (spawned, not yet answering) at once.
const START_WINDOW: usize = 32;

/// How many VMs' smaps, status and descriptors the alive case reads.
const SAMPLE: usize = 100;

/// The halting guest: an ELF64 kernel whose entry is `1: cli; hlt; jmp 1b`.
fn halt_kernel_elf() -> Vec<u8> {
    use petrel_demo_guest::elf::{exec_elf, ExecLayout};
    let layout = ExecLayout {
        load_addr: crate::elf::SPIN_LOAD_ADDR,
        code_offset: 64 + 56,
        writable: false,
        mem_size: None,
        pvh_entry: None,
    };
    exec_elf(&layout, &[0xfa, 0xf4, 0xeb, 0xfc])
}

/// VMs this bench started, each with its API socket in `dir`; whatever is still running
/// when this is dropped is killed and reaped, and `dir` removed.
struct Fleet {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Fleet {
    fn new(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("petrel-bench-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            children: Vec::new(),
            dir,
        })
    }

    fn sock(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{i}.sock"))
    }

    /// Connects to VM `i`'s socket as soon as it accepts.
    fn client(&mut self, i: usize) -> Result<ApiClient> {
        let sock = self.sock(i);
        let child = &mut self.children[i];
        let (client, _) =
            ApiClient::connect_when_ready(&sock, Instant::now(), SOCKET_LIMIT, || {
                matches!(child.try_wait(), Ok(None))
            })?;
        client.set_timeout(Some(SHORT_LIMIT))?;
        Ok(client)
    }

    /// One request to VM `i`, answered with `status`; returns the body.
    fn call(&mut self, i: usize, method: &str, path: &str, body: Option<&str>) -> Result<String> {
        let status = if method == "GET" { 200 } else { 204 };
        let mut c = self.client(i)?;
        c.expect(method, path, body, status)
            .map(|r| r.body)
            .map_err(|e| Error::Other(format!("VM {i}: {e}")))
    }

    /// SIGTERM to every VM, then waits for them all: how many ended by the signal, and how
    /// long stopping all of them took. Those still running after a minute are killed.
    fn stop_all(&mut self) -> (usize, Duration) {
        let t = Instant::now();
        for c in &self.children {
            crate::host::signal_process(c.id(), libc::SIGTERM);
        }
        let mut clean = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(status)) => {
                        clean += usize::from(super::proc::ended_by_sigterm(&status));
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        (clean, t.elapsed())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A field of `/proc/meminfo`, KiB.
fn meminfo_kib(field: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A number from a `/proc/sys` file.
fn sysctl(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `Threads:` of `/proc/PID/status`.
fn threads(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
}

/// Open descriptors of a process.
fn descriptors(pid: u32) -> Option<u64> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    num(11) + num(12)
}

/// One clone's memory: its guest mapping's `Rss` and `Private_Dirty`, and the rest of the
/// process's `Private_Dirty` (the VMM's own), KiB.
#[derive(Debug, Clone, Copy, Default)]
struct CloneMem {
    guest_rss: u64,
    guest_dirty: u64,
    vmm_dirty: u64,
}

/// Splits a process's mappings into those for which `is_guest` holds and the rest.
fn clone_mem(maps: &[Mapping], is_guest: impl Fn(&Mapping) -> bool) -> Option<CloneMem> {
    let mut m = CloneMem::default();
    let mut found = false;
    for map in maps {
        if is_guest(map) {
            found = true;
            m.guest_rss += map.rss_kib;
            m.guest_dirty += map.private_dirty_kib;
        } else {
            m.vmm_dirty += map.private_dirty_kib;
        }
    }
    found.then_some(m)
}

/// The clone farm's measurements.
#[derive(Debug, Default)]
struct Farm {
    /// Clones restored per second (spawn, load and pause, one after another).
    per_s: f64,
    /// Each clone's memory after its tick.
    mem: Vec<CloneMem>,
    /// The host's `MemAvailable` drop over the clones, KiB per clone.
    available_drop_kib: f64,
}

fn run_farm(b: &Bench, clones: u32, prefetched: bool) -> Result<Farm> {
    let name = if prefetched { "clones-ws" } else { "clones" };
    let kernel = b.dir.join("counter.elf");
    let snapshot = b.dir.join("clone-snapshot");
    fs::write(&kernel, counter::counter_guest_elf())
        .ctx(|| format!("writing {}", kernel.display()))?;
    make_snapshot(b, &kernel, &snapshot)?;
    let mem_file = fs::canonicalize(snapshot.join("mem")).ctx(|| "the memory file".into())?;
    let mem_path = mem_file.display().to_string();
    let out_dir = b.dir.join(name);
    let _ = fs::remove_dir_all(&out_dir);
    fs::create_dir_all(&out_dir).ctx(|| format!("creating {}", out_dir.display()))?;
    let load = serde_json::json!({
        "snapshot_path": snapshot.join("state"),
        "mem_backend": { "backend_type": "File", "backend_path": mem_file },
        "resume_vm": true,
    })
    .to_string();
    let paused = r#"{"state": "Paused"}"#;
    let resumed = r#"{"state": "Resumed"}"#;
    if prefetched {
        record_working_set(b, &load, &out_dir)?;
    }
    let mut fleet = Fleet::new(name)?;
    let n = clones as usize;
    let available_before = meminfo_kib("MemAvailable").unwrap_or(0);
    let start = Instant::now();
    for i in 0..n {
        let out = out_dir.join(format!("{i}.serial"));
        let out = fs::File::create(&out).ctx(|| format!("creating {}", out.display()))?;
        let mut cmd = Command::new(&b.petrel);
        cmd.arg("--api-sock").arg(fleet.sock(i));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .ctx(|| format!("starting `{}`", crate::host::describe(&cmd)))?;
        fleet.children.push(child);
        let mut c = fleet.client(i)?;
        c.expect("PUT", "/snapshot/load", Some(&load), 204)
            .and_then(|_| c.expect("PATCH", "/vm", Some(paused), 204))
            .map_err(|e| Error::Other(format!("clone {i}: {e}")))?;
    }
    let per_s = n as f64 / start.elapsed().as_secs_f64();
    // Each clone runs until it prints a new tick, a few at a time.
    let ticks = |i: usize| {
        let text = fs::read_to_string(out_dir.join(format!("{i}.serial"))).unwrap_or_default();
        counter::ticks(&text).len()
    };
    let mut next = 0;
    let mut running: Vec<(usize, usize, Instant)> = Vec::new();
    while next < n || !running.is_empty() {
        while next < n && running.len() < RESUME_WINDOW {
            let before = ticks(next);
            fleet.call(next, "PATCH", "/vm", Some(resumed))?;
            running.push((next, before, Instant::now()));
            next += 1;
        }
        let mut still = Vec::new();
        for (i, before, since) in running {
            if ticks(i) > before {
                fleet.call(i, "PATCH", "/vm", Some(paused))?;
            } else if since.elapsed() > TICK_LIMIT {
                return Err(Error::Other(format!(
                    "clone {i} printed no tick in {} s after it was resumed",
                    TICK_LIMIT.as_secs()
                )));
            } else {
                still.push((i, before, since));
            }
        }
        running = still;
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut mem = Vec::with_capacity(n);
    for (i, c) in fleet.children.iter().enumerate() {
        let m = procfs::read_smaps(c.id())
            .and_then(|maps| clone_mem(&maps, |m| m.path == mem_path))
            .ok_or_else(|| {
                Error::Other(format!("clone {i}: no mapping of {mem_path} in its smaps"))
            })?;
        mem.push(m);
    }
    let available_after = meminfo_kib("MemAvailable").unwrap_or(0);
    let (clean, _) = fleet.stop_all();
    if clean != n {
        return Err(Error::Other(format!(
            "{} of {n} clones did not end by SIGTERM",
            n - clean
        )));
    }
    Ok(Farm {
        per_s,
        mem,
        available_drop_kib: available_before.saturating_sub(available_after) as f64 / n as f64,
    })
}

/// One clone loaded with `--working-set record` (`load` is its `PUT /snapshot/load`), run until
/// it printed a new tick, then stopped: the snapshot's working set is then beside its state
/// file, and every later load prefetches it (petrel's default).
fn record_working_set(b: &Bench, load: &str, out_dir: &Path) -> Result<()> {
    let mut fleet = Fleet::new("clones-record")?;
    let out = out_dir.join("record.serial");
    let out_file = fs::File::create(&out).ctx(|| format!("creating {}", out.display()))?;
    let mut cmd = Command::new(&b.petrel);
    cmd.arg("--api-sock")
        .arg(fleet.sock(0))
        .args(["--working-set", "record"]);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out_file)
        .stderr(Stdio::null())
        .spawn()
        .ctx(|| format!("starting `{}`", crate::host::describe(&cmd)))?;
    fleet.children.push(child);
    let mut c = fleet.client(0)?;
    c.expect("PUT", "/snapshot/load", Some(load), 204)?;
    let started = Instant::now();
    while counter::ticks(&fs::read_to_string(&out).unwrap_or_default()).is_empty() {
        if started.elapsed() > TICK_LIMIT {
            return Err(Error::Other(format!(
                "the recording clone printed no tick in {} s",
                TICK_LIMIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (clean, _) = fleet.stop_all();
    let set = b.dir.join("clone-snapshot").join("state.working-set");
    if clean != 1 || !set.is_file() {
        return Err(Error::Other(format!(
            "the recording clone did not end by SIGTERM leaving {}",
            set.display()
        )));
    }
    Ok(())
}

/// The clone farm's rows: the farm with on-demand faults, then again with the snapshot's
/// working set prefetched by every clone.
pub fn clones(b: &Bench, clones: u32) -> Vec<Row> {
    let mut rows = farm_rows(b, clones, false);
    rows.extend(farm_rows(b, clones, true).into_iter().skip(1).take(2));
    rows
}

/// The rows of one farm (`prefetched`: the second, each clone prefetching the working set).
fn farm_rows(b: &Bench, clones: u32, prefetched: bool) -> Vec<Row> {
    let farm = missing(b, false)
        .map(Err)
        .unwrap_or_else(|| run_farm(b, clones, prefetched).map_err(|e| Cell::Error(e.to_string())));
    let cell = |pick: fn(&Farm) -> Vec<f64>| match &farm {
        Ok(f) => Cell::Measured(pick(f)),
        Err(c) => c.clone(),
    };
    let drop_note = match &farm {
        Ok(f) => format!(
            " The host's MemAvailable fell by {:.0} KiB per clone over the same time (noisy: \
             other work on the host moves it too; it includes the kernel's share: KVM's \
             structures, page tables, kernel stacks).",
            f.available_drop_kib
        ),
        Err(_) => String::new(),
    };
    let how = format!(
        "{clones} clones of one Full snapshot of the counter guest ({GUEST_MIB} MiB), each \
         `petrel --api-sock S` + `PUT /snapshot/load` (`resume_vm`) + `PATCH /vm` Paused, one \
         after another; then each resumed ({RESUME_WINDOW} at a time) until it printed a new \
         tick and paused again; read with all {clones} alive (`--clones N` sets how many)."
    );
    let mut rows = vec![
        Row {
            id: "clones_per_s",
            name: format!("clones: restored per second ({clones} alive)"),
            unit: Unit::PerS,
            petrel: cell(|f| vec![f.per_s]),
            comparison_name: String::new(),
            comparison: Cell::None(String::new()),
            target: Target::None,
            measures: format!(
                "{how} Clones restored per second: {clones} over the time from the first spawn \
                 to the last clone's pause answered (spawn, socket, load, pause)."
            ),
        },
        Row {
            id: "clone_guest_private_dirty",
            name: "clones: guest pages each wrote (Private_Dirty)".into(),
            unit: Unit::KiB,
            petrel: cell(|f| f.mem.iter().map(|m| m.guest_dirty as f64).collect()),
            comparison_name: String::new(),
            comparison: Cell::None(String::new()),
            target: Target::None,
            measures: "The clones of `clones_per_s`. Per clone (min / median / max over the \
                       clones): `Private_Dirty` of the mapping of the memory file in \
                       /proc/PID/smaps, the guest pages this clone has its own copy of (what it \
                       wrote, and what the restore wrote for it)."
                .into(),
        },
        Row {
            id: "clone_guest_rss",
            name: "clones: guest pages each maps (Rss, shared)".into(),
            unit: Unit::KiB,
            petrel: cell(|f| f.mem.iter().map(|m| m.guest_rss as f64).collect()),
            comparison_name: String::new(),
            comparison: Cell::None(String::new()),
            target: Target::None,
            measures: "The clones of `clones_per_s`. Per clone: `Rss` of the mapping of the \
                       memory file: pages mapped, most of them the page cache's, shared by every \
                       clone (its `Private_Dirty` is the clone's own part)."
                .into(),
        },
        Row {
            id: "clone_vmm_private_dirty",
            name: "clones: the VMM's own memory per clone (Private_Dirty)".into(),
            unit: Unit::KiB,
            petrel: cell(|f| f.mem.iter().map(|m| m.vmm_dirty as f64).collect()),
            comparison_name: String::new(),
            comparison: Cell::None(String::new()),
            target: Target::None,
            measures: format!(
                "The clones of `clones_per_s`. Per clone: the sum of `Private_Dirty` over \
                 every other mapping of the process (heap, stacks, the binary's written \
                 data).{drop_note}"
            ),
        },
    ];
    if prefetched {
        let how = "The same farm again, on a new snapshot whose working set one clone loaded with \
                   `--working-set record` saved first (run to its first tick, then SIGTERM): \
                   every clone then prefetched it at its load (petrel's default), the pages \
                   the recording clone read mapped from the page cache, those it wrote copied.";
        rows[1].id = "clone_guest_private_dirty_prefetched";
        rows[1].name = "clones, working set prefetched: guest pages each wrote".into();
        rows[1].measures = format!("{how} Per clone: `Private_Dirty` of the guest mapping.");
        rows[2].id = "clone_guest_rss_prefetched";
        rows[2].name = "clones, working set prefetched: guest pages each maps".into();
        rows[2].measures = format!("{how} Per clone: `Rss` of the guest mapping.");
    }
    rows
}

/// The alive case's measurements.
#[derive(Debug, Default)]
struct Alive {
    /// VMs that were alive at once and answered.
    vms: usize,
    /// Why starting stopped short of N, if it did.
    short: Option<String>,
    /// Seconds until all had started and answered once, and until all had answered again.
    started_s: f64,
    answered_s: f64,
    /// The host's `MemAvailable` drop, KiB per VM.
    drop_kib: f64,
    /// Per sampled VM: `Private_Dirty` of everything but guest RAM, of guest RAM, KiB;
    /// threads; descriptors.
    vmm_dirty: Vec<f64>,
    guest_dirty: Vec<f64>,
    threads: Vec<f64>,
    fds: Vec<f64>,
    /// CPU seconds all VMs used per second while idle.
    cpu_per_s: f64,
    /// The host's 1-minute load average then.
    load: f64,
    /// Seconds to stop them all.
    stopped_s: f64,
}

/// VM `i` answers `GET /` with its state `Running`.
fn running(fleet: &mut Fleet, i: usize) -> Result<()> {
    let info = fleet.call(i, "GET", "/", None)?;
    if info.contains("Running") {
        Ok(())
    } else {
        Err(Error::Other(format!("VM {i} answered {}", info.trim())))
    }
}

fn run_alive(b: &Bench, n: u32) -> Result<Alive> {
    let n = n as usize;
    let tasks = sysctl("/proc/sys/kernel/pid_max").unwrap_or(0);
    let threads_max = sysctl("/proc/sys/kernel/threads-max").unwrap_or(0);
    // The fourth field of /proc/loadavg: "running/existing" threads on the host.
    let now = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok())
        .unwrap_or(0u64);
    let need = n as u64 * TASKS_PER_VM;
    for (what, limit) in [
        ("kernel.pid_max", tasks),
        ("kernel.threads-max", threads_max),
    ] {
        if need + now + 1000 > limit {
            return Err(Error::Other(format!(
                "{n} VMs need about {need} threads beside the host's own; {what} is {limit}: \
                 raise it for the run (and put it back after)"
            )));
        }
    }
    let kernel = b.dir.join("halt.elf");
    fs::write(&kernel, halt_kernel_elf()).ctx(|| format!("writing {}", kernel.display()))?;
    let config = b.dir.join("halt.json");
    let body = serde_json::json!({
        "boot-source": { "kernel_image_path": kernel },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": ALIVE_GUEST_MIB },
    });
    fs::write(&config, body.to_string()).ctx(|| format!("writing {}", config.display()))?;
    let mut fleet = Fleet::new("alive")?;
    let before = meminfo_kib("MemAvailable").unwrap_or(0);
    let mut short = None;
    let start = Instant::now();
    for i in 0..n {
        if i % 100 == 99 {
            let avail = meminfo_kib("MemAvailable").unwrap_or(0) / 1024;
            if avail < FLOOR_MIB {
                short = Some(format!(
                    "stopped starting at {i} VMs: MemAvailable {avail} MiB < {FLOOR_MIB} MiB"
                ));
                break;
            }
        }
        let mut cmd = Command::new(&b.petrel);
        cmd.arg("--config-file")
            .arg(&config)
            .arg("--api-sock")
            .arg(fleet.sock(i));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ctx(|| format!("starting VM {i}: `{}`", crate::host::describe(&cmd)))?;
        fleet.children.push(child);
        // At most START_WINDOW VMs starting at once: thousands starting together would
        // leave the host's other work no CPU for a minute.
        if let Some(older) = i.checked_sub(START_WINDOW) {
            running(&mut fleet, older)?;
        }
    }
    let vms = fleet.children.len();
    for i in vms.saturating_sub(START_WINDOW)..vms {
        running(&mut fleet, i)?;
    }
    let started_s = start.elapsed().as_secs_f64();
    // With all of them alive, each answers again.
    for i in 0..vms {
        running(&mut fleet, i)?;
    }
    let answered_s = start.elapsed().as_secs_f64();
    let pids: Vec<u32> = fleet.children.iter().map(Child::id).collect();
    let cpu = || pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let (c0, t0) = (cpu(), Instant::now());
    std::thread::sleep(IDLE_WATCH);
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_per_s = cpu().saturating_sub(c0) as f64 / hz / t0.elapsed().as_secs_f64();
    let after = meminfo_kib("MemAvailable").unwrap_or(0);
    let guest_kib = ALIVE_GUEST_MIB * 1024;
    let mut a = Alive {
        vms,
        short,
        started_s,
        answered_s,
        drop_kib: before.saturating_sub(after) as f64 / vms.max(1) as f64,
        cpu_per_s,
        load: super::report::load_average(),
        ..Alive::default()
    };
    for &pid in pids.iter().step_by((vms / SAMPLE).max(1)) {
        let m = procfs::read_smaps(pid)
            .and_then(|maps| {
                clone_mem(&maps, |m| {
                    m.is_anonymous() && m.size_kib >= guest_kib && m.size_kib <= guest_kib + 4096
                })
            })
            .ok_or_else(|| Error::Other(format!("pid {pid}: no guest mapping in its smaps")))?;
        a.vmm_dirty.push(m.vmm_dirty as f64);
        a.guest_dirty.push(m.guest_dirty as f64);
        a.threads.push(threads(pid).unwrap_or(0) as f64);
        a.fds.push(descriptors(pid).unwrap_or(0) as f64);
    }
    let (clean, took) = fleet.stop_all();
    if clean != vms {
        return Err(Error::Other(format!(
            "{} of {vms} VMs did not end by SIGTERM",
            vms - clean
        )));
    }
    a.stopped_s = took.as_secs_f64();
    Ok(a)
}

/// The alive case's rows.
pub fn alive(b: &Bench, n: u32) -> Vec<Row> {
    let run = missing(b, false)
        .map(Err)
        .unwrap_or_else(|| run_alive(b, n).map_err(|e| Cell::Error(e.to_string())));
    let cell = |pick: fn(&Alive) -> Vec<f64>| match &run {
        Ok(a) => Cell::Measured(pick(a)),
        Err(c) => c.clone(),
    };
    let median = |v: &[f64]| super::report::summarise(v).map_or(f64::NAN, |s| s.median);
    let facts = match &run {
        Ok(a) => format!(
            " This run: {} VMs started (each answering) in {:.1} s, all answered again by \
             {:.1} s, stopped in {:.1} s{}; each has {:.0} threads and {:.0} open descriptors \
             (stdin, stdout and stderr included, and any the bench inherited); together they \
             used {:.3} CPU-s a second while idle, with the host's 1-minute load average at \
             {:.1}.",
            a.vms,
            a.started_s,
            a.answered_s,
            a.stopped_s,
            a.short
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default(),
            median(&a.threads),
            median(&a.fds),
            a.cpu_per_s,
            a.load,
        ),
        Err(_) => String::new(),
    };
    let how = format!(
        "{n} VMs (`--alive N`) of a guest that halts with interrupts off (`cli; hlt`), \
         {ALIVE_GUEST_MIB} MiB and one vCPU each, each `petrel --config-file halt.json \
         --api-sock S` (the API serving, the guest running), started one after another (at \
         most {START_WINDOW} not yet answering), each answering `GET /` with `Running` once \
         started and again with all alive, then all stopped with SIGTERM (each must end by \
         the signal). Starting stops early below {FLOOR_MIB} MiB of MemAvailable; the case \
         refuses an N whose threads would not fit under kernel.pid_max or kernel.threads-max."
    );
    vec![
        Row {
            id: "alive_vms",
            name: "VMs alive at once, each answering".into(),
            unit: Unit::Vms,
            petrel: cell(|a| vec![a.vms as f64]),
            comparison_name: String::new(),
            comparison: Cell::None(String::new()),
            target: Target::None,
            measures: format!("{how}{facts}"),
        },
        Row {
            id: "alive_memory_per_vm",
            name: "VMs alive: host memory per VM (MemAvailable drop / N)".into(),
            unit: Unit::KiB,
            petrel: cell(|a| vec![a.drop_kib]),
            comparison_name: String::new(),
            comparison: Cell::None(String::new()),
            target: Target::None,
            measures: "The VMs of `alive_vms`. The host's MemAvailable before starting the \
                       first VM less after all answered, over N: the VMM, the guest pages \
                       touched and the kernel's share (KVM's structures, page tables, kernel \
                       stacks). Other work on the host moves it too: small N is noisy."
                .into(),
        },
        Row {
            id: "alive_vmm_private_dirty",
            name: "VMs alive: the VMM's own memory per VM (Private_Dirty)".into(),
            unit: Unit::KiB,
            petrel: cell(|a| a.vmm_dirty.clone()),
            comparison_name: String::new(),
            comparison: Cell::None(String::new()),
            target: Target::None,
            measures: format!(
                "The VMs of `alive_vms`. Per VM (a sample of at most {SAMPLE}): the sum of \
                 `Private_Dirty` of every mapping in /proc/PID/smaps but guest RAM (whose own \
                 is {:.0} KiB: the boot data the VMM wrote and the page the guest ran from).",
                match &run {
                    Ok(a) => median(&a.guest_dirty),
                    Err(_) => f64::NAN,
                }
            ),
        },
    ]
}
