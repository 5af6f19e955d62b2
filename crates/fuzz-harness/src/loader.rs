//! The kernel loaders (ELF with its PVH note, bzImage), initrd placement, the boot structures
//! built from them, and the command-line builder: everything a user's kernel file and command
//! line reach.

use std::path::Path;

use arbitrary::Unstructured;
use petrel_guest_mem::layout::ram_ranges;
use petrel_guest_mem::GuestRam;
use petrel_loader::cmdline::{build_cmdline, cmdline_capacity, write_cmdline};
use petrel_loader::linux::{load_kernel_image, parse_bzimage_header, place_initrd};
use petrel_loader::{configure_linux_boot, configure_pvh_boot, Initrd};

use crate::{put_bytes, take_bytes, Encode};

/// Guest RAM sizes a kernel input can pick (its first byte, modulo their number).
pub const RAM_SIZES: [u64; 3] = [16 << 20, 64 << 20, 256 << 20];

thread_local! {
    /// One guest RAM of each size per thread, reused across runs: allocating and faulting in
    /// a fresh one each run would cost more than the loading itself.
    static RAMS: Vec<GuestRam> = RAM_SIZES
        .iter()
        .map(|&size| GuestRam::new(size).expect("guest RAM"))
        .collect();
}

/// The input of [`kernel`], for the seed tools: RAM size selector, initrd size, command line,
/// image.
pub fn encode_kernel(ram: u8, initrd_size: u64, cmdline: &str, image: &[u8]) -> Vec<u8> {
    let mut out = vec![ram];
    initrd_size.put(&mut out);
    put_bytes(&mut out, cmdline.as_bytes());
    out.extend_from_slice(image);
    out
}

/// Loads the kernel image at the end of the input, places an initrd, writes the command line
/// and builds the boot structures for both entry protocols.
///
/// Checks that a loaded kernel lies inside the RAM below the MMIO gap, that a placed initrd is
/// page aligned, above the kernel and below both the RAM's end and the kernel's
/// `initrd_addr_max`, and that the command line written fits the kernel's room.
pub fn kernel(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(ram_sel), Ok(initrd_size), Ok(cmdline)) = (
        u.arbitrary::<u8>(),
        u.arbitrary::<u64>(),
        take_bytes(&mut u),
    ) else {
        return;
    };
    let image = u.take_rest();
    let path = Path::new("fuzz-kernel");
    let _ = parse_bzimage_header(image, path);
    RAMS.with(|rams| {
        let ram = &rams[usize::from(ram_sel) % rams.len()];
        let Ok(kernel) = load_kernel_image(ram, image, path) else {
            return;
        };
        let low_end = ram_ranges(ram.size())
            .first()
            .map_or(0, |(start, len)| start + len);
        assert!(
            kernel.kernel_start <= kernel.kernel_end && kernel.kernel_end <= low_end,
            "kernel at [{:#x}, {:#x}) in {low_end:#x} bytes of low RAM",
            kernel.kernel_start,
            kernel.kernel_end
        );
        let initrd = match place_initrd(ram.size(), &kernel, initrd_size) {
            Ok(addr) => {
                let highest = low_end.min(kernel.initrd_addr_max.saturating_add(1));
                assert!(
                    addr % 4096 == 0
                        && addr >= kernel.kernel_end
                        && addr
                            .checked_add(initrd_size)
                            .is_some_and(|end| end <= highest),
                    "initrd of {initrd_size:#x} bytes at {addr:#x}: kernel ends at {:#x}, \
                     initrd may end at {highest:#x}",
                    kernel.kernel_end
                );
                Some(Initrd {
                    addr,
                    size: initrd_size,
                })
            }
            Err(_) => None,
        };
        let cmdline = String::from_utf8_lossy(cmdline);
        if let Ok(len) = write_cmdline(ram, &kernel, &cmdline) {
            assert!(
                len < cmdline_capacity(&kernel),
                "{len}-byte command line written"
            );
        }
        let _ = configure_linux_boot(ram, &kernel, &cmdline, initrd, 1 + ram_sel % 4, None);
        if kernel.pvh_entry.is_some() {
            let _ = configure_pvh_boot(ram, &kernel, &cmdline, initrd, 1 + ram_sel % 4, None);
        }
    });
}

/// Builds a command line: two bytes of capacity, then the text.
///
/// Checks that what is built is the trimmed text and one NUL, within the capacity.
pub fn cmdline(data: &[u8]) {
    let Some((cap, text)) = data.split_first_chunk::<2>() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let capacity = usize::from(u16::from_le_bytes(*cap));
    if let Ok(built) = build_cmdline(text, capacity) {
        assert!(
            built.len() <= capacity,
            "{} bytes built for {capacity}",
            built.len()
        );
        assert_eq!(built.last(), Some(&0), "not NUL-terminated");
        assert_eq!(
            &built[..built.len() - 1],
            text.trim().as_bytes(),
            "the command line built is not the one given"
        );
    }
}
