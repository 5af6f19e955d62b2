//! The state the boot vCPU starts in: what a loader computes (`petrel-loader`) and a vCPU
//! applies (`petrel-vcpu`).
//!
//! It lives here, beside the [`layout`](crate::layout) its addresses point into, because both
//! of those crates already depend on this one: the vcpu crate reaches it without depending on
//! the loader (and linux-loader), and the loader without depending on KVM types.

/// How the boot vCPU must be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// 16-bit real mode (CR0.PE clear): flat binaries, firmware-style code.
    Real,
    /// 32-bit protected mode without paging (the PVH boot protocol).
    Protected32,
    /// 64-bit long mode with the boot identity map (the Linux 64-bit boot protocol).
    Long64,
}

/// A flat mirror of `kvm_segment` (the vcpu crate converts it), so neither this crate nor the
/// loader needs KVM types. Field meanings follow the Intel SDM vol. 3, 3.4.5 (segment descriptors).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    /// Linear base address.
    pub base: u64,
    /// Limit in bytes (already scaled by the granularity bit, as `kvm_segment` wants it).
    pub limit: u32,
    /// Selector loaded in the segment register.
    pub selector: u16,
    /// Type field (4 bits): e.g. 0xb execute/read accessed code, 0x3 read/write accessed data.
    pub type_: u8,
    /// Present bit.
    pub present: u8,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Default operation size (1 = 32-bit segment).
    pub db: u8,
    /// Descriptor type (1 = code or data, 0 = system).
    pub s: u8,
    /// 64-bit code segment.
    pub l: u8,
    /// Granularity (1 = limit counted in 4 KiB units).
    pub g: u8,
    /// Available for system software.
    pub avl: u8,
}

/// Everything the vcpu crate needs to start the boot CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootCpuState {
    /// The mode the registers below are meant for.
    pub mode: CpuMode,
    /// Instruction pointer (an offset from `code.base`).
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// RSI: the zero page address for the Linux 64-bit boot protocol.
    pub rsi: u64,
    /// RBX: the `hvm_start_info` address for the PVH boot protocol.
    pub rbx: u64,
    /// RFLAGS (bit 1 is reserved and always set).
    pub rflags: u64,
    /// CR0.
    pub cr0: u64,
    /// CR3 (the page-table root when paging is on).
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// The EFER MSR.
    pub efer: u64,
    /// CS.
    pub code: Segment,
    /// DS, ES, FS, GS and SS.
    pub data: Segment,
    /// TR (a busy TSS: VM entry requires one even though the guest never switches tasks).
    pub tr: Segment,
    /// GDTR base.
    pub gdt_base: u64,
    /// GDTR limit.
    pub gdt_limit: u16,
    /// IDTR base.
    pub idt_base: u64,
    /// IDTR limit.
    pub idt_limit: u16,
}
