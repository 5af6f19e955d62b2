//! Is the exec file something a chroot holding only that file can run?
//!
//! The jail holds the copied binary and three device nodes, no `ld.so` and no libc, so the
//! binary must be a statically linked ELF executable: one without a `PT_INTERP` program header
//! (System V ABI, `Elf64_Ehdr` and `Elf64_Phdr` in `/usr/include/elf.h`). A static PIE has no
//! `PT_INTERP` either and runs fine.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// How to build Petrel so that the jail can run it, for messages.
pub const STATIC_BUILD_HINT: &str =
    "build it statically: RUSTFLAGS=\"-C target-feature=+crt-static\" \
     cargo build --release -p petrel --target x86_64-unknown-linux-gnu, then use \
     target/x86_64-unknown-linux-gnu/release/petrel";

const EHDR_SIZE: usize = 64;
const PT_INTERP: u32 = 3;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
/// More program headers than any real executable has; a bound on what we read.
const MAX_PHNUM: usize = 256;

/// Why a file cannot run alone in the jail; `None` from [`check_static`] means it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStatic {
    /// Not a 64-bit little-endian ELF executable (a script, another format, truncated).
    NotElf(String),
    /// Dynamically linked: it names this program interpreter.
    Dynamic(String),
}

impl std::fmt::Display for NotStatic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotStatic::NotElf(why) => write!(f, "not a 64-bit ELF executable ({why})"),
            NotStatic::Dynamic(interp) => write!(
                f,
                "dynamically linked (it needs the program interpreter {interp}), which a chroot \
                 holding only this file cannot run; {STATIC_BUILD_HINT}"
            ),
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Reads the ELF header and program headers of `file` and says whether it runs without a
/// program interpreter. I/O errors are reported as [`NotStatic::NotElf`] with their text.
pub fn check_static(file: &mut File) -> Result<(), NotStatic> {
    let not_elf = |why: &str| NotStatic::NotElf(why.to_string());
    let mut ehdr = [0u8; EHDR_SIZE];
    file.read_exact(&mut ehdr)
        .map_err(|_| not_elf("shorter than an ELF header"))?;
    if &ehdr[0..4] != b"\x7fELF" {
        return Err(not_elf("no ELF magic"));
    }
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(not_elf("not ELFCLASS64 little-endian"));
    }
    let e_type = u16_at(&ehdr, 16);
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(not_elf("not an executable"));
    }
    let phoff = u64_at(&ehdr, 32);
    let phentsize = usize::from(u16_at(&ehdr, 54));
    let phnum = usize::from(u16_at(&ehdr, 56));
    if phentsize < 56 || phnum == 0 || phnum > MAX_PHNUM {
        return Err(not_elf("unusable program header table"));
    }
    let mut phdrs = vec![0u8; phentsize * phnum];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut phdrs))
        .map_err(|_| not_elf("program header table past the end of the file"))?;
    for ph in phdrs.chunks_exact(phentsize) {
        if u32_at(ph, 0) == PT_INTERP {
            let offset = u64_at(ph, 8);
            let size = u64_at(ph, 32).min(4096) as usize;
            let mut name = vec![0u8; size];
            let interp = file
                .seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut name))
                .map(|_| {
                    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                    String::from_utf8_lossy(&name[..end]).into_owned()
                })
                .unwrap_or_else(|_| "(unreadable)".to_string());
            return Err(NotStatic::Dynamic(interp));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal ELF64 image: header, `phdrs` program headers, then `tail` bytes.
    fn elf(phdrs: &[(u32, u64, u64)], tail: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; EHDR_SIZE];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // ELFCLASS64
        b[5] = 1; // ELFDATA2LSB
        b[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
        b[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
        b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes()); // e_phnum
        for &(p_type, offset, size) in phdrs {
            let mut ph = vec![0u8; 56];
            ph[0..4].copy_from_slice(&p_type.to_le_bytes());
            ph[8..16].copy_from_slice(&offset.to_le_bytes());
            ph[32..40].copy_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&ph);
        }
        b.extend_from_slice(tail);
        b
    }

    fn check(bytes: &[u8]) -> Result<(), NotStatic> {
        // One file per call: the tests run in parallel.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("petrel-jailer-elf-{}-{n}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        let r = check_static(&mut File::open(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        r
    }

    #[test]
    fn static_image_passes() {
        // PT_LOAD only.
        assert_eq!(check(&elf(&[(1, 0, 0)], b"")), Ok(()));
    }

    #[test]
    fn interpreter_is_named() {
        let interp_off = (EHDR_SIZE + 2 * 56) as u64;
        let image = elf(&[(1, 0, 0), (PT_INTERP, interp_off, 11)], b"/lib/ld.so\0");
        let err = check(&image).unwrap_err();
        assert_eq!(err, NotStatic::Dynamic("/lib/ld.so".into()));
        assert!(err.to_string().contains("crt-static"), "{err}");
    }

    #[test]
    fn non_elf_is_refused() {
        assert!(matches!(
            check(b"#!/bin/sh\necho hi\n"),
            Err(NotStatic::NotElf(_))
        ));
        let mut image = elf(&[(1, 0, 0)], b"");
        image[4] = 1; // ELFCLASS32
        assert!(matches!(check(&image), Err(NotStatic::NotElf(_))));
        let truncated = &elf(&[(1, 0, 0)], b"")[..EHDR_SIZE + 10];
        assert!(matches!(check(truncated), Err(NotStatic::NotElf(_))));
    }

    #[test]
    fn this_test_binary_is_read_correctly() {
        // Test binaries are linked like any other: dynamically with glibc's loader, unless
        // built with crt-static, in which case they have no PT_INTERP at all.
        let me = std::env::current_exe().unwrap();
        match check_static(&mut File::open(me).unwrap()) {
            Ok(()) => {}
            Err(NotStatic::Dynamic(interp)) => assert!(interp.contains("ld-"), "{interp}"),
            Err(other) => panic!("{other}"),
        }
    }
}
