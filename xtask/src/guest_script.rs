//! Guest workloads of the boot test: a root filesystem with busybox and an `/init` shell
//! script that checks the devices from inside the guest, in user mode, and reports each
//! check on the serial console as one line, which the boot test then reads:
//!
//! ```text
//! PETREL-CHECK blk-pattern ok sha256=6f0c...
//! PETREL-CHECK ro-write FAIL the write succeeded
//! ```
//!
//! User mode is slow on a host that emulates guest kernel code (a fork and exec is about
//! 0.7 s), so the scripts lean on shell builtins and run few programs.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::error::{IoContext, Result};
use crate::host;
use crate::initramfs::{BUSYBOX_PATH, MARKER, REBOOT_FAILED};

/// The start of a check's line.
pub const CHECK_PREFIX: &str = "PETREL-CHECK";

/// What the script prints once every check has run, just before `reboot -f` (or
/// `poweroff -f`: see [`Ending`]).
pub const CHECKS_DONE: &str = "PETREL-CHECKS-DONE";

/// What the kernel prints when it powers the machine off (`kernel_power_off`).
pub const POWER_DOWN_LINE: &str = "reboot: Power down";

/// How a guest script ends once its checks ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `reboot -f`: with `reboot=k`, the kernel resets the machine through the i8042, and
    /// Petrel stops with the reason `Reset`.
    Reboot,
    /// `poweroff -f`: the kernel powers off through ACPI (the FADT's sleep control register,
    /// S5), and Petrel stops with the reason `PowerOff`.
    PowerOff,
}

impl Ending {
    /// The busybox applet that ends the run (run with `-f`: no init to ask).
    pub fn applet(self) -> &'static str {
        match self {
            Ending::Reboot => "reboot",
            Ending::PowerOff => "poweroff",
        }
    }
}

/// The busybox applets linked into the root filesystem's `/bin`, so that scripts run them
/// by name (linked on the host: a `busybox --install` in the guest would cost a fork).
const APPLETS: &[&str] = &[
    "sh",
    "mount",
    "umount",
    "mkdir",
    "cat",
    "dd",
    "sync",
    "sha256sum",
    "blockdev",
    "taskset",
    "sleep",
    "reboot",
    "poweroff",
    "udhcpc",
    "wget",
    "nc",
    "ifconfig",
    "route",
    "ip",
    "wc",
    "grep",
    "head",
    "cmp",
    "rm",
    "ls",
];

/// The shell functions every script starts with: `ok NAME DETAIL...` and `fail NAME
/// DETAIL...` print a check's line; `done_checks APPLET` ends the run with `APPLET -f`
/// (`reboot` or `poweroff`, see [`Ending`]), and says so if that returned.
const PRELUDE: &str = r#"export PATH=/bin
ok() { n=$1; shift; echo "PETREL-CHECK $n ok $*"; }
fail() { n=$1; shift; echo "PETREL-CHECK $n FAIL $*"; }
done_checks() {
    echo PETREL-CHECKS-DONE
    sync
    $1 -f
    echo PETREL-BOOT-TEST-REBOOT-FAILED
}
"#;

/// The whole `/init`: the shebang, [`MARKER`] as the first user-mode output, the
/// [`PRELUDE`], `body`, and `done_checks reboot`.
pub fn init_script(body: &str) -> String {
    init_script_ending(body, Ending::Reboot)
}

/// [`init_script`], ending the run as `ending` says.
pub fn init_script_ending(body: &str, ending: Ending) -> String {
    debug_assert!(PRELUDE.contains(CHECKS_DONE) && PRELUDE.contains(REBOOT_FAILED));
    let applet = ending.applet();
    debug_assert!(APPLETS.contains(&applet));
    format!(
        "#!/bin/busybox sh\n\
         # Petrel boot test: the guest's init, in user mode. Prints each check as\n\
         # `{CHECK_PREFIX} NAME ok|FAIL DETAIL` on the console.\n\
         echo {MARKER}\n\
         {PRELUDE}\
         {body}\n\
         done_checks {applet}\n"
    )
}

/// A file to put in the root filesystem besides busybox and `/init`.
#[derive(Debug, Clone)]
pub struct ExtraFile {
    /// Its path inside the filesystem, relative (`data/pattern`).
    pub path: String,
    /// Its contents.
    pub data: Vec<u8>,
    /// Its permission bits.
    pub mode: u32,
}

/// Makes a fresh ext4 image of `size_mib` at `image`: busybox with its applets linked in
/// `/bin`, `/init` = `script` (see [`init_script`]), the usual mount points, and `extra`.
pub fn build_rootfs(image: &Path, script: &str, extra: &[ExtraFile], size_mib: u32) -> Result<()> {
    let staging = image.with_extension("staging");
    let _ = fs::remove_dir_all(&staging);
    for d in ["bin", "dev", "proc", "sys", "tmp", "mnt"] {
        fs::create_dir_all(staging.join(d)).ctx(|| format!("creating {}", staging.display()))?;
    }
    fs::copy(BUSYBOX_PATH, staging.join("bin/busybox"))
        .ctx(|| format!("copying {BUSYBOX_PATH}"))?;
    for applet in APPLETS {
        let link = staging.join("bin").join(applet);
        symlink("busybox", &link).ctx(|| format!("linking {}", link.display()))?;
    }
    let mut files = vec![ExtraFile {
        path: "init".into(),
        data: script.as_bytes().to_vec(),
        mode: 0o755,
    }];
    files.extend_from_slice(extra);
    for f in &files {
        let path = staging.join(&f.path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&path, &f.data).ctx(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(f.mode))
            .ctx(|| format!("setting the mode of {}", path.display()))?;
    }
    let _ = fs::remove_file(image);
    host::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "petrel-root", "-d"])
            .arg(&staging)
            .arg(image)
            .arg(format!("{size_mib}M")),
    )?;
    fs::remove_dir_all(&staging).ctx(|| format!("removing {}", staging.display()))?;
    Ok(())
}

/// One check's line, as the guest printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    /// The check's name.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What the guest said about it.
    pub detail: String,
}

/// The check lines of a serial log, in order.
pub fn check_lines(serial: &str) -> Vec<CheckLine> {
    serial
        .lines()
        .filter_map(|l| {
            let rest = l.trim_end_matches('\r').strip_prefix(CHECK_PREFIX)?;
            let mut words = rest.trim_start().splitn(3, ' ');
            let name = words.next()?.to_owned();
            let ok = match words.next()? {
                "ok" => true,
                "FAIL" => false,
                _ => return None,
            };
            let detail = words.next().unwrap_or("").trim().to_owned();
            Some(CheckLine { name, ok, detail })
        })
        .collect()
}

/// Judges the guest's own checks: each of `expected` must have passed, none may have
/// failed, and the script must have reached [`CHECKS_DONE`]. Returns notes (each passed
/// check with its detail) and failures.
pub fn judge(serial: &str, expected: &[&str]) -> (Vec<String>, Vec<String>) {
    let lines = check_lines(serial);
    let mut notes = Vec::new();
    let mut failures = Vec::new();
    for line in &lines {
        if !line.ok {
            failures.push(format!("guest check {} failed: {}", line.name, line.detail));
        }
    }
    for name in expected {
        match lines.iter().find(|l| l.name == *name) {
            Some(l) if l.ok => notes.push(format!("guest: {} ok {}", l.name, l.detail)),
            Some(_) => {}
            None => failures.push(format!("the guest never reported its check {name}")),
        }
    }
    if !expected.is_empty() && !serial.contains(CHECKS_DONE) {
        failures.push(format!("the guest's script did not reach `{CHECKS_DONE}`"));
    }
    (notes, failures)
}

/// The detail of check `name`'s passing line, if there is one.
pub fn detail_of(serial: &str, name: &str) -> Option<String> {
    check_lines(serial)
        .into_iter()
        .find(|l| l.name == name && l.ok)
        .map(|l| l.detail)
}

/// `len` bytes of a fixed pseudo-random pattern (xorshift64*, seeded with `seed`): what the
/// virtio-blk scenario's guest writes, and the host then looks for on the disk.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_shape() {
        let s = init_script("ok demo fine");
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        // The marker is the first thing the script does: its time is user mode's start.
        let first_command = s.lines().find(|l| !l.starts_with('#')).unwrap();
        assert_eq!(first_command, format!("echo {MARKER}"));
        assert!(s.contains("\nok demo fine\n"));
        assert!(s.trim_end().ends_with("done_checks reboot"));
        assert!(s.contains("$1 -f") && s.contains(REBOOT_FAILED));
        let off = init_script_ending("ok demo fine", Ending::PowerOff);
        assert!(off.trim_end().ends_with("done_checks poweroff"), "{off}");
        // Both applets are linked into /bin.
        for ending in [Ending::Reboot, Ending::PowerOff] {
            assert!(APPLETS.contains(&ending.applet()));
        }
    }

    #[test]
    fn lines_are_parsed_and_judged() {
        let serial = "PETREL-CHECK a ok sha256=00ff\r\n\
                      [  1.0] kernel noise\r\n\
                      PETREL-CHECK b FAIL wrote 0 bytes\r\n\
                      PETREL-CHECK c ok\r\n\
                      PETREL-CHECK d maybe\r\n\
                      PETREL-CHECKS-DONE\r\n";
        let lines = check_lines(serial);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            CheckLine {
                name: "a".into(),
                ok: true,
                detail: "sha256=00ff".into()
            }
        );
        assert!(!lines[1].ok);
        assert_eq!(lines[2].detail, "");
        let (notes, failures) = judge(serial, &["a", "c", "e"]);
        assert_eq!(notes, ["guest: a ok sha256=00ff", "guest: c ok "]);
        assert_eq!(
            failures,
            [
                "guest check b failed: wrote 0 bytes",
                "the guest never reported its check e"
            ]
        );
        assert_eq!(detail_of(serial, "a").as_deref(), Some("sha256=00ff"));
        assert_eq!(detail_of(serial, "b"), None);
    }

    #[test]
    fn unfinished_script_fails() {
        let (_, failures) = judge("PETREL-CHECK a ok\n", &["a"]);
        assert_eq!(failures.len(), 1);
        assert!(failures[0].contains(CHECKS_DONE));
    }

    #[test]
    fn pattern_is_fixed_and_not_trivial() {
        let p = pattern(4096, 7);
        assert_eq!(p, pattern(4096, 7));
        assert_ne!(p, pattern(4096, 8));
        assert_eq!(pattern(13, 7), p[..13]);
        // Not constant, not repeating by the page.
        assert!(p.iter().any(|&b| b != p[0]));
        assert_ne!(pattern(8192, 7)[..4096], pattern(8192, 7)[4096..]);
    }
}
