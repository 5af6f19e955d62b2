//! The bench's results: samples and their summary, the printed table and the JSON file.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// The unit of a row's numbers, and how they are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds.
    Ms,
    /// Milliseconds, for times under a few milliseconds (two decimals).
    MsFine,
    /// Microseconds.
    Us,
    /// Seconds.
    S,
    /// Mebibytes.
    MiB,
    /// VMs started and stopped per second.
    PerS,
    /// Kibibytes.
    KiB,
    /// A number of VMs.
    Vms,
}

impl Unit {
    /// The unit's symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Unit::Ms | Unit::MsFine => "ms",
            Unit::Us => "µs",
            Unit::S => "s",
            Unit::MiB => "MiB",
            Unit::PerS => "VMs/s",
            Unit::KiB => "KiB",
            Unit::Vms => "VMs",
        }
    }

    /// Decimal places shown.
    fn decimals(self) -> usize {
        match self {
            Unit::Ms | Unit::MiB | Unit::PerS | Unit::S => 1,
            Unit::Us | Unit::MsFine => 2,
            Unit::KiB | Unit::Vms => 0,
        }
    }

    /// `value` with this unit's decimals.
    pub fn format(self, value: f64) -> String {
        format!("{value:.*}", self.decimals())
    }
}

/// min / median / max of a set of measurements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The smallest.
    pub min: f64,
    /// The median (the mean of the two middle values for an even count).
    pub median: f64,
    /// The largest.
    pub max: f64,
}

/// Summarises `values`; `None` when there are none.
pub fn summarise(values: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = values.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        min: v[0],
        median,
        max: v[n - 1],
    })
}

/// One side of a row (Petrel, or what it is compared with).
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Measured: the values, one per run.
    Measured(Vec<f64>),
    /// Not measured because a tool or device is missing; the reason.
    Missing(String),
    /// The measurement failed; the reason.
    Error(String),
    /// Nothing to measure on this side (the reason, e.g. a row that has no comparison).
    None(String),
    /// Not measured in this run: a median measured earlier, and where it comes from (for a
    /// VMM that is not installed here).
    Reference {
        /// The median, in the row's unit.
        median: f64,
        /// Where and how it was measured, for the notes.
        source: String,
    },
}

impl Cell {
    /// The summary of a measured cell.
    pub fn summary(&self) -> Option<Summary> {
        match self {
            Cell::Measured(v) => summarise(v),
            _ => None,
        }
    }

    /// The median of a measured cell, or a reference's.
    pub fn median(&self) -> Option<f64> {
        match self {
            Cell::Reference { median, .. } => Some(*median),
            _ => self.summary().map(|s| s.median),
        }
    }

    /// The cell as printed: `min / median / max unit (n runs)`, or why there is no number.
    pub fn text(&self, unit: Unit) -> String {
        match self {
            Cell::Measured(v) => match summarise(v) {
                Some(s) if v.len() == 1 => {
                    format!("{} {} (1 run)", unit.format(s.median), unit.symbol())
                }
                Some(s) => format!(
                    "{} / {} / {} {} ({} runs)",
                    unit.format(s.min),
                    unit.format(s.median),
                    unit.format(s.max),
                    unit.symbol(),
                    v.len()
                ),
                None => "no runs".to_owned(),
            },
            Cell::Missing(_) => "MISSING (see notes)".to_owned(),
            Cell::Error(_) => "ERROR (see notes)".to_owned(),
            Cell::None(why) => why.clone(),
            Cell::Reference { median, .. } => format!(
                "{} {} median (earlier, see notes)",
                unit.format(*median),
                unit.symbol()
            ),
        }
    }

    /// The full reason of a missing or failed cell, for the notes under the table.
    pub fn reason(&self) -> Option<String> {
        match self {
            Cell::Missing(why) => Some(format!("MISSING: {why}")),
            Cell::Error(why) => Some(format!("ERROR: {why}")),
            Cell::Reference { source, .. } => Some(format!("not measured in this run: {source}")),
            Cell::Measured(_) | Cell::None(_) => None,
        }
    }

    fn json(&self) -> Value {
        match self {
            Cell::Measured(v) => {
                let s = summarise(v);
                json!({
                    "samples": v,
                    "min": s.map(|s| s.min),
                    "median": s.map(|s| s.median),
                    "max": s.map(|s| s.max),
                })
            }
            Cell::Missing(why) => json!({ "missing": why }),
            Cell::Error(why) => json!({ "error": why }),
            Cell::None(why) => json!({ "none": why }),
            Cell::Reference { median, source } => {
                json!({ "reference_median": median, "source": source })
            }
        }
    }
}

/// How a row's result is judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// No target: the row is for information (or a trend).
    None,
    /// Petrel's median at most this fraction of the comparison's median.
    RatioAtMost(f64),
    /// Petrel's median at least this multiple of the comparison's median.
    RatioAtLeast(f64),
    /// Petrel's median at most this value, in the row's unit.
    ValueAtMost(f64),
    /// Petrel's median less than the comparison's median plus this, in the row's unit: what
    /// a feature adds to a baseline.
    AddedBelow(f64),
}

/// A row's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The target is met.
    Pass,
    /// The target is missed, or a measurement it needs failed.
    Fail,
    /// A measurement it needs could not be made: a tool or device is missing.
    Missing,
    /// The row has no target.
    Info,
}

impl Verdict {
    /// The word printed.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Missing => "MISSING",
            Verdict::Info => "-",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Stable identifier (the JSON's `id`).
    pub id: &'static str,
    /// Short name of the case, as printed.
    pub name: String,
    /// The unit of both cells.
    pub unit: Unit,
    /// Petrel's side.
    pub petrel: Cell,
    /// What it is compared with, in words (e.g. `QEMU 7.2 microvm`).
    pub comparison_name: String,
    /// The comparison's side.
    pub comparison: Cell,
    /// The target.
    pub target: Target,
    /// What exactly is measured, for the notes under the table.
    pub measures: String,
}

impl Row {
    /// Petrel's median over the comparison's, when both are known.
    pub fn ratio(&self) -> Option<f64> {
        let p = self.petrel.summary()?;
        let c = self.comparison.median()?;
        (c > 0.0).then(|| p.median / c)
    }

    /// The verdict against the target.
    pub fn verdict(&self) -> Verdict {
        let missing = |c: &Cell| matches!(c, Cell::Missing(_));
        let needs_comparison = matches!(
            self.target,
            Target::RatioAtMost(_) | Target::RatioAtLeast(_) | Target::AddedBelow(_)
        );
        if missing(&self.petrel) || (needs_comparison && missing(&self.comparison)) {
            return Verdict::Missing;
        }
        if matches!(self.petrel, Cell::Error(_)) {
            return Verdict::Fail;
        }
        let pass = match self.target {
            Target::None => return Verdict::Info,
            Target::RatioAtMost(limit) => self.ratio().map(|r| r <= limit),
            Target::RatioAtLeast(limit) => self.ratio().map(|r| r >= limit),
            Target::ValueAtMost(limit) => self.petrel.summary().map(|s| s.median <= limit),
            Target::AddedBelow(limit) => self
                .petrel
                .summary()
                .zip(self.comparison.median())
                .map(|(p, c)| p.median - c < limit),
        };
        match pass {
            Some(true) => Verdict::Pass,
            _ => Verdict::Fail,
        }
    }

    /// The target in words.
    pub fn target_text(&self) -> String {
        match self.target {
            Target::None => "-".to_owned(),
            Target::RatioAtMost(r) if (r - 1.0 / 3.0).abs() < 1e-9 => "ratio ≤ 1/3".to_owned(),
            Target::RatioAtMost(r) => format!("ratio ≤ {r:.2}"),
            Target::RatioAtLeast(r) => format!("ratio ≥ {r:.1}"),
            Target::ValueAtMost(v) => format!("≤ {} {}", self.unit.format(v), self.unit.symbol()),
            Target::AddedBelow(v) => {
                format!("added < {} {}", self.unit.format(v), self.unit.symbol())
            }
        }
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "measures": self.measures,
            "unit": self.unit.symbol(),
            "petrel": self.petrel.json(),
            "comparison": { "name": self.comparison_name, "result": self.comparison.json() },
            "ratio": self.ratio(),
            "target": self.target_text(),
            "result": self.verdict().word(),
        })
    }
}

/// Where and when the bench ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    /// UTC date and time, `YYYY-MM-DD hh:mm UTC`.
    pub date: String,
    /// The host in words (KVM kind, CPUs, CPU model, kernel).
    pub host: String,
    /// The QEMU used, or why there is none.
    pub qemu: String,
    /// Runs per case asked for.
    pub runs: u32,
    /// The host's 1-minute load average when the bench began and when it ended (other
    /// work on the host disturbs the timings).
    pub load: (f64, f64),
}

/// The printed table: a header line, a Markdown table (one line per row), and one note per
/// row saying what it measures.
pub fn table(ctx: &Context, rows: &[Row]) -> String {
    let header = [
        "case",
        "Petrel (min / median / max)",
        "compared with",
        "comparison (min / median / max)",
        "ratio",
        "target",
        "result",
    ];
    let mut lines: Vec<[String; 7]> = vec![header.map(str::to_owned)];
    for (i, r) in rows.iter().enumerate() {
        lines.push([
            format!("{}. {}", i + 1, r.name),
            r.petrel.text(r.unit),
            r.comparison_name.clone(),
            r.comparison.text(r.unit),
            r.ratio().map_or("-".to_owned(), |x| format!("{x:.2}x")),
            r.target_text(),
            r.verdict().word().to_owned(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Petrel bench, {}; host: {}; QEMU: {}; runs per case: {} (fewer where noted); \
         1-minute load average {:.2} at the start, {:.2} at the end",
        ctx.date, ctx.host, ctx.qemu, ctx.runs, ctx.load.0, ctx.load.1
    );
    out.push('\n');
    for (n, l) in lines.iter().enumerate() {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(text, &w)| format!("{text}{}", " ".repeat(w - text.chars().count())))
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
            let _ = writeln!(out, "|-{}-|", rule.join("-|-"));
        }
    }
    out.push('\n');
    let _ = writeln!(out, "ratio = Petrel's median / the comparison's median.");
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(out, "{}. {}", i + 1, r.measures);
        for (side, cell) in [
            ("Petrel", &r.petrel),
            (r.comparison_name.as_str(), &r.comparison),
        ] {
            if let Some(reason) = cell.reason() {
                let _ = writeln!(out, "   {side}: {reason}");
            }
        }
    }
    out
}

/// The JSON document written to `target/bench/results.json`.
pub fn json_document(ctx: &Context, rows: &[Row]) -> Value {
    json!({
        "date": ctx.date,
        "host": ctx.host,
        "qemu": ctx.qemu,
        "runs": ctx.runs,
        "load_average_1min": { "start": ctx.load.0, "end": ctx.load.1 },
        "cases": rows.iter().map(Row::json).collect::<Vec<_>>(),
    })
}

/// The 1-minute load average from `/proc/loadavg`; 0 if it cannot be read.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The current UTC time as `YYYY-MM-DD hh:mm UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_text(secs)
}

/// `secs` since the Unix epoch as `YYYY-MM-DD hh:mm UTC`.
pub fn utc_text(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_date(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01: count whole
/// 400-year eras (146 097 days each) from 0000-03-01, then years within the era (leap days
/// make 365-day years one day short every 4 years, except every 100, except every 400), then
/// months from March (so that February, with the leap day, comes last).
fn civil_date(days: u64) -> (u64, u64, u64) {
    // Days from 0000-03-01 to 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(petrel: Cell, comparison: Cell, target: Target) -> Row {
        Row {
            id: "x",
            name: "start-up".into(),
            unit: Unit::Ms,
            petrel,
            comparison_name: "QEMU".into(),
            comparison,
            target,
            measures: "what".into(),
        }
    }

    #[test]
    fn summaries() {
        assert_eq!(summarise(&[]), None);
        let s = summarise(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        let s = summarise(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.5, 4.0));
    }

    #[test]
    fn verdicts() {
        let m = |v: &[f64]| Cell::Measured(v.to_vec());
        let third = Target::RatioAtMost(1.0 / 3.0);
        assert_eq!(row(m(&[10.0]), m(&[40.0]), third).verdict(), Verdict::Pass);
        assert_eq!(row(m(&[20.0]), m(&[40.0]), third).verdict(), Verdict::Fail);
        assert_eq!(row(m(&[20.0]), m(&[40.0]), third).ratio(), Some(0.5));
        let qemu_missing = row(m(&[1.0]), Cell::Missing("no QEMU".into()), third);
        assert_eq!(qemu_missing.verdict(), Verdict::Missing);
        assert_eq!(qemu_missing.ratio(), None);
        let broken = row(Cell::Error("crashed".into()), m(&[1.0]), third);
        assert_eq!(broken.verdict(), Verdict::Fail);
        let comparison_broken = row(m(&[1.0]), Cell::Error("x".into()), third);
        assert_eq!(
            comparison_broken.verdict(),
            Verdict::Fail,
            "no ratio, no pass"
        );
        let at_least = Target::RatioAtLeast(2.0);
        assert_eq!(
            row(m(&[30.0]), m(&[10.0]), at_least).verdict(),
            Verdict::Pass
        );
        assert_eq!(
            row(m(&[15.0]), m(&[10.0]), at_least).verdict(),
            Verdict::Fail
        );
        let cap = Target::ValueAtMost(3.0);
        let no_comparison = Cell::None("-".into());
        assert_eq!(
            row(m(&[2.9, 3.5, 1.0]), no_comparison.clone(), cap).verdict(),
            Verdict::Pass
        );
        assert_eq!(
            row(m(&[3.1]), no_comparison.clone(), cap).verdict(),
            Verdict::Fail
        );
        assert_eq!(
            row(m(&[3.1]), Cell::Missing("no QEMU".into()), cap).verdict(),
            Verdict::Fail,
            "a value target does not need the comparison"
        );
        assert_eq!(
            row(m(&[1.0]), no_comparison, Target::None).verdict(),
            Verdict::Info
        );
    }

    #[test]
    fn references_and_added_targets() {
        let m = |v: &[f64]| Cell::Measured(v.to_vec());
        let fc = Cell::Reference {
            median: 1.31,
            source: "Firecracker, earlier".into(),
        };
        let mut r = row(m(&[0.5, 0.6, 0.7]), fc.clone(), Target::ValueAtMost(0.65));
        r.unit = Unit::MsFine;
        assert_eq!(r.verdict(), Verdict::Pass);
        assert!((r.ratio().unwrap() - 0.6 / 1.31).abs() < 1e-12);
        assert_eq!(fc.text(Unit::MsFine), "1.31 ms median (earlier, see notes)");
        assert_eq!(
            fc.reason().unwrap(),
            "not measured in this run: Firecracker, earlier"
        );
        assert_eq!(
            r.petrel.text(Unit::MsFine),
            "0.50 / 0.60 / 0.70 ms (3 runs)"
        );
        assert_eq!(r.target_text(), "≤ 0.65 ms");

        let added = Target::AddedBelow(0.5);
        let mut mem = row(m(&[3.1, 3.2]), m(&[2.7, 2.8]), added);
        mem.unit = Unit::MiB;
        assert_eq!(mem.verdict(), Verdict::Pass, "0.4 MiB added");
        assert_eq!(mem.target_text(), "added < 0.5 MiB");
        mem.petrel = m(&[3.25, 3.35]);
        assert_eq!(mem.verdict(), Verdict::Fail, "0.55 MiB added");
        mem.comparison = Cell::Error("baseline failed".into());
        assert_eq!(mem.verdict(), Verdict::Fail, "no baseline, no pass");
        mem.comparison = Cell::Missing("no KVM".into());
        assert_eq!(mem.verdict(), Verdict::Missing);
    }

    #[test]
    fn cell_text() {
        assert_eq!(
            Cell::Measured(vec![12.25, 10.0, 11.0]).text(Unit::Ms),
            "10.0 / 11.0 / 12.2 ms (3 runs)"
        );
        assert_eq!(Cell::Measured(vec![7.0]).text(Unit::Us), "7.00 µs (1 run)");
        let missing = Cell::Missing("no QEMU".into());
        assert_eq!(missing.text(Unit::Ms), "MISSING (see notes)");
        assert_eq!(missing.reason().unwrap(), "MISSING: no QEMU");
        let error = Cell::Error("boom".into());
        assert_eq!(error.text(Unit::Ms), "ERROR (see notes)");
        assert_eq!(error.reason().unwrap(), "ERROR: boom");
        assert_eq!(Cell::Measured(vec![1.0]).reason(), None);
    }

    #[test]
    fn table_and_json() {
        let ctx = Context {
            date: "2026-11-21 12:00 UTC".into(),
            host: "PVM".into(),
            qemu: "7.2".into(),
            runs: 3,
            load: (0.5, 1.25),
        };
        let rows = vec![
            row(
                Cell::Measured(vec![10.0]),
                Cell::Measured(vec![40.0]),
                Target::RatioAtMost(1.0 / 3.0),
            ),
            row(
                Cell::Measured(vec![1.0]),
                Cell::Missing("no QEMU".into()),
                Target::RatioAtLeast(2.0),
            ),
        ];
        let t = table(&ctx, &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("2026-11-21 12:00 UTC") && lines[0].contains("host: PVM"));
        assert!(lines[0].ends_with("load average 0.50 at the start, 1.25 at the end"));
        assert!(lines[2].starts_with("| case "));
        assert!(lines[3].starts_with("|---"));
        assert!(
            lines[4].contains("| 0.25x ")
                && lines[4].contains("ratio ≤ 1/3")
                && lines[4].ends_with("| PASS    |")
        );
        assert!(lines[5].contains("MISSING (see notes)") && lines[5].contains("MISSING |"));
        let width = lines[2].chars().count();
        assert!(
            lines[2..6].iter().all(|l| l.chars().count() == width),
            "{t}"
        );
        assert!(
            t.contains("\n1. what\n2. what\n   QEMU: MISSING: no QEMU\n"),
            "{t}"
        );
        let j = json_document(&ctx, &rows);
        assert_eq!(j["cases"][0]["ratio"], json!(0.25));
        assert_eq!(j["cases"][0]["result"], "PASS");
        assert_eq!(j["cases"][0]["petrel"]["samples"], json!([10.0]));
        assert_eq!(j["cases"][1]["comparison"]["result"]["missing"], "no QEMU");
    }

    #[test]
    fn dates() {
        assert_eq!(utc_text(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_text(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_text(1_795_262_400), "2026-11-21 12:00 UTC");
        assert_eq!(utc_text(4_107_542_399), "2100-02-28 23:59 UTC");
        assert!(utc_now().ends_with(" UTC"));
    }
}
