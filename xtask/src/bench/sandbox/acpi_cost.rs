//! What a Linux guest's ACPI costs a snapshot load: the sandbox guest as the sandbox case boots
//! it, beside the same guest booted with `acpi=off` (`--only sandbox-acpi`).
//!
//! Every load of a snapshot raises the VM generation ID's interrupt, as Firecracker's loads
//! do (its `docs/snapshotting/random-for-clones.md`: "Firecracker will always enable
//! VMGenID"). A Linux guest with ACPI takes it on the Generic Event Device's interrupt thread,
//! which runs at real-time priority, so before the shell that waits for the case's line: ACPICA
//! interprets `_EVT`, a worker runs the `Notify`, and the VMGenID driver reseeds the kernel's
//! random number generator and sends a uevent. Where guest kernel code is emulated, that is a
//! large share of the time to the first answer. With `acpi=off` the kernel ignores the ACPI
//! tables: it has no VMGenID driver and no GED, so nothing in it runs when the interrupt is
//! raised, and the difference between the two is what ACPI costs a load.
//!
//! One snapshot of each guest is taken by a fresh boot, then on-demand loads of the two
//! alternate (the first of each pair alternating too), so that the host's slow and fast
//! stretches fall on both alike.

use std::path::Path;

use super::super::report::{Cell, Row, Target, Unit};
use super::super::{missing, Bench};
use super::{
    boot_run, has_working_set_option, load_run, prepare, working_set_args, Guest, Side, WorkingSet,
    LATER_PAUSE,
};

/// The word added to the guest's command line for the comparison.
const ACPI_OFF: &str = "acpi=off";

/// The case's runs: loads of the guest with ACPI, and of the same guest with `acpi=off`.
#[derive(Debug)]
struct Results {
    runs: u32,
    with_acpi: Side,
    acpi_off: Side,
}

/// The same guest with `acpi=off` on its command line, its snapshot (in `dir`) and logs
/// apart.
fn without_acpi(g: &Guest, dir: &Path) -> Guest {
    Guest {
        cmdline: format!("{} {ACPI_OFF}", g.cmdline),
        label: "-acpi-off".into(),
        snapshot: dir.join("sandbox-snapshot-acpi-off"),
        ..g.clone()
    }
}

/// The case: a snapshot of each guest, then `runs` on-demand loads of each, alternating.
pub fn case(b: &Bench, runs: u32) -> Vec<Row> {
    let mut r = Results {
        runs,
        with_acpi: Side::default(),
        acpi_off: Side::default(),
    };
    let prepared = missing(b, false).map(Err).unwrap_or_else(|| {
        prepare(b).map_err(|e| Cell::Error(format!("preparing the guest: {e}")))
    });
    let acpi = match prepared {
        Ok(g) => Guest {
            label: "-acpi-on".into(),
            snapshot: b.dir.join("sandbox-snapshot-acpi-on"),
            ..g
        },
        Err(cell) => {
            r.with_acpi.ended = Some(cell.clone());
            r.acpi_off.ended = Some(cell);
            return rows(&r);
        }
    };
    let bare = without_acpi(&acpi, &b.dir);
    let off_args = working_set_args(WorkingSet::Off, has_working_set_option(&b.petrel));
    // Each boot and load writes its own `ping N`.
    let mut n = 0;
    for (guest, side) in [(&acpi, &mut r.with_acpi), (&bare, &mut r.acpi_off)] {
        n += 1;
        if let Err(e) = boot_run(b, guest, n) {
            side.ended = Some(Cell::Error(format!(
                "the boot that takes its snapshot: {e}"
            )));
        }
    }
    for i in 0..runs {
        let mut pair = [(&acpi, &mut r.with_acpi), (&bare, &mut r.acpi_off)];
        if i % 2 == 1 {
            pair.reverse();
        }
        for (guest, side) in pair {
            n += 1;
            side.run(i, || {
                load_run(b, guest, &off_args, n).map(|l| (l.answer_ms, l.load_ms, l.later_ms))
            });
        }
    }
    rows(&r)
}

/// The case's rows when it is not run: `why` on both sides.
pub fn left_out(runs: u32, why: &str) -> Vec<Row> {
    let cell = Cell::None(why.to_owned());
    rows(&Results {
        runs,
        with_acpi: Side::not_run(cell.clone()),
        acpi_off: Side::not_run(cell),
    })
}

/// The rows: the first answer, and a second line's (where the two guests should not differ).
fn rows(r: &Results) -> Vec<Row> {
    let runs = r.runs;
    let comparison_name = format!("the same guest, `{ACPI_OFF}`");
    vec![
        Row {
            id: "sandbox_acpi_answer",
            name: "sandbox: load to answer, guest with ACPI".into(),
            unit: Unit::Ms,
            petrel: r.with_acpi.cell(|s| &s.answer),
            comparison_name: comparison_name.clone(),
            comparison: r.acpi_off.cell(|s| &s.answer),
            target: Target::None,
            measures: format!(
                "What the guest's ACPI costs a load, most of it the VM generation ID's \
                 notification (module notes in xtask/src/bench/sandbox/acpi_cost.rs). The \
                 sandbox case's guest and method (on-demand loads, `--working-set off`), beside \
                 the same guest booted with `{ACPI_OFF}` added to its command line: one \
                 snapshot of each (a fresh boot each), then loads of the two alternating. The \
                 difference of the medians is the time the guest spends on the load's \
                 notification before its shell answers. Runs: {runs} each."
            ),
        },
        Row {
            id: "sandbox_acpi_later_answer",
            name: "sandbox: a second line's answer, guest with ACPI".into(),
            unit: Unit::Ms,
            petrel: r.with_acpi.cell(|s| &s.later),
            comparison_name,
            comparison: r.acpi_off.cell(|s| &s.later),
            target: Target::None,
            measures: format!(
                "In the same loads, {} ms after the first answer, a second line timed to its \
                 answer: the warm guest's own pace, where ACPI has nothing to do. Runs: {runs} \
                 each.",
                LATER_PAUSE.as_millis()
            ),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::Verdict;
    use crate::error::Error;

    fn side(answer: f64) -> Side {
        Side {
            answer: vec![answer, answer + 2.0],
            load: vec![2.0, 2.0],
            later: vec![35.0, 36.0],
            ended: None,
        }
    }

    #[test]
    fn rows_compare_the_guest_with_acpi_to_the_same_guest_without() {
        let rows = rows(&Results {
            runs: 2,
            with_acpi: side(60.0),
            acpi_off: side(30.0),
        });
        let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
        assert_eq!(ids, ["sandbox_acpi_answer", "sandbox_acpi_later_answer"]);
        assert_eq!(rows[0].petrel, Cell::Measured(vec![60.0, 62.0]));
        assert_eq!(rows[0].comparison, Cell::Measured(vec![30.0, 32.0]));
        assert_eq!(rows[0].ratio(), Some(61.0 / 31.0));
        assert_eq!(rows[1].petrel, Cell::Measured(vec![35.0, 36.0]));
        assert!(rows[0].comparison_name.contains("acpi=off"));
        for r in &rows {
            assert_eq!(r.verdict(), Verdict::Info, "{}", r.id);
            assert!(r.measures.contains("Runs: 2 each"), "{}", r.measures);
        }
    }

    #[test]
    fn a_failed_side_shows_its_error_and_the_other_its_runs() {
        let mut off = Side::default();
        off.run(0, || Err(Error::Other("no snapshot".into())));
        let rows = rows(&Results {
            runs: 1,
            with_acpi: side(50.0),
            acpi_off: off,
        });
        assert_eq!(rows[0].comparison, Cell::Error("run 1: no snapshot".into()));
        assert_eq!(rows[0].petrel, Cell::Measured(vec![50.0, 52.0]));
        let left = left_out(10, "not run (--no-linux)");
        assert_eq!(left.len(), 2);
        assert_eq!(left[0].petrel, Cell::None("not run (--no-linux)".into()));
        assert_eq!(
            left[1].comparison,
            Cell::None("not run (--no-linux)".into())
        );
    }

    #[test]
    fn the_variant_adds_acpi_off_and_keeps_its_files_apart() {
        let b_dir = std::path::PathBuf::from("/b");
        let g = Guest {
            vmlinux: "/k/vmlinux".into(),
            rootfs: "/b/sandbox-root.ext4".into(),
            cmdline: "console=ttyS0 root=/dev/vda ro".into(),
            label: "-acpi-on".into(),
            snapshot: b_dir.join("sandbox-snapshot-acpi-on"),
            uffd_handler: Err("not built".into()),
        };
        let bare = without_acpi(&g, &b_dir);
        assert_eq!(bare.cmdline, "console=ttyS0 root=/dev/vda ro acpi=off");
        assert_eq!(bare.rootfs, g.rootfs);
        assert_eq!(bare.snapshot, b_dir.join("sandbox-snapshot-acpi-off"));
        assert_eq!(bare.label, "-acpi-off");
        assert!(bare.boot_args().contains(&bare.cmdline));
    }
}
