//! The petrel binary lays out the functions a VMM runs ahead of the rest of its code
//! (`hot-text.ld`, which build.rs links in; `cargo xtask hot-text` writes it): the binary has a
//! `.text.hot` section, and `petrel::main` is in it.

/// A section's name, address and size, from the ELF section headers.
#[derive(Debug)]
struct Section {
    name: String,
    kind: u32,
    addr: u64,
    offset: usize,
    size: usize,
    link: usize,
}

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes(b[at..at + 2].try_into().unwrap()))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The NUL-terminated string at `at`.
fn str_at(b: &[u8], at: usize) -> String {
    let end = b[at..].iter().position(|&c| c == 0).unwrap();
    String::from_utf8_lossy(&b[at..at + end]).into_owned()
}

/// The section headers of a little-endian ELF64 file (ELF spec: e_shoff at 0x28, e_shentsize,
/// e_shnum and e_shstrndx at 0x3a, 0x3c and 0x3e; Elf64_Shdr: sh_name, sh_type, sh_flags,
/// sh_addr, sh_offset, sh_size, sh_link at 0, 4, 8, 16, 24, 32, 40).
fn sections(b: &[u8]) -> Vec<Section> {
    assert_eq!(&b[..5], b"\x7fELF\x02", "not an ELF64 file");
    let (shoff, shentsize, shnum, shstrndx) = (
        usize::try_from(u64_at(b, 0x28)).unwrap(),
        u16_at(b, 0x3a),
        u16_at(b, 0x3c),
        u16_at(b, 0x3e),
    );
    let header = |i: usize| shoff + i * shentsize;
    let names = usize::try_from(u64_at(b, header(shstrndx) + 24)).unwrap();
    (0..shnum)
        .map(|i| {
            let h = header(i);
            Section {
                name: str_at(b, names + u32_at(b, h) as usize),
                kind: u32_at(b, h + 4),
                addr: u64_at(b, h + 16),
                offset: usize::try_from(u64_at(b, h + 24)).unwrap(),
                size: usize::try_from(u64_at(b, h + 32)).unwrap(),
                link: u32_at(b, h + 40) as usize,
            }
        })
        .collect()
}

/// Every symbol of the symbol table (SHT_SYMTAB, 2) with its value (Elf64_Sym: st_name at 0,
/// st_value at 8, 24 bytes each).
fn symbols(b: &[u8], sections: &[Section]) -> Vec<(String, u64)> {
    let table = sections
        .iter()
        .find(|s| s.kind == 2)
        .expect("the binary has a symbol table");
    let strings = sections[table.link].offset;
    (0..table.size / 24)
        .map(|i| {
            let at = table.offset + i * 24;
            (
                str_at(b, strings + u32_at(b, at) as usize),
                u64_at(b, at + 8),
            )
        })
        .collect()
}

#[test]
fn the_functions_a_vmm_runs_are_laid_out_first() {
    let exe = env!("CARGO_BIN_EXE_petrel");
    let b = std::fs::read(exe).unwrap();
    let sections = sections(&b);
    let syms = symbols(&b, &sections);
    // `petrel::main` in the v0 scheme that .cargo/config.toml asks for; a build whose
    // RUSTFLAGS replaced that has legacy symbols, which hot-text.ld does not name.
    let Some(&(_, main)) = syms
        .iter()
        .find(|(n, _)| n.starts_with("_RNvCs") && n.ends_with("_6petrel4main"))
    else {
        assert!(
            syms.iter().any(|(n, _)| n.starts_with("_ZN6petrel4main")),
            "{exe} has no petrel::main symbol at all"
        );
        println!(
            "skipped: {exe} has legacy symbols (RUSTFLAGS replaced the v0 mangling of \
             .cargo/config.toml), which hot-text.ld does not name"
        );
        return;
    };
    let hot = sections
        .iter()
        .find(|s| s.name == ".text.hot")
        .unwrap_or_else(|| panic!("{exe} has no .text.hot section"));
    assert!(
        (hot.addr..hot.addr + hot.size as u64).contains(&main),
        "petrel::main at {main:#x} is outside .text.hot ({:#x}, {} bytes)",
        hot.addr,
        hot.size
    );
    let text = sections.iter().find(|s| s.name == ".text").unwrap();
    assert!(
        text.addr > hot.addr,
        ".text.hot must come first: .text at {:#x}",
        text.addr
    );
}
