//! KVM's own view of a run: its binary statistics (`KVM_GET_STATS_FD`, Linux 5.14+), per vCPU
//! and for the VM, beside the exits that reached Petrel.
//!
//! The comparison takes what reached Petrel as `petrel-vcpu`'s [`ExitReport`] (the total of a
//! [`StatsDocument`](crate::StatsDocument)), so this module does not depend on the report that
//! prints it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use petrel_hv_sys::stats::{Snapshot, StatsReader};
use petrel_hv_sys::{Vcpu, Vm};
use petrel_vcpu::ExitReport;
use serde::Serialize;

/// The cumulative per-vCPU counters summed into the total and shown in the table, in order.
pub const KEY_COUNTERS: &[&str] = &[
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_exits",
    "signal_exits",
    "irq_window_exits",
    "request_irq_exits",
    "pf_taken",
    "pf_fixed",
    "pf_guest",
    "pf_emulate",
    "pf_spurious",
    "pf_fast",
    "insn_emulation",
    "insn_emulation_fail",
    "irq_injections",
    "nmi_injections",
    "halt_successful_poll",
    "halt_attempted_poll",
    "halt_poll_invalid",
    "halt_wakeup",
    "halt_poll_success_ns",
    "halt_poll_fail_ns",
    "halt_wait_ns",
];

/// Open statistics readers of one VM.
#[derive(Debug, Default)]
pub struct KvmStatsReaders {
    vm: Option<StatsReader>,
    vcpus: Vec<Option<StatsReader>>,
    /// Why there are none, when there are none.
    pub unavailable: Option<String>,
}

impl KvmStatsReaders {
    /// Opens the VM's reader; vCPU readers are added with [`KvmStatsReaders::add_vcpu`].
    pub fn open_vm(vm: &Vm) -> Self {
        match StatsReader::from_vm(vm) {
            Ok(Some(r)) => KvmStatsReaders {
                vm: Some(r),
                ..Default::default()
            },
            Ok(None) => KvmStatsReaders {
                unavailable: Some(
                    "this kernel's KVM has no binary statistics (KVM_GET_STATS_FD needs Linux \
                     5.14+): showing Petrel's own counts only"
                        .into(),
                ),
                ..Default::default()
            },
            Err(e) => KvmStatsReaders {
                unavailable: Some(format!("cannot read KVM's statistics: {e}")),
                ..Default::default()
            },
        }
    }

    /// Opens the reader of `vcpu` (before the vCPU moves to its thread).
    pub fn add_vcpu(&mut self, vcpu: &Vcpu) {
        let reader = if self.unavailable.is_some() {
            None
        } else {
            StatsReader::from_vcpu(vcpu).ok().flatten()
        };
        self.vcpus.push(reader);
    }

    /// Reads every counter now (any thread may do this while the vCPUs run).
    pub fn read(&mut self) -> Option<KvmView> {
        if self.unavailable.is_some() {
            return None;
        }
        let per_vcpu: Vec<Snapshot> = self
            .vcpus
            .iter_mut()
            .map(|r| r.as_mut().and_then(|r| r.read().ok()).unwrap_or_default())
            .collect();
        let mut total = BTreeMap::new();
        for name in KEY_COUNTERS {
            let sum: u64 = per_vcpu.iter().filter_map(|s| s.get(name)).sum();
            if per_vcpu.iter().any(|s| s.get(name).is_some()) {
                total.insert((*name).to_string(), sum);
            }
        }
        let vm = self.vm.as_mut().and_then(|r| r.read().ok());
        Some(KvmView {
            total,
            per_vcpu,
            vm,
        })
    }
}

/// KVM's counters at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct KvmView {
    /// [`KEY_COUNTERS`] summed over the vCPUs.
    pub total: BTreeMap<String, u64>,
    /// Every statistic of each vCPU.
    pub per_vcpu: Vec<Snapshot>,
    /// Every statistic of the VM (MMU, TLB).
    pub vm: Option<Snapshot>,
}

/// Exits by kind: what KVM counted, what reached Petrel, and the difference (resolved in the
/// kernel). `None` for the difference when KVM counted fewer than reached Petrel, which happens
/// on hosts that run guest code in KVM's emulator: there the I/O goes through the emulator and
/// is counted as `insn_emulation`, not as `io_exits`.
pub fn exit_comparison(
    reached: &ExitReport,
    kvm: &KvmView,
) -> Vec<(&'static str, u64, u64, Option<u64>)> {
    let petrel = |reasons: &[&str]| -> u64 {
        reached
            .by_reason
            .iter()
            .filter(|(r, _)| reasons.contains(&r.as_str()))
            .map(|(_, s)| s.count)
            .sum()
    };
    let rows = [
        ("all exits", "exits", reached.total),
        ("port I/O", "io_exits", petrel(&["io-in", "io-out"])),
        ("MMIO", "mmio_exits", petrel(&["mmio-read", "mmio-write"])),
        ("hlt", "halt_exits", petrel(&["hlt"])),
    ];
    rows.iter()
        .map(|(label, counter, reached)| {
            let k = kvm.total.get(*counter).copied().unwrap_or(0);
            (*label, k, *reached, k.checked_sub(*reached))
        })
        .collect()
}

/// The table `--exit-stats` prints for KVM's view; `reached` is the exits that reached Petrel,
/// all vCPUs together.
pub fn table(reached: &ExitReport, kvm: &KvmView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "KVM's view (its binary statistics: what the kernel counted)"
    );
    let _ = writeln!(
        out,
        "  {:<22} {:>12} {:>14} {:>18}",
        "exits", "KVM counted", "reached Petrel", "resolved in kernel"
    );
    let rows = exit_comparison(reached, kvm);
    let footnote = rows.iter().any(|r| r.3.is_none());
    for (label, k, reached, inside) in rows {
        let inside = inside.map_or_else(|| "n/a*".to_string(), |v| v.to_string());
        let _ = writeln!(out, "  {label:<22} {k:>12} {reached:>14} {inside:>18}");
    }
    let vcpus = kvm.per_vcpu.len();
    let mut header = format!("  {:<22} {:>12}", "counter", "total");
    if vcpus > 1 {
        for i in 0..vcpus {
            let _ = write!(header, " {:>10}", format!("vCPU {i}"));
        }
    }
    let _ = writeln!(out, "{header}");
    for name in KEY_COUNTERS {
        let Some(total) = kvm.total.get(*name) else {
            continue;
        };
        let mut line = format!("  {name:<22} {total:>12}");
        if vcpus > 1 {
            for s in &kvm.per_vcpu {
                let _ = write!(line, " {:>10}", s.get(name).unwrap_or(0));
            }
        }
        let _ = writeln!(out, "{line}");
    }
    if let Some(vm) = &kvm.vm {
        let nonzero: Vec<String> = vm
            .values
            .iter()
            .filter_map(|(n, _)| vm.get(n).filter(|v| *v > 0).map(|v| format!("{n}={v}")))
            .collect();
        if !nonzero.is_empty() {
            let _ = writeln!(out, "  VM: {}", nonzero.join(" "));
        }
    }
    if footnote {
        let _ = writeln!(
            out,
            "  * KVM counted fewer than reached Petrel: on hosts whose KVM emulates guest code, \
         I/O runs through its instruction emulator and is counted as insn_emulation"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use petrel_hv_sys::StatValue;
    use petrel_vcpu::TimeSummary;

    use super::*;

    fn count(n: u64) -> TimeSummary {
        TimeSummary {
            count: n,
            min_ns: 0,
            median_ns: 0,
            p99_ns: 0,
            max_ns: 0,
            total_ns: 0,
        }
    }

    fn reached() -> ExitReport {
        ExitReport {
            total: 10,
            by_reason: vec![
                ("io-in".into(), count(3)),
                ("io-out".into(), count(4)),
                ("mmio-write".into(), count(2)),
                ("hlt".into(), count(1)),
            ],
            by_port: vec![],
            by_mmio: vec![],
        }
    }

    fn vcpu(counters: &[(&str, u64)]) -> Snapshot {
        Snapshot {
            values: counters
                .iter()
                .map(|(n, v)| (n.to_string(), StatValue::Scalar(*v)))
                .collect(),
        }
    }

    fn view(per_vcpu: Vec<Snapshot>) -> KvmView {
        let mut total = BTreeMap::new();
        for name in KEY_COUNTERS {
            if per_vcpu.iter().any(|s| s.get(name).is_some()) {
                total.insert(
                    name.to_string(),
                    per_vcpu.iter().filter_map(|s| s.get(name)).sum(),
                );
            }
        }
        KvmView {
            total,
            per_vcpu,
            vm: None,
        }
    }

    #[test]
    fn comparison_subtracts_what_reached_petrel_per_kind() {
        let kvm = view(vec![vcpu(&[
            ("exits", 50),
            ("io_exits", 9),
            ("mmio_exits", 2),
            ("halt_exits", 1),
        ])]);
        let rows = exit_comparison(&reached(), &kvm);
        assert_eq!(
            rows,
            vec![
                ("all exits", 50, 10, Some(40)),
                ("port I/O", 9, 7, Some(2)),
                ("MMIO", 2, 2, Some(0)),
                ("hlt", 1, 1, Some(0)),
            ]
        );
    }

    #[test]
    fn fewer_kvm_exits_than_reached_petrel_has_no_difference_and_a_footnote() {
        // An emulating host counts port I/O as insn_emulation, not io_exits.
        let kvm = view(vec![vcpu(&[("exits", 12), ("insn_emulation", 7)])]);
        let rows = exit_comparison(&reached(), &kvm);
        assert_eq!(rows[1], ("port I/O", 0, 7, None));
        let text = table(&reached(), &kvm);
        assert!(text.contains("n/a*"), "{text}");
        assert!(text.contains("counted as insn_emulation"), "{text}");
        assert!(
            !text.contains("vCPU 0"),
            "one vCPU needs no columns: {text}"
        );
    }

    #[test]
    fn table_has_a_column_per_vcpu_when_there_are_several() {
        let kvm = view(vec![
            vcpu(&[("exits", 30), ("io_exits", 4), ("halt_exits", 1)]),
            vcpu(&[("exits", 20), ("io_exits", 3), ("mmio_exits", 2)]),
        ]);
        let text = table(&reached(), &kvm);
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("io_exits"))
            .unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, ["io_exits", "7", "4", "3"]);
        assert!(text.contains("vCPU 1"), "{text}");
        assert!(!text.contains("n/a*"), "{text}");
    }
}
