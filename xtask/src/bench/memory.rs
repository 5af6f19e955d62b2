//! Case 2: the VMM's memory beside the guest RAM it holds, Petrel's and QEMU's, with the VM
//! alive and at its peak.

use std::fs;
use std::process::Command;
use std::time::Duration;

use petrel_demo_guest::RESETTING_LINE;

use super::proc::{self, MemWatch};
use super::report::{Cell, Row, Target, Unit};
use super::{
    demo_ran, mib, missing, petrel_demo, qemu_demo, qemu_short, Bench, GUEST_MIB, MEMORY_POLL,
    SETTLE, SHORT_LIMIT,
};
use crate::error::{Error, IoContext, Result};
use crate::host;
/// VMM memory overhead at steady state must not exceed this, MiB.
const MEMORY_TARGET_MIB: f64 = 3.0;

/// Memory measurements of one run.
#[derive(Debug, Clone, Copy)]
pub(super) struct MemRun {
    /// Steady-state VMM overhead, MiB.
    pub(super) steady: f64,
    /// Steady-state private (anonymous) VMM overhead, MiB.
    pub(super) private: f64,
    /// VmHWM, MiB.
    pub(super) peak: f64,
    /// VmHWM minus touched guest RAM, MiB.
    pub(super) peak_overhead: f64,
}

/// Case 2: memory. Per run: Petrel's spin guest (steady state), Petrel's demo (peak), QEMU's
/// demo held paused at the end (both).
pub(super) fn memory(b: &Bench, runs: u32) -> Vec<Row> {
    let guest_kib = GUEST_MIB * 1024;
    let mut petrel_steady: Vec<MemRun> = Vec::new();
    let mut petrel_peak = Vec::new();
    let mut qemu_runs: Vec<MemRun> = Vec::new();
    let mut petrel_err = missing(b, false);
    let mut qemu_err = missing(b, true);
    for _ in 0..runs {
        if petrel_err.is_none() {
            match petrel_spin_memory(b, guest_kib)
                .and_then(|s| Ok((s, petrel_demo_memory(b, guest_kib)?)))
            {
                Ok((steady, peak)) => {
                    petrel_steady.push(steady);
                    petrel_peak.push(peak);
                }
                Err(e) => petrel_err = Some(Cell::Error(e.to_string())),
            }
        }
        if qemu_err.is_none() {
            match qemu_memory(b, guest_kib) {
                Ok(r) => qemu_runs.push(r),
                Err(e) => qemu_err = Some(Cell::Error(e.to_string())),
            }
        }
    }
    let side = |err: &Option<Cell>, v: Vec<f64>| err.clone().unwrap_or(Cell::Measured(v));
    let qemu_name = format!("QEMU {}", qemu_short(b));
    vec![
        Row {
            id: "memory_steady_overhead",
            name: "memory: VMM overhead, VM alive".into(),
            unit: Unit::MiB,
            petrel: side(
                &petrel_err,
                petrel_steady.iter().map(|r| r.steady).collect(),
            ),
            comparison_name: qemu_name.clone(),
            comparison: side(&qemu_err, qemu_runs.iter().map(|r| r.steady).collect()),
            target: Target::ValueAtMost(MEMORY_TARGET_MIB),
            measures: format!(
                "The VMM's resident memory (the sum of Rss in /proc/PID/smaps) minus the Rss of \
                 the guest-RAM mapping (the anonymous mapping of the guest's {GUEST_MIB} MiB): \
                 what the VMM itself holds. Petrel: `petrel run --raw spin.bin --real-mode` (a \
                 2-byte `jmp $` guest), read {} ms after the spawn, then SIGTERM. QEMU: the demo \
                 guest, read {} ms after its last line, when it has triple-faulted and \
                 -no-shutdown holds QEMU paused, then SIGTERM.",
                SETTLE.as_millis(),
                SETTLE.as_millis()
            ),
        },
        Row {
            id: "memory_steady_private",
            name: "memory: VMM private memory, VM alive".into(),
            unit: Unit::MiB,
            petrel: side(
                &petrel_err,
                petrel_steady.iter().map(|r| r.private).collect(),
            ),
            comparison_name: qemu_name.clone(),
            comparison: side(&qemu_err, qemu_runs.iter().map(|r| r.private).collect()),
            target: Target::None,
            measures: "From the same smaps reads, only the Anonymous pages (heap, stacks, \
                       private copies of file pages), minus the guest RAM's: what each more VM \
                       costs, since file pages (code, read-only data) are shared between VMMs \
                       started from the same binary."
                .into(),
        },
        Row {
            id: "memory_peak_rss",
            name: "memory: peak RSS (VmHWM), demo run".into(),
            unit: Unit::MiB,
            petrel: side(
                &petrel_err,
                petrel_peak.iter().map(|r: &MemRun| r.peak).collect(),
            ),
            comparison_name: qemu_name.clone(),
            comparison: side(&qemu_err, qemu_runs.iter().map(|r| r.peak).collect()),
            target: Target::None,
            measures: format!(
                "VmHWM (the peak resident set, guest RAM included) of /proc/PID/status over a \
                 whole demo-guest run, polled every {} ms: for Petrel the last value read \
                 before it exited; for QEMU the value once the run ended (held paused).",
                MEMORY_POLL.as_millis()
            ),
        },
        Row {
            id: "memory_peak_overhead",
            name: "memory: peak RSS minus guest RAM".into(),
            unit: Unit::MiB,
            petrel: side(
                &petrel_err,
                petrel_peak.iter().map(|r| r.peak_overhead).collect(),
            ),
            comparison_name: qemu_name,
            comparison: side(
                &qemu_err,
                qemu_runs.iter().map(|r| r.peak_overhead).collect(),
            ),
            target: Target::None,
            measures: "The same VmHWM minus the guest-RAM mapping's Rss from the same last \
                       smaps read: the VMM's own peak."
                .into(),
        },
    ]
}

/// Petrel's steady-state overhead with the spin guest.
fn petrel_spin_memory(b: &Bench, guest_kib: u64) -> Result<MemRun> {
    let mut cmd = Command::new(&b.petrel);
    cmd.args(["run", "--raw"])
        .arg(b.dir.join("spin.bin"))
        .args([
            "--real-mode",
            "--mem",
            &format!("{GUEST_MIB}M"),
            "--serial",
            "none",
        ]);
    let log = b.dir.join("logs").join("memory-petrel-spin.stderr");
    let err = fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(&cmd)))?;
    let w = proc::watch_memory(&mut child, guest_kib, MEMORY_POLL, SHORT_LIMIT, |t| {
        t >= SETTLE
    })?;
    if w.exited {
        let status = child.wait().ctx(|| "waiting for petrel".into())?;
        return Err(Error::Other(format!(
            "the spin guest's petrel exited early ({status}); stderr: {}",
            proc::tail_of(&log, 3)
        )));
    }
    let mut last = MemWatch::default();
    last.sample(child.id(), guest_kib);
    let status = proc::terminate(&mut child, Duration::from_secs(10))?;
    if !proc::ended_by_sigterm(&status) {
        return Err(Error::Other(format!(
            "petrel ended with {status} on SIGTERM, not by the signal; stderr: {}",
            proc::tail_of(&log, 3)
        )));
    }
    let split = last.last_split.ok_or_else(|| no_guest_mapping("petrel"))?;
    Ok(MemRun {
        steady: mib(split.overhead_kib()),
        private: mib(split.private_overhead_kib()),
        peak: f64::NAN,
        peak_overhead: f64::NAN,
    })
}

pub(super) fn no_guest_mapping(who: &str) -> Error {
    Error::Other(format!(
        "no anonymous mapping of {GUEST_MIB} MiB in {who}'s /proc/PID/smaps (guest RAM)"
    ))
}

/// Petrel's peak over a demo run.
fn petrel_demo_memory(b: &Bench, guest_kib: u64) -> Result<MemRun> {
    let mut cmd = petrel_demo(b, "stdio");
    let log = b.dir.join("logs").join("memory-petrel-demo.stderr");
    let err = fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(err)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(&cmd)))?;
    let out = proc::OutputCollector::start(child.stdout.take().expect("piped"));
    let w = proc::watch_memory(&mut child, guest_kib, MEMORY_POLL, SHORT_LIMIT, |_| false)?;
    let status = child.wait().ctx(|| "waiting for petrel".into())?;
    let stdout = out.finish();
    if !status.success() || !demo_ran(&stdout) {
        return Err(Error::Other(format!(
            "petrel demo: {status}; stderr: {}",
            proc::tail_of(&log, 3)
        )));
    }
    let split = w.last_split.ok_or_else(|| no_guest_mapping("petrel"))?;
    Ok(MemRun {
        steady: f64::NAN,
        private: f64::NAN,
        peak: mib(w.last_hwm_kib),
        peak_overhead: mib(w.last_hwm_kib.saturating_sub(split.guest_rss_kib)),
    })
}

/// QEMU on the demo guest, held paused at the end: steady overhead and peak.
fn qemu_memory(b: &Bench, guest_kib: u64) -> Result<MemRun> {
    let machine = b.qemu.as_deref().map_err(|e| Error::Other(e.clone()))?;
    let mut cmd = qemu_demo(b, machine, "stdio", true);
    let log = b.dir.join("logs").join("memory-qemu.stderr");
    let err = fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(err)
        .spawn()
        .ctx(|| format!("starting `{}`", host::describe(&cmd)))?;
    let out = proc::OutputCollector::start(child.stdout.take().expect("piped"));
    let mut done_at: Option<Duration> = None;
    let w = proc::watch_memory(&mut child, guest_kib, MEMORY_POLL, SHORT_LIMIT, |t| {
        if done_at.is_none() && out.text().contains(RESETTING_LINE) {
            done_at = Some(t);
        }
        done_at.is_some_and(|d| t >= d + SETTLE)
    })?;
    if w.exited {
        let status = child.wait().ctx(|| "waiting for QEMU".into())?;
        return Err(Error::Other(format!(
            "QEMU exited ({status}) instead of pausing with -no-shutdown; stderr: {}",
            proc::tail_of(&log, 3)
        )));
    }
    let mut last = MemWatch::default();
    last.sample(child.id(), guest_kib);
    let _ = proc::terminate(&mut child, Duration::from_secs(10))?;
    let stdout = out.finish();
    if !demo_ran(&stdout) {
        return Err(Error::Other(format!(
            "QEMU did not run the demo guest; stderr: {}",
            proc::tail_of(&log, 3)
        )));
    }
    let split = last.last_split.ok_or_else(|| no_guest_mapping("QEMU"))?;
    Ok(MemRun {
        steady: mib(split.overhead_kib()),
        private: mib(split.private_overhead_kib()),
        peak: mib(last.last_hwm_kib),
        peak_overhead: mib(last.last_hwm_kib.saturating_sub(split.guest_rss_kib)),
    })
}
