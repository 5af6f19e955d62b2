//! The boot test's runner: `boot-test` and `qemu-check` choose their scenarios (from the
//! scenario modules), boot each under a VMM (petrel, or QEMU for checking the guest itself)
//! and judge the run from its serial log, its exit status and the scenario's own checks.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::build::{build_guest, build_petrel, target_dir, workspace_root, Guest};
use crate::cache::Cache;
use crate::cli::{BootTestArgs, QemuCheckArgs};
use crate::error::{Error, IoContext, Result};
use crate::host::{self, HostKvm, QEMU_PACKAGE};
use crate::initramfs::{self, MARKER};
use crate::live::LiveRun;
use crate::log_watch::{LogWatch, POLL};
use crate::scenario::{
    evaluate, guest_mem_arg, judge_serial, kill_vmm, petrel_command, report, summary_line,
    times_text, Exit, KernelFormat, Outcome, Scenario, GUEST_CMDLINE, RUN_INIT_LINE,
};
use crate::{
    api_boot, balloon_boot, jail_boot, mmds_boot, net_boot, shell_boot, snapshot_boot, virtio_boot,
    vsock_boot,
};

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

impl Vmm {
    /// The command line that boots `s` with its serial output going to `serial_log` (for a
    /// Firecracker-style scenario, to stdout: see [`Scenario::fc`]).
    pub fn command(&self, s: &Scenario, serial_log: &Path) -> Command {
        match self {
            Vmm::Petrel(bin) if s.fc.is_some() => {
                let netns = s.net.as_ref().map(|n| n.namespace.as_str());
                crate::api_boot::command(bin, s.fc.as_ref().expect("checked"), netns)
            }
            Vmm::Petrel(_) if s.jail.is_some() => s.jail.as_ref().expect("checked").command(s),
            Vmm::Petrel(bin) => petrel_command(bin, s, serial_log),
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
        // A failed live check fails the run: its guest may wait forever for the host's next
        // step (balloon-inflate's guest waits for its deflate), so the run is not waited out.
        if live.as_ref().is_some_and(LiveRun::failed) {
            kill_vmm(&mut child);
            break Exit::Stopped;
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
    if let (Some(fc), Vmm::Petrel(_)) = (&scenario.fc, vmm) {
        fc.remove_socket();
    }
    if let Some(fixture) = fixture {
        match fixture.finish(&serial) {
            Ok(notes) => verdict.notes.extend(notes),
            Err(failures) => verdict.failures.extend(failures),
        }
    }
    for after in &scenario.after {
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
            parts: Vec::new(),
        },
        &[
            ("serial log", &serial_log, SERIAL_TAIL),
            ("VMM's output", &vmm_log, VMM_TAIL),
        ],
    ))
}

/// The standard boot-test scenarios: (name, kernel format, vCPUs).
const SCENARIOS: &[(&str, KernelFormat, u32)] = &[
    ("vmlinux-1vcpu", KernelFormat::Elf, 1),
    ("bzimage-1vcpu", KernelFormat::BzImage, 1),
];

/// The scenario name used with `boot-test --kernel`.
const CUSTOM_SCENARIO: &str = "custom-1vcpu";

/// ELF or bzImage, by the file's first bytes.
fn kernel_format(path: &Path) -> Result<KernelFormat> {
    let bytes = fs::read(path).ctx(|| format!("reading kernel {}", path.display()))?;
    Ok(if bytes.starts_with(b"\x7fELF") {
        KernelFormat::Elf
    } else {
        KernelFormat::BzImage
    })
}

/// Keeps the scenarios that `only` names (all when it is empty); an unknown name is an
/// error.
fn select<'a>(all: &[&'a str], only: &[String]) -> Result<Vec<&'a str>> {
    if let Some(bad) = only.iter().find(|o| !all.contains(&o.as_str())) {
        return Err(Error::Usage(format!(
            "no scenario {bad:?}; there are: {}",
            all.join(", ")
        )));
    }
    Ok(all
        .iter()
        .copied()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s))
        .collect())
}

/// Like [`select`], where `only` may also name the `opt_in` scenarios, which run only when
/// named; with no `only`, the `defaults`.
fn select_with_opt_in<'a>(
    defaults: &[&'a str],
    opt_in: &[&'a str],
    only: &[String],
) -> Result<Vec<&'a str>> {
    let all: Vec<&str> = defaults.iter().chain(opt_in).copied().collect();
    if only.is_empty() {
        Ok(defaults.to_vec())
    } else {
        select(&all, only)
    }
}

/// The standard scenarios named in `names`, booting the built kernel with `initrd`.
fn standard_scenarios(names: &[&str], guest: &Guest, initrd: &Path) -> Vec<Scenario> {
    SCENARIOS
        .iter()
        .filter(|(name, _, _)| names.contains(name))
        .map(|&(name, format, vcpus)| {
            let kernel = match format {
                KernelFormat::Elf => &guest.kernel.vmlinux,
                KernelFormat::BzImage => &guest.kernel.bzimage,
            };
            Scenario::new(name, kernel, format, initrd, vcpus)
        })
        .collect()
}

/// Runs `boot-test`; returns the exit code: 0 when every scenario passed, 1 when one failed
/// or setup did, 2 for a bad scenario name.
pub fn boot_test(args: &BootTestArgs) -> u8 {
    let (defaults, opt_in): (Vec<&str>, &[&str]) = if args.kernel.is_some() {
        (vec![CUSTOM_SCENARIO], &[])
    } else {
        let standard = SCENARIOS.iter().map(|s| s.0);
        let all = standard
            .chain(virtio_boot::SCENARIOS.iter().copied())
            .chain([net_boot::NAME, vsock_boot::NAME])
            .chain(api_boot::SCENARIOS.iter().copied())
            .chain(mmds_boot::SCENARIOS.iter().copied())
            .chain(balloon_boot::SCENARIOS.iter().copied())
            .chain(jail_boot::SCENARIOS.iter().copied())
            .chain(snapshot_boot::SCENARIOS.iter().copied())
            .chain(shell_boot::SCENARIOS.iter().copied())
            .collect();
        (all, api_boot::OPT_IN_SCENARIOS)
    };
    let names = match select_with_opt_in(&defaults, opt_in, &args.only) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let setup = || -> Result<(Vec<Scenario>, PathBuf)> {
        let scenarios = match &args.kernel {
            Some(kernel) => {
                let initrd = match &args.initrd {
                    Some(i) => i.clone(),
                    None => initramfs::build(&Cache::from_env()?)?,
                };
                let format = kernel_format(kernel)?;
                vec![Scenario::new(CUSTOM_SCENARIO, kernel, format, &initrd, 1)]
            }
            None => {
                let guest = build_guest(&[])?;
                let initrd = args
                    .initrd
                    .clone()
                    .unwrap_or_else(|| guest.initramfs.clone());
                let mut scenarios = standard_scenarios(&names, &guest, &initrd);
                // The suite's kernel finds Petrel's ACPI tables through either boot protocol
                // (PVH's start_info, the zero page). Not asked of QEMU (microvm runs with
                // acpi=off) or of a kernel given with --kernel.
                for s in &mut scenarios {
                    s.expect.extend(virtio_boot::ACPI_TABLE_LINES);
                }
                let disks = target_dir(&workspace_root()).join("boot-test");
                let vmlinux = &guest.kernel.vmlinux;
                scenarios.extend(virtio_boot::scenarios(&names, vmlinux, &disks)?);
                // Built on the virtio-blk pieces (a root disk with busybox).
                if names.contains(&net_boot::NAME) {
                    virtio_boot::prepare_disks(&disks)?;
                    scenarios.push(net_boot::scenario(vmlinux, &disks)?);
                }
                if names.contains(&vsock_boot::NAME) {
                    virtio_boot::prepare_disks(&disks)?;
                    scenarios.push(vsock_boot::scenario(vmlinux, &disks)?);
                }
                scenarios.extend(api_boot::scenarios(&names, vmlinux, &initrd, &disks)?);
                scenarios.extend(mmds_boot::scenarios(&names, vmlinux, &disks)?);
                scenarios.extend(balloon_boot::scenarios(&names, vmlinux, &disks)?);
                scenarios.extend(jail_boot::scenarios(&names, vmlinux, &initrd, &disks)?);
                scenarios.extend(snapshot_boot::scenarios(&names, vmlinux, &disks)?);
                scenarios.extend(shell_boot::scenarios(&names, vmlinux, &disks)?);
                scenarios
            }
        };
        let petrel = match &args.petrel {
            Some(p) => p.clone(),
            None => build_petrel(&workspace_root())?,
        };
        Ok((scenarios, petrel))
    };
    let (scenarios, petrel) = match setup() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            println!("setup failed, so no scenario ran");
            println!("{}", summary_line(0, names.len()));
            return 1;
        }
    };
    let host = match host::host_kvm() {
        HostKvm::Hardware => "hardware KVM".to_owned(),
        HostKvm::Emulating(why) => format!(
            "KVM that emulates guest kernel code ({why}); the guest kernel's patch makes \
             user-mode system calls work"
        ),
    };
    println!(
        "host: {host}; every scenario needs its guest's user-mode marker {}",
        initramfs::MARKER
    );
    run_all(&Vmm::Petrel(petrel), &scenarios, args.timeout)
}

/// Runs `qemu-check`; returns the exit code, as [`boot_test`] does.
pub fn qemu_check(args: &QemuCheckArgs) -> u8 {
    let all: Vec<&str> = SCENARIOS.iter().map(|s| s.0).collect();
    let names = match select(&all, &args.only) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let guest = match build_guest(&[QEMU_PACKAGE]) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            println!("{}", summary_line(0, names.len()));
            return 1;
        }
    };
    let scenarios: Vec<Scenario> = standard_scenarios(&names, &guest, &guest.initramfs)
        .into_iter()
        .map(|mut s| {
            s.name = format!("qemu-{}", s.name);
            s
        })
        .collect();
    println!("QEMU with TCG runs guest user mode: the init marker is required");
    run_all(&Vmm::Qemu, &scenarios, args.timeout)
}

/// Runs the scenarios one after another and prints the closing `N passed, N failed`;
/// returns 0 when all passed, else 1.
fn run_all(vmm: &Vmm, scenarios: &[Scenario], timeout: Duration) -> u8 {
    let log_dir = target_dir(&workspace_root()).join("boot-test");
    let start = Instant::now();
    let mut results = Vec::new();
    for s in scenarios {
        let (result, parts) = match run_scenario(vmm, s, &log_dir, timeout) {
            Ok(outcome) => (
                (
                    outcome.verdict.passed(),
                    format!(
                        "{:>6.1} s; {}",
                        outcome.wall.as_secs_f64(),
                        times_text(outcome.run_init, outcome.marker)
                    ),
                ),
                outcome.parts,
            ),
            Err(e) => {
                println!("{}: FAIL: {e}", s.name);
                ((false, "did not run".to_owned()), Vec::new())
            }
        };
        results.push((s.name.as_str(), result.0, result.1, parts));
    }
    println!("results:");
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    for (name, ok, wall, parts) in &results {
        println!("    {name:<20} {} {wall}", verdict(*ok));
        // A part's line sits under its scenario's; the scenario's verdict covers it.
        for (part, ok, what) in parts {
            println!("      {part:<18} {} {what}", verdict(*ok));
        }
    }
    let passed = results.iter().filter(|r| r.1).count();
    let failed = results.len() - passed;
    println!(
        "total {:.1} s; logs in {}",
        start.elapsed().as_secs_f64(),
        log_dir.display()
    );
    println!("{}", summary_line(passed, failed));
    if failed == 0 {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
             panic=1 pci=off' --mem 128M --vcpus 2 --serial file:/l/x.log"
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

    #[test]
    fn scenario_selection() {
        let all = ["a", "b", "c"];
        assert_eq!(select(&all, &[]).unwrap(), vec!["a", "b", "c"]);
        assert_eq!(
            select(&all, &["c".into(), "a".into()]).unwrap(),
            vec!["a", "c"]
        );
        assert!(matches!(select(&all, &["d".into()]), Err(Error::Usage(_))));
    }

    #[test]
    fn opt_in_scenarios_run_only_when_named() {
        let (defaults, opt_in) = (["a", "b"], ["x"]);
        assert_eq!(
            select_with_opt_in(&defaults, &opt_in, &[]).unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            select_with_opt_in(&defaults, &opt_in, &["x".into(), "a".into()]).unwrap(),
            ["a", "x"]
        );
        let e = select_with_opt_in(&defaults, &opt_in, &["y".into()]).unwrap_err();
        assert!(e.to_string().contains("a, b, x"), "{e}");
    }

    #[test]
    fn standard_scenarios_use_the_right_images() {
        let guest = Guest {
            kernel: crate::kernel::Kernel {
                vmlinux: "/c/vmlinux".into(),
                bzimage: "/c/bzImage".into(),
                config: "/c/config".into(),
            },
            initramfs: "/c/i.cpio".into(),
        };
        let names: Vec<&str> = SCENARIOS.iter().map(|s| s.0).collect();
        let s = standard_scenarios(&names, &guest, &guest.initramfs);
        let summary: Vec<(&str, &str, u32)> = s
            .iter()
            .map(|s| (s.name.as_str(), s.kernel.to_str().unwrap(), s.vcpus))
            .collect();
        assert_eq!(
            summary,
            [
                ("vmlinux-1vcpu", "/c/vmlinux", 1),
                ("bzimage-1vcpu", "/c/bzImage", 1),
            ]
        );
        assert!(s
            .iter()
            .all(|s| s.initrd.as_deref() == Some(Path::new("/c/i.cpio"))));
    }
}
