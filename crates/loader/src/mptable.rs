//! The Intel MultiProcessor Specification table, so that a guest without ACPI finds its
//! vCPUs, the IOAPIC and how ISA interrupts reach it.
//!
//! All references are to the MultiProcessor Specification, version 1.4 (May 1997). The MP
//! floating pointer structure goes at [`EBDA_START`] (section 4: an OS searches the first KiB
//! of the EBDA, and Linux also scans 639-640 KiB, which is where `EBDA_START` is), and the
//! configuration table right after it. Both must end before [`LOW_RAM_END`], which bounds the
//! number of vCPUs ([`MAX_CPUS`]).
//!
//! The table describes:
//! - one processor entry per vCPU, local APIC ids `0..num_cpus`, the bootstrap flag on id 0;
//! - one ISA bus (id 0);
//! - one IOAPIC at [`IOAPIC_START`] with id `num_cpus` (the first id no CPU uses);
//! - I/O interrupt entries for ISA IRQs 0-15: IRQ 0 goes to IOAPIC pin 2 and IRQ 2 (the 8259
//!   cascade) has no entry, because KVM's default GSI routing sends GSI 0 (the PIT) to IOAPIC
//!   pin 2 (`kvm_setup_default_irq_routing`, the same wiring as every PC chipset); the other
//!   IRQs go to the pin of the same number;
//! - local interrupt entries: LINT0 as ExtINT (the 8259) and LINT1 as NMI, on every local APIC.

use petrel_guest_mem::layout::{APIC_START, EBDA_START, IOAPIC_START, LOW_RAM_END};
use petrel_guest_mem::GuestRam;

use crate::{Error, Result};

/// MP floating pointer signature (section 4.1).
const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
/// MP configuration table signature (section 4.2).
const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
/// Specification revision byte for version 1.4 (sections 4.1 and 4.2).
const MP_SPEC_REV_1_4: u8 = 4;
/// OEM id in the configuration table header (8 bytes, space padded; section 4.2).
const OEM_ID: &[u8; 8] = b"PETREL  ";
/// Product id in the configuration table header (12 bytes, space padded; section 4.2).
const PRODUCT_ID: &[u8; 12] = b"PETREL VM   ";

/// Size of the MP floating pointer structure (section 4.1: one 16-byte paragraph).
const MPF_SIZE: usize = 16;
/// Size of the configuration table header (section 4.2, table 4-2).
const MPC_HEADER_SIZE: usize = 44;
/// Size of a processor entry (section 4.3.1).
const PROCESSOR_ENTRY_SIZE: usize = 20;
/// Size of bus, I/O APIC, I/O interrupt and local interrupt entries (sections 4.3.2-4.3.5).
const SHORT_ENTRY_SIZE: usize = 8;

/// Entry type codes (section 4.3, table 4-3).
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

/// Processor entry CPU flags (section 4.3.1): usable, and bootstrap processor.
const CPU_FLAG_ENABLED: u8 = 1 << 0;
const CPU_FLAG_BSP: u8 = 1 << 1;
/// Local APIC version that KVM's in-kernel LAPIC reports (its version register reads 0x14:
/// an integrated APIC, section 4.3.1 "Local APIC version").
const LAPIC_VERSION: u8 = 0x14;
/// CPU signature: family 6 in bits 11:8 (section 4.3.1, same layout as CPUID.1:EAX).
const CPU_SIGNATURE: u32 = 6 << 8;
/// CPU feature flags (CPUID.1:EDX): FPU (bit 0) and on-chip APIC (bit 9).
const CPU_FEATURES: u32 = 1 << 0 | 1 << 9;

/// The ISA bus id and its type string (section 4.3.2, tables 4-7 and 4-8).
const ISA_BUS_ID: u8 = 0;
const ISA_BUS_TYPE: &[u8; 6] = b"ISA   ";

/// IOAPIC version that KVM's in-kernel IOAPIC reports (0x11, the 82093AA's).
const IOAPIC_VERSION: u8 = 0x11;
/// I/O APIC flags: usable (section 4.3.3).
const IOAPIC_FLAG_ENABLED: u8 = 1 << 0;

/// Interrupt types (section 4.3.4, "interrupt type" field).
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Interrupt flags: polarity and trigger "conform to the bus" (edge, active high for ISA).
const INT_FLAGS_CONFORMS: u16 = 0;
/// Destination local APIC id meaning "all local APICs" (section 4.3.5).
const ALL_LOCAL_APICS: u8 = 0xff;

/// ISA IRQ lines (0-15) described by I/O interrupt entries.
const ISA_IRQS: u8 = 16;
/// The 8259 cascade line: not an interrupt source of its own.
const ISA_CASCADE_IRQ: u8 = 2;
/// The IOAPIC pin the PIT (ISA IRQ 0) is wired to.
const PIT_IOAPIC_PIN: u8 = 2;

/// Number of I/O interrupt entries: every ISA IRQ but the cascade.
const IO_INTERRUPT_ENTRIES: usize = ISA_IRQS as usize - 1;
/// Number of local interrupt entries (LINT0 and LINT1).
const LOCAL_INTERRUPT_ENTRIES: usize = 2;

/// Bytes of the floating pointer and the configuration table that do not depend on the CPU
/// count.
const FIXED_SIZE: usize = MPF_SIZE
    + MPC_HEADER_SIZE
    + SHORT_ENTRY_SIZE // ISA bus
    + SHORT_ENTRY_SIZE // IOAPIC
    + IO_INTERRUPT_ENTRIES * SHORT_ENTRY_SIZE
    + LOCAL_INTERRUPT_ENTRIES * SHORT_ENTRY_SIZE;

/// The most vCPUs whose MP table fits between [`EBDA_START`] and [`LOW_RAM_END`].
pub const MAX_CPUS: u8 = {
    let room = (LOW_RAM_END - EBDA_START) as usize - FIXED_SIZE;
    let n = room / PROCESSOR_ENTRY_SIZE;
    // APIC ids are 8 bits and 0xff is the broadcast id; one more id goes to the IOAPIC.
    if n > 0xfe {
        0xfe
    } else {
        n as u8
    }
};

/// Size in bytes of the floating pointer plus configuration table for `num_cpus` vCPUs.
pub fn mptable_size(num_cpus: u8) -> usize {
    FIXED_SIZE + usize::from(num_cpus) * PROCESSOR_ENTRY_SIZE
}

/// The byte that makes `bytes` sum to zero modulo 256 (sections 4.1 and 4.2 "checksum").
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer and the configuration table as they lie at [`EBDA_START`].
fn build(num_cpus: u8) -> Result<Vec<u8>> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(Error::MpTableCpuCount {
            num_cpus,
            max: MAX_CPUS,
        });
    }
    let mpc_addr = EBDA_START + MPF_SIZE as u64;
    let ioapic_id = num_cpus;

    // Entries first, so that the header can carry their count and length.
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for apic_id in 0..num_cpus {
        let flags = CPU_FLAG_ENABLED | if apic_id == 0 { CPU_FLAG_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, apic_id, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(ISA_BUS_TYPE);
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_FLAG_ENABLED]);
    // IOAPIC_START is below 4 GiB by definition of the layout.
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in (0..ISA_IRQS).filter(|&irq| irq != ISA_CASCADE_IRQ) {
        let pin = if irq == 0 { PIT_IOAPIC_PIN } else { irq };
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT]);
        entries.extend_from_slice(&INT_FLAGS_CONFORMS.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, irq, ioapic_id, pin]);
        count += 1;
    }
    for (lint, int_type) in [(0u8, INT_TYPE_EXTINT), (1, INT_TYPE_NMI)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, int_type]);
        entries.extend_from_slice(&INT_FLAGS_CONFORMS.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, 0, ALL_LOCAL_APICS, lint]);
        count += 1;
    }

    let mut mpc = Vec::with_capacity(MPC_HEADER_SIZE + entries.len());
    mpc.extend_from_slice(MPC_SIGNATURE);
    // At most MPC_HEADER_SIZE + 254 * 20 + ... bytes: well below 64 KiB.
    mpc.extend_from_slice(&((MPC_HEADER_SIZE + entries.len()) as u16).to_le_bytes());
    mpc.push(MP_SPEC_REV_1_4);
    mpc.push(0); // checksum, filled below
    mpc.extend_from_slice(OEM_ID);
    mpc.extend_from_slice(PRODUCT_ID);
    mpc.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer: none
    mpc.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    mpc.extend_from_slice(&count.to_le_bytes());
    // APIC_START is below 4 GiB by definition of the layout.
    mpc.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    mpc.extend_from_slice(&0u16.to_le_bytes()); // extended table length: none
    mpc.push(0); // extended table checksum
    mpc.push(0); // reserved
    debug_assert_eq!(mpc.len(), MPC_HEADER_SIZE);
    mpc.extend_from_slice(&entries);
    mpc[7] = checksum(&mpc);

    let mut mpf = Vec::with_capacity(MPF_SIZE + mpc.len());
    mpf.extend_from_slice(MPF_SIGNATURE);
    mpf.extend_from_slice(&(mpc_addr as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte paragraphs
    mpf.push(MP_SPEC_REV_1_4);
    mpf.push(0); // checksum, filled below
    mpf.push(0); // feature byte 1: 0 = a configuration table is present
    mpf.extend_from_slice(&[0; 4]); // feature bytes 2-5: IMCRP clear, virtual wire mode
    mpf[10] = checksum(&mpf);
    debug_assert_eq!(mpf.len(), MPF_SIZE);

    mpf.extend_from_slice(&mpc);
    Ok(mpf)
}

/// Writes the MP floating pointer and configuration table for `num_cpus` vCPUs at
/// [`EBDA_START`]. Fails for 0 vCPUs or more than [`MAX_CPUS`], writing nothing.
pub fn setup_mptable(ram: &GuestRam, num_cpus: u8) -> Result<()> {
    let table = build(num_cpus)?;
    debug_assert_eq!(table.len(), mptable_size(num_cpus));
    ram.write(EBDA_START, &table)
        .map_err(|source| Error::WriteGuestMemory {
            what: "MP table",
            addr: EBDA_START,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn read_table(num_cpus: u8) -> Vec<u8> {
        let ram = GuestRam::new(1 << 20).unwrap();
        setup_mptable(&ram, num_cpus).unwrap();
        let mut buf = vec![0u8; mptable_size(num_cpus)];
        ram.read(EBDA_START, &mut buf).unwrap();
        buf
    }

    /// Splits the configuration table's entries: (type, bytes).
    fn entries(mpc: &[u8]) -> Vec<(u8, &[u8])> {
        let mut rest = &mpc[MPC_HEADER_SIZE..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = if rest[0] == ENTRY_PROCESSOR {
                PROCESSOR_ENTRY_SIZE
            } else {
                8
            };
            out.push((rest[0], &rest[..len]));
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn checksums_sum_to_zero() {
        for n in [1, 2, 7, MAX_CPUS] {
            let t = read_table(n);
            let (mpf, mpc) = t.split_at(MPF_SIZE);
            assert_eq!(&mpf[..4], b"_MP_");
            assert_eq!(sum(mpf), 0, "floating pointer, {n} cpus");
            assert_eq!(&mpc[..4], b"PCMP");
            let len = u16::from_le_bytes([mpc[4], mpc[5]]) as usize;
            assert_eq!(len, mpc.len());
            assert_eq!(sum(&mpc[..len]), 0, "configuration table, {n} cpus");
        }
    }

    #[test]
    fn floating_pointer_points_at_the_table() {
        let t = read_table(2);
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        assert_eq!(u64::from(ptr), EBDA_START + 16);
        assert_eq!(t[8], 1, "length in paragraphs");
        assert_eq!(t[9], 4, "spec revision 1.4");
        assert_eq!(
            &t[11..16],
            &[0; 5],
            "config table present, virtual wire mode"
        );
    }

    #[test]
    fn header_counts_entries_and_names_the_lapic() {
        let t = read_table(4);
        let mpc = &t[MPF_SIZE..];
        let count = u16::from_le_bytes([mpc[34], mpc[35]]);
        let lapic = u32::from_le_bytes([mpc[36], mpc[37], mpc[38], mpc[39]]);
        let all = entries(mpc);
        assert_eq!(usize::from(count), all.len());
        assert_eq!(all.len(), 4 + 1 + 1 + 15 + 2);
        assert_eq!(u64::from(lapic), APIC_START);
        let of_type = |t: u8| all.iter().filter(|(ty, _)| *ty == t).count();
        assert_eq!(of_type(ENTRY_PROCESSOR), 4);
        assert_eq!(of_type(ENTRY_BUS), 1);
        assert_eq!(of_type(ENTRY_IOAPIC), 1);
        assert_eq!(of_type(ENTRY_IO_INTERRUPT), 15);
        assert_eq!(of_type(ENTRY_LOCAL_INTERRUPT), 2);
    }

    #[test]
    fn processors_have_ids_0_to_n_and_only_0_is_bsp() {
        let t = read_table(3);
        let cpus: Vec<_> = entries(&t[MPF_SIZE..])
            .into_iter()
            .filter(|(ty, _)| *ty == 0)
            .collect();
        for (i, (_, e)) in cpus.iter().enumerate() {
            assert_eq!(usize::from(e[1]), i, "APIC id");
            assert_eq!(e[2], LAPIC_VERSION);
            assert_eq!(e[3] & CPU_FLAG_ENABLED, CPU_FLAG_ENABLED);
            assert_eq!(e[3] & CPU_FLAG_BSP != 0, i == 0);
        }
    }

    #[test]
    fn bus_ioapic_and_interrupt_routing() {
        let t = read_table(2);
        let all = entries(&t[MPF_SIZE..]);
        let (_, bus) = all.iter().find(|(ty, _)| *ty == ENTRY_BUS).unwrap();
        assert_eq!(&bus[2..8], b"ISA   ");
        let (_, ioapic) = all.iter().find(|(ty, _)| *ty == ENTRY_IOAPIC).unwrap();
        assert_eq!(ioapic[1], 2, "IOAPIC id follows the CPUs' ids");
        assert_eq!(ioapic[3], IOAPIC_FLAG_ENABLED);
        assert_eq!(
            u64::from(u32::from_le_bytes(ioapic[4..8].try_into().unwrap())),
            IOAPIC_START
        );

        let routes: Vec<(u8, u8)> = all
            .iter()
            .filter(|(ty, _)| *ty == ENTRY_IO_INTERRUPT)
            .map(|(_, e)| {
                assert_eq!(e[1], INT_TYPE_INT);
                assert_eq!(
                    (e[4], e[6]),
                    (ISA_BUS_ID, 2),
                    "from the ISA bus to the IOAPIC"
                );
                (e[5], e[7])
            })
            .collect();
        assert_eq!(routes[0], (0, 2), "the PIT is on IOAPIC pin 2");
        assert!(
            !routes.iter().any(|(irq, _)| *irq == 2),
            "no entry for the cascade"
        );
        for irq in 1..16u8 {
            if irq != 2 {
                assert!(routes.contains(&(irq, irq)), "IRQ {irq}");
            }
        }

        let lints: Vec<(u8, u8, u8)> = all
            .iter()
            .filter(|(ty, _)| *ty == ENTRY_LOCAL_INTERRUPT)
            .map(|(_, e)| (e[1], e[6], e[7]))
            .collect();
        assert_eq!(
            lints,
            vec![(INT_TYPE_EXTINT, 0xff, 0), (INT_TYPE_NMI, 0xff, 1)]
        );
    }

    #[test]
    fn the_largest_table_fits_in_the_ebda() {
        assert_eq!(MAX_CPUS, 40);
        assert!(EBDA_START + mptable_size(MAX_CPUS) as u64 <= LOW_RAM_END);
        assert!(EBDA_START + mptable_size(MAX_CPUS + 1) as u64 > LOW_RAM_END);
    }

    #[test]
    fn cpu_counts_out_of_range_are_refused_without_writing() {
        let ram = GuestRam::new(1 << 20).unwrap();
        for n in [0, MAX_CPUS + 1, 255] {
            let err = setup_mptable(&ram, n).unwrap_err();
            assert!(
                matches!(err, Error::MpTableCpuCount { num_cpus, max: MAX_CPUS } if num_cpus == n)
            );
            assert!(err.to_string().contains(&n.to_string()), "{err}");
        }
        assert_eq!(ram.read_obj::<u32>(EBDA_START).unwrap(), 0);
    }
}
