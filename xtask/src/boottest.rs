//! Booting the guest kernel under a VMM (petrel, or QEMU for checking the guest itself)
//! and judging the run from its serial log and exit status.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{IoContext, Result};
use crate::host;
use crate::initramfs::MARKER;
use crate::live::{LiveCheck, LiveRun};

/// What xtask adds to the guest's command line. Petrel adds the PVM workarounds itself.
pub const GUEST_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Guest memory of the boot-test scenarios and `boot-profile`, in MiB. The boot test needs
/// little (a tiny initramfs, or busybox from a disk), and on an emulating host the kernel
/// spends about 10 ms of guest time per MiB initialising and freeing its `struct page`s
/// (`memmap_init`, `memblock_free_all`): 128 MiB instead of 256 is about 1.5 s less boot.
pub const GUEST_MEM_MIB: u32 = 128;

/// [`GUEST_MEM_MIB`] as a `--mem` argument.
pub fn guest_mem_arg() -> String {
    format!("{GUEST_MEM_MIB}M")
}

/// The kernel's line just before it starts the initramfs's /init.
pub const RUN_INIT_LINE: &str = "Run /init as init process";

/// What /init prints when `reboot -f` returns (it should not).
const REBOOT_FAILED_LINE: &str = "PETREL-BOOT-TEST-REBOOT-FAILED";

/// Lines of a failed scenario's serial log to print.
const SERIAL_TAIL: usize = 30;

/// Lines of a failed scenario's VMM output to print.
const VMM_TAIL: usize = 15;

/// The program that runs a scenario.
#[derive(Debug, Clone)]
pub enum Vmm {
    /// The petrel binary at this path.
    Petrel(PathBuf),
    /// `qemu-system-x86_64` with TCG (no KVM): checks the guest kernel and initramfs.
    Qemu,
}

/// Which way the kernel is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF vmlinux, entered through PVH.
    Elf,
    /// A bzImage, entered through the Linux boot protocol.
    BzImage,
}

/// One boot.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Short name: used in output and in the log file's name.
    pub name: String,
    /// The kernel image.
    pub kernel: PathBuf,
    /// Its format (chooses QEMU's machine type).
    pub format: KernelFormat,
    /// The initramfs, if the guest boots from one.
    pub initrd: Option<PathBuf>,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// More petrel arguments (devices).
    pub extra_args: Vec<String>,
    /// The guest command line, when not [`GUEST_CMDLINE`].
    pub cmdline: Option<String>,
    /// Lines the serial log must also contain.
    pub expect: Vec<&'static str>,
    /// The checks the guest's init script must report as passed (see
    /// [`crate::guest_script`]).
    pub checks: Vec<&'static str>,
    /// Checks on the host after the VM ended (the disk image, the metrics).
    pub after: Option<crate::virtio_boot::AfterCheck>,
    /// A network namespace with a tap, a DHCP server and an HTTP server to run in.
    pub net: Option<crate::net_boot::NetSetup>,
    /// A check that runs on the host while the VM runs (see [`LiveCheck`]).
    pub live: Option<Arc<dyn LiveCheck>>,
    /// Configured as Firecracker is (API socket or config file) instead of by petrel's
    /// command line; the serial log is then petrel's stdout.
    pub fc: Option<crate::api_boot::FcBoot>,
    /// Run by `petrel-jailer` in a jail (the static petrel there, not the VMM's binary); the
    /// serial log is then petrel's stdout.
    pub jail: Option<crate::jail_boot::JailBoot>,
    /// Snapshotted partway and restored in a second petrel process (its own runner).
    pub snapshot: Option<crate::snapshot_boot::SnapshotBoot>,
    /// The serial port on petrel's stdio, a pseudo-terminal where xtask types into the
    /// guest's shell (its own runner: [`crate::shell_boot`]).
    pub terminal: bool,
}

impl Scenario {
    /// A scenario named `name`.
    pub fn new(name: &str, kernel: &Path, format: KernelFormat, initrd: &Path, vcpus: u32) -> Self {
        Self {
            name: name.to_owned(),
            kernel: kernel.to_owned(),
            format,
            initrd: Some(initrd.to_owned()),
            vcpus,
            extra_args: Vec::new(),
            cmdline: None,
            expect: Vec::new(),
            checks: Vec::new(),
            after: None,
            net: None,
            live: None,
            fc: None,
            jail: None,
            snapshot: None,
            terminal: false,
        }
    }
}

impl Vmm {
    /// The command line that boots `s` with its serial output going to `serial_log` (for a
    /// Firecracker-style scenario, to stdout: see [`Scenario::fc`]).
    pub fn command(&self, s: &Scenario, serial_log: &Path) -> Command {
        match self {
            Vmm::Petrel(bin) if s.fc.is_some() => {
                crate::api_boot::command(bin, s.fc.as_ref().expect("checked"))
            }
            Vmm::Petrel(_) if s.jail.is_some() => s.jail.as_ref().expect("checked").command(s),
            Vmm::Petrel(bin) => {
                let mut cmd = match &s.net {
                    // The tap lives in the scenario's namespace: petrel must run there.
                    Some(net) => {
                        let mut c = Command::new("ip");
                        c.args(["netns", "exec", &net.namespace]).arg(bin);
                        c
                    }
                    None => Command::new(bin),
                };
                cmd.arg("--kernel").arg(&s.kernel);
                if let Some(initrd) = &s.initrd {
                    cmd.arg("--initrd").arg(initrd);
                }
                let serial = match s.terminal {
                    true => "stdio".to_owned(),
                    false => format!("file:{}", serial_log.display()),
                };
                cmd.arg("--cmdline")
                    .arg(s.cmdline.as_deref().unwrap_or(GUEST_CMDLINE))
                    .args(["--mem", &guest_mem_arg(), "--vcpus", &s.vcpus.to_string()])
                    .args(["--serial", &serial])
                    .args(&s.extra_args);
                cmd
            }
            Vmm::Qemu => {
                // QEMU's `-kernel` takes a PVH ELF only on microvm; a bzImage boots on pc.
                let machine = match s.format {
                    KernelFormat::Elf => "microvm,acpi=off",
                    KernelFormat::BzImage => "pc",
                };
                let mut cmd = Command::new("qemu-system-x86_64");
                cmd.args(["-M", machine, "-accel", "tcg", "-m", &guest_mem_arg()])
                    .args(["-smp", &s.vcpus.to_string()])
                    .arg("-kernel")
                    .arg(&s.kernel);
                if let Some(initrd) = &s.initrd {
                    cmd.arg("-initrd").arg(initrd);
                }
                cmd.args(["-append", s.cmdline.as_deref().unwrap_or(GUEST_CMDLINE)])
                    .args(["-nodefaults", "-display", "none", "-monitor", "none"])
                    .arg("-serial")
                    .arg(format!("file:{}", serial_log.display()))
                    .arg("-no-reboot");
                cmd
            }
        }
    }
}

/// How the VMM process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It ran past the time limit and was killed.
    TimedOut(Duration),
}

impl Exit {
    /// How a process that ended with `status` ended.
    pub fn from_status(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Code(-1),
        }
    }
}

/// The judgement of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Why it failed; empty when it passed.
    pub failures: Vec<String>,
    /// Things worth saying either way (skipped checks and why).
    pub notes: Vec<String>,
}

impl Verdict {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Judges a run: the kernel must reach [`RUN_INIT_LINE`], the guest's init must print its
/// [`MARKER`] from user mode, and the VMM must exit 0 (the guest reset the machine). The
/// same on every host: on one that emulates guest kernel code, the guest kernel's patch
/// (`xtask/kernel/patches`) makes user-mode system calls work.
pub fn evaluate(serial: &str, exit: &Exit) -> Verdict {
    let mut v = Verdict::default();
    let has = |needle: &str| serial.contains(needle);
    if !has(RUN_INIT_LINE) {
        v.failures
            .push(format!("the serial log lacks `{RUN_INIT_LINE}`"));
    }
    match exit {
        Exit::Code(0) => {}
        Exit::Code(code) => v.failures.push(format!(
            "the VMM exited with code {code}, not 0 (guest reset)"
        )),
        Exit::Signal(sig) => v
            .failures
            .push(format!("the VMM was killed by signal {sig}")),
        Exit::TimedOut(limit) => v.failures.push(format!(
            "no exit within {} s; the VMM was killed",
            limit.as_secs()
        )),
    }
    if !has(MARKER) {
        v.failures
            .push(format!("the serial log lacks the init marker `{MARKER}`"));
    }
    if has(REBOOT_FAILED_LINE) {
        v.failures
            .push("init's `reboot -f` returned instead of resetting the guest".into());
    }
    if let Some(panic) = serial.lines().find(|l| l.contains("Kernel panic")) {
        v.failures
            .push(format!("the kernel panicked: {}", panic.trim()));
    }
    v
}

/// The result of running one scenario.
#[derive(Debug)]
pub struct Outcome {
    /// The judgement.
    pub verdict: Verdict,
    /// How long the VMM ran.
    pub wall: Duration,
    /// When [`RUN_INIT_LINE`] appeared in the serial log, from the VMM's start, as xtask
    /// saw it (polling the file); `None` if it never did.
    pub run_init: Option<Duration>,
    /// When the init's [`MARKER`] (its first output from user mode) appeared, likewise.
    pub marker: Option<Duration>,
}

/// How often a running scenario's exit status and serial log are checked.
pub const POLL: Duration = Duration::from_millis(50);

/// Follows a growing log file and notes when a line first shows up in it.
#[derive(Debug)]
pub struct LogWatch {
    path: PathBuf,
    needle: &'static str,
    text: Vec<u8>,
    scanned: usize,
    seen_at: Option<Duration>,
}

impl LogWatch {
    /// Watches `path` (which need not exist yet) for `needle`.
    pub fn new(path: &Path, needle: &'static str) -> Self {
        Self {
            path: path.to_owned(),
            needle,
            text: Vec::new(),
            scanned: 0,
            seen_at: None,
        }
    }

    /// Reads what was added to the file since the last call; if `needle` is there for the
    /// first time, records `now` as the time it appeared.
    pub fn poll(&mut self, now: Duration) {
        if let Ok(mut f) = fs::File::open(&self.path) {
            let len = self.text.len() as u64;
            if f.seek(SeekFrom::Start(len)).is_ok() {
                let _ = f.read_to_end(&mut self.text);
            }
        }
        if self.seen_at.is_some() {
            return;
        }
        let needle = self.needle.as_bytes();
        // Start far enough back to catch a needle split across two reads.
        let from = self.scanned.saturating_sub(needle.len() - 1);
        if self.text[from..].windows(needle.len()).any(|w| w == needle) {
            self.seen_at = Some(now);
        }
        self.scanned = self.text.len();
    }

    /// When the needle first appeared, if it has.
    pub fn seen_at(&self) -> Option<Duration> {
        self.seen_at
    }
}

/// Runs `scenario` under `vmm`, with logs in `log_dir`, and prints what happened.
pub fn run_scenario(
    vmm: &Vmm,
    scenario: &Scenario,
    log_dir: &Path,
    timeout: Duration,
) -> Result<Outcome> {
    if let (Some(snap), Vmm::Petrel(bin)) = (&scenario.snapshot, vmm) {
        return crate::snapshot_boot::run(bin, scenario, snap, log_dir, timeout);
    }
    if let (true, Vmm::Petrel(bin)) = (scenario.terminal, vmm) {
        return crate::shell_boot::run(bin, scenario, log_dir, timeout);
    }
    fs::create_dir_all(log_dir).ctx(|| format!("creating {}", log_dir.display()))?;
    let serial_log = log_dir.join(format!("{}.log", scenario.name));
    let vmm_log = log_dir.join(format!("{}.vmm-output.log", scenario.name));
    let _ = fs::remove_file(&serial_log);
    let mut cmd = vmm.command(scenario, &serial_log);
    println!("==> {}: {}", scenario.name, host::describe(&cmd));
    let out = fs::File::create(&vmm_log).ctx(|| format!("creating {}", vmm_log.display()))?;
    let err = out.try_clone().ctx(|| "duplicating a file".into())?;
    // A Firecracker-style petrel writes the serial port to its stdout.
    let out = match (&scenario.fc, vmm) {
        (Some(fc), Vmm::Petrel(_)) => {
            fc.prepare();
            fs::File::create(&serial_log).ctx(|| format!("creating {}", serial_log.display()))?
        }
        (None, Vmm::Petrel(_)) if scenario.jail.is_some() => {
            fs::File::create(&serial_log).ctx(|| format!("creating {}", serial_log.display()))?
        }
        _ => out,
    };
    // In its own process group, so that a hung VMM and anything it started can be killed
    // together. A Ctrl-C at the terminal then reaches only xtask: the guard turns it into
    // killing the group before xtask exits.
    let fixture = match &scenario.net {
        Some(net) => Some(crate::net_boot::NetFixture::start(net)?),
        None => None,
    };
    let live = scenario
        .live
        .clone()
        .map(|check| LiveRun::start(check, &serial_log, Instant::now() + timeout));
    let interrupts = host::InterruptGuard::install();
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(&cmd)))?;
    let mut configured = Ok(Vec::new());
    if let (Some(fc), Vmm::Petrel(_)) = (&scenario.fc, vmm) {
        configured = fc.configure(start, || matches!(child.try_wait(), Ok(None)));
        if configured.is_err() {
            kill_vmm(&mut child);
        }
    }
    let mut watch = LogWatch::new(&serial_log, RUN_INIT_LINE);
    let mut marker_watch = LogWatch::new(&serial_log, MARKER);
    let exit = loop {
        let status = child.try_wait();
        watch.poll(start.elapsed());
        marker_watch.poll(start.elapsed());
        match status {
            Ok(Some(status)) => break Exit::from_status(status),
            Ok(None) => {}
            Err(e) => {
                kill_vmm(&mut child);
                return Err(e).ctx(|| "waiting for the VMM".into());
            }
        }
        if let Some(sig) = interrupts.caught() {
            kill_vmm(&mut child);
            println!(
                "{}: interrupted by signal {sig}; killed the VMM's process group; logs: {}, {}",
                scenario.name,
                serial_log.display(),
                vmm_log.display()
            );
            // `exit` runs no destructors: remove the network namespace and dnsmasq here.
            drop(live);
            drop(fixture);
            std::process::exit(128 + sig);
        }
        if start.elapsed() >= timeout {
            kill_vmm(&mut child);
            break Exit::TimedOut(timeout);
        }
        thread::sleep(POLL);
    };
    drop(interrupts);
    let wall = start.elapsed();
    watch.poll(wall);
    marker_watch.poll(wall);
    let run_init = watch.seen_at();
    let marker = marker_watch.seen_at();
    let serial = fs::read(&serial_log).unwrap_or_default();
    let serial = String::from_utf8_lossy(&serial);
    let mut verdict = evaluate(&serial, &exit);
    match configured {
        Ok(notes) => verdict.notes.extend(notes),
        Err(e) => verdict
            .failures
            .push(format!("configuring the VM over the API failed: {e}")),
    }
    judge_serial(scenario, &serial, &mut verdict);
    if let Some(live) = live {
        match live.finish() {
            Ok(notes) => verdict.notes.extend(notes),
            Err(failures) => verdict.failures.extend(failures),
        }
    }
    if let Some(fixture) = fixture {
        match fixture.finish(&serial) {
            Ok(notes) => verdict.notes.extend(notes),
            Err(failures) => verdict.failures.extend(failures),
        }
    }
    if let Some(after) = &scenario.after {
        match after.check(&serial) {
            Ok(notes) => verdict.notes.extend(notes),
            Err(failures) => verdict.failures.extend(failures),
        }
    }
    if let (Some(jail), Vmm::Petrel(_)) = (&scenario.jail, vmm) {
        match jail.finish() {
            Ok(notes) => verdict.notes.extend(notes),
            Err(failures) => verdict.failures.extend(failures),
        }
    }

    Ok(report(
        &scenario.name,
        &exit,
        Outcome {
            verdict,
            wall,
            run_init,
            marker,
        },
        &[
            ("serial log", &serial_log, SERIAL_TAIL),
            ("VMM's output", &vmm_log, VMM_TAIL),
        ],
    ))
}

/// Adds to `verdict` what the serial log of `scenario` must show besides [`evaluate`]'s: its
/// `expect` lines, and the checks its guest's init script reports.
pub fn judge_serial(scenario: &Scenario, serial: &str, verdict: &mut Verdict) {
    for line in &scenario.expect {
        if !serial.contains(line) {
            verdict
                .failures
                .push(format!("the serial log lacks `{line}`"));
        }
    }
    let (notes, failures) = crate::guest_script::judge(serial, &scenario.checks);
    verdict.notes.extend(notes);
    verdict.failures.extend(failures);
}

/// Prints how the scenario `name` went (its result, times, failures and notes) and, when it
/// failed, the last lines of each of `logs` (what, path, how many lines); returns `outcome`.
pub fn report(name: &str, exit: &Exit, outcome: Outcome, logs: &[(&str, &Path, usize)]) -> Outcome {
    let verdict = &outcome.verdict;
    let result = if verdict.passed() { "PASS" } else { "FAIL" };
    println!(
        "{name}: {result} in {:.1} s ({exit:?}); {}",
        outcome.wall.as_secs_f64(),
        times_text(outcome.run_init, outcome.marker)
    );
    for f in &verdict.failures {
        println!("    failed: {f}");
    }
    for n in &verdict.notes {
        println!("    note: {n}");
    }
    if !verdict.passed() {
        for (what, path, lines) in logs {
            println!("    last {lines} lines of the {what} {}:", path.display());
            let text = fs::read(path).unwrap_or_default();
            print_tail(&String::from_utf8_lossy(&text), *lines);
        }
    }
    outcome
}

/// Kills the VMM's process group (the VMM was started as its leader), then reaps the VMM.
/// The group is killed before the reap, while its id cannot have been reused.
pub fn kill_vmm(child: &mut std::process::Child) {
    if let Err(e) = host::kill_process_group(child.id()) {
        println!("    could not kill process group {}: {e}", child.id());
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// `Run /init at N s`, or that it never appeared.
pub fn run_init_text(at: Option<Duration>) -> String {
    match at {
        Some(t) => format!("`Run /init` at {:.1} s", t.as_secs_f64()),
        None => "no `Run /init` line".to_owned(),
    }
}

/// `Run /init at N s, init marker at M s`: when the kernel started init and when init's
/// first user-mode output appeared.
pub fn times_text(run_init: Option<Duration>, marker: Option<Duration>) -> String {
    let marker = match marker {
        Some(t) => format!("init marker at {:.1} s", t.as_secs_f64()),
        None => "no init marker".to_owned(),
    };
    format!("{}, {marker}", run_init_text(run_init))
}

/// Prints the last `n` lines of `text`, indented, or says that it is empty.
pub fn print_tail(text: &str, n: usize) {
    let lines = host::tail_lines(text, n);
    if lines.is_empty() {
        println!("    (empty)");
    }
    for line in lines {
        println!("    | {}", line.trim_end_matches('\r'));
    }
}

/// The closing line of a run: `N passed, N failed`.
pub fn summary_line(passed: usize, failed: usize) -> String {
    format!("{passed} passed, {failed} failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("{l}\r\n")).collect()
    }

    #[test]
    fn the_marker_is_needed_everywhere() {
        let good = log(&[
            "[    0.500000] Freeing unused kernel image memory: 800K",
            "[    0.510000] Run /init as init process",
            MARKER,
            "[    0.600000] reboot: Restarting system",
        ]);
        let v = evaluate(&good, &Exit::Code(0));
        assert!(v.passed(), "{v:?}");
        assert!(v.notes.is_empty());

        let no_marker = log(&["[    0.5] Run /init as init process"]);
        let v = evaluate(&no_marker, &Exit::Code(0));
        assert_eq!(v.failures.len(), 1);
        assert!(v.failures[0].contains(MARKER));
    }

    #[test]
    fn init_dying_fails_even_after_a_reset() {
        // An unpatched guest kernel on an emulating host: init dies on its first system
        // call and panic=1 resets the guest, so the VMM exits 0. Not a pass any more.
        let serial = log(&[
            "[   60.0] Run /init as init process",
            "[   60.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b",
            "[   60.2] Rebooting in 1 seconds..",
        ]);
        let v = evaluate(&serial, &Exit::Code(0));
        assert_eq!(v.failures.len(), 2, "{v:?}");
        assert!(v.failures[0].contains(MARKER));
        assert!(v.failures[1].contains("Attempted to kill init"));
    }

    #[test]
    fn missing_run_init_and_bad_exits_fail() {
        let early = log(&[
            "[    0.0] Linux version 6.12",
            "Kernel panic - not syncing: VFS",
        ]);
        let v = evaluate(&early, &Exit::Code(0));
        assert!(!v.passed());
        assert!(v.failures[0].contains(RUN_INIT_LINE));
        assert!(v
            .failures
            .iter()
            .any(|n| n.contains("Kernel panic - not syncing: VFS")));

        let reached = log(&["Run /init as init process", MARKER]);
        for (exit, word) in [
            (Exit::Code(1), "code 1"),
            (Exit::Signal(9), "signal 9"),
            (Exit::TimedOut(Duration::from_secs(600)), "600 s"),
        ] {
            let v = evaluate(&reached, &exit);
            assert_eq!(v.failures.len(), 1, "{exit:?}");
            assert!(v.failures[0].contains(word), "{:?}", v.failures);
        }
    }

    #[test]
    fn run_init_must_be_the_initramfs_init() {
        let other = log(&["Run /sbin/init as init process", MARKER]);
        assert!(!evaluate(&other, &Exit::Code(0)).passed());
    }

    #[test]
    fn failed_reboot_is_a_failure() {
        let serial = log(&["Run /init as init process", MARKER, REBOOT_FAILED_LINE]);
        let v = evaluate(&serial, &Exit::Code(0));
        assert_eq!(v.failures.len(), 1);
        assert!(v.failures[0].contains("reboot -f"));
    }

    #[test]
    fn empty_log() {
        let v = evaluate("", &Exit::Code(0));
        assert_eq!(v.failures.len(), 2);
    }

    #[test]
    fn log_watch_follows_a_growing_file() {
        let dir = std::env::temp_dir().join(format!("xtask-logwatch-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serial.log");
        let _ = fs::remove_file(&path);
        let mut w = LogWatch::new(&path, RUN_INIT_LINE);
        w.poll(Duration::from_secs(1));
        assert_eq!(w.seen_at(), None, "no file yet");
        fs::write(&path, "[ 1.0] Freeing memory\r\n[ 2.0] Run /ini").unwrap();
        w.poll(Duration::from_secs(2));
        assert_eq!(w.seen_at(), None, "half a line");
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, b"t as init process\r\n").unwrap();
        w.poll(Duration::from_secs(3));
        assert_eq!(
            w.seen_at(),
            Some(Duration::from_secs(3)),
            "split across reads"
        );
        std::io::Write::write_all(&mut f, b"Run /init as init process\r\n").unwrap();
        w.poll(Duration::from_secs(4));
        assert_eq!(
            w.seen_at(),
            Some(Duration::from_secs(3)),
            "the first time counts"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn times_wording() {
        assert_eq!(
            times_text(
                Some(Duration::from_millis(23_100)),
                Some(Duration::from_millis(25_440))
            ),
            "`Run /init` at 23.1 s, init marker at 25.4 s"
        );
        assert_eq!(
            times_text(Some(Duration::from_secs(1)), None),
            "`Run /init` at 1.0 s, no init marker"
        );
    }

    #[test]
    fn run_init_wording() {
        assert_eq!(
            run_init_text(Some(Duration::from_millis(70_240))),
            "`Run /init` at 70.2 s"
        );
        assert_eq!(run_init_text(None), "no `Run /init` line");
    }

    #[test]
    fn summary() {
        assert_eq!(summary_line(3, 0), "3 passed, 0 failed");
        assert_eq!(summary_line(1, 2), "1 passed, 2 failed");
    }

    #[test]
    fn petrel_command_line() {
        let s = Scenario::new(
            "vmlinux-2vcpu",
            Path::new("/k/vmlinux"),
            KernelFormat::Elf,
            Path::new("/i.cpio"),
            2,
        );
        let cmd = Vmm::Petrel("/t/petrel".into()).command(&s, Path::new("/l/x.log"));
        assert_eq!(
            host::describe(&cmd),
            "/t/petrel --kernel /k/vmlinux --initrd /i.cpio --cmdline 'console=ttyS0 reboot=k \
             panic=1' --mem 128M --vcpus 2 --serial file:/l/x.log"
        );
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args[5], GUEST_CMDLINE, "the cmdline is one argument");
    }

    #[test]
    fn qemu_machine_follows_format() {
        let mut s = Scenario::new("q", Path::new("/k"), KernelFormat::Elf, Path::new("/i"), 1);
        let text = host::describe(&Vmm::Qemu.command(&s, Path::new("/l")));
        assert!(text.contains("-M microvm,acpi=off"), "{text}");
        assert!(
            text.contains("-no-reboot") && !text.contains("kvm"),
            "{text}"
        );
        s.format = KernelFormat::BzImage;
        let text = host::describe(&Vmm::Qemu.command(&s, Path::new("/l")));
        assert!(text.contains("-M pc "), "{text}");
    }
}
