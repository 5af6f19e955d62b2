//! Loads a kernel (and optionally an initrd) into a scratch guest and prints what the loader
//! made of it: where it went, its entry points, and the boot CPU state.
//!
//! `cargo run -p petrel-loader --example inspect_kernel -- KERNEL [INITRD] [MEM_MIB]`

use std::path::PathBuf;
use std::process::ExitCode;

use petrel_guest_mem::GuestRam;
use petrel_loader::{configure_linux_boot, configure_pvh_boot, load_initrd, load_kernel};

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kernel_path: PathBuf = args
        .next()
        .ok_or("usage: inspect_kernel KERNEL [INITRD] [MEM_MIB]")?
        .into();
    let initrd_path = args.next().filter(|a| !a.is_empty()).map(PathBuf::from);
    let mem_mib: u64 = args.next().map(|m| m.parse()).transpose()?.unwrap_or(256);

    let ram = GuestRam::new(mem_mib << 20)?;
    let kernel = load_kernel(&ram, &kernel_path)?;
    println!(
        "kernel      {:?} at {:#x}..{:#x}",
        kernel.kind, kernel.kernel_start, kernel.kernel_end
    );
    println!("entry_64    {:#x}", kernel.entry_64);
    println!(
        "pvh_entry   {:?}",
        kernel.pvh_entry.map(|e| format!("{e:#x}"))
    );
    println!(
        "initrd max  {:#x}, cmdline max {}",
        kernel.initrd_addr_max, kernel.cmdline_max
    );
    if let Some(hdr) = kernel.setup_header {
        println!("protocol    {:#06x}, init_size {:#x}", { hdr.version }, {
            hdr.init_size
        });
    }
    let initrd = initrd_path
        .map(|p| load_initrd(&ram, &p, &kernel))
        .transpose()?;
    if let Some(i) = initrd {
        println!("initrd      {:#x} ({:#x} bytes)", i.addr, i.size);
    }
    let linux = configure_linux_boot(&ram, &kernel, "console=ttyS0", initrd, 2, None)?;
    println!("64-bit boot {linux:#x?}");
    if kernel.pvh_entry.is_some() {
        let pvh = configure_pvh_boot(&ram, &kernel, "console=ttyS0", initrd, 2, None)?;
        println!(
            "PVH boot    rip {:#x} rbx {:#x} cr0 {:#x}",
            pvh.rip, pvh.rbx, pvh.cr0
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprint!(": {s}");
                source = s.source();
            }
            eprintln!();
            ExitCode::FAILURE
        }
    }
}
