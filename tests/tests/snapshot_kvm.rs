//! The KVM half of snapshots on real KVM: vCPU and VM state saved, restored into fresh KVM
//! objects and compared; the dirty page log; the vCPU thread's SaveState command.
//! Each instruction carries its encoding and meaning; `as --16`/`as --64` reproduce them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use petrel_guest_mem::GuestRam;
use petrel_hv_sys::kvm_bindings::{
    kvm_clock_data, kvm_msr_entry, KVM_MP_STATE_RUNNABLE, KVM_PIT_FLAGS_HPET_LEGACY,
};
use petrel_hv_sys::{Error as HvError, Hypervisor, Vcpu, VcpuState as SavedState, Vm, VmExit};
use petrel_loader::BootCpuState;
use petrel_tests::{kvm_or_skip, Access, Recorder, TinyGuest};
use petrel_vcpu::{
    cpuid, setup, spawn, Error as VcpuError, RunOptions, StopReason, VcpuCommand, VcpuHandle,
    VcpuRunner, VcpuState,
};
use vmm_sys_util::eventfd::EventFd;

/// A counting loop that reports each count and then reads a port. KVM completes a port read
/// (stores the value, moves RIP past the `in`) only when the vCPU enters KVM_RUN again: a state
/// saved before that would run the `in` a second time after restore, which the exact access
/// logs below would show.
const COUNTER: [u8; 9] = [
    0xe7, 0x10, // 0x1000: out 0x10, ax   ; report the count
    0xe4, 0x11, // 0x1002: in al, 0x11    ; a read the VMM answers
    0x43, //       0x1004: inc bx         ; count
    0x89, 0xd8, // 0x1005: mov ax, bx     ; the next count to report
    0xeb, 0xf7, // 0x1007: jmp -9         ; back to the out at 0x1000
];
const COUNTER_START: u64 = 0x1000;
/// What the VMM answers on port 0x11.
const COUNTER_ANSWER: u8 = 0x5a;

/// A VM over `ram` the way Petrel's VMM builds one: memory, TSS, in-kernel irqchip and PIT
/// (a vCPU's LAPIC state exists only with the in-kernel irqchip).
fn platform_vm(hv: &Hypervisor, ram: &GuestRam) -> Vm {
    let mut vm = Vm::new(hv).expect("create VM");
    vm.register_memory(ram.memory()).expect("memory slot");
    vm.setup_tss_and_identity_map().expect("tss");
    vm.setup_irqchip_and_pit().expect("irqchip and PIT");
    vm
}

/// vCPU 0 set up for boot as the VMM does it.
fn boot_vcpu(hv: &Hypervisor, vm: &Vm, state: &BootCpuState) -> Vcpu {
    let vcpu = vm.create_vcpu(0).expect("vcpu");
    let mut c = hv.supported_cpuid().expect("cpuid");
    cpuid::normalize(&mut c, 0, 1);
    vcpu.fd().set_cpuid2(&c).expect("set cpuid");
    setup::apply_boot_state(&vcpu, state).expect("boot state");
    setup::setup_boot_msrs(&vcpu).expect("boot MSRs");
    setup::setup_fpu(&vcpu).expect("fpu");
    setup::setup_lapic_lints(&vcpu).expect("lapic lints");
    vcpu
}

/// A copy of `ram`'s bytes in new guest RAM of the same size.
fn copy_ram(ram: &GuestRam) -> GuestRam {
    let mut bytes = vec![0u8; ram.size() as usize];
    ram.read(0, &mut bytes).expect("read guest RAM");
    let copy = GuestRam::new(ram.size()).expect("guest RAM");
    copy.write(0, &bytes).expect("write guest RAM");
    copy
}

fn counter_io() -> Arc<Recorder> {
    Arc::new(Recorder {
        port_answers: vec![(0x11, COUNTER_ANSWER)],
        ..Default::default()
    })
}

/// The accesses the counter makes, from its `from`-th on, `len` of them: write 0, read, write
/// 1, read...
fn counter_log(from: usize, len: usize) -> Vec<Access> {
    (from..from + len)
        .map(|i| {
            if i % 2 == 0 {
                Access::PioWrite(0x10, ((i / 2) as u16).to_le_bytes().to_vec())
            } else {
                Access::PioRead(0x11, vec![COUNTER_ANSWER])
            }
        })
        .collect()
}

fn spawn_runner(
    vcpu: Vcpu,
    io: Arc<Recorder>,
    ram: GuestRam,
    max_exits: Option<u64>,
) -> VcpuHandle {
    let runner = VcpuRunner::new(vcpu, io, ram, RunOptions { max_exits });
    spawn(runner, EventFd::new(0).expect("eventfd")).expect("vCPU thread")
}

fn wait_for_accesses(io: &Recorder, at_least: usize) {
    let start = Instant::now();
    while io.log().len() < at_least {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the guest made only {} accesses",
            io.log().len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn pause(handle: &VcpuHandle) {
    handle.send(VcpuCommand::Pause).unwrap();
    let acked = handle.wait_for(Duration::from_secs(5), |s| s == VcpuState::Paused);
    assert_eq!(acked, VcpuState::Paused, "the pause is acknowledged");
}

/// The counter paused after `n` accesses: a saved state has every one of them completed, so
/// the registers say exactly how far it got.
fn assert_counter_state_after(s: &SavedState, n: usize) {
    let (rip, bx) = (s.regs.rip, s.regs.rbx as u16);
    let writes = n.div_ceil(2) as u16;
    let ok = if n % 2 == 1 {
        // The last access was the write of count `writes - 1`: the `in` comes next.
        rip == COUNTER_START + 2 && bx == writes - 1
    } else {
        // The last access was a read, completed: RIP is past the `in`, somewhere in the loop.
        (rip == COUNTER_START + 4 && bx == writes - 1)
            || ([COUNTER_START + 5, COUNTER_START + 7, COUNTER_START].contains(&rip)
                && bx == writes)
    };
    assert!(ok, "saved rip {rip:#x} bx {bx} after {n} accesses");
}

#[test]
fn a_counting_guest_goes_on_counting_in_a_new_vm() {
    let Some(hv) = kvm_or_skip("a_counting_guest_goes_on_counting_in_a_new_vm") else {
        return;
    };
    let ram = GuestRam::new(1 << 20).expect("guest RAM");
    let boot = petrel_loader::load_raw(&ram, &COUNTER, COUNTER_START, None).expect("load");
    let vm = platform_vm(&hv, &ram);
    let vcpu = boot_vcpu(&hv, &vm, &boot);
    let io = counter_io();
    let mut handle = spawn_runner(vcpu, io.clone(), ram.clone(), None);

    wait_for_accesses(&io, 20);
    pause(&handle);
    let before = io.log();
    let n = before.len();
    assert_eq!(before, counter_log(0, n));
    let saved = handle
        .save_state(Duration::from_secs(5))
        .expect("save vCPU");
    assert_counter_state_after(&saved, n);
    let vm_saved = vm.save_state().expect("save VM");
    let memory = copy_ram(&ram);
    handle.send(VcpuCommand::Stop).unwrap();
    handle.join(Duration::from_secs(5)).expect("stops");
    drop(vm);

    // Through serde, as a snapshot file would carry it.
    let json = serde_json::to_string(&saved).expect("serialize");
    let saved: SavedState = serde_json::from_str(&json).expect("deserialize");

    let vm = platform_vm(&hv, &memory);
    vm.restore_state(&vm_saved).expect("restore VM");
    let vcpu = vm.create_vcpu(0).expect("vcpu");
    vcpu.restore_state(&saved).expect("restore vCPU");
    let io = counter_io();
    let mut handle = spawn_runner(vcpu, io.clone(), memory, Some(6));
    let out = handle.join(Duration::from_secs(20)).expect("runs 6 exits");
    assert_eq!(out.stop, StopReason::ExitLimit(6));
    // Exactly the next six accesses: none repeated (a pending `in` run twice), none lost.
    assert_eq!(io.log(), counter_log(n, 6));
}

/// Everything but the TSC, which moves on while the state is restored.
fn msrs_but_tsc(s: &SavedState) -> Vec<(u32, u64)> {
    s.msrs
        .as_slice()
        .iter()
        .filter(|e| e.index != petrel_hv_sys::MSR_IA32_TSC)
        .map(|e: &kvm_msr_entry| (e.index, e.data))
        .collect()
}

fn tsc(s: &SavedState) -> u64 {
    s.msrs
        .as_slice()
        .iter()
        .find(|e| e.index == petrel_hv_sys::MSR_IA32_TSC)
        .expect("the TSC is saved")
        .data
}

#[test]
fn long_mode_state_survives_a_round_trip() {
    let Some(hv) = kvm_or_skip("long_mode_state_survives_a_round_trip") else {
        return;
    };
    let code = [
        0xe7, 0x10, // out 0x10, eax   ; report eax, set before the save
        0xeb, 0xfe, // jmp $           ; then spin
    ];
    let guest = TinyGuest::long_mode(&code);
    let vm = platform_vm(&hv, &guest.ram);
    let vcpu = boot_vcpu(&hv, &vm, &guest.state);
    let mut regs = vcpu.regs().unwrap();
    regs.rax = 0x1234_5678;
    vcpu.set_regs(&regs).unwrap();
    let first = vcpu.save_state().expect("save");
    assert_eq!(first.mp_state.mp_state, KVM_MP_STATE_RUNNABLE);
    assert_eq!(
        first.sregs.efer & 0x500,
        0x500,
        "long mode is saved (LME|LMA)"
    );

    let memory = copy_ram(&guest.ram);
    let vm2 = platform_vm(&hv, &memory);
    let vcpu2 = vm2.create_vcpu(0).expect("vcpu");
    vcpu2.restore_state(&first).expect("restore");
    let second = vcpu2.save_state().expect("save again");

    assert_eq!(second.regs, first.regs);
    assert_eq!(second.sregs, first.sregs);
    assert_eq!(second.xcrs, first.xcrs);
    assert_eq!(second.debugregs, first.debugregs);
    assert_eq!(second.mp_state, first.mp_state);
    assert_eq!(second.vcpu_events, first.vcpu_events);
    assert_eq!(second.cpuid, first.cpuid);
    assert_eq!(second.tsc_khz, first.tsc_khz);
    assert_eq!(
        second.lapic.regs.map(|b| b as u8),
        first.lapic.regs.map(|b| b as u8),
        "LAPIC register page"
    );
    assert_eq!(
        second.xsave.as_fam_struct_ref().xsave.region,
        first.xsave.as_fam_struct_ref().xsave.region
    );
    assert_eq!(msrs_but_tsc(&second), msrs_but_tsc(&first));
    // The TSC goes on from the saved value, not from the new vCPU's zero.
    let (t1, t2) = (tsc(&first), tsc(&second));
    assert!(t2 >= t1, "TSC went back: {t1} -> {t2}");

    // The restored vCPU runs in long mode with no boot set-up.
    let io = Arc::new(Recorder::default());
    let mut handle = spawn_runner(vcpu2, io.clone(), memory, Some(1));
    let out = handle.join(Duration::from_secs(20)).expect("runs");
    assert_eq!(out.stop, StopReason::ExitLimit(1));
    assert_eq!(io.port_writes(), vec![(0x10, vec![0x78, 0x56, 0x34, 0x12])]);
    drop(vm);
}

#[test]
fn vm_state_survives_a_round_trip() {
    let Some(hv) = kvm_or_skip("vm_state_survives_a_round_trip") else {
        return;
    };
    let ram = GuestRam::new(1 << 20).expect("guest RAM");
    let vm = platform_vm(&hv, &ram);
    // Move every part away from its reset state, so the round trip shows it was carried.
    let mut s = vm.save_state().expect("save");
    // SAFETY: `kvm_irqchip.chip` is a union of plain-data views of the same bytes (any bit
    // pattern is valid); chip 0 and 1 are PICs, chip 2 the IOAPIC (api.rst 4.26).
    unsafe {
        s.pic_master.chip.pic.imr = 0xfb;
        s.pic_master.chip.pic.irq_base = 0x20;
        s.pic_slave.chip.pic.imr = 0xfe;
        s.pic_slave.chip.pic.irq_base = 0x28;
        s.ioapic.chip.ioapic.id = 3;
        s.ioapic.chip.ioapic.redirtbl[4].bits = 0x0000_0000_0000_0034;
    }
    s.pit.channels[0].count = 0x1234;
    s.pit.channels[0].mode = 2;
    s.pit.flags = KVM_PIT_FLAGS_HPET_LEGACY;
    s.clock = kvm_clock_data {
        clock: 5_000_000_000_000,
        ..s.clock
    };
    vm.restore_state(&s).expect("restore into the first VM");
    let first = vm.save_state().expect("save");

    let vm2 = platform_vm(&hv, &GuestRam::new(1 << 20).expect("guest RAM"));
    vm2.restore_state(&first).expect("restore into a new VM");
    let second = vm2.save_state().expect("save again");

    let bytes = |c: &petrel_hv_sys::kvm_bindings::kvm_irqchip| {
        // SAFETY: as above; `dummy` views all 512 bytes of the union.
        unsafe { c.chip.dummy.map(|b| b as u8) }
    };
    assert_eq!(bytes(&second.pic_master), bytes(&first.pic_master));
    assert_eq!(bytes(&second.pic_slave), bytes(&first.pic_slave));
    assert_eq!(bytes(&second.ioapic), bytes(&first.ioapic));
    // SAFETY: as above.
    unsafe {
        assert_eq!(second.pic_master.chip.pic.imr, 0xfb);
        assert_eq!(second.ioapic.chip.ioapic.redirtbl[4].bits, 0x34);
    }
    assert_eq!(second.pit.flags, first.pit.flags);
    for (a, b) in first.pit.channels.iter().zip(second.pit.channels.iter()) {
        // Everything but the load time, which KVM_SET_PIT2 sets to "now".
        assert_eq!(
            (
                a.count,
                a.mode,
                a.gate,
                a.rw_mode,
                a.read_state,
                a.write_state,
                a.bcd
            ),
            (
                b.count,
                b.mode,
                b.gate,
                b.rw_mode,
                b.read_state,
                b.write_state,
                b.bcd
            )
        );
    }
    assert_eq!(second.pit.channels[0].count, 0x1234);
    // The clock goes on from the saved value (5000 s), not from the new VM's 0.
    let (c1, c2) = (first.clock.clock, second.clock.clock);
    assert!(
        c2 >= c1 && c2 - c1 < 10_000_000_000,
        "clock {c1} ns saved, {c2} ns after restore"
    );
}

fn dirty_page_numbers(bitmaps: &[Vec<u64>]) -> Vec<Vec<u64>> {
    bitmaps
        .iter()
        .map(|words| {
            (0..words.len() as u64 * 64)
                .filter(|&i| words[(i / 64) as usize] & (1 << (i % 64)) != 0)
                .collect()
        })
        .collect()
}

#[test]
fn the_dirty_log_reports_exactly_the_pages_the_guest_wrote() {
    let Some(hv) = kvm_or_skip("the_dirty_log_reports_exactly_the_pages_the_guest_wrote") else {
        return;
    };
    let code = [
        0xc6, 0x06, 0x00, 0x50, 0x01, // mov byte [0x5000], 1   ; page 5
        0xc6, 0x06, 0x34, 0x72, 0x02, // mov byte [0x7234], 2   ; page 7
        0xe6, 0x10, //                   out 0x10, al           ; first stop
        0xc6, 0x06, 0xff, 0x9f, 0x03, // mov byte [0x9fff], 3   ; page 9
        0xe6, 0x11, //                   out 0x11, al           ; second stop
        0xeb, 0xfe, //                   jmp $
    ];
    // Real mode at 0x1000 (page 1, only read): no stack, no other guest writes. No irqchip,
    // so that no in-kernel device writes guest memory either.
    let guest = TinyGuest::real_mode(&code, 1 << 20);
    let mut vm = Vm::new(&hv).expect("create VM");
    vm.register_memory(guest.ram.memory()).expect("memory slot");
    vm.setup_tss_and_identity_map().expect("tss");
    let mut vcpu = vm.create_vcpu(0).expect("vcpu");
    let mut c = hv.supported_cpuid().expect("cpuid");
    cpuid::normalize(&mut c, 0, 1);
    vcpu.fd().set_cpuid2(&c).expect("set cpuid");
    setup::apply_boot_state(&vcpu, &guest.state).expect("boot state");

    assert!(matches!(vm.dirty_pages(), Err(HvError::DirtyLoggingOff)));
    vm.set_dirty_logging(true).expect("dirty logging on");
    assert!(vm.dirty_logging());
    assert_eq!(
        dirty_page_numbers(&vm.dirty_pages().unwrap()),
        vec![Vec::<u64>::new()]
    );

    let port_of = |vcpu: &mut Vcpu| match vcpu.run().expect("run") {
        VmExit::IoOut { port, .. } => port,
        other => panic!("unexpected exit {other:?}"),
    };
    assert_eq!(port_of(&mut vcpu), 0x10);
    let first = vm.dirty_pages().expect("dirty log");
    assert_eq!(first.len(), 1, "one slot");
    assert_eq!(first[0].len(), 256 / 64, "1 MiB of 4 KiB pages, 64 a word");
    assert_eq!(dirty_page_numbers(&first), vec![vec![5, 7]]);
    // Reading the log cleared it.
    assert_eq!(
        dirty_page_numbers(&vm.dirty_pages().unwrap()),
        vec![Vec::<u64>::new()]
    );

    assert_eq!(port_of(&mut vcpu), 0x11);
    assert_eq!(
        dirty_page_numbers(&vm.dirty_pages().unwrap()),
        vec![vec![9]]
    );

    vm.set_dirty_logging(false).expect("dirty logging off");
    assert!(matches!(vm.dirty_pages(), Err(HvError::DirtyLoggingOff)));
    let mut b = [0u8; 1];
    guest.ram.read(0x9fff, &mut b).unwrap();
    assert_eq!(b, [3], "the writes reached guest RAM");
}

#[test]
fn save_state_answers_only_while_paused() {
    let Some(hv) = kvm_or_skip("save_state_answers_only_while_paused") else {
        return;
    };
    let ram = GuestRam::new(1 << 20).expect("guest RAM");
    let boot = petrel_loader::load_raw(&ram, &COUNTER, COUNTER_START, None).expect("load");
    let vm = platform_vm(&hv, &ram);
    let vcpu = boot_vcpu(&hv, &vm, &boot);
    let io = counter_io();
    let mut handle = spawn_runner(vcpu, io.clone(), ram, None);

    wait_for_accesses(&io, 5);
    match handle.save_state(Duration::from_secs(5)) {
        Err(VcpuError::NotPaused { id: 0, state }) => assert_eq!(state, VcpuState::Running),
        other => panic!("a running vCPU must refuse: {other:?}"),
    }

    pause(&handle);
    let n = io.log().len();
    let saved = handle
        .save_state(Duration::from_secs(5))
        .expect("paused: saved");
    assert_eq!(saved.id, 0);
    assert_counter_state_after(&saved, n);
    // Saving does not disturb the paused vCPU: a second save reads the same registers.
    let again = handle
        .save_state(Duration::from_secs(5))
        .expect("saved again");
    assert_eq!(again.regs, saved.regs);
    assert_eq!(io.log().len(), n, "no exit while paused");

    handle.send(VcpuCommand::Resume).unwrap();
    wait_for_accesses(&io, n + 5);
    handle.send(VcpuCommand::Stop).unwrap();
    let out = handle.join(Duration::from_secs(5)).expect("stops");
    assert_eq!(out.stop, StopReason::Requested);
    let log = io.log();
    assert_eq!(log, counter_log(0, log.len()), "no access lost or repeated");

    match handle.save_state(Duration::from_millis(200)) {
        Err(VcpuError::NoReply { id: 0, .. }) => {}
        other => panic!("an exited vCPU cannot answer: {other:?}"),
    }
    drop(vm);
}
