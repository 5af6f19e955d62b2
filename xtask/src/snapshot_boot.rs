//! The boot-test scenario `snapshot-linux-blk` (in the default set): a running user-mode
//! workload snapshotted and restored in another petrel process, where it goes on as if
//! nothing happened.
//!
//! The guest's root is a fresh read-write virtio-blk disk, beside virtio-rng; its `/init` first
//! waits until the kernel's random number generator is seeded, then counts from 1 to
//! [`COUNT_TO`], printing `count I of N up T` (T: the guest's `/proc/uptime`) on the console
//! and appending `I` to `/count` on the disk each time (a 0.1 s `read -t` timeout as pacing,
//! no program started; a `sync` at 5, 15, 25..., away from the snapshot's count, so that the
//! time to the first count after the restore is the restore's), then reads `/count` back past
//! the page cache and reports it as a check.
//!
//! 1. `petrel --kernel ... --disk IMG --snapshot-on-signal DIR` boots; when the serial log
//!    shows [`SNAPSHOT_AT`], xtask sends SIGUSR1, and petrel must write `DIR/state` and
//!    `DIR/mem`, say `snapshot written` and exit 0 before the guest finished counting.
//! 2. `petrel restore DIR --serial file:LOG2 --metrics M` (the memory file mapped, from the
//!    disk as it was at the snapshot) must then count on to the end and
//!    reset the guest (exit 0). The two serial logs, one after the other, are the guest's
//!    console: it must hold `Run /init`, the init's marker, the guest's checks, and every
//!    number from 1 to [`COUNT_TO`] exactly once and in order (a number the restored guest
//!    printed again would show up twice). On the host, `/count` read from the image with
//!    `debugfs` must hold the same numbers, once each and in order; the restored virtio-blk
//!    must have served writes (its `--metrics`); the guest's clock must go on: the
//!    uptimes of the counts never go back, across the snapshot too, nor leap ahead (guest time
//!    stands still from the snapshot to the restore); and the restored guest
//!    must notice its new VM generation ID: the kernel's `random: crng reseeded due to
//!    virtual machine fork` (the first boot's generator was seeded before the snapshot).
//!
//!    This restore records the guest's working set (`--working-set record`): petrel must say
//!    it saved it beside the state file.
//! 3. The same snapshot is restored again, from the disk as it was at the snapshot (a copy
//!    taken after step 1), with that working set prefetched (`--working-set prefetch`): petrel
//!    must say it prefetched it, and the guest must pass every check of step 2.
//! 4. Once more, from the disk as it was at the snapshot, under the `Uffd` memory backend:
//!    Petrel's page-fault handler (`uffd_handler SOCKET DIR/mem DIR/state`, petrel-vmm's
//!    example) serves the memory file to `petrel restore DIR --uffd-socket SOCKET`, the
//!    working set of step 2 filled ahead of the guest; the same checks as step 2's, and the
//!    handler must exit 0 once petrel ended, saying how many pages it served and prefetched.
//!    No second boot.
//!
//! The scenario reports the first boot's times to `Run /init`, to the init's marker and to
//! the snapshot, and each restore's times to its first serial output and to its first count,
//! with a result line of its own.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{IoContext, Result};
use crate::guest_script::{self, CHECKS_DONE};
use crate::host;
use crate::initramfs::MARKER;
use crate::log_watch::LogWatch;
use crate::scenario::{
    evaluate, kill_vmm, petrel_command, print_tail, times_text, Exit, KernelFormat, Outcome,
    Scenario, SnapshotBoot, Verdict, RUN_INIT_LINE,
};
use crate::uffd_handler::Handler;
use crate::virtio_boot::{read_metrics, root_cmdline, MOUNTED_RW};

mod checks;
mod counts;
use checks::{
    check_counts, check_guest_clock, check_restored_writes, check_vm_generation, check_working_set,
    judge_handler, timeline_at,
};
pub use checks::{WORKING_SET_PREFETCHED, WORKING_SET_SAVED};

/// The snapshot scenario's name.
pub const SNAPSHOT_SCENARIO: &str = "snapshot-linux-blk";

/// The snapshot scenarios in the default set.
pub const SCENARIOS: &[&str] = &[SNAPSHOT_SCENARIO];

/// The guest counts from 1 to this.
pub const COUNT_TO: u32 = 50;

/// The count at which the snapshot is asked for.
pub const SNAPSHOT_AT_COUNT: u32 = 10;
const _: () = assert!(
    SNAPSHOT_AT_COUNT < COUNT_TO,
    "the snapshot is taken mid-count"
);

/// The start of each count's console line (`count I of N up T`).
pub const COUNT_PREFIX: &str = "count ";

/// The console line after which xtask asks for the snapshot: [`count_line`] of
/// [`SNAPSHOT_AT_COUNT`] (a unit test keeps the two in step).
pub const SNAPSHOT_AT: &str = "count 10 of 50";

/// The guest's pause between two counts, in seconds, as `read -t` takes it: a timeout on the
/// console, which gets no input (no program started, and the guest's timers must fire after
/// the restore too).
const PACE: &str = "0.1";

/// The file on the guest's root disk the counts are appended to.
const COUNT_FILE: &str = "/count";

/// What petrel prints on stderr once the snapshot's files are written.
const SNAPSHOT_WRITTEN: &str = "snapshot written";

/// How long the first petrel may take from SIGUSR1 to its exit.
const SNAPSHOT_LIMIT: Duration = Duration::from_secs(60);

/// How often the running VMM and its serial log are looked at.
const POLL: Duration = Duration::from_millis(20);

/// Lines of a log to print when the scenario fails.
const TAIL: usize = 20;

/// The start of the console line of count `i` (the guest's uptime follows).
pub fn count_line(i: u32) -> String {
    format!("{COUNT_PREFIX}{i} of {COUNT_TO}")
}

/// What the kernel prints once its random number generator is seeded (here from virtio-rng).
pub const CRNG_READY: &str = "random: crng init done";

/// What the kernel prints when the VM generation ID changed under a seeded generator
/// (drivers/virt/vmgenid.c calls `add_vmfork_randomness`): the restored guest must.
pub const CRNG_VM_FORK: &str = "random: crng reseeded due to virtual machine fork";

/// The guest's init script body: wait until the kernel's random number generator is seeded
/// (a read of `/dev/random` blocks until then; the shell's `read`, no program started), so
/// that the restored guest's new VM generation ID reseeds it and the kernel says so; count;
/// then read `/count` back past the page cache.
fn count_script() -> String {
    format!(
        r#"mount -t proc proc /proc
read -r -n 1 x < /dev/random
: > {COUNT_FILE}
i=0
while [ $i -lt {COUNT_TO} ]; do
    i=$((i+1))
    read up idle < /proc/uptime
    echo "{COUNT_PREFIX}$i of {COUNT_TO} up $up"
    echo $i >> {COUNT_FILE}
    [ $((i % 10)) = 0 ] && sync
    read -t {PACE} x
done
sync
echo 3 > /proc/sys/vm/drop_caches
n=0
bad=
while read v; do
    n=$((n+1))
    [ "$v" = "$n" ] || bad="$bad line $n is '$v';"
done < {COUNT_FILE}
if [ -z "$bad" ] && [ $n = {COUNT_TO} ]; then
    ok count-file "read 1..$n back from {COUNT_FILE}"
else
    fail count-file "$n lines in {COUNT_FILE};$bad"
fi"#
    )
}

impl SnapshotBoot {
    /// The command that restores the snapshot with `backend`, the serial port going to
    /// `serial_log` and the metrics to `metrics`: from the memory file recording the working
    /// set, from it prefetching the working set, or under the `Uffd` backend, its memory
    /// served by the handler listening on `uffd_socket`.
    pub fn restore_command(
        &self,
        petrel: &Path,
        backend: Backend,
        serial_log: &Path,
        metrics: &Path,
        uffd_socket: &Path,
    ) -> Command {
        let mut cmd = Command::new(petrel);
        cmd.arg("restore")
            .arg(&self.dir)
            .arg("--serial")
            .arg(format!("file:{}", serial_log.display()))
            .arg("--metrics")
            .arg(metrics);
        match backend {
            Backend::File => cmd.args(["--working-set", "record"]),
            Backend::FilePrefetched => cmd.args(["--working-set", "prefetch"]),
            Backend::Uffd => cmd.arg("--uffd-socket").arg(uffd_socket),
        };
        cmd
    }

    /// The `--metrics` file of the restore with `backend`.
    pub fn restore_metrics(&self, backend: Backend) -> PathBuf {
        match backend {
            Backend::File => self.metrics.clone(),
            Backend::FilePrefetched => self.metrics.with_extension("prefetched.json"),
            Backend::Uffd => self.metrics.with_extension("uffd.json"),
        }
    }
}

/// The snapshot scenarios named in `names`, booting `vmlinux` from a fresh root disk in
/// `dir` (no initramfs).
pub fn scenarios(names: &[&str], vmlinux: &Path, dir: &Path) -> Result<Vec<Scenario>> {
    if !names.contains(&SNAPSHOT_SCENARIO) {
        return Ok(Vec::new());
    }
    host::ensure_packages(&["e2fsprogs", "busybox-static"])?;
    fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let snap = SnapshotBoot {
        dir: dir.join(format!("{SNAPSHOT_SCENARIO}.snap")),
        image: dir.join(format!("{SNAPSHOT_SCENARIO}.ext4")),
        metrics: dir.join(format!("{SNAPSHOT_SCENARIO}.metrics.json")),
        uffd_handler: crate::build::build_uffd_handler(&crate::build::workspace_root())?,
    };
    let script = guest_script::init_script(&count_script());
    guest_script::build_rootfs(&snap.image, &script, &[], 16)?;
    let mut s = Scenario::new(
        SNAPSHOT_SCENARIO,
        vmlinux,
        KernelFormat::Elf,
        Path::new(""),
        1,
    );
    s.initrd = None;
    s.cmdline = Some(root_cmdline("rw"));
    // virtio-rng seeds the guest's random number generator before the snapshot (the host
    // hides RDRAND from an emulating KVM's guests): the VM generation ID's reseed is logged
    // only for a seeded one.
    s.extra_args = vec![
        "--disk".into(),
        snap.image.display().to_string(),
        "--rng".into(),
        "--snapshot-on-signal".into(),
        snap.dir.display().to_string(),
    ];
    s.expect = vec![MOUNTED_RW];
    s.checks = vec!["count-file"];
    s.snapshot = Some(snap);
    Ok(vec![s])
}

/// How one petrel process of the scenario went.
#[derive(Debug)]
struct Run {
    exit: Exit,
    /// When each watched line appeared, from the process's start.
    seen: Vec<Option<Duration>>,
    /// When the serial log first had something in it, from the process's start.
    first_output: Option<Duration>,
    /// How long the process ran.
    wall: Duration,
}

/// Starts `cmd` in its own process group with stdout and stderr to `vmm_log`.
fn spawn(cmd: &mut Command, vmm_log: &Path) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    let out = fs::File::create(vmm_log).ctx(|| format!("creating {}", vmm_log.display()))?;
    let err = out.try_clone().ctx(|| "duplicating a file".into())?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(cmd)))
}

/// A needle's index and what to do, once, when it shows up.
type Trigger<'a> = (usize, &'a mut dyn FnMut(&Child));

/// Follows `child` and its serial log until it exits or until `timeout`, noting when each
/// of `needles` first shows up. With `trigger` = (index, action), the action is called once
/// when that needle shows up, and the wait goes on for at most [`SNAPSHOT_LIMIT`].
fn follow(
    child: &mut Child,
    start: Instant,
    serial_log: &Path,
    needles: &[&'static str],
    timeout: Duration,
    interrupts: &host::InterruptGuard,
    mut trigger: Option<Trigger>,
) -> Result<Run> {
    let mut watches: Vec<LogWatch> = needles
        .iter()
        .map(|n| LogWatch::new(serial_log, n))
        .collect();
    let mut first_output = None;
    let mut deadline = timeout;
    let exit = loop {
        let status = child.try_wait();
        let now = start.elapsed();
        for w in &mut watches {
            w.poll(now);
        }
        if first_output.is_none() && fs::metadata(serial_log).is_ok_and(|m| m.len() > 0) {
            first_output = Some(now);
        }
        match status {
            Ok(Some(status)) => break Exit::from_status(status),
            Ok(None) => {}
            Err(e) => {
                kill_vmm(child);
                return Err(e).ctx(|| "waiting for the VMM".into());
            }
        }
        if let Some((i, f)) = trigger.as_mut() {
            if let Some(seen) = watches[*i].seen_at() {
                f(child);
                trigger = None;
                deadline = seen + SNAPSHOT_LIMIT;
            }
        }
        if let Some(sig) = interrupts.caught() {
            kill_vmm(child);
            println!(
                "{SNAPSHOT_SCENARIO}: interrupted by signal {sig}; killed the VMM's process \
                 group; serial log {}",
                serial_log.display()
            );
            std::process::exit(128 + sig);
        }
        if now >= deadline {
            kill_vmm(child);
            break Exit::TimedOut(deadline);
        }
        thread::sleep(POLL);
    };
    let wall = start.elapsed();
    for w in &mut watches {
        w.poll(wall);
    }
    Ok(Run {
        exit,
        seen: watches.iter().map(LogWatch::seen_at).collect(),
        first_output,
        wall,
    })
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

/// Sends SIGUSR1 to `child`.
fn send_sigusr1(child: &Child) {
    host::signal_process(child.id(), libc::SIGUSR1);
}

/// Judges the snapshotting process: it saw [`SNAPSHOT_AT`], the guest had not finished
/// counting, petrel exited 0 saying the snapshot was written, and left both files.
pub fn judge_snapshot(
    serial: &str,
    vmm_output: &str,
    exit: &Exit,
    dir: &Path,
    seen: Option<Duration>,
) -> Verdict {
    let mut v = Verdict::default();
    if seen.is_none() {
        v.failures.push(format!(
            "the first boot never printed `{SNAPSHOT_AT}`, so no snapshot was asked for"
        ));
        return v;
    }
    if serial.contains(&count_line(COUNT_TO)) || serial.contains(CHECKS_DONE) {
        v.failures.push(format!(
            "the snapshot came too late: the first boot already counted to {COUNT_TO}"
        ));
    }
    if *exit != Exit::Code(0) {
        v.failures.push(format!(
            "the snapshotting petrel ended with {exit:?}, not exit code 0"
        ));
    }
    if !vmm_output.contains(SNAPSHOT_WRITTEN) {
        v.failures.push(format!(
            "the snapshotting petrel did not say `{SNAPSHOT_WRITTEN}`"
        ));
    }
    for f in ["state", "mem"] {
        if !dir.join(f).is_file() {
            v.failures
                .push(format!("no snapshot file {}", dir.join(f).display()));
        }
    }
    v
}

/// `1.234 s`, or `never`.
fn secs(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("{:.3} s", d.as_secs_f64()))
}

/// The memory file's size and the disk space it takes (zero pages are holes).
fn mem_file_text(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata(path) {
        Ok(m) => format!(
            "{} MiB long, {} MiB allocated",
            m.len() >> 20,
            (m.blocks() * 512) >> 20
        ),
        Err(e) => format!("unreadable: {e}"),
    }
}

/// The memory backend a restore maps the snapshot's memory with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The memory file mapped privately (petrel's default), recording the working set
    /// (`--working-set record`): it is saved beside the state file when the guest ends.
    File,
    /// The memory file again, the working set the first restore saved brought in before the
    /// guest runs (`--working-set prefetch`).
    FilePrefetched,
    /// Pages served over a userfaultfd by Petrel's `uffd_handler` from the memory file
    /// (`--uffd-socket`).
    Uffd,
}

impl Backend {
    /// The restore's name in the scenario's report.
    pub fn restore_name(self) -> &'static str {
        match self {
            Backend::File => "file restore",
            Backend::FilePrefetched => "prefetched file restore",
            Backend::Uffd => "uffd restore",
        }
    }

    /// What the restore's logs are called after the scenario's name.
    fn log_stem(self) -> &'static str {
        match self {
            Backend::File => "restored",
            Backend::FilePrefetched => "prefetched",
            Backend::Uffd => "uffd-restored",
        }
    }
}

/// The file the page-fault handler listens on: short (a Unix socket's path has at most 107
/// bytes) and this process's own.
fn uffd_socket_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "petrel-{SNAPSHOT_SCENARIO}-{}.uffd.sock",
        std::process::id()
    ))
}

/// Runs the snapshot scenario `s` with `petrel`: boot, snapshot, then three restores of the
/// same snapshot, each from the disk as it was at the snapshot: the memory file mapped
/// (the default) recording the working set, the same with the working set prefetched, then
/// served by Petrel's page-fault handler (the `Uffd` backend); checks.
pub fn run(
    petrel: &Path,
    s: &Scenario,
    snap: &SnapshotBoot,
    log_dir: &Path,
    timeout: Duration,
) -> Result<Outcome> {
    fs::create_dir_all(log_dir).ctx(|| format!("creating {}", log_dir.display()))?;
    let serial1 = log_dir.join(format!("{}.log", s.name));
    let vmm1 = log_dir.join(format!("{}.vmm-output.log", s.name));
    let _ = fs::remove_file(&serial1);
    let _ = fs::remove_dir_all(&snap.dir);
    let interrupts = host::InterruptGuard::install();
    let total = Instant::now();

    // 1. Boot and snapshot at SNAPSHOT_AT.
    let mut cmd = petrel_command(petrel, s, &serial1);
    println!("==> {}: {}", s.name, host::describe(&cmd));
    let start1 = Instant::now();
    let mut child = spawn(&mut cmd, &vmm1)?;
    let mut signalled = None;
    let mut on_seen = |c: &Child| {
        send_sigusr1(c);
        signalled = Some(start1.elapsed());
    };
    let first = follow(
        &mut child,
        start1,
        &serial1,
        &[RUN_INIT_LINE, MARKER, SNAPSHOT_AT],
        timeout,
        &interrupts,
        Some((2, &mut on_seen)),
    )?;
    let (run_init, marker, seen) = (first.seen[0], first.seen[1], first.seen[2]);
    let text1 = read_lossy(&serial1);
    let out1 = read_lossy(&vmm1);
    let mut verdict = judge_snapshot(&text1, &out1, &first.exit, &snap.dir, seen);
    println!(
        "{}: first boot: {}, `{SNAPSHOT_AT}` at {}, SIGUSR1 sent at {}, petrel ended after \
         {:.1} s ({:?})",
        s.name,
        times_text(run_init, marker),
        secs(seen),
        secs(signalled),
        first.wall.as_secs_f64(),
        first.exit
    );
    if let Some(line) = out1.lines().find(|l| l.contains(SNAPSHOT_WRITTEN)) {
        verdict.notes.push(format!(
            "{}; the memory file is {}",
            line.trim(),
            mem_file_text(&snap.dir.join("mem"))
        ));
    }

    // 2. Restore the snapshot three times, each time in a new process and from the disk as it was
    // at the snapshot; the guest must count on to the end and reset.
    let mut restores = Vec::new();
    if verdict.passed() {
        let at_snapshot = snap.image.with_extension("at-snapshot.ext4");
        fs::copy(&snap.image, &at_snapshot).ctx(|| {
            format!(
                "copying {} to {}",
                snap.image.display(),
                at_snapshot.display()
            )
        })?;
        for backend in [Backend::File, Backend::FilePrefetched, Backend::Uffd] {
            fs::copy(&at_snapshot, &snap.image).ctx(|| {
                format!(
                    "copying {} back to {}",
                    at_snapshot.display(),
                    snap.image.display()
                )
            })?;
            let signal_at = signalled.map(|sig| start1 + sig);
            let r = restore(
                petrel,
                s,
                snap,
                backend,
                log_dir,
                &text1,
                signal_at,
                timeout,
                &interrupts,
            )?;
            let name = backend.restore_name();
            println!(
                "{}: {name}: {} (restored petrel {:?} after {:.1} s); restore to first output \
                 {}, to first count {}",
                s.name,
                if r.verdict.passed() { "PASS" } else { "FAIL" },
                r.run.exit,
                r.run.wall.as_secs_f64(),
                secs(r.run.first_output),
                secs(r.run.seen[0]),
            );
            verdict
                .failures
                .extend(r.verdict.failures.iter().map(|f| format!("{name}: {f}")));
            verdict
                .notes
                .extend(r.verdict.notes.iter().map(|n| format!("{name}: {n}")));
            restores.push((backend, r));
        }
    }
    drop(interrupts);

    let wall = total.elapsed();
    let result = if verdict.passed() { "PASS" } else { "FAIL" };
    let restored: Vec<String> = restores
        .iter()
        .map(|(b, r)| {
            format!(
                "{} {:?}, to first output {}, to first count {}",
                b.restore_name(),
                r.run.exit,
                secs(r.run.first_output),
                secs(r.run.seen[0])
            )
        })
        .collect();
    println!(
        "{}: {result} in {:.1} s; first boot {}; {}",
        s.name,
        wall.as_secs_f64(),
        times_text(run_init, marker),
        if restored.is_empty() {
            "not restored".to_owned()
        } else {
            restored.join("; ")
        },
    );
    for f in &verdict.failures {
        println!("    failed: {f}");
    }
    for n in &verdict.notes {
        println!("    note: {n}");
    }
    if !verdict.passed() {
        let mut logs = vec![
            ("serial log".to_owned(), serial1.clone()),
            ("VMM output".to_owned(), vmm1.clone()),
        ];
        for (b, r) in &restores {
            let name = b.restore_name();
            logs.push((format!("{name}'s serial log"), r.serial.clone()));
            logs.push((format!("{name}'s VMM output"), r.vmm.clone()));
            if let Some(h) = &r.handler_log {
                logs.push((format!("{name}'s page-fault handler output"), h.clone()));
            }
        }
        for (what, path) in &logs {
            println!("    last {TAIL} lines of the {what} {}:", path.display());
            print_tail(&read_lossy(path), TAIL);
        }
    }
    let parts = restores
        .iter()
        .map(|(b, r)| {
            let mut what = format!(
                "{:>6.1} s; first output {}, first count {}",
                r.run.wall.as_secs_f64(),
                secs(r.run.first_output),
                secs(r.run.seen[0])
            );
            if let Some(h) = &r.handler {
                what.push_str(&format!("; handler {h}"));
            }
            (b.restore_name().to_owned(), r.verdict.passed(), what)
        })
        .collect();
    Ok(Outcome {
        verdict,
        wall,
        run_init,
        marker,
        parts,
    })
}

/// How one restore went.
#[derive(Debug)]
struct Restored {
    run: Run,
    verdict: Verdict,
    /// Its serial log and petrel's output.
    serial: PathBuf,
    vmm: PathBuf,
    /// The page-fault handler's output (the `Uffd` backend).
    handler_log: Option<PathBuf>,
    /// How the handler ended, in a few words (the `Uffd` backend).
    handler: Option<String>,
}

/// Restores the snapshot in a new petrel process with `backend` and judges the guest's run
/// to its end: `text1` is the first boot's console; `signal_at`, when the snapshot was asked
/// for.
#[allow(clippy::too_many_arguments)]
fn restore(
    petrel: &Path,
    s: &Scenario,
    snap: &SnapshotBoot,
    backend: Backend,
    log_dir: &Path,
    text1: &str,
    signal_at: Option<Instant>,
    timeout: Duration,
    interrupts: &host::InterruptGuard,
) -> Result<Restored> {
    let stem = backend.log_stem();
    let serial = log_dir.join(format!("{}.{stem}.log", s.name));
    let vmm = log_dir.join(format!("{}.{stem}.vmm-output.log", s.name));
    let metrics = snap.restore_metrics(backend);
    for f in [&serial, &vmm, &metrics] {
        let _ = fs::remove_file(f);
    }
    let mut verdict = Verdict::default();
    let mut handler = None;
    let mut handler_log = None;
    let socket = match backend {
        Backend::File | Backend::FilePrefetched => None,
        Backend::Uffd => {
            let socket = uffd_socket_path();
            let log = log_dir.join(format!("{}.uffd-handler.log", s.name));
            // With the state file: the working set the file restore recorded, prefetched.
            let (mem, state) = (snap.dir.join("mem"), snap.dir.join("state"));
            println!(
                "==> {}: {} {} {} {}",
                s.name,
                snap.uffd_handler.display(),
                socket.display(),
                mem.display(),
                state.display()
            );
            match Handler::start(
                &snap.uffd_handler,
                socket.clone(),
                &mem,
                Some(&state),
                log.clone(),
            ) {
                Ok(h) => handler = Some(h),
                Err(e) => verdict.failures.push(e.to_string()),
            }
            handler_log = Some(log);
            Some(socket)
        }
    };
    let mut cmd = snap.restore_command(
        petrel,
        backend,
        &serial,
        &metrics,
        socket.as_deref().unwrap_or(Path::new("")),
    );
    println!("==> {}: {}", s.name, host::describe(&cmd));
    let start = Instant::now();
    let mut child = spawn(&mut cmd, &vmm)?;
    let run = follow(
        &mut child,
        start,
        &serial,
        &[COUNT_PREFIX],
        timeout,
        interrupts,
        None,
    )?;
    let handler_said = handler.map(|h| judge_handler(h.finish(), &mut verdict));
    let text2 = read_lossy(&serial);
    // The two logs, one after the other, are the guest's whole console.
    let console = format!("{text1}{text2}");
    let v = evaluate(&console, &run.exit);
    verdict.failures.extend(v.failures);
    verdict.notes.extend(v.notes);
    for line in &s.expect {
        if !console.contains(line) {
            verdict
                .failures
                .push(format!("the serial logs lack `{line}`"));
        }
    }
    let (notes, failures) = guest_script::judge(&text2, &s.checks);
    verdict.notes.extend(notes);
    verdict.failures.extend(failures);
    check_counts(text1, &text2, &snap.image, &mut verdict);
    check_vm_generation(text1, &text2, &mut verdict);
    check_restored_writes(&metrics, &mut verdict);
    let outputs = match &handler_log {
        Some(log) => read_lossy(&vmm) + &read_lossy(log),
        None => read_lossy(&vmm),
    };
    check_working_set(backend, &outputs, &mut verdict);
    // Wall time from the snapshot's signal to the restored guest's first count: the first
    // restore's (the second starts after the first ended).
    let wall_gap = match backend {
        Backend::File => signal_at
            .zip(run.seen[0])
            .map(|(sig, seen)| (start + seen).saturating_duration_since(sig)),
        Backend::FilePrefetched | Backend::Uffd => None,
    };
    check_guest_clock(text1, &text2, wall_gap, &mut verdict);
    let first_run = read_metrics(&metrics)
        .ok()
        .and_then(|m| timeline_at(&m, "first KVM_RUN"));
    verdict.notes.push(format!(
        "restore to first serial output {}, to the first count after the snapshot {} \
         (petrel's timeline: first KVM_RUN {} after its start); restored petrel ran {:.1} s",
        secs(run.first_output),
        secs(run.seen[0]),
        secs(first_run),
        run.wall.as_secs_f64(),
    ));
    Ok(Restored {
        run,
        verdict,
        serial,
        vmm,
        handler_log,
        handler: handler_said,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_command_line() {
        let snap = SnapshotBoot {
            dir: "/t/s.snap".into(),
            image: "/t/s.ext4".into(),
            metrics: "/t/m.json".into(),
            uffd_handler: "/t/uffd_handler".into(),
        };
        let (petrel, log) = (Path::new("/p/petrel"), Path::new("/l/r.log"));
        let socket = Path::new("/tmp/u.sock");
        let command = |backend| {
            let metrics = snap.restore_metrics(backend);
            host::describe(&snap.restore_command(petrel, backend, log, &metrics, socket))
        };
        assert_eq!(
            command(Backend::File),
            "/p/petrel restore /t/s.snap --serial file:/l/r.log --metrics /t/m.json \
             --working-set record"
        );
        assert_eq!(
            command(Backend::FilePrefetched),
            "/p/petrel restore /t/s.snap --serial file:/l/r.log --metrics /t/m.prefetched.json \
             --working-set prefetch"
        );
        assert_eq!(
            command(Backend::Uffd),
            "/p/petrel restore /t/s.snap --serial file:/l/r.log --metrics /t/m.uffd.json \
             --uffd-socket /tmp/u.sock"
        );
        assert!(uffd_socket_path().as_os_str().len() < 108);
    }

    #[test]
    fn the_snapshot_line_is_a_count_line() {
        assert_eq!(SNAPSHOT_AT, count_line(SNAPSHOT_AT_COUNT));
        // Not a prefix of another count's line.
        assert!(!count_line(100).starts_with(SNAPSHOT_AT));
        let script = count_script();
        assert!(script.contains(&format!("echo \"{COUNT_PREFIX}$i of {COUNT_TO} up $up\"")));
        assert!(script.contains("read -t 0.1 x") && !script.contains("sleep"));
        // The generator is seeded before the first count, so before the snapshot.
        assert!(script.find("< /dev/random").unwrap() < script.find("while").unwrap());
    }

    #[test]
    fn snapshot_judgement() {
        let dir = std::env::temp_dir().join(format!("xtask-snap-judge-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let seen = Some(Duration::from_secs(20));
        let early = "Run /init as init process\r\ncount 10 of 50 up 9.1\r\n";
        let said = "petrel: snapshot written to /x (3 MiB)\n";

        let v = judge_snapshot(early, said, &Exit::Code(0), &dir, seen);
        assert_eq!(v.failures.len(), 2, "both files missing: {v:?}");
        fs::write(dir.join("state"), b"s").unwrap();
        fs::write(dir.join("mem"), b"m").unwrap();
        assert!(judge_snapshot(early, said, &Exit::Code(0), &dir, seen).passed());

        let late = format!("{early}count 50 of 50 up 19.3\r\n");
        let v = judge_snapshot(&late, said, &Exit::Code(0), &dir, seen);
        assert!(v.failures[0].contains("too late"), "{v:?}");
        let v = judge_snapshot(early, "", &Exit::Code(1), &dir, seen);
        assert_eq!(v.failures.len(), 2, "{v:?}");
        let v = judge_snapshot("", "", &Exit::Code(0), &dir, None);
        assert!(v.failures[0].contains("never printed"), "{v:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
