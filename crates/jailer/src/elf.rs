//! Is the exec file something a chroot holding only that file can run?
//!
//! The jail holds the copied binary and three device nodes, no `ld.so` and no libc, so the
//! binary must be a statically linked ELF executable: one without a `PT_INTERP` program header
//! (System V ABI, `Elf64_Ehdr` and `Elf64_Phdr` in `/usr/include/elf.h`). A static PIE has no
//! `PT_INTERP` either and runs fine.

use std::fs::File;

use object::elf::{FileHeader64, ET_DYN, ET_EXEC, PT_INTERP};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{LittleEndian, ReadCache};

/// How to build Petrel so that the jail can run it, for messages.
pub const STATIC_BUILD_HINT: &str =
    "build it statically: RUSTFLAGS=\"-C target-feature=+crt-static\" \
     cargo build --release -p petrel --target x86_64-unknown-linux-gnu, then use \
     target/x86_64-unknown-linux-gnu/release/petrel";

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

/// Reads the ELF header and program headers of `file` (through the `object` crate, which
/// reads only what it looks at) and says whether it runs without a program interpreter. I/O
/// errors are reported as [`NotStatic::NotElf`].
pub fn check_static(file: &mut File) -> Result<(), NotStatic> {
    let not_elf = |why: &str| NotStatic::NotElf(why.to_string());
    let data = ReadCache::new(file);
    let header = FileHeader64::<LittleEndian>::parse(&data).map_err(|e| not_elf(&e.to_string()))?;
    let e_type = header.e_type(LittleEndian);
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(not_elf("not an executable"));
    }
    let phdrs = header
        .program_headers(LittleEndian, &data)
        .map_err(|e| not_elf(&format!("unusable program header table: {e}")))?;
    if phdrs.is_empty() {
        return Err(not_elf("no program headers"));
    }
    match phdrs.iter().find(|ph| ph.p_type(LittleEndian) == PT_INTERP) {
        None => Ok(()),
        Some(ph) => {
            let interp = match ph.interpreter(LittleEndian, &data) {
                Ok(Some(name)) => String::from_utf8_lossy(name).into_owned(),
                _ => "(unreadable)".to_string(),
            };
            Err(NotStatic::Dynamic(interp))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::elf::{ProgramType, PT_LOAD};
    use std::io::Write;

    /// Size of an ELF64 file header.
    const EHDR_SIZE: usize = 64;

    /// A minimal ELF64 image: header, `phdrs` program headers, then `tail` bytes.
    fn elf(phdrs: &[(ProgramType, u64, u64)], tail: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; EHDR_SIZE];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // ELFCLASS64
        b[5] = 1; // ELFDATA2LSB
        b[6] = 1; // EV_CURRENT
        b[16..18].copy_from_slice(&ET_DYN.0.to_le_bytes());
        b[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
        b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes()); // e_phnum
        for &(p_type, offset, size) in phdrs {
            let mut ph = vec![0u8; 56];
            ph[0..4].copy_from_slice(&p_type.0.to_le_bytes());
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
        assert_eq!(check(&elf(&[(PT_LOAD, 0, 0)], b"")), Ok(()));
    }

    #[test]
    fn interpreter_is_named() {
        let interp_off = (EHDR_SIZE + 2 * 56) as u64;
        let image = elf(
            &[(PT_LOAD, 0, 0), (PT_INTERP, interp_off, 11)],
            b"/lib/ld.so\0",
        );
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
        let mut image = elf(&[(PT_LOAD, 0, 0)], b"");
        image[4] = 1; // ELFCLASS32
        assert!(matches!(check(&image), Err(NotStatic::NotElf(_))));
        let truncated = &elf(&[(PT_LOAD, 0, 0)], b"")[..EHDR_SIZE + 10];
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
