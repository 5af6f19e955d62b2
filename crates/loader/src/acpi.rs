//! ACPI tables: RSDP, XSDT, a hardware-reduced FADT, MADT and a DSDT, so that a kernel finds
//! the vCPUs, the interrupt controllers, the devices (described by the caller's AML) and the
//! power-off and reset registers through ACPI.
//!
//! References are to the ACPI Specification 6.5 (August 2022). The tables are built with
//! rust-vmm's [`acpi_tables`] crate, in host memory first, then written into guest RAM in one
//! go at [`ACPI_START`], where the layout keeps an area in the BIOS read-only space:
//!
//! ```text
//! ACPI_START     RSDP (36 bytes), then each table 8-byte aligned:
//!                XSDT (pointing at the FADT and the MADT), FADT (pointing at the DSDT),
//!                MADT, DSDT (its body: the caller's AML)
//! VMGENID_START  the VMGenID buffer (16 bytes; this module leaves it alone)
//! ACPI_END
//! ```
//!
//! The platform is hardware-reduced (5.2.9, FADT flag HW_REDUCED_ACPI; 4.1 "Hardware-Reduced
//! ACPI"): no PM1 blocks, no SCI, no GPEs. Power off and reset go through the FADT's sleep
//! control, sleep status and reset registers (4.8.3.7, 4.8.3.8, 4.8.3.6), one byte each in
//! port I/O space, at ports a device crate decides and the caller passes in [`AcpiConfig`].
//!
//! The MADT describes what the MP table ([`crate::mptable`]) describes, the same way: one
//! enabled local APIC per vCPU (ids `0..vcpus`), the IOAPIC at [`IOAPIC_START`] with id
//! `vcpus` and GSI base 0, ISA IRQ 0 routed to GSI 2 (an interrupt source override, the
//! MP table's IRQ 0 -> pin 2), and LINT1 as NMI on every local APIC.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use petrel_guest_mem::layout::{ACPI_END, ACPI_START, APIC_START, IOAPIC_START, VMGENID_START};
use petrel_guest_mem::vm_memory::GuestAddress;
use petrel_guest_mem::GuestRam;

use crate::bootparams::{E820Entry, E820_ACPI, E820_RESERVED};
use crate::{Error, Result};

/// OEM id in every table header and in the RSDP (5.2.6, "OEMID": 6 bytes).
pub const OEM_ID: [u8; 6] = *b"PETREL";
/// OEM revision in every table header (5.2.6, "OEM Revision").
pub const OEM_REVISION: u32 = 1;
/// The FADT's hypervisor vendor identity (5.2.9, table 5.9, offset 268), which tells the
/// guest which hypervisor it runs on.
pub const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"PETRELVM";

/// DSDT revision 2: the AML's integers are 64 bits wide (5.2.11.1, "Revision").
pub const DSDT_REVISION: u8 = 2;
/// MADT revision of ACPI 6.5 (5.2.12, table 5.19).
pub const MADT_REVISION: u8 = 5;
/// MADT flag PCAT_COMPAT: the system also has a PC-AT-compatible dual 8259 (5.2.12,
/// table 5.20); KVM's in-kernel irqchip has one.
pub const MADT_PCAT_COMPAT: u32 = 1 << 0;

/// FADT IA-PC boot architecture flag 8042: the platform has an 8042 keyboard controller
/// (5.2.9.3, table 5.11). Without it, Linux on an ACPI guest does not probe the i8042, and
/// Ctrl-Alt-Del (which Petrel injects through it) would not reach the guest.
pub const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
/// FADT IA-PC boot architecture flag VGA Not Present (5.2.9.3, table 5.11).
pub const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// FADT IA-PC boot architecture flag MSI Not Supported: Petrel has no PCI (5.2.9.3,
/// table 5.11). CMOS RTC Not Present (bit 5) stays clear: the RTC is there.
pub const IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED: u16 = 1 << 3;
/// The IA-PC boot architecture flags Petrel's FADT carries.
pub const IAPC_BOOT_ARCH: u16 =
    IAPC_BOOT_ARCH_8042 | IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED;

/// MADT structure type: Interrupt Source Override (5.2.12.5, table 5.25).
const MADT_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
/// MADT structure type: Local APIC NMI (5.2.12.7, table 5.27).
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// ISA bus number in an interrupt source override ("Bus: 0, constant, meaning ISA").
const ISA_BUS: u8 = 0;
/// The PIT's ISA IRQ and the GSI it reaches (the MP table's IRQ 0 -> IOAPIC pin 2).
const PIT_IRQ: u8 = 0;
const PIT_GSI: u32 = 2;
/// MPS INTI flags "conforms to the bus": edge, active high for ISA (5.2.12.5, table 5.26).
const MPS_INTI_CONFORMS: u16 = 0;
/// Processor UID meaning "all processors" in a Local APIC NMI structure (5.2.12.7).
const ALL_PROCESSORS: u8 = 0xff;
/// The local APIC input NMI arrives on (LINT1, as in the MP table).
const NMI_LINT: u8 = 1;

/// The most vCPUs the MADT describes: local APIC ids `0..vcpus` and the IOAPIC's id `vcpus`
/// must stay below the broadcast id 0xff.
pub const MAX_VCPUS: u8 = 0xfe;

/// Size of the header every system description table starts with (5.2.6, table 5.4).
const TABLE_HEADER_SIZE: u64 = 36;
/// Size of the RSDP (5.2.5.3, table 5.3: 36 bytes for revision 2).
const RSDP_SIZE: u64 = 36;
/// Size of the MADT before its structures: the header, the local APIC address and the flags
/// (5.2.12, table 5.19).
const MADT_HEADER_SIZE: u32 = 44;
/// Every table starts on an 8-byte boundary (the 64-bit XSDT entries and GAS addresses read
/// naturally aligned); the RSDP itself is 16-byte aligned (5.2.5.1).
const TABLE_ALIGN: u64 = 8;

/// What the tables say about the machine beyond the layout: the vCPU count, the devices'
/// AML and the power-management registers' ports.
#[derive(Debug, Clone, Copy)]
pub struct AcpiConfig<'a> {
    /// vCPUs, `1..=`[`MAX_VCPUS`]: one local APIC each in the MADT.
    pub vcpus: u8,
    /// The DSDT's body: AML for every device the guest should find (its `\_SB_` scope, the
    /// devices, `\_S5_`), which the loader copies as it is after the DSDT's header.
    pub dsdt_body: &'a [u8],
    /// I/O port of the 8-bit sleep control register (FADT SLEEP_CONTROL_REG, 4.8.3.7).
    pub sleep_control_port: u16,
    /// I/O port of the 8-bit sleep status register (FADT SLEEP_STATUS_REG, 4.8.3.8).
    pub sleep_status_port: u16,
    /// I/O port of the 8-bit reset register (FADT RESET_REG, 4.8.3.6).
    pub reset_port: u16,
    /// The value whose write to `reset_port` resets the machine (FADT RESET_VALUE).
    pub reset_value: u8,
}

/// Where [`write_acpi_tables`] put things, for the boot protocols and the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiPlacement {
    /// The RSDP, which the boot protocols hand to the kernel (`acpi_rsdp_addr` in the zero
    /// page, `rsdp_paddr` in PVH's start_info).
    pub rsdp: GuestAddress,
    /// The 16-byte VMGenID buffer ([`VMGENID_START`], 8-byte aligned, in a reserved page):
    /// the VMGenID device writes the generation ID there and the DSDT's VMGenID description
    /// returns this address. It is fixed by the layout, so the DSDT's AML can be built before
    /// the tables are written.
    pub vmgenid: GuestAddress,
    /// Bytes of tables written from [`ACPI_START`] (RSDP included).
    pub tables_size: u64,
    /// The e820 ranges to add to the memory map, in address order: the tables as ACPI data
    /// (type 3), the VMGenID page as reserved (type 2), so that the guest allocates neither.
    pub e820: Vec<E820Entry>,
}

/// Room for the RSDP and the tables, before the VMGenID page.
pub const TABLES_ROOM: u64 = VMGENID_START - ACPI_START;

fn align_up(addr: u64) -> u64 {
    addr.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

/// Appends `table` to `image` (which starts at [`ACPI_START`]) at the next aligned address
/// and returns that address.
fn place(image: &mut Vec<u8>, table: &dyn Aml) -> u64 {
    let offset = align_up(image.len() as u64);
    // The image never grows past TABLES_ROOM: checked by the caller.
    image.resize(offset as usize, 0);
    table.to_aml_bytes(image);
    ACPI_START + offset
}

/// The FADT: hardware-reduced, with the DSDT's address and the sleep and reset registers.
fn fadt(cfg: &AcpiConfig, dsdt: u64) -> acpi_tables::fadt::FADT {
    // A one-byte register in port I/O space (GAS, 5.2.3.2, table 5.1).
    let io_byte = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            port.into(),
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, *b"PETRFACP", OEM_REVISION)
        // 64-bit X_DSDT (table 5.9, offset 140); the 32-bit DSDT field stays 0.
        .dsdt_64(dsdt)
        // Table 5.10: no fixed hardware (4.1); the reset register is valid; the power and
        // sleep buttons, if any, would be control-method devices, not fixed features.
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io_byte(cfg.reset_port);
    fadt.reset_value = cfg.reset_value;
    fadt.sleep_control_reg = io_byte(cfg.sleep_control_port);
    fadt.sleep_status_reg = io_byte(cfg.sleep_status_port);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    fadt.finalize()
}

/// The MADT (5.2.12), built on the generic table so that its flags and the structures the
/// crate has no type for (interrupt source override, local APIC NMI) can be written.
fn madt(vcpus: u8) -> Sdt {
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_SIZE,
        MADT_REVISION,
        OEM_ID,
        *b"PETRAPIC",
        OEM_REVISION,
    );
    // Local Interrupt Controller Address and Flags (table 5.19, offsets 36 and 40).
    // APIC_START is below 4 GiB by definition of the layout.
    madt.write_u32(36, APIC_START as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    let mut entries = Vec::with_capacity(usize::from(vcpus) * 8 + 32);
    for id in 0..vcpus {
        // Processor Local APIC (5.2.12.2): UID = APIC id = vCPU index, enabled.
        ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    // I/O APIC (5.2.12.3), with the MP table's id.
    IoApic::new(vcpus, IOAPIC_START as u32, 0).to_aml_bytes(&mut entries);
    // Interrupt Source Override (5.2.12.5, table 5.25): type, length 10, bus, source, GSI,
    // flags.
    entries.extend_from_slice(&[MADT_INTERRUPT_SOURCE_OVERRIDE, 10, ISA_BUS, PIT_IRQ]);
    entries.extend_from_slice(&PIT_GSI.to_le_bytes());
    entries.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
    // Local APIC NMI (5.2.12.7, table 5.27): type, length 6, UID, flags, LINT#.
    entries.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS]);
    entries.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
    entries.push(NMI_LINT);
    madt.append_slice(&entries);
    madt
}

/// Builds the RSDP and the tables as they lie from [`ACPI_START`]; checks `cfg` first.
pub fn build_acpi_tables(cfg: &AcpiConfig) -> Result<Vec<u8>> {
    if cfg.vcpus == 0 || cfg.vcpus > MAX_VCPUS {
        return Err(Error::AcpiVcpuCount {
            vcpus: cfg.vcpus,
            max: MAX_VCPUS,
        });
    }
    // Where each table goes: all sizes but the DSDT's are known from the vCPU count, so a
    // DSDT body that cannot fit is refused before anything is built.
    let xsdt_addr = align_up(ACPI_START + RSDP_SIZE);
    // The XSDT lists the FADT and the MADT (5.2.8); the DSDT is reached through the FADT.
    let xsdt_len = TABLE_HEADER_SIZE + 2 * 8;
    let fadt_addr = align_up(xsdt_addr + xsdt_len);
    let fadt_addr_end = fadt_addr + acpi_tables::fadt::FADT::len() as u64;
    let madt_addr = align_up(fadt_addr_end);
    let madt = madt(cfg.vcpus);
    let dsdt_addr = align_up(madt_addr + madt.len() as u64);
    let size = (dsdt_addr - ACPI_START)
        .saturating_add(TABLE_HEADER_SIZE)
        .saturating_add(cfg.dsdt_body.len() as u64);
    if size > TABLES_ROOM {
        return Err(Error::AcpiTablesTooLarge {
            size,
            room: TABLES_ROOM,
        });
    }

    // size <= TABLES_ROOM (60 KiB).
    let mut image = Vec::with_capacity(size as usize);
    // Room for the RSDP at ACPI_START, filled once the tables are in place.
    image.resize(RSDP_SIZE as usize, 0);
    let mut xsdt = XSDT::new(OEM_ID, *b"PETRXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut dsdt = Sdt::new(
        *b"DSDT",
        TABLE_HEADER_SIZE as u32,
        DSDT_REVISION,
        OEM_ID,
        *b"PETRDSDT",
        OEM_REVISION,
    );
    dsdt.append_slice(cfg.dsdt_body);
    let placed = [
        place(&mut image, &xsdt),
        place(&mut image, &fadt(cfg, dsdt_addr)),
        place(&mut image, &madt),
        place(&mut image, &dsdt),
    ];
    debug_assert_eq!(placed, [xsdt_addr, fadt_addr, madt_addr, dsdt_addr]);
    debug_assert_eq!(image.len() as u64, size);

    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    let mut rsdp_bytes = Vec::with_capacity(RSDP_SIZE as usize);
    rsdp.to_aml_bytes(&mut rsdp_bytes);
    image[..RSDP_SIZE as usize].copy_from_slice(&rsdp_bytes);
    Ok(image)
}

/// Writes the RSDP, XSDT, FADT, MADT and DSDT for `cfg` into `ram` at [`ACPI_START`] and
/// says where they are and which e820 ranges to report.
///
/// Errors, before anything is written: a vCPU count outside `1..=`[`MAX_VCPUS`]
/// ([`Error::AcpiVcpuCount`]), tables (with the DSDT body) larger than the room before the
/// VMGenID page ([`Error::AcpiTablesTooLarge`]), or guest RAM that does not cover the ACPI
/// area `[ACPI_START, ACPI_END)` ([`Error::AcpiOutsideRam`]). The VMGenID buffer is not
/// touched: the VMGenID device owns its contents.
///
/// Building and writing the tables takes some microseconds (the `tables_are_cheap` test
/// measures it).
pub fn write_acpi_tables(ram: &GuestRam, cfg: &AcpiConfig) -> Result<AcpiPlacement> {
    if !ram.contains(ACPI_START, ACPI_END - ACPI_START) {
        return Err(Error::AcpiOutsideRam {
            ram_size: ram.size(),
            start: ACPI_START,
            end: ACPI_END,
        });
    }
    let image = build_acpi_tables(cfg)?;
    ram.write(ACPI_START, &image)
        .map_err(|source| Error::WriteGuestMemory {
            what: "ACPI tables",
            addr: ACPI_START,
            source,
        })?;
    let entry = |addr, end: u64, type_| E820Entry {
        addr,
        size: end - addr,
        type_,
    };
    Ok(AcpiPlacement {
        rsdp: GuestAddress(ACPI_START),
        vmgenid: GuestAddress(VMGENID_START),
        tables_size: image.len() as u64,
        e820: vec![
            entry(ACPI_START, VMGENID_START, E820_ACPI),
            entry(VMGENID_START, ACPI_END, E820_RESERVED),
        ],
    })
}

#[cfg(test)]
mod tests;
