//! Flat binaries started in real mode.
//!
//! A raw image is copied byte for byte to a guest-physical address and entered in 16-bit real
//! mode, the way firmware or a boot sector starts. It is how hand-written test guests run.
//!
//! The CPU state returned is close to the architectural reset state (Intel SDM vol. 3,
//! table 9-1) with CS pointing at the entry point:
//! - `CS.base = entry & !0xffff`, `CS.selector = CS.base >> 4`, `IP = entry & 0xffff`, so that
//!   `CS.base + IP == entry` and a near jump stays inside the image's 64 KiB segment;
//! - DS, ES, FS, GS and SS flat at 0 with a 64 KiB limit;
//! - `SS:SP = 0:BOOT_STACK_POINTER` (0x8ff0), the layout's boot stack; programs that need more
//!   stack, or are loaded over it, set their own;
//! - RFLAGS = 0x2 (only the reserved bit), interrupts off;
//! - CR0 = ET (0x10). The reset value 0x6000_0010 also sets CD and NW (caches disabled); we
//!   leave them clear, as firmware would, so the guest does not run uncached on hardware KVM.
//! - TR a busy TSS at base 0 with limit 0xffff (what KVM loads at reset; VM entry needs one);
//! - GDTR and IDTR at base 0 with limit 0xffff (their reset values); the IDT there is the
//!   real-mode interrupt vector table.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use petrel_guest_mem::layout::BOOT_STACK_POINTER;
use petrel_guest_mem::GuestRam;

use crate::{describe_regions, BootCpuState, CpuMode, Error, Result, Segment, REAL_MODE_LIMIT};

const WHAT: &str = "raw image";

/// CR0.ET: extension type, hardwired to 1 on every CPU since the i486 (Intel SDM vol. 3, 2.5).
const X86_CR0_ET: u64 = 1 << 4;
/// RFLAGS bit 1 is reserved and reads as 1 (Intel SDM vol. 1, 3.4.3).
const RFLAGS_RESERVED: u64 = 1 << 1;
/// The limit of a real-mode segment (64 KiB) and the reset limit of GDTR/IDTR
/// (Intel SDM vol. 3, table 9-1).
const REAL_MODE_SEGMENT_LIMIT: u32 = 0xffff;
/// Code segment type: execute/read, accessed (Intel SDM vol. 3, table 3-1).
const TYPE_CODE_EXEC_READ_ACCESSED: u8 = 0xb;
/// Data segment type: read/write, accessed (Intel SDM vol. 3, table 3-1).
const TYPE_DATA_READ_WRITE_ACCESSED: u8 = 0x3;
/// System segment type: busy TSS (Intel SDM vol. 3, table 3-2); what KVM loads at reset.
const TYPE_TSS_BUSY: u8 = 0xb;

/// Copies `image` to guest-physical `load_addr` and returns a real-mode CPU state that starts
/// at `entry` (default: `load_addr`).
///
/// Refuses an empty image, an image larger than guest RAM, an image that does not lie wholly
/// in one RAM region at `load_addr`, and an entry point outside RAM or at or above 1 MiB (not
/// reachable from a 16-bit selector). Nothing is written when any check fails.
pub fn load_raw(
    ram: &GuestRam,
    image: &[u8],
    load_addr: u64,
    entry: Option<u64>,
) -> Result<BootCpuState> {
    load(ram, image, None, load_addr, entry)
}

/// Reads the flat binary at `path` and loads it with [`load_raw`].
///
/// Errors name the file when it is missing, unreadable, empty or too large for guest RAM.
/// The file is never read past guest RAM's size.
pub fn load_raw_file(
    ram: &GuestRam,
    path: &Path,
    load_addr: u64,
    entry: Option<u64>,
) -> Result<BootCpuState> {
    let image = read_image_file(ram, WHAT, path)?;
    load(ram, &image, Some(path), load_addr, entry)
}

/// Reads a whole image file, refusing empty files and files larger than guest RAM without
/// reading more than `ram.size() + 1` bytes.
pub(crate) fn read_image_file(ram: &GuestRam, what: &'static str, path: &Path) -> Result<Vec<u8>> {
    let read_err = |source| Error::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut image = Vec::new();
    // Read one byte past RAM's size so that an oversize file is detected without reading it
    // all (a user could point us at a huge file or a device node).
    file.take(ram.size().saturating_add(1))
        .read_to_end(&mut image)
        .map_err(read_err)?;
    if image.is_empty() {
        return Err(Error::EmptyImage {
            what,
            path: Some(path.to_path_buf()),
        });
    }
    let size = image.len() as u64;
    if size > ram.size() {
        // Only RAM's size plus one byte was read: report the file's real size where the file
        // system knows it (not for pipes or devices).
        let size = std::fs::metadata(path)
            .ok()
            .filter(|m| m.is_file())
            .map_or(size, |m| m.len());
        return Err(Error::ImageTooLarge {
            what,
            path: Some(path.to_path_buf()),
            size,
            ram_size: ram.size(),
        });
    }
    Ok(image)
}

fn load(
    ram: &GuestRam,
    image: &[u8],
    path: Option<&Path>,
    load_addr: u64,
    entry: Option<u64>,
) -> Result<BootCpuState> {
    let path = path.map(Path::to_path_buf);
    let size = image.len() as u64;
    if image.is_empty() {
        return Err(Error::EmptyImage { what: WHAT, path });
    }
    if size > ram.size() {
        return Err(Error::ImageTooLarge {
            what: WHAT,
            path,
            size,
            ram_size: ram.size(),
        });
    }
    if !ram.contains(load_addr, size) {
        return Err(Error::LoadAddressOutsideRam {
            what: WHAT,
            path,
            addr: load_addr,
            size,
            ram_size: ram.size(),
            regions: describe_regions(ram),
        });
    }
    let entry = entry.unwrap_or(load_addr);
    if entry >= REAL_MODE_LIMIT || !ram.contains(entry, 1) {
        return Err(Error::RealModeEntry { entry });
    }
    ram.write(load_addr, image)
        .map_err(|source| Error::WriteGuestMemory {
            what: WHAT,
            addr: load_addr,
            source,
        })?;
    Ok(real_mode_state(entry))
}

/// The real-mode CPU state that starts executing at guest-physical `entry` (< 1 MiB).
fn real_mode_state(entry: u64) -> BootCpuState {
    let cs_base = entry & !0xffff;
    let code = Segment {
        base: cs_base,
        limit: REAL_MODE_SEGMENT_LIMIT,
        // cs_base < 1 MiB, so cs_base >> 4 fits in 16 bits.
        selector: (cs_base >> 4) as u16,
        type_: TYPE_CODE_EXEC_READ_ACCESSED,
        present: 1,
        s: 1,
        ..Segment::default()
    };
    let data = Segment {
        base: 0,
        limit: REAL_MODE_SEGMENT_LIMIT,
        selector: 0,
        type_: TYPE_DATA_READ_WRITE_ACCESSED,
        present: 1,
        s: 1,
        ..Segment::default()
    };
    let tr = Segment {
        limit: REAL_MODE_SEGMENT_LIMIT,
        type_: TYPE_TSS_BUSY,
        present: 1,
        ..Segment::default()
    };
    BootCpuState {
        mode: CpuMode::Real,
        rip: entry & 0xffff,
        rsp: BOOT_STACK_POINTER,
        rsi: 0,
        rbx: 0,
        rflags: RFLAGS_RESERVED,
        cr0: X86_CR0_ET,
        cr3: 0,
        cr4: 0,
        efer: 0,
        code,
        data,
        tr,
        gdt_base: 0,
        gdt_limit: REAL_MODE_SEGMENT_LIMIT as u16,
        idt_base: 0,
        idt_limit: REAL_MODE_SEGMENT_LIMIT as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn new_ram(size: u64) -> GuestRam {
        GuestRam::new(size).unwrap()
    }

    #[test]
    fn loads_bytes_and_enters_at_load_address() {
        let ram = new_ram(MIB);
        let code = [0xb0, 0x41, 0xe6, 0xe9, 0xf4];
        let state = load_raw(&ram, &code, 0x1000, None).unwrap();
        let mut back = [0u8; 5];
        ram.read(0x1000, &mut back).unwrap();
        assert_eq!(back, code);
        assert_eq!(state.mode, CpuMode::Real);
        assert_eq!(state.code.base, 0);
        assert_eq!(state.code.selector, 0);
        assert_eq!(state.rip, 0x1000);
        assert_eq!(state.rflags, 0x2);
        assert_eq!(state.cr0 & 1, 0, "PE must be clear in real mode");
        assert_eq!(state.data.base, 0);
        assert_eq!(state.data.limit, 0xffff);
    }

    #[test]
    fn high_entry_uses_segment_math() {
        let ram = new_ram(MIB);
        let state = load_raw(&ram, &[0xf4; 16], 0xf_0000, Some(0xf_fff0)).unwrap();
        assert_eq!(state.code.base, 0xf_0000);
        assert_eq!(state.code.selector, 0xf000);
        assert_eq!(state.rip, 0xfff0);
        assert_eq!(state.code.base + state.rip, 0xf_fff0);
        let state = load_raw(&ram, &[0xf4], 0x1_2345, None).unwrap();
        assert_eq!(u64::from(state.code.selector) << 4, state.code.base);
        assert_eq!(state.code.base + state.rip, 0x1_2345);
        assert!(state.rip < 0x1_0000);
    }

    #[test]
    fn empty_image_is_refused() {
        let ram = new_ram(MIB);
        let err = load_raw(&ram, &[], 0x1000, None).unwrap_err();
        assert!(matches!(err, Error::EmptyImage { .. }));
        assert_eq!(err.to_string(), "raw image is empty");
    }

    #[test]
    fn image_larger_than_ram_is_refused_with_sizes() {
        let ram = new_ram(0x1_0000);
        let image = vec![0u8; 0x1_1000];
        let err = load_raw(&ram, &image, 0, None).unwrap_err();
        assert!(matches!(
            err,
            Error::ImageTooLarge {
                size: 0x11000,
                ram_size: 0x10000,
                ..
            }
        ));
        assert!(err.to_string().contains("0x11000"), "{err}");
    }

    #[test]
    fn oversize_file_is_reported_with_its_real_size() {
        let ram = new_ram(0x1_0000);
        let path = std::env::temp_dir().join(format!("petrel-oversize-{}.bin", std::process::id()));
        std::fs::write(&path, vec![0u8; 0x3_0000]).unwrap();
        let err = load_raw_file(&ram, &path, 0, None).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(err, Error::ImageTooLarge { size: 0x30000, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn image_past_end_of_ram_is_refused_and_nothing_written() {
        let ram = new_ram(0x1_0000);
        let err = load_raw(&ram, &[1, 2, 3, 4], 0xfffe, None).unwrap_err();
        assert!(matches!(
            err,
            Error::LoadAddressOutsideRam {
                addr: 0xfffe,
                size: 4,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("0xfffe") && msg.contains("[0x0, 0x10000)"),
            "{msg}"
        );
        let mut back = [0xaa_u8; 2];
        ram.read(0xfffe, &mut back).unwrap();
        assert_eq!(back, [0, 0]);
        // An address whose end wraps around u64 must not pass.
        assert!(load_raw(&ram, &[1, 2], u64::MAX, None).is_err());
    }

    #[test]
    fn unreachable_entry_is_refused() {
        let ram = new_ram(2 * MIB);
        let err = load_raw(&ram, &[0xf4], 0x1000, Some(MIB)).unwrap_err();
        assert!(matches!(err, Error::RealModeEntry { entry } if entry == MIB));
        let ram = new_ram(0x1_0000);
        assert!(matches!(
            load_raw(&ram, &[0xf4], 0x1000, Some(0x2_0000)),
            Err(Error::RealModeEntry { entry: 0x2_0000 })
        ));
    }

    #[test]
    fn file_errors_name_the_path() {
        let ram = new_ram(0x1_0000);
        let dir = std::env::temp_dir().join(format!("petrel-loader-raw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let missing = dir.join("missing.bin");
        let err = load_raw_file(&ram, &missing, 0, None).unwrap_err();
        assert!(matches!(&err, Error::ReadFile { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound));
        assert!(err.to_string().contains("missing.bin"), "{err}");

        let empty = dir.join("empty.bin");
        std::fs::write(&empty, b"").unwrap();
        let err = load_raw_file(&ram, &empty, 0, None).unwrap_err();
        assert!(matches!(err, Error::EmptyImage { .. }));
        assert_eq!(
            err.to_string(),
            format!("raw image {} is empty", empty.display())
        );

        let big = dir.join("big.bin");
        std::fs::write(&big, vec![0u8; 0x1_0001]).unwrap();
        let err = load_raw_file(&ram, &big, 0, None).unwrap_err();
        assert!(matches!(err, Error::ImageTooLarge { .. }));
        assert!(err.to_string().contains("big.bin"), "{err}");

        // A directory opens but cannot be read.
        let err = load_raw_file(&ram, &dir, 0, None).unwrap_err();
        assert!(matches!(err, Error::ReadFile { .. }));

        let good = dir.join("good.bin");
        std::fs::write(&good, [0xf4]).unwrap();
        let state = load_raw_file(&ram, &good, 0x7c00, None).unwrap();
        assert_eq!(state.rip, 0x7c00);
        assert_eq!(ram.read_obj::<u8>(0x7c00).unwrap(), 0xf4);

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
