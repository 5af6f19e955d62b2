//! The ELF64 writer the guests share, and the one the rest of the tree uses for its small
//! executables ([`exec_elf`]): one `PT_LOAD` segment holding the whole file, the code at a
//! chosen file offset (which is `e_entry`), and optionally a `PT_NOTE` with the PVH entry
//! (`XEN_ELFNOTE_PHYS32_ENTRY`). The guests put the segment at [`crate::LOAD_ADDR`] and the
//! code at file offset 0x100; see the crate documentation for the layout.

/// Guest-physical (= virtual) address at which the `PT_LOAD` segment is loaded: 1 MiB.
pub(crate) const LOAD_ADDR: u64 = 0x10_0000;

/// File offset (and offset from [`LOAD_ADDR`]) of the first code byte.
pub(crate) const CODE_OFFSET: usize = 0x100;

/// Size of an ELF64 file header.
pub(crate) const EHDR_SIZE: usize = 64;

/// Size of an ELF64 program header.
pub(crate) const PHDR_SIZE: usize = 56;

/// File offset of the PVH note, when there is one: right after the two program headers.
pub(crate) const NOTE_OFFSET: usize = EHDR_SIZE + 2 * PHDR_SIZE;

/// Size of the PVH note: 12-byte header, name `"Xen\0"`, 8-byte desc.
pub(crate) const NOTE_SIZE: usize = 24;

/// How [`exec_elf`] lays out an ELF64 x86-64 `ET_EXEC` file: one `PT_LOAD` segment holding
/// the whole file from offset 0, the code at [`code_offset`](Self::code_offset) (which is the
/// entry point), and optionally a `PT_NOTE` publishing a PVH entry. The demo guests use it, and
/// so do xtask's spinning kernel and its initramfs `/init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecLayout {
    /// Guest-physical (= virtual) address of the segment, and so of file offset 0.
    pub load_addr: u64,
    /// File offset of the first code byte; `e_entry` is `load_addr + code_offset`. At least
    /// [`ExecLayout::headers_len`]; the bytes between the headers and the code are zero.
    pub code_offset: usize,
    /// Whether the segment is writable as well as readable and executable.
    pub writable: bool,
    /// Bytes of memory the segment covers from `load_addr`; `None`: just the file's.
    pub mem_size: Option<u64>,
    /// The 32-bit PVH entry to publish in a `XEN_ELFNOTE_PHYS32_ENTRY` note, if any.
    pub pvh_entry: Option<u64>,
}

impl ExecLayout {
    /// Bytes of headers (and PVH note) before the code can start.
    pub const fn headers_len(&self) -> usize {
        if self.pvh_entry.is_some() {
            NOTE_OFFSET + NOTE_SIZE
        } else {
            EHDR_SIZE + PHDR_SIZE
        }
    }
}

/// Builds the ELF file `layout` describes around `body`, whose first byte is the entry point.
///
/// # Panics
///
/// If `layout.code_offset` is less than [`ExecLayout::headers_len`].
pub fn exec_elf(layout: &ExecLayout, body: &[u8]) -> Vec<u8> {
    let code_offset = layout.code_offset;
    assert!(
        code_offset >= layout.headers_len(),
        "ELF headers overlap the code"
    );
    let file_len = code_offset + body.len();
    let load_addr = layout.load_addr;
    let phnum: u16 = if layout.pvh_entry.is_some() { 2 } else { 1 };
    let mut elf = Vec::with_capacity(file_len);

    // ELF header.
    elf.extend_from_slice(b"\x7fELF"); // e_ident[EI_MAG0..=EI_MAG3]
    elf.push(2); // EI_CLASS: ELFCLASS64
    elf.push(1); // EI_DATA: ELFDATA2LSB
    elf.push(1); // EI_VERSION: EV_CURRENT
    elf.push(0); // EI_OSABI: System V
    elf.extend_from_slice(&[0; 8]); // EI_ABIVERSION and padding
    put_u16(&mut elf, 2); // e_type: ET_EXEC
    put_u16(&mut elf, 0x3e); // e_machine: EM_X86_64
    put_u32(&mut elf, 1); // e_version: EV_CURRENT
    put_u64(&mut elf, load_addr + code_offset as u64); // e_entry: the first byte of `body`
    put_u64(&mut elf, EHDR_SIZE as u64); // e_phoff: right after this header
    put_u64(&mut elf, 0); // e_shoff: no section headers
    put_u32(&mut elf, 0); // e_flags
    put_u16(&mut elf, EHDR_SIZE as u16); // e_ehsize
    put_u16(&mut elf, PHDR_SIZE as u16); // e_phentsize
    put_u16(&mut elf, phnum); // e_phnum
    put_u16(&mut elf, 64); // e_shentsize (no sections, but the usual size)
    put_u16(&mut elf, 0); // e_shnum
    put_u16(&mut elf, 0); // e_shstrndx: SHN_UNDEF

    // PT_LOAD: the whole file at load_addr, then room for what the code keeps in memory.
    put_u32(&mut elf, 1); // p_type: PT_LOAD
    put_u32(&mut elf, if layout.writable { 7 } else { 5 }); // p_flags: PF_R | (PF_W) | PF_X
    put_u64(&mut elf, 0); // p_offset
    put_u64(&mut elf, load_addr); // p_vaddr
    put_u64(&mut elf, load_addr); // p_paddr
    put_u64(&mut elf, file_len as u64); // p_filesz
    put_u64(&mut elf, layout.mem_size.unwrap_or(file_len as u64)); // p_memsz
    put_u64(&mut elf, 0x1000); // p_align

    if let Some(pvh_entry) = layout.pvh_entry {
        // PT_NOTE: the PVH entry note (inside the PT_LOAD range too, as in Linux's vmlinux).
        put_u32(&mut elf, 4); // p_type: PT_NOTE
        put_u32(&mut elf, 4); // p_flags: PF_R
        put_u64(&mut elf, NOTE_OFFSET as u64); // p_offset
        put_u64(&mut elf, load_addr + NOTE_OFFSET as u64); // p_vaddr
        put_u64(&mut elf, load_addr + NOTE_OFFSET as u64); // p_paddr
        put_u64(&mut elf, NOTE_SIZE as u64); // p_filesz
        put_u64(&mut elf, NOTE_SIZE as u64); // p_memsz
        put_u64(&mut elf, 4); // p_align: notes are 4-byte aligned (QEMU pads the name to this)

        // The note: XEN_ELFNOTE_PHYS32_ENTRY.
        assert_eq!(elf.len(), NOTE_OFFSET);
        put_u32(&mut elf, 4); // n_namesz: "Xen\0"
        put_u32(&mut elf, 8); // n_descsz: a u64, like Linux's vmlinux on x86-64
        put_u32(&mut elf, 18); // n_type: XEN_ELFNOTE_PHYS32_ENTRY
        elf.extend_from_slice(b"Xen\0"); // name, already a multiple of 4 bytes
        put_u64(&mut elf, pvh_entry); // desc: the 32-bit entry, zero-extended
    }

    debug_assert_eq!(elf.len(), layout.headers_len());
    elf.resize(code_offset, 0);
    elf.extend_from_slice(body);
    elf
}

/// Builds one of this crate's guests: [`exec_elf`] with the segment at [`LOAD_ADDR`], writable,
/// the code at [`CODE_OFFSET`], `memsz` bytes of memory and, with `pvh_entry`, a PVH note.
pub(crate) fn kernel_elf(body: &[u8], memsz: u64, pvh_entry: Option<u64>) -> Vec<u8> {
    let layout = ExecLayout {
        load_addr: LOAD_ADDR,
        code_offset: CODE_OFFSET,
        writable: true,
        mem_size: Some(memsz),
        pvh_entry,
    };
    exec_elf(&layout, body)
}

/// Appends a little-endian `u16`.
fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `u32`.
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `u64`.
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Assembles the reference listing `guest/<name>` with GNU as and objcopy and returns its
/// `.text` bytes, or `None` (after saying so) when binutils are not installed.
#[cfg(test)]
pub(crate) fn assemble_listing(name: &str) -> Option<Vec<u8>> {
    use std::path::PathBuf;
    use std::process::Command;
    let src = match option_env!("CARGO_MANIFEST_DIR") {
        Some(dir) => PathBuf::from(dir).join("guest").join(name),
        // Built by hand with `rustc --test crates/demo-guest/src/lib.rs` from the root.
        None => std::path::Path::new(file!())
            .ancestors()
            .nth(2)
            .unwrap()
            .join("guest")
            .join(name),
    };
    let have = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
    if !have("as") || !have("objcopy") {
        eprintln!(
            "NOTE: GNU as/objcopy not found: the check that {} assembles to the bytes of the \
             Rust code did NOT run (install binutils to run it)",
            src.display()
        );
        return None;
    }
    let dir = std::env::temp_dir().join(format!("petrel-demo-guest-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let obj = dir.join("listing.o");
    let bin = dir.join("listing.bin");
    let status = Command::new("as")
        .arg("--64")
        .arg("-o")
        .arg(&obj)
        .arg(&src)
        .status();
    assert!(status.unwrap().success(), "as failed on {}", src.display());
    let status = Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&obj)
        .arg(&bin)
        .status();
    assert!(status.unwrap().success(), "objcopy failed");
    let assembled = std::fs::read(&bin).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    Some(assembled)
}

/// Fails, naming the first differing offset, unless `ours` and `assembled` are the same bytes.
#[cfg(test)]
pub(crate) fn assert_same_bytes(ours: &[u8], assembled: &[u8]) {
    if let Some(i) = ours.iter().zip(assembled).position(|(a, b)| a != b) {
        panic!(
            "first difference at body offset {i:#x}: ours {:#04x}, as {:#04x}",
            ours[i], assembled[i]
        );
    }
    assert_eq!(ours.len(), assembled.len(), "same bytes, different lengths");
}
