//! Putting it together: the boot structures and CPU state for the Linux 64-bit boot protocol
//! and for PVH.
//!
//! Both write the command line at `CMDLINE_START`, the MP table in the EBDA and the GDT/IDT;
//! the 64-bit protocol adds the zero page and the identity map, PVH a `hvm_start_info`.
//! When the VMM wrote ACPI tables first ([`crate::write_acpi_tables`]), both hand the kernel
//! the RSDP's address and add the ACPI area to the e820 map; the MP table stays, for kernels
//! built without ACPI.
//! Every input is checked before it is written; when a check fails after some structures were
//! written, guest memory holds a partial boot setup and the VM must not be started.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use petrel_guest_mem::layout::{
    BOOT_STACK_POINTER, CMDLINE_START, FIRST_ADDR_PAST_32BITS, ZERO_PAGE_START,
};
use petrel_guest_mem::vm_memory::ByteValued;
use petrel_guest_mem::GuestRam;

use crate::bootparams::{acpi_e820, build_boot_params, e820_map, write_boot_params};
use crate::cmdline::write_cmdline;
use crate::gdt::{write_gdt_and_idt, BootSegments};
use crate::linux::{Initrd, LoadedKernel};
use crate::mptable::setup_mptable;
use crate::paging::setup_identity_map;
use crate::AcpiPlacement;
use crate::{BootCpuState, CpuMode, Error, Result};

/// CR0.PE: protected mode (Intel SDM vol. 3, 2.5).
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type, hardwired to 1 since the i486 (Intel SDM vol. 3, 2.5).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0.NE: native x87 error reporting (Intel SDM vol. 3, 2.5).
pub const X86_CR0_NE: u64 = 1 << 5;
/// CR0.PG: paging (Intel SDM vol. 3, 2.5).
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension, required for long mode (Intel SDM vol. 3, 2.5).
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable (Intel SDM vol. 3, 2.2.1).
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active (Intel SDM vol. 3, 2.2.1).
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS with only the reserved bit 1 set: interrupts off (Intel SDM vol. 1, 3.4.3).
pub const RFLAGS_BOOT: u64 = 1 << 1;

/// `hvm_start_info.magic` (Xen `xen/include/public/arch-x86/hvm/start_info.h`).
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// `hvm_start_info` version 1 has the memory map fields (start_info.h).
const HVM_START_INFO_VERSION: u32 = 1;
/// Where `configure_pvh_boot` puts the PVH structures: the zero page, unused by PVH.
pub const PVH_START_INFO_START: u64 = ZERO_PAGE_START;
/// The PVH module list (the initrd), after `hvm_start_info` (56 bytes).
pub const PVH_MODLIST_START: u64 = ZERO_PAGE_START + 0x40;
/// The PVH memory map, after the one-entry module list (32 bytes).
pub const PVH_MEMMAP_START: u64 = ZERO_PAGE_START + 0x80;
/// The memory map may use the rest of the zero page.
const PVH_AREA_END: u64 = ZERO_PAGE_START + 0x1000;

/// Checks that `entry` can be jumped to with the boot identity map / 32-bit flat segments.
fn check_entry(
    ram: &GuestRam,
    kernel: &LoadedKernel,
    entry: u64,
    what: &'static str,
) -> Result<()> {
    if entry >= FIRST_ADDR_PAST_32BITS || !ram.contains(entry, 1) {
        return Err(Error::InvalidKernelHeader {
            path: kernel.path.clone(),
            field: what,
            value: entry,
        });
    }
    Ok(())
}

/// Checks that an initrd lies in guest RAM below 4 GiB, where both protocols can describe it.
fn check_initrd(ram: &GuestRam, initrd: Option<Initrd>) -> Result<()> {
    match initrd {
        Some(Initrd { addr, size })
            if !ram.contains(addr, size) || addr.saturating_add(size) > FIRST_ADDR_PAST_32BITS =>
        {
            Err(Error::InitrdPlacement { addr, size })
        }
        _ => Ok(()),
    }
}

fn cpu_state(mode: CpuMode, rip: u64, segs: &BootSegments) -> BootCpuState {
    BootCpuState {
        mode,
        rip,
        rsp: BOOT_STACK_POINTER,
        rsi: 0,
        rbx: 0,
        rflags: RFLAGS_BOOT,
        cr0: 0,
        cr3: 0,
        cr4: 0,
        efer: 0,
        code: segs.code,
        data: segs.data,
        tr: segs.tr,
        gdt_base: segs.gdt_base,
        gdt_limit: segs.gdt_limit,
        idt_base: segs.idt_base,
        idt_limit: segs.idt_limit,
    }
}

/// Prepares guest memory for the Linux 64-bit boot protocol (`Documentation/arch/x86/boot.rst`,
/// "64-bit Boot Protocol") and returns the state to start the boot vCPU in.
///
/// Writes the command line, the MP table for `num_cpus` vCPUs, the zero page (setup header,
/// e820 map, initrd, and with `acpi` the RSDP's address in `acpi_rsdp_addr` and the ACPI
/// area in the e820 map), the identity map of the low 4 GiB and the boot GDT/IDT. The CPU starts
/// in long mode at `kernel.entry_64` with RSI pointing at the zero page, CS = 0x10 and
/// DS/ES/SS = 0x18 (flat), interrupts off:
/// CR0 = PE | ET | NE | PG, CR3 = the PML4, CR4 = PAE, EFER = LME | LMA.
pub fn configure_linux_boot(
    ram: &GuestRam,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<Initrd>,
    num_cpus: u8,
    acpi: Option<&AcpiPlacement>,
) -> Result<BootCpuState> {
    check_entry(
        ram,
        kernel,
        kernel.entry_64,
        "64-bit entry point (outside RAM below 4 GiB)",
    )?;
    check_initrd(ram, initrd)?;
    setup_mptable(ram, num_cpus)?;
    let cmdline_len = write_cmdline(ram, kernel, cmdline)?;
    let params = build_boot_params(kernel, ram.size(), cmdline_len, initrd, acpi)?;
    write_boot_params(ram, &params)?;
    let cr3 = setup_identity_map(ram)?;
    let segs = write_gdt_and_idt(ram, CpuMode::Long64)?;
    Ok(BootCpuState {
        rsi: ZERO_PAGE_START,
        cr0: X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG,
        cr3,
        cr4: X86_CR4_PAE,
        efer: EFER_LME | EFER_LMA,
        ..cpu_state(CpuMode::Long64, kernel.entry_64, &segs)
    })
}

/// Prepares guest memory for the PVH boot protocol (Xen's `docs/misc/pvh.pandoc`, which Linux
/// implements for `CONFIG_PVH` kernels) and returns the state to start the boot vCPU in.
///
/// Needs a kernel with a PVH entry point ([`LoadedKernel::pvh_entry`]). Writes the command
/// line, the MP table, the GDT/IDT and, at [`PVH_START_INFO_START`], `hvm_start_info` with
/// the initrd as module 0, the e820 map as the memory map and, with `acpi`, the RSDP's
/// address in `rsdp_paddr` and the ACPI area in the memory map. The CPU starts in 32-bit
/// protected mode without paging at the PVH entry, EBX pointing at `hvm_start_info`,
/// CS = 0x10 and DS/ES/SS = 0x18 (32-bit flat), TR a busy TSS of limit 0x67, CR0 = PE | ET,
/// CR4 = 0, interrupts off.
pub fn configure_pvh_boot(
    ram: &GuestRam,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<Initrd>,
    num_cpus: u8,
    acpi: Option<&AcpiPlacement>,
) -> Result<BootCpuState> {
    let entry = kernel.pvh_entry.ok_or_else(|| Error::NoPvhEntry {
        path: kernel.path.clone(),
        kind: kernel.kind,
    })?;
    check_entry(
        ram,
        kernel,
        entry,
        "PVH entry point (outside RAM below 4 GiB)",
    )?;
    check_initrd(ram, initrd)?;
    setup_mptable(ram, num_cpus)?;
    write_cmdline(ram, kernel, cmdline)?;

    let memmap: Vec<hvm_memmap_table_entry> = e820_map(ram.size(), acpi_e820(acpi))
        .into_iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.type_,
            reserved: 0,
        })
        .collect();
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    let max_entries = ((PVH_AREA_END - PVH_MEMMAP_START) / entry_size) as usize;
    if memmap.len() > max_entries {
        return Err(Error::E820TableFull {
            entries: memmap.len(),
            max: max_entries,
        });
    }
    let write = |what: &'static str, addr: u64, bytes: &[u8]| {
        ram.write(addr, bytes)
            .map_err(|source| Error::WriteGuestMemory { what, addr, source })
    };
    for (i, entry) in memmap.iter().enumerate() {
        let addr = PVH_MEMMAP_START + i as u64 * entry_size;
        write("PVH memory map", addr, entry.as_slice())?;
    }
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: HVM_START_INFO_VERSION,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        // At most a handful of entries, checked against the area above.
        memmap_entries: memmap.len() as u32,
        rsdp_paddr: acpi.map_or(0, |a| a.rsdp.0),
        ..hvm_start_info::default()
    };
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        write("PVH module list", PVH_MODLIST_START, module.as_slice())?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }
    write(
        "PVH start info",
        PVH_START_INFO_START,
        start_info.as_slice(),
    )?;

    let segs = write_gdt_and_idt(ram, CpuMode::Protected32)?;
    Ok(BootCpuState {
        rbx: PVH_START_INFO_START,
        cr0: X86_CR0_PE | X86_CR0_ET,
        ..cpu_state(CpuMode::Protected32, entry, &segs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gdt::{CODE_SELECTOR, DATA_SELECTOR};
    use crate::linux::{load_kernel_image, KernelKind, BZIMAGE_ENTRY_64_OFFSET};
    use crate::paging::translate;
    use crate::test_images;
    use linux_loader::loader::bootparam::boot_params;
    use petrel_guest_mem::layout::{EBDA_START, GDT_START, HIMEM_START, IDT_START, PML4_START};
    use std::path::Path;

    const MIB: u64 = 1 << 20;

    fn elf_kernel(ram: &GuestRam, pvh: Option<u32>) -> LoadedKernel {
        load_kernel_image(ram, &test_images::elf(pvh), Path::new("vmlinux")).unwrap()
    }

    #[test]
    fn linux_64_bit_state_follows_the_boot_protocol() {
        let ram = GuestRam::new(64 * MIB).unwrap();
        let k = elf_kernel(&ram, None);
        let s = configure_linux_boot(&ram, &k, "console=ttyS0", None, 2, None).unwrap();
        assert_eq!(s.mode, CpuMode::Long64);
        assert_eq!(s.rip, test_images::ELF_ENTRY);
        assert_eq!(s.rsi, ZERO_PAGE_START);
        assert_eq!(s.rsp, BOOT_STACK_POINTER);
        assert_eq!(s.rflags, 0x2);
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.cr4, X86_CR4_PAE);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(
            (s.code.selector, s.code.l, s.code.db),
            (CODE_SELECTOR, 1, 0)
        );
        assert_eq!(
            (s.data.selector, s.data.base, s.data.limit),
            (DATA_SELECTOR, 0, u32::MAX)
        );
        assert_eq!((s.gdt_base, s.gdt_limit), (GDT_START, 31));
        assert_eq!(s.idt_base, IDT_START);
        // Everything the kernel touches first is identity-mapped.
        for addr in [s.rip, s.rsi, s.rsp, CMDLINE_START] {
            assert_eq!(translate(&ram, s.cr3, addr), Some(addr));
        }
    }

    #[test]
    fn linux_boot_writes_every_structure() {
        let ram = GuestRam::new(64 * MIB).unwrap();
        let k = load_kernel_image(&ram, &test_images::bzimage(), Path::new("bzImage")).unwrap();
        assert_eq!(k.kind, KernelKind::BzImage);
        let initrd = Initrd {
            addr: 48 * MIB,
            size: 0x800,
        };
        let s = configure_linux_boot(&ram, &k, "quiet", Some(initrd), 1, None).unwrap();
        assert_eq!(s.rip, HIMEM_START + BZIMAGE_ENTRY_64_OFFSET);
        let params: boot_params = ram.read_obj(ZERO_PAGE_START).unwrap();
        assert_eq!({ params.hdr.ramdisk_image }, 48 * MIB as u32);
        assert_eq!({ params.hdr.ramdisk_size }, 0x800);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.e820_entries }, 2);
        let mut cmdline = [0u8; 6];
        ram.read(CMDLINE_START, &mut cmdline).unwrap();
        assert_eq!(&cmdline, b"quiet\0");
        let mut mp = [0u8; 4];
        ram.read(EBDA_START, &mut mp).unwrap();
        assert_eq!(&mp, b"_MP_");
        assert_eq!(
            ram.read_obj::<u64>(GDT_START + 16).unwrap(),
            0x00af_9b00_0000_ffff
        );
    }

    #[test]
    fn linux_boot_errors_are_reported() {
        let ram = GuestRam::new(64 * MIB).unwrap();
        let k = elf_kernel(&ram, None);
        assert!(matches!(
            configure_linux_boot(&ram, &k, "", None, 0, None),
            Err(Error::MpTableCpuCount { num_cpus: 0, .. })
        ));
        assert!(matches!(
            configure_linux_boot(&ram, &k, &"x".repeat(4096), None, 1, None),
            Err(Error::CmdlineTooLong {
                len: 4096,
                max: 2047
            })
        ));
        let mut bad = k.clone();
        bad.entry_64 = 128 * MIB;
        assert!(matches!(
            configure_linux_boot(&ram, &bad, "", None, 1, None),
            Err(Error::InvalidKernelHeader { value, .. }) if value == 128 * MIB
        ));
    }

    #[test]
    fn pvh_state_and_start_info() {
        let ram = GuestRam::new(64 * MIB).unwrap();
        let entry = (test_images::ELF_PADDR + 0x40) as u32;
        let k = elf_kernel(&ram, Some(entry));
        let initrd = Initrd {
            addr: 32 * MIB,
            size: 0x1000,
        };
        let s = configure_pvh_boot(&ram, &k, "console=hvc0", Some(initrd), 2, None).unwrap();
        assert_eq!(s.mode, CpuMode::Protected32);
        assert_eq!(s.rip, u64::from(entry));
        assert_eq!(s.rbx, PVH_START_INFO_START);
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((s.cr3, s.cr4, s.efer), (0, 0, 0));
        assert_eq!(
            (s.code.l, s.code.db, s.code.base, s.code.limit),
            (0, 1, 0, u32::MAX)
        );
        assert_eq!((s.tr.type_, s.tr.base, s.tr.limit), (0xb, 0, 0x67));
        assert_eq!(s.rflags & (1 << 9), 0, "IF clear");

        let info: hvm_start_info = ram.read_obj(PVH_START_INFO_START).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = ram.read_obj(info.modlist_paddr).unwrap();
        assert_eq!((module.paddr, module.size), (32 * MIB, 0x1000));
        assert_eq!(info.memmap_entries, 2);
        let second: hvm_memmap_table_entry = ram.read_obj(info.memmap_paddr + 24).unwrap();
        assert_eq!((second.addr, second.size, second.type_), (MIB, 63 * MIB, 1));
        assert!(info.memmap_paddr >= PVH_START_INFO_START + 56);
        assert_eq!(
            ram.read_obj::<u64>(GDT_START + 16).unwrap(),
            0x00cf_9b00_0000_ffff
        );
    }

    fn acpi_tables(ram: &GuestRam) -> AcpiPlacement {
        let cfg = crate::AcpiConfig {
            vcpus: 2,
            dsdt_body: &[],
            sleep_control_port: 0x600,
            sleep_status_port: 0x601,
            reset_port: 0x602,
            reset_value: 1,
        };
        crate::write_acpi_tables(ram, &cfg).unwrap()
    }

    #[test]
    fn both_protocols_hand_over_the_rsdp_and_the_acpi_ranges() {
        use crate::bootparams::{E820_ACPI, E820_RAM, E820_RESERVED};
        use petrel_guest_mem::layout::{ACPI_START, VMGENID_START};
        let ram = GuestRam::new(64 * MIB).unwrap();
        let acpi = acpi_tables(&ram);
        let expected = vec![
            (0, E820_RAM),
            (ACPI_START, E820_ACPI),
            (VMGENID_START, E820_RESERVED),
            (HIMEM_START, E820_RAM),
        ];

        let k = elf_kernel(&ram, Some((test_images::ELF_PADDR + 0x40) as u32));
        configure_linux_boot(&ram, &k, "", None, 2, Some(&acpi)).unwrap();
        let params: boot_params = ram.read_obj(ZERO_PAGE_START).unwrap();
        assert_eq!({ params.acpi_rsdp_addr }, ACPI_START);
        let n = usize::from(params.e820_entries);
        let e820: Vec<_> = params.e820_table[..n]
            .iter()
            .map(|e| ({ e.addr }, { e.r#type }))
            .collect();
        assert_eq!(e820, expected);

        configure_pvh_boot(&ram, &k, "", None, 2, Some(&acpi)).unwrap();
        let info: hvm_start_info = ram.read_obj(PVH_START_INFO_START).unwrap();
        assert_eq!(info.rsdp_paddr, ACPI_START);
        let memmap: Vec<_> = (0..u64::from(info.memmap_entries))
            .map(|i| {
                let e: hvm_memmap_table_entry = ram.read_obj(info.memmap_paddr + i * 24).unwrap();
                (e.addr, e.type_)
            })
            .collect();
        assert_eq!(memmap, expected);
        // The boot structures left the tables alone.
        assert_eq!(&ram_bytes(&ram, ACPI_START, 8), b"RSD PTR ");

        // Without tables, neither protocol points at any.
        configure_linux_boot(&ram, &k, "", None, 2, None).unwrap();
        let params: boot_params = ram.read_obj(ZERO_PAGE_START).unwrap();
        assert_eq!({ params.acpi_rsdp_addr }, 0);
        assert_eq!({ params.e820_entries }, 2);
        configure_pvh_boot(&ram, &k, "", None, 2, None).unwrap();
        let info: hvm_start_info = ram.read_obj(PVH_START_INFO_START).unwrap();
        assert_eq!((info.rsdp_paddr, info.memmap_entries), (0, 2));
    }

    fn ram_bytes(ram: &GuestRam, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        ram.read(addr, &mut b).unwrap();
        b
    }

    #[test]
    fn pvh_without_entry_or_with_a_bad_initrd_is_refused() {
        let ram = GuestRam::new(64 * MIB).unwrap();
        let k = elf_kernel(&ram, None);
        let err = configure_pvh_boot(&ram, &k, "", None, 1, None).unwrap_err();
        assert!(matches!(
            err,
            Error::NoPvhEntry {
                kind: KernelKind::Elf,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "kernel vmlinux has no PVH entry point: its ELF has no XEN_ELFNOTE_PHYS32_ENTRY note"
        );
        let bz = load_kernel_image(&ram, &test_images::bzimage(), Path::new("bzImage")).unwrap();
        let err = configure_pvh_boot(&ram, &bz, "", None, 1, None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("kernel bzImage has no PVH entry point: it is a bzImage"),
            "{err}"
        );

        let k = elf_kernel(&ram, Some((test_images::ELF_PADDR) as u32));
        let outside = Initrd {
            addr: 63 * MIB,
            size: 2 * MIB,
        };
        assert!(matches!(
            configure_pvh_boot(&ram, &k, "", Some(outside), 1, None),
            Err(Error::InitrdPlacement { .. })
        ));
        assert!(matches!(
            configure_linux_boot(&ram, &k, "", Some(outside), 1, None),
            Err(Error::InitrdPlacement { .. })
        ));
    }
}
