//! The x86_64 guest-physical memory layout Petrel uses, in one place.
//!
//! Low memory follows the PC conventions a Linux guest expects (the boot protocol in
//! `Documentation/arch/x86/boot.rst`, the e820 map, the MP specification). RAM starts at 0 and
//! is split around a 32-bit MMIO gap just below 4 GiB, the way Firecracker lays out its guests:
//!
//! ```text
//! 0x0000_0000 ┬ real-mode IVT / BDA
//! 0x0000_0500 │ GDT          (GDT_START)
//! 0x0000_0520 │ IDT          (IDT_START)
//! 0x0000_7000 │ zero page    (ZERO_PAGE_START, struct boot_params)
//! 0x0000_8ff0 │ boot stack   (BOOT_STACK_POINTER, grows down)
//! 0x0000_9000 │ PML4, PDPT, 4 PDs (PML4_START .. PD_START + 4 pages)
//! 0x0002_0000 │ kernel command line (CMDLINE_START, CMDLINE_MAX_SIZE)
//! 0x0009_fc00 │ EBDA: MP table (EBDA_START)
//! 0x000a_0000 ┼ legacy VGA / BIOS hole (not RAM in e820)
//! 0x000e_0000 │ ACPI: RSDP, then XSDT, FADT, MADT, DSDT (ACPI_START, e820 "ACPI")
//! 0x000e_f000 │ VMGenID buffer, 16 bytes in its own page (VMGENID_START, e820 "reserved")
//! 0x000f_0000 │ rest of the BIOS area: free (ELF headers segments of kernels may go here)
//! 0x0010_0000 ┼ kernel (HIMEM_START)
//!        ...  │ RAM
//! 0xd000_0000 ┼ 32-bit MMIO gap (MMIO32_START): boot-timer byte, virtio-mmio windows
//! 0xfec0_0000 │ IOAPIC        (IOAPIC_START)
//! 0xfee0_0000 │ local APIC    (APIC_START)
//! 0xfffb_c000 │ KVM identity-map page, then the 3-page TSS (petrel-hv-sys places them)
//! 0x1_0000_0000 ┼ RAM above 4 GiB, if the guest has more than fits below the gap
//! ```

/// First address of the guest's RAM.
pub const RAM_START: u64 = 0;

/// Where the GDT lives (Firecracker and the Linux boot protocol leave 0x500-0x7bff free).
pub const GDT_START: u64 = 0x500;
/// Where the (empty) IDT lives, right after the GDT's 4 entries.
pub const IDT_START: u64 = 0x520;

/// The Linux zero page (`struct boot_params`, 4 KiB), see `Documentation/arch/x86/zero-page.rst`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU (below the page tables, 16-byte aligned).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Page-map level-4 table of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPT_START: u64 = 0xa000;
/// First of the four page directories (2 MiB pages) that identity-map the low 4 GiB.
pub const PD_START: u64 = 0xb000;
/// How many page directories the boot identity map uses (each maps 1 GiB with 2 MiB pages).
pub const PD_COUNT: u64 = 4;

/// Where the kernel command line is written (`cmd_line_ptr` in the setup header).
pub const CMDLINE_START: u64 = 0x20000;
/// Room reserved for the command line, terminating NUL included.
pub const CMDLINE_MAX_SIZE: u64 = 0x10000;

/// Start of the Extended BIOS Data Area, where the MP floating pointer and table go
/// (MP spec 1.4, section 4: searched in the first KiB of the EBDA).
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory (start of the VGA / BIOS hole).
pub const LOW_RAM_END: u64 = 0xa0000;

/// Start of the ACPI area, where the RSDP goes: the first byte of the BIOS read-only area
/// `0xE0000..=0xFFFFF` that an OS scans for the RSDP's signature on a 16-byte boundary
/// (ACPI 6.5, 5.2.5.1 "Finding the RSDP on IA-PC Systems"), so that a kernel that is not told
/// the RSDP's address (older than Linux 5.0, or booted without it) still finds it. The other
/// tables follow it, up to [`VMGENID_START`]; the e820 map reports `[ACPI_START,
/// VMGENID_START)` as ACPI data (type 3).
pub const ACPI_START: u64 = 0xe_0000;
/// The VMGenID buffer: the 16-byte generation ID (Microsoft's "Virtual Machine Generation ID"
/// specification: 8-byte aligned, not crossing a page). It gets a page of its own, reported
/// as reserved (e820 type 2) rather than ACPI data, because the guest keeps reading it after
/// boot (and ACPI 6.5, table 15.1, lets an OS reuse ACPI data memory once it has read the
/// tables).
pub const VMGENID_START: u64 = 0xe_f000;
/// Size of the VMGenID buffer: a 128-bit generation ID.
pub const VMGENID_SIZE: u64 = 16;
/// One past the ACPI area: the end of the VMGenID page.
pub const ACPI_END: u64 = VMGENID_START + 0x1000;

/// Where 64-bit kernels and the protected-mode part of a bzImage are loaded (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO gap: no RAM between here and 4 GiB.
pub const MMIO32_START: u64 = 0xd000_0000;
/// Size of the 32-bit MMIO gap (768 MiB, ending at 4 GiB).
pub const MMIO32_SIZE: u64 = FIRST_ADDR_PAST_32BITS - MMIO32_START;
/// The boot-timer byte: a 1-byte write of 123 here marks "guest booted" (Firecracker's
/// `BOOT_DEVICE_MEM_START` convention, the first page of the gap).
pub const BOOT_TIMER_ADDR: u64 = MMIO32_START;
/// First address the MMIO-window allocator hands out (after the boot-timer page).
pub const MMIO_DEVICES_START: u64 = MMIO32_START + 0x1000;
/// Default IOAPIC base (Intel 82093AA datasheet; what KVM's in-kernel IOAPIC decodes).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Default local APIC base (Intel SDM vol. 3, 11.4.1, IA32_APIC_BASE reset value).
pub const APIC_START: u64 = 0xfee0_0000;

/// 4 GiB: first address past the 32-bit space, where RAM resumes above the gap.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;

/// The guest-physical RAM ranges `(start, len)` for a guest of `size` bytes: one range below
/// the MMIO gap and, when `size` exceeds it, a second from 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO32_START {
        vec![(RAM_START, size)]
    } else {
        vec![
            (RAM_START, MMIO32_START),
            (FIRST_ADDR_PAST_32BITS, size - MMIO32_START),
        ]
    }
}

// The boot structures must not overlap one another: checked when the crate is compiled.
const _: () = {
    assert!(GDT_START + 4 * 8 <= IDT_START);
    assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PD_START + PD_COUNT * 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE <= EBDA_START);
    // The ACPI area lies in the BIOS area, the RSDP 16-byte aligned, the VMGenID buffer
    // 8-byte aligned in a page of its own.
    assert!(LOW_RAM_END <= ACPI_START && ACPI_START % 16 == 0);
    assert!(ACPI_START < VMGENID_START && VMGENID_START % 0x1000 == 0);
    assert!(VMGENID_START + VMGENID_SIZE <= ACPI_END && ACPI_END <= HIMEM_START);
    assert!(BOOT_TIMER_ADDR >= MMIO32_START && MMIO_DEVICES_START > BOOT_TIMER_ADDR);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_ranges(MMIO32_START), vec![(0, MMIO32_START)]);
    }

    #[test]
    fn large_guest_is_split_around_the_gap() {
        let r = ram_ranges(4 << 30);
        assert_eq!(
            r,
            vec![(0, MMIO32_START), (1 << 32, (4 << 30) - MMIO32_START)]
        );
        let total: u64 = r.iter().map(|(_, l)| l).sum();
        assert_eq!(total, 4 << 30);
    }
}
