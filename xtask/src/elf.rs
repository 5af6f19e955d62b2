//! Just enough ELF64 reading for xtask, through the `object` crate: the busybox put into the
//! initramfs is static (no program interpreter), the kernel's vmlinux carries the PVH entry
//! note that an ELF-loading VMM starts it through, and the vmlinux's function symbols name the
//! addresses that a kernel without kallsyms prints in its `initcall_debug` lines; and the
//! bench's smallest "kernel", one that spins, written by the demo guests' ELF writer.

use std::collections::HashMap;

use object::elf::{FileHeader64, NoteType, PT_INTERP, SHT_SYMTAB, STT_FUNC};
use object::read::elf::{FileHeader, ProgramHeader, Sym};
use object::LittleEndian;
use petrel_demo_guest::elf::{exec_elf, ExecLayout};

/// The note type of the PVH 32-bit entry point (`XEN_ELFNOTE_PHYS32_ENTRY`).
const XEN_ELFNOTE_PHYS32_ENTRY: NoteType = NoteType(18);

/// The header of `file` if it is a little-endian ELF64 file.
fn header(file: &[u8]) -> Option<&FileHeader64<LittleEndian>> {
    FileHeader64::<LittleEndian>::parse(file).ok()
}

/// Whether `file` is an ELF64 executable without a program interpreter (statically linked).
/// `None` when it is not a little-endian ELF64 file at all.
pub fn is_static(file: &[u8]) -> Option<bool> {
    let phdrs = header(file)?.program_headers(LittleEndian, file).ok()?;
    Some(!phdrs.iter().any(|ph| ph.p_type(LittleEndian) == PT_INTERP))
}

/// Whether `file` (an ELF64 vmlinux) has a `Xen` note of type `XEN_ELFNOTE_PHYS32_ENTRY`:
/// the PVH entry point. A note cut short by its segment's end ends the search there.
pub fn has_pvh_note(file: &[u8]) -> bool {
    let Some(phdrs) = header(file).and_then(|h| h.program_headers(LittleEndian, file).ok()) else {
        return false;
    };
    phdrs.iter().any(|ph| {
        let Ok(Some(notes)) = ph.notes(LittleEndian, file) else {
            return false;
        };
        notes.map_while(Result::ok).any(|note| {
            note.name() == b"Xen" && note.n_type(LittleEndian) == XEN_ELFNOTE_PHYS32_ENTRY
        })
    })
}

/// `jmp $` (`eb fe`: a short jump back over its own two bytes), the whole code of the
/// guests that spin without an exit: [`spin_kernel_elf`]'s, and the real-mode ones that the
/// bench and `hot-text` run with `petrel run --raw`.
pub const SPIN_CODE: [u8; 2] = [0xeb, 0xfe];

/// Where [`spin_kernel_elf`]'s segment is loaded and entered: 1 MiB, as Linux's is.
pub const SPIN_LOAD_ADDR: u64 = 0x10_0000;

/// A complete ELF64 x86-64 executable whose entry point (the Linux 64-bit boot protocol's,
/// `e_entry`) is `jmp $` (`eb fe`): a kernel that a VMM boots as it boots Linux and that
/// then runs forever without a single exit. One read-only, executable `PT_LOAD` segment (the
/// whole 122-byte file at [`SPIN_LOAD_ADDR`]), no PVH note, no sections; written by the demo
/// guests' ELF writer.
pub fn spin_kernel_elf() -> Vec<u8> {
    let layout = ExecLayout {
        load_addr: SPIN_LOAD_ADDR,
        code_offset: 64 + 56, // right after the ELF header and the one program header
        writable: false,
        mem_size: None,
        pvh_entry: None,
    };
    exec_elf(&layout, &SPIN_CODE)
}

/// The function symbols of an ELF64 file's `.symtab`, by address (the first name wins
/// where two share one). Empty when the file is not a little-endian ELF64 file or was
/// stripped.
pub fn function_symbols(file: &[u8]) -> HashMap<u64, String> {
    function_symbol_names(file)
        .into_iter()
        .map(|(address, mut names)| (address, names.swap_remove(0)))
        .collect()
}

/// Every name of each function address in an ELF64 file's `.symtab`, in the table's order
/// (functions the compiler merged share an address). Empty as [`function_symbols`] is.
pub fn function_symbol_names(file: &[u8]) -> HashMap<u64, Vec<String>> {
    function_symbols_inner(file).unwrap_or_default()
}

fn function_symbols_inner(file: &[u8]) -> Option<HashMap<u64, Vec<String>>> {
    let sections = header(file)?.sections(LittleEndian, file).ok()?;
    let symtab = sections.symbols(LittleEndian, file, SHT_SYMTAB).ok()?;
    let mut out = HashMap::new();
    for sym in symtab.iter() {
        let value = sym.st_value(LittleEndian);
        if sym.st_type() != STT_FUNC || value == 0 {
            continue;
        }
        let Ok(name) = symtab.symbol_name(LittleEndian, sym) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        out.entry(value)
            .or_insert_with(Vec::new)
            .push(String::from_utf8_lossy(name).into_owned());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::elf::{
        SectionType, SymbolType, EM_X86_64, ET_EXEC, PT_LOAD, PT_NOTE, SHT_NULL, SHT_STRTAB,
        STT_OBJECT,
    };

    /// Size of one ELF64 section header.
    const SHDR_LEN: usize = 64;
    /// Size of one ELF64 symbol.
    const SYM_LEN: usize = 24;
    /// `e_ident` up to `EI_VERSION`: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT.
    const IDENT: &[u8] = b"\x7fELF\x02\x01\x01";

    /// A minimal ELF64 file whose program headers are `(type, contents)`.
    fn elf(segs: &[(object::elf::ProgramType, &[u8])]) -> Vec<u8> {
        let phoff = 64usize;
        let data_start = phoff + 56 * segs.len();
        let mut f = vec![0u8; data_start];
        f[..IDENT.len()].copy_from_slice(IDENT);
        f[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, (kind, contents)) in segs.iter().enumerate() {
            let ph = phoff + 56 * i;
            let offset = f.len() as u64;
            f[ph..ph + 4].copy_from_slice(&kind.0.to_le_bytes());
            f[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            f[ph + 32..ph + 40].copy_from_slice(&(contents.len() as u64).to_le_bytes());
            f.extend_from_slice(contents);
        }
        f
    }

    fn note(name: &[u8], ty: NoteType, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&ty.0.to_le_bytes());
        n.extend_from_slice(name);
        n.push(0);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend_from_slice(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    #[test]
    fn static_or_not() {
        assert_eq!(is_static(&elf(&[(PT_LOAD, b"code")])), Some(true));
        assert_eq!(
            is_static(&elf(&[(PT_LOAD, b"x"), (PT_INTERP, b"/lib/ld.so\0")])),
            Some(false)
        );
        assert_eq!(is_static(b"#!/bin/sh\n"), None);
        assert_eq!(is_static(b""), None);
    }

    #[test]
    fn pvh_note_found_after_other_notes() {
        let mut notes = note(b"GNU", NoteType(3), &[1, 2, 3, 4, 5]);
        notes.extend(note(b"Xen", NoteType(6), b"linux\0"));
        notes.extend(note(
            b"Xen",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x100_0000u32.to_le_bytes(),
        ));
        assert!(has_pvh_note(&elf(&[(PT_LOAD, b"text"), (PT_NOTE, &notes)])));
    }

    #[test]
    fn pvh_note_absent() {
        let notes = note(b"Xen", NoteType(6), b"linux\0");
        assert!(!has_pvh_note(&elf(&[(PT_NOTE, &notes)])));
        // The right type under another name is not it either.
        let notes = note(b"GNU", XEN_ELFNOTE_PHYS32_ENTRY, &[0; 4]);
        assert!(!has_pvh_note(&elf(&[(PT_NOTE, &notes)])));
        assert!(!has_pvh_note(b"not an elf"));
        // A truncated note does not read past its segment.
        let mut notes = note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, &[0; 4]);
        notes.truncate(14);
        assert!(!has_pvh_note(&elf(&[(PT_NOTE, &notes)])));
    }

    #[test]
    fn spin_kernel_reads_back() {
        let f = spin_kernel_elf();
        // The same bytes as the hand-written writer this replaced produced.
        assert_eq!(
            crate::cache::sha256_hex(&f),
            "1c116c159624f36a6113f202bef496a92d2d1f70f3b42dfdc81d2cdc62f59e8e"
        );
        assert_eq!(f.len(), 122);
        assert_eq!(is_static(&f), Some(true));
        assert!(!has_pvh_note(&f));
        let h = FileHeader64::<LittleEndian>::parse(&f[..]).unwrap();
        assert_eq!(h.e_type(LittleEndian), ET_EXEC);
        assert_eq!(h.e_machine(LittleEndian), EM_X86_64);
        let phdrs = h.program_headers(LittleEndian, &f[..]).unwrap();
        assert_eq!(phdrs.len(), 1);
        let load = &phdrs[0];
        assert_eq!(load.p_type(LittleEndian), PT_LOAD);
        assert_eq!(load.p_offset(LittleEndian), 0);
        assert_eq!(load.p_filesz(LittleEndian), f.len() as u64);
        assert_eq!(load.p_vaddr(LittleEndian), SPIN_LOAD_ADDR);
        // e_entry is the address of the file's last two bytes, `jmp $`.
        let at = usize::try_from(h.e_entry(LittleEndian) - SPIN_LOAD_ADDR).unwrap();
        assert_eq!(&f[at..], [0xeb, 0xfe]);
    }

    /// A minimal ELF64 file with a `.symtab` of `(name, info, value)` and its string table.
    fn elf_with_symbols(syms: &[(&str, SymbolType, u64)]) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let mut symtab = vec![0u8; SYM_LEN]; // symbol 0 is the null symbol
        for (name, info, value) in syms {
            let mut s = [0u8; SYM_LEN];
            s[..4].copy_from_slice(&(strtab.len() as u32).to_le_bytes());
            s[4] = info.0;
            s[8..16].copy_from_slice(&value.to_le_bytes());
            symtab.extend_from_slice(&s);
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
        }
        let mut f = vec![0u8; 64];
        f[..IDENT.len()].copy_from_slice(IDENT);
        let sym_off = f.len();
        f.extend_from_slice(&symtab);
        let str_off = f.len();
        f.extend_from_slice(&strtab);
        let shoff = f.len();
        // Sections: 0 null, 1 .symtab (link 2), 2 .strtab (also the section names).
        let mut shdr = |kind: SectionType, off: usize, size: usize, link: u32| {
            let mut h = [0u8; SHDR_LEN];
            h[4..8].copy_from_slice(&kind.0.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h[0x28..0x2c].copy_from_slice(&link.to_le_bytes());
            f.extend_from_slice(&h);
        };
        shdr(SHT_NULL, 0, 0, 0);
        shdr(SHT_SYMTAB, sym_off, symtab.len(), 2);
        shdr(SHT_STRTAB, str_off, strtab.len(), 0);
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&(SHDR_LEN as u16).to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        // e_shstrndx: the section names (all "") come from .strtab.
        f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        f
    }

    #[test]
    fn function_symbols_by_address() {
        let f = elf_with_symbols(&[
            ("pty_init", STT_FUNC, 0xffff_ffff_8190_0000),
            ("a_variable", STT_OBJECT, 0xffff_ffff_8200_0000),
            ("alias_of_pty_init", STT_FUNC, 0xffff_ffff_8190_0000),
            // STB_GLOBAL << 4 | STT_FUNC
            (
                "chr_dev_init",
                SymbolType(0x10 | STT_FUNC.0),
                0xffff_ffff_8190_0100,
            ),
        ]);
        let syms = function_symbols(&f);
        assert_eq!(syms.len(), 2);
        assert_eq!(syms[&0xffff_ffff_8190_0000], "pty_init");
        assert_eq!(syms[&0xffff_ffff_8190_0100], "chr_dev_init");
        let names = function_symbol_names(&f);
        assert_eq!(names.len(), 2, "functions only: {names:?}");
        assert_eq!(
            names[&0xffff_ffff_8190_0000],
            ["pty_init", "alias_of_pty_init"]
        );
        assert!(function_symbols(b"not an elf").is_empty());
        assert!(function_symbols(&f[..100]).is_empty());
    }

    #[test]
    fn real_files_read_back() {
        // The demo guest carries a PVH note; the counter guest does not.
        assert!(has_pvh_note(&petrel_demo_guest::demo_kernel_elf()));
        assert!(!has_pvh_note(&petrel_demo_guest::counter_guest_elf()));
        // This test binary, as the linker wrote it: its symbol table names this function.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(is_static(&me).is_some());
        let syms = function_symbols(&me);
        assert!(
            syms.values()
                .any(|name| name.contains("real_files_read_back")),
            "{} function symbols, none for this test",
            syms.len()
        );
    }
}
