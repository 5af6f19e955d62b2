//! Fake kernel images for unit tests: just enough header for the checks, with marker bytes.

/// Layout of [`bzimage`]: one setup sector after the boot sector, then the protected-mode part.
pub const BZ_SETUP_SIZE: usize = 2 * 512;
/// Size of the fake protected-mode kernel.
pub const BZ_KERNEL_SIZE: usize = 0x1000;
/// The fake bzImage's `pref_address` (16 MiB, Linux's default `LOAD_PHYSICAL_ADDR`).
pub const BZ_PREF_ADDRESS: u64 = 0x100_0000;
/// The fake bzImage's `init_size`.
pub const BZ_INIT_SIZE: u64 = 0x20_0000;
/// The fake bzImage's `initrd_addr_max`.
pub const BZ_INITRD_ADDR_MAX: u32 = 0x7fff_ffff;
/// The fake bzImage's `cmdline_size` (without the NUL).
pub const BZ_CMDLINE_SIZE: u32 = 2047;

fn put(image: &mut [u8], off: usize, bytes: &[u8]) {
    image[off..off + bytes.len()].copy_from_slice(bytes);
}

/// A well-formed protocol 2.15, 64-bit capable, relocatable bzImage whose protected-mode part
/// starts with 0xb0 and ends with 0xe0.
pub fn bzimage() -> Vec<u8> {
    let mut image = vec![0u8; BZ_SETUP_SIZE + BZ_KERNEL_SIZE];
    image[0x1f1] = 1; // setup_sects
    put(
        &mut image,
        0x1f4,
        &((BZ_KERNEL_SIZE / 16) as u32).to_le_bytes(),
    ); // syssize
    put(&mut image, 0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(&mut image, 0x202, b"HdrS");
    put(&mut image, 0x206, &0x020fu16.to_le_bytes()); // version 2.15
    image[0x211] = 0x01; // loadflags: LOADED_HIGH
    put(&mut image, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(&mut image, 0x22c, &BZ_INITRD_ADDR_MAX.to_le_bytes());
    put(&mut image, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    image[0x234] = 1; // relocatable_kernel
    put(&mut image, 0x236, &0x0003u16.to_le_bytes()); // xloadflags: KERNEL_64 | ABOVE_4G
    put(&mut image, 0x238, &BZ_CMDLINE_SIZE.to_le_bytes());
    put(&mut image, 0x258, &BZ_PREF_ADDRESS.to_le_bytes());
    put(&mut image, 0x260, &(BZ_INIT_SIZE as u32).to_le_bytes());
    image[BZ_SETUP_SIZE] = 0xb0;
    image[BZ_SETUP_SIZE + BZ_KERNEL_SIZE - 1] = 0xe0;
    image
}

/// Physical address of the fake ELF kernel's only PT_LOAD segment.
pub const ELF_PADDR: u64 = 0x20_0000;
/// Its entry point.
pub const ELF_ENTRY: u64 = ELF_PADDR + 0x10;
/// Its file size.
pub const ELF_FILESZ: u64 = 0x100;
/// Its memory size (the rest is bss).
pub const ELF_MEMSZ: u64 = 0x3000;
/// File offset of its segment data.
pub const ELF_DATA_OFFSET: usize = 0x200;
/// File offset of its PVH note, when it has one.
pub const ELF_NOTE_OFFSET: usize = 0x180;

/// A 64-bit x86 ELF kernel with one PT_LOAD segment (data filled with 0x90 and a final 0xf4)
/// and, if `pvh_entry` is given, a PT_NOTE segment with a `XEN_ELFNOTE_PHYS32_ENTRY` note.
pub fn elf(pvh_entry: Option<u32>) -> Vec<u8> {
    let mut image = vec![0u8; ELF_DATA_OFFSET + ELF_FILESZ as usize];
    put(&mut image, 0, b"\x7fELF");
    image[4] = 2; // ELFCLASS64
    image[5] = 1; // ELFDATA2LSB
    image[6] = 1; // EV_CURRENT
    put(&mut image, 0x10, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut image, 0x12, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut image, 0x14, &1u32.to_le_bytes()); // e_version
    put(&mut image, 0x18, &ELF_ENTRY.to_le_bytes());
    put(&mut image, 0x20, &64u64.to_le_bytes()); // e_phoff
    put(&mut image, 0x34, &64u16.to_le_bytes()); // e_ehsize
    put(&mut image, 0x36, &56u16.to_le_bytes()); // e_phentsize
    let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
    put(&mut image, 0x38, &phnum.to_le_bytes());

    let ph = 64;
    put(&mut image, ph, &1u32.to_le_bytes()); // PT_LOAD
    put(&mut image, ph + 4, &5u32.to_le_bytes()); // R+X
    put(&mut image, ph + 8, &(ELF_DATA_OFFSET as u64).to_le_bytes());
    put(&mut image, ph + 16, &ELF_PADDR.to_le_bytes()); // p_vaddr
    put(&mut image, ph + 24, &ELF_PADDR.to_le_bytes()); // p_paddr
    put(&mut image, ph + 32, &ELF_FILESZ.to_le_bytes());
    put(&mut image, ph + 40, &ELF_MEMSZ.to_le_bytes());
    put(&mut image, ph + 48, &0x1000u64.to_le_bytes()); // p_align

    if let Some(entry) = pvh_entry {
        let ph = 64 + 56;
        let note_len = 12 + 4 + 4;
        put(&mut image, ph, &4u32.to_le_bytes()); // PT_NOTE
        put(&mut image, ph + 8, &(ELF_NOTE_OFFSET as u64).to_le_bytes());
        put(&mut image, ph + 32, &(note_len as u64).to_le_bytes()); // p_filesz
        put(&mut image, ph + 40, &(note_len as u64).to_le_bytes()); // p_memsz
        let n = ELF_NOTE_OFFSET;
        put(&mut image, n, &4u32.to_le_bytes()); // n_namesz
        put(&mut image, n + 4, &4u32.to_le_bytes()); // n_descsz
        put(&mut image, n + 8, &18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        put(&mut image, n + 12, b"Xen\0");
        put(&mut image, n + 16, &entry.to_le_bytes());
    }

    for b in &mut image[ELF_DATA_OFFSET..] {
        *b = 0x90;
    }
    image[ELF_DATA_OFFSET + ELF_FILESZ as usize - 1] = 0xf4;
    image
}

/// One `PT_LOAD` segment of [`elf_with_segments`]: its bytes, load address and memory size.
pub struct TestSegment<'a> {
    /// Guest-physical (and virtual) address.
    pub paddr: u64,
    /// The file bytes.
    pub bytes: &'a [u8],
    /// Memory size (at least `bytes.len()`; the rest is bss).
    pub memsz: u64,
}

/// A 64-bit x86 ELF executable entered at `entry`, with one `PT_LOAD` program header per
/// segment, in order; segment data follows the headers, each part 16-byte aligned in the file.
pub fn elf_with_segments(entry: u64, segments: &[TestSegment<'_>]) -> Vec<u8> {
    let headers = 64 + 56 * segments.len();
    let mut image = vec![0u8; headers];
    put(&mut image, 0, b"\x7fELF");
    image[4] = 2; // ELFCLASS64
    image[5] = 1; // ELFDATA2LSB
    image[6] = 1; // EV_CURRENT
    put(&mut image, 0x10, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut image, 0x12, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut image, 0x14, &1u32.to_le_bytes()); // e_version
    put(&mut image, 0x18, &entry.to_le_bytes());
    put(&mut image, 0x20, &64u64.to_le_bytes()); // e_phoff
    put(&mut image, 0x34, &64u16.to_le_bytes()); // e_ehsize
    put(&mut image, 0x36, &56u16.to_le_bytes()); // e_phentsize
    put(&mut image, 0x38, &(segments.len() as u16).to_le_bytes());
    for (i, seg) in segments.iter().enumerate() {
        image.resize(image.len().next_multiple_of(16), 0);
        let offset = image.len() as u64;
        image.extend_from_slice(seg.bytes);
        let ph = 64 + 56 * i;
        put(&mut image, ph, &1u32.to_le_bytes()); // PT_LOAD
        put(&mut image, ph + 4, &4u32.to_le_bytes()); // PF_R
        put(&mut image, ph + 8, &offset.to_le_bytes());
        put(&mut image, ph + 16, &seg.paddr.to_le_bytes()); // p_vaddr
        put(&mut image, ph + 24, &seg.paddr.to_le_bytes()); // p_paddr
        put(&mut image, ph + 32, &(seg.bytes.len() as u64).to_le_bytes());
        put(&mut image, ph + 40, &seg.memsz.to_le_bytes());
        put(&mut image, ph + 48, &0x1000u64.to_le_bytes()); // p_align
    }
    image
}

/// A fresh, empty directory for a test's files.
pub fn temp_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("petrel-loader-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
