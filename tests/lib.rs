//! Helpers for Petrel's tests that run tiny guests on real KVM.
//!
//! A test that finds no `/dev/kvm` prints that it skipped and passes, unless `VMM_REQUIRE_KVM=1`
//! (set in CI), in which case it fails: see [`kvm_or_skip`].

use std::path::Path;
use std::sync::{Arc, Mutex};

use petrel_guest_mem::GuestRam;
use petrel_hv_sys::{Hypervisor, Vm};
use petrel_loader::{gdt, paging, BootCpuState, CpuMode};
use petrel_vcpu::{
    cpuid, setup, spawn, IoHandler, IoOutcome, RunOptions, VcpuCommand, VcpuHandle, VcpuOutcome,
    VcpuRunner,
};
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// The project's rule for tests that need KVM: `true` when `/dev/kvm` exists; otherwise the
/// test `name` prints that it skipped and gets `false`, or, with `VMM_REQUIRE_KVM=1` (as in
/// CI), fails.
pub fn kvm_present_or_skip(name: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    if std::env::var("VMM_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("{name}: /dev/kvm is missing and VMM_REQUIRE_KVM=1");
    }
    eprintln!("SKIPPED {name}: no /dev/kvm on this machine (set VMM_REQUIRE_KVM=1 to fail)");
    false
}

/// Opens KVM for test `name`, or explains the skip (see [`kvm_present_or_skip`]).
pub fn kvm_or_skip(name: &str) -> Option<Hypervisor> {
    if !kvm_present_or_skip(name) {
        return None;
    }
    Some(Hypervisor::open().unwrap_or_else(|e| panic!("{name}: cannot open /dev/kvm: {e}")))
}

/// One access a tiny guest made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A port write.
    PioWrite(u16, Vec<u8>),
    /// A port read, with the bytes the guest received.
    PioRead(u16, Vec<u8>),
    /// An MMIO write.
    MmioWrite(u64, Vec<u8>),
    /// An MMIO read, with the bytes the guest received.
    MmioRead(u64, Vec<u8>),
}

/// An [`IoHandler`] that records every access and answers reads from a fixed table.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Accesses in order.
    pub accesses: Mutex<Vec<Access>>,
    /// Byte answered for reads of a port; ports not listed are left at 0xff (unclaimed).
    pub port_answers: Vec<(u16, u8)>,
    /// Byte answered for MMIO reads anywhere.
    pub mmio_answer: Option<u8>,
}

impl Recorder {
    /// The accesses so far.
    pub fn log(&self) -> Vec<Access> {
        self.accesses.lock().unwrap().clone()
    }

    /// The port writes so far, as (port, bytes).
    pub fn port_writes(&self) -> Vec<(u16, Vec<u8>)> {
        self.log()
            .into_iter()
            .filter_map(|a| match a {
                Access::PioWrite(p, d) => Some((p, d)),
                _ => None,
            })
            .collect()
    }
}

impl IoHandler for Recorder {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if let Some((_, v)) = self.port_answers.iter().find(|(p, _)| *p == port) {
            data.fill(*v);
        }
        self.accesses
            .lock()
            .unwrap()
            .push(Access::PioRead(port, data.to_vec()));
    }
    fn pio_write(&self, port: u16, data: &[u8]) -> IoOutcome {
        self.accesses
            .lock()
            .unwrap()
            .push(Access::PioWrite(port, data.to_vec()));
        IoOutcome::Continue
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if let Some(v) = self.mmio_answer {
            data.fill(v);
        }
        self.accesses
            .lock()
            .unwrap()
            .push(Access::MmioRead(addr, data.to_vec()));
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) -> IoOutcome {
        self.accesses
            .lock()
            .unwrap()
            .push(Access::MmioWrite(addr, data.to_vec()));
        IoOutcome::Continue
    }
}

/// A tiny guest: RAM, code, and how to start the CPU.
#[derive(Debug)]
pub struct TinyGuest {
    /// Guest RAM.
    pub ram: GuestRam,
    /// The boot CPU state.
    pub state: BootCpuState,
    /// Registers to preset, as (rax, rbx).
    pub rax_rbx: Option<(u64, u64)>,
    /// Stop after this many exits.
    pub max_exits: Option<u64>,
    /// How long it may run before the test kicks it out with a stop command.
    pub deadline: Duration,
}

impl TinyGuest {
    /// 16-bit real-mode `code` loaded at 0x1000 in `ram_size` bytes of RAM.
    pub fn real_mode(code: &[u8], ram_size: u64) -> Self {
        let ram = GuestRam::new(ram_size).expect("guest RAM");
        let state = petrel_loader::load_raw(&ram, code, 0x1000, None).expect("load");
        TinyGuest {
            ram,
            state,
            rax_rbx: None,
            max_exits: Some(1000),
            deadline: Duration::from_secs(20),
        }
    }

    /// 64-bit `code` at 1 MiB in 4 MiB of RAM, with the loader's identity map (2 MiB pages),
    /// GDT and an empty IDT.
    pub fn long_mode(code: &[u8]) -> Self {
        let ram = GuestRam::new(4 << 20).expect("guest RAM");
        ram.write(0x10_0000, code).expect("code");
        let cr3 = paging::setup_identity_map(&ram).expect("page tables");
        let segs = gdt::write_gdt_and_idt(&ram, CpuMode::Long64).expect("gdt");
        let state = BootCpuState {
            mode: CpuMode::Long64,
            rip: 0x10_0000,
            rsp: 0x20_0000,
            rsi: 0,
            rbx: 0,
            rflags: 0x2,
            // PE | ET | NE | PG (Intel SDM vol. 3A, 2.5).
            cr0: 0x8000_0031,
            cr3,
            // PAE.
            cr4: 0x20,
            // LME | LMA.
            efer: 0x500,
            code: segs.code,
            data: segs.data,
            tr: segs.tr,
            gdt_base: segs.gdt_base,
            gdt_limit: segs.gdt_limit,
            idt_base: segs.idt_base,
            idt_limit: segs.idt_limit,
        };
        TinyGuest {
            ram,
            state,
            rax_rbx: None,
            max_exits: Some(1000),
            deadline: Duration::from_secs(20),
        }
    }

    /// Starts the guest's vCPU on its own thread with `io`; returns the VM (keep it while the
    /// vCPU runs) and the vCPU's handle.
    pub fn spawn(self, hv: &Hypervisor, io: Arc<Recorder>) -> (Vm, VcpuHandle) {
        let mut vm = Vm::new(hv).expect("create VM");
        vm.register_memory(self.ram.memory()).expect("memory slot");
        vm.setup_tss_and_identity_map().expect("tss");
        let vcpu = vm.create_vcpu(0).expect("vcpu");
        let mut c = hv.supported_cpuid().expect("cpuid");
        cpuid::normalize(&mut c, 0, 1);
        vcpu.fd().set_cpuid2(&c).expect("set cpuid");
        setup::apply_boot_state(&vcpu, &self.state).expect("boot state");
        if let Some((rax, rbx)) = self.rax_rbx {
            let mut r = vcpu.regs().unwrap();
            r.rax = rax;
            r.rbx = rbx;
            vcpu.set_regs(&r).unwrap();
        }
        let options = RunOptions {
            max_exits: self.max_exits,
        };
        let runner = VcpuRunner::new(vcpu, io, self.ram, options);
        let exited = EventFd::new(0).expect("eventfd");
        (vm, spawn(runner, exited).expect("vCPU thread"))
    }

    /// Runs the guest on its own thread with `io` until it stops.
    pub fn run(self, hv: &Hypervisor, io: Arc<Recorder>) -> VcpuOutcome {
        let deadline = self.deadline;
        let (_vm, mut handle) = self.spawn(hv, io);
        if let Some(outcome) = handle.join(deadline) {
            return outcome;
        }
        // The guest is still running (spinning without exits): kick it out and stop it.
        handle.send(VcpuCommand::Stop).expect("kick");
        handle
            .join(Duration::from_secs(5))
            .expect("a kicked vCPU stops within 5 s")
    }
}
