//! The guest memory Petrel's own boot structures occupy, which a kernel's segments must leave
//! alone.
//!
//! An ELF kernel may put `PT_LOAD` segments anywhere in RAM below the MMIO gap, including below
//! 1 MiB (a plain `ld -Ttext=0x100000` puts the ELF headers in a read-only segment at
//! 0xff000), as long as no segment overlaps one of the ranges below: [`crate::boot`] writes
//! them after the kernel is loaded, for either boot protocol, and would overwrite the kernel's
//! bytes (or the kernel would be handed a zero page it had overwritten). Every address comes
//! from `petrel_guest_mem::layout`.

use petrel_guest_mem::layout::{
    ACPI_END, ACPI_START, CMDLINE_START, EBDA_START, GDT_START, IDT_START, LOW_RAM_END, PD_COUNT,
    PD_START, PML4_START, ZERO_PAGE_START,
};

use crate::gdt::{GDT_ENTRIES, IDT_SIZE};

/// Size of a page-table page and of the zero page (`struct boot_params` is 4 KiB,
/// `Documentation/arch/x86/zero-page.rst`).
const PAGE: u64 = 0x1000;

/// One boot structure: a name for messages and the guest-physical range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootStructure {
    /// What it is, as error messages name it.
    pub name: &'static str,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl BootStructure {
    /// Whether `[start, end)` shares a byte with this structure.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        start < self.end && self.start < end
    }
}

/// The structures either boot protocol writes, for a kernel whose command line takes at most
/// `cmdline_room` bytes (NUL included; see [`crate::cmdline::cmdline_capacity`]).
///
/// The boot stack is the page between the zero page and the page tables, where
/// `BOOT_STACK_POINTER` points; the MP table may use the whole EBDA up to the VGA hole,
/// depending on the vCPU count. The ACPI area ([`crate::acpi`]: tables and the VMGenID
/// buffer) is kept free whether or not the VMM writes tables, so that a kernel that loads
/// without them also loads with them.
pub fn boot_structures(cmdline_room: u64) -> [BootStructure; 8] {
    let s = |name, start, end| BootStructure { name, start, end };
    [
        s("boot GDT", GDT_START, GDT_START + GDT_ENTRIES as u64 * 8),
        s("boot IDT", IDT_START, IDT_START + IDT_SIZE),
        s(
            "zero page (boot_params, or the PVH start_info, module list and memory map)",
            ZERO_PAGE_START,
            ZERO_PAGE_START + PAGE,
        ),
        s("boot stack", ZERO_PAGE_START + PAGE, PML4_START),
        s("boot page tables", PML4_START, PD_START + PD_COUNT * PAGE),
        s(
            "kernel command line",
            CMDLINE_START,
            CMDLINE_START + cmdline_room,
        ),
        s("MP table (EBDA)", EBDA_START, LOW_RAM_END),
        s("ACPI tables and VMGenID buffer", ACPI_START, ACPI_END),
    ]
}

/// The first boot structure `[start, end)` overlaps, if any.
pub fn collision(start: u64, end: u64, cmdline_room: u64) -> Option<BootStructure> {
    boot_structures(cmdline_room)
        .into_iter()
        .find(|b| b.overlaps(start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_guest_mem::layout::{BOOT_STACK_POINTER, CMDLINE_MAX_SIZE, HIMEM_START};

    #[test]
    fn structures_are_ordered_disjoint_and_below_1_mib() {
        let all = boot_structures(CMDLINE_MAX_SIZE);
        for pair in all.windows(2) {
            assert!(pair[0].start < pair[0].end, "{pair:?}");
            assert!(pair[0].end <= pair[1].start, "{pair:?}");
        }
        assert!(all.iter().all(|b| b.end <= HIMEM_START));
        // The stack pointer is inside the boot stack's range.
        assert!(all[3].start < BOOT_STACK_POINTER && BOOT_STACK_POINTER <= all[3].end);
    }

    #[test]
    fn collisions_are_found_at_the_edges() {
        let room = 2048;
        assert_eq!(collision(0, GDT_START, room), None);
        assert_eq!(collision(0, GDT_START + 1, room).unwrap().name, "boot GDT");
        let z = collision(ZERO_PAGE_START + 0xfff, ZERO_PAGE_START + 0x2000, room).unwrap();
        assert!(z.name.starts_with("zero page"), "{z:?}");
        assert_eq!(collision(CMDLINE_START + room, EBDA_START, room), None);
        assert_eq!(
            collision(CMDLINE_START + room - 1, CMDLINE_START + room, room)
                .unwrap()
                .name,
            "kernel command line"
        );
        // The legacy hole between the EBDA's end and 1 MiB holds only the ACPI area.
        assert_eq!(collision(LOW_RAM_END, ACPI_START, room), None);
        assert_eq!(collision(ACPI_END, HIMEM_START, room), None);
        assert_eq!(collision(0xff000, 0xff158, room), None);
        assert_eq!(
            collision(ACPI_END - 1, HIMEM_START, room).unwrap().name,
            "ACPI tables and VMGenID buffer"
        );
        assert_eq!(
            collision(LOW_RAM_END - 1, ACPI_START, room).unwrap().name,
            "MP table (EBDA)"
        );
        // Empty ranges overlap nothing.
        assert_eq!(collision(ZERO_PAGE_START, ZERO_PAGE_START, room), None);
    }
}
