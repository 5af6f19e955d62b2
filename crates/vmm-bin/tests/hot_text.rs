//! The petrel binary lays out the functions a VMM runs ahead of the rest of its code
//! (`hot-text.ld`, which build.rs links in; `cargo xtask hot-text` writes it): the binary has a
//! `.text.hot` section, and `petrel::main` is in it.

use object::read::elf::ElfFile64;
use object::{LittleEndian, Object, ObjectSection, ObjectSymbol};

#[test]
fn the_functions_a_vmm_runs_are_laid_out_first() {
    let exe = env!("CARGO_BIN_EXE_petrel");
    let data = std::fs::read(exe).unwrap();
    let elf = ElfFile64::<LittleEndian>::parse(&*data).unwrap();
    // `petrel::main` in the v0 scheme that .cargo/config.toml asks for; a build whose
    // RUSTFLAGS replaced that has legacy symbols, which hot-text.ld does not name.
    let named = |want: &dyn Fn(&str) -> bool| {
        elf.symbols()
            .find(|s| s.name().is_ok_and(want))
            .map(|s| s.address())
    };
    let Some(main) = named(&|n| n.starts_with("_RNvCs") && n.ends_with("_6petrel4main")) else {
        assert!(
            named(&|n| n.starts_with("_ZN6petrel4main")).is_some(),
            "{exe} has no petrel::main symbol at all"
        );
        println!(
            "skipped: {exe} has legacy symbols (RUSTFLAGS replaced the v0 mangling of \
             .cargo/config.toml), which hot-text.ld does not name"
        );
        return;
    };
    let hot = elf
        .section_by_name(".text.hot")
        .unwrap_or_else(|| panic!("{exe} has no .text.hot section"));
    assert!(
        (hot.address()..hot.address() + hot.size()).contains(&main),
        "petrel::main at {main:#x} is outside .text.hot ({:#x}, {} bytes)",
        hot.address(),
        hot.size()
    );
    let text = elf.section_by_name(".text").unwrap();
    assert!(
        text.address() > hot.address(),
        ".text.hot must come first: .text at {:#x}",
        text.address()
    );
}
