//! Case 4 of the bench: density, demo VMs started and stopped per second, one after another
//! and two at a time, Petrel against QEMU.

use std::process::Command;
use std::thread;
use std::time::Instant;

use super::report::{Row, Target, Unit};
use super::{alternate, missing, petrel_demo, proc, qemu_demo, qemu_short, Bench, SHORT_LIMIT};
use crate::error::{Error, IoContext, Result};
use crate::host;

/// Petrel's VMs per second over QEMU's must be at least this.
const DENSITY_TARGET: f64 = 2.0;

/// Case 4: VMs per second, one at a time and two at a time.
pub(super) fn density(b: &Bench, runs: u32, vms: u32) -> Vec<Row> {
    let qemu_name = format!("QEMU {}", qemu_short(b));
    let petrel_cmd = || petrel_demo(b, "none");
    let qemu_machine = b.qemu.clone().unwrap_or_default();
    let qemu_cmd = || qemu_demo(b, &qemu_machine, "null", false);
    let mut rows = Vec::new();
    for parallel in [1, 2] {
        let (petrel, qemu) = alternate(
            runs,
            (missing(b, false), |_| {
                vms_per_second(vms, parallel, &petrel_cmd)
            }),
            (missing(b, true), |_| {
                vms_per_second(vms, parallel, &qemu_cmd)
            }),
        );
        let (id, name) = if parallel == 1 {
            ("density_serial", "density: VMs/s, one after another")
        } else {
            ("density_two_at_a_time", "density: VMs/s, 2 at a time")
        };
        rows.push(Row {
            id,
            name: name.into(),
            unit: Unit::PerS,
            petrel,
            comparison_name: qemu_name.clone(),
            comparison: qemu,
            target: Target::RatioAtLeast(DENSITY_TARGET),
            measures: if parallel == 1 {
                format!(
                    "{vms} demo VMs started and waited for one after another, serial output \
                     discarded (`petrel demo --serial none`; QEMU with `-serial null`); VMs/s = \
                     {vms} / wall time; each must exit 0."
                )
            } else {
                format!(
                    "The same {vms} VMs from 2 threads, each starting its half one after \
                     another (2 VMs alive at a time)."
                )
            },
        });
    }
    rows
}

/// Starts `vms` VMs from `parallel` threads, each waiting for its VM before starting the
/// next; returns VMs per second.
fn vms_per_second(vms: u32, parallel: u32, make: &(dyn Fn() -> Command + Sync)) -> Result<f64> {
    let start = Instant::now();
    let results: Vec<Result<()>> = thread::scope(|s| {
        let workers: Vec<_> = (0..parallel)
            .map(|w| {
                let share = vms / parallel + u32::from(w < vms % parallel);
                s.spawn(move || -> Result<()> {
                    for _ in 0..share {
                        let mut cmd = make();
                        cmd.stdin(std::process::Stdio::null())
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::null());
                        let mut child = cmd
                            .spawn()
                            .ctx(|| format!("starting `{}`", host::describe(&cmd)))?;
                        let dog = proc::Watchdog::arm(child.id(), SHORT_LIMIT);
                        let status = child.wait().ctx(|| "waiting for a VM".into())?;
                        if dog.disarm() || !status.success() {
                            return Err(Error::Other(format!(
                                "`{}` ended with {status}",
                                host::describe(&cmd)
                            )));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(Error::Other("a worker panicked".into())))
            })
            .collect()
    });
    let wall = start.elapsed();
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(f64::from(vms) / wall.as_secs_f64())
}
