//! Just enough ELF64 reading for xtask: the busybox put into the initramfs is static (no
//! program interpreter), the kernel's vmlinux carries the PVH entry note that an
//! ELF-loading VMM starts it through, and the vmlinux's function symbols name the addresses
//! that a kernel without kallsyms prints in its `initcall_debug` lines; and just enough
//! writing to make the bench's smallest "kernel", one that spins.

use std::collections::HashMap;

/// `PT_INTERP`: the program asks for a dynamic loader.
const PT_INTERP: u32 = 3;
/// `PT_NOTE`: a segment of notes.
const PT_NOTE: u32 = 4;
/// The note type of the PVH 32-bit entry point (`XEN_ELFNOTE_PHYS32_ENTRY`).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// One program header: its type and where its bytes lie in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    kind: u32,
    offset: usize,
    size: usize,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The program headers of a little-endian ELF64 file, or `None` if it is not one.
fn segments(file: &[u8]) -> Option<Vec<Segment>> {
    if file.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(file, 0x20)?).ok()?;
    let phentsize = usize::from(u16_at(file, 0x36)?);
    let phnum = usize::from(u16_at(file, 0x38)?);
    if phentsize < 56 {
        return None;
    }
    (0..phnum)
        .map(|i| {
            let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
            Some(Segment {
                kind: u32_at(file, ph)?,
                offset: usize::try_from(u64_at(file, ph + 8)?).ok()?,
                size: usize::try_from(u64_at(file, ph + 32)?).ok()?,
            })
        })
        .collect()
}

/// Whether `file` is an ELF64 executable without a program interpreter (statically linked).
/// `None` when it is not a little-endian ELF64 file at all.
pub fn is_static(file: &[u8]) -> Option<bool> {
    Some(!segments(file)?.iter().any(|s| s.kind == PT_INTERP))
}

/// Whether `file` (an ELF64 vmlinux) has a `Xen` note of type `XEN_ELFNOTE_PHYS32_ENTRY`:
/// the PVH entry point.
pub fn has_pvh_note(file: &[u8]) -> bool {
    let Some(segs) = segments(file) else {
        return false;
    };
    segs.iter().filter(|s| s.kind == PT_NOTE).any(|s| {
        let end = s.offset.saturating_add(s.size);
        file.get(s.offset..end)
            .is_some_and(|notes| notes_contain(notes, b"Xen", XEN_ELFNOTE_PHYS32_ENTRY))
    })
}

/// Walks the notes in `notes` looking for one named `name` with type `kind`.
fn notes_contain(mut notes: &[u8], name: &[u8], kind: u32) -> bool {
    let align4 = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let (Some(namesz), Some(descsz), Some(ty)) =
            (u32_at(notes, 0), u32_at(notes, 4), u32_at(notes, 8))
        else {
            return false;
        };
        let (namesz, descsz) = (namesz as usize, descsz as usize);
        let Some(note_name) = notes.get(12..12 + namesz) else {
            return false;
        };
        // The name is NUL-terminated and namesz counts the NUL.
        let note_name = note_name.strip_suffix(&[0]).unwrap_or(note_name);
        if note_name == name && ty == kind {
            return true;
        }
        let next = 12 + align4(namesz) + align4(descsz);
        let Some(rest) = notes.get(next..) else {
            return false;
        };
        notes = rest;
    }
    false
}

/// Where [`spin_kernel_elf`]'s segment is loaded and entered: 1 MiB, as Linux's is.
pub const SPIN_LOAD_ADDR: u64 = 0x10_0000;

/// A complete ELF64 x86-64 executable whose entry point (the Linux 64-bit boot protocol's,
/// `e_entry`) is `jmp $` (`eb fe`): a kernel that a VMM boots as it boots Linux and that
/// then runs forever without a single exit. One `PT_LOAD` segment (the whole 122-byte file
/// at [`SPIN_LOAD_ADDR`]), no PVH note, no sections.
pub fn spin_kernel_elf() -> Vec<u8> {
    const EHDR: u16 = 64;
    const PHDR: u16 = 56;
    const CODE: [u8; 2] = [0xeb, 0xfe];
    let file_len = u64::from(EHDR + PHDR) + CODE.len() as u64;
    let entry = SPIN_LOAD_ADDR + u64::from(EHDR + PHDR);
    let mut f = Vec::with_capacity(file_len as usize);
    f.extend_from_slice(b"\x7fELF\x02\x01\x01"); // ELFCLASS64, little-endian, EV_CURRENT
    f.extend_from_slice(&[0; 9]); // OS ABI (System V), ABI version, padding
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&entry.to_le_bytes()); // e_entry: the jmp
    f.extend_from_slice(&u64::from(EHDR).to_le_bytes()); // e_phoff: right after this header
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [EHDR, PHDR, 1, 64, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        f.extend_from_slice(&half.to_le_bytes());
    }
    f.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // p_flags: PF_R | PF_X
    for word in [
        0,
        SPIN_LOAD_ADDR,
        SPIN_LOAD_ADDR,
        file_len,
        file_len,
        0x1000,
    ] {
        // p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        f.extend_from_slice(&word.to_le_bytes());
    }
    f.extend_from_slice(&CODE);
    f
}

/// `SHT_SYMTAB`: a section holding the static symbol table.
const SHT_SYMTAB: u32 = 2;
/// `STT_FUNC`: a symbol that names a function.
const STT_FUNC: u8 = 2;
/// Size of one ELF64 section header.
const SHDR_LEN: usize = 64;
/// Size of one ELF64 symbol.
const SYM_LEN: usize = 24;

/// The function symbols of an ELF64 file's `.symtab`, by address (the first name wins
/// where two share one). Empty when the file is not a little-endian ELF64 file or was
/// stripped.
pub fn function_symbols(file: &[u8]) -> HashMap<u64, String> {
    function_symbols_inner(file).unwrap_or_default()
}

fn function_symbols_inner(file: &[u8]) -> Option<HashMap<u64, String>> {
    if file.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(u64_at(file, 0x28)?).ok()?;
    let shentsize = usize::from(u16_at(file, 0x3a)?);
    let shnum = usize::from(u16_at(file, 0x3c)?);
    if shentsize < SHDR_LEN {
        return None;
    }
    // (type, offset, size, link) of section `i`.
    let section = |i: usize| -> Option<(u32, usize, usize, usize)> {
        let sh = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(file, sh + 4)?,
            usize::try_from(u64_at(file, sh + 0x18)?).ok()?,
            usize::try_from(u64_at(file, sh + 0x20)?).ok()?,
            usize::try_from(u32_at(file, sh + 0x28)?).ok()?,
        ))
    };
    let (_, sym_off, sym_size, link) =
        (0..shnum).filter_map(section).find(|s| s.0 == SHT_SYMTAB)?;
    let (_, str_off, str_size, _) = section(link)?;
    let strtab = file.get(str_off..str_off.checked_add(str_size)?)?;
    let symtab = file.get(sym_off..sym_off.checked_add(sym_size)?)?;
    let mut out = HashMap::new();
    for sym in symtab.chunks_exact(SYM_LEN) {
        let info = sym[4];
        let value = u64_at(sym, 8)?;
        if info & 0xf != STT_FUNC || value == 0 {
            continue;
        }
        let name_at = usize::try_from(u32_at(sym, 0)?).ok()?;
        let Some(rest) = strtab.get(name_at..) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if end == 0 {
            continue;
        }
        out.entry(value)
            .or_insert_with(|| String::from_utf8_lossy(&rest[..end]).into_owned());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 file whose program headers are `(type, contents)`.
    fn elf(segs: &[(u32, &[u8])]) -> Vec<u8> {
        let phoff = 64usize;
        let data_start = phoff + 56 * segs.len();
        let mut f = vec![0u8; data_start];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, (kind, contents)) in segs.iter().enumerate() {
            let ph = phoff + 56 * i;
            let offset = f.len() as u64;
            f[ph..ph + 4].copy_from_slice(&kind.to_le_bytes());
            f[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            f[ph + 32..ph + 40].copy_from_slice(&(contents.len() as u64).to_le_bytes());
            f.extend_from_slice(contents);
        }
        f
    }

    fn note(name: &[u8], ty: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&ty.to_le_bytes());
        n.extend_from_slice(name);
        n.push(0);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend_from_slice(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    #[test]
    fn static_or_not() {
        assert_eq!(is_static(&elf(&[(1, b"code")])), Some(true));
        assert_eq!(
            is_static(&elf(&[(1, b"x"), (PT_INTERP, b"/lib/ld.so\0")])),
            Some(false)
        );
        assert_eq!(is_static(b"#!/bin/sh\n"), None);
        assert_eq!(is_static(b""), None);
    }

    #[test]
    fn pvh_note_found_after_other_notes() {
        let mut notes = note(b"GNU", 3, &[1, 2, 3, 4, 5]);
        notes.extend(note(b"Xen", 6, b"linux\0"));
        notes.extend(note(
            b"Xen",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x100_0000u32.to_le_bytes(),
        ));
        assert!(has_pvh_note(&elf(&[(1, b"text"), (PT_NOTE, &notes)])));
    }

    #[test]
    fn pvh_note_absent() {
        let notes = note(b"Xen", 6, b"linux\0");
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
        assert_eq!(f.len(), 122);
        assert_eq!(is_static(&f), Some(true));
        assert!(!has_pvh_note(&f));
        let segs = segments(&f).unwrap();
        assert_eq!(
            segs,
            [Segment {
                kind: 1,
                offset: 0,
                size: f.len()
            }]
        );
        // e_entry is the address of the file's last two bytes, `jmp $`.
        let entry = u64_at(&f, 0x18).unwrap();
        let at = usize::try_from(entry - SPIN_LOAD_ADDR).unwrap();
        assert_eq!(&f[at..], [0xeb, 0xfe]);
        assert_eq!(u64_at(&f, 64 + 16), Some(SPIN_LOAD_ADDR), "p_vaddr");
        assert_eq!(u16_at(&f, 0x10), Some(2), "ET_EXEC");
        assert_eq!(u16_at(&f, 0x12), Some(0x3e), "EM_X86_64");
    }

    /// A minimal ELF64 file with a `.symtab` of `(name, info, value)` and its string table.
    fn elf_with_symbols(syms: &[(&str, u8, u64)]) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let mut symtab = vec![0u8; SYM_LEN]; // symbol 0 is the null symbol
        for (name, info, value) in syms {
            let mut s = [0u8; SYM_LEN];
            s[..4].copy_from_slice(&(strtab.len() as u32).to_le_bytes());
            s[4] = *info;
            s[8..16].copy_from_slice(&value.to_le_bytes());
            symtab.extend_from_slice(&s);
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
        }
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let sym_off = f.len();
        f.extend_from_slice(&symtab);
        let str_off = f.len();
        f.extend_from_slice(&strtab);
        let shoff = f.len();
        // Sections: 0 null, 1 .symtab (link 2), 2 .strtab.
        let mut shdr = |kind: u32, off: usize, size: usize, link: u32| {
            let mut h = [0u8; SHDR_LEN];
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h[0x28..0x2c].copy_from_slice(&link.to_le_bytes());
            f.extend_from_slice(&h);
        };
        shdr(0, 0, 0, 0);
        shdr(SHT_SYMTAB, sym_off, symtab.len(), 2);
        shdr(3, str_off, strtab.len(), 0);
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&(SHDR_LEN as u16).to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f
    }

    #[test]
    fn function_symbols_by_address() {
        let f = elf_with_symbols(&[
            ("pty_init", STT_FUNC, 0xffff_ffff_8190_0000),
            ("a_variable", 1, 0xffff_ffff_8200_0000),
            ("alias_of_pty_init", STT_FUNC, 0xffff_ffff_8190_0000),
            ("chr_dev_init", 0x10 | STT_FUNC, 0xffff_ffff_8190_0100),
        ]);
        let syms = function_symbols(&f);
        assert_eq!(syms.len(), 2);
        assert_eq!(syms[&0xffff_ffff_8190_0000], "pty_init");
        assert_eq!(syms[&0xffff_ffff_8190_0100], "chr_dev_init");
        assert!(function_symbols(b"not an elf").is_empty());
        assert!(function_symbols(&f[..100]).is_empty());
    }
}
