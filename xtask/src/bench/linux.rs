//! Case 5: the boot-test kernel to `Run /init` and to its init's first output, under Petrel
//! and QEMU.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use petrel_loader::cmdline::EMULATED_HOST_CMDLINE;

use super::proc;
use super::report::{Cell, Row, Target, Unit};
use super::{collect, missing, qemu_short, Bench, GUEST_MIB};
use crate::error::{Error, IoContext, Result};
use crate::host;
use crate::initramfs::MARKER;
use crate::log_watch::LogWatch;
use crate::scenario::{GUEST_CMDLINE, RUN_INIT_LINE};

/// Case 5: the boot-test kernel to `Run /init as init process` and to its init's first
/// output from user mode (the marker), under Petrel and QEMU: two rows from the same runs.
pub(super) fn linux(b: &Bench, runs: u32, limit: Duration) -> [Row; 2] {
    let trend = if b.emulated {
        " Trend only on this host (guest kernel code is emulated): the time is the guest's, not \
         the VMM's."
    } else {
        ""
    };
    let cmdline = if b.emulated {
        format!("{GUEST_CMDLINE} {EMULATED_HOST_CMDLINE}")
    } else {
        GUEST_CMDLINE.to_owned()
    };
    let mut row = Row {
        id: "linux_run_init",
        name: "Linux to `Run /init`".into(),
        unit: Unit::S,
        petrel: Cell::None(String::new()),
        comparison_name: format!("QEMU {}", qemu_short(b)),
        comparison: Cell::None(String::new()),
        target: Target::None,
        measures: format!(
            "The boot-test kernel and initramfs (cargo xtask build-guest; vmlinux, \
             {GUEST_MIB} MiB, 1 vCPU): seconds from the spawn until `{RUN_INIT_LINE}` appears in \
             the serial log file (polled every 20 ms), then the VMM is stopped. Petrel: `petrel \
             --kernel vmlinux --initrd initramfs.cpio --cmdline '{GUEST_CMDLINE}' --serial \
             file:LOG` (Petrel adds its PVM workarounds on such hosts); QEMU: `-M \
             microvm,acpi=off -enable-kvm` with the same final command line.{trend}"
        ),
    };
    let mut user = Row {
        id: "linux_userspace",
        name: "Linux to the first userspace output".into(),
        measures: format!(
            "The same runs as the row above: seconds from the spawn until the initramfs's \
             /init, a static program, has printed `{MARKER}` from user mode, then the VMM is \
             stopped (on a host that emulates guest kernel code, the guest kernel's patch in \
             xtask/kernel/patches makes that system call work).{trend}"
        ),
        ..row.clone()
    };
    if let Some(c) = missing(b, false) {
        for r in [&mut row, &mut user] {
            r.petrel = c.clone();
            r.comparison = c.clone();
        }
        return [row, user];
    }
    let guest = match crate::build::build_guest(&[]) {
        Ok(g) => g,
        Err(e) => {
            for r in [&mut row, &mut user] {
                r.petrel = Cell::Error(format!("building the guest: {e}"));
                r.comparison = Cell::Error("no guest to boot".into());
            }
            return [row, user];
        }
    };
    let logs = b.dir.join("logs");
    // Each run returns its time to `Run /init` and notes its time to the marker here.
    let mut petrel_marker = Vec::new();
    row.petrel = collect(runs, |i| {
        let serial = logs.join(format!("linux-petrel-{}.log", i + 1));
        let mut cmd = Command::new(&b.petrel);
        cmd.arg("--kernel")
            .arg(&guest.kernel.vmlinux)
            .arg("--initrd")
            .arg(&guest.initramfs)
            .args([
                "--cmdline",
                GUEST_CMDLINE,
                "--mem",
                &format!("{GUEST_MIB}M"),
            ])
            .arg("--serial")
            .arg(format!("file:{}", serial.display()));
        let [run_init, marker] =
            time_to_lines(&mut cmd, &serial, &logs.join("linux-petrel.stderr"), limit)?;
        petrel_marker.push(marker);
        Ok(run_init)
    });
    user.petrel = marker_cell(&row.petrel, petrel_marker);
    let mut qemu_marker = Vec::new();
    row.comparison = match &b.qemu {
        Err(why) => Cell::Missing(format!("QEMU: {why}")),
        Ok(_) => collect(runs, |i| {
            let serial = logs.join(format!("linux-qemu-{}.log", i + 1));
            let mut cmd = Command::new("qemu-system-x86_64");
            cmd.args([
                "-M",
                "microvm,acpi=off",
                "-enable-kvm",
                "-m",
                &GUEST_MIB.to_string(),
            ])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-kernel")
            .arg(&guest.kernel.vmlinux)
            .arg("-initrd")
            .arg(&guest.initramfs)
            .args(["-append", &cmdline, "-serial"])
            .arg(format!("file:{}", serial.display()))
            .arg("-no-reboot");
            let [run_init, marker] =
                time_to_lines(&mut cmd, &serial, &logs.join("linux-qemu.stderr"), limit)?;
            qemu_marker.push(marker);
            Ok(run_init)
        }),
    };
    user.comparison = marker_cell(&row.comparison, qemu_marker);
    [row, user]
}

/// The marker row's cell for a side whose `Run /init` cell is `run_init`: the marker times
/// where every run measured both, else the same reason.
fn marker_cell(run_init: &Cell, marker: Vec<f64>) -> Cell {
    match run_init {
        Cell::Measured(_) => Cell::Measured(marker),
        other => other.clone(),
    }
}

/// Whether a VMM's stderr says that KVM gave up on the guest (QEMU then pauses for good):
/// its `KVM internal error` line, and which instruction it was when QEMU's `Code=` dump
/// marks `cc` (int3) at RIP.
fn kvm_gave_up(stderr: &str) -> Option<String> {
    let line = stderr.lines().find(|l| l.contains("KVM internal error"))?;
    let mut why = format!("`{}`", line.trim());
    if stderr.lines().any(|l| l.trim() == "emulation failure") {
        why.push_str(", emulation failure");
    }
    if stderr.contains("<cc>") {
        why.push_str(" at an int3 (0xcc at RIP in QEMU's Code= dump)");
    }
    Some(why)
}

/// Seconds from the spawn until `RUN_INIT_LINE`, and until the init's `MARKER`, show up in
/// `serial`; the VMM is then stopped. Fails if the VMM exits first, reports that KVM gave
/// up, or runs past `limit`.
fn time_to_lines(
    cmd: &mut Command,
    serial: &Path,
    stderr_log: &Path,
    limit: Duration,
) -> Result<[f64; 2]> {
    let _ = fs::remove_file(serial);
    let err = fs::File::create(stderr_log).ctx(|| format!("creating {}", stderr_log.display()))?;
    println!("    {}", host::describe(cmd));
    let start = Instant::now();
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(cmd)))?;
    let mut watch = LogWatch::new(serial, RUN_INIT_LINE);
    let mut marker = LogWatch::new(serial, MARKER);
    let outcome = loop {
        watch.poll(start.elapsed());
        marker.poll(start.elapsed());
        if let (Some(a), Some(b)) = (watch.seen_at(), marker.seen_at()) {
            break Ok([a.as_secs_f64(), b.as_secs_f64()]);
        }
        let missing = if watch.seen_at().is_none() {
            RUN_INIT_LINE
        } else {
            MARKER
        };
        let stderr = fs::read_to_string(stderr_log).unwrap_or_default();
        if let Some(why) = kvm_gave_up(&stderr) {
            let last = fs::read_to_string(serial).unwrap_or_default();
            let last = last
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            break Err(Error::Other(format!(
                "no `{missing}`: the VMM stopped the guest after {:.1} s: {why}; the \
                 serial log ends with `{}`",
                start.elapsed().as_secs_f64(),
                last.trim()
            )));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Other(format!(
                "no `{missing}`: the VMM exited ({status}) after {:.1} s; stderr: {}",
                start.elapsed().as_secs_f64(),
                proc::tail_of(stderr_log, 2)
            )));
        }
        if start.elapsed() > limit {
            break Err(Error::Other(format!(
                "no `{missing}` within {} s",
                limit.as_secs()
            )));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let _ = proc::terminate(&mut child, Duration::from_secs(10));
    if let Ok([a, b]) = &outcome {
        println!("    `{RUN_INIT_LINE}` after {a:.1} s, `{MARKER}` after {b:.1} s");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_internal_errors() {
        assert_eq!(kvm_gave_up("qemu: warning: pni\n"), None);
        let stderr = "KVM internal error. Suberror: 1\nextra data[0]: 0x1\nemulation failure\n\
                      RAX=0\nCode=74 02 0f 0b 48 <cc> 90 90\n";
        assert_eq!(
            kvm_gave_up(stderr).unwrap(),
            "`KVM internal error. Suberror: 1`, emulation failure at an int3 (0xcc at RIP in \
             QEMU's Code= dump)"
        );
    }
}
