//! What a boot-test scenario is, and how a boot is judged and reported: the pieces that the
//! runner ([`crate::boottest`]) and every scenario module share. The descriptions of the
//! special scenarios' parts ([`AfterCheck`], [`NetSetup`], [`FcBoot`], [`JailBoot`],
//! [`SnapshotBoot`]) are here too, so that [`Scenario`] can hold them; what each one does is
//! implemented in its scenario's module (`virtio_boot`, `net_boot`, `api_boot`, `jail_boot`,
//! `snapshot_boot`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::host;
use crate::initramfs::MARKER;
use crate::live::LiveCheck;

/// What xtask gives the guest as its command line: Petrel's default (COM1 as the console, a
/// reset through the i8042, a panic resets; `pci=off`: the suite's kernel builds PCI support
/// only because Linux's ACPI needs it, and there is no PCI bus to probe). Petrel adds the PVM
/// workarounds itself.
pub const GUEST_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

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
    /// Lines the serial log must not contain.
    pub forbid: Vec<&'static str>,
    /// The checks the guest's init script must report as passed (see
    /// [`crate::guest_script`]).
    pub checks: Vec<&'static str>,
    /// Checks on the host after the VM ended (the disk image, the metrics), in order.
    pub after: Vec<crate::scenario::AfterCheck>,
    /// A network namespace with a tap, a DHCP server and an HTTP server to run in.
    pub net: Option<crate::scenario::NetSetup>,
    /// A check that runs on the host while the VM runs (see [`LiveCheck`]).
    pub live: Option<Arc<dyn LiveCheck>>,
    /// Configured as Firecracker is (API socket or config file) instead of by petrel's
    /// command line; the serial log is then petrel's stdout.
    pub fc: Option<crate::scenario::FcBoot>,
    /// Run by `petrel-jailer` in a jail (the static petrel there, not the VMM's binary); the
    /// serial log is then petrel's stdout.
    pub jail: Option<crate::scenario::JailBoot>,
    /// Snapshotted partway and restored in a second petrel process (its own runner).
    pub snapshot: Option<crate::scenario::SnapshotBoot>,
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
            forbid: Vec::new(),
            checks: Vec::new(),
            after: Vec::new(),
            net: None,
            live: None,
            fc: None,
            jail: None,
            snapshot: None,
            terminal: false,
        }
    }
}

/// Checks made on the host once the VM has ended.
#[derive(Debug, Clone)]
pub enum AfterCheck {
    /// The root checks of [`AfterCheck::RootReadWrite`], and the second disk holds the
    /// pattern the guest wrote, with the checksum the guest printed, and zeros after it.
    RootAndPattern {
        /// The root disk image.
        image: PathBuf,
        /// Petrel's `--metrics` file.
        metrics: PathBuf,
        /// The second disk's image.
        data: PathBuf,
    },
    /// The disk image is byte for byte what it was before the VM started.
    Unchanged {
        /// The disk image.
        image: PathBuf,
        /// Its SHA-256 before.
        sha256: String,
    },
    /// The guest mounted the disk read-write: the ext4 mount count went from 0 to at least 1
    /// with a last-mount time, the disk saw writes, and virtio-rng served the guest bytes.
    RootReadWrite {
        /// The disk image.
        image: PathBuf,
        /// Petrel's `--metrics` file.
        metrics: PathBuf,
    },
    /// Petrel's `--metrics` file passes `judge`.
    Metrics {
        /// The metrics file.
        metrics: PathBuf,
        /// Judges the metrics: a note when they pass, a failure otherwise.
        judge: fn(&serde_json::Value) -> std::result::Result<String, String>,
    },
    /// The last line of a Firecracker-style metrics file (`metrics_path`: one JSON object per
    /// line, the last written when the VM ended) passes `judge`, with the serial log at hand.
    MetricsLine {
        /// The metrics file.
        metrics: PathBuf,
        /// Judges the serial log and the metrics: notes when they pass, failures otherwise.
        judge: fn(&str, &serde_json::Value) -> crate::live::LiveResult,
    },
    /// The guest mounted the disk read-only: the superblock is untouched and no write
    /// reached the disk.
    RootReadOnly {
        /// The disk image.
        image: PathBuf,
        /// Petrel's `--metrics` file.
        metrics: PathBuf,
    },
    /// Petrel's `--metrics` says why the VM stopped: its `stop` is `reason` (`Reset`,
    /// `PowerOff`: petrel's `StopReason`) and its `exit_code` 0.
    Stopped {
        /// Petrel's `--metrics` file.
        metrics: PathBuf,
        /// The stop reason it must name.
        reason: &'static str,
    },
}

/// The network a virtio-net scenario runs in: a namespace of its own holding the tap and,
/// with `servers`, a DHCP server (dnsmasq) and an HTTP server.
#[derive(Debug, Clone)]
pub struct NetSetup {
    /// The namespace's name.
    pub namespace: String,
    /// Whether dnsmasq and the HTTP server run and are judged (`virtio-net-dhcp`); without
    /// them the namespace holds only the tap (`mmds-*`, whose guest talks to Petrel's MMDS).
    pub servers: bool,
    /// Where dnsmasq's log and leases go.
    pub dir: PathBuf,
    /// Petrel's `--metrics` file, read once the VM ended.
    pub metrics: PathBuf,
}

/// How a Firecracker-style scenario hands petrel its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// `petrel --api-sock SOCKET`, then HTTP requests.
    Api {
        /// The socket's path.
        socket: PathBuf,
    },
    /// `petrel --config-file FILE --no-api`.
    ConfigFile {
        /// The config file, written when the scenario is made.
        path: PathBuf,
    },
}

/// A VM configured as Firecracker's clients configure it.
#[derive(Debug, Clone, PartialEq)]
pub struct FcBoot {
    /// API or config file.
    pub via: Via,
    /// The body of `PUT /boot-source` (the config file's `boot-source`).
    pub boot_source: Value,
    /// The body of `PUT /machine-config`.
    pub machine_config: Value,
    /// The bodies of `PUT /drives/{drive_id}`, in order.
    pub drives: Vec<Value>,
    /// The bodies of `PUT /network-interfaces/{iface_id}`, in order.
    pub network_interfaces: Vec<Value>,
    /// The body of `PUT /mmds/config` (the config file's `mmds-config`), if any.
    pub mmds_config: Option<Value>,
    /// The body of `PUT /metrics` (the config file's `metrics`), if any.
    pub metrics: Option<Value>,
    /// The body of `PUT /balloon` (the config file's `balloon`), if any.
    pub balloon: Option<Value>,
    /// `--metadata FILE`: a JSON document put into the MMDS data store at start.
    pub metadata: Option<PathBuf>,
}

/// A VM run by `petrel-jailer` in a jail it builds under `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailBoot {
    /// The `petrel-jailer` binary.
    pub jailer: PathBuf,
    /// The statically linked petrel the jailer copies into the jail (`--exec-file`).
    pub petrel: PathBuf,
    /// `--chroot-base-dir`.
    pub base: PathBuf,
    /// `--id`.
    pub id: String,
    /// `--uid` and `--gid` (the same number).
    pub uid: u32,
}

/// What a snapshot scenario needs beyond its [`Scenario`]: where the snapshot, the disk and
/// the restored process's metrics go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotBoot {
    /// `--snapshot-on-signal DIR`, then `petrel restore DIR`.
    pub dir: PathBuf,
    /// The root disk image (read-write).
    pub image: PathBuf,
    /// The restored process's `--metrics` file.
    pub metrics: PathBuf,
    /// Petrel's page-fault handler (`uffd_handler`), which serves the memory file to the
    /// second restore, under the `Uffd` backend.
    pub uffd_handler: PathBuf,
}

/// The scenarios of a module's list `mine` that `names` asks for, in `mine`'s order.
pub fn asked_for<'a>(mine: &[&'a str], names: &[&str]) -> Vec<&'a str> {
    mine.iter().copied().filter(|n| names.contains(n)).collect()
}

/// The petrel command line that boots `s` (a scenario configured by petrel's own flags, not
/// Firecracker-style or jailed) with its serial output going to `serial_log`.
pub fn petrel_command(bin: &Path, s: &Scenario, serial_log: &Path) -> Command {
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

/// How the VMM process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It ran past the time limit and was killed.
    TimedOut(Duration),
    /// It was killed because the scenario's live check had already failed: the run could
    /// not pass, so it was not waited out.
    Stopped,
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
        Exit::Stopped => v
            .failures
            .push("the VMM was killed once the live check had failed".into()),
    }
    if !has(MARKER) {
        v.failures
            .push(format!("the serial log lacks the init marker `{MARKER}`"));
    }
    if has(REBOOT_FAILED_LINE) {
        v.failures.push(
            "init's `reboot -f` (or `poweroff -f`) returned instead of ending the guest".into(),
        );
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
    /// The results of a scenario's parts, each on a line of its own in the results (a
    /// snapshot scenario's restores): what, whether it passed, and its times.
    pub parts: Vec<(String, bool, String)>,
}

/// Adds to `verdict` what the serial log of `scenario` must show besides [`evaluate`]'s: its
/// `expect` lines, none of its `forbid` lines, and the checks its guest's init script reports.
pub fn judge_serial(scenario: &Scenario, serial: &str, verdict: &mut Verdict) {
    for line in &scenario.expect {
        if !serial.contains(line) {
            verdict
                .failures
                .push(format!("the serial log lacks `{line}`"));
        }
    }
    for line in &scenario.forbid {
        if let Some(found) = serial.lines().find(|l| l.contains(line)) {
            verdict.failures.push(format!(
                "the serial log has `{line}`: {}",
                found.trim_end_matches('\r').trim()
            ));
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

    #[test]
    fn a_module_gets_the_scenarios_asked_for_in_its_own_order() {
        let mine = ["b-one", "b-two", "b-three"];
        assert_eq!(
            asked_for(&mine, &["x", "b-three", "b-one"]),
            ["b-one", "b-three"]
        );
        assert!(asked_for(&mine, &["x"]).is_empty());
    }

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
            (Exit::Stopped, "live check had failed"),
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
    fn expected_and_forbidden_lines() {
        let mut s = Scenario::new("s", Path::new("/k"), KernelFormat::Elf, Path::new("/i"), 2);
        s.expect = vec!["ACPI: APIC 0x", "smp: Brought up 1 node, 2 CPUs"];
        s.forbid = vec!["found SMP MP-table"];
        let good = log(&[
            "[    0.0] ACPI: APIC 0x00000000000E0100 000048 (v06 PETREL)",
            "[    9.1] smp: Brought up 1 node, 2 CPUs",
        ]);
        let mut v = Verdict::default();
        judge_serial(&s, &good, &mut v);
        assert!(v.passed(), "{v:?}");
        let bad = log(&["[    0.0] found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]"]);
        let mut v = Verdict::default();
        judge_serial(&s, &bad, &mut v);
        assert_eq!(
            v.failures,
            [
                "the serial log lacks `ACPI: APIC 0x`",
                "the serial log lacks `smp: Brought up 1 node, 2 CPUs`",
                "the serial log has `found SMP MP-table`: [    0.0] found SMP MP-table at [mem \
                 0x0009fc00-0x0009fc0f]",
            ]
        );
    }

    #[test]
    fn empty_log() {
        let v = evaluate("", &Exit::Code(0));
        assert_eq!(v.failures.len(), 2);
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
}
