//! KVM's binary statistics (`KVM_GET_STATS_FD`) read through `petrel_hv_sys::StatsReader`,
//! checked against a hand-assembled guest whose exits are known, and against Petrel's own exit
//! counts. Each instruction carries its encoding and meaning; `as --32` reproduces them.

use std::sync::Arc;

use petrel_hv_sys::{host_emulates_guest_kernel, Hypervisor, StatKind, StatValue, StatsReader, Vm};
use petrel_tests::{kvm_or_skip, Recorder, TinyGuest};
use petrel_vcpu::{cpuid, setup, RunOptions, StopReason, VcpuRunner};

/// Port writes the guest makes.
const WRITES: u16 = 1000;
/// The port it writes to.
const PORT: u16 = 0x10;

/// `mov cx, WRITES; l: out PORT, al; loop l; hlt`, real mode at 0x1000.
fn port_loop() -> Vec<u8> {
    let [lo, hi] = WRITES.to_le_bytes();
    vec![
        0xb9, lo, hi, //   mov cx, WRITES  ; iterations
        0xb0, 0x2a, //     mov al, 0x2a    ; the byte written
        0xe6, PORT as u8, // l: out PORT, al ; one exit to the VMM each
        0xe2, 0xfc, //     loop l          ; dec cx, back 4 bytes to `out` while cx != 0
        0xf4, //           hlt
    ]
}

/// Lists a reader's statistics as `name (kind, unit)`, for the test log.
fn describe(r: &StatsReader) -> String {
    r.descriptors()
        .iter()
        .map(|d| {
            let unit = d.unit_label();
            if unit.is_empty() {
                format!("{} ({:?})", d.name, d.kind)
            } else {
                format!("{} ({:?}, {unit})", d.name, d.kind)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Opens a VM's statistics, or says once that this KVM has none.
fn vm_stats_or_skip(name: &str, vm: &Vm) -> Option<StatsReader> {
    match StatsReader::from_vm(vm).expect("open VM stats") {
        Some(r) => Some(r),
        None => {
            eprintln!("SKIPPED {name}: this KVM lacks KVM_CAP_BINARY_STATS_FD (Linux < 5.14)");
            None
        }
    }
}

fn new_vm(hv: &Hypervisor, guest: &TinyGuest) -> Vm {
    let mut vm = Vm::new(hv).expect("create VM");
    vm.register_memory(guest.ram.memory()).expect("memory slot");
    vm.setup_tss_and_identity_map().expect("tss");
    vm
}

#[test]
fn kvm_counts_the_exits_petrel_sees() {
    let name = "kvm_counts_the_exits_petrel_sees";
    let Some(hv) = kvm_or_skip(name) else {
        return;
    };
    let guest = TinyGuest::real_mode(&port_loop(), 1 << 20);
    let vm = new_vm(&hv, &guest);
    let vcpu = vm.create_vcpu(0).expect("vcpu");
    let mut c = hv.supported_cpuid().expect("cpuid");
    cpuid::normalize(&mut c, 0, 1);
    vcpu.fd().set_cpuid2(&c).expect("set cpuid");
    setup::apply_boot_state(&vcpu, &guest.state).expect("boot state");

    // Open the vCPU's statistics before the runner takes the vCPU.
    let Some(mut stats) = StatsReader::from_vcpu(&vcpu).expect("open vCPU stats") else {
        eprintln!("SKIPPED {name}: this KVM lacks KVM_GET_STATS_FD (Linux < 5.14)");
        return;
    };
    eprintln!("vCPU stats id {:?}: {}", stats.id(), describe(&stats));
    assert!(stats.id().ends_with("vcpu-0"), "{}", stats.id());
    let before = stats.read().expect("read vCPU stats");
    assert_eq!(before.get("io_exits"), Some(0), "no guest code has run yet");

    let io = Arc::new(Recorder::default());
    let options = RunOptions {
        max_exits: Some(u64::from(WRITES) + 100),
    };
    let mut runner = VcpuRunner::new(vcpu, io.clone(), guest.ram, options);
    let out = runner.run();
    assert_eq!(out.stop, StopReason::Halted);
    assert_eq!(io.port_writes().len(), usize::from(WRITES));
    assert_eq!(out.stats.count_of_port(PORT), u64::from(WRITES));

    let after = stats.read().expect("read vCPU stats again");
    let get = |n: &str| after.get(n).unwrap_or_else(|| panic!("no scalar {n}"));
    eprintln!(
        "KVM: exits={} io_exits={} halt_exits={} insn_emulation={}; Petrel: {} exits, {} to \
         port {PORT:#x}",
        get("exits"),
        get("io_exits"),
        get("halt_exits"),
        get("insn_emulation"),
        out.stats.total(),
        out.stats.count_of_port(PORT)
    );
    // Every exit that reached Petrel was first an exit from the guest to KVM.
    assert!(get("exits") >= u64::from(WRITES), "{after:?}");
    assert!(get("exits") >= out.stats.total(), "{after:?}");
    assert!(get("exits") >= get("io_exits"));
    if host_emulates_guest_kernel() {
        // PVM runs real-mode code in KVM's instruction emulator: each `out` is emulated (the
        // `insn_emulation` count) and reaches Petrel without passing the vendor I/O-exit
        // handler that counts `io_exits` (0 on such hosts).
        assert!(get("insn_emulation") >= u64::from(WRITES), "{after:?}");
    } else {
        assert!(get("io_exits") >= u64::from(WRITES), "{after:?}");
    }
    // Cumulative counters never go back.
    for d in stats.descriptors() {
        if let (Some(a), Some(b)) = (before.get(&d.name), after.get(&d.name)) {
            if d.kind == StatKind::Cumulative {
                assert!(b >= a, "{} went from {a} to {b}", d.name);
            }
        }
    }
    // Histograms come back with one count per bucket.
    for d in stats.descriptors().iter().filter(|d| d.kind.is_histogram()) {
        match after.value(&d.name) {
            Some(StatValue::Histogram(b)) => assert_eq!(b.len(), usize::from(d.size)),
            other => panic!("{}: {other:?}", d.name),
        }
    }
}

#[test]
fn vm_statistics_are_listed() {
    let name = "vm_statistics_are_listed";
    let Some(hv) = kvm_or_skip(name) else {
        return;
    };
    let guest = TinyGuest::real_mode(&[0xf4], 1 << 20); // hlt
    let vm = new_vm(&hv, &guest);
    let Some(mut stats) = vm_stats_or_skip(name, &vm) else {
        return;
    };
    eprintln!("VM stats id {:?}: {}", stats.id(), describe(&stats));
    assert!(stats.id().starts_with("kvm-"), "{}", stats.id());
    assert!(!stats.descriptors().is_empty());
    let snapshot = stats.read().expect("read VM stats");
    assert_eq!(snapshot.values.len(), stats.descriptors().len());
    for d in stats.descriptors() {
        assert!(snapshot.value(&d.name).is_some(), "{} has no value", d.name);
    }
    eprintln!("VM stats values: {snapshot:?}");
}
