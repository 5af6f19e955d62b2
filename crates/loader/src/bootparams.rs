//! The zero page (`struct boot_params`) and the e820 memory map.
//!
//! Field meanings are from `Documentation/arch/x86/boot.rst` and
//! `Documentation/arch/x86/zero-page.rst`. The structure is zeroed before it is filled, so
//! `sentinel` (0x1ef) is 0 and the kernel trusts every field we leave at zero
//! (`sanitize_boot_params()`).

use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE,
    LOADED_HIGH,
};
use petrel_guest_mem::layout::{
    ram_ranges, CMDLINE_START, EBDA_START, FIRST_ADDR_PAST_32BITS, HIMEM_START, ZERO_PAGE_START,
};
use petrel_guest_mem::GuestRam;

use crate::linux::{Initrd, LoadedKernel};
use crate::{AcpiPlacement, Error, Result};

/// e820 type of usable RAM (ACPI 6.5, 15.3 "System Address Map Interfaces", table 15.1:
/// `AddressRangeMemory` = 1).
pub const E820_RAM: u32 = 1;
/// e820 type of memory the OS must not use (ACPI 6.5, table 15.1: `AddressRangeReserved` = 2).
pub const E820_RESERVED: u32 = 2;
/// e820 type of ACPI tables, which the OS may reuse once it has read them (ACPI 6.5,
/// table 15.1: `AddressRangeACPI` = 3).
pub const E820_ACPI: u32 = 3;
/// `boot_flag`: the boot sector signature (boot.rst, offset 0x1fe).
pub const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header`: `"HdrS"` little-endian (boot.rst, offset 0x202).
pub const KERNEL_HDR_MAGIC: u32 = u32::from_le_bytes(*b"HdrS");
/// `type_of_loader` for a boot loader with no assigned id (boot.rst, offset 0x210: 0xff).
pub const KERNEL_LOADER_OTHER: u8 = 0xff;
/// `kernel_alignment` given to an ELF kernel (boot.rst, offset 0x230): 16 MiB, the largest
/// value `CONFIG_PHYSICAL_ALIGN` allows, so it satisfies any x86_64 build.
pub const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// One range of the e820 memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest-physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Range type ([`E820_RAM`], [`E820_RESERVED`], [`E820_ACPI`]).
    pub type_: u32,
}

/// The e820 map of a guest with `ram_size` bytes of RAM: usable RAM below the EBDA, from
/// 1 MiB up to the end of RAM or the MMIO gap, and above 4 GiB for what did not fit below it.
/// The EBDA (MP table), the VGA/BIOS hole and the MMIO gap are left out, which the kernel
/// treats as reserved. `extra` ranges (the ACPI area's, [`crate::AcpiPlacement::e820`]) are
/// added, and the map is sorted by address.
pub fn e820_map(ram_size: u64, extra: &[E820Entry]) -> Vec<E820Entry> {
    let ram = |addr, end: u64| E820Entry {
        addr,
        size: end - addr,
        type_: E820_RAM,
    };
    let mut map = Vec::new();
    for (start, len) in ram_ranges(ram_size) {
        let end = start + len;
        if start < FIRST_ADDR_PAST_32BITS {
            map.push(ram(start, end.min(EBDA_START)));
            if end > HIMEM_START {
                map.push(ram(HIMEM_START, end));
            }
        } else {
            map.push(ram(start, end));
        }
    }
    map.extend_from_slice(extra);
    map.sort_by_key(|e| e.addr);
    map
}

/// The e820 ranges of the ACPI area, if there are tables.
pub(crate) fn acpi_e820(acpi: Option<&AcpiPlacement>) -> &[E820Entry] {
    acpi.map_or(&[], |a| a.e820.as_slice())
}

/// The setup header to pass to `kernel`: the bzImage's own, or for an ELF kernel a minimal one
/// with the magic numbers, `LOADED_HIGH` and a 16 MiB `kernel_alignment`.
fn base_header(kernel: &LoadedKernel) -> setup_header {
    match kernel.setup_header {
        Some(mut hdr) => {
            // We run none of the real-mode setup code and give it no heap (boot.rst,
            // loadflags bit 7).
            hdr.loadflags &= !CAN_USE_HEAP;
            hdr
        }
        None => setup_header {
            boot_flag: KERNEL_BOOT_FLAG_MAGIC,
            header: KERNEL_HDR_MAGIC,
            kernel_alignment: ELF_KERNEL_ALIGNMENT,
            loadflags: LOADED_HIGH,
            ..setup_header::default()
        },
    }
}

/// Builds the zero page for `kernel` in a guest of `ram_size` bytes, with a command line of
/// `cmdline_len` bytes (NUL excluded) at [`CMDLINE_START`], an optional initrd and optional
/// ACPI tables: their RSDP goes in `acpi_rsdp_addr` (zero-page.rst, offset 0x070, read by
/// kernels since 5.0; older ones find the RSDP by scanning the BIOS area) and their ranges in
/// the e820 map.
pub fn build_boot_params(
    kernel: &LoadedKernel,
    ram_size: u64,
    cmdline_len: usize,
    initrd: Option<Initrd>,
    acpi: Option<&AcpiPlacement>,
) -> Result<boot_params> {
    let mut params = boot_params::default();
    let mut hdr = base_header(kernel);
    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    // The layout puts the command line below 1 MiB.
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    if kernel.setup_header.is_none() {
        // Ours to fill for an ELF kernel; a bzImage's is the kernel's limit, left as it is.
        hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(u32::MAX);
    }
    if let Some(initrd) = initrd {
        let end = initrd.addr.checked_add(initrd.size);
        match (u32::try_from(initrd.addr), u32::try_from(initrd.size), end) {
            (Ok(addr), Ok(size), Some(end)) if end <= FIRST_ADDR_PAST_32BITS => {
                hdr.ramdisk_image = addr;
                hdr.ramdisk_size = size;
            }
            _ => {
                return Err(Error::InitrdPlacement {
                    addr: initrd.addr,
                    size: initrd.size,
                })
            }
        }
    }
    params.hdr = hdr;
    if let Some(acpi) = acpi {
        params.acpi_rsdp_addr = acpi.rsdp.0;
    }

    let map = e820_map(ram_size, acpi_e820(acpi));
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        // Cannot happen with this layout (at most five ranges); kept as a guard.
        return Err(Error::E820TableFull {
            entries: map.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
        });
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.type_,
        };
    }
    // At most E820_MAX_ENTRIES_ZEROPAGE (128), checked above.
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes `params` at [`ZERO_PAGE_START`].
pub fn write_boot_params(ram: &GuestRam, params: &boot_params) -> Result<()> {
    ram.write_obj(ZERO_PAGE_START, *params)
        .map_err(|source| Error::WriteGuestMemory {
            what: "zero page",
            addr: ZERO_PAGE_START,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::load_kernel_image;
    use crate::test_images;
    use petrel_guest_mem::layout::MMIO32_START;
    use std::path::Path;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn ram_entry(addr: u64, end: u64) -> E820Entry {
        E820Entry {
            addr,
            size: end - addr,
            type_: E820_RAM,
        }
    }

    #[test]
    fn e820_for_256_mib() {
        assert_eq!(
            e820_map(256 * MIB, &[]),
            vec![ram_entry(0, EBDA_START), ram_entry(HIMEM_START, 256 * MIB)]
        );
    }

    #[test]
    fn e820_above_4_gib_is_split_around_the_gap() {
        let map = e820_map(6 * GIB, &[]);
        assert_eq!(
            map,
            vec![
                ram_entry(0, EBDA_START),
                ram_entry(HIMEM_START, MMIO32_START),
                ram_entry(4 * GIB, 4 * GIB + (6 * GIB - MMIO32_START)),
            ]
        );
        // Every byte of RAM past the reserved low areas is described, nothing in the gap.
        let described: u64 = map.iter().map(|e| e.size).sum();
        assert_eq!(described, 6 * GIB - (HIMEM_START - EBDA_START));
        assert!(map
            .iter()
            .all(|e| e.addr + e.size <= MMIO32_START || e.addr >= 4 * GIB));
    }

    #[test]
    fn e820_exactly_at_the_gap_has_no_high_range() {
        assert_eq!(e820_map(MMIO32_START, &[]).len(), 2);
        assert_eq!(e820_map(MMIO32_START + 0x1000, &[]).len(), 3);
    }

    #[test]
    fn e820_for_a_guest_smaller_than_1_mib() {
        assert_eq!(e820_map(0x8_0000, &[]), vec![ram_entry(0, 0x8_0000)]);
    }

    #[test]
    fn elf_zero_page_has_a_default_header() {
        let ram = GuestRam::new(64 * MIB).unwrap();
        let k = load_kernel_image(&ram, &test_images::elf(None), Path::new("vmlinux")).unwrap();
        let initrd = Initrd {
            addr: 60 * MIB,
            size: 0x1234,
        };
        let p = build_boot_params(&k, ram.size(), 22, Some(initrd), None).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.kernel_alignment }, 0x100_0000);
        assert_eq!({ hdr.loadflags }, LOADED_HIGH);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 22);
        assert_eq!({ hdr.ramdisk_image }, 60 * MIB as u32);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.sentinel }, 0);
        assert_eq!({ p.e820_entries }, 2);
        let e = p.e820_table[1];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.r#type }),
            (HIMEM_START, 63 * MIB, E820_RAM)
        );
    }

    #[test]
    fn bzimage_zero_page_keeps_the_kernel_header() {
        let ram = GuestRam::new(64 * MIB).unwrap();
        let image = test_images::bzimage();
        let k = load_kernel_image(&ram, &image, Path::new("bzImage")).unwrap();
        let mut k_with_heap = k.clone();
        if let Some(h) = k_with_heap.setup_header.as_mut() {
            h.loadflags |= CAN_USE_HEAP;
        }
        let p = build_boot_params(&k_with_heap, ram.size(), 5, None, None).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!(
            { hdr.cmdline_size },
            test_images::BZ_CMDLINE_SIZE,
            "the kernel's limit"
        );
        assert_eq!({ hdr.code32_start }, HIMEM_START as u32);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.loadflags }, LOADED_HIGH, "CAN_USE_HEAP cleared");
        assert_eq!({ hdr.ramdisk_image }, 0);
        assert_eq!({ hdr.ramdisk_size }, 0);
    }

    #[test]
    fn zero_page_is_written_at_its_address() {
        let ram = GuestRam::new(64 * MIB).unwrap();
        let k = load_kernel_image(&ram, &test_images::elf(None), Path::new("vmlinux")).unwrap();
        let p = build_boot_params(&k, ram.size(), 0, None, None).unwrap();
        write_boot_params(&ram, &p).unwrap();
        // boot_flag at 0x1fe, "HdrS" at 0x202, e820_entries at 0x1e8, e820_table at 0x2d0.
        assert_eq!(
            ram.read_obj::<u16>(ZERO_PAGE_START + 0x1fe).unwrap(),
            0xaa55
        );
        assert_eq!(
            ram.read_obj::<u32>(ZERO_PAGE_START + 0x202).unwrap(),
            KERNEL_HDR_MAGIC
        );
        assert_eq!(ram.read_obj::<u8>(ZERO_PAGE_START + 0x1e8).unwrap(), 2);
        assert_eq!(
            ram.read_obj::<u32>(ZERO_PAGE_START + 0x228).unwrap(),
            0x20000
        );
        assert_eq!(
            ram.read_obj::<u64>(ZERO_PAGE_START + 0x2d0 + 20).unwrap(),
            HIMEM_START
        );
    }

    #[test]
    fn initrd_outside_32_bits_is_refused() {
        let ram = GuestRam::new(64 * MIB).unwrap();
        let k = load_kernel_image(&ram, &test_images::elf(None), Path::new("vmlinux")).unwrap();
        let high = Initrd {
            addr: 4 * GIB,
            size: 0x1000,
        };
        let err = build_boot_params(&k, ram.size(), 0, Some(high), None).unwrap_err();
        assert!(matches!(err, Error::InitrdPlacement { addr, .. } if addr == 4 * GIB));
        let straddling = Initrd {
            addr: 4 * GIB - 0x1000,
            size: 0x2000,
        };
        assert!(build_boot_params(&k, ram.size(), 0, Some(straddling), None).is_err());
    }
}
