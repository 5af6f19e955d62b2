//! What building a guest's ACPI tables adds to start-up: the time between Petrel's two timeline
//! events around them (`building ACPI tables`, `ACPI tables written`), over `petrel demo` runs
//! whose `--metrics` file holds the timeline. The tables are built for every Linux-protocol
//! guest, the demo guest included, so the start-up rows already include this cost; this row
//! says how much of them it is.

use std::fs;

use super::report::{Cell, Row, Target, Unit};
use super::{missing, petrel_demo, Bench, SHORT_LIMIT};
use crate::error::{Error, IoContext, Result};

/// Petrel's timeline event before the tables are built (crates/vmm/src/vmm/build.rs).
const TABLES_START: &str = "building ACPI tables";
/// Petrel's timeline event once they are in guest memory.
const TABLES_WRITTEN: &str = "ACPI tables written";

/// The row: microseconds from [`TABLES_START`] to [`TABLES_WRITTEN`], one value per run.
pub(super) fn tables_row(b: &Bench, runs: u32) -> Row {
    let petrel = match missing(b, false) {
        Some(cell) => cell,
        None => match (0..runs)
            .map(|i| one_run(b, i))
            .collect::<Result<Vec<f64>>>()
        {
            Ok(values) => Cell::Measured(values),
            Err(e) => Cell::Error(e.to_string()),
        },
    };
    Row {
        id: "startup_acpi_tables",
        name: "start-up: ACPI tables built and written".into(),
        unit: Unit::Us,
        petrel,
        comparison_name: "-".into(),
        comparison: Cell::None("part of row 1's start-up".into()),
        target: Target::None,
        measures: format!(
            "`petrel demo --serial none --metrics FILE`: (`{TABLES_WRITTEN}` - \
             `{TABLES_START}`) of Petrel's timeline: the DSDT's AML for the legacy devices and \
             the VM generation ID, the RSDP, XSDT, FADT and MADT, checksums, and the copy into \
             guest memory. Included in the start-up rows above."
        ),
    }
}

fn one_run(b: &Bench, i: u32) -> Result<f64> {
    let metrics = b.dir.join(format!("acpi-tables-{i}.json"));
    let _ = fs::remove_file(&metrics);
    let log = b.dir.join("logs").join("acpi-tables-petrel.stderr");
    let mut cmd = petrel_demo(b, "none");
    cmd.arg("--metrics").arg(&metrics);
    let t = super::proc::run_timed(&mut cmd, &log, SHORT_LIMIT)?;
    if !t.status.success() {
        return Err(Error::Other(format!(
            "petrel demo --metrics exited with {} (see {})",
            t.status,
            log.display()
        )));
    }
    let text = fs::read_to_string(&metrics).ctx(|| format!("reading {}", metrics.display()))?;
    tables_span_us(&text)
}

/// Microseconds between the two events in a `--metrics` JSON's timeline.
fn tables_span_us(metrics_json: &str) -> Result<f64> {
    super::timeline_span_us(metrics_json, TABLES_START, TABLES_WRITTEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_span_between_the_two_events() {
        let json = r#"{"timeline":[{"what":"process start","at_us":0},
            {"what":"building ACPI tables","at_us":1200},
            {"what":"ACPI tables written","at_us":1242}]}"#;
        assert_eq!(tables_span_us(json).unwrap(), 42.0);
        let err = tables_span_us(r#"{"timeline":[]}"#).unwrap_err();
        assert!(
            err.to_string().contains("no `building ACPI tables` event"),
            "{err}"
        );
    }
}
