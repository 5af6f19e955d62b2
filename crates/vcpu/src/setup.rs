//! Putting a vCPU in its boot state: registers from the loader's [`BootCpuState`], boot MSRs,
//! the FPU, and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_segment, Msrs};
use petrel_guest_mem::boot_cpu::{BootCpuState, CpuMode, Segment};
use petrel_hv_sys::Vcpu;

use crate::{Error, Result};

/// IA32_SYSENTER_CS (Intel SDM vol. 4, table 2-2).
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_STAR (SYSCALL segments).
pub const MSR_STAR: u32 = 0xc000_0081;
/// IA32_LSTAR (64-bit SYSCALL target).
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// IA32_CSTAR (compatibility-mode SYSCALL target).
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// IA32_FMASK (SYSCALL RFLAGS mask).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// IA32_KERNEL_GS_BASE.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_TIME_STAMP_COUNTER.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MISC_ENABLE bit 0: fast-string operations enabled.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRR_DEF_TYPE: bit 11 enables MTRRs, type 6 is write-back (Intel SDM vol. 3A, 11.11.2.1).
pub const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// x87 control word after FNINIT (Intel SDM vol. 1, 8.1.5): all exceptions masked.
pub const FPU_CONTROL_WORD_DEFAULT: u16 = 0x37f;
/// MXCSR at reset (Intel SDM vol. 1, 10.2.3): all SIMD exceptions masked.
pub const MXCSR_DEFAULT: u32 = 0x1f80;

/// Local APIC LVT LINT0 register offset (Intel SDM vol. 3A, table 11-1).
pub const APIC_LVT_LINT0: usize = 0x350;
/// Local APIC LVT LINT1 register offset.
pub const APIC_LVT_LINT1: usize = 0x360;
/// LVT delivery mode ExtINT (bits 10:8 = 111b): the 8259 PIC's interrupts come through LINT0.
pub const APIC_MODE_EXTINT: u32 = 0x7;
/// LVT delivery mode NMI (100b).
pub const APIC_MODE_NMI: u32 = 0x4;

/// Converts the loader's flat segment into KVM's.
pub fn kvm_segment_from(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present,
        dpl: s.dpl,
        db: s.db,
        s: s.s,
        l: s.l,
        g: s.g,
        avl: s.avl,
        unusable: u8::from(s.present == 0),
        padding: 0,
    }
}

/// Applies the boot CPU state: segments, control registers, EFER, descriptor tables and the
/// general-purpose registers the boot protocol defines.
pub fn apply_boot_state(vcpu: &Vcpu, state: &BootCpuState) -> Result<()> {
    let mut sregs = vcpu.sregs()?;
    let code = kvm_segment_from(&state.code);
    let data = kvm_segment_from(&state.data);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    // A usable busy TSS: VM entry on VMX requires one, even for a guest that never switches
    // tasks (Intel SDM vol. 3C, 26.3.1.2).
    sregs.tr = kvm_segment_from(&state.tr);
    if state.mode != CpuMode::Real {
        sregs.gdt.base = state.gdt_base;
        sregs.gdt.limit = state.gdt_limit;
        sregs.idt.base = state.idt_base;
        sregs.idt.limit = state.idt_limit;
    }
    sregs.cr0 = state.cr0;
    sregs.cr3 = state.cr3;
    sregs.cr4 = state.cr4;
    sregs.efer = state.efer;
    vcpu.set_sregs(&sregs)?;

    let mut regs = vcpu.regs()?;
    regs.rip = state.rip;
    regs.rsp = state.rsp;
    regs.rbp = state.rsp;
    regs.rsi = state.rsi;
    regs.rbx = state.rbx;
    regs.rflags = state.rflags | 0x2;
    vcpu.set_regs(&regs)?;
    Ok(())
}

/// Writes the MSRs a booting x86 kernel expects in a known state.
pub fn setup_boot_msrs(vcpu: &Vcpu) -> Result<()> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Msrs { written: 0 })?;
    let written = vcpu.fd().set_msrs(&msrs).map_err(|e| Error::Setup {
        what: "KVM_SET_MSRS",
        source: e,
    })?;
    if written != entries.len() {
        return Err(Error::Msrs { written });
    }
    Ok(())
}

/// Sets the x87 and SSE control words to their post-FNINIT values.
pub fn setup_fpu(vcpu: &Vcpu) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: FPU_CONTROL_WORD_DEFAULT,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    };
    vcpu.fd().set_fpu(&fpu).map_err(|e| Error::Setup {
        what: "KVM_SET_FPU",
        source: e,
    })
}

/// Wires LINT0 to ExtINT (the PIC) and LINT1 to NMI, as a PC's firmware leaves them; needs the
/// in-kernel irqchip.
pub fn setup_lapic_lints(vcpu: &Vcpu) -> Result<()> {
    let mut lapic = vcpu.fd().get_lapic().map_err(|e| Error::Setup {
        what: "KVM_GET_LAPIC",
        source: e,
    })?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT_LINT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT_LINT1, APIC_MODE_NMI);
    vcpu.fd().set_lapic(&lapic).map_err(|e| Error::Setup {
        what: "KVM_SET_LAPIC",
        source: e,
    })
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let value = u32::from_le_bytes(bytes);
    // Delivery mode is bits 10:8 (Intel SDM vol. 3A, figure 11-8).
    let value = (value & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_delivery_mode_is_set_without_touching_other_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT_LINT0] = 0x20;
        regs[APIC_LVT_LINT0 + 2] = 0x01; // mask bit 16
        set_lvt_mode(&mut regs, APIC_LVT_LINT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT_LINT0] as u8, 0x20);
        assert_eq!(regs[APIC_LVT_LINT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT_LINT0 + 2] as u8, 0x01);
    }

    #[test]
    fn absent_segment_is_unusable() {
        let s = kvm_segment_from(&Segment::default());
        assert_eq!(s.unusable, 1);
        let s = kvm_segment_from(&Segment {
            present: 1,
            ..Default::default()
        });
        assert_eq!(s.unusable, 0);
    }
}
