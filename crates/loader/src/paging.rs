//! The boot identity map: the low 4 GiB mapped with 2 MiB pages.
//!
//! The 64-bit boot protocol enters the kernel with paging on, and needs the kernel, the zero
//! page and the command line identity-mapped (`Documentation/arch/x86/boot.rst`, "64-bit Boot
//! Protocol"). One PML4 entry points at one PDPT whose first [`PD_COUNT`] entries point at page
//! directories of 2 MiB pages (PS set): 4 × 512 × 2 MiB = 4 GiB.
//!
//! 1 GiB pages (PS in the PDPT) are deliberately not used: not every CPU has them
//! (CPUID.80000001H:EDX.Page1GB) and on our development hosts (PVM) a guest started on them
//! triple-faults.

use petrel_guest_mem::layout::{PDPT_START, PD_COUNT, PD_START, PML4_START};
use petrel_guest_mem::GuestRam;

use crate::{Error, Result};

/// Page-table entry bit: present (Intel SDM vol. 3, table 4-15 to 4-18).
pub const PTE_PRESENT: u64 = 1 << 0;
/// Page-table entry bit: writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page-directory entry bit: the entry maps a 2 MiB page (Intel SDM vol. 3, table 4-18).
pub const PDE_PAGE_SIZE: u64 = 1 << 7;

/// Entries in one 4 KiB paging structure.
const ENTRIES_PER_TABLE: usize = 512;
/// Size of one paging structure.
const TABLE_SIZE: u64 = 0x1000;
/// Size of a large page mapped by a page-directory entry.
const LARGE_PAGE_SIZE: u64 = 2 << 20;

/// One 4 KiB paging structure as it lies in memory.
fn table_bytes(entries: &[u64; ENTRIES_PER_TABLE]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

fn write_table(
    ram: &GuestRam,
    what: &'static str,
    addr: u64,
    entries: &[u64; ENTRIES_PER_TABLE],
) -> Result<()> {
    ram.write(addr, &table_bytes(entries))
        .map_err(|source| Error::WriteGuestMemory { what, addr, source })
}

/// Writes the PML4, the PDPT and [`PD_COUNT`] page directories that identity-map the low
/// `PD_COUNT` GiB with 2 MiB pages, and returns the value for CR3 (the PML4's address).
///
/// Whole tables are written, so stale entries from an earlier boot never survive.
pub fn setup_identity_map(ram: &GuestRam) -> Result<u64> {
    let mut pml4 = [0u64; ENTRIES_PER_TABLE];
    pml4[0] = PDPT_START | PTE_PRESENT | PTE_WRITABLE;
    write_table(ram, "PML4", PML4_START, &pml4)?;

    let mut pdpt = [0u64; ENTRIES_PER_TABLE];
    for (i, entry) in pdpt.iter_mut().take(PD_COUNT as usize).enumerate() {
        *entry = (PD_START + i as u64 * TABLE_SIZE) | PTE_PRESENT | PTE_WRITABLE;
    }
    write_table(ram, "PDPT", PDPT_START, &pdpt)?;

    for pd_index in 0..PD_COUNT {
        let mut pd = [0u64; ENTRIES_PER_TABLE];
        for (i, entry) in pd.iter_mut().enumerate() {
            let phys = (pd_index * ENTRIES_PER_TABLE as u64 + i as u64) * LARGE_PAGE_SIZE;
            *entry = phys | PTE_PRESENT | PTE_WRITABLE | PDE_PAGE_SIZE;
        }
        write_table(ram, "page directory", PD_START + pd_index * TABLE_SIZE, &pd)?;
    }
    Ok(PML4_START)
}

/// Walks the boot identity map in guest memory and returns the physical address `vaddr`
/// translates to, or `None` if it is not mapped. Used to check the tables.
pub fn translate(ram: &GuestRam, cr3: u64, vaddr: u64) -> Option<u64> {
    const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    let entry = |table: u64, index: u64| -> Option<u64> {
        let e: u64 = ram.read_obj(table + index * 8).ok()?;
        (e & PTE_PRESENT != 0).then_some(e)
    };
    let pml4e = entry(cr3 & ADDR_MASK, (vaddr >> 39) & 0x1ff)?;
    let pdpte = entry(pml4e & ADDR_MASK, (vaddr >> 30) & 0x1ff)?;
    if pdpte & PDE_PAGE_SIZE != 0 {
        // A 1 GiB page: never produced by this crate, but decode it rather than misread it.
        return Some((pdpte & 0x000f_ffff_c000_0000) | (vaddr & 0x3fff_ffff));
    }
    let pde = entry(pdpte & ADDR_MASK, (vaddr >> 21) & 0x1ff)?;
    if pde & PDE_PAGE_SIZE == 0 {
        return None;
    }
    Some((pde & 0x000f_ffff_ffe0_0000) | (vaddr & 0x1f_ffff))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped_ram() -> (GuestRam, u64) {
        let ram = GuestRam::new(1 << 20).unwrap();
        let cr3 = setup_identity_map(&ram).unwrap();
        (ram, cr3)
    }

    #[test]
    fn pml4_points_at_the_pdpt_and_the_pdpt_at_the_pds() {
        let (ram, cr3) = mapped_ram();
        assert_eq!(cr3, PML4_START);
        assert_eq!(ram.read_obj::<u64>(PML4_START).unwrap(), PDPT_START | 0x3);
        assert_eq!(ram.read_obj::<u64>(PML4_START + 8).unwrap(), 0);
        for i in 0..PD_COUNT {
            let pdpte = ram.read_obj::<u64>(PDPT_START + i * 8).unwrap();
            assert_eq!(pdpte, (PD_START + i * 0x1000) | 0x3);
            assert_eq!(pdpte & PDE_PAGE_SIZE, 0, "no 1 GiB pages");
        }
        assert_eq!(ram.read_obj::<u64>(PDPT_START + PD_COUNT * 8).unwrap(), 0);
    }

    #[test]
    fn page_directories_map_2_mib_pages_in_order() {
        let (ram, _) = mapped_ram();
        assert_eq!(ram.read_obj::<u64>(PD_START).unwrap(), 0x83);
        assert_eq!(ram.read_obj::<u64>(PD_START + 8).unwrap(), 0x20_0083);
        // The last entry of the last directory maps 4 GiB - 2 MiB.
        let last = PD_START + PD_COUNT * 0x1000 - 8;
        assert_eq!(ram.read_obj::<u64>(last).unwrap(), 0xffe0_0083);
        for i in 0..PD_COUNT * 512 {
            let pde = ram.read_obj::<u64>(PD_START + i * 8).unwrap();
            assert_eq!(pde & !0xfff, i << 21);
            assert_eq!(pde & 0xfff, PTE_PRESENT | PTE_WRITABLE | PDE_PAGE_SIZE);
        }
    }

    #[test]
    fn low_4_gib_is_identity_mapped_and_nothing_above() {
        let (ram, cr3) = mapped_ram();
        for addr in [0, 0x7000, 0x10_0000, 0x1234_5678, 0xfee0_0000, 0xffff_ffff] {
            assert_eq!(translate(&ram, cr3, addr), Some(addr), "{addr:#x}");
        }
        assert_eq!(translate(&ram, cr3, 1 << 32), None);
    }

    #[test]
    fn stale_entries_are_overwritten() {
        let ram = GuestRam::new(1 << 20).unwrap();
        ram.write_obj(PML4_START + 8, 0xdead_b003_u64).unwrap();
        setup_identity_map(&ram).unwrap();
        assert_eq!(ram.read_obj::<u64>(PML4_START + 8).unwrap(), 0);
    }

    #[test]
    fn too_little_ram_for_the_tables_is_an_error() {
        let ram = GuestRam::new(0xa000).unwrap();
        let err = setup_identity_map(&ram).unwrap_err();
        assert!(matches!(
            err,
            Error::WriteGuestMemory {
                what: "PDPT",
                addr: PDPT_START,
                ..
            }
        ));
    }
}
