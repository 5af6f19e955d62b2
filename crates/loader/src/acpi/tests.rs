//! The tables read back from guest memory with the offsets of the ACPI 6.5 specification,
//! independently of how `acpi_tables` lays out its structs.

use super::*;
use crate::bootparams::E820_RAM;
use petrel_guest_mem::layout::{HIMEM_START, VMGENID_SIZE};

const MIB: u64 = 1 << 20;

/// A small DSDT body: `Name (TEST, 0x2A)` in AML (NameOp, NameString, BytePrefix, 0x2a).
const BODY: &[u8] = &[0x08, b'T', b'E', b'S', b'T', 0x0a, 0x2a];

fn config(vcpus: u8, dsdt_body: &[u8]) -> AcpiConfig<'_> {
    AcpiConfig {
        vcpus,
        dsdt_body,
        sleep_control_port: 0x600,
        sleep_status_port: 0x601,
        reset_port: 0x602,
        reset_value: 0x0f,
    }
}

fn read(ram: &GuestRam, addr: u64, len: u64) -> Vec<u8> {
    let mut bytes = vec![0; len as usize];
    ram.read(addr, &mut bytes).unwrap();
    bytes
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
}

/// Reads the system description table at `addr`: checks its signature, that its length
/// covers its header and that its bytes sum to zero (5.2.6, "Checksum"); returns it whole.
fn table(ram: &GuestRam, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
    let header = read(ram, addr, 36);
    assert_eq!(&header[0..4], signature, "signature at {addr:#x}");
    let len = u32_at(&header, 4);
    assert!(len >= 36, "{signature:?} length {len}");
    let bytes = read(ram, addr, len.into());
    assert_eq!(sum(&bytes), 0, "{signature:?} checksum");
    assert_eq!(&bytes[10..16], &OEM_ID, "{signature:?} OEM id");
    bytes
}

/// The tables reached from the RSDP, as the guest finds them: (XSDT, FADT, MADT, DSDT).
fn walk(ram: &GuestRam, rsdp: u64) -> [Vec<u8>; 4] {
    // RSDP (5.2.5.3, table 5.3): signature, checksum over the first 20 bytes, revision 2,
    // length 36, XSDT address at 24, extended checksum over all 36.
    let r = read(ram, rsdp, 36);
    assert_eq!(&r[0..8], b"RSD PTR ");
    assert_eq!(sum(&r[..20]), 0, "RSDP checksum");
    assert_eq!(sum(&r), 0, "RSDP extended checksum");
    assert_eq!(r[15], 2, "revision");
    assert_eq!(u32_at(&r, 20), 36, "length");
    assert_eq!(&r[9..15], &OEM_ID);
    let xsdt = table(ram, u64_at(&r, 24), b"XSDT");
    // The XSDT's entries (5.2.8): the FADT, then the MADT; never the DSDT.
    assert_eq!(xsdt.len(), 36 + 16);
    let fadt = table(ram, u64_at(&xsdt, 36), b"FACP");
    let madt = table(ram, u64_at(&xsdt, 44), b"APIC");
    // X_DSDT (table 5.9, offset 140); the 32-bit DSDT (offset 40) is zero.
    assert_eq!(u32_at(&fadt, 40), 0);
    let dsdt = table(ram, u64_at(&fadt, 140), b"DSDT");
    [xsdt, fadt, madt, dsdt]
}

/// A Generic Address Structure (5.2.3.2): space, bit width, bit offset, access size, address.
fn gas(b: &[u8], off: usize) -> (u8, u8, u8, u8, u64) {
    (
        b[off],
        b[off + 1],
        b[off + 2],
        b[off + 3],
        u64_at(b, off + 4),
    )
}

#[test]
fn tables_are_found_from_the_rsdp_with_valid_checksums() {
    let ram = GuestRam::new(64 * MIB).unwrap();
    let placement = write_acpi_tables(&ram, &config(2, BODY)).unwrap();
    assert_eq!(placement.rsdp, GuestAddress(ACPI_START));
    assert_eq!(placement.rsdp.0 % 16, 0, "RSDP on a 16-byte boundary");
    let tables = walk(&ram, placement.rsdp.0);
    // Every table lies inside the tables' room, before the VMGenID page, 8-byte aligned.
    let mut end = ACPI_START + 36;
    let r = read(&ram, ACPI_START, 36);
    let xsdt = u64_at(&r, 24);
    let addrs = [
        xsdt,
        u64_at(&tables[0], 36),
        u64_at(&tables[0], 44),
        u64_at(&tables[1], 140),
    ];
    for (addr, t) in addrs.iter().zip(&tables) {
        assert_eq!(addr % 8, 0, "{addr:#x}");
        assert!(*addr >= end, "{addr:#x} overlaps the previous table");
        end = addr + t.len() as u64;
    }
    assert!(end <= VMGENID_START);
    assert_eq!(placement.tables_size, end - ACPI_START);
}

#[test]
fn fadt_is_hardware_reduced_with_the_given_registers() {
    let ram = GuestRam::new(64 * MIB).unwrap();
    let p = write_acpi_tables(&ram, &config(1, BODY)).unwrap();
    let [_, fadt, _, _] = walk(&ram, p.rsdp.0);
    // ACPI 6.5's FADT: 276 bytes, major version 6 (header revision), minor version 5.
    assert_eq!(fadt.len(), 276);
    assert_eq!(fadt[8], 6, "FADT major version");
    assert_eq!(fadt[131], 5, "FADT minor version");
    // Flags (offset 112, table 5.10): PWR_BUTTON (4), SLP_BUTTON (5), RESET_REG_SUP (10),
    // HW_REDUCED_ACPI (20), nothing else.
    let flags = u32_at(&fadt, 112);
    assert_eq!(flags, 1 << 4 | 1 << 5 | 1 << 10 | 1 << 20, "{flags:#x}");
    // IAPC_BOOT_ARCH (offset 109, table 5.11): 8042, VGA not present, MSI not supported;
    // CMOS RTC Not Present (bit 5) clear.
    let arch = u16_at(&fadt, 109);
    assert_eq!(arch, 1 << 1 | 1 << 2 | 1 << 3, "{arch:#x}");
    // RESET_REG (offset 116) and RESET_VALUE (128): one byte in System I/O space.
    assert_eq!(gas(&fadt, 116), (1, 8, 0, 1, 0x602));
    assert_eq!(fadt[128], 0x0f);
    // SLEEP_CONTROL_REG (244) and SLEEP_STATUS_REG (256).
    assert_eq!(gas(&fadt, 244), (1, 8, 0, 1, 0x600));
    assert_eq!(gas(&fadt, 256), (1, 8, 0, 1, 0x601));
    // No FACS (FIRMWARE_CTRL at 36 and X_FIRMWARE_CTRL at 132), no PM1 blocks or SCI.
    assert_eq!(u32_at(&fadt, 36), 0);
    assert_eq!(u64_at(&fadt, 132), 0);
    assert_eq!(u16_at(&fadt, 46), 0, "SCI_INT");
    assert_eq!(u32_at(&fadt, 56), 0, "PM1a_EVT_BLK");
    assert_eq!(u32_at(&fadt, 64), 0, "PM1a_CNT_BLK");
    // Hypervisor vendor identity (offset 268).
    assert_eq!(&fadt[268..276], &HYPERVISOR_VENDOR_ID);
}

#[test]
fn madt_has_one_local_apic_per_vcpu_the_ioapic_and_the_overrides() {
    for vcpus in [1u8, 4, MAX_VCPUS] {
        let ram = GuestRam::new(64 * MIB).unwrap();
        let p = write_acpi_tables(&ram, &config(vcpus, BODY)).unwrap();
        let [_, _, madt, _] = walk(&ram, p.rsdp.0);
        assert_eq!(madt[8], MADT_REVISION);
        assert_eq!(u32_at(&madt, 36), APIC_START as u32, "local APIC address");
        assert_eq!(u32_at(&madt, 40), MADT_PCAT_COMPAT, "flags");
        // Walk the interrupt controller structures (5.2.12, type and length bytes).
        let mut lapics = Vec::new();
        let mut ioapics = Vec::new();
        let mut overrides = Vec::new();
        let mut nmis = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            let (kind, len) = (madt[off], usize::from(madt[off + 1]));
            assert!(len >= 2 && off + len <= madt.len(), "structure at {off}");
            let s = &madt[off..off + len];
            match kind {
                0 => {
                    assert_eq!(len, 8);
                    // UID, APIC id, flags (bit 0: enabled).
                    lapics.push((s[2], s[3], u32_at(s, 4)));
                }
                1 => {
                    assert_eq!(len, 12);
                    ioapics.push((s[2], u32_at(s, 4), u32_at(s, 8)));
                }
                2 => {
                    assert_eq!(len, 10);
                    overrides.push((s[2], s[3], u32_at(s, 4), u16_at(s, 8)));
                }
                4 => {
                    assert_eq!(len, 6);
                    nmis.push((s[2], u16_at(s, 3), s[5]));
                }
                other => panic!("unexpected MADT structure type {other}"),
            }
            off += len;
        }
        assert_eq!(off, madt.len());
        let expected: Vec<_> = (0..vcpus).map(|id| (id, id, 1)).collect();
        assert_eq!(lapics, expected);
        assert_eq!(ioapics, vec![(vcpus, IOAPIC_START as u32, 0)]);
        // ISA IRQ 0 -> GSI 2, conforming to the bus, as in the MP table.
        assert_eq!(overrides, vec![(0, 0, 2, 0)]);
        // LINT1 is NMI on every processor.
        assert_eq!(nmis, vec![(0xff, 0, 1)]);
    }
}

#[test]
fn dsdt_carries_the_given_body() {
    let ram = GuestRam::new(64 * MIB).unwrap();
    let p = write_acpi_tables(&ram, &config(1, BODY)).unwrap();
    let [_, _, _, dsdt] = walk(&ram, p.rsdp.0);
    assert_eq!(dsdt[8], DSDT_REVISION);
    assert_eq!(&dsdt[36..], BODY);
    // An empty body is a valid, empty DSDT.
    let p = write_acpi_tables(&ram, &config(1, &[])).unwrap();
    let [_, _, _, dsdt] = walk(&ram, p.rsdp.0);
    assert_eq!(dsdt.len(), 36);
    // The largest body that fits.
    let fixed = p.tables_size - 36;
    let big = vec![0xa5; (TABLES_ROOM - fixed - 36) as usize];
    let p = write_acpi_tables(&ram, &config(1, &big)).unwrap();
    assert_eq!(p.tables_size, TABLES_ROOM);
    let [_, _, _, dsdt] = walk(&ram, p.rsdp.0);
    assert_eq!(&dsdt[36..], big.as_slice());
}

#[test]
fn placement_reports_the_vmgenid_buffer_and_the_e820_ranges() {
    let ram = GuestRam::new(64 * MIB).unwrap();
    // Whatever the VMGenID device wrote stays.
    ram.write(VMGENID_START, &[0x5a; 16]).unwrap();
    let p = write_acpi_tables(&ram, &config(2, BODY)).unwrap();
    assert_eq!(p.vmgenid, GuestAddress(VMGENID_START));
    assert_eq!(p.vmgenid.0 % 8, 0);
    assert_eq!(
        p.vmgenid.0 / 0x1000,
        (p.vmgenid.0 + VMGENID_SIZE - 1) / 0x1000
    );
    assert_eq!(read(&ram, VMGENID_START, 16), vec![0x5a; 16]);
    assert_eq!(
        p.e820,
        vec![
            E820Entry {
                addr: ACPI_START,
                size: VMGENID_START - ACPI_START,
                type_: E820_ACPI
            },
            E820Entry {
                addr: VMGENID_START,
                size: ACPI_END - VMGENID_START,
                type_: E820_RESERVED
            },
        ]
    );
    // The area is in the BIOS hole, between the RAM below it and the kernel's RAM.
    let map = crate::bootparams::e820_map(ram.size(), &p.e820);
    let types: Vec<_> = map.iter().map(|e| (e.addr, e.type_)).collect();
    assert_eq!(
        types,
        vec![
            (0, E820_RAM),
            (ACPI_START, E820_ACPI),
            (VMGENID_START, E820_RESERVED),
            (HIMEM_START, E820_RAM)
        ]
    );
    for pair in map.windows(2) {
        assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{pair:?}");
    }
}

#[test]
fn bad_inputs_are_refused_before_anything_is_written() {
    // Guest RAM that ends below the ACPI area.
    let small = GuestRam::new(0x8_0000).unwrap();
    let err = write_acpi_tables(&small, &config(1, BODY)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::AcpiOutsideRam {
                ram_size: 0x8_0000,
                start: ACPI_START,
                end: ACPI_END
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "guest RAM of 0x80000 bytes does not cover the ACPI area [0xe0000, 0xf0000): ACPI \
         needs at least 1 MiB of guest RAM"
    );
    // RAM ending inside the area.
    let partial = GuestRam::new(0xe_8000).unwrap();
    assert!(matches!(
        write_acpi_tables(&partial, &config(1, BODY)),
        Err(Error::AcpiOutsideRam { .. })
    ));

    let ram = GuestRam::new(64 * MIB).unwrap();
    for vcpus in [0, MAX_VCPUS + 1] {
        let err = write_acpi_tables(&ram, &config(vcpus, BODY)).unwrap_err();
        assert!(
            matches!(err, Error::AcpiVcpuCount { vcpus: v, max: MAX_VCPUS } if v == vcpus),
            "{err:?}"
        );
    }
    let huge = vec![0; TABLES_ROOM as usize];
    let err = write_acpi_tables(&ram, &config(1, &huge)).unwrap_err();
    assert!(
        matches!(err, Error::AcpiTablesTooLarge { size, room: TABLES_ROOM } if size > TABLES_ROOM),
        "{err:?}"
    );
    assert!(err.to_string().contains("0xf000 bytes"), "{err}");
    // Nothing was written.
    assert_eq!(read(&ram, ACPI_START, 8), vec![0; 8]);
}

#[test]
fn tables_are_cheap() {
    // The tables are rebuilt for every VM start: they must cost microseconds, not
    // milliseconds. Measured over many builds so that one slow scheduling slice does not
    // decide; the bound is loose enough for an unoptimised build on a busy machine.
    let ram = GuestRam::new(64 * MIB).unwrap();
    let body = vec![0x5b; 2048];
    let cfg = config(8, &body);
    let runs = 200;
    let start = std::time::Instant::now();
    for _ in 0..runs {
        write_acpi_tables(&ram, &cfg).unwrap();
    }
    let each = start.elapsed() / runs;
    println!("write_acpi_tables: {each:?} per VM (8 vCPUs, 2 KiB DSDT body)");
    assert!(
        each < std::time::Duration::from_millis(2),
        "{each:?} per build"
    );
}
