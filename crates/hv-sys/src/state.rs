//! Saving a paused VM's KVM state and restoring it into fresh KVM objects (snapshots).
//!
//! [`Vcpu::save_state`] and [`Vcpu::restore_state`] move everything KVM keeps for an x86 vCPU
//! (the set Firecracker saves: CPUID, MP state, registers, XSAVE, XCRs, debug registers, local
//! APIC, MSRs, pending events, TSC frequency); [`Vm::save_state`] and [`Vm::restore_state`] move
//! the in-kernel PIC, IOAPIC, PIT and the kvmclock. Guest memory is the caller's to copy.
//!
//! The order of the ioctls matters and follows api.rst and KVM's implementation; each function
//! says why.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, kvm_xsave2, CpuId,
    Msrs, Xsave, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES,
};
use serde::{Deserialize, Serialize};
use vmm_sys_util::fam::FamStruct;

use crate::{Error, Result, Vcpu, Vm};

/// IA32_TIME_STAMP_COUNTER (Intel SDM vol. 4, table 2-2): a saved vCPU state must have it.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_TSC_DEADLINE (Intel SDM vol. 4, table 2-2): restored after the TSC, see
/// [`Vcpu::restore_state`].
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// The most MSRs one `KVM_GET_MSRS`/`KVM_SET_MSRS` takes: KVM answers `E2BIG` when `nmsrs`
/// reaches `MAX_IO_MSRS` (256, `msr_io()` in arch/x86/kvm/x86.c; api.rst does not say), so one
/// less than kvm-bindings' `KVM_MAX_MSR_ENTRIES`. Seen here: a 256-entry call fails with E2BIG.
const MSRS_PER_CALL: usize = 255;

/// How far the TSC frequency of the restoring host may be from the saved one before
/// `KVM_SET_TSC_KHZ` is asked to scale it: 250 parts per million, the tolerance QEMU and
/// Firecracker use for the calibration noise between hosts of one CPU model.
const TSC_KHZ_TOLERANCE_PPM: u64 = 250;

/// Everything KVM keeps for one x86 vCPU, as [`Vcpu::save_state`] reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU index (its initial APIC id): restore into a vCPU created with the same id.
    pub id: u64,
    /// The CPUID the vCPU was given (`KVM_GET_CPUID2`), without the zeroed slots KVM pads with.
    pub cpuid: CpuId,
    /// General-purpose registers (`KVM_GET_REGS`).
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base (`KVM_GET_SREGS`).
    pub sregs: kvm_sregs,
    /// x87, SSE, AVX... state (`KVM_GET_XSAVE2`, or `KVM_GET_XSAVE` where KVM lacks it).
    pub xsave: Xsave,
    /// Extended control registers, XCR0 (`KVM_GET_XCRS`).
    pub xcrs: kvm_xcrs,
    /// The local APIC's register page (`KVM_GET_LAPIC`).
    pub lapic: kvm_lapic_state,
    /// Every MSR of `KVM_GET_MSR_INDEX_LIST` that `KVM_GET_MSRS` would read for this vCPU
    /// (TSC and kvmclock included), in the list's order with `IA32_TSC_DEADLINE` moved last.
    pub msrs: Msrs,
    /// DR0-DR3, DR6, DR7 (`KVM_GET_DEBUGREGS`).
    pub debugregs: kvm_debugregs,
    /// Pending exceptions, interrupts, NMI and SMI state (`KVM_GET_VCPU_EVENTS`).
    pub vcpu_events: kvm_vcpu_events,
    /// Runnable, halted, waiting for SIPI... (`KVM_GET_MP_STATE`).
    pub mp_state: kvm_mp_state,
    /// The guest's TSC frequency (`KVM_GET_TSC_KHZ`); `None` where KVM does not know it.
    pub tsc_khz: Option<u32>,
}

/// The VM-wide KVM state: the in-kernel interrupt controllers, the PIT and the kvmclock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    /// The master 8259 PIC (`KVM_GET_IRQCHIP`, chip 0).
    pub pic_master: kvm_irqchip,
    /// The slave 8259 PIC (chip 1).
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC (chip 2).
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT (`KVM_GET_PIT2`).
    pub pit: kvm_pit_state2,
    /// The kvmclock (`KVM_GET_CLOCK`), as read; [`Vm::restore_state`] drops its flags.
    pub clock: kvm_clock_data,
}

fn vcpu_err(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> Error {
    move |source| Error::Registers { what, source }
}

fn vm_err(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> Error {
    move |source| Error::Platform { what, source }
}

fn msrs_from(what: &'static str, entries: &[kvm_msr_entry]) -> Result<Msrs> {
    Msrs::from_entries(entries).map_err(|_| Error::TooManyEntries {
        what,
        count: entries.len(),
        max: KVM_MAX_MSR_ENTRIES,
    })
}

impl Vcpu {
    /// Reads this vCPU's whole KVM state.
    ///
    /// Call it only while the vCPU is out of `KVM_RUN` for good (paused) and, for a consistent
    /// snapshot, while every other vCPU of the VM is paused too (api.rst 4.31: vcpu events are
    /// unsafe to read while other vCPUs run). A vCPU that left `KVM_RUN` after an I/O or MMIO
    /// exit must have entered `KVM_RUN` once more (returning `EINTR` at once with
    /// `immediate_exit`) so that KVM completed that instruction (api.rst 5, `kvm_run`).
    ///
    /// The MSRs read are those of `KVM_GET_MSR_INDEX_LIST`; one that `KVM_GET_MSRS` refuses
    /// for this vCPU (a PMU or Hyper-V MSR the CPUID does not enable, say) is left out, but a
    /// state without `IA32_TSC` is an error.
    pub fn save_state(&self) -> Result<VcpuState> {
        // Order, as KVM's implementation asks (and Firecracker does):
        // - KVM_GET_MP_STATE first: it runs kvm_apic_accept_events(), which may change the
        //   vCPU and LAPIC state that the later reads return.
        // - KVM_GET_LAPIC may update the LAPIC before returning it, so after MP state.
        // - KVM_GET_VCPU_EVENTS last: the other reads may still change pending events.
        let fd = self.fd();
        let mp_state = fd.get_mp_state().map_err(vcpu_err("KVM_GET_MP_STATE"))?;
        let regs = self.regs()?;
        let sregs = self.sregs()?;
        let xsave = self.get_xsave()?;
        let xcrs = fd.get_xcrs().map_err(vcpu_err("KVM_GET_XCRS"))?;
        let debugregs = fd.get_debug_regs().map_err(vcpu_err("KVM_GET_DEBUGREGS"))?;
        let lapic = fd.get_lapic().map_err(vcpu_err("KVM_GET_LAPIC"))?;
        let tsc_khz = self.get_tsc_khz()?;
        let cpuid = self.get_cpuid()?;
        let msrs = self.get_msrs()?;
        let vcpu_events = fd
            .get_vcpu_events()
            .map_err(vcpu_err("KVM_GET_VCPU_EVENTS"))?;
        Ok(VcpuState {
            id: self.id(),
            cpuid,
            regs,
            sregs,
            xsave,
            xcrs,
            lapic,
            msrs,
            debugregs,
            vcpu_events,
            mp_state,
            tsc_khz,
        })
    }

    /// Writes a state from [`save_state`](Self::save_state) into this vCPU, which must not
    /// have run yet (a fresh vCPU of a VM whose memory, irqchip and PIT are already set up:
    /// restore the [`VmState`] first, then each vCPU). No boot set-up is needed before or after.
    ///
    /// Where the state carries a TSC frequency more than 250 ppm from this vCPU's, KVM is
    /// asked to scale the guest TSC (`KVM_SET_TSC_KHZ`); a host that cannot is an error.
    pub fn restore_state(&self, s: &VcpuState) -> Result<()> {
        // Order (api.rst and KVM's implementation; Firecracker does the same):
        // - CPUID first: later ioctls check what it allows (XSAVE features, MSRs, the BSP).
        // - TSC frequency before the TSC MSR, so the TSC is written at the guest's rate.
        // - KVM_SET_REGS clears pending exceptions, and KVM_SET_SREGS sets a pending interrupt:
        //   both before KVM_SET_VCPU_EVENTS, which restores them, last.
        // - KVM_SET_LAPIC after KVM_SET_SREGS, which sets the APIC base MSR the LAPIC lives at.
        // - KVM_SET_MSRS after KVM_SET_LAPIC: IA32_TSC_DEADLINE only sticks with the LAPIC in
        //   TSC-deadline mode; and IA32_TSC_DEADLINE after IA32_TSC, or KVM compares the
        //   deadline against a stale TSC and arms the timer wrongly.
        let fd = self.fd();
        fd.set_cpuid2(&s.cpuid)
            .map_err(vcpu_err("KVM_SET_CPUID2"))?;
        if let Some(khz) = s.tsc_khz {
            self.match_tsc_khz(khz)?;
        }
        fd.set_mp_state(s.mp_state)
            .map_err(vcpu_err("KVM_SET_MP_STATE"))?;
        self.set_regs(&s.regs)?;
        self.set_sregs(&s.sregs)?;
        self.check_xsave_size(&s.xsave)?;
        // SAFETY: KVM_SET_XSAVE reads `kvm_xsave` plus, with KVM_CAP_XSAVE2, the size that
        // capability reports, which `check_xsave_size` just made sure `s.xsave` holds. (KVM
        // copies the vCPU's own XSAVE size, which stays within what the capability reported
        // at `Vm::new` unless the process widens its guest XSTATE permissions afterwards with
        // arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM), which Petrel never does.)
        unsafe { fd.set_xsave2(&s.xsave) }.map_err(vcpu_err("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&s.xcrs).map_err(vcpu_err("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&s.debugregs)
            .map_err(vcpu_err("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&s.lapic).map_err(vcpu_err("KVM_SET_LAPIC"))?;
        self.set_msrs(s.msrs.as_slice())?;
        fd.set_vcpu_events(&s.vcpu_events)
            .map_err(vcpu_err("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    /// `KVM_GET_XSAVE2` into a buffer of the size KVM_CAP_XSAVE2 reports, or `KVM_GET_XSAVE`.
    fn get_xsave(&self) -> Result<Xsave> {
        match self.xsave2_size {
            Some(size) => {
                let extra = xsave_extra_entries(size);
                let mut xsave = Xsave::new(extra).map_err(|_| Error::TooManyEntries {
                    what: "XSAVE area",
                    count: extra,
                    max: usize::MAX,
                })?;
                // SAFETY: `xsave` holds `kvm_xsave` plus `extra` u32s, at least the `size`
                // bytes KVM_CAP_XSAVE2 says KVM_GET_XSAVE2 writes (api.rst 4.42). (That size
                // bounds the vCPU's unless the process widens its guest XSTATE permissions
                // after `Vm::new`, with arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM), which Petrel
                // never calls.)
                unsafe { self.fd().get_xsave2(&mut xsave) }.map_err(vcpu_err("KVM_GET_XSAVE2"))?;
                Ok(xsave)
            }
            None => {
                let legacy = self.fd().get_xsave().map_err(vcpu_err("KVM_GET_XSAVE"))?;
                let mut xsave = Xsave::new(0).map_err(|_| Error::TooManyEntries {
                    what: "XSAVE area",
                    count: 0,
                    max: 0,
                })?;
                // SAFETY: a wrapper of length 0 is exactly one `kvm_xsave2` whose `len` is 0;
                // only its fixed-size `kvm_xsave` is replaced.
                unsafe { xsave.as_mut_fam_struct() }.xsave = legacy;
                Ok(xsave)
            }
        }
    }

    /// An XSAVE area shorter than what KVM_SET_XSAVE will read here is refused before the call.
    fn check_xsave_size(&self, xsave: &Xsave) -> Result<()> {
        let needed = self.xsave2_size.map(xsave_extra_entries).unwrap_or(0);
        let have = xsave.as_fam_struct_ref().len();
        if have < needed {
            return Err(Error::TooManyEntries {
                what: "saved XSAVE area shorter than this host's: extra u32s needed",
                count: needed,
                max: have,
            });
        }
        Ok(())
    }

    /// `KVM_GET_TSC_KHZ`; `None` where the ioctl is unknown (no `KVM_CAP_GET_TSC_KHZ`) or KVM
    /// reports 0 (it does not know the frequency).
    fn get_tsc_khz(&self) -> Result<Option<u32>> {
        match self.fd().get_tsc_khz() {
            Ok(0) => Ok(None),
            Ok(khz) => Ok(Some(khz)),
            Err(e) if e.errno() == libc::ENOTTY || e.errno() == libc::EINVAL => Ok(None),
            Err(e) => Err(vcpu_err("KVM_GET_TSC_KHZ")(e)),
        }
    }

    fn match_tsc_khz(&self, saved: u32) -> Result<()> {
        if let Some(current) = self.get_tsc_khz()? {
            let diff = u64::from(current.abs_diff(saved));
            if diff * 1_000_000 <= u64::from(saved) * TSC_KHZ_TOLERANCE_PPM {
                return Ok(());
            }
        }
        self.fd()
            .set_tsc_khz(saved)
            .map_err(vcpu_err("KVM_SET_TSC_KHZ"))
    }

    /// `KVM_GET_CPUID2`, less the zeroed entries KVM leaves past the ones set (Firecracker's
    /// observation: the call does not shrink `nent`).
    fn get_cpuid(&self) -> Result<CpuId> {
        let mut cpuid = self
            .fd()
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(vcpu_err("KVM_GET_CPUID2"))?;
        cpuid.retain(|e| !(e.function == 0 && e.index == 0 && e.flags == 0 && e.eax == 0));
        Ok(cpuid)
    }

    /// Reads the MSRs of `KVM_GET_MSR_INDEX_LIST` in chunks of at most [`MSRS_PER_CALL`].
    fn get_msrs(&self) -> Result<Msrs> {
        let mut saved: Vec<kvm_msr_entry> = Vec::with_capacity(self.msr_index_list.len());
        let mut rest: &[u32] = &self.msr_index_list;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(MSRS_PER_CALL)];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = msrs_from("KVM_GET_MSRS chunk", &entries)?;
            let read = self
                .fd()
                .get_msrs(&mut msrs)
                .map_err(vcpu_err("KVM_GET_MSRS"))?;
            saved.extend_from_slice(&msrs.as_slice()[..read]);
            // KVM_GET_MSRS stops at the first MSR it cannot read and returns how many it read
            // (api.rst 4.18): that one is left out of the state, and reading goes on after it.
            let consumed = if read < chunk.len() { read + 1 } else { read };
            rest = &rest[consumed..];
        }
        if !saved.iter().any(|e| e.index == MSR_IA32_TSC) {
            return Err(Error::MsrNotSaved {
                id: self.id(),
                index: MSR_IA32_TSC,
                name: "IA32_TSC",
            });
        }
        // IA32_TSC_DEADLINE goes last, so that restoring writes it after IA32_TSC.
        saved.sort_by_key(|e| e.index == MSR_IA32_TSC_DEADLINE);
        msrs_from("saved MSRs", &saved)
    }

    /// Writes `entries` in order; every one must be taken.
    fn set_msrs(&self, entries: &[kvm_msr_entry]) -> Result<()> {
        // IA32_TSC_DEADLINE after IA32_TSC, whatever order the state came in.
        let (deadline, others): (Vec<kvm_msr_entry>, Vec<kvm_msr_entry>) = entries
            .iter()
            .partition(|e| e.index == MSR_IA32_TSC_DEADLINE);
        for part in [others, deadline] {
            for chunk in part.chunks(MSRS_PER_CALL) {
                let msrs = msrs_from("KVM_SET_MSRS chunk", chunk)?;
                let written = self
                    .fd()
                    .set_msrs(&msrs)
                    .map_err(vcpu_err("KVM_SET_MSRS"))?;
                if written < chunk.len() {
                    return Err(Error::MsrRefused {
                        id: self.id(),
                        index: chunk[written].index,
                        data: chunk[written].data,
                    });
                }
            }
        }
        Ok(())
    }
}

/// How many `u32`s past `kvm_xsave` an XSAVE area of `size` bytes needs.
fn xsave_extra_entries(size: usize) -> usize {
    size.saturating_sub(std::mem::size_of::<kvm_xsave>())
        .div_ceil(std::mem::size_of::<<kvm_xsave2 as FamStruct>::Entry>())
}

impl Vm {
    /// Reads the in-kernel PIC (both chips), IOAPIC, PIT and kvmclock. The VM must have them
    /// ([`setup_irqchip_and_pit`](Self::setup_irqchip_and_pit)); pause every vCPU first.
    pub fn save_state(&self) -> Result<VmState> {
        let pic_master = self.get_irqchip(KVM_IRQCHIP_PIC_MASTER)?;
        let pic_slave = self.get_irqchip(KVM_IRQCHIP_PIC_SLAVE)?;
        let ioapic = self.get_irqchip(KVM_IRQCHIP_IOAPIC)?;
        let pit = self.vm_fd().get_pit2().map_err(vm_err("KVM_GET_PIT2"))?;
        let clock = self.vm_fd().get_clock().map_err(vm_err("KVM_GET_CLOCK"))?;
        Ok(VmState {
            pic_master,
            pic_slave,
            ioapic,
            pit,
            clock,
        })
    }

    /// Writes a [`VmState`] into this VM, after
    /// [`setup_irqchip_and_pit`](Self::setup_irqchip_and_pit) and before any vCPU runs.
    ///
    /// The clock is set with no flags: `KVM_SET_CLOCK` rejects `KVM_CLOCK_TSC_STABLE` (api.rst
    /// 4.57; kernels before 5.16 reject every flag), and without `KVM_CLOCK_REALTIME` the
    /// guest's clock goes on from the saved value instead of jumping by the time the snapshot
    /// spent on disk (as Firecracker does).
    pub fn restore_state(&self, s: &VmState) -> Result<()> {
        for (chip, what) in [
            (&s.pic_master, "KVM_SET_IRQCHIP (PIC master)"),
            (&s.pic_slave, "KVM_SET_IRQCHIP (PIC slave)"),
            (&s.ioapic, "KVM_SET_IRQCHIP (IOAPIC)"),
        ] {
            self.vm_fd().set_irqchip(chip).map_err(vm_err(what))?;
        }
        self.vm_fd()
            .set_pit2(&s.pit)
            .map_err(vm_err("KVM_SET_PIT2"))?;
        let clock = kvm_clock_data {
            flags: 0,
            ..s.clock
        };
        self.vm_fd()
            .set_clock(&clock)
            .map_err(vm_err("KVM_SET_CLOCK"))
    }

    fn get_irqchip(&self, chip_id: u32) -> Result<kvm_irqchip> {
        let what = match chip_id {
            KVM_IRQCHIP_PIC_MASTER => "KVM_GET_IRQCHIP (PIC master)",
            KVM_IRQCHIP_PIC_SLAVE => "KVM_GET_IRQCHIP (PIC slave)",
            _ => "KVM_GET_IRQCHIP (IOAPIC)",
        };
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        self.vm_fd().get_irqchip(&mut chip).map_err(vm_err(what))?;
        Ok(chip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hypervisor;
    use std::sync::Arc;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// KVM, or `None` (the test skips) where there is none, unless `VMM_REQUIRE_KVM=1`: the
    /// project's rule (petrel-tests' `kvm_or_skip`).
    fn kvm_or_skip(name: &str) -> Option<Hypervisor> {
        if !std::path::Path::new("/dev/kvm").exists() {
            if std::env::var("VMM_REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("{name}: /dev/kvm is missing and VMM_REQUIRE_KVM=1");
            }
            eprintln!("SKIPPED {name}: no /dev/kvm on this machine");
            return None;
        }
        Some(Hypervisor::open().expect("open /dev/kvm"))
    }

    /// A VM with the in-kernel irqchip and vCPU 0 with KVM's supported CPUID.
    fn vm_and_vcpu(hv: &Hypervisor) -> (Vm, Vcpu) {
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut vm = Vm::new(hv).unwrap();
        vm.register_memory(&ram).unwrap();
        vm.setup_irqchip_and_pit().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        vcpu.fd()
            .set_cpuid2(&hv.supported_cpuid().unwrap())
            .unwrap();
        (vm, vcpu)
    }

    fn indices(s: &VcpuState) -> Vec<u32> {
        s.msrs.as_slice().iter().map(|e| e.index).collect()
    }

    #[test]
    fn msrs_kvm_refuses_are_left_out_across_chunks() {
        let Some(hv) = kvm_or_skip("msrs_kvm_refuses_are_left_out_across_chunks") else {
            return;
        };
        let (_vm, mut vcpu) = vm_and_vcpu(&hv);
        // 0x3 is no MSR at all (Intel SDM vol. 4): KVM_GET_MSRS stops at each one. 300 of them
        // make the list span two chunks of MSRS_PER_CALL.
        let mut list = vec![0x174, MSR_IA32_TSC_DEADLINE];
        list.extend(std::iter::repeat_n(0x3, 300));
        list.extend([MSR_IA32_TSC, 0x4b56_4d01]);
        vcpu.msr_index_list = Arc::from(list);
        let s = vcpu.save_state().unwrap();
        assert_eq!(
            indices(&s),
            vec![0x174, MSR_IA32_TSC, 0x4b56_4d01, MSR_IA32_TSC_DEADLINE],
            "refused ones left out, the deadline moved after the TSC"
        );
    }

    #[test]
    fn a_state_without_the_tsc_is_an_error() {
        let Some(hv) = kvm_or_skip("a_state_without_the_tsc_is_an_error") else {
            return;
        };
        let (_vm, mut vcpu) = vm_and_vcpu(&hv);
        vcpu.msr_index_list = Arc::from(vec![0x174, 0x3]);
        match vcpu.save_state() {
            Err(Error::MsrNotSaved { id: 0, index, .. }) => assert_eq!(index, MSR_IA32_TSC),
            other => panic!("expected MsrNotSaved, got {other:?}"),
        }
    }

    #[test]
    fn an_msr_kvm_will_not_take_fails_the_restore_by_name() {
        let Some(hv) = kvm_or_skip("an_msr_kvm_will_not_take_fails_the_restore_by_name") else {
            return;
        };
        let (_vm, vcpu) = vm_and_vcpu(&hv);
        let mut s = vcpu.save_state().unwrap();
        assert!(indices(&s).contains(&MSR_IA32_TSC));
        let mut entries = s.msrs.as_slice().to_vec();
        entries.push(kvm_msr_entry {
            index: 0x3,
            data: 7,
            ..Default::default()
        });
        s.msrs = Msrs::from_entries(&entries).unwrap();
        let (_vm2, fresh) = vm_and_vcpu(&hv);
        match fresh.restore_state(&s) {
            Err(Error::MsrRefused {
                index: 3, data: 7, ..
            }) => {}
            other => panic!("expected MsrRefused, got {other:?}"),
        }
    }

    #[test]
    fn xsave_extra_entries_round_up() {
        assert_eq!(xsave_extra_entries(4096), 0);
        assert_eq!(xsave_extra_entries(100), 0);
        assert_eq!(xsave_extra_entries(4097), 1);
        assert_eq!(xsave_extra_entries(4096 + 8192), 2048);
    }
}
