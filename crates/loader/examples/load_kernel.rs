//! Loads a kernel into guest memory (a vm-memory `GuestMemoryMmap`), prepares the Linux
//! 64-bit boot, and prints the main fields of the zero page (`struct boot_params`) as the
//! kernel will find them: no KVM involved.
//!
//! `cargo run -p petrel-loader --example load_kernel -- [KERNEL]`: an ELF vmlinux or a bzImage;
//! without one, Petrel's demo guest ELF (from petrel-demo-guest).

use std::path::PathBuf;

use linux_loader::loader::bootparam::boot_params;
use petrel_guest_mem::layout::ZERO_PAGE_START;
use petrel_guest_mem::vm_memory::{Bytes, GuestAddress};
use petrel_guest_mem::GuestRam;
use petrel_loader::linux::load_kernel_image;
use petrel_loader::{configure_linux_boot, load_kernel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 256 MiB of guest RAM: a GuestMemoryMmap laid out as Petrel lays out a PC.
    let ram = GuestRam::new(256 << 20)?;
    let kernel = match std::env::args_os().nth(1).map(PathBuf::from) {
        Some(path) => load_kernel(&ram, &path)?,
        None => {
            let elf = petrel_demo_guest::demo_kernel_elf();
            load_kernel_image(&ram, &elf, "demo-guest.elf".as_ref())?
        }
    };
    println!("{}: {:?}", kernel.path.display(), kernel.kind);
    println!(
        "  loaded at {:#x}..{:#x}, 64-bit entry {:#x}",
        kernel.kernel_start, kernel.kernel_end, kernel.entry_64
    );

    // Command line, MP table, zero page, page tables and GDT; returns the boot vCPU's state.
    let cpu = configure_linux_boot(&ram, &kernel, "console=ttyS0 panic=-1", None, 1, None)?;
    println!("  boot vCPU: rip {:#x}, rsi {:#x}", cpu.rip, cpu.rsi);

    // Read the zero page back from the GuestMemoryMmap, as the guest will see it.
    let zp: boot_params = ram.memory().read_obj(GuestAddress(ZERO_PAGE_START))?;
    let hdr = zp.hdr; // packed: copy fields out before formatting them
    println!("zero page at {ZERO_PAGE_START:#x}:");
    println!("  boot_flag       {:#06x}", { hdr.boot_flag });
    println!("  header          {:#010x} (\"HdrS\")", { hdr.header });
    println!("  version         {:#06x}", { hdr.version });
    println!("  type_of_loader  {:#04x}", { hdr.type_of_loader });
    println!("  cmd_line_ptr    {:#x}", { hdr.cmd_line_ptr });
    println!("  cmdline_size    {}", { hdr.cmdline_size });
    println!("  kernel_align    {:#x}", { hdr.kernel_alignment });
    println!(
        "  ramdisk         {:#x} ({} bytes)",
        { hdr.ramdisk_image },
        { hdr.ramdisk_size }
    );
    println!("  e820_entries    {}", zp.e820_entries);
    for e in &zp.e820_table[..usize::from(zp.e820_entries)] {
        let (addr, size, kind) = ({ e.addr }, { e.size }, { e.r#type });
        println!("    {addr:#012x} +{size:#012x} type {kind}");
    }
    Ok(())
}
