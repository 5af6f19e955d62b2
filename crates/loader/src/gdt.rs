//! The boot GDT and IDT, and segment descriptors <-> [`Segment`].
//!
//! The boot GDT has four 8-byte entries at [`GDT_START`] (the layout leaves room for exactly
//! four before [`IDT_START`]):
//!
//! | index | selector | descriptor |
//! |---|---|---|
//! | 0 | 0x00 | null |
//! | 1 | 0x08 | TSS: busy, base 0, limit 0x67 |
//! | 2 | 0x10 | code: 64-bit (long mode) or 32-bit flat (PVH), execute/read |
//! | 3 | 0x18 | data: 32-bit flat, read/write |
//!
//! Code at 0x10 and data at 0x18 are the selectors the 64-bit boot protocol names
//! (`__BOOT_CS` and `__BOOT_DS`, `Documentation/arch/x86/boot.rst`, "64-bit Boot Protocol").
//! The TSS entry is an 8-byte descriptor: it only mirrors the TR that the vcpu crate loads
//! through `KVM_SET_SREGS` (VM entry needs a usable busy TSS); the guest never runs `ltr` on it
//! before installing its own GDT.
//!
//! The IDT is 16 zero bytes (one non-present gate): any exception before the kernel installs
//! its own IDT shuts the VM down instead of jumping somewhere random.

use petrel_guest_mem::layout::{GDT_START, IDT_START};
use petrel_guest_mem::GuestRam;

use crate::{CpuMode, Error, Result, Segment};

/// Number of entries in the boot GDT.
pub const GDT_ENTRIES: usize = 4;
/// Selector of the boot TSS.
pub const TSS_SELECTOR: u16 = 0x08;
/// Selector of the boot code segment (`__BOOT_CS`, boot.rst "64-bit Boot Protocol").
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the boot data segment (`__BOOT_DS`, boot.rst "64-bit Boot Protocol").
pub const DATA_SELECTOR: u16 = 0x18;
/// Size of the boot IDT in bytes: one (non-present) 16-byte long-mode gate.
pub const IDT_SIZE: u64 = 16;

/// Descriptor type for code: execute/read, accessed (Intel SDM vol. 3, table 3-1).
const TYPE_CODE_EXEC_READ_ACCESSED: u8 = 0xb;
/// Descriptor type for data: read/write, accessed (Intel SDM vol. 3, table 3-1).
const TYPE_DATA_READ_WRITE_ACCESSED: u8 = 0x3;
/// System descriptor type for a busy 32-bit / 64-bit TSS (Intel SDM vol. 3, table 3-2).
const TYPE_TSS_BUSY: u8 = 0xb;
/// The limit of the smallest TSS: 104 bytes (Intel SDM vol. 3, 7.2.1 and 7.7).
const TSS_LIMIT: u32 = 0x67;

/// Packs `seg` into an 8-byte segment descriptor (Intel SDM vol. 3, 3.4.5, figure 3-8).
///
/// The selector is not part of a descriptor and is ignored. Returns `None` when an 8-byte
/// descriptor cannot express the segment: a base above 4 GiB, a byte-granular limit above
/// 1 MiB, or a page-granular limit whose low 12 bits are not all ones.
pub fn encode_descriptor(seg: &Segment) -> Option<u64> {
    let base = u32::try_from(seg.base).ok()?;
    let limit = if seg.g != 0 {
        if seg.limit & 0xfff != 0xfff {
            return None;
        }
        seg.limit >> 12
    } else {
        if seg.limit > 0xf_ffff {
            return None;
        }
        seg.limit
    };
    let access = u64::from(seg.type_ & 0xf)
        | u64::from(seg.s & 1) << 4
        | u64::from(seg.dpl & 3) << 5
        | u64::from(seg.present & 1) << 7;
    let flags = u64::from(seg.avl & 1)
        | u64::from(seg.l & 1) << 1
        | u64::from(seg.db & 1) << 2
        | u64::from(seg.g & 1) << 3;
    Some(
        u64::from(limit & 0xffff)
            | u64::from(base & 0xff_ffff) << 16
            | access << 40
            | u64::from(limit >> 16) << 48
            | flags << 52
            | u64::from(base >> 24) << 56,
    )
}

/// Unpacks an 8-byte segment descriptor into a [`Segment`] loaded with `selector`, with the
/// limit scaled by the granularity bit as `kvm_segment` expects it.
pub fn decode_descriptor(selector: u16, desc: u64) -> Segment {
    let base = (desc >> 16) & 0xff_ffff | ((desc >> 56) & 0xff) << 24;
    let raw_limit = (desc & 0xffff) as u32 | (((desc >> 48) & 0xf) as u32) << 16;
    let g = ((desc >> 55) & 1) as u8;
    let limit = if g != 0 {
        raw_limit << 12 | 0xfff
    } else {
        raw_limit
    };
    Segment {
        base,
        limit,
        selector,
        type_: ((desc >> 40) & 0xf) as u8,
        s: ((desc >> 44) & 1) as u8,
        dpl: ((desc >> 45) & 3) as u8,
        present: ((desc >> 47) & 1) as u8,
        avl: ((desc >> 52) & 1) as u8,
        l: ((desc >> 53) & 1) as u8,
        db: ((desc >> 54) & 1) as u8,
        g,
    }
}

/// The segments of the boot GDT for a CPU entering in `mode`, before encoding.
///
/// For [`CpuMode::Long64`] the code segment has L set and D clear (the only legal
/// combination for 64-bit code); for the others it is a 32-bit flat segment (D set), as the
/// PVH boot protocol requires. Data is always 32-bit flat, 4 GiB, read/write.
fn boot_segments(mode: CpuMode) -> [Segment; GDT_ENTRIES] {
    let long = mode == CpuMode::Long64;
    let tss = Segment {
        limit: TSS_LIMIT,
        selector: TSS_SELECTOR,
        type_: TYPE_TSS_BUSY,
        present: 1,
        ..Segment::default()
    };
    let code = Segment {
        limit: u32::MAX,
        selector: CODE_SELECTOR,
        type_: TYPE_CODE_EXEC_READ_ACCESSED,
        present: 1,
        s: 1,
        l: u8::from(long),
        db: u8::from(!long),
        g: 1,
        ..Segment::default()
    };
    let data = Segment {
        limit: u32::MAX,
        selector: DATA_SELECTOR,
        type_: TYPE_DATA_READ_WRITE_ACCESSED,
        present: 1,
        s: 1,
        db: 1,
        g: 1,
        ..Segment::default()
    };
    [Segment::default(), tss, code, data]
}

/// The boot GDT's four descriptors for a CPU entering in `mode`.
pub fn boot_gdt(mode: CpuMode) -> [u64; GDT_ENTRIES] {
    boot_segments(mode).map(|seg| {
        // The null entry encodes to 0; the others are flat 32-bit segments, always encodable.
        encode_descriptor(&seg).unwrap_or(0)
    })
}

/// What the boot CPU needs to know about the GDT and IDT that [`write_gdt_and_idt`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootSegments {
    /// CS, decoded from the GDT.
    pub code: Segment,
    /// DS, ES, FS, GS and SS, decoded from the GDT.
    pub data: Segment,
    /// TR, decoded from the GDT.
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

/// Writes the boot GDT for `mode` at [`GDT_START`] and a zeroed IDT at [`IDT_START`], and
/// returns the segments decoded back from what was written.
pub fn write_gdt_and_idt(ram: &GuestRam, mode: CpuMode) -> Result<BootSegments> {
    let gdt = boot_gdt(mode);
    let mut bytes = [0u8; GDT_ENTRIES * 8];
    for (chunk, desc) in bytes.chunks_exact_mut(8).zip(gdt) {
        chunk.copy_from_slice(&desc.to_le_bytes());
    }
    ram.write(GDT_START, &bytes)
        .map_err(|source| Error::WriteGuestMemory {
            what: "GDT",
            addr: GDT_START,
            source,
        })?;
    ram.write(IDT_START, &[0u8; IDT_SIZE as usize])
        .map_err(|source| Error::WriteGuestMemory {
            what: "IDT",
            addr: IDT_START,
            source,
        })?;
    let entry = |selector: u16| decode_descriptor(selector, gdt[usize::from(selector >> 3)]);
    Ok(BootSegments {
        code: entry(CODE_SELECTOR),
        data: entry(DATA_SELECTOR),
        tr: entry(TSS_SELECTOR),
        gdt_base: GDT_START,
        gdt_limit: (GDT_ENTRIES * 8 - 1) as u16,
        idt_base: IDT_START,
        idt_limit: (IDT_SIZE - 1) as u16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_gdt_matches_the_well_known_encodings() {
        let gdt = boot_gdt(CpuMode::Long64);
        assert_eq!(gdt[0], 0);
        // Busy TSS, present, byte granular, limit 0x67.
        assert_eq!(gdt[1], 0x0000_8b00_0000_0067);
        // Flags 0xa09b: G, L, present, DPL 0, code execute/read accessed, limit 0xfffff.
        assert_eq!(gdt[2], 0x00af_9b00_0000_ffff);
        // Flags 0xc093: G, D/B, present, DPL 0, data read/write accessed.
        assert_eq!(gdt[3], 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn pvh_code_segment_is_32_bit() {
        let gdt = boot_gdt(CpuMode::Protected32);
        // Flags 0xc09b: G, D/B, no L.
        assert_eq!(gdt[2], 0x00cf_9b00_0000_ffff);
        let code = decode_descriptor(CODE_SELECTOR, gdt[2]);
        assert_eq!((code.l, code.db, code.g), (0, 1, 1));
        assert_eq!(code.limit, 0xffff_ffff);
    }

    #[test]
    fn decode_splits_base_and_limit() {
        // base 0x12345678, limit 0xabcde, byte granular, data segment DPL 3, AVL.
        // Bytes, high to low: base[31:24] 0x12, flags+limit[19:16] 0x1a, access 0xf3,
        // base[23:0] 0x345678, limit[15:0] 0xbcde.
        let desc = 0x121a_f334_5678_bcde_u64;
        let seg = decode_descriptor(0x2b, desc);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xa_bcde);
        assert_eq!(seg.selector, 0x2b);
        assert_eq!(seg.type_, 0x3);
        assert_eq!((seg.s, seg.dpl, seg.present), (1, 3, 1));
        assert_eq!((seg.avl, seg.l, seg.db, seg.g), (1, 0, 0, 0));
        assert_eq!(encode_descriptor(&seg), Some(desc));
    }

    #[test]
    fn every_boot_descriptor_round_trips() {
        for mode in [CpuMode::Long64, CpuMode::Protected32] {
            for (seg, desc) in boot_segments(mode).iter().zip(boot_gdt(mode)) {
                let back = decode_descriptor(seg.selector, desc);
                assert_eq!(&back, seg);
                assert_eq!(encode_descriptor(&back), Some(desc));
            }
        }
    }

    #[test]
    fn unencodable_segments_are_refused() {
        let high_base = Segment {
            base: 1 << 32,
            ..Segment::default()
        };
        assert_eq!(encode_descriptor(&high_base), None);
        let big_byte_limit = Segment {
            limit: 0x10_0000,
            ..Segment::default()
        };
        assert_eq!(encode_descriptor(&big_byte_limit), None);
        let ragged_page_limit = Segment {
            limit: 0x1_0000,
            g: 1,
            ..Segment::default()
        };
        assert_eq!(encode_descriptor(&ragged_page_limit), None);
    }

    #[test]
    fn gdt_and_idt_are_written_where_the_layout_says() {
        let ram = GuestRam::new(1 << 20).unwrap();
        ram.write(IDT_START, &[0xff; IDT_SIZE as usize]).unwrap();
        let segs = write_gdt_and_idt(&ram, CpuMode::Long64).unwrap();
        for (i, desc) in boot_gdt(CpuMode::Long64).iter().enumerate() {
            assert_eq!(
                ram.read_obj::<u64>(GDT_START + 8 * i as u64).unwrap(),
                *desc
            );
        }
        let mut idt = [0xffu8; IDT_SIZE as usize];
        ram.read(IDT_START, &mut idt).unwrap();
        assert_eq!(idt, [0; IDT_SIZE as usize]);
        assert_eq!(segs.gdt_base, GDT_START);
        assert_eq!(segs.gdt_limit, 31);
        assert!(GDT_START + u64::from(segs.gdt_limit) < IDT_START);
        assert_eq!(segs.idt_limit, 15);
        assert_eq!(segs.code.selector, 0x10);
        assert_eq!(segs.code.l, 1);
        assert_eq!(segs.data.selector, 0x18);
        assert_eq!(segs.tr.selector, 0x08);
        assert_eq!(segs.tr.s, 0);
    }
}
