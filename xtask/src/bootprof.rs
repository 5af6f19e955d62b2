//! `boot-profile`: where a Linux guest's boot goes, by name.
//!
//! Boots the guest under petrel with `initcall_debug ignore_loglevel printk.time=1` added to
//! its command line, keeps the serial log, and reads it back: the slowest initcalls (from
//! the kernel's own `initcall X returned R after N usecs` lines) and the biggest gaps
//! between consecutive printk timestamps, each with the line before it and the last
//! initcall started by then. A kernel built without kallsyms prints initcalls as bare
//! addresses; those are named from the vmlinux's symbol table.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::BootProfileArgs;
use crate::error::{Error, IoContext, Result};
use crate::scenario::{GUEST_CMDLINE, RUN_INIT_LINE};
use crate::{elf, host};

/// What `boot-profile` adds to the guest's command line.
pub const PROFILE_CMDLINE: &str = "initcall_debug ignore_loglevel printk.time=1";

/// How many initcalls the report lists.
pub const TOP_INITCALLS: usize = 15;

/// How many driver probes the report lists.
pub const TOP_PROBES: usize = 5;

/// How many gaps the report lists.
pub const TOP_GAPS: usize = 10;

/// The initcall that starts unpacking the initramfs (in the background: it returns at
/// once and the unpacking shows as gaps in later initcalls).
const UNPACK_INITCALL: &str = "populate_rootfs";
/// What the kernel prints once the initramfs is unpacked and its memory given back.
const UNPACK_END: &str = "Freeing initrd memory";

/// One line of the kernel log with its printk timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Seconds since the kernel's clock started.
    pub secs: f64,
    /// The text after the timestamp.
    pub text: String,
    /// The last initcall started at or before this line, if any.
    pub initcall: Option<String>,
}

/// One initcall that returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Initcall {
    /// Its name (or address, when the kernel has no kallsyms and none was resolved).
    pub name: String,
    /// What it returned.
    pub ret: i64,
    /// How long it ran, as the kernel measured it.
    pub usecs: u64,
}

/// A pause between two consecutive timestamped lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    /// Seconds between the two lines.
    pub secs: f64,
    /// When the pause began (the earlier line's timestamp).
    pub at: f64,
    /// The line before the pause.
    pub before: String,
    /// The last initcall started before the pause.
    pub initcall: Option<String>,
}

/// What a boot's serial log says about where the time went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// The timestamped lines, in order.
    pub lines: Vec<LogLine>,
    /// The initcalls that returned, in order.
    pub initcalls: Vec<Initcall>,
    /// The driver probes that returned (`probe of DEVICE returned R after N usecs`), in
    /// order; some run in the background, beside the initcalls.
    pub probes: Vec<Initcall>,
}

/// Splits `[    1.234567] text` into the timestamp and the text.
fn timestamped(line: &str) -> Option<(f64, &str)> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (stamp, text) = rest.split_once(']')?;
    let secs = stamp.trim().parse::<f64>().ok()?;
    Some((secs, text.strip_prefix(' ').unwrap_or(text)))
}

/// The function name in `pty_init+0x0/0x50` (kallsyms) or the address in
/// `0xffffffff81234567` (no kallsyms), named from `symbols` where it has the address.
fn initcall_name(raw: &str, symbols: &HashMap<u64, String>) -> String {
    if let Some(hex) = raw.strip_prefix("0x") {
        if let Some(name) = u64::from_str_radix(hex, 16)
            .ok()
            .and_then(|a| symbols.get(&a))
        {
            return name.clone();
        }
        return raw.to_owned();
    }
    raw.split('+').next().unwrap_or(raw).to_owned()
}

/// Reads `NAME returned RET after N usecs`, naming it with `name`.
fn returned(rest: &str, name: impl Fn(&str) -> String) -> Option<Initcall> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words[..] {
        [raw, "returned", ret, "after", usecs, "usecs", ..] => Some(Initcall {
            name: name(raw),
            ret: ret.parse().ok()?,
            usecs: usecs.parse().ok()?,
        }),
        _ => None,
    }
}

/// Parses a serial log. `symbols` (address to function name) names the initcalls a
/// kernel without kallsyms prints as addresses; it may be empty.
pub fn parse(log: &str, symbols: &HashMap<u64, String>) -> Profile {
    let mut p = Profile::default();
    let mut current: Option<String> = None;
    for line in log.lines() {
        let Some((secs, text)) = timestamped(line) else {
            continue;
        };
        if let Some(rest) = text.strip_prefix("probe of ") {
            if let Some(call) = returned(rest, |raw| raw.to_owned()) {
                p.probes.push(call);
            }
        } else if let Some(rest) = text.strip_prefix("calling") {
            if let Some(raw) = rest.split_whitespace().next() {
                current = Some(initcall_name(raw, symbols));
            }
        } else if let Some(rest) = text.strip_prefix("initcall ") {
            if let Some(call) = returned(rest, |raw| initcall_name(raw, symbols)) {
                p.initcalls.push(call);
            }
        }
        p.lines.push(LogLine {
            secs,
            text: text.trim_end().to_owned(),
            initcall: current.clone(),
        });
    }
    p
}

/// The `n` longest of `calls`, longest first.
fn longest(calls: &[Initcall], n: usize) -> Vec<&Initcall> {
    let mut v: Vec<&Initcall> = calls.iter().collect();
    v.sort_by_key(|c| std::cmp::Reverse(c.usecs));
    v.truncate(n);
    v
}

impl Profile {
    /// The `n` initcalls that took longest, longest first.
    pub fn slowest(&self, n: usize) -> Vec<&Initcall> {
        longest(&self.initcalls, n)
    }

    /// The `n` driver probes that took longest, longest first.
    pub fn slowest_probes(&self, n: usize) -> Vec<&Initcall> {
        longest(&self.probes, n)
    }

    /// The `n` longest pauses between consecutive lines, longest first.
    pub fn gaps(&self, n: usize) -> Vec<Gap> {
        let mut v: Vec<Gap> = self
            .lines
            .windows(2)
            .map(|w| Gap {
                secs: w[1].secs - w[0].secs,
                at: w[0].secs,
                before: w[0].text.clone(),
                initcall: w[0].initcall.clone(),
            })
            .collect();
        v.sort_by(|a, b| b.secs.total_cmp(&a.secs));
        v.truncate(n);
        v
    }

    /// The timestamp of the first line containing `needle`.
    pub fn time_of(&self, needle: &str) -> Option<f64> {
        self.lines
            .iter()
            .find(|l| l.text.contains(needle))
            .map(|l| l.secs)
    }

    /// When the initcall `name` was called.
    pub fn called_at(&self, name: &str) -> Option<f64> {
        self.lines
            .iter()
            .find(|l| l.text.starts_with("calling") && l.initcall.as_deref() == Some(name))
            .map(|l| l.secs)
    }

    /// From the start of the initramfs's unpacking to the end.
    pub fn unpack_time(&self) -> Option<f64> {
        Some(self.time_of(UNPACK_END)? - self.called_at(UNPACK_INITCALL)?)
    }

    /// The sum of all initcalls' times, in seconds.
    pub fn initcall_total(&self) -> f64 {
        self.initcalls.iter().map(|i| i.usecs as f64).sum::<f64>() / 1e6
    }

    /// The report: milestones, the slowest initcalls and the biggest gaps.
    pub fn report(&self, top_initcalls: usize, top_gaps: usize) -> String {
        let mut out = String::new();
        let secs = |t: Option<f64>| t.map_or("not reached".to_owned(), |t| format!("{t:.2} s"));
        let _ = writeln!(out, "guest clock (printk timestamps):");
        let _ = writeln!(
            out,
            "    {RUN_INIT_LINE:<40} {}",
            secs(self.time_of(RUN_INIT_LINE))
        );
        let _ = writeln!(
            out,
            "    {:<40} {}",
            "initramfs unpacked in (populate_rootfs)",
            secs(self.unpack_time())
        );
        let _ = writeln!(
            out,
            "    {:<40} {:.2} s in {} initcalls",
            "all initcalls together",
            self.initcall_total(),
            self.initcalls.len()
        );
        let _ = writeln!(out, "slowest initcalls:");
        let _ = writeln!(out, "    {:>10}  {:>4}  initcall", "ms", "ret");
        for i in self.slowest(top_initcalls) {
            let _ = writeln!(
                out,
                "    {:>10.1}  {:>4}  {}",
                i.usecs as f64 / 1000.0,
                i.ret,
                i.name
            );
        }
        let _ = writeln!(
            out,
            "slowest driver probes (some run beside the initcalls):"
        );
        let _ = writeln!(out, "    {:>10}  {:>4}  device", "ms", "ret");
        for i in self.slowest_probes(TOP_PROBES) {
            let _ = writeln!(
                out,
                "    {:>10.1}  {:>4}  {}",
                i.usecs as f64 / 1000.0,
                i.ret,
                i.name
            );
        }
        let _ = writeln!(out, "biggest gaps between log lines:");
        let _ = writeln!(
            out,
            "    {:>10}  {:>10}  {:<28}  line before",
            "ms", "at s", "in initcall"
        );
        for g in self.gaps(top_gaps) {
            let _ = writeln!(
                out,
                "    {:>10.1}  {:>10.3}  {:<28}  {}",
                g.secs * 1000.0,
                g.at,
                g.initcall.as_deref().unwrap_or("(before initcalls)"),
                g.before
            );
        }
        out
    }
}

/// The guest command line of a profiling boot: the boot test's, the profiling options, then
/// the user's `extra`.
pub fn profile_cmdline(extra: Option<&str>) -> String {
    let mut c = format!("{GUEST_CMDLINE} {PROFILE_CMDLINE}");
    if let Some(e) = extra.map(str::trim).filter(|e| !e.is_empty()) {
        c.push(' ');
        c.push_str(e);
    }
    c
}

/// Where a profiling boot's files go.
#[derive(Debug)]
struct Outputs {
    serial: PathBuf,
    petrel: PathBuf,
}

/// CPU time (user, system) used by this process's waited-for children so far: the
/// difference across one boot is what that petrel used.
fn children_cpu() -> (Duration, Duration) {
    // SAFETY: getrusage writes only into the struct it is given, which is zeroed and ours.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) != 0 {
            return (Duration::ZERO, Duration::ZERO);
        }
        u
    };
    let d = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (d(usage.ru_utime), d(usage.ru_stime))
}

/// How long a boot took and what it cost the host.
#[derive(Debug, Clone, Copy)]
struct BootCost {
    /// Petrel's wall time.
    wall: Duration,
    /// Petrel's user-mode CPU time.
    user: Duration,
    /// Petrel's kernel-mode CPU time: on an emulating host, mostly KVM emulating the guest.
    system: Duration,
}

/// Boots `kernel` under `petrel` with the profiling command line and waits for the VMM
/// to exit (or kills it after `timeout`).
fn boot(
    petrel: &Path,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    out: &Outputs,
    timeout: Duration,
) -> Result<BootCost> {
    let _ = fs::remove_file(&out.serial);
    let mut cmd = Command::new(petrel);
    cmd.arg("--kernel").arg(kernel);
    if let Some(i) = initrd {
        cmd.arg("--initrd").arg(i);
    }
    cmd.arg("--cmdline")
        .arg(cmdline)
        .args(["--mem", &crate::scenario::guest_mem_arg()])
        .args(["--vcpus", "1", "--boot-timer"])
        .arg("--serial")
        .arg(format!("file:{}", out.serial.display()));
    println!("boot-profile: {}", host::describe(&cmd));
    let log = fs::File::create(&out.petrel).ctx(|| format!("creating {}", out.petrel.display()))?;
    let err = log.try_clone().ctx(|| "duplicating a file".into())?;
    let (user0, system0) = children_cpu();
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(&cmd)))?;
    loop {
        if let Some(status) = child.try_wait().ctx(|| "waiting for petrel".into())? {
            if !status.success() {
                println!("boot-profile: petrel ended with {status}");
            }
            break;
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            println!(
                "boot-profile: no exit within {} s; petrel killed; the log so far is profiled",
                timeout.as_secs()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let wall = start.elapsed();
    let (user1, system1) = children_cpu();
    Ok(BootCost {
        wall,
        user: user1.saturating_sub(user0),
        system: system1.saturating_sub(system0),
    })
}

/// Runs `boot-profile`: boot (unless `--log` names a log to read instead), then print the
/// report beside petrel's own boot timeline.
pub fn run(args: &BootProfileArgs) -> Result<()> {
    let root = crate::build::workspace_root();
    let (kernel, initrd) = match (&args.kernel, &args.log) {
        (Some(k), _) => (Some(k.clone()), args.initrd.clone()),
        (None, Some(_)) => (None, None),
        (None, None) => {
            let guest = crate::build::build_guest(&[])?;
            let initrd = args.initrd.clone().unwrap_or(guest.initramfs);
            (Some(guest.kernel.vmlinux), Some(initrd))
        }
    };
    let symbols = kernel
        .as_deref()
        .and_then(|k| fs::read(k).ok())
        .map(|bytes| elf::function_symbols(&bytes))
        .unwrap_or_default();
    let (serial, timeline) = match &args.log {
        Some(log) => (log.clone(), None),
        None => {
            let kernel = kernel.ok_or_else(|| Error::Other("no kernel to boot".into()))?;
            let petrel = match &args.petrel {
                Some(p) => p.clone(),
                None => crate::build::build_petrel(&root)?,
            };
            let dir = crate::build::target_dir(&root).join("boot-profile");
            fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
            let out = Outputs {
                serial: dir.join("serial.log"),
                petrel: dir.join("petrel-output.log"),
            };
            let cmdline = profile_cmdline(args.cmdline.as_deref());
            let cost = boot(
                &petrel,
                &kernel,
                initrd.as_deref(),
                &cmdline,
                &out,
                args.timeout,
            )?;
            println!(
                "boot-profile: petrel ran {:.1} s and used {:.1} s of CPU (user {:.1} s, \
                 system {:.1} s); serial log {}, petrel's output {}",
                cost.wall.as_secs_f64(),
                (cost.user + cost.system).as_secs_f64(),
                cost.user.as_secs_f64(),
                cost.system.as_secs_f64(),
                out.serial.display(),
                out.petrel.display()
            );
            println!(
                "    (guest time is wall-clock time: on a busy host it includes the wait for a \
                 CPU, which the CPU time does not)"
            );
            let text = fs::read_to_string(&out.petrel).unwrap_or_default();
            (out.serial, Some(text))
        }
    };
    let bytes = fs::read(&serial).ctx(|| format!("reading {}", serial.display()))?;
    let profile = parse(&String::from_utf8_lossy(&bytes), &symbols);
    if profile.lines.is_empty() {
        return Err(Error::Other(format!(
            "{} has no timestamped kernel log lines (printk.time=1 needs CONFIG_PRINTK)",
            serial.display()
        )));
    }
    if profile.initcalls.is_empty() {
        println!("boot-profile: no `initcall ... returned` lines: was initcall_debug given?");
    }
    if let Some(t) = timeline {
        println!("petrel's output (its boot timeline, host clock):");
        for line in t.lines() {
            println!("    {line}");
        }
    }
    print!("{}", profile.report(TOP_INITCALLS, TOP_GAPS));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An excerpt of a real serial log (the boot-test kernel before issue 14's changes, on
    /// a PVM host): initcalls printed as addresses, as a kernel without kallsyms does.
    const SAMPLE: &str = include_str!("../testdata/boot-profile-sample.log");

    /// The names `nm` gives those addresses in that kernel's vmlinux.
    fn sample_symbols() -> HashMap<u64, String> {
        [
            (0xffff_ffff_818f_9b72, "pty_init"),
            (0xffff_ffff_818f_acc0, "chr_dev_init"),
            (0xffff_ffff_818e_d0f9, "param_sysfs_builtin_init"),
            (0xffff_ffff_818d_8408, "populate_rootfs"),
        ]
        .into_iter()
        .map(|(a, n)| (a, n.to_owned()))
        .collect()
    }

    #[test]
    fn timestamps_and_names() {
        assert_eq!(timestamped("[   41.500000] hi"), Some((41.5, "hi")));
        assert_eq!(timestamped("no stamp"), None);
        assert_eq!(timestamped("[ bad ] x"), None);
        let syms = sample_symbols();
        assert_eq!(initcall_name("pty_init+0x0/0x60", &syms), "pty_init");
        assert_eq!(initcall_name("0xffffffff818f9b72", &syms), "pty_init");
        assert_eq!(
            initcall_name("0xffffffff81000000", &syms),
            "0xffffffff81000000"
        );
    }

    #[test]
    fn sample_slowest_initcalls() {
        let p = parse(SAMPLE, &sample_symbols());
        let top = p.slowest(4);
        let names: Vec<&str> = top.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "pty_init",
                "chr_dev_init",
                "param_sysfs_builtin_init",
                "0xffffffff818fafa2"
            ]
        );
        assert_eq!(top[0].usecs, 45_350_807);
        assert_eq!(top[0].ret, 0);
        // Every `initcall ... returned` line of the sample was read.
        let returned = SAMPLE.lines().filter(|l| l.contains("] initcall ")).count();
        assert_eq!(p.initcalls.len(), returned);
        assert_eq!(p.probes.len(), 3);
        assert_eq!(p.slowest_probes(1)[0].name, "serio0");
        assert_eq!(p.slowest_probes(1)[0].usecs, 9_029_183);
    }

    #[test]
    fn sample_gaps_name_the_initcall() {
        let p = parse(SAMPLE, &sample_symbols());
        let gaps = p.gaps(2);
        // The initramfs unpacked in the background while pty_init ran, then pty_init went on.
        assert_eq!(gaps[0].initcall.as_deref(), Some("pty_init"));
        assert_eq!(gaps[0].before, "Freeing initrd memory: 1940K");
        assert!((gaps[0].secs - 31.852_786).abs() < 1e-6, "{}", gaps[0].secs);
        assert!((gaps[0].at - 37.457_899).abs() < 1e-6);
        assert_eq!(gaps[1].initcall.as_deref(), Some("pty_init"));
        assert!(gaps[1].before.starts_with("calling  0xffffffff818f9b72"));
        // Lines before the first initcall have none.
        assert_eq!(p.lines[0].initcall, None);
        let run_init = p.time_of(RUN_INIT_LINE).unwrap();
        assert!((run_init - 85.163_018).abs() < 1e-6, "{run_init}");
        let unpack = p.unpack_time().unwrap();
        assert!(
            (unpack - (37.457_899 - 19.283_082)).abs() < 1e-6,
            "{unpack}"
        );
    }

    #[test]
    fn report_lists_names_and_times() {
        let p = parse(SAMPLE, &sample_symbols());
        let r = p.report(2, 1);
        for want in [
            "Run /init as init process                85.16 s",
            "initramfs unpacked in (populate_rootfs)  18.17 s",
            "45350.8     0  pty_init",
            "5167.9     0  chr_dev_init",
            "31852.8      37.458  pty_init",
            "9029.2     0  serio0",
        ] {
            assert!(r.contains(want), "no {want:?} in\n{r}");
        }
        assert!(!r.contains("param_sysfs_builtin_init"), "top 2 only:\n{r}");
    }

    #[test]
    fn cmdline_adds_profiling_then_extra() {
        assert_eq!(
            profile_cmdline(None),
            format!("{GUEST_CMDLINE} {PROFILE_CMDLINE}")
        );
        assert_eq!(
            profile_cmdline(Some(" pty.legacy_count=0 ")),
            format!("{GUEST_CMDLINE} {PROFILE_CMDLINE} pty.legacy_count=0")
        );
    }
}
