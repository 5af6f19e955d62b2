//! The build host: Debian packages, running external commands, and what kind of KVM the
//! host offers.

use std::fs;
use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::error::{Error, IoContext, Result};

/// The package that provides `qemu-system-x86_64`.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";

/// Everything needed to build the guest kernel and initramfs.
pub const GUEST_BUILD_PACKAGES: &[&str] = &[
    "linux-source-6.12",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "make",
    "gcc",
    "xz-utils",
    "lz4",
    "busybox-static",
    "cpio",
    // Applies xtask/kernel/patches to the kernel source.
    "patch",
];

/// The Debian package whose tarball is the kernel source.
pub const LINUX_SOURCE_PACKAGE: &str = "linux-source-6.12";

/// The installed version of a Debian package, or `None` when it is not installed.
pub fn installed_version(package: &str) -> Result<Option<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}\t${Version}", package])
        .stderr(Stdio::null())
        .output()
        .ctx(|| "running dpkg-query (xtask needs a Debian host with dpkg and apt)".into())?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(parse_dpkg_status(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `dpkg-query -f '${db:Status-Abbrev}\t${Version}'`: installed when the status
/// starts with `ii`.
fn parse_dpkg_status(line: &str) -> Option<String> {
    let (status, version) = line.trim_end().split_once('\t')?;
    (status.starts_with("ii") && !version.is_empty()).then(|| version.to_owned())
}

/// Installs any of `packages` that is missing (with `apt-get update` first), then prints
/// the installed version of each.
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for p in packages {
        if installed_version(p)?.is_none() {
            missing.push(*p);
        }
    }
    if !missing.is_empty() {
        println!("packages: missing {}; installing", missing.join(" "));
        let mut update = Command::new("apt-get");
        update.arg("update");
        run(&mut update)?;
        let mut install = Command::new("apt-get");
        install
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut install)?;
    }
    let mut versions = Vec::new();
    for p in packages {
        match installed_version(p)? {
            Some(v) => versions.push(format!("{p} {v}")),
            None => {
                return Err(Error::Other(format!(
                    "package {p} is still not installed after apt-get install"
                )))
            }
        }
    }
    println!("packages installed: {}", versions.join(", "));
    Ok(())
}

/// The installed version of `package`, which must be installed.
pub fn package_version(package: &str) -> Result<String> {
    installed_version(package)?
        .ok_or_else(|| Error::Other(format!("package {package} is not installed")))
}

/// A command line as it would be typed into a shell (for messages).
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` as a shell word: unchanged when it has nothing special, else in single quotes.
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Runs `cmd` with its output going to ours; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .ctx(|| format!("starting `{}`", describe(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: describe(cmd),
            detail: format!("{status}"),
        })
    }
}

/// Runs `cmd` with stdout and stderr appended to `log`; fails unless it exits 0, and then
/// prints the log's last lines.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .ctx(|| format!("opening {}", log.display()))?;
    let err = file.try_clone().ctx(|| "duplicating a file".into())?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .status()
        .ctx(|| format!("starting `{}`", describe(cmd)))?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    println!("last lines of {}:", log.display());
    for line in tail_lines(&text, 40) {
        println!("    {line}");
    }
    Err(Error::Command {
        command: describe(cmd),
        detail: format!("{status}; full output in {}", log.display()),
    })
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// SIGINT, as Linux numbers it.
pub const SIGINT: i32 = 2;

/// SIGKILL, as Linux numbers it.
const SIGKILL: i32 = 9;

/// SIGTERM, as Linux numbers it.
pub const SIGTERM: i32 = 15;

/// `SIG_DFL` for `signal(2)`.
const SIG_DFL: usize = 0;

/// `SIG_ERR`, what `signal(2)` returns on failure.
const SIG_ERR: usize = usize::MAX;

// The C library that std already links against; no extra crate is needed for two calls.
extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn signal(signum: i32, handler: usize) -> usize;
}

/// Sends `sig` to process `pid`: a child this task started and has not reaped, so its pid
/// names it and no other.
pub fn signal_process(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 1 {
            // SAFETY: kill(2) takes two integers and touches no memory of ours; pid > 1
            // names one process, never a group or "every process".
            unsafe { kill(pid, sig) };
        }
    }
}

/// A child process that is killed and reaped if it is still running when dropped (a run that
/// failed half-way).
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Sends SIGKILL to every process in the process group `pgid`.
pub fn kill_process_group(pgid: u32) -> io::Result<()> {
    let pgid = i32::try_from(pgid)
        .ok()
        .filter(|&p| p > 1)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad process group id"))?;
    // SAFETY: kill(2) takes two integers and touches no memory of ours; a negative pid
    // names the process group, and pgid > 1 keeps it from meaning "every process" (-1).
    let rc = unsafe { kill(-pgid, SIGKILL) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The last SIGINT or SIGTERM caught while an [`InterruptGuard`] was alive; 0 for none.
static CAUGHT_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_signal(sig: i32) {
    // An atomic store is async-signal-safe.
    CAUGHT_SIGNAL.store(sig, Ordering::SeqCst);
}

/// While alive, SIGINT and SIGTERM do not end xtask but are noted for
/// [`InterruptGuard::caught`], so that a VMM running in its own process group (which a
/// Ctrl-C at the terminal does not reach) can be killed before xtask exits. Dropping it
/// puts the previous handlers back.
#[derive(Debug)]
pub struct InterruptGuard {
    previous: [(i32, usize); 2],
}

impl InterruptGuard {
    /// Installs the handlers.
    pub fn install() -> Self {
        CAUGHT_SIGNAL.store(0, Ordering::SeqCst);
        let handler = note_signal as extern "C" fn(i32) as usize;
        let previous = [SIGINT, SIGTERM].map(|sig| {
            // SAFETY: `note_signal` is an `extern "C" fn(i32)` that only does an atomic
            // store, which is async-signal-safe; it lives for the whole program.
            (sig, unsafe { signal(sig, handler) })
        });
        Self { previous }
    }

    /// The signal caught since [`InterruptGuard::install`], if any.
    pub fn caught(&self) -> Option<i32> {
        match CAUGHT_SIGNAL.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(sig),
        }
    }
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        for (sig, old) in self.previous {
            let old = if old == SIG_ERR { SIG_DFL } else { old };
            // SAFETY: `old` is what signal(2) returned for this signal (a handler, SIG_DFL
            // or SIG_IGN), or SIG_DFL; putting it back is what the caller had before.
            unsafe { signal(sig, old) };
        }
    }
}

/// What kind of KVM this host has, for reports. The boot test demands the same of a guest
/// on both: its init's marker, printed from user mode (on an emulating host the guest
/// kernel's patch in `xtask/kernel/patches` makes user-mode system calls work).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKvm {
    /// Hardware KVM (VMX or SVM).
    Hardware,
    /// KVM that runs guest kernel code in its instruction emulator, for the reason given.
    Emulating(String),
}

/// Probes /proc/cpuinfo and /sys/module/kvm_pvm.
pub fn host_kvm() -> HostKvm {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    classify_host(&cpuinfo, pvm)
}

/// Decides [`HostKvm`] from the text of /proc/cpuinfo and whether `kvm_pvm` is loaded.
pub fn classify_host(cpuinfo: &str, kvm_pvm_loaded: bool) -> HostKvm {
    if kvm_pvm_loaded {
        return HostKvm::Emulating("the kvm_pvm module is loaded (PVM host)".into());
    }
    let hw_virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hw_virt {
        HostKvm::Hardware
    } else {
        HostKvm::Emulating("/proc/cpuinfo shows no vmx or svm flag".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status() {
        assert_eq!(
            parse_dpkg_status("ii \t6.12.117-1~deb12u1"),
            Some("6.12.117-1~deb12u1".into())
        );
        assert_eq!(parse_dpkg_status("un \t"), None);
        assert_eq!(parse_dpkg_status("rc \t1.0"), None);
        assert_eq!(parse_dpkg_status(""), None);
    }

    #[test]
    fn host_classification() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx ssse3\n";
        let amd = "flags\t\t: fpu svm lm\n";
        let none = "flags\t\t: fpu vme lm hypervisor\nvmx flags\t: ept\n";
        assert_eq!(classify_host(intel, false), HostKvm::Hardware);
        assert_eq!(classify_host(amd, false), HostKvm::Hardware);
        assert!(matches!(
            classify_host(intel, true),
            HostKvm::Emulating(r) if r.contains("kvm_pvm")
        ));
        assert!(matches!(
            classify_host(none, false),
            HostKvm::Emulating(r) if r.contains("vmx")
        ));
        // A flag name inside another word does not count.
        assert!(matches!(
            classify_host("flags : vmxfoo\n", false),
            HostKvm::Emulating(_)
        ));
    }

    #[test]
    fn quoting() {
        let mut cmd = Command::new("petrel");
        cmd.args(["--cmdline", "a b", "it's", "", "file:/x-1.log"]);
        assert_eq!(
            describe(&cmd),
            "petrel --cmdline 'a b' 'it'\\''s' '' file:/x-1.log"
        );
    }

    #[test]
    fn process_group_kill() {
        use std::io::BufRead;
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        // A shell in its own group that starts a grandchild: killing the group ends both.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let grandchild: u32 = line.trim().parse().unwrap();
        kill_process_group(child.id()).unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(SIGKILL));
        // The grandchild is dead: gone, or a zombie waiting for its new parent to reap it.
        let state = || {
            fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_owned()))
                .and_then(|r| r.chars().next())
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !matches!(state(), None | Some('Z' | 'X')) {
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild {grandchild} still runs"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            kill_process_group(1).is_err(),
            "group 1 (kill -1) is refused"
        );
    }

    #[test]
    fn interrupt_guard_catches_sigterm() {
        let guard = InterruptGuard::install();
        assert_eq!(guard.caught(), None);
        // SAFETY: getpid has no preconditions; kill sends SIGTERM to this process, which
        // the guard's handler catches.
        let rc = unsafe { kill(getpid(), SIGTERM) };
        assert_eq!(rc, 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while guard.caught().is_none() {
            assert!(std::time::Instant::now() < deadline, "SIGTERM not caught");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(guard.caught(), Some(SIGTERM));
        drop(guard);
    }

    extern "C" {
        fn getpid() -> i32;
    }

    #[test]
    fn tail() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), vec!["b", "c"]);
        assert_eq!(tail_lines("a", 5), vec!["a"]);
        assert!(tail_lines("", 3).is_empty());
    }
}
