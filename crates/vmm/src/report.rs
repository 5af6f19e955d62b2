//! Printing exit statistics as a table or JSON.

use std::fmt::Write as _;

use petrel_vcpu::{ExitReport, TimeSummary};
use serde::Serialize;

/// How `--exit-stats` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsFormat {
    /// A human-readable table.
    Table,
    /// One JSON document.
    Json,
}

/// How many ports and MMIO addresses the report lists.
pub const TOP: usize = 10;

/// Everything `--exit-stats` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StatsDocument {
    /// All vCPUs together.
    pub total: ExitReport,
    /// One report per vCPU.
    pub per_vcpu: Vec<ExitReport>,
    /// Reads of ports no device claims.
    pub unclaimed_port_reads: u64,
    /// Writes to ports no device claims.
    pub unclaimed_port_writes: u64,
    /// MMIO reads nothing claims.
    pub unclaimed_mmio_reads: u64,
    /// MMIO writes nothing claims.
    pub unclaimed_mmio_writes: u64,
    /// `int3` completed by #BP injection (hosts that emulate guest kernel code).
    pub int3_injected: u64,
    /// `fwait` skipped for the host's emulator.
    pub fwait_skipped: u64,
    /// KVM's own counters at the end of the run, when the kernel offers them.
    pub kvm: Option<crate::kvm_view::KvmView>,
    /// Why KVM's counters are missing, when they are.
    pub kvm_unavailable: Option<String>,
    /// What each virtio device did.
    pub virtio: Vec<crate::virtio::DeviceReport>,
}

fn us(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1000.0)
}

fn section(out: &mut String, title: &str, rows: &[(String, TimeSummary)]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  {title:<22} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "count", "min us", "median us", "p99 us", "max us"
    );
    for (name, s) in rows {
        let _ = writeln!(
            out,
            "  {name:<22} {:>10} {:>10} {:>10} {:>10} {:>10}",
            s.count,
            us(s.min_ns),
            us(s.median_ns),
            us(s.p99_ns),
            us(s.max_ns)
        );
    }
}

impl StatsDocument {
    /// The table shown at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "exit statistics: {} exits reached Petrel ({} vCPU{}); time is Petrel's handling time",
            self.total.total,
            self.per_vcpu.len(),
            if self.per_vcpu.len() == 1 { "" } else { "s" }
        );
        section(&mut out, "by reason", &self.total.by_reason);
        section(&mut out, "by port (top 10)", &self.total.by_port);
        section(&mut out, "by MMIO address (top 10)", &self.total.by_mmio);
        if self.per_vcpu.len() > 1 {
            for (i, r) in self.per_vcpu.iter().enumerate() {
                let _ = writeln!(out, "  vCPU {i}: {} exits", r.total);
                section(&mut out, "  by reason", &r.by_reason);
            }
        }
        let _ = writeln!(
            out,
            "  unclaimed: {} port reads, {} port writes, {} MMIO reads, {} MMIO writes",
            self.unclaimed_port_reads,
            self.unclaimed_port_writes,
            self.unclaimed_mmio_reads,
            self.unclaimed_mmio_writes
        );
        if self.int3_injected + self.fwait_skipped > 0 {
            let _ = writeln!(
                out,
                "  completed for the host's emulator: {} int3 (as #BP), {} fwait",
                self.int3_injected, self.fwait_skipped
            );
        }
        for d in &self.virtio {
            let counters: Vec<String> = d
                .counters
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(
                out,
                "  {} at {} (GSI {}): driver {}; {}",
                d.name,
                d.base,
                d.gsi,
                if d.driver_ready { "ready" } else { "not ready" },
                if counters.is_empty() {
                    "no requests".to_string()
                } else {
                    counters.join(" ")
                }
            );
        }
        match (&self.kvm, &self.kvm_unavailable) {
            (Some(kvm), _) => out.push_str(&crate::kvm_view::table(&self.total, kvm)),
            (None, Some(why)) => {
                let _ = writeln!(out, "  KVM's view: {why}");
            }
            (None, None) => {}
        }
        out
    }

    /// The same as JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}
